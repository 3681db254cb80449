"""Gaussian latent ops: ``reparameterize``, ``gaussian_kl`` and ``sample_gaussian``.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference` itself; the others run one fused kernel forward and one
backward (``kernels/latent.py``).  Free bits and the batch reductions are small torch ops
on the kernel's per-element or per-sample KL, so autograd routes their gradient back
into the fused backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference
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
from ._common import (direct_call_ok, fill_absent, fused_call, kernel_module, no_double_backward, pick_backend,
                      promoted_dtype, seed_for)

KL_MODES = ("none", "element", "row")


# --------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------


def _gaussian_latent_fwd_outputs(mu: Tensor, logvar: Tensor, sample: bool, kl_mode: str):
    """The outputs of ``gaussian_latent_fwd``, allocated (the fake returns them, the real
    op hands them to the launcher): z, contiguous of mu's shape in the promoted dtype of
    mu and logvar, None without ``sample``; the KL, float32, per element of mu's shape
    (kl_mode 'element') or per sample [B] ('row'), None in kl_mode 'none'."""
    z = mu.new_empty(tuple(mu.shape), dtype=reference.sample_dtype(mu, logvar)) if sample else None
    kl_shape = {"none": None, "element": tuple(mu.shape), "row": (mu.shape[0],)}[kl_mode]
    kl = mu.new_empty(kl_shape, dtype=torch.float32) if kl_shape is not None else None
    return z, kl


@torch.library.custom_op("fastvae::gaussian_latent_fwd", mutates_args=())
def _gaussian_latent_fwd(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor],
    prior_logvar: Optional[Tensor],
    seed_offset: Optional[Tensor],
    sample: bool,
    kl_mode: str,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """z (mu's shape, or empty when not ``sample``) and the KL per ``kl_mode``."""
    z, kl = outputs = _gaussian_latent_fwd_outputs(mu, logvar, sample, kl_mode)
    kernel_module(backend, "latent").gaussian_latent_fwd(
        mu.contiguous(), logvar.contiguous(), prior_mu, prior_logvar, seed_offset, kl_mode, z=z, kl=kl
    )
    return fill_absent(outputs, mu)


@_gaussian_latent_fwd.register_fake
def _(mu, logvar, prior_mu, prior_logvar, seed_offset, sample, kl_mode, backend):
    return fill_absent(_gaussian_latent_fwd_outputs(mu, logvar, sample, kl_mode), mu)


def gaussian_grad_outputs(prior_grad_flows: bool, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor],
                          prior_logvar: Optional[Tensor], prior_mu_grad: bool, prior_logvar_grad: bool):
    """The outputs of a Gaussian family's backward (``gaussian_latent_bwd``, and
    ``sample_gaussian_k_bwd`` in ops/iwae.py), allocated: grad_mu and grad_logvar,
    contiguous, in mu's and logvar's dtypes; each prior's gradient per element of mu's
    shape (summed to the prior's shape afterwards), in the prior's dtype when the prior is
    full-size and float32 when it is broadcast (the sum is then taken in float32), None
    unless asked for and ``prior_grad_flows`` (the term that depends on the priors, the KL
    or log p, has a gradient)."""
    def prior_grad(prior, wanted):
        if not wanted or not prior_grad_flows:
            return None
        return mu.new_empty(tuple(mu.shape), dtype=prior.dtype if prior.shape == mu.shape else torch.float32)

    return (
        torch.empty_like(mu, memory_format=torch.contiguous_format),
        torch.empty_like(logvar, memory_format=torch.contiguous_format),
        prior_grad(prior_mu, prior_mu_grad),
        prior_grad(prior_logvar, prior_logvar_grad),
    )


