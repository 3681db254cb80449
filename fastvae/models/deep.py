r"""A very deep hierarchical VAE on images, in the family of VDVAE (Child 2021) and NVAE
(Vahdat & Kautz 2020): convolutional residual blocks over several resolutions, and many
groups of latents inferred top-down.

Bottom-up path: a 3×3 stem, then residual bottleneck blocks at each resolution of
``resolutions`` (e.g. 28, 14, 7, 1), average-pooled down between them; the activations
a_r at the end of each resolution are kept for the posterior.

Top-down path: a learned state h at the top resolution; at each lower resolution h is
upsampled (nearest) and a learned bias of that resolution added.  Every top-down block
holds one latent group z_i of ``latent_channels`` channels at its resolution:

    p(z_i | z_<i)    = N(μ_p, e^(ℓ_p))   with (μ_p, ℓ_p, Δh) = prior_net(h),
    q(z_i | x, z_<i) = N(μ_q, e^(ℓ_q))   with (μ_q, ℓ_q)     = posterior_net([h, a_r]),
    h ← h + Δh;  z_i ~ q;  h ← h + proj(z_i);  h ← resblock(h).

Group i's sample and its KL against the full-size conditional prior are one fused
``fastvae.sample_gaussian`` call (:func:`fastvae.nn.sample_latent`), the prior's μ and ℓ
differentiable tensors of the latent's shape [B, C, H, W].  The likelihood reads a 1×1
convolution of the final state: Bernoulli logits for binary data, the discretized
logistic mixture for 8-bit images.

Groups are numbered in the order the top-down pass visits them: group 0 is the top
(lowest resolution), the last group is at the data's resolution.  ``kl_per_dim``,
``posterior_mean`` and the per-group diagnostics follow that order.

Stabilizers (VDVAE, NVAE): the last convolution of every residual branch, of the prior's
and posterior's heads and the latent projection are scaled at initialization by √(1/n)
for n blocks on their path, so that the state's variance does not grow with depth and
q ≈ p at initialization; log-variances are soft-clamped to ±``logvar_bound``
(b·tanh(ℓ/b)); NVAE's KL balancing (``kl_balancing``) and spectral regularization
(``spectral_coeff``) are options; gradient clipping and skipping and an EMA of the
weights are the trainer's.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..nn.elbo import ELBO
from ..nn.latent import GaussianLatentOutput, kl_per_dimension, sample_latent
from .base import VAE, VAEOutput, register_model
from .layers import activation as make_activation
from .layers import check_batch, check_number, data_shape_of, positive_int, positive_ints
from .objectives import check_forward_args, check_objective, layered_iwae_output, repeat_batch
from .priors import draw_normal
from .single import build_likelihood

Temperature = Union[float, Sequence[float]]


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """b·tanh(x / b): the identity near 0, smoothly bounded to (−b, b) (NVAE's bound on
    log-scales, which keeps e^ℓ and the KL finite early in training)."""
    return bound * torch.tanh(x / bound)


def _conv(channels_in: int, channels_out: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, kernel_size, padding=kernel_size // 2)


class Bottleneck(nn.Module):
    """VDVAE's residual bottleneck: act → 1×1 → act → k×k → act → k×k → act → 1×1,
    added to the input when ``residual`` (k = 3, or 1 at resolutions of 2 and below).
    The last convolution's weights are multiplied by ``final_scale`` at initialization."""

    def __init__(self, channels_in: int, bottleneck: int, channels_out: int, kernel_size: int, residual: bool,
                 activation: str, final_scale: float, where: str):
        super().__init__()
        self.residual = residual
        self.act = make_activation(where, activation)
        self.c1 = _conv(channels_in, bottleneck, 1)
        self.c2 = _conv(bottleneck, bottleneck, kernel_size)
        self.c3 = _conv(bottleneck, bottleneck, kernel_size)
        self.c4 = _conv(bottleneck, channels_out, 1)
        with torch.no_grad():
            self.c4.weight.mul_(final_scale)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(self.act(x))
        h = self.c2(self.act(h))
        h = self.c3(self.act(h))
        h = self.c4(self.act(h))
        return x + h if self.residual else h


