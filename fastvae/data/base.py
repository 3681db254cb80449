"""The data set every fastvae loader returns: images held in one tensor, read in batches.

The trainer draws a batch as ``dataset.batch(indices)``: one ``index_select`` and one
conversion to float32, with no Python loop over the items, so data loading never limits
a model that trains at tens of thousands of images per step.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

IndexLike = Union[Tensor, Sequence[int], np.ndarray]


def as_index_tensor(caller: str, indices: IndexLike, device: torch.device) -> Tensor:
    """``indices`` as a 1-D int64 tensor on ``device``; TypeError/ValueError otherwise."""
    if not isinstance(indices, Tensor):
        indices = torch.as_tensor(np.asarray(indices))
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise TypeError(f"fastvae.data.{caller}: indices must be integers, got dtype {indices.dtype}")
    if indices.dim() != 1:
        raise ValueError(f"fastvae.data.{caller}: indices must be 1-D, got shape {tuple(indices.shape)}")
    return indices.to(device=device, dtype=torch.int64)


def _check_values(caller: str, images: Tensor, max_value: int) -> None:
    """ValueError unless every stored value lies in the range read as [0, 1]."""
    if images.numel() == 0:
        return
    if images.dtype == torch.uint8:
        if max_value < 255 and int(images.max()) > max_value:
            raise ValueError(
                f"fastvae.data.{caller}: images hold the value {int(images.max())}, above "
                f"max_value={max_value}"
            )
        return
    if torch.isnan(images).any():
        raise ValueError(f"fastvae.data.{caller}: images contain NaN")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"fastvae.data.{caller}: floating images must lie in [0, 1], got values in "
            f"[{low:g}, {high:g}] (scale them first, e.g. divide 8-bit values by 255)"
        )


class TensorImageDataset(Dataset):
    """Images (or any fixed-shape data) held in one tensor, returned as float32 in [0, 1].

    Storage stays compact: uint8 images are kept as uint8 (MNIST's 60000 images take
    47 MB, not 188 MB) and divided by ``max_value`` when read.

    Args:
        images: [N, *data_shape]. uint8 (values 0..``max_value``), or a floating tensor
            with values in [0, 1] (kept as float32). Images are [N, C, H, W], C = 1 or 3.
        labels: optional [N] integer class labels.
        factors: optional [N, F] integer ground-truth factors of variation.
        max_value: what a uint8 value of 1.0 is stored as: 255 for 8-bit images (the
            default), 1 for binary images stored as 0/1.
        name: a short name for messages and reports.

    Attributes:
        images, labels, factors: the stored tensors (labels and factors may be None).
        data_shape: the shape of one item, e.g. ``(1, 28, 28)``.

    Example::

        >>> ds = TensorImageDataset(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8))
        >>> ds.data_shape, ds[0].dtype
        ((1, 28, 28), torch.float32)
        >>> ds.batch(torch.tensor([3, 1, 4])).shape
        torch.Size([3, 1, 28, 28])
    """

    def __init__(
        self,
        images: Tensor,
        labels: Optional[Tensor] = None,
        factors: Optional[Tensor] = None,
        max_value: int = 255,
        name: str = "tensor",
    ) -> None:
        caller = f"{type(self).__name__}"
        if not isinstance(images, Tensor):
            raise TypeError(f"fastvae.data.{caller}: images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() < 2:
            raise ValueError(
                f"fastvae.data.{caller}: images must have shape [N, *data_shape] with at least 2 "
                f"dimensions, got {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            if not (isinstance(max_value, int) and 1 <= max_value <= 255):
                raise ValueError(f"fastvae.data.{caller}: max_value must be an int in [1, 255], got {max_value!r}")
        elif images.is_floating_point():
            images = images.to(torch.float32)
        else:
            raise TypeError(
                f"fastvae.data.{caller}: images must be uint8 or floating point, got {images.dtype}"
            )
        _check_values(caller, images, max_value)
        self.images = images.contiguous()
        self.max_value = max_value
        self.labels = self._check_per_item(caller, "labels", labels, 1)
        self.factors = self._check_per_item(caller, "factors", factors, 2)
        self.name = name

    def _check_per_item(self, caller: str, what: str, values: Optional[Tensor], dim: int) -> Optional[Tensor]:
        if values is None:
            return None
        if not isinstance(values, Tensor) or values.is_floating_point() or values.dtype == torch.bool:
            raise TypeError(f"fastvae.data.{caller}: {what} must be an integer tensor")
        if values.dim() != dim or values.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"fastvae.data.{caller}: {what} must have {dim} dimension(s) and one row per image "
                f"({self.images.shape[0]}), got shape {tuple(values.shape)}"
            )
        return values.to(torch.int64).contiguous()

    @property
    def data_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return self.images.shape[0]

    def _to_float(self, stored: Tensor) -> Tensor:
        if stored.dtype == torch.uint8:
            return stored.to(torch.float32).div_(self.max_value)
        return stored

    def __getitem__(self, index: int) -> Tensor:
        """Item ``index`` as a float32 tensor of shape ``data_shape`` in [0, 1]."""
        item = self.images[index]
        # A float item is a view of the storage: copy it so a caller cannot edit the data set.
        return self._to_float(item) if item.dtype == torch.uint8 else item.clone()

    def batch(self, indices: IndexLike, generator: Optional[torch.Generator] = None) -> Tensor:
        """The items at ``indices`` as one float32 tensor [len(indices), *data_shape].

        ``generator`` is accepted so that every data set (among them the randomized
        :class:`~fastvae.data.DynamicBinarization`) is called the same way; the stored data
        use no randomness."""
        indices = as_index_tensor("batch", indices, self.images.device)
        return self._to_float(self.images.index_select(0, indices))

    def subset(self, indices: IndexLike) -> "TensorImageDataset":
        """A new data set of the items at ``indices`` (labels and factors follow)."""
        indices = as_index_tensor("subset", indices, self.images.device)
        pick = lambda t: None if t is None else t.index_select(0, indices.to(t.device))  # noqa: E731
        return self._rebuild(pick)

    def to(self, device: Union[str, torch.device]) -> "TensorImageDataset":
        """The same data set with its tensors on ``device`` (e.g. on the GPU, where
        :meth:`batch` then costs no host-to-device copy)."""
        return self._rebuild(lambda t: None if t is None else t.to(device))

    def _rebuild(self, transform) -> "TensorImageDataset":
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.images = transform(self.images)
        clone.labels = transform(self.labels)
        clone.factors = transform(self.factors)
        return clone

    def __repr__(self) -> str:
        extras = "".join(f", {k}" for k in ("labels", "factors") if getattr(self, k) is not None)
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)}, data_shape={self.data_shape}{extras})"
