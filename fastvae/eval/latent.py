"""How a model uses its latent space: active units, KL per dimension, and the mutual
information between the data and the latent code."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..ops.latent import reparameterize
from ._common import (
    check_model,
    check_nonnegative_float,
    check_seed,
    evaluating,
    iterate_batches,
    num_data_points,
)
from .likelihood import elbo_estimate

# Elements of one block of the [N, N] matrix of log q(z_i|x_j) (float64): 128 MiB.
_PAIR_BLOCK = 1 << 24


class _StreamingVariance:
    """Per-column mean and variance of batches of rows, combined with Chan et al.'s
    pairwise update in float64: no rows are stored and no large sums cancel."""

    def __init__(self):
        self.count = 0
        self.mean = None
        self.m2 = None

    def add(self, rows: Tensor) -> None:
        rows = rows.double()
        count = rows.shape[0]
        mean = rows.mean(dim=0)
        m2 = ((rows - mean) ** 2).sum(dim=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def variance(self) -> Tensor:
        return self.m2 / (self.count - 1)


# Holds tensors: no field-wise ==, which would be ambiguous.
@dataclass(frozen=True, eq=False)
class ActiveUnits:
    """The active units of a model on a data set (Burda et al., 2016).

    Attributes:
        variance: [D] float64, Cov_x(E_q[z_d|x]) per latent dimension d (the unbiased
            variance over the data points of the posterior mean).
        threshold: a dimension is active when its variance exceeds this.

    Properties: ``active`` ([D] bool), ``count`` (the number active), ``latent_dim`` (D),
    and ``ranked`` (the dimensions from most to least variance, a list of ints).
    """

    variance: Tensor
    threshold: float

    @property
    def active(self) -> Tensor:
        return self.variance > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())

    @property
    def latent_dim(self) -> int:
        return self.variance.numel()

    @property
    def ranked(self) -> list:
        return torch.argsort(self.variance, descending=True, stable=True).tolist()


def active_units(
    model,
    data,
    threshold: float = 0.01,
    batch_size: int = 256,
    num_points: Optional[int] = None,
) -> ActiveUnits:
    r"""Count the latent dimensions the model uses: A_d = Cov_x(E_q[z_d|x]) > threshold
    (Burda et al., 2016, with threshold 0.01).  A dimension whose posterior mean does not
    move with x carries no information about x, whatever its KL.

    Streams over the data: the posterior means of each batch (``model.posterior_mean``)
    are folded into a running mean and sum of squared deviations in float64; nothing per
    data point is kept.

    Args:
        model: a :class:`fastvae.models.VAE`.
        data: a tensor [N, *data_shape] in [0, 1] or a Dataset (see
            :func:`fastvae.eval.iwae_estimate`); N >= 2.
        threshold: the variance above which a dimension is active (default 0.01).
        batch_size: data points per call.
        num_points: the first ``num_points`` data points only (default all).

    Returns:
        An :class:`ActiveUnits` with the per-dimension variance; ``.count`` is A_u.

    Example::

        >>> units = fastvae.eval.active_units(model, test_images)
        >>> print(f"{units.count} of {units.latent_dim} units active")
    """
    function = "active_units"
    model = check_model(function, model)
    threshold = check_nonnegative_float(function, "threshold", threshold)
    if num_data_points(function, data, num_points) < 2:
        raise ValueError(f"fastvae.eval.{function}: a variance over the data needs at least 2 data points")
    stats = _StreamingVariance()
    # The posterior mean is deterministic; the seed only keeps any model-side noise fixed.
    with evaluating(model, seed=0) as device:
        for x in iterate_batches(function, data, batch_size, device, num_points, getattr(model, "data_shape", None)):
            means = model.posterior_mean(x)
            if means.dim() != 2 or means.shape[0] != x.shape[0]:
                raise ValueError(
                    f"fastvae.eval.{function}: model.posterior_mean returned shape {tuple(means.shape)}; "
                    f"the contract is [batch, latent_dim]"
                )
            stats.add(means.cpu())
    return ActiveUnits(stats.variance(), threshold)


def kl_per_dimension(
    model,
    data,
    batch_size: int = 256,
    num_points: Optional[int] = None,
    seed: Optional[int] = 0,
) -> Tensor:
    r"""The KL of each latent dimension, averaged over the data set: the batches'
    ``VAEOutput.kl_per_dim`` weighted by their sizes.

    A dimension with KL near 0 has collapsed to the prior.  For a [B, C, H, W] latent a
    dimension is a channel; for a hierarchical model the layers are concatenated.

    Args:
        model, data, batch_size, num_points, seed: as :func:`fastvae.eval.elbo_estimate`.

    Returns:
        [D] float64, nats per dimension (empty when the model reports none).

    Example::

        >>> kl = fastvae.eval.kl_per_dimension(model, test_images)
        >>> collapsed = (kl < 0.01).sum()
    """
    return elbo_estimate(model, data, batch_size, num_points, seed).kl_per_dim


def _log_normal_pairs(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """[b, N] log N(z_i; mu_j, e^logvar_j), summed over the D dimensions, for z [b, D] and
    mu, logvar [N, D] (float64).  The quadratic form is expanded into matrix products,
    which float64 keeps accurate, so no [b, N, D] tensor is built."""
    precision = torch.exp(-logvar)
    quadratic = (
        (z * z) @ precision.T
        - 2.0 * z @ (mu * precision).T
        + (mu * mu * precision).sum(dim=1)
    )
    constant = z.shape[1] * math.log(2.0 * math.pi) + logvar.sum(dim=1)
    return -0.5 * (quadratic + constant)


def mutual_information(
    model,
    data,
    batch_size: int = 256,
    num_points: Optional[int] = None,
    seed: Optional[int] = 0,
) -> Optional[float]:
    r"""An estimate of the mutual information I(x; z) between the data and the latent
    code under the model's encoder, in nats (Hoffman & Johnson, 2016; He et al., 2019):

    I(x; z) = E_x E_{q(z|x)}[log q(z|x)] − E_x E_{q(z|x)}[log q(z)],

    with q(z) = (1/N) Σ_j q(z|x_j) the aggregate posterior of the N evaluated points.
    One z_i ~ q(z|x_i) is drawn per point, and the estimate is the mean over i of
    log q(z_i|x_i) − (logsumexp_j log q(z_i|x_j) − log N).  The first term uses the same
    sample (He et al.'s ``calc_mi`` uses the analytic entropy instead, equal in
    expectation) because the sum over j contains it: each term is then at most log N, so
    the estimate is too, and it is exactly 0 when q(z|x) does not depend on x.  It is
    biased (q(z) includes the point itself), reliably so only while it is well below
    log N; use the same N to compare models.

    Needs ``model.posterior_params`` (one diagonal Gaussian q(z|x) over the whole
    latent).  The posteriors of all N points are held ([N, D] each); the [N, N] matrix of
    log q(z_i|x_j) is computed in blocks of rows.

    Args:
        model, data, batch_size, num_points, seed: as :func:`fastvae.eval.elbo_estimate`.

    Returns:
        The estimate in nats (a float), or None when the model's posterior is not one
        diagonal Gaussian (``posterior_params`` returns None).

    Example::

        >>> mi = fastvae.eval.mutual_information(model, test_images, num_points=2000)
    """
    function = "mutual_information"
    model = check_model(function, model)
    seed = check_seed(function, seed)
    mus, logvars, samples = [], [], []
    with evaluating(model, seed) as device:
        for x in iterate_batches(function, data, batch_size, device, num_points, getattr(model, "data_shape", None)):
            params = model.posterior_params(x)
            if params is None:
                return None
            mu, logvar = params
            if mu.dim() != 2 or mu.shape != logvar.shape or mu.shape[0] != x.shape[0]:
                raise ValueError(
                    f"fastvae.eval.{function}: model.posterior_params returned shapes {tuple(mu.shape)} and "
                    f"{tuple(logvar.shape)}; the contract is two [batch, latent_dim] tensors"
                )
            samples.append(reparameterize(mu.float(), logvar.float()).double().cpu())
            mus.append(mu.double().cpu())
            logvars.append(logvar.double().cpu())
    mu, logvar, z = torch.cat(mus), torch.cat(logvars), torch.cat(samples)
    count = mu.shape[0]
    rows = max(1, _PAIR_BLOCK // count)
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        log_q_pairs = _log_normal_pairs(z[start:stop], mu, logvar)  # [b, N]
        log_q_own = log_q_pairs[torch.arange(stop - start), torch.arange(start, stop)]
        log_q_aggregate = torch.logsumexp(log_q_pairs, dim=1) - math.log(count)
        total += (log_q_own - log_q_aggregate).sum()
    return (total / count).item()
