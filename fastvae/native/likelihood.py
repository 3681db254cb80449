"""Native launchers of the reconstruction likelihoods (csrc/cpu/likelihood.cpp,
csrc/cuda/likelihood.cu), with the signatures of :mod:`fastvae.kernels.likelihood`'s: they
write into the outputs the op allocates.

The C++ reads the parameters (logits, mean) in their dtype, and x and the Gaussian logvar
each in the parameters' dtype or float32 (a Bernoulli x also as 0/1 bytes); any other mix
(say float16 x with bfloat16 logits) is cast to float32 here, one copy, and its gradient
cast back.  A broadcast logvar is read through its strides, never expanded.
"""
from __future__ import annotations

import torch

from fastvae.layout import prior_layout
from fastvae.row_sums import sum_partials_into

from . import address, cast_into_output, dtype_code, written_buffer

LAUNCHERS = ("bernoulli_nll_fwd", "bernoulli_nll_bwd", "gaussian_nll_fwd", "gaussian_nll_bwd")
# csrc/include/fastvae/likelihood_args.h, kTargetUInt8: x as 0/1 bytes.
UINT8_CODE = 3


def _geometry(tensor):
    """(batch, features) of the [B, N] view of ``tensor``."""
    batch = tensor.shape[0]
    features = tensor.numel() // batch if batch else int(torch.Size(tensor.shape[1:]).numel())
    return batch, features


