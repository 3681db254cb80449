"""Triton kernels of the importance-weighted (IWAE) family: K reparameterized samples
fused with their log densities, and the log-mean-exp over samples (alone, or of the IWAE
log weights log p(x|z) + log p(z) − log q(z|x)), forward and backward, one pass each.

Sampling.  The latent is viewed as a contiguous [B, N] matrix (N = every dimension but
the batch) and the samples as [K·B, N], row k·B + b holding sample k of data point b, so
element i of the flattened [K, B, N] z is drawn at Philox offset base + i.  The forward
tiles the [K·B, N] rows in [BLOCK_R, BLOCK_N] blocks (parallel over samples too, for a
small batch with many samples) and writes, per row and column block, partial sums of
log q and log p that a torch sum adds in a fixed order.  The backward tiles the [B, N]
latent and loops over the K samples, so the gradients of mu, logvar and the priors sum
over samples in registers: no atomics, bitwise repeatable.  ε is regenerated from the
call's (seed, base offset), never stored.  Priors are read through the strides of their
broadcast to [B, N] (:func:`fastvae.kernels.latent.prior_layout`).

Log-mean-exp.  The reduced dimension of a contiguous x of shape [outer, K, inner] is read
as a [K, M] matrix (M = outer·inner) through index arithmetic, so no input is permuted or
copied: column m = o·inner + j is the K elements at o·K·inner + k·inner + j.  The forward
runs a max-shifted (online) logsumexp over K in chunks and saves, per column, the shift
and log Σ exp(x − shift); the backward is elementwise, grad·exp(x − shift − log Σ), the
softmax over K recomputed from those two.
"""
import math

import torch
import triton
import triton.language as tl

from fastvae.row_sums import sum_partials_into

from .latent import load_prior, prior_layout

# log(2π), as fastvae.reference.LOG_2PI.
LOG_2PI: tl.constexpr = tl.constexpr(1.8378770664093453)

# Elements per tile, as in kernels/latent.py; tuning per GPU belongs to bench/.
TILE_ELEMENTS = 4096
MAX_BLOCK_N = 1024
# Warps per program, every kernel here: 16, so 8 elements a thread of a 4096 tile
# (docs/architecture.md, "Tiles and warps").  On sm_90a: the sampling forward with both
# priors 118 registers; log-mean-exp 114 (forward, IWAE weights; 255 and 740 B of spills
# at the default 4 warps) and 80 (backward); no spills.
NUM_WARPS = 16
# The sampling backward writing prior gradients holds two more tensors an element: its
# tile is halved (4 elements a thread, 122 registers), as at 8 it hit ptxas's
# 128-register cap (16 warps) and spilled 168 B (724 B at the default 4 warps).
PRIOR_GRAD_TILE_ELEMENTS = 2048
# Columns per log-mean-exp program; the K samples of a column are reduced in chunks.
MAX_BLOCK_M = 256


# --------------------------------------------------------------------------------------
# K samples with log q and log p
# --------------------------------------------------------------------------------------


