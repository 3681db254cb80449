"""Triton kernels of the location-scale latent family (Laplace, logistic, Cauchy):
reparameterized sampling fused with log q and the KL, forward and backward, one pass each.

The same per-element math as csrc/include/fastvae/location_scale.h (and, in PyTorch,
fastvae/reference_location_scale.py); docs/architecture.md ("Location-scale latents")
says why each formula has its form.  The latent is viewed as a contiguous [B, N] matrix
tiled as in kernels/latent.py, priors read through the strides of their broadcast.  The
noise is never stored: the backward regenerates it from the call's (seed, base offset)
where it needs it (for ∂z, and for the logistic's KL, which depends on z).  Row sums of
log q and the KL are one partial per (row, block of columns), added in float64 by
fastvae.row_sums.
"""
import torch
import triton
import triton.language as tl

from fastvae.layout import prior_layout
from fastvae.row_sums import sum_partials_into

from .latent import NUM_WARPS, PRIOR_GRAD_TILE_ELEMENTS, TILE_ELEMENTS, _blocks, _or, load_prior
from .math import expm1, log1p, tanh

# fastvae/ops/location_scale.py, FAMILY_CODES.
LAPLACE = tl.constexpr(0)
LOGISTIC = tl.constexpr(1)
CAUCHY = tl.constexpr(2)
LN2 = tl.constexpr(0.6931471805599453)
LOG_PI = tl.constexpr(1.1447298858494002)
PI = tl.constexpr(3.141592653589793)
# 2^-33: keeps the tail probability above 0 and at most ½.
TAIL_PROBABILITY_OFFSET = tl.constexpr(1.16415321826934814453125e-10)
CAUCHY_KL_LOG_SPACE = tl.constexpr(15.0)
EXPM1_SERIES_BOUND = tl.constexpr(0.0625)


@triton.jit
def location_scale_noise(seed, offsets, FAMILY: tl.constexpr):
    """x of the family: sign from word 1's uniform, |x| the upper-tail quantile at
    p = ½·u0 + 2^-33 (word 0's uniform u0)."""
    word0, word1, _, _ = tl.randint4x(seed, offsets)
    u0 = tl.uint_to_uniform_float(word0)
    u1 = tl.uint_to_uniform_float(word1)
    p = 0.5 * u0 + TAIL_PROBABILITY_OFFSET
    if FAMILY == LAPLACE:
        magnitude = -tl.log(2.0 * p)
    elif FAMILY == LOGISTIC:
        magnitude = log1p(-p) - tl.log(p)
    else:
        angle = PI * p
        magnitude = tl.cos(angle) / tl.sin(angle)
    return tl.where(u1 < 0.5, -magnitude, magnitude)


@triton.jit
def standard_log_density(x, FAMILY: tl.constexpr):
    magnitude = tl.abs(x)
    if FAMILY == LAPLACE:
        density = -LN2 - magnitude
    elif FAMILY == LOGISTIC:
        density = -magnitude - 2.0 * log1p(tl.exp(-magnitude))
    else:
        large = magnitude > 1.0
        large_magnitude = tl.where(large, magnitude, 1.0)
        small_magnitude = tl.where(large, 0.0, magnitude)
        tail = 2.0 * tl.log(large_magnitude) + log1p(1.0 / (large_magnitude * large_magnitude))
        density = -LOG_PI - tl.where(large, tail, log1p(small_magnitude * small_magnitude))
    return density


@triton.jit
def expm1_minus_identity(x):
    """e^x − 1 − x: its Taylor series to x⁹/9! below |x| = 1/16, expm1(x) − x above."""
    near = tl.abs(x) < EXPM1_SERIES_BOUND
    y = tl.where(near, x, 0.0)
    series = 1.0 / 362880.0
    series = series * y + 1.0 / 40320.0
    series = series * y + 1.0 / 5040.0
    series = series * y + 1.0 / 720.0
    series = series * y + 1.0 / 120.0
    series = series * y + 1.0 / 24.0
    series = series * y + 1.0 / 6.0
    series = series * y + 0.5
    return tl.where(near, series * y * y, expm1(x) - x)


@triton.jit
def _scaled_distances(loc, log_scale, prior_loc, prior_log_scale):
    """(Δ, |Δ|·e^(−l1), |Δ|·e^(−l2)), each product 0 at Δ = 0 even where e^(−l) overflows."""
    difference = loc - prior_loc
    distance = tl.abs(difference)
    at_prior_loc = distance == 0.0
    q_scaled = tl.where(at_prior_loc, 0.0, distance * tl.exp(-log_scale))
    p_scaled = tl.where(at_prior_loc, 0.0, distance * tl.exp(-prior_log_scale))
    return difference, q_scaled, p_scaled


