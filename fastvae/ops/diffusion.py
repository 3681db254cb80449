"""Diffusion ops: ``diffuse`` (draw ε and form z_t = α_t·x + σ_t·ε) and
``diffusion_loss`` (the weighted squared error of a noise prediction, ε regenerated from
the seed that formed z_t).

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference_diffusion` itself; the others view the data as [B, N] and run one
fused kernel forward and one backward, each regenerating ε from the call's seed
(``kernels/diffusion.py``, and the C++ backends' ``fastvae/native/diffusion.py``);
docs/architecture.md, "Diffusion ops".
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import reference_diffusion as reference
from ..reference import reduce
from ..validation import check_finite, check_float_tensor, check_generator, check_same_device
from ._common import fill_absent, fused_call, kernel_module, no_double_backward, pick_backend, promoted_dtype, seed_for

# --------------------------------------------------------------------------------------
# Custom ops
# --------------------------------------------------------------------------------------


def _diffuse_fwd_outputs(x: Tensor, gamma: Tensor) -> Tensor:
    """The output of ``diffuse_fwd``, allocated: z, contiguous [B, N] in the promoted
    dtype of x and gamma."""
    return x.new_empty(tuple(x.shape), dtype=torch.promote_types(x.dtype, gamma.dtype))


@torch.library.custom_op("fastvae::diffuse_fwd", mutates_args=())
def _diffuse_fwd(x: Tensor, gamma: Tensor, seed_offset: Tensor, backend: str) -> Tensor:
    """z = α·x + σ·ε of x [B, N] and γ [B], ε at offsets base + b·N + n of seed_offset."""
    z = _diffuse_fwd_outputs(x, gamma)
    kernel_module(backend, "diffusion").diffuse_fwd(x.contiguous(), gamma.contiguous(), seed_offset, z=z)
    return z


@_diffuse_fwd.register_fake
def _(x, gamma, seed_offset, backend):
    return _diffuse_fwd_outputs(x, gamma)


def _diffuse_bwd_outputs(x: Tensor, x_grad: bool, gamma_grad: bool):
    """The outputs of ``diffuse_bwd``, allocated (None where not asked for): grad_x,
    contiguous [B, N] in x's dtype; grad_gamma, [B] float32."""
    grad_x = x.new_empty(tuple(x.shape)) if x_grad else None
    grad_gamma = x.new_empty((x.shape[0],), dtype=torch.float32) if gamma_grad else None
    return grad_x, grad_gamma


@torch.library.custom_op("fastvae::diffuse_bwd", mutates_args=())
def _diffuse_bwd(grad_z: Tensor, x: Tensor, gamma: Tensor, seed_offset: Tensor, x_grad: bool, gamma_grad: bool,
                 backend: str) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_gamma), each empty when not asked for; ε regenerated from seed_offset."""
    grad_x, grad_gamma = outputs = _diffuse_bwd_outputs(x, x_grad, gamma_grad)
    kernel_module(backend, "diffusion").diffuse_bwd(grad_z.contiguous(), x.contiguous(), gamma.contiguous(),
                                                    seed_offset, grad_x=grad_x, grad_gamma=grad_gamma)
    return fill_absent(outputs, x)


@_diffuse_bwd.register_fake
def _(grad_z, x, gamma, seed_offset, x_grad, gamma_grad, backend):
    return fill_absent(_diffuse_bwd_outputs(x, x_grad, gamma_grad), x)


def _diffuse_setup_context(ctx, inputs, output):
    x, gamma, seed_offset, backend = inputs
    ctx.save_for_backward(x, gamma, seed_offset)
    ctx.backend = backend


def _diffuse_backward(ctx, grad_z):
    x, gamma, seed_offset = ctx.saved_tensors
    x_grad, gamma_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (x_grad or gamma_grad):
        return None, None, None, None
    grad_x, grad_gamma = fused_call(_diffuse_bwd, grad_z, x, gamma, seed_offset, x_grad, gamma_grad, ctx.backend)
    return grad_x if x_grad else None, grad_gamma.to(gamma.dtype) if gamma_grad else None, None, None


_diffuse_fwd.register_autograd(_diffuse_backward, setup_context=_diffuse_setup_context)
_diffuse_bwd.register_autograd(no_double_backward("diffuse"), setup_context=lambda ctx, inputs, output: None)


def _diffusion_loss_fwd_outputs(eps_hat: Tensor):
    """The outputs of ``diffusion_loss_fwd``, allocated: the loss and the squared error
    Σ_n (ε − ε̂)², [B] float32 each."""
    batch = eps_hat.shape[0]
    return eps_hat.new_empty((batch,), dtype=torch.float32), eps_hat.new_empty((batch,), dtype=torch.float32)


@torch.library.custom_op("fastvae::diffusion_loss_fwd", mutates_args=())
def _diffusion_loss_fwd(eps_hat: Tensor, seed_offset: Tensor, weight: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """(½·w·S, S) of ε̂ [B, N] and w [B], S = Σ_n (ε − ε̂)², ε regenerated from seed_offset."""
    loss, squared_error = outputs = _diffusion_loss_fwd_outputs(eps_hat)
    kernel_module(backend, "diffusion").diffusion_loss_fwd(eps_hat.contiguous(), seed_offset, weight.contiguous(),
                                                           loss=loss, squared_error=squared_error)
    return outputs


@_diffusion_loss_fwd.register_fake
def _(eps_hat, seed_offset, weight, backend):
    return _diffusion_loss_fwd_outputs(eps_hat)


def _diffusion_loss_bwd_outputs(eps_hat: Tensor) -> Tensor:
    """The output of ``diffusion_loss_bwd``, allocated: grad_eps_hat, contiguous [B, N]
    in eps_hat's dtype."""
    return eps_hat.new_empty(tuple(eps_hat.shape))


