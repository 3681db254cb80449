"""Reconstruction likelihood ops: ``bernoulli_nll``, ``continuous_bernoulli_nll``,
``gaussian_nll`` and ``bits_per_dim``, with the ``_sample`` and ``_mean`` of each
likelihood for drawing and displaying reconstructions.

Argument checks, the ``torch.library`` custom ops (with fake implementations and
registered autograd), and dispatch to a backend.  The ``torch`` backend is
:mod:`fastvae.reference` itself; the others run one fused kernel forward (the nll per
element, or summed per sample) and one backward that recomputes from the inputs
(``kernels/likelihood.py``).  The 'sum' and 'mean' reductions are small torch ops on the
kernel's per-sample nll, so autograd routes their gradient back into the fused backward.
The ``_sample`` and ``_mean`` helpers are plain torch and carry no gradient.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
from torch import Tensor

from .. import reference
from ..random import philox_normal, philox_uniform
from ..validation import (
    FLOAT_DTYPES,
    check_broadcastable_to,
    check_finite,
    check_float_tensor,
    check_generator,
    check_nonnegative_number,
    check_not_nan,
    check_reduction,
    check_same_device,
    check_same_shape,
    value_checks_active,
)
from ._common import fill_absent, fused_call, kernel_module, no_double_backward, pick_backend, promoted_dtype, seed_for

# x of a Bernoulli likelihood: a float tensor in [0, 1], or 0/1 values as bool or uint8.
BINARY_DTYPES = (torch.bool, torch.uint8)


def _nll_outputs(params: Tensor, per_element: bool) -> Tensor:
    """The output of a likelihood's forward (``bernoulli_nll_fwd``, ``gaussian_nll_fwd``),
    allocated (the fake returns it, the real op hands it to the launcher): the nll,
    float32, per element (contiguous, params' shape) or per sample [B]."""
    return params.new_empty(tuple(params.shape) if per_element else (params.shape[0],), dtype=torch.float32)


def _input_grad(tensor: Tensor, wanted: bool) -> Optional[Tensor]:
    """The gradient of an input, contiguous in its shape and dtype, None unless wanted."""
    return torch.empty_like(tensor, memory_format=torch.contiguous_format) if wanted else None


# --------------------------------------------------------------------------------------
# Custom ops: Bernoulli and continuous Bernoulli
# --------------------------------------------------------------------------------------


@torch.library.custom_op("fastvae::bernoulli_nll_fwd", mutates_args=())
def _bernoulli_nll_fwd(logits: Tensor, x: Tensor, continuous: bool, per_element: bool, backend: str) -> Tensor:
    """The nll (continuous Bernoulli if ``continuous``), float32: per element, or per
    sample [B].  x: float, or uint8 0/1 values."""
    nll = _nll_outputs(logits, per_element)
    kernel_module(backend, "likelihood").bernoulli_nll_fwd(logits.contiguous(), x.contiguous(), continuous,
                                                           per_element, nll=nll)
    return nll


@_bernoulli_nll_fwd.register_fake
def _(logits, x, continuous, per_element, backend):
    return _nll_outputs(logits, per_element)


def _bernoulli_nll_bwd_outputs(logits: Tensor, x: Tensor, logits_grad: bool, x_grad: bool):
    """The outputs of ``bernoulli_nll_bwd``, allocated: grad_logits and grad_x, each
    contiguous in its input's shape and dtype, None unless asked for."""
    return _input_grad(logits, logits_grad), _input_grad(x, x_grad)


@torch.library.custom_op("fastvae::bernoulli_nll_bwd", mutates_args=())
def _bernoulli_nll_bwd(
    grad_nll: Tensor,
    logits: Tensor,
    x: Tensor,
    continuous: bool,
    logits_grad: bool,
    x_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(grad_logits, grad_x), each in its input's shape and dtype, empty when not asked for."""
    grad_logits, grad_x = outputs = _bernoulli_nll_bwd_outputs(logits, x, logits_grad, x_grad)
    kernel_module(backend, "likelihood").bernoulli_nll_bwd(
        grad_nll.contiguous(), logits.contiguous(), x.contiguous(), continuous, grad_logits=grad_logits, grad_x=grad_x
    )
    return fill_absent(outputs, logits)


@_bernoulli_nll_bwd.register_fake
def _(grad_nll, logits, x, continuous, logits_grad, x_grad, backend):
    return fill_absent(_bernoulli_nll_bwd_outputs(logits, x, logits_grad, x_grad), logits)


def _bernoulli_setup_context(ctx, inputs, output):
    logits, x, continuous, per_element, backend = inputs
    # The inputs only: the backward recomputes everything from them.
    ctx.save_for_backward(logits, x)
    ctx.continuous, ctx.backend = continuous, backend
    ctx.set_materialize_grads(False)


def _bernoulli_backward(ctx, grad_nll):
    logits, x = ctx.saved_tensors
    logits_grad, x_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_nll is None or not (logits_grad or x_grad):
        return None, None, None, None, None
    grad_logits, grad_x = fused_call(_bernoulli_nll_bwd, grad_nll, logits, x, ctx.continuous, logits_grad, x_grad,
                                     ctx.backend)
    return grad_logits if logits_grad else None, grad_x if x_grad else None, None, None, None


_bernoulli_nll_fwd.register_autograd(_bernoulli_backward, setup_context=_bernoulli_setup_context)
_bernoulli_nll_bwd.register_autograd(
    no_double_backward("bernoulli_nll / continuous_bernoulli_nll"), setup_context=lambda ctx, inputs, output: None
)


# --------------------------------------------------------------------------------------
# Custom ops: Gaussian
# --------------------------------------------------------------------------------------


@torch.library.custom_op("fastvae::gaussian_nll_fwd", mutates_args=())
def _gaussian_nll_fwd(
    mean: Tensor,
    x: Tensor,
    logvar: Optional[Tensor],
    logvar_value: float,
    per_element: bool,
    backend: str,
) -> Tensor:
    """The nll, float32: per element, or per sample [B].  logvar: a tensor broadcastable to
    mean's shape, or None for the number ``logvar_value``."""
    nll = _nll_outputs(mean, per_element)
    kernel_module(backend, "likelihood").gaussian_nll_fwd(mean.contiguous(), x.contiguous(), logvar, logvar_value,
                                                          per_element, nll=nll)
    return nll


@_gaussian_nll_fwd.register_fake
def _(mean, x, logvar, logvar_value, per_element, backend):
    return _nll_outputs(mean, per_element)


def _gaussian_nll_bwd_outputs(mean: Tensor, x: Tensor, logvar: Optional[Tensor], mean_grad: bool, x_grad: bool,
                              logvar_grad: bool):
    """The outputs of ``gaussian_nll_bwd``, allocated: grad_mean and grad_x, each
    contiguous in its input's shape and dtype; grad_logvar per element of mean's shape
    (summed to logvar's shape afterwards), in logvar's dtype when it is full-size and
    float32 when it is broadcast; each None unless asked for."""
    grad_logvar = None
    if logvar_grad and logvar is not None:
        dtype = logvar.dtype if logvar.shape == mean.shape else torch.float32
        grad_logvar = mean.new_empty(tuple(mean.shape), dtype=dtype)
    return _input_grad(mean, mean_grad), _input_grad(x, x_grad), grad_logvar


@torch.library.custom_op("fastvae::gaussian_nll_bwd", mutates_args=())
def _gaussian_nll_bwd(
    grad_nll: Tensor,
    mean: Tensor,
    x: Tensor,
    logvar: Optional[Tensor],
    logvar_value: float,
    mean_grad: bool,
    x_grad: bool,
    logvar_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_mean, grad_x, grad_logvar); grad_logvar per element of mean's shape (summed
    to logvar's shape by the caller); each empty when not asked for."""
    grad_mean, grad_x, grad_logvar = outputs = _gaussian_nll_bwd_outputs(mean, x, logvar, mean_grad, x_grad,
                                                                         logvar_grad)
    kernel_module(backend, "likelihood").gaussian_nll_bwd(
        grad_nll.contiguous(), mean.contiguous(), x.contiguous(), logvar, logvar_value,
        grad_mean=grad_mean, grad_x=grad_x, grad_logvar=grad_logvar,
    )
    return fill_absent(outputs, mean)


@_gaussian_nll_bwd.register_fake
def _(grad_nll, mean, x, logvar, logvar_value, mean_grad, x_grad, logvar_grad, backend):
    return fill_absent(_gaussian_nll_bwd_outputs(mean, x, logvar, mean_grad, x_grad, logvar_grad), mean)


def _gaussian_setup_context(ctx, inputs, output):
    mean, x, logvar, logvar_value, per_element, backend = inputs
    # The inputs only: the backward recomputes everything from them.
    ctx.save_for_backward(mean, x, logvar)
    ctx.logvar_value, ctx.backend = logvar_value, backend
    ctx.set_materialize_grads(False)


def _gaussian_backward(ctx, grad_nll):
    mean, x, logvar = ctx.saved_tensors
    mean_grad, x_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    logvar_grad = logvar is not None and ctx.needs_input_grad[2]
    if grad_nll is None or not (mean_grad or x_grad or logvar_grad):
        return None, None, None, None, None, None
    grad_mean, grad_x, grad_logvar = fused_call(
        _gaussian_nll_bwd, grad_nll, mean, x, logvar, ctx.logvar_value, mean_grad, x_grad, logvar_grad, ctx.backend
    )
    # A broadcast logvar's gradient is the sum over its broadcast dimensions (a torch
    # reduction: fixed order, so bitwise repeatable).
    if logvar_grad:
        grad_logvar = grad_logvar.sum_to_size(logvar.shape).to(logvar.dtype)
    return (
        grad_mean if mean_grad else None,
        grad_x if x_grad else None,
        grad_logvar if logvar_grad else None,
        None, None, None,
    )


_gaussian_nll_fwd.register_autograd(_gaussian_backward, setup_context=_gaussian_setup_context)
_gaussian_nll_bwd.register_autograd(no_double_backward("gaussian_nll"), setup_context=lambda ctx, inputs, output: None)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _check_binary_target(op: str, x, logits: Tensor) -> None:
    """x of a Bernoulli likelihood: logits' shape, float in [0, 1] or bool/uint8 0/1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fastvae.{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES + BINARY_DTYPES:
        raise TypeError(
            f"fastvae.{op}: x must be a floating tensor with values in [0, 1], or a bool or uint8 "
            f"tensor of 0/1 values, got {x.dtype}"
        )
    check_same_shape(op, "x", x, "logits", logits)


def _check_unit_interval(op: str, x: Tensor) -> None:
    """Value check (syncs): x in [0, 1] (NaN refused), only when value checks are active."""
    if not value_checks_active() or x.numel() == 0 or x.dtype == torch.bool:
        return
    inside = (x >= 0) & (x <= 1)
    if not bool(inside.all()):
        outside = x[~inside]
        raise ValueError(
            f"fastvae.{op}: x must lie in [0, 1] (soft targets allowed); found {outside.numel()} "
            f"value(s) outside it or NaN, e.g. {outside[0].item()}"
        )


def _check_bernoulli_args(op: str, logits, x) -> None:
    check_float_tensor(op, "logits", logits, min_dim=1)
    _check_binary_target(op, x, logits)
    check_same_device(op, [("logits", logits), ("x", x)])
    check_finite(op, "logits", logits)
    _check_unit_interval(op, x)


def _check_logvar(op: str, logvar, ref_name: str, ref: Tensor) -> Optional[Tensor]:
    """logvar: a Python number or a float tensor broadcastable to ``ref``.  Returns the
    tensor, or None for a number."""
    if isinstance(logvar, torch.Tensor):
        check_float_tensor(op, "logvar", logvar)
        check_broadcastable_to(op, "logvar", logvar, ref_name, ref)
        return logvar
    if isinstance(logvar, bool) or not isinstance(logvar, numbers.Real):
        raise TypeError(
            f"fastvae.{op}: logvar must be a Python number or a tensor broadcastable to {ref_name}, "
            f"got {type(logvar).__name__}"
        )
    if value_checks_active() and not math.isfinite(logvar):
        raise ValueError(f"fastvae.{op}: logvar must be finite, got {logvar}")
    return None


def _check_gaussian_args(op: str, mean, x, logvar) -> Optional[Tensor]:
    check_float_tensor(op, "mean", mean, min_dim=1)
    check_float_tensor(op, "x", x)
    check_same_shape(op, "x", x, "mean", mean)
    logvar_tensor = _check_logvar(op, logvar, "mean", mean)
    check_same_device(op, [("mean", mean), ("x", x), ("logvar", logvar_tensor)])
    for name, tensor in (("mean", mean), ("x", x), ("logvar", logvar_tensor)):
        if tensor is not None:
            check_finite(op, name, tensor)
    return logvar_tensor


def _float_target(x: Tensor) -> Optional[Tensor]:
    """x when it takes part in the dtype promotion (a float x), else None."""
    return x if x.is_floating_point() else None


def _kernel_target(x: Tensor) -> Tensor:
    # A bool tensor is read by the kernels as its bytes (0/1).
    return x.view(torch.uint8) if x.dtype == torch.bool else x


def _bernoulli_family_nll(op: str, logits, x, reduction: str, continuous: bool) -> Tensor:
    _check_bernoulli_args(op, logits, x)
    check_reduction(op, reduction)
    backend = pick_backend(op, logits.device, promoted_dtype(logits, _float_target(x)))
    if backend == "torch":
        if continuous:
            return reference.continuous_bernoulli_nll(logits, x, reduction)
        return reference.bernoulli_nll(logits, x, reduction)
    nll = fused_call(_bernoulli_nll_fwd, logits, _kernel_target(x), continuous, reduction == "none", backend)
    return reference.reduce(nll, reduction)


# --------------------------------------------------------------------------------------
# Public ops: negative log-likelihoods
# --------------------------------------------------------------------------------------


def bernoulli_nll(logits: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
    r"""Negative log-likelihood of x under Bernoulli(σ(logits)), fused in one pass.

    Per element: softplus(l) − x·l, i.e. ``F.binary_cross_entropy_with_logits(logits, x,
    reduction='none')``, exact for soft targets too.

    Args:
        logits: the decoder's logits l, shape [B, ...] (float32, bfloat16, float16 or
            float64).
        x: the data, logits' shape: floats in [0, 1] (soft targets allowed; x may require
            grad, d/dx = −l), or 0/1 values as a bool or uint8 tensor.
        reduction: 'batch' → [B] (sum over all but the batch), 'none' → per element,
            'sum' → scalar, 'mean' → batch mean of the per-sample sums.

    Returns:
        The nll in nats, float32 (float64 for float64 inputs).

    Example::

        >>> logits = decoder(z)                          # [B, 784]
        >>> nll = fastvae.bernoulli_nll(logits, x)       # [B]
        >>> loss = (nll + kl).mean()
    """
    return _bernoulli_family_nll("bernoulli_nll", logits, x, reduction, continuous=False)


def continuous_bernoulli_nll(logits: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
    r"""Negative log-likelihood of x under the continuous Bernoulli CB(σ(logits))
    (Loaiza-Ganem & Cunningham 2019), fused in one pass.

    Per element: softplus(l) − x·l − log C(l), with the normalizer written in the logits,
    log C = log(l / tanh(l/2)), stable for any l (torch.distributions clamps its
    probabilities and loses it for |l| ≳ 17), and its Taylor series
    log 2 + l²/12 − 7·l⁴/1440 for |l| < ``fastvae.reference.CB_TAYLOR_THRESHOLD``.

    Args:
        logits: the decoder's logits l, shape [B, ...] (float32, bfloat16, float16 or
            float64).
        x: the data, logits' shape: floats in [0, 1] (x may require grad, d/dx = −l), or
            0/1 values as a bool or uint8 tensor.
        reduction: 'batch' → [B], 'none' → per element, 'sum' → scalar, 'mean' → batch
            mean of the per-sample sums.

    Returns:
        The nll in nats (may be negative: a density), float32 (float64 for float64 inputs).

    Example::

        >>> nll = fastvae.continuous_bernoulli_nll(decoder(z), x)   # x in [0, 1]
    """
    return _bernoulli_family_nll("continuous_bernoulli_nll", logits, x, reduction, continuous=True)


def gaussian_nll(mean: Tensor, x: Tensor, logvar: Union[float, Tensor] = 0.0, reduction: str = "batch") -> Tensor:
    r"""Negative log-likelihood of x under N(mean, e^logvar), fused in one pass.

    Per element: ½·(log 2π + logvar + (x − mean)²·e^(−logvar)), i.e.
    ``-Normal(mean, (0.5 * logvar).exp()).log_prob(x)``.

    Args:
        mean: the decoder's mean, shape [B, ...] (float32, bfloat16, float16 or float64).
        x: the data, mean's shape, floating (it may require grad).
        logvar: the log-variance: a Python number (0.0, the default, is unit variance), a
            tensor broadcastable to mean's shape (e.g. a learned per-channel
            [1, C, 1, 1]; its gradient is summed to its shape), or full-size.
        reduction: 'batch' → [B], 'none' → per element, 'sum' → scalar, 'mean' → batch
            mean of the per-sample sums.

    Returns:
        The nll in nats, float32 (float64 for float64 inputs).

    Example::

        >>> log_sigma2 = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
        >>> nll = fastvae.gaussian_nll(decoder(z), x, logvar=log_sigma2)   # [B]
    """
    op = "gaussian_nll"
    logvar_tensor = _check_gaussian_args(op, mean, x, logvar)
    check_reduction(op, reduction)
    backend = pick_backend(op, mean.device, promoted_dtype(mean, x, logvar_tensor))
    if backend == "torch":
        return reference.gaussian_nll(mean, x, logvar, reduction)
    logvar_value = 0.0 if logvar_tensor is not None else float(logvar)
    nll = fused_call(_gaussian_nll_fwd, mean, x, logvar_tensor, logvar_value, reduction == "none", backend)
    return reference.reduce(nll, reduction)


def bits_per_dim(nll: Tensor, x: Tensor) -> Tensor:
    r"""Turn a negative log-likelihood in nats per sample into bits per dimension:
    nll / (ln 2 · D), D the number of elements of one sample of x (``x[0].numel()``).

    Args:
        nll: nats per sample, [B] (from ``reduction='batch'``), or a scalar (their mean or
            sum), floating; ``fastvae.set_validate_args(True)`` refuses NaN and ±inf.
        x: the data the nll is of, shape [B, ...] (any dtype; only its shape is read).

    Returns:
        Bits per dimension, nll's shape and dtype (differentiable in nll).

    Example::

        >>> nll = fastvae.bernoulli_nll(logits, x, reduction="mean")
        >>> fastvae.bits_per_dim(nll, x)
    """
    op = "bits_per_dim"
    check_float_tensor(op, "nll", nll)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fastvae.{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or math.prod(x.shape[1:]) == 0:
        raise ValueError(
            f"fastvae.{op}: x must have shape [B, ...] with at least one element per sample, "
            f"got shape {tuple(x.shape)}"
        )
    # A per-element nll (reduction='none') divided by D would be off by a factor of D.
    if nll.dim() > 1 or (nll.dim() == 1 and nll.shape[0] != x.shape[0]):
        raise ValueError(
            f"fastvae.{op}: nll must be a scalar or have shape [B] = ({x.shape[0]},) (nats per sample "
            f"of x), got shape {tuple(nll.shape)}"
        )
    check_finite(op, "nll", nll)
    return reference.bits_per_dim(nll, x)


# --------------------------------------------------------------------------------------
# Public helpers: samples and means (plain torch, no gradient)
# --------------------------------------------------------------------------------------


def _check_logits(op: str, logits) -> None:
    # ±inf logits are the certain outcomes (σ = 1 or 0), which the samples and means give.
    check_float_tensor(op, "logits", logits)
    check_not_nan(op, "logits", logits)


def bernoulli_sample(logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Draw x ~ Bernoulli(σ(logits)), elementwise: x = 1 where u < σ(l), u ~ U[0, 1).

    Args:
        logits: the logits l, any shape (float32, bfloat16, float16 or float64).
            ±inf are the certain outcomes (x = 1 and x = 0); NaN is refused under
            ``fastvae.set_validate_args(True)``.
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator).

    Returns:
        0/1 samples of logits' shape and dtype, carrying no gradient.  The uniforms are
        Philox (see :mod:`fastvae.random`), so ``torch.manual_seed`` reproduces them.

    Example::

        >>> images = fastvae.bernoulli_sample(decoder(z)).view(-1, 1, 28, 28)
    """
    op = "bernoulli_sample"
    _check_logits(op, logits)
    check_generator(op, generator, logits.device)
    seed_offset = seed_for(logits.device, generator)
    with torch.no_grad():
        dtype = reference.compute_dtype(logits)
        u = philox_uniform(seed_offset, tuple(logits.shape)).to(dtype)
        return (u < torch.sigmoid(logits.to(dtype))).to(logits.dtype)


