"""The contract every fastvae model keeps, so that the trainer, the evaluation and the
command line work with any of them.

A model is an ``nn.Module`` subclass of :class:`VAE`.  The trainer only calls
``model(x, beta=..., free_bits=...)`` and reads the returned :class:`VAEOutput`; the
evaluation calls :meth:`VAE.log_importance_weights`, :meth:`VAE.posterior_mean`,
:meth:`VAE.sample`, :meth:`VAE.reconstruct` and :meth:`VAE.decode`.  A checkpoint stores
``model.config``; :func:`build_model` turns it back into a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn


@dataclass
class VAEOutput:
    """What one forward pass of a model on a batch returns.

    Attributes:
        loss: scalar, the objective to minimize: the batch mean of the negated training
            objective (the ELBO with β and free bits applied, or the IWAE bound).
        elbo: [B] float32, the true ELBO per data point in nats (β = 1, no free bits),
            from the same samples as ``loss``; detached.
        nll: [B] float32, −log p(x|z), the reconstruction term (one-sample estimate, or
            the mean over the K samples for IWAE); detached.
        kl: [B] float32, the true KL(q(z|x) ‖ p(z)) summed over every latent (for a
            hierarchical model, over every stochastic layer); for a prior with no closed
            form KL (mixture, VampPrior), the one-sample estimate log q(z|x) − log p(z);
            detached.
        kl_per_dim: [D] float32, the batch mean of the KL of each latent dimension
            (concatenated over layers; a latent dimension of a [B, C, H, W] latent is a
            channel); detached.  Empty when the model has no per-dimension KL.
        extras: further named [B] or scalar detached tensors the model reports (for
            instance the IWAE bound when training with K > 1).
    """

    loss: Tensor
    elbo: Tensor
    nll: Tensor
    kl: Tensor
    kl_per_dim: Tensor
    extras: Dict[str, Tensor] = field(default_factory=dict)

    def metrics(self) -> Dict[str, float]:
        """Scalars for logging: loss, and the batch means of elbo, nll, kl and extras.

        One device sync for all of them (the values are stacked before ``.tolist()``)."""
        names = ["loss", "elbo", "nll", "kl"]
        values = [self.loss.detach().float(), self.elbo.float().mean(), self.nll.float().mean(),
                  self.kl.float().mean()]
        for name, value in self.extras.items():
            names.append(name)
            values.append(value.detach().float().mean())
        return dict(zip(names, torch.stack(values).tolist()))


class VAE(nn.Module):
    """Base class of fastvae's models.

    Subclasses set ``self.data_shape`` (the shape of one data point, e.g. ``(784,)`` or
    ``(3, 32, 32)``), ``self.latent_dim`` (the number of latent dimensions that
    ``posterior_mean`` and ``kl_per_dim`` report) and ``self.config`` (a JSON-serializable
    dict with ``"name"``, a key of :data:`MODELS`, and the constructor's keyword
    arguments), and implement the methods below.
    """

    data_shape: tuple
    latent_dim: int
    config: dict

    def forward(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> VAEOutput:
        """The training objective on a batch ``x`` of shape ``[B, *data_shape]``.

        ``beta`` multiplies the KL (a KL warm-up or annealing schedule passes it per
        step); ``free_bits`` (nats per latent dimension) holds each dimension's batch-mean
        KL at no less than that value, as ``fastvae.gaussian_kl`` does."""
        raise NotImplementedError

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """[K, B] float32 log-weights log p(x, z_k) − log q(z_k|x) for K = ``num_samples``
        draws z_k ~ q(z|x), constants included; ``fastvae.iwae_bound``'s logsumexp − log K
        of them is the importance-weighted estimate of log p(x)."""
        raise NotImplementedError

    def posterior_mean(self, x: Tensor) -> Tensor:
        """[B, latent_dim] E_q[z|x] (for a [B, C, H, W] latent, averaged over H, W per
        channel): what the active-units count takes the covariance of."""
        raise NotImplementedError

    def posterior_params(self, x: Tensor) -> Optional[tuple]:
        """(mu, logvar), each [B, latent_dim], when q(z|x) is one diagonal Gaussian over
        the whole latent (what the mutual-information estimate needs); None otherwise."""
        return None

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean of p(x|z) for latents z of shape [N, latent_dim] (for a
        hierarchical model, the top layer's latent, the lower layers at their prior
        means), shape [N, *data_shape], in the data's range."""
        raise NotImplementedError

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """[N, *data_shape]: z ~ p(z), then the decoder's mean."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        """[B, *data_shape]: the decoder's mean at z = E_q[z|x]."""
        raise NotImplementedError


MODELS: Dict[str, Callable[..., VAE]] = {}


def register_model(name: str):
    """Class decorator: make a model buildable from its config by :func:`build_model`."""

    def decorate(cls):
        MODELS[name] = cls
        return cls

    return decorate


def build_model(config: dict) -> VAE:
    """The model a ``config`` dict describes: ``{"name": ..., **constructor kwargs}``."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"fastvae.models.build_model: unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](**config)
