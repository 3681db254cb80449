"""Truncated-normal latent op: ``sample_truncated_normal``.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference_truncated_normal` itself; the others run one fused kernel forward
(z, log q and the KL estimate, per element or per sample) and one backward that
regenerates the uniform noise from the call's seed (``kernels/truncated_normal.py``,
csrc/cpu/truncated_normal.cpp, csrc/cuda/truncated_normal.cu).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import reference, reference_truncated_normal as reference_tn
from ..validation import (
    check_broadcastable_to,
    check_finite,
    check_float_tensor,
    check_generator,
    check_reduction,
    check_same_device,
    check_same_shape,
)
from ._common import fill_absent, fused_call, kernel_module, no_double_backward, pick_backend, promoted_dtype, seed_for

FAMILY = "truncated_normal"


# --------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------


def _fwd_outputs(loc: Tensor, log_scale: Tensor, per_element: bool):
    """z (contiguous, loc's shape, the promoted dtype of loc and log_scale); log_q and kl,
    float32, per element of loc's shape or per sample [B]."""
    z = loc.new_empty(tuple(loc.shape), dtype=reference.sample_dtype(loc, log_scale))
    shape = tuple(loc.shape) if per_element else (loc.shape[0],)
    return z, loc.new_empty(shape, dtype=torch.float32), loc.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("fastvae::truncated_normal_fwd", mutates_args=())
def _truncated_normal_fwd(
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Optional[Tensor],
    prior_log_scale: Optional[Tensor],
    seed_offset: Tensor,
    low: float,
    high: float,
    per_element: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(z, log_q, kl): log_q and kl per element or per sample."""
    z, log_q, kl = outputs = _fwd_outputs(loc, log_scale, per_element)
    kernel_module(backend, FAMILY).truncated_normal_fwd(
        loc.contiguous(), log_scale.contiguous(), prior_loc, prior_log_scale, seed_offset, low, high, per_element,
        z=z, log_q=log_q, kl=kl,
    )
    return outputs


@_truncated_normal_fwd.register_fake
def _(loc, log_scale, prior_loc, prior_log_scale, seed_offset, low, high, per_element, backend):
    return _fwd_outputs(loc, log_scale, per_element)


def _grad_outputs(loc, log_scale, prior_loc, prior_log_scale, prior_loc_grad: bool, prior_log_scale_grad: bool):
    """grad_loc, grad_log_scale (contiguous, in loc's and log_scale's dtypes); each prior's
    gradient per element of loc's shape (in the prior's dtype when full-size, float32 when
    broadcast: summed to its shape afterwards), None unless asked for."""
    def prior_grad(prior, wanted):
        if not wanted:
            return None
        return loc.new_empty(tuple(loc.shape), dtype=prior.dtype if prior.shape == loc.shape else torch.float32)

    return (
        torch.empty_like(loc, memory_format=torch.contiguous_format),
        torch.empty_like(log_scale, memory_format=torch.contiguous_format),
        prior_grad(prior_loc, prior_loc_grad),
        prior_grad(prior_log_scale, prior_log_scale_grad),
    )


@torch.library.custom_op("fastvae::truncated_normal_bwd", mutates_args=())
def _truncated_normal_bwd(
    grad_z: Optional[Tensor],
    grad_log_q: Optional[Tensor],
    grad_kl: Optional[Tensor],
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Optional[Tensor],
    prior_log_scale: Optional[Tensor],
    seed_offset: Tensor,
    low: float,
    high: float,
    prior_loc_grad: bool,
    prior_log_scale_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale); the prior gradients
    per element of loc's shape, empty when not asked for."""
    outputs = _grad_outputs(loc, log_scale, prior_loc, prior_log_scale, prior_loc_grad, prior_log_scale_grad)
    grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale = outputs
    kernel_module(backend, FAMILY).truncated_normal_bwd(
        None if grad_z is None else grad_z.contiguous(),
        None if grad_log_q is None else grad_log_q.contiguous(),
        None if grad_kl is None else grad_kl.contiguous(),
        loc.contiguous(), log_scale.contiguous(), prior_loc, prior_log_scale, seed_offset, low, high,
        grad_loc=grad_loc, grad_log_scale=grad_log_scale, grad_prior_loc=grad_prior_loc,
        grad_prior_log_scale=grad_prior_log_scale,
    )
    return fill_absent(outputs, loc)


@_truncated_normal_bwd.register_fake
def _(grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale, seed_offset, low, high, prior_loc_grad,
      prior_log_scale_grad, backend):
    return fill_absent(_grad_outputs(loc, log_scale, prior_loc, prior_log_scale, prior_loc_grad,
                                     prior_log_scale_grad), loc)


def _setup_context(ctx, inputs, output):
    loc, log_scale, prior_loc, prior_log_scale, seed_offset, low, high, per_element, backend = inputs
    ctx.save_for_backward(loc, log_scale, prior_loc, prior_log_scale, seed_offset)
    ctx.low, ctx.high, ctx.backend = low, high, backend
    # An unused output gets None rather than zeros, so the kernel skips its term.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_z, grad_log_q, grad_kl):
    loc, log_scale, prior_loc, prior_log_scale, seed_offset = ctx.saved_tensors
    # Only the KL depends on the prior.
    prior_loc_grad = prior_loc is not None and ctx.needs_input_grad[2] and grad_kl is not None
    prior_log_scale_grad = prior_log_scale is not None and ctx.needs_input_grad[3] and grad_kl is not None
    if grad_log_q is not None and grad_kl is not None and grad_log_q.shape != grad_kl.shape:
        raise RuntimeError("fastvae.sample_truncated_normal: log_q's and kl's gradients differ in shape")
    outputs = fused_call(_truncated_normal_bwd, grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc,
                         prior_log_scale, seed_offset, ctx.low, ctx.high, prior_loc_grad, prior_log_scale_grad,
                         ctx.backend)
    grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale = outputs
    # A broadcast prior's gradient is the sum over its broadcast dimensions.
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


_truncated_normal_fwd.register_autograd(_backward, setup_context=_setup_context)
_truncated_normal_bwd.register_autograd(
    no_double_backward("sample_truncated_normal"), setup_context=lambda ctx, inputs, output: None
)


# --------------------------------------------------------------------------------------
# Checks and dispatch
# --------------------------------------------------------------------------------------


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
    if backend == "torch":
        return reference_tn.sample_truncated_normal(loc, log_scale, low, high, seed_offset, prior_loc,
                                                    prior_log_scale, reduction)
    per_element = reduction == "none"
    z, log_q, kl = fused_call(_truncated_normal_fwd, loc, log_scale, prior_loc, prior_log_scale, seed_offset, low,
                              high, per_element, backend)
    return z, reference.reduce(log_q, reduction), reference.reduce(kl, reduction)
