"""Argument checks shared by every op.

Checks of shape, dtype, device and size agreement always run: they read only
metadata, never tensor values, so they cost no device synchronization; so do the checks
of Python-number settings (finite, in range).  Checks of values (NaN, infinities, ranges,
grids) need a sync and run only when :func:`set_validate_args` has turned them on, and
never inside a graph that torch.compile is tracing.

The value checks refuse what an op's formula does not define: NaN anywhere; ±inf in
parameters (means, log-variances, logits, log-scales, mixture params), in data and in an
nll; +inf in log weights and log densities (``log_mean_exp``'s x, ``iwae_bound``'s
log_px_z and log_p) and −inf in ``iwae_bound``'s log_q, whose other infinity is a
legitimate zero weight; and data outside its domain (Bernoulli x outside [0, 1], logistic
x outside [−1, 1] or off its grid, uint8 levels of num_bins or more).  The samples and
means of the Bernoulli family take ±inf logits: they are the certain outcomes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
REDUCTIONS = ("batch", "none", "sum", "mean")

_validate_args = False


def set_validate_args(value: bool) -> None:
    """Turn value checks (those that need a device sync) on or off for every op.

    Off by default, like ``torch.distributions.Distribution.set_default_validate_args``
    is for speed-critical code.  The test suite turns it on.

    Example::

        >>> fastvae.set_validate_args(True)
    """
    global _validate_args
    _validate_args = bool(value)


def validate_args_enabled() -> bool:
    """Whether value checks are turned on (see :func:`set_validate_args`)."""
    return _validate_args


def value_checks_active() -> bool:
    """Whether value checks run now: turned on, and not inside a graph being traced by
    torch.compile, where reading a tensor's value would break the graph."""
    return _validate_args and not torch.compiler.is_compiling()


def check_float_tensor(op: str, name: str, tensor, min_dim: int = 0) -> None:
    """TypeError unless ``tensor`` is a floating tensor of a supported dtype."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"fastvae.{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"fastvae.{op}: {name} must have a floating dtype (float32, bfloat16, float16 or "
            f"float64), got {tensor.dtype}"
        )
    if tensor.dim() < min_dim:
        raise ValueError(
            f"fastvae.{op}: {name} must have at least {min_dim} dimension(s) "
            f"(batch first), got shape {tuple(tensor.shape)}"
        )


def check_same_shape(op: str, name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if tensor.shape != ref.shape:
        raise ValueError(
            f"fastvae.{op}: {name} has shape {tuple(tensor.shape)} but {ref_name} has shape "
            f"{tuple(ref.shape)}; they must match"
        )


def check_same_device(op: str, named: Sequence[tuple[str, Optional[torch.Tensor]]]) -> None:
    tensors = [(n, t) for n, t in named if isinstance(t, torch.Tensor)]
    if not tensors:
        return
    first_name, first = tensors[0]
    for name, tensor in tensors[1:]:
        if tensor.device != first.device:
            raise ValueError(
                f"fastvae.{op}: {name} is on {tensor.device} but {first_name} is on "
                f"{first.device}; all tensors must be on one device"
            )


def check_broadcastable_to(op: str, name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """ValueError unless ``tensor`` broadcasts to ``ref``'s shape without growing it."""
    try:
        shape = torch.broadcast_shapes(tensor.shape, ref.shape)
    except RuntimeError:
        shape = None
    if shape != ref.shape:
        raise ValueError(
            f"fastvae.{op}: {name} of shape {tuple(tensor.shape)} does not broadcast to "
            f"{ref_name}'s shape {tuple(ref.shape)}"
        )


def check_reduction(op: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"fastvae.{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_nonnegative_number(op: str, name: str, value) -> None:
    """A finite Python number >= 0 (a setting such as free_bits or a temperature: read in
    Python, so checked always)."""
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)):
        raise TypeError(f"fastvae.{op}: {name} must be a Python number, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"fastvae.{op}: {name} must be >= 0, got {value}")
    if value == math.inf:
        raise ValueError(f"fastvae.{op}: {name} must be finite, got {value}")


def check_generator(op: str, generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"fastvae.{op}: generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"fastvae.{op}: generator is on {generator.device} but the inputs are on {device}"
        )


def check_not_nan(op: str, name: str, tensor: torch.Tensor) -> None:
    """Value check (syncs): only when value checks are active.  For values whose
    infinities are meaningful (the logits of a certain outcome): only NaN is refused."""
    if value_checks_active() and tensor.numel() and bool(torch.isnan(tensor.detach()).any()):
        raise ValueError(f"fastvae.{op}: {name} contains NaN")


def check_finite(op: str, name: str, tensor: torch.Tensor) -> None:
    """Value check (syncs): only under set_validate_args(True)."""
    # detach: torch.isfinite of a tensor that requires grad records a graph holding it.
    if value_checks_active() and tensor.numel() and not bool(torch.isfinite(tensor.detach()).all()):
        raise ValueError(f"fastvae.{op}: {name} contains NaN or infinity")


def check_log_values(op: str, name: str, tensor: torch.Tensor, allowed_infinity: float) -> None:
    """Value check (syncs): only when value checks are active.  For log-values of which one
    infinity is meaningful: ``allowed_infinity`` = −inf for a log weight or density (a zero
    term), +inf for a log q that is subtracted (its weight is then 0).  NaN and the other
    infinity are refused."""
    if not value_checks_active() or not tensor.numel():
        return
    tensor = tensor.detach()
    refused = -allowed_infinity
    bad = torch.isnan(tensor) | (tensor == refused)
    if bool(bad.any()):
        allowed, found = ("-inf", "+inf") if allowed_infinity < 0 else ("+inf", "-inf")
        what = "NaN" if bool(torch.isnan(tensor).any()) else found
        raise ValueError(
            f"fastvae.{op}: {name} contains {what}; it may hold finite values and {allowed}, "
            f"but not NaN or {found}"
        )