def _latent_bwd_impl(grad_z, grad_kl, mu, logvar, prior_mu, prior_logvar, seed_offset, z, prior_mu_grad: bool,
                     prior_logvar_grad: bool, backend: str, grad_mu_is_grad_z: bool = False):
    """What ``gaussian_latent_bwd`` runs: its outputs allocated, the backend's launcher
    writing them; None for a prior's gradient not computed.  ``grad_mu_is_grad_z`` (the
    direct path's backward of ``reparameterize`` on the cpu backend, where ∂mu is ∂z
    exactly): grad_z itself is returned as grad_mu, as autograd's own add passes a
    gradient on, and the C++ writes only grad_logvar (a custom op's outputs may not alias
    its inputs, so the custom op never does this)."""
    grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar = outputs = gaussian_grad_outputs(
        grad_kl is not None, mu, logvar, prior_mu, prior_logvar, prior_mu_grad, prior_logvar_grad
    )
    if grad_mu_is_grad_z:
        grad_mu = None
        outputs = (grad_z, grad_logvar, grad_prior_mu, grad_prior_logvar)
    kernel_module(backend, "latent").gaussian_latent_bwd(
        None if grad_z is None else grad_z.contiguous(),
        None if grad_kl is None else grad_kl.contiguous(),
        mu.contiguous(), logvar.contiguous(), prior_mu, prior_logvar, seed_offset,
        None if z is None else z.contiguous(),
        grad_mu=grad_mu, grad_logvar=grad_logvar, grad_prior_mu=grad_prior_mu, grad_prior_logvar=grad_prior_logvar,
    )
    return outputs


@torch.library.custom_op("fastvae::gaussian_latent_bwd", mutates_args=())
def _gaussian_latent_bwd(
    grad_z: Optional[Tensor],
    grad_kl: Optional[Tensor],
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor],
    prior_logvar: Optional[Tensor],
    seed_offset: Optional[Tensor],
    z: Optional[Tensor],
    prior_mu_grad: bool,
    prior_logvar_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar); the prior gradients per
    element of mu's shape, empty when not asked for.  z: the forward's sample where the
    backend's backward reads it, else None (ε is regenerated from seed_offset)."""
    outputs = _latent_bwd_impl(grad_z, grad_kl, mu, logvar, prior_mu, prior_logvar, seed_offset, z, prior_mu_grad,
                               prior_logvar_grad, backend)
    return fill_absent(outputs, mu)


@_gaussian_latent_bwd.register_fake
def _(grad_z, grad_kl, mu, logvar, prior_mu, prior_logvar, seed_offset, z, prior_mu_grad, prior_logvar_grad, backend):
    outputs = gaussian_grad_outputs(grad_kl is not None, mu, logvar, prior_mu, prior_logvar, prior_mu_grad,
                                    prior_logvar_grad)
    return fill_absent(outputs, mu)


def _setup_context(ctx, inputs, output):
    mu, logvar, prior_mu, prior_logvar, seed_offset, sample, kl_mode, backend = inputs
    z = output[0]
    # Some backends get dz/dlogvar from z rather than regenerating ε (the cpu backend, where
    # Philox costs more than a load).  z is kept alive until the backward, as the decoder
    # that takes it keeps it anyway; an in-place change to z then fails the backward with
    # autograd's error rather than giving a wrong gradient.
    reads_z = sample and kernel_module(backend, "latent").backward_reads_sample(z.dtype)
    ctx.save_for_backward(mu, logvar, prior_mu, prior_logvar, seed_offset, z if reads_z else None)
    ctx.sample, ctx.kl_mode, ctx.backend = sample, kl_mode, backend
    # An unused output gets None rather than zeros, so the kernel skips its term.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_z, grad_kl):
    mu, logvar, prior_mu, prior_logvar, seed_offset, z = ctx.saved_tensors
    grad_z = grad_z if ctx.sample else None
    grad_kl = grad_kl if ctx.kl_mode != "none" else None
    prior_mu_grad = prior_mu is not None and ctx.needs_input_grad[2]
    prior_logvar_grad = prior_logvar is not None and ctx.needs_input_grad[3]
    # Under create_graph the custom op runs, so that its registered autograd refuses a
    # double backward; otherwise a backward of the direct path (below) stays direct.
    direct = getattr(ctx, "direct", False) and not torch.is_grad_enabled() and direct_call_ok()
    bwd_args = (grad_z, grad_kl, mu, logvar, prior_mu, prior_logvar, seed_offset, z if grad_z is not None else None,
                prior_mu_grad, prior_logvar_grad, ctx.backend)
    if direct:
        # Without a KL, ∂mu is ∂z: the cpu backend hands ∂z on rather than copying it.
        grad_mu_is_grad_z = (ctx.backend == "cpu" and grad_kl is None and grad_z is not None
                             and grad_z.dtype == mu.dtype)
        outputs = _latent_bwd_impl(*bwd_args, grad_mu_is_grad_z=grad_mu_is_grad_z)
    else:
        outputs = fused_call(_gaussian_latent_bwd, *bwd_args)
    grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar = outputs
    # Only the KL depends on the prior; without its gradient the prior gets none.
    prior_mu_grad = prior_mu_grad and grad_kl is not None
    prior_logvar_grad = prior_logvar_grad and grad_kl is not None
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
        None, None, None, None,
    )


