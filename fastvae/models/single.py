"""The machinery of a VAE with one latent vector, shared by the MLP and the
convolutional models: the prior, the likelihood head, the ELBO and IWAE objectives (with
DReG), importance weights, and the evaluation methods of the :class:`VAE` contract.

The latent is Gaussian, or another reparameterized family (``latent``: Laplace, logistic,
Cauchy, truncated normal; :mod:`fastvae.models.latent_families`), whose q and p then
take the prior's place.

A subclass builds ``self.encoder`` (x → features [B, F]), ``self.latent`` (a
:class:`fastvae.nn.GaussianLatent` on those features) and implements
:meth:`SingleLatentVAE.decoder_params` (z [N, D] → the likelihood's parameters
[N, P, *spatial]).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import ops
from ..nn.elbo import ELBO
from ..nn.latent import kl_per_dimension
from ..nn.likelihood import Likelihood, make_likelihood
from .base import VAE, VAEOutput
from .layers import check_batch, positive_int
from .objectives import check_forward_args, doubly_reparameterize, repeat_batch, tempered_iwae_bound
from .diffusion_decoder import DiffusionDecoder, DiffusionTerms
from .latent_families import FamilyLatentPrior, check_latent
from .priors import make_prior
from .score_function import LearningSignalBaseline, check_baseline, learning_signal, score_function_loss


def build_likelihood(where: str, name: str, data_shape: tuple, num_mixtures: int,
                     likelihood_kwargs: Optional[dict]) -> tuple[Likelihood, int]:
    """The likelihood head of a model for data of ``data_shape`` ([C, *spatial], or [D]
    whose D features count as channels), and how many parameter channels it needs.

    ``num_mixtures`` goes to the mixture; a learned Gaussian log-variance is per channel
    unless ``likelihood_kwargs`` says otherwise."""
    if likelihood_kwargs is not None and not isinstance(likelihood_kwargs, dict):
        raise TypeError(f"{where}: likelihood_kwargs must be a dict or None, got {type(likelihood_kwargs).__name__}")
    if name == "diffusion":
        raise ValueError(f"{where}: likelihood 'diffusion' (a diffusion decoder) is a decoder of the single-latent "
                         f"models 'mlp' and 'conv' only")
    kwargs = dict(likelihood_kwargs or {})
    channels = data_shape[0]
    if name == "discretized_logistic_mixture":
        kwargs.setdefault("num_mixtures", positive_int(where, "num_mixtures", num_mixtures))
    if name == "gaussian" and kwargs.get("learn_logvar"):
        kwargs.setdefault("num_channels", channels)
    head = make_likelihood(name, **kwargs)
    try:
        param_channels = head.param_channels(channels)
    except ValueError as error:
        raise ValueError(f"{where}: likelihood {name!r} does not fit data_shape {list(data_shape)}: {error}") from None
    return head, param_channels


class SingleLatentVAE(VAE):
    """Base of the models with one latent vector (see the module's docstring).

    ``diffusion``: a :class:`fastvae.models.diffusion_decoder.DiffusionDecoder` when the
    likelihood is 'diffusion' (then p(x|z) is that decoder, its bound in place of −log
    p(x|z), with ``decoder_params`` its context), else None.

    Set by :meth:`_setup`: ``data_shape``, ``latent_dim``, ``likelihood``, ``prior``,
    ``latent_family``, ``latent_bounds``, ``objective``, ``num_samples``, ``dreg``, ``baseline``
    and, for the 'score_function' objective, ``control_variate`` (a
    :class:`fastvae.models.LearningSignalBaseline`).
    """

    def __init__(self):
        super().__init__()
        self.diffusion: Optional[DiffusionDecoder] = None

    def _setup(self, where: str, prior: str, prior_components: int, objective: str, num_samples: int,
               dreg: bool, baseline: str = "none", prior_hidden_sizes=(256, 256), prior_lr_scale: float = 0.01,
               latent: str = "gaussian", latent_bounds=None) -> None:
        self._where = where
        self.latent_family, self.latent_bounds = check_latent(where, latent, latent_bounds)
        if self.latent.committed_rate > 0 and (prior != "standard_normal" or self.latent_family != "gaussian"):
            raise ValueError(
                f"{where}: committed_rate={self.latent.committed_rate} bounds KL(q(z_d|x) ‖ N(0, 1)) from below by "
                f"the posterior's variance, which holds for the 'standard_normal' prior only, with the 'gaussian' "
                f"latent (got prior {prior!r}, latent {latent!r}); use those or committed_rate=0"
            )
        if self.latent_family == "gaussian":
            self.prior = make_prior(prior, self.latent_dim, prior_components, self.data_shape, self.encode,
                                    prior_hidden_sizes, prior_lr_scale)
        elif prior != "standard_normal":
            raise ValueError(f"{where}: the {latent!r} latent has its own standard prior; prior must be "
                             f"'standard_normal' (the default), got {prior!r}")
        else:
            self.prior = FamilyLatentPrior(self.latent_family, self.latent_dim, self.latent_bounds)
        self.objective, self.num_samples, self.dreg = objective, num_samples, dreg
        self.baseline = check_baseline(where, baseline, objective)
        if objective == "score_function":
            self.control_variate = LearningSignalBaseline(baseline, self.data_shape)
        self.elbo_loss = ELBO()

    # -- the networks -------------------------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z|x), each [B, latent_dim]."""
        return self.latent.params(self.encoder(x))

    def decoder_params(self, z: Tensor) -> Tensor:
        """The likelihood's parameters [N, P, *spatial] for latents z [N, latent_dim]."""
        raise NotImplementedError

    def reconstruction_nll(self, z: Tensor, x: Tensor) -> Tensor:
        """[N] −log p(x|z) for latents z [N, latent_dim] and data x [N, *data_shape]
        (an autoregressive decoder reads x as well as z); for the diffusion decoder, its
        bound L_prior + L_diffusion + L_recon (one draw of t, ε and z_0)."""
        if self.diffusion is not None:
            return self.diffusion.nll(x, z, self.decoder_params(z))
        return self.likelihood.nll(self.decoder_params(z), x)

    def diffusion_terms(self, x: Tensor, z: Tensor, generator: Optional[torch.Generator] = None,
                        steps: Optional[int] = None) -> DiffusionTerms:
        r"""The diffusion decoder's three per-point terms of the bound on −log p(x|z)
        (:class:`fastvae.models.diffusion_decoder.DiffusionTerms`: prior, diffusion,
        reconstruction, each [N] float32 nats) for data x [N, *data_shape] and latents z
        [N, latent_dim]; ``diffusion`` is the mean over ``diffusion_t_samples`` draws of t
        (:attr:`diffusion_t_samples`), every draw from ``generator``.  ``steps`` = T gives
        the discrete-time T-step diffusion term instead of the continuous-time one.

        Example::

            >>> terms = model.diffusion_terms(x, model.posterior_mean(x))
            >>> bound = terms.total()        # [N] >= −log p(x|z)
        """
        if self.diffusion is None:
            raise ValueError(f"{self._where}.diffusion_terms: the model's likelihood is not 'diffusion'")
        check_batch(self._where, x, self.data_shape)
        return self.diffusion.terms(x, z, self.decoder_params(z), generator, steps)

    @property
    def diffusion_t_samples(self) -> Optional[int]:
        """S, the t-samples per data point of the diffusion term (None without a diffusion decoder)."""
        return None if self.diffusion is None else self.diffusion.t_samples

    def _log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """[K, B] log p(x|z_k) for z [K, B, D]: the decoder runs once on all K·B latents.
        The diffusion decoder's bound takes the same draws of t, ε and z_0 for the K latents
        of a point (:meth:`DiffusionDecoder.shared_noise_terms`), so that the noise they
        share does not bias the importance-weighted bound."""
        num_samples, batch = z.shape[0], z.shape[1]
        if self.diffusion is not None:
            context = self.decoder_params(z.flatten(0, 1))
            context = context.view((num_samples, batch) + tuple(context.shape[1:]))
            return -self.diffusion.shared_noise_terms(x, z, context).total()
        nll = self.reconstruction_nll(z.flatten(0, 1), repeat_batch(x, num_samples))
        return -nll.view(num_samples, batch)

    # -- training objective -------------------------------------------------------------

    def forward(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> VAEOutput:
        check_batch(self._where, x, self.data_shape)
        beta, free_bits = check_forward_args(self._where, beta, free_bits, self.objective)
        if self.objective == "score_function":
            return self._score_function_forward(x, beta)
        mu, logvar = self.encode(x)
        if self.objective == "iwae":
            return self._iwae_forward(x, mu, logvar, beta)
        return self._elbo_forward(x, mu, logvar, beta, free_bits)

    def elbo_output(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> VAEOutput:
        """The reparameterized ELBO objective on ``x`` whatever ``self.objective`` is (what
        ``forward`` computes with objective='elbo')."""
        check_batch(self._where, x, self.data_shape)
        beta, free_bits = check_forward_args(self._where, beta, free_bits, "elbo")
        mu, logvar = self.encode(x)
        return self._elbo_forward(x, mu, logvar, beta, free_bits)

    def _elbo_forward(self, x: Tensor, mu: Tensor, logvar: Tensor, beta: float, free_bits: float) -> VAEOutput:
        latent = self.prior.posterior_sample(mu, logvar, free_bits)
        if self.diffusion is not None:
            terms = self.diffusion.terms(x, latent.z, self.decoder_params(latent.z))
            extras = {"diffusion_prior": terms.prior.detach(), "diffusion_loss": terms.diffusion.detach(),
                      "diffusion_reconstruction": terms.reconstruction.detach()}
            return self.elbo_loss(terms.total(), latent.kl, latent.kl_objective, latent.kl_per_dim, beta,
                                  extras=extras)
        nll = self.reconstruction_nll(latent.z, x)
        return self.elbo_loss(nll, latent.kl, latent.kl_objective, latent.kl_per_dim, beta)

    def score_function_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, dict]:
        """One draw z ~ q(z|x) per data point, held fixed (detached), and the score-function
        estimator's terms at it (:mod:`fastvae.models.score_function`).

        Returns:
            (log_px_z, log_p, log_q, report): [B] float32 log p(x|z) (differentiable in the
            decoder), log p(z) (in a learned prior), log q(z|x) (in the encoder, at the
            fixed z), and a dict of the detached [B] ``nll`` and ``kl`` and the [D]
            ``kl_per_dim`` to report (the KL analytic where the prior allows, as the ELBO
            objective reports it)."""
        check_batch(self._where, x, self.data_shape)
        mu, logvar = self.encode(x)
        with torch.no_grad():
            latent = self.prior.posterior_sample(mu.detach(), logvar.detach())
        z = latent.z.detach()
        log_q = self.prior.posterior_log_prob(z, mu, logvar)
        log_p = self.prior.log_prob(z)
        nll = self.reconstruction_nll(z, x)
        report = {"nll": nll.detach().float(), "kl": latent.kl.detach().float(),
                  "kl_per_dim": latent.kl_per_dim.detach().float()}
        return -nll.float(), log_p.float(), log_q, report

    def _score_function_forward(self, x: Tensor, beta: float) -> VAEOutput:
        log_px_z, log_p, log_q, report = self.score_function_terms(x)
        baseline, penalty = self.control_variate(x, learning_signal(log_px_z, log_p, log_q, beta))
        # The learned baseline's squared error adds its gradient only: the loss's value
        # stays the negated (tempered) ELBO estimate.
        loss = score_function_loss(log_px_z, log_p, log_q, baseline, beta) + (penalty - penalty.detach())
        nll, kl = report["nll"], report["kl"]
        return VAEOutput(loss=loss, elbo=-(nll + kl), nll=nll, kl=kl, kl_per_dim=report["kl_per_dim"])

    def _iwae_forward(self, x: Tensor, mu: Tensor, logvar: Tensor, beta: float) -> VAEOutput:
        if self.dreg:
            z, _, _ = self.prior.sample_k(mu, logvar, self.num_samples)
            # log p and log q from z in torch, so that their whole gradient to the encoder
            # passes through z (where the DReG hook scales it), q's parameters held fixed.
            log_p = self.prior.log_prob(z)
            log_q = self.prior.posterior_log_prob(z, mu.detach(), logvar.detach())
        else:
            z, log_q, log_p = self.prior.sample_k(mu, logvar, self.num_samples)
        log_px_z = self._log_likelihood(z, x)
        bound = tempered_iwae_bound(log_px_z, log_p, log_q, beta)
        if self.dreg:
            doubly_reparameterize(z, log_px_z + beta * (log_p - log_q))
        with torch.no_grad():
            nll = -log_px_z.mean(0)
            if self.prior.analytic_kl and self.latent_family == "gaussian":
                kl_by_dim = kl_per_dimension(ops.gaussian_kl(mu, logvar, reduction="none"))
                kl, kl_per_dim = kl_by_dim.sum(1), kl_by_dim.mean(0)
            elif self.prior.analytic_kl:
                kl_by_dim = kl_per_dimension(self.prior.analytic_kl_terms(mu, logvar))
                kl, kl_per_dim = kl_by_dim.sum(1), kl_by_dim.mean(0)
            else:
                kl, kl_per_dim = (log_q - log_p).mean(0), torch.zeros(0, device=x.device)
            iwae = bound.detach() if beta == 1.0 else ops.iwae_bound(log_px_z, log_p, log_q)
        return VAEOutput(
            loss=-bound.mean(),
            elbo=(-(nll + kl)).float(),
            nll=nll.float(),
            kl=kl.float(),
            kl_per_dim=kl_per_dim.float(),
            extras={"iwae": iwae.float()},
        )

    # -- evaluation ---------------------------------------------------------------------

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        check_batch(self._where, x, self.data_shape)
        num_samples = positive_int(self._where, "num_samples", num_samples)
        mu, logvar = self.encode(x)
        z, log_q, log_p = self.prior.sample_k(mu, logvar, num_samples)
        return (self._log_likelihood(z, x) + log_p - log_q).float()

    def posterior_mean(self, x: Tensor) -> Tensor:
        """E_q[z|x] (for the Cauchy latent, which has no mean, its location, the median)."""
        check_batch(self._where, x, self.data_shape)
        mu, logvar = self.encode(x)
        if self.latent_family == "gaussian":
            return mu
        return self.prior.posterior_location(mu, logvar)

    def posterior_params(self, x: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """(mu, logvar) of a Gaussian latent; None for another family."""
        check_batch(self._where, x, self.data_shape)
        if self.latent_family != "gaussian":
            return None
        return self.encode(x)

    def decode(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The decoder's mean of p(x|z) [N, *data_shape] for z [N, latent_dim].  For the
        diffusion decoder, the mean of p(x|z_0) at the end of one sampling chain drawn with
        ``generator`` (``diffusion_steps`` steps of ``diffusion_sampler``; the mean of
        p(x|z) itself has no closed form there)."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{self._where}.decode: z must have shape [N, {self.latent_dim}], got {shape}")
        if self.diffusion is not None:
            with torch.no_grad():
                return self.diffusion.sample(self.decoder_params(z), z, generator=generator)
        return self.likelihood.mean(self.decoder_params(z))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        num_samples = positive_int(self._where, "num_samples", num_samples)
        device = next(self.parameters()).device
        return self.decode(self.prior.sample(num_samples, generator, device), generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.posterior_mean(x))


def flat_size(shape) -> int:
    return int(math.prod(shape))
