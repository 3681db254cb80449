"""The importance-weighted estimate of log p(x), the model's ELBO over a data set, the
gap between them, and bits per dimension.

The estimate is Burda et al.'s (2016):
log p̂(x) = log (1/K) Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x), for K samples per data
point (K = 5000 in the papers).  It is batched over data points and over K: each call of
``model.log_importance_weights`` draws a chunk of samples for a whole batch, and the
chunks' log-sum-exps are combined exactly in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence, Union

import torch
from torch import Tensor

from ._common import (
    check_model,
    check_positive_int,
    check_seed,
    evaluating,
    iterate_batches,
    mean_and_stderr,
)

# Rows (samples × data points) one log_importance_weights call is asked for when the
# caller does not choose a chunk: a 784-200-200-50 decoder then holds ~0.3 GB of
# activations, which fits a GPU and a laptop alike.
_ROWS_PER_CALL = 65536


class _LogMeanExp:
    """log (1/K) Σ_k exp(w_k) and (1/K) Σ_k w_k per data point, accumulated over chunks of
    samples in float64.

    The state is the running maximum and the sum of exp(w − running maximum); a chunk with
    a larger maximum rescales the sum before adding its own terms.  This is the arithmetic
    of one logsumexp over all K, so splitting K changes the result only by float64
    rounding."""

    def __init__(self, num_points: int, device: torch.device):
        self.shift = torch.full((num_points,), -math.inf, dtype=torch.float64, device=device)
        self.scaled_sum = torch.zeros(num_points, dtype=torch.float64, device=device)
        self.sum = torch.zeros(num_points, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, log_weights: Tensor) -> None:
        log_weights = log_weights.double()
        chunk_max = log_weights.max(dim=0).values
        new_shift = torch.maximum(self.shift, chunk_max)
        # A point whose weights are all −inf so far keeps shift −inf; exp(−inf − −inf)
        # would be NaN, so such points shift by 0 instead (their sums are 0 anyway).
        safe_shift = torch.where(torch.isfinite(new_shift), new_shift, torch.zeros_like(new_shift))
        rescale = torch.exp(self.shift - safe_shift)
        self.scaled_sum = self.scaled_sum * rescale + torch.exp(log_weights - safe_shift).sum(dim=0)
        self.shift = new_shift
        self.sum += log_weights.sum(dim=0)
        self.count += log_weights.shape[0]

    def result(self) -> tuple[Tensor, Tensor]:
        """(log mean exp, mean), both [num_points] float64."""
        mean = self.sum / self.count
        safe_shift = torch.where(torch.isfinite(self.shift), self.shift, torch.zeros_like(self.shift))
        log_mean_exp = safe_shift + torch.log(self.scaled_sum) - math.log(self.count)
        # Jensen: log mean exp ≥ mean exactly; only rounding (a few ulps, e.g. when all K
        # weights are equal) can put the computed value below, so hold it at the mean.
        return torch.maximum(log_mean_exp, mean), mean


class _PerPointEstimate:
    """``num_points``, ``mean`` and ``stderr`` (over data points) of the per-point field
    that ``_per_point`` names."""

    _per_point: ClassVar[str]

    @property
    def num_points(self) -> int:
        return getattr(self, self._per_point).numel()

    @property
    def mean(self) -> float:
        return mean_and_stderr(getattr(self, self._per_point))[0]

    @property
    def stderr(self) -> float:
        return mean_and_stderr(getattr(self, self._per_point))[1]


# Holds tensors: no field-wise ==, which would be ambiguous.
@dataclass(frozen=True, eq=False)
class IWAEEstimate(_PerPointEstimate):
    """The importance-weighted estimate of log p(x) over a data set, and the ELBO
    estimated from the same log-weights.

    Attributes:
        log_likelihood: [N] float64, log p̂(x) per data point in nats.
        mean_log_weight: [N] float64, the mean of the same K log-weights: an unbiased
            K-sample estimate of the ELBO, never above ``log_likelihood``.
        num_samples: K, the importance samples per data point.

    Properties give ``num_points`` (N), ``mean`` and ``stderr`` of log p̂(x) (the
    standard error over data points), ``nll`` (−mean), and ``elbo_mean`` /
    ``elbo_stderr`` of the mean log-weight.
    """

    log_likelihood: Tensor
    mean_log_weight: Tensor
    num_samples: int
    _per_point: ClassVar[str] = "log_likelihood"

    @property
    def nll(self) -> float:
        return -self.mean

    @property
    def elbo_mean(self) -> float:
        return mean_and_stderr(self.mean_log_weight)[0]

    @property
    def elbo_stderr(self) -> float:
        return mean_and_stderr(self.mean_log_weight)[1]


def iwae_estimate(
    model,
    data,
    num_samples: int = 5000,
    batch_size: int = 100,
    sample_chunk: Optional[int] = None,
    num_points: Optional[int] = None,
    seed: Optional[int] = 0,
) -> IWAEEstimate:
    r"""Importance-weighted estimate of log p(x) with K = ``num_samples`` samples per data
    point (Burda et al., 2016), and the mean of the same log-weights (an ELBO estimate),
    from one pass.

    log p̂(x) = logsumexp_k(log p(x, z_k) − log q(z_k|x)) − log K, z_k ~ q(z|x).  The
    log-weights come from ``model.log_importance_weights(x, k)`` for a whole batch at a
    time, ``sample_chunk`` samples per call, so memory is bounded while K grows; the
    chunks are combined in float64 with a running maximum (exactly the logsumexp over all
    K, up to float64 rounding).  log p̂(x) is never below the mean log-weight, point by
    point (Jensen's inequality; rounding is corrected).

    Args:
        model: a :class:`fastvae.models.VAE`; run in eval mode without gradients, its
            training flag restored afterwards.
        data: a tensor [N, *data_shape] of float32 in [0, 1], or a Dataset of such
            points (one with a ``batch(indices)`` method is read a batch at a time).
        num_samples: K (5000 is the papers' setting).
        batch_size: data points per call.
        sample_chunk: samples per call (default: as many as keep
            ``batch_size · sample_chunk`` at 65536, or at the model's
            ``iwae_rows_per_call`` when it has one, at least 1 and at most K).
        num_points: evaluate the first ``num_points`` data points only (default all).
        seed: seeds the random streams for the evaluation, so the same seed gives the
            same estimate bit for bit; the caller's random state is left as it was.
            None draws from the current state.

    Returns:
        An :class:`IWAEEstimate` with per-point log p̂(x) and mean log-weights, [N]
        float64 in nats, and K.

    Example::

        >>> result = fastvae.eval.iwae_estimate(model, test_images, num_samples=5000)
        >>> print(f"test NLL {result.nll:.2f} ± {result.stderr:.2f} nats "
        ...       f"(K={result.num_samples}, {result.num_points} points)")
    """
    function = "iwae_estimate"
    model = check_model(function, model)
    num_samples = check_positive_int(function, "num_samples", num_samples)
    batch_size = check_positive_int(function, "batch_size", batch_size)
    sample_chunk = check_positive_int(function, "sample_chunk", sample_chunk, allow_none=True)
    seed = check_seed(function, seed)
    if sample_chunk is None:
        # A model whose rows are costly (a convolutional hierarchy's activations) says how
        # many it takes per call.
        rows = getattr(model, "iwae_rows_per_call", None) or _ROWS_PER_CALL
        sample_chunk = max(1, rows // batch_size)
    sample_chunk = min(sample_chunk, num_samples)

    log_likelihood, mean_log_weight = [], []
    with evaluating(model, seed) as device:
        for x in iterate_batches(function, data, batch_size, device, num_points, getattr(model, "data_shape", None)):
            accumulator = _LogMeanExp(x.shape[0], device)
            for start in range(0, num_samples, sample_chunk):
                chunk = min(sample_chunk, num_samples - start)
                log_weights = model.log_importance_weights(x, chunk)
                if tuple(log_weights.shape) != (chunk, x.shape[0]):
                    raise ValueError(
                        f"fastvae.eval.{function}: model.log_importance_weights(x, {chunk}) returned shape "
                        f"{tuple(log_weights.shape)}; the contract is [num_samples, batch] = {(chunk, x.shape[0])}"
                    )
                if (torch.isnan(log_weights) | torch.isposinf(log_weights)).any():
                    raise ValueError(f"fastvae.eval.{function}: model.log_importance_weights returned NaN or +inf")
                accumulator.add(log_weights)
            point_estimate, point_mean = accumulator.result()
            log_likelihood.append(point_estimate.cpu())
            mean_log_weight.append(point_mean.cpu())
    return IWAEEstimate(torch.cat(log_likelihood), torch.cat(mean_log_weight), num_samples)


def iwae_log_likelihood(
    model,
    data,
    num_samples: int = 5000,
    batch_size: int = 100,
    sample_chunk: Optional[int] = None,
    num_points: Optional[int] = None,
    seed: Optional[int] = 0,
) -> Tensor:
    r"""The importance-weighted estimate log p̂(x) per data point, [N] float64, in nats.

    :func:`iwae_estimate`'s ``log_likelihood``; see it for the arguments.  Use
    :func:`iwae_estimate` to get the ELBO from the same log-weights and the standard error.

    Example::

        >>> log_px = fastvae.eval.iwae_log_likelihood(model, test_images, num_samples=5000)
        >>> nll = -log_px.mean()
    """
    return iwae_estimate(model, data, num_samples, batch_size, sample_chunk, num_points, seed).log_likelihood


# Holds tensors: no field-wise ==, which would be ambiguous.
@dataclass(frozen=True, eq=False)
class ELBOEstimate(_PerPointEstimate):
    """The model's own ELBO over a data set: one forward pass per batch with β = 1 and no
    free bits.

    Attributes:
        elbo, nll, kl: [N] float64 per data point, in nats (``VAEOutput``'s fields; the
            ELBO is −nll − kl from one sample of q(z|x)).
        kl_per_dim: [D] float64, the data-set mean KL of each latent dimension (the
            batches' ``kl_per_dim`` weighted by their sizes); empty when the model has none.

    ``num_points``, ``mean`` and ``stderr`` (of the ELBO) are properties.
    """

    elbo: Tensor
    nll: Tensor
    kl: Tensor
    kl_per_dim: Tensor
    _per_point: ClassVar[str] = "elbo"


def elbo_estimate(
    model,
    data,
    batch_size: int = 256,
    num_points: Optional[int] = None,
    seed: Optional[int] = 0,
) -> ELBOEstimate:
    r"""The model's ELBO, reconstruction nll and KL per data point, and the KL of each
    latent dimension averaged over the data set, from ``model(x)`` (β = 1, no free bits).

    Args:
        model: a :class:`fastvae.models.VAE` (run in eval mode without gradients).
        data: a tensor [N, *data_shape] in [0, 1] or a Dataset (see :func:`iwae_estimate`).
        batch_size: data points per forward pass.
        num_points: the first ``num_points`` data points only (default all).
        seed: seeds the samples of q(z|x) (None: the current random state).

    Returns:
        An :class:`ELBOEstimate`: elbo, nll and kl [N] float64 and kl_per_dim [D] float64.

    Example::

        >>> result = fastvae.eval.elbo_estimate(model, test_images)
        >>> result.mean, result.kl.mean(), result.kl_per_dim
    """
    function = "elbo_estimate"
    model = check_model(function, model)
    seed = check_seed(function, seed)
    elbo, nll, kl = [], [], []
    kl_per_dim_sum, total = None, 0
    with evaluating(model, seed) as device:
        for x in iterate_batches(function, data, batch_size, device, num_points, getattr(model, "data_shape", None)):
            output = model(x)
            elbo.append(output.elbo.detach().double().cpu())
            nll.append(output.nll.detach().double().cpu())
            kl.append(output.kl.detach().double().cpu())
            # kl_per_dim is a batch mean: weighting by the batch size makes a short last
            # batch count for what it holds.
            weighted = output.kl_per_dim.detach().double().cpu() * x.shape[0]
            kl_per_dim_sum = weighted if kl_per_dim_sum is None else kl_per_dim_sum + weighted
            total += x.shape[0]
    return ELBOEstimate(torch.cat(elbo), torch.cat(nll), torch.cat(kl), kl_per_dim_sum / total)


def elbo_gap(log_likelihood: Tensor, elbo: Tensor) -> Tensor:
    r"""The ELBO gap per data point, log p̂(x) − ELBO(x), in nats: how much the bound the
    model trains on falls short of the likelihood (the KL from q(z|x) to the true
    posterior, as far as the K-sample estimate resolves it).

    :func:`fastvae.eval.evaluate` passes :attr:`IWAEEstimate.mean_log_weight`, the ELBO
    of the same points from the same K log-weights: the gap is then never negative, and
    its ELBO has a K-sample estimate's noise.  The model's own one-sample ELBO
    (:func:`elbo_estimate`, the quantity training reports) estimates the same ELBO with
    more noise; with it, per-point gaps may be negative (their mean is not, in
    expectation).

    Args:
        log_likelihood: [N] log p̂(x) (e.g. :func:`iwae_log_likelihood`).
        elbo: [N] the ELBO of the same data points, in the same order.

    Returns:
        [N] float64.

    Example::

        >>> iwae = fastvae.eval.iwae_estimate(model, x, num_samples=1000)
        >>> gap = fastvae.eval.elbo_gap(iwae.log_likelihood, fastvae.eval.elbo_estimate(model, x).elbo)
    """
    for name, tensor in (("log_likelihood", log_likelihood), ("elbo", elbo)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"fastvae.eval.elbo_gap: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 1:
            raise ValueError(f"fastvae.eval.elbo_gap: {name} must have shape [N], got {tuple(tensor.shape)}")
    if log_likelihood.shape != elbo.shape:
        raise ValueError(
            f"fastvae.eval.elbo_gap: log_likelihood has {log_likelihood.numel()} points but elbo has "
            f"{elbo.numel()}; pass the same data points to both"
        )
    return log_likelihood.double() - elbo.double().to(log_likelihood.device)


def bits_per_dim(nll: Union[float, Tensor], data_shape: Sequence[int]) -> Union[float, Tensor]:
    r"""A negative log-likelihood in nats per data point as bits per dimension:
    nll / (ln 2 · D), D the number of elements of one data point, as
    :func:`fastvae.bits_per_dim` (which reads D from a batch rather than a shape).

    Args:
        nll: nats per data point, a float or a tensor of any shape.
        data_shape: the shape of one data point, e.g. ``(784,)`` or ``(3, 32, 32)``.

    Returns:
        Bits per dimension, a float or nll's shape.

    Example::

        >>> fastvae.eval.bits_per_dim(-iwae.mean, model.data_shape)
    """
    dims = math.prod(int(d) for d in data_shape)
    if dims < 1:
        raise ValueError(f"fastvae.eval.bits_per_dim: data_shape {tuple(data_shape)} has no elements")
    return nll / (math.log(2.0) * dims)
