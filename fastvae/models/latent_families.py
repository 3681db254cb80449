r"""Latents beyond the Gaussian for the single-latent models (``latent=`` of
:class:`fastvae.models.MLPVAE` and :class:`fastvae.models.ConvVAE`, ``--latent`` of
``fastvae train``).

q(z|x) is a Laplace, logistic, Cauchy or truncated-normal distribution per dimension and
p(z) is the same family's standard member: Laplace(0, 1), Logistic(0, 1), Cauchy(0, 1),
or N(0, 1) truncated to the latent's interval [low, high].  The encoder's head is the
Gaussian's (:class:`fastvae.nn.GaussianLatent`); its two outputs are read as the location
and twice the log-scale (loc = mu, log_scale = logvar / 2), so that an untrained model
starts, like the Gaussian, at the prior's scale.

Each draw is one fused op (``fastvae.sample_laplace`` and its siblings: the inverse CDF of
Philox uniforms, log q(z|x) and the KL in the same pass).  The KL is analytic for the
Laplace and the Cauchy (their per-dimension KL and free bits work as the Gaussian's); the
logistic's and the truncated normal's is the one-sample estimate log q(z|x) − log p(z),
as for a mixture prior.  The IWAE uses each family's exact log densities.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import ops
from ..nn.latent import GaussianLatentOutput, free_bits_kl, kl_per_dimension
from ..reference_location_scale import cauchy_log_prob, laplace_log_prob, logistic_log_prob
from ..reference_truncated_normal import truncated_normal_log_prob
from .layers import positive_int
from .priors import Prior

LATENTS = ("gaussian", "laplace", "logistic", "cauchy", "truncated_normal")
# The families whose KL to their standard member is analytic (fused with the draw).
ANALYTIC_KL = ("laplace", "cauchy")
# The truncated normal's interval when a model does not name one.
DEFAULT_BOUNDS = (-2.0, 2.0)

_LOCATION_SCALE_LOG_PROB = {"laplace": laplace_log_prob, "logistic": logistic_log_prob, "cauchy": cauchy_log_prob}


def check_latent(where: str, latent, latent_bounds) -> tuple[str, Optional[list]]:
    """Validate a model's ``latent`` and ``latent_bounds`` (the truncated normal's [low,
    high]; None elsewhere, and the default interval for the truncated normal)."""
    if latent not in LATENTS:
        raise ValueError(f"{where}: latent must be one of {list(LATENTS)}, got {latent!r}")
    if latent != "truncated_normal":
        if latent_bounds is not None:
            raise ValueError(f"{where}: latent_bounds is the truncated normal's interval; the {latent!r} latent "
                             f"takes none, got {latent_bounds!r}")
        return latent, None
    if latent_bounds is None:
        return latent, list(DEFAULT_BOUNDS)
    if (not isinstance(latent_bounds, (list, tuple)) or len(latent_bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in latent_bounds)):
        raise ValueError(f"{where}: latent_bounds must be two numbers [low, high], got {latent_bounds!r}")
    low, high = (float(b) for b in latent_bounds)
    if math.isnan(low) or math.isnan(high) or not low < high or (math.isinf(low) and math.isinf(high)):
        raise ValueError(f"{where}: latent_bounds must be low < high, not both infinite, got {latent_bounds!r}")
    return latent, [low, high]


class FamilyLatentPrior(Prior):
    r"""The prior of a non-Gaussian latent, which also draws from its posterior.

    p(z) is the family's standard member (see the module's docstring); q(z|x) has
    loc = mu and log_scale = logvar / 2 from the encoder.  It keeps the :class:`Prior`
    interface, so the single-latent models' ELBO, IWAE, DReG and evaluation use it as
    they use a Gaussian prior.

    Args:
        family: 'laplace', 'logistic', 'cauchy' or 'truncated_normal'.
        latent_dim: D.
        bounds: [low, high] of the truncated normal (its q and p alike); None otherwise.

    Example::

        >>> prior = FamilyLatentPrior("laplace", 16)
        >>> out = prior.posterior_sample(mu, logvar)        # out.z, out.kl (analytic)
        >>> z, log_q, log_p = prior.sample_k(mu, logvar, 8)  # [8, B, 16], [8, B], [8, B]
    """

    def __init__(self, family: str, latent_dim: int, bounds: Optional[list] = None):
        super().__init__()
        where = "fastvae.models.FamilyLatentPrior"
        if family not in LATENTS[1:]:
            raise ValueError(f"{where}: family must be one of {list(LATENTS[1:])}, got {family!r}")
        self.family = family
        self.latent_dim = positive_int(where, "latent_dim", latent_dim)
        _, self.bounds = check_latent(where, family, bounds)
        self.analytic_kl = family in ANALYTIC_KL

    # -- the fused draw -------------------------------------------------------------------

    def _draw(self, loc: Tensor, log_scale: Tensor, free_bits: float, generator, reduction: str):
        """(z, log_q, kl) of one fused call of the family's op."""
        if self.family == "laplace":
            return ops.sample_laplace(loc, log_scale, free_bits=free_bits, generator=generator, reduction=reduction)
        if self.family == "cauchy":
            return ops.sample_cauchy(loc, log_scale, free_bits=free_bits, generator=generator, reduction=reduction)
        if self.family == "logistic":
            return ops.sample_logistic(loc, log_scale, generator=generator, reduction=reduction)
        low, high = self.bounds
        return ops.sample_truncated_normal(loc, log_scale, low, high, generator=generator, reduction=reduction)

    # -- densities ------------------------------------------------------------------------

    def posterior_log_prob(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """log q(z|x) summed over the latent (the last dimension) for q's parameters
        (mu, logvar) broadcastable to z: float32 [...]."""
        loc, log_scale = mu.float(), 0.5 * logvar.float()
        if self.family == "truncated_normal":
            low, high = self.bounds
            terms = truncated_normal_log_prob(z.float(), loc, log_scale, low, high)
        else:
            terms = _LOCATION_SCALE_LOG_PROB[self.family](z.float(), loc, log_scale)
        return terms.sum(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        zero = z.new_zeros((), dtype=torch.float32)
        return self.posterior_log_prob(z, zero, zero)

    def posterior_location(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """E_q[z|x] (the median for the Cauchy, which has no mean): the location, but for
        the truncated normal, whose mean moves from its location towards the interval."""
        if self.family != "truncated_normal":
            return mu
        low, high = self.bounds
        loc, scale = mu.double(), torch.exp(0.5 * logvar.double())
        alpha, beta = (low - loc) / scale, (high - loc) / scale
        log_z = _log_normal_mass(alpha, beta)
        log_phi = lambda t: -0.5 * t * t - 0.5 * math.log(2 * math.pi)  # noqa: E731
        shift = torch.exp(log_phi(alpha) - log_z) - torch.exp(log_phi(beta) - log_z)
        return (loc + scale * shift).clamp(low, high).to(mu.dtype)

    def analytic_kl_terms(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """The analytic KL(q ‖ p) per element of mu's shape (Laplace and Cauchy only), from
        the fused op (whose sample is not used)."""
        if not self.analytic_kl:
            raise ValueError(f"fastvae.models.FamilyLatentPrior: the {self.family!r} latent has no analytic KL")
        return self._draw(mu, 0.5 * logvar, 0.0, None, "none")[2]

    # -- draws ----------------------------------------------------------------------------

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        device = self._device(device)
        draw_device = generator.device if generator is not None else device
        zeros = torch.zeros(num_samples, self.latent_dim, device=draw_device)
        z, _, _ = self._draw(zeros, zeros, 0.0, generator, "batch")
        return z.to(device)

    def posterior_sample(self, mu, logvar, free_bits=0.0, generator=None) -> GaussianLatentOutput:
        if free_bits and not self.analytic_kl:
            raise ValueError(
                f"fastvae.models.FamilyLatentPrior: free bits need the KL of each latent dimension, which the "
                f"{self.family!r} latent has not (its KL is a Monte Carlo estimate); use free_bits=0"
            )
        z, _, kl_terms = self._draw(mu, 0.5 * logvar, 0.0, generator, "none")
        kl_by_dim = kl_per_dimension(kl_terms)
        kl = kl_by_dim.sum(1)
        if not self.analytic_kl:
            empty = torch.zeros(0, device=mu.device)
            return GaussianLatentOutput(z, kl, kl, empty, mu, logvar)
        kl_objective = free_bits_kl(kl_by_dim, free_bits) if free_bits > 0 else kl
        return GaussianLatentOutput(z, kl, kl_objective, kl_by_dim.detach().mean(0), mu, logvar)

    def sample_k(self, mu, logvar, num_samples, generator=None):
        batch = mu.shape[0]
        rows = (num_samples * batch,) + tuple(mu.shape[1:])
        loc = mu.unsqueeze(0).expand((num_samples,) + tuple(mu.shape)).reshape(rows)
        log_scale = (0.5 * logvar).unsqueeze(0).expand((num_samples,) + tuple(mu.shape)).reshape(rows)
        z, log_q, _ = self._draw(loc, log_scale, 0.0, generator, "batch")
        z = z.view((num_samples,) + tuple(mu.shape))
        return z, log_q.view(num_samples, batch), self.log_prob(z)

    def extra_repr(self) -> str:
        bounds = f", bounds={self.bounds}" if self.bounds is not None else ""
        return f"family={self.family!r}, latent_dim={self.latent_dim}{bounds}"


def _log_normal_mass(alpha: Tensor, beta: Tensor) -> Tensor:
    """log(Φ(β) − Φ(α)) for α < β, on the side of the lower tail (an interval in the upper
    half is reflected, Φ(β) − Φ(α) = Φ(−α) − Φ(−β)), so the difference never cancels."""
    upper = alpha > 0
    low = torch.where(upper, -beta, alpha)
    high = torch.where(upper, -alpha, beta)
    log_high, log_low = torch.special.log_ndtr(high), torch.special.log_ndtr(low)
    return log_high + torch.log1p(-torch.exp(log_low - log_high))
