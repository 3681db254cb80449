"""Native launchers of the discrete family (csrc/cpu/discrete.cpp, csrc/cuda/discrete.cu),
with the signatures of :mod:`fastvae.kernels.discrete`'s."""
from __future__ import annotations

import math

import torch

from fastvae.layout import categorical_prior_layout

from . import address, cast_into_output, dtype_code, written_buffer

LAUNCHERS = ("categorical_fwd", "categorical_bwd")
OP = "sample_categorical"


def _geometry(logits):
    categories = logits.shape[-1]
    rows = logits.numel() // categories if categories else 0
    return rows, categories


def _prior_args(prior_logits, logits):
    """(tensor, [stride0, stride1, category stride, size1], dtype) of the prior broadcast
    to the logits (tensor None and the logits' dtype for a uniform prior).  The C++ reads a
    prior in the logits' dtype or in float32; any other mix is cast to float32 (one copy
    of the prior, which is usually small)."""
    if prior_logits is not None and prior_logits.dtype not in (logits.dtype, torch.float32):
        prior_logits = prior_logits.to(torch.float32)
    prior, stride0, stride1, stride_c, size1 = categorical_prior_layout(prior_logits, logits.shape)
    dtype = prior.dtype if prior is not None else logits.dtype
    return prior, [stride0, stride1, stride_c, size1], dtype


def categorical_fwd(native, logits, prior_logits, seed_offset, tau: float, hard: bool, z, kl):
    """As :func:`fastvae.kernels.discrete.categorical_fwd`: writes z and the KL per
    variable."""
    logits = logits.contiguous()
    rows, categories = _geometry(logits)
    if rows == 0:
        return
    prior, prior_layout, prior_dtype = _prior_args(prior_logits, logits)
    native.launch(
        "categorical_fwd", logits.device,
        address(logits), address(prior), address(seed_offset), address(z), address(kl),
        rows, categories, prior_layout, float(tau), -math.log(categories),
        dtype_code(logits.dtype, OP), dtype_code(prior_dtype, OP), bool(hard),
    )


def categorical_bwd(native, grad_z, grad_kl, logits, prior_logits, seed_offset, tau: float, grad_logits, grad_prior):
    """As :func:`fastvae.kernels.discrete.categorical_bwd`: writes grad_logits and, unless
    None, grad_prior."""
    logits = logits.contiguous()
    rows, categories = _geometry(logits)
    if rows == 0:
        return
    # The C++ reads grad_z in the logits' dtype and grad_kl in float32 (what autograd
    # gives for z and the KL; a cast only for an unusual caller).
    if grad_z is not None:
        grad_z = grad_z.to(logits.dtype).contiguous()
    if grad_kl is not None:
        grad_kl = grad_kl.to(torch.float32).contiguous()
    prior, prior_layout, prior_dtype = _prior_args(prior_logits, logits)
    # The C++ writes the prior's gradient in float32 or in the dtype it reads the prior in;
    # a full-size prior cast to float32 above gets its gradient cast back.
    grad_prior_out = grad_prior
    if grad_prior is not None and grad_prior.dtype != prior_dtype:
        grad_prior_out = written_buffer(grad_prior, torch.float32)
    native.launch(
        "categorical_bwd", logits.device,
        address(logits), address(prior), address(seed_offset) if grad_z is not None else 0,
        address(grad_z), address(grad_kl), address(grad_logits), address(grad_prior_out),
        rows, categories, prior_layout, float(tau), -math.log(categories),
        dtype_code(logits.dtype, OP), dtype_code(prior_dtype, OP),
        dtype_code(grad_prior_out.dtype if grad_prior_out is not None else torch.float32, OP),
    )
    if grad_prior is not None:
        cast_into_output(grad_prior, grad_prior_out)
