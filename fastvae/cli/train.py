"""``fastvae train``: train a model and leave a run folder.

The folder holds, when the run is done::

    config.toml        every setting, resolved: `fastvae train --config config.toml` reruns it
    metrics.jsonl      training and evaluation metrics, one JSON object per line
    tensorboard/       the same as TensorBoard events (when tensorboard is installed)
    checkpoints/       step_XXXXXXXX.pt, written atomically; `--resume` continues from the last
    results.json       the final evaluation (fastvae.eval.evaluate), with the run's step, seed,
                       training time, backend, device and versions; report.md explains each key
    samples.png, reconstructions.png, traversals.png, kl_per_dim.png, training_curves.png
                       (a model with latent groups: kl_per_group.png, samples_by_temperature.png
                       and group_reconstructions.png instead of traversals.png)
    report.md          the IWAE estimate beside the ELBO of the same points and their gap, the
                       ELBO over all evaluated points, active units, KL per dimension (each
                       number with the data points it covers), where and how the run ran, the
                       pictures, the config, and the meaning of every results.json key
"""
from __future__ import annotations

import datetime
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Mapping, Optional

import torch

from .. import backends
from ..eval import evaluate, iwae_estimate, save_pictures, write_report
from ..eval.report import point_set
from ..train import Trainer, distributed
from ..train.checkpoint import list_checkpoints
from ..train.data import EVAL_STREAM, derived_seed
from ..train.metrics import METRICS_FILE, TENSORBOARD_DIR, MetricsLogger
from .build import DEFAULT_EVAL_BATCH, load_split, model_settings, new_model, pick_device, train_config
from .interrupt import Interrupted, SignalHandling
from .options import (INVOCATION_KEYS, PROGRAM, ConfigError, builtin_defaults, fill_data_defaults, overlay,
                      read_toml, write_toml)
from .resume import (agreed_signal, finished_results, forget_final_evaluation, iwae_logged, load_latest_checkpoint,
                     logged_value)

CONFIG_FILE = "config.toml"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
RUNS_DIR = "runs"
# The mutual-information estimate costs the square of its points.
MI_POINTS = 1000
PICTURES = ("samples.png", "reconstructions.png", "traversals.png", "kl_per_dim.png", "training_curves.png",
            "kl_per_group.png", "samples_by_temperature.png", "group_reconstructions.png")


def resolve_settings(flags: Mapping, file_settings: Optional[Mapping] = None, resume: bool = False,
                     where: str = "train") -> dict:
    """The run's settings: built-in defaults, then (with ``resume``) the run folder's
    config.toml, then ``file_settings`` (the ``--config`` file's), then ``flags``; what
    is still unset is filled from the data set's defaults."""
    settings = builtin_defaults()
    file_settings = dict(file_settings or {})
    if resume:
        out = flags.get("out") or file_settings.get("out")
        if out is None:
            raise ConfigError(f"{PROGRAM} {where}: --resume continues a run folder: give it with --out RUN_FOLDER")
        saved = Path(out) / CONFIG_FILE
        if not saved.is_file():
            raise FileNotFoundError(f"{PROGRAM} {where}: --resume: {str(out)!r} holds no {CONFIG_FILE}, so no run to "
                                    f"continue")
        settings = overlay(settings, read_toml(saved, where))
    settings = overlay(settings, file_settings)
    settings = overlay(settings, flags)
    return fill_data_defaults(settings)


def default_run_name(settings: Mapping) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{settings['data']}-{settings['model']}-{stamp}"


def run_folder(settings: dict, context) -> Path:
    """``--out``, else runs/<name>; the same on every process (rank 0's choice)."""
    if settings.get("name") is None:
        settings["name"] = default_run_name(settings)
    folder = settings.get("out") or str(Path(RUNS_DIR) / settings["name"])
    return Path(distributed.all_gather_objects(folder, context)[0])


def _previous_run(folder: Path) -> list:
    found = [folder / name for name in (METRICS_FILE, REPORT_FILE, RESULTS_FILE) if (folder / name).exists()]
    return found + list_checkpoints(folder)


def claim_folder(folder: Path, overwrite: bool) -> None:
    """A fresh run needs a folder without another run in it: stop (the default) or clear
    that run's files (``--overwrite``)."""
    previous = _previous_run(folder)
    if not previous:
        return
    if not overwrite:
        raise FileExistsError(
            f"{PROGRAM} train: {str(folder)!r} already holds a run ({previous[0].name}); continue it with "
            f"`{PROGRAM} train --out {folder} --resume`, replace it with --overwrite, or choose another --out"
        )
    for path in previous + [folder / picture for picture in PICTURES] + [folder / CONFIG_FILE]:
        path.unlink(missing_ok=True)
    shutil.rmtree(folder / TENSORBOARD_DIR, ignore_errors=True)


