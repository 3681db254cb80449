"""Schedules of the KL weight β and of the Gumbel-softmax temperature.

Every schedule is a pure function of the global step (the index of the update being
taken, from 0), so a resumed run needs nothing but the step to continue exactly, and a
schedule is fully described by its :meth:`Schedule.to_dict` (stored in checkpoints).

* :class:`Constant`: β fixed (the β-VAE of Higgins et al. 2017; 1 is the ELBO).
* :class:`LinearWarmup`: KL warm-up (Bowman et al. 2016; Sønderby et al. 2016), β rising
  linearly from ``start`` to ``value`` over ``warmup_steps``, then flat.
* :class:`CyclicalAnnealing`: Fu et al. 2019, ``cycles`` cycles over the run, each rising
  linearly for a fraction ``ratio`` of the cycle and flat at ``value`` for the rest.
* :class:`ExponentialDecay`: a temperature ``max(floor, start·exp(−rate·step))`` for
  discrete latents (Jang et al. 2017).

:func:`make_schedule` builds one from a number, a short string (for command lines), a
dict (as ``to_dict`` writes it) or a schedule.
"""
from __future__ import annotations

import math
from typing import Optional, Union

__all__ = [
    "Schedule",
    "Constant",
    "LinearWarmup",
    "CyclicalAnnealing",
    "ExponentialDecay",
    "make_schedule",
    "schedule_dict",
    "ScheduleSpec",
]


def _check_number(owner: str, name: str, value, minimum: Optional[float] = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"fastvae.train.{owner}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"fastvae.train.{owner}: {name} must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"fastvae.train.{owner}: {name} must be at least {minimum}, got {value!r}")
    return float(value)


def _check_count(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"fastvae.train.{owner}: {name} must be a positive int, got {value!r}")
    return value


def _check_step(owner: str, step) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"fastvae.train.{owner}: step must be a non-negative int, got {step!r}")
    return step


class Schedule:
    """A value as a function of the global step: ``schedule(step) -> float``."""

    kind: str = ""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """``{"kind": ..., **arguments}``: :func:`make_schedule` of it rebuilds the schedule."""
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.to_dict().items() if key != "kind")
        return f"{type(self).__name__}({arguments})"


class Constant(Schedule):
    """The same value at every step.

    Example::

        >>> Constant(0.5)(1000)
        0.5
    """

    kind = "constant"

    def __init__(self, value: float = 1.0):
        self.value = _check_number("Constant", "value", value, minimum=0.0)

    def __call__(self, step: int) -> float:
        _check_step("Constant", step)
        return self.value

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}


class LinearWarmup(Schedule):
    """KL warm-up: ``start + (value − start)·min(1, step / warmup_steps)``.

    Args:
        warmup_steps: steps to go from ``start`` to ``value`` (positive int).
        value: the value after the warm-up (β; default 1, the ELBO).
        start: the value at step 0 (default 0: the first updates ignore the KL).

    Example::

        >>> warmup = LinearWarmup(100)
        >>> warmup(0), warmup(25), warmup(100), warmup(5000)
        (0.0, 0.25, 1.0, 1.0)
    """

    kind = "linear"

    def __init__(self, warmup_steps: int, value: float = 1.0, start: float = 0.0):
        self.warmup_steps = _check_count("LinearWarmup", "warmup_steps", warmup_steps)
        self.value = _check_number("LinearWarmup", "value", value, minimum=0.0)
        self.start = _check_number("LinearWarmup", "start", start, minimum=0.0)

    def __call__(self, step: int) -> float:
        step = _check_step("LinearWarmup", step)
        fraction = min(1.0, step / self.warmup_steps)
        return self.start + (self.value - self.start) * fraction

    def to_dict(self) -> dict:
        return {"kind": self.kind, "warmup_steps": self.warmup_steps, "value": self.value, "start": self.start}


