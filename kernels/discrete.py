"""Triton kernels of the discrete latent family: Gumbel-softmax sampling (soft, or
straight-through hard) fused with the analytic categorical KL, forward and backward, one
pass each.

The logits [B, ..., C] are viewed as a contiguous [R, C] matrix (R = numel / C), one
categorical variable per row.  Up to CHUNK_CATEGORIES categories it is tiled in
[BLOCK_R, BLOCK_C] blocks with BLOCK_C the next power of two ≥ C: a whole row lives in one
program's tile, so both softmaxes, the argmax and the KL's row sum take one pass with no
cross-program reduction.  A wider row gets a program that loops over chunks of
CHUNK_CATEGORIES columns: a pass of running (online) logsumexps, then the sample, argmax
and KL (forward) or the row sums Σ grad_z·y and the KL (backward), then (hard sample,
backward) the writes; each pass reloads the logits and regenerates the noise.  The op
caps C at MAX_CATEGORIES (and points wider rows to the torch backend).  The prior
logits are read through strides of their broadcast to [R, C] (two collapsed row
dimensions and a category stride), so a prior of shape [C], [1, C] or [B, 1, C] needs no
expanded copy.  The Gumbel noise is never stored: element i of the [R, C] view uses
Philox offset base + i (``tl.rand``), and the backward regenerates it.
"""
import math

import triton
import triton.language as tl

from fastvae.layout import categorical_prior_layout

from .math import gumbel_from_uniform

# Elements per tile, as in latent.py, at NUM_WARPS warps (8 elements a thread): see
# docs/architecture.md, "Tiles and warps".  On sm_90a the forward takes up to 95
# registers and the backward 118 (C = 10, both with a full prior), no spills.
TILE_ELEMENTS = 4096
NUM_WARPS = 16
# Rows up to this many categories are one block of a tile; a wider row gets a program to
# itself that loops over chunks of this many columns (categorical_wide_*_kernel), with
# running logsumexps: a whole 65536-wide row in one tile took 128 registers and spilled
# 19–46 KB a thread at 16 warps; the chunked kernels take 108 (forward) and 99 (backward).
CHUNK_CATEGORIES = 4096
# Widest row (categories) the kernel backends take (the op checks it and points wider
# rows to the torch backend): the CUDA kernels' bound; these kernels take any width.
MAX_CATEGORIES = 65536


@triton.jit
def _row_softmax(s, mask, row_mask):
    """Softmax over axis 1 of ``s`` where ``mask`` (0 elsewhere), as torch computes it:
    returns (softmax, s − row max, log Σ exp(s − row max)), the first two 0 outside
    ``mask``.  Padded rows (not ``row_mask``) give zeros rather than NaN; a real row with
    NaN gives NaN."""
    s = tl.where(mask, s, float("-inf"))
    row_max = tl.where(row_mask, tl.max(s, axis=1), 0.0)
    # Masked lanes hold 0 rather than −inf, so that log-ratios there stay finite.
    shifted = tl.where(mask, s - row_max[:, None], 0.0)
    e = tl.where(mask, tl.exp(shifted), 0.0)
    total = tl.where(row_mask, tl.sum(e, axis=1), 1.0)
    return e / total[:, None], shifted, tl.log(total)


@triton.jit
def _gumbel_softmax(x, rows, cols, mask, row_mask, seed_ptr, tau, C):
    """y = softmax((x + g) / τ), g the Gumbel noise of offset base + row·C + col."""
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1)
    offsets = rows[:, None] * C + cols[None, :]
    g = gumbel_from_uniform(tl.rand(seed, base + offsets))
    y, _, _ = _row_softmax((x + g) / tau, mask, row_mask)
    return y


