r"""Training objectives shared by the models: the checks of their settings, the
importance-weighted bound with a KL weight, and the doubly reparameterized gradient.

IWAE (Burda et al. 2016): with K samples z_k ~ q(z|x) and log-weights
log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), the bound is
log (1/K) Σ_k w_k, computed by ``fastvae.iwae_bound``.  A KL weight β (a warm-up schedule)
tempers the latent terms: log w_k = log p(x|z_k) + β·(log p(z_k) − log q(z_k|x)); β = 1 is
the IWAE.

DReG (Tucker et al. 2018): the IWAE gradient of the encoder is noisy because the score
term ∂log q/∂φ does not vanish as K grows.  The doubly reparameterized estimator replaces
it: the encoder gets Σ_k w̃_k² · ∂log w_k/∂z_k · ∂z_k/∂φ, with w̃ the normalized weights and
log q evaluated with its parameters held fixed (gradient through z only); the decoder and
the prior keep the IWAE gradient Σ_k w̃_k ∇ log w_k.  It is implemented by the surrogate
trick: the loss is the IWAE bound (whose gradient to each log w_k is w̃_k) with log q's
parameters detached, and a gradient hook on z multiplies what reaches z by w̃_k once more.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from .base import VAEOutput
from .layers import check_number, positive_int

OBJECTIVES = ("elbo", "iwae", "score_function")


def check_objective(where: str, objective, num_samples, dreg, dreg_supported: bool = True,
                    score_function_supported: bool = False) -> tuple[str, int, bool]:
    """Validate (objective, num_samples, dreg) of a model's config; 'score_function' (the
    REINFORCE gradient of the ELBO, :mod:`fastvae.models.score_function`) only where the
    model implements it."""
    supported = OBJECTIVES if score_function_supported else tuple(o for o in OBJECTIVES if o != "score_function")
    if objective not in supported:
        raise ValueError(f"{where}: objective must be one of {list(supported)}, got {objective!r}")
    num_samples = positive_int(where, "num_samples", num_samples)
    if not isinstance(dreg, bool):
        raise TypeError(f"{where}: dreg must be a bool, got {type(dreg).__name__}")
    if dreg and objective != "iwae":
        raise ValueError(f"{where}: dreg=True is a gradient estimator of the IWAE; set objective='iwae'")
    if dreg and not dreg_supported:
        raise ValueError(
            f"{where}: dreg=True needs q's parameters to be held fixed apart from z, which a hierarchical "
            f"posterior (whose lower layers' parameters depend on the upper layers' z) does not allow; use dreg=False"
        )
    return objective, num_samples, dreg


def check_forward_args(where: str, beta, free_bits, objective: str) -> tuple[float, float]:
    """beta >= 0 and free_bits >= 0 (free bits only with the ELBO)."""
    if isinstance(beta, Tensor):
        beta = float(beta)
    beta = check_number(where, "beta", beta)
    free_bits = check_number(where, "free_bits", free_bits)
    if free_bits and objective != "elbo":
        raise ValueError(
            f"{where}: free bits hold the KL of each latent dimension in the ELBO; the '{objective}' objective "
            f"has no per-dimension KL term, so use free_bits=0"
        )
    return beta, free_bits


def tempered_iwae_bound(log_px_z: Tensor, log_p: Tensor, log_q: Tensor, beta: float = 1.0) -> Tensor:
    """[B] log (1/K) Σ_k exp(log p(x|z_k) + β·(log p(z_k) − log q(z_k|x))), from [K, B]
    terms; β = 1 is ``fastvae.iwae_bound``."""
    if beta != 1.0:
        log_p, log_q = beta * log_p, beta * log_q
    return ops.iwae_bound(log_px_z, log_p, log_q)


def layered_iwae_output(log_px_z: Tensor, log_p: Tensor, log_q: Tensor, kls: list, beta: float) -> VAEOutput:
    """The IWAE objective's :class:`fastvae.models.VAEOutput` of a model with several
    latent layers or groups, from its [K, B] log p(x|z), log p(z), log q(z|x) (summed over
    the layers) and ``kls``, each layer's [B, D_i] analytic KL per dimension averaged over
    the K samples: the loss is the tempered bound's batch mean; elbo, nll and kl report the
    mean reconstruction term and the analytic KL; extras["iwae"] the bound at β = 1."""
    bound = tempered_iwae_bound(log_px_z, log_p, log_q, beta)
    with torch.no_grad():
        nll = -log_px_z.mean(0)
        kl_by_dim = torch.cat(kls, dim=1)
        kl = kl_by_dim.sum(1)
        iwae = bound.detach() if beta == 1.0 else ops.iwae_bound(log_px_z, log_p, log_q)
    return VAEOutput(loss=-bound.mean(), elbo=(-(nll + kl)).float(), nll=nll.float(), kl=kl.float(),
                     kl_per_dim=kl_by_dim.mean(0).float(), extras={"iwae": iwae.float()})


def doubly_reparameterize(z: Tensor, log_weights: Tensor) -> None:
    """Make the gradient that reaches the samples z ([K, B, ...]) be multiplied by the
    normalized importance weights w̃ = softmax_k(log_weights) ([K, B], detached): with a
    loss whose gradient to log w_k is w̃_k (the IWAE bound), the encoder then receives
    Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ (DReG).  Does nothing when z needs no gradient."""
    if not z.requires_grad:
        return
    weights = torch.softmax(log_weights.detach().float(), dim=0)
    weights = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))

    def scale(grad: Tensor) -> Tensor:
        return grad * weights.to(grad.dtype)

    z.register_hook(scale)


def repeat_batch(x: Tensor, num_samples: int) -> Tensor:
    """[B, ...] → [K·B, ...]: x repeated for each of K samples, sample-major (row k·B + b
    is data point b), as a decoder run on z.flatten(0, 1) sees it."""
    repeated = x.unsqueeze(0).expand((num_samples,) + tuple(x.shape))
    return repeated.reshape((num_samples * x.shape[0],) + tuple(x.shape[1:]))
