"""Pure-PyTorch reference of the location-scale latents (Laplace, logistic, Cauchy): the
ground truth of the ``location_scale`` op family and its ``torch`` backend.

One short function per formula, with :mod:`fastvae.reference`'s dtype rules: float32,
bfloat16 or float16 inputs are computed in float32 (float64 if any input is float64);
samples come back in the promoted dtype of loc and log_scale, log densities and KLs in
the compute dtype.  The noise is drawn through the tail probability (docs/architecture.md,
"Location-scale latents"): element i takes words 0 and 1 of Philox at offset base + i
(:func:`fastvae.random.philox_uniform_pair`) as uniforms u0, u1; the sign is −1 where
u1 < ½, and |x| is the distribution's upper-tail quantile at p = ½·u0 + 2^-33, in float32.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .random import philox_uniform_pair
from .reference import compute_dtype, free_bits_terms, reduce, sample_dtype

LOG_2 = math.log(2.0)
LOG_PI = math.log(math.pi)
# p = ½·u0 + 2^-33 keeps the tail probability above 0 (u0 = 0 happens) and at most ½.
TAIL_PROBABILITY_OFFSET = 2.0**-33
# Above this |½·(log γ1 − log γ2)| or log t (see cauchy_kl_terms) the Cauchy KL is formed
# in log space; below it log1p(sinh² + t²) (at most about 1.3e13) is exact and finite.
CAUCHY_KL_LOG_SPACE = 15.0
# Below this |x|, e^x − 1 − x is its Taylor series (expm1_minus_identity).
EXPM1_SERIES_BOUND = 1.0 / 16.0


# --------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------


def tail_probability_noise(seed_offset: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign, p) of ``shape``, float32: sign = −1 where u1 < ½ else +1, and the tail
    probability p = ½·u0 + 2^-33 in (0, ½], from the Philox uniform pair (u0, u1)."""
    u0, u1 = philox_uniform_pair(seed_offset, tuple(shape))
    sign = torch.where(u1 < 0.5, -1.0, 1.0).to(torch.float32)
    p = 0.5 * u0 + torch.tensor(TAIL_PROBABILITY_OFFSET, dtype=torch.float32)
    return sign, p


