r"""An autoregressive prior over a vector latent: p(z) = Π_d p(z_d | z_<d), each conditional
a mixture of M Gaussians (M = 1: a Gaussian) whose parameters all come from one pass of a
MADE (Germain et al. 2015) over z.

The MADE is a stack of masked linear layers.  The inputs z_1 … z_D have degrees 1 … D; a
hidden unit gets a degree in 1 … D − 1 and sees only the units of the layer below whose
degree is at most its own; the 3·M outputs of dimension d (the means, log-variances and
weight logits of its components) have degree d and see only units of degree < d.  So the
parameters of p(z_d | ·) depend on z_<d alone, and those of the first dimension on
nothing: its conditional is a learned unconditional mixture (the output layer's biases).
A direct masked connection from z to the outputs (as in MADE) gives each conditional a
linear term in z_<d besides the hidden path.

* :meth:`AutoregressivePrior.log_prob` is exact: one MADE pass, and for each dimension a
  logsumexp over its components (stable: the largest term is factored out).
* :meth:`AutoregressivePrior.sample` is ancestral: D passes, pass d drawing z_d from its
  conditional given the z_<d drawn before (the outputs of degree d need nothing more).
* The KL of the ELBO to it is the one-sample Monte Carlo estimate log q(z|x) − log p(z),
  with no KL per dimension and so no free bits; the IWAE's log p(z_k) is the exact
  log-density (:class:`fastvae.models.priors.MonteCarloKLPrior`).

The log-variances are soft-bounded to (−10, 10) by 10·tanh(·/10), as the deep model's are
(docs/architecture.md), so that a conditional cannot reach a variance whose inverse
overflows float32; the density stays normalized for any value of the weights.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference import LOG_2PI
from .layers import positive_int, positive_ints
from .priors import MonteCarloKLPrior, draw_normal

LOGVAR_BOUND = 10.0
# Rows of z per chunk in log_prob are chosen so that one chunk's widest temporary (the
# conditionals' parameters, [rows, D, 3, M]) stays below this many elements: an
# evaluation's K·B rows then take bounded memory.
_CHUNK_ELEMENTS = 1 << 24


def draw_uniform(shape: tuple, generator: Optional[torch.Generator], device) -> Tensor:
    """Uniforms in [0, 1) drawn on the generator's device (any device may hold it), moved
    to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def hidden_degrees(width: int, latent_dim: int) -> Tensor:
    """[width] int64 MADE degrees of a hidden layer: 1 … D − 1 in turn (all 1 when D = 1,
    where no output may see them anyway)."""
    return torch.arange(width) % max(1, latent_dim - 1) + 1


