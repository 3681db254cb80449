"""Native launchers of the discretized logistic family (csrc/cpu/logistic.cpp,
csrc/cuda/logistic.cu), with the signatures of :mod:`fastvae.kernels.logistic`'s: they
write into the outputs the op allocates.

Tensors are read in place where the kernels' strides allow (rows any stride apart for the
single logistic; (batch, channel, spatial) strides for the mixture, so channels_last
decoder outputs are not copied), and copied contiguous otherwise, as the Triton launchers
do.  Row sums come back as partial sums per block of columns (pixels), added here in a
fixed order: bitwise repeatable.
"""
from __future__ import annotations

import torch

from fastvae.layout import mixture_layout, row_stride, spatial_stride
from fastvae.row_sums import sum_partials_into

from . import address, cast_into_output, dtype_code, written_buffer

LAUNCHERS = (
    "discretized_logistic_fwd", "discretized_logistic_bwd",
    "logistic_mixture_fwd", "logistic_mixture_bwd", "mixture_forward_writes_grad",
)
# csrc/include/fastvae/logistic_args.h, enum GridDataCode: the float dtypes' codes, and
# uint8 level indices.
X_LEVELS_CODE = 3
NLL_OP = "discretized_logistic_nll"
MIXTURE_OP = "discretized_logistic_mixture_nll"


def grid_constants(num_bins: int) -> tuple[int, float, float]:
    """(top level, level scale, half), as kernels/logistic.py's _grid_constants: a float x
    sits at level round((x + 1)·scale); half is half a bin."""
    return num_bins - 1, 0.5 * (num_bins - 1), 1.0 / (num_bins - 1)


def _x_code(x: torch.Tensor, op: str) -> int:
    return X_LEVELS_CODE if x.dtype == torch.uint8 else dtype_code(x.dtype, op)