@triton.jit
def _categorical_kl(x, prior, mask, row_mask, log_uniform, HAS_PRIOR: tl.constexpr):
    """(p, log p − log q, KL per row) of p = softmax(x) against q = softmax(prior), or
    against the uniform prior when there is none (``log_uniform`` = log q_c = −log C)."""
    p, shifted, log_total = _row_softmax(x, mask, row_mask)
    log_p = shifted - log_total[:, None]
    if HAS_PRIOR:
        _, prior_shifted, prior_log_total = _row_softmax(prior, mask, row_mask)
        log_ratio = log_p - (prior_shifted - prior_log_total[:, None])
    else:
        log_ratio = log_p - log_uniform
    kl = tl.sum(tl.where(mask, p * log_ratio, 0.0), axis=1)
    return p, log_ratio, kl


@triton.jit
def load_prior(ptr, rows, cols, mask, stride0, stride1, stride_c, size1, HAS_PRIOR: tl.constexpr):
    if HAS_PRIOR:
        offsets = ((rows // size1) * stride0 + (rows % size1) * stride1)[:, None] + cols[None, :] * stride_c
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        return tl.zeros(mask.shape, dtype=tl.float32)


@triton.jit
def categorical_fwd_kernel(
    logits_ptr,  # [R, C]
    prior_ptr,  # broadcast to [R, C] through strides
    seed_ptr,  # [2] int64: seed, base offset
    z_ptr,  # [R, C]
    kl_ptr,  # [R] float32
    R,
    C,
    prior_stride0, prior_stride1, prior_stride_c,
    prior_size1,
    tau,
    log_uniform,
    HAS_PRIOR: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = tl.arange(0, BLOCK_C).to(tl.int64)
    row_mask = rows < R
    mask = row_mask[:, None] & (cols[None, :] < C)
    offsets = rows[:, None] * C + cols[None, :]

    x = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)

    y = _gumbel_softmax(x, rows, cols, mask, row_mask, seed_ptr, tau, C)
    if HARD:
        # Straight-through, as the reference writes it: one_hot − y + y, which is the
        # one-hot up to float rounding and NaN wherever y is.  argmax of y (not of the
        # logits plus noise), lowest index on ties, as torch.argmax.
        index = tl.argmax(y, axis=1)
        one_hot = tl.where(cols[None, :] == index[:, None], 1.0, 0.0)
        z = (one_hot - y) + y
    else:
        z = y
    tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)

    prior = load_prior(prior_ptr, rows, cols, mask, prior_stride0, prior_stride1, prior_stride_c,
                        prior_size1, HAS_PRIOR)
    _, _, kl = _categorical_kl(x, prior, mask, row_mask, log_uniform, HAS_PRIOR)
    tl.store(kl_ptr + rows, kl, mask=row_mask)


@triton.jit
def categorical_bwd_kernel(
    logits_ptr,  # [R, C]
    prior_ptr,  # broadcast to [R, C] through strides
    seed_ptr,  # [2] int64: seed, base offset
    grad_z_ptr,  # [R, C]
    grad_kl_ptr,  # [R]
    grad_logits_ptr,  # [R, C]
    grad_prior_ptr,  # [R, C], summed to the prior's shape afterwards
    R,
    C,
    prior_stride0, prior_stride1, prior_stride_c,
    prior_size1,
    tau,
    log_uniform,
    HAS_PRIOR: tl.constexpr,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = tl.arange(0, BLOCK_C).to(tl.int64)
    row_mask = rows < R
    mask = row_mask[:, None] & (cols[None, :] < C)
    offsets = rows[:, None] * C + cols[None, :]

    x = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    grad_logits = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)

    if HAS_GRAD_Z:
        # The soft sample y is recomputed from the logits and the regenerated noise, for
        # soft and hard alike (hard's straight-through gradient is y's).  Reading the
        # saved soft z instead would cost one more [R, C] read whenever the KL's gradient
        # (which needs the logits anyway) is also wanted, the usual case, and would give
        # y rounded to z's dtype for float16 / bfloat16 inputs.
        grad_z = tl.load(grad_z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        y = _gumbel_softmax(x, rows, cols, mask, row_mask, seed_ptr, tau, C)
        # Softmax's vector-Jacobian product, then the 1/τ of (x + g) / τ.
        dot = tl.sum(grad_z * y, axis=1)
        grad_logits += (y * (grad_z - dot[:, None])) / tau

    if HAS_GRAD_KL:
        grad_kl = tl.load(grad_kl_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
        prior = load_prior(prior_ptr, rows, cols, mask, prior_stride0, prior_stride1, prior_stride_c,
                            prior_size1, HAS_PRIOR)
        p, log_ratio, kl = _categorical_kl(x, prior, mask, row_mask, log_uniform, HAS_PRIOR)
        # ∂KL/∂x_j = p_j·((log p_j − log q_j) − KL);  ∂KL/∂u_j = q_j − p_j (u the prior logits).
        grad_logits += grad_kl * (p * (log_ratio - kl[:, None]))
        if PRIOR_GRAD:
            q, _, _ = _row_softmax(prior, mask, row_mask)
            tl.store(grad_prior_ptr + offsets, (grad_kl * (q - p)).to(grad_prior_ptr.dtype.element_ty), mask=mask)

    tl.store(grad_logits_ptr + offsets, grad_logits.to(grad_logits_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Rows wider than CHUNK_CATEGORIES: one program a row, looping over column chunks
# --------------------------------------------------------------------------------------


@triton.jit
def _chunk_logsumexp(running_max, total, v, mask):
    """Adds the chunk ``v`` (where ``mask``) to a running logsumexp (running_max, total):
    total is relative to the shift, the maximum or 0 while every term is −inf."""
    chunk_max = tl.max(tl.where(mask, v, float("-inf")), axis=0)
    new_max = tl.maximum(running_max, chunk_max)
    new_shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    rescale = tl.where(running_max == float("-inf"), 0.0, tl.exp(running_max - new_shift))
    return new_max, total * rescale + tl.sum(tl.where(mask, tl.exp(v - new_shift), 0.0), axis=0)


@triton.jit
def _shift(running_max):
    return tl.where(running_max == float("-inf"), 0.0, running_max)


@triton.jit
def _chunk_noisy(x, offsets, seed, base, tau):
    """(x + g) / τ with the Gumbel noise g of Philox offsets ``offsets``."""
    return (x + gumbel_from_uniform(tl.rand(seed, base + offsets))) / tau


@triton.jit
def _chunk_log_probs(v, running_max, total):
    """log softmax of ``v`` from its running logsumexp's parts."""
    return (v - _shift(running_max)) - tl.log(total)


@triton.jit
def _wide_row_logsumexps(logits_row, prior_row, prior_stride_c, seed, base, row_offset, tau, C,
                         NOISY: tl.constexpr, PLAIN: tl.constexpr, HAS_PRIOR: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """The running logsumexps' (max, total) over a row of (x + g)/τ (if NOISY), of x (if
    PLAIN) and of the prior logits (if HAS_PRIOR), in one pass over its chunks."""
    noisy_max, noisy_total = float("-inf"), 0.0
    plain_max, plain_total = float("-inf"), 0.0
    prior_max, prior_total = float("-inf"), 0.0
    chunk = tl.arange(0, BLOCK_C).to(tl.int64)
    start = 0
    # A while loop, not range(): see kernels/iwae.py's log_mean_exp_fwd_kernel.
    while start < C:
        cols = start + chunk
        mask = cols < C
        x = tl.load(logits_row + cols, mask=mask, other=0.0).to(tl.float32)
        if NOISY:
            noisy_max, noisy_total = _chunk_logsumexp(noisy_max, noisy_total,
                                                      _chunk_noisy(x, row_offset + cols, seed, base, tau), mask)
        if PLAIN:
            plain_max, plain_total = _chunk_logsumexp(plain_max, plain_total, x, mask)
        if HAS_PRIOR:
            prior = tl.load(prior_row + cols * prior_stride_c, mask=mask, other=0.0).to(tl.float32)
            prior_max, prior_total = _chunk_logsumexp(prior_max, prior_total, prior, mask)
        start += BLOCK_C
    return noisy_max, noisy_total, plain_max, plain_total, prior_max, prior_total


@triton.jit
def categorical_wide_fwd_kernel(
    logits_ptr,  # [R, C]
    prior_ptr,  # broadcast to [R, C] through strides
    seed_ptr,  # [2] int64: seed, base offset
    z_ptr,  # [R, C]
    kl_ptr,  # [R] float32
    C,
    prior_stride0, prior_stride1, prior_stride_c,
    prior_size1,
    tau,
    log_uniform,
    HAS_PRIOR: tl.constexpr,
    HARD: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """categorical_fwd_kernel for one row of any width, in passes over BLOCK_C-column
    chunks: the logsumexps, then the sample (the argmax, for HARD) and the KL, then (HARD)
    the one-hot.  The noise is regenerated in each pass."""
    row = tl.program_id(0).to(tl.int64)
    row_offset = row * C
    logits_row = logits_ptr + row_offset
    prior_row = prior_ptr + (row // prior_size1) * prior_stride0 + (row % prior_size1) * prior_stride1
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1)
    noisy_max, noisy_total, plain_max, plain_total, prior_max, prior_total = _wide_row_logsumexps(
        logits_row, prior_row, prior_stride_c, seed, base, row_offset, tau, C, True, True, HAS_PRIOR, BLOCK_C)

    chunk = tl.arange(0, BLOCK_C).to(tl.int64)
    kl = 0.0
    best = float("-inf")
    best_index = row * 0
    start = 0
    while start < C:
        cols = start + chunk
        mask = cols < C
        x = tl.load(logits_row + cols, mask=mask, other=0.0).to(tl.float32)
        noisy = _chunk_noisy(x, row_offset + cols, seed, base, tau)
        y = tl.exp(noisy - _shift(noisy_max)) / noisy_total
        if HARD:
            # The first maximum of y (torch.argmax's tie rule): a later chunk wins only
            # with a larger value.
            y_masked = tl.where(mask, y, float("-inf"))
            chunk_best = tl.max(y_masked, axis=0)
            chunk_index = tl.argmax(y_masked, axis=0).to(tl.int64) + start
            best_index = tl.where(chunk_best > best, chunk_index, best_index)
            best = tl.maximum(best, chunk_best)
        else:
            tl.store(z_ptr + row_offset + cols, y.to(z_ptr.dtype.element_ty), mask=mask)
        log_p = _chunk_log_probs(x, plain_max, plain_total)
        if HAS_PRIOR:
            prior = tl.load(prior_row + cols * prior_stride_c, mask=mask, other=0.0).to(tl.float32)
            log_ratio = log_p - _chunk_log_probs(prior, prior_max, prior_total)
        else:
            log_ratio = log_p - log_uniform
        p = tl.exp(x - _shift(plain_max)) / plain_total
        kl += tl.sum(tl.where(mask, p * log_ratio, 0.0), axis=0)
        start += BLOCK_C
    tl.store(kl_ptr + row, kl)

    if HARD:
        start = 0
        while start < C:
            cols = start + chunk
            mask = cols < C
            x = tl.load(logits_row + cols, mask=mask, other=0.0).to(tl.float32)
            y = tl.exp(_chunk_noisy(x, row_offset + cols, seed, base, tau) - _shift(noisy_max)) / noisy_total
            # Straight-through, as categorical_fwd_kernel.
            z = (tl.where(cols == best_index, 1.0, 0.0) - y) + y
            tl.store(z_ptr + row_offset + cols, z.to(z_ptr.dtype.element_ty), mask=mask)
            start += BLOCK_C


@triton.jit
def categorical_wide_bwd_kernel(
    logits_ptr,  # [R, C]
    prior_ptr,  # broadcast to [R, C] through strides
    seed_ptr,  # [2] int64: seed, base offset
    grad_z_ptr,  # [R, C]
    grad_kl_ptr,  # [R]
    grad_logits_ptr,  # [R, C]
    grad_prior_ptr,  # [R, C], summed to the prior's shape afterwards
    C,
    prior_stride0, prior_stride1, prior_stride_c,
    prior_size1,
    tau,
    log_uniform,
    HAS_PRIOR: tl.constexpr,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """categorical_bwd_kernel for one row of any width, in three passes over its chunks:
    the logsumexps, the row sums Σ grad_z·y and the KL, then the gradients."""
    row = tl.program_id(0).to(tl.int64)
    row_offset = row * C
    logits_row = logits_ptr + row_offset
    prior_row = prior_ptr + (row // prior_size1) * prior_stride0 + (row % prior_size1) * prior_stride1
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1)
    noisy_max, noisy_total, plain_max, plain_total, prior_max, prior_total = _wide_row_logsumexps(
        logits_row, prior_row, prior_stride_c, seed, base, row_offset, tau, C, HAS_GRAD_Z, HAS_GRAD_KL,
        HAS_PRIOR and HAS_GRAD_KL, BLOCK_C)

    chunk = tl.arange(0, BLOCK_C).to(tl.int64)
    dot = 0.0
    kl = 0.0
    start = 0
    while start < C:
        cols = start + chunk
        mask = cols < C
        x = tl.load(logits_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_GRAD_Z:
            y = tl.exp(_chunk_noisy(x, row_offset + cols, seed, base, tau) - _shift(noisy_max)) / noisy_total
            grad_z = tl.load(grad_z_ptr + row_offset + cols, mask=mask, other=0.0).to(tl.float32)
            dot += tl.sum(tl.where(mask, grad_z * y, 0.0), axis=0)
        if HAS_GRAD_KL:
            log_p = _chunk_log_probs(x, plain_max, plain_total)
            if HAS_PRIOR:
                prior = tl.load(prior_row + cols * prior_stride_c, mask=mask, other=0.0).to(tl.float32)
                log_ratio = log_p - _chunk_log_probs(prior, prior_max, prior_total)
            else:
                log_ratio = log_p - log_uniform
            p = tl.exp(x - _shift(plain_max)) / plain_total
            kl += tl.sum(tl.where(mask, p * log_ratio, 0.0), axis=0)
        start += BLOCK_C

    if HAS_GRAD_KL:
        grad_kl = tl.load(grad_kl_ptr + row).to(tl.float32)
    start = 0
    while start < C:
        cols = start + chunk
        mask = cols < C
        x = tl.load(logits_row + cols, mask=mask, other=0.0).to(tl.float32)
        grad_logits = tl.zeros((BLOCK_C,), dtype=tl.float32)
        if HAS_GRAD_Z:
            y = tl.exp(_chunk_noisy(x, row_offset + cols, seed, base, tau) - _shift(noisy_max)) / noisy_total
            grad_z = tl.load(grad_z_ptr + row_offset + cols, mask=mask, other=0.0).to(tl.float32)
            grad_logits += (y * (grad_z - dot)) / tau
        if HAS_GRAD_KL:
            log_p = _chunk_log_probs(x, plain_max, plain_total)
            p = tl.exp(x - _shift(plain_max)) / plain_total
            if HAS_PRIOR:
                prior = tl.load(prior_row + cols * prior_stride_c, mask=mask, other=0.0).to(tl.float32)
                log_q = _chunk_log_probs(prior, prior_max, prior_total)
                log_ratio = log_p - log_q
            else:
                log_ratio = log_p - log_uniform
            # ∂KL/∂x_j = p_j·((log p_j − log q_j) − KL);  ∂KL/∂u_j = q_j − p_j (u the prior logits).
            grad_logits += grad_kl * (p * (log_ratio - kl))
            if PRIOR_GRAD:
                tl.store(grad_prior_ptr + row_offset + cols,
                         (grad_kl * (tl.exp(log_q) - p)).to(grad_prior_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_logits_ptr + row_offset + cols, grad_logits.to(grad_logits_ptr.dtype.element_ty), mask=mask)
        start += BLOCK_C


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _blocks(rows: int, categories: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for an [R, C] view with C ≤ CHUNK_CATEGORIES: a tile
    of at most TILE_ELEMENTS, at NUM_WARPS."""
    block_c = triton.next_power_of_2(max(categories, 1))
    block_r = max(1, min(TILE_ELEMENTS // block_c, triton.next_power_of_2(max(rows, 1))))
    return block_r, block_c, NUM_WARPS


def _geometry(logits):
    categories = logits.shape[-1]
    rows = logits.numel() // categories if categories else 0
    return rows, categories


def categorical_fwd(logits, prior_logits, seed_offset, tau: float, hard: bool, z, kl):
    """Launch the forward, writing the outputs (allocated by the op, fastvae/ops/discrete.py).
    logits: contiguous, shape [..., C] (1 ≤ C ≤ MAX_CATEGORIES); prior_logits broadcast to
    it or None; seed_offset: int64 [2]; z: logits' shape and dtype; kl: the KL per
    variable, float32 of logits' shape without the last dim."""
    rows, categories = _geometry(logits)
    if rows == 0:
        return
    prior_arg, stride0, stride1, stride_c, size1 = categorical_prior_layout(prior_logits, logits.shape)
    if categories > CHUNK_CATEGORIES:
        categorical_wide_fwd_kernel[(rows,)](
            logits, prior_arg if prior_arg is not None else logits, seed_offset, z, kl,
            categories, stride0, stride1, stride_c, size1, float(tau), -math.log(categories),
            HAS_PRIOR=prior_logits is not None, HARD=bool(hard), BLOCK_C=CHUNK_CATEGORIES, num_warps=NUM_WARPS,
        )
        return
    block_r, block_c, num_warps = _blocks(rows, categories)
    grid = (triton.cdiv(rows, block_r),)
    categorical_fwd_kernel[grid](
        logits, prior_arg if prior_arg is not None else logits, seed_offset, z, kl,
        rows, categories, stride0, stride1, stride_c, size1, float(tau), -math.log(categories),
        HAS_PRIOR=prior_logits is not None, HARD=bool(hard),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps,
    )


def categorical_bwd(grad_z, grad_kl, logits, prior_logits, seed_offset, tau: float, grad_logits, grad_prior):
    """Launch the backward, writing the outputs (allocated by the op, fastvae/ops/discrete.py).
    grad_z: logits' shape or None; grad_kl: logits' shape without the last dim, or None;
    both contiguous.  grad_logits: logits' shape and dtype; grad_prior: the prior's
    gradient per element of logits' shape (in its own dtype), or None when not asked for
    (then grad_kl is given)."""
    rows, categories = _geometry(logits)
    if rows == 0:
        return
    prior_arg, stride0, stride1, stride_c, size1 = categorical_prior_layout(prior_logits, logits.shape)
    # Kernels take a pointer for every argument; an absent one is never read (its
    # constexpr flag is off), so any tensor stands in.
    if categories > CHUNK_CATEGORIES:
        categorical_wide_bwd_kernel[(rows,)](
            logits, prior_arg if prior_arg is not None else logits, seed_offset,
            grad_z if grad_z is not None else logits, grad_kl if grad_kl is not None else logits,
            grad_logits, grad_prior if grad_prior is not None else logits,
            categories, stride0, stride1, stride_c, size1, float(tau), -math.log(categories),
            HAS_PRIOR=prior_logits is not None, HAS_GRAD_Z=grad_z is not None, HAS_GRAD_KL=grad_kl is not None,
            PRIOR_GRAD=grad_prior is not None, BLOCK_C=CHUNK_CATEGORIES, num_warps=NUM_WARPS,
        )
        return
    block_r, block_c, num_warps = _blocks(rows, categories)
    grid = (triton.cdiv(rows, block_r),)
    categorical_bwd_kernel[grid](
        logits, prior_arg if prior_arg is not None else logits, seed_offset,
        grad_z if grad_z is not None else logits, grad_kl if grad_kl is not None else logits,
        grad_logits, grad_prior if grad_prior is not None else logits,
        rows, categories, stride0, stride1, stride_c, size1, float(tau), -math.log(categories),
        HAS_PRIOR=prior_logits is not None, HAS_GRAD_Z=grad_z is not None, HAS_GRAD_KL=grad_kl is not None,
        PRIOR_GRAD=grad_prior is not None,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps,
    )