@triton.jit
def sample_gaussian_k_fwd_kernel(
    mu_ptr,  # [B, N]
    logvar_ptr,  # [B, N]
    prior_mu_ptr,  # broadcast to [B, N] through strides
    prior_logvar_ptr,  # broadcast to [B, N] through strides
    seed_ptr,  # [2] int64: seed, base offset
    z_ptr,  # [K, B, N], read as [K·B, N]
    log_q_ptr,  # [K·B, num_col_blocks] row partial sums
    log_p_ptr,  # [K·B, num_col_blocks] row partial sums
    num_rows,  # K·B
    B,
    N,
    prior_mu_stride_b, prior_mu_stride0, prior_mu_stride1, prior_mu_stride2,
    prior_logvar_stride_b, prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
    inner_size1,
    inner_size2,
    num_col_blocks,
    HAS_PRIOR_MU: tl.constexpr,
    HAS_PRIOR_LOGVAR: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    sample_rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (sample_rows[:, None] < num_rows) & (cols[None, :] < N)
    batch_rows = sample_rows % B
    sample_offsets = sample_rows[:, None] * N + cols[None, :]
    latent_offsets = batch_rows[:, None] * N + cols[None, :]

    mu = tl.load(mu_ptr + latent_offsets, mask=mask, other=0.0).to(tl.float32)
    logvar = tl.load(logvar_ptr + latent_offsets, mask=mask, other=0.0).to(tl.float32)
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1)
    eps = tl.randn(seed, base + sample_offsets)
    z = mu + tl.exp(0.5 * logvar) * eps
    tl.store(z_ptr + sample_offsets, z.to(z_ptr.dtype.element_ty), mask=mask)

    # log q in ε, as fastvae.reference.sample_log_density: (z − mu)² e^(−logvar) would lose
    # ε² to the rounding of z where σ ≪ |mu|; 0·mu keeps a NaN mu's NaN.  log p at the
    # float32 z.
    log_q = -0.5 * (LOG_2PI + logvar + eps * eps) + 0.0 * mu
    prior_mu = load_prior(prior_mu_ptr, batch_rows, cols, mask, prior_mu_stride_b, prior_mu_stride0,
                           prior_mu_stride1, prior_mu_stride2, inner_size1, inner_size2, HAS_PRIOR_MU)
    prior_logvar = load_prior(prior_logvar_ptr, batch_rows, cols, mask, prior_logvar_stride_b,
                               prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
                               inner_size1, inner_size2, HAS_PRIOR_LOGVAR)
    diff_p = z - prior_mu
    log_p = -0.5 * (LOG_2PI + prior_logvar + diff_p * diff_p * tl.exp(-prior_logvar))

    row_mask = sample_rows < num_rows
    partial_offsets = sample_rows * num_col_blocks + pid_n
    tl.store(log_q_ptr + partial_offsets, tl.sum(tl.where(mask, log_q, 0.0), axis=1), mask=row_mask)
    tl.store(log_p_ptr + partial_offsets, tl.sum(tl.where(mask, log_p, 0.0), axis=1), mask=row_mask)


