"""Evaluation of trained VAEs: how good a model really is, and pictures of it.

- :func:`iwae_estimate` / :func:`iwae_log_likelihood`: the importance-weighted estimate
  of log p(x) with K samples (Burda et al., 2016), batched over K; :func:`elbo_estimate`,
  :func:`elbo_gap`, :func:`bits_per_dim`.
- :func:`active_units`, :func:`kl_per_dimension`, :func:`mutual_information`: how the
  latent space is used.
- :mod:`~fastvae.eval.pictures`: sample grids, reconstructions, latent traversals, KL per
  dimension, training curves, as PNG (:func:`write_png` needs no imaging library).
- :func:`has_latent_groups`, :func:`group_active_units`, :func:`group_diagnostics`: the
  KL and the active units (elements of its latent map) of each latent group of a deep
  hierarchical model; :func:`save_samples_by_temperature`,
  :func:`save_group_reconstructions` and :func:`plot_kl_per_group` picture them.
- :func:`sweep_betas`, :func:`plot_rate_distortion`: the rate–distortion trade-off.
- :func:`gradient_variance`, :func:`write_gradient_variance`: the variance of the
  encoder's gradient estimators (reparameterized, Gumbel-softmax, score function with
  and without baselines) on a fixed batch.
- :func:`diffusion_bound_spread`: a diffusion decoder's bound terms and the noise of their
  estimate (:mod:`fastvae.eval.diffusion`).
- :func:`evaluate` and :func:`write_report`: everything at once, and report.md;
  :func:`provenance`: backend, device (:func:`device_name`), versions and parameter count; the meaning of
  every key of :func:`evaluate`'s results is :data:`fastvae.eval.report.FIELDS`.
"""
from .diffusion import diffusion_bound_spread, has_diffusion_decoder
from .gradvar import (GradientStatistics, GradientVariance, gradient_variance, plot_gradient_variance,
                      write_gradient_variance)
from .groups import GroupActiveUnits, group_active_units, group_diagnostics, has_latent_groups, spread_group_counts
from .latent import ActiveUnits, active_units, kl_per_dimension, mutual_information
from .likelihood import (
    ELBOEstimate,
    IWAEEstimate,
    bits_per_dim,
    elbo_estimate,
    elbo_gap,
    iwae_estimate,
    iwae_log_likelihood,
)
from .pictures import (
    as_images,
    image_grid,
    plot_kl_per_dim,
    plot_kl_per_group,
    plot_training_curves,
    read_training_curves,
    save_image_grid,
    save_group_reconstructions,
    save_latent_traversals,
    save_pictures,
    save_reconstructions,
    save_samples,
    save_samples_by_temperature,
)
from .png import encode_png, to_uint8, write_png
from .rate_distortion import RatePoint, plot_rate_distortion, rate_distortion_point, sweep_betas
from .report import device_name, evaluate, provenance, write_report

__all__ = [
    "IWAEEstimate", "ELBOEstimate", "iwae_estimate", "iwae_log_likelihood", "elbo_estimate", "elbo_gap",
    "bits_per_dim", "ActiveUnits", "active_units", "kl_per_dimension", "mutual_information",
    "as_images", "image_grid", "save_image_grid", "save_samples", "save_reconstructions",
    "save_latent_traversals", "plot_kl_per_dim", "read_training_curves", "plot_training_curves",
    "save_pictures", "has_latent_groups", "GroupActiveUnits", "group_active_units",
    "group_diagnostics", "spread_group_counts", "plot_kl_per_group",
    "save_samples_by_temperature", "save_group_reconstructions", "encode_png", "write_png", "to_uint8",
    "RatePoint", "rate_distortion_point",
    "sweep_betas", "plot_rate_distortion", "evaluate", "provenance", "device_name", "write_report",
    "GradientStatistics", "GradientVariance", "gradient_variance", "plot_gradient_variance", "write_gradient_variance",
    "diffusion_bound_spread", "has_diffusion_decoder",
]