def _row_partials(native, features: int) -> int:
    width = native.constant("LIKELIHOOD_ROW_PARTIAL_WIDTH")
    return max(-(-features // width), 1) if width else 1


def _companion(tensor, params_dtype, op: str, allow_bytes: bool = False):
    """(tensor as the C++ reads it, its dtype code): the parameters' dtype, float32, or
    (a Bernoulli x) uint8 pass as they are; any other float dtype is cast to float32."""
    if allow_bytes and tensor.dtype == torch.uint8:
        return tensor, UINT8_CODE
    if tensor.dtype not in (params_dtype, torch.float32):
        tensor = tensor.to(torch.float32)
    return tensor, dtype_code(tensor.dtype, op)


def _nll_partials(nll, per_element: bool, row_partials: int):
    """Where the C++ writes the forward: the nll output itself per element, or per sample
    when a row is one chunk (its one partial is its sum), else partial sums per (row,
    column chunk)."""
    if per_element or row_partials == 1:
        return nll
    return torch.empty((nll.shape[0], row_partials), dtype=torch.float32, device=nll.device)


def _finish_rows(nll, partials):
    if partials is not nll:
        sum_partials_into(nll, partials)


def _grad_nll(grad_nll):
    # The nll is float32, so its gradient is too; any other dtype is cast once.
    grad_nll = grad_nll if grad_nll.dtype == torch.float32 else grad_nll.to(torch.float32)
    return grad_nll.contiguous()


def bernoulli_nll_fwd(native, logits, x, continuous: bool, per_element: bool, nll):
    """As :func:`fastvae.kernels.likelihood.bernoulli_nll_fwd`: writes the nll, float32,
    per element (logits' shape) if ``per_element``, else summed per sample, [B]."""
    op = "continuous_bernoulli_nll" if continuous else "bernoulli_nll"
    batch, features = _geometry(logits)
    if batch == 0 or features == 0:
        if not per_element:
            nll.zero_()
        return
    x, x_code = _companion(x, logits.dtype, op, allow_bytes=True)
    row_partials = _row_partials(native, features)
    partials = _nll_partials(nll, per_element, row_partials)
    native.launch(
        "bernoulli_nll_fwd", logits.device,
        address(logits), address(x), address(partials), batch, features, row_partials,
        dtype_code(logits.dtype, op), x_code, bool(continuous), bool(per_element),
    )
    _finish_rows(nll, partials)


def bernoulli_nll_bwd(native, grad_nll, logits, x, continuous: bool, grad_logits, grad_x):
    """As :func:`fastvae.kernels.likelihood.bernoulli_nll_bwd`: writes grad_logits and
    grad_x, each in its input's dtype, None when not asked for."""
    op = "continuous_bernoulli_nll" if continuous else "bernoulli_nll"
    batch, features = _geometry(logits)
    if batch == 0 or features == 0 or (grad_logits is None and grad_x is None):
        return
    x_read, x_code = _companion(x, logits.dtype, op, allow_bytes=True)
    grad_x_written = written_buffer(grad_x, x_read.dtype)  # the C++ writes it in the dtype it reads x in
    grad_nll = _grad_nll(grad_nll)
    native.launch(
        "bernoulli_nll_bwd", logits.device,
        address(logits), address(x_read), address(grad_nll), address(grad_logits), address(grad_x_written),
        batch, features, dtype_code(logits.dtype, op), x_code, bool(continuous), grad_nll.shape == logits.shape,
    )
    if grad_x is not None:
        cast_into_output(grad_x, grad_x_written)


def _logvar_args(logvar, mean, backward: bool):
    """(tensor, layout [4], sizes [2], dtype code) of the logvar broadcast to mean's shape
    (tensor None and float32's code for a number).  A full-size logvar is read in its own
    dtype (mean's or float32); in the backward a broadcast one is read in float32 (a copy of
    the small tensor, exact), since its per-element gradient is float32 for the caller to
    sum to its shape."""
    if logvar is not None:
        full_size = logvar.shape == mean.shape
        if logvar.dtype not in (mean.dtype, torch.float32) or (backward and not full_size):
            logvar = logvar.to(torch.float32)
    (logvar,), strides, size1, size2 = prior_layout([logvar], mean.shape)
    code = dtype_code(logvar.dtype, "gaussian_nll") if logvar is not None else dtype_code(torch.float32, "gaussian_nll")
    return logvar, strides, [size1, size2], code


def gaussian_nll_fwd(native, mean, x, logvar, logvar_value: float, per_element: bool, nll):
    """As :func:`fastvae.kernels.likelihood.gaussian_nll_fwd`: writes the nll, float32, per
    element if ``per_element``, else summed per sample, [B]."""
    op = "gaussian_nll"
    batch, features = _geometry(mean)
    if batch == 0 or features == 0:
        if not per_element:
            nll.zero_()
        return
    x, x_code = _companion(x, mean.dtype, op)
    logvar_arg, layout, sizes, logvar_code = _logvar_args(logvar, mean, backward=False)
    row_partials = _row_partials(native, features)
    partials = _nll_partials(nll, per_element, row_partials)
    native.launch(
        "gaussian_nll_fwd", mean.device,
        address(mean), address(x), address(logvar_arg), address(partials), batch, features, row_partials,
        layout, sizes, 0.0 if logvar is not None else float(logvar_value),
        dtype_code(mean.dtype, op), x_code, logvar_code, bool(per_element),
    )
    _finish_rows(nll, partials)


def gaussian_nll_bwd(native, grad_nll, mean, x, logvar, logvar_value: float, grad_mean, grad_x, grad_logvar):
    """As :func:`fastvae.kernels.likelihood.gaussian_nll_bwd`: writes grad_mean, grad_x and
    grad_logvar (per element of mean's shape: logvar's dtype if full-size, else float32),
    each None when not asked for."""
    op = "gaussian_nll"
    batch, features = _geometry(mean)
    if batch == 0 or features == 0 or (grad_mean is None and grad_x is None and grad_logvar is None):
        return
    x_read, x_code = _companion(x, mean.dtype, op)
    logvar_arg, layout, sizes, logvar_code = _logvar_args(logvar, mean, backward=True)
    grad_x_written = written_buffer(grad_x, x_read.dtype)
    grad_logvar_written = written_buffer(grad_logvar, logvar_arg.dtype if logvar_arg is not None else torch.float32)
    grad_nll = _grad_nll(grad_nll)
    native.launch(
        "gaussian_nll_bwd", mean.device,
        address(mean), address(x_read), address(logvar_arg), address(grad_nll),
        address(grad_mean), address(grad_x_written), address(grad_logvar_written), batch, features, layout, sizes,
        0.0 if logvar is not None else float(logvar_value),
        dtype_code(mean.dtype, op), x_code, logvar_code, grad_nll.shape == mean.shape,
    )
    for grad, written in ((grad_x, grad_x_written), (grad_logvar, grad_logvar_written)):
        if grad is not None:
            cast_into_output(grad, written)
