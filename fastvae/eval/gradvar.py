r"""The variance of the encoder's gradient estimators of the ELBO: reparameterization
(or, for a categorical latent, the Gumbel-softmax relaxation) against the score function
(REINFORCE), with and without control variates (:mod:`fastvae.models.score_function`).

On a fixed batch x of B data points, each estimator draws N independent single-sample
estimates g_1 … g_N ∈ R^P of ∇_φ mean_b ELBO(x_b), the gradient of the batch-mean ELBO
with respect to the encoder's P parameters (the encoder network and its latent head,
flattened into one vector), one z ~ q(z|x_b) per data point per estimate.  Only the
running sums Σ g and Σ g² (float64) are kept, never the N vectors.  From them:

* ``mean_norm``: ‖ḡ‖, the norm of the estimates' mean ḡ = Σ g / N;
* ``trace``: tr Cov(g) = Σ_p Var(g_p), each variance the unbiased one (divisor N − 1):
  the expected squared distance of one estimate from the true gradient;
* ``snr``: the signal-to-noise ratio ‖ḡ‖ / √trace, the mean's norm over the norm of one
  estimate's noise (dimensionless, and so comparable between models of different P);
  a value well below 1 means that a single estimate is mostly noise;
* ``mean_norm_debiased``: √max(0, ‖ḡ‖² − trace/N), since E‖ḡ‖² = ‖E g‖² + trace/N:
  ‖ḡ‖ itself overstates the true gradient's norm when the noise is large;
* ``variance_ratio``: trace over the reference estimator's trace (the reparameterized
  one for a Gaussian latent; Gumbel-softmax at the first temperature for a categorical
  one).

The reparameterized estimator is the model's own ELBO objective (its KL analytic where
the prior allows, as training computes it); the score function's learning signal is
log p(x, z) − log q(z|x).  Both are unbiased for the same gradient; the Gumbel-softmax
estimates are of the relaxed objective's gradient, biased for the true ELBO's (their bias
shrinks with the temperature, their variance grows).

Baselines: the running mean is the checkpoint's when the model was trained with one
(``objective='score_function'``, ``baseline`` 'running_mean' or 'learned'), else the mean
learning signal of ``baseline_draws`` extra draws on the batch (independent of the
measured draws, so the estimate stays unbiased); the learned baseline is the checkpoint's
when it has one, else a fresh :class:`fastvae.models.LearningSignalBaseline` trained for
``baseline_steps`` Adam steps on the batch's learning signals (fresh draws each step).
The summary says which (``baselines``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..models.score_function import LearningSignalBaseline, learning_signal, score_function_loss
from ._common import check_model, check_positive_int, check_seed, model_device

PathLike = Union[str, os.PathLike]
FUNCTION = "gradient_variance"
DEFAULT_TEMPERATURES = (1.0, 0.5, 0.1)
# Adam's step size for a learned baseline trained on the batch before measuring.
BASELINE_LR = 3e-3
# The baselines' own draws come from seed + this (the estimators' from seed + 0, 1, ...).
BASELINE_SEED_OFFSET = 1000


@dataclass
class GradientStatistics:
    """The moments of one estimator's N estimates g ∈ R^P (see the module's docstring).

    Attributes:
        key: the estimator's name in gradvar.json (e.g. ``score_function_running_mean``).
        label: its name in the table.
        num_estimates: N.
        mean: [P] float64, Σ g / N.
        variance: [P] float64, the unbiased variance of each coordinate.
    """

    key: str
    label: str
    num_estimates: int
    mean: Tensor
    variance: Tensor

    @property
    def trace(self) -> float:
        return float(self.variance.sum())

    @property
    def mean_norm(self) -> float:
        return float(self.mean.norm())

    @property
    def snr(self) -> float:
        trace = self.trace
        return self.mean_norm / math.sqrt(trace) if trace > 0 else float("inf")

    @property
    def mean_norm_debiased(self) -> float:
        return math.sqrt(max(0.0, self.mean_norm ** 2 - self.trace / self.num_estimates))

    def standard_error(self) -> Tensor:
        """[P] float64, the standard error of each coordinate of ``mean``."""
        return (self.variance / self.num_estimates).sqrt()


@dataclass
class GradientVariance:
    """What :func:`gradient_variance` measured: ``statistics`` (estimator key → its
    :class:`GradientStatistics`, in the table's order) and ``summary`` (JSON-ready)."""

    statistics: Dict[str, GradientStatistics]
    summary: dict = field(default_factory=dict)


def encoder_parameters(model) -> List[torch.nn.Parameter]:
    """The parameters of q(z|x): the model's ``encoder`` and ``latent`` head."""
    return [p for module in (model.encoder, model.latent) for p in module.parameters() if p.requires_grad]


def _latent_kind(model) -> str:
    """'categorical' or 'gaussian': which estimators the model offers."""
    if callable(getattr(model, "score_function_terms", None)):
        if callable(getattr(model, "gumbel_softmax_output", None)):
            return "categorical"
        if callable(getattr(model, "elbo_output", None)):
            return "gaussian"
    name = getattr(model, "config", {}).get("name", type(model).__name__)
    raise ValueError(f"fastvae.eval.{FUNCTION}: the {name!r} model has no score-function estimator; the gradient "
                     f"variance is measured for the mlp, conv and discrete models")


def _accumulate(key: str, label: str, loss_of_draw: Callable[[], Tensor], parameters, num_estimates: int
                ) -> GradientStatistics:
    """Σ g and Σ g² over ``num_estimates`` draws of g = −∇ loss_of_draw() (the ELBO's
    gradient estimate: each loss is a negated ELBO estimate)."""
    total = square_total = None
    for _ in range(num_estimates):
        grads = torch.autograd.grad(loss_of_draw(), parameters, allow_unused=True)
        flat = torch.cat([(-g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                          for g, p in zip(grads, parameters)])
        if total is None:
            total, square_total = flat.clone(), flat * flat
        else:
            total += flat
            square_total += flat * flat
    mean = total / num_estimates
    if num_estimates > 1:
        variance = ((square_total - num_estimates * mean * mean) / (num_estimates - 1)).clamp_min(0.0)
    else:
        variance = torch.full_like(mean, float("nan"))
    return GradientStatistics(key, label, num_estimates, mean.cpu(), variance.cpu())


def _signals(model, x: Tensor, draws: int) -> Tensor:
    """[draws, B] learning signals log p(x, z) − log q(z|x) of fresh draws on x."""
    with torch.no_grad():
        return torch.stack([learning_signal(*model.score_function_terms(x)[:3]) for _ in range(draws)])


def _trained_control_variate(model) -> Optional[LearningSignalBaseline]:
    control = getattr(model, "control_variate", None)
    if isinstance(control, LearningSignalBaseline) and control.kind != "none" and int(control.updates) > 0:
        return control
    return None


def _learned_baseline(model, x: Tensor, running_mean: float, steps: int) -> LearningSignalBaseline:
    """A fresh learned baseline around ``running_mean``, fitted for ``steps`` Adam steps to
    the learning signals of fresh draws on x."""
    baseline = LearningSignalBaseline("learned", model.data_shape).to(x.device)
    baseline.running_mean.fill_(running_mean)
    baseline.updates.fill_(1)
    optimizer = torch.optim.Adam(baseline.network.parameters(), lr=BASELINE_LR)
    baseline.eval()  # the running mean stays fixed; only the network learns
    for _ in range(steps):
        signal = _signals(model, x, 1)[0]
        _, penalty = baseline(x, signal)
        optimizer.zero_grad(set_to_none=True)
        penalty.backward()
        optimizer.step()
    for parameter in baseline.parameters():
        parameter.requires_grad_(False)
    return baseline


def _score_function_draw(model, x: Tensor, control: Optional[Callable[[Tensor], Tensor]]) -> Callable[[], Tensor]:
    def loss() -> Tensor:
        log_px_z, log_p, log_q, _ = model.score_function_terms(x)
        signal = learning_signal(log_px_z, log_p, log_q)
        baseline = control(signal) if control is not None else torch.zeros_like(signal)
        return score_function_loss(log_px_z, log_p, log_q, baseline)

    return loss


def _temperature_key(value: float) -> str:
    return f"gumbel_softmax_t{value:g}"


def gradient_variance(model, x: Tensor, num_estimates: int = 1000,
                      temperatures: Sequence[float] = DEFAULT_TEMPERATURES, seed: Optional[int] = 0,
                      baseline_draws: int = 100, baseline_steps: int = 300) -> GradientVariance:
    r"""Measure the encoder's gradient estimators of the ELBO on the fixed batch ``x``
    (see the module's docstring for what is measured and how each statistic is defined).

    Estimators, in order: for a Gaussian latent (mlp, conv) ``reparameterized`` (the
    reference), ``score_function``, ``score_function_running_mean`` and
    ``score_function_learned``; for a categorical latent (discrete) one
    ``gumbel_softmax_t<τ>`` per temperature (straight-through off; the first is the
    reference), then the three score-function ones.

    Args:
        model: a :class:`fastvae.models.MLPVAE`, :class:`~fastvae.models.ConvVAE` or
            :class:`~fastvae.models.DiscreteVAE`; its training flag and parameters are
            left as they were (its ``requires_grad`` flags too).
        x: [B, *data_shape] float, the batch.
        num_estimates: N >= 2, single-sample estimates per estimator.
        temperatures: the Gumbel-softmax temperatures (> 0), categorical latents only.
        seed: seeds every draw (estimator i draws from seed + i, the baselines' fitting
            from seed + 1000 and seed + 1001); None: the current
            random state.  The caller's random state is restored afterwards.
        baseline_draws: extra draws that estimate the running mean when the model holds
            none.
        baseline_steps: Adam steps that fit a learned baseline when the model holds none.

    Returns:
        A :class:`GradientVariance`: ``statistics`` (key → :class:`GradientStatistics`,
        with the [P] float64 mean and variance) and ``summary``, a JSON-ready dict with
        ``estimators`` (a list of dicts: key, label, mean_norm, mean_norm_debiased,
        trace, snr, variance_ratio), ``reference``, ``num_estimates``, ``batch_size``,
        ``num_parameters``, ``latent`` ('gaussian' or 'categorical'), ``seed`` and
        ``baselines`` (each baseline's value or source).

    Example::

        >>> result = fastvae.eval.gradient_variance(model, x[:100], num_estimates=1000)
        >>> [(row["key"], row["variance_ratio"]) for row in result.summary["estimators"]]
    """
    check_model(FUNCTION, model)
    kind = _latent_kind(model)
    num_estimates = check_positive_int(FUNCTION, "num_estimates", num_estimates)
    if num_estimates < 2:
        raise ValueError(f"fastvae.eval.{FUNCTION}: num_estimates must be >= 2 (a variance needs two), "
                         f"got {num_estimates}")
    baseline_draws = check_positive_int(FUNCTION, "baseline_draws", baseline_draws)
    baseline_steps = check_positive_int(FUNCTION, "baseline_steps", baseline_steps)
    seed = check_seed(FUNCTION, seed)
    temperatures = [float(t) for t in temperatures]
    if kind == "categorical" and (not temperatures or not all(math.isfinite(t) and t > 0 for t in temperatures)):
        raise ValueError(f"fastvae.eval.{FUNCTION}: temperatures must be one or more numbers > 0, got {temperatures}")
    if not isinstance(x, Tensor) or tuple(x.shape[1:]) != tuple(model.data_shape) or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"fastvae.eval.{FUNCTION}: x must have shape [B, {', '.join(map(str, model.data_shape))}], "
                         f"got {shape}")
    device = model_device(model)
    x = x.to(device).float()
    parameters = encoder_parameters(model)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    forked = [device] if device.type == "cuda" else []
    statistics: Dict[str, GradientStatistics] = {}
    baselines: dict = {}
    try:
        with torch.random.fork_rng(devices=forked, enabled=seed is not None):
            model.eval()  # no running-mean updates, no dropout
            measured = {id(parameter) for parameter in parameters}
            for parameter in model.parameters():
                parameter.requires_grad_(id(parameter) in measured)

            def reseed(index: int) -> None:
                if seed is not None:
                    torch.manual_seed(seed + index)

            estimators = []
            if kind == "gaussian":
                estimators.append(("reparameterized", "reparameterized", lambda: model.elbo_output(x).loss))
            else:
                for t in temperatures:
                    estimators.append((_temperature_key(t), f"Gumbel-softmax τ={t:g}",
                                       lambda t=t: model.gumbel_softmax_output(x, t, hard=False).loss))
            reseed(BASELINE_SEED_OFFSET)
            stored = _trained_control_variate(model)
            if stored is not None:
                running_mean = float(stored.running_mean)
                baselines["running_mean"] = {"value": running_mean, "source": f"the checkpoint's ({stored.kind} "
                                             f"baseline, {int(stored.updates)} updates)"}
            else:
                running_mean = float(_signals(model, x, baseline_draws).double().mean())
                baselines["running_mean"] = {"value": running_mean, "source": f"estimated: the mean learning signal "
                                             f"of {baseline_draws} extra draws on the batch (the model holds none)"}
            if stored is not None and stored.kind == "learned":
                learned = stored
                baselines["learned"] = {"source": f"the checkpoint's ({int(stored.updates)} updates)"}
            else:
                reseed(BASELINE_SEED_OFFSET + 1)
                learned = _learned_baseline(model, x, running_mean, baseline_steps)
                baselines["learned"] = {"source": f"trained for {baseline_steps} Adam steps (lr {BASELINE_LR:g}) on "
                                        f"the batch's learning signals (the model holds none), around the running "
                                        f"mean above"}
            constant = torch.tensor(running_mean, device=device)
            estimators += [
                ("score_function", "score function", _score_function_draw(model, x, None)),
                ("score_function_running_mean", "score function, running-mean baseline",
                 _score_function_draw(model, x, lambda signal: constant.float().expand_as(signal))),
                ("score_function_learned", "score function, learned baseline",
                 _score_function_draw(model, x, lambda signal: learned(x, signal)[0])),
            ]
            for index, (key, label, draw) in enumerate(estimators):
                reseed(index)
                statistics[key] = _accumulate(key, label, draw, parameters, num_estimates)
    finally:
        model.train(was_training)
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)
    reference = next(iter(statistics))
    reference_trace = statistics[reference].trace
    rows = []
    for stats in statistics.values():
        rows.append({"key": stats.key, "label": stats.label, "mean_norm": stats.mean_norm,
                     "mean_norm_debiased": stats.mean_norm_debiased, "trace": stats.trace, "snr": stats.snr,
                     "variance_ratio": stats.trace / reference_trace if reference_trace > 0 else float("inf")})
    summary = {"latent": kind, "reference": reference, "num_estimates": num_estimates, "batch_size": int(x.shape[0]),
               "num_parameters": int(statistics[reference].mean.numel()), "seed": seed, "baselines": baselines,
               "estimators": rows}
    if kind == "categorical":
        summary["temperatures"] = temperatures
    return GradientVariance(statistics, summary)


