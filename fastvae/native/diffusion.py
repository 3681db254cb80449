"""Native launchers of the diffusion ops (csrc/cpu/diffusion.cpp, csrc/cuda/diffusion.cu),
with the signatures of :mod:`fastvae.kernels.diffusion`'s.

Every [B, N] tensor is contiguous.  ε at (b, n) is the normal of Philox at offset
base + b·N + n of the call's ``seed_offset`` (seed, base), as :func:`fastvae.random.philox_normal`
draws it; the backward and the loss regenerate it.  The C++ writes a row sum (Σ(ε − ε̂)², ∂γ)
as one partial per chunk of the backend's ``DIFFUSION_ROW_PARTIAL_WIDTH`` columns, added
here in float64 (:func:`fastvae.row_sums.sum_partials_into`).
"""
from __future__ import annotations

import math

import torch

from fastvae.row_sums import sum_partials_into

from . import address, dtype_code

LAUNCHERS = ("diffuse_fwd", "diffuse_bwd", "diffusion_loss_fwd", "diffusion_loss_bwd")
DIFFUSE = "diffuse"
LOSS = "diffusion_loss"


def _sizes(data) -> tuple[int, int]:
    return data.shape[0], math.prod(data.shape[1:])


def _row_partials(native, features: int) -> int:
    width = native.constant("DIFFUSION_ROW_PARTIAL_WIDTH")
    return max(-(-features // width), 1)


def _partials_buffer(out, batch: int, row_partials: int):
    """Where the C++ writes the partials of the [B] row sum ``out``: ``out`` itself when a
    row is one chunk (or ``out`` is None), else a float32 [B, row_partials] buffer."""
    if out is None or row_partials == 1:
        return out
    return torch.empty((batch, row_partials), dtype=torch.float32, device=out.device)


def _finish_row_sum(out, partials) -> None:
    if partials is not out:
        sum_partials_into(out, partials)


def diffuse_fwd(native, x, gamma, seed_offset, *, z):
    """As :func:`fastvae.kernels.diffusion.diffuse_fwd`: writes z = α·x + σ·ε, α = √sigmoid(−γ),
    σ = √sigmoid(γ) per row, in z's dtype (x, γ and z each in any of float32, bfloat16,
    float16)."""
    batch, features = _sizes(x)
    if not (batch and features):
        return
    x, gamma = x.contiguous(), gamma.contiguous()
    native.launch(
        "diffuse_fwd", x.device,
        x=address(x), gamma=address(gamma), seed_offset=address(seed_offset), z=address(z), batch=batch,
        features=features, x_dtype=dtype_code(x.dtype, DIFFUSE), gamma_dtype=dtype_code(gamma.dtype, DIFFUSE),
        z_dtype=dtype_code(z.dtype, DIFFUSE),
    )


def diffuse_bwd(native, grad_z, x, gamma, seed_offset, *, grad_x, grad_gamma):
    """As :func:`fastvae.kernels.diffusion.diffuse_bwd`: writes grad_x = α·grad_z (x's
    dtype) and grad_gamma [B] (float32) = Σ_n grad_z·(∂α/∂γ·x + ∂σ/∂γ·ε), either of them
    None when not wanted."""
    batch, features = _sizes(x)
    if grad_gamma is not None and not features:
        grad_gamma.zero_()  # a row of no elements
    if not (batch and features) or (grad_x is None and grad_gamma is None):
        return
    grad_z, x, gamma = grad_z.contiguous(), x.contiguous(), gamma.contiguous()
    row_partials = _row_partials(native, features)
    grad_gamma_partials = _partials_buffer(grad_gamma, batch, row_partials)
    native.launch(
        "diffuse_bwd", x.device,
        grad_z=address(grad_z), x=address(x), gamma=address(gamma), seed_offset=address(seed_offset),
        grad_x=address(grad_x), grad_gamma=address(grad_gamma_partials), batch=batch, features=features,
        row_partials=row_partials, grad_z_dtype=dtype_code(grad_z.dtype, DIFFUSE),
        x_dtype=dtype_code(x.dtype, DIFFUSE), gamma_dtype=dtype_code(gamma.dtype, DIFFUSE),
    )
    if grad_gamma is not None:
        _finish_row_sum(grad_gamma, grad_gamma_partials)


def diffusion_loss_fwd(native, eps_hat, seed_offset, weight, *, loss, squared_error):
    """As :func:`fastvae.kernels.diffusion.diffusion_loss_fwd`: writes squared_error [B] =
    Σ_n (ε − ε̂)² and loss [B] = ½·w·squared_error, both float32 (either may be None)."""
    batch, features = _sizes(eps_hat)
    if not features:
        for out in (loss, squared_error):
            if out is not None:
                out.zero_()  # a row of no elements
    if not (batch and features) or (loss is None and squared_error is None):
        return
    eps_hat, weight = eps_hat.contiguous(), weight.contiguous()
    row_partials = _row_partials(native, features)
    loss_partials = _partials_buffer(loss, batch, row_partials)
    squared_error_partials = _partials_buffer(squared_error, batch, row_partials)
    native.launch(
        "diffusion_loss_fwd", eps_hat.device,
        eps_hat=address(eps_hat), seed_offset=address(seed_offset), weight=address(weight),
        loss=address(loss_partials), squared_error=address(squared_error_partials), batch=batch, features=features,
        row_partials=row_partials, eps_hat_dtype=dtype_code(eps_hat.dtype, LOSS),
        weight_dtype=dtype_code(weight.dtype, LOSS),
    )
    for out, partials in ((loss, loss_partials), (squared_error, squared_error_partials)):
        if out is not None:
            _finish_row_sum(out, partials)


def diffusion_loss_bwd(native, grad_loss, eps_hat, seed_offset, weight, *, grad_eps_hat):
    """As :func:`fastvae.kernels.diffusion.diffusion_loss_bwd`: writes grad_eps_hat =
    grad_loss·w·(ε̂ − ε) in eps_hat's dtype; grad_loss [B] float32."""
    batch, features = _sizes(eps_hat)
    if not (batch and features) or grad_eps_hat is None:
        return
    # A [B] gradient may come expanded from a scalar (stride 0): one small copy.
    grad_loss = grad_loss.to(torch.float32).contiguous()
    eps_hat, weight = eps_hat.contiguous(), weight.contiguous()
    native.launch(
        "diffusion_loss_bwd", eps_hat.device,
        grad_loss=address(grad_loss), eps_hat=address(eps_hat), seed_offset=address(seed_offset),
        weight=address(weight), grad_eps_hat=address(grad_eps_hat), batch=batch, features=features,
        eps_hat_dtype=dtype_code(eps_hat.dtype, LOSS), weight_dtype=dtype_code(weight.dtype, LOSS),
    )
