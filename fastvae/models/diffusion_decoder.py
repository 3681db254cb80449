r"""A diffusion decoder p(x|z): a conditional variational diffusion model (Kingma et al.
2021, "Variational Diffusion Models") over the data x in [0, 1] on the grid of its L
levels (L = 2: binary; L = 256: 8-bit, x = k/255), mapped to x̃ = 2x − 1.

With the noise schedule γ(t) = −log SNR(t) (:mod:`fastvae.models.noise_schedule`),
α_t² = sigmoid(−γ_t), σ_t² = sigmoid(γ_t) and q(z_t|x) = N(α_t·x̃, σ_t² I), the
continuous-time bound is

    −log p(x|z) ≤ L_prior + L_diffusion + L_recon,
    L_prior     = KL(q(z_1|x) ‖ N(0, I))
                = ½·Σ_i (σ_1² + α_1²·x̃_i² − 1 − log σ_1²),
    L_diffusion = ½·E_{t ~ U(0,1), ε}[γ'(t)·‖ε − ε̂(z_t; γ_t, z)‖²],
    L_recon     = E_{z_0 ~ q(z_0|x)}[−log p(x|z_0)],
                  p(x_i = v | z_0) ∝ exp(−(z_0,i − α_0·v)²/(2σ_0²)) over the L levels v of x̃,

a discrete distribution, so the bound is in nats of the data's own distribution.
A learned schedule's endpoints γ_0, γ_1 get the bound's gradient; its shape between them,
on which the expectation of L_diffusion does not depend, gets the gradient of the
estimate's second moment over 2·mean(L̂) (VDM's variance minimization), so its t-samples
vary less.
L_diffusion draws its t by VDM's low-discrepancy sampler, t_b = (u + b/B) mod 1 over the
B = S·N draws of a batch (S t-samples per data point, averaged), z_t by the fused
:func:`fastvae.diffuse` and its loss by :func:`fastvae.diffusion_loss` (weight γ'(t),
ε regenerated from the seed).  The whole bound is differentiable in the denoiser, the
context and the schedule's endpoints.

Conditioning on z: the VAE's ordinary decoder network maps z to a data-shaped
``context`` (what the Bernoulli decoder would read as logits), which the denoiser reads
beside z_t; z itself enters too (:mod:`fastvae.models.denoisers`).

The noise prediction: the denoiser network gives per element a Gaussian guess N(m, s²)
at x̃; with z_t's own likelihood N(z_t; α_t·v, σ_t²) over the data's L levels v it makes
the posterior mean

    x̂ = Σ_v v·softmax_v(−(v − m)²/(2s²) − (z_t − α_t·v)²/(2σ_t²)),   ε̂ = (z_t − α_t·x̂)/σ_t,

(:meth:`DiffusionDecoder.predict_noise`).  Any ε̂ keeps the bound a bound; this one is
exact where z_t alone decides x (high SNR), which a network predicting ε̂ directly must
learn as a function of gain 1/σ_t.

Sampling: z_1 ~ N(0, I), then T steps from t = i/T to s = (i − 1)/T, either ancestral
(VDM's p(z_s|z_t)), with c = −expm1(γ_s − γ_t),

    z_s = (α_s/α_t)·(z_t − c·σ_t·ε̂) + σ_s·√c·ε,

or deterministic (DDIM): x̂ = (z_t − σ_t·ε̂)/α_t, z_s = α_s·x̂ + σ_s·ε̂; finally the mean
of p(x|z_0) in the data's range [0, 1].
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .layers import positive_int
from .noise_schedule import GAMMA_MAX, GAMMA_MIN, NoiseSchedule, make_schedule

SAMPLERS = ("ancestral", "deterministic")
LEVELS = (2, 256)


class DiffusionTerms(NamedTuple):
    """The three terms of the bound, each [N] float32 nats: ``prior`` (t = 1),
    ``diffusion`` (the continuous-time term, the mean over the t-samples) and
    ``reconstruction`` (t = 0); their sum bounds −log p(x|z) from above."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor

    def total(self) -> Tensor:
        return self.prior + self.diffusion + self.reconstruction


