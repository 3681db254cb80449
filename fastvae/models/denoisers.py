r"""The networks of the diffusion decoder's noise prediction ε̂(z_t; γ_t, z)
(:mod:`fastvae.models.diffusion_decoder`): an MLP for flat data and a small U-Net for
images [C, H, W].

Each takes the noisy data z_t, the log-SNR γ_t [B], a data-shaped ``context`` (the VAE's
ordinary decoder network applied to the latent: what the Bernoulli decoder would read as
its logits) and the latent z itself, and returns [B, 2, *data_shape]: per element the
mean m and log-scale log s of a Gaussian guess N(m, s²) at x̃, which the decoder turns
into ε̂ (:meth:`fastvae.models.diffusion_decoder.DiffusionDecoder.predict_noise`).
The time enters as a sinusoidal embedding of t̂ = (γ_t − γ_min)/(γ_max − γ_min) (γ_min,
γ_max the schedule's initial endpoints, fixed constants, so a learned schedule does not
move the embedding's scale).  The embedding is of γ_t, not t: then the expectation of the
continuous-time diffusion term depends on the schedule's endpoints only.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .layers import positive_int, positive_ints

TIME_FEATURES = 32


def time_embedding(gamma: Tensor, gamma_min: float, gamma_max: float, features: int = TIME_FEATURES) -> Tensor:
    r"""[B, features] sinusoidal embedding of t̂ = (γ − γ_min)/(γ_max − γ_min) scaled by
    1000: [sin(1000·t̂·f_k), cos(1000·t̂·f_k)], f_k = 10000^(−k/(features/2)).

    Example::

        >>> time_embedding(torch.rand(4), -13.3, 5.0).shape
        torch.Size([4, 32])
    """
    half = features // 2
    t_hat = (gamma.float() - gamma_min) / (gamma_max - gamma_min)
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=gamma.device) / half)
    angles = 1000.0 * t_hat[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MLPDenoiser(nn.Module):
    r"""(m, log s) = MLP([z_t, context, z, emb(γ_t)]) for flat data [B, D]: a first Linear
    layer on the concatenation, SiLU residual blocks of the widths in ``hidden_sizes``,
    and a Linear output to 2·D, initialised at zero (m = 0, s = 1 at the start).

    Args:
        data_size: D.
        latent_dim: the width of z.
        hidden_sizes: widths of the hidden layers (a width change is a plain layer, equal
            widths are residual).
        gamma_min, gamma_max: the constants of the time embedding.

    Example::

        >>> denoiser = MLPDenoiser(784, 50, (512, 512))
        >>> guess = denoiser(z_t, gamma, context, z)    # [B, 2, 784]: m, log s
    """

    def __init__(self, data_size: int, latent_dim: int, hidden_sizes: Sequence[int] = (512, 512),
                 gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        where = "fastvae.models.MLPDenoiser"
        self.data_size = positive_int(where, "data_size", data_size)
        hidden = positive_ints(where, "hidden_sizes", list(hidden_sizes))
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        sizes = (2 * self.data_size + latent_dim + TIME_FEATURES,) + hidden
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = nn.SiLU()
        self.output = nn.Linear(hidden[-1], 2 * self.data_size)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, z_t: Tensor, gamma: Tensor, context: Tensor, z: Tensor) -> Tensor:
        """[B, 2, ...] (m, log s) for z_t [B, ...] and context [B, ...] of D elements a row,
        γ [B], z [B, latent_dim]."""
        emb = time_embedding(gamma, self.gamma_min, self.gamma_max).to(z_t.dtype)
        h = torch.cat([z_t.flatten(1), context.flatten(1).to(z_t.dtype), z.to(z_t.dtype), emb], dim=1)
        for index, layer in enumerate(self.layers):
            out = self.activation(layer(h))
            h = h + out if index > 0 and out.shape == h.shape else out
        return self.output(h).view((z_t.shape[0], 2) + tuple(z_t.shape[1:]))


class _ResBlock(nn.Module):
    """GroupNorm–SiLU–conv twice, the conditioning vector added between, a 1×1 skip when
    the channels change."""

    def __init__(self, channels_in: int, channels_out: int, cond_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels_in), channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.cond = nn.Linear(cond_dim, channels_out)
        self.norm2 = nn.GroupNorm(_groups(channels_out), channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()
        self.activation = nn.SiLU()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(self.activation(self.norm1(x)))
        h = h + self.cond(cond)[:, :, None, None]
        h = self.conv2(self.activation(self.norm2(h)))
        return self.skip(x) + h


def _groups(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class UNetDenoiser(nn.Module):
    r"""A small U-Net for images [C, H, W]: the input convolution reads [z_t, context]
    (2C channels), one residual block per level at ``channels[i]`` channels with a
    stride-2 convolution between levels, a middle block, then the mirror path up with
    the skips concatenated; every block adds the conditioning vector
    SiLU(Linear(emb(γ_t))) + Linear(z).  The output convolution (to 2C channels: m and
    log s per channel) starts at zero.

    Args:
        data_shape: (C, H, W), H and W divisible by 2^(len(channels) − 1).
        latent_dim: the width of z.
        channels: channels of each level, the data's resolution first.
        gamma_min, gamma_max: the constants of the time embedding.

    Example::

        >>> denoiser = UNetDenoiser((1, 28, 28), 16, (32, 64))
        >>> guess = denoiser(z_t, gamma, context, z)     # [B, 2, 1, 28, 28]: m, log s
    """

    def __init__(self, data_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64),
                 gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        where = "fastvae.models.UNetDenoiser"
        data_channels, height, width = positive_ints(where, "data_shape", list(data_shape))
        channels = positive_ints(where, "channels", list(channels))
        factor = 2 ** (len(channels) - 1)
        if height % factor or width % factor:
            raise ValueError(f"{where}: H and W of data_shape {list(data_shape)} must be divisible by {factor} "
                             f"(2 to the number of downsamplings, len(channels) - 1 = {len(channels) - 1})")
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        cond_dim = 4 * channels[0]
        self.time = nn.Sequential(nn.Linear(TIME_FEATURES, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.latent = nn.Linear(latent_dim, cond_dim)
        self.input = nn.Conv2d(2 * data_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList(_ResBlock(a, b, cond_dim) for a, b in zip((channels[0],) + channels[:-1], channels))
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels[:-1])
        self.middle = _ResBlock(channels[-1], channels[-1], cond_dim)
        reversed_channels = tuple(reversed(channels))
        self.up = nn.ModuleList(_ResBlock(2 * c, c_out, cond_dim)
                                for c, c_out in zip(reversed_channels, reversed_channels[1:] + (channels[0],)))
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(c, c, 4, stride=2, padding=1) for c in reversed_channels[1:])
        self.norm = nn.GroupNorm(_groups(channels[0]), channels[0])
        self.output = nn.Conv2d(channels[0], 2 * data_channels, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.activation = nn.SiLU()

    def forward(self, z_t: Tensor, gamma: Tensor, context: Tensor, z: Tensor) -> Tensor:
        """[B, 2, C, H, W] (m, log s) for z_t [B, C, H, W], γ [B], context [B, C, H, W], z [B, latent_dim]."""
        emb = time_embedding(gamma, self.gamma_min, self.gamma_max).to(z_t.dtype)
        cond = self.time(emb) + self.latent(z.to(z_t.dtype))
        h = self.input(torch.cat([z_t, context.to(z_t.dtype)], dim=1))
        skips = []
        for index, block in enumerate(self.down):
            h = block(h, cond)
            skips.append(h)
            if index < len(self.downsample):
                h = self.downsample[index](h)
        h = self.middle(h, cond)
        for index, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
            if index < len(self.upsample):
                h = self.upsample[index](h)
        out = self.output(self.activation(self.norm(h)))
        return out.view((z_t.shape[0], 2) + tuple(z_t.shape[1:]))
