"""Triton kernels of the diffusion ops: the forward process z_t = α_t·x + σ_t·ε and the
noise-prediction loss ½·w·Σ(ε − ε̂)², forward and backward, one pass each.

The same math as fastvae/reference_diffusion.py, and the same launchers as the C++
backends' (fastvae/native/diffusion.py); docs/architecture.md ("Diffusion ops") has the
design.  The data is viewed as a contiguous [B, N] matrix tiled as in kernels/latent.py,
one γ_t and one weight per row, α² = sigmoid(−γ) and σ² = sigmoid(γ) formed per row in
float32.  ε is never stored: element (b, n) takes Philox offset base + b·N + n of the
call's (seed, base) (``tl.randn``, as fastvae.random.philox_normal) in every kernel, so
the loss and both backwards regenerate the very ε that formed z_t.  The row sums (∂γ and
Σ(ε − ε̂)²) are one float32 partial per (row, block of columns), added in float64 by
fastvae.row_sums: no atomics, bitwise repeatable, and an error that does not grow with N.
"""
import torch
import triton
import triton.language as tl

from fastvae.row_sums import sum_partials_into

from .latent import NUM_WARPS, _blocks, _or
from .math import sigmoid


@triton.jit
def _tile(B, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """(rows, offsets, mask) of this program's [BLOCK_B, BLOCK_N] tile, int64."""
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    return rows, rows[:, None] * N + cols[None, :], mask


@triton.jit
def _noise(seed_ptr, offsets):
    """ε at Philox offsets base + offsets of the call's (seed, base)."""
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1)
    return tl.randn(seed, base + offsets)


@triton.jit
def _scales(gamma_ptr, rows, B):
    """(α, σ) of each row, [BLOCK_B, 1] float32: α² = sigmoid(−γ), σ² = sigmoid(γ), each
    with its own relative accuracy in both tails (1 − sigmoid would lose σ² at γ ≪ 0)."""
    gamma = tl.load(gamma_ptr + rows, mask=rows < B, other=0.0).to(tl.float32)
    alpha = tl.sqrt(sigmoid(-gamma))
    sigma = tl.sqrt(sigmoid(gamma))
    return alpha[:, None], sigma[:, None]


