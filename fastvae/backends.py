"""Which backends exist here, which one an op uses, and how a user chooses.

Backends:

* ``torch``: :mod:`fastvae.reference`, plain PyTorch. Always present; the ground truth.
* ``triton``: the Triton kernels in :mod:`fastvae.kernels`. Runs CUDA tensors, and CPU
  tensors only under Triton's interpreter (``TRITON_INTERPRET=1`` set before fastvae's
  kernels are first imported), which is how CI checks the kernels.
* ``cuda`` and ``cpu``: the C++ extension (``fastvae._C_cuda``, ``fastvae._C``), when built.

``'auto'`` (the default) picks, for CUDA tensors, triton, else cuda, else torch; for CPU
tensors, cpu if built, else torch; float64 always runs on torch, since every kernel
computes in float32.  ``FASTVAE_BACKEND`` sets the starting choice;
:func:`use_backend` changes it, as a plain call or as a context manager.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache

import torch

BACKENDS = ("torch", "triton", "cuda", "cpu")
_CHOICES = ("auto",) + BACKENDS


def _initial_choice() -> str:
    name = os.environ.get("FASTVAE_BACKEND", "auto").strip().lower() or "auto"
    if name not in _CHOICES:
        raise ValueError(f"FASTVAE_BACKEND must be one of {_CHOICES}, got {name!r}")
    return name


# A plain module-level string: torch.compile reads it as a constant while tracing and
# guards on it, so switching backends recompiles instead of silently reusing a graph.
_choice = _initial_choice()


@lru_cache(maxsize=None)
def _triton_status() -> tuple[bool, bool]:
    """(importable, interpreted): whether the Triton kernels load, and whether they were
    decorated under TRITON_INTERPRET=1 (and so run CPU tensors)."""
    try:
        kernels = importlib.import_module("fastvae.kernels.latent")
    except Exception:  # triton missing or broken: the backend is simply absent
        return False, False
    from triton.runtime.interpreter import InterpretedFunction

    return True, isinstance(kernels.gaussian_latent_fwd_kernel, InterpretedFunction)


@lru_cache(maxsize=None)
def _extension_present(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def _backend_runs_on(name: str, device: torch.device) -> bool:
    if name == "torch":
        return True
    if name == "triton":
        importable, interpreted = _triton_status()
        if not importable:
            return False
        return (device.type == "cuda" and torch.cuda.is_available()) or (device.type == "cpu" and interpreted)
    if name == "cuda":
        return device.type == "cuda" and _extension_present("fastvae._C_cuda")
    if name == "cpu":
        return device.type == "cpu" and _extension_present("fastvae._C")
    return False


def available(device: torch.device | str | None = None) -> list[str]:
    """Names of the backends present here, in preference order.

    With ``device``, only those that run tensors on that device.

    Example::

        >>> fastvae.backends.available("cpu")
        ['torch']
    """
    names = []
    for name in BACKENDS:
        if device is None:
            devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        else:
            devices = [torch.device(device)]
        if any(_backend_runs_on(name, d) for d in devices):
            names.append(name)
    return names


def current() -> str:
    """The backend choice in force: ``'auto'`` or a backend name."""
    return _choice


class use_backend:
    """Choose the backend every fastvae op uses: ``'auto'``, ``'torch'``, ``'triton'``,
    ``'cuda'`` or ``'cpu'``.

    A plain call sets the choice from now on; used as a context manager it restores the
    previous choice on exit.  A backend asked for by name that is not present for the
    inputs' device raises a RuntimeError when an op runs.

    Example::

        >>> fastvae.use_backend("torch")            # from now on
        >>> with fastvae.use_backend("triton"):     # only inside the block
        ...     z, kl = fastvae.sample_gaussian(mu, logvar)
    """

    def __init__(self, name: str):
        global _choice
        name = str(name).lower()
        if name not in _CHOICES:
            raise ValueError(f"fastvae.use_backend: name must be one of {_CHOICES}, got {name!r}")
        self._previous = _choice
        self.name = name
        _choice = name

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        global _choice
        _choice = self._previous
        return False


def resolve(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs ``op`` on tensors of ``device`` and ``dtype``."""
    if dtype == torch.float64:
        return "torch"
    choice = _choice
    if choice == "auto":
        order = ("triton", "cuda", "torch") if device.type == "cuda" else ("cpu", "torch")
        for name in order:
            if _backend_runs_on(name, device):
                return name
        return "torch"
    if not _backend_runs_on(choice, device):
        hint = ""
        if choice == "triton" and device.type == "cpu":
            hint = " (on the CPU, Triton runs only under TRITON_INTERPRET=1 set before import)"
        raise RuntimeError(
            f"fastvae.{op}: backend {choice!r} is not available for {device.type} tensors here{hint}; "
            f"available: {available(device)}"
        )
    return choice
