"""Launchers of the C++ backends: ``cpu`` (``fastvae._C``) and ``cuda`` (``fastvae._C_cuda``).

One module per op family, with the same functions and signatures as the Triton launchers
in ``fastvae.kernels``, so an op calls any backend the same way: the op allocates its
outputs (fastvae/ops) and the launcher writes into them.  A launcher turns tensors into
raw addresses, sizes and dtype codes, the extension runs the C++ (releasing the GIL; on
CUDA on the current stream).
"""
from __future__ import annotations

import functools
import importlib
import math
import types

import torch

from fastvae.layout import prior_layout

EXTENSIONS = {"cpu": "fastvae._C", "cuda": "fastvae._C_cuda"}
# csrc/include/fastvae/common.h, enum DType.
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class NativeBackend:
    """One C++ extension module, called with raw addresses (and, on CUDA, the stream)."""

    def __init__(self, name: str):
        self.name = name
        self.on_cpu = name != "cuda"
        self.module = importlib.import_module(EXTENSIONS[name])
        self._constants: dict[str, int] = {}

    def launch(self, kernel: str, device: torch.device, *args, **kwargs) -> None:
        """Call ``kernel`` with ``args`` or, for the functions whose bindings name their
        arguments, with ``kwargs`` (CUDA's then takes the stream by name too)."""
        function = getattr(self.module, kernel)
        if self.on_cpu:
            function(*args, **kwargs)
        elif kwargs:
            function(*args, **kwargs, stream=torch.cuda.current_stream(device).cuda_stream)
        else:
            function(*args, torch.cuda.current_stream(device).cuda_stream)

    def constant(self, name: str) -> int:
        value = self._constants.get(name)
        if value is None:
            value = self._constants[name] = int(getattr(self.module, name))
        return value


def address(tensor) -> int:
    """The data address of a tensor, 0 for None (the C++ reads 0 as absent)."""
    return 0 if tensor is None else tensor.data_ptr()


def dtype_code(dtype: torch.dtype, op: str) -> int:
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(f"fastvae.{op}: the C++ backends take float32, bfloat16 or float16, got {dtype}") from None


def output_dtype_code(tensor, op: str) -> int:
    """The dtype code of an output the C++ writes in a dtype chosen per call (a prior's
    gradient); float32's for an absent one, which is never written."""
    return dtype_code(tensor.dtype if tensor is not None else torch.float32, op)


def written_buffer(output, dtype: torch.dtype):
    """Where the C++ writes ``output`` when it writes in ``dtype``: ``output`` itself (None
    stays None), or, in a rare mixed-dtype call, a buffer of its shape in ``dtype`` that
    :func:`cast_into_output` copies into it afterwards (one copy)."""
    if output is None or output.dtype == dtype:
        return output
    return torch.empty(output.shape, dtype=dtype, device=output.device)


def cast_into_output(output, buffer) -> None:
    """Finish :func:`written_buffer`: cast the buffer into ``output`` if one was used."""
    if buffer is not output:
        output.copy_(buffer)


def gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype):
    """The Gaussian families (latent, IWAE): the C++ takes mu and logvar in one dtype and both priors in one dtype; cast the
    rare mixed cases (each cast is one copy)."""
    if prior_mu is None and prior_logvar is None and mu.dtype == z_dtype and logvar.dtype == z_dtype:
        return mu, logvar, None, None, torch.float32  # the common case, on every call's path
    if mu.dtype != z_dtype or logvar.dtype != z_dtype:
        mu, logvar = mu.to(z_dtype), logvar.to(z_dtype)
    present = [p for p in (prior_mu, prior_logvar) if p is not None]
    prior_dtype = present[0].dtype if present else torch.float32
    for prior in present[1:]:
        prior_dtype = torch.promote_types(prior_dtype, prior.dtype)
    prior_mu = prior_mu.to(prior_dtype) if prior_mu is not None else None
    prior_logvar = prior_logvar.to(prior_dtype) if prior_logvar is not None else None
    return mu, logvar, prior_mu, prior_logvar, prior_dtype


_NO_PRIOR_STRIDES = [0, 0, 0, 0]


def prior_layout_args(prior_mu, prior_logvar, shape):
    """The priors as the C++ takes them: each broadcast to ``shape`` through strides
    (fastvae.layout.prior_layout), the two stride layouts and the two inner sizes."""
    if prior_mu is None and prior_logvar is None:
        # What prior_layout gives for no priors (every inner dimension collapses into
        # one), without its work on every call of the common case.
        inner = math.prod(shape[1:])
        return None, None, _NO_PRIOR_STRIDES, _NO_PRIOR_STRIDES, [1, inner if inner > 1 else 1]
    (prior_mu, prior_logvar), strides, size1, size2 = prior_layout([prior_mu, prior_logvar], shape)
    return prior_mu, prior_logvar, strides[:4], strides[4:], [size1, size2]


@functools.lru_cache(maxsize=None)
def launchers(backend: str, family: str) -> types.SimpleNamespace:
    """``family``'s launchers bound to ``backend``'s extension: the same names and
    signatures as ``fastvae.kernels.<family>``."""
    native = NativeBackend(backend)
    family_module = importlib.import_module(f"fastvae.native.{family}")
    return types.SimpleNamespace(**{
        name: functools.partial(getattr(family_module, name), native) for name in family_module.LAUNCHERS
    })
