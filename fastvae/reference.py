"""Pure-PyTorch reference of every fastvae op: the ground truth, and the ``torch`` backend.

One short function per formula.  Inputs of float32, bfloat16 or float16 are computed in
float32 (float64 in float64); samples come back in the inputs' dtype, KLs and log
densities in float32 (float64 for float64 inputs).  Noise comes from
:mod:`fastvae.random` (Philox with Triton's conventions), given as a call's
``seed_offset``, the int64 tensor [seed, base offset] that :func:`fastvae.random.draw_seed`
returns, so this module draws exactly the noise the kernels draw.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .random import philox_gumbel, philox_normal

LOG_2PI = math.log(2.0 * math.pi)


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def sample_dtype(mu: torch.Tensor, logvar: torch.Tensor) -> torch.dtype:
    """The dtype of z: the promotion of mu's and logvar's dtypes."""
    return torch.promote_types(mu.dtype, logvar.dtype)


def reduce(terms: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a ``reduction`` to per-element (or per-pixel) loss terms of shape [B, ...]:
    'none' → terms; 'batch' → Σ over all dims but the first, [B]; 'sum' → scalar;
    'mean' → the batch mean of the per-sample sums."""
    if reduction == "none":
        return terms
    per_sample = terms.flatten(1).sum(1) if terms.dim() > 1 else terms
    if reduction == "batch":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


# --------------------------------------------------------------------------------------
# Gaussian latent
# --------------------------------------------------------------------------------------


def standard_normal(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """ε ~ N(0, I) of ``shape`` (float32): Philox normals at offsets base + i."""
    return philox_normal(seed_offset, tuple(shape))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, seed_offset: torch.Tensor) -> torch.Tensor:
    """z = μ + exp(logvar / 2) · ε, ε ~ N(0, I) drawn from ``seed_offset``."""
    dtype = compute_dtype(mu, logvar)
    eps = standard_normal(seed_offset, mu.shape).to(device=mu.device, dtype=dtype)
    z = mu.to(dtype) + torch.exp(0.5 * logvar.to(dtype)) * eps
    return z.to(sample_dtype(mu, logvar))


def gaussian_kl_terms(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: Optional[torch.Tensor] = None,
    prior_logvar: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-element KL(N(μ, e^logvar) ‖ N(μ_p, e^logvar_p)) =
    ½·(logvar_p − logvar + (e^logvar + (μ − μ_p)²)·e^(−logvar_p) − 1).

    A missing prior is N(0, 1); priors broadcast to μ's shape.
    """
    dtype = compute_dtype(mu, logvar, prior_mu, prior_logvar)
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    prior_mu = torch.zeros((), dtype=dtype, device=mu.device) if prior_mu is None else prior_mu.to(dtype)
    prior_logvar = (
        torch.zeros((), dtype=dtype, device=mu.device) if prior_logvar is None else prior_logvar.to(dtype)
    )
    return 0.5 * (
        prior_logvar - logvar + torch.exp(logvar - prior_logvar) + (mu - prior_mu) ** 2 * torch.exp(-prior_logvar) - 1.0
    )


def free_bits_terms(kl_terms: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Free bits (Kingma et al. 2016) on per-element KL terms [B, ...].

    A latent dimension j is a feature of a [B, D] latent or a channel of a [B, C, ...] one.
    A dimension whose batch mean KL, mean_b KL_bj, is below ``free_bits`` is held: each
    sample's KL_bj is replaced by free_bits (spread evenly over the dimension's S spatial
    elements, free_bits / S each), which carries no gradient.  So the batch mean of the
    per-sample sums is Σ_j max(free_bits, mean_b KL_bj).
    """
    if free_bits == 0.0 or kl_terms.shape[0] == 0:
        return kl_terms
    batch = kl_terms.shape[0]
    view = kl_terms.reshape(batch, kl_terms.shape[1] if kl_terms.dim() > 1 else 1, -1)
    per_dimension = view.sum(-1)  # [B, J]
    held = per_dimension.mean(0) < free_bits  # [J]
    spread = torch.full_like(view, free_bits / view.shape[-1])
    return torch.where(held[None, :, None], spread, view).reshape(kl_terms.shape)


def gaussian_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: Optional[torch.Tensor] = None,
    prior_logvar: Optional[torch.Tensor] = None,
    free_bits: float = 0.0,
    reduction: str = "batch",
) -> torch.Tensor:
    """KL(q ‖ p) of a diagonal Gaussian latent, with free bits, reduced by ``reduction``."""
    terms = free_bits_terms(gaussian_kl_terms(mu, logvar, prior_mu, prior_logvar), free_bits)
    return reduce(terms, reduction)


