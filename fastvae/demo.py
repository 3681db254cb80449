"""Train a small VAE on procedurally generated bar images and print the ELBO improving.

The main job until the trainer lands: ``python -m fastvae.demo``.  The data set needs no
download: 8×8 binary images, each the union of a few random horizontal and vertical bars
(deterministic given the seed).  The latent side is ``fastvae.sample_gaussian`` (sampling
and KL fused); at the end the importance-weighted bound log p̂(x) is estimated with
``fastvae.sample_gaussian_k`` and ``fastvae.iwae_bound`` and compared with the ELBO.
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

import fastvae

IMAGE_SIDE = 8


def make_bars(num_images: int, seed: int = 0, bar_probability: float = 0.2) -> torch.Tensor:
    """[num_images, 64] float32 images in {0, 1}: each of the 8 rows and 8 columns is a
    bar with probability ``bar_probability``; an image is the union of its bars."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.rand(num_images, IMAGE_SIDE, 1, generator=generator) < bar_probability
    cols = torch.rand(num_images, 1, IMAGE_SIDE, generator=generator) < bar_probability
    return (rows | cols).float().flatten(1)


class BarsVAE(nn.Module):
    """An MLP VAE with a Bernoulli decoder and a standard normal prior."""

    def __init__(self, data_dim: int = IMAGE_SIDE**2, hidden_dim: int = 128, latent_dim: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, data_dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def log_likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels: −BCE with logits."""
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def elbo(self, x: torch.Tensor, free_bits: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample (training objective, ELBO, KL): the objective uses free bits."""
        mu, logvar = self.encode(x)
        z, kl_objective = fastvae.sample_gaussian(mu, logvar, free_bits=free_bits)
        kl = fastvae.gaussian_kl(mu.detach(), logvar.detach()) if free_bits else kl_objective.detach()
        log_px_z = self.log_likelihood(self.decoder(z), x)
        return log_px_z - kl_objective, log_px_z.detach() - kl, kl

    @torch.no_grad()
    def iwae(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log p̂(x) with ``num_samples`` importance samples, per data point."""
        mu, logvar = self.encode(x)
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, num_samples)
        log_px_z = self.log_likelihood(self.decoder(z), x)
        return fastvae.iwae_bound(log_px_z, log_p, log_q)


def train(
    epochs: int = 30,
    batch_size: int = 128,
    num_train: int = 8192,
    num_test: int = 1024,
    learning_rate: float = 2e-3,
    free_bits: float = 0.0,
    iwae_samples: int = 64,
    seed: int = 0,
    log=print,
) -> dict:
    """Train :class:`BarsVAE`; returns the per-epoch test ELBO and the final IWAE bound."""
    torch.manual_seed(seed)
    train_data, test_data = make_bars(num_train, seed), make_bars(num_test, seed + 1)
    model = BarsVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    history = []
    backend = fastvae.backends.resolve("sample_gaussian", train_data.device, train_data.dtype)
    log(f"fastvae {fastvae.__version__}: training a VAE on 8x8 bars ({num_train} images), latent backend '{backend}'")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(num_train)
        for first in range(0, num_train, batch_size):
            batch = train_data[order[first:first + batch_size]]
            objective, _, _ = model.elbo(batch, free_bits)
            loss = -objective.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            _, test_elbo, test_kl = model.elbo(test_data)
        history.append(test_elbo.mean().item())
        log(f"epoch {epoch:3d}  test ELBO {history[-1]:9.3f} nats  KL {test_kl.mean().item():7.3f}  ({time.perf_counter() - start:5.1f} s)")
    log_px = model.iwae(test_data, iwae_samples).mean().item()
    log(f"test log p(x) >= {log_px:.3f} nats (IWAE, K={iwae_samples}, {num_test} images); ELBO gap {log_px - history[-1]:.3f} nats")
    return {"test_elbo": history, "test_iwae": log_px, "iwae_samples": iwae_samples}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m fastvae.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-train", type=int, default=8192)
    parser.add_argument("--free-bits", type=float, default=0.0)
    parser.add_argument("--iwae-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", help="fastvae backend: auto, torch, triton, cuda, cpu")
    args = parser.parse_args(argv)
    with fastvae.use_backend(args.backend):
        return train(
            epochs=args.epochs, batch_size=args.batch_size, num_train=args.num_train,
            free_bits=args.free_bits, iwae_samples=args.iwae_samples, seed=args.seed,
        )


if __name__ == "__main__":
    main()