def check_sampling(where: str, steps, sampler) -> tuple[int, str]:
    """(steps, sampler) checked: steps an int >= 1, sampler one of :data:`SAMPLERS`."""
    steps = positive_int(where, "diffusion_steps", steps)
    if sampler not in SAMPLERS:
        raise ValueError(f"{where}: diffusion_sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    return steps, sampler


def _scales(gamma: Tensor) -> tuple[Tensor, Tensor]:
    """(α, σ) = (√sigmoid(−γ), √sigmoid(γ))."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    return values.view((-1,) + (1,) * (like.dim() - 1))


def low_discrepancy_times(count: int, device, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""[count] float32 times t_b = (u + b/count) mod 1, u ~ U(0, 1) drawn once from
    ``generator``: VDM's low-discrepancy sampler, one stratum of width 1/count per draw.

    Example::

        >>> low_discrepancy_times(4, "cpu").sort().values.diff()   # all 0.25
    """
    draw_device = generator.device if generator is not None else torch.device(device)
    u = torch.rand(1, generator=generator, device=draw_device).to(device)
    return torch.remainder(u + torch.arange(count, device=device, dtype=torch.float32) / count, 1.0)


class DiffusionDecoder(nn.Module):
    r"""The diffusion decoder of a VAE (see the module's docstring).

    Args:
        data_shape: the shape of one data point.
        denoiser: a module ε̂ = denoiser(z_t, γ_t, context, z)
            (:class:`fastvae.models.denoisers.MLPDenoiser` or ``UNetDenoiser``).
        schedule: 'fixed' (linear in t) or 'learned' (VDM's monotone network).
        levels: L, the data's levels: 2 (binary) or 256 (8-bit, x = k/255).
        t_samples: S, t-samples per data point in L_diffusion (averaged).
        steps: T, the sampling steps of :meth:`sample` by default.
        sampler: 'ancestral' or 'deterministic', the default of :meth:`sample`.
        gamma_min, gamma_max: the schedule's (initial) endpoints γ(0), γ(1).

    Example::

        >>> decoder = DiffusionDecoder((784,), MLPDenoiser(784, 50), schedule="fixed", levels=2)
        >>> nll_bound = decoder.nll(x, z, context)            # [N] nats
        >>> images = decoder.sample(context, z, steps=100)    # [N, 784] in [0, 1]
    """

    def __init__(self, data_shape, denoiser: nn.Module, schedule: str = "fixed", levels: int = 2,
                 t_samples: int = 1, steps: int = 100, sampler: str = "ancestral",
                 gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX):
        super().__init__()
        where = "fastvae.models.DiffusionDecoder"
        self.data_shape = tuple(data_shape)
        self.denoiser = denoiser
        self.schedule: NoiseSchedule = make_schedule(where, schedule, gamma_min, gamma_max)
        if levels not in LEVELS:
            raise ValueError(f"{where}: diffusion_levels must be 2 (binary data) or 256 (8-bit data), got {levels!r}")
        self.levels = levels
        self.t_samples = positive_int(where, "diffusion_t_samples", t_samples)
        self.steps, self.sampler = check_sampling(where, steps, sampler)

    # -- the bound ----------------------------------------------------------------------

    def predict_noise(self, z_t: Tensor, gamma: Tensor, context: Tensor, z: Tensor) -> Tensor:
        r"""ε̂ = (z_t − α_t·x̂)/σ_t (float32, z_t's shape) with x̂ the posterior mean of x̃
        over the levels v under the denoiser's guess N(m, s²) and z_t's likelihood:
        x̂ = Σ_v v·softmax_v(−(v − m)²/(2s²) − (z_t − α_t·v)²/(2σ_t²)); log s is clamped
        to [−10, 10].

        Args:
            z_t: [B, *data_shape]; gamma: γ_t [B]; context: [B, *data_shape]; z: [B, D]."""
        guess = self.denoiser(z_t, gamma, context, z).float()
        mean, log_scale = guess[:, 0], guess[:, 1].clamp(-10.0, 10.0)
        z_t = z_t.float()
        alpha, sigma = (_per_row(v, z_t) for v in _scales(gamma.float()))
        values = torch.linspace(-1.0, 1.0, self.levels, device=z_t.device)
        logits = (-((values - mean.unsqueeze(-1)) ** 2) * (0.5 * torch.exp(-2 * log_scale)).unsqueeze(-1)
                  - (z_t.unsqueeze(-1) - alpha.unsqueeze(-1) * values) ** 2 / (2 * sigma * sigma).unsqueeze(-1))
        x_hat = (torch.softmax(logits, dim=-1) * values).sum(-1)
        return (z_t - alpha * x_hat) / sigma

    def scaled(self, x: Tensor) -> Tensor:
        """x̃ = 2x − 1, float32."""
        return 2 * x.float() - 1

    def prior_term(self, x_tilde: Tensor) -> Tensor:
        r"""[N] L_prior = KL(N(α_1·x̃, σ_1²) ‖ N(0, 1)) summed over the data,
        ½·Σ_i (σ_1² + α_1²·x̃_i² − 1 − log σ_1²) with log σ_1² = −softplus(−γ_1)."""
        gamma_1 = self.schedule.gamma_1
        alpha_sq, sigma_sq = torch.sigmoid(-gamma_1), torch.sigmoid(gamma_1)
        log_sigma_sq = -F.softplus(-gamma_1)
        per_element = 0.5 * (sigma_sq + alpha_sq * x_tilde * x_tilde - 1 - log_sigma_sq)
        return per_element.flatten(1).sum(1)

    def diffusion_term(self, x_tilde: Tensor, context: Tensor, z: Tensor, generator: Optional[torch.Generator] = None,
                       steps: Optional[int] = None) -> Tensor:
        r"""[N] L_diffusion, the mean over ``t_samples`` draws per point.

        ``steps`` None: the continuous-time term ½·γ'(t)·‖ε − ε̂‖².  ``steps`` = T: the
        discrete-time T-step term, t = i/T with i uniform in 1..T, s = t − 1/T:
        T/2·(SNR(s) − SNR(t))·‖x̃ − x̂‖² = ½·T·expm1(γ_t − γ_s)·‖ε − ε̂‖²."""
        count = x_tilde.shape[0]
        repeats = self.t_samples
        x_rep = x_tilde.repeat((repeats,) + (1,) * (x_tilde.dim() - 1))
        t = low_discrepancy_times(count * repeats, x_tilde.device, generator)
        row_losses = []
        if steps is None:
            shape, shape_derivative = self.schedule.shape_and_derivative(t)
            if shape.requires_grad:
                # The schedule's shape gets the gradient of Σ_b L̂_b² (the estimate's
                # variance, as its mean does not depend on the shape; Kingma et al. 2021,
                # section 5.2): the bound's gradient into ŝ_b, scaled by 2·L̂_b, here over
                # 2·mean(L̂) so that it is of the bound's gradient's size (gradient clipping).
                def to_variance(grad: Tensor) -> Tensor:
                    return grad * (row_losses[0] / row_losses[0].mean().clamp(min=1e-12))

                shape.register_hook(to_variance)
                shape_derivative.register_hook(to_variance)
            gamma, weight = self.schedule.compose(shape, shape_derivative)
        else:
            t = torch.ceil(t * steps).clamp(min=1) / steps
            gamma = self.schedule(t)
            weight = steps * torch.expm1(gamma - self.schedule(t - 1.0 / steps))
        z_t, noise_seed = ops.diffuse(x_rep, gamma, generator=generator)
        eps_hat = self.predict_noise(z_t, gamma, context.repeat((repeats,) + (1,) * (context.dim() - 1)),
                                     z.repeat(repeats, 1))
        loss = ops.diffusion_loss(eps_hat, noise_seed, weight).float()
        row_losses.append(loss.detach())
        return loss.view(repeats, count).mean(0)

    def level_log_probs(self, z_0: Tensor) -> Tensor:
        r"""[..., L] log p(x_i = v_k | z_0): log-softmax over the levels v_k = 2k/(L−1) − 1
        of −(z_0,i − α_0·v_k)²/(2σ_0²)."""
        gamma_0 = self.schedule.gamma_0
        alpha_0, sigma_0 = _scales(gamma_0)
        values = torch.linspace(-1.0, 1.0, self.levels, device=z_0.device)
        logits = -((z_0.unsqueeze(-1) - alpha_0 * values) ** 2) / (2 * sigma_0 * sigma_0)
        return torch.log_softmax(logits, dim=-1)

    def reconstruction_term(self, x: Tensor, x_tilde: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """[N] L_recon = −log p(x|z_0) at one z_0 ~ q(z_0|x) = N(α_0·x̃, σ_0²)."""
        alpha_0, sigma_0 = _scales(self.schedule.gamma_0)
        draw_device = generator.device if generator is not None else x_tilde.device
        eps = torch.randn(x_tilde.shape, generator=generator, device=draw_device).to(x_tilde.device)
        z_0 = alpha_0 * x_tilde + sigma_0 * eps
        index = torch.round(x.float() * (self.levels - 1)).long().clamp(0, self.levels - 1)
        log_probs = self.level_log_probs(z_0).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return -log_probs.flatten(1).sum(1)

    def terms(self, x: Tensor, z: Tensor, context: Tensor, generator: Optional[torch.Generator] = None,
              steps: Optional[int] = None) -> DiffusionTerms:
        r"""The bound's three terms for data x [N, *data_shape] in [0, 1] (on the grid of
        ``levels``), latents z [N, D] and the decoder network's context [N, *data_shape];
        ``steps`` as :meth:`diffusion_term` (None: continuous time)."""
        x_tilde = self.scaled(x)
        return DiffusionTerms(self.prior_term(x_tilde), self.diffusion_term(x_tilde, context, z, generator, steps),
                              self.reconstruction_term(x, x_tilde, generator))

    def nll(self, x: Tensor, z: Tensor, context: Tensor) -> Tensor:
        """[N] the bound on −log p(x|z), L_prior + L_diffusion + L_recon (nats)."""
        return self.terms(x, z, context).total()

    def shared_noise_terms(self, x: Tensor, z: Tensor, context: Tensor,
                           generator: Optional[torch.Generator] = None) -> DiffusionTerms:
        r"""The bound's three terms, each [K, B], for K latents per data point: data x
        [B, *data_shape], latents z [K, B, D] and their contexts [K, B, *data_shape], every
        latent of a point with the same draws (common random numbers): the same S times t,
        the same ε (one :func:`fastvae.diffuse` per point and t, its ``noise_seed`` given
        to every latent's :func:`fastvae.diffusion_loss`) and the same z_0.

        z_t, L_prior and L_recon do not depend on the latent; only ε̂ does.  So the noise of
        the estimate that is common to the K latents moves every log-weight of a point by the
        same amount and the importance-weighted estimate log-mean-exp_k(·) by that amount,
        whose mean is 0: it does not bias the estimate.  Only the part that differs between
        latents does, upward, since log-mean-exp is convex (:mod:`fastvae.eval.diffusion`
        measures both parts)."""
        num_latents, count = z.shape[0], z.shape[1]
        x_tilde = self.scaled(x)
        repeats = self.t_samples
        x_rep = x_tilde.repeat((repeats,) + (1,) * (x_tilde.dim() - 1))
        t = low_discrepancy_times(count * repeats, x_tilde.device, generator)
        gamma, weight = self.schedule.compose(*self.schedule.shape_and_derivative(t))
        z_t, noise_seed = ops.diffuse(x_rep, gamma, generator=generator)
        data_dims = (1,) * (context.dim() - 2)
        eps_hat = self.predict_noise(
            z_t.repeat((num_latents,) + (1,) * (z_t.dim() - 1)), gamma.repeat(num_latents),
            context.repeat((1, repeats) + data_dims).flatten(0, 1), z.repeat(1, repeats, 1).flatten(0, 1))
        rows = count * repeats
        diffusion = torch.stack([
            ops.diffusion_loss(eps_hat[k * rows:(k + 1) * rows], noise_seed, weight).float()
            .view(repeats, count).mean(0)
            for k in range(num_latents)])
        prior = self.prior_term(x_tilde).expand(num_latents, count)
        reconstruction = self.reconstruction_term(x, x_tilde, generator).expand(num_latents, count)
        return DiffusionTerms(prior, diffusion, reconstruction)

    # -- sampling -----------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, context: Tensor, z: Tensor, steps: Optional[int] = None, sampler: Optional[str] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        r"""The mean of p(x|z_0) [N, *data_shape] in [0, 1] at the end of one chain
        z_1 ~ N(0, I) → z_0 of T = ``steps`` steps (default: the decoder's) with
        ``sampler`` 'ancestral' or 'deterministic' (default: the decoder's); every draw
        from ``generator``."""
        steps, sampler = check_sampling("fastvae.models.DiffusionDecoder.sample", steps or self.steps,
                                        sampler or self.sampler)
        count, device = z.shape[0], z.device
        draw_device = generator.device if generator is not None else device

        def normal(shape):
            return torch.randn(shape, generator=generator, device=draw_device).to(device)

        z_t = normal((count,) + self.data_shape)
        for i in range(steps, 0, -1):
            t = torch.full((count,), i / steps, device=device)
            s = torch.full((count,), (i - 1) / steps, device=device)
            gamma_t, gamma_s = self.schedule(t), self.schedule(s)
            alpha_t, sigma_t = (_per_row(v, z_t) for v in _scales(gamma_t))
            alpha_s, sigma_s = (_per_row(v, z_t) for v in _scales(gamma_s))
            eps_hat = self.predict_noise(z_t, gamma_t, context, z)
            if sampler == "ancestral":
                c = _per_row(-torch.expm1(gamma_s - gamma_t), z_t)
                z_t = alpha_s / alpha_t * (z_t - c * sigma_t * eps_hat) + sigma_s * c.sqrt() * normal(z_t.shape)
            else:
                x_hat = (z_t - sigma_t * eps_hat) / alpha_t
                z_t = alpha_s * x_hat + sigma_s * eps_hat
        probabilities = self.level_log_probs(z_t).exp()
        values = torch.linspace(0.0, 1.0, self.levels, device=device)
        return (probabilities * values).sum(-1)

    def extra_repr(self) -> str:
        return (f"levels={self.levels}, t_samples={self.t_samples}, steps={self.steps}, "
                f"sampler={self.sampler!r}")


DIFFUSION_DEFAULTS = {
    "diffusion_schedule": "fixed",
    "diffusion_t_samples": 1,
    "diffusion_levels": 2,
    "diffusion_steps": 100,
    "diffusion_sampler": "ancestral",
}


def build_diffusion_decoder(where: str, denoiser: str, data_shape, latent_dim: int, schedule: str, levels: int,
                            t_samples: int, steps: int, sampler: str, widths) -> DiffusionDecoder:
    """The :class:`DiffusionDecoder` of a model: ``denoiser`` 'mlp'
    (:class:`~fastvae.models.denoisers.MLPDenoiser` with hidden ``widths``) or 'unet'
    (:class:`~fastvae.models.denoisers.UNetDenoiser` with level channels ``widths``)."""
    from .denoisers import MLPDenoiser, UNetDenoiser
    from .layers import positive_ints

    data_shape = tuple(data_shape)
    if denoiser == "mlp":
        size = 1
        for dim in data_shape:
            size *= dim
        network = MLPDenoiser(size, latent_dim, positive_ints(where, "diffusion_hidden_sizes", list(widths)),
                              GAMMA_MIN, GAMMA_MAX)
    else:
        network = UNetDenoiser(data_shape, latent_dim, positive_ints(where, "diffusion_channels", list(widths)),
                               GAMMA_MIN, GAMMA_MAX)
    if not isinstance(levels, int) or isinstance(levels, bool) or levels not in LEVELS:
        raise ValueError(f"{where}: diffusion_levels must be 2 (binary data) or 256 (8-bit data), got {levels!r}")
    if schedule not in ("fixed", "learned"):
        raise ValueError(f"{where}: diffusion_schedule must be 'fixed' or 'learned', got {schedule!r}")
    positive_int(where, "diffusion_t_samples", t_samples)
    check_sampling(where, steps, sampler)
    return DiffusionDecoder(data_shape, network, schedule=schedule, levels=levels, t_samples=t_samples, steps=steps,
                            sampler=sampler)
