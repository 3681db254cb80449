"""Everything the evaluation measures, in one call, and the run's report.md."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Union

from ._common import check_model, mean_and_stderr, num_data_points
from .latent import active_units, mutual_information
from .likelihood import bits_per_dim, elbo_estimate, elbo_gap, iwae_estimate

PathLike = Union[str, os.PathLike]


def evaluate(
    model,
    data,
    num_samples: int = 5000,
    batch_size: int = 100,
    sample_chunk: Optional[int] = None,
    num_points: Optional[int] = None,
    iwae_num_points: Optional[int] = None,
    mi_num_points: Optional[int] = None,
    active_threshold: float = 0.01,
    seed: Optional[int] = 0,
) -> dict:
    r"""Evaluate a model on a data set: its ELBO, the importance-weighted estimate of
    log p(x), the ELBO gap, bits per dimension, active units, KL per dimension and the
    mutual information I(x; z).

    The ELBO, active units and KL per dimension use the first ``num_points`` points (all
    by default); the IWAE estimate, K = ``num_samples`` samples per point, the first
    ``iwae_num_points`` of those (it costs K decoder passes per point); the ELBO gap is
    log p̂(x) − ELBO over the IWAE's points, with the model's own one-sample ELBO (the
    standard); the mutual information the first ``mi_num_points`` (its cost grows as the
    square of the points).

    Args:
        model: a :class:`fastvae.models.VAE`.
        data: a tensor [N, *data_shape] in [0, 1] or a Dataset (see
            :func:`fastvae.eval.iwae_estimate`).
        num_samples: K of the IWAE estimate (5000 is the papers' setting).
        batch_size: data points per call.
        sample_chunk: samples per ``log_importance_weights`` call (see
            :func:`fastvae.eval.iwae_estimate`).
        num_points, iwae_num_points, mi_num_points: how many data points each part reads
            (None: all that ``num_points`` allows).
        active_threshold: the variance above which a unit is active (0.01).
        seed: seeds every random draw, so the same seed gives the same numbers.

    Returns:
        A JSON-serializable dict: ``num_points``, ``data_shape``, ``elbo``,
        ``elbo_stderr``, ``nll`` and ``kl`` (means, nats), ``elbo_bits_per_dim``;
        ``iwae`` (mean log p̂(x)), ``iwae_stderr``, ``iwae_nll``, ``iwae_num_samples``,
        ``iwae_num_points``, ``iwae_mean_log_weight`` (the ELBO from the same
        log-weights), ``bits_per_dim`` (of ``iwae_nll``); ``elbo_gap``,
        ``elbo_gap_stderr``; ``active_units``, ``latent_dim``, ``active_threshold``,
        ``posterior_mean_variance`` ([D] list); ``kl_per_dim`` ([D] list);
        ``mutual_information`` (None when the model has no ``posterior_params``) and
        ``mutual_information_num_points``.

    Example::

        >>> results = fastvae.eval.evaluate(model, test_images, num_samples=5000)
        >>> fastvae.eval.write_report("run/report.md", results, config)
    """
    function = "evaluate"
    model = check_model(function, model)
    count = num_data_points(function, data, num_points)
    iwae_count = count if iwae_num_points is None else min(count, num_data_points(function, data, iwae_num_points))
    mi_count = count if mi_num_points is None else min(count, num_data_points(function, data, mi_num_points))
    data_shape = list(getattr(model, "data_shape", ()))

    elbo = elbo_estimate(model, data, batch_size=batch_size, num_points=count, seed=seed)
    iwae = iwae_estimate(model, data, num_samples, batch_size, sample_chunk, iwae_count, seed)
    gap_mean, gap_stderr = mean_and_stderr(elbo_gap(iwae.log_likelihood, elbo.elbo[:iwae_count]))
    units = active_units(model, data, active_threshold, batch_size, count) if count >= 2 else None
    information = mutual_information(model, data, batch_size, mi_count, seed)

    elbo_mean, elbo_stderr = mean_and_stderr(elbo.elbo)
    return {
        "num_points": count,
        "data_shape": data_shape,
        "elbo": elbo_mean,
        "elbo_stderr": elbo_stderr,
        "nll": elbo.nll.mean().item(),
        "kl": elbo.kl.mean().item(),
        "elbo_bits_per_dim": bits_per_dim(-elbo_mean, data_shape) if data_shape else None,
        "iwae": iwae.mean,
        "iwae_stderr": iwae.stderr,
        "iwae_nll": iwae.nll,
        "iwae_num_samples": iwae.num_samples,
        "iwae_num_points": iwae.num_points,
        "iwae_mean_log_weight": iwae.elbo_mean,
        "bits_per_dim": bits_per_dim(iwae.nll, data_shape) if data_shape else None,
        "elbo_gap": gap_mean,
        "elbo_gap_stderr": gap_stderr,
        "active_units": None if units is None else units.count,
        "latent_dim": units.latent_dim if units is not None else int(getattr(model, "latent_dim", 0)),
        "active_threshold": float(active_threshold),
        "posterior_mean_variance": None if units is None else units.variance.tolist(),
        "kl_per_dim": elbo.kl_per_dim.tolist(),
        "mutual_information": information,
        "mutual_information_num_points": mi_count,
    }


def _number(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _with_stderr(mean, stderr, digits: int = 2) -> str:
    if stderr is None or not math.isfinite(stderr):
        return _number(mean, digits)
    return f"{_number(mean, digits)} ± {_number(stderr, digits)}"


def _cell(text: str) -> str:
    # A bare | would end the table cell (p(x|z)).
    return str(text).replace("|", "\\|")


def _results_table(results: Mapping) -> list:
    n = results.get("num_points")
    k, n_iwae = results.get("iwae_num_samples"), results.get("iwae_num_points")
    rows = [
        ("ELBO", f"{_with_stderr(results.get('elbo'), results.get('elbo_stderr'))} nats ({n} data points)"),
        ("reconstruction −log p(x|z)", f"{_number(results.get('nll'))} nats"),
        ("KL(q(z|x) ‖ p(z))", f"{_number(results.get('kl'))} nats"),
        ("IWAE estimate log p̂(x)",
         f"{_with_stderr(results.get('iwae'), results.get('iwae_stderr'))} nats "
         f"(K = {k} importance samples, {n_iwae} data points)"),
        ("negative log-likelihood (IWAE)", f"{_number(results.get('iwae_nll'))} nats"),
        ("bits per dimension (IWAE)", _number(results.get("bits_per_dim"), 4)),
        ("ELBO gap log p̂(x) − ELBO",
         f"{_with_stderr(results.get('elbo_gap'), results.get('elbo_gap_stderr'))} nats "
         f"(over the {n_iwae} IWAE data points)"),
    ]
    active, latent_dim = results.get("active_units"), results.get("latent_dim")
    threshold = results.get("active_threshold", 0.01)
    rows.append(("active units",
                 "n/a" if active is None else f"{active} of {latent_dim} (Cov_x E_q[z_d|x] > {threshold:g})"))
    information = results.get("mutual_information")
    if information is not None:
        mi_n = results.get("mutual_information_num_points")
        bound = f", at most log {mi_n} = {math.log(mi_n):.2f}" if mi_n else ""
        rows.append(("mutual information I(x; z)", f"{_number(information)} nats ({mi_n} data points{bound})"))
    else:
        rows.append(("mutual information I(x; z)", "n/a (the posterior is not one diagonal Gaussian)"))
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows]
    return lines


def _kl_table(results: Mapping) -> list:
    kl = results.get("kl_per_dim") or []
    if not kl:
        return ["The model reports no KL per dimension."]
    variance = results.get("posterior_mean_variance") or []
    threshold = results.get("active_threshold", 0.01)
    if len(variance) != len(kl):
        # A discrete model's KL is per categorical variable, its posterior mean per category.
        lines = ["| latent variable | KL (nats) |", "|---:|---:|"]
        return lines + [f"| {d} | {value:.4f} |" for d, value in enumerate(kl)]
    lines = ["| dimension | KL (nats) | Cov_x E_q[z_d\\|x] | active |", "|---:|---:|---:|:---:|"]
    for d, value in enumerate(kl):
        active = "yes" if variance[d] > threshold else "no"
        lines.append(f"| {d} | {value:.4f} | {variance[d]:.4f} | {active} |")
    return lines


def write_report(
    path: PathLike,
    results: Mapping,
    config: Optional[Mapping] = None,
    pictures: Optional[Mapping[str, PathLike]] = None,
    title: str = "fastvae report",
) -> Path:
    r"""Write report.md from :func:`evaluate`'s results: a table of the ELBO, the IWAE
    estimate (with K and the number of data points), the ELBO gap, bits per dimension,
    active units (n of D) and the mutual information; a table of the KL per dimension;
    links to the pictures; and the configuration.

    Args:
        path: the markdown file to write (written to a temporary name and renamed).
        results: the dict :func:`evaluate` returns.
        config: the run's configuration (any JSON-serializable dict), shown as JSON.
        pictures: {caption: path} of PNGs to show; by default every ``*.png`` in the
            report's folder, by name.  Links are relative to the report.
        title: the report's heading.

    Returns:
        The path written.

    Example::

        >>> fastvae.eval.write_report("run/report.md", results, config={"model": "mlp"})
    """
    path = Path(path)
    if not isinstance(results, Mapping):
        raise TypeError(f"fastvae.eval.write_report: results must be a dict, got {type(results).__name__}")
    if pictures is None:
        pictures = {p.stem: p for p in sorted(path.parent.glob("*.png"))}
    lines = [f"# {title}", "", "## Results", ""]
    lines += _results_table(results)
    lines += ["", "## KL per dimension", ""]
    lines += _kl_table(results)
    lines.append("")
    if pictures:
        lines += ["## Pictures", ""]
        for caption, picture in pictures.items():
            link = Path(os.path.relpath(Path(picture).resolve(), path.parent.resolve())).as_posix()
            lines += [f"![{caption}]({link})", ""]
    if config is not None:
        lines += ["## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```"]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path
