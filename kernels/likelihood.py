"""Triton kernels of the reconstruction likelihoods: the Bernoulli, the continuous
Bernoulli and the Gaussian negative log-likelihood, forward and backward, one pass each.

The data is viewed as a contiguous [B, N] matrix (N = every dimension but the batch) and
tiled in [BLOCK_B, BLOCK_N] blocks, as in kernels/latent.py.  The forward reads the
parameters and x once and writes either the per-element terms or, per row and column
block, a partial sum; fastvae/row_sums.py adds them in float64 in a fixed order (no
atomics: bitwise repeatable).  The backward recomputes everything from the inputs and the incoming
gradient, so the forward stores nothing for it.  A broadcast Gaussian logvar (a learned
per-channel [1, C, 1, 1], say) is read through the strides of its broadcast to [B, N]
(:func:`fastvae.kernels.latent.prior_layout`), never expanded.

This is the standard two-pass design, the backward
recomputing from the inputs (forward: read params and x, write [B]; backward: read
params, x and the incoming gradient, write the input gradients).  The alternative for a
loss that ends the graph, computing the gradient in the forward pass when the inputs
require grad (as Liger-Kernel's cross entropy does) and only scaling it by the incoming
per-sample gradient in the backward, moves about the same bytes unless that scaling is
skipped (an incoming gradient of exactly 1), and holds a full-size gradient from the
forward to the backward.  Which design wins awaits a GPU measurement (bench/).
"""
import torch
import triton
import triton.language as tl

from fastvae.row_sums import sum_partials_into

from .latent import load_prior, prior_layout
from .math import expm1, log1p, sigmoid, softplus

# log 2π and log 2, as fastvae.reference.LOG_2PI and math.log(2).
LOG_2PI: tl.constexpr = tl.constexpr(1.8378770664093453)
LOG_2: tl.constexpr = tl.constexpr(0.6931471805599453)
# fastvae.reference.CB_TAYLOR_THRESHOLD: below it |logits| uses the Taylor series of log C.
CB_TAYLOR_THRESHOLD: tl.constexpr = tl.constexpr(0.1)

# Elements per tile, as in kernels/latent.py; tuning per GPU belongs to bench/.
TILE_ELEMENTS = 4096
MAX_BLOCK_N = 1024
# Warps per program: 16, so 8 elements a thread (docs/architecture.md, "Tiles and warps").
# On sm_90a the heaviest (the Gaussian backward with a logvar tensor and all three
# gradients) takes 82 registers, the continuous Bernoulli's 73; no spills.
NUM_WARPS = 16


# --------------------------------------------------------------------------------------
# Continuous Bernoulli normalizer
# --------------------------------------------------------------------------------------


@triton.jit
def cb_log_normalizer(logits):
    """log C(l) = log(l / tanh(l/2)) = log|l| − log(1 − e^(−|l|)) + log(1 + e^(−|l|)), and
    log 2 + l²/12 − 7·l⁴/1440 for |l| < CB_TAYLOR_THRESHOLD (fastvae.reference's
    continuous_bernoulli_log_normalizer)."""
    magnitude = tl.abs(logits)
    small = magnitude < CB_TAYLOR_THRESHOLD
    safe = tl.where(small, 1.0, magnitude)
    exact = tl.log(safe) - tl.log(-expm1(-safe)) + log1p(tl.exp(-safe))
    square = logits * logits
    taylor = LOG_2 + square / 12.0 - 7.0 * square * square / 1440.0
    return tl.where(small, taylor, exact)


@triton.jit
def cb_log_normalizer_grad(logits):
    """d log C / dl = 1/l − 1/sinh(l), with 1/sinh(a) = 2e^(−a) / ((1 − e^(−a))(1 + e^(−a)))
    for a = |l| (odd in l, so the sign of l is put back), and the derivative of the
    Taylor branch, l/6 − 7·l³/360, for |l| < CB_TAYLOR_THRESHOLD."""
    magnitude = tl.abs(logits)
    small = magnitude < CB_TAYLOR_THRESHOLD
    safe = tl.where(small, 1.0, magnitude)
    decay = tl.exp(-safe)
    inverse_sinh = 2.0 * decay / ((-expm1(-safe)) * (1.0 + decay))
    exact = 1.0 / safe - inverse_sinh
    exact = tl.where(logits < 0, -exact, exact)
    taylor = logits / 6.0 - 7.0 * logits * logits * logits / 360.0
    return tl.where(small, taylor, exact)


