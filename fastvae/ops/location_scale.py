"""Location-scale latent ops: ``sample_laplace``, ``sample_logistic`` and ``sample_cauchy``.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference_location_scale` itself; the others run one fused kernel forward
(z, log q and the KL) and one backward that regenerates the noise from the call's seed
(``kernels/location_scale.py``, csrc/cpu/location_scale.cpp, csrc/cuda/location_scale.cu).
Free bits and the batch reductions are small torch ops on the kernel's per-element or
per-sample outputs, so autograd routes their gradient back into the fused backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference_location_scale as reference
from ..reference import free_bits_terms, reduce, sample_dtype
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
from ._common import (fill_absent, fused_call, kernel_module, no_double_backward, pick_backend, promoted_dtype,
                      seed_for)
from .latent import gaussian_grad_outputs

# csrc/include/fastvae/location_scale.h, enum LocationScaleFamily.
FAMILY_CODES = {"laplace": 0, "logistic": 1, "cauchy": 2}
OUTPUT_MODES = ("element", "row")


# --------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------


def _location_scale_fwd_outputs(loc: Tensor, log_scale: Tensor, log_q_mode: str, kl_mode: str):
    """The outputs of ``location_scale_fwd``, allocated: z, contiguous of loc's shape in
    the promoted dtype of loc and log_scale; log q and the KL, float32, per element of
    loc's shape (mode 'element') or per sample [B] ('row')."""
    shape = tuple(loc.shape)
    z = loc.new_empty(shape, dtype=sample_dtype(loc, log_scale))
    log_q = loc.new_empty(shape if log_q_mode == "element" else shape[:1], dtype=torch.float32)
    kl = loc.new_empty(shape if kl_mode == "element" else shape[:1], dtype=torch.float32)
    return z, log_q, kl


