"""Importance-weighted (IWAE) ops: ``sample_gaussian_k``, ``log_mean_exp`` and ``iwae_bound``.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference` itself; the others run one fused kernel forward and one
backward (``kernels/iwae.py``).  Together they give Burda et al.'s (2016) bound::

    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, num_samples=K)
    log_px_z = -decoder_nll(z)                      # [K, B]
    bound = fastvae.iwae_bound(log_px_z, log_p, log_q)  # [B]
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import reference
from ..validation import (
    check_float_tensor,
    check_generator,
    check_log_values,
    check_same_device,
    check_same_shape,
)
from ._common import fill_absent, fused_call, kernel_module, no_double_backward, pick_backend, promoted_dtype, seed_for
from .latent import check_latent_args, gaussian_grad_outputs


# --------------------------------------------------------------------------------------
# Custom ops: K samples with their log densities
# --------------------------------------------------------------------------------------


def _sample_gaussian_k_fwd_outputs(mu: Tensor, logvar: Tensor, num_samples: int):
    """The outputs of ``sample_gaussian_k_fwd``, allocated (the fake returns them, the real
    op hands them to the launcher): z, contiguous [K, *mu.shape] in the promoted dtype of
    mu and logvar; log_q and log_p, float32 [K, B]."""
    z = mu.new_empty((num_samples,) + tuple(mu.shape), dtype=reference.sample_dtype(mu, logvar))
    log_q = mu.new_empty((num_samples, mu.shape[0]), dtype=torch.float32)
    return z, log_q, torch.empty_like(log_q)


@torch.library.custom_op("fastvae::sample_gaussian_k_fwd", mutates_args=())
def _sample_gaussian_k_fwd(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor],
    prior_logvar: Optional[Tensor],
    seed_offset: Tensor,
    num_samples: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(z [K, *mu.shape], log_q [K, B], log_p [K, B])."""
    z, log_q, log_p = outputs = _sample_gaussian_k_fwd_outputs(mu, logvar, num_samples)
    kernel_module(backend, "iwae").sample_gaussian_k_fwd(
        mu.contiguous(), logvar.contiguous(), prior_mu, prior_logvar, seed_offset, num_samples,
        z=z, log_q=log_q, log_p=log_p,
    )
    return outputs


@_sample_gaussian_k_fwd.register_fake
def _(mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, backend):
    return _sample_gaussian_k_fwd_outputs(mu, logvar, num_samples)


@torch.library.custom_op("fastvae::sample_gaussian_k_bwd", mutates_args=())
def _sample_gaussian_k_bwd(
    grad_z: Optional[Tensor],
    grad_log_q: Optional[Tensor],
    grad_log_p: Optional[Tensor],
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor],
    prior_logvar: Optional[Tensor],
    seed_offset: Tensor,
    num_samples: int,
    prior_mu_grad: bool,
    prior_logvar_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar); the prior gradients per
    element of mu's shape, empty when not asked for."""
    grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar = outputs = gaussian_grad_outputs(
        grad_log_p is not None, mu, logvar, prior_mu, prior_logvar, prior_mu_grad, prior_logvar_grad
    )
    kernel_module(backend, "iwae").sample_gaussian_k_bwd(
        None if grad_z is None else grad_z.contiguous(),
        None if grad_log_q is None else grad_log_q.contiguous(),
        None if grad_log_p is None else grad_log_p.contiguous(),
        mu.contiguous(), logvar.contiguous(), prior_mu, prior_logvar, seed_offset, num_samples,
        grad_mu=grad_mu, grad_logvar=grad_logvar, grad_prior_mu=grad_prior_mu, grad_prior_logvar=grad_prior_logvar,
    )
    return fill_absent(outputs, mu)


@_sample_gaussian_k_bwd.register_fake
def _(grad_z, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples,
      prior_mu_grad, prior_logvar_grad, backend):
    return fill_absent(
        gaussian_grad_outputs(grad_log_p is not None, mu, logvar, prior_mu, prior_logvar, prior_mu_grad,
                              prior_logvar_grad),
        mu,
    )


def _sample_gaussian_k_setup_context(ctx, inputs, output):
    mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, backend = inputs
    ctx.save_for_backward(mu, logvar, prior_mu, prior_logvar, seed_offset)
    ctx.num_samples, ctx.backend = num_samples, backend
    # Unused outputs get None rather than zeros, so the kernel skips their terms.
    ctx.set_materialize_grads(False)


