"""Triton kernels of the discretized logistic likelihood (PixelCNN++'s, as NVAE and VDVAE
use it) and of its mixture, forward and backward, one pass each.

The bin mass is exact everywhere, in a stable form (PixelCNN++'s midpoint-density branch for
low-probability bins is an approximation that errs by nats at small scales).  With half = 1/(num_bins − 1),
s = e^(−max(log_scale, −7)), a = s·(x − mean + half), b = s·(x − mean − half) and the bin's
width in units of the scale d = a − b = 2·half·s (computed as such, not as a difference):

    log P = log σ(a)                                  at the lowest level,
            log σ(−b)                                 at the highest,
            log σ(a) + log σ(−b) + log(1 − e^(−d))    elsewhere (= log(σ(a) − σ(b))).

Its derivatives use the same quantities, with no cancellation anywhere:

    ∂log P/∂mean      = s·(σ(b)·[not lowest] − σ(−a)·[not highest])
    ∂log P/∂log_scale = b·σ(b)·[not lowest] − a·σ(−a)·[not highest] − [interior]·d/(e^d − 1)

(the second zero where log_scale < −7, as torch.clamp_min's gradient), since
∂/∂a log σ(a) = σ(−a), ∂/∂b log σ(−b) = −σ(b), ∂/∂d log(1 − e^(−d)) = 1/(e^d − 1), and
∂a/∂mean = ∂b/∂mean = −s, ∂(a, b, d)/∂log_scale = −(a, b, d).  For small d (a scale many
bins wide) e^d − 1 comes from its series, so log(1 − e^(−d)) and d/(e^d − 1) stay exact to
float32 rounding at log_scale = +7 and beyond.

The single logistic views mean, log_scale and x as [B, N] rows (N = every dimension but the
batch; rows may sit any stride apart, e.g. the halves of a ``chunk``), tiled in
[BLOCK_B, BLOCK_N] blocks.  The mixture views params as [B, P, S] and x as [B, C, S]
(S = the flattened spatial size) through a batch, a channel and one spatial stride, so
channels_last decoder outputs are read in place.  Each mixture program takes BLOCK_S pixels
of one batch row and loops over the K components, holding per pixel only running
logsumexps (maximum and rescaled sum) of the logits and of the joint logits + Σ_c log P_c,k:
per component it loads the logit and each channel's mean, log-scale and coefficient and
computes the component's log probability, then writes the pixel's nll (or a partial row
sum).  Its registers do not grow with K, and no [B, C, K, S] temporary exists anywhere.
The backward makes that pass, then a second one over the components that forms the
softmax weights from the logsumexps' parts and writes each component's gradients (so it
reads params twice; holding K components a pixel in registers spilled instead).

The standard two-pass design: the forward reads params and x once and writes the nll; the
backward recomputes everything from params and x and writes grad_params once, in params'
dtype (channels_last when params is); nothing is saved between them beyond the inputs.  The
variant for a loss that ends the graph, computing the gradient already in the forward pass
when params require grad (Liger-Kernel's cross entropy; the cpu backend's choice, see
docs/architecture.md), would save the backward's second read of params and x and its
recomputation, at the cost of holding a params-sized gradient from forward to backward;
whether it wins on a GPU awaits a measurement there (bench/).

Reductions: 'none' gets per-element (per-pixel) terms; the others get per-program partial
row sums, added in float64 in a fixed order (fastvae/row_sums.py; no atomics: bitwise
repeatable).
"""
import torch
import triton
import triton.language as tl

from fastvae.layout import mixture_layout, row_stride, spatial_stride  # noqa: F401  (re-exported)
from fastvae.row_sums import sum_partials_into

from .math import log1p, tanh

# fastvae.reference.LOG_SCALE_MIN
LOG_SCALE_MIN: tl.constexpr = tl.constexpr(-7.0)
# Below this bin width (in units of the scale), e^d − 1 comes from its series: the terms up
# to d^8/8! leave a relative error under 1e-8 at d = 0.5.
SERIES_MAX_WIDTH: tl.constexpr = tl.constexpr(0.5)