def standard_laplace(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """Standard Laplace noise (float32): sign · (−log 2p), the upper-tail quantile at p."""
    sign, p = tail_probability_noise(seed_offset, shape)
    return sign * -torch.log(2.0 * p)


def standard_logistic(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """Standard logistic noise (float32): sign · (log1p(−p) − log p), the upper-tail
    quantile log((1 − p)/p) at p."""
    sign, p = tail_probability_noise(seed_offset, shape)
    return sign * (torch.log1p(-p) - torch.log(p))


def standard_cauchy(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """Standard Cauchy noise (float32): sign · cos(πp)/sin(πp), the upper-tail quantile
    1/tan(πp) at p."""
    sign, p = tail_probability_noise(seed_offset, shape)
    angle = math.pi * p
    return sign * (torch.cos(angle) / torch.sin(angle))


# --------------------------------------------------------------------------------------
# Log densities
# --------------------------------------------------------------------------------------


def laplace_standard_log_density(x: torch.Tensor) -> torch.Tensor:
    """log of the standard Laplace density, −log 2 − |x|."""
    return -LOG_2 - x.abs()


def logistic_standard_log_density(x: torch.Tensor) -> torch.Tensor:
    """log of the standard logistic density e^(−x)/(1 + e^(−x))², written in |x| so that
    nothing overflows: −|x| − 2·log1p(e^(−|x|))."""
    magnitude = x.abs()
    return -magnitude - 2.0 * torch.log1p(torch.exp(-magnitude))


def cauchy_standard_log_density(x: torch.Tensor) -> torch.Tensor:
    """log of the standard Cauchy density 1/(π·(1 + x²)): −log π − log1p(x²), and for
    |x| > 1 −log π − 2·log|x| − log1p(x^-2), where x² would overflow."""
    magnitude = x.abs()
    large = magnitude > 1.0
    large_magnitude = torch.where(large, magnitude, torch.ones_like(magnitude))
    small_magnitude = torch.where(large, torch.zeros_like(magnitude), magnitude)
    tail = 2.0 * torch.log(large_magnitude) + torch.log1p(large_magnitude ** -2)
    return -LOG_PI - torch.where(large, tail, torch.log1p(small_magnitude * small_magnitude))


def _standardized(z, loc, log_scale):
    dtype = compute_dtype(z, loc, log_scale)
    log_scale = log_scale.to(dtype)
    return (z.to(dtype) - loc.to(dtype)) * torch.exp(-log_scale), log_scale


def laplace_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-element log Laplace(z; loc, b = e^log_scale) = −log 2b − |z − loc|/b."""
    t, log_scale = _standardized(z, loc, log_scale)
    return laplace_standard_log_density(t) - log_scale


def logistic_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-element log Logistic(z; loc, s = e^log_scale) = −|t| − log s − 2·log1p(e^(−|t|)),
    t = (z − loc)/s."""
    t, log_scale = _standardized(z, loc, log_scale)
    return logistic_standard_log_density(t) - log_scale


def cauchy_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-element log Cauchy(z; loc, γ = e^log_scale) = −log πγ − log1p(t²), t = (z − loc)/γ
    (:func:`cauchy_standard_log_density`)."""
    t, log_scale = _standardized(z, loc, log_scale)
    return cauchy_standard_log_density(t) - log_scale


# --------------------------------------------------------------------------------------
# KLs
# --------------------------------------------------------------------------------------


def _priors(dtype, device, prior_loc, prior_log_scale):
    zero = torch.zeros((), dtype=dtype, device=device)
    return (zero if prior_loc is None else prior_loc.to(dtype),
            zero if prior_log_scale is None else prior_log_scale.to(dtype))


def expm1_minus_identity(x: torch.Tensor) -> torch.Tensor:
    """e^x − 1 − x, without the cancellation of expm1(x) − x near 0: its Taylor series
    x²/2! + … + x⁹/9! for |x| < 1/16 (the next term is below 2^-53 of the sum there)."""
    near = x.abs() < EXPM1_SERIES_BOUND
    y = torch.where(near, x, torch.zeros_like(x))
    series = torch.zeros_like(y)
    for order in range(9, 1, -1):
        series = (series + 1.0 / math.factorial(order)) * y
    series = series * y
    return torch.where(near, series, torch.expm1(x) - x)


def laplace_kl_terms(
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    prior_loc: Optional[torch.Tensor] = None,
    prior_log_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-element KL(Laplace(μ1, b1) ‖ Laplace(μ2, b2)) =
    log(b2/b1) + |Δ|/b2 + (b1/b2)·e^(−|Δ|/b1) − 1, Δ = μ1 − μ2.

    In the log-scales l1, l2, with r = l1 − l2 and c = |Δ|/b1 = |Δ|·e^(−l1), it is
    −r + c·e^r + expm1(r − c) (no product of a huge b1/b2 and a tiny e^(−|Δ|/b1)).  Where
    c < 1 it is formed as g(r − c) + c·expm1(r), g(x) = e^x − 1 − x
    (:func:`expm1_minus_identity`): two terms of at most the KL's size, where the three
    above cancel to about (r² + c²)/2 near q = p.  A missing prior is Laplace(0, 1);
    priors broadcast to loc's shape."""
    dtype = compute_dtype(loc, log_scale, prior_loc, prior_log_scale)
    loc, log_scale = loc.to(dtype), log_scale.to(dtype)
    prior_loc, prior_log_scale = _priors(dtype, loc.device, prior_loc, prior_log_scale)
    distance = (loc - prior_loc).abs()
    # |Δ|·e^(−l) is 0 at Δ = 0 even where e^(−l) overflows (l below −88 in float32).
    at_prior_loc = distance == 0
    q_scaled = distance * torch.exp(-torch.where(at_prior_loc, torch.zeros_like(log_scale), log_scale))
    p_scaled = distance * torch.exp(-torch.where(at_prior_loc, torch.zeros_like(prior_log_scale), prior_log_scale))
    log_ratio = log_scale - prior_log_scale
    near = (q_scaled < 1.0).detach()
    near_scaled = torch.where(near, q_scaled, torch.zeros_like(q_scaled))
    near_kl = expm1_minus_identity(log_ratio - near_scaled) + near_scaled * torch.expm1(log_ratio)
    far_kl = -log_ratio + p_scaled + torch.expm1(log_ratio - q_scaled)
    return torch.where(near, near_kl, far_kl)


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    """log cosh x = |x| + log1p(e^(−2|x|)) − log 2 (no overflow)."""
    magnitude = x.abs()
    return magnitude + torch.log1p(torch.exp(-2.0 * magnitude)) - LOG_2


def cauchy_kl_terms(
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    prior_loc: Optional[torch.Tensor] = None,
    prior_log_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-element KL(Cauchy(μ1, γ1) ‖ Cauchy(μ2, γ2)) = log(((γ1 + γ2)² + Δ²)/(4·γ1·γ2))
    (Chyzak & Nielsen 2019), Δ = μ1 − μ2.

    With h = ½·(l1 − l2) and t = |Δ|/(2·√(γ1·γ2)) it is log(cosh² h + t²) = log1p(sinh² h + t²),
    formed so: exact near q = p (where it is about h² + t²), and, where |h| or log t is above
    CAUCHY_KL_LOG_SPACE, as logaddexp(2·log cosh h, 2·log t) with log t = log|Δ| − ½·(l1 + l2)
    − log 2, which no scale or difference overflows.  A missing prior is Cauchy(0, 1)."""
    dtype = compute_dtype(loc, log_scale, prior_loc, prior_log_scale)
    loc, log_scale = loc.to(dtype), log_scale.to(dtype)
    prior_loc, prior_log_scale = _priors(dtype, loc.device, prior_loc, prior_log_scale)
    half_log_ratio = 0.5 * (log_scale - prior_log_scale)
    distance = (loc - prior_loc).abs()
    apart = distance != 0
    log_distance = torch.log(torch.where(apart, distance, torch.ones_like(distance)))
    log_t = torch.where(apart, log_distance - 0.5 * (log_scale + prior_log_scale) - LOG_2,
                        torch.full_like(distance, -math.inf))
    log_space = ((half_log_ratio.abs() > CAUCHY_KL_LOG_SPACE) | (log_t > CAUCHY_KL_LOG_SPACE)).detach()
    # Each branch sees only the elements it is taken at (others get harmless values), so
    # neither overflows and the unused one passes no NaN into the gradient.
    near = torch.where(log_space, torch.zeros_like(half_log_ratio), half_log_ratio)
    near_log_t = torch.where(log_space | ~apart, torch.zeros_like(log_t), log_t)
    t_squared = torch.where(apart & ~log_space, torch.exp(2.0 * near_log_t), torch.zeros_like(log_t))
    direct = torch.log1p(torch.sinh(near) ** 2 + t_squared)
    far = torch.where(log_space, half_log_ratio, torch.ones_like(half_log_ratio))
    far_log_t = torch.where(log_space, log_t, torch.zeros_like(log_t))
    in_log_space = torch.logaddexp(2.0 * _log_cosh(far), 2.0 * far_log_t)
    return torch.where(log_space, in_log_space, direct)


# --------------------------------------------------------------------------------------
# Sample, log q and KL
# --------------------------------------------------------------------------------------


def _sample(standard_noise, standard_log_density, loc, log_scale, seed_offset, dtype):
    """(z, log q(z|x) per element) of z = loc + e^log_scale · x, x the family's standard
    noise, in ``dtype``.  log q is written in x, log f(x) − log_scale + 0·loc, so its
    gradient is the total derivative along the sample (0 in loc, −1 in log_scale), and a
    NaN or infinite loc, whose z is no number, gives no density."""
    x = standard_noise(seed_offset, loc.shape).to(device=loc.device, dtype=dtype)
    loc_c, log_scale_c = loc.to(dtype), log_scale.to(dtype)
    z = loc_c + torch.exp(log_scale_c) * x
    return z, standard_log_density(x) - log_scale_c + 0.0 * loc_c


def sample_laplace(
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    seed_offset: torch.Tensor,
    prior_loc: Optional[torch.Tensor] = None,
    prior_log_scale: Optional[torch.Tensor] = None,
    free_bits: float = 0.0,
    reduction: str = "batch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, log q, KL) of a Laplace latent: z = loc + b·x, x standard Laplace noise from
    ``seed_offset``; log q(z|x) and the analytic KL (:func:`laplace_kl_terms`, with free
    bits) reduced by ``reduction``."""
    dtype = compute_dtype(loc, log_scale, prior_loc, prior_log_scale)
    z, log_q = _sample(standard_laplace, laplace_standard_log_density, loc, log_scale, seed_offset, dtype)
    kl = free_bits_terms(laplace_kl_terms(loc, log_scale, prior_loc, prior_log_scale), free_bits)
    return z.to(sample_dtype(loc, log_scale)), reduce(log_q, reduction), reduce(kl, reduction)


def sample_cauchy(
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    seed_offset: torch.Tensor,
    prior_loc: Optional[torch.Tensor] = None,
    prior_log_scale: Optional[torch.Tensor] = None,
    free_bits: float = 0.0,
    reduction: str = "batch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, log q, KL) of a Cauchy latent: z = loc + γ·x, x standard Cauchy noise from
    ``seed_offset``; log q(z|x) and the analytic KL (:func:`cauchy_kl_terms`, with free
    bits) reduced by ``reduction``."""
    dtype = compute_dtype(loc, log_scale, prior_loc, prior_log_scale)
    z, log_q = _sample(standard_cauchy, cauchy_standard_log_density, loc, log_scale, seed_offset, dtype)
    kl = free_bits_terms(cauchy_kl_terms(loc, log_scale, prior_loc, prior_log_scale), free_bits)
    return z.to(sample_dtype(loc, log_scale)), reduce(log_q, reduction), reduce(kl, reduction)


def sample_logistic(
    loc: torch.Tensor,
    log_scale: torch.Tensor,
    seed_offset: torch.Tensor,
    prior_loc: Optional[torch.Tensor] = None,
    prior_log_scale: Optional[torch.Tensor] = None,
    reduction: str = "batch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, log q, KL) of a logistic latent: z = loc + s·x, x standard logistic noise from
    ``seed_offset``; log q(z|x), and the single-sample KL estimate log q(z|x) − log p(z)
    under the logistic prior at the same z (there is no closed form), reduced by
    ``reduction``."""
    dtype = compute_dtype(loc, log_scale, prior_loc, prior_log_scale)
    z, log_q = _sample(standard_logistic, logistic_standard_log_density, loc, log_scale, seed_offset, dtype)
    prior_loc_c, prior_log_scale_c = _priors(dtype, loc.device, prior_loc, prior_log_scale)
    kl = log_q - logistic_log_prob(z, prior_loc_c, prior_log_scale_c)
    return z.to(sample_dtype(loc, log_scale)), reduce(log_q, reduction), reduce(kl, reduction)
