"""The training loop: :class:`Trainer`.

One update, in order: the step's β (and temperature, and learning rate) from pure
functions of the global step; the batch (its order a pure function of (seed, epoch));
the forward pass under bf16 autocast when asked; backward; the gradient's global norm
(clipped to ``grad_clip``); the update, unless the norm is not finite or above
``skip_threshold``; the weight average.  Logging, evaluation and checkpoints happen
between steps and draw no random numbers from the training stream, so a run stopped and
resumed from a checkpoint continues bit for bit as the uninterrupted run on the same
device.  :meth:`Trainer.request_stop` (safe in a signal handler: it only sets a flag)
makes :meth:`Trainer.fit` stop between two steps with such a checkpoint.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed
from .checkpoint import (
    _build_model,
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .data import BINARIZE_STREAM, EVAL_STREAM, RANK_STREAM, as_batch_source, derived_seed, epoch_permutation
from .ema import ExponentialMovingAverage
from .metrics import METRICS_FILE, TENSORBOARD_DIR, MetricsLogger
from .schedules import make_schedule

__all__ = ["Trainer", "TrainConfig", "TooManySkippedUpdates"]

# Per-step values that are not averaged over a logging window (the last one is logged).
_CURRENT_VALUES = ("beta", "lr", "temperature")


def _canonical(config: dict) -> str:
    # Tuples and lists are the same config (a JSON or TOML round trip turns one into the other).
    return json.dumps(config, sort_keys=True, default=str)


class TooManySkippedUpdates(RuntimeError):
    """Raised when ``max_consecutive_skips`` updates in a row were skipped."""


def _seed_everything(seed: int, rank: int) -> None:
    # Each process draws its own noise; DDP makes the weights equal at the start anyway.
    process_seed = seed if rank == 0 else derived_seed(seed, RANK_STREAM, rank)
    torch.manual_seed(process_seed)
    random.seed(process_seed)
    np.random.seed(process_seed % 2**32)


def _total_grad_norm(parameters: List[nn.Parameter]) -> Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


def _pick_device(config: TrainConfig, model: nn.Module, context: distributed.DistributedContext) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if context.enabled and torch.cuda.is_available():
        return torch.device("cuda", context.local_rank)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("fastvae.train.Trainer: model has no parameters that require grad")
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(parameters, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)


class Trainer:
    """Trains a fastvae model (any :class:`fastvae.models.VAE`).

    Args:
        model: the model; its forward ``model(x, beta=..., free_bits=...)`` returns a
            :class:`fastvae.models.VAEOutput`.  It is moved to the training device.
        train_data: a float Tensor ``[N, *data_shape]`` in [0, 1], a data set with a fast
            ``batch(indices, generator=None)`` method (fastvae.data's), or any map-style
            ``torch.utils.data.Dataset`` of float tensors (items are stacked).
        config: a :class:`TrainConfig` (or its dict).
        eval_data: evaluated every ``config.eval_every`` steps and at the end (ELBO, nll,
            KL, KL per dimension and bits per dimension, with β = 1 and no free bits;
            also for the weight average when ``ema_decay`` is set).

    Under ``torchrun`` (WORLD_SIZE > 1 in the environment) the trainer joins the process
    group, wraps the model in DistributedDataParallel and gives each process its share
    of every global batch; metrics are averaged over the processes and only rank 0
    writes files.

    Example::

        >>> model = fastvae.models.build_model({"name": "mlp", "data_shape": [784]})
        >>> config = TrainConfig(epochs=10, batch_size=128, beta_schedule="linear:2000",
        ...                      out_dir="runs/mnist", eval_every=1000)
        >>> metrics = Trainer(model, train_images, config, eval_data=test_images).fit()
        >>> metrics["eval/elbo"]
        -95.3
        >>> # later, or after a crash: continue exactly where the last checkpoint left off
        >>> trainer = Trainer.from_checkpoint(latest_checkpoint("runs/mnist"), train_images,
        ...                                   eval_data=test_images)
        >>> trainer.fit()
    """

    def __init__(self, model: nn.Module, train_data, config: Union[TrainConfig, dict], eval_data=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"fastvae.train.Trainer: model must be an nn.Module, got {type(model).__name__}")
        if isinstance(config, dict):
            config = TrainConfig.from_dict(config)
        if not isinstance(config, TrainConfig):
            raise TypeError(f"fastvae.train.Trainer: config must be a TrainConfig or dict, got {type(config).__name__}")
        self.config = config
        self.context = distributed.init_from_env()
        self.device = _pick_device(config, model, self.context)
        self.model = model.to(self.device)
        self.train_source = as_batch_source(train_data, "train_data")
        self.eval_source = as_batch_source(eval_data, "eval_data") if eval_data is not None else None
        self._check_data_shape()

        self.steps_per_epoch = len(self.train_source) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"fastvae.train.Trainer: train_data has {len(self.train_source)} items, fewer than one batch "
                f"(batch_size={config.batch_size})"
            )
        if config.batch_size % self.context.world_size:
            raise ValueError(
                f"fastvae.train.Trainer: batch_size ({config.batch_size}) is the global batch and must divide "
                f"evenly over the {self.context.world_size} processes"
            )
        self.total_steps = config.steps if config.steps is not None else config.epochs * self.steps_per_epoch
        self.beta_schedule = make_schedule(config.beta_schedule, self.total_steps)
        self.temperature_schedule = (
            make_schedule(config.temperature_schedule, self.total_steps) if config.temperature_schedule else None
        )
        if self.temperature_schedule is not None and not hasattr(model, "temperature"):
            raise TypeError(
                f"fastvae.train.Trainer: config.temperature_schedule is set but {type(model).__name__} has no "
                f"'temperature' attribute to set"
            )

        _seed_everything(config.seed, self.context.rank)
        self.ema = ExponentialMovingAverage(model, config.ema_decay) if config.ema_decay is not None else None
        self.optimizer = _make_optimizer(model, config)
        if config.compile:
            # Compiles in place: the state dict keeps its keys, so checkpoints load anywhere.
            model.compile(backend=config.compile_backend)
        self.forward_model = distributed.wrap_model(model, self.context, self.device, config.find_unused_parameters)
        self._parameters = [p for p in model.parameters() if p.requires_grad]
        self._data_generator = self.train_source.generator()

        self.step = 0
        self.epoch = 0
        self.position = 0  # batches of the current epoch already drawn
        self.consecutive_skips = 0
        self.total_skips = 0
        self.elapsed = 0.0
        self.window: List[dict] = []  # per-step metrics since the last log
        self.last_metrics: Dict[str, object] = {}
        self._permutation: Optional[Tensor] = None
        self._permutation_epoch = -1
        self._logger: Optional[MetricsLogger] = None
        self.stop_requested = False  # set by request_stop, read between steps
        self.stopped_on_request = False  # whether the last fit ended on a request
        self.stopped_by_time_limit = False  # whether the last fit ended at config.time_limit

    # ---------------------------------------------------------------- setup helpers

    def _check_data_shape(self) -> None:
        expected = tuple(getattr(self.model, "data_shape", ()) or ())
        for name, source in (("train_data", self.train_source), ("eval_data", self.eval_source)):
            if source is None or not expected or not source.data_shape:
                continue
            if tuple(source.data_shape) != expected:
                raise ValueError(
                    f"fastvae.train.Trainer: {name} items have shape {tuple(source.data_shape)}, the model expects "
                    f"data_shape {expected}"
                )

    @property
    def out_dir(self) -> Optional[Path]:
        return Path(self.config.out_dir) if self.config.out_dir is not None else None

    # ---------------------------------------------------------------- one step

    def learning_rate(self, step: int) -> float:
        """The learning rate of update ``step`` (the linear warm-up, then ``config.lr``)."""
        warmup = self.config.lr_warmup_steps
        return self.config.lr * min(1.0, (step + 1) / warmup) if warmup else self.config.lr

    def _next_batch(self) -> Tensor:
        if self.position >= self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
        if self._permutation_epoch != self.epoch:
            self._permutation = epoch_permutation(len(self.train_source), self.config.seed, self.epoch)
            self._permutation_epoch = self.epoch
        size = self.config.batch_size
        indices = self._permutation[self.position * size:(self.position + 1) * size]
        indices = distributed.shard_batch(indices, self.context)
        self._data_generator.manual_seed(derived_seed(self.config.seed, BINARIZE_STREAM, self.step, self.context.rank))
        x = self.train_source.fetch(indices, self._data_generator)
        self.position += 1
        return x.to(self.device, non_blocking=True)

    def _train_step(self, x: Tensor) -> dict:
        config, step = self.config, self.step
        beta = self.beta_schedule(step)
        record: dict = {}
        if self.temperature_schedule is not None:
            record["temperature"] = self.temperature_schedule(step)
            self.model.temperature = record["temperature"]
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=config.autocast):
            output = self.forward_model(x, beta=beta, free_bits=config.free_bits)
        if not all(hasattr(output, name) for name in ("loss", "elbo", "nll", "kl")):
            raise TypeError(
                f"fastvae.train.Trainer: the model's forward must return a fastvae.models.VAEOutput, got "
                f"{type(output).__name__}"
            )
        output.loss.backward()
        if config.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._parameters, config.grad_clip)
        else:
            grad_norm = _total_grad_norm(self._parameters)

        names = ["grad_norm", "loss", "elbo", "nll", "kl"]
        values = [grad_norm.float().to(self.device), output.loss.detach().float(), output.elbo.float().mean(),
                  output.nll.float().mean(), output.kl.float().mean()]
        for name, value in getattr(output, "extras", {}).items():
            names.append(name)
            values.append(value.detach().float().mean())
        # One device sync per step, for the skip decision and every logged number.
        record.update(zip(names, torch.stack(values).tolist()))

        norm = record["grad_norm"]
        skipped = not math.isfinite(norm) or (config.skip_threshold is not None and norm > config.skip_threshold)
        record.update(skipped=skipped, beta=beta, lr=lr)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_skips += 1
            self.total_skips += 1
        else:
            self.optimizer.step()
            self.consecutive_skips = 0
            if self.ema is not None:
                self.ema.update(self.model)
        return record

    def _too_many_skips(self, record: dict) -> TooManySkippedUpdates:
        config, norm = self.config, record["grad_norm"]
        why = "not finite" if not math.isfinite(norm) else f"above skip_threshold={config.skip_threshold}"
        return TooManySkippedUpdates(
            f"fastvae.train.Trainer: {self.consecutive_skips} updates in a row were skipped (steps "
            f"{self.step - self.consecutive_skips + 1}-{self.step}; the last gradient norm was {norm:.4g}, {why}), "
            f"so training stopped rather than skip forever (max_consecutive_skips={config.max_consecutive_skips}). "
            f"What to change: lower the learning rate (lr={config.lr:g}); raise skip_threshold; enable gradient "
            f"clipping (grad_clip={config.grad_clip}); turn bf16 autocast off if it is on; check the data for "
            f"NaN/inf or values outside [0, 1]."
        )

    # ---------------------------------------------------------------- logging

    def _log_window(self, progress=None) -> None:
        if not self.window:
            return
        applied = [r for r in self.window if not r["skipped"]] or self.window
        averaged = [k for k in applied[0] if k not in _CURRENT_VALUES and k != "skipped"]
        means = [sum(r.get(k, math.nan) for r in applied) / len(applied) for k in averaged]
        if self.context.enabled:
            summed = torch.tensor(means, dtype=torch.float64, device=self.device)
            means = (distributed.all_reduce_sum(summed, self.context) / self.context.world_size).tolist()
        last = self.window[-1]
        event = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4)}
        event.update(zip(averaged, means))
        event.update({k: last[k] for k in _CURRENT_VALUES if k in last})
        event["skipped"] = sum(r["skipped"] for r in self.window)
        event["skipped_total"] = self.total_skips
        event["time"] = round(self._elapsed(), 3)
        self.window.clear()
        self._emit(event)
        if progress is not None:
            progress.set_postfix(loss=f"{event['loss']:.4g}", elbo=f"{event['elbo']:.4g}", refresh=False)

    def _emit(self, event: dict) -> None:
        self.last_metrics.update(event)
        if self._logger is not None:
            self._logger.log(event)

    def _elapsed(self) -> float:
        return self.elapsed + (time.perf_counter() - self._session_start)

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, module: Optional[nn.Module] = None, prefix: str = "eval") -> Dict[str, object]:
        """Mean loss, ELBO, nll and KL (β = 1, no free bits), KL per dimension and bits
        per dimension of ``module`` (default the model) over the eval data.

        The noise is drawn from a generator seeded for evaluation (the same at every
        evaluation, so successive evaluations differ only by the weights) inside
        ``torch.random.fork_rng``: evaluating never changes the training run."""
        if self.eval_source is None:
            raise ValueError("fastvae.train.Trainer.evaluate: the trainer was given no eval_data")
        module = self.model if module is None else module
        config, context = self.config, self.context
        batch_size = config.eval_batch_size or config.batch_size
        indices = torch.arange(len(self.eval_source))[context.rank::context.world_size]
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # Σ loss·n, Σ elbo, Σ nll, Σ kl
        kl_per_dim: Optional[Tensor] = None
        count = 0
        was_training = module.training
        module.eval()
        cuda_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda_devices):
                eval_seed = derived_seed(config.seed, EVAL_STREAM, context.rank)
                torch.manual_seed(eval_seed)
                generator = self.eval_source.generator().manual_seed(eval_seed)
                for chunk in indices.split(batch_size):
                    x = self.eval_source.fetch(chunk, generator).to(self.device, non_blocking=True)
                    with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=config.autocast):
                        output = module(x, beta=1.0, free_bits=0.0)
                    size = x.shape[0]
                    count += size
                    totals += torch.stack([output.loss.detach().double() * size, output.elbo.double().sum(),
                                           output.nll.double().sum(), output.kl.double().sum()])
                    per_dim = output.kl_per_dim.detach().double() * size
                    kl_per_dim = per_dim if kl_per_dim is None else kl_per_dim + per_dim
        finally:
            module.train(was_training)
        if kl_per_dim is None:
            kl_per_dim = torch.zeros(0, dtype=torch.float64, device=self.device)
        count_tensor = torch.tensor([float(count)], dtype=torch.float64, device=self.device)
        combined = distributed.all_reduce_sum(torch.cat([totals, count_tensor, kl_per_dim]), context)
        elements = math.prod(self.eval_source.data_shape) if self.eval_source.data_shape else 0
        count = combined[4].item()
        loss, elbo, nll, kl = (combined[:4] / count).tolist()
        metrics: Dict[str, object] = {
            f"{prefix}/loss": loss,
            f"{prefix}/elbo": elbo,
            f"{prefix}/nll": nll,
            f"{prefix}/kl": kl,
            f"{prefix}/bits_per_dim": -elbo / (math.log(2) * elements) if elements else math.nan,
            f"{prefix}/kl_per_dim": (combined[5:] / count).tolist(),
        }
        return metrics

    def _evaluate_and_log(self) -> None:
        event: Dict[str, object] = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4)}
        event.update(self.evaluate(self.model, "eval"))
        if self.ema is not None:
            event.update(self.evaluate(self.ema.module, "eval_ema"))
        event["time"] = round(self._elapsed(), 3)
        self._emit(event)

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """The trainer's counters: step, epoch, position in the epoch, skip counters, the
        metrics not yet logged, the elapsed time and the schedules (their specs)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "consecutive_skips": self.consecutive_skips,
            "total_skips": self.total_skips,
            "window": [dict(record) for record in self.window],
            "elapsed": self._elapsed() if hasattr(self, "_session_start") else self.elapsed,
            "world_size": self.context.world_size,
            "beta_schedule": self.beta_schedule.to_dict(),
            "temperature_schedule": self.temperature_schedule.to_dict() if self.temperature_schedule else None,
        }

    def save_checkpoint(self, path: Union[str, Path, None] = None) -> Optional[Path]:
        """Write a checkpoint of the whole run (atomically; on rank 0 only; every process
        must call it, as it gathers their generators' states).

        Args:
            path: the file (default ``out_dir/checkpoints/step_XXXXXXXX.pt``, keeping the
                last ``keep_last`` of those).

        Returns:
            The path written (None on other ranks).
        """
        rng_states = distributed.all_gather_objects(rng_state(), self.context)
        written = None
        if self.context.is_main:
            if path is None:
                if self.out_dir is None:
                    raise ValueError("fastvae.train.Trainer.save_checkpoint: give a path or set config.out_dir")
                path = checkpoint_path(self.out_dir, self.step)
            written = save_checkpoint(
                path,
                self.model,
                optimizer=self.optimizer,
                ema_model=self.ema.module if self.ema is not None else None,
                train_config=self.config,
                trainer_state=self.state_dict(),
                rng_states=rng_states,
            )
            if self.out_dir is not None:
                for old in list_checkpoints(self.out_dir)[:-self.config.keep_last]:
                    old.unlink(missing_ok=True)
        distributed.barrier(self.context)
        return written

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint's dict (as :func:`fastvae.train.checkpoint.read_checkpoint`
        returns it) into this trainer: weights, optimizer, weight average, counters and
        generators."""
        saved_config = state.get("model_config")
        model_config = getattr(self.model, "config", None)
        if saved_config is not None and model_config is not None and _canonical(saved_config) != _canonical(model_config):
            raise ValueError(
                f"fastvae.train.Trainer.load_state_dict: the checkpoint is of a different model: {saved_config} "
                f"(this trainer's: {model_config})"
            )
        self.model.load_state_dict(state["model"])
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema = ExponentialMovingAverage(self.model, self.config.ema_decay)
        counters = state.get("trainer") or {}
        self.step = int(counters.get("step", 0))
        self.epoch = int(counters.get("epoch", 0))
        self.position = int(counters.get("position", 0))
        self.consecutive_skips = int(counters.get("consecutive_skips", 0))
        self.total_skips = int(counters.get("total_skips", 0))
        self.window = [dict(record) for record in counters.get("window", [])]
        self.elapsed = float(counters.get("elapsed", 0.0))
        rng_states = state.get("rng") or []
        if len(rng_states) == self.context.world_size:
            set_rng_state(rng_states[self.context.rank])
        else:
            warnings.warn(
                f"fastvae.train.Trainer: the checkpoint was written by {len(rng_states)} processes, this run has "
                f"{self.context.world_size}; the generators are reseeded, so the resumed run is not bit-exact",
                stacklevel=2,
            )
            _seed_everything(derived_seed(self.config.seed, self.step), self.context.rank)

    def resume(self, path: Union[str, Path]) -> "Trainer":
        """Load the checkpoint at ``path`` into this trainer (see :meth:`load_state_dict`)."""
        self.load_state_dict(read_checkpoint(path, map_location="cpu"))
        return self

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], train_data, eval_data=None, **config_changes) -> "Trainer":
        """A trainer that continues the run saved at ``path``: the model is rebuilt from its
        config, the run's TrainConfig is reused (with ``config_changes``, e.g.
        ``steps=20000`` to train longer), and everything else restored."""
        state = read_checkpoint(path, map_location="cpu")
        model = _build_model(state.get("model_config"), Path(path))
        if state.get("train_config") is None:
            raise ValueError(f"fastvae.train.Trainer.from_checkpoint: {str(path)!r} holds no train config")
        config = TrainConfig.from_dict(state["train_config"])
        if config_changes:
            config = config.replace(**config_changes)
        trainer = cls(model, train_data, config, eval_data=eval_data)
        trainer.load_state_dict(state)
        return trainer

    # ---------------------------------------------------------------- the loop

    def request_stop(self) -> None:
        """Ask the running :meth:`fit` to stop after the step in progress: it finishes that
        step (and its logging and evaluation), writes a checkpoint at it (when ``out_dir``
        is set) and returns with :attr:`stopped_on_request` set.  Only sets a flag, so a
        signal handler may call it; under DDP one process asking stops them all at the
        same step."""
        self.stop_requested = True

    def _stop_agreed(self) -> bool:
        """Whether any process asked to stop; every process gets the same answer at the
        same step (one small all-reduce per step under DDP)."""
        if not self.context.enabled:
            return self.stop_requested
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)
        return distributed.all_reduce_sum(flag, self.context).item() > 0

    @property
    def time_limit_reached(self) -> bool:
        """Whether the run's training time (summed over its stops and resumes) has
        reached ``config.time_limit`` (never when the limit is off)."""
        limit = self.config.time_limit
        elapsed = self._elapsed() if hasattr(self, "_session_start") else self.elapsed
        return limit is not None and elapsed >= limit

    def _time_is_up(self) -> bool:
        """:attr:`time_limit_reached`, the same on every process: any process's clock
        past the limit stops them all at the same step (one small all-reduce per step
        under DDP, only when the limit is set)."""
        if self.config.time_limit is None:
            return False
        reached = self.time_limit_reached
        if not self.context.enabled:
            return reached
        flag = torch.tensor([1.0 if reached else 0.0], device=self.device)
        return distributed.all_reduce_sum(flag, self.context).item() > 0

    def _claim_out_dir(self) -> Optional[str]:
        """A fresh run's folder must not hold another run's metrics or checkpoints: clear
        them (overwrite=True) or return why the run cannot start."""
        metrics = self.out_dir / METRICS_FILE
        old = ([metrics] if metrics.exists() else []) + list_checkpoints(self.out_dir)
        if not old:
            return None
        if not self.config.overwrite:
            return (
                f"fastvae.train.Trainer: out_dir {str(self.out_dir)!r} already holds a run ({old[-1].name}); "
                f"continue it with Trainer.from_checkpoint(latest_checkpoint(out_dir), ...), choose another "
                f"out_dir, or set overwrite=True to replace it"
            )
        for path in old:
            path.unlink()
        shutil.rmtree(self.out_dir / TENSORBOARD_DIR, ignore_errors=True)
        return None

    def fit(self, stop_at: Optional[int] = None) -> Dict[str, object]:
        """Train to the end of the run (``config.steps`` or ``config.epochs``), or until the
        global step ``stop_at``, where a checkpoint is written (when ``out_dir`` is set)
        so that a later :meth:`from_checkpoint` continues exactly.

        A :meth:`request_stop` ends it earlier, between two steps, also with a checkpoint
        (:attr:`stopped_on_request` tells).  So does ``config.time_limit``: once the
        run's training time reaches it, the step just taken is treated as the last one
        (its metrics logged, the eval data evaluated, a checkpoint written), an event
        ``{"step", "stopped_by": "time_limit", "time_limit", "time"}`` is logged, and
        :attr:`stopped_by_time_limit` is set; a fit that starts past the limit (a resumed
        run that reached it) takes no step.

        Returns:
            The last logged metrics: the training ones (step, epoch, loss, elbo, nll, kl,
            grad_norm, skipped, beta, lr, ...) and, with eval data, the last evaluation's
            (``eval/elbo``, ...; ``eval_ema/...`` with ``ema_decay``).

        Raises:
            TooManySkippedUpdates: after ``max_consecutive_skips`` skipped updates in a row.
        """
        if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 0):
            raise ValueError(f"fastvae.train.Trainer.fit: stop_at must be a non-negative int, got {stop_at!r}")
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        config = self.config
        claimed = self._claim_out_dir() if self.step == 0 and self.out_dir is not None and self.context.is_main else None
        # Rank 0 decides; every process raises alike rather than wait for it.
        refusal = distributed.all_gather_objects(claimed, self.context)[0]
        if refusal is not None:
            raise FileExistsError(refusal)
        # Before this fit's clock starts: only a run that reached its limit before stops here.
        self.stopped_by_time_limit = self.step < end and self._time_is_up()
        self._session_start = time.perf_counter()
        self._logger = MetricsLogger(
            self.out_dir if self.context.is_main else None,
            tensorboard=config.tensorboard,
            resume_step=self.step if self.step > 0 else None,
        )
        progress = _progress_bar(self.total_steps, self.step, enabled=config.progress and self.context.is_main)
        self.stopped_on_request = False
        self.model.train()
        try:
            while self.step < end and not self.stopped_by_time_limit:
                record = self._train_step(self._next_batch())
                self.step += 1
                self.window.append(record)
                progress.update(1)
                if self.consecutive_skips >= config.max_consecutive_skips:
                    self._log_window(progress)
                    raise self._too_many_skips(record)
                # The time limit ends the run at this step as its last step would.
                self.stopped_by_time_limit = self.step < self.total_steps and self._time_is_up()
                at_end = self.step == self.total_steps or self.stopped_by_time_limit
                if self.step % config.log_every == 0 or at_end:
                    self._log_window(progress)
                if self.eval_source is not None and ((config.eval_every and self.step % config.eval_every == 0) or at_end):
                    self._evaluate_and_log()
                wants_checkpoint = (config.checkpoint_every and self.step % config.checkpoint_every == 0) or at_end
                # Checked after the step's logging and evaluation, so that the checkpoint
                # holds the step complete and the resumed run logs what this one did not.
                stopping = self._stop_agreed()
                if self.stopped_by_time_limit:
                    self._emit({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                                "stopped_by": "time_limit", "time_limit": config.time_limit,
                                "time": round(self._elapsed(), 3)})
                if self.out_dir is not None and (wants_checkpoint or self.step == end or stopping):
                    self.save_checkpoint()
                if stopping:
                    self.stop_requested = False
                    self.stopped_on_request = True
                    break
        finally:
            self.elapsed = self._elapsed()
            progress.close()
            self._logger.close()
            self._logger = None
            del self._session_start
        return dict(self.last_metrics)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, initial: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return _NoProgress()
    if not enabled:
        return _NoProgress()
    # disable=None: tqdm turns itself off when stderr is not a terminal.
    return tqdm(total=total, initial=initial, disable=None, desc="train", unit="step",
                dynamic_ncols=True)
