"""``fastvae gradvar CHECKPOINT``: the variance of the encoder's gradient estimators of the
ELBO on a fixed batch of evaluation images — reparameterization (or Gumbel-softmax for the
discrete model) against the score function with and without baselines
(:func:`fastvae.eval.gradient_variance`).  Writes gradvar.md, gradvar.json and
gradvar.png into the run folder (or ``--out``)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from .. import backends
from ..eval._common import iterate_batches, model_device
from ..eval.gradvar import DEFAULT_TEMPERATURES, gradient_variance, gradient_variance_table, write_gradient_variance
from ..train import load_checkpoint
from .build import load_split
from .checkpoints import _device, _pick_model, data_settings, find_checkpoint
from .options import PROGRAM, ConfigError

DEFAULT_BATCH = 100
DEFAULT_ESTIMATES = 1000
DEFAULT_BASELINE_STEPS = 300
DEFAULT_BASELINE_DRAWS = 100


def gradvar_checkpoint(path, batch_size: int = DEFAULT_BATCH, num_estimates: int = DEFAULT_ESTIMATES,
                       temperatures: Optional[Sequence[float]] = None, baseline_steps: int = DEFAULT_BASELINE_STEPS,
                       baseline_draws: int = DEFAULT_BASELINE_DRAWS, split: str = "test",
                       use_ema: Optional[bool] = None, device: Optional[str] = None, backend: str = "auto",
                       seed: int = 0, out: Optional[str] = None, data_overrides: Optional[Mapping] = None) -> dict:
    """Measure the gradient variance of a checkpoint's model (a checkpoint file or a run
    folder's last one) on the first ``batch_size`` images of ``split``; write gradvar.md,
    gradvar.json and gradvar.png into ``out`` (default: the run folder, or beside the
    checkpoint) and return the summary (:func:`fastvae.eval.gradient_variance`)."""
    where = "gradvar"
    checkpoint_path, run = find_checkpoint(path, where)
    device = _device(device)
    checkpoint = load_checkpoint(checkpoint_path, map_location=device)
    model, which = _pick_model(checkpoint, use_ema, where)
    name = model.config.get("name", type(model).__name__)
    if name not in ("mlp", "conv", "discrete"):
        raise ConfigError(f"{PROGRAM} {where}: the {name!r} model has no score-function estimator; gradvar measures "
                          f"mlp, conv and discrete models")
    if temperatures is not None and name != "discrete":
        raise ConfigError(f"{PROGRAM} {where}: --temperatures are the Gumbel-softmax temperatures of the discrete "
                          f"model; the {name!r} model's latent is Gaussian: leave the flag out")
    if temperatures is not None and (not temperatures or not all(t > 0 for t in temperatures)):
        raise ConfigError(f"{PROGRAM} {where}: --temperatures must be one or more numbers > 0, got {temperatures}")
    settings = data_settings(run, {**(data_overrides or {}), "num_test": batch_size}, where)
    with backends.use_backend(backend):
        data = load_split(settings, split, device)
        if tuple(data.data_shape) != tuple(model.data_shape):
            raise ConfigError(f"{PROGRAM} {where}: the {settings['data']} {split} images have shape "
                              f"{tuple(data.data_shape)}, the model expects {tuple(model.data_shape)}; choose the "
                              f"data set with --data")
        x = next(iterate_batches("gradient_variance", data, batch_size, model_device(model), batch_size))
        result = gradient_variance(model, x, num_estimates=num_estimates,
                                   temperatures=DEFAULT_TEMPERATURES if temperatures is None else temperatures,
                                   seed=seed, baseline_draws=baseline_draws, baseline_steps=baseline_steps)
    summary = result.summary
    summary.update(step=checkpoint.step, evaluated=which, split=split, data=settings["data"],
                   checkpoint=str(checkpoint_path), model=name)
    if out is None:
        out = run if run is not None else checkpoint_path.with_name(f"{checkpoint_path.stem}-gradvar")
    title = (f"Gradient variance: {name} model, {checkpoint_path} (step {checkpoint.step}"
             + (", weight average)" if which == "ema" else ")"))
    notes = [f"Data: the first {summary['batch_size']} {settings['data']} {split} images."]
    paths = write_gradient_variance(result, Path(out), title=title, notes=notes)
    for line in gradient_variance_table(summary):
        print(line)
    print(f"wrote {paths['md']}, {paths['json'].name}, {paths['png'].name}")
    return summary

