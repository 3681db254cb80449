r"""Priors p(z) over a vector latent: the standard normal, a learned mixture of Gaussians,
the VampPrior (Tomczak & Welling 2018) and an autoregressive prior
(:mod:`fastvae.models.autoregressive_prior`).

Every prior answers three questions for a Gaussian posterior q(z|x) = N(mu, e^logvar):

* :meth:`Prior.posterior_sample`: z ~ q and its KL(q ‖ p) for the ELBO.  For the standard
  normal the KL is the analytic one, fused with the sampling (``fastvae.sample_gaussian``),
  with its per-dimension KL and free bits.  A mixture has no closed-form KL: it is the
  one-sample Monte Carlo estimate log q(z|x) − log p(z) at the same z (unbiased, and
  differentiable by the reparameterization); there is then no KL per dimension (an empty
  ``kl_per_dim``) and free bits do not apply.  The autoregressive prior is such a prior
  too (:class:`MonteCarloKLPrior`).
* :meth:`Prior.sample_k`: K samples with log q(z_k|x) and log p(z_k), for the IWAE.
* :meth:`Prior.log_prob` and :meth:`Prior.sample`: the density, and draws for generation.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .. import ops, reference
from ..nn.latent import GaussianLatentOutput, sample_latent
from ..reference import LOG_2PI
from .layers import positive_int, positive_ints

# Rows of z per chunk in a mixture's log_prob are chosen so that one chunk's
# [rows, components, latent_dim] temporary stays below this many elements: the direct
# (z − m)² form is accurate for narrow components, and chunking bounds its memory at an
# evaluation's K·B rows.
_MIXTURE_CHUNK_ELEMENTS = 1 << 24


def draw_normal(shape: tuple, generator: Optional[torch.Generator], device) -> Tensor:
    """Standard normals drawn on the generator's device (any device may hold it), moved to
    ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device).to(device)


