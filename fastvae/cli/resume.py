"""``fastvae train --resume``: where a run folder stands and what is left to do.

A run is *finished* when its latest checkpoint is at the last step and its results.json
(of that step) and report.md are written: resuming it does nothing.  When the training
is complete but the final evaluation is not (it was interrupted), resuming runs only the
evaluation.  An unreadable latest checkpoint (truncated, overwritten) is skipped with a
warning for the one before it.

The IWAE estimates between training stretches (``--iwae-every``) are logged after the
checkpoint of their step, so a resume from a checkpoint at such a step checks
metrics.jsonl for the estimate and makes it when it is missing: the resumed run's
metrics.jsonl reads line for line as the uninterrupted run's."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

from ..train import distributed
from ..train.checkpoint import CHECKPOINT_DIR, list_checkpoints, read_checkpoint
from ..train.metrics import METRICS_FILE, metrics_lines
from .options import PROGRAM


def _reason(error: BaseException) -> str:
    """A short why of an unreadable checkpoint: the first sentence of torch's error."""
    cause = str(error.__cause__ or error).strip()
    first = cause.splitlines()[0] if cause else type(error).__name__
    return first.split(". ")[0][:160]


def load_latest_checkpoint(trainer, folder: Path, context) -> Path:
    """Load the newest readable checkpoint of ``folder`` into ``trainer``; an unreadable
    newer one is skipped with a warning naming it (on rank 0).  Returns the one loaded.

    Raises:
        FileNotFoundError: the folder has no checkpoints.
        ValueError: none of them is readable.
    """
    found = list_checkpoints(folder)
    if not found:
        raise FileNotFoundError(f"{PROGRAM} train: --resume: no checkpoint under {folder / CHECKPOINT_DIR}")
    skipped = []
    for path in reversed(found):
        try:
            state = read_checkpoint(path, map_location="cpu")
        except ValueError as error:
            skipped.append(f"{path.name} ({_reason(error)})")
            if context.is_main:
                print(f"{PROGRAM} train: warning: --resume: {path} is unreadable, truncated or corrupt "
                      f"({_reason(error)}); falling back to the checkpoint before it", file=sys.stderr, flush=True)
            continue
        trainer.load_state_dict(state)
        return path
    raise ValueError(f"{PROGRAM} train: --resume: no readable checkpoint under {folder / CHECKPOINT_DIR}: "
                     f"{'; '.join(skipped)}. Start the run again with --overwrite")


def finished_results(folder: Path, step: int, results_file: str, report_file: str) -> Optional[dict]:
    """The run's results when its final evaluation of ``step`` is written (results.json
    of that step and report.md), else None."""
    try:
        results = json.loads((folder / results_file).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("step") != step or not (folder / report_file).is_file():
        return None
    return results


def _events(folder: Path) -> Iterator[tuple]:
    """(line, event) of metrics.jsonl; a line cut short by a crash has event None."""
    return metrics_lines(folder / METRICS_FILE)


def iwae_logged(folder: Path, step: int, split: str) -> bool:
    """Whether metrics.jsonl holds the IWAE estimate of ``step``."""
    return any(event is not None and event.get("step") == step and f"{split}/iwae" in event
               for _, event in _events(folder))


def logged_value(folder: Path, step: int, key: str):
    """The last value metrics.jsonl holds for ``key`` at ``step``, or None (a run resumed
    only to evaluate logged its final metrics in the process that trained it)."""
    found = None
    for _, event in _events(folder):
        if event is not None and event.get("step") == step and key in event:
            found = event[key]
    return found


def forget_final_evaluation(folder: Path, step: int, split: str, context) -> None:
    """Drop what an interrupted final evaluation at ``step`` logged (its IWAE line), so
    that the evaluation, run again, logs it once.  Rank 0 writes."""
    if not context.is_main:
        return
    lines = list(_events(folder))
    kept = [line if line.endswith("\n") else line + "\n" for line, event in lines
            if event is not None and not (event.get("step") == step and f"{split}/iwae" in event)]
    if len(kept) == len(lines):
        return
    path = folder / METRICS_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept))
    os.replace(temporary, path)


def agreed_signal(received: Optional[int], context) -> Optional[int]:
    """The signal that stops the run, the same on every process: this one's, or under
    DDP the first process's that received one (None when none did)."""
    gathered = distributed.all_gather_objects(received, context)
    return next((signum for signum in gathered if signum is not None), None)
