"""Ctrl-C (SIGINT) and SIGTERM during ``fastvae train``: stop between two steps with a
checkpoint, say how to resume, exit 130 or 143.

While the trainer is inside its training loop a signal only sets a flag
(:meth:`fastvae.train.Trainer.request_stop`); the loop finishes the step in progress,
its logging and evaluation, writes a normal, atomic checkpoint at that step and returns.
Further signals meanwhile change nothing, so pressing Ctrl-C again while the checkpoint
is written cannot lose it.  Outside the loop (loading data, the IWAE estimates between
training stretches, the final evaluation) the latest checkpoint already holds the
current step, so a signal ends the command at once (:class:`Interrupted`).

The exit status is 128 + the signal's number, as a shell reports a process the signal
ended: 130 for SIGINT, 143 for SIGTERM, so a scheduler that sent SIGTERM sees its own
signal.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Optional

from .options import PROGRAM

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM that ended the command (a KeyboardInterrupt, so that no
    ``except Exception`` swallows it).  ``agreed``: every process stopped on it at the
    same step (the training loop's stop), rather than this one alone (a signal outside
    the loop)."""

    def __init__(self, signum: int, agreed: bool = False):
        super().__init__(signum)
        self.signum = int(signum)
        self.agreed = agreed

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


class SignalHandling:
    """Installs handlers of SIGINT and SIGTERM for the duration of a ``with`` block
    (restoring the previous ones after), in the main thread only.

    ``received`` is the first signal received while deferring, or None.  The training
    code keeps ``resuming``, ``folder``, ``checkpoint_step`` (the step of the checkpoint
    that holds the run's current state, None before there is one) and ``total_steps`` up
    to date, from which :meth:`message` says how to continue."""

    def __init__(self):
        self.received: Optional[int] = None
        self.resuming = False
        self.folder = None
        self.checkpoint_step: Optional[int] = None
        self.total_steps: Optional[int] = None
        self._trainer = None
        self._previous: dict = {}

    def __enter__(self) -> "SignalHandling":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def deferring(self, trainer):
        """While the block runs (``trainer.fit``), a signal asks ``trainer`` to stop after
        its current step instead of ending the process."""
        self._trainer = trainer
        try:
            yield
        finally:
            self._trainer = None

    def _handle(self, signum: int, frame) -> None:
        trainer = self._trainer
        if trainer is None:
            raise Interrupted(signum)
        if self.received is None:
            self.received = signum
            trainer.request_stop()
            return
        # os.write: a print here could re-enter a print the main thread is in.
        os.write(2, f"{PROGRAM} train: already stopping after this step, with a checkpoint (a SIGKILL quits "
                    f"without one)\n".encode())

    def message(self, signum: int) -> str:
        """The one line that says where the run stopped and how to continue it."""
        name = signal.Signals(signum).name
        resume = f"`{PROGRAM} train --out {self.folder} --resume`"
        if self.resuming and self.checkpoint_step is None:
            return f"{PROGRAM} train: stopped by {name} before training started; the run is as it was: {resume}"
        if self.folder is None or self.checkpoint_step is None:
            return f"{PROGRAM} train: stopped by {name} before training started; no checkpoint was written"
        if self.total_steps is not None and self.checkpoint_step >= self.total_steps:
            return (f"{PROGRAM} train: stopped by {name} before the final evaluation finished; the training is "
                    f"complete (checkpoint at step {self.checkpoint_step}): {resume} evaluates it")
        of_total = f" of {self.total_steps}" if self.total_steps is not None else ""
        return (f"{PROGRAM} train: stopped by {name} at step {self.checkpoint_step}{of_total} with a checkpoint; "
                f"continue with {resume}")