def say(message: str, context) -> None:
    if context.is_main:
        print(message, flush=True)


def _milestones(every: int, start: int, end: int, start_pending: bool = False) -> list:
    """The steps after ``start`` up to ``end`` at which training pauses for an IWAE
    estimate (every ``every`` steps), ending with ``end``; ``start`` first when its
    estimate is still to be made (a resume from a checkpoint at such a step)."""
    stops = list(range(every, end, every)) if every else []
    return [start] * start_pending + [step for step in stops if step > start] + [end]


def _estimates_at(step: int, every: int, total: int) -> bool:
    """Whether ``--iwae-every`` asks for an IWAE estimate at ``step`` (the last step's
    is the final evaluation's)."""
    return bool(every) and 0 < step < total and step % every == 0


def _evaluated_module(trainer: Trainer):
    """The weights a run is judged by: the moving average when there is one."""
    return (trainer.ema.module, "ema") if trainer.ema is not None else (trainer.model, "weights")


def evaluation_seed(seed: int) -> int:
    """The seed of a run's evaluations: the trainer's own evaluation seed (rank 0's), so
    the final report's ELBO is the training line's test ELBO of the same weights, not
    another one-sample estimate with other noise."""
    return derived_seed(seed, EVAL_STREAM, 0)


def _iwae_event(trainer: Trainer, eval_data, settings: Mapping, split: str) -> dict:
    module, _ = _evaluated_module(trainer)
    points = settings["iwae_points"] or None
    estimate = iwae_estimate(module, eval_data, settings["iwae_samples"],
                             settings.get("eval_batch_size") or DEFAULT_EVAL_BATCH, num_points=points,
                             seed=evaluation_seed(settings["seed"]))
    return {"step": trainer.step, f"{split}/iwae": estimate.mean, f"{split}/iwae_nll": estimate.nll,
            f"{split}/iwae_num_samples": estimate.num_samples, f"{split}/iwae_num_points": estimate.num_points}


def full_config(settings: Mapping, model, config) -> dict:
    """What report.md shows: the settings, the model's config and the trainer's."""
    return {"settings": {k: v for k, v in settings.items() if v is not None and k not in INVOCATION_KEYS},
            "model": model.config, "train": config.to_dict()}


def _logged_elbo_key(which: str) -> str:
    """The metrics.jsonl key of the trainer's test ELBO of the weights evaluated."""
    return "eval_ema/elbo" if which == "ema" else "eval/elbo"


def training_log_note(trainer: Trainer, results: Mapping, which: str) -> Optional[str]:
    """One sentence for report.md: the trainer's final test ELBO is this report's ELBO
    of all points, or why the two differ."""
    key = _logged_elbo_key(which)
    logged = results.get("training_log_elbo")
    if logged is None:
        return None
    where = f"metrics.jsonl `{key}` at step {trainer.step}"
    also = ""
    if which == "ema" and isinstance(trainer.last_metrics.get("eval/elbo"), float):
        also = (f" (the training line prints the trained weights' test ELBO, {trainer.last_metrics['eval/elbo']:.3f}; "
                f"this report judges the weight average)")
    if math.isclose(logged, results["elbo"], rel_tol=1e-9, abs_tol=1e-9):
        return (f"The ELBO of all points is the trainer's final test ELBO ({where}): the same points, batches and "
                f"noise seed{also}.")
    reasons = []
    if trainer.config.autocast:
        reasons.append("the trainer's ran under bf16 autocast, this one in float32")
    if trainer.context.world_size > 1:
        reasons.append(f"the trainer's was split over {trainer.context.world_size} processes, each with its own noise")
    why = "; ".join(reasons) or "both are one-sample estimates, drawn with different noise"
    return f"The trainer's final test ELBO ({where}) was {logged:.3f}, not {results['elbo']:.3f}: {why}{also}."


