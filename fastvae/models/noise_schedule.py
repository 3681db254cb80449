r"""Noise schedules of a variational diffusion model (Kingma et al. 2021, "Variational
Diffusion Models"): γ(t) = −log SNR(t) for t in [0, 1], strictly increasing (the
signal-to-noise ratio SNR(t) = e^(−γ(t)) strictly decreasing), and its derivative γ'(t),
the weight of the continuous-time diffusion loss ½·γ'(t)·‖ε − ε̂‖².

* :class:`FixedLinearSchedule`: γ(t) = γ_min + (γ_max − γ_min)·t.
* :class:`LearnedSchedule`: VDM's monotone network rescaled to learned endpoints.

Both return γ and γ' analytically (no autograd pass), differentiable in the schedule's
parameters, so the bound's gradient trains a learned schedule.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import positive_int

# VDM's defaults: log SNR from 13.3 at t = 0 down to −5 at t = 1.
GAMMA_MIN = -13.3
GAMMA_MAX = 5.0
SCHEDULES = ("fixed", "learned")


def check_gamma_range(where: str, gamma_min, gamma_max) -> tuple[float, float]:
    """(γ_min, γ_max) as floats, finite and γ_min < γ_max."""
    for name, value in (("gamma_min", gamma_min), ("gamma_max", gamma_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
    if not gamma_min < gamma_max:
        raise ValueError(f"{where}: gamma_min must be < gamma_max (SNR decreasing in t), got {gamma_min} and "
                         f"{gamma_max}")
    return float(gamma_min), float(gamma_max)


class NoiseSchedule(nn.Module):
    r"""γ(t) and γ'(t) for t [B] in [0, 1]; ``gamma_0`` and ``gamma_1`` are the endpoints
    γ(0), γ(1) as 0-dim tensors.  A schedule is its endpoints and its shape
    ŝ(t), increasing from ŝ(0) = 0 to ŝ(1) = 1:

        γ(t) = γ_0 + (γ_1 − γ_0)·ŝ(t),   γ'(t) = (γ_1 − γ_0)·ŝ'(t).

    The continuous-time diffusion loss's expectation depends on the endpoints only (for a
    denoiser that sees γ_t, not t), so the shape is free to lower the variance of its
    estimate (Kingma et al. 2021, section 5.2)."""

    def shape_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(ŝ(t), ŝ'(t)), each of t's shape, float32."""
        raise NotImplementedError

    def compose(self, shape: Tensor, shape_derivative: Tensor) -> tuple[Tensor, Tensor]:
        """(γ, γ') from the shape (ŝ, ŝ') and the endpoints."""
        span = self.gamma_1 - self.gamma_0
        return self.gamma_0 + span * shape, span * shape_derivative

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(γ(t), γ'(t)), each of t's shape, float32."""
        return self.compose(*self.shape_and_derivative(t))

    def forward(self, t: Tensor) -> Tensor:
        """γ(t), of t's shape."""
        return self.gamma_and_derivative(t)[0]

    @property
    def gamma_0(self) -> Tensor:
        """γ(0), a 0-dim float32 tensor."""
        raise NotImplementedError

    @property
    def gamma_1(self) -> Tensor:
        """γ(1), a 0-dim float32 tensor."""
        raise NotImplementedError


class FixedLinearSchedule(NoiseSchedule):
    r"""γ(t) = γ_min + (γ_max − γ_min)·t, γ'(t) = γ_max − γ_min: VDM's fixed schedule.

    Args:
        gamma_min: γ(0) = −log SNR(0) (−13.3 by default).
        gamma_max: γ(1) (5 by default); > gamma_min.

    Example::

        >>> schedule = FixedLinearSchedule()
        >>> gamma, dgamma = schedule.gamma_and_derivative(torch.rand(8))   # each [8]
    """

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX):
        super().__init__()
        self.gamma_min, self.gamma_max = check_gamma_range("fastvae.models.FixedLinearSchedule", gamma_min, gamma_max)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def gamma_0(self) -> Tensor:
        return self._anchor.new_tensor(self.gamma_min, dtype=torch.float32)

    @property
    def gamma_1(self) -> Tensor:
        return self._anchor.new_tensor(self.gamma_max, dtype=torch.float32)

    def shape_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.float()
        return t, torch.ones_like(t)

    def extra_repr(self) -> str:
        return f"gamma_min={self.gamma_min}, gamma_max={self.gamma_max}"