@triton.jit
def laplace_kl(loc, log_scale, prior_loc, prior_log_scale):
    _, q_scaled, p_scaled = _scaled_distances(loc, log_scale, prior_loc, prior_log_scale)
    log_ratio = log_scale - prior_log_scale
    near = q_scaled < 1.0
    near_scaled = tl.where(near, q_scaled, 0.0)
    near_kl = expm1_minus_identity(log_ratio - near_scaled) + near_scaled * expm1(log_ratio)
    far_kl = -log_ratio + p_scaled + expm1(log_ratio - q_scaled)
    return tl.where(near, near_kl, far_kl)


@triton.jit
def laplace_kl_grads(loc, log_scale, prior_loc, prior_log_scale, grad_kl):
    """(∂loc, ∂l1, ∂l2) of grad_kl·KL; ∂prior_loc = −∂loc."""
    difference, q_scaled, p_scaled = _scaled_distances(loc, log_scale, prior_loc, prior_log_scale)
    ratio = tl.exp(log_scale - prior_log_scale - q_scaled)
    scaled_ratio = tl.where(ratio == 0.0, 0.0, q_scaled * ratio)
    sign = tl.where(difference < 0.0, -1.0, 1.0)
    d_loc = tl.where(difference == 0.0, 0.0, grad_kl * sign * tl.exp(-prior_log_scale) * -expm1(-q_scaled))
    return d_loc, grad_kl * (ratio - 1.0 + scaled_ratio), grad_kl * (1.0 - p_scaled - ratio)


@triton.jit
def cauchy_kl_parts(loc, log_scale, prior_loc, prior_log_scale):
    """(h, log cosh h, log t, KL) of the Cauchy KL log(cosh² h + t²)."""
    half_log_ratio = 0.5 * (log_scale - prior_log_scale)
    distance = tl.abs(loc - prior_loc)
    magnitude = tl.abs(half_log_ratio)
    log_cosh = magnitude + log1p(tl.exp(-2.0 * magnitude)) - LN2
    apart = distance != 0.0
    log_t = tl.where(apart, tl.log(tl.where(apart, distance, 1.0)) - 0.5 * (log_scale + prior_log_scale) - LN2,
                     -float("inf"))
    log_space = (magnitude > CAUCHY_KL_LOG_SPACE) | (log_t > CAUCHY_KL_LOG_SPACE)
    twice_log_cosh = 2.0 * log_cosh
    twice_log_t = 2.0 * log_t
    far = tl.maximum(twice_log_cosh, twice_log_t) + log1p(tl.exp(-tl.abs(twice_log_cosh - twice_log_t)))
    e = expm1(tl.where(log_space, 0.0, half_log_ratio))
    sinh = e * (e + 2.0) / (2.0 * (e + 1.0))
    t_squared = tl.where(log_space, 0.0, tl.exp(2.0 * tl.minimum(log_t, CAUCHY_KL_LOG_SPACE)))
    near = log1p(sinh * sinh + t_squared)
    return half_log_ratio, log_cosh, log_t, tl.where(log_space, far, near)


@triton.jit
def cauchy_kl_grads(loc, log_scale, prior_loc, prior_log_scale, grad_kl):
    """(∂loc, ∂l1, ∂l2) of grad_kl·KL; ∂prior_loc = −∂loc."""
    half_log_ratio, log_cosh, log_t, kl = cauchy_kl_parts(loc, log_scale, prior_loc, prior_log_scale)
    difference = loc - prior_loc
    cosh_share = tl.exp(2.0 * log_cosh - kl)
    t_share = tl.exp(2.0 * log_t - kl)
    scale_term = tanh(half_log_ratio) * cosh_share
    sign = tl.where(difference < 0.0, -1.0, 1.0)
    d_loc = tl.where(difference == 0.0, 0.0,
                     grad_kl * sign * tl.exp(log_t - kl - 0.5 * (log_scale + prior_log_scale)))
    return d_loc, grad_kl * (scale_term - t_share), grad_kl * (-scale_term - t_share)


@triton.jit
def logistic_log_prob(z, prior_loc, prior_log_scale):
    magnitude = tl.abs((z - prior_loc) * tl.exp(-prior_log_scale))
    return -magnitude - prior_log_scale - 2.0 * log1p(tl.exp(-magnitude))


