"""Triton kernels of the Gaussian latent family: reparameterized sampling fused with
the Gaussian KL, forward and backward, one pass each.

The latent is viewed as a contiguous [B, N] matrix (N = every dimension but the batch)
and tiled in [BLOCK_B, BLOCK_N] blocks.  Priors are read through strides of their
broadcast to [B, N]: a batch stride and the strides of up to three collapsed inner
dimensions, so a per-channel prior [1, C, 1, 1] or a full-size conditional prior needs
no expanded copy.  The noise is never stored: the backward regenerates ε from the call's
(seed, base offset), element i of the [B, N] view using offset base + i.
"""
import torch
import triton
import triton.language as tl

from fastvae.layout import prior_layout  # noqa: F401  (re-exported for the other families)
from fastvae.row_sums import sum_partials_into

# Elements per tile.  Large tiles keep the per-program overhead (and the interpreter's
# per-program Python cost) small; tuning per GPU belongs to bench/.
TILE_ELEMENTS = 4096
MAX_BLOCK_N = 1024
# Warps per program: 16, so 8 elements a thread (docs/architecture.md, "Tiles and warps").
# At the default 4 warps (32 elements a thread) the backward with priors and both incoming
# gradients spilled 664 B on sm_90a; at 16 warps the forward with both priors, sampling
# and the KL takes 100 registers, no spills.
NUM_WARPS = 16
# The backward writing prior gradients holds two more tensors an element: its tile is
# halved (4 elements a thread, 74 registers), as at 8 it hit ptxas's 128-register cap
# (16 warps) and spilled 56 B.
PRIOR_GRAD_TILE_ELEMENTS = 2048