class LearnedSchedule(NoiseSchedule):
    r"""VDM's learned monotone schedule: three linear layers with positive weights,

        h = l1(t)  (1 → 1),   γ̃(t) = h + l3(sigmoid(l2(h)))  (l2: 1 → H, l3: H → 1),

    rescaled to learned endpoints γ_0 < γ_1,

        γ(t) = γ_0 + (γ_1 − γ_0)·ŝ(t),   ŝ(t) = (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)),

    with γ_1 = γ_0 + softplus(ρ) so that γ_1 > γ_0 always (initialised at γ_min, γ_max).
    The weights are softplus of free parameters (positive), so γ̃ and γ are strictly
    increasing, and

        γ̃'(t) = a·(1 + Σ_k c_k·s_k(1 − s_k)·b_k),   s = sigmoid(l2(h)),

    with a, b, c the weights of l1, l2, l3: γ'(t) = (γ_1 − γ_0)·γ̃'(t)/(γ̃(1) − γ̃(0)),
    analytic and differentiable in every parameter.

    Args:
        gamma_min, gamma_max: the initial endpoints γ_0, γ_1.
        hidden: H, the width of l2 (1024 in VDM).

    Example::

        >>> schedule = LearnedSchedule()
        >>> gamma, dgamma = schedule.gamma_and_derivative(torch.rand(8))
        >>> (dgamma > 0).all()
        tensor(True)
    """

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX, hidden: int = 1024):
        super().__init__()
        where = "fastvae.models.LearnedSchedule"
        gamma_min, gamma_max = check_gamma_range(where, gamma_min, gamma_max)
        self.hidden = positive_int(where, "hidden", hidden)
        self.gamma_start = nn.Parameter(torch.tensor(gamma_min))
        # softplus(ρ) = γ_max − γ_min at initialisation.
        span = gamma_max - gamma_min
        self.span_raw = nn.Parameter(torch.tensor(span + math.log(-math.expm1(-span))))
        self.l1_weight = nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) ≈ 1
        self.l1_bias = nn.Parameter(torch.tensor(0.0))
        self.l2_weight = nn.Parameter(torch.randn(self.hidden) * 0.5)
        self.l2_bias = nn.Parameter(torch.randn(self.hidden) * 0.5)
        self.l3_weight = nn.Parameter(torch.randn(self.hidden) * 0.5 - 3.0)
        self.l3_bias = nn.Parameter(torch.tensor(0.0))

    @property
    def gamma_0(self) -> Tensor:
        return self.gamma_start

    @property
    def gamma_1(self) -> Tensor:
        return self.gamma_start + F.softplus(self.span_raw)

    def _unnormalized(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(γ̃(t), γ̃'(t)) for t of any shape."""
        a = F.softplus(self.l1_weight)
        b = F.softplus(self.l2_weight)
        c = F.softplus(self.l3_weight)
        h = a * t.unsqueeze(-1) + self.l1_bias  # [..., 1]
        s = torch.sigmoid(h * b + self.l2_bias)  # [..., H]
        value = h.squeeze(-1) + (s * c).sum(-1) + self.l3_bias
        derivative = a * (1 + (c * b * s * (1 - s)).sum(-1))
        return value, derivative

    def shape_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.float()
        ends, _ = self._unnormalized(torch.tensor([0.0, 1.0], device=t.device))
        value, derivative = self._unnormalized(t)
        width = ends[1] - ends[0]
        return (value - ends[0]) / width, derivative / width

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}"


def make_schedule(where: str, name: str, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> NoiseSchedule:
    """The schedule called ``name``: 'fixed' (:class:`FixedLinearSchedule`) or 'learned'
    (:class:`LearnedSchedule`)."""
    if name == "fixed":
        return FixedLinearSchedule(gamma_min, gamma_max)
    if name == "learned":
        return LearnedSchedule(gamma_min, gamma_max)
    raise ValueError(f"{where}: diffusion_schedule must be one of {list(SCHEDULES)}, got {name!r}")
