"""Training fastvae models: :class:`Trainer`, its :class:`TrainConfig`, β and temperature
schedules, atomic checkpoints with exact resume, and DDP under ``torchrun``.

Example::

    >>> from fastvae.train import Trainer, TrainConfig
    >>> config = TrainConfig(steps=10000, batch_size=128, beta_schedule="linear:2000",
    ...                      grad_clip=200.0, skip_threshold=1000.0, ema_decay=0.999,
    ...                      out_dir="runs/sprites")
    >>> Trainer(model, train_data, config, eval_data=test_data).fit()
"""
from . import distributed, schedules
from .checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import TensorData
from .ema import ExponentialMovingAverage
from .metrics import MetricsLogger, read_metrics
from .schedules import Constant, CyclicalAnnealing, ExponentialDecay, LinearWarmup, Schedule, make_schedule
from .trainer import TooManySkippedUpdates, Trainer

__all__ = [
    "Trainer",
    "TrainConfig",
    "TooManySkippedUpdates",
    "schedules",
    "distributed",
    "Schedule",
    "Constant",
    "LinearWarmup",
    "CyclicalAnnealing",
    "ExponentialDecay",
    "make_schedule",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "latest_checkpoint",
    "TensorData",
    "ExponentialMovingAverage",
    "MetricsLogger",
    "read_metrics",
]
