"""Native launchers of the reconstruction likelihoods (csrc/cpu/likelihood.cpp,
csrc/cuda/likelihood.cu), with the signatures and return conventions of
:mod:`fastvae.kernels.likelihood`'s.

The C++ reads the parameters (logits, mean) in their dtype, and x and the Gaussian logvar
each in the parameters' dtype or float32 (a Bernoulli x also as 0/1 bytes); any other mix
(say float16 x with bfloat16 logits) is cast to float32 here, one copy, and its gradient
cast back.  A broadcast logvar is read through its strides, never expanded.
"""
from __future__ import annotations

import torch

from fastvae.layout import prior_layout

from . import address, dtype_code

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


def _empty_nll(params, per_element: bool):
    if per_element:
        return torch.empty(params.shape, dtype=torch.float32, device=params.device)
    return torch.zeros((params.shape[0],), dtype=torch.float32, device=params.device)


def _nll_buffer(params, per_element: bool, row_partials: int):
    if per_element:
        return torch.empty(params.shape, dtype=torch.float32, device=params.device)
    return torch.empty((params.shape[0], row_partials), dtype=torch.float32, device=params.device)


def _finish_rows(nll, per_element: bool):
    if per_element:
        return nll
    # Partial sums per column chunk, added in float64 in a fixed order (one float32 rounding
    # at the end, however many partials): bitwise repeatable.
    return nll[:, 0].contiguous() if nll.shape[1] == 1 else nll.sum(dim=1, dtype=torch.float64).float()


def _grad_nll(grad_nll):
    # The nll is float32, so its gradient is too; any other dtype is cast once.
    grad_nll = grad_nll if grad_nll.dtype == torch.float32 else grad_nll.to(torch.float32)
    return grad_nll.contiguous()


def _grad_buffer(like, read_dtype):
    """The gradient buffer of an input read by the C++ in ``read_dtype`` (its own dtype, or
    float32 when it was cast)."""
    return torch.empty(like.shape, dtype=read_dtype, device=like.device)


def bernoulli_nll_fwd(native, logits, x, continuous: bool, per_element: bool):
    """As :func:`fastvae.kernels.likelihood.bernoulli_nll_fwd`: the nll, float32, per
    element (logits' shape) if ``per_element``, else summed per sample, [B]."""
    op = "continuous_bernoulli_nll" if continuous else "bernoulli_nll"
    batch, features = _geometry(logits)
    if batch == 0 or features == 0:
        return _empty_nll(logits, per_element)
    x, x_code = _companion(x, logits.dtype, op, allow_bytes=True)
    row_partials = _row_partials(native, features)
    nll = _nll_buffer(logits, per_element, row_partials)
    native.launch(
        "bernoulli_nll_fwd", logits.device,
        address(logits), address(x), address(nll), batch, features, row_partials,
        dtype_code(logits.dtype, op), x_code, bool(continuous), bool(per_element),
    )
    return _finish_rows(nll, per_element)


def bernoulli_nll_bwd(native, grad_nll, logits, x, continuous: bool, logits_grad: bool, x_grad: bool):
    """As :func:`fastvae.kernels.likelihood.bernoulli_nll_bwd`: (grad_logits, grad_x), each
    in its input's dtype, None unless asked for."""
    op = "continuous_bernoulli_nll" if continuous else "bernoulli_nll"
    batch, features = _geometry(logits)
    grad_logits = torch.empty_like(logits) if logits_grad else None
    if batch == 0 or features == 0 or not (logits_grad or x_grad):
        return grad_logits, (torch.empty_like(x) if x_grad else None)
    x_read, x_code = _companion(x, logits.dtype, op, allow_bytes=True)
    grad_x = _grad_buffer(x, x_read.dtype) if x_grad else None
    grad_nll = _grad_nll(grad_nll)
    native.launch(
        "bernoulli_nll_bwd", logits.device,
        address(logits), address(x_read), address(grad_nll), address(grad_logits), address(grad_x),
        batch, features, dtype_code(logits.dtype, op), x_code, bool(continuous), grad_nll.shape == logits.shape,
    )
    if grad_x is not None and grad_x.dtype != x.dtype:
        grad_x = grad_x.to(x.dtype)
    return grad_logits, grad_x


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


def gaussian_nll_fwd(native, mean, x, logvar, logvar_value: float, per_element: bool):
    """As :func:`fastvae.kernels.likelihood.gaussian_nll_fwd`: the nll, float32, per
    element if ``per_element``, else summed per sample, [B]."""
    op = "gaussian_nll"
    batch, features = _geometry(mean)
    if batch == 0 or features == 0:
        return _empty_nll(mean, per_element)
    x, x_code = _companion(x, mean.dtype, op)
    logvar_arg, layout, sizes, logvar_code = _logvar_args(logvar, mean, backward=False)
    row_partials = _row_partials(native, features)
    nll = _nll_buffer(mean, per_element, row_partials)
    native.launch(
        "gaussian_nll_fwd", mean.device,
        address(mean), address(x), address(logvar_arg), address(nll), batch, features, row_partials,
        layout, sizes, 0.0 if logvar is not None else float(logvar_value),
        dtype_code(mean.dtype, op), x_code, logvar_code, bool(per_element),
    )
    return _finish_rows(nll, per_element)


def gaussian_nll_bwd(native, grad_nll, mean, x, logvar, logvar_value: float, mean_grad: bool, x_grad: bool,
                     logvar_grad: bool):
    """As :func:`fastvae.kernels.likelihood.gaussian_nll_bwd`: (grad_mean, grad_x,
    grad_logvar), None unless asked for; grad_logvar per element of mean's shape
    (logvar's dtype if full-size, else float32, for the caller to sum to logvar's shape)."""
    op = "gaussian_nll"
    batch, features = _geometry(mean)
    logvar_grad = logvar_grad and logvar is not None
    full_size = logvar is not None and logvar.shape == mean.shape
    grad_mean = torch.empty_like(mean) if mean_grad else None
    if batch == 0 or features == 0 or not (mean_grad or x_grad or logvar_grad):
        grad_x = torch.empty_like(x) if x_grad else None
        grad_logvar = None
        if logvar_grad:
            dtype = logvar.dtype if full_size else torch.float32
            grad_logvar = torch.empty(mean.shape, dtype=dtype, device=mean.device)
        return grad_mean, grad_x, grad_logvar
    x_read, x_code = _companion(x, mean.dtype, op)
    logvar_arg, layout, sizes, logvar_code = _logvar_args(logvar, mean, backward=True)
    grad_x = _grad_buffer(x, x_read.dtype) if x_grad else None
    grad_logvar = _grad_buffer(mean, logvar_arg.dtype) if logvar_grad else None
    grad_nll = _grad_nll(grad_nll)
    native.launch(
        "gaussian_nll_bwd", mean.device,
        address(mean), address(x_read), address(logvar_arg), address(grad_nll),
        address(grad_mean), address(grad_x), address(grad_logvar), batch, features, layout, sizes,
        0.0 if logvar is not None else float(logvar_value),
        dtype_code(mean.dtype, op), x_code, logvar_code, grad_nll.shape == mean.shape,
    )
    if grad_x is not None and grad_x.dtype != x.dtype:
        grad_x = grad_x.to(x.dtype)
    if grad_logvar is not None and full_size and grad_logvar.dtype != logvar.dtype:
        grad_logvar = grad_logvar.to(logvar.dtype)
    return grad_mean, grad_x, grad_logvar