# --------------------------------------------------------------------------------------
# Bernoulli and continuous Bernoulli
# --------------------------------------------------------------------------------------


@triton.jit
def bernoulli_nll_fwd_kernel(
    logits_ptr,  # [B, N]
    x_ptr,  # [B, N], float or uint8 (0/1)
    nll_ptr,  # [B, N] if PER_ELEMENT else [B, num_col_blocks] row partial sums
    B,
    N,
    num_col_blocks,
    CONTINUOUS: tl.constexpr,
    PER_ELEMENT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    logits = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=mask, other=0).to(tl.float32)
    # −log Bernoulli(x; σ(l)) = softplus(l) − x·l.
    nll = softplus(logits) - x * logits
    if CONTINUOUS:
        nll -= cb_log_normalizer(logits)

    if PER_ELEMENT:
        tl.store(nll_ptr + offsets, nll, mask=mask)
    else:
        row_sum = tl.sum(tl.where(mask, nll, 0.0), axis=1)
        tl.store(nll_ptr + rows * num_col_blocks + pid_n, row_sum, mask=rows < B)


@triton.jit
def bernoulli_nll_bwd_kernel(
    logits_ptr,  # [B, N]
    x_ptr,  # [B, N], float or uint8 (0/1)
    grad_nll_ptr,  # [B, N] if GRAD_PER_ELEMENT else [B]
    grad_logits_ptr,  # [B, N]
    grad_x_ptr,  # [B, N]
    B,
    N,
    CONTINUOUS: tl.constexpr,
    GRAD_PER_ELEMENT: tl.constexpr,
    LOGITS_GRAD: tl.constexpr,
    X_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    logits = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if GRAD_PER_ELEMENT:
        grad_nll = tl.load(grad_nll_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        grad_nll = tl.load(grad_nll_ptr + rows, mask=rows < B, other=0.0).to(tl.float32)[:, None]

    if LOGITS_GRAD:
        x = tl.load(x_ptr + offsets, mask=mask, other=0).to(tl.float32)
        # d/dl (softplus(l) − x·l − log C(l)) = σ(l) − x − d log C/dl.
        d_logits = sigmoid(logits) - x
        if CONTINUOUS:
            d_logits -= cb_log_normalizer_grad(logits)
        tl.store(grad_logits_ptr + offsets, (grad_nll * d_logits).to(grad_logits_ptr.dtype.element_ty), mask=mask)
    if X_GRAD:
        # A soft target's gradient: d/dx = −l (log C does not depend on x).
        tl.store(grad_x_ptr + offsets, (-grad_nll * logits).to(grad_x_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------


@triton.jit
def gaussian_nll_fwd_kernel(
    mean_ptr,  # [B, N]
    x_ptr,  # [B, N]
    logvar_ptr,  # broadcast to [B, N] through strides (if LOGVAR_TENSOR)
    nll_ptr,  # [B, N] if PER_ELEMENT else [B, num_col_blocks] row partial sums
    B,
    N,
    logvar_value,  # the logvar when it is a number (0 when LOGVAR_TENSOR)
    logvar_stride_b, logvar_stride0, logvar_stride1, logvar_stride2,
    inner_size1,
    inner_size2,
    num_col_blocks,
    LOGVAR_TENSOR: tl.constexpr,
    PER_ELEMENT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    mean = tl.load(mean_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    logvar = logvar_value + load_prior(logvar_ptr, rows, cols, mask, logvar_stride_b, logvar_stride0,
                                       logvar_stride1, logvar_stride2, inner_size1, inner_size2, LOGVAR_TENSOR)
    diff = x - mean
    # −log N(x; mean, e^logvar) = ½·(log 2π + logvar + (x − mean)²·e^(−logvar)).
    nll = 0.5 * (LOG_2PI + logvar + diff * diff * tl.exp(-logvar))

    if PER_ELEMENT:
        tl.store(nll_ptr + offsets, nll, mask=mask)
    else:
        row_sum = tl.sum(tl.where(mask, nll, 0.0), axis=1)
        tl.store(nll_ptr + rows * num_col_blocks + pid_n, row_sum, mask=rows < B)


@triton.jit
def gaussian_nll_bwd_kernel(
    mean_ptr,  # [B, N]
    x_ptr,  # [B, N]
    logvar_ptr,  # broadcast to [B, N] through strides (if LOGVAR_TENSOR)
    grad_nll_ptr,  # [B, N] if GRAD_PER_ELEMENT else [B]
    grad_mean_ptr,  # [B, N]
    grad_x_ptr,  # [B, N]
    grad_logvar_ptr,  # [B, N], summed to logvar's shape afterwards
    B,
    N,
    logvar_value,  # the logvar when it is a number (0 when LOGVAR_TENSOR)
    logvar_stride_b, logvar_stride0, logvar_stride1, logvar_stride2,
    inner_size1,
    inner_size2,
    LOGVAR_TENSOR: tl.constexpr,
    GRAD_PER_ELEMENT: tl.constexpr,
    MEAN_GRAD: tl.constexpr,
    X_GRAD: tl.constexpr,
    LOGVAR_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    mean = tl.load(mean_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    logvar = logvar_value + load_prior(logvar_ptr, rows, cols, mask, logvar_stride_b, logvar_stride0,
                                       logvar_stride1, logvar_stride2, inner_size1, inner_size2, LOGVAR_TENSOR)
    if GRAD_PER_ELEMENT:
        grad_nll = tl.load(grad_nll_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        grad_nll = tl.load(grad_nll_ptr + rows, mask=rows < B, other=0.0).to(tl.float32)[:, None]

    diff = x - mean
    scaled = diff * tl.exp(-logvar)  # (x − mean)·e^(−logvar)
    if MEAN_GRAD:
        tl.store(grad_mean_ptr + offsets, (-grad_nll * scaled).to(grad_mean_ptr.dtype.element_ty), mask=mask)
    if X_GRAD:
        tl.store(grad_x_ptr + offsets, (grad_nll * scaled).to(grad_x_ptr.dtype.element_ty), mask=mask)
    if LOGVAR_GRAD:
        d_logvar = grad_nll * 0.5 * (1.0 - diff * scaled)
        tl.store(grad_logvar_ptr + offsets, d_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _blocks(batch: int, features: int) -> tuple[int, int]:
    block_n = min(max(triton.next_power_of_2(max(features, 1)), 16), MAX_BLOCK_N)
    block_b = max(1, min(TILE_ELEMENTS // block_n, triton.next_power_of_2(max(batch, 1))))
    return block_b, block_n


def _layout(tensor):
    """(batch, features, block_b, block_n, grid) of the [B, N] view of ``tensor``."""
    batch = tensor.shape[0]
    features = tensor.numel() // batch if batch else int(torch.Size(tensor.shape[1:]).numel())
    block_b, block_n = _blocks(batch, features)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(features, block_n))
    return batch, features, block_b, block_n, grid


def _nll_partials(nll, per_element: bool, grid):
    """Where the forward kernel writes: the nll output itself per element, else partial
    sums per (row, column block)."""
    if per_element:
        return nll
    return torch.empty((nll.shape[0], grid[1]), dtype=torch.float32, device=nll.device)


def _finish_rows(nll, partials, per_element: bool):
    if not per_element:
        sum_partials_into(nll, partials)


def _or(tensor, fallback):
    # Kernels take a pointer for every argument; an absent one is never read (its
    # constexpr flag is off), so any tensor stands in.
    return tensor if tensor is not None else fallback


def bernoulli_nll_fwd(logits, x, continuous: bool, per_element: bool, nll):
    """Launch the forward, writing the nll (allocated by the op, fastvae/ops/likelihood.py):
    float32, per element (logits' shape) if ``per_element``, else summed per sample, [B].
    logits: contiguous [B, *inner]; x: contiguous, logits' shape, float or uint8 (a bool x
    viewed as uint8)."""
    batch, features, block_b, block_n, grid = _layout(logits)
    if batch == 0 or features == 0:
        if not per_element:
            nll.zero_()
        return
    partials = _nll_partials(nll, per_element, grid)
    bernoulli_nll_fwd_kernel[grid](
        logits, x, partials, batch, features, grid[1],
        CONTINUOUS=continuous, PER_ELEMENT=per_element, BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    _finish_rows(nll, partials, per_element)


def bernoulli_nll_bwd(grad_nll, logits, x, continuous: bool, grad_logits, grad_x):
    """Launch the backward, writing the outputs (allocated by the op): grad_logits and
    grad_x, each in its input's shape and dtype, None when not asked for.  grad_nll:
    contiguous, per element (logits' shape) or per sample [B]; logits, x as the forward's."""
    batch, features, block_b, block_n, grid = _layout(logits)
    if batch == 0 or features == 0 or (grad_logits is None and grad_x is None):
        return
    bernoulli_nll_bwd_kernel[grid](
        logits, x, grad_nll, _or(grad_logits, logits), _or(grad_x, logits), batch, features,
        CONTINUOUS=continuous, GRAD_PER_ELEMENT=grad_nll.shape == logits.shape,
        LOGITS_GRAD=grad_logits is not None, X_GRAD=grad_x is not None, BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )


def gaussian_nll_fwd(mean, x, logvar, logvar_value: float, per_element: bool, nll):
    """Launch the forward, writing the nll (allocated by the op): float32, per element if
    ``per_element``, else summed per sample, [B].  mean, x: contiguous [B, *inner]; logvar:
    a tensor broadcastable to mean's shape (any strides), or None for the number
    ``logvar_value``."""
    batch, features, block_b, block_n, grid = _layout(mean)
    if batch == 0 or features == 0:
        if not per_element:
            nll.zero_()
        return
    partials = _nll_partials(nll, per_element, grid)
    (logvar_arg,), strides, size1, size2 = prior_layout([logvar], mean.shape)
    gaussian_nll_fwd_kernel[grid](
        mean, x, _or(logvar_arg, mean), partials, batch, features,
        0.0 if logvar is not None else float(logvar_value), *strides, size1, size2, grid[1],
        LOGVAR_TENSOR=logvar is not None, PER_ELEMENT=per_element, BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    _finish_rows(nll, partials, per_element)


def gaussian_nll_bwd(grad_nll, mean, x, logvar, logvar_value: float, grad_mean, grad_x, grad_logvar):
    """Launch the backward, writing the outputs (allocated by the op), each None when not
    asked for: grad_mean, grad_x; grad_logvar per element of mean's shape (logvar's dtype
    if full-size, else float32, for the caller to sum to logvar's shape).  grad_nll:
    contiguous, per element or per sample [B]; the rest as the forward's."""
    batch, features, block_b, block_n, grid = _layout(mean)
    if batch == 0 or features == 0 or (grad_mean is None and grad_x is None and grad_logvar is None):
        return
    (logvar_arg,), strides, size1, size2 = prior_layout([logvar], mean.shape)
    gaussian_nll_bwd_kernel[grid](
        mean, x, _or(logvar_arg, mean), grad_nll,
        _or(grad_mean, mean), _or(grad_x, mean), _or(grad_logvar, mean), batch, features,
        0.0 if logvar is not None else float(logvar_value), *strides, size1, size2,
        LOGVAR_TENSOR=logvar is not None, GRAD_PER_ELEMENT=grad_nll.shape == mean.shape,
        MEAN_GRAD=grad_mean is not None, X_GRAD=grad_x is not None, LOGVAR_GRAD=grad_logvar is not None,
        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
