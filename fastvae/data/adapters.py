"""Data from Python: a tensor or array, or any map-style torch Dataset, as a fastvae data set."""
from __future__ import annotations

import numbers
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from .base import TensorImageDataset

ArrayLike = Union[Tensor, np.ndarray]


def _as_tensor(caller: str, name: str, value) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"fastvae.data.{caller}: {name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def from_tensor(
    images: ArrayLike,
    labels: Optional[ArrayLike] = None,
    factors: Optional[ArrayLike] = None,
    name: str = "tensor",
) -> TensorImageDataset:
    """A data set of the rows of a tensor (or numpy array).

    Args:
        images: [N, *data_shape]: uint8 (0..255, scaled to [0, 1] when read), bool (read
            as 0 and 1), or floating with values in [0, 1]. A 3-D [N, H, W] tensor is taken
            as grayscale images and gets a channel dimension: [N, 1, H, W]. Images are
            channels first ([N, C, H, W]); flat data [N, D] is kept as it is.
        labels: optional [N] integer labels.
        factors: optional [N, F] integer ground-truth factors.
        name: a name for reports.

    Returns:
        A :class:`TensorImageDataset` holding ``images`` (no copy for uint8 or float32 on
        a contiguous tensor).

    Example::

        >>> ds = from_tensor(torch.rand(100, 3, 32, 32))
        >>> ds.batch(torch.arange(8)).shape
        torch.Size([8, 3, 32, 32])
    """
    caller = "from_tensor"
    images = _as_tensor(caller, "images", images)
    if images.dim() < 2:
        raise ValueError(f"fastvae.data.{caller}: images must have shape [N, ...], got {tuple(images.shape)}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        raise ValueError(
            f"fastvae.data.{caller}: images of shape {tuple(images.shape)} look channels-last; fastvae "
            "takes [N, C, H, W]: pass images.permute(0, 3, 1, 2)"
        )
    max_value = 255
    if images.dtype == torch.bool:
        images, max_value = images.to(torch.uint8), 1
    elif images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(
            f"fastvae.data.{caller}: images must be uint8 (0..255), bool, or floating in [0, 1], "
            f"got {images.dtype}"
        )
    labels = None if labels is None else _as_tensor(caller, "labels", labels)
    factors = None if factors is None else _as_tensor(caller, "factors", factors)
    try:
        return TensorImageDataset(images, labels=labels, factors=factors, max_value=max_value, name=name)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("TensorImageDataset", caller)) from None


def _item_array(caller: str, index: int, x) -> Tensor:
    """One item's data as a tensor; a Pillow image becomes [C, H, W] (or [H, W])."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if hasattr(x, "mode") and hasattr(x, "size") and hasattr(x, "getdata"):  # a Pillow image
        array = torch.from_numpy(np.array(x, dtype=np.uint8))
        return array.permute(2, 0, 1) if array.dim() == 3 else array
    raise TypeError(
        f"fastvae.data.{caller}: item {index} is a {type(x).__name__}; expected a tensor, numpy array "
        "or Pillow image (or a tuple whose first element is one)"
    )


def _is_label(value) -> bool:
    """Whether a dataset's target is one integer class label."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iu"
    return False


def wrap_dataset(dataset, name: Optional[str] = None):
    """Any map-style torch Dataset as a fastvae data set, read once into one tensor.

    A fastvae data set is returned as it is. A ``TensorDataset`` uses its first tensor
    (and its second as labels, when that is 1-D integer), without a loop. Any other
    dataset is read item by item, once: an item may be the data itself or an ``(x, y)``
    tuple, whose x is kept and whose y (when every y is an integer) becomes ``labels``;
    x may be a tensor, a numpy array or a Pillow image, all of one shape and dtype.
    uint8 data is scaled to [0, 1] when read; floating data must lie in [0, 1].

    Args:
        dataset: the dataset (with ``__len__`` and ``__getitem__``).
        name: a name for reports; default the dataset's class name.

    Returns:
        A :class:`TensorImageDataset` (or ``dataset`` itself, when it already is a
        fastvae data set).

    Example::

        >>> mnist = torchvision.datasets.MNIST("data", train=True)  # items (PIL image, int)
        >>> ds = wrap_dataset(mnist)
        >>> ds.data_shape, ds.labels.shape
        ((1, 28, 28), torch.Size([60000]))
    """
    caller = "wrap_dataset"
    if hasattr(dataset, "batch") and hasattr(dataset, "data_shape"):
        return dataset
    name = name or type(dataset).__name__
    if isinstance(dataset, Subset) and hasattr(dataset.dataset, "subset"):
        return dataset.dataset.subset(torch.as_tensor(list(dataset.indices), dtype=torch.int64))
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        labels = None
        if len(tensors) > 1 and tensors[1].dim() == 1 and not tensors[1].is_floating_point():
            labels = tensors[1]
        return _from_tensor_for(caller, tensors[0], labels, name)
    if not (isinstance(dataset, Dataset) or hasattr(dataset, "__getitem__")) or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"fastvae.data.{caller}: dataset must be a map-style Dataset with __len__ and __getitem__, "
            f"got {type(dataset).__name__}"
        )
    count = len(dataset)
    if count == 0:
        raise ValueError(f"fastvae.data.{caller}: dataset is empty")
    items, targets = [], []
    for index in range(count):
        item = dataset[index]
        target = None
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError(f"fastvae.data.{caller}: item {index} is an empty {type(item).__name__}")
            item, target = item[0], (item[1] if len(item) > 1 else None)
        x = _item_array(caller, index, item)
        if items and (x.shape != items[0].shape or x.dtype != items[0].dtype):
            raise ValueError(
                f"fastvae.data.{caller}: item {index} has shape {tuple(x.shape)} and dtype {x.dtype}, "
                f"but item 0 has {tuple(items[0].shape)} and {items[0].dtype}; every item must agree"
            )
        items.append(x)
        targets.append(target)
    labels = None
    if all(_is_label(t) for t in targets):
        labels = torch.tensor([int(t) for t in targets], dtype=torch.int64)
    return _from_tensor_for(caller, torch.stack(items), labels, name)


def _from_tensor_for(caller: str, images: Tensor, labels: Optional[Tensor], name: str) -> TensorImageDataset:
    """:func:`from_tensor`, its errors naming ``caller``, the function the user called."""
    try:
        return from_tensor(images, labels=labels, name=name)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("from_tensor", caller)) from None
