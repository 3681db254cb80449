"""Public functional ops, one module per family (latent, iwae, discrete, location_scale, truncated_normal, ...)."""
from .latent import gaussian_kl, reparameterize, sample_gaussian
from .iwae import iwae_bound, log_mean_exp, sample_gaussian_k
from .discrete import sample_categorical
from .likelihood import bernoulli_mean, bernoulli_nll, bernoulli_sample, bits_per_dim, continuous_bernoulli_mean, continuous_bernoulli_nll, continuous_bernoulli_sample, gaussian_mean, gaussian_nll, gaussian_sample  # noqa: E501
from .location_scale import sample_cauchy, sample_laplace, sample_logistic
from .truncated_normal import sample_truncated_normal
from .diffusion import Diffused, diffuse, diffusion_loss
from .logistic import discretized_logistic_mean, discretized_logistic_mixture_mean, discretized_logistic_mixture_nll, discretized_logistic_mixture_sample, discretized_logistic_nll, discretized_logistic_sample  # noqa: E501

__all__ = ["reparameterize", "gaussian_kl", "sample_gaussian", "sample_gaussian_k", "log_mean_exp", "iwae_bound", "sample_categorical",
           "bernoulli_nll", "continuous_bernoulli_nll", "gaussian_nll", "bits_per_dim", "bernoulli_sample", "bernoulli_mean",
           "continuous_bernoulli_sample", "continuous_bernoulli_mean", "gaussian_sample", "gaussian_mean",
           "discretized_logistic_nll", "discretized_logistic_mixture_nll", "discretized_logistic_sample", "discretized_logistic_mean",
           "discretized_logistic_mixture_sample", "discretized_logistic_mixture_mean",
           "sample_laplace", "sample_logistic", "sample_cauchy", "sample_truncated_normal",
           "Diffused", "diffuse", "diffusion_loss"]