@torch.library.custom_op("fastvae::location_scale_fwd", mutates_args=())
def _location_scale_fwd(
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Optional[Tensor],
    prior_log_scale: Optional[Tensor],
    seed_offset: Tensor,
    family: int,
    log_q_mode: str,
    kl_mode: str,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(z, log q, KL) of the family (FAMILY_CODES), log q and the KL per their modes."""
    z, log_q, kl = outputs = _location_scale_fwd_outputs(loc, log_scale, log_q_mode, kl_mode)
    kernel_module(backend, "location_scale").location_scale_fwd(
        loc.contiguous(), log_scale.contiguous(), prior_loc, prior_log_scale, seed_offset, family, log_q_mode, kl_mode,
        z=z, log_q=log_q, kl=kl,
    )
    return outputs


@_location_scale_fwd.register_fake
def _(loc, log_scale, prior_loc, prior_log_scale, seed_offset, family, log_q_mode, kl_mode, backend):
    return _location_scale_fwd_outputs(loc, log_scale, log_q_mode, kl_mode)


def _location_scale_bwd_impl(grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale, seed_offset,
                             family: int, prior_loc_grad: bool, prior_log_scale_grad: bool, backend: str):
    """What ``location_scale_bwd`` runs: its outputs allocated (as the Gaussian family's:
    ops/latent.py, gaussian_grad_outputs), the backend's launcher writing them."""
    outputs = gaussian_grad_outputs(grad_kl is not None, loc, log_scale, prior_loc, prior_log_scale, prior_loc_grad,
                                    prior_log_scale_grad)
    grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale = outputs

    def contiguous(tensor):
        return None if tensor is None else tensor.contiguous()

    kernel_module(backend, "location_scale").location_scale_bwd(
        contiguous(grad_z), contiguous(grad_log_q), contiguous(grad_kl), loc.contiguous(), log_scale.contiguous(),
        prior_loc, prior_log_scale, seed_offset, family,
        grad_loc=grad_loc, grad_log_scale=grad_log_scale, grad_prior_loc=grad_prior_loc,
        grad_prior_log_scale=grad_prior_log_scale,
    )
    return outputs


@torch.library.custom_op("fastvae::location_scale_bwd", mutates_args=())
def _location_scale_bwd(
    grad_z: Optional[Tensor],
    grad_log_q: Optional[Tensor],
    grad_kl: Optional[Tensor],
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Optional[Tensor],
    prior_log_scale: Optional[Tensor],
    seed_offset: Tensor,
    family: int,
    prior_loc_grad: bool,
    prior_log_scale_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale); the prior
    gradients per element of loc's shape, empty when not asked for.  The noise is
    regenerated from seed_offset."""
    outputs = _location_scale_bwd_impl(grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale,
                                       seed_offset, family, prior_loc_grad, prior_log_scale_grad, backend)
    return fill_absent(outputs, loc)


@_location_scale_bwd.register_fake
def _(grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale, seed_offset, family, prior_loc_grad,
      prior_log_scale_grad, backend):
    outputs = gaussian_grad_outputs(grad_kl is not None, loc, log_scale, prior_loc, prior_log_scale, prior_loc_grad,
                                    prior_log_scale_grad)
    return fill_absent(outputs, loc)


def _setup_context(ctx, inputs, output):
    loc, log_scale, prior_loc, prior_log_scale, seed_offset, family, log_q_mode, kl_mode, backend = inputs
    ctx.save_for_backward(loc, log_scale, prior_loc, prior_log_scale, seed_offset)
    ctx.family, ctx.backend = family, backend
    # An unused output gets None rather than zeros, so the kernel skips its term.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_z, grad_log_q, grad_kl):
    loc, log_scale, prior_loc, prior_log_scale, seed_offset = ctx.saved_tensors
    prior_loc_grad = prior_loc is not None and ctx.needs_input_grad[2]
    prior_log_scale_grad = prior_log_scale is not None and ctx.needs_input_grad[3]
    grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale = fused_call(
        _location_scale_bwd, grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale, seed_offset,
        ctx.family, prior_loc_grad, prior_log_scale_grad, ctx.backend,
    )
    # Only the KL depends on the prior; without its gradient the prior gets none.
    prior_loc_grad = prior_loc_grad and grad_kl is not None
    prior_log_scale_grad = prior_log_scale_grad and grad_kl is not None
    # A broadcast prior's gradient is the sum over its broadcast dimensions (a torch
    # reduction: fixed order, so bitwise repeatable).
    if prior_loc_grad:
        grad_prior_loc = grad_prior_loc.sum_to_size(prior_loc.shape).to(prior_loc.dtype)
    if prior_log_scale_grad:
        grad_prior_log_scale = grad_prior_log_scale.sum_to_size(prior_log_scale.shape).to(prior_log_scale.dtype)
    return (
        grad_loc,
        grad_log_scale,
        grad_prior_loc if prior_loc_grad else None,
        grad_prior_log_scale if prior_log_scale_grad else None,
        None, None, None, None, None,
    )


_location_scale_fwd.register_autograd(_backward, setup_context=_setup_context)
_location_scale_bwd.register_autograd(
    no_double_backward("sample_laplace / sample_logistic / sample_cauchy"),
    setup_context=lambda ctx, inputs, output: None,
)

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


def _fused(family, loc, log_scale, prior_loc, prior_log_scale, seed_offset, free_bits, reduction, backend):
    """(z, log q, KL) from the fused kernels, reduced by ``reduction`` (free bits on the
    KL's per-element terms, whose batch means they need)."""
    log_q_mode = "element" if reduction == "none" else "row"
    kl_mode = "element" if reduction == "none" or free_bits > 0 else "row"
    z, log_q, kl = fused_call(_location_scale_fwd, loc, log_scale, prior_loc, prior_log_scale, seed_offset,
                              FAMILY_CODES[family], log_q_mode, kl_mode, backend)
    if kl_mode == "element":
        kl = free_bits_terms(kl, free_bits)
    return z, reduce(log_q, reduction), reduce(kl, reduction)


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
    if backend == "torch":
        return reference.sample_laplace(loc, log_scale, seed_offset, prior_loc, prior_log_scale, free_bits, reduction)
    return _fused("laplace", loc, log_scale, prior_loc, prior_log_scale, seed_offset, free_bits, reduction, backend)


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
    if backend == "torch":
        return reference.sample_logistic(loc, log_scale, seed_offset, prior_loc, prior_log_scale, reduction)
    return _fused("logistic", loc, log_scale, prior_loc, prior_log_scale, seed_offset, 0.0, reduction, backend)


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
    if backend == "torch":
        return reference.sample_cauchy(loc, log_scale, seed_offset, prior_loc, prior_log_scale, free_bits, reduction)
    return _fused("cauchy", loc, log_scale, prior_loc, prior_log_scale, seed_offset, free_bits, reduction, backend)
