"""Discretized logistic likelihood ops (PixelCNN++'s, as NVAE and VDVAE use it):
``discretized_logistic_nll`` and ``discretized_logistic_mixture_nll``, with ``_sample`` and
``_mean`` of each for drawing and displaying reconstructions.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference` itself; the others run one fused kernel forward and one backward
(``kernels/logistic.py``).  The backward recomputes everything from the inputs: nothing is
saved for it but the inputs themselves (see the design note in ``kernels/logistic.py``).
One exception: where the backend's mixture forward can write ∂nll/∂params on its way
(the cpu backend, where the math is the cost) and params need a gradient, it does, and
the backward only scales that gradient by the upstream one; it is saved instead of the
inputs, and has their size.  The samples and means are plain PyTorch: they are not on the
training path.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import reference
from ..random import GUMBEL_MIN_UNIFORM, philox_uniform
from ..validation import (
    check_finite,
    check_float_tensor,
    check_generator,
    check_nonnegative_number,
    check_reduction,
    check_same_device,
    check_same_shape,
    value_checks_active,
)
from ._common import (assume_constant_result, direct_call_ok, fill_absent, fused_call, kernel_module, no_double_backward, pick_backend,
                      promoted_dtype, seed_for)


# --------------------------------------------------------------------------------------
# Custom ops: the discretized logistic
# --------------------------------------------------------------------------------------


def _discretized_logistic_fwd_outputs(mean: Tensor, per_element: bool) -> Tensor:
    """The output of ``discretized_logistic_fwd``, allocated (the fake returns it, the real
    op hands it to the launcher): the nll, float32, per element (contiguous, mean's shape)
    or per sample [B]."""
    return mean.new_empty(tuple(mean.shape) if per_element else (mean.shape[0],), dtype=torch.float32)


@torch.library.custom_op("fastvae::discretized_logistic_fwd", mutates_args=())
def _discretized_logistic_fwd(
    mean: Tensor, log_scale: Tensor, x: Tensor, num_bins: int, per_element: bool, backend: str
) -> Tensor:
    """The nll per element (float32, contiguous, mean's shape) or per sample (float32 [B])."""
    nll = _discretized_logistic_fwd_outputs(mean, per_element)
    kernel_module(backend, "logistic").discretized_logistic_fwd(mean, log_scale, x, num_bins, per_element, nll=nll)
    return nll


@_discretized_logistic_fwd.register_fake
def _(mean, log_scale, x, num_bins, per_element, backend):
    return _discretized_logistic_fwd_outputs(mean, per_element)


def _discretized_logistic_bwd_outputs(mean: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The outputs of ``discretized_logistic_bwd``, allocated: grad_mean and
    grad_log_scale, contiguous, in mean's and log_scale's shapes and dtypes."""
    return (
        torch.empty_like(mean, memory_format=torch.contiguous_format),
        torch.empty_like(log_scale, memory_format=torch.contiguous_format),
    )


@torch.library.custom_op("fastvae::discretized_logistic_bwd", mutates_args=())
def _discretized_logistic_bwd(
    grad_nll: Tensor, mean: Tensor, log_scale: Tensor, x: Tensor, num_bins: int, backend: str
) -> tuple[Tensor, Tensor]:
    """(grad_mean, grad_log_scale), contiguous, in mean's and log_scale's dtypes."""
    grad_mean, grad_log_scale = outputs = _discretized_logistic_bwd_outputs(mean, log_scale)
    kernel_module(backend, "logistic").discretized_logistic_bwd(
        grad_nll.contiguous(), mean, log_scale, x, num_bins, grad_mean=grad_mean, grad_log_scale=grad_log_scale
    )
    return outputs


@_discretized_logistic_bwd.register_fake
def _(grad_nll, mean, log_scale, x, num_bins, backend):
    return _discretized_logistic_bwd_outputs(mean, log_scale)


def _discretized_logistic_setup_context(ctx, inputs, output):
    mean, log_scale, x, num_bins, per_element, backend = inputs
    # The inputs only: the backward recomputes every intermediate.
    ctx.save_for_backward(mean, log_scale, x)
    ctx.num_bins, ctx.backend = num_bins, backend
    ctx.set_materialize_grads(False)


def _discretized_logistic_backward(ctx, grad_nll):
    if grad_nll is None:
        return None, None, None, None, None, None
    mean, log_scale, x = ctx.saved_tensors
    grad_mean, grad_log_scale = fused_call(_discretized_logistic_bwd, grad_nll, mean, log_scale, x, ctx.num_bins,
                                           ctx.backend)
    return (
        grad_mean if ctx.needs_input_grad[0] else None,
        grad_log_scale if ctx.needs_input_grad[1] else None,
        None, None, None, None,  # x gets no gradient: it is snapped to the grid
    )


_discretized_logistic_fwd.register_autograd(_discretized_logistic_backward,
                                            setup_context=_discretized_logistic_setup_context)
_discretized_logistic_bwd.register_autograd(
    no_double_backward("discretized_logistic_nll"), setup_context=lambda ctx, inputs, output: None
)


# --------------------------------------------------------------------------------------
# Custom ops: the mixture
# --------------------------------------------------------------------------------------


def _mixture_fwd_outputs(params: Tensor, x: Tensor, per_pixel: bool, with_grad: bool):
    """The outputs of ``discretized_logistic_mixture_fwd``, allocated (the fake returns
    them, the real op hands them to the launcher): the nll, float32, per pixel
    (contiguous [B, *spatial]) or per sample [B]; and with ``with_grad`` the buffer of
    ∂nll/∂params (:func:`_grad_params_buffer`), else None."""
    shape = (x.shape[0],) + tuple(x.shape[2:]) if per_pixel else (x.shape[0],)
    nll = params.new_empty(shape, dtype=torch.float32)
    return nll, _grad_params_buffer(params) if with_grad else None


@torch.library.custom_op("fastvae::discretized_logistic_mixture_fwd", mutates_args=())
def _mixture_fwd(
    params: Tensor, x: Tensor, num_mixtures: int, num_bins: int, per_pixel: bool, with_grad: bool, backend: str
) -> tuple[Tensor, Tensor]:
    """The nll per pixel (float32, contiguous [B, *spatial]) or per sample (float32 [B]),
    and with ``with_grad`` ∂nll/∂params for an upstream gradient of 1 (see
    :func:`_grad_params_buffer`), else an empty tensor."""
    nll, grad_params = outputs = _mixture_fwd_outputs(params, x, per_pixel, with_grad)
    kernel_module(backend, "logistic").logistic_mixture_fwd(params, x, num_mixtures, num_bins, per_pixel,
                                                            nll=nll, grad_params=grad_params)
    return fill_absent(outputs, params)


@_mixture_fwd.register_fake
def _(params, x, num_mixtures, num_bins, per_pixel, with_grad, backend):
    return fill_absent(_mixture_fwd_outputs(params, x, per_pixel, with_grad), params)


@assume_constant_result
def _mixture_forward_writes_grad(backend: str) -> bool:
    return kernel_module(backend, "logistic").mixture_forward_writes_grad()


def _grad_params_buffer(params: Tensor) -> Tensor:
    """The empty grad_params: params' shape and dtype, channels_last if params is (so a
    channels_last decoder gets its gradient in its own layout), contiguous otherwise.
    The output of ``discretized_logistic_mixture_bwd``, and the second of the forward's
    with ``with_grad``."""
    channels_last = (params.dim() == 4 and not params.is_contiguous()
                     and params.is_contiguous(memory_format=torch.channels_last))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty_like(params, memory_format=layout)


@torch.library.custom_op("fastvae::discretized_logistic_mixture_bwd", mutates_args=())
def _mixture_bwd(grad_nll: Tensor, params: Tensor, x: Tensor, num_mixtures: int, num_bins: int, backend: str) -> Tensor:
    """grad_params in params' shape and dtype (see :func:`_grad_params_buffer`), written
    once by the kernel."""
    grad_params = _grad_params_buffer(params)
    kernel_module(backend, "logistic").logistic_mixture_bwd(
        grad_nll.contiguous(), params, x, num_mixtures, num_bins, grad_params=grad_params
    )
    return grad_params


@_mixture_bwd.register_fake
def _(grad_nll, params, x, num_mixtures, num_bins, backend):
    return _grad_params_buffer(params)


def _upstream_per_slot(grad_nll: Tensor, grad: Tensor) -> Tensor:
    """grad_nll ([B] or [B, *spatial]) viewed to broadcast over grad's [B, P, *spatial]."""
    if grad_nll.dim() == 1:
        return grad_nll.reshape((grad_nll.shape[0],) + (1,) * (grad.dim() - 1))
    return grad_nll.unsqueeze(1)


def _mixture_scale_grad_outputs(grad: Tensor) -> Tensor:
    """The output of ``discretized_logistic_mixture_scale_grad``, allocated: grad's shape,
    dtype and layout (channels_last stays channels_last)."""
    return torch.empty_like(grad)


@torch.library.custom_op("fastvae::discretized_logistic_mixture_scale_grad", mutates_args=())
def _mixture_scale_grad(grad: Tensor, grad_nll: Tensor) -> Tensor:
    """The backward after a forward that wrote ∂nll/∂params: that gradient times the
    upstream one, in grad's dtype and layout."""
    scaled = _mixture_scale_grad_outputs(grad)
    # The product is taken in the promoted dtype and rounded once to grad's on the store.
    torch.mul(grad, _upstream_per_slot(grad_nll, grad), out=scaled)
    return scaled


@_mixture_scale_grad.register_fake
def _(grad, grad_nll):
    return _mixture_scale_grad_outputs(grad)


def _mixture_setup_context(ctx, inputs, output):
    params, x, num_mixtures, num_bins, per_pixel, with_grad, backend = inputs
    # The inputs only, and the backward recomputes every intermediate; or the gradient
    # the forward wrote, which is all the backward needs.
    ctx.save_for_backward(*((output[1],) if with_grad else (params, x)))
    ctx.with_grad, ctx.num_mixtures, ctx.num_bins, ctx.backend = with_grad, num_mixtures, num_bins, backend
    ctx.set_materialize_grads(False)


def _scale_in_place(ctx, grad_params: Tensor, grad_nll: Tensor) -> bool:
    """Whether the backward may scale the gradient the forward wrote in place: on the
    direct path (fastvae.ops._common.fused_call: eager, plain tensors, so the forward's
    buffer never reached the caller), in a backward that frees the graph after it
    (not ``retain_graph``: a second backward must find the buffer unscaled) and builds
    none (not ``create_graph``).  The product is taken in the promoted dtype and rounded
    once to the buffer's, as ``_mixture_scale_grad`` writes it."""
    return (
        getattr(ctx, "direct", False)
        and not torch.is_grad_enabled()
        and not torch._C._autograd._get_current_graph_task_keep_graph()
        and direct_call_ok(grad_params, grad_nll)
    )


def _mixture_backward(ctx, grad_nll, _grad_of_grad_params):
    if grad_nll is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None, None
    if ctx.with_grad:
        (grad_params,) = ctx.saved_tensors
        if _scale_in_place(ctx, grad_params, grad_nll):
            # The buffer is this graph's alone and is freed after this backward: scaled
            # in place, it becomes the gradient, so fwd+bwd holds one params-sized buffer
            # where eager holds a dozen (bench/README.md, the mixture's memory bar).
            grad_params.mul_(_upstream_per_slot(grad_nll, grad_params))
            return grad_params, None, None, None, None, None, None
        return fused_call(_mixture_scale_grad, grad_params, grad_nll), None, None, None, None, None, None
    params, x = ctx.saved_tensors
    grad_params = fused_call(_mixture_bwd, grad_nll, params, x, ctx.num_mixtures, ctx.num_bins, ctx.backend)
    return grad_params, None, None, None, None, None, None


_mixture_fwd.register_autograd(_mixture_backward, setup_context=_mixture_setup_context)
for _backward_op in (_mixture_bwd, _mixture_scale_grad):
    _backward_op.register_autograd(
        no_double_backward("discretized_logistic_mixture_nll"), setup_context=lambda ctx, inputs, output: None
    )


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _check_positive_int(op: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"fastvae.{op}: {name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"fastvae.{op}: {name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_x_tensor(op: str, x, min_dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fastvae.{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise TypeError(
            f"fastvae.{op}: x must be floating (data in [-1, 1]) or uint8 (level indices), got {x.dtype}"
        )
    if x.dim() < min_dim:
        raise ValueError(f"fastvae.{op}: x must have at least {min_dim} dimension(s) (batch first), "
                         f"got shape {tuple(x.shape)}")


def _check_num_bins(op: str, num_bins, x: Optional[Tensor]) -> int:
    num_bins = _check_positive_int(op, "num_bins", num_bins, minimum=2)
    if x is not None and x.dtype == torch.uint8 and num_bins > 256:
        raise ValueError(f"fastvae.{op}: num_bins must be <= 256 for uint8 x (level indices), got {num_bins}")
    return num_bins


def _grid_tolerance(values: Tensor, dtype: torch.dtype) -> Tensor:
    """How far a float x of ``dtype`` may sit from its level ``values`` (float64): half a
    unit in the last place of ``dtype`` at the level (what rounding a level to ``dtype``
    leaves, e.g. bfloat16's), plus 1e-6 for float32 arithmetic that made x."""
    _, exponent = torch.frexp(values)
    ulp = torch.finfo(dtype).eps * torch.pow(2.0, exponent.to(torch.float64) - 1.0)
    return 0.5 * ulp + 1e-6


def _check_x_values(op: str, x: Tensor, num_bins: int) -> None:
    """Value checks (sync): a uint8 x below num_bins; a float x free of NaN, in [−1, 1] and
    on the grid of num_bins levels up to the rounding of its dtype."""
    if not value_checks_active() or x.numel() == 0:
        return
    if x.dtype == torch.uint8:
        if num_bins < 256:
            top = int(x.max())
            if top >= num_bins:
                raise ValueError(
                    f"fastvae.{op}: x holds level index {top}, but num_bins={num_bins} allows 0 … {num_bins - 1}"
                )
        return
    if bool(torch.isnan(x).any()):
        raise ValueError(f"fastvae.{op}: x contains NaN")
    data = x.to(torch.float64)
    values = reference.level_values(reference.grid_levels(x, num_bins), num_bins, torch.float64)
    tolerance = _grid_tolerance(values, x.dtype)
    outside = (data < -1.0 - tolerance) | (data > 1.0 + tolerance)
    if bool(outside.any()):
        worst = float(data[outside].abs().max())
        raise ValueError(
            f"fastvae.{op}: x must lie in [-1, 1] (data in [0, 1] becomes 2·x − 1), found |x| = {worst:g}"
        )
    distance = (data - values).abs()
    off = distance > tolerance
    if bool(off.any()):
        index = int(torch.argmax(torch.where(off, distance, torch.zeros_like(distance))))
        raise ValueError(
            f"fastvae.{op}: x must lie on the grid of num_bins={num_bins} levels −1 + 2i/{num_bins - 1} "
            f"(up to the rounding of {x.dtype}); x = {float(data.flatten()[index]):.9g} is "
            f"{float(distance.flatten()[index]):.3g} from the nearest level"
        )


def _mixture_channels(op: str, params: Tensor, num_mixtures: int) -> int:
    """C from params' channel count P: 3K → 1, 10K → 3."""
    channels = params.shape[1]
    if channels == 3 * num_mixtures:
        return 1
    if channels == 10 * num_mixtures:
        return 3
    raise ValueError(
        f"fastvae.{op}: params must have 3·num_mixtures = {3 * num_mixtures} channels (1-channel data) or "
        f"10·num_mixtures = {10 * num_mixtures} (3-channel data) in dimension 1, got shape {tuple(params.shape)}"
    )


def _check_mixture_args(op: str, params, x, num_mixtures, num_bins) -> tuple[int, int]:
    check_float_tensor(op, "params", params, min_dim=2)
    _check_x_tensor(op, x, min_dim=2)
    num_mixtures = _check_positive_int(op, "num_mixtures", num_mixtures)
    num_bins = _check_num_bins(op, num_bins, x)
    channels = x.shape[1]
    if channels not in (1, 3):
        raise ValueError(
            f"fastvae.{op}: x must have 1 or 3 channels in dimension 1 ([B, C, *spatial]), got shape {tuple(x.shape)}"
        )
    expected = (3 if channels == 1 else 10) * num_mixtures
    if params.shape[1] != expected:
        layout = ("3K: K logits, K means, K log-scales" if channels == 1 else
                  "10K: K logits, then for each channel R, G, B: K means, K log-scales, K coefficients")
        raise ValueError(
            f"fastvae.{op}: params must have {expected} channels in dimension 1 for num_mixtures={num_mixtures} "
            f"and {channels}-channel x ({layout}), got shape {tuple(params.shape)}"
        )
    if params.shape[0] != x.shape[0]:
        raise ValueError(
            f"fastvae.{op}: params has batch size {params.shape[0]} but x has {x.shape[0]}; they must match"
        )
    if params.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"fastvae.{op}: params has spatial shape {tuple(params.shape[2:])} but x has {tuple(x.shape[2:])}; "
            f"they must match"
        )
    check_same_device(op, [("params", params), ("x", x)])
    check_finite(op, "params", params)
    _check_x_values(op, x, num_bins)
    return num_mixtures, num_bins


def _x_float(x: Tensor) -> Optional[Tensor]:
    return x if x.is_floating_point() else None


# --------------------------------------------------------------------------------------
# Public ops: negative log-likelihoods
# --------------------------------------------------------------------------------------


def discretized_logistic_nll(
    mean: Tensor, log_scale: Tensor, x: Tensor, num_bins: int = 256, reduction: str = "batch"
) -> Tensor:
    r"""Negative log-likelihood of x under the logistic(mean, e^log_scale) discretized to
    ``num_bins`` levels in [−1, 1] (PixelCNN++'s likelihood for one sub-pixel).

    With half = 1/(num_bins − 1), s = e^(−max(log_scale, −7)), a = s·(x − mean + half) and
    b = s·(x − mean − half), log P(x) is log σ(a) at the lowest level (x = −1), log σ(−b)
    at the highest (x = 1), and log(σ(a) − σ(b)) elsewhere, computed stably as
    log σ(a) + log σ(−b) + log(−expm1(b − a)): exact everywhere, with no low-probability
    approximation.

    Args:
        mean: the logistic's location, shape [B, ...]; float32, bfloat16, float16 or
            float64 (computed in float32, float64 in float64).
        log_scale: its log-scale, mean's shape; clamped below at −7 (no gradient there).
        x: the data, mean's shape: floats in [−1, 1], snapped to the nearest level (so a
            bfloat16 x is exact), or uint8 level indices 0 … num_bins − 1.  x gets no
            gradient.  ``fastvae.set_validate_args(True)`` refuses a NaN x, a float x
            off the grid or outside [−1, 1] and a uint8 level of num_bins or more; without
            it, every backend gives NaN (and NaN gradients) at a NaN x or such a level,
            which is no level, and snaps a float x outside [−1, 1] to the nearest end.
        num_bins: the number of levels, an int >= 2 (<= 256 for uint8 x); 256 for 8-bit data.
        reduction: 'batch' → [B] (sum over all but the batch), 'none' → per element,
            'sum' → scalar, 'mean' → batch mean of the per-sample sums.

    Returns:
        The nll in nats, float32 (float64 for float64 inputs).  Gradients flow to mean and
        log_scale; the fused backward recomputes from the inputs and stores nothing else.

    Example::

        >>> mean, log_scale = decoder(z).chunk(2, dim=1)        # [B, 3, H, W] each
        >>> x = images.float() / 127.5 - 1                      # or the uint8 images
        >>> nll = fastvae.discretized_logistic_nll(mean, log_scale, x)   # [B]
    """
    op = "discretized_logistic_nll"
    check_float_tensor(op, "mean", mean, min_dim=1)
    check_float_tensor(op, "log_scale", log_scale, min_dim=1)
    _check_x_tensor(op, x, min_dim=1)
    check_same_shape(op, "log_scale", log_scale, "mean", mean)
    check_same_shape(op, "x", x, "mean", mean)
    num_bins = _check_num_bins(op, num_bins, x)
    check_reduction(op, reduction)
    check_same_device(op, [("mean", mean), ("log_scale", log_scale), ("x", x)])
    check_finite(op, "mean", mean)
    check_finite(op, "log_scale", log_scale)
    _check_x_values(op, x, num_bins)
    backend = pick_backend(op, mean.device, promoted_dtype(mean, log_scale, _x_float(x)))
    if backend == "torch":
        return reference.discretized_logistic_nll(mean, log_scale, x, num_bins, reduction)
    per_element = reduction == "none"
    nll = fused_call(_discretized_logistic_fwd, mean, log_scale, x, num_bins, per_element, backend)
    return nll if per_element else reference.reduce(nll, reduction)


def discretized_logistic_mixture_nll(
    params: Tensor, x: Tensor, num_mixtures: int, num_bins: int = 256, reduction: str = "batch"
) -> Tensor:
    r"""Negative log-likelihood of images under PixelCNN++'s discretized logistic mixture,
    in NVAE's parameter layout, fused: one pass forward, one backward, and no memory
    beyond the inputs, the output and the gradient (eager PyTorch materializes about a
    dozen [B, C, K, H, W] temporaries).

    Per pixel: −logsumexp_k(log_softmax(logits)_k + Σ_c log P_c,k(x_c)), P_c,k the
    discretized logistic of :func:`discretized_logistic_nll` with component k's mean and
    log-scale for channel c.  For 3-channel data the means are coupled autoregressively
    to the data: mean_G += α·x_R and mean_B += β·x_R + γ·x_G, with (α, β, γ) = tanh of the
    raw coefficients in the R, G and B blocks.

    Args:
        params: [B, P, *spatial] (e.g. a decoder's [B, P, H, W] output; any strides,
            channels_last read in place), float32, bfloat16, float16 or float64.
            C = 1: P = 3K: K mixture logits, K means, K log-scales.
            C = 3: P = 10K: K mixture logits, then for each channel R, G, B a block of 3K:
            K means, K log-scales, K raw coefficients.
        x: the images, [B, C, *spatial] with C = 1 or 3: floats in [−1, 1] (snapped to the
            grid) or uint8 level indices.  x gets no gradient.  As for
            :func:`discretized_logistic_nll`, a NaN x or a uint8 level of num_bins or more
            gives a NaN pixel when value checks are off (they refuse it).
        num_mixtures: K, a positive int.
        num_bins: levels per channel, an int >= 2 (<= 256 for uint8 x).
        reduction: 'batch' → [B], 'none' → per pixel [B, *spatial], 'sum' → scalar,
            'mean' → batch mean of the per-sample sums.

    Returns:
        The nll in nats, float32 (float64 for float64 params or x).  Its gradient to params
        is written in params' dtype; bits per dimension are ``nll / (ln 2 · C·H·W)``.

    Example::

        >>> params = decoder(z)                                 # [B, 10 * 10, 32, 32]
        >>> nll = fastvae.discretized_logistic_mixture_nll(params, images_uint8, num_mixtures=10)
        >>> loss = (nll + kl).mean()
    """
    op = "discretized_logistic_mixture_nll"
    check_reduction(op, reduction)
    num_mixtures, num_bins = _check_mixture_args(op, params, x, num_mixtures, num_bins)
    backend = pick_backend(op, params.device, promoted_dtype(params, _x_float(x)))
    if backend == "torch":
        return reference.discretized_logistic_mixture_nll(params, x, num_mixtures, num_bins, reduction)
    per_pixel = reduction == "none"
    with_grad = params.requires_grad and torch.is_grad_enabled() and _mixture_forward_writes_grad(backend)
    nll, _ = fused_call(_mixture_fwd, params, x, num_mixtures, num_bins, per_pixel, with_grad, backend)
    return nll if per_pixel else reference.reduce(nll, reduction)


# --------------------------------------------------------------------------------------
# Public ops: samples and means (plain PyTorch)
# --------------------------------------------------------------------------------------


def _snap(y: Tensor, num_bins: int) -> Tensor:
    """y clamped to [−1, 1] and rounded to the nearest of the num_bins levels (NaN kept).
    A level's value is (2·level − top)/top, top = num_bins − 1: an exact integer divided
    once, so correctly rounded (as the kernels compute it)."""
    top = num_bins - 1
    levels = torch.round((y.clamp(-1.0, 1.0) + 1.0) * (0.5 * top))
    return (2.0 * levels - top) / top


def _logistic_noise(u: Tensor, temperature: float) -> Tensor:
    """temperature · logit(u): a standard logistic sample by the inverse CDF, scaled.
    u = 0 gives −inf (clamped to −1 afterwards); temperature 0 gives 0."""
    if temperature == 0:
        return torch.zeros_like(u)
    return temperature * (torch.log(u) - torch.log1p(-u))


def _check_sample_args(op: str, num_bins, temperature, generator, device) -> int:
    num_bins = _check_num_bins(op, num_bins, None)
    check_nonnegative_number(op, "temperature", temperature)
    check_generator(op, generator, device)
    return num_bins


def discretized_logistic_sample(
    mean: Tensor,
    log_scale: Tensor,
    num_bins: int = 256,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Draw x̂ from the discretized logistic of :func:`discretized_logistic_nll`.

    y = mean + temperature·e^max(log_scale, −7)·logit(u), u uniform (the logistic's inverse
    CDF), clamped to [−1, 1] and snapped to the nearest level: exactly the distribution
    whose log-probability :func:`discretized_logistic_nll` gives (at temperature 1).

    Args:
        mean, log_scale: the logistic's parameters, any shape (the same for both).
        num_bins: levels in [−1, 1], an int >= 2.
        temperature: multiplies the scale, a finite number >= 0 (0 gives the level nearest the
            clamped mean; < 1 gives sharper samples).
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator).  The uniforms are Philox (see
            :mod:`fastvae.random`), so ``torch.manual_seed`` reproduces the sample.

    Returns:
        x̂ of mean's shape on the grid, in the promoted dtype of mean and log_scale; not
        differentiable.

    Example::

        >>> x_hat = fastvae.discretized_logistic_sample(mean, log_scale, temperature=0.8)
    """
    op = "discretized_logistic_sample"
    check_float_tensor(op, "mean", mean)
    check_float_tensor(op, "log_scale", log_scale)
    check_same_shape(op, "log_scale", log_scale, "mean", mean)
    check_same_device(op, [("mean", mean), ("log_scale", log_scale)])
    num_bins = _check_sample_args(op, num_bins, temperature, generator, mean.device)
    check_finite(op, "mean", mean)
    check_finite(op, "log_scale", log_scale)
    seed_offset = seed_for(mean.device, generator)
    dtype = reference.compute_dtype(mean, log_scale)
    out_dtype = torch.promote_types(mean.dtype, log_scale.dtype)
    with torch.no_grad():
        u = philox_uniform(seed_offset, tuple(mean.shape)).to(dtype)
        scale = torch.exp(torch.clamp_min(log_scale.to(dtype), reference.LOG_SCALE_MIN))
        y = mean.to(dtype) + scale * _logistic_noise(u, temperature)
        return _snap(y, num_bins).to(out_dtype)


def discretized_logistic_mean(mean: Tensor, log_scale: Tensor, num_bins: int = 256) -> Tensor:
    r"""The mean of the logistic(mean, e^max(log_scale, −7)) clamped to [−1, 1], in closed form:

        E[clamp(Y, −1, 1)] = −1 + s·(log σ((1 − mean)/s) − log σ((−1 − mean)/s)),  s = scale.

    This is the expectation of the continuous variable that
    :func:`discretized_logistic_sample` snaps to the grid; since snapping moves a value by at
    most half a level, it lies within 1/(num_bins − 1) of the exact mean of the discretized
    distribution (whose sum over all levels would cost num_bins passes over the data).  It
    is not snapped: a continuous image for display.  ``num_bins`` is checked for symmetry
    with the other ops; the closed form does not depend on it.

    Args:
        mean, log_scale: the logistic's parameters, any shape (the same for both).
        num_bins: as for :func:`discretized_logistic_nll`.

    Returns:
        mean's shape, values in [−1, 1], in the promoted dtype of mean and log_scale
        (computed in float64); differentiable.

    Example::

        >>> reconstruction = fastvae.discretized_logistic_mean(mean, log_scale)
    """
    op = "discretized_logistic_mean"
    check_float_tensor(op, "mean", mean)
    check_float_tensor(op, "log_scale", log_scale)
    check_same_shape(op, "log_scale", log_scale, "mean", mean)
    check_same_device(op, [("mean", mean), ("log_scale", log_scale)])
    _check_num_bins(op, num_bins, None)
    check_finite(op, "mean", mean)
    check_finite(op, "log_scale", log_scale)
    out_dtype = torch.promote_types(mean.dtype, log_scale.dtype)
    # float64: s·(difference of two log-sigmoids) cancels badly for wide scales in float32.
    mu = mean.to(torch.float64)
    scale = torch.exp(torch.clamp_min(log_scale.to(torch.float64), reference.LOG_SCALE_MIN))
    upper = torch.nn.functional.logsigmoid((1.0 - mu) / scale)
    lower = torch.nn.functional.logsigmoid((-1.0 - mu) / scale)
    return (-1.0 + scale * (upper - lower)).clamp(-1.0, 1.0).to(out_dtype)


def _check_mixture_params(op: str, params, num_mixtures) -> tuple[int, int]:
    check_float_tensor(op, "params", params, min_dim=2)
    num_mixtures = _check_positive_int(op, "num_mixtures", num_mixtures)
    return num_mixtures, _mixture_channels(op, params, num_mixtures)


def discretized_logistic_mixture_sample(
    params: Tensor,
    num_mixtures: int,
    num_bins: int = 256,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Draw images from the discretized logistic mixture of
    :func:`discretized_logistic_mixture_nll`.

    Per pixel: the component k by Gumbel-max on the logits, then channel by channel in the
    order R, G, B a discretized logistic sample (as :func:`discretized_logistic_sample`)
    with component k's mean and temperature·scale, the channel coupling applied to the
    channels already *sampled*: mean_G += α·x̂_R, mean_B += β·x̂_R + γ·x̂_G.  At temperature
    1 this is exactly the distribution whose nll the op computes.

    Args:
        params: [B, P, *spatial] in the layout of :func:`discretized_logistic_mixture_nll`;
            C = 1 when P = 3K, C = 3 when P = 10K.
        num_mixtures: K, a positive int.
        num_bins: levels per channel, an int >= 2.
        temperature: multiplies each logistic's scale, a finite number >= 0 (the component is
            still drawn from the mixture weights).
        generator: as :func:`discretized_logistic_sample`.

    Returns:
        x̂ of shape [B, C, *spatial] on the grid in [−1, 1], in params' dtype; not
        differentiable.

    Example::

        >>> images = fastvae.discretized_logistic_mixture_sample(decoder(z), num_mixtures=10)
        >>> uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
    """
    op = "discretized_logistic_mixture_sample"
    num_mixtures, channels = _check_mixture_params(op, params, num_mixtures)
    num_bins = _check_sample_args(op, num_bins, temperature, generator, params.device)
    check_finite(op, "params", params)
    seed_offset = seed_for(params.device, generator)
    dtype = reference.compute_dtype(params)
    batch, spatial = params.shape[0], tuple(params.shape[2:])
    with torch.no_grad():
        logits, means, log_scales, coefficients = reference.mixture_parameters(
            params.to(dtype), num_mixtures, channels
        )
        # One Philox stream per call: K uniforms per pixel for the component, then C for
        # the channels' logistic noise.
        u = philox_uniform(seed_offset, (batch, num_mixtures + channels) + spatial).to(dtype)
        gumbel = -torch.log(-torch.log(torch.clamp_min(u[:, :num_mixtures], GUMBEL_MIN_UNIFORM)))
        component = torch.argmax(logits + gumbel, dim=1, keepdim=True)  # [B, 1, *spatial]
        index = component.unsqueeze(1).expand((batch, channels, 1) + spatial)

        def pick(t):  # [B, C, K, *spatial] → component's [B, C, *spatial]
            return torch.gather(t, 2, index).squeeze(2)

        mean, scale = pick(means), torch.exp(torch.clamp_min(pick(log_scales), reference.LOG_SCALE_MIN))
        noise = scale * _logistic_noise(u[:, num_mixtures:], temperature)
        red = _snap(mean[:, 0] + noise[:, 0], num_bins)
        if channels == 1:
            return red.unsqueeze(1).to(params.dtype)
        coefficient = pick(coefficients)
        green = _snap(mean[:, 1] + coefficient[:, 0] * red + noise[:, 1], num_bins)
        blue = _snap(mean[:, 2] + coefficient[:, 1] * red + coefficient[:, 2] * green + noise[:, 2], num_bins)
        return torch.stack([red, green, blue], dim=1).to(params.dtype)


def discretized_logistic_mixture_mean(params: Tensor, num_mixtures: int, num_bins: int = 256) -> Tensor:
    r"""The mean image of the logistic mixture, for display: E[x_c] = Σ_k π_k·m_c,k with
    π = softmax(logits) and each component's means coupled to that component's own means
    of the previous channels, m_R = μ_R, m_G = μ_G + α·m_R, m_B = μ_B + β·m_R + γ·m_G
    (the exact mean of the continuous, unclamped mixture, since E[x_R | k] = μ_R,k and so
    on), then clamped to [−1, 1].  Not snapped to the grid; ``num_bins`` is checked for
    symmetry with the other ops and does not change the result.

    Args:
        params: [B, P, *spatial] in the layout of :func:`discretized_logistic_mixture_nll`.
        num_mixtures: K, a positive int.
        num_bins: as for :func:`discretized_logistic_mixture_nll`.

    Returns:
        [B, C, *spatial] in [−1, 1], in params' dtype (computed in float32, float64 for
        float64); differentiable.

    Example::

        >>> reconstruction = fastvae.discretized_logistic_mixture_mean(decoder(z), num_mixtures=10)
    """
    op = "discretized_logistic_mixture_mean"
    num_mixtures, channels = _check_mixture_params(op, params, num_mixtures)
    _check_num_bins(op, num_bins, None)
    check_finite(op, "params", params)
    dtype = reference.compute_dtype(params)
    logits, means, _, coefficients = reference.mixture_parameters(params.to(dtype), num_mixtures, channels)
    weights = torch.softmax(logits, dim=1)  # [B, K, *spatial]
    red = means[:, 0]
    channel_means = [red]
    if channels == 3:
        green = means[:, 1] + coefficients[:, 0] * red
        blue = means[:, 2] + coefficients[:, 1] * red + coefficients[:, 2] * green
        channel_means += [green, blue]
    out = torch.stack([(weights * m).sum(1) for m in channel_means], dim=1)
    return out.clamp(-1.0, 1.0).to(params.dtype)
