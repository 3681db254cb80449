"""``fastvae sweep``: the rate–distortion trade-off over β (Alemi et al. 2018).

One full training run per β, all other settings equal, each in its own run folder
(``OUT/beta-<β>``, with its report); then the rate (mean KL) and distortion (mean
reconstruction nll) of each on the evaluation split, as a plot, a markdown table and
JSON in ``OUT``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from ..eval import RatePoint, plot_rate_distortion, sweep_betas
from ..eval.report import point_set
from ..train import distributed
from .options import INVOCATION_KEYS, PROGRAM, ConfigError, write_toml
from .train import RUNS_DIR, default_run_name, train_run

SWEEP_FILE = "sweep.toml"
TABLE_FILE = "rate_distortion.md"
POINTS_FILE = "rate_distortion.json"
PLOT_FILE = "rate_distortion.png"
# Each point's IWAE estimate in rate_distortion.json, with the ELBO of the same points
# and how many they are (rate, distortion and elbo cover num_points).
SAME_POINTS_KEYS = ("iwae", "iwae_mean_log_weight", "iwae_num_samples", "iwae_num_points")


def check_betas(betas) -> list:
    if not isinstance(betas, (list, tuple)) or not betas:
        raise ConfigError(f"{PROGRAM} sweep: give the β values with --betas, e.g. --betas 0.25,1,4")
    for beta in betas:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ConfigError(f"{PROGRAM} sweep: every β must be a finite number >= 0, got {beta!r}")
    if len(set(betas)) != len(betas):
        raise ConfigError(f"{PROGRAM} sweep: the β values repeat: {list(betas)}")
    return [float(beta) for beta in betas]


def beta_folder(out: Path, beta: float) -> Path:
    return out / f"beta-{beta:g}"


def table(points: Sequence[RatePoint], runs: Mapping[float, dict], out: Path) -> str:
    first = runs[points[0].beta]
    every = point_set(first["num_points"], first["num_points"], first.get("split"))
    iwae_points = point_set(first["iwae_num_points"], first["num_points"], first.get("split"))
    lines = ["# Rate–distortion sweep", "",
             f"Rate R = mean KL(q(z|x) ‖ p(z)), distortion D = mean −log p(x|z), both in nats over {every}; "
             f"−(D + R) is their ELBO.  The IWAE estimate log p̂(x) is over the {iwae_points}, beside the ELBO of "
             f"those same points (the mean of the same log-weights).  ![rate–distortion]({PLOT_FILE})", "",
             "| β | rate (nats) | distortion (nats) | ELBO | IWAE log p̂(x) | ELBO, IWAE's points | active units | run |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for point in points:
        results = runs[point.beta]
        folder = beta_folder(out, point.beta).name
        lines.append(f"| {point.beta:g} | {point.rate:.3f} | {point.distortion:.3f} | {point.elbo:.3f} | "
                     f"{results['iwae']:.3f} (K={results['iwae_num_samples']}) | "
                     f"{results['iwae_mean_log_weight']:.3f} | "
                     f"{results['active_units']} of {results['latent_dim']} | [{folder}]({folder}/report.md) |")
    return "\n".join(lines) + "\n"


def sweep_run(settings: dict, betas) -> list:
    """Train one model per β (settings otherwise equal) and write the rate–distortion
    plot, table and points; returns the :class:`fastvae.eval.RatePoint` list (on
    rank 0; empty on the others)."""
    betas = check_betas(betas)
    context = distributed.init_from_env()
    if settings.get("name") is None:
        settings["name"] = "sweep-" + default_run_name(settings)
    out = Path(distributed.all_gather_objects(settings.get("out") or str(Path(RUNS_DIR) / settings["name"]),
                                              context)[0])
    if context.is_main:
        common = {k: v for k, v in settings.items() if k not in INVOCATION_KEYS and k != "beta"}
        write_toml(out / SWEEP_FILE, {**common, "betas": betas},
                   header=f"fastvae sweep: one run per β in betas; rerun: {PROGRAM} sweep --config {out / SWEEP_FILE}")
    runs: dict = {}

    def train_one(beta: float):
        run_settings = dict(settings, beta=beta, out=str(beta_folder(out, beta)), name=f"{settings['name']}-beta-{beta:g}")
        if context.is_main:
            print(f"== β = {beta:g}: {run_settings['out']}", flush=True)
        results = train_run(run_settings)
        gathered = distributed.all_gather_objects(results, context)[0]
        runs[beta] = gathered
        return RatePoint(beta, gathered["kl"], gathered["reconstruction_nll"], gathered["num_points"])

    points = sweep_betas(train_one, betas)
    if not context.is_main:
        return []
    plot_rate_distortion(points, out / PLOT_FILE)
    (out / TABLE_FILE).write_text(table(points, runs, out), encoding="utf-8")
    (out / POINTS_FILE).write_text(json.dumps(
        [dict(p.as_dict(), **{key: runs[p.beta][key] for key in SAME_POINTS_KEYS}) for p in points], indent=1) + "\n")
    print((out / TABLE_FILE).read_text(encoding="utf-8"))
    print(f"sweep folder: {out}")
    return points