def sample_gaussian(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    seed_offset: torch.Tensor,
    prior_mu: Optional[torch.Tensor] = None,
    prior_logvar: Optional[torch.Tensor] = None,
    free_bits: float = 0.0,
    reduction: str = "batch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, KL): :func:`reparameterize` and :func:`gaussian_kl` of the same q."""
    z = reparameterize(mu, logvar, seed_offset)
    return z, gaussian_kl(mu, logvar, prior_mu, prior_logvar, free_bits, reduction)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-element log N(z; μ, e^logvar) = −½·(log 2π + logvar + (z − μ)²·e^(−logvar))."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def sample_log_density(eps: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-element log N(z; μ, e^logvar) at its own sample z = μ + e^(logvar/2)·ε, written in
    ε: −½·(log 2π + logvar + ε²) + 0·μ (the 0·μ keeps a NaN or infinite μ, whose z is no
    number, from giving a density).

    Its gradient is the total derivative along the sample: 0 in μ and −½ in logvar.  The
    form in z, (z − μ)²·e^(−logvar), would get it from two terms of size ε·e^(−logvar/2)
    that cancel, which loses everything else at small variances (logvar = −80: e^40)."""
    return -0.5 * (LOG_2PI + logvar + eps * eps) + 0.0 * mu


def _sum_per_sample(terms: torch.Tensor) -> torch.Tensor:
    """[K, B, ...] → [K, B]: the sum over every dimension after the first two."""
    return terms.flatten(2).sum(-1) if terms.dim() > 2 else terms


def sample_gaussian_k(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: int,
    seed_offset: torch.Tensor,
    prior_mu: Optional[torch.Tensor] = None,
    prior_logvar: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K reparameterized samples z_k = μ + σ·ε_k, z of shape [K, *μ.shape], with
    log q(z_k|x) = Σ log N(z_k; μ, σ²) and log p(z_k) = Σ log N(z_k; μ_p, σ_p²), each [K, B]
    (sums over every dimension but the batch; constants included).  log q is
    :func:`sample_log_density`, in ε.

    ε_k is element (k, i) of one Philox stream over the [K, *μ.shape] sample tensor.
    """
    dtype = compute_dtype(mu, logvar, prior_mu, prior_logvar)
    shape = (num_samples,) + tuple(mu.shape)
    eps = standard_normal(seed_offset, shape).to(device=mu.device, dtype=dtype)
    mu_c, logvar_c = mu.to(dtype), logvar.to(dtype)
    z = mu_c + torch.exp(0.5 * logvar_c) * eps
    zeros = torch.zeros((), dtype=dtype, device=mu.device)
    prior_mu_c = zeros if prior_mu is None else prior_mu.to(dtype)
    prior_logvar_c = zeros if prior_logvar is None else prior_logvar.to(dtype)
    log_q = _sum_per_sample(sample_log_density(eps, mu_c, logvar_c))
    log_p = _sum_per_sample(gaussian_log_density(z, prior_mu_c, prior_logvar_c))
    return z.to(sample_dtype(mu, logvar)), log_q, log_p


def logsumexp_shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The shift m of a logsumexp over ``dim`` (kept as a dimension of size 1): max_k x_k,
    detached, and 0 where that is ±inf (so all −inf terms give −inf and a +inf gives +inf)."""
    top = x.detach().amax(dim=dim, keepdim=True)
    return torch.where(torch.isinf(top), torch.zeros_like(top), top)


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log Σ_k exp(x_k) = log Σ_k exp(x_k − m) + m over ``dim``, m = :func:`logsumexp_shift`.

    m carries no gradient (the value does not depend on it), so autograd's gradient is
    exactly softmax_k(x_k − m): not rebuilt from the rounded result as torch.logsumexp's
    backward does, which for four terms of −1e8 gives weights of 1 instead of ¼."""
    shift = logsumexp_shift(x, dim)
    log_total = torch.log(torch.exp(x - shift).sum(dim=dim, keepdim=True))
    return (log_total + shift).squeeze(dim)


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) Σ_k exp(x_k) = logsumexp_k(x_k) − log K over ``dim`` (K = x.shape[dim]), with
    :func:`logsumexp`."""
    dtype = compute_dtype(x)
    return logsumexp(x.to(dtype), dim) - math.log(x.shape[dim])


def iwae_bound(log_px_z: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound of Burda et al. (2016), per data point [B]:
    log p̂(x) = logsumexp_k(log p(x|z_k) + log p(z_k) − log q(z_k|x)) − log K,
    from [K, B] log densities."""
    dtype = compute_dtype(log_px_z, log_p, log_q)
    return log_mean_exp(log_px_z.to(dtype) + log_p.to(dtype) - log_q.to(dtype), dim=0)


