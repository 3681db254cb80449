"""Where training metrics go: ``metrics.jsonl`` always, TensorBoard when it is installed."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["MetricsLogger", "metrics_lines", "read_metrics", "METRICS_FILE", "TENSORBOARD_DIR"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _tensorboard_writer(directory: Path, purge_step: Optional[int]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(directory), purge_step=purge_step)


def metrics_lines(path) -> Iterator[tuple]:
    """(line, event) for each non-blank line of a ``metrics.jsonl`` file (none if there is
    no file); a line that is not a JSON object (one cut short by a crash) has event None."""
    path = Path(path)
    if not path.exists():
        return
    with open(path) as file:
        for line in file:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            yield line, event if isinstance(event, dict) else None


def read_metrics(path) -> list:
    """The events of a ``metrics.jsonl`` file, as dicts, in order."""
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


class MetricsLogger:
    """Appends one JSON object per event to ``out_dir/metrics.jsonl`` and mirrors the
    numbers to TensorBoard (``out_dir/tensorboard``).

    Args:
        out_dir: the run folder; None makes every call a no-op.
        tensorboard: write TensorBoard events too, if tensorboard is installed.
        resume_step: when resuming from a checkpoint of this step, drop the events the
            interrupted run logged after it (from the JSONL file, and in TensorBoard with
            ``purge_step``), so the file reads as one uninterrupted run.

    An event is a flat dict with a ``step``; its other numbers become TensorBoard scalars
    named as in the event (``eval/elbo``) or under ``train/`` (``loss`` → ``train/loss``).
    Lists (e.g. KL per dimension) go to the JSONL file only.
    """

    def __init__(self, out_dir, tensorboard: bool = True, resume_step: Optional[int] = None):
        self.path: Optional[Path] = None
        self.writer = None
        if out_dir is None:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / METRICS_FILE
        if resume_step is not None:
            self._truncate_after(resume_step)
        if tensorboard:
            purge_step = resume_step + 1 if resume_step is not None else None
            self.writer = _tensorboard_writer(out_dir / TENSORBOARD_DIR, purge_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        # A line cut short by the crash (event None) is dropped.
        kept = [line if line.endswith("\n") else line + "\n" for line, event in metrics_lines(self.path)
                if event is not None and event.get("step", 0) <= step]
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w") as file:
            file.writelines(kept)
        os.replace(temporary, self.path)

    def log(self, event: dict) -> None:
        """Write one event (a dict with an int ``step``)."""
        if self.path is None:
            return
        with open(self.path, "a") as file:
            file.write(json.dumps(event) + "\n")
        if self.writer is not None:
            step = event["step"]
            for name, value in event.items():
                if name in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if not math.isfinite(value):
                    continue
                tag = name if "/" in name else f"train/{name}"
                self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