class TopDownGroup(nn.Module):
    """One top-down block holding one latent group (see the module's docstring)."""

    def __init__(self, width: int, bottleneck: int, latent_channels: int, kernel_size: int, activation: str,
                 final_scale: float, where: str):
        super().__init__()
        self.latent_channels = latent_channels
        self.width = width
        # Both heads start near zero (q ≈ p ≈ N(0, I), a small KL at initialization), and the
        # prior's update of the state as small as a residual branch.
        self.posterior = Bottleneck(2 * width, bottleneck, 2 * latent_channels, kernel_size, False, activation,
                                    final_scale, where)
        self.prior = Bottleneck(width, bottleneck, 2 * latent_channels + width, kernel_size, False, activation,
                                final_scale, where)
        self.project = _conv(latent_channels, width, 1)
        with torch.no_grad():
            self.project.weight.mul_(final_scale)
        self.resblock = Bottleneck(width, bottleneck, width, kernel_size, True, activation, final_scale, where)

    def prior_params(self, h: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
        """(prior mu, prior logvar, the state after the prior's update)."""
        prior_mu, prior_logvar, update = self.prior(h).split([self.latent_channels, self.latent_channels, self.width],
                                                             dim=1)
        return prior_mu, soft_clamp(prior_logvar, bound), h + update

    def posterior_params(self, h: Tensor, activations: Tensor, bound: float) -> tuple[Tensor, Tensor]:
        mu, logvar = self.posterior(torch.cat([h, activations], dim=1)).chunk(2, dim=1)
        return mu, soft_clamp(logvar, bound)

    def absorb(self, h: Tensor, z: Tensor) -> Tensor:
        """The state after the group's sample: h + proj(z), then the residual block."""
        return self.resblock(h + self.project(z))


def _temperatures(where: str, temperature: Temperature, num_groups: int) -> list[float]:
    """One temperature per group from a number or a sequence of ``num_groups``."""
    if isinstance(temperature, (list, tuple)):
        if len(temperature) != num_groups:
            raise ValueError(f"{where}: temperature must be a number or {num_groups} numbers (one per group, the top "
                             f"first), got {len(temperature)}")
        return [check_number(where, f"temperature[{i}]", t) for i, t in enumerate(temperature)]
    return [check_number(where, "temperature", temperature)] * num_groups


def _counts(where: str, name: str, values) -> tuple:
    """A list of ints >= 0, as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f"{where}: {name} must be a list of ints >= 0, got {type(values).__name__}")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: {name}[{index}] must be an int >= 0, got {value!r}")
    return tuple(values)


@register_model("deep")
class DeepVAE(VAE):
    r"""A very deep hierarchical VAE for images [C, H, W] (see the module's docstring).

    Args:
        data_shape: (C, H, W), square images with H = ``resolutions[0]``.
        resolutions: the resolutions of the hierarchy from the data's down, each dividing
            the one before it (e.g. [28, 14, 7, 1] for MNIST, [32, 16, 8, 4, 1] for
            CIFAR-10).
        width: channels of the bottom-up and top-down states (every resolution).
        bottleneck: channels inside the residual blocks (default: width // 4, VDVAE's).
        encoder_blocks: residual blocks of the bottom-up path at each resolution (one
            number per resolution, the data's first).
        decoder_groups: latent groups (top-down blocks) at each resolution (the data's
            first); at least one group in all.
        latent_channels: channels of every latent group.
        activation: 'gelu' by default (VDVAE's), or any of :class:`fastvae.models.MLPVAE`'s.
        likelihood, num_mixtures, likelihood_kwargs: the decoder's distribution, as
            :class:`fastvae.models.ConvVAE`.
        logvar_bound: log-variances of q and p are soft-clamped to (−b, b).
        kl_balancing: NVAE's KL balancing: while β < 1 (a KL warm-up), each group's KL
            in the loss is weighted by its batch-mean KL over its size, normalized to a
            mean weight of 1, so that no group is switched off early (the reported ELBO is
            unweighted).
        spectral_coeff: λ of NVAE's spectral regularization: λ·Σ σ_max(W) over every
            convolution is added to the training loss, σ_max by one power iteration per
            step (vectors kept as buffers, so a resume is exact); 0 is off.
        objective: 'elbo', or 'iwae' with ``num_samples`` K (every group sampled K times).
        num_samples: K of the IWAE objective.

    ``latent_dim`` is the number of groups × latent_channels: ``posterior_mean`` and
    ``kl_per_dim`` report one entry per channel of each group (a channel's posterior mean
    averaged over its H × W), the groups from the top down.

    Example::

        >>> model = DeepVAE(data_shape=(1, 28, 28), resolutions=(28, 14, 7, 1), width=32,
        ...                 encoder_blocks=(2, 2, 2, 2), decoder_groups=(2, 2, 2, 1))
        >>> out = model(x)                        # x [B, 1, 28, 28] in {0, 1}
        >>> model.kl_per_group(out.kl_per_dim)    # [7] nats per group, the top first
        >>> model.sample(16, temperature=0.8)     # [16, 1, 28, 28]
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        resolutions: Sequence[int] = (28, 14, 7, 1),
        width: int = 32,
        bottleneck: Optional[int] = None,
        encoder_blocks: Sequence[int] = (2, 2, 2, 2),
        decoder_groups: Sequence[int] = (2, 2, 2, 1),
        latent_channels: int = 4,
        activation: str = "gelu",
        likelihood: str = "bernoulli",
        num_mixtures: int = 10,
        likelihood_kwargs: Optional[dict] = None,
        logvar_bound: float = 10.0,
        kl_balancing: bool = False,
        spectral_coeff: float = 0.0,
        objective: str = "elbo",
        num_samples: int = 5,
    ):
        super().__init__()
        where = self._where = "fastvae.models.DeepVAE"
        self.data_shape = data_shape_of(where, list(data_shape))
        if len(self.data_shape) != 3 or self.data_shape[1] != self.data_shape[2]:
            raise ValueError(f"{where}: data_shape must be [C, H, W] with H = W, got {list(self.data_shape)}")
        self.resolutions = positive_ints(where, "resolutions", list(resolutions))
        if self.resolutions[0] != self.data_shape[1]:
            raise ValueError(f"{where}: resolutions[0] must be the data's side {self.data_shape[1]}, got "
                             f"{self.resolutions[0]}")
        for index, (above, below) in enumerate(zip(self.resolutions[:-1], self.resolutions[1:])):
            if below >= above or above % below:
                raise ValueError(f"{where}: each resolution must divide the one before it and be smaller: "
                                 f"resolutions[{index + 1}] = {below} after {above}")
        width = positive_int(where, "width", width)
        bottleneck = max(width // 4, 1) if bottleneck is None else positive_int(where, "bottleneck", bottleneck)
        encoder_blocks = positive_ints(where, "encoder_blocks", list(encoder_blocks))
        decoder_groups = _counts(where, "decoder_groups", decoder_groups)
        for name, counts in (("encoder_blocks", encoder_blocks), ("decoder_groups", decoder_groups)):
            if len(counts) != len(self.resolutions):
                raise ValueError(f"{where}: {name} must have one entry per resolution ({len(self.resolutions)}), got "
                                 f"{len(counts)}")
        if sum(decoder_groups) < 1:
            raise ValueError(f"{where}: decoder_groups must hold at least one latent group, got {list(decoder_groups)}")
        self.latent_channels = positive_int(where, "latent_channels", latent_channels)
        make_activation(where, activation)
        self.logvar_bound = check_number(where, "logvar_bound", logvar_bound)
        if self.logvar_bound <= 0:
            raise ValueError(f"{where}: logvar_bound must be > 0, got {logvar_bound}")
        if not isinstance(kl_balancing, bool):
            raise TypeError(f"{where}: kl_balancing must be a bool, got {type(kl_balancing).__name__}")
        self.kl_balancing = kl_balancing
        self.spectral_coeff = check_number(where, "spectral_coeff", spectral_coeff)
        self.objective, self.num_samples, _ = check_objective(where, objective, num_samples, False,
                                                              dreg_supported=False)
        self.likelihood, param_channels = build_likelihood(where, likelihood, self.data_shape, num_mixtures,
                                                           likelihood_kwargs)

        # Groups from the top down: their resolutions' indices.
        self.group_levels = [level for level in reversed(range(len(self.resolutions)))
                             for _ in range(decoder_groups[level])]
        self.group_resolutions = [self.resolutions[level] for level in self.group_levels]
        self.num_groups = len(self.group_levels)
        self.latent_dim = self.num_groups * self.latent_channels

        def kernel(level: int) -> int:
            return 3 if self.resolutions[level] > 2 else 1

        encoder_scale = math.sqrt(1.0 / sum(encoder_blocks))
        decoder_scale = math.sqrt(1.0 / self.num_groups)
        self.stem = _conv(self.data_shape[0], width, 3)
        self.encoder = nn.ModuleList(
            nn.Sequential(*[Bottleneck(width, bottleneck, width, kernel(level), True, activation, encoder_scale, where)
                            for _ in range(encoder_blocks[level])])
            for level in range(len(self.resolutions))
        )
        self.state_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(1, width, r, r)) for r in self.resolutions
        )
        self.groups = nn.ModuleList(
            TopDownGroup(width, bottleneck, self.latent_channels, kernel(level), activation, decoder_scale, where)
            for level in self.group_levels
        )
        self.out_act = make_activation(where, activation)
        self.out_conv = _conv(width, param_channels, 1)
        self._params_shape = (param_channels,) + self.data_shape[1:]
        if self.spectral_coeff > 0:
            for conv in self._convolutions():
                vector = torch.randn(conv.weight.shape[0])
                conv.register_buffer("spectral_u", vector / vector.norm())
        self.elbo_loss = ELBO()
        # The IWAE evaluation's rows per model call (fastvae.eval.iwae_estimate): about
        # 2^24 elements of the widest activation, 64 MiB in float32, rather than the
        # 65536 rows that suit a vector latent's decoder.
        self.iwae_rows_per_call = max(1, (1 << 24) // (width * self.data_shape[1] * self.data_shape[2]))
        self.config = {
            "name": "deep",
            "data_shape": list(self.data_shape),
            "resolutions": list(self.resolutions),
            "width": width,
            "bottleneck": bottleneck,
            "encoder_blocks": list(encoder_blocks),
            "decoder_groups": list(decoder_groups),
            "latent_channels": self.latent_channels,
            "activation": activation,
            "likelihood": likelihood,
            "num_mixtures": num_mixtures,
            "likelihood_kwargs": dict(likelihood_kwargs or {}),
            "logvar_bound": self.logvar_bound,
            "kl_balancing": kl_balancing,
            "spectral_coeff": self.spectral_coeff,
            "objective": self.objective,
            "num_samples": self.num_samples,
        }
        # KL balancing's group sizes α_i: a group's latent elements per group at its
        # resolution, relative to the smallest (NVAE's "square" coefficients).
        sizes = torch.tensor([r * r / decoder_groups[level] for r, level in zip(self.group_resolutions,
                                                                                self.group_levels)])
        self.register_buffer("kl_group_sizes", sizes / sizes.min(), persistent=False)

    # -- the networks -------------------------------------------------------------------

    def _convolutions(self) -> list:
        return [module for module in self.modules() if isinstance(module, nn.Conv2d)]

    def _bottom_up(self, x: Tensor) -> list[Tensor]:
        """The bottom-up activations at the end of each resolution, the data's first."""
        h = self.stem(2.0 * x - 1.0)
        activations = []
        for level, blocks in enumerate(self.encoder):
            if level:
                h = F.avg_pool2d(h, self.resolutions[level - 1] // self.resolutions[level])
            h = blocks(h)
            activations.append(h)
        return activations

    def _descend(self, h: Tensor, level: int, target: int) -> Tensor:
        """The top-down state carried from resolution ``level`` down to ``target``: at
        each step upsampled (nearest) and the learned bias of the new resolution added."""
        for below in range(level - 1, target - 1, -1):
            side = self.resolutions[below]
            h = F.interpolate(h, size=(side, side), mode="nearest") + self.state_bias[below]
        return h

    def _top_down(self, batch: int, choose) -> Tensor:
        """The top-down pass: ``choose(index, h, prior_mu, prior_logvar)`` gives group
        ``index``'s latent from the state h before the prior's update; returns the
        likelihood's parameters [batch, P, H, W]."""
        level = len(self.resolutions) - 1
        h = self.state_bias[level].expand(batch, -1, -1, -1)
        for index, group in enumerate(self.groups):
            h = self._descend(h, level, self.group_levels[index])
            level = self.group_levels[index]
            prior_mu, prior_logvar, updated = group.prior_params(h, self.logvar_bound)
            z = choose(index, h, prior_mu, prior_logvar)
            h = group.absorb(updated, z)
        h = self._descend(h, level, 0)
        return self.out_conv(self.out_act(h))

    def _posterior(self, index: int, h: Tensor, activations: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.groups[index].posterior_params(h, activations[self.group_levels[index]], self.logvar_bound)

    # -- inference ----------------------------------------------------------------------

    def infer(self, x: Tensor, free_bits: float = 0.0) -> tuple[list[GaussianLatentOutput], Tensor]:
        """One pass of inference on x: each group's sample and its KL against its
        conditional prior (one fused ``sample_gaussian`` per group), and the likelihood's
        parameters.

        Returns:
            (groups, params): a :class:`fastvae.nn.GaussianLatentOutput` per group from the
            top down (z, KL, the prior's mu and logvar, all [B, C, r, r]), and the
            likelihood's parameters [B, P, H, W].
        """
        check_batch(self._where, x, self.data_shape)
        activations = self._bottom_up(x)
        groups = []

        def choose(index, h, prior_mu, prior_logvar):
            mu, logvar = self._posterior(index, h, activations)
            groups.append(sample_latent(mu, logvar, prior_mu, prior_logvar, free_bits))
            return groups[-1].z

        params = self._top_down(x.shape[0], choose)
        return groups, params

    def _weight_terms(self, x: Tensor, num_samples: int, with_kl: bool = False):
        """([K, B] log p(x|z), Σ_i log p(z_i|z_<i), Σ_i log q(z_i|x, z_<i)) with all
        groups sampled K times in one batch of K·B, and with ``with_kl`` the [B, D]
        analytic KL of each channel given the groups above, averaged over the K samples
        (no gradient)."""
        batch = x.shape[0]
        activations = [repeat_batch(a, num_samples) for a in self._bottom_up(x)]
        log_q, log_p, kls = [], [], []

        def choose(index, h, prior_mu, prior_logvar):
            mu, logvar = self._posterior(index, h, activations)
            z, group_log_q, group_log_p = ops.sample_gaussian_k(mu, logvar, 1, prior_mu, prior_logvar)
            log_q.append(group_log_q.view(num_samples, batch))
            log_p.append(group_log_p.view(num_samples, batch))
            if with_kl:
                with torch.no_grad():
                    terms = ops.gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction="none")
                    kls.append(kl_per_dimension(terms).view(num_samples, batch, -1).mean(0))
            return z[0]

        params = self._top_down(num_samples * batch, choose)
        nll = self.likelihood.nll(params, repeat_batch(x, num_samples))
        return -nll.view(num_samples, batch), torch.stack(log_p).sum(0), torch.stack(log_q).sum(0), kls

    # -- training objective -------------------------------------------------------------

    def forward(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> VAEOutput:
        check_batch(self._where, x, self.data_shape)
        beta, free_bits = check_forward_args(self._where, beta, free_bits, self.objective)
        if self.objective == "iwae":
            out = self._iwae_forward(x, beta)
        else:
            groups, params = self.infer(x, free_bits)
            nll = self.likelihood.nll(params, x)
            kl = torch.stack([group.kl for group in groups], dim=1)
            kl_objective = torch.stack([group.kl_objective for group in groups], dim=1)
            if self.kl_balancing and beta < 1.0:
                kl_objective = kl_objective * self.kl_balance_weights(kl)
            kl_per_dim = torch.cat([group.kl_per_dim for group in groups])
            out = self.elbo_loss(nll, kl.sum(1), kl_objective.sum(1), kl_per_dim, beta)
        if self.spectral_coeff > 0:
            spectral = self.spectral_norm_sum()
            out.loss = out.loss + self.spectral_coeff * spectral
            out.extras["spectral_norm_sum"] = spectral.detach()
        return out

    def _iwae_forward(self, x: Tensor, beta: float) -> VAEOutput:
        return layered_iwae_output(*self._weight_terms(x, self.num_samples, with_kl=True), beta)

    def kl_balance_weights(self, kl: Tensor) -> Tensor:
        r"""[G] NVAE's KL-balancing weights from the per-group KL [B, G]:
        w_i ∝ (mean_b |KL_i| + 0.01) / α_i with α_i the group's relative size, scaled to
        a mean of 1; detached."""
        with torch.no_grad():
            coefficients = (kl.abs().mean(0) + 0.01) / self.kl_group_sizes.to(kl.dtype)
            return coefficients / coefficients.mean()

    def spectral_norm_sum(self) -> Tensor:
        r"""Σ σ_max(W) over every convolution's weight (viewed as [out, in·k·k]), each by
        one power iteration from the vector kept in its ``spectral_u`` buffer (advanced
        only in training mode); differentiable in the weights (NVAE's spectral
        regularization)."""
        if self.spectral_coeff <= 0:
            raise RuntimeError(f"{self._where}.spectral_norm_sum: the model was built with spectral_coeff=0")
        total = None
        for conv in self._convolutions():
            weight = conv.weight.flatten(1)
            with torch.no_grad():
                v = F.normalize(weight.t() @ conv.spectral_u.to(weight.dtype), dim=0)
                u = F.normalize(weight @ v, dim=0)
                if self.training:
                    conv.spectral_u.copy_(u)
            sigma = torch.dot(u, weight @ v)
            total = sigma if total is None else total + sigma
        return total

    # -- diagnostics --------------------------------------------------------------------

    def kl_per_group(self, kl_per_dim: Tensor) -> Tensor:
        """[..., G] the KL of each group (top first) from a [..., latent_dim] KL per
        channel, as ``VAEOutput.kl_per_dim`` and the evaluation report it."""
        kl_per_dim = torch.as_tensor(kl_per_dim)
        if kl_per_dim.shape[-1:] != (self.latent_dim,):
            raise ValueError(f"{self._where}.kl_per_group: kl_per_dim must end in {self.latent_dim} (groups × "
                             f"latent_channels), got {tuple(kl_per_dim.shape)}")
        return kl_per_dim.unflatten(-1, (self.num_groups, self.latent_channels)).sum(-1)

    # -- evaluation ---------------------------------------------------------------------

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        check_batch(self._where, x, self.data_shape)
        num_samples = positive_int(self._where, "num_samples", num_samples)
        log_px_z, log_p, log_q, _ = self._weight_terms(x, num_samples)
        return (log_px_z + log_p - log_q).float()

    def posterior_mean_groups(self, x: Tensor) -> list[Tensor]:
        """Each group's posterior mean E_q[z_i|x], [B, C, r, r], the top group first, each
        taken with the groups above at their posterior means (the top-down pass without
        noise): the latent's units element by element, for active units per group."""
        check_batch(self._where, x, self.data_shape)
        activations = self._bottom_up(x)
        means = []

        def choose(index, h, prior_mu, prior_logvar):
            means.append(self._posterior(index, h, activations)[0])
            return means[-1]

        self._top_down(x.shape[0], choose)
        return means

    def posterior_mean(self, x: Tensor) -> Tensor:
        """[B, latent_dim]: :meth:`posterior_mean_groups` averaged over each group's H × W
        per channel, the top group first."""
        return torch.cat([mean.mean((2, 3)) for mean in self.posterior_mean_groups(x)], dim=1)

    def _generate(self, batch: int, temperature: Temperature, generator: Optional[torch.Generator],
                  x: Optional[Tensor] = None, keep: int = 0) -> Tensor:
        """The decoder's mean with the first ``keep`` groups at x's posterior means and
        the others drawn from their conditional priors at their temperatures (0: the
        prior's mean)."""
        temperatures = _temperatures(self._where, temperature, self.num_groups)
        activations = self._bottom_up(x) if keep else None
        device = self.out_conv.weight.device

        def choose(index, h, prior_mu, prior_logvar):
            if index < keep:
                return self._posterior(index, h, activations)[0]
            if temperatures[index] == 0.0:
                return prior_mu
            noise = draw_normal(tuple(prior_mu.shape), generator, device).to(prior_mu.dtype)
            return prior_mu + temperatures[index] * torch.exp(0.5 * prior_logvar) * noise

        return self.likelihood.mean(self._top_down(batch, choose))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None,
               temperature: Temperature = 1.0) -> Tensor:
        """[N, C, H, W] ancestral samples: each group z_i ~ N(μ_p, (t_i·σ_p)²) given the
        groups above, then the decoder's mean.

        Args:
            num_samples: N.
            generator: a ``torch.Generator`` for the noise (default: the global one).
            temperature: t, one number for every group or one per group (the top first);
                0 takes the prior's mean (a group's t = 0 makes it deterministic).
        """
        num_samples = positive_int(self._where, "num_samples", num_samples)
        return self._generate(num_samples, temperature, generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, groups: Optional[int] = None, temperature: Temperature = 1.0,
                    generator: Optional[torch.Generator] = None) -> Tensor:
        """[B, C, H, W]: the decoder's mean with the top ``groups`` groups at x's posterior
        means and the rest sampled from their priors at ``temperature`` (as
        :meth:`sample`): what the levels above encode of x.  ``groups=None`` (all): the
        reconstruction at z = E_q[z|x]; 0: an unconditional sample."""
        check_batch(self._where, x, self.data_shape)
        keep = self.num_groups if groups is None else groups
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= self.num_groups:
            raise ValueError(f"{self._where}.reconstruct: groups must be None or an int in [0, {self.num_groups}], "
                             f"got {groups!r}")
        return self._generate(x.shape[0], temperature, generator, x, keep)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean for z of shape [N, latent_dim], the groups' channels from
        the top group down as :meth:`posterior_mean` gives them, each channel held
        constant over its group's H × W."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{self._where}.decode: z must have shape [N, {self.latent_dim}] (groups × "
                             f"latent_channels), got {shape}")
        parts = z.unflatten(1, (self.num_groups, self.latent_channels))

        def choose(index, h, prior_mu, prior_logvar):
            return parts[:, index, :, None, None].expand_as(prior_mu).to(prior_mu.dtype)

        return self.likelihood.mean(self._top_down(z.shape[0], choose))