@triton.jit
def logistic_kl_grads(x, loc, log_scale, prior_loc, prior_log_scale, grad_kl):
    """(∂loc, ∂l1, ∂l2) of grad_kl·(log q(z) − log p(z)), z = loc + e^l1·x; ∂prior_loc = −∂loc."""
    scale_x = tl.exp(log_scale) * x
    z = loc + scale_x
    inverse_prior_scale = tl.exp(-prior_log_scale)
    t = (z - prior_loc) * inverse_prior_scale
    slope = tanh(0.5 * t)
    d_z = grad_kl * slope * inverse_prior_scale
    return d_z, -grad_kl + d_z * scale_x, grad_kl * (1.0 - t * slope)


@triton.jit
def _store_terms(ptr, values, offsets, rows, mask, B, num_col_blocks, pid_n, PER_ELEMENT: tl.constexpr):
    if PER_ELEMENT:
        tl.store(ptr + offsets, values, mask=mask)
    else:
        row_sum = tl.sum(tl.where(mask, values, 0.0), axis=1)
        tl.store(ptr + rows * num_col_blocks + pid_n, row_sum, mask=rows < B)


@triton.jit
def _load_incoming(ptr, offsets, rows, mask, B, PER_ELEMENT: tl.constexpr):
    if PER_ELEMENT:
        values = tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        values = tl.load(ptr + rows, mask=rows < B, other=0.0).to(tl.float32)[:, None]
    return values


