"""Truncated-normal latent op: ``sample_truncated_normal``.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference_truncated_normal` itself; the others run one fused kernel forward
(z, log q and the KL estimate) and one backward that regenerates the uniform noise
(``kernels/truncated_normal.py``, csrc/*/truncated_normal.*).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import reference_truncated_normal as reference_tn
from ..validation import (
    check_broadcastable_to,
    check_finite,
    check_float_tensor,
    check_generator,
    check_reduction,
    check_same_device,
    check_same_shape,
)
from ._common import pick_backend, promoted_dtype, seed_for


def check_interval(op: str, low, high) -> None:
    """low and high: Python numbers, not NaN, low < high, not both infinite (read in
    Python, so checked always)."""
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, (torch.Tensor, bool)) or not isinstance(value, (int, float)):
            raise TypeError(f"fastvae.{op}: {name} must be a Python number, got {type(value).__name__}")
        if math.isnan(value):
            raise ValueError(f"fastvae.{op}: {name} must not be NaN")
    if not low < high:
        raise ValueError(f"fastvae.{op}: low must be < high, got low={low}, high={high}")
    if math.isinf(low) and math.isinf(high):
        raise ValueError(f"fastvae.{op}: low and high must not both be infinite (use a normal latent)")


def check_truncated_normal_args(op: str, loc, log_scale, low, high, prior_loc=None, prior_log_scale=None) -> None:
    check_float_tensor(op, "loc", loc, min_dim=1)
    check_float_tensor(op, "log_scale", log_scale, min_dim=1)
    check_same_shape(op, "log_scale", log_scale, "loc", loc)
    for name, prior in (("prior_loc", prior_loc), ("prior_log_scale", prior_log_scale)):
        if prior is not None:
            check_float_tensor(op, name, prior)
            check_broadcastable_to(op, name, prior, "loc", loc)
    named = [("loc", loc), ("log_scale", log_scale), ("prior_loc", prior_loc), ("prior_log_scale", prior_log_scale)]
    check_same_device(op, named)
    check_interval(op, low, high)
    for name, tensor in named:
        if tensor is not None:
            check_finite(op, name, tensor)


def sample_truncated_normal(
    loc: Tensor,
    log_scale: Tensor,
    low: float,
    high: float,
    prior_loc: Optional[Tensor] = None,
    prior_log_scale: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduction: str = "batch",
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Reparameterized sample of a truncated-normal latent, with its log density and KL.

    q(z|x) is N(loc, σ²), σ = e^log_scale, truncated to [low, high]:
    z = loc + σ·Φ⁻¹((1 − u)·Φ(α) + u·Φ(β)), α = (low − loc)/σ, β = (high − loc)/σ, u a
    Philox uniform; computed in log space so it stays finite and inside [low, high] for any
    loc and σ (docs/architecture.md, "The truncated normal").

    Args:
        loc, log_scale: q's location and log scale (log σ), same shape [B, ...].
        low, high: the interval, Python floats, low < high; either may be ±inf (not both).
        prior_loc, prior_log_scale: the prior N(prior_loc, e^(2·prior_log_scale))
            truncated to the same [low, high]; broadcastable to loc's shape, None means 0.
            They may require grad.
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator).
        reduction: 'batch' → [B] (sum over all but the batch), 'none' → per element,
            'sum' → scalar, 'mean' → batch mean of the per-sample sums.

    Returns:
        (z, log_q, kl): z of loc's shape in the promoted dtype of loc and log_scale, inside
        [low, high]; log_q = log q(z|x) of the drawn z and kl = log q(z) − log p(z), the
        single-sample estimate of KL(q ‖ p) at the same z, each reduced by ``reduction``,
        float32 (float64 for float64 inputs).  All are differentiable in loc, log_scale
        and the priors with the noise held fixed (the gradient of z is the implicit
        derivative of the CDF).

    Example::

        >>> loc, log_scale = torch.zeros(8, 16), torch.zeros(8, 16)
        >>> z, log_q, kl = fastvae.sample_truncated_normal(loc, log_scale, 0.0, math.inf)
        >>> bool((z >= 0).all())
        True
    """
    op = "sample_truncated_normal"
    check_truncated_normal_args(op, loc, log_scale, low, high, prior_loc, prior_log_scale)
    check_reduction(op, reduction)
    check_generator(op, generator, loc.device)
    low, high = float(low), float(high)
    seed_offset = seed_for(loc.device, generator)
    backend = pick_backend(op, loc.device, promoted_dtype(loc, log_scale, prior_loc, prior_log_scale))
    del backend  # every backend runs the reference until the fused kernels land
    return reference_tn.sample_truncated_normal(loc, log_scale, low, high, seed_offset, prior_loc, prior_log_scale,
                                                reduction)