@torch.library.custom_op("fastvae::diffusion_loss_bwd", mutates_args=())
def _diffusion_loss_bwd(grad_loss: Tensor, eps_hat: Tensor, seed_offset: Tensor, weight: Tensor,
                        backend: str) -> Tensor:
    """grad_loss_b·w_b·(ε̂ − ε), ε regenerated from seed_offset."""
    grad_eps_hat = _diffusion_loss_bwd_outputs(eps_hat)
    kernel_module(backend, "diffusion").diffusion_loss_bwd(grad_loss.contiguous(), eps_hat.contiguous(), seed_offset,
                                                           weight.contiguous(), grad_eps_hat=grad_eps_hat)
    return grad_eps_hat


@_diffusion_loss_bwd.register_fake
def _(grad_loss, eps_hat, seed_offset, weight, backend):
    return _diffusion_loss_bwd_outputs(eps_hat)


def _diffusion_loss_setup_context(ctx, inputs, output):
    eps_hat, seed_offset, weight, backend = inputs
    _, squared_error = output
    # S is what the weight's gradient needs (½·grad·S), not an output of the public op.
    ctx.mark_non_differentiable(squared_error)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(eps_hat, seed_offset, weight, squared_error)
    ctx.backend = backend


def _diffusion_loss_backward(ctx, grad_loss, _grad_squared_error):
    eps_hat, seed_offset, weight, squared_error = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None
    grad_eps_hat = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_eps_hat = fused_call(_diffusion_loss_bwd, grad_loss, eps_hat, seed_offset, weight, ctx.backend)
    if ctx.needs_input_grad[2]:
        grad_weight = (0.5 * grad_loss * squared_error).to(weight.dtype)
    return grad_eps_hat, None, grad_weight, None


_diffusion_loss_fwd.register_autograd(_diffusion_loss_backward, setup_context=_diffusion_loss_setup_context)
_diffusion_loss_bwd.register_autograd(no_double_backward("diffusion_loss"),
                                      setup_context=lambda ctx, inputs, output: None)

# --------------------------------------------------------------------------------------
# Checks and dispatch
# --------------------------------------------------------------------------------------


def _rows(tensor: Tensor) -> Tensor:
    """``tensor`` [B, ...] viewed as [B, N] (a copy only where no view exists)."""
    return tensor.reshape(tensor.shape[0], math.prod(tensor.shape[1:]))


class Diffused(NamedTuple):
    """What :func:`fastvae.diffuse` returns: the noisy data ``z_t`` and the call's
    ``noise_seed`` (int64 [2], the (seed, base offset) pair its ε came from), which
    :func:`fastvae.diffusion_loss` takes to regenerate that ε."""

    z_t: Tensor
    noise_seed: Tensor


def check_per_row(op: str, name: str, tensor, data_name: str, data: Tensor) -> None:
    """``tensor``: a float tensor of shape [B], B = data.shape[0], on data's device."""
    check_float_tensor(op, name, tensor, min_dim=1)
    if tensor.dim() != 1 or tensor.shape[0] != data.shape[0]:
        raise ValueError(f"fastvae.{op}: {name} must have shape [B] = [{data.shape[0]}] (one value per row of "
                         f"{data_name}), got {list(tensor.shape)}")
    check_same_device(op, [(data_name, data), (name, tensor)])


