"""Pure-PyTorch reference of the truncated-normal latent: the ground truth, and the
``torch`` backend of :func:`fastvae.sample_truncated_normal`.

q(z|x) is N(loc, σ²), σ = e^log_scale, truncated to a fixed interval [low, high]; in
standardized units x = (z − loc)/σ it is N(0, 1) on [α, β], α = (low − loc)/σ,
β = (high − loc)/σ.  A sample is the inverse CDF at a Philox uniform u (word 0, as
:func:`fastvae.random.philox_uniform`):

    x = Φ⁻¹((1 − u)·Φ(α) + u·Φ(β)),    z = loc + σ·x (clamped into [low, high]).

Everything is computed in float64 (whatever the inputs' dtype) in log space, so that it
stays finite and inside [α, β] for bounds deep in either tail (α = −1e4, a tiny σ, a huge
loc): docs/architecture.md, "The truncated normal", has the construction.  Samples come
back in the promoted dtype of loc and log_scale, log densities and KLs in float32 (float64
for float64 inputs).  The gradient of x is the implicit derivative of the CDF,
∂x/∂α = (1 − u)·φ(α)/φ(x), ∂x/∂β = u·φ(β)/φ(x), taken in log space.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .random import philox_uniform
from .reference import compute_dtype, reduce, sample_dtype

LOG_2PI = math.log(2.0 * math.pi)
LOG_HALF = math.log(0.5)
# The uniform is kept inside [2^-32, 1 − 2^-24] (float32: 1 − 2^-24 is the largest value
# below 1), so an infinite bound is never reached: log u and log(1 − u) stay finite.
UNIFORM_MIN = 2.0 ** -32
UNIFORM_MAX = 1.0 - 2.0 ** -24
# Newton steps of the inverse CDF in log space after its first guess.
NDTRI_NEWTON_STEPS = 3


def uniform_noise(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """u (float32, ``shape``): word 0 of Philox at offsets base + i turned into a uniform
    (:func:`fastvae.random.philox_uniform`), clamped into [2^-32, 1 − 2^-24]."""
    return torch.clamp(philox_uniform(seed_offset, tuple(shape)), UNIFORM_MIN, UNIFORM_MAX)


def log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Φ(x), accurate in both tails (torch.special.log_ndtr); at x = ±inf the constant
    −inf or 0, whose gradient is 0 (log_ndtr's own backward makes NaN there)."""
    infinite = torch.isinf(x)
    finite_log_cdf = torch.special.log_ndtr(torch.where(infinite, torch.zeros_like(x), x))
    return torch.where(infinite, torch.where(x > 0, 0.0, -math.inf).to(x.dtype), finite_log_cdf)


def standard_normal_log_density(x: torch.Tensor) -> torch.Tensor:
    """log φ(x) = −½·(log 2π + x²)."""
    return -0.5 * (LOG_2PI + x * x)


def log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(e^a + e^b), −inf when both are −inf."""
    top = torch.maximum(a, b)
    bottom = torch.minimum(a, b)
    gap = torch.where(bottom == -math.inf, torch.full_like(top, math.inf), top - bottom)
    return top + torch.log1p(torch.exp(-gap))


def reflect(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, flipped): the interval [α, β], or its mirror image [−β, −α] where its mass
    lies in the upper half (α + β > 0), so that a + b ≤ 0 and Φ(b) ≥ ½: Φ(b) − Φ(a) is then
    a difference of lower-tail probabilities, which log space keeps exact."""
    flipped = alpha + beta > 0
    return torch.where(flipped, -beta, alpha), torch.where(flipped, -alpha, beta), flipped


