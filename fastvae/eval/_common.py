"""Plumbing shared by the evaluation modules: argument checks, walking a data set in
fixed-order batches, and running a model in evaluation mode under a fixed seed."""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterator, Optional

import torch
from torch import Tensor

from ..models.base import VAE


def check_model(function: str, model) -> VAE:
    if not isinstance(model, VAE):
        raise TypeError(
            f"fastvae.eval.{function}: model must be a fastvae.models.VAE, got {type(model).__name__}"
        )
    return model


def check_positive_int(function: str, name: str, value, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"fastvae.eval.{function}: {name} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"fastvae.eval.{function}: {name} must be a positive int, got {value}")
    return int(value)


def check_seed(function: str, seed) -> Optional[int]:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"fastvae.eval.{function}: seed must be an int or None, got {type(seed).__name__}")
    return int(seed)


def check_nonnegative_float(function: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fastvae.eval.{function}: {name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"fastvae.eval.{function}: {name} must be finite and >= 0, got {value}")
    return float(value)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def num_data_points(function: str, data, num_points: Optional[int] = None) -> int:
    """How many points of ``data`` an evaluation reads: all, or the first ``num_points``."""
    if isinstance(data, Tensor):
        if data.dim() < 1:
            raise ValueError(f"fastvae.eval.{function}: data must be a tensor [N, *data_shape], got a scalar")
        total = data.shape[0]
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        total = len(data)
    else:
        raise TypeError(
            f"fastvae.eval.{function}: data must be a tensor [N, *data_shape] or a map-style "
            f"Dataset (with __len__ and __getitem__), got {type(data).__name__}"
        )
    num_points = check_positive_int(function, "num_points", num_points, allow_none=True)
    count = total if num_points is None else min(total, num_points)
    if count == 0:
        raise ValueError(f"fastvae.eval.{function}: data has no data points to evaluate")
    return count


def _as_float_batch(function: str, batch) -> Tensor:
    # Datasets that also return labels or ground-truth factors give (x, ...) tuples.
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"fastvae.eval.{function}: data items must be tensors, got {type(batch).__name__}")
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    if not batch.is_floating_point():
        raise TypeError(
            f"fastvae.eval.{function}: data must be floating point in [0, 1] (or uint8), got {batch.dtype}"
        )
    return batch.float()


def iterate_batches(
    function: str,
    data,
    batch_size: int,
    device: torch.device,
    num_points: Optional[int] = None,
    data_shape: Optional[tuple] = None,
) -> Iterator[Tensor]:
    """The first ``num_points`` points of ``data`` (all when None) in their order, as
    float32 batches [b, *data_shape] on ``device``.

    ``data`` is a tensor [N, *data_shape], a Dataset with a ``batch(indices)`` method
    (fast: one indexing per batch; ``indices`` a LongTensor), or any map-style Dataset
    whose items are tensors or tuples starting with one.  uint8 data is scaled to [0, 1].
    """
    batch_size = check_positive_int(function, "batch_size", batch_size)
    count = num_data_points(function, data, num_points)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        if isinstance(data, Tensor):
            batch = data[start:stop]
        elif callable(getattr(data, "batch", None)):
            batch = data.batch(torch.arange(start, stop))
        else:
            items = [_as_float_batch(function, data[i]) for i in range(start, stop)]
            batch = torch.stack(items)
        batch = _as_float_batch(function, batch).to(device)
        if data_shape is not None and tuple(batch.shape[1:]) != tuple(data_shape):
            raise ValueError(
                f"fastvae.eval.{function}: data points have shape {tuple(batch.shape[1:])} but the "
                f"model's data_shape is {tuple(data_shape)}"
            )
        yield batch


@contextlib.contextmanager
def evaluating(model: torch.nn.Module, seed: Optional[int]):
    """Run ``model`` in eval mode without gradients, with the random streams of the CPU
    and the model's device seeded by ``seed`` (left as they are when None); the caller's
    random state and the model's training flag are restored afterwards, so evaluating
    in the middle of training changes neither."""
    device = model_device(model)
    was_training = model.training
    forked = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked, enabled=seed is not None), torch.no_grad():
            if seed is not None:
                torch.default_generator.manual_seed(seed)
                if device.type == "cuda":
                    with torch.cuda.device(device):
                        torch.cuda.manual_seed(seed)
            model.eval()
            yield device
    finally:
        model.train(was_training)


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """The mean of ``values`` [N] and its standard error std/√N (unbiased std); NaN
    standard error for a single value, where it is undefined."""
    values = values.double()
    mean = values.mean().item()
    if values.numel() < 2:
        return mean, float("nan")
    return mean, (values.std() / math.sqrt(values.numel())).item()
