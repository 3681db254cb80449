"""``nn.Module`` wrappers of fastvae's ops: latent layers, likelihood heads and the ELBO.

Models (:mod:`fastvae.models`) are built from these; each layer makes one fused op call.
"""
from .latent import (CategoricalLatent, CategoricalLatentOutput, GaussianLatent, GaussianLatentOutput, free_bits_kl,
                     kl_per_dimension, sample_latent)
from .likelihood import (LIKELIHOODS, BernoulliLikelihood, ContinuousBernoulliLikelihood,
                         DiscretizedLogisticLikelihood, DiscretizedLogisticMixtureLikelihood, GaussianLikelihood,
                         Likelihood, make_likelihood)
from .elbo import ELBO
from .committed_rate import committed_logvar, committed_logvar_bound, committed_rate_variances

__all__ = [
    "GaussianLatent", "GaussianLatentOutput", "CategoricalLatent", "CategoricalLatentOutput", "sample_latent",
    "free_bits_kl", "kl_per_dimension", "Likelihood", "BernoulliLikelihood", "ContinuousBernoulliLikelihood",
    "GaussianLikelihood", "DiscretizedLogisticLikelihood", "DiscretizedLogisticMixtureLikelihood", "LIKELIHOODS",
    "make_likelihood", "ELBO", "committed_rate_variances", "committed_logvar_bound", "committed_logvar",
]
