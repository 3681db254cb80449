"""``fastvae eval CHECKPOINT`` and ``fastvae sample CHECKPOINT``: judge or draw from a
trained model.  CHECKPOINT is a checkpoint file or a run folder (its last checkpoint);
the data set of a run folder is read from its config.toml."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Mapping, Optional, Tuple

import torch

from .. import backends
from ..eval import evaluate, save_image_grid, save_samples, write_report
from ..eval._common import evaluating
from ..train import latest_checkpoint, load_checkpoint
from .build import DEFAULT_EVAL_BATCH, load_split
from .options import PROGRAM, ConfigError, builtin_defaults, fill_data_defaults, overlay, read_toml
from .train import CONFIG_FILE, REPORT_FILE, RESULTS_FILE, evaluation_seed, summary_lines

# The papers' setting (Burda et al. 2016 and after): 5000 importance samples per point.
PAPER_IWAE_SAMPLES = 5000


def find_checkpoint(path, where: str) -> Tuple[Path, Optional[Path]]:
    """(checkpoint file, its run folder or None) for a file or a run folder."""
    path = Path(path)
    if path.is_dir():
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"{PROGRAM} {where}: {str(path)!r} is a folder with no checkpoints/step_*.pt")
        return checkpoint, path
    if not path.is_file():
        raise FileNotFoundError(f"{PROGRAM} {where}: no checkpoint file or run folder {str(path)!r}")
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    return path, run if run is not None and (run / CONFIG_FILE).is_file() else None


def _device(requested: Optional[str]) -> str:
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def _pick_model(checkpoint, use_ema: Optional[bool], where: str):
    """The weight average when the checkpoint has one (or ``use_ema``), else the weights."""
    if use_ema and checkpoint.ema_model is None:
        raise ConfigError(f"{PROGRAM} {where}: --ema: {checkpoint.path} holds no weight average (train with --ema-decay)")
    if checkpoint.ema_model is not None and use_ema is not False:
        return checkpoint.ema_model, "ema"
    return checkpoint.model, "weights"


def data_settings(run: Optional[Path], overrides: Mapping, where: str) -> dict:
    """The data settings of an evaluation: the run's config.toml (when there is a run
    folder) under the flags given; sprites by default."""
    settings = builtin_defaults()
    if run is not None:
        settings = overlay(settings, read_toml(run / CONFIG_FILE, where))
    settings = overlay(settings, {key: value for key, value in overrides.items() if value is not None})
    # Evaluations read the whole split unless told otherwise; the training run's own
    # num_test limited its evaluation, not this one.
    settings["num_test"] = overrides.get("num_test")
    return fill_data_defaults(settings)


def eval_checkpoint(path, split: str = "test", num_samples: int = PAPER_IWAE_SAMPLES, num_points: Optional[int] = None,
                    batch_size: int = DEFAULT_EVAL_BATCH, sample_chunk: Optional[int] = None,
                    use_ema: Optional[bool] = None, device: Optional[str] = None, backend: str = "auto",
                    seed: int = 0, out: Optional[str] = None, data_overrides: Optional[Mapping] = None,
                    diffusion_t_samples: Optional[int] = None) -> dict:
    """Evaluate a checkpoint on a split (IWAE with K = ``num_samples``, ELBO, gap, active
    units, KL per dimension, mutual information; for a diffusion decoder, its bound's terms
    and their noise with ``diffusion_t_samples`` t-samples, default the model's); writes
    report.md and results.json into ``out`` (default RUN/eval-<split>-k<K>, or beside the
    checkpoint)."""
    where = "eval"
    checkpoint_path, run = find_checkpoint(path, where)
    device = _device(device)
    checkpoint = load_checkpoint(checkpoint_path, map_location=device)
    model, which = _pick_model(checkpoint, use_ema, where)
    if diffusion_t_samples is not None and getattr(model, "diffusion", None) is None:
        raise ConfigError(f"{PROGRAM} {where}: --diffusion-t-samples is for a model with a diffusion decoder "
                          f"(--likelihood diffusion); this one's likelihood is {model.config.get('likelihood')!r}")
    settings = data_settings(run, {**(data_overrides or {}), "num_test": num_points}, where)
    with backends.use_backend(backend):
        data = load_split(settings, split, device)
        if tuple(data.data_shape) != tuple(model.data_shape):
            raise ConfigError(f"{PROGRAM} {where}: the {settings['data']} {split} images have shape "
                              f"{tuple(data.data_shape)}, the model expects {tuple(model.data_shape)}; choose the "
                              f"data set with --data")
        # The seed goes through a run's own derivation: with the run's seed, batch size and
        # points, the ELBO repeats the run's report.
        results = evaluate(model, data, num_samples=num_samples, batch_size=batch_size, sample_chunk=sample_chunk,
                           mi_num_points=min(len(data), 1000), seed=evaluation_seed(seed),
                           diffusion_t_samples=diffusion_t_samples)
    trainer_state = checkpoint.state.get("trainer") or {}
    results.update(step=checkpoint.step, evaluated=which, split=split, data=settings["data"],
                   checkpoint=str(checkpoint_path), seed=seed)
    if trainer_state.get("elapsed") is not None:
        results["train_seconds"] = round(float(trainer_state["elapsed"]), 1)
    if out is None:
        name = f"eval-{split}-k{num_samples}"
        out = (run / name) if run is not None else checkpoint_path.with_name(f"{checkpoint_path.stem}-{name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    title = (f"fastvae evaluation: {checkpoint_path} (step {checkpoint.step}"
             + (", weight average)" if which == "ema" else ")") + f" on {settings['data']} {split}")
    write_report(out / REPORT_FILE, results, config={"checkpoint": str(checkpoint_path), "model": model.config,
                                                      "data": settings["data"], "split": split, "seed": seed},
                 title=title)
    for line in summary_lines(results, out)[:-1]:
        print(line)
    print(f"report: {out / REPORT_FILE}")
    return results


def takes_temperature(model) -> bool:
    """Whether the model's ``sample`` takes a ``temperature`` (e.g. DeepVAE's)."""
    return "temperature" in inspect.signature(model.sample).parameters


def sample_checkpoint(path, num: int = 64, ncol: int = 8, seed: int = 0, use_ema: Optional[bool] = None,
                      device: Optional[str] = None, backend: str = "auto", out: Optional[str] = None,
                      temperature: Optional[float] = None, steps: Optional[int] = None,
                      sampler: Optional[str] = None) -> Path:
    """Write a PNG grid of ``num`` samples of a checkpoint's model (z ~ p(z), the
    decoder's mean); the same seed gives the same picture.  ``temperature`` (None: the
    model's own default) is passed to the model's ``sample``, which must take one.
    ``steps`` and ``sampler`` (None: the model's) set a diffusion decoder's sampling."""
    where = "sample"
    checkpoint_path, run = find_checkpoint(path, where)
    checkpoint = load_checkpoint(checkpoint_path, map_location=_device(device))
    model, _ = _pick_model(checkpoint, use_ema, where)
    if steps is not None or sampler is not None:
        if getattr(model, "diffusion", None) is None:
            flag = "--steps" if steps is not None else "--sampler"
            raise ConfigError(f"{PROGRAM} {where}: {flag} sets a diffusion decoder's sampling; the "
                              f"{model.config.get('name')!r} model's likelihood is "
                              f"{model.config.get('likelihood')!r}, not 'diffusion'")
        model.diffusion.steps = steps if steps is not None else model.diffusion.steps
        model.diffusion.sampler = sampler if sampler is not None else model.diffusion.sampler
    if temperature is not None and not takes_temperature(model):
        name = model.config.get("name", type(model).__name__)
        raise ConfigError(f"{PROGRAM} {where}: --temperature: the {name!r} model's sample() takes no temperature "
                          f"(the deep model's does); leave the flag out")
    if out is None:
        tempered = "" if temperature is None else f"-t{temperature:g}"
        name = f"samples-seed{seed}{tempered}.png"
        out = (run / name) if run is not None else checkpoint_path.with_name(f"{checkpoint_path.stem}-{name}")
    with backends.use_backend(backend):
        if temperature is None:
            written = save_samples(model, out, num_samples=num, ncol=ncol, seed=seed)
        else:
            # save_samples's seeding (fastvae.eval), with the temperature passed on.
            with evaluating(model, seed) as model_device:
                generator = torch.Generator(model_device).manual_seed(seed)
                samples = model.sample(num, generator=generator, temperature=temperature)
            written = save_image_grid(samples, out, ncol=ncol)
    print(f"wrote {written}")
    return Path(written)