@triton.jit
def sample_gaussian_k_bwd_kernel(
    mu_ptr,  # [B, N]
    logvar_ptr,  # [B, N]
    prior_mu_ptr,  # broadcast to [B, N] through strides
    prior_logvar_ptr,  # broadcast to [B, N] through strides
    seed_ptr,  # [2] int64: seed, base offset
    grad_z_ptr,  # [K, B, N]
    grad_log_q_ptr,  # [K, B]
    grad_log_p_ptr,  # [K, B]
    grad_mu_ptr,  # [B, N]
    grad_logvar_ptr,  # [B, N]
    grad_prior_mu_ptr,  # [B, N], summed to the prior's shape afterwards
    grad_prior_logvar_ptr,  # [B, N], summed to the prior's shape afterwards
    K,
    B,
    N,
    prior_mu_stride_b, prior_mu_stride0, prior_mu_stride1, prior_mu_stride2,
    prior_logvar_stride_b, prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
    inner_size1,
    inner_size2,
    HAS_PRIOR_MU: tl.constexpr,
    HAS_PRIOR_LOGVAR: tl.constexpr,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_LOG_Q: tl.constexpr,
    HAS_GRAD_LOG_P: tl.constexpr,
    PRIOR_MU_GRAD: tl.constexpr,
    PRIOR_LOGVAR_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < B
    mask = row_mask[:, None] & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    mu = tl.load(mu_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    logvar = tl.load(logvar_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    sigma = tl.exp(0.5 * logvar)
    prior_mu = load_prior(prior_mu_ptr, rows, cols, mask, prior_mu_stride_b, prior_mu_stride0,
                           prior_mu_stride1, prior_mu_stride2, inner_size1, inner_size2, HAS_PRIOR_MU)
    prior_logvar = load_prior(prior_logvar_ptr, rows, cols, mask, prior_logvar_stride_b,
                               prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
                               inner_size1, inner_size2, HAS_PRIOR_LOGVAR)
    prior_precision = tl.exp(-prior_logvar)
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1)

    # Sums over the K samples.  With z = mu + σ·ε: dz/dmu = 1, dz/dlogvar = σ·ε/2;
    # log q = −½(log 2π + logvar + ε²) so d log q/dmu = 0, d log q/dlogvar = −½;
    # d log p/dz = −(z − prior_mu)·e^(−prior_logvar).
    grad_mu = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    grad_logvar = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    grad_prior_mu = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    grad_prior_logvar = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    grad_log_q_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    sample_rows = rows  # k·B + b for sample k
    # A while loop, not range(): see log_mean_exp_fwd_kernel.
    k = 0
    while k < K:
        if HAS_GRAD_Z or HAS_GRAD_LOG_P:
            sample_offsets = sample_rows[:, None] * N + cols[None, :]
            eps = tl.randn(seed, base + sample_offsets)
            grad_z = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            if HAS_GRAD_Z:
                grad_z += tl.load(grad_z_ptr + sample_offsets, mask=mask, other=0.0).to(tl.float32)
            if HAS_GRAD_LOG_P:
                grad_log_p = tl.load(grad_log_p_ptr + sample_rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
                diff = (mu + sigma * eps) - prior_mu
                # d log p/dprior_mu = (z − prior_mu)·e^(−prior_logvar) = −d log p/dz
                d_prior_mu = grad_log_p * diff * prior_precision
                grad_z -= d_prior_mu
                if PRIOR_MU_GRAD:
                    grad_prior_mu += d_prior_mu
                if PRIOR_LOGVAR_GRAD:
                    # d log p/dprior_logvar = −½(1 − (z − prior_mu)²·e^(−prior_logvar))
                    grad_prior_logvar += grad_log_p * 0.5 * (diff * diff * prior_precision - 1.0)
            grad_mu += grad_z
            grad_logvar += grad_z * 0.5 * sigma * eps
        if HAS_GRAD_LOG_Q:
            grad_log_q_sum += tl.load(grad_log_q_ptr + sample_rows, mask=row_mask, other=0.0).to(tl.float32)
        sample_rows += B
        k += 1

    if HAS_GRAD_LOG_Q:
        grad_logvar -= 0.5 * grad_log_q_sum[:, None]
    tl.store(grad_mu_ptr + offsets, grad_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)
    if PRIOR_MU_GRAD:
        tl.store(grad_prior_mu_ptr + offsets, grad_prior_mu.to(grad_prior_mu_ptr.dtype.element_ty), mask=mask)
    if PRIOR_LOGVAR_GRAD:
        tl.store(grad_prior_logvar_ptr + offsets,
                 grad_prior_logvar.to(grad_prior_logvar_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Log-mean-exp over samples, and the IWAE bound
# --------------------------------------------------------------------------------------


@triton.jit
def _load_log_weights(x_ptr, log_p_ptr, log_q_ptr, offsets, mask, IWAE_WEIGHTS: tl.constexpr):
    """x, or the IWAE log weight (log p(x|z) + log p(z)) − log q(z|x), in float32; −inf
    where masked."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if IWAE_WEIGHTS:
        log_p = tl.load(log_p_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        log_q = tl.load(log_q_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x = (x + log_p) - log_q
    return tl.where(mask, x, float("-inf"))


@triton.jit
def log_mean_exp_fwd_kernel(
    x_ptr,  # [outer, K, inner]: x, or log p(x|z) when IWAE_WEIGHTS
    log_p_ptr,  # [outer, K, inner]: log p(z), read when IWAE_WEIGHTS
    log_q_ptr,  # [outer, K, inner]: log q(z|x), read when IWAE_WEIGHTS
    out_ptr,  # [M] = [outer·inner] float32
    lse_parts_ptr,  # [2, M] float32: the shift, and log Σ_k exp(x − shift)
    K,
    M,
    inner,
    log_num_samples,  # log K
    IWAE_WEIGHTS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    cols = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    col_mask = cols < M
    col_offsets = (cols // inner) * K * inner + cols % inner
    sample_index = tl.arange(0, BLOCK_K).to(tl.int64)

    # Online logsumexp: total = Σ exp(x − shift), shift the running max, or 0 while the
    # max is ±inf (so an all −inf column gives −inf and a +inf gives +inf, as torch).
    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    shift = tl.zeros((BLOCK_M,), dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    # A while loop, not range(): the interpreter cannot take a runtime range() bound
    # under NumPy 2 (its scalars are 1-element arrays).
    k_start = 0
    while k_start < K:
        samples = k_start + sample_index
        mask = (samples[:, None] < K) & col_mask[None, :]
        offsets = col_offsets[None, :] + samples[:, None] * inner
        log_weights = _load_log_weights(x_ptr, log_p_ptr, log_q_ptr, offsets, mask, IWAE_WEIGHTS)
        new_max = tl.maximum(running_max, tl.max(log_weights, axis=0))
        new_shift = tl.where(tl.abs(new_max) == float("inf"), 0.0, new_max)
        # A zero total stays zero (rescaling it by exp(0 − new_shift) could make 0·inf).
        rescale_exponent = tl.where(total == 0.0, 0.0, shift - new_shift)
        total = total * tl.exp(rescale_exponent) + tl.sum(tl.exp(log_weights - new_shift[None, :]), axis=0)
        running_max = new_max
        shift = new_shift
        k_start += BLOCK_K

    log_total = tl.log(tl.where(col_mask, total, 1.0))  # columns past M: no log(0)
    tl.store(out_ptr + cols, (log_total + shift) - log_num_samples, mask=col_mask)
    tl.store(lse_parts_ptr + cols, shift, mask=col_mask)
    tl.store(lse_parts_ptr + M + cols, log_total, mask=col_mask)


@triton.jit
def log_mean_exp_bwd_kernel(
    x_ptr,  # [outer, K, inner]: x, or log p(x|z) when IWAE_WEIGHTS
    log_p_ptr,  # [outer, K, inner], read when IWAE_WEIGHTS
    log_q_ptr,  # [outer, K, inner], read when IWAE_WEIGHTS
    lse_parts_ptr,  # [2, M] float32: the forward's shift and log Σ_k exp(x − shift)
    grad_out_ptr,  # [M]
    grad_x_ptr,  # [outer, K, inner]
    grad_log_p_ptr,  # [outer, K, inner]
    grad_log_q_ptr,  # [outer, K, inner]
    K,
    M,
    inner,
    IWAE_WEIGHTS: tl.constexpr,
    X_GRAD: tl.constexpr,
    LOG_P_GRAD: tl.constexpr,
    LOG_Q_GRAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    cols = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    samples = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    col_mask = cols < M
    mask = (samples[:, None] < K) & col_mask[None, :]
    offsets = ((cols // inner) * K * inner + cols % inner)[None, :] + samples[:, None] * inner

    log_weights = _load_log_weights(x_ptr, log_p_ptr, log_q_ptr, offsets, mask, IWAE_WEIGHTS)
    shift = tl.load(lse_parts_ptr + cols, mask=col_mask, other=0.0)
    log_total = tl.load(lse_parts_ptr + M + cols, mask=col_mask, other=0.0)
    grad_out = tl.load(grad_out_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    # softmax_k = exp(x − shift − log total).  Not exp(x − result − log K): the rounding
    # of a result of large magnitude (thousands of nats) would scale every weight.
    weights = tl.exp((log_weights - shift[None, :]) - log_total[None, :])
    grad = grad_out[None, :] * weights
    if X_GRAD:
        tl.store(grad_x_ptr + offsets, grad.to(grad_x_ptr.dtype.element_ty), mask=mask)
    if LOG_P_GRAD:
        tl.store(grad_log_p_ptr + offsets, grad.to(grad_log_p_ptr.dtype.element_ty), mask=mask)
    if LOG_Q_GRAD:
        tl.store(grad_log_q_ptr + offsets, (-grad).to(grad_log_q_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _blocks(rows: int, features: int, tile: int = TILE_ELEMENTS) -> tuple[int, int]:
    block_n = min(max(triton.next_power_of_2(max(features, 1)), 16), MAX_BLOCK_N, tile)
    block_rows = max(1, min(tile // block_n, triton.next_power_of_2(max(rows, 1))))
    return block_rows, block_n


def _features(mu: torch.Tensor) -> int:
    return int(torch.Size(mu.shape[1:]).numel())


def _or(tensor, fallback):
    # Kernels take a pointer for every argument; an absent one is never read (its
    # constexpr flag is off), so any tensor stands in.
    return tensor if tensor is not None else fallback


def sample_gaussian_k_fwd(mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples: int, z, log_q, log_p):
    """Launch the forward, writing the outputs (allocated by the op, fastvae/ops/iwae.py).
    mu, logvar: contiguous, shape [B, *inner]; priors broadcast to it or None;
    seed_offset: int64 [2]; z: [K, B, *inner]; log_q, log_p: float32 [K, B]."""
    batch, features = mu.shape[0], _features(mu)
    num_rows = num_samples * batch
    if num_rows == 0 or features == 0:
        log_q.zero_()
        log_p.zero_()
        return
    block_rows, block_n = _blocks(num_rows, features)
    grid = (triton.cdiv(num_rows, block_rows), triton.cdiv(features, block_n))
    log_q_partials = torch.empty((num_rows, grid[1]), dtype=torch.float32, device=mu.device)
    log_p_partials = torch.empty((num_rows, grid[1]), dtype=torch.float32, device=mu.device)
    (prior_mu_arg, prior_logvar_arg), strides, size1, size2 = prior_layout([prior_mu, prior_logvar], mu.shape)
    sample_gaussian_k_fwd_kernel[grid](
        mu, logvar, _or(prior_mu_arg, mu), _or(prior_logvar_arg, mu), seed_offset, z, log_q_partials, log_p_partials,
        num_rows, batch, features, *strides, size1, size2, grid[1],
        HAS_PRIOR_MU=prior_mu is not None, HAS_PRIOR_LOGVAR=prior_logvar is not None,
        BLOCK_R=block_rows, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    sum_partials_into(log_q, log_q_partials)
    sum_partials_into(log_p, log_p_partials)


def sample_gaussian_k_bwd(grad_z, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset,
                          num_samples: int, grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar):
    """Launch the backward, writing the outputs (allocated by the op, fastvae/ops/iwae.py).
    grad_z: contiguous [K, B, *inner] or None; grad_log_q, grad_log_p: contiguous [K, B]
    or None.  grad_mu, grad_logvar: contiguous, mu's shape, each summed over the K
    samples; grad_prior_mu, grad_prior_logvar: the prior gradients per element of mu's
    shape (in their own dtypes), or None when not asked for (then grad_log_p is given)."""
    batch, features = mu.shape[0], _features(mu)
    if batch == 0 or features == 0:
        return
    prior_grads = grad_prior_mu is not None or grad_prior_logvar is not None
    block_b, block_n = _blocks(batch, features, PRIOR_GRAD_TILE_ELEMENTS if prior_grads else TILE_ELEMENTS)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(features, block_n))
    (prior_mu_arg, prior_logvar_arg), strides, size1, size2 = prior_layout([prior_mu, prior_logvar], mu.shape)
    sample_gaussian_k_bwd_kernel[grid](
        mu, logvar, _or(prior_mu_arg, mu), _or(prior_logvar_arg, mu), seed_offset,
        _or(grad_z, mu), _or(grad_log_q, mu), _or(grad_log_p, mu), grad_mu, grad_logvar,
        _or(grad_prior_mu, mu), _or(grad_prior_logvar, mu),
        num_samples, batch, features, *strides, size1, size2,
        HAS_PRIOR_MU=prior_mu is not None, HAS_PRIOR_LOGVAR=prior_logvar is not None,
        HAS_GRAD_Z=grad_z is not None, HAS_GRAD_LOG_Q=grad_log_q is not None,
        HAS_GRAD_LOG_P=grad_log_p is not None,
        PRIOR_MU_GRAD=grad_prior_mu is not None, PRIOR_LOGVAR_GRAD=grad_prior_logvar is not None,
        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )


def _reduced_layout(shape, dim: int) -> tuple[int, int, int]:
    """(K, M, inner) of reducing contiguous ``shape`` over ``dim``: K = shape[dim],
    inner = the product of the sizes after it, M = outer·inner."""
    num_samples = shape[dim]
    inner = int(torch.Size(shape[dim + 1:]).numel())
    outer = int(torch.Size(shape[:dim]).numel())
    return num_samples, outer * inner, inner


def _log_mean_exp_blocks(num_samples: int, columns: int) -> tuple[int, int]:
    block_m = min(max(triton.next_power_of_2(max(columns, 1)), 16), MAX_BLOCK_M)
    block_k = max(1, min(TILE_ELEMENTS // block_m, triton.next_power_of_2(max(num_samples, 1))))
    return block_k, block_m


def _log_mean_exp_fwd(x, log_p, log_q, dim: int, out, lse_parts):
    num_samples, columns, inner = _reduced_layout(x.shape, dim)
    if columns == 0:
        return
    block_k, block_m = _log_mean_exp_blocks(num_samples, columns)
    grid = (triton.cdiv(columns, block_m),)
    log_mean_exp_fwd_kernel[grid](
        x, _or(log_p, x), _or(log_q, x), out, lse_parts,
        num_samples, columns, inner, math.log(num_samples),
        IWAE_WEIGHTS=log_p is not None, BLOCK_K=block_k, BLOCK_M=block_m, num_warps=NUM_WARPS,
    )


def _log_mean_exp_bwd(grad_out, x, log_p, log_q, lse_parts, dim: int, grad_x, grad_log_p, grad_log_q):
    num_samples, columns, inner = _reduced_layout(x.shape, dim)
    if columns == 0 or (grad_x is None and grad_log_p is None and grad_log_q is None):
        return
    block_k, block_m = _log_mean_exp_blocks(num_samples, columns)
    grid = (triton.cdiv(columns, block_m), triton.cdiv(num_samples, block_k))
    log_mean_exp_bwd_kernel[grid](
        x, _or(log_p, x), _or(log_q, x), lse_parts, grad_out,
        _or(grad_x, x), _or(grad_log_p, x), _or(grad_log_q, x),
        num_samples, columns, inner,
        IWAE_WEIGHTS=log_p is not None, X_GRAD=grad_x is not None, LOG_P_GRAD=grad_log_p is not None,
        LOG_Q_GRAD=grad_log_q is not None, BLOCK_K=block_k, BLOCK_M=block_m, num_warps=NUM_WARPS,
    )


def log_mean_exp_fwd(x, dim: int, out, lse_parts):
    """Launch the forward, writing the outputs (allocated by the op, fastvae/ops/iwae.py).
    x: contiguous, K = x.shape[dim] >= 1; out: logsumexp_k(x) − log K, float32, x's shape
    without ``dim``; lse_parts, float32 [2, M], the per-column shift (the max) and
    log Σ_k exp(x − shift), which the backward needs (their sum is the logsumexp, kept
    apart for precision)."""
    _log_mean_exp_fwd(x, None, None, dim, out, lse_parts)


def log_mean_exp_bwd(grad_out, x, lse_parts, dim: int, grad_x):
    """Launch the backward, writing grad_x = grad_out · softmax over ``dim`` (contiguous,
    x's shape and dtype).  grad_out: contiguous, x's shape without ``dim``; x and
    lse_parts as the forward's."""
    _log_mean_exp_bwd(grad_out, x, None, None, lse_parts, dim, grad_x, None, None)


def iwae_bound_fwd(log_px_z, log_p, log_q, bound, lse_parts):
    """Launch the forward, writing the outputs.  log_px_z, log_p, log_q: contiguous, one
    shape [K, *batch], K >= 1; bound: logsumexp_k(log_px_z + log_p − log_q) − log K,
    float32 [*batch]; lse_parts as :func:`log_mean_exp_fwd`'s."""
    _log_mean_exp_fwd(log_px_z, log_p, log_q, 0, bound, lse_parts)


def iwae_bound_bwd(grad_bound, log_px_z, log_p, log_q, lse_parts, grad_log_px_z, grad_log_p, grad_log_q):
    """Launch the backward, writing, with w = softmax_k of the log weights, grad·w, grad·w
    and −grad·w into the gradients of (log_px_z, log_p, log_q) (contiguous, each in its
    input's dtype), each None when not asked for."""
    _log_mean_exp_bwd(grad_bound, log_px_z, log_p, log_q, lse_parts, 0, grad_log_px_z, grad_log_p, grad_log_q)
