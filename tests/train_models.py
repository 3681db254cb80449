"""Tiny models and data for the trainer's tests (test_train.py, test_distributed.py and the
torchrun worker): small enough that a training run takes a fraction of a second.

The models are registered under test-only names so that checkpoints can rebuild them.
"""
from __future__ import annotations

import torch
from torch import nn

import fastvae
from fastvae.models.base import VAE, VAEOutput, register_model

DATA_DIM = 12


@register_model("_test_train_tiny")
class TinyVAE(VAE):
    """An MLP VAE on binary vectors: Gaussian latent (fastvae.sample_gaussian), Bernoulli
    decoder (fastvae.bernoulli_nll).

    ``deterministic=True`` decodes the posterior mean instead of a sample (the loss is
    still nll + β·KL), so that runs differing only in how the noise is split over
    processes can be compared.  Setting ``nan_loss = True`` on an instance makes its loss
    NaN (for the skip guard's tests); ``temperature`` is an attribute a temperature
    schedule sets; ``last_hidden_dtype`` records the dtype the encoder ran in."""

    def __init__(self, data_dim: int = DATA_DIM, latent_dim: int = 3, hidden: int = 16, deterministic: bool = False):
        super().__init__()
        self.data_shape = (data_dim,)
        self.latent_dim = latent_dim
        self.deterministic = deterministic
        self.config = {"name": "_test_train_tiny", "data_dim": data_dim, "latent_dim": latent_dim, "hidden": hidden,
                       "deterministic": deterministic}
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
        self.nan_loss = False
        self.temperature = 1.0
        self.last_hidden_dtype = None

    def encode(self, x):
        hidden = self.encoder(x)
        self.last_hidden_dtype = hidden.dtype
        mu, logvar = hidden.float().chunk(2, dim=1)
        return mu, logvar

    def forward(self, x, beta: float = 1.0, free_bits: float = 0.0) -> VAEOutput:
        mu, logvar = self.encode(x)
        if self.deterministic:
            z, kl_terms = mu, fastvae.gaussian_kl(mu, logvar, reduction="none")
        else:
            z, kl_terms = fastvae.sample_gaussian(mu, logvar, reduction="none")
        kl = kl_terms.sum(1)
        kl_per_dim = kl_terms.mean(0)
        kl_objective = torch.clamp(kl_per_dim, min=free_bits).sum().expand_as(kl) if free_bits else kl
        nll = fastvae.bernoulli_nll(self.decoder(z).float(), x)
        loss = (nll + beta * kl_objective).mean()
        if self.nan_loss:
            loss = loss * float("nan")
        return VAEOutput(loss=loss, elbo=-(nll + kl).detach(), nll=nll.detach(), kl=kl.detach(),
                         kl_per_dim=kl_per_dim.detach(), extras={"kl_objective": kl_objective.detach()})

    def posterior_mean(self, x):
        return self.encode(x)[0]


def make_model(seed: int = 0, **kwargs) -> TinyVAE:
    torch.manual_seed(seed)
    return TinyVAE(**kwargs)


def make_data(num_items: int, seed: int = 0) -> torch.Tensor:
    """[num_items, DATA_DIM] binary vectors: noisy copies of 3 fixed prototypes (the same
    for every seed, so two seeds give a training and a test set of one distribution), a
    structure a VAE learns within a few dozen steps."""
    prototypes = (torch.rand(3, DATA_DIM, generator=torch.Generator().manual_seed(1234)) < 0.5).float()
    generator = torch.Generator().manual_seed(seed)
    which = torch.randint(0, 3, (num_items,), generator=generator)
    flips = (torch.rand(num_items, DATA_DIM, generator=generator) < 0.05).float()
    return (prototypes[which] - flips).abs()