def _sample_gaussian_k_backward(ctx, grad_z, grad_log_q, grad_log_p):
    mu, logvar, prior_mu, prior_logvar, seed_offset = ctx.saved_tensors
    prior_mu_grad = prior_mu is not None and ctx.needs_input_grad[2]
    prior_logvar_grad = prior_logvar is not None and ctx.needs_input_grad[3]
    grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar = fused_call(
        _sample_gaussian_k_bwd, grad_z, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset,
        ctx.num_samples, prior_mu_grad, prior_logvar_grad, ctx.backend,
    )
    # Only log p depends on the prior; without its gradient the prior gets none.
    prior_mu_grad = prior_mu_grad and grad_log_p is not None
    prior_logvar_grad = prior_logvar_grad and grad_log_p is not None
    # A broadcast prior's gradient is the sum over its broadcast dimensions (a torch
    # reduction: fixed order, so bitwise repeatable).
    if prior_mu_grad:
        grad_prior_mu = grad_prior_mu.sum_to_size(prior_mu.shape).to(prior_mu.dtype)
    if prior_logvar_grad:
        grad_prior_logvar = grad_prior_logvar.sum_to_size(prior_logvar.shape).to(prior_logvar.dtype)
    return (
        grad_mu,
        grad_logvar,
        grad_prior_mu if prior_mu_grad else None,
        grad_prior_logvar if prior_logvar_grad else None,
        None, None, None,
    )


_sample_gaussian_k_fwd.register_autograd(_sample_gaussian_k_backward, setup_context=_sample_gaussian_k_setup_context)
_sample_gaussian_k_bwd.register_autograd(
    no_double_backward("sample_gaussian_k"), setup_context=lambda ctx, inputs, output: None
)


# --------------------------------------------------------------------------------------
# Custom ops: log-mean-exp and the IWAE bound
# --------------------------------------------------------------------------------------


def _log_mean_exp_fwd_outputs(x: Tensor, dim: int):
    """The outputs of ``log_mean_exp_fwd`` (and, over dim 0 of log_px_z, of
    ``iwae_bound_fwd``), allocated: the result, float32 of x's shape without ``dim``; and
    lse_parts, float32 [2, M] (M = x.numel() / K), the per-column shift and log-sum the
    backward reads."""
    out = x.new_empty(tuple(x.shape[:dim]) + tuple(x.shape[dim + 1:]), dtype=torch.float32)
    columns = x.numel() // x.shape[dim] if x.shape[dim] else 0
    return out, x.new_empty((2, columns), dtype=torch.float32)


@torch.library.custom_op("fastvae::log_mean_exp_fwd", mutates_args=())
def _log_mean_exp_fwd(x: Tensor, dim: int, backend: str) -> tuple[Tensor, Tensor]:
    """(out, lse_parts): out = logsumexp over ``dim`` (>= 0) minus log K, float32, x's shape
    without ``dim``; lse_parts [2, M] float32, the shift and log-sum the backward reads."""
    out, lse_parts = outputs = _log_mean_exp_fwd_outputs(x, dim)
    kernel_module(backend, "iwae").log_mean_exp_fwd(x.contiguous(), dim, out=out, lse_parts=lse_parts)
    return outputs


@_log_mean_exp_fwd.register_fake
def _(x, dim, backend):
    return _log_mean_exp_fwd_outputs(x, dim)


def _log_mean_exp_bwd_outputs(x: Tensor) -> Tensor:
    """The output of ``log_mean_exp_bwd``, allocated: grad_x, contiguous, x's shape and dtype."""
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastvae::log_mean_exp_bwd", mutates_args=())
def _log_mean_exp_bwd(grad_out: Tensor, x: Tensor, lse_parts: Tensor, dim: int, backend: str) -> Tensor:
    """grad_x = grad_out · softmax of x over ``dim``, x's shape (contiguous) and dtype."""
    grad_x = _log_mean_exp_bwd_outputs(x)
    kernel_module(backend, "iwae").log_mean_exp_bwd(grad_out.contiguous(), x.contiguous(), lse_parts, dim,
                                                    grad_x=grad_x)
    return grad_x