def bernoulli_mean(logits: Tensor) -> Tensor:
    r"""The mean of Bernoulli(σ(logits)): σ(l), elementwise.

    Args:
        logits: the logits l, any shape, floating.
            ±inf are the certain outcomes (x = 1 and x = 0); NaN is refused under
            ``fastvae.set_validate_args(True)``.

    Returns:
        σ(l) of logits' shape and dtype, carrying no gradient.

    Example::

        >>> reconstruction = fastvae.bernoulli_mean(decoder(z))
    """
    op = "bernoulli_mean"
    _check_logits(op, logits)
    with torch.no_grad():
        return torch.sigmoid(logits.to(reference.compute_dtype(logits))).to(logits.dtype)


def continuous_bernoulli_sample(logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Draw x ~ CB(σ(logits)) by inversion of its CDF, elementwise.

    The density is ∝ e^(l·x) on [0, 1], so the inverse CDF at u ~ U[0, 1) is
    log1p(u·expm1(l)) / l; it is evaluated for l ≤ 0 only (no overflow), and for l > 0
    as 1 − (the inverse CDF of −l at 1 − u), the same function; l = 0 gives u.  Stable
    for any l (±100 included).

    Args:
        logits: the logits l, any shape (float32, bfloat16, float16 or float64).
            ±inf are the certain outcomes (x = 1 and x = 0); NaN is refused under
            ``fastvae.set_validate_args(True)``.
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator).

    Returns:
        Samples in [0, 1] of logits' shape and dtype, carrying no gradient (Philox
        uniforms: ``torch.manual_seed`` reproduces them).

    Example::

        >>> images = fastvae.continuous_bernoulli_sample(decoder(z))
    """
    op = "continuous_bernoulli_sample"
    _check_logits(op, logits)
    check_generator(op, generator, logits.device)
    seed_offset = seed_for(logits.device, generator)
    with torch.no_grad():
        dtype = reference.compute_dtype(logits)
        u = philox_uniform(seed_offset, tuple(logits.shape)).to(dtype)
        l = logits.to(dtype)
        positive = l > 0
        m = torch.where(positive, -l, l)  # <= 0 (or NaN)
        v = torch.where(positive, 1.0 - u, u)
        # At the ends log1p(−1) = −inf divided by m gives ±inf, which the clamp maps to the
        # right end; m = 0 (0/0) is replaced by v, the uniform it tends to.
        y = torch.where(m == 0, v, torch.log1p(v * torch.expm1(m)) / m).clamp(0.0, 1.0)
        return torch.where(positive, 1.0 - y, y).to(logits.dtype)


def continuous_bernoulli_mean(logits: Tensor) -> Tensor:
    r"""The mean of CB(σ(logits)), elementwise: 1/(1 − e^(−l)) − 1/l (= λ/(2λ − 1) +
    1/(2·artanh(1 − 2λ)) with λ = σ(l)), and its Taylor series 1/2 + l/12 − l³/720 for
    |l| < ``fastvae.reference.CB_TAYLOR_THRESHOLD``.  Stable for any l: it tends to 1/|l|
    as l → −∞ and 1 − 1/l as l → ∞.

    Args:
        logits: the logits l, any shape, floating.
            ±inf are the certain outcomes (x = 1 and x = 0); NaN is refused under
            ``fastvae.set_validate_args(True)``.

    Returns:
        The means, in (0, 1), of logits' shape and dtype, carrying no gradient.

    Example::

        >>> reconstruction = fastvae.continuous_bernoulli_mean(decoder(z))
    """
    op = "continuous_bernoulli_mean"
    _check_logits(op, logits)
    with torch.no_grad():
        l = logits.to(reference.compute_dtype(logits))
        small = l.abs() < reference.CB_TAYLOR_THRESHOLD
        safe = torch.where(small, torch.ones_like(l), l)
        exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
        taylor = 0.5 + l / 12.0 - l * l * l / 720.0
        return torch.where(small, taylor, exact).to(logits.dtype)


def _check_gaussian_helper(op: str, mean, logvar) -> Optional[Tensor]:
    check_float_tensor(op, "mean", mean)
    logvar_tensor = _check_logvar(op, logvar, "mean", mean)
    check_same_device(op, [("mean", mean), ("logvar", logvar_tensor)])
    check_finite(op, "mean", mean)
    if logvar_tensor is not None:
        check_finite(op, "logvar", logvar_tensor)
    return logvar_tensor


def gaussian_sample(
    mean: Tensor,
    logvar: Union[float, Tensor] = 0.0,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Draw x = mean + temperature · e^(logvar/2) · ε, ε ~ N(0, I).

    Args:
        mean: the mean, any shape (float32, bfloat16, float16 or float64).
        logvar: the log-variance: a Python number, or a tensor broadcastable to mean's
            shape (per channel, or full-size).  ``fastvae.set_validate_args(True)``
            refuses NaN and ±inf in mean and logvar.
        temperature: a finite number >= 0 multiplying the standard deviation (0 gives the mean).
        generator: a ``torch.Generator`` to draw the call's seed from (default: the
            device's default generator).

    Returns:
        Samples of mean's shape and dtype, carrying no gradient.  ε is Philox (element i
        at offset base + i, see :mod:`fastvae.random`), so ``torch.manual_seed``
        reproduces it.

    Example::

        >>> images = fastvae.gaussian_sample(decoder(z), logvar=log_sigma2, temperature=0.7)
    """
    op = "gaussian_sample"
    logvar_tensor = _check_gaussian_helper(op, mean, logvar)
    check_nonnegative_number(op, "temperature", temperature)
    check_generator(op, generator, mean.device)
    seed_offset = seed_for(mean.device, generator)
    with torch.no_grad():
        dtype = reference.compute_dtype(mean, logvar_tensor)
        eps = philox_normal(seed_offset, tuple(mean.shape)).to(dtype)
        if logvar_tensor is not None:
            std = torch.exp(0.5 * logvar_tensor.to(dtype))
        else:
            std = math.exp(0.5 * float(logvar))
        return (mean.to(dtype) + (float(temperature) * std) * eps).to(mean.dtype)


def gaussian_mean(mean: Tensor, logvar: Union[float, Tensor] = 0.0) -> Tensor:
    r"""The mean of N(mean, e^logvar): mean itself (logvar is accepted, and checked, for
    symmetry with :func:`gaussian_sample`).

    Args:
        mean: the mean, any shape, floating.
        logvar: a Python number or a tensor broadcastable to mean's shape (unused; as
            for :func:`gaussian_sample`, NaN and ±inf are refused under validate-args).

    Returns:
        mean, detached (no gradient).

    Example::

        >>> reconstruction = fastvae.gaussian_mean(decoder(z))
    """
    _check_gaussian_helper("gaussian_mean", mean, logvar)
    return mean.detach()
