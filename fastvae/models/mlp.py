"""The MLP VAE: fully connected encoder and decoder around one Gaussian latent vector."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn.latent import GaussianLatent
from .autoregressive_decoder import AutoregressiveBernoulliDecoder
from .base import register_model
from .layers import activation as make_activation, data_shape_of, mlp, positive_int, positive_ints
from .objectives import check_objective
from .diffusion_decoder import build_diffusion_decoder
from .single import SingleLatentVAE, build_likelihood, flat_size

DECODERS = ("mlp", "autoregressive")


@register_model("mlp")
class MLPVAE(SingleLatentVAE):
    r"""A VAE whose encoder and decoder are multilayer perceptrons (images are flattened).

    Encoder: data (flattened) → hidden_sizes[0] → … → hidden_sizes[-1], an activation after
    each, then a :class:`fastvae.nn.GaussianLatent` head (mu, logvar).  Decoder: the
    mirror image, latent_dim → hidden_sizes[-1] → … → hidden_sizes[0] → the likelihood's
    parameters.  Burda et al.'s one-stochastic-layer model for binarized MNIST is the
    default: ``MLPVAE(data_shape=(784,), hidden_sizes=(200, 200), latent_dim=50,
    activation='tanh', likelihood='bernoulli')``.

    Args:
        data_shape: the shape of one data point, e.g. (784,) or (1, 28, 28); for the
            discretized logistic mixture, [C, *spatial] with C = 1 or 3.
        hidden_sizes: widths of the encoder's hidden layers (the decoder's, reversed).
        latent_dim: D of the latent.
        activation: 'tanh' (default), 'relu', 'elu', 'silu', 'gelu', 'softplus', 'leaky_relu'.
        likelihood: the decoder's distribution, a name of :func:`fastvae.nn.make_likelihood`.
        num_mixtures: components of 'discretized_logistic_mixture'.
        likelihood_kwargs: further arguments of the likelihood head (num_bins, logvar, …).
        prior: 'standard_normal' (analytic KL), 'mixture', 'vamp' or 'autoregressive'
            (Monte Carlo KL, see :mod:`fastvae.models.priors`).
        prior_components: components (pseudo-inputs) of the 'mixture' ('vamp') prior; the
            components of each conditional of the 'autoregressive' prior (1: Gaussian).
        prior_hidden_sizes: hidden widths of the 'autoregressive' prior's MADE (unused by
            the others).
        prior_lr_scale: the 'autoregressive' prior's learning rate relative to the
            model's, in (0, 1] (unused by the others); 0.01 by default, where the
            README's comparison found it training as the standard normal does rather
            than following the encoder into collapse (as at 1 and, slower, at 0.1).
        objective: 'elbo', 'iwae' (the importance-weighted bound with ``num_samples`` K) or
            'score_function' (the ELBO, the encoder trained by the REINFORCE gradient:
            :mod:`fastvae.models.score_function`).
        num_samples: K of the IWAE objective (unused by 'elbo').
        dreg: the doubly reparameterized gradient (Tucker et al. 2018) for the encoder
            with the IWAE objective.
        baseline: the score-function estimator's control variate: 'none', 'running_mean'
            or 'learned' (objective 'score_function' only).
        latent: the family of q(z|x) and p(z): 'gaussian' (default), 'laplace',
            'logistic', 'cauchy' or 'truncated_normal' (each with its standard member as
            the prior; :mod:`fastvae.models.latent_families`).
        latent_bounds: [low, high] of the 'truncated_normal' latent (default [−2, 2]).
        committed_rate: δ of the δ-VAE (Razavi et al. 2019), nats per latent dimension:
            > 0 confines q's variance so that KL(q(z_d|x) ‖ N(0, 1)) >= δ for every x and
            dimension (see :mod:`fastvae.nn.committed_rate`); the 'standard_normal' prior
            only.  0 (default): off.
        decoder: 'mlp' (default), or 'autoregressive': the Bernoulli likelihood's logits
            are the MLP's f(z) plus a MADE over the pixels in raster order
            (:class:`fastvae.models.autoregressive_decoder.AutoregressiveBernoulliDecoder`),
            a decoder strong enough for a plain VAE to ignore z.  Its ``decode(z)`` draws
            one ancestral sample pixel by pixel and returns the probabilities
            p(x_i = 1 | x_<i, z) along it (not the intractable mean of p(x|z));
            ``sample`` and ``reconstruct`` go through it.  Needs likelihood='bernoulli'.
        autoregressive_hidden_sizes: widths of the MADE's masked hidden layers
            (decoder='autoregressive').
        diffusion_schedule: likelihood='diffusion' (a variational diffusion decoder,
            :mod:`fastvae.models.diffusion_decoder`, its bound on −log p(x|z) in nats in
            place of the likelihood's): the noise schedule, 'fixed' (linear γ from −13.3
            to 5) or 'learned' (VDM's monotone network, endpoints learned).  The decoder
            network above maps z to a data-shaped context that the denoiser reads, so the
            encoder and decoder networks are those of the other likelihoods.
        diffusion_hidden_sizes: widths of the MLP denoiser's hidden layers.
        diffusion_t_samples: t-samples per data point of the diffusion term (averaged).
        diffusion_levels: the data's levels, 2 (binary) or 256 (8-bit, x = k/255).
        diffusion_steps: sampling steps of ``decode``/``sample``/``reconstruct``.
        diffusion_sampler: 'ancestral' or 'deterministic' (DDIM), the sampler of
            ``decode``, whose result is the mean of p(x|z_0) at the end of one chain.

    Example::

        >>> model = MLPVAE(data_shape=(784,), hidden_sizes=(200, 200), latent_dim=50)
        >>> out = model(x, beta=1.0)                    # x [B, 784] in [0, 1]
        >>> out.loss.backward()
        >>> log_w = model.log_importance_weights(x, 64)   # [64, B]
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (784,),
        hidden_sizes: Sequence[int] = (200, 200),
        latent_dim: int = 50,
        activation: str = "tanh",
        likelihood: str = "bernoulli",
        num_mixtures: int = 10,
        likelihood_kwargs: Optional[dict] = None,
        prior: str = "standard_normal",
        prior_components: int = 10,
        prior_hidden_sizes: Sequence[int] = (256, 256),
        prior_lr_scale: float = 0.01,
        objective: str = "elbo",
        num_samples: int = 5,
        dreg: bool = False,
        baseline: str = "none",
        latent: str = "gaussian",
        latent_bounds: Optional[Sequence[float]] = None,
        committed_rate: float = 0.0,
        decoder: str = "mlp",
        autoregressive_hidden_sizes: Sequence[int] = (500,),
        diffusion_schedule: str = "fixed",
        diffusion_hidden_sizes: Sequence[int] = (512, 512),
        diffusion_t_samples: int = 1,
        diffusion_levels: int = 2,
        diffusion_steps: int = 100,
        diffusion_sampler: str = "ancestral",
    ):
        super().__init__()
        where = "fastvae.models.MLPVAE"
        self.data_shape = data_shape_of(where, list(data_shape))
        hidden = positive_ints(where, "hidden_sizes", list(hidden_sizes), allow_empty=True)
        self.latent_dim = positive_int(where, "latent_dim", latent_dim)
        make_activation(where, activation)  # a clear ValueError for an unknown name, before building
        objective, num_samples, dreg = check_objective(where, objective, num_samples, dreg,
                                                        score_function_supported=True)
        if likelihood == "diffusion":
            # The decoder network gives the denoiser a data-shaped context (one value per element).
            self.likelihood, param_channels = None, self.data_shape[0]
        else:
            self.likelihood, param_channels = build_likelihood(where, likelihood, self.data_shape, num_mixtures,
                                                               likelihood_kwargs)
        data_size = flat_size(self.data_shape)
        self._params_shape = (param_channels,) + self.data_shape[1:]
        self.encoder = nn.Sequential(nn.Flatten(), mlp(where, (data_size,) + hidden, activation))
        self.latent = GaussianLatent(hidden[-1] if hidden else data_size, self.latent_dim,
                                     committed_rate=committed_rate)
        decoder_sizes = (self.latent_dim,) + tuple(reversed(hidden)) + (flat_size(self._params_shape),)
        self.decoder = mlp(where, decoder_sizes, activation, final_activation=False)
        if decoder not in DECODERS:
            raise ValueError(f"{where}: decoder must be one of {list(DECODERS)}, got {decoder!r}")
        autoregressive_hidden = positive_ints(where, "autoregressive_hidden_sizes", list(autoregressive_hidden_sizes))
        self.autoregressive = None
        if decoder == "autoregressive":
            if likelihood != "bernoulli":  # 'diffusion' included: one decoder of p(x|z) at a time
                raise ValueError(
                    f"{where}: decoder='autoregressive' is a Bernoulli decoder over binary pixels; it needs "
                    f"likelihood='bernoulli', got {likelihood!r}"
                )
            self.autoregressive = AutoregressiveBernoulliDecoder(data_size, self.latent_dim, autoregressive_hidden)
        diffusion_settings = dict(diffusion_schedule=diffusion_schedule, diffusion_t_samples=diffusion_t_samples,
                                  diffusion_levels=diffusion_levels, diffusion_steps=diffusion_steps,
                                  diffusion_sampler=diffusion_sampler,
                                  diffusion_hidden_sizes=list(diffusion_hidden_sizes))
        if likelihood == "diffusion":
            self.diffusion = build_diffusion_decoder(where, "mlp", self.data_shape, self.latent_dim, diffusion_schedule,
                                                     diffusion_levels, diffusion_t_samples, diffusion_steps,
                                                     diffusion_sampler, diffusion_hidden_sizes)
        prior_hidden_sizes = positive_ints(where, "prior_hidden_sizes", list(prior_hidden_sizes), allow_empty=True)
        self._setup(where, prior, prior_components, objective, num_samples, dreg, baseline=baseline,
                    prior_hidden_sizes=prior_hidden_sizes, prior_lr_scale=prior_lr_scale, latent=latent,
                    latent_bounds=latent_bounds)
        self.config = {
            "name": "mlp",
            "data_shape": list(self.data_shape),
            "hidden_sizes": list(hidden),
            "latent_dim": self.latent_dim,
            "activation": activation,
            "likelihood": likelihood,
            "num_mixtures": num_mixtures,
            "likelihood_kwargs": dict(likelihood_kwargs or {}),
            "prior": prior,
            "prior_components": prior_components,
            "prior_hidden_sizes": list(prior_hidden_sizes),
            "prior_lr_scale": prior_lr_scale,
            "objective": objective,
            "num_samples": num_samples,
            "dreg": dreg,
            "baseline": baseline,
            "latent": self.latent_family,
            "latent_bounds": self.latent_bounds,
            "committed_rate": self.latent.committed_rate,
            "decoder": decoder,
            "autoregressive_hidden_sizes": list(autoregressive_hidden),
        }
        if likelihood == "diffusion":
            self.config.update(diffusion_settings)

    def decoder_params(self, z: Tensor) -> Tensor:
        return self.decoder(z).view((z.shape[0],) + self._params_shape)

    def reconstruction_nll(self, z: Tensor, x: Tensor) -> Tensor:
        if self.autoregressive is None:
            return super().reconstruction_nll(z, x)
        return self.autoregressive.nll(x.flatten(1), z, self.decoder(z))

    def decode(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The decoder's mean of p(x|z) [N, *data_shape] for z [N, latent_dim]; for the
        autoregressive decoder, the probabilities p(x_i = 1 | x_<i, z) along one ancestral
        sample x ~ p(x|z) drawn with ``generator`` (the mean of p(x|z) itself has no
        closed form there); for the diffusion decoder, the mean of p(x|z_0) at the end of
        one sampling chain drawn with ``generator``."""
        if self.autoregressive is None:
            return super().decode(z, generator)
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{self._where}.decode: z must have shape [N, {self.latent_dim}], got {shape}")
        _, probabilities = self.autoregressive.ancestral(z, self.decoder(z), generator)
        return probabilities.view((z.shape[0],) + self.data_shape)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.autoregressive is None:
            return super().sample(num_samples, generator)
        num_samples = positive_int(self._where, "num_samples", num_samples)
        device = next(self.parameters()).device
        return self.decode(self.prior.sample(num_samples, generator, device), generator)