class Prior(nn.Module):
    """Base class of the priors over a latent of ``latent_dim`` dimensions.

    ``analytic_kl`` is True when KL(q ‖ p) of a Gaussian q has a closed form here (then
    ``posterior_sample`` reports the true KL per dimension)."""

    latent_dim: int
    analytic_kl: bool = False

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z), summed over the latent dimension (the last): z [..., D] → [...], float32."""
        raise NotImplementedError

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """[num_samples, D] draws z ~ p(z), on ``device`` (default: the prior's)."""
        raise NotImplementedError

    def posterior_log_prob(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """log q(z|x) of the posterior N(mu, e^logvar) at given z, summed over the latent (the
        last dimension), float32, differentiable in mu and logvar: the score function's
        log q, and DReG's with mu and logvar detached.  (A non-Gaussian latent's prior,
        :class:`fastvae.models.latent_families.FamilyLatentPrior`, gives its own family's.)"""
        return reference.gaussian_log_density(z.float(), mu.float(), logvar.float()).sum(-1)

    def posterior_sample(
        self, mu: Tensor, logvar: Tensor, free_bits: float = 0.0, generator: Optional[torch.Generator] = None
    ) -> GaussianLatentOutput:
        """z ~ N(mu, e^logvar) ([B, D]) with KL(q ‖ p) (see the module's docstring)."""
        raise NotImplementedError

    def sample_k(
        self, mu: Tensor, logvar: Tensor, num_samples: int, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(z [K, B, D], log q(z|x) [K, B], log p(z) [K, B]) for K = num_samples draws of q."""
        raise NotImplementedError

    def _device(self, device):
        if device is not None:
            return torch.device(device)
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")


class StandardNormalPrior(Prior):
    r"""p(z) = N(0, I).  The KL to it is analytic and fused with the sampling.

    Example::

        >>> prior = StandardNormalPrior(16)
        >>> out = prior.posterior_sample(mu, logvar, free_bits=0.1)   # out.kl, out.kl_per_dim
    """

    analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = positive_int("fastvae.models.StandardNormalPrior", "latent_dim", latent_dim)

    def log_prob(self, z: Tensor) -> Tensor:
        z = z.float()
        return -0.5 * (z * z + LOG_2PI).sum(-1)

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        return draw_normal((num_samples, self.latent_dim), generator, self._device(device))

    def posterior_sample(self, mu, logvar, free_bits=0.0, generator=None) -> GaussianLatentOutput:
        return sample_latent(mu, logvar, free_bits=free_bits, generator=generator)

    def sample_k(self, mu, logvar, num_samples, generator=None):
        return ops.sample_gaussian_k(mu, logvar, num_samples, generator=generator)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class MonteCarloKLPrior(Prior):
    """Base of the priors whose KL to a Gaussian q has no closed form: the KL of the ELBO
    is the one-sample Monte Carlo estimate log q(z|x) − log p(z) at the fused op's sample,
    with no KL per dimension (so no free bits), and the IWAE's log p(z_k) is
    :meth:`log_prob` (exact)."""

    def posterior_sample(self, mu, logvar, free_bits=0.0, generator=None) -> GaussianLatentOutput:
        if free_bits:
            raise ValueError(
                f"fastvae.models.{type(self).__name__}: free bits need the KL of each latent dimension, which this "
                f"prior has not (its KL is a Monte Carlo estimate); use free_bits=0 or the 'standard_normal' prior"
            )
        z, log_q, _ = ops.sample_gaussian_k(mu, logvar, 1, generator=generator)
        z, log_q = z[0], log_q[0]
        kl = log_q - self.log_prob(z)
        empty = torch.zeros(0, device=mu.device)
        return GaussianLatentOutput(z, kl, kl, empty, mu, logvar)

    def sample_k(self, mu, logvar, num_samples, generator=None):
        z, log_q, _ = ops.sample_gaussian_k(mu, logvar, num_samples, generator=generator)
        return z, log_q, self.log_prob(z)


class _GaussianMixturePrior(MonteCarloKLPrior):
    """A mixture of diagonal Gaussians given by :meth:`components`."""

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        """(means [M, D], logvars [M, D], log_weights [M]) of the M components."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        means, logvars, log_weights = (t.float() for t in self.components())
        flat = z.float().reshape(-1, z.shape[-1])
        rows = max(1, _MIXTURE_CHUNK_ELEMENTS // max(1, means.numel()))
        inverse_variances = torch.exp(-logvars)
        # log N(z; m_k, e^lv_k) summed over dimensions, minus the terms free of z.
        constant = log_weights - 0.5 * (LOG_2PI * means.shape[1] + logvars.sum(1))  # [M]
        pieces = []
        for start in range(0, flat.shape[0], rows):
            chunk = flat[start:start + rows]
            squared = ((chunk[:, None, :] - means[None]) ** 2 * inverse_variances[None]).sum(-1)  # [rows, M]
            pieces.append(torch.logsumexp(constant - 0.5 * squared, dim=-1))
        log_density = torch.cat(pieces) if pieces else flat.new_zeros(0)
        return log_density.reshape(z.shape[:-1])

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        with torch.no_grad():
            means, logvars, log_weights = self.components()
            draw_device = generator.device if generator is not None else means.device
            probabilities = torch.softmax(log_weights.float(), 0).to(draw_device)
            index = torch.multinomial(probabilities, num_samples, replacement=True, generator=generator)
            index = index.to(means.device)
            noise = draw_normal((num_samples, self.latent_dim), generator, means.device)
            z = means[index].float() + torch.exp(0.5 * logvars[index].float()) * noise
        return z.to(self._device(device))


class MixtureOfGaussiansPrior(_GaussianMixturePrior):
    r"""p(z) = Σ_k π_k N(z; m_k, e^lv_k): a learned mixture of ``num_components`` diagonal
    Gaussians (means, log-variances and the weights' logits are parameters).

    log p(z) is a logsumexp over the components.  The KL of the ELBO is the one-sample
    Monte Carlo estimate log q(z|x) − log p(z).

    Args:
        latent_dim: D.
        num_components: M.

    Example::

        >>> prior = MixtureOfGaussiansPrior(16, num_components=10)
        >>> prior.log_prob(torch.randn(5, 16)).shape
        torch.Size([5])
    """

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__()
        where = "fastvae.models.MixtureOfGaussiansPrior"
        self.latent_dim = positive_int(where, "latent_dim", latent_dim)
        self.num_components = positive_int(where, "num_components", num_components)
        # Spread means (like draws of N(0, I)) so that the components start distinct.
        self.means = nn.Parameter(torch.randn(num_components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def components(self):
        return self.means, self.logvars, torch.log_softmax(self.logits, 0)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, num_components={self.num_components}"


class VampPrior(_GaussianMixturePrior):
    r"""The VampPrior (Tomczak & Welling 2018): p(z) = (1/M) Σ_k q(z | u_k), the mixture of
    the encoder's posteriors at M learned pseudo-inputs u_k.

    The pseudo-inputs are parameters of the data's shape, initialized uniform in [0, 1]
    and clamped to [0, 1] (the paper's hardtanh) when used.  The encoder is the model's:
    ``encode`` maps a batch [M, *data_shape] to (mu, logvar) [M, D]; it is held as a plain
    callable, not a submodule, so its parameters belong to the model alone.  The KL of the
    ELBO is the one-sample Monte Carlo estimate log q(z|x) − log p(z).

    Args:
        latent_dim: D.
        data_shape: the shape of one data point.
        num_components: M pseudo-inputs (the paper uses 500).
        encode: the encoder, (x) → (mu, logvar).

    Example::

        >>> prior = VampPrior(16, (784,), num_components=50, encode=model.encode)
        >>> prior.log_prob(torch.randn(5, 16)).shape
        torch.Size([5])
    """

    def __init__(self, latent_dim: int, data_shape, num_components: int = 10,
                 encode: Optional[Callable[[Tensor], tuple[Tensor, Tensor]]] = None):
        super().__init__()
        where = "fastvae.models.VampPrior"
        self.latent_dim = positive_int(where, "latent_dim", latent_dim)
        self.data_shape = positive_ints(where, "data_shape", list(data_shape))
        self.num_components = positive_int(where, "num_components", num_components)
        if encode is None or not callable(encode):
            raise TypeError(f"{where}: encode must be the model's encoder, a callable x → (mu, logvar)")
        # Set past nn.Module's __setattr__, so that an encoder given as a Module is not
        # registered a second time (its parameters stay the model's alone).
        object.__setattr__(self, "encode", encode)
        self.pseudo_inputs = nn.Parameter(torch.rand((num_components,) + self.data_shape))

    def components(self):
        mu, logvar = self.encode(torch.clamp(self.pseudo_inputs, 0.0, 1.0))
        log_weights = torch.full((self.num_components,), -math.log(self.num_components), device=mu.device)
        return mu, logvar, log_weights

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, data_shape={self.data_shape}, num_components={self.num_components}"


PRIORS = ("standard_normal", "mixture", "vamp", "autoregressive")


def make_prior(name: str, latent_dim: int, num_components: int = 10, data_shape=None, encode=None,
               hidden_sizes=(256, 256), lr_scale: float = 1.0) -> Prior:
    """The prior called ``name``: 'standard_normal', 'mixture' (a learned mixture of
    ``num_components`` Gaussians), 'vamp' (the VampPrior with ``num_components``
    pseudo-inputs of ``data_shape``, through ``encode``) or 'autoregressive' (a MADE over
    the latent whose conditionals are mixtures of ``num_components`` Gaussians, hidden
    layers ``hidden_sizes``, learning ``lr_scale`` times as fast as the model:
    :class:`fastvae.models.AutoregressivePrior`)."""
    if name == "standard_normal":
        return StandardNormalPrior(latent_dim)
    if name == "mixture":
        return MixtureOfGaussiansPrior(latent_dim, num_components)
    if name == "vamp":
        return VampPrior(latent_dim, data_shape, num_components, encode)
    if name == "autoregressive":
        # Imported here: the autoregressive prior's module builds on this one.
        from .autoregressive_prior import AutoregressivePrior

        return AutoregressivePrior(latent_dim, num_components, hidden_sizes, lr_scale)
    raise ValueError(f"fastvae.models.make_prior: unknown prior {name!r}; known: {list(PRIORS)}")