@_log_mean_exp_bwd.register_fake
def _(grad_out, x, lse_parts, dim, backend):
    return _log_mean_exp_bwd_outputs(x)


def _log_mean_exp_setup_context(ctx, inputs, output):
    x, dim, backend = inputs
    _, lse_parts = output
    ctx.mark_non_differentiable(lse_parts)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, lse_parts)
    ctx.dim, ctx.backend = dim, backend


def _log_mean_exp_backward(ctx, grad_out, _grad_lse_parts):
    x, lse_parts = ctx.saved_tensors
    return fused_call(_log_mean_exp_bwd, grad_out, x, lse_parts, ctx.dim, ctx.backend), None, None


_log_mean_exp_fwd.register_autograd(_log_mean_exp_backward, setup_context=_log_mean_exp_setup_context)
_log_mean_exp_bwd.register_autograd(no_double_backward("log_mean_exp"), setup_context=lambda ctx, inputs, output: None)


@torch.library.custom_op("fastvae::iwae_bound_fwd", mutates_args=())
def _iwae_bound_fwd(log_px_z: Tensor, log_p: Tensor, log_q: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """(bound, lse_parts): bound = logsumexp_k(log_px_z + log_p − log_q) − log K, float32,
    [*batch]; lse_parts as :func:`_log_mean_exp_fwd`'s."""
    bound, lse_parts = outputs = _log_mean_exp_fwd_outputs(log_px_z, 0)
    kernel_module(backend, "iwae").iwae_bound_fwd(
        log_px_z.contiguous(), log_p.contiguous(), log_q.contiguous(), bound=bound, lse_parts=lse_parts
    )
    return outputs


@_iwae_bound_fwd.register_fake
def _(log_px_z, log_p, log_q, backend):
    return _log_mean_exp_fwd_outputs(log_px_z, 0)


def _iwae_bound_bwd_outputs(log_px_z: Tensor, log_p: Tensor, log_q: Tensor, log_px_z_grad: bool, log_p_grad: bool,
                            log_q_grad: bool):
    """The outputs of ``iwae_bound_bwd``, allocated: the gradient of each of log_px_z,
    log_p and log_q, contiguous in its input's shape and dtype, None unless asked for."""
    def grad(tensor, wanted):
        return torch.empty_like(tensor, memory_format=torch.contiguous_format) if wanted else None

    return grad(log_px_z, log_px_z_grad), grad(log_p, log_p_grad), grad(log_q, log_q_grad)


@torch.library.custom_op("fastvae::iwae_bound_bwd", mutates_args=())
def _iwae_bound_bwd(
    grad_bound: Tensor,
    log_px_z: Tensor,
    log_p: Tensor,
    log_q: Tensor,
    lse_parts: Tensor,
    log_px_z_grad: bool,
    log_p_grad: bool,
    log_q_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_log_px_z, grad_log_p, grad_log_q) = (g·w, g·w, −g·w), w = softmax_k of the log
    weights; each in its input's shape (contiguous) and dtype, empty when not asked for."""
    grad_log_px_z, grad_log_p, grad_log_q = outputs = _iwae_bound_bwd_outputs(
        log_px_z, log_p, log_q, log_px_z_grad, log_p_grad, log_q_grad
    )
    kernel_module(backend, "iwae").iwae_bound_bwd(
        grad_bound.contiguous(), log_px_z.contiguous(), log_p.contiguous(), log_q.contiguous(), lse_parts,
        grad_log_px_z=grad_log_px_z, grad_log_p=grad_log_p, grad_log_q=grad_log_q,
    )
    return fill_absent(outputs, log_px_z)


@_iwae_bound_bwd.register_fake
def _(grad_bound, log_px_z, log_p, log_q, lse_parts, log_px_z_grad, log_p_grad, log_q_grad, backend):
    return fill_absent(_iwae_bound_bwd_outputs(log_px_z, log_p, log_q, log_px_z_grad, log_p_grad, log_q_grad),
                       log_px_z)


def _iwae_bound_setup_context(ctx, inputs, output):
    log_px_z, log_p, log_q, backend = inputs
    _, lse_parts = output
    ctx.mark_non_differentiable(lse_parts)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(log_px_z, log_p, log_q, lse_parts)
    ctx.backend = backend


def _iwae_bound_backward(ctx, grad_bound, _grad_lse_parts):
    log_px_z, log_p, log_q, lse_parts = ctx.saved_tensors
    wanted = ctx.needs_input_grad[:3]
    grads = fused_call(_iwae_bound_bwd, grad_bound, log_px_z, log_p, log_q, lse_parts, *wanted, ctx.backend)
    return tuple(g if w else None for g, w in zip(grads, wanted)) + (None,)


_iwae_bound_fwd.register_autograd(_iwae_bound_backward, setup_context=_iwae_bound_setup_context)
_iwae_bound_bwd.register_autograd(no_double_backward("iwae_bound"), setup_context=lambda ctx, inputs, output: None)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _check_num_samples(op: str, num_samples) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
        raise TypeError(f"fastvae.{op}: num_samples must be a positive int, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"fastvae.{op}: num_samples must be a positive int, got {num_samples}")
    return int(num_samples)


def _check_dim(op: str, dim, tensor: Tensor, name: str) -> int:
    """``dim`` normalized to [0, tensor.dim())."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"fastvae.{op}: dim must be an int, got {type(dim).__name__}")
    if not -tensor.dim() <= dim < tensor.dim():
        raise ValueError(
            f"fastvae.{op}: dim {dim} is out of range for {name} of shape {tuple(tensor.shape)}"
        )
    return int(dim) % tensor.dim()


def _check_has_samples(op: str, name: str, tensor: Tensor, dim: int) -> None:
    if tensor.shape[dim] == 0:
        raise ValueError(
            f"fastvae.{op}: {name} of shape {tuple(tensor.shape)} has no samples along dim {dim}; "
            f"the mean of zero terms is undefined"
        )


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


def sample_gaussian_k(
    mu: Tensor,
    logvar: Tensor,
    num_samples: int,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Draw K reparameterized samples of q(z|x) = N(mu, e^logvar) with their log densities
    under q and under the prior p(z) = N(prior_mu, e^prior_logvar), in one fused pass.

    z_k = mu + exp(logvar / 2)·ε_k; log q(z_k|x) = Σ log N(z_k; mu, e^logvar) and
    log p(z_k) = Σ log N(z_k; prior_mu, e^prior_logvar), summed over every dimension but
    the batch, constants included.  Replaces ``q = Normal(mu, (0.5 * logvar).exp());
    z = q.rsample((K,)); log_q = q.log_prob(z).flatten(2).sum(-1)`` and the same for p.

    Args:
        mu: mean of q(z|x), shape [B, ...] (any latent shape, batch first).
        logvar: log-variance of q(z|x), mu's shape.
        num_samples: K, a positive int.
        prior_mu, prior_logvar: the prior's mean and log-variance, broadcastable to mu's
            shape (e.g. [1, D], [1, C, 1, 1], or full-size for a conditional prior); None
            means 0 (a standard normal prior).  They may require grad.
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator; leave it None under torch.compile).

    Returns:
        (z, log_q, log_p): z of shape [K, *mu.shape] in the promoted dtype of mu and
        logvar (the sample dimension first, as torch.distributions' sample_shape);
        log_q and log_p of shape [K, B], float32 (float64 for float64 inputs).  The noise
        of element i of the flattened z is Philox at offset base + i (see
        :mod:`fastvae.random`), so ``torch.manual_seed`` reproduces it bit for bit.
        Gradients flow through z (the reparameterization) into all three outputs; the
        backward regenerates ε rather than storing it.

    Example::

        >>> mu, logvar = encoder(x).chunk(2, dim=1)                  # [B, D] each
        >>> z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, num_samples=5)
        >>> log_px_z = -decoder_nll(z.flatten(0, 1)).view(5, -1)     # [K, B]
        >>> bound = fastvae.iwae_bound(log_px_z, log_p, log_q)       # [B]
    """
    op = "sample_gaussian_k"
    check_latent_args(op, mu, logvar, prior_mu, prior_logvar)
    num_samples = _check_num_samples(op, num_samples)
    check_generator(op, generator, mu.device)
    seed_offset = seed_for(mu.device, generator)
    backend = pick_backend(op, mu.device, promoted_dtype(mu, logvar, prior_mu, prior_logvar))
    if backend == "torch":
        return reference.sample_gaussian_k(mu, logvar, num_samples, seed_offset, prior_mu, prior_logvar)
    return fused_call(_sample_gaussian_k_fwd, mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, backend)


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    r"""log((1/K)·Σ_k exp(x_k)) = logsumexp_k(x_k) − log K over ``dim``, computed stably
    (shifted by the maximum), K = x.shape[dim].

    Args:
        x: log-values, any shape with at least one dimension; K = x.shape[dim] must be
            >= 1.  Entries may be −inf (a zero term); a column of all −inf gives −inf.
            NaN and +inf are refused under ``fastvae.set_validate_args(True)``; without
            it they reach only their own column (NaN gives NaN, +inf gives +inf).
        dim: the dimension to average over (default 0, the sample dimension of
            :func:`sample_gaussian_k`); negative counts from the end.

    Returns:
        x's shape without ``dim``, float32 (float64 for float64 x).  Its gradient is
        grad·softmax(x) over ``dim``.

    Example::

        >>> log_w = log_px_z + log_p - log_q                 # [K, B]
        >>> fastvae.log_mean_exp(log_w, dim=0)                # [B]
        >>> fastvae.log_mean_exp(torch.tensor([1000.0, -1000.0]))  # 1000 - log 2
    """
    op = "log_mean_exp"
    check_float_tensor(op, "x", x, min_dim=1)
    dim = _check_dim(op, dim, x, "x")
    _check_has_samples(op, "x", x, dim)
    check_log_values(op, "x", x, allowed_infinity=-math.inf)
    backend = pick_backend(op, x.device, x.dtype)
    if backend == "torch":
        return reference.log_mean_exp(x, dim)
    out, _ = fused_call(_log_mean_exp_fwd, x, dim, backend)
    return out


def iwae_bound(log_px_z: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    r"""The importance-weighted bound of Burda et al. (2016), per data point:
    log p̂(x) = logsumexp_k(log p(x|z_k) + log p(z_k) − log q(z_k|x)) − log K.

    With K = 1 it is the ELBO; it grows towards log p(x) with K, and is never below the
    mean over k of the log weights.  Fused: one pass over the three inputs forward, one
    backward.

    Args:
        log_px_z: log p(x|z_k), shape [K, B] (the sample dimension first; any batch shape
            [K, *batch] works the same), K >= 1.
        log_p: log p(z_k), log_px_z's shape (as :func:`sample_gaussian_k` returns it).
        log_q: log q(z_k|x), log_px_z's shape.
        Any float dtypes; they are computed in float32 (float64 if one is float64).
        log_px_z and log_p may hold −inf and log_q +inf (a weight of zero); NaN, +inf in
        log_px_z or log_p and −inf in log_q (a weight of +inf) are refused under
        ``fastvae.set_validate_args(True)``.

    Returns:
        The bound, shape [B] (log_px_z's shape without the first dimension), in nats,
        float32 (float64 for float64 inputs).  With w = softmax_k of the log weights, the
        gradients are grad·w for log_px_z and log_p and −grad·w for log_q.

    Example::

        >>> z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, num_samples=50)
        >>> log_px_z = -decoder_nll(z.flatten(0, 1)).view(50, -1)    # [K, B]
        >>> loss = -fastvae.iwae_bound(log_px_z, log_p, log_q).mean()
    """
    op = "iwae_bound"
    check_float_tensor(op, "log_px_z", log_px_z, min_dim=1)
    check_float_tensor(op, "log_p", log_p)
    check_float_tensor(op, "log_q", log_q)
    check_same_shape(op, "log_p", log_p, "log_px_z", log_px_z)
    check_same_shape(op, "log_q", log_q, "log_px_z", log_px_z)
    check_same_device(op, [("log_px_z", log_px_z), ("log_p", log_p), ("log_q", log_q)])
    _check_has_samples(op, "log_px_z", log_px_z, 0)
    # A weight of −inf (a zero term) is legitimate, one of +inf is not.
    check_log_values(op, "log_px_z", log_px_z, allowed_infinity=-math.inf)
    check_log_values(op, "log_p", log_p, allowed_infinity=-math.inf)
    check_log_values(op, "log_q", log_q, allowed_infinity=math.inf)
    backend = pick_backend(op, log_px_z.device, promoted_dtype(log_px_z, log_p, log_q))
    if backend == "torch":
        return reference.iwae_bound(log_px_z, log_p, log_q)
    bound, _ = fused_call(_iwae_bound_fwd, log_px_z, log_p, log_q, backend)
    return bound