@triton.jit
def diffuse_fwd_kernel(
    x_ptr,  # [B, N]
    gamma_ptr,  # [B]
    seed_ptr,  # [2] int64: seed, base offset
    z_ptr,  # [B, N]
    B,
    N,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows, offsets, mask = _tile(B, N, BLOCK_B, BLOCK_N)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    alpha, sigma = _scales(gamma_ptr, rows, B)
    z = alpha * x + sigma * _noise(seed_ptr, offsets)
    tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def diffuse_bwd_kernel(
    grad_z_ptr,  # [B, N]
    x_ptr,  # [B, N]
    gamma_ptr,  # [B]
    seed_ptr,  # [2] int64: seed, base offset
    grad_x_ptr,  # [B, N]
    grad_gamma_ptr,  # [B, num_col_blocks] row partial sums
    B,
    N,
    num_col_blocks,
    X_GRAD: tl.constexpr,
    GAMMA_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows, offsets, mask = _tile(B, N, BLOCK_B, BLOCK_N)
    alpha, sigma = _scales(gamma_ptr, rows, B)
    # The noise before the loads: drawn after them, ptxas spilled across Box–Muller's calls.
    if GAMMA_GRAD:
        eps = _noise(seed_ptr, offsets)
    else:
        eps = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    grad_z = tl.load(grad_z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if X_GRAD:
        tl.store(grad_x_ptr + offsets, (alpha * grad_z).to(grad_x_ptr.dtype.element_ty), mask=mask)
    if GAMMA_GRAD:
        # dα/dγ = −½·α·σ², dσ/dγ = ½·σ·α²: ∂γ = ½·α·σ·Σ g·(α·ε − σ·x), the row's factor
        # taken out of the sum.
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        terms = tl.where(mask, grad_z * (alpha * eps - sigma * x), 0.0)
        partial = 0.5 * alpha * sigma * tl.sum(terms, axis=1)[:, None]
        pid_n = tl.program_id(1)
        tl.store(grad_gamma_ptr + rows[:, None] * num_col_blocks + pid_n, partial, mask=(rows < B)[:, None])


@triton.jit
def diffusion_loss_fwd_kernel(
    eps_hat_ptr,  # [B, N]
    seed_ptr,  # [2] int64: seed, base offset
    squared_error_ptr,  # [B, num_col_blocks] row partial sums of (ε − ε̂)²
    B,
    N,
    num_col_blocks,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows, offsets, mask = _tile(B, N, BLOCK_B, BLOCK_N)
    # The noise before the load (as in diffuse_bwd_kernel: no spill in 16-bit).
    eps = _noise(seed_ptr, offsets)
    error = eps - tl.load(eps_hat_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    partial = tl.sum(tl.where(mask, error * error, 0.0), axis=1)
    tl.store(squared_error_ptr + rows * num_col_blocks + tl.program_id(1), partial, mask=rows < B)


@triton.jit
def diffusion_loss_bwd_kernel(
    grad_loss_ptr,  # [B]
    eps_hat_ptr,  # [B, N]
    seed_ptr,  # [2] int64: seed, base offset
    weight_ptr,  # [B]
    grad_eps_hat_ptr,  # [B, N]
    B,
    N,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows, offsets, mask = _tile(B, N, BLOCK_B, BLOCK_N)
    row_mask = rows < B
    grad_loss = tl.load(grad_loss_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    eps_hat = tl.load(eps_hat_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    grad = (grad_loss * weight)[:, None] * (eps_hat - _noise(seed_ptr, offsets))
    tl.store(grad_eps_hat_ptr + offsets, grad.to(grad_eps_hat_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _grid(batch: int, features: int):
    """(grid, block_b, block_n) of the tiling of a [batch, features] matrix."""
    block_b, block_n = _blocks(batch, features)
    return (triton.cdiv(batch, block_b), triton.cdiv(features, block_n)), block_b, block_n


def diffuse_fwd(x, gamma, seed_offset, *, z):
    """Launch the forward, writing z (allocated by the op, fastvae/ops/diffusion.py).
    x: contiguous [B, N], any float dtype; gamma: contiguous [B], any float dtype;
    seed_offset: int64 [2]; z: contiguous [B, N] in the promoted dtype of x and gamma,
    element (b, n) formed with the noise at Philox offset base + b·N + n."""
    batch, features = x.shape
    if batch == 0 or features == 0:
        return
    grid, block_b, block_n = _grid(batch, features)
    diffuse_fwd_kernel[grid](x, gamma, seed_offset, z, batch, features, BLOCK_B=block_b, BLOCK_N=block_n,
                             num_warps=NUM_WARPS)


def diffuse_bwd(grad_z, x, gamma, seed_offset, *, grad_x, grad_gamma):
    """Launch the backward, writing the outputs (allocated by the op).  grad_z, x:
    contiguous [B, N]; grad_x: [B, N] in x's dtype, α·grad_z, or None; grad_gamma: [B]
    float32, Σ_n grad_z·(−½·α·σ²·x + ½·σ·α²·ε), or None."""
    batch, features = x.shape
    if grad_x is None and grad_gamma is None:
        return
    grid, block_b, block_n = _grid(batch, features)
    if batch == 0 or features == 0:
        if grad_gamma is not None:
            grad_gamma.zero_()
        return
    partials = None
    if grad_gamma is not None:
        partials = torch.empty((batch, grid[1]), dtype=torch.float32, device=x.device)
    diffuse_bwd_kernel[grid](
        grad_z, x, gamma, seed_offset, _or(grad_x, grad_z), _or(partials, grad_z), batch, features, grid[1],
        X_GRAD=grad_x is not None, GAMMA_GRAD=grad_gamma is not None, BLOCK_B=block_b, BLOCK_N=block_n,
        num_warps=NUM_WARPS,
    )
    if grad_gamma is not None:
        sum_partials_into(grad_gamma, partials)


def diffusion_loss_fwd(eps_hat, seed_offset, weight, *, loss, squared_error):
    """Launch the forward, writing the outputs (allocated by the op).  eps_hat:
    contiguous [B, N]; weight: [B]; squared_error: [B] float32, S_b = Σ_n (ε − ε̂)² with
    ε regenerated at diffuse_fwd's offsets; loss: [B] float32, ½·w_b·S_b."""
    batch, features = eps_hat.shape
    if batch == 0 or features == 0:
        squared_error.zero_()
    else:
        grid, block_b, block_n = _grid(batch, features)
        partials = torch.empty((batch, grid[1]), dtype=torch.float32, device=eps_hat.device)
        diffusion_loss_fwd_kernel[grid](eps_hat, seed_offset, partials, batch, features, grid[1],
                                        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS)
        sum_partials_into(squared_error, partials)
    # ½·w·S in float32, in the reference's order.
    torch.mul(weight.to(torch.float32), 0.5, out=loss)
    loss.mul_(squared_error)


def diffusion_loss_bwd(grad_loss, eps_hat, seed_offset, weight, *, grad_eps_hat):
    """Launch the backward, writing grad_eps_hat (allocated by the op: [B, N] in
    eps_hat's dtype) = grad_loss_b·w_b·(ε̂ − ε).  grad_loss: [B] float32; eps_hat:
    contiguous [B, N]; weight: [B]."""
    batch, features = eps_hat.shape
    if batch == 0 or features == 0:
        return
    grid, block_b, block_n = _grid(batch, features)
    diffusion_loss_bwd_kernel[grid](grad_loss, eps_hat, seed_offset, weight, grad_eps_hat, batch, features,
                                    BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS)
