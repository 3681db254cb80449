r"""Pure-PyTorch reference of the diffusion ops: the ground truth, and the ``torch``
backend of :func:`fastvae.diffuse` and :func:`fastvae.diffusion_loss`.

The variance-preserving forward process of a variational diffusion model (Kingma et al.
2021, "Variational Diffusion Models") at a time t with log signal-to-noise ratio −γ_t:

    α_t² = sigmoid(−γ_t),  σ_t² = sigmoid(γ_t),  SNR(t) = α_t²/σ_t² = e^(−γ_t),
    z_t = α_t·x + σ_t·ε,   ε ~ N(0, I).

ε is Philox noise (:func:`fastvae.random.philox_normal`): element i of the row-major data
takes offset base + i of the call's (seed, base), so the loss regenerates the very noise
that formed z_t from the same pair instead of storing it.  The diffusion term of the bound,
with the denoiser's noise prediction ε̂ and a per-row weight w (γ'(t) for the
continuous-time bound, where −SNR'(t)·‖x − x̂‖² = γ'(t)·‖ε − ε̂‖²), is

    L_b = ½·w_b·Σ_i (ε_i − ε̂_i)².

One γ and one weight per data point (row); sums over a row run in the compute dtype
(float32, float64 for float64 inputs) with torch's pairwise summation.
"""
from __future__ import annotations

import torch

from .random import philox_normal
from .reference import compute_dtype


def noise(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """ε (float32, ``shape``): standard normals at offsets base + i of the (seed, base)
    pair ``seed_offset`` (:func:`fastvae.random.philox_normal`)."""
    return philox_normal(seed_offset, tuple(shape))


def signal_scale(gamma: torch.Tensor) -> torch.Tensor:
    """α_t = √sigmoid(−γ_t)."""
    return torch.sigmoid(-gamma).sqrt()


def noise_scale(gamma: torch.Tensor) -> torch.Tensor:
    """σ_t = √sigmoid(γ_t)."""
    return torch.sigmoid(gamma).sqrt()


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] per-row values viewed to broadcast over ``like`` [B, ...]."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


def diffuse(x: torch.Tensor, gamma: torch.Tensor, seed_offset: torch.Tensor) -> torch.Tensor:
    """z_t = α_t·x + σ_t·ε, in the promoted dtype of x and γ (computed in float32, or
    float64); x [B, ...], γ [B]."""
    dtype = compute_dtype(x, gamma)
    g = _per_row(gamma.to(dtype), x)
    eps = noise(seed_offset, x.shape).to(dtype)
    z = signal_scale(g) * x.to(dtype) + noise_scale(g) * eps
    return z.to(torch.promote_types(x.dtype, gamma.dtype))


def noise_prediction_squared_error(eps_hat: torch.Tensor, seed_offset: torch.Tensor) -> torch.Tensor:
    """[B] Σ_i (ε_i − ε̂_i)² over each row of ε̂ [B, ...], ε regenerated from ``seed_offset``;
    float32 (float64 for float64 ε̂)."""
    dtype = compute_dtype(eps_hat)
    eps = noise(seed_offset, eps_hat.shape).to(dtype)
    error = eps - eps_hat.to(dtype)
    # One element a row for ε̂ [B] (flatten(1) needs a second dimension).
    error = error.flatten(1) if error.dim() > 1 else error.unsqueeze(1)
    return (error * error).sum(1)


def diffusion_loss(eps_hat: torch.Tensor, seed_offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[B] L_b = ½·w_b·Σ_i (ε_i − ε̂_i)²; float32 (float64 for float64 inputs)."""
    dtype = compute_dtype(eps_hat, weight)
    return 0.5 * weight.to(dtype) * noise_prediction_squared_error(eps_hat.to(dtype), seed_offset)