def _format(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"


def gradient_variance_table(summary: dict) -> List[str]:
    """The markdown table of a :func:`gradient_variance` summary, one row per estimator."""
    reference = next(row["label"] for row in summary["estimators"] if row["key"] == summary["reference"])
    lines = [f"| estimator | ‖mean‖ | ‖mean‖ debiased | total variance (trace) | SNR | variance / {reference} |",
             "|---|---|---|---|---|---|"]
    for row in summary["estimators"]:
        lines.append(f"| {row['label']} | {_format(row['mean_norm'])} | {_format(row['mean_norm_debiased'])} | "
                     f"{_format(row['trace'])} | {_format(row['snr'])} | {_format(row['variance_ratio'])} |")
    return lines


def plot_gradient_variance(summary: dict, path: PathLike) -> Path:
    """Write a bar chart (log scale) of each estimator's total variance, from a
    :func:`gradient_variance` summary, as PNG (640×400 pixels)."""
    from .pictures import _new_figure, _save_figure

    rows = summary["estimators"]
    figure = _new_figure()
    axes = figure.add_subplot()
    traces = [max(row["trace"], 1e-300) for row in rows]
    colors = ["tab:blue" if row["key"] == summary["reference"] or row["key"].startswith(("reparam", "gumbel"))
              else "tab:orange" for row in rows]
    bars = axes.bar(range(len(rows)), traces, color=colors)
    axes.set_yscale("log")
    for bar, row in zip(bars, rows):
        axes.annotate(f"×{row['variance_ratio']:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=7)
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([row["label"].replace(", ", ",\n") for row in rows], fontsize=7)
    axes.set_ylabel("total variance tr Cov(g) (log scale)")
    axes.set_title(f"encoder gradient variance, {summary['num_estimates']} estimates, batch {summary['batch_size']}",
                   fontsize=9)
    figure.tight_layout()
    return _save_figure(figure, path)


def write_gradient_variance(result: GradientVariance, out: PathLike, title: str = "Gradient variance",
                            notes: Sequence[str] = ()) -> Dict[str, Path]:
    """Write ``out``/gradvar.md (the table, the definitions and the baselines' sources),
    gradvar.json (the summary) and gradvar.png (:func:`plot_gradient_variance`); returns
    their paths by kind ('md', 'json', 'png')."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary
    paths = {"md": out / "gradvar.md", "json": out / "gradvar.json", "png": out / "gradvar.png"}
    (paths["json"]).write_text(json.dumps(summary, indent=1) + "\n")
    reference = next(row["label"] for row in summary["estimators"] if row["key"] == summary["reference"])
    lines = [f"# {title}", ""] + [f"{note}" for note in notes] + ([""] if notes else [])
    lines += [f"{summary['num_estimates']} independent single-sample estimates per estimator of the gradient of the "
              f"batch-mean ELBO with respect to the encoder's {summary['num_parameters']} parameters, on a fixed "
              f"batch of {summary['batch_size']} points (seed {summary['seed']}).", ""]
    lines += gradient_variance_table(summary)
    lines += ["", "- ‖mean‖: the norm of the estimates' mean; debiased: √max(0, ‖mean‖² − trace/N).",
              "- total variance: the trace of the estimates' covariance (unbiased, divisor N − 1).",
              "- SNR: ‖mean‖ / √trace.",
              f"- variance / {reference}: the total variance over the {reference} estimator's."]
    for name, info in summary["baselines"].items():
        value = f" {info['value']:.6g};" if "value" in info else ""
        lines.append(f"- {name.replace('_', '-')} baseline:{value} {info['source']}.")
    if summary["latent"] == "categorical":
        lines.append("- Gumbel-softmax estimates are of the relaxed objective's gradient (straight-through off): "
                     "biased for the true ELBO's, which the score function estimates without bias.")
    (paths["md"]).write_text("\n".join(lines) + "\n")
    plot_gradient_variance(summary, paths["png"])
    return paths