class CyclicalAnnealing(Schedule):
    """Cyclical KL annealing (Fu et al. 2019): ``cycles`` cycles over ``total_steps``.

    Within each cycle of length ``total_steps / cycles`` the value rises linearly from
    ``start`` to ``value`` over the first ``ratio`` of the cycle and stays at ``value``
    for the rest, as in the paper's ``frange_cycle_linear``.  Past ``total_steps`` the
    cycles go on.

    Args:
        total_steps: the length of the run in steps (the trainer fills it in when a
            spec leaves it out).
        cycles: the number of cycles M (default 4, the paper's).
        ratio: the rising fraction R of each cycle, in (0, 1] (default 0.5, the paper's).
        value: the flat value (default 1).
        start: the value at the start of each cycle (default 0).

    Example::

        >>> schedule = CyclicalAnnealing(total_steps=400, cycles=4, ratio=0.5)
        >>> [schedule(step) for step in (0, 25, 50, 99, 100, 125)]
        [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    """

    kind = "cyclical"

    def __init__(self, total_steps: int, cycles: int = 4, ratio: float = 0.5, value: float = 1.0, start: float = 0.0):
        self.total_steps = _check_count("CyclicalAnnealing", "total_steps", total_steps)
        self.cycles = _check_count("CyclicalAnnealing", "cycles", cycles)
        self.ratio = _check_number("CyclicalAnnealing", "ratio", ratio, positive=True)
        if self.ratio > 1:
            raise ValueError(f"fastvae.train.CyclicalAnnealing: ratio must be in (0, 1], got {ratio!r}")
        self.value = _check_number("CyclicalAnnealing", "value", value, minimum=0.0)
        self.start = _check_number("CyclicalAnnealing", "start", start, minimum=0.0)

    def __call__(self, step: int) -> float:
        step = _check_step("CyclicalAnnealing", step)
        period = self.total_steps / self.cycles
        phase = (step % period) / period
        fraction = min(1.0, phase / self.ratio)
        return self.start + (self.value - self.start) * fraction

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "total_steps": self.total_steps,
            "cycles": self.cycles,
            "ratio": self.ratio,
            "value": self.value,
            "start": self.start,
        }


class ExponentialDecay(Schedule):
    """``max(floor, start·exp(−rate·step))``: the annealed Gumbel-softmax temperature.

    Args:
        start: the value at step 0 (default 1).
        rate: the decay per step (default 1e-4; 0 keeps ``start``).
        floor: the value never goes below (default 0.5, Jang et al.'s).

    Example::

        >>> tau = ExponentialDecay(start=1.0, rate=1e-3, floor=0.5)
        >>> round(tau(100), 4), tau(10**6)
        (0.9048, 0.5)
    """

    kind = "exponential"

    def __init__(self, start: float = 1.0, rate: float = 1e-4, floor: float = 0.5):
        self.start = _check_number("ExponentialDecay", "start", start, positive=True)
        self.rate = _check_number("ExponentialDecay", "rate", rate, minimum=0.0)
        self.floor = _check_number("ExponentialDecay", "floor", floor, positive=True)
        if self.floor > self.start:
            raise ValueError(f"fastvae.train.ExponentialDecay: floor ({floor!r}) must not exceed start ({start!r})")

    def __call__(self, step: int) -> float:
        step = _check_step("ExponentialDecay", step)
        return max(self.floor, self.start * math.exp(-self.rate * step))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "start": self.start, "rate": self.rate, "floor": self.floor}


_KINDS = {cls.kind: cls for cls in (Constant, LinearWarmup, CyclicalAnnealing, ExponentialDecay)}
# The positional order of a string spec's numbers, per kind.
_STRING_ARGUMENTS = {
    "constant": ("value",),
    "linear": ("warmup_steps", "value", "start"),
    "cyclical": ("cycles", "ratio", "value", "start"),
    "exponential": ("start", "rate", "floor"),
}
_INTEGER_ARGUMENTS = {"warmup_steps", "cycles", "total_steps"}

ScheduleSpec = Union[float, int, str, dict, Schedule]


