"""Latent layers: a Gaussian head (sampling and KL fused by ``fastvae.sample_gaussian``) and
a categorical head (Gumbel-softmax by ``fastvae.sample_categorical``).

Each layer's forward makes ONE fused op call with ``reduction='none'``; the true KL per
sample, the KL per latent dimension and the free-bits objective are then cheap torch
reductions of those per-element terms, rather than three passes of the kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from .committed_rate import _check_delta, committed_logvar


def _check_positive_int(where: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1, got {value}")
    return value


def _check_free_bits(where: str, free_bits) -> float:
    if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)):
        raise TypeError(f"{where}: free_bits must be a Python number >= 0, got {type(free_bits).__name__}")
    if not (free_bits >= 0 and math.isfinite(free_bits)):
        raise ValueError(f"{where}: free_bits must be a finite number >= 0, got {free_bits}")
    return float(free_bits)


def kl_per_dimension(kl_terms: Tensor) -> Tensor:
    """Per-element KL terms [B, J, *spatial] (or [B, J]) → [B, J]: the KL of each latent
    dimension of each sample (a dimension of a [B, C, H, W] latent is a channel, summed
    over its positions)."""
    return kl_terms.flatten(2).sum(-1) if kl_terms.dim() > 2 else kl_terms


def free_bits_kl(kl_by_dim: Tensor, free_bits: float) -> Tensor:
    r"""The free-bits objective (Kingma et al. 2016) per sample, from the KL of each latent
    dimension of each sample.

    A dimension j whose batch mean KL, mean_b KL_bj, is below ``free_bits`` is held: each
    sample's KL_bj is replaced by the constant ``free_bits`` (no gradient); the others keep
    their KL.  So the batch mean of the result is Σ_j max(free_bits, mean_b KL_bj), the same
    objective as ``fastvae.gaussian_kl(..., free_bits=...)``.

    Args:
        kl_by_dim: [B, J] float, the KL of dimension j of sample b (see
            :func:`kl_per_dimension`).
        free_bits: nats per dimension, a number >= 0; 0 returns the row sums (the true KL).

    Returns:
        [B] float, the per-sample objective, differentiable in the dimensions not held.

    Example::

        >>> kl_by_dim = torch.tensor([[0.1, 2.0], [0.3, 4.0]])
        >>> free_bits_kl(kl_by_dim, 0.5)        # dimension 0 (mean 0.2) held at 0.5
        tensor([2.5000, 4.5000])
    """
    if free_bits == 0.0 or kl_by_dim.shape[0] == 0:
        return kl_by_dim.sum(1)
    held = kl_by_dim.mean(0) < free_bits  # [J]
    floor = torch.full((), free_bits, dtype=kl_by_dim.dtype, device=kl_by_dim.device)
    return torch.where(held, floor, kl_by_dim).sum(1)


def _batch_mean(kl_by_dim: Tensor) -> Tensor:
    if kl_by_dim.shape[0] == 0:
        return kl_by_dim.new_zeros(kl_by_dim.shape[1:])
    return kl_by_dim.detach().mean(0)


@dataclass
class GaussianLatentOutput:
    """What a Gaussian latent layer returns.

    Attributes:
        z: the reparameterized sample, mu's shape ([B, D] or [B, C, H, W]) and dtype.
        kl: [B] float32, the true KL(q ‖ p) per sample (differentiable).
        kl_objective: [B] float32, the free-bits objective per sample (equal to ``kl``
            when free_bits is 0): what a loss should add, times β.
        kl_per_dim: [D] (or [C]) float32, the batch mean of the true KL of each latent
            dimension; detached.
        mu, logvar: the parameters of q(z|x).
        prior_mu, prior_logvar: the Gaussian prior's parameters used (None: N(0, I)).
    """

    z: Tensor
    kl: Tensor
    kl_objective: Tensor
    kl_per_dim: Tensor
    mu: Tensor
    logvar: Tensor
    prior_mu: Optional[Tensor] = None
    prior_logvar: Optional[Tensor] = None


def sample_latent(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    free_bits: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> GaussianLatentOutput:
    r"""Sample z ~ q = N(mu, e^logvar) and get its KL to the Gaussian prior
    N(prior_mu, e^prior_logvar): true per sample, per dimension, and with free bits, from
    one fused ``fastvae.sample_gaussian`` call.

    Args:
        mu, logvar: q's parameters, [B, D] or [B, C, ...].
        prior_mu, prior_logvar: the prior's, broadcastable to mu (a conditional prior is
            full-size); None means 0 (the standard normal).  They may require grad.
        free_bits: nats per latent dimension (a feature of [B, D], a channel of
            [B, C, ...]), a number >= 0.
        generator: a ``torch.Generator`` for the noise (default: the device's).

    Returns:
        A :class:`GaussianLatentOutput`.

    Example::

        >>> mu, logvar = torch.zeros(8, 4), torch.zeros(8, 4)
        >>> out = sample_latent(mu, logvar, free_bits=0.1)
        >>> out.kl, out.kl_objective        # 0 each, and 4 · 0.1 each
    """
    free_bits = _check_free_bits("fastvae.nn.sample_latent", free_bits)
    z, kl_terms = ops.sample_gaussian(mu, logvar, prior_mu, prior_logvar, generator=generator, reduction="none")
    kl_by_dim = kl_per_dimension(kl_terms)
    kl = kl_by_dim.sum(1)
    kl_objective = free_bits_kl(kl_by_dim, free_bits) if free_bits > 0 else kl
    return GaussianLatentOutput(z, kl, kl_objective, _batch_mean(kl_by_dim), mu, logvar, prior_mu, prior_logvar)


class GaussianLatent(nn.Module):
    r"""A diagonal Gaussian latent layer: a head producing q(z|h) = N(mu, e^logvar) from
    features h, whose forward draws z and its KL in one fused pass.

    The head is a Linear layer for a vector latent ([B, in_features] → [B, latent_dim]) or,
    with ``spatial=True``, a 1×1 convolution for a spatial one ([B, in_features, H, W] →
    [B, latent_dim, H, W]), with 2·latent_dim outputs split into mu and logvar.

    Args:
        in_features: features (channels, if spatial) of h.
        latent_dim: latent dimensions (channels, if spatial).
        spatial: a 1×1 convolution over [B, C, H, W] features instead of a Linear layer.
        committed_rate: δ of the δ-VAE (Razavi et al. 2019), nats per latent dimension;
            > 0 confines the log-variance by :func:`fastvae.nn.committed_logvar`, so that
            KL(q(z_d|h) ‖ N(0, 1)) >= δ for every h and dimension d; 0 (default): the
            head's output is the log-variance.

    Example::

        >>> latent = GaussianLatent(128, 16)
        >>> out = latent(torch.randn(32, 128), free_bits=0.25)
        >>> out.z.shape, out.kl.shape, out.kl_per_dim.shape
        (torch.Size([32, 16]), torch.Size([32]), torch.Size([16]))
    """

    def __init__(self, in_features: int, latent_dim: int, spatial: bool = False, committed_rate: float = 0.0):
        super().__init__()
        where = "fastvae.nn.GaussianLatent"
        self.in_features = _check_positive_int(where, "in_features", in_features)
        self.latent_dim = _check_positive_int(where, "latent_dim", latent_dim)
        self.spatial = bool(spatial)
        self.committed_rate = _check_delta(where, committed_rate)
        if self.spatial:
            self.head = nn.Conv2d(in_features, 2 * latent_dim, kernel_size=1)
        else:
            self.head = nn.Linear(in_features, 2 * latent_dim)

    def params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z|h), each [B, latent_dim] (or [B, latent_dim, H, W])."""
        expected = 4 if self.spatial else 2
        if not isinstance(h, Tensor) or h.dim() != expected or h.shape[1] != self.in_features:
            layout = "[B, C, H, W]" if self.spatial else "[B, in_features]"
            shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(
                f"fastvae.nn.GaussianLatent: h must have shape {layout} with {self.in_features} features "
                f"in dimension 1, got {shape}"
            )
        mu, logvar = self.head(h).chunk(2, dim=1)
        if self.committed_rate > 0:
            logvar = committed_logvar(logvar, self.committed_rate)
        return mu, logvar

    def extra_repr(self) -> str:
        rate = f", committed_rate={self.committed_rate}" if self.committed_rate > 0 else ""
        return f"in_features={self.in_features}, latent_dim={self.latent_dim}, spatial={self.spatial}{rate}"

    def forward(
        self,
        h: Tensor,
        prior_mu: Optional[Tensor] = None,
        prior_logvar: Optional[Tensor] = None,
        free_bits: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> GaussianLatentOutput:
        """Sample z ~ q(z|h) with its KL to N(prior_mu, e^prior_logvar) (see
        :func:`sample_latent`)."""
        mu, logvar = self.params(h)
        return sample_latent(mu, logvar, prior_mu, prior_logvar, free_bits, generator)


@dataclass
class CategoricalLatentOutput:
    """What a categorical latent layer returns.

    Attributes:
        z: [B, N, K] Gumbel-softmax samples (one-hot in the forward when hard).
        kl: [B] float32, the true KL(q ‖ p) summed over the N variables.
        kl_objective: [B] float32, the free-bits objective (``kl`` when free_bits is 0).
        kl_per_dim: [N] float32, the batch mean KL of each variable; detached.
        logits: [B, N, K] the logits of q(z|x).
    """

    z: Tensor
    kl: Tensor
    kl_objective: Tensor
    kl_per_dim: Tensor
    logits: Tensor


class CategoricalLatent(nn.Module):
    r"""N categorical latent variables of K classes each, relaxed by Gumbel-softmax
    (Jang et al.; Maddison et al. 2017): a Linear head produces the logits [B, N, K] and
    the forward draws z and the analytic KL in one fused ``fastvae.sample_categorical`` call.

    Args:
        in_features: features of h ([B, in_features]).
        num_variables: N.
        num_categories: K (>= 2).
        temperature: τ of the relaxation, > 0; the attribute ``temperature`` may be changed
            between steps (annealing); a forward's ``temperature=`` overrides it.
        hard: straight-through: one-hot z in the forward, the soft sample's gradient.

    Example::

        >>> latent = CategoricalLatent(64, num_variables=8, num_categories=10, temperature=0.5)
        >>> out = latent(torch.randn(4, 64))
        >>> out.z.shape, out.kl.shape
        (torch.Size([4, 8, 10]), torch.Size([4]))
    """

    def __init__(self, in_features: int, num_variables: int, num_categories: int, temperature: float = 1.0,
                 hard: bool = False):
        super().__init__()
        where = "fastvae.nn.CategoricalLatent"
        self.in_features = _check_positive_int(where, "in_features", in_features)
        self.num_variables = _check_positive_int(where, "num_variables", num_variables)
        self.num_categories = _check_positive_int(where, "num_categories", num_categories)
        if num_categories < 2:
            raise ValueError(f"{where}: num_categories must be >= 2, got {num_categories}")
        self.temperature = _check_temperature(where, temperature)
        if not isinstance(hard, bool):
            raise TypeError(f"{where}: hard must be a bool, got {type(hard).__name__}")
        self.hard = hard
        self.head = nn.Linear(in_features, num_variables * num_categories)

    def logits(self, h: Tensor) -> Tensor:
        """[B, N, K] logits of q(z|h)."""
        if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[1] != self.in_features:
            shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(
                f"fastvae.nn.CategoricalLatent: h must have shape [B, {self.in_features}], got {shape}"
            )
        return self.head(h).unflatten(1, (self.num_variables, self.num_categories))

    def forward(
        self,
        h: Tensor,
        prior_logits: Optional[Tensor] = None,
        free_bits: float = 0.0,
        generator: Optional[torch.Generator] = None,
        temperature: Optional[float] = None,
    ) -> CategoricalLatentOutput:
        """Sample z ~ GumbelSoftmax(q(z|h), τ) and KL(q ‖ Cat(softmax(prior_logits)))
        (uniform when None; prior_logits broadcastable to [B, N, K] with K last)."""
        where = "fastvae.nn.CategoricalLatent"
        free_bits = _check_free_bits(where, free_bits)
        tau = self.temperature if temperature is None else _check_temperature(where, temperature)
        logits = self.logits(h)
        z, kl_by_variable = ops.sample_categorical(logits, tau, self.hard, prior_logits, generator, reduction="none")
        kl = kl_by_variable.sum(1)
        kl_objective = free_bits_kl(kl_by_variable, free_bits) if free_bits > 0 else kl
        return CategoricalLatentOutput(z, kl, kl_objective, _batch_mean(kl_by_variable), logits)


def _check_temperature(where: str, temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{where}: temperature must be a Python number > 0, got {type(temperature).__name__}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{where}: temperature must be positive and finite, got {temperature}")
    return float(temperature)
