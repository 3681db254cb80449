"""Where the trainer's batches come from, and in what order.

The order of the data is a pure function of (seed, epoch) and the noise of a batch's
dynamic binarization a pure function of (seed, step, rank): a resumed run needs only the
step, epoch and position in the epoch to draw exactly the batches the uninterrupted run
would have drawn.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TensorData", "as_batch_source", "derived_seed", "epoch_permutation"]

_MASK64 = (1 << 64) - 1


def derived_seed(*values: int) -> int:
    """A 63-bit seed mixing the ints ``values`` (SplitMix64 on each in turn), so nearby
    inputs such as (seed, epoch) and (seed, epoch + 1) give unrelated generators."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        mixed = state
        mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = mixed ^ (mixed >> 31)
    return state >> 1


# Stream tags, so the data order and the binarization noise never share a seed.
ORDER_STREAM = 1
BINARIZE_STREAM = 2
EVAL_STREAM = 3
RANK_STREAM = 4


def epoch_permutation(num_items: int, seed: int, epoch: int) -> Tensor:
    """[num_items] int64: the order of the data in ``epoch``, the same on every process."""
    generator = torch.Generator().manual_seed(derived_seed(seed, ORDER_STREAM, epoch))
    return torch.randperm(num_items, generator=generator)


class TensorData(Dataset):
    """A float tensor ``[N, *data_shape]`` as a data set with a fast ``batch`` method.

    Args:
        tensor: float data in [0, 1], one data point per row.
        binarize: dynamic binarization: each draw is ``bernoulli(x)``, resampled every
            time (from the generator ``batch`` is given, so a training run stays
            reproducible).

    Example::

        >>> data = TensorData(torch.rand(1000, 784))
        >>> data.batch(torch.arange(4)).shape
        torch.Size([4, 784])
    """

    def __init__(self, tensor: Tensor, binarize: bool = False):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"fastvae.train.TensorData: tensor must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(
                f"fastvae.train.TensorData: tensor must be floating point (values in [0, 1]), got {tensor.dtype}; "
                f"for uint8 images divide by 255 first"
            )
        if tensor.dim() < 2:
            raise ValueError(
                f"fastvae.train.TensorData: tensor must be [N, *data_shape] with at least 2 dims, got shape "
                f"{tuple(tensor.shape)}"
            )
        self.tensor = tensor
        self.binarize = bool(binarize)
        self.data_shape = tuple(tensor.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.batch(torch.tensor([index]))[0]

    def batch(self, indices: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """[len(indices), *data_shape] float32 (on the tensor's device; ``generator``, on
        that device too, draws the binarization)."""
        x = self.tensor[indices.to(self.tensor.device)].float()
        if self.binarize:
            x = torch.bernoulli(x, generator=generator)
        return x


class _StackedData:
    """Any map-style Dataset without ``batch``: a batch stacks its items (the first
    element of tuple items, as ``(image, label)`` data sets return)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        first = self._item(0)
        self.data_shape = tuple(first.shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def _item(self, index: int) -> Tensor:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, Tensor) or not item.is_floating_point():
            raise TypeError(
                f"fastvae.train: data set items must be float tensors (or tuples whose first element is one), "
                f"got {type(item).__name__}" + (f" of {item.dtype}" if isinstance(item, Tensor) else "")
            )
        return item

    def batch(self, indices: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return torch.stack([self._item(int(i)) for i in indices]).float()


class BatchSource:
    """The trainer's view of its data: ``len``, ``data_shape``, ``device`` (where the
    data set draws its randomness) and ``fetch(indices, generator)``."""

    def __init__(self, data):
        self.source = data
        self._takes_generator = "generator" in inspect.signature(data.batch).parameters
        self.data_shape = tuple(getattr(data, "data_shape", ()) or ())
        device = getattr(data, "device", None)
        self.device = torch.device(device) if isinstance(device, (str, torch.device)) else torch.device("cpu")

    def generator(self) -> torch.Generator:
        """A generator on the data's device, for the data set's own randomness."""
        return torch.Generator(device=self.device)

    def __len__(self) -> int:
        return len(self.source)

    def fetch(self, indices: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        if self._takes_generator:
            return self.source.batch(indices, generator=generator)
        return self.source.batch(indices)


def as_batch_source(data, argument: str = "train_data") -> BatchSource:
    """Wrap a float tensor, a data set with ``batch(indices[, generator])``, or any
    map-style Dataset, for the trainer."""
    if isinstance(data, Tensor):
        data = TensorData(data)
    elif isinstance(data, (list, tuple)) or not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(
            f"fastvae.train.Trainer: {argument} must be a float Tensor [N, *data_shape] or a map-style "
            f"torch Dataset, got {type(data).__name__}"
        )
    elif not callable(getattr(data, "batch", None)):
        if len(data) == 0:
            raise ValueError(f"fastvae.train.Trainer: {argument} is empty")
        data = _StackedData(data)
    if len(data) == 0:
        raise ValueError(f"fastvae.train.Trainer: {argument} is empty")
    return BatchSource(data)