# Elements per tile.  Tuning per GPU belongs to bench/.
TILE_ELEMENTS = 4096
MAX_BLOCK_N = 1024
# Warps per program of the [BLOCK_B, BLOCK_N] kernels: 16, so 8 elements a thread
# (docs/architecture.md, "Tiles and warps").  On sm_90a the forward takes 64 registers and
# the backward 106, no spills; at the default 4 warps (32 elements a thread) every
# full-tile forward spilled (up to 752 B).
NUM_WARPS = 16
# Pixels per mixture program, which loops over the K components (see _mixture_blocks).
MIXTURE_MAX_BLOCK_S = 1024


# --------------------------------------------------------------------------------------
# Per-element math
# --------------------------------------------------------------------------------------


@triton.jit
def load_level(ptr, mask, level_scale, X_IS_LEVEL: tl.constexpr):
    """(level, value) of x: a uint8 x is the level index; a float x in [−1, 1] is snapped to
    the nearest level.  value = −1 + 2·level/(num_bins − 1), and NaN for a NaN x or a level
    index past the grid (as fastvae.reference.data_values)."""
    # 2·level_scale = num_bins − 1, the top level (as a float: an int 1 would be a constexpr).
    top = 2.0 * level_scale
    if X_IS_LEVEL:
        level = tl.load(ptr, mask=mask, other=0).to(tl.int32)
        # (2·level − top) is an exact integer: one rounding, in the division.
        value = (2.0 * level.to(tl.float32) - top) / top
        value = tl.where(level.to(tl.float32) <= top, value, float("nan"))
    else:
        x = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
        is_number = x == x
        scaled = (tl.where(is_number, x, 0.0) + 1.0) * level_scale
        snapped = tl.minimum(tl.maximum(tl.floor(scaled + 0.5), 0.0), top)
        level = snapped.to(tl.int32)
        value = tl.where(is_number, (2.0 * snapped - top) / top, float("nan"))
    return level, value


@triton.jit
def _bin_coordinates(mean, log_scale, value, half):
    """(a, b, d): the bin's edges x ± half and its width in units of the scale."""
    clamped = tl.where(log_scale < LOG_SCALE_MIN, LOG_SCALE_MIN, log_scale)  # keeps NaN
    inv_scale = tl.exp(-clamped)
    centered = value - mean
    return inv_scale * (centered + half), inv_scale * (centered - half), inv_scale * (2.0 * half)


@triton.jit
def _width_terms(d):
    """(log(1 − e^(−d)), d / (e^d − 1)) for d >= 0, relatively exact for tiny d (series)."""
    # e^d − 1 = d·q with q = 1 + d/2! + d²/3! + ... + d^7/8!.
    q = 1.0 + d * (0.5 + d * (1.0 / 6.0 + d * (1.0 / 24.0 + d * (1.0 / 120.0 + d * (
        1.0 / 720.0 + d * (1.0 / 5040.0 + d * (1.0 / 40320.0)))))))
    small = d < SERIES_MAX_WIDTH
    e = tl.exp(-tl.where(small, 1.0, d))
    log_mass = tl.where(small, tl.log(d) + tl.log(q) - d, tl.log(1.0 - e))
    ratio = tl.where(small, 1.0 / q, d * e / (1.0 - e))
    return log_mass, ratio


@triton.jit
def discretized_logistic_log_prob(mean, log_scale, value, level, top_level, half):
    """log P(x) of the discretized logistic (float32 in, float32 out, elementwise)."""
    a, b, d = _bin_coordinates(mean, log_scale, value, half)
    not_lowest = level > 0
    not_highest = level < top_level
    # log σ(a) = min(a, 0) − log1p(e^(−|a|)); log σ(−b) likewise.
    log_sig_a = tl.minimum(a, 0.0) - log1p(tl.exp(-tl.abs(a)))
    log_sig_neg_b = tl.minimum(-b, 0.0) - log1p(tl.exp(-tl.abs(b)))
    log_mass, _ = _width_terms(d)
    return (tl.where(not_highest, log_sig_a, 0.0) + tl.where(not_lowest, log_sig_neg_b, 0.0)
            + tl.where(not_highest & not_lowest, log_mass, 0.0))


