"""How far to trust the numbers of a VAE whose p(x|z) is a diffusion decoder
(:class:`fastvae.models.diffusion_decoder.DiffusionDecoder`).

Its −log p(x|z) is not computed but bounded, L_prior + L_diffusion + L_recon, and
L_diffusion is estimated with S draws of t (and ε) per data point.  So the ELBO is a
bound whose estimate is unbiased, and the IWAE estimate is a bound on a bound: the
importance-weighted bound of the model with log p(x|z) replaced by −(its diffusion bound).
The noise of the diffusion term's estimate enters the IWAE's log-weights; the K latents of
a point share their draws of t, ε and z_0 (``SingleLatentVAE._log_likelihood``), so what
they share shifts log p̂(x) by a zero-mean amount, and only the part that differs between
latents biases it, upward.  :func:`diffusion_bound_spread` measures both parts.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._common import check_model, check_positive_int, check_seed, evaluating, iterate_batches


def has_diffusion_decoder(model) -> bool:
    """Whether ``model`` is a VAE with a diffusion decoder (``model.diffusion`` set)."""
    return getattr(model, "diffusion", None) is not None


def diffusion_bound_spread(model, data, num_repeats: int = 8, batch_size: int = 100, num_points: Optional[int] = 100,
                           seed: Optional[int] = 0) -> dict:
    r"""The diffusion decoder's bound terms and the spread of its estimate, on the first
    ``num_points`` points.

    For each point, two latents z_1, z_2 ~ q(z|x) are drawn once; then ``num_repeats``
    times, fresh draws of t, ε and z_0 (shared by z_1 and z_2, as the IWAE shares them) give
    the estimate L̂ of L_diffusion with the model's S t-samples at each.  Per point, the
    standard deviation over the repeats of L̂(z_1) is the noise of one log-weight's bound;
    that of L̂(z_1) − L̂(z_2), the part of it that differs between latents (what biases the
    importance-weighted estimate).  Each is reported as the root mean square over points.

    Args:
        model: a :class:`fastvae.models.VAE` with a diffusion decoder (``model.diffusion``).
        data: a tensor [N, *data_shape] in [0, 1] or a Dataset.
        num_repeats: R >= 2, the independent estimates per point.
        batch_size: data points per call.
        num_points: the first points only (None: all).
        seed: seeds every draw.

    Returns:
        A dict: ``diffusion_t_samples`` (S), ``diffusion_prior``, ``diffusion_loss``,
        ``diffusion_reconstruction`` (the terms' means over points, repeats and latents,
        nats), ``diffusion_loss_std`` and ``diffusion_loss_std_between_latents`` (nats),
        ``diffusion_spread_num_points``, ``diffusion_spread_repeats``.

    Example::

        >>> spread = fastvae.eval.diffusion_bound_spread(model, test_images, num_points=100)
        >>> spread["diffusion_loss_std"]
    """
    function = "diffusion_bound_spread"
    model = check_model(function, model)
    if not has_diffusion_decoder(model):
        raise ValueError(f"fastvae.eval.{function}: the model has no diffusion decoder (likelihood 'diffusion')")
    num_repeats = check_positive_int(function, "num_repeats", num_repeats)
    if num_repeats < 2:
        raise ValueError(f"fastvae.eval.{function}: num_repeats must be >= 2 (a spread needs two estimates), "
                         f"got {num_repeats}")
    seed = check_seed(function, seed)
    sums = {"prior": 0.0, "diffusion": 0.0, "reconstruction": 0.0}
    variance_sum, difference_variance_sum, count = 0.0, 0.0, 0
    with evaluating(model, seed) as device:
        for x in iterate_batches(function, data, batch_size, device, num_points, model.data_shape):
            mu, logvar = model.encode(x)
            z, _, _ = model.prior.sample_k(mu, logvar, 2)
            context = model.decoder_params(z.flatten(0, 1))
            context = context.view((2, x.shape[0]) + tuple(context.shape[1:]))
            estimates = []
            for _ in range(num_repeats):
                terms = model.diffusion.shared_noise_terms(x, z, context)
                estimates.append(terms.diffusion.double().cpu())
                for name in sums:
                    sums[name] += getattr(terms, name).double().sum().item()
            estimates = torch.stack(estimates)  # [R, 2, B]
            variance_sum += estimates[:, 0].var(0).sum().item()
            difference_variance_sum += (estimates[:, 0] - estimates[:, 1]).var(0).sum().item()
            count += x.shape[0]
    draws = count * num_repeats * 2
    return {
        "diffusion_t_samples": int(model.diffusion.t_samples),
        "diffusion_prior": sums["prior"] / draws,
        "diffusion_loss": sums["diffusion"] / draws,
        "diffusion_reconstruction": sums["reconstruction"] / draws,
        "diffusion_loss_std": math.sqrt(variance_sum / count),
        "diffusion_loss_std_between_latents": math.sqrt(difference_variance_sum / count),
        "diffusion_spread_num_points": count,
        "diffusion_spread_repeats": num_repeats,
    }