def finish_run(trainer: Trainer, eval_data, settings: Mapping, folder: Path, config) -> dict:
    """The final evaluation (rank 0): results.json, the pictures and report.md."""
    module, which = _evaluated_module(trainer)
    points = settings["iwae_points"] or None
    # The trainer's evaluation batches and seed: the ELBO of all points repeats its
    # final test ELBO (a forward pass draws its noise for its whole batch).
    batch = config.eval_batch_size or config.batch_size
    results = evaluate(module, eval_data, num_samples=settings["iwae_samples"], batch_size=batch,
                       iwae_num_points=points, mi_num_points=MI_POINTS, seed=evaluation_seed(settings["seed"]))
    key = _logged_elbo_key(which)
    logged = trainer.last_metrics.get(key, logged_value(folder, trainer.step, key))
    results.update(step=trainer.step, evaluated=which, split=settings["eval_split"], data=settings["data"],
                   seed=settings["seed"], train_seconds=round(trainer.elapsed, 1),
                   training_log_elbo=logged if isinstance(logged, float) else None)
    notes = []
    if trainer.stopped_by_time_limit:
        results["stopped_by"] = "time_limit"
        notes.append(f"Training stopped at its time limit (--time-limit {settings['time_limit']:g} minutes of "
                     f"training) at step {trainer.step} of the {trainer.total_steps} planned; `{PROGRAM} train --out "
                     f"{folder} --resume --time-limit MINUTES` with a larger limit (0: none) trains on.")
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    split = settings["eval_split"]
    logger = MetricsLogger(folder, tensorboard=False)
    logger.log({"step": trainer.step, f"{split}/iwae": results["iwae"], f"{split}/iwae_nll": results["iwae_nll"],
                f"{split}/iwae_num_samples": results["iwae_num_samples"],
                f"{split}/iwae_num_points": results["iwae_num_points"]})
    logger.close()
    if settings["pictures"]:
        save_pictures(module, eval_data, folder, kl_per_dim=torch.tensor(results["kl_per_dim"]),
                      metrics_path=folder / METRICS_FILE, seed=settings["seed"],
                      active_units_per_group=results.get("active_units_per_group"))
    title = f"fastvae report: {settings['name']} ({settings['data']}, {settings['model']}, step {trainer.step}" + (
        ", weight average)" if which == "ema" else ")")
    note = training_log_note(trainer, results, which)
    notes += [note] if note else []
    write_report(folder / REPORT_FILE, results, config=full_config(settings, module, config), title=title,
                 notes=notes)
    return results


def summary_lines(results: Mapping, folder: Path) -> list:
    """The command's closing lines: the IWAE estimate beside the ELBO of the same points
    and their gap, then the ELBO over all evaluated points, each saying which points."""
    total, split = results["num_points"], results.get("split")
    bits = results.get("iwae_bits_per_dim")
    logged = results.get("training_log_elbo")
    about = ["one sample per point"]
    if results.get("evaluated") == "ema":
        about.append("of the weight average" + ("; the training line's test ELBO is the trained weights'"
                                                 if logged is not None else ""))
    if logged is not None and not math.isclose(logged, results["elbo"], rel_tol=1e-9, abs_tol=1e-9):
        about.append(f"the trainer's was {logged:.3f}, with other noise: report.md says why")
    return [
        f"{point_set(results['iwae_num_points'], total, split)}: IWAE log p(x) >= {results['iwae']:.3f} nats "
        f"(K={results['iwae_num_samples']}), ELBO {results['iwae_mean_log_weight']:.3f} nats (same log-weights), "
        f"ELBO gap {results['elbo_gap']:.3f} nats" + (f"; IWAE {bits:.4f} bits/dim" if bits is not None else ""),
        f"{point_set(total, total, split)}: ELBO {results['elbo']:.3f} nats ({'; '.join(about)}); "
        f"KL {results['kl']:.3f} nats; active units {results['active_units']} of {results['latent_dim']}",
        f"run folder: {folder} (report.md, results.json, metrics.jsonl, checkpoints/, PNGs)",
    ]


