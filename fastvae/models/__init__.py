"""VAE models built on :mod:`fastvae.nn`, all keeping the contract of :mod:`fastvae.models.base`.

``build_model(config)`` rebuilds any of them from its ``model.config``:

* ``'mlp'``: :class:`MLPVAE`, fully connected (Burda et al.'s 784-200-200-50 model by default).
* ``'conv'``: :class:`ConvVAE`, convolutional, Bernoulli or discretized logistic mixture decoder.

Both ``'mlp'`` and ``'conv'`` take ``likelihood='diffusion'``: p(x|z) a conditional
variational diffusion model (:class:`DiffusionDecoder`, :mod:`fastvae.models.noise_schedule`,
:mod:`fastvae.models.denoisers`) whose bound replaces −log p(x|z).
* ``'hierarchical'``: :class:`HierarchicalVAE`, stochastic layers with top-down inference.
* ``'deep'``: :class:`DeepVAE`, a VDVAE/NVAE-class convolutional hierarchy of many latent groups.
* ``'discrete'``: :class:`DiscreteVAE`, Gumbel-softmax categorical latents.

Priors (:mod:`fastvae.models.priors`): standard normal, a learned mixture of Gaussians,
the VampPrior, an autoregressive (MADE) prior (:mod:`fastvae.models.autoregressive_prior`).
Objectives: the ELBO; the IWAE with K samples, optionally with DReG; the ELBO with the
encoder trained by the score-function (REINFORCE) gradient and a control variate
(:mod:`fastvae.models.score_function`; mlp, conv, discrete).
"""
from .base import MODELS, VAE, VAEOutput, build_model, register_model
from .conv import ConvVAE
from .deep import DeepVAE
from .denoisers import MLPDenoiser, UNetDenoiser
from .diffusion_decoder import DiffusionDecoder, DiffusionTerms
from .discrete import DiscreteVAE, anneal_temperature
from .hierarchical import HierarchicalVAE
from .mlp import MLPVAE
from .noise_schedule import FixedLinearSchedule, LearnedSchedule, NoiseSchedule
from .objectives import OBJECTIVES
from .autoregressive_prior import AutoregressivePrior
from .priors import PRIORS, MixtureOfGaussiansPrior, Prior, StandardNormalPrior, VampPrior, make_prior
from .score_function import BASELINES, LearningSignalBaseline

__all__ = [
    "VAE", "VAEOutput", "MODELS", "register_model", "build_model", "MLPVAE", "ConvVAE", "HierarchicalVAE", "DeepVAE",
    "DiscreteVAE", "anneal_temperature", "Prior", "StandardNormalPrior", "MixtureOfGaussiansPrior", "VampPrior",
    "make_prior", "PRIORS", "OBJECTIVES", "BASELINES", "LearningSignalBaseline", "AutoregressivePrior",
    "DiffusionDecoder", "DiffusionTerms", "MLPDenoiser", "UNetDenoiser", "NoiseSchedule", "FixedLinearSchedule",
    "LearnedSchedule",
]