@triton.jit
def _prior_offsets(rows, cols, stride_b, stride0, stride1, stride2, size1, size2):
    i2 = cols % size2
    i1 = (cols // size2) % size1
    i0 = cols // (size1 * size2)
    return rows[:, None] * stride_b + (i0 * stride0 + i1 * stride1 + i2 * stride2)[None, :]


@triton.jit
def load_prior(ptr, rows, cols, mask, strides_b, stride0, stride1, stride2, size1, size2, PRESENT: tl.constexpr):
    if PRESENT:
        offsets = _prior_offsets(rows, cols, strides_b, stride0, stride1, stride2, size1, size2)
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        return tl.zeros(mask.shape, dtype=tl.float32)


@triton.jit
def gaussian_latent_fwd_kernel(
    mu_ptr,  # [B, N]
    logvar_ptr,  # [B, N]
    prior_mu_ptr,  # broadcast to [B, N] through strides
    prior_logvar_ptr,  # broadcast to [B, N] through strides
    seed_ptr,  # [2] int64: seed, base offset
    z_ptr,  # [B, N]
    kl_ptr,  # [B, N] if KL_PER_ELEMENT else [B, num_col_blocks] row partial sums
    B,
    N,
    prior_mu_stride_b, prior_mu_stride0, prior_mu_stride1, prior_mu_stride2,
    prior_logvar_stride_b, prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
    inner_size1,
    inner_size2,
    num_col_blocks,
    HAS_PRIOR_MU: tl.constexpr,
    HAS_PRIOR_LOGVAR: tl.constexpr,
    SAMPLE: tl.constexpr,
    COMPUTE_KL: tl.constexpr,
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

    mu = tl.load(mu_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    logvar = tl.load(logvar_ptr + offsets, mask=mask, other=0.0).to(tl.float32)

    if SAMPLE:
        seed = tl.load(seed_ptr)
        base = tl.load(seed_ptr + 1)
        eps = tl.randn(seed, base + offsets)
        z = mu + tl.exp(0.5 * logvar) * eps
        tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)

    if COMPUTE_KL:
        prior_mu = load_prior(prior_mu_ptr, rows, cols, mask, prior_mu_stride_b, prior_mu_stride0,
                               prior_mu_stride1, prior_mu_stride2, inner_size1, inner_size2, HAS_PRIOR_MU)
        prior_logvar = load_prior(prior_logvar_ptr, rows, cols, mask, prior_logvar_stride_b,
                                   prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
                                   inner_size1, inner_size2, HAS_PRIOR_LOGVAR)
        diff = mu - prior_mu
        kl = 0.5 * (prior_logvar - logvar + tl.exp(logvar - prior_logvar) + diff * diff * tl.exp(-prior_logvar) - 1.0)
        if KL_PER_ELEMENT:
            tl.store(kl_ptr + offsets, kl, mask=mask)
        else:
            row_sum = tl.sum(tl.where(mask, kl, 0.0), axis=1)
            tl.store(kl_ptr + rows * num_col_blocks + pid_n, row_sum, mask=rows < B)


@triton.jit
def gaussian_latent_bwd_kernel(
    mu_ptr,  # [B, N]
    logvar_ptr,  # [B, N]
    prior_mu_ptr,  # broadcast to [B, N] through strides
    prior_logvar_ptr,  # broadcast to [B, N] through strides
    seed_ptr,  # [2] int64: seed, base offset
    grad_z_ptr,  # [B, N]
    grad_kl_ptr,  # [B, N] if GRAD_KL_PER_ELEMENT else [B]
    grad_mu_ptr,  # [B, N]
    grad_logvar_ptr,  # [B, N]
    grad_prior_mu_ptr,  # [B, N], summed to the prior's shape afterwards
    grad_prior_logvar_ptr,  # [B, N], summed to the prior's shape afterwards
    B,
    N,
    prior_mu_stride_b, prior_mu_stride0, prior_mu_stride1, prior_mu_stride2,
    prior_logvar_stride_b, prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
    inner_size1,
    inner_size2,
    HAS_PRIOR_MU: tl.constexpr,
    HAS_PRIOR_LOGVAR: tl.constexpr,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr,
    GRAD_KL_PER_ELEMENT: tl.constexpr,
    PRIOR_MU_GRAD: tl.constexpr,
    PRIOR_LOGVAR_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows[:, None] < B) & (cols[None, :] < N)
    offsets = rows[:, None] * N + cols[None, :]

    mu = tl.load(mu_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    logvar = tl.load(logvar_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    grad_mu = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    grad_logvar = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)

    if HAS_GRAD_Z:
        grad_z = tl.load(grad_z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        seed = tl.load(seed_ptr)
        base = tl.load(seed_ptr + 1)
        eps = tl.randn(seed, base + offsets)
        # dz/dmu = 1, dz/dlogvar = σ·ε/2, with ε regenerated rather than stored.
        grad_mu += grad_z
        grad_logvar += grad_z * 0.5 * tl.exp(0.5 * logvar) * eps

    if HAS_GRAD_KL:
        if GRAD_KL_PER_ELEMENT:
            grad_kl = tl.load(grad_kl_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        else:
            grad_kl = tl.load(grad_kl_ptr + rows, mask=rows < B, other=0.0).to(tl.float32)[:, None]
        prior_mu = load_prior(prior_mu_ptr, rows, cols, mask, prior_mu_stride_b, prior_mu_stride0,
                               prior_mu_stride1, prior_mu_stride2, inner_size1, inner_size2, HAS_PRIOR_MU)
        prior_logvar = load_prior(prior_logvar_ptr, rows, cols, mask, prior_logvar_stride_b,
                                   prior_logvar_stride0, prior_logvar_stride1, prior_logvar_stride2,
                                   inner_size1, inner_size2, HAS_PRIOR_LOGVAR)
        diff = mu - prior_mu
        precision = tl.exp(-prior_logvar)
        var_ratio = tl.exp(logvar - prior_logvar)
        d_mu = grad_kl * diff * precision
        grad_mu += d_mu
        grad_logvar += grad_kl * 0.5 * (var_ratio - 1.0)
        if PRIOR_MU_GRAD:
            tl.store(grad_prior_mu_ptr + offsets, (-d_mu).to(grad_prior_mu_ptr.dtype.element_ty), mask=mask)
        if PRIOR_LOGVAR_GRAD:
            d_prior_logvar = grad_kl * 0.5 * (1.0 - var_ratio - diff * diff * precision)
            tl.store(grad_prior_logvar_ptr + offsets,
                     d_prior_logvar.to(grad_prior_logvar_ptr.dtype.element_ty), mask=mask)

    tl.store(grad_mu_ptr + offsets, grad_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _blocks(batch: int, features: int, tile: int = TILE_ELEMENTS) -> tuple[int, int]:
    block_n = min(max(triton.next_power_of_2(max(features, 1)), 16), MAX_BLOCK_N, tile)
    block_b = max(1, min(tile // block_n, triton.next_power_of_2(max(batch, 1))))
    return block_b, block_n


def _or(tensor, fallback):
    # Kernels take a pointer for every argument; an absent one is never read (its
    # constexpr flag is off), so any tensor stands in.
    return tensor if tensor is not None else fallback


def gaussian_latent_fwd(mu, logvar, prior_mu, prior_logvar, seed_offset, kl_mode: str, z, kl):
    """Launch the forward, writing the outputs (allocated by the op, fastvae/ops/latent.py).
    mu, logvar: contiguous, shape [B, *inner]; priors broadcast to it or None; z: mu's
    shape, or None not to sample; kl: float32, per element (mu's shape) in kl_mode
    'element', per sample [B] in 'row', None in 'none'."""
    batch = mu.shape[0]
    features = mu.numel() // batch if batch else int(torch.Size(mu.shape[1:]).numel())
    block_b, block_n = _blocks(batch, features)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(features, block_n))
    kl_partials = kl
    if kl_mode == "row":
        kl_partials = torch.empty((batch, grid[1]), dtype=torch.float32, device=mu.device)
    if batch == 0 or features == 0:
        if kl_mode == "row":
            kl.zero_()
        return
    (prior_mu_arg, prior_logvar_arg), strides, size1, size2 = prior_layout([prior_mu, prior_logvar], mu.shape)
    gaussian_latent_fwd_kernel[grid](
        mu, logvar, _or(prior_mu_arg, mu), _or(prior_logvar_arg, mu), _or(seed_offset, mu), _or(z, mu),
        _or(kl_partials, mu),
        batch, features, *strides, size1, size2, grid[1],
        HAS_PRIOR_MU=prior_mu is not None, HAS_PRIOR_LOGVAR=prior_logvar is not None,
        SAMPLE=z is not None, COMPUTE_KL=kl_mode != "none", KL_PER_ELEMENT=kl_mode == "element",
        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    if kl_mode == "row":
        sum_partials_into(kl, kl_partials)


def backward_reads_sample(z_dtype: torch.dtype) -> bool:
    """Whether :func:`gaussian_latent_bwd` takes the forward's z, from which
    ∂z/∂logvar = (z − mu)/2, rather than regenerating ε.  Never here: on a GPU the op is
    memory-bound, and regenerating ε costs no traffic where reading z costs a load."""
    return False


def gaussian_latent_bwd(grad_z, grad_kl, mu, logvar, prior_mu, prior_logvar, seed_offset, z,
                        grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar):
    """Launch the backward, writing the outputs (allocated by the op, fastvae/ops/latent.py).
    grad_z: [B, *inner] or None; grad_kl: per element (mu's shape), per sample [B], or
    None; z: None (see :func:`backward_reads_sample`).  grad_mu, grad_logvar: contiguous,
    mu's shape; grad_prior_mu, grad_prior_logvar: the prior gradients per element of mu's
    shape (in their own dtypes), or None when not asked for (then grad_kl is given)."""
    if z is not None:
        raise ValueError("fastvae gaussian_latent_bwd (triton): regenerates ε and takes no z")
    batch = mu.shape[0]
    features = mu.numel() // batch if batch else int(torch.Size(mu.shape[1:]).numel())
    if batch == 0 or features == 0:
        return
    prior_grads = grad_prior_mu is not None or grad_prior_logvar is not None
    block_b, block_n = _blocks(batch, features, PRIOR_GRAD_TILE_ELEMENTS if prior_grads else TILE_ELEMENTS)
    grid = (triton.cdiv(batch, block_b), triton.cdiv(features, block_n))
    (prior_mu_arg, prior_logvar_arg), strides, size1, size2 = prior_layout([prior_mu, prior_logvar], mu.shape)
    gaussian_latent_bwd_kernel[grid](
        mu, logvar, _or(prior_mu_arg, mu), _or(prior_logvar_arg, mu), _or(seed_offset, mu),
        _or(grad_z, mu), _or(grad_kl, mu), grad_mu, grad_logvar,
        _or(grad_prior_mu, mu), _or(grad_prior_logvar, mu),
        batch, features, *strides, size1, size2,
        HAS_PRIOR_MU=prior_mu is not None, HAS_PRIOR_LOGVAR=prior_logvar is not None,
        HAS_GRAD_Z=grad_z is not None, HAS_GRAD_KL=grad_kl is not None,
        GRAD_KL_PER_ELEMENT=grad_kl is not None and grad_kl.shape == mu.shape,
        PRIOR_MU_GRAD=grad_prior_mu is not None, PRIOR_LOGVAR_GRAD=grad_prior_logvar is not None,
        BLOCK_B=block_b, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