_gaussian_latent_fwd.register_autograd(_backward, setup_context=_setup_context)
_gaussian_latent_bwd.register_autograd(
    no_double_backward("sample_gaussian / gaussian_kl / reparameterize"), setup_context=lambda ctx, inputs, output: None
)


# --------------------------------------------------------------------------------------
# Checks and dispatch
# --------------------------------------------------------------------------------------


def check_latent_args(op: str, mu, logvar, prior_mu=None, prior_logvar=None) -> None:
    """Checks shared by every op on a Gaussian latent (also the IWAE ops)."""
    check_float_tensor(op, "mu", mu, min_dim=1)
    check_float_tensor(op, "logvar", logvar, min_dim=1)
    check_same_shape(op, "logvar", logvar, "mu", mu)
    for name, prior in (("prior_mu", prior_mu), ("prior_logvar", prior_logvar)):
        if prior is not None:
            check_float_tensor(op, name, prior)
            check_broadcastable_to(op, name, prior, "mu", mu)
    check_same_device(op, [("mu", mu), ("logvar", logvar), ("prior_mu", prior_mu), ("prior_logvar", prior_logvar)])
    for name, tensor in (("mu", mu), ("logvar", logvar), ("prior_mu", prior_mu), ("prior_logvar", prior_logvar)):
        if tensor is not None:
            check_finite(op, name, tensor)


def _finish_kl(kl: Tensor, kl_mode: str, free_bits: float, reduction: str) -> Tensor:
    if kl_mode == "element":
        return reference.reduce(reference.free_bits_terms(kl, free_bits), reduction)
    return reference.reduce(kl, reduction)


def _kl_mode(free_bits: float, reduction: str) -> str:
    # Free bits need each dimension's batch mean, so the kernel hands back per-element KL.
    return "element" if reduction == "none" or free_bits > 0 else "row"


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