@triton.jit
def location_scale_fwd_kernel(
    loc_ptr,  # [B, N]
    log_scale_ptr,  # [B, N]
    prior_loc_ptr,  # broadcast to [B, N] through strides
    prior_log_scale_ptr,  # broadcast to [B, N] through strides
    seed_ptr,  # [2] int64: seed, base offset
    z_ptr,  # [B, N]
    log_q_ptr,  # [B, N] if LOG_Q_PER_ELEMENT else [B, num_col_blocks] row partial sums
    kl_ptr,  # likewise by KL_PER_ELEMENT
    B,
    N,
    prior_loc_stride_b, prior_loc_stride0, prior_loc_stride1, prior_loc_stride2,
    prior_log_scale_stride_b, prior_log_scale_stride0, prior_log_scale_stride1, prior_log_scale_stride2,
    inner_size1,
    inner_size2,
    num_col_blocks,
    HAS_PRIOR_LOC: tl.constexpr,
    HAS_PRIOR_LOG_SCALE: tl.constexpr,
    FAMILY: tl.constexpr,
    LOG_Q_PER_ELEMENT: tl.constexpr,
    KL_PER_ELEMENT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    loc = tl.load(loc_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    log_scale = tl.load(log_scale_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1)
    x = location_scale_noise(seed, base + offsets, FAMILY)
    z = loc + tl.exp(log_scale) * x
    tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)
    # 0·loc: a NaN or infinite loc, whose z is no number, gives no density.
    log_q = standard_log_density(x, FAMILY) - log_scale + 0.0 * loc
    prior_loc = load_prior(prior_loc_ptr, rows, cols, mask, prior_loc_stride_b, prior_loc_stride0,
                           prior_loc_stride1, prior_loc_stride2, inner_size1, inner_size2, HAS_PRIOR_LOC)
    prior_log_scale = load_prior(prior_log_scale_ptr, rows, cols, mask, prior_log_scale_stride_b,
                                 prior_log_scale_stride0, prior_log_scale_stride1, prior_log_scale_stride2,
                                 inner_size1, inner_size2, HAS_PRIOR_LOG_SCALE)
    if FAMILY == LAPLACE:
        kl = laplace_kl(loc, log_scale, prior_loc, prior_log_scale)
    elif FAMILY == CAUCHY:
        _, _, _, kl = cauchy_kl_parts(loc, log_scale, prior_loc, prior_log_scale)
    else:
        kl = log_q - logistic_log_prob(z, prior_loc, prior_log_scale)
    _store_terms(log_q_ptr, log_q, offsets, rows, mask, B, num_col_blocks, pid_n, LOG_Q_PER_ELEMENT)
    _store_terms(kl_ptr, kl, offsets, rows, mask, B, num_col_blocks, pid_n, KL_PER_ELEMENT)


@triton.jit
def location_scale_bwd_kernel(
    loc_ptr,  # [B, N]
    log_scale_ptr,  # [B, N]
    prior_loc_ptr,  # broadcast to [B, N] through strides
    prior_log_scale_ptr,  # broadcast to [B, N] through strides
    seed_ptr,  # [2] int64: seed, base offset
    grad_z_ptr,  # [B, N]
    grad_log_q_ptr,  # [B, N] if GRAD_LOG_Q_PER_ELEMENT else [B]
    grad_kl_ptr,  # [B, N] if GRAD_KL_PER_ELEMENT else [B]
    grad_loc_ptr,  # [B, N]
    grad_log_scale_ptr,  # [B, N]
    grad_prior_loc_ptr,  # [B, N], summed to the prior's shape afterwards
    grad_prior_log_scale_ptr,  # [B, N], summed to the prior's shape afterwards
    B,
    N,
    prior_loc_stride_b, prior_loc_stride0, prior_loc_stride1, prior_loc_stride2,
    prior_log_scale_stride_b, prior_log_scale_stride0, prior_log_scale_stride1, prior_log_scale_stride2,
    inner_size1,
    inner_size2,
    HAS_PRIOR_LOC: tl.constexpr,
    HAS_PRIOR_LOG_SCALE: tl.constexpr,
    FAMILY: tl.constexpr,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_LOG_Q: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr,
    GRAD_LOG_Q_PER_ELEMENT: tl.constexpr,
    GRAD_KL_PER_ELEMENT: tl.constexpr,
    PRIOR_LOC_GRAD: tl.constexpr,
    PRIOR_LOG_SCALE_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    loc = tl.load(loc_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    log_scale = tl.load(log_scale_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    grad_loc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    grad_log_scale = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    # The noise, regenerated where it is needed: for ∂z, and for the logistic's KL.
    if HAS_GRAD_Z or (FAMILY == LOGISTIC and HAS_GRAD_KL):
        seed = tl.load(seed_ptr)
        base = tl.load(seed_ptr + 1)
        x = location_scale_noise(seed, base + offsets, FAMILY)
    else:
        x = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)

    if HAS_GRAD_KL:
        grad_kl = _load_incoming(grad_kl_ptr, offsets, rows, mask, B, GRAD_KL_PER_ELEMENT)
        prior_loc = load_prior(prior_loc_ptr, rows, cols, mask, prior_loc_stride_b, prior_loc_stride0,
                               prior_loc_stride1, prior_loc_stride2, inner_size1, inner_size2, HAS_PRIOR_LOC)
        prior_log_scale = load_prior(prior_log_scale_ptr, rows, cols, mask, prior_log_scale_stride_b,
                                     prior_log_scale_stride0, prior_log_scale_stride1, prior_log_scale_stride2,
                                     inner_size1, inner_size2, HAS_PRIOR_LOG_SCALE)
        if FAMILY == LAPLACE:
            d_loc, d_log_scale, d_prior_log_scale = laplace_kl_grads(loc, log_scale, prior_loc, prior_log_scale,
                                                                     grad_kl)
        elif FAMILY == CAUCHY:
            d_loc, d_log_scale, d_prior_log_scale = cauchy_kl_grads(loc, log_scale, prior_loc, prior_log_scale,
                                                                    grad_kl)
        else:
            d_loc, d_log_scale, d_prior_log_scale = logistic_kl_grads(x, loc, log_scale, prior_loc,
                                                                      prior_log_scale, grad_kl)
        grad_loc += d_loc
        grad_log_scale += d_log_scale
        if PRIOR_LOC_GRAD:
            tl.store(grad_prior_loc_ptr + offsets, (-d_loc).to(grad_prior_loc_ptr.dtype.element_ty), mask=mask)
        if PRIOR_LOG_SCALE_GRAD:
            tl.store(grad_prior_log_scale_ptr + offsets,
                     d_prior_log_scale.to(grad_prior_log_scale_ptr.dtype.element_ty), mask=mask)

    if HAS_GRAD_Z:
        # dz/dloc = 1, dz/dlog_scale = e^log_scale·x.
        grad_z = tl.load(grad_z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        grad_loc += grad_z
        grad_log_scale += grad_z * tl.exp(log_scale) * x

    if HAS_GRAD_LOG_Q:
        # d log q/dloc = 0, d log q/dlog_scale = −1 (the total derivative along the sample).
        grad_log_scale -= _load_incoming(grad_log_q_ptr, offsets, rows, mask, B, GRAD_LOG_Q_PER_ELEMENT)

    tl.store(grad_loc_ptr + offsets, grad_loc.to(grad_loc_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_log_scale_ptr + offsets, grad_log_scale.to(grad_log_scale_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _features(loc) -> int:
    batch = loc.shape[0]
    return loc.numel() // batch if batch else int(torch.Size(loc.shape[1:]).numel())


def location_scale_fwd(loc, log_scale, prior_loc, prior_log_scale, seed_offset, family: int, log_q_mode: str,
                       kl_mode: str, z, log_q, kl):
    """Launch the forward, writing the outputs (allocated by the op,
    fastvae/ops/location_scale.py).  loc, log_scale: contiguous, shape [B, *inner]; priors
    broadcast to it or None; family: 0 Laplace, 1 logistic, 2 Cauchy; z: loc's shape;
    log_q and kl: float32, per element (mode 'element') or per sample [B] ('row')."""
    batch, features = loc.shape[0], _features(loc)
    block_b, block_n = _blocks(batch, features)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(features, block_n))

    def partials(output, mode):
        if mode == "row":
            return torch.empty((batch, grid[1]), dtype=torch.float32, device=loc.device)
        return output

    log_q_partials, kl_partials = partials(log_q, log_q_mode), partials(kl, kl_mode)
    if batch == 0 or features == 0:
        for output, mode in ((log_q, log_q_mode), (kl, kl_mode)):
            if mode == "row":
                output.zero_()
        return
    (prior_loc_arg, prior_log_scale_arg), strides, size1, size2 = prior_layout([prior_loc, prior_log_scale], loc.shape)
    location_scale_fwd_kernel[grid](
        loc, log_scale, _or(prior_loc_arg, loc), _or(prior_log_scale_arg, loc), seed_offset, z,
        log_q_partials, kl_partials,
        batch, features, *strides, size1, size2, grid[1],
        HAS_PRIOR_LOC=prior_loc is not None, HAS_PRIOR_LOG_SCALE=prior_log_scale is not None, FAMILY=family,
        LOG_Q_PER_ELEMENT=log_q_mode == "element", KL_PER_ELEMENT=kl_mode == "element",
        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    for output, output_partials in ((log_q, log_q_partials), (kl, kl_partials)):
        if output_partials is not output:
            sum_partials_into(output, output_partials)


def location_scale_bwd(grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale, seed_offset,
                       family: int, grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale):
    """Launch the backward, writing the outputs (allocated by the op,
    fastvae/ops/location_scale.py).  grad_z: [B, *inner] or None; grad_log_q, grad_kl: per
    element (loc's shape), per sample [B], or None.  grad_loc, grad_log_scale: contiguous,
    loc's shape; grad_prior_loc, grad_prior_log_scale: the prior gradients per element of
    loc's shape (in their own dtypes), or None when not asked for (then grad_kl is given)."""
    batch, features = loc.shape[0], _features(loc)
    if batch == 0 or features == 0:
        return
    prior_grads = grad_prior_loc is not None or grad_prior_log_scale is not None
    block_b, block_n = _blocks(batch, features, PRIOR_GRAD_TILE_ELEMENTS if prior_grads else TILE_ELEMENTS)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(features, block_n))
    (prior_loc_arg, prior_log_scale_arg), strides, size1, size2 = prior_layout([prior_loc, prior_log_scale], loc.shape)
    location_scale_bwd_kernel[grid](
        loc, log_scale, _or(prior_loc_arg, loc), _or(prior_log_scale_arg, loc), seed_offset,
        _or(grad_z, loc), _or(grad_log_q, loc), _or(grad_kl, loc), grad_loc, grad_log_scale,
        _or(grad_prior_loc, loc), _or(grad_prior_log_scale, loc),
        batch, features, *strides, size1, size2,
        HAS_PRIOR_LOC=prior_loc is not None, HAS_PRIOR_LOG_SCALE=prior_log_scale is not None, FAMILY=family,
        HAS_GRAD_Z=grad_z is not None, HAS_GRAD_LOG_Q=grad_log_q is not None, HAS_GRAD_KL=grad_kl is not None,
        GRAD_LOG_Q_PER_ELEMENT=grad_log_q is not None and grad_log_q.shape == loc.shape,
        GRAD_KL_PER_ELEMENT=grad_kl is not None and grad_kl.shape == loc.shape,
        PRIOR_LOC_GRAD=grad_prior_loc is not None, PRIOR_LOG_SCALE_GRAD=grad_prior_log_scale is not None,
        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