def _partials(native, name: str, length: int) -> int:
    width = native.constant(name)
    return -(-length // width)


# --------------------------------------------------------------------------------------
# The single logistic: [B, N] rows
# --------------------------------------------------------------------------------------


def _rows(tensor):
    """(tensor, batch stride) with each row contiguous: in place where possible."""
    stride = row_stride(tensor)
    if stride is None:
        tensor = tensor.contiguous()
        stride = row_stride(tensor)
    return tensor, stride


def _logistic_inputs(mean, log_scale, x):
    """The C++ reads mean and log_scale in one dtype: cast the rare mixed case (one copy)."""
    dtype = torch.promote_types(mean.dtype, log_scale.dtype)
    (mean, mean_stride), (log_scale, log_scale_stride) = _rows(mean.to(dtype)), _rows(log_scale.to(dtype))
    x, x_stride = _rows(x)
    return mean, log_scale, x, [mean_stride, log_scale_stride, x_stride], dtype


def discretized_logistic_fwd(native, mean, log_scale, x, num_bins: int, per_element: bool, nll):
    """As :func:`fastvae.kernels.logistic.discretized_logistic_fwd`: writes the nll per
    element (float32, contiguous, x's shape) or per sample (float32 [B])."""
    batch = mean.shape[0]
    features = mean[0].numel() if batch else int(torch.Size(mean.shape[1:]).numel())
    if batch == 0 or features == 0:
        if not per_element:
            nll.zero_()
        return
    mean, log_scale, x, strides, dtype = _logistic_inputs(mean, log_scale, x)
    row_partials = _partials(native, "LOGISTIC_ROW_PARTIAL_WIDTH", features)
    # A row of one block has its sum as its one partial: written into nll directly.
    one_partial = per_element or row_partials == 1
    partials = nll if one_partial else torch.empty((batch, row_partials), dtype=torch.float32, device=mean.device)
    native.launch(
        "discretized_logistic_fwd", mean.device,
        address(mean), address(log_scale), address(x), address(partials), batch, features, row_partials, strides,
        *grid_constants(num_bins), dtype_code(dtype, NLL_OP), _x_code(x, NLL_OP), per_element,
    )
    if not one_partial:
        sum_partials_into(nll, partials)


def discretized_logistic_bwd(native, grad_nll, mean, log_scale, x, num_bins: int, grad_mean, grad_log_scale):
    """As :func:`fastvae.kernels.logistic.discretized_logistic_bwd`.  grad_nll: per element
    (mean's shape) or per sample [B].  Writes grad_mean and grad_log_scale (contiguous, in
    mean's and log_scale's dtypes)."""
    batch = mean.shape[0]
    features = mean[0].numel() if batch else int(torch.Size(mean.shape[1:]).numel())
    if batch == 0 or features == 0:
        return
    mean, log_scale, x, strides, dtype = _logistic_inputs(mean, log_scale, x)
    # The C++ writes both gradients in the one dtype it reads mean and log_scale in.
    written = [written_buffer(grad, dtype) for grad in (grad_mean, grad_log_scale)]
    grad_nll = grad_nll.to(torch.float32).contiguous()
    native.launch(
        "discretized_logistic_bwd", mean.device,
        address(mean), address(log_scale), address(x), address(grad_nll), address(written[0]),
        address(written[1]), batch, features, strides, *grid_constants(num_bins),
        dtype_code(dtype, NLL_OP), _x_code(x, NLL_OP), grad_nll.dim() > 1,
    )
    for grad, buffer in zip((grad_mean, grad_log_scale), written):
        cast_into_output(grad, buffer)


# --------------------------------------------------------------------------------------
# The mixture: params [B, P, S], x [B, C, S]
# --------------------------------------------------------------------------------------


def _check_components(native, num_mixtures: int) -> None:
    limit = native.constant("LOGISTIC_MIXTURE_MAX_COMPONENTS")
    if num_mixtures > limit:
        raise ValueError(
            f"fastvae.{MIXTURE_OP}: the {native.name} backend takes at most {limit} mixture components, got "
            f"num_mixtures={num_mixtures}; use fastvae.use_backend('torch') (or 'triton' on a GPU) for more"
        )


def _pixel_strides(tensor):
    return [tensor.stride(0), tensor.stride(1), spatial_stride(tensor)]


def mixture_forward_writes_grad(native) -> bool:
    """Whether :func:`logistic_mixture_fwd` can write ∂nll/∂params on its way (see
    :func:`fastvae.kernels.logistic.mixture_forward_writes_grad`).  On the CPU, yes: the
    math is the cost, and a backward that recomputes repeats all of the forward's.  The
    CUDA kernels recompute it, as the Triton kernels do."""
    return native.name == "cpu"


def logistic_mixture_fwd(native, params, x, num_mixtures: int, num_bins: int, per_pixel: bool, nll, grad_params):
    """As :func:`fastvae.kernels.logistic.logistic_mixture_fwd`: writes the nll per pixel
    (float32, contiguous [B, *spatial]) or per sample (float32 [B]).  grad_params: None,
    or (where :func:`mixture_forward_writes_grad`) a buffer as :func:`logistic_mixture_bwd`'s
    that gets ∂nll/∂params, the gradient for an upstream gradient of 1."""
    if grad_params is not None and spatial_stride(grad_params) is None:
        raise ValueError("logistic_mixture_fwd: grad_params' spatial dimensions must form one strided run")
    _check_components(native, num_mixtures)
    batch, channels = x.shape[0], x.shape[1]
    pixels = int(torch.Size(x.shape[2:]).numel())
    if batch == 0 or pixels == 0:
        if not per_pixel:
            nll.zero_()
        return
    params, x = mixture_layout(params), mixture_layout(x)
    pixel_partials = _partials(native, "LOGISTIC_MIXTURE_ROW_PARTIAL_WIDTH", pixels)
    one_partial = per_pixel or pixel_partials == 1  # as discretized_logistic_fwd
    partials = nll if one_partial else torch.empty((batch, pixel_partials), dtype=torch.float32, device=params.device)
    native.launch(
        "logistic_mixture_fwd", params.device,
        address(params), address(x), address(partials), address(grad_params), batch, pixels, num_mixtures,
        pixel_partials, _pixel_strides(params), _pixel_strides(x),
        _pixel_strides(grad_params if grad_params is not None else params),
        *grid_constants(num_bins), channels,
        dtype_code(params.dtype, MIXTURE_OP), _x_code(x, MIXTURE_OP), per_pixel,
    )
    if not one_partial:
        sum_partials_into(nll, partials)


def logistic_mixture_bwd(native, grad_nll, params, x, num_mixtures: int, num_bins: int, grad_params):
    """As :func:`fastvae.kernels.logistic.logistic_mixture_bwd`.  grad_nll: per pixel
    ([B, *spatial]) or per sample [B]; grad_params: the output, params' shape and dtype, any
    layout whose spatial dimensions form one strided run (contiguous, channels_last), every
    element written once."""
    if spatial_stride(grad_params) is None:
        raise ValueError("logistic_mixture_bwd: grad_params' spatial dimensions must form one strided run")
    _check_components(native, num_mixtures)
    batch, channels = x.shape[0], x.shape[1]
    pixels = int(torch.Size(x.shape[2:]).numel())
    if batch == 0 or pixels == 0:
        return
    params, x = mixture_layout(params), mixture_layout(x)
    grad_nll = grad_nll.to(torch.float32).contiguous()
    native.launch(
        "logistic_mixture_bwd", params.device,
        address(params), address(x), address(grad_nll), address(grad_params), batch, pixels, num_mixtures,
        _pixel_strides(params), _pixel_strides(x), _pixel_strides(grad_params), *grid_constants(num_bins), channels,
        dtype_code(params.dtype, MIXTURE_OP), _x_code(x, MIXTURE_OP), grad_nll.dim() > 1,
    )
