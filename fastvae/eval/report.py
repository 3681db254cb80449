"""Everything the evaluation measures, in one call, and the run's report.md.

:func:`evaluate` returns a flat, JSON-ready dict (a run's results.json); :data:`FIELDS`
says what each of its keys means and which data points it covers, and
:func:`write_report` prints that explanation as report.md's "Fields of results.json"
section, so a key without an entry there is a bug (a test checks it)."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from .. import __version__ as fastvae_version
from .. import backends
from ._common import check_model, check_positive_int, mean_and_stderr, model_device, num_data_points
from .diffusion import diffusion_bound_spread, has_diffusion_decoder
from .groups import group_active_units, group_diagnostics, has_latent_groups, levels_sentence, resolution_label
from .latent import active_units, mutual_information
from .likelihood import bits_per_dim, elbo_estimate, elbo_gap, iwae_estimate

PathLike = Union[str, os.PathLike]

# What each key of results.json means.  "All points" are the num_points evaluated; "the
# IWAE's points" the first iwae_num_points of them.  Keys that fastvae train and
# fastvae eval add to evaluate()'s are here too: report.md explains the whole file.
FIELDS = {
    # which data
    "data": "the data set (fastvae train / eval)",
    "split": "the split evaluated: test, valid or train (fastvae train / eval)",
    "data_shape": "the shape of one data point",
    "num_points": "all points: how many data points were evaluated (the first num_points of the split)",
    # the IWAE's points
    "iwae_num_points": "the IWAE's points: the first iwae_num_points of the evaluated points, which every iwae_* "
                       "value and the ELBO gap cover",
    "iwae_num_samples": "K, the importance samples per data point of the IWAE estimate",
    "iwae": "mean over the IWAE's points of log p̂(x), the importance-weighted estimate of log p(x) with K samples "
            "(Burda et al. 2016), nats",
    "iwae_stderr": "standard error of iwae over the IWAE's points (std/√N), nats",
    "iwae_nll": "−iwae: the negative log-likelihood of the IWAE's points, nats",
    "iwae_bits_per_dim": "iwae_nll in bits per dimension: iwae_nll / (ln 2 · the elements of one data point)",
    "iwae_mean_log_weight": "the ELBO of the IWAE's points, estimated from the same K log-weights log p(x, z_k) − "
                            "log q(z_k|x) as iwae (their mean, averaged over the points), nats; never above iwae, "
                            "point by point (Jensen)",
    "iwae_mean_log_weight_stderr": "standard error of iwae_mean_log_weight over the IWAE's points, nats",
    "elbo_gap": "iwae − iwae_mean_log_weight: the mean over the IWAE's points of log p̂(x) − ELBO(x) from the same "
                "log-weights, nats; never negative",
    "elbo_gap_stderr": "standard error of elbo_gap (of the per-point differences), nats",
    # all points
    "elbo": "mean ELBO over all points, nats: one sample of q(z|x) per point from the model's forward pass (β = 1, "
            "no free bits), as the trainer's evaluation (metrics.jsonl eval/elbo) computes it",
    "elbo_stderr": "standard error of elbo over all points, nats",
    "reconstruction_nll": "mean −log p(x|z) over all points (the same forward pass as elbo), nats",
    "kl": "mean KL(q(z|x) ‖ p(z)) over all points (the same forward pass as elbo), nats; elbo = "
          "−(reconstruction_nll + kl)",
    "elbo_bits_per_dim": "−elbo in bits per dimension (all points)",
    "kl_per_dim": "[D] the KL of each latent dimension (of each categorical variable for a discrete model), mean "
                  "over all points, nats",
    "active_units": "how many latent dimensions have posterior_mean_variance above active_threshold (all points; "
                    "null with fewer than 2)",
    "latent_dim": "D, the latent dimensions",
    "active_threshold": "the variance above which a dimension counts as active (Burda et al. 2016: 0.01)",
    "posterior_mean_variance": "[D] Cov_x E_q[z_d|x]: the variance over all points of each dimension's posterior "
                               "mean",
    "mutual_information": "I(x; z), nats, the aggregate-posterior estimate over the first "
                          "mutual_information_num_points points (at most log of that count); null when q(z|x) is "
                          "not one diagonal Gaussian",
    "mutual_information_num_points": "the points the mutual information covers (the first ones)",
    # models with latent groups (a deep hierarchical VAE): the groups from the top down
    "num_groups": "G, the latent groups of a model with groups (kl_per_dim and posterior_mean_variance are per "
                  "channel of each group, group-major, the top group first; posterior_mean_variance and "
                  "active_units take each channel's mean over its map)",
    "group_resolutions": "[G] the side of each group's square latent map, the top group first",
    "kl_per_group": "[G] the KL of each group (the sum of its channels' kl_per_dim), mean over all points, nats",
    "kl_per_group_fraction": "[G] each group's share of the total KL (the sum of kl_per_group); null entries when "
                             "that total is not positive",
    "units_per_group": "[G] the units of each group: C·r², the elements of its [C, r, r] latent map",
    "active_units_per_group": "[G] the active units of each group: the elements of its latent map whose posterior "
                              "mean E_q[z|x] (model.posterior_mean_groups) has a variance over all points above "
                              "active_threshold (a posterior pass of its own; null with fewer than 2 points)",
    "active_groups": "how many groups have at least one active unit (an element of their latent map whose "
                     "posterior mean moves with x)",
    # models with a diffusion decoder (--likelihood diffusion): their −log p(x|z) is a bound
    "diffusion_t_samples": "S, the draws of t (and ε) per data point of the diffusion decoder's L_diffusion in every "
                           "log-weight of this evaluation: the ELBO is then an unbiased estimate of a bound, and the "
                           "IWAE a bound on a bound (the importance-weighted bound with log p(x|z) replaced by −(the "
                           "decoder's bound)), its K latents of a point sharing their draws of t, ε and z_0",
    "diffusion_prior": "mean L_prior = KL(q(z_1|x) ‖ N(0, I)), the decoder bound's term at t = 1, nats (the spread's "
                       "points)",
    "diffusion_loss": "mean L_diffusion, the continuous-time diffusion term, nats (the spread's points, z ~ q(z|x))",
    "diffusion_reconstruction": "mean L_recon = −log p(x|z_0), the term at t = 0, nats (the spread's points)",
    "diffusion_loss_std": "the noise of one log-weight's L_diffusion estimate (S t-samples): the standard deviation "
                          "over diffusion_spread_repeats independent estimates at a fixed x and z, root mean square "
                          "over the spread's points, nats",
    "diffusion_loss_std_between_latents": "the part of that noise which differs between two latents z_1, z_2 of a "
                                          "point with shared draws (the std of L̂(z_1) − L̂(z_2)), nats: only this "
                                          "part biases the IWAE estimate (upward: log-mean-exp is convex)",
    "diffusion_spread_num_points": "the spread's points: the first ones of the evaluated points",
    "diffusion_spread_repeats": "R, the independent estimates per point of the spread",
    # the run
    "step": "the training step of the weights evaluated (fastvae train / eval)",
    "evaluated": "which weights: 'ema' (the moving average of the weights, --ema-decay) or 'weights' (the trained "
                 "weights as they are) (fastvae train / eval)",
    "checkpoint": "the checkpoint file evaluated (fastvae eval)",
    "seed": "the run's seed (fastvae train) or --seed (fastvae eval); eval_seed is derived from it",
    "eval_seed": "the seed of the evaluation's random draws: the same seed gives the same numbers bit for bit",
    "training_log_elbo": "the trainer's last test ELBO of the same weights (metrics.jsonl eval/elbo; eval_ema/elbo "
                         "for the weight average); equal to elbo unless report.md says why not (fastvae train)",
    "train_seconds": "training time, wall clock, in Trainer.fit (summed over a run's stops and resumes; without the "
                     "pauses of --iwae-every) (fastvae train / eval)",
    "eval_seconds": "the time evaluate() took, wall clock",
    "stopped_by": "'time_limit' when training ended at its time limit (fastvae train --time-limit) before its planned "
                  "steps; absent otherwise",
    "backend": "the fastvae backend the float32 ops ran on (resolved: 'auto' picks one)",
    "device": "the device the model ran on",
    "device_name": "the CPU's or GPU's name",
    "num_parameters": "the model's parameters (elements of its trainable and frozen weight tensors)",
    "fastvae_version": "fastvae's version",
    "torch_version": "torch's version",
    "triton_version": "triton's version (null when it is not installed)",
    "python_version": "Python's version",
}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's marketing name (from /proc/cpuinfo where there is one),
    for reports and benchmark records.

    Example::

        >>> fastvae.eval.device_name(torch.device("cpu"))
        'AMD EPYC'
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device.type


def _package_version(name: str) -> Optional[str]:
    # Read from the installed metadata: importing triton just for its version is slow.
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(model) -> dict:
    r"""Where and with what a model is evaluated: the fastvae backend its float32 ops
    resolve to on its device (never ``'auto'``), the device and its name, the model's
    parameter count, and the versions of fastvae, torch, triton (None when absent) and
    Python.

    Returns:
        A JSON-ready dict with the keys ``backend``, ``device``, ``device_name``,
        ``num_parameters``, ``fastvae_version``, ``torch_version``, ``triton_version``,
        ``python_version`` (see :data:`FIELDS`).

    Example::

        >>> fastvae.eval.provenance(model)["backend"]
        'cpu'
    """
    model = check_model("provenance", model)
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return {
        "backend": backends.resolve("provenance", device, dtype),
        "device": str(device),
        "device_name": device_name(device),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "fastvae_version": fastvae_version,
        "torch_version": torch.__version__,
        "triton_version": _package_version("triton"),
        "python_version": platform.python_version(),
    }


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
    diffusion_t_samples: Optional[int] = None,
    diffusion_spread_points: int = 100,
) -> dict:
    r"""Evaluate a model on a data set: its ELBO, the importance-weighted estimate of
    log p(x) beside the ELBO of the same points, the ELBO gap, bits per dimension, active
    units, KL per dimension and the mutual information I(x; z); and where it ran.

    Two sets of data points, which the keys' names say:

    * all points, the first ``num_points`` (all by default): the ELBO (one sample of
      q(z|x) per point, the model's forward pass, as training reports it), its
      reconstruction and KL terms, active units and KL per dimension;
    * the IWAE's points, the first ``iwae_num_points`` of those (the estimate costs K
      decoder passes per point): log p̂(x) with K = ``num_samples``, and the ELBO of the
      same points from the same K log-weights (their mean, ``iwae_mean_log_weight``),
      never above log p̂(x); the ELBO gap is the difference of those two.

    The mutual information uses the first ``mi_num_points`` (its cost grows as the
    square of the points).

    Args:
        model: a :class:`fastvae.models.VAE`.
        data: a tensor [N, *data_shape] in [0, 1] or a Dataset (see
            :func:`fastvae.eval.iwae_estimate`).
        num_samples: K of the IWAE estimate (5000 is the papers' setting).
        batch_size: data points per call (the ELBO's noise depends on it: a forward
            pass draws its noise for its whole batch).
        sample_chunk: samples per ``log_importance_weights`` call (see
            :func:`fastvae.eval.iwae_estimate`).
        num_points, iwae_num_points, mi_num_points: how many data points each part reads
            (None: all that ``num_points`` allows).
        active_threshold: the variance above which a unit is active (0.01).
        seed: seeds every random draw, so the same seed gives the same numbers.
        diffusion_t_samples: for a model with a diffusion decoder, S, the t-samples per
            data point of its bound in every log-weight of this evaluation (None: the
            model's own; the model is left as it was).
        diffusion_spread_points: the points of :func:`fastvae.eval.diffusion_bound_spread`
            (a diffusion decoder only).

    Returns:
        A JSON-serializable dict; :data:`fastvae.eval.report.FIELDS` explains every
        key.  The measures: ``num_points``, ``data_shape``, ``elbo``, ``elbo_stderr``,
        ``reconstruction_nll``, ``kl``, ``elbo_bits_per_dim``; ``iwae_num_points``,
        ``iwae_num_samples``, ``iwae`` (mean log p̂(x)), ``iwae_stderr``, ``iwae_nll``,
        ``iwae_bits_per_dim``, ``iwae_mean_log_weight`` and its ``_stderr``,
        ``elbo_gap``, ``elbo_gap_stderr``; ``active_units``, ``latent_dim``,
        ``active_threshold``, ``posterior_mean_variance``, ``kl_per_dim``;
        ``mutual_information``, ``mutual_information_num_points``.  For a model with
        latent groups (:func:`fastvae.eval.has_latent_groups`, e.g.
        :class:`fastvae.models.DeepVAE`), from the same KL per dimension (no further
        model pass): ``num_groups``, ``group_resolutions``, ``kl_per_group``,
        ``kl_per_group_fraction``, ``units_per_group`` (C·r² per group); and from one
        more posterior pass over the same points as the active units
        (:func:`fastvae.eval.group_active_units`, a unit being an element of a group's
        latent map): ``active_units_per_group``, ``active_groups``.  Where and how:
        :func:`provenance`'s keys, ``eval_seed`` and ``eval_seconds``.  For a model with a
        diffusion decoder: the keys of :func:`fastvae.eval.diffusion_bound_spread`.

    Example::

        >>> results = fastvae.eval.evaluate(model, test_images, num_samples=5000)
        >>> fastvae.eval.write_report("run/report.md", results, config)
    """
    function = "evaluate"
    model = check_model(function, model)
    started = time.perf_counter()
    count = num_data_points(function, data, num_points)
    iwae_count = count if iwae_num_points is None else min(count, num_data_points(function, data, iwae_num_points))
    mi_count = count if mi_num_points is None else min(count, num_data_points(function, data, mi_num_points))
    data_shape = list(getattr(model, "data_shape", ()))
    diffusion = model.diffusion if has_diffusion_decoder(model) else None
    model_t_samples = None if diffusion is None else diffusion.t_samples
    if diffusion is not None and diffusion_t_samples is not None:
        diffusion.t_samples = check_positive_int(function, "diffusion_t_samples", diffusion_t_samples)
    try:
        results = _evaluate(model, data, num_samples, batch_size, sample_chunk, count, iwae_count, mi_count,
                            active_threshold, seed, data_shape)
        if diffusion is not None:
            results.update(diffusion_bound_spread(model, data, batch_size=batch_size,
                                                  num_points=min(count, diffusion_spread_points), seed=seed))
    finally:
        if diffusion is not None:
            diffusion.t_samples = model_t_samples
    results.update(provenance(model))
    results["eval_seed"] = seed
    results["eval_seconds"] = round(time.perf_counter() - started, 1)
    return results


def _evaluate(model, data, num_samples, batch_size, sample_chunk, count, iwae_count, mi_count, active_threshold,
              seed, data_shape) -> dict:
    elbo = elbo_estimate(model, data, batch_size=batch_size, num_points=count, seed=seed)
    iwae = iwae_estimate(model, data, num_samples, batch_size, sample_chunk, iwae_count, seed)
    # The gap pairs log p̂(x) with the ELBO of the same point from the same log-weights:
    # both estimates of one point set, and the gap never negative.
    gap_mean, gap_stderr = mean_and_stderr(elbo_gap(iwae.log_likelihood, iwae.mean_log_weight))
    units = active_units(model, data, active_threshold, batch_size, count) if count >= 2 else None
    information = mutual_information(model, data, batch_size, mi_count, seed)

    groups = {}
    if has_latent_groups(model):
        # The KL per group sums the ELBO pass's kl_per_dim; the active units per group need
        # one more posterior pass, element by element over each group's map, on the points
        # of the active units (posterior_mean averages each channel over its map, which a
        # spatial pattern leaves unmoved).
        group_units = group_active_units(model, data, active_threshold, batch_size, count) if count >= 2 else None
        groups = group_diagnostics(model, elbo.kl_per_dim,
                                   None if group_units is None else group_units.active_units_per_group)
    elbo_mean, elbo_stderr = mean_and_stderr(elbo.elbo)
    return {
        "num_points": count,
        "data_shape": data_shape,
        "elbo": elbo_mean,
        "elbo_stderr": elbo_stderr,
        "reconstruction_nll": elbo.nll.mean().item(),
        "kl": elbo.kl.mean().item(),
        "elbo_bits_per_dim": bits_per_dim(-elbo_mean, data_shape) if data_shape else None,
        "iwae_num_points": iwae.num_points,
        "iwae_num_samples": iwae.num_samples,
        "iwae": iwae.mean,
        "iwae_stderr": iwae.stderr,
        "iwae_nll": iwae.nll,
        "iwae_bits_per_dim": bits_per_dim(iwae.nll, data_shape) if data_shape else None,
        "iwae_mean_log_weight": iwae.elbo_mean,
        "iwae_mean_log_weight_stderr": iwae.elbo_stderr,
        "elbo_gap": gap_mean,
        "elbo_gap_stderr": gap_stderr,
        "active_units": None if units is None else units.count,
        "latent_dim": units.latent_dim if units is not None else int(getattr(model, "latent_dim", 0)),
        "active_threshold": float(active_threshold),
        "posterior_mean_variance": None if units is None else units.variance.tolist(),
        "kl_per_dim": elbo.kl_per_dim.tolist(),
        "mutual_information": information,
        "mutual_information_num_points": mi_count,
        **groups,
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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]


def point_set(count, total, split: Optional[str] = None) -> str:
    """'all 2000 test points' or 'first 200 of 2000 test points': which data points a
    number covers, as report.md and the command's summary say it."""
    kind = f" {split}" if split else ""
    if count is None or total is None or count == total:
        return f"all {total}{kind} points"
    return f"first {count} of {total}{kind} points"


def _diffusion_rows(results: Mapping, spread_points: str) -> list:
    """The rows of a diffusion decoder: its bound's terms and the noise of their estimate."""
    s = results["diffusion_t_samples"]
    return [
        ("diffusion decoder: −log p(x|z) is bounded, not computed",
         f"ELBO: an unbiased estimate of a bound; IWAE: a bound on a bound (log p(x|z) replaced by −(the decoder's "
         f"bound), each log-weight's diffusion term from S = {s} t-samples, the K latents of a point sharing "
         f"their draws)", "all"),
        ("the decoder's bound: L_prior + L_diffusion + L_recon",
         f"{_number(results.get('diffusion_prior'))} + {_number(results.get('diffusion_loss'))} + "
         f"{_number(results.get('diffusion_reconstruction'))} nats", spread_points),
        (f"noise of one log-weight's L_diffusion (S = {s}), std",
         f"{_number(results.get('diffusion_loss_std'))} nats, of which "
         f"{_number(results.get('diffusion_loss_std_between_latents'))} nats differ between latents (what can bias "
         f"the IWAE upward; {results.get('diffusion_spread_repeats')} repeats)", spread_points),
    ]


def _results_table(results: Mapping) -> list:
    total, split = results.get("num_points"), results.get("split")
    every = point_set(total, total, split)
    iwae_points = point_set(results.get("iwae_num_points"), total, split)
    mi_points = point_set(results.get("mutual_information_num_points"), total, split)
    k = results.get("iwae_num_samples")
    rows = [
        (f"IWAE estimate log p̂(x), K = {k}", f"{_with_stderr(results.get('iwae'), results.get('iwae_stderr'))} nats",
         iwae_points),
        ("ELBO of the same points (mean of the same K log-weights)",
         f"{_with_stderr(results.get('iwae_mean_log_weight'), results.get('iwae_mean_log_weight_stderr'))} nats",
         iwae_points),
        ("ELBO gap log p̂(x) − ELBO (same points, same log-weights)",
         f"{_with_stderr(results.get('elbo_gap'), results.get('elbo_gap_stderr'))} nats", iwae_points),
        ("negative log-likelihood −log p̂(x)",
         f"{_number(results.get('iwae_nll'))} nats = {_number(results.get('iwae_bits_per_dim'), 4)} bits/dim",
         iwae_points),
        ("ELBO (one sample of q(z|x) per point)",
         f"{_with_stderr(results.get('elbo'), results.get('elbo_stderr'))} nats = "
         f"{_number(results.get('elbo_bits_per_dim'), 4)} bits/dim", every),
        ("reconstruction −log p(x|z)", f"{_number(results.get('reconstruction_nll'))} nats", every),
        ("KL(q(z|x) ‖ p(z))", f"{_number(results.get('kl'))} nats", every),
    ]
    active, latent_dim = results.get("active_units"), results.get("latent_dim")
    threshold = results.get("active_threshold", 0.01)
    rows.append(("active units",
                 "n/a" if active is None else f"{active} of {latent_dim} (Cov_x E_q[z_d|x] > {threshold:g})", every))
    if results.get("num_groups") is not None:
        groups = results.get("active_groups")
        rows.append(("active groups", "n/a" if groups is None else
                     f"{groups} of {results['num_groups']} (groups with an active unit, an element of their "
                     f"latent map: see KL per group)", every))
    if results.get("diffusion_t_samples") is not None:
        rows += _diffusion_rows(results, point_set(results.get("diffusion_spread_num_points"), total, split))
    information = results.get("mutual_information")
    if information is not None:
        mi_n = results.get("mutual_information_num_points")
        bound = f" (at most log {mi_n} = {math.log(mi_n):.2f})" if mi_n else ""
        rows.append(("mutual information I(x; z)", f"{_number(information)} nats{bound}", mi_points))
    else:
        rows.append(("mutual information I(x; z)", "n/a (the posterior is not one diagonal Gaussian)", "none"))
    return _table(("measure", "value", "data points"), rows)


def _duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    minutes, rest = divmod(float(seconds), 60.0)
    return f"{seconds:.1f} s" + (f" ({int(minutes)} min {rest:.0f} s)" if minutes >= 1 else "")


def _run_table(results: Mapping) -> list:
    rows = []
    if results.get("step") is not None:
        which = {"ema": "the weight average (--ema-decay)", "weights": "the trained weights"}.get(
            results.get("evaluated"), results.get("evaluated") or "")
        rows.append(("weights evaluated", f"step {results['step']}" + (f", {which}" if which else "")))
    if results.get("checkpoint"):
        rows.append(("checkpoint", results["checkpoint"]))
    if results.get("data"):
        rows.append(("data", f"{results['data']}, {results.get('split')} split"))
    if results.get("backend"):
        rows.append(("fastvae backend", results["backend"]))
    if results.get("device"):
        rows.append(("device", f"{results['device']} ({results.get('device_name')})"))
    if results.get("num_parameters") is not None:
        rows.append(("model parameters", f"{results['num_parameters']:,}"))
    versions = [(name, results.get(f"{key}_version")) for name, key in
                (("fastvae", "fastvae"), ("torch", "torch"), ("triton", "triton"), ("Python", "python"))]
    if any(version for _, version in versions):
        rows.append(("versions", ", ".join(f"{name} {version or 'absent'}" for name, version in versions)))
    if "train_seconds" in results:
        steps = f"{results['step']} steps, " if results.get("step") is not None else ""
        rows.append(("training time", f"{steps}{_duration(results['train_seconds'])} wall clock"))
    if "eval_seconds" in results:
        rows.append(("evaluation time", f"{_duration(results['eval_seconds'])} wall clock"))
    if "seed" in results or "eval_seed" in results:
        rows.append(("seed", f"{results.get('seed', 'n/a')} (evaluation noise seed {results.get('eval_seed')})"))
    return _table(("", "value"), rows) if rows else []


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


def _group_table(results: Mapping) -> list:
    """report.md's "KL per group" section: a row per group, and which levels carry
    information."""
    kl = results.get("kl_per_group") or []
    count = len(kl)

    def entries(key) -> list:
        values = results.get(key)
        return list(values) if values is not None and len(values) == count else [None] * count

    sides, fractions, units = entries("group_resolutions"), entries("kl_per_group_fraction"), \
        entries("active_units_per_group")
    sizes = entries("units_per_group")
    active = [None if unit is None else unit > 0 for unit in units]
    rows = [(str(index), "n/a" if side is None else resolution_label(side), f"{value:.4f}",
             "n/a" if fraction is None else f"{100 * fraction:.1f}%",
             "n/a" if unit is None else f"{unit} of {'?' if size is None else size}",
             {True: "yes", False: "no", None: "n/a"}[flag])
            for index, (side, value, fraction, unit, size, flag)
            in enumerate(zip(sides, kl, fractions, units, sizes, active))]
    lines = _table(("group", "resolution", "KL (nats)", "fraction of the KL", "active units", "active"), rows)
    lines[1] = "|---:|---:|---:|---:|---:|:---:|"
    threshold = results.get("active_threshold", 0.01)
    note = (f"Groups from the top down (group 0 is the top). A unit is one element of a group's C×r×r latent "
            f"map (a group has C·r²); it is active when its posterior mean moves with x (Cov_x E_q[z|x] > "
            f"{threshold:g}), and a group is active when at least one of its units is.")
    known = [side if side is not None else "?" for side in sides]
    return lines + ["", note + " " + levels_sentence(known, active)]


def _fields_table(results: Mapping) -> list:
    documented = [key for key in FIELDS if key in results]
    others = [key for key in results if key not in FIELDS]
    rows = [(f"`{key}`", FIELDS[key]) for key in documented] + [(f"`{key}`", "(not documented)") for key in others]
    return _table(("field", "meaning"), rows)


# What each of save_pictures' files shows, as report.md captions it.
PICTURE_CAPTIONS = {
    "samples": "samples: z ~ p(z), the decoder's mean",
    "samples_by_temperature": "samples at lower temperatures (a model with latent groups): each row draws every "
                              "group from its conditional prior with its standard deviation scaled by t (labelled "
                              "on the left), from the same noise in every row; t = 0 takes each prior's mean",
    "reconstructions": "reconstructions: rows of data points (labelled 'data'), each above a row of the decoder's "
                       "means at z = E_q[z|x] ('reconstruction')",
    "group_reconstructions": "what each level encodes (a model with latent groups): under a row of data points, "
                             "each row keeps the top k groups at the posterior means of those points and samples "
                             "the groups below from their conditional priors ('top k of G groups', the same noise "
                             "in every row): k = 0 is an unconditional sample, k = G the reconstruction",
    "traversals": "latent traversals: each row sets one latent dimension (named on the left) to the values on "
                  "top, the others held at the posterior mean of the first data point",
    "kl_per_dim": "the KL of each latent dimension",
    "kl_per_group": "the KL of each latent group (x: group index and resolution, the top group first), its share "
                    "of the total KL above each bar; hatched grey bars are groups without an active unit, an "
                    "element of their latent map whose posterior mean moves with x (over the first 256 points "
                    "unless save_pictures was given the evaluation's active_units_per_group)",
    "training_curves": "training curves from metrics.jsonl",
}


def write_report(
    path: PathLike,
    results: Mapping,
    config: Optional[Mapping] = None,
    pictures: Optional[Mapping[str, PathLike]] = None,
    title: str = "fastvae report",
    notes: Sequence[str] = (),
) -> Path:
    r"""Write report.md from :func:`evaluate`'s results: a table of the measures, each
    with the data points it covers (the IWAE estimate beside the ELBO of the same
    points and their gap; the ELBO, its terms and the active units over all points;
    the mutual information; the active groups of a model with latent groups); where
    and how the model ran (backend, device, versions, parameters, times, seeds, from the
    keys present); for a model with latent groups the KL per group (a table of each
    group's resolution, KL, share of the KL and active units as "a of C·r²", a unit
    being an element of its latent map, and a sentence naming the levels that carry
    information); the KL per dimension; the pictures
    with captions; the configuration; and the meaning of every key of ``results``
    (:data:`FIELDS`).

    Args:
        path: the markdown file to write (written to a temporary name and renamed).
        results: the dict :func:`evaluate` returns (with any keys of :data:`FIELDS`
            the caller adds, e.g. ``step``).
        config: the run's configuration (any JSON-serializable dict), shown as JSON.
        pictures: {caption: path} of PNGs to show; by default every ``*.png`` in the
            report's folder, save_pictures' in their order first.  Links are relative
            to the report.
        title: the report's heading.
        notes: sentences printed under the results table.

    Returns:
        The path written.

    Example::

        >>> fastvae.eval.write_report("run/report.md", results, config={"model": "mlp"})
    """
    path = Path(path)
    if not isinstance(results, Mapping):
        raise TypeError(f"fastvae.eval.write_report: results must be a dict, got {type(results).__name__}")
    if pictures is None:
        order = list(PICTURE_CAPTIONS)
        found = sorted(path.parent.glob("*.png"), key=lambda p: (order.index(p.stem) if p.stem in order
                                                                 else len(order), p.name))
        pictures = {p.stem: p for p in found}
    lines = [f"# {title}", "", "## Results", ""]
    lines += _results_table(results)
    lines += ["", "± is the standard error over the data points (for the gap, of the per-point differences). "
              "Compare log p̂(x) with the ELBO of its own points: the ELBO of all points is over other points "
              "(and one sample of q(z|x) per point, where the IWAE's ELBO averages K)."]
    for note in notes:
        lines += ["", note]
    run = _run_table(results)
    if run:
        lines += ["", "## Run", ""] + run
    if results.get("kl_per_group"):
        lines += ["", "## KL per group", ""]
        lines += _group_table(results)
    lines += ["", "## KL per dimension", ""]
    lines += _kl_table(results)
    lines.append("")
    if pictures:
        lines += ["## Pictures", ""]
        for caption, picture in pictures.items():
            link = Path(os.path.relpath(Path(picture).resolve(), path.parent.resolve())).as_posix()
            described = PICTURE_CAPTIONS.get(caption)
            if described:
                lines += [f"**{link}**: {described}.", ""]
            lines += [f"![{caption}]({link})", ""]
    if config is not None:
        lines += ["## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```",
                  ""]
    lines += ["## Fields of results.json", ""]
    lines += _fields_table(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path
