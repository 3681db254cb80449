"""The convolutional VAE: strided convolutions down to one Gaussian latent vector and
transposed convolutions back up to the likelihood's parameters per pixel."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from ..nn.latent import GaussianLatent
from .base import register_model
from .layers import activation as make_activation
from .layers import data_shape_of, positive_int, positive_ints
from .objectives import check_objective
from .diffusion_decoder import build_diffusion_decoder
from .single import SingleLatentVAE, build_likelihood


@register_model("conv")
class ConvVAE(SingleLatentVAE):
    r"""A convolutional VAE for images [C, H, W] with a vector latent.

    Encoder: one 4×4 convolution of stride 2 per entry of ``channels`` (each halving H and
    W), an activation after each, then a hidden Linear layer of ``hidden_dim`` and a
    :class:`fastvae.nn.GaussianLatent` head.  Decoder: the mirror image with transposed
    convolutions, ending in the likelihood's parameter channels per pixel: a Bernoulli
    (logits), or PixelCNN++'s discretized logistic mixture (``likelihood=
    'discretized_logistic_mixture'``, ``num_mixtures`` components, C = 1 or 3, data on the
    8-bit grid k/255), or any other head of :func:`fastvae.nn.make_likelihood`.

    Args:
        data_shape: (C, H, W), H and W divisible by 2^len(channels) (4 by default: 28, 32
            and 64 all work).
        channels: output channels of the encoder's convolutions (the decoder's, reversed).
        hidden_dim: width of the Linear layer between the convolutions and the latent.
        latent_dim: D of the latent.
        activation: as :class:`fastvae.models.MLPVAE` ('relu' by default).
        likelihood, num_mixtures, likelihood_kwargs, prior, prior_components,
        prior_hidden_sizes, prior_lr_scale, objective, num_samples, dreg, baseline,
        latent, latent_bounds, committed_rate: as :class:`fastvae.models.MLPVAE`.
        diffusion_schedule, diffusion_t_samples, diffusion_levels, diffusion_steps,
        diffusion_sampler: likelihood='diffusion', as :class:`fastvae.models.MLPVAE`; the
            denoiser is a small U-Net
            (:class:`fastvae.models.denoisers.UNetDenoiser`) that reads the decoder
            network's output as a context image.
        diffusion_channels: the U-Net's channels per level, the data's resolution first.

    Example::

        >>> model = ConvVAE(data_shape=(3, 32, 32), likelihood="discretized_logistic_mixture",
        ...                 num_mixtures=10)
        >>> out = model(images)                 # images [B, 3, 32, 32] in [0, 1], 8-bit grid
        >>> samples = model.sample(16)          # [16, 3, 32, 32] in [0, 1]
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        latent_dim: int = 16,
        activation: str = "relu",
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
        diffusion_schedule: str = "fixed",
        diffusion_channels: Sequence[int] = (32, 64),
        diffusion_t_samples: int = 1,
        diffusion_levels: int = 2,
        diffusion_steps: int = 100,
        diffusion_sampler: str = "ancestral",
    ):
        super().__init__()
        where = "fastvae.models.ConvVAE"
        self.data_shape = data_shape_of(where, list(data_shape))
        if len(self.data_shape) != 3:
            raise ValueError(f"{where}: data_shape must be [C, H, W], got {list(self.data_shape)}")
        channels = positive_ints(where, "channels", list(channels))
        hidden_dim = positive_int(where, "hidden_dim", hidden_dim)
        self.latent_dim = positive_int(where, "latent_dim", latent_dim)
        make_activation(where, activation)
        objective, num_samples, dreg = check_objective(where, objective, num_samples, dreg,
                                                        score_function_supported=True)
        data_channels, height, width = self.data_shape
        factor = 2 ** len(channels)
        if height % factor or width % factor:
            raise ValueError(
                f"{where}: H and W of data_shape {list(self.data_shape)} must be divisible by {factor} "
                f"(2 to the number of stride-2 convolutions, len(channels) = {len(channels)})"
            )
        if likelihood == "diffusion":
            # The decoder network gives the denoiser a data-shaped context (one channel per data channel).
            self.likelihood, param_channels = None, data_channels
            self.diffusion = build_diffusion_decoder(where, "unet", self.data_shape, self.latent_dim,
                                                     diffusion_schedule, diffusion_levels, diffusion_t_samples,
                                                     diffusion_steps, diffusion_sampler, diffusion_channels)
        else:
            self.likelihood, param_channels = build_likelihood(where, likelihood, self.data_shape, num_mixtures,
                                                               likelihood_kwargs)
        bottom = (channels[-1], height // factor, width // factor)
        bottom_size = bottom[0] * bottom[1] * bottom[2]

        down = []
        for size_in, size_out in zip((data_channels,) + channels[:-1], channels):
            down += [nn.Conv2d(size_in, size_out, 4, stride=2, padding=1), make_activation(where, activation)]
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(bottom_size, hidden_dim),
                                     make_activation(where, activation))
        self.latent = GaussianLatent(hidden_dim, self.latent_dim, committed_rate=committed_rate)

        up = [nn.Linear(self.latent_dim, hidden_dim), make_activation(where, activation),
              nn.Linear(hidden_dim, bottom_size), make_activation(where, activation), nn.Unflatten(1, bottom)]
        reversed_channels = tuple(reversed(channels))
        outputs = reversed_channels[1:] + (param_channels,)
        for index, (size_in, size_out) in enumerate(zip(reversed_channels, outputs)):
            up.append(nn.ConvTranspose2d(size_in, size_out, 4, stride=2, padding=1))
            if index < len(outputs) - 1:
                up.append(make_activation(where, activation))
        self.decoder = nn.Sequential(*up)
        prior_hidden_sizes = positive_ints(where, "prior_hidden_sizes", list(prior_hidden_sizes), allow_empty=True)
        self._setup(where, prior, prior_components, objective, num_samples, dreg, baseline=baseline,
                    prior_hidden_sizes=prior_hidden_sizes, prior_lr_scale=prior_lr_scale, latent=latent,
                    latent_bounds=latent_bounds)
        self.config = {
            "name": "conv",
            "data_shape": list(self.data_shape),
            "channels": list(channels),
            "hidden_dim": hidden_dim,
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
        }
        if likelihood == "diffusion":
            self.config.update(diffusion_schedule=diffusion_schedule, diffusion_channels=list(diffusion_channels),
                               diffusion_t_samples=diffusion_t_samples, diffusion_levels=diffusion_levels,
                               diffusion_steps=diffusion_steps, diffusion_sampler=diffusion_sampler)

    def decoder_params(self, z: Tensor) -> Tensor:
        return self.decoder(z)
