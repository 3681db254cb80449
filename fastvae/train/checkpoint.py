"""Checkpoints: written atomically, holding everything a run needs to resume exactly.

A checkpoint is one ``torch.save`` file (loaded with ``weights_only=True``: no pickled
code) holding a dict:

* ``format``, ``version``: what the file is;
* ``model_config``: ``model.config``, from which ``fastvae.models.build_model`` rebuilds
  the model; ``model``: its state dict; ``ema``: the weight average's (or None);
* ``optimizer``: the optimizer's state dict; ``train_config``: ``TrainConfig.to_dict()``;
* ``trainer``: the step, epoch and position in the epoch, the skip counters, the metrics
  of the steps not yet logged, the elapsed time and the schedules' specs;
* ``rng``: per process, the states of torch's CPU and CUDA generators, Python's
  ``random`` and numpy's global generator.  The data order and the dynamic binarization
  noise are pure functions of (seed, epoch, step), so they need no state.

The file is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target with ``os.replace`` (atomic on POSIX and Windows): a crash while
writing leaves the previous checkpoint intact.
"""
from __future__ import annotations

import importlib
import os
import random
import re
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_save",
    "latest_checkpoint",
    "checkpoint_path",
    "list_checkpoints",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "fastvae.train.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")

PathLike = Union[str, os.PathLike]


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    with suppress(OSError, AttributeError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_save(obj, path: PathLike) -> Path:
    """``torch.save(obj, path)`` so that ``path`` holds either its old content or the
    complete new one, never a partial file: write a temporary file in the same folder,
    flush and fsync it, then ``os.replace`` it onto ``path``.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)
    return path


def rng_state() -> dict:
    """The states of torch's CPU and CUDA generators, Python's and numpy's global ones."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(
                f"fastvae.train.set_rng_state: the checkpoint has {len(state['cuda'])} CUDA generator states, "
                f"this machine {torch.cuda.device_count()} devices; resume on the same devices for an exact resume"
            )
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )


def _as_python_state(state):
    # random.setstate wants tuples; a round trip through other serializers may give lists.
    version, internal, gauss = state
    return version, tuple(internal), gauss


def checkpoint_path(out_dir: PathLike, step: int) -> Path:
    """``out_dir/checkpoints/step_XXXXXXXX.pt``: where the trainer writes step ``step``."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: PathLike) -> List[Path]:
    """The trainer's step checkpoints under ``out_dir/checkpoints``, oldest first."""
    directory = Path(out_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in directory.iterdir() if (match := _STEP_FILE.match(path.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The checkpoint of the highest step under ``out_dir/checkpoints``, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    ema_model: Optional[nn.Module] = None,
    train_config: Optional[TrainConfig] = None,
    trainer_state: Optional[dict] = None,
    rng_states: Optional[List[dict]] = None,
) -> Path:
    """Write a checkpoint atomically (see :func:`atomic_save`).

    Args:
        path: the file to write.
        model: a fastvae model (its ``config`` is stored when it has one, so that
            :func:`load_checkpoint` can rebuild it), unwrapped from DDP.
        optimizer, ema_model, train_config: stored when given.
        trainer_state: the trainer's counters (:meth:`Trainer.state_dict` gives them).
        rng_states: the generators' states, one dict per process (default: this
            process's, :func:`rng_state`).

    Returns:
        ``path``.

    Example::

        >>> save_checkpoint("model.pt", model)
        >>> restored = load_checkpoint("model.pt").model
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastvae.train.save_checkpoint: model must be an nn.Module, got {type(model).__name__}")
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": getattr(model, "config", None),
        "model": model.state_dict(),
        "ema": ema_model.state_dict() if ema_model is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_config": train_config.to_dict() if train_config is not None else None,
        "trainer": trainer_state,
        "rng": rng_states if rng_states is not None else [rng_state()],
    }
    return atomic_save(state, path)


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        model: the model rebuilt from its config with the saved weights, in eval mode.
        ema_model: the same model with the weight average's weights, or None.
        train_config: the run's :class:`TrainConfig`, or None.
        step: the number of updates taken (0 when the checkpoint has no trainer state).
        state: the whole loaded dict (optimizer state, RNG states, counters).
        path: the file.
    """

    model: nn.Module
    ema_model: Optional[nn.Module]
    train_config: Optional[TrainConfig]
    step: int
    state: dict
    path: Path


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> dict:
    """The raw dict of a checkpoint file, checked to be one of fastvae's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fastvae.train.load_checkpoint: no checkpoint file at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"fastvae.train.load_checkpoint: {str(path)!r} is not a readable checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"fastvae.train.load_checkpoint: {str(path)!r} is not a fastvae training checkpoint")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"fastvae.train.load_checkpoint: {str(path)!r} has format version {state['version']}; this fastvae reads "
            f"up to {CHECKPOINT_VERSION}: upgrade fastvae"
        )
    return state


def _build_model(config: Optional[dict], path: Path) -> nn.Module:
    if config is None:
        raise ValueError(
            f"fastvae.train.load_checkpoint: {str(path)!r} holds a model without a config, so it cannot be rebuilt; "
            f"build the model yourself and load read_checkpoint(path)['model'] into it"
        )
    # Importing the package registers the built-in models with build_model.
    importlib.import_module("fastvae.models")
    from ..models.base import build_model

    return build_model(config)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> Checkpoint:
    """Load a checkpoint and rebuild its model with ``fastvae.models.build_model``.

    Args:
        path: a file written by :func:`save_checkpoint` (or the trainer).
        map_location: where the tensors go (default the CPU), as ``torch.load``'s.

    Returns:
        A :class:`Checkpoint`: the model (eval mode, on ``map_location``), the EMA model,
        the train config, the step and the raw state.

    Example::

        >>> checkpoint = load_checkpoint("runs/mnist/checkpoints/step_00010000.pt")
        >>> samples = checkpoint.model.sample(64)
    """
    path = Path(path)
    state = read_checkpoint(path, map_location)
    model = _build_model(state.get("model_config"), path)
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else torch.device("cpu")
    model.load_state_dict(state["model"])
    model.to(device).eval()
    ema_model = None
    if state.get("ema") is not None:
        ema_model = _build_model(state["model_config"], path)
        ema_model.load_state_dict(state["ema"])
        ema_model.to(device).eval()
    train_config = TrainConfig.from_dict(state["train_config"]) if state.get("train_config") is not None else None
    step = int(state["trainer"]["step"]) if state.get("trainer") else 0
    return Checkpoint(model, ema_model, train_config, step, state, path)
