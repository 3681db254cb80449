"""Location-scale latent ops: ``sample_laplace``, ``sample_logistic`` and ``sample_cauchy``.

Argument checks and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference_location_scale` itself.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference_location_scale as reference
from ..validation import (
    check_broadcastable_to,
    check_finite,
    check_float_tensor,
    check_generator,
    check_nonnegative_number,
    check_reduction,
    check_same_device,
    check_same_shape,
)
from ._common import pick_backend, promoted_dtype, seed_for

# --------------------------------------------------------------------------------------
# Checks and dispatch
# --------------------------------------------------------------------------------------


def check_location_scale_args(op: str, loc, log_scale, prior_loc=None, prior_log_scale=None) -> None:
    """Checks shared by the location-scale ops (as check_latent_args for the Gaussian)."""
    check_float_tensor(op, "loc", loc, min_dim=1)
    check_float_tensor(op, "log_scale", log_scale, min_dim=1)
    check_same_shape(op, "log_scale", log_scale, "loc", loc)
    for name, prior in (("prior_loc", prior_loc), ("prior_log_scale", prior_log_scale)):
        if prior is not None:
            check_float_tensor(op, name, prior)
            check_broadcastable_to(op, name, prior, "loc", loc)
    named = [("loc", loc), ("log_scale", log_scale), ("prior_loc", prior_loc), ("prior_log_scale", prior_log_scale)]
    check_same_device(op, named)
    for name, tensor in named:
        if tensor is not None:
            check_finite(op, name, tensor)


def _prepare(op, loc, log_scale, prior_loc, prior_log_scale, free_bits, generator, reduction):
    check_location_scale_args(op, loc, log_scale, prior_loc, prior_log_scale)
    check_nonnegative_number(op, "free_bits", free_bits)
    check_reduction(op, reduction)
    check_generator(op, generator, loc.device)
    seed_offset = seed_for(loc.device, generator)
    backend = pick_backend(op, loc.device, promoted_dtype(loc, log_scale, prior_loc, prior_log_scale))
    return seed_offset, backend


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


def sample_laplace(
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Optional[Tensor] = None,
    prior_log_scale: Optional[Tensor] = None,
    free_bits: float = 0.0,
    generator: Optional[torch.Generator] = None,
    reduction: str = "batch",
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Reparameterized Laplace latent: sample, log q and analytic KL in one fused pass.

    z = loc + b·x with b = e^log_scale and x standard Laplace noise; the KL to
    Laplace(prior_loc, e^prior_log_scale) per element is
    log(b2/b1) + |Δ|/b2 + (b1/b2)·e^(−|Δ|/b1) − 1, Δ = loc − prior_loc.

    Args:
        loc, log_scale: q's location and log-scale, shape [B, ...] (batch first).
        prior_loc, prior_log_scale: the prior's, broadcastable to loc's shape (e.g.
            [1, C, 1, 1] or full-size for a conditional prior); None means 0.  They may
            require grad.
        free_bits: nats per latent dimension, as :func:`fastvae.gaussian_kl`.
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator).
        reduction: 'batch' → [B] (sum over all but the batch), 'none' → per element,
            'sum' → scalar, 'mean' → batch mean of the per-sample sums; applies to log q
            and the KL.

    Returns:
        (z, log_q, kl): z of loc's shape in the promoted dtype of loc and log_scale;
        log q(z|x) of the drawn z and the KL, float32 (float64 for float64 inputs),
        reduced by ``reduction``.  Everything is differentiable in loc, log_scale and the
        priors with the noise held fixed (log q's gradient is 0 in loc and −1 per element
        in log_scale).  The noise is Philox (docs/architecture.md, "Location-scale
        latents"), so ``torch.manual_seed`` reproduces it bit for bit.

    Example::

        >>> loc, log_scale = encoder(x).chunk(2, dim=1)
        >>> z, log_q, kl = fastvae.sample_laplace(loc, log_scale)
        >>> loss = (nll(decoder(z), x) + kl).mean()
    """
    op = "sample_laplace"
    seed_offset, backend = _prepare(op, loc, log_scale, prior_loc, prior_log_scale, free_bits, generator, reduction)
    return reference.sample_laplace(loc, log_scale, seed_offset, prior_loc, prior_log_scale, free_bits, reduction)


def sample_logistic(
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Optional[Tensor] = None,
    prior_log_scale: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduction: str = "batch",
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Reparameterized logistic latent: sample, log q and the single-sample KL estimate.

    z = loc + s·x with s = e^log_scale and x standard logistic noise.  The logistic KL has
    no closed form: ``kl`` is log q(z|x) − log p(z) at the same z, p the logistic
    (prior_loc, e^prior_log_scale), an unbiased estimate whose gradient flows through z.

    Args:
        loc, log_scale: q's location and log-scale, shape [B, ...].
        prior_loc, prior_log_scale, generator, reduction: as :func:`sample_laplace`.

    Returns:
        (z, log_q, kl) as :func:`sample_laplace` returns them.

    Example::

        >>> z, log_q, kl = fastvae.sample_logistic(loc, log_scale, reduction="mean")
    """
    op = "sample_logistic"
    seed_offset, backend = _prepare(op, loc, log_scale, prior_loc, prior_log_scale, 0.0, generator, reduction)
    return reference.sample_logistic(loc, log_scale, seed_offset, prior_loc, prior_log_scale, reduction)


def sample_cauchy(
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Optional[Tensor] = None,
    prior_log_scale: Optional[Tensor] = None,
    free_bits: float = 0.0,
    generator: Optional[torch.Generator] = None,
    reduction: str = "batch",
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Reparameterized Cauchy latent: sample, log q and analytic KL in one fused pass.

    z = loc + γ·x with γ = e^log_scale and x standard Cauchy noise; the KL to
    Cauchy(prior_loc, e^prior_log_scale) per element is
    log(((γ1 + γ2)² + Δ²)/(4·γ1·γ2)), Δ = loc − prior_loc, formed so that no scale or
    difference overflows it.

    Args:
        loc, log_scale: q's location and log-scale, shape [B, ...].
        prior_loc, prior_log_scale, free_bits, generator, reduction: as
            :func:`sample_laplace`.

    Returns:
        (z, log_q, kl) as :func:`sample_laplace` returns them.

    Example::

        >>> z, log_q, kl = fastvae.sample_cauchy(loc, log_scale, free_bits=0.1)
    """
    op = "sample_cauchy"
    seed_offset, backend = _prepare(op, loc, log_scale, prior_loc, prior_log_scale, free_bits, generator, reduction)
    return reference.sample_cauchy(loc, log_scale, seed_offset, prior_loc, prior_log_scale, free_bits, reduction)