# --------------------------------------------------------------------------------------
# Categorical latent
# --------------------------------------------------------------------------------------


def gumbel_noise(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """g = −log(−log u), u ~ U[0, 1) of ``shape`` from Philox uniforms (float32)."""
    return philox_gumbel(seed_offset, tuple(shape))


def gumbel_softmax(logits: torch.Tensor, tau: float, seed_offset: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """y = softmax((logits + g) / τ) over the last dimension (Jang et al., Maddison et al.
    2017); with ``hard``, the one-hot of argmax y in the forward and y's gradient in the
    backward (straight-through): one_hot − sg(y) + y."""
    dtype = compute_dtype(logits)
    noise = gumbel_noise(seed_offset, logits.shape).to(device=logits.device, dtype=dtype)
    soft = torch.softmax((logits.to(dtype) + noise) / tau, dim=-1)
    if hard:
        one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        soft = one_hot - soft.detach() + soft
    return soft.to(logits.dtype)


def categorical_kl_terms(logits: torch.Tensor, prior_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-variable KL(Cat(π) ‖ Cat(π_p)) = Σ_c π_c·(log π_c − log π_p,c), π = softmax(logits),
    over the last dimension; a missing prior is uniform (log π_p,c = −log C).  Shape: logits'
    without the last dimension."""
    dtype = compute_dtype(logits, prior_logits)
    log_probs = torch.log_softmax(logits.to(dtype), dim=-1)
    if prior_logits is None:
        prior_log_probs = torch.full((), -math.log(logits.shape[-1]), dtype=dtype, device=logits.device)
    else:
        prior_log_probs = torch.log_softmax(prior_logits.to(dtype), dim=-1)
    return (torch.exp(log_probs) * (log_probs - prior_log_probs)).sum(-1)


def sample_categorical(
    logits: torch.Tensor,
    tau: float,
    seed_offset: torch.Tensor,
    hard: bool = False,
    prior_logits: Optional[torch.Tensor] = None,
    reduction: str = "batch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, KL): a Gumbel-softmax sample of the logits' last dimension and the analytic
    categorical KL per variable, reduced by ``reduction`` ('batch': summed per sample, [B])."""
    z = gumbel_softmax(logits, tau, seed_offset, hard)
    return z, reduce(categorical_kl_terms(logits, prior_logits), reduction)


# --------------------------------------------------------------------------------------
# Reconstruction likelihoods (decoder side)
# --------------------------------------------------------------------------------------

# Below this |logits| the continuous Bernoulli's log-normalizer uses its Taylor series:
# the closed form loses accuracy to cancellation as l → 0 (0/0 at l = 0).
CB_TAYLOR_THRESHOLD = 0.1
LOG_SCALE_MIN = -7.0


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log σ(x) = −softplus(−x), stable for any x."""
    return torch.nn.functional.logsigmoid(x)


def bernoulli_nll_terms(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log Bernoulli(x; σ(l)) = softplus(l) − x·l, per element; x in [0, 1] (soft targets
    allowed)."""
    dtype = compute_dtype(logits, x if x.is_floating_point() else None)
    logits, x = logits.to(dtype), x.to(dtype)
    return torch.nn.functional.softplus(logits) - x * logits


def continuous_bernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), in the logits:
    C = l / tanh(l/2), so log C = log|l| − log(1 − e^(−|l|)) + log(1 + e^(−|l|)) (stable for
    any l), and log 2 + l²/12 − 7·l⁴/1440 for |l| < CB_TAYLOR_THRESHOLD."""
    magnitude = logits.abs()
    small = magnitude < CB_TAYLOR_THRESHOLD
    safe = torch.where(small, torch.ones_like(magnitude), magnitude)
    exact = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    square = logits * logits
    taylor = math.log(2.0) + square / 12.0 - 7.0 * square * square / 1440.0
    return torch.where(small, taylor, exact)


def continuous_bernoulli_nll_terms(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log CB(x; σ(l)) = softplus(l) − x·l − log C(l), per element; x in [0, 1]."""
    dtype = compute_dtype(logits, x if x.is_floating_point() else None)
    logits = logits.to(dtype)
    return bernoulli_nll_terms(logits, x.to(dtype)) - continuous_bernoulli_log_normalizer(logits)


def gaussian_nll_terms(mean: torch.Tensor, x: torch.Tensor, logvar=0.0) -> torch.Tensor:
    """−log N(x; mean, e^logvar) = ½·(log 2π + logvar + (x − mean)²·e^(−logvar)), per
    element; logvar a number, a tensor broadcastable to x, or full-size."""
    logvar_tensor = logvar if isinstance(logvar, torch.Tensor) else None
    dtype = compute_dtype(mean, x, logvar_tensor)
    mean, x = mean.to(dtype), x.to(dtype)
    logvar = logvar.to(dtype) if logvar_tensor is not None else torch.tensor(float(logvar), dtype=dtype, device=mean.device)
    return 0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def grid_levels(x: torch.Tensor, num_bins: int) -> torch.Tensor:
    """The level index (int64) of each x: a uint8 x is the index itself (one of 0 …
    num_bins−1, or past the grid: see :func:`level_values`); a float x in [−1, 1] is snapped
    to the nearest of the num_bins levels −1 + 2·i/(num_bins−1), clamped to the grid.  A NaN
    x gets index 0 (casting NaN to an integer is undefined) and the value NaN from
    :func:`data_values`."""
    if x.dtype == torch.uint8:
        return x.to(torch.int64)
    scaled = (x.to(torch.float64) + 1.0) * (0.5 * (num_bins - 1))
    scaled = torch.where(torch.isnan(scaled), torch.zeros_like(scaled), scaled)
    return torch.round(scaled).clamp(0, num_bins - 1).to(torch.int64)


def level_values(levels: torch.Tensor, num_bins: int, dtype: torch.dtype) -> torch.Tensor:
    """The grid value of level i, (2i − N)/N = −1 + 2i/N with N = num_bins − 1 (an exact
    integer divided once: correctly rounded, as the kernels compute it); NaN for an index
    past the grid (i > N), which is no level."""
    top = num_bins - 1
    values = (2.0 * levels.to(dtype) - top) / top
    return torch.where(levels <= top, values, torch.full_like(values, math.nan))


def data_values(x: torch.Tensor, levels: torch.Tensor, num_bins: int, dtype: torch.dtype) -> torch.Tensor:
    """The value each x takes in the likelihood: its level's value (:func:`level_values`),
    and NaN for a NaN x."""
    values = level_values(levels, num_bins, dtype)
    if x.dtype == torch.uint8:
        return values
    return torch.where(torch.isnan(x), torch.full_like(values, math.nan), values)


def logistic_bin(mean: torch.Tensor, log_scale: torch.Tensor, value: torch.Tensor, num_bins: int):
    """(a, b, d): the bin [x − half, x + half] of the logistic(mean, e^log_scale) in units of
    its scale, half = 1/(num_bins − 1), s = e^(−max(log_scale, −7)): the edges
    a = s·(x − mean + half) and b = s·(x − mean − half), and the width d = a − b = 2·half·s,
    formed directly (a − b cancels when |x − mean| ≫ half: at mean = x + 1e4, log_scale = 50
    in float32 it gets d 4 % wrong)."""
    half = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-torch.clamp_min(log_scale, LOG_SCALE_MIN))
    centered = value - mean
    return inv_scale * (centered + half), inv_scale * (centered - half), inv_scale * (2.0 * half)


def discretized_logistic_log_prob(
    mean: torch.Tensor, log_scale: torch.Tensor, value: torch.Tensor, levels: torch.Tensor, num_bins: int
) -> torch.Tensor:
    """log P(x) of one sub-pixel of value x (:func:`data_values`) at level ``levels`` under
    the logistic(mean, e^log_scale) discretized to num_bins levels in [−1, 1] (PixelCNN++,
    exact form), with (a, b, d) = :func:`logistic_bin`: log σ(a) at the lowest level,
    log σ(−b) at the highest, and log σ(a) + log σ(−b) + log(−expm1(−d)) = log(σ(a) − σ(b))
    elsewhere.  A NaN value gives NaN at any level."""
    upper, lower, width = logistic_bin(mean, log_scale, value, num_bins)
    interior = log_sigmoid(upper) + log_sigmoid(-lower) + torch.log(-torch.expm1(-width))
    return torch.where(levels == 0, log_sigmoid(upper), torch.where(levels == num_bins - 1, log_sigmoid(-lower), interior))


def discretized_logistic_nll_terms(
    mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """−log P(x) per sub-pixel of the discretized logistic (see
    :func:`discretized_logistic_log_prob`); x float in [−1, 1] (snapped) or uint8 levels.
    NaN where x is NaN or a uint8 level is num_bins or more."""
    dtype = compute_dtype(mean, log_scale, x if x.is_floating_point() else None)
    levels = grid_levels(x, num_bins)
    values = data_values(x, levels, num_bins, dtype)
    return -discretized_logistic_log_prob(mean.to(dtype), log_scale.to(dtype), values, levels, num_bins)


def mixture_parameters(params: torch.Tensor, num_mixtures: int, num_channels: int):
    """Split mixture params [B, P, *spatial] into (logits [B, K, *S], means, log_scales,
    coefficients [B, C, K, *S]) in NVAE's layout: C = 1: P = 3K (K logits, K means, K
    log-scales; no coefficients, returned as None); C = 3: P = 10K (K logits, then per
    channel R, G, B a block of 3K: K means, K log-scales, K raw coefficients, returned as
    tanh(raw))."""
    K = num_mixtures
    logits = params[:, :K]
    blocks = params[:, K:].unflatten(1, (num_channels, -1, K))  # [B, C, 2 or 3, K, *S]
    means, log_scales = blocks[:, :, 0], blocks[:, :, 1]
    coefficients = torch.tanh(blocks[:, :, 2]) if num_channels == 3 else None
    return logits, means, log_scales, coefficients


def coupled_means(means: torch.Tensor, coefficients, x: torch.Tensor) -> torch.Tensor:
    """The autoregressive channel coupling of PixelCNN++ (NVAE's coefficient slots): with
    α, β, γ the coefficients of channels R, G, B and x the data [B, C, *S],
    mean_G += α·x_R and mean_B += β·x_R + γ·x_G.  means: [B, C, K, *S]."""
    if coefficients is None:
        return means
    x_red, x_green = x[:, 0].unsqueeze(1), x[:, 1].unsqueeze(1)  # [B, 1, *S] against [B, K, *S]
    alpha, beta, gamma = coefficients[:, 0], coefficients[:, 1], coefficients[:, 2]
    return torch.stack(
        [means[:, 0], means[:, 1] + alpha * x_red, means[:, 2] + beta * x_red + gamma * x_green], dim=1
    )


def discretized_logistic_mixture_nll_terms(
    params: torch.Tensor, x: torch.Tensor, num_mixtures: int, num_bins: int = 256
) -> torch.Tensor:
    """−log p(x) per pixel [B, *spatial] of the discretized logistic mixture:
    −logsumexp_k(log_softmax(logits)_k + Σ_c log P_c,k(x_c)) (:func:`logsumexp`), P_c,k the discretized logistic
    of channel c with component k's (coupled) mean and log-scale.  NaN at a pixel with a NaN
    x or a uint8 level of num_bins or more."""
    num_channels = x.shape[1]
    dtype = compute_dtype(params, x if x.is_floating_point() else None)
    levels = grid_levels(x, num_bins)  # [B, C, *S]
    values = data_values(x, levels, num_bins, dtype)
    logits, means, log_scales, coefficients = mixture_parameters(params.to(dtype), num_mixtures, num_channels)
    means = coupled_means(means, coefficients, values)
    log_probs = discretized_logistic_log_prob(
        means, log_scales, values.unsqueeze(2), levels.unsqueeze(2), num_bins
    )  # [B, C, K, *S]
    return -logsumexp(torch.log_softmax(logits, dim=1) + log_probs.sum(1), dim=1)


def bernoulli_nll(logits, x, reduction="batch"):
    return reduce(bernoulli_nll_terms(logits, x), reduction)


def continuous_bernoulli_nll(logits, x, reduction="batch"):
    return reduce(continuous_bernoulli_nll_terms(logits, x), reduction)


def gaussian_nll(mean, x, logvar=0.0, reduction="batch"):
    return reduce(gaussian_nll_terms(mean, x, logvar), reduction)


def discretized_logistic_nll(mean, log_scale, x, num_bins=256, reduction="batch"):
    return reduce(discretized_logistic_nll_terms(mean, log_scale, x, num_bins), reduction)


def discretized_logistic_mixture_nll(params, x, num_mixtures, num_bins=256, reduction="batch"):
    return reduce(discretized_logistic_mixture_nll_terms(params, x, num_mixtures, num_bins), reduction)


def bits_per_dim(nll: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """nll / (ln 2 · D): nats per sample turned into bits per dimension, D = the number of
    elements of one sample of x (x[0].numel())."""
    return nll / (math.log(2.0) * math.prod(x.shape[1:]))
