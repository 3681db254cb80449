"""Launchers of the C++ backends: ``cpu`` (``fastvae._C``) and ``cuda`` (``fastvae._C_cuda``).

One module per op family, with the same functions and signatures as the Triton launchers
in ``fastvae.kernels``, so an op calls any backend the same way.  A launcher turns tensors
into raw addresses, sizes and dtype codes, the extension runs the C++ (releasing the GIL;
on CUDA on the current stream).
"""
from __future__ import annotations

import functools
import importlib
import types

import torch

EXTENSIONS = {"cpu": "fastvae._C", "cuda": "fastvae._C_cuda"}
# csrc/include/fastvae/common.h, enum DType.
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class NativeBackend:
    """One C++ extension module, called with raw addresses (and, on CUDA, the stream)."""

    def __init__(self, name: str):
        self.name = name
        self.module = importlib.import_module(EXTENSIONS[name])

    def launch(self, kernel: str, device: torch.device, *args) -> None:
        function = getattr(self.module, kernel)
        if self.name == "cuda":
            function(*args, torch.cuda.current_stream(device).cuda_stream)
        else:
            function(*args)

    def constant(self, name: str) -> int:
        return int(getattr(self.module, name))


def address(tensor) -> int:
    """The data address of a tensor, 0 for None (the C++ reads 0 as absent)."""
    return 0 if tensor is None else tensor.data_ptr()


def dtype_code(dtype: torch.dtype, op: str) -> int:
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(f"fastvae.{op}: the C++ backends take float32, bfloat16 or float16, got {dtype}") from None


@functools.lru_cache(maxsize=None)
def launchers(backend: str, family: str) -> types.SimpleNamespace:
    """``family``'s launchers bound to ``backend``'s extension: the same names and
    signatures as ``fastvae.kernels.<family>``."""
    native = NativeBackend(backend)
    family_module = importlib.import_module(f"fastvae.native.{family}")
    return types.SimpleNamespace(**{
        name: functools.partial(getattr(family_module, name), native) for name in family_module.LAUNCHERS
    })
