"""fastvae: fused, kernel-backed ops for training and evaluating variational autoencoders.

The three terms of the ELBO, reparameterized sampling, the KL of the latent and the
reconstruction log-likelihood, each run as one fused pass forward and one backward
(Triton, CUDA C++), behind autograd and ``torch.library`` so they work in any model and
under ``torch.compile``.  ``fastvae.reference`` holds the same math in plain PyTorch.

The toolkit on top is imported on first use, so ``import fastvae`` stays light:
``fastvae.nn`` (layers), ``fastvae.models``, ``fastvae.train``, ``fastvae.eval``,
``fastvae.data`` and ``fastvae.cli`` (the ``fastvae`` command).
"""
import importlib as _importlib

from . import backends, random, reference
from .backends import use_backend
from .ops import *  # noqa: F401,F403
from .ops import __all__ as _ops_all
from .validation import set_validate_args, validate_args_enabled

__version__ = "0.1.0"

__all__ = ["backends", "reference", "random", "use_backend", "set_validate_args", "validate_args_enabled"] + list(_ops_all)

_SUBPACKAGES = ("nn", "models", "train", "eval", "data", "cli")


def __getattr__(name: str):
    # The toolkit's subpackages load on first access (matplotlib, tqdm and the models
    # are not needed to call an op).
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))