def log_normal_mass(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """log Z = log(Φ(β) − Φ(α)) for α < β, computed on the interval reflected into the
    lower half (:func:`reflect`): log Φ(b) + log(1 − e^(log Φ(a) − log Φ(b)))."""
    a, b, _ = reflect(alpha, beta)
    log_cdf_b = log_ndtr(b)
    return log_cdf_b + torch.log(-torch.expm1(log_ndtr(a) - log_cdf_b))


def ndtri_log(log_p: torch.Tensor) -> torch.Tensor:
    """Φ⁻¹(e^log_p) for log_p ≤ log ½ (the lower half): torch.special.ndtri where e^log_p
    does not underflow, the asymptotic −√(−2·log p − log(−2·log p) − log 2π) below, then
    Newton steps on log Φ(x) = log_p (log Φ is nearly quadratic in the lower tail, so they
    converge there at any depth)."""
    safe = torch.clamp(log_p, min=-600.0)
    central = torch.special.ndtri(torch.exp(safe))
    depth = -2.0 * torch.clamp(log_p, max=-1.0)
    asymptotic = -torch.sqrt(depth - torch.log(depth) - LOG_2PI)
    x = torch.where(log_p > -600.0, central, asymptotic)
    for _ in range(NDTRI_NEWTON_STEPS):
        log_cdf = log_ndtr(x)
        slope = torch.exp(standard_normal_log_density(x) - log_cdf)  # d log Φ(x)/dx = φ(x)/Φ(x)
        x = x - (log_cdf - log_p) / slope
    return x


def standard_truncated_normal_quantile(alpha: torch.Tensor, beta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """x = Φ⁻¹((1 − u)·Φ(α) + u·Φ(β)) in [α, β], without its gradient.

    Both the lower probability p and the upper one 1 − p are formed in log space,
    log p = logaddexp(log(1 − u) + log Φ(α), log u + log Φ(β)) and
    log(1 − p) = logaddexp(log(1 − u) + log Φ(−α), log u + log Φ(−β)), and x is inverted
    from the smaller of the two (x = −Φ⁻¹(1 − p) on the upper side), so neither a
    probability near 1 nor one below float's range is ever formed."""
    log_u, log_1mu = torch.log(u), torch.log1p(-u)
    log_lower = log_add_exp(log_1mu + log_ndtr(alpha), log_u + log_ndtr(beta))
    log_upper = log_add_exp(log_1mu + log_ndtr(-alpha), log_u + log_ndtr(-beta))
    lower = log_lower <= log_upper
    x = torch.where(lower, ndtri_log(torch.where(lower, log_lower, LOG_HALF)),
                    -ndtri_log(torch.where(lower, LOG_HALF, log_upper)))
    return torch.minimum(torch.maximum(x, alpha), beta)


def quantile_gradients(alpha: torch.Tensor, beta: torch.Tensor, u: torch.Tensor, x: torch.Tensor):
    """(∂x/∂α, ∂x/∂β) = ((1 − u)·φ(α)/φ(x), u·φ(β)/φ(x)), as exponentials of log differences,
    φ(α)/φ(x) = e^((x − α)(x + α)/2): finite in the tails and 0 at an infinite bound."""
    d_alpha = torch.exp(torch.log1p(-u) + 0.5 * (x - alpha) * (x + alpha))
    d_beta = torch.exp(torch.log(u) + 0.5 * (x - beta) * (x + beta))
    return d_alpha, d_beta


class _StandardTruncatedNormal(torch.autograd.Function):
    """x(α, β) at fixed u with the implicit gradient (twice differentiable: the backward is
    torch ops on α, β and the saved x)."""

    @staticmethod
    def forward(ctx, alpha, beta, u):
        x = standard_truncated_normal_quantile(alpha, beta, u)
        ctx.save_for_backward(alpha, beta, u, x)
        return x

    @staticmethod
    def backward(ctx, grad_x):
        alpha, beta, u, x = ctx.saved_tensors
        d_alpha, d_beta = quantile_gradients(alpha, beta, u, x)
        return grad_x * d_alpha, grad_x * d_beta, None


def standard_truncated_normal(alpha: torch.Tensor, beta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The standardized sample x in [α, β] at uniforms u, differentiable in α and β."""
    return _StandardTruncatedNormal.apply(alpha, beta, u)


def standardized_bound(bound: float, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(bound − loc)/σ; an infinite bound stays a constant ±inf (no gradient: 0·inf would
    make NaN in autograd)."""
    if math.isinf(bound):
        return torch.full_like(loc, bound)
    return (bound - loc) / scale


def truncated_normal_log_prob(z: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, low: float,
                              high: float) -> torch.Tensor:
    """Per-element log density of N(loc, e^(2·log_scale)) truncated to [low, high] at z:
    −½·log 2π − log_scale − ½·((z − loc)/σ)² − log Z, log Z = :func:`log_normal_mass`;
    −inf outside [low, high].  Computed in float64 (float32 inputs come back float32)."""
    dtype = compute_dtype(z, loc, log_scale)
    z64, loc64, log_scale64 = (t.to(torch.float64) for t in (z, loc, log_scale))
    z64, loc64, log_scale64 = torch.broadcast_tensors(z64, loc64, log_scale64)
    scale = torch.exp(log_scale64)
    y = (z64 - loc64) / scale
    alpha = standardized_bound(low, loc64, scale)
    beta = standardized_bound(high, loc64, scale)
    inside = (z64 >= low) & (z64 <= high)
    log_prob = -0.5 * LOG_2PI - log_scale64 - 0.5 * y * y - log_normal_mass(alpha, beta)
    return torch.where(inside, log_prob, torch.full_like(log_prob, -math.inf)).to(dtype)


def truncated_normal_terms(loc: torch.Tensor, log_scale: torch.Tensor, low: float, high: float, u: torch.Tensor,
                           prior_loc: Optional[torch.Tensor] = None, prior_log_scale: Optional[torch.Tensor] = None):
    """(z, log_q, kl) per element, float64, at uniforms u: the sample, log q(z|x) and the
    single-sample KL estimate log q(z) − log p(z), p = N(prior_loc, e^(2·prior_log_scale))
    truncated to [low, high] (a missing prior is 0)."""
    loc, log_scale = loc.to(torch.float64), log_scale.to(torch.float64)
    zeros = torch.zeros((), dtype=torch.float64, device=loc.device)
    prior_loc = zeros if prior_loc is None else prior_loc.to(torch.float64)
    prior_log_scale = zeros if prior_log_scale is None else prior_log_scale.to(torch.float64)
    scale = torch.exp(log_scale)
    alpha = standardized_bound(low, loc, scale)
    beta = standardized_bound(high, loc, scale)
    x = standard_truncated_normal(alpha, beta, u.to(device=loc.device, dtype=torch.float64))
    z_raw = loc + scale * x
    # Rounding may put loc + σ·x a hair outside; the clamp passes the gradient through.
    z = z_raw + (torch.clamp(z_raw.detach(), low, high) - z_raw.detach())
    log_q = -0.5 * LOG_2PI - log_scale - 0.5 * x * x - log_normal_mass(alpha, beta)
    prior_loc, prior_log_scale = (p.expand(loc.shape) for p in (prior_loc, prior_log_scale))
    prior_scale = torch.exp(prior_log_scale)
    y = (z - prior_loc) / prior_scale
    prior_alpha = standardized_bound(low, prior_loc, prior_scale)
    prior_beta = standardized_bound(high, prior_loc, prior_scale)
    log_p = -0.5 * LOG_2PI - prior_log_scale - 0.5 * y * y - log_normal_mass(prior_alpha, prior_beta)
    return z, log_q, log_q - log_p


def sample_truncated_normal(loc: torch.Tensor, log_scale: torch.Tensor, low: float, high: float,
                            seed_offset: torch.Tensor, prior_loc: Optional[torch.Tensor] = None,
                            prior_log_scale: Optional[torch.Tensor] = None, reduction: str = "batch"):
    """(z, log_q, kl) of :func:`fastvae.sample_truncated_normal`, the noise drawn from
    ``seed_offset``: z in the promoted dtype of loc and log_scale, log_q and kl reduced by
    ``reduction`` in float32 (float64 for float64 inputs)."""
    out_dtype = compute_dtype(loc, log_scale, prior_loc, prior_log_scale)
    u = uniform_noise(seed_offset, loc.shape)
    z, log_q, kl = truncated_normal_terms(loc, log_scale, low, high, u, prior_loc, prior_log_scale)
    # Reduced in float64, then rounded once.
    return (z.to(sample_dtype(loc, log_scale)), reduce(log_q, reduction).to(out_dtype),
            reduce(kl, reduction).to(out_dtype))