def train_run(settings: dict, resume: bool = False, stop_at: Optional[int] = None) -> Optional[dict]:
    """Train the run the settings describe, into its run folder; returns the final
    evaluation (on rank 0; None on the other ranks or when stopped at ``stop_at``)."""
    context = distributed.init_from_env()
    device = pick_device(settings, context.enabled)
    # On the CPU, Adam's second moments of a Bernoulli decoder's saturated logits
    # underflow into denormal floats, whose arithmetic is tens of times slower there.
    # The flag is per thread, inherited by the worker threads torch starts later: a
    # `fastvae train` process sets it before its first parallel op.
    flushing = torch.device(device or "cpu").type == "cpu" and torch.set_flush_denormal(True)
    try:
        with SignalHandling() as signals:
            try:
                return _train(settings, context, device, resume, stop_at, signals)
            except Interrupted as interruption:
                if context.is_main:
                    print(signals.message(interruption.signum), file=sys.stderr, flush=True)
                if interruption.agreed:
                    # No process leaves before rank 0 has said how to resume: under
                    # torchrun, the first to exit gets the others terminated.
                    distributed.barrier(context)
                raise
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def _train(settings: dict, context, device: Optional[str], resume: bool, stop_at: Optional[int],
           signals: SignalHandling) -> Optional[dict]:
    folder = run_folder(settings, context)
    signals.folder, signals.resuming = folder, resume
    if context.is_main and not resume:
        claim_folder(folder, settings.get("overwrite", False))
    distributed.barrier(context)
    with backends.use_backend(settings["backend"]):
        train_data = load_split(settings, "train", device)
        eval_data = load_split(settings, settings["eval_split"], device)
        model = new_model(settings, train_data.data_shape)
        settings.update(model_settings(model))
        config = train_config(settings, folder, device)
        trainer = Trainer(model, train_data, config, eval_data=eval_data)
        signals.total_steps = trainer.total_steps
        split, every = settings["eval_split"], settings["iwae_every"]
        if resume:
            load_latest_checkpoint(trainer, folder, context)
            signals.checkpoint_step = trainer.step
            if trainer.step >= trainer.total_steps or trainer.time_limit_reached:
                # Finished: say so and write nothing (not even config.toml).
                results = finished_results(folder, trainer.step, RESULTS_FILE, REPORT_FILE)
                if results is not None and trainer.step >= trainer.total_steps:
                    say(f"{PROGRAM} train: the run in {folder} is finished at step {trainer.step} (its {REPORT_FILE} "
                        f"is written); nothing to do. To train it longer: --resume --steps N", context)
                    return results
                if results is not None:
                    say(f"{PROGRAM} train: the run in {folder} stopped at its time limit "
                        f"({settings['time_limit']:g} minutes of training) at step {trainer.step} of "
                        f"{trainer.total_steps} (its {REPORT_FILE} is written); nothing to do. To train on: --resume "
                        f"--time-limit MINUTES (a larger limit) or --time-limit 0 (none)", context)
                    return results
                forget_final_evaluation(folder, trainer.step, split, context)
            say(f"resuming {folder} from step {trainer.step} of {trainer.total_steps}", context)
        if context.is_main:
            header = (f"fastvae train: {settings['name']}\nRerun: {PROGRAM} train --config {folder / CONFIG_FILE} "
                      f"--out NEW_FOLDER; continue: {PROGRAM} train --out {folder} --resume")
            write_toml(folder / CONFIG_FILE, {k: v for k, v in settings.items() if k not in INVOCATION_KEYS}, header)
        backend = backends.resolve("sample_gaussian", trainer.device, torch.float32)
        say(f"training {settings['model']} on {settings['data']} ({len(train_data)} images, "
            f"{trainer.total_steps} steps of {config.batch_size}) on {trainer.device}, fastvae backend '{backend}'; "
            f"run folder {folder}", context)
        end = trainer.total_steps if stop_at is None else min(stop_at, trainer.total_steps)
        # Rank 0's metrics.jsonl says whether the estimate of the resumed step was logged.
        start_pending = (resume and _estimates_at(trainer.step, every, trainer.total_steps)
                         and not distributed.all_gather_objects(iwae_logged(folder, trainer.step, split), context)[0])
        for milestone in _milestones(every, trainer.step, end, start_pending):
            with signals.deferring(trainer):
                metrics = trainer.fit(stop_at=milestone)
            signals.checkpoint_step = trainer.step
            stopped_by = agreed_signal(signals.received, context)
            if stopped_by is not None:
                raise Interrupted(stopped_by, agreed=True)
            if math.isfinite(metrics.get("elbo", math.nan)):
                say(f"step {trainer.step}: train ELBO {metrics['elbo']:.3f}"
                    + (f", {split} ELBO {metrics['eval/elbo']:.3f}" if "eval/elbo" in metrics else ""), context)
            if trainer.stopped_by_time_limit:
                # The final evaluation below makes this step's IWAE estimate.
                break
            if _estimates_at(milestone, every, trainer.total_steps) and context.is_main:
                event = _iwae_event(trainer, eval_data, settings, split)
                logger = MetricsLogger(folder, tensorboard=False)
                logger.log(event)
                logger.close()
                say(f"step {trainer.step}: {split} IWAE NLL {event[f'{split}/iwae_nll']:.3f} nats "
                    f"(K={settings['iwae_samples']}, {event[f'{split}/iwae_num_points']} points)", context)
            distributed.barrier(context)
        if trainer.stopped_by_time_limit:
            say(f"stopped at step {trainer.step} of {trainer.total_steps}: the time limit of "
                f"{settings['time_limit']:g} minutes of training is reached; evaluating this step as the last", context)
        elif trainer.step < trainer.total_steps:
            say(f"stopped at step {trainer.step} of {trainer.total_steps}; continue with "
                f"`{PROGRAM} train --out {folder} --resume`", context)
            return None
        results = None
        if context.is_main:
            results = finish_run(trainer, eval_data, settings, folder, config)
            for line in summary_lines(results, folder):
                print(line, flush=True)
        distributed.barrier(context)
        return results