def reparameterize(mu: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Draw z = mu + exp(logvar / 2) · ε, ε ~ N(0, I), differentiably in mu and logvar.

    Args:
        mu: mean of q(z|x), shape [B, ...] (any latent shape, batch first).
        logvar: log-variance of q(z|x), mu's shape.
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator; leave it None under torch.compile).

    Returns:
        z of mu's shape, in the promoted dtype of mu and logvar.  The noise is Philox
        (see :mod:`fastvae.random`), so ``torch.manual_seed`` reproduces it bit for bit.

    Example::

        >>> mu, logvar = torch.zeros(8, 16), torch.zeros(8, 16)
        >>> z = fastvae.reparameterize(mu, logvar)
    """
    op = "reparameterize"
    check_latent_args(op, mu, logvar)
    check_generator(op, generator, mu.device)
    seed_offset = seed_for(mu.device, generator)
    backend = pick_backend(op, mu.device, promoted_dtype(mu, logvar))
    if backend == "torch":
        return reference.reparameterize(mu, logvar, seed_offset)
    z, _ = fused_call(_gaussian_latent_fwd, mu, logvar, None, None, seed_offset, True, "none", backend)
    return z


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    free_bits: float = 0.0,
    reduction: str = "batch",
) -> Tensor:
    r"""KL(N(mu, e^logvar) ‖ N(prior_mu, e^prior_logvar)) of a diagonal Gaussian latent.

    Per element: ½·(prior_logvar − logvar + (e^logvar + (mu − prior_mu)²)·e^(−prior_logvar) − 1).

    Args:
        mu, logvar: q's mean and log-variance, shape [B, ...].
        prior_mu, prior_logvar: the prior's, broadcastable to mu's shape (e.g. [1, C, 1, 1]
            or full-size for a conditional prior); None means 0.  They may require grad.
        free_bits: nats per latent dimension (a feature of [B, D], a channel of
            [B, C, ...]); a dimension whose batch-mean KL is below it is held at
            free_bits and gets no gradient.  0 gives the true KL.
        reduction: 'batch' → [B] (sum over all but the batch), 'none' → per element,
            'sum' → scalar, 'mean' → batch mean of the per-sample sums.

    Returns:
        The KL in nats, float32 (float64 for float64 inputs).

    Example::

        >>> kl = fastvae.gaussian_kl(mu, logvar, free_bits=0.25, reduction="mean")
    """
    op = "gaussian_kl"
    check_latent_args(op, mu, logvar, prior_mu, prior_logvar)
    check_nonnegative_number(op, "free_bits", free_bits)
    check_reduction(op, reduction)
    backend = pick_backend(op, mu.device, promoted_dtype(mu, logvar, prior_mu, prior_logvar))
    if backend == "torch":
        return reference.gaussian_kl(mu, logvar, prior_mu, prior_logvar, free_bits, reduction)
    kl_mode = _kl_mode(free_bits, reduction)
    _, kl = fused_call(_gaussian_latent_fwd, mu, logvar, prior_mu, prior_logvar, None, False, kl_mode, backend)
    return _finish_kl(kl, kl_mode, free_bits, reduction)


def sample_gaussian(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    free_bits: float = 0.0,
    generator: Optional[torch.Generator] = None,
    reduction: str = "batch",
) -> tuple[Tensor, Tensor]:
    r"""Reparameterized sample and KL in one fused pass: the latent side of the ELBO.

    Replaces ``d = Normal(mu, (0.5 * logvar).exp()); z = d.rsample();
    kl = kl_divergence(d, Normal(0, 1)).sum(1)`` with one read of mu and logvar.

    Args:
        mu, logvar: q's mean and log-variance, shape [B, ...].
        prior_mu, prior_logvar, free_bits, reduction: as :func:`gaussian_kl`.
        generator: as :func:`reparameterize`.

    Returns:
        (z, kl): z of mu's shape in the promoted dtype of mu and logvar; kl as
        :func:`gaussian_kl` returns it.

    The backward regenerates ε from the seed, except on the cpu backend in float32, where
    it reads z (∂z/∂logvar = (z − mu)/2; as :func:`reparameterize`): there, changing z in
    place before the backward makes autograd raise rather than differentiate the change.

    Example::

        >>> h = encoder(x)
        >>> mu, logvar = h.chunk(2, dim=1)
        >>> z, kl = fastvae.sample_gaussian(mu, logvar)
        >>> loss = (nll(decoder(z), x) + kl).mean()
    """
    op = "sample_gaussian"
    check_latent_args(op, mu, logvar, prior_mu, prior_logvar)
    check_nonnegative_number(op, "free_bits", free_bits)
    check_reduction(op, reduction)
    check_generator(op, generator, mu.device)
    seed_offset = seed_for(mu.device, generator)
    backend = pick_backend(op, mu.device, promoted_dtype(mu, logvar, prior_mu, prior_logvar))
    if backend == "torch":
        return reference.sample_gaussian(mu, logvar, seed_offset, prior_mu, prior_logvar, free_bits, reduction)
    kl_mode = _kl_mode(free_bits, reduction)
    z, kl = fused_call(_gaussian_latent_fwd, mu, logvar, prior_mu, prior_logvar, seed_offset, True, kl_mode, backend)
    return z, _finish_kl(kl, kl_mode, free_bits, reduction)
