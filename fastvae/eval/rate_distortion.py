"""Rate–distortion points of trained models (Alemi et al., 2018): rate R = E_x KL(q(z|x) ‖
p(z)), distortion D = E_x E_q[−log p(x|z)], both in nats; −(D + R) is the ELBO.  A sweep
over β traces the trade-off, one trained model per β, so the training is the caller's
callable and this module stays independent of the trainer."""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union


from ..models.base import VAE
from .likelihood import elbo_estimate


@dataclass(frozen=True)
class RatePoint:
    """One model's place on the rate–distortion plane.

    Attributes:
        beta: the β the model was trained with (None when unknown).
        rate: mean KL(q(z|x) ‖ p(z)) over the data, nats.
        distortion: mean −log p(x|z) over the data (one sample of q per point), nats.
        num_points: the data points measured.

    ``elbo`` = −(rate + distortion) is a property; ``as_dict()`` gives a JSON-ready dict.
    """

    beta: Optional[float]
    rate: float
    distortion: float
    num_points: int

    @property
    def elbo(self) -> float:
        return -(self.rate + self.distortion)

    def as_dict(self) -> dict:
        return {**asdict(self), "elbo": self.elbo}


def rate_distortion_point(
    model,
    data,
    beta: Optional[float] = None,
    batch_size: int = 256,
    num_points: Optional[int] = None,
    seed: Optional[int] = 0,
) -> RatePoint:
    r"""Measure a trained model's rate (mean KL) and distortion (mean reconstruction nll)
    on ``data`` with :func:`fastvae.eval.elbo_estimate`.

    Example::

        >>> point = fastvae.eval.rate_distortion_point(model, test_images, beta=4.0)
        >>> point.rate, point.distortion
    """
    estimate = elbo_estimate(model, data, batch_size, num_points, seed)
    return RatePoint(
        None if beta is None else float(beta),
        estimate.kl.mean().item(),
        estimate.nll.mean().item(),
        estimate.num_points,
    )


def _check_betas(betas) -> List[float]:
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
        raise TypeError(f"fastvae.eval.sweep_betas: betas must be a sequence of numbers, got {type(betas).__name__}")
    betas = list(betas)
    if not betas:
        raise ValueError("fastvae.eval.sweep_betas: betas is empty")
    for beta in betas:
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"fastvae.eval.sweep_betas: every beta must be a finite number >= 0, got {beta!r}")
    return [float(beta) for beta in betas]


def sweep_betas(
    train_fn: Callable[[float], Union[VAE, RatePoint]],
    betas: Sequence[float],
    data=None,
    batch_size: int = 256,
    num_points: Optional[int] = None,
    seed: Optional[int] = 0,
) -> List[RatePoint]:
    r"""Train one model per β and collect the rate–distortion points, in the order of
    ``betas``.

    Args:
        train_fn: called as ``train_fn(beta)`` once per β; returns the trained
            :class:`fastvae.models.VAE` (measured on ``data``), or a :class:`RatePoint`
            it measured itself.
        betas: the β values, finite and >= 0.
        data: the data points the models are measured on (needed when ``train_fn``
            returns models); a tensor [N, *data_shape] or a Dataset.
        batch_size, num_points, seed: as :func:`rate_distortion_point`.

    Returns:
        A list of :class:`RatePoint`, one per β.

    Example::

        >>> points = fastvae.eval.sweep_betas(lambda beta: train(beta=beta), [0.1, 0.5, 1, 2, 8],
        ...                                   data=test_images)
        >>> fastvae.eval.plot_rate_distortion(points, "sweep/rate_distortion.png")
    """
    if not callable(train_fn):
        raise TypeError(f"fastvae.eval.sweep_betas: train_fn must be callable, got {type(train_fn).__name__}")
    points = []
    for beta in _check_betas(betas):
        trained = train_fn(beta)
        if isinstance(trained, RatePoint):
            points.append(trained if trained.beta is not None else RatePoint(beta, trained.rate, trained.distortion,
                                                                             trained.num_points))
        elif isinstance(trained, VAE):
            if data is None:
                raise ValueError(
                    "fastvae.eval.sweep_betas: train_fn returned a model; pass data= to measure it on"
                )
            points.append(rate_distortion_point(trained, data, beta, batch_size, num_points, seed))
        else:
            raise TypeError(
                f"fastvae.eval.sweep_betas: train_fn({beta}) must return a fastvae.models.VAE or a RatePoint, "
                f"got {type(trained).__name__}"
            )
    return points


def plot_rate_distortion(points: Sequence[RatePoint], path: Union[str, os.PathLike]) -> Path:
    r"""Write the rate–distortion plane as PNG (640×400 pixels): distortion against rate,
    each point labelled with its β, and dotted lines of equal ELBO (D + R constant)
    through the best and the worst point.

    Example::

        >>> fastvae.eval.plot_rate_distortion(points, "sweep/rate_distortion.png")
    """
    from .pictures import _new_figure, _save_figure

    points = list(points)
    if not points or not all(isinstance(p, RatePoint) for p in points):
        raise ValueError("fastvae.eval.plot_rate_distortion: points must be a non-empty sequence of RatePoint")
    ordered = sorted(points, key=lambda p: p.rate)
    rates = [p.rate for p in ordered]
    distortions = [p.distortion for p in ordered]
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot(rates, distortions, marker="o", color="tab:blue")
    for point in ordered:
        if point.beta is not None:
            axes.annotate(f"β={point.beta:g}", (point.rate, point.distortion), textcoords="offset points",
                          xytext=(4, 4), fontsize=8)
    low, high = min(rates), max(rates)
    margin = max(high - low, 1.0) * 0.05
    for total in {min(p.rate + p.distortion for p in ordered), max(p.rate + p.distortion for p in ordered)}:
        xs = [low - margin, high + margin]
        axes.plot(xs, [total - x for x in xs], linestyle=":", color="gray", linewidth=1)
    axes.set_xlabel("rate: KL(q(z|x) ‖ p(z)) (nats)")
    axes.set_ylabel("distortion: −log p(x|z) (nats)")
    axes.set_title("rate–distortion (dotted: equal ELBO)")
    figure.tight_layout()
    return _save_figure(figure, path)