@triton.jit
def discretized_logistic_log_prob_grads(mean, log_scale, value, level, top_level, half):
    """(log P, ∂log P/∂mean, ∂log P/∂log_scale), elementwise (see the module docstring)."""
    a, b, d = _bin_coordinates(mean, log_scale, value, half)
    not_lowest = level > 0
    not_highest = level < top_level
    interior = not_highest & not_lowest
    exp_a = tl.exp(-tl.abs(a))
    exp_b = tl.exp(-tl.abs(b))
    log_sig_a = tl.minimum(a, 0.0) - log1p(exp_a)
    log_sig_neg_b = tl.minimum(-b, 0.0) - log1p(exp_b)
    log_mass, ratio = _width_terms(d)
    log_prob = (tl.where(not_highest, log_sig_a, 0.0) + tl.where(not_lowest, log_sig_neg_b, 0.0)
                + tl.where(interior, log_mass, 0.0))
    # σ(−a) and σ(b) from the same exponentials.
    sig_neg_a = tl.where(not_highest, tl.where(a >= 0, exp_a, 1.0) / (1.0 + exp_a), 0.0)
    sig_b = tl.where(not_lowest, tl.where(b >= 0, 1.0, exp_b) / (1.0 + exp_b), 0.0)
    inv_scale = d / (2.0 * half)
    d_mean = inv_scale * (sig_b - sig_neg_a)
    d_log_scale = b * sig_b - a * sig_neg_a - tl.where(interior, ratio, 0.0)
    d_log_scale = tl.where(log_scale < LOG_SCALE_MIN, 0.0, d_log_scale)
    return log_prob, d_mean, d_log_scale


# --------------------------------------------------------------------------------------
# The discretized logistic: [B, N] rows
# --------------------------------------------------------------------------------------


