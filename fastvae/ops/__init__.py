"""Public functional ops, one module per family (latent, iwae, discrete)."""
from .latent import gaussian_kl, reparameterize, sample_gaussian
from .iwae import iwae_bound, log_mean_exp, sample_gaussian_k
from .discrete import sample_categorical

__all__ = ["reparameterize", "gaussian_kl", "sample_gaussian", "sample_gaussian_k", "log_mean_exp", "iwae_bound", "sample_categorical"]