def _parse_string(spec: str) -> dict:
    parts = [part.strip() for part in spec.split(":")]
    kind, numbers = parts[0].lower(), parts[1:]
    try:
        return {"kind": "constant", "value": float(spec)}
    except ValueError:
        pass
    if kind not in _STRING_ARGUMENTS:
        raise ValueError(
            f"fastvae.train.make_schedule: unknown schedule {spec!r}; expected a number or "
            f"'constant:V', 'linear:STEPS[:V[:START]]', 'cyclical:CYCLES[:RATIO[:V[:START]]]', "
            f"'exponential:START[:RATE[:FLOOR]]'"
        )
    names = _STRING_ARGUMENTS[kind]
    if len(numbers) > len(names):
        raise ValueError(f"fastvae.train.make_schedule: too many numbers in {spec!r}; {kind} takes {', '.join(names)}")
    result = {"kind": kind}
    for name, text in zip(names, numbers):
        try:
            result[name] = int(text) if name in _INTEGER_ARGUMENTS else float(text)
        except ValueError:
            raise ValueError(f"fastvae.train.make_schedule: {name} in {spec!r} is not a number: {text!r}") from None
    return result


def schedule_dict(spec: ScheduleSpec) -> dict:
    """The dict form of ``spec`` (see :func:`make_schedule`), checked but with
    ``total_steps`` left out where the spec leaves it out."""
    if isinstance(spec, Schedule):
        return spec.to_dict()
    if isinstance(spec, bool):
        raise TypeError(f"fastvae.train.make_schedule: spec must be a number, str, dict or Schedule, got {spec!r}")
    if isinstance(spec, (int, float)):
        return Constant(spec).to_dict()
    if isinstance(spec, str):
        spec = _parse_string(spec)
    if not isinstance(spec, dict):
        raise TypeError(
            f"fastvae.train.make_schedule: spec must be a number, str, dict or Schedule, got {type(spec).__name__}"
        )
    spec = dict(spec)
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"fastvae.train.make_schedule: unknown kind {kind!r}; known: {sorted(_KINDS)}")
    # Build once (with a stand-in run length where one is missing) so bad values fail
    # here, and return the full dict, defaults included.
    trial = dict(spec)
    missing_length = kind == "cyclical" and trial.get("total_steps") is None
    if missing_length:
        trial["total_steps"] = 1
    try:
        built = _KINDS[kind](**{key: value for key, value in trial.items() if key != "kind"})
    except TypeError as error:
        if "unexpected keyword" in str(error) or "missing" in str(error):
            raise ValueError(f"fastvae.train.make_schedule: bad arguments for {kind!r}: {error}") from None
        raise
    result = built.to_dict()
    if missing_length:
        del result["total_steps"]
    return result


def make_schedule(spec: ScheduleSpec, total_steps: Optional[int] = None) -> Schedule:
    """Build a schedule from a spec.

    Args:
        spec: a number (a constant), a :class:`Schedule`, a dict ``{"kind": ..., **args}``
            as :meth:`Schedule.to_dict` writes it, or a string: ``"0.5"`` or
            ``"constant:0.5"``; ``"linear:STEPS[:VALUE[:START]]"``;
            ``"cyclical:CYCLES[:RATIO[:VALUE[:START]]]"``;
            ``"exponential:START[:RATE[:FLOOR]]"``.
        total_steps: the run's length, filled into a cyclical schedule whose spec does
            not give it.

    Returns:
        The :class:`Schedule`.

    Example::

        >>> make_schedule("cyclical:4:0.5", total_steps=400)(25)
        0.5
        >>> make_schedule({"kind": "linear", "warmup_steps": 10})(5)
        0.5
    """
    spec = schedule_dict(spec)
    kind = spec.pop("kind")
    if kind == "cyclical" and "total_steps" not in spec:
        if total_steps is None:
            raise ValueError(
                "fastvae.train.make_schedule: a cyclical schedule needs total_steps (the run's length)"
            )
        spec["total_steps"] = total_steps
    return _KINDS[kind](**spec)
