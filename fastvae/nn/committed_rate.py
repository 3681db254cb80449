r"""The δ-VAE's committed rate (Razavi et al. 2019, "Preventing posterior collapse with
δ-VAEs"): the posterior's variance is confined so that KL(q(z_d|x) ‖ N(0, 1)) ≥ δ for
every x and every latent dimension d, whatever the encoder outputs.

The derivation.  Per dimension, KL_d = ½(μ² + σ² − 1 − log σ²) ≥ ½(σ² − 1 − log σ²), with
equality at μ = 0.  g(s) = s − 1 − log s is convex with its minimum 0 at s = 1, so
g(σ²) ≥ 2δ holds exactly when σ² ≤ σ_lo² or σ² ≥ σ_hi², the two roots of g(s) = 2δ:
writing s = −w, s − log s = 1 + 2δ becomes w·e^w = −e^(−1−2δ), so

    σ_lo² = −W₀(−e^(−1−2δ)) ≤ 1 ≤ σ_hi² = −W₋₁(−e^(−1−2δ))

on the principal and the −1 branch of the Lambert W function.

The side.  :func:`committed_logvar` confines σ² to (0, σ_lo²]: the posterior is narrower
than the prior, which is how a Gaussian code carries information about x (its mean then
moves within the prior's mass).  The other side, σ² ≥ σ_hi² > 1, would force every
posterior wider than the prior: the rate is paid in noise, the samples z fall where the
prior has little mass, and the information the code carries still needs means far out
in the tails.  Like the paper's, the allowed range is on one side of the roots.

The parameterization.  logvar = L − softplus(raw) with L the bound log σ_lo², rounded
down to the dtype (see :func:`committed_logvar_bound`): an unconstrained head output
``raw`` maps onto (−∞, L], every value of which satisfies the bound.  Float rounding is
monotone, so L − softplus(raw) computed in the dtype never exceeds L.  There is no floor:
a hard one (a clamp) would leave a posterior whose raw output passed it without the
gradient that brings its variance back, stuck paying a large KL; without one, the KL's
own gradient ½(1 − σ²) pulls a narrow posterior's log-variance up, as in a plain VAE,
whose log-variance is not bounded below either.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_HALLEY_STEPS = 60


def _check_delta(where: str, delta) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"{where}: committed_rate must be a Python number >= 0 (nats per latent dimension), got "
                        f"{type(delta).__name__}")
    if not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"{where}: committed_rate must be a finite number >= 0 (nats per latent dimension), got "
                         f"{delta}")
    return float(delta)


def committed_rate_variances(delta: float) -> tuple[float, float]:
    r"""The two posterior variances σ_lo² ≤ 1 ≤ σ_hi² at which a Gaussian posterior with
    zero mean has KL(N(0, σ²) ‖ N(0, 1)) = δ exactly: the roots of σ² − 1 − log σ² = 2δ,
    σ² = −W(−e^(−1−2δ)) on the principal (σ_lo²) and the −1 (σ_hi²) branches of the
    Lambert W function.

    The roots are found by Halley's iterations on h(t) = e^t − 1 − t − 2δ in t = log σ²
    (the same equation, in float64), started from its series about t = 0 for small δ and
    from its asymptotes for large δ; no scipy.  For the lower root the identity
    log σ_lo² = σ_lo² − 1 − 2δ keeps it exact when σ_lo² underflows.

    Args:
        delta: δ, nats per latent dimension, a finite number >= 0.

    Returns:
        (σ_lo², σ_hi²), Python floats (σ_lo² may underflow to 0.0 for δ ≳ 370; use
        :func:`committed_logvar_bound` for its logarithm).

    Example::

        >>> lo, hi = committed_rate_variances(0.5)
        >>> lo - 1 - math.log(lo), hi - 1 - math.log(hi)        # both 2δ = 1, to rounding
        (1.0..., 1.0...)
    """
    delta = _check_delta("fastvae.nn.committed_rate_variances", delta)
    log_lo = _log_root(delta, lower=True)
    log_hi = _log_root(delta, lower=False)
    return math.exp(log_lo), math.exp(log_hi)


def _log_root(delta: float, lower: bool) -> float:
    """t = log σ² solving e^t − 1 − t = 2δ, the root with t <= 0 (lower) or t >= 0."""
    target = 2.0 * delta
    if delta == 0.0:
        return 0.0
    if lower:
        if delta > 2.0:
            # e^t is small: t ≈ −1 − 2δ + e^t; one fixed-point step from −1 − 2δ.
            t = -1.0 - target
            t = -1.0 - target + math.exp(t)
        else:
            t = -math.sqrt(2.0 * target)  # e^t − 1 − t ≈ t²/2
    else:
        if delta > 2.0:
            t = math.log(1.0 + target)
            t = math.log(1.0 + target + t)
        else:
            t = math.sqrt(2.0 * target)
    for _ in range(_HALLEY_STEPS):
        exp_t = math.exp(t)
        value = math.expm1(t) - t - target
        first = math.expm1(t)  # h'(t) = e^t − 1
        second = exp_t
        if first == 0.0:
            break
        step = value / first
        step = step / (1.0 - 0.5 * step * second / first)
        t_next = t - step
        if lower:
            t_next = min(t_next, -1e-300)
        else:
            t_next = max(t_next, 1e-300)
        if t_next == t:
            break
        t = t_next
    return t


def committed_logvar_bound(delta: float, dtype: torch.dtype = torch.float32) -> float:
    r"""L, the largest log-variance of the posterior that :func:`committed_logvar` allows
    for a committed rate of δ nats per dimension, as a value of ``dtype``.

    L is log σ_lo² (see :func:`committed_rate_variances`) for a slightly larger δ, the
    margin covering the rounding of the KL's terms ½(−logvar + e^logvar + μ² − 1) in
    ``dtype`` (a few units in the last place of 1 + |L|), and then rounded down to
    ``dtype``: so the KL that ``fastvae.gaussian_kl`` computes in ``dtype`` for any
    logvar <= L, and not only the exact one, is >= δ.

    Args:
        delta: δ, a finite number >= 0; 0 gives +inf (no bound).
        dtype: the floating dtype the log-variances are computed in.

    Returns:
        L, a Python float exactly representable in ``dtype``.

    Example::

        >>> committed_logvar_bound(0.1)          # log σ_lo² for δ = 0.1, float32
        -0.9...
    """
    delta = _check_delta("fastvae.nn.committed_logvar_bound", delta)
    if not dtype.is_floating_point:
        raise TypeError(f"fastvae.nn.committed_logvar_bound: dtype must be a floating dtype, got {dtype}")
    if delta == 0.0:
        return math.inf
    eps = torch.finfo(dtype).eps
    bound = _log_root(delta, lower=True)
    # The KL's terms in dtype: each of −logvar, e^logvar, −1 and their sums is off by at
    # most half an ulp of a value <= 1 + |L| + μ²; 8 ulps of 2 + |L| cover the sum's
    # rounding (μ² >= 0 only raises the KL, and adding it rounds monotonically).
    margin = 8.0 * eps * (2.0 + abs(bound))
    bound = _log_root(delta + margin, lower=True)
    rounded = torch.tensor(bound, dtype=torch.float64).to(dtype)
    if float(rounded) > bound:
        rounded = torch.nextafter(rounded, torch.tensor(-math.inf, dtype=dtype))
    return float(rounded)


def committed_logvar(raw: Tensor, delta: float) -> Tensor:
    r"""A posterior log-variance whose KL to N(0, 1) is at least ``delta`` per dimension,
    from an unconstrained head output ``raw``: L − softplus(raw), L =
    :func:`committed_logvar_bound` (δ, raw.dtype).  The bound holds for every value of
    ``raw`` (±inf included; NaN stays NaN), and the KL computed in raw's dtype is >= δ.

    Args:
        raw: any shape, floating (float32, float64, bfloat16, float16).
        delta: δ, nats per latent dimension, a finite number > 0.

    Returns:
        logvar, raw's shape and dtype, <= L (finite for finite raw).

    Example::

        >>> logvar = committed_logvar(torch.tensor([-1e4, 0.0, 1e4]), 0.1)
        >>> (0.5 * (torch.exp(logvar) - 1 - logvar)).min() >= 0.1
        tensor(True)
    """
    delta = _check_delta("fastvae.nn.committed_logvar", delta)
    if delta == 0.0:
        raise ValueError("fastvae.nn.committed_logvar: committed_rate must be > 0 (0 is no bound: use raw as logvar)")
    bound = committed_logvar_bound(delta, raw.dtype)
    return bound - F.softplus(raw)
