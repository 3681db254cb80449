"""Discrete latent op: ``sample_categorical``.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference` itself; the others run one fused kernel forward (Gumbel-softmax
sample and per-variable KL) and one backward (``kernels/discrete.py``).  The batch
reductions are small torch ops on the kernel's per-variable KL, so autograd routes their
gradient back into the fused backward.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import reference
from ..validation import (
    check_broadcastable_to,
    check_finite,
    check_float_tensor,
    check_generator,
    check_reduction,
    check_same_device,
)
from ._common import fill_absent, fused_call, kernel_module, no_double_backward, pick_backend, promoted_dtype, seed_for

# --------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------


def _categorical_fwd_outputs(logits: Tensor):
    """The outputs of ``categorical_fwd``, allocated (the fake returns them, the real op
    hands them to the launcher): z, contiguous, logits' shape and dtype; the KL per
    variable, float32 of logits' shape without the last dimension."""
    z = torch.empty_like(logits, memory_format=torch.contiguous_format)
    return z, logits.new_empty(tuple(logits.shape[:-1]), dtype=torch.float32)


@torch.library.custom_op("fastvae::categorical_fwd", mutates_args=())
def _categorical_fwd(
    logits: Tensor,
    prior_logits: Optional[Tensor],
    seed_offset: Tensor,
    tau: float,
    hard: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """z (logits' shape and dtype) and the KL per variable (float32, logits' shape
    without the last dimension)."""
    z, kl = outputs = _categorical_fwd_outputs(logits)
    kernel_module(backend, "discrete").categorical_fwd(logits.contiguous(), prior_logits, seed_offset, tau, hard,
                                                       z=z, kl=kl)
    return outputs


@_categorical_fwd.register_fake
def _(logits, prior_logits, seed_offset, tau, hard, backend):
    return _categorical_fwd_outputs(logits)


def _categorical_bwd_outputs(grad_kl: Optional[Tensor], logits: Tensor, prior_logits: Optional[Tensor],
                             prior_grad: bool):
    """The outputs of ``categorical_bwd``, allocated: grad_logits, contiguous, logits'
    shape and dtype; the prior's gradient per element of logits' shape (summed to the
    prior's shape afterwards), in the prior's dtype when it is full-size and float32 when
    it is broadcast, None unless asked for and the KL has a gradient."""
    grad_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if not prior_grad or grad_kl is None:
        return grad_logits, None
    dtype = prior_logits.dtype if prior_logits.shape == logits.shape else torch.float32
    return grad_logits, logits.new_empty(tuple(logits.shape), dtype=dtype)


@torch.library.custom_op("fastvae::categorical_bwd", mutates_args=())
def _categorical_bwd(
    grad_z: Optional[Tensor],
    grad_kl: Optional[Tensor],
    logits: Tensor,
    prior_logits: Optional[Tensor],
    seed_offset: Tensor,
    tau: float,
    prior_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(grad_logits, grad_prior_logits); the prior gradient per element of logits' shape,
    empty when not asked for (or when there is no grad_kl)."""
    grad_logits, grad_prior = outputs = _categorical_bwd_outputs(grad_kl, logits, prior_logits, prior_grad)
    kernel_module(backend, "discrete").categorical_bwd(
        None if grad_z is None else grad_z.contiguous(),
        None if grad_kl is None else grad_kl.contiguous(),
        logits.contiguous(), prior_logits, seed_offset, tau, grad_logits=grad_logits, grad_prior=grad_prior,
    )
    return fill_absent(outputs, logits)


@_categorical_bwd.register_fake
def _(grad_z, grad_kl, logits, prior_logits, seed_offset, tau, prior_grad, backend):
    return fill_absent(_categorical_bwd_outputs(grad_kl, logits, prior_logits, prior_grad), logits)


def _setup_context(ctx, inputs, output):
    logits, prior_logits, seed_offset, tau, hard, backend = inputs
    # Only the inputs are saved: the backward regenerates the Gumbel noise from
    # seed_offset (see kernels/discrete.py), and hard's gradient is the soft sample's.
    ctx.save_for_backward(logits, prior_logits, seed_offset)
    ctx.tau, ctx.backend = tau, backend
    # An unused output (z or the KL) then brings None, and the kernel skips its term.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_z, grad_kl):
    logits, prior_logits, seed_offset = ctx.saved_tensors
    prior_grad = prior_logits is not None and ctx.needs_input_grad[1] and grad_kl is not None
    if grad_z is None and grad_kl is None:
        return None, None, None, None, None, None
    grad_logits, grad_prior = fused_call(
        _categorical_bwd, grad_z, grad_kl, logits, prior_logits, seed_offset, ctx.tau, prior_grad, ctx.backend
    )
    # A broadcast prior's gradient is the sum over its broadcast dimensions (a torch
    # reduction: fixed order, so bitwise repeatable).
    if prior_grad:
        grad_prior = grad_prior.sum_to_size(prior_logits.shape).to(prior_logits.dtype)
    return grad_logits, grad_prior if prior_grad else None, None, None, None, None


_categorical_fwd.register_autograd(_backward, setup_context=_setup_context)
_categorical_bwd.register_autograd(
    no_double_backward("sample_categorical"), setup_context=lambda ctx, inputs, output: None
)


# --------------------------------------------------------------------------------------
# Checks and dispatch
# --------------------------------------------------------------------------------------


def _check_categorical(op: str, logits, tau, hard, prior_logits) -> None:
    check_float_tensor(op, "logits", logits)
    if logits.dim() < 2 or logits.shape[-1] == 0:
        raise ValueError(
            f"fastvae.{op}: logits must have shape [B, ..., C] (batch first, C >= 1 categories "
            f"last), got shape {tuple(logits.shape)}"
        )
    if isinstance(tau, (bool, torch.Tensor)) or not isinstance(tau, (int, float)):
        raise TypeError(f"fastvae.{op}: tau must be a Python number, got {type(tau).__name__}")
    if not (tau > 0 and math.isfinite(tau)):  # also rejects NaN
        raise ValueError(f"fastvae.{op}: tau (the temperature) must be positive and finite, got {tau}")
    if not isinstance(hard, bool):
        raise TypeError(f"fastvae.{op}: hard must be a bool, got {type(hard).__name__}")
    if prior_logits is not None:
        check_float_tensor(op, "prior_logits", prior_logits)
        check_broadcastable_to(op, "prior_logits", prior_logits, "logits", logits)
        # The softmax runs over the prior's own last dimension, so it must hold the C
        # categories: one of size 1 (or a 0-dim prior) would broadcast log q = 0 to every
        # category, not a distribution.
        if prior_logits.dim() == 0 or prior_logits.shape[-1] != logits.shape[-1]:
            raise ValueError(
                f"fastvae.{op}: prior_logits of shape {tuple(prior_logits.shape)} must have the "
                f"{logits.shape[-1]} categories of logits as its last dimension"
            )
    check_same_device(op, [("logits", logits), ("prior_logits", prior_logits)])
    for name, tensor in (("logits", logits), ("prior_logits", prior_logits)):
        if tensor is not None:
            check_finite(op, name, tensor)


# The widest row the kernels hold in one block: kernels/discrete.py's MAX_CATEGORIES,
# repeated here so that the check imports no kernel module (torch.compile traces it).
KERNEL_MAX_CATEGORIES = 65536


def _check_kernel_limits(op: str, backend: str, logits: Tensor) -> None:
    limit = KERNEL_MAX_CATEGORIES
    if logits.shape[-1] > limit:
        raise ValueError(
            f"fastvae.{op}: logits has {logits.shape[-1]} categories (its last dimension); the "
            f"{backend} backend holds a row in one block and takes at most {limit}; use the torch "
            f"backend (fastvae.use_backend('torch')) for wider rows"
        )


# --------------------------------------------------------------------------------------
# Public op
# --------------------------------------------------------------------------------------


def sample_categorical(
    logits: Tensor,
    tau: float,
    hard: bool = False,
    prior_logits: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    reduction: str = "batch",
) -> tuple[Tensor, Tensor]:
    r"""Gumbel-softmax sample and categorical KL in one fused pass: the latent side of the
    ELBO for a discrete latent (Jang et al.; Maddison et al. 2017).

    z = softmax((logits + g) / tau) over the last dimension, g standard Gumbel noise;
    with ``hard``, z is the one-hot of its argmax in the forward and the soft sample's
    gradient flows in the backward (straight-through).  The KL is the analytic
    KL(Cat(softmax(logits)) ‖ Cat(softmax(prior_logits))) of each variable:
    Σ_c π_c·(log π_c − log π_p,c).

    Replaces ``z = F.gumbel_softmax(logits, tau, hard); kl = kl_divergence(
    Categorical(logits=logits), Categorical(logits=prior_logits)).sum(1)`` with one
    read of the logits.

    Args:
        logits: unnormalized log-probabilities of q(z|x), shape [B, ..., C]: batch first,
            C >= 1 categories last, any number of categorical variables in between
            (float32, bfloat16, float16 or float64).  The Triton backend takes
            C <= 65536; the torch backend any C.
        tau: the temperature, a Python number > 0; small tau gives nearly one-hot soft
            samples (and large-variance gradients).
        hard: straight-through: return one-hot samples, differentiate the soft ones.
        prior_logits: the prior's logits, broadcastable to logits' shape with the C
            categories last (e.g. [C], [1, C] or full-size for a conditional prior); None
            means uniform.  It may require grad.
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator; leave it None under torch.compile).
        reduction: 'batch' → [B] (sum over all but the batch), 'none' → per variable
            (logits' shape without the last dimension), 'sum' → scalar, 'mean' → batch
            mean of the per-sample sums.

    Returns:
        (z, kl): z of logits' shape and dtype (the Gumbel noise is Philox, see
        :mod:`fastvae.random`, so ``torch.manual_seed`` reproduces it bit for bit); kl
        in nats, float32 (float64 for float64 inputs), reduced by ``reduction``.

    Example::

        >>> logits = encoder(x).view(-1, 32, 10)        # 32 variables of 10 categories
        >>> z, kl = fastvae.sample_categorical(logits, tau=0.5, hard=True)
        >>> loss = (nll(decoder(z.flatten(1)), x) + kl).mean()
    """
    op = "sample_categorical"
    _check_categorical(op, logits, tau, hard, prior_logits)
    check_reduction(op, reduction)
    check_generator(op, generator, logits.device)
    seed_offset = seed_for(logits.device, generator)
    backend = pick_backend(op, logits.device, promoted_dtype(logits, prior_logits))
    if backend == "torch":
        return reference.sample_categorical(logits, float(tau), seed_offset, hard, prior_logits, reduction)
    _check_kernel_limits(op, backend, logits)
    z, kl = fused_call(_categorical_fwd, logits, prior_logits, seed_offset, float(tau), hard, backend)
    return z, reference.reduce(kl, reduction)