@triton.jit
def discretized_logistic_fwd_kernel(
    mean_ptr,  # [B, N], rows mean_stride_b apart
    log_scale_ptr,  # [B, N], rows log_scale_stride_b apart
    x_ptr,  # [B, N], rows x_stride_b apart: float data in [-1, 1] or uint8 levels
    nll_ptr,  # [B, N] float32 if PER_ELEMENT else [B, num_col_blocks] row partial sums
    B,
    N,
    mean_stride_b,
    log_scale_stride_b,
    x_stride_b,
    num_col_blocks,
    top_level,
    level_scale,
    half,
    X_IS_LEVEL: tl.constexpr,
    PER_ELEMENT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pid_b = pid // num_col_blocks
    pid_n = pid % num_col_blocks
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)

    mean = tl.load(mean_ptr + rows[:, None] * mean_stride_b + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    log_scale = tl.load(log_scale_ptr + rows[:, None] * log_scale_stride_b + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
    level, value = load_level(x_ptr + rows[:, None] * x_stride_b + cols[None, :], mask, level_scale, X_IS_LEVEL)
    nll = -discretized_logistic_log_prob(mean, log_scale, value, level, top_level, half)
    if PER_ELEMENT:
        tl.store(nll_ptr + rows[:, None] * N + cols[None, :], nll, mask=mask)
    else:
        row_sum = tl.sum(tl.where(mask, nll, 0.0), axis=1)
        tl.store(nll_ptr + rows * num_col_blocks + pid_n, row_sum, mask=rows < B)


@triton.jit
def discretized_logistic_bwd_kernel(
    mean_ptr,  # [B, N], rows mean_stride_b apart
    log_scale_ptr,  # [B, N], rows log_scale_stride_b apart
    x_ptr,  # [B, N], rows x_stride_b apart: float data in [-1, 1] or uint8 levels
    grad_nll_ptr,  # [B, N] if GRAD_PER_ELEMENT else [B]
    grad_mean_ptr,  # [B, N] contiguous
    grad_log_scale_ptr,  # [B, N] contiguous
    B,
    N,
    mean_stride_b,
    log_scale_stride_b,
    x_stride_b,
    num_col_blocks,
    top_level,
    level_scale,
    half,
    X_IS_LEVEL: tl.constexpr,
    GRAD_PER_ELEMENT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pid_b = pid // num_col_blocks
    pid_n = pid % num_col_blocks
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    mean = tl.load(mean_ptr + rows[:, None] * mean_stride_b + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    log_scale = tl.load(log_scale_ptr + rows[:, None] * log_scale_stride_b + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
    level, value = load_level(x_ptr + rows[:, None] * x_stride_b + cols[None, :], mask, level_scale, X_IS_LEVEL)
    if GRAD_PER_ELEMENT:
        grad_nll = tl.load(grad_nll_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        grad_nll = tl.load(grad_nll_ptr + rows, mask=rows < B, other=0.0).to(tl.float32)[:, None]
    _, d_mean, d_log_scale = discretized_logistic_log_prob_grads(mean, log_scale, value, level, top_level, half)
    # nll = −log P.
    tl.store(grad_mean_ptr + offsets, (-grad_nll * d_mean).to(grad_mean_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_log_scale_ptr + offsets, (-grad_nll * d_log_scale).to(grad_log_scale_ptr.dtype.element_ty),
             mask=mask)


# --------------------------------------------------------------------------------------
# The mixture: params [B, P, S], x [B, C, S]
# --------------------------------------------------------------------------------------


@triton.jit
def _load_slot(row_ptr, slot, cols, stride_p, mask):
    """Parameter slot ``slot`` at the pixels ``cols`` (already multiplied by the spatial
    stride), as float32."""
    return tl.load(row_ptr + slot * stride_p + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_slot(row_ptr, slot, cols, stride_p, values, mask):
    tl.store(row_ptr + slot * stride_p + cols, values.to(row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _component_params(params_row, k, K, cols, stride_p, mask, value_r, value_g, C: tl.constexpr):
    """Component k's (logit, means, log-scales, coefficients) at the pixels, the means
    coupled to the data: mean_G += α·x_R, mean_B += β·x_R + γ·x_G (C = 3; the G and B
    entries are the R ones for C = 1, unused).  Channel c's block of 3K slots starts at
    K + 3K·c: means, log-scales, coefficients."""
    logit = _load_slot(params_row, k, cols, stride_p, mask)
    mean_r = _load_slot(params_row, K + k, cols, stride_p, mask)
    log_scale_r = _load_slot(params_row, 2 * K + k, cols, stride_p, mask)
    if C == 3:
        alpha = tanh(_load_slot(params_row, 3 * K + k, cols, stride_p, mask))
        mean_g = _load_slot(params_row, 4 * K + k, cols, stride_p, mask) + alpha * value_r
        log_scale_g = _load_slot(params_row, 5 * K + k, cols, stride_p, mask)
        beta = tanh(_load_slot(params_row, 6 * K + k, cols, stride_p, mask))
        gamma = tanh(_load_slot(params_row, 9 * K + k, cols, stride_p, mask))
        mean_b = (_load_slot(params_row, 7 * K + k, cols, stride_p, mask) + beta * value_r + gamma * value_g)
        log_scale_b = _load_slot(params_row, 8 * K + k, cols, stride_p, mask)
    else:
        alpha, mean_g, log_scale_g = mean_r, mean_r, log_scale_r
        beta, gamma, mean_b, log_scale_b = mean_r, mean_r, mean_r, log_scale_r
    return logit, mean_r, log_scale_r, alpha, mean_g, log_scale_g, beta, gamma, mean_b, log_scale_b


@triton.jit
def _shift(running_max):
    """The logsumexp's shift: the maximum, or 0 while every term is −inf (as torch's
    logsumexp gives −inf there)."""
    return tl.where(running_max == float("-inf"), 0.0, running_max)


@triton.jit
def _online_logsumexp(running_max, total, v):
    """One step of a running logsumexp = shift + log(total) (total relative to
    _shift(running_max)): adds e^v."""
    new_max = tl.maximum(running_max, v)
    new_shift = _shift(new_max)
    # Nothing to rescale while every term so far is −inf (total = 0; the e^(0 − new_shift)
    # could overflow).
    rescale = tl.where(running_max == float("-inf"), 0.0, tl.exp(running_max - new_shift))
    total = total * rescale + tl.exp(v - new_shift)
    return new_max, total


@triton.jit
def _mixture_logsumexps(params_row, cols, stride_p, s_mask, K, value_r, level_r, value_g, level_g,
                        value_b, level_b, top_level, half, C: tl.constexpr, BLOCK_S: tl.constexpr):
    """(shift, Σ) of the logsumexp over the K components of the logits and of the joint
    logits + Σ_c log P_c,k, per pixel, in one pass over the components (running maxima)."""
    logit_max = tl.full((BLOCK_S,), float("-inf"), tl.float32)
    logit_total = tl.zeros((BLOCK_S,), dtype=tl.float32)
    joint_max = tl.full((BLOCK_S,), float("-inf"), tl.float32)
    joint_total = tl.zeros((BLOCK_S,), dtype=tl.float32)
    # A while loop, not range(): the interpreter cannot take a runtime range() bound under
    # NumPy 2 (kernels/iwae.py's log_mean_exp_fwd_kernel).
    k = 0
    while k < K:
        logit, mean_r, log_scale_r, _, mean_g, log_scale_g, _, _, mean_b, log_scale_b = _component_params(
            params_row, k, K, cols, stride_p, s_mask, value_r, value_g, C)
        log_prob = discretized_logistic_log_prob(mean_r, log_scale_r, value_r, level_r, top_level, half)
        if C == 3:
            log_prob += discretized_logistic_log_prob(mean_g, log_scale_g, value_g, level_g, top_level, half)
            log_prob += discretized_logistic_log_prob(mean_b, log_scale_b, value_b, level_b, top_level, half)
        logit_max, logit_total = _online_logsumexp(logit_max, logit_total, logit)
        joint_max, joint_total = _online_logsumexp(joint_max, joint_total, logit + log_prob)
        k += 1
    return _shift(logit_max), logit_total, _shift(joint_max), joint_total


@triton.jit
def _load_pixel_levels(x_pixels, x_stride_c, s_mask, level_scale, X_IS_LEVEL: tl.constexpr, C: tl.constexpr):
    level_r, value_r = load_level(x_pixels, s_mask, level_scale, X_IS_LEVEL)
    if C == 3:
        level_g, value_g = load_level(x_pixels + x_stride_c, s_mask, level_scale, X_IS_LEVEL)
        level_b, value_b = load_level(x_pixels + 2 * x_stride_c, s_mask, level_scale, X_IS_LEVEL)
    else:
        level_g, value_g, level_b, value_b = level_r, value_r, level_r, value_r
    return level_r, value_r, level_g, value_g, level_b, value_b


@triton.jit
def logistic_mixture_fwd_kernel(
    params_ptr,  # [B, P, S] through strides; P = 3K (C = 1) or 10K (C = 3)
    x_ptr,  # [B, C, S] through strides: float data in [-1, 1] or uint8 levels
    nll_ptr,  # [B, S] float32 if PER_PIXEL else [B, num_s_blocks] row partial sums
    S,
    K,
    num_s_blocks,
    params_stride_b,
    params_stride_p,
    params_stride_s,
    x_stride_b,
    x_stride_c,
    x_stride_s,
    top_level,
    level_scale,
    half,
    C: tl.constexpr,
    X_IS_LEVEL: tl.constexpr,
    PER_PIXEL: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_s_blocks
    s_block = pid % num_s_blocks
    pixels = s_block * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    s_mask = pixels < S
    params_row = params_ptr + row * params_stride_b
    cols = pixels * params_stride_s
    x_pixels = x_ptr + row * x_stride_b + pixels * x_stride_s

    level_r, value_r, level_g, value_g, level_b, value_b = _load_pixel_levels(
        x_pixels, x_stride_c, s_mask, level_scale, X_IS_LEVEL, C)
    logit_shift, logit_total, joint_shift, joint_total = _mixture_logsumexps(
        params_row, cols, params_stride_p, s_mask, K, value_r, level_r, value_g, level_g, value_b, level_b,
        top_level, half, C, BLOCK_S)
    # −log p(x) = logsumexp_k(logits) − logsumexp_k(logits + Σ_c log P_c,k).
    nll = (logit_shift + tl.log(logit_total)) - (joint_shift + tl.log(joint_total))
    if PER_PIXEL:
        tl.store(nll_ptr + row * S + pixels, nll, mask=s_mask)
    else:
        tl.store(nll_ptr + pid, tl.sum(tl.where(s_mask, nll, 0.0), axis=0))


@triton.jit
def logistic_mixture_bwd_kernel(
    params_ptr,  # [B, P, S] through strides; P = 3K (C = 1) or 10K (C = 3)
    x_ptr,  # [B, C, S] through strides: float data in [-1, 1] or uint8 levels
    grad_nll_ptr,  # [B, S] contiguous if GRAD_PER_PIXEL else [B]
    grad_params_ptr,  # [B, P, S] through strides, params' dtype
    S,
    K,
    num_s_blocks,
    params_stride_b,
    params_stride_p,
    params_stride_s,
    x_stride_b,
    x_stride_c,
    x_stride_s,
    grad_stride_b,
    grad_stride_p,
    grad_stride_s,
    top_level,
    level_scale,
    half,
    C: tl.constexpr,
    X_IS_LEVEL: tl.constexpr,
    GRAD_PER_PIXEL: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_s_blocks
    s_block = pid % num_s_blocks
    pixels = s_block * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    s_mask = pixels < S
    params_row = params_ptr + row * params_stride_b
    cols = pixels * params_stride_s
    grad_row = grad_params_ptr + row * grad_stride_b
    grad_cols = pixels * grad_stride_s
    x_pixels = x_ptr + row * x_stride_b + pixels * x_stride_s

    if GRAD_PER_PIXEL:
        grad_nll = tl.load(grad_nll_ptr + row * S + pixels, mask=s_mask, other=0.0).to(tl.float32)
    else:
        grad_nll = tl.load(grad_nll_ptr + row).to(tl.float32)

    level_r, value_r, level_g, value_g, level_b, value_b = _load_pixel_levels(
        x_pixels, x_stride_c, s_mask, level_scale, X_IS_LEVEL, C)
    # First pass: the two logsumexps' parts.  Second pass, per component: the softmax
    # weights e^((v − shift) − log Σ) (the mixture weights π and the responsibilities r of
    # the joint) and the gradients.  nll = logsumexp(logits) − logsumexp(logits + Σ_c log P_c),
    # so ∂nll/∂logit_k = π_k − r_k and ∂nll/∂log P_c,k = −r_k.
    logit_shift, logit_total, joint_shift, joint_total = _mixture_logsumexps(
        params_row, cols, params_stride_p, s_mask, K, value_r, level_r, value_g, level_g, value_b, level_b,
        top_level, half, C, BLOCK_S)
    logit_log_total = tl.log(logit_total)
    joint_log_total = tl.log(joint_total)
    k = 0
    while k < K:
        logit, mean_r, log_scale_r, alpha, mean_g, log_scale_g, beta, gamma, mean_b, log_scale_b = (
            _component_params(params_row, k, K, cols, params_stride_p, s_mask, value_r, value_g, C))
        log_prob, d_mean_r, d_log_scale_r = discretized_logistic_log_prob_grads(
            mean_r, log_scale_r, value_r, level_r, top_level, half)
        if C == 3:
            log_prob_g, d_mean_g, d_log_scale_g = discretized_logistic_log_prob_grads(
                mean_g, log_scale_g, value_g, level_g, top_level, half)
            log_prob_b, d_mean_b, d_log_scale_b = discretized_logistic_log_prob_grads(
                mean_b, log_scale_b, value_b, level_b, top_level, half)
            # In _mixture_logsumexps' order, so that the joint rounds as it did there.
            log_prob += log_prob_g
            log_prob += log_prob_b
        pi = tl.exp((logit - logit_shift) - logit_log_total)
        responsibility = tl.exp(((logit + log_prob) - joint_shift) - joint_log_total)
        _store_slot(grad_row, k, grad_cols, grad_stride_p, grad_nll * (pi - responsibility), s_mask)
        weight = -grad_nll * responsibility
        _store_slot(grad_row, K + k, grad_cols, grad_stride_p, weight * d_mean_r, s_mask)
        _store_slot(grad_row, 2 * K + k, grad_cols, grad_stride_p, weight * d_log_scale_r, s_mask)
        if C == 3:
            grad_mean_g = weight * d_mean_g
            grad_mean_b = weight * d_mean_b
            # Through the coupling (coupled mean = raw mean + coefficient·x) and tanh' = 1 − tanh².
            _store_slot(grad_row, 3 * K + k, grad_cols, grad_stride_p, grad_mean_g * value_r * (1.0 - alpha * alpha),
                        s_mask)
            _store_slot(grad_row, 4 * K + k, grad_cols, grad_stride_p, grad_mean_g, s_mask)
            _store_slot(grad_row, 5 * K + k, grad_cols, grad_stride_p, weight * d_log_scale_g, s_mask)
            _store_slot(grad_row, 6 * K + k, grad_cols, grad_stride_p, grad_mean_b * value_r * (1.0 - beta * beta),
                        s_mask)
            _store_slot(grad_row, 7 * K + k, grad_cols, grad_stride_p, grad_mean_b, s_mask)
            _store_slot(grad_row, 8 * K + k, grad_cols, grad_stride_p, weight * d_log_scale_b, s_mask)
            _store_slot(grad_row, 9 * K + k, grad_cols, grad_stride_p, grad_mean_b * value_g * (1.0 - gamma * gamma),
                        s_mask)
        k += 1


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _grid_constants(num_bins: int) -> tuple[int, float, float]:
    """(top level, level scale, half): level = round((x + 1)·scale), half = half a bin."""
    return num_bins - 1, 0.5 * (num_bins - 1), 1.0 / (num_bins - 1)


def _row_blocks(batch: int, features: int) -> tuple[int, int]:
    block_n = min(max(triton.next_power_of_2(max(features, 1)), 16), MAX_BLOCK_N)
    block_b = max(1, min(TILE_ELEMENTS // block_n, triton.next_power_of_2(max(batch, 1))))
    return block_b, block_n


def _rows(tensor):
    stride = row_stride(tensor)
    return (tensor, stride) if stride is not None else (tensor.contiguous(), None)


def discretized_logistic_fwd(mean, log_scale, x, num_bins: int, per_element: bool, nll):
    """Launch the forward, writing the nll (allocated by the op, fastvae/ops/logistic.py):
    per element (float32, contiguous, x's shape) or per sample (float32 [B]).  mean,
    log_scale, x: shape [B, *inner], rows any stride apart (anything else is copied
    contiguous first); x float or uint8."""
    batch = mean.shape[0]
    features = mean[0].numel() if batch else int(torch.Size(mean.shape[1:]).numel())
    if batch == 0 or features == 0:
        if not per_element:
            nll.zero_()
        return
    block_b, block_n = _row_blocks(batch, features)
    num_row_blocks, num_col_blocks = triton.cdiv(batch, block_b), triton.cdiv(features, block_n)
    partials = nll
    if not per_element:
        partials = torch.empty((batch, num_col_blocks), dtype=torch.float32, device=mean.device)
    (mean, mean_stride), (log_scale, log_scale_stride), (x, x_stride) = _rows(mean), _rows(log_scale), _rows(x)
    top_level, level_scale, half = _grid_constants(num_bins)
    discretized_logistic_fwd_kernel[(num_row_blocks * num_col_blocks,)](
        mean, log_scale, x, partials, batch, features,
        mean_stride if mean_stride is not None else features,
        log_scale_stride if log_scale_stride is not None else features,
        x_stride if x_stride is not None else features,
        num_col_blocks, top_level, level_scale, half,
        X_IS_LEVEL=x.dtype == torch.uint8, PER_ELEMENT=per_element, BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    if not per_element:
        sum_partials_into(nll, partials)


def discretized_logistic_bwd(grad_nll, mean, log_scale, x, num_bins: int, grad_mean, grad_log_scale):
    """Launch the backward, writing grad_mean and grad_log_scale (allocated by the op:
    contiguous, in mean's and log_scale's dtypes).  grad_nll: per element (contiguous,
    mean's shape) or per sample [B]."""
    batch = mean.shape[0]
    features = mean[0].numel() if batch else int(torch.Size(mean.shape[1:]).numel())
    if batch == 0 or features == 0:
        return
    block_b, block_n = _row_blocks(batch, features)
    num_row_blocks, num_col_blocks = triton.cdiv(batch, block_b), triton.cdiv(features, block_n)
    (mean, mean_stride), (log_scale, log_scale_stride), (x, x_stride) = _rows(mean), _rows(log_scale), _rows(x)
    top_level, level_scale, half = _grid_constants(num_bins)
    discretized_logistic_bwd_kernel[(num_row_blocks * num_col_blocks,)](
        mean, log_scale, x, grad_nll, grad_mean, grad_log_scale, batch, features,
        mean_stride if mean_stride is not None else features,
        log_scale_stride if log_scale_stride is not None else features,
        x_stride if x_stride is not None else features,
        num_col_blocks, top_level, level_scale, half,
        X_IS_LEVEL=x.dtype == torch.uint8, GRAD_PER_ELEMENT=grad_nll.dim() > 1,
        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )


def _mixture_blocks(pixels: int) -> tuple[int, int]:
    """(BLOCK_S, num_warps) of a mixture program.  It holds per-pixel vectors only (the
    components are a loop with running logsumexps), so its registers do not grow with K:
    on sm_90a, 1024 pixels at 16 warps (2 a thread) take 74 registers (C = 3 forward) and
    104 (C = 3 backward; 190 at 8 warps), no spills, for any K.  The same blocks run under
    the interpreter, whose cost is per program and per loop step."""
    block_s = min(MIXTURE_MAX_BLOCK_S, max(16, triton.next_power_of_2(pixels)))
    return block_s, 16


def mixture_forward_writes_grad() -> bool:
    """Whether :func:`logistic_mixture_fwd` can also write ∂nll/∂params, so that the
    backward only scales it.  Not here: :func:`logistic_mixture_bwd` recomputes it, which
    keeps the forward at one read of params and costs no params-sized write and read back
    (whether a GPU would gain from the other way awaits a measurement on one)."""
    return False


def logistic_mixture_fwd(params, x, num_mixtures: int, num_bins: int, per_pixel: bool, nll, grad_params):
    """Launch the mixture's forward, writing the nll (allocated by the op,
    fastvae/ops/logistic.py): per pixel (float32, contiguous [B, *spatial]) or per sample
    (float32 [B]).  params [B, P, *spatial], x [B, C, *spatial] (float or uint8), each read
    through strides where :func:`mixture_layout` allows; grad_params: None (see
    :func:`mixture_forward_writes_grad`)."""
    if grad_params is not None:
        raise ValueError("logistic_mixture_fwd (triton): computes no gradient in the forward")
    batch, channels = x.shape[0], x.shape[1]
    pixels = int(torch.Size(x.shape[2:]).numel())
    if batch == 0 or pixels == 0:
        if not per_pixel:
            nll.zero_()
        return
    params, x = mixture_layout(params), mixture_layout(x)
    block_s, num_warps = _mixture_blocks(pixels)
    num_s_blocks = triton.cdiv(pixels, block_s)
    partials = nll
    if not per_pixel:
        partials = torch.empty((batch, num_s_blocks), dtype=torch.float32, device=params.device)
    top_level, level_scale, half = _grid_constants(num_bins)
    logistic_mixture_fwd_kernel[(batch * num_s_blocks,)](
        params, x, partials, pixels, num_mixtures, num_s_blocks,
        params.stride(0), params.stride(1), spatial_stride(params),
        x.stride(0), x.stride(1), spatial_stride(x),
        top_level, level_scale, half,
        C=channels, X_IS_LEVEL=x.dtype == torch.uint8, PER_PIXEL=per_pixel, BLOCK_S=block_s, num_warps=num_warps,
    )
    if not per_pixel:
        sum_partials_into(nll, partials)


def logistic_mixture_bwd(grad_nll, params, x, num_mixtures: int, num_bins: int, grad_params):
    """Launch the mixture's backward, writing grad_params (allocated by the op: params'
    shape and dtype, any layout whose spatial dimensions form one strided run, contiguous
    or channels_last).  grad_nll: per pixel (contiguous [B, *spatial]) or per sample [B]."""
    if spatial_stride(grad_params) is None:
        raise ValueError("logistic_mixture_bwd: grad_params' spatial dimensions must form one strided run")
    batch, channels = x.shape[0], x.shape[1]
    pixels = int(torch.Size(x.shape[2:]).numel())
    if batch == 0 or pixels == 0:
        return
    params, x = mixture_layout(params), mixture_layout(x)
    block_s, num_warps = _mixture_blocks(pixels)
    num_s_blocks = triton.cdiv(pixels, block_s)
    top_level, level_scale, half = _grid_constants(num_bins)
    logistic_mixture_bwd_kernel[(batch * num_s_blocks,)](
        params, x, grad_nll, grad_params, pixels, num_mixtures, num_s_blocks,
        params.stride(0), params.stride(1), spatial_stride(params),
        x.stride(0), x.stride(1), spatial_stride(x),
        grad_params.stride(0), grad_params.stride(1), spatial_stride(grad_params),
        top_level, level_scale, half,
        C=channels, X_IS_LEVEL=x.dtype == torch.uint8, GRAD_PER_PIXEL=grad_nll.dim() > 1,
        BLOCK_S=block_s, num_warps=num_warps,
    )
