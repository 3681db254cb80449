"""The trainer's settings: one dataclass, JSON round trip included."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .schedules import ScheduleSpec, schedule_dict

__all__ = ["TrainConfig"]

OPTIMIZERS = ("adam", "adamw")


def _fail(name: str, requirement: str, value: Any):
    raise ValueError(f"fastvae.train.TrainConfig: {name} must be {requirement}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """How :class:`fastvae.train.Trainer` trains a model.

    Length (give exactly one):
        steps: the number of updates (batches), skipped ones included.
        epochs: the number of passes over the training data (``len(data) //
            batch_size`` batches each; the last partial batch of an epoch is dropped).

    Optimization:
        batch_size: the global batch: under DDP it is split evenly over the processes,
            so a run's updates do not depend on the number of processes.
        lr: the learning rate; ``lr_warmup_steps`` raises it linearly from lr/steps to
            lr over that many steps (0: off).
        optimizer: ``"adam"`` or ``"adamw"``; ``adam_betas``, ``weight_decay`` (decoupled
            for AdamW, L2 for Adam).
        grad_clip: clip the gradient's global norm to this (None: off).
        skip_threshold: skip an update whose gradient norm (before clipping) is above
            this, as VDVAE does (None: off).  An update whose gradient norm is NaN or
            inf is always skipped.
        max_consecutive_skips: after this many skipped updates in a row the run stops
            with :class:`fastvae.train.TooManySkippedUpdates`, so it can never skip
            forever.
        time_limit: seconds of training wall time (the time inside :meth:`Trainer.fit`,
            summed over a run's stops and resumes) after which the run stops taking
            updates and ends as at its last step: the final evaluation and checkpoint
            (None: off).  It is checked after each step, so the step in progress and
            the final evaluation run past it.

    Objective:
        beta_schedule: the KL weight β per step: a number, or a schedule spec of
            :func:`fastvae.train.schedules.make_schedule` (``"linear:10000"`` is a KL
            warm-up over 10000 steps, ``"cyclical:4:0.5"`` Fu et al.'s annealing);
            stored as the spec's dict.
        temperature_schedule: a schedule of the Gumbel-softmax temperature, set as the
            model's ``temperature`` attribute before each step (None: leave it alone).
        free_bits: nats per latent dimension, passed to the model (0: off).

    Numerics:
        ema_decay: keep an exponential moving average of the weights with this decay
            (e.g. 0.999), evaluated and saved alongside the model (None: off).
        autocast: run the forward pass under ``torch.autocast`` in bfloat16 on the
            model's device type.
        compile: ``torch.compile`` the model's forward (``nn.Module.compile``, so the
            state dict keeps its keys); ``compile_backend`` picks the compiler.
        seed: seeds torch, Python's and numpy's generators, the data order and the
            data's dynamic binarization; the same seed gives the same run bit for bit.
        device: where to train (None: the model's device; under DDP on CUDA,
            ``cuda:LOCAL_RANK``).
        find_unused_parameters: passed to DistributedDataParallel, for a model whose
            forward leaves some parameters unused (slower; only matters under DDP).

    Output:
        out_dir: the run folder for metrics.jsonl, TensorBoard events and
            ``checkpoints/`` (None: write nothing).
        log_every: log training metrics (averaged over the steps since the last log)
            every this many steps.
        eval_every: evaluate on the eval data every this many steps (0: only at the end).
        eval_batch_size: the eval batch (None: batch_size).
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        keep_last: how many step checkpoints to keep (older ones are deleted).
        overwrite: a fresh run (step 0) in an out_dir that holds another run's
            metrics.jsonl or checkpoints deletes them (True) or stops with
            FileExistsError (False), so a run is never mixed into another's folder.
        progress: show a tqdm progress bar (only on a terminal).
        tensorboard: also write TensorBoard events when tensorboard is installed.

    Example::

        >>> config = TrainConfig(steps=5000, batch_size=128, lr=1e-3,
        ...                      beta_schedule="linear:1000", grad_clip=200.0,
        ...                      skip_threshold=400.0, out_dir="runs/mnist")
        >>> TrainConfig.from_dict(config.to_dict()) == config
        True
    """

    steps: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: int = 128
    lr: float = 1e-3
    lr_warmup_steps: int = 0
    optimizer: str = "adam"
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None
    skip_threshold: Optional[float] = None
    max_consecutive_skips: int = 20
    time_limit: Optional[float] = None
    beta_schedule: ScheduleSpec = 1.0
    temperature_schedule: Optional[ScheduleSpec] = None
    free_bits: float = 0.0
    ema_decay: Optional[float] = None
    autocast: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    seed: int = 0
    device: Optional[str] = None
    find_unused_parameters: bool = False
    out_dir: Optional[str] = None
    log_every: int = 100
    eval_every: int = 0
    eval_batch_size: Optional[int] = None
    checkpoint_every: int = 0
    keep_last: int = 3
    overwrite: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                f"fastvae.train.TrainConfig: give exactly one of steps and epochs, got steps={self.steps!r}, "
                f"epochs={self.epochs!r}"
            )
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                _fail(name, "a positive int", value)
        for name in ("batch_size", "max_consecutive_skips", "log_every", "keep_last"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                _fail(name, "a positive int", value)
        for name in ("lr_warmup_steps", "eval_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                _fail(name, "a non-negative int", value)
        if self.eval_batch_size is not None and (not _is_int(self.eval_batch_size) or self.eval_batch_size < 1):
            _fail("eval_batch_size", "None or a positive int", self.eval_batch_size)
        if not _is_number(self.lr) or self.lr <= 0:
            _fail("lr", "a positive number", self.lr)
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in OPTIMIZERS:
            _fail("optimizer", f"one of {OPTIMIZERS}", self.optimizer)
        self.optimizer = self.optimizer.lower()
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            _fail("adam_betas", "two numbers in [0, 1)", self.adam_betas)
        self.adam_betas = tuple(float(b) for b in betas)
        for name in ("weight_decay", "free_bits"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                _fail(name, "a non-negative number", value)
        for name in ("grad_clip", "skip_threshold"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                _fail(name, "None or a positive number", value)
        if self.time_limit is not None:
            if not _is_number(self.time_limit) or self.time_limit <= 0:
                _fail("time_limit", "None or a positive number of seconds", self.time_limit)
            self.time_limit = float(self.time_limit)
        if self.ema_decay is not None and (not _is_number(self.ema_decay) or not 0 <= self.ema_decay < 1):
            _fail("ema_decay", "None or a number in [0, 1)", self.ema_decay)
        for name in ("autocast", "compile", "find_unused_parameters", "overwrite", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, "a bool", getattr(self, name))
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            _fail("compile_backend", "a torch.compile backend name", self.compile_backend)
        if self.device is not None and not isinstance(self.device, str):
            self.device = str(self.device)
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)
        self.beta_schedule = schedule_dict(self.beta_schedule)
        if self.temperature_schedule is not None:
            self.temperature_schedule = schedule_dict(self.temperature_schedule)

    def to_dict(self) -> dict:
        """A JSON-serializable dict of every field (schedules as their spec dicts)."""
        result = dataclasses.asdict(self)
        result["adam_betas"] = list(self.adam_betas)
        return result

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config ``values`` describes (as :meth:`to_dict` writes it, or a subset:
        missing fields take their defaults); an unknown key is a ValueError."""
        if not isinstance(values, dict):
            raise TypeError(f"fastvae.train.TrainConfig.from_dict: values must be a dict, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"fastvae.train.TrainConfig.from_dict: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` applied (and checked)."""
        values = self.to_dict()
        values.update(changes)
        if "steps" in changes and "epochs" not in changes and changes["steps"] is not None:
            values["epochs"] = None
        if "epochs" in changes and "steps" not in changes and changes["epochs"] is not None:
            values["steps"] = None
        return TrainConfig.from_dict(values)
