"""Diffusion ops: ``diffuse`` (draw ε and form z_t = α_t·x + σ_t·ε) and
``diffusion_loss`` (the weighted squared error of a noise prediction, ε regenerated from
the seed that formed z_t).

Argument checks and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference_diffusion` itself.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import reference_diffusion as reference
from ..reference import reduce
from ..validation import check_finite, check_float_tensor, check_generator, check_reduction, check_same_device
from ._common import pick_backend, promoted_dtype, seed_for


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
    pick_backend(op, x.device, promoted_dtype(x, gamma))
    return Diffused(reference.diffuse(x, gamma, seed_offset), seed_offset)


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
        check_reduction(op, reduction)
        raise ValueError(f"fastvae.{op}: reduction must be 'batch', 'sum' or 'mean', got {reduction!r}")
    check_finite(op, "eps_hat", eps_hat)
    check_finite(op, "weight", weight)
    pick_backend(op, eps_hat.device, promoted_dtype(eps_hat, weight))
    return reduce(reference.diffusion_loss(eps_hat, noise_seed, weight), reduction)
