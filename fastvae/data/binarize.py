"""Binarization of [0, 1] images into {0, 1}, for a Bernoulli decoder.

Dynamic binarization draws x_bin ~ Bernoulli(x) afresh every time an image is read: the
regularizing choice of most VAE papers on MNIST.  Static binarization draws it once, so
that every epoch (and the test set) sees the same binary images; the standard static
MNIST is Larochelle and Murray's file (:func:`fastvae.data.load_binarized_mnist`).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import IndexLike, TensorImageDataset


class DynamicBinarization(Dataset):
    """A data set whose items are Bernoulli draws of another's, drawn anew at each read.

    Args:
        dataset: a fastvae data set (it has ``batch`` and ``data_shape``) with values in
            [0, 1], read as the Bernoulli probabilities.

    :meth:`batch` draws from the ``generator`` it is given, so a trainer that owns (and
    checkpoints) that generator replays the same binary images after a resume.
    ``__getitem__`` draws from torch's global generator, as other randomized data sets do.

    Example::

        >>> binary = DynamicBinarization(load_dataset("mnist"))
        >>> g = torch.Generator().manual_seed(0)
        >>> x = binary.batch(torch.arange(64), generator=g)  # values in {0., 1.}
    """

    def __init__(self, dataset) -> None:
        if not (hasattr(dataset, "batch") and hasattr(dataset, "data_shape")):
            raise TypeError(
                "fastvae.data.DynamicBinarization: dataset must be a fastvae data set (with batch() "
                f"and data_shape), got {type(dataset).__name__}; adapt it with fastvae.data.wrap_dataset"
            )
        self.dataset = dataset
        self.name = f"{getattr(dataset, 'name', 'data')} (dynamically binarized)"

    @property
    def data_shape(self) -> tuple:
        return self.dataset.data_shape

    @property
    def labels(self) -> Optional[Tensor]:
        return getattr(self.dataset, "labels", None)

    @property
    def factors(self) -> Optional[Tensor]:
        return getattr(self.dataset, "factors", None)

    @property
    def device(self) -> torch.device:
        return self.dataset.device

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        """A fresh Bernoulli draw of item ``index``: float32 {0, 1} of shape ``data_shape``."""
        return torch.bernoulli(self.dataset[index])

    def batch(self, indices: IndexLike, generator: Optional[torch.Generator] = None) -> Tensor:
        """A fresh Bernoulli draw of the items at ``indices``: float32 {0, 1},
        [len(indices), *data_shape], from ``generator`` (on the data's device) or from
        torch's default generator when None."""
        return torch.bernoulli(self.dataset.batch(indices), generator=generator)

    def subset(self, indices: IndexLike) -> "DynamicBinarization":
        """The dynamically binarized subset of the items at ``indices``."""
        return DynamicBinarization(self.dataset.subset(indices))

    def to(self, device: Union[str, torch.device]) -> "DynamicBinarization":
        """The same data set with its tensors on ``device``."""
        return DynamicBinarization(self.dataset.to(device))

    def __repr__(self) -> str:
        return f"DynamicBinarization({self.dataset!r})"


def static_binarize(dataset, seed: int = 0, chunk_size: int = 8192) -> TensorImageDataset:
    """Draw x_bin ~ Bernoulli(x) once for every item of ``dataset``, from a generator seeded
    by ``seed``: the same seed gives the same binary images, bit for bit.

    Args:
        dataset: a fastvae data set with values in [0, 1].
        seed: the seed of the draw.
        chunk_size: items converted to float32 at a time (bounds the memory used).

    Returns:
        A :class:`TensorImageDataset` storing uint8 {0, 1} (``max_value=1``), with the
        labels and factors of ``dataset``.

    Example::

        >>> binary = static_binarize(load_dataset("fashion_mnist"), seed=0)
    """
    if not (hasattr(dataset, "batch") and hasattr(dataset, "data_shape")):
        raise TypeError(
            f"fastvae.data.static_binarize: dataset must be a fastvae data set, got {type(dataset).__name__}"
        )
    device = getattr(dataset, "device", torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(int(seed))
    chunks = []
    for start in range(0, len(dataset), chunk_size):
        indices = torch.arange(start, min(start + chunk_size, len(dataset)), device=device)
        chunks.append(torch.bernoulli(dataset.batch(indices), generator=generator).to(torch.uint8))
    images = torch.cat(chunks) if chunks else torch.zeros((0, *dataset.data_shape), dtype=torch.uint8)
    return TensorImageDataset(
        images,
        labels=getattr(dataset, "labels", None),
        factors=getattr(dataset, "factors", None),
        max_value=1,
        name=f"{getattr(dataset, 'name', 'data')} (statically binarized, seed {seed})",
    )