def check_noise_seed(op: str, noise_seed, device: torch.device) -> None:
    """``noise_seed``: the int64 [2] (seed, base offset) a :func:`fastvae.diffuse` call returned."""
    if not isinstance(noise_seed, Tensor) or noise_seed.dtype != torch.int64 or tuple(noise_seed.shape) != (2,):
        got = (f"{noise_seed.dtype} {list(noise_seed.shape)}" if isinstance(noise_seed, Tensor)
               else type(noise_seed).__name__)
        raise ValueError(f"fastvae.{op}: noise_seed must be the int64 tensor of shape [2] that fastvae.diffuse "
                         f"returned, got {got}")
    if noise_seed.device != device:
        raise ValueError(f"fastvae.{op}: noise_seed is on {noise_seed.device}, eps_hat on {device}")


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


def diffuse(x: Tensor, gamma: Tensor, generator: Optional[torch.Generator] = None) -> Diffused:
    r"""Draw ε ~ N(0, I) and form z_t = α_t·x + σ_t·ε in one pass, the variance-preserving
    forward process of a variational diffusion model (Kingma et al. 2021).

    α_t² = sigmoid(−γ_t) and σ_t² = sigmoid(γ_t): γ_t is the negative log signal-to-noise
    ratio, one per data point.  ε is Philox noise at offsets base + i (element i of x,
    row-major) of a (seed, base) pair drawn from ``generator``; no noise is stored: the
    pair comes back as ``noise_seed`` for :func:`fastvae.diffusion_loss`, and the backward
    regenerates ε from it.

    Args:
        x: data [B, ...], float.
        gamma: γ_t [B], float (any float dtype), one per row of x; may require grad (a
            learned noise schedule).
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator).

    Returns:
        ``Diffused(z_t, noise_seed)``: z_t of x's shape in the promoted dtype of x and
        gamma, differentiable in x and gamma with ε held fixed; noise_seed int64 [2].

    Example::

        >>> x = torch.rand(8, 784) * 2 - 1
        >>> gamma = torch.full((8,), -2.0)
        >>> z_t, noise_seed = fastvae.diffuse(x, gamma)
    """
    op = "diffuse"
    check_float_tensor(op, "x", x, min_dim=1)
    check_per_row(op, "gamma", gamma, "x", x)
    check_generator(op, generator, x.device)
    check_finite(op, "x", x)
    check_finite(op, "gamma", gamma)
    seed_offset = seed_for(x.device, generator)
    backend = pick_backend(op, x.device, promoted_dtype(x, gamma))
    if backend == "torch":
        return Diffused(reference.diffuse(x, gamma, seed_offset), seed_offset)
    z_t = fused_call(_diffuse_fwd, _rows(x), gamma, seed_offset, backend)
    return Diffused(z_t.view(x.shape), seed_offset)


def diffusion_loss(eps_hat: Tensor, noise_seed: Tensor, weight: Tensor, reduction: str = "batch") -> Tensor:
    r"""The diffusion term's weighted squared error ½·w_b·Σ_i (ε_i − ε̂_i)² of a noise
    prediction ε̂, with ε regenerated from ``noise_seed`` (the pair :func:`fastvae.diffuse`
    returned for the z_t that ε̂ was predicted from), forward and backward in one pass each.

    With w = γ'(t), the continuous-time diffusion loss of Kingma et al. (2021):
    −SNR'(t)·‖x − x̂‖² = γ'(t)·‖ε − ε̂‖².

    Args:
        eps_hat: ε̂ [B, ...] of the shape of the x given to :func:`fastvae.diffuse`.
        noise_seed: int64 [2], the ``noise_seed`` of that call.
        weight: w [B], float, one per row; may require grad.
        reduction: 'batch' → [B]; 'sum' → scalar; 'mean' → the batch mean.

    Returns:
        The loss, float32 (float64 for float64 inputs), differentiable in eps_hat and
        weight.

    Example::

        >>> z_t, noise_seed = fastvae.diffuse(x, gamma)
        >>> eps_hat = denoiser(z_t, gamma)
        >>> loss = fastvae.diffusion_loss(eps_hat, noise_seed, gamma_derivative)   # [B]
    """
    op = "diffusion_loss"
    check_float_tensor(op, "eps_hat", eps_hat, min_dim=1)
    check_noise_seed(op, noise_seed, eps_hat.device)
    check_per_row(op, "weight", weight, "eps_hat", eps_hat)
    if reduction not in ("batch", "sum", "mean"):
        raise ValueError(f"fastvae.{op}: reduction must be 'batch', 'sum' or 'mean', got {reduction!r}")
    check_finite(op, "eps_hat", eps_hat)
    check_finite(op, "weight", weight)
    backend = pick_backend(op, eps_hat.device, promoted_dtype(eps_hat, weight))
    if backend == "torch":
        return reduce(reference.diffusion_loss(eps_hat, noise_seed, weight), reduction)
    # The launchers read the weight in float32 (a [B] cast, where it is not float32 already).
    loss, _ = fused_call(_diffusion_loss_fwd, _rows(eps_hat), noise_seed, weight.to(torch.float32), backend)
    return reduce(loss, reduction)