class MaskedLinear(nn.Linear):
    r"""A linear layer whose weight is multiplied by a fixed 0/1 ``mask``
    [out_features, in_features] (a MADE layer).  It computes in its input's dtype.

    The mask is a non-persistent buffer: it follows the module across devices and dtypes
    but is not saved, being a function of the constructor's arguments.

    ``gain`` scales the weight and bias where they are used (the stored parameters are
    the used ones divided by it, the equalized learning rate of Karras et al. 2018): Adam
    moves a stored parameter by about the learning rate a step whatever its gradient's
    scale, so the layer's weights move ``gain`` times as fast.

    Example::

        >>> layer = MaskedLinear(3, 2, torch.tensor([[1, 0, 0], [1, 1, 0]]))
        >>> layer(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True, gain: float = 1.0):
        super().__init__(in_features, out_features, bias=bias)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"fastvae.models.MaskedLinear: mask must have shape [{out_features}, {in_features}], "
                             f"got {tuple(mask.shape)}")
        if not (isinstance(gain, (int, float)) and not isinstance(gain, bool) and 0 < gain < math.inf):
            raise ValueError(f"fastvae.models.MaskedLinear: gain must be a positive finite number, got {gain!r}")
        self.gain = float(gain)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)
        with torch.no_grad():  # nn.Linear's initialization, of the weights as used
            self.weight.div_(self.gain)
            if self.bias is not None:
                self.bias.div_(self.gain)

    def used_weight(self) -> Tensor:
        """The masked weight as the layer applies it, [out_features, in_features]."""
        return self.gain * self.weight * self.mask

    def used_bias(self) -> Optional[Tensor]:
        """The bias as the layer applies it, [out_features] (None without one)."""
        return None if self.bias is None else self.gain * self.bias

    def forward(self, x: Tensor) -> Tensor:
        bias = self.used_bias()
        return F.linear(x, self.used_weight().to(x.dtype), None if bias is None else bias.to(x.dtype))


class AutoregressivePrior(MonteCarloKLPrior):
    r"""p(z) = Π_d Σ_m π_dm(z_<d) N(z_d; μ_dm(z_<d), exp ℓ_dm(z_<d)): an autoregressive
    prior whose conditionals are mixtures of ``num_components`` Gaussians, given by a MADE
    (see :mod:`fastvae.models.autoregressive_prior`).

    At initialization the output layer's weights are zero, so the prior starts as a
    product of identical unconditional mixtures (for M = 1 the standard normal; for M > 1
    components centred at the M quantiles (m + ½)/M of the standard normal, unit
    variance, equal weights) and learns its dependencies from there.

    The density is computed in float32 (float64 when the prior is float64), outside any
    autocast region.

    Learned jointly with the encoder by the ELBO, a prior that moves as fast as the
    encoder can follow the posteriors into collapse (README, "An autoregressive prior":
    at Adam's 1e-3 the MLP VAE on binarized MNIST keeps 4.6 nats of KL); ``lr_scale`` s
    makes the prior learn s times as fast under Adam (:class:`MaskedLinear`'s ``gain``).
    The VAEs pass 0.01 unless told otherwise; this class's default, 1, suits a density
    fitted alone.

    Args:
        latent_dim: D.
        num_components: M, the components of each conditional (1: Gaussian conditionals).
        hidden_sizes: widths of the MADE's hidden layers (ELU after each); empty: the
            conditionals' parameters are linear in z_<d.
        lr_scale: the prior's learning rate relative to the model's, a number in (0, 1]
            (the gain of its layers).

    Example::

        >>> prior = AutoregressivePrior(16, num_components=3, hidden_sizes=(64, 64))
        >>> z = prior.sample(5, torch.Generator().manual_seed(0))   # [5, 16]
        >>> prior.log_prob(z).shape
        torch.Size([5])
    """

    def __init__(self, latent_dim: int, num_components: int = 1, hidden_sizes: Sequence[int] = (256, 256),
                 lr_scale: float = 1.0):
        super().__init__()
        where = "fastvae.models.AutoregressivePrior"
        self.latent_dim = positive_int(where, "latent_dim", latent_dim)
        self.num_components = positive_int(where, "num_components", num_components)
        self.hidden_sizes = positive_ints(where, "hidden_sizes", hidden_sizes, allow_empty=True)
        if isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float)) or not 0 < lr_scale <= 1:
            raise ValueError(f"{where}: lr_scale must be a number in (0, 1], got {lr_scale!r}")
        self.lr_scale = float(lr_scale)
        gain = self.lr_scale
        size, components = self.latent_dim, self.num_components
        input_degrees = torch.arange(1, size + 1)
        # Output j belongs to dimension j // (3M): its degree is that dimension's.
        output_degrees = input_degrees.repeat_interleave(3 * components)
        layers, below, below_degrees = [], size, input_degrees
        for width in self.hidden_sizes:
            degrees = hidden_degrees(width, size)
            layers.append(MaskedLinear(below, width, degrees[:, None] >= below_degrees[None, :], gain=gain))
            below, below_degrees = width, degrees
        self.hidden = nn.ModuleList(layers)
        self.output = MaskedLinear(below, size * 3 * components, output_degrees[:, None] > below_degrees[None, :],
                                   gain=gain)
        self.direct = None
        if self.hidden_sizes:
            self.direct = MaskedLinear(size, size * 3 * components, output_degrees[:, None] > input_degrees[None, :],
                                       bias=False, gain=gain)
        with torch.no_grad():
            self.output.weight.zero_()
            if self.direct is not None:
                self.direct.weight.zero_()
            bias = self.output.bias.view(size, 3, components)
            bias.zero_()
            if components > 1:
                quantiles = (torch.arange(components, dtype=torch.float64) + 0.5) / components
                bias[:, 0] = torch.special.ndtri(quantiles).float() / gain

    def _compute_dtype(self) -> torch.dtype:
        return torch.float64 if self.output.weight.dtype == torch.float64 else torch.float32

    def conditionals(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""The parameters of every conditional p(z_d | z_<d) at z [..., D]: (means,
        log-variances, log-weights), each [..., D, M], in z's dtype; those of dimension d
        depend on z_<d only.

        Example::

            >>> means, logvars, log_weights = prior.conditionals(torch.randn(8, prior.latent_dim))
            >>> log_weights.exp().sum(-1)    # ones, [8, D]
        """
        hidden = z
        for layer in self.hidden:
            hidden = F.elu(layer(hidden))
        raw = self.output(hidden)
        if self.direct is not None:
            raw = raw + self.direct(z)
        raw = raw.unflatten(-1, (self.latent_dim, 3, self.num_components))
        logvars = LOGVAR_BOUND * torch.tanh(raw[..., 1, :] / LOGVAR_BOUND)
        return raw[..., 0, :], logvars, torch.log_softmax(raw[..., 2, :], dim=-1)

    def _check_z(self, z) -> None:
        if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[-1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"fastvae.models.AutoregressivePrior.log_prob: z must have shape [..., "
                             f"{self.latent_dim}], got {shape}")

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) = Σ_d log p(z_d | z_<d): z [..., D] → [...], float32 (float64 for a
        float64 prior), differentiable in z and in the prior's weights."""
        self._check_z(z)
        dtype = self._compute_dtype()
        flat = z.reshape(-1, self.latent_dim).to(dtype)
        widest = max((self.latent_dim * 3 * self.num_components,) + self.hidden_sizes)
        rows = max(1, _CHUNK_ELEMENTS // widest)
        pieces = []
        with torch.autocast(flat.device.type, enabled=False):
            for start in range(0, flat.shape[0], rows):
                chunk = flat[start:start + rows]
                means, logvars, log_weights = self.conditionals(chunk)
                log_normal = -0.5 * (LOG_2PI + logvars + (chunk[..., None] - means) ** 2 * torch.exp(-logvars))
                pieces.append(torch.logsumexp(log_weights + log_normal, dim=-1).sum(-1))
        log_density = torch.cat(pieces) if pieces else flat.new_zeros(0)
        return log_density.reshape(z.shape[:-1])

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """[num_samples, D] ancestral draws z ~ p(z), D MADE passes, on ``device`` (default:
        the prior's).  The noise (a uniform per dimension choosing its component when
        M > 1, then a standard normal per dimension) is drawn up front from ``generator``
        on its own device, so a seeded generator gives the same draws on any device."""
        num_samples = positive_int("fastvae.models.AutoregressivePrior.sample", "num_samples", num_samples)
        weight = self.output.weight
        dtype, home = self._compute_dtype(), weight.device
        with torch.no_grad(), torch.autocast(home.type, enabled=False):
            shape = (num_samples, self.latent_dim)
            choice = draw_uniform(shape, generator, home).to(dtype) if self.num_components > 1 else None
            noise = draw_normal(shape, generator, home).to(dtype)
            z = torch.zeros(shape, dtype=dtype, device=home)
            for dim in range(self.latent_dim):
                means, logvars, log_weights = (t[:, dim] for t in self.conditionals(z))  # [N, M]
                if choice is None:
                    mean, logvar = means[:, 0], logvars[:, 0]
                else:
                    # The component whose cumulative weight first exceeds the uniform.
                    cumulative = torch.cumsum(log_weights.exp(), dim=-1)
                    index = (cumulative < choice[:, dim:dim + 1]).sum(-1, keepdim=True)
                    index = index.clamp_(max=self.num_components - 1)
                    mean, logvar = means.gather(1, index)[:, 0], logvars.gather(1, index)[:, 0]
                z[:, dim] = mean + torch.exp(0.5 * logvar) * noise[:, dim]
        return z.to(self._device(device))

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, num_components={self.num_components}, "
                f"hidden_sizes={list(self.hidden_sizes)}, lr_scale={self.lr_scale}")

