"""Native launchers of the IWAE family (csrc/cpu/iwae.cpp, csrc/cuda/iwae.cu), with the
signatures and return conventions of :mod:`fastvae.kernels.iwae`'s."""
from __future__ import annotations

import math

import torch

from . import address, dtype_code, gaussian_dtypes, prior_layout_args

LAUNCHERS = (
    "sample_gaussian_k_fwd", "sample_gaussian_k_bwd",
    "log_mean_exp_fwd", "log_mean_exp_bwd",
    "iwae_bound_fwd", "iwae_bound_bwd",
)


def _features(mu: torch.Tensor) -> int:
    return int(torch.Size(mu.shape[1:]).numel())


def sample_gaussian_k_fwd(native, mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples: int, z_dtype):
    """As :func:`fastvae.kernels.iwae.sample_gaussian_k_fwd`: (z [K, B, *inner] of
    ``z_dtype``, log_q [K, B] float32, log_p [K, B] float32)."""
    batch, features = mu.shape[0], _features(mu)
    num_rows = num_samples * batch
    z = torch.empty((num_samples,) + tuple(mu.shape), dtype=z_dtype, device=mu.device)
    if num_rows == 0 or features == 0:
        log_q = torch.zeros((num_samples, batch), dtype=torch.float32, device=mu.device)
        return z, log_q, log_q.clone()
    mu, logvar, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype)
    width = native.constant("SAMPLE_GAUSSIAN_K_ROW_PARTIAL_WIDTH")
    row_partials = -(-features // width) if width else 1
    log_q = torch.empty((num_rows, row_partials), dtype=torch.float32, device=mu.device)
    log_p = torch.empty((num_rows, row_partials), dtype=torch.float32, device=mu.device)
    prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(prior_mu, prior_logvar, mu.shape)
    native.launch(
        "sample_gaussian_k_fwd", mu.device,
        address(mu), address(logvar), address(prior_mu), address(prior_logvar), address(seed_offset),
        address(z), address(log_q), address(log_p),
        num_samples, batch, features, row_partials, prior_mu_layout, prior_logvar_layout, sizes,
        dtype_code(z_dtype, "sample_gaussian_k"), dtype_code(prior_dtype, "sample_gaussian_k"),
    )
    # Partial sums per column chunk, added in float64 in a fixed order (one float32 rounding
    # at the end, however many partials): bitwise repeatable.
    if row_partials == 1:
        log_q, log_p = log_q[:, 0], log_p[:, 0]
    else:
        log_q, log_p = log_q.sum(dim=1, dtype=torch.float64).float(), log_p.sum(dim=1, dtype=torch.float64).float()
    return z, log_q.reshape(num_samples, batch), log_p.reshape(num_samples, batch)


def sample_gaussian_k_bwd(native, grad_z, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset,
                          num_samples: int, prior_mu_grad: bool, prior_logvar_grad: bool):
    """As :func:`fastvae.kernels.iwae.sample_gaussian_k_bwd`: (grad_mu, grad_logvar,
    grad_prior_mu, grad_prior_logvar), summed over the K samples; the prior gradients per
    element of mu's shape (float32 unless the prior is full-size, then its dtype), None
    unless asked for (and log_p has a gradient)."""
    batch, features = mu.shape[0], _features(mu)
    z_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    wants_prior = grad_log_p is not None
    # The C++ writes prior gradients in float32; a full-size prior's comes back in its dtype.
    prior_grad_dtypes = [
        (prior.dtype if prior.shape == mu.shape else torch.float32) if wanted and wants_prior else None
        for prior, wanted in ((prior_mu, prior_mu_grad), (prior_logvar, prior_logvar_grad))
    ]
    grad_prior_mu, grad_prior_logvar = (
        torch.empty(mu.shape, dtype=torch.float32, device=mu.device) if dtype is not None else None
        for dtype in prior_grad_dtypes
    )
    if batch == 0 or features == 0:
        grad_mu, grad_logvar = torch.empty_like(mu), torch.empty_like(logvar)
    else:
        mu_c, logvar_c, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype)
        if grad_z is not None and grad_z.dtype != z_dtype:
            grad_z = grad_z.to(z_dtype)
        # Gradients of float32 outputs; cast only under an unusual caller.
        grad_log_q = grad_log_q.float() if grad_log_q is not None else None
        grad_log_p = grad_log_p.float() if grad_log_p is not None else None
        grad_mu = torch.empty(mu.shape, dtype=z_dtype, device=mu.device)
        grad_logvar = torch.empty(mu.shape, dtype=z_dtype, device=mu.device)
        prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(
            prior_mu, prior_logvar, mu.shape
        )
        needs_noise = grad_z is not None or grad_log_p is not None
        native.launch(
            "sample_gaussian_k_bwd", mu.device,
            address(mu_c), address(logvar_c), address(prior_mu), address(prior_logvar),
            address(seed_offset) if needs_noise else 0, address(grad_z), address(grad_log_q), address(grad_log_p),
            address(grad_mu), address(grad_logvar), address(grad_prior_mu), address(grad_prior_logvar),
            num_samples, batch, features, prior_mu_layout, prior_logvar_layout, sizes,
            dtype_code(z_dtype, "sample_gaussian_k"), dtype_code(prior_dtype, "sample_gaussian_k"),
        )
        grad_mu, grad_logvar = grad_mu.to(mu.dtype), grad_logvar.to(logvar.dtype)
    if grad_prior_mu is not None:
        grad_prior_mu = grad_prior_mu.to(prior_grad_dtypes[0])
    if grad_prior_logvar is not None:
        grad_prior_logvar = grad_prior_logvar.to(prior_grad_dtypes[1])
    return grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar


def _reduced_layout(shape, dim: int) -> tuple[int, int, int]:
    """(K, M, inner) of reducing contiguous ``shape`` over ``dim``: K = shape[dim],
    inner = the product of the sizes after it, M = outer·inner."""
    num_samples = shape[dim]
    inner = int(torch.Size(shape[dim + 1:]).numel())
    outer = int(torch.Size(shape[:dim]).numel())
    return num_samples, outer * inner, inner


def _common_dtype(op: str, *tensors):
    """The C++ reads x, log_p and log_q in one dtype: cast the rare mixed case (one copy
    each).  Returns (tensors, dtype)."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    dtype_code(dtype, op)  # a clear error for a dtype the C++ does not take
    return [t if t.dtype == dtype else t.to(dtype) for t in tensors], dtype


def _log_mean_exp_fwd(native, x, log_p, log_q, dim: int, op: str):
    num_samples, columns, inner = _reduced_layout(x.shape, dim)
    out = torch.empty(tuple(x.shape[:dim]) + tuple(x.shape[dim + 1:]), dtype=torch.float32, device=x.device)
    lse_parts = torch.empty((2, columns), dtype=torch.float32, device=x.device)
    if columns == 0:
        return out, lse_parts
    inputs, dtype = _common_dtype(op, *[t for t in (x, log_p, log_q) if t is not None])
    x, log_p, log_q = inputs if log_p is not None else (inputs[0], None, None)
    native.launch(
        "log_mean_exp_fwd", x.device,
        address(x), address(log_p), address(log_q), address(out), address(lse_parts),
        num_samples, columns, inner, math.log(num_samples), dtype_code(dtype, op),
    )
    return out, lse_parts


def _log_mean_exp_bwd(native, grad_out, x, log_p, log_q, lse_parts, dim: int, wanted, op: str):
    """(grad_x, grad_log_p, grad_log_q), each in its input's dtype, None unless ``wanted``."""
    num_samples, columns, inner = _reduced_layout(x.shape, dim)
    originals = (x, log_p, log_q)
    if columns == 0 or not any(wanted):
        return tuple(torch.empty_like(t) if w else None for t, w in zip(originals, wanted))
    inputs, dtype = _common_dtype(op, *[t for t in originals if t is not None])
    x, log_p, log_q = inputs if log_p is not None else (inputs[0], None, None)
    grads = [torch.empty(x.shape, dtype=dtype, device=x.device) if w else None for w in wanted]
    grad_out = grad_out.float()  # the gradient of a float32 output: a no-op but for an unusual caller
    native.launch(
        "log_mean_exp_bwd", x.device,
        address(x), address(log_p), address(log_q), address(lse_parts), address(grad_out),
        *(address(g) for g in grads), num_samples, columns, inner, dtype_code(dtype, op),
    )
    return tuple(g.to(t.dtype) if g is not None else None for g, t in zip(grads, originals))


def log_mean_exp_fwd(native, x, dim: int):
    """As :func:`fastvae.kernels.iwae.log_mean_exp_fwd`: (out, lse_parts)."""
    return _log_mean_exp_fwd(native, x, None, None, dim, "log_mean_exp")


def log_mean_exp_bwd(native, grad_out, x, lse_parts, dim: int) -> torch.Tensor:
    """As :func:`fastvae.kernels.iwae.log_mean_exp_bwd`: grad_x, x's shape and dtype."""
    grad_x, _, _ = _log_mean_exp_bwd(native, grad_out, x, None, None, lse_parts, dim, (True, False, False),
                                     "log_mean_exp")
    return grad_x


def iwae_bound_fwd(native, log_px_z, log_p, log_q):
    """As :func:`fastvae.kernels.iwae.iwae_bound_fwd`: (bound, lse_parts)."""
    return _log_mean_exp_fwd(native, log_px_z, log_p, log_q, 0, "iwae_bound")


def iwae_bound_bwd(native, grad_bound, log_px_z, log_p, log_q, lse_parts, log_px_z_grad: bool, log_p_grad: bool,
                   log_q_grad: bool):
    """As :func:`fastvae.kernels.iwae.iwae_bound_bwd`: (grad·w, grad·w, −grad·w) for
    (log_px_z, log_p, log_q), each in its input's dtype, None unless asked for."""
    return _log_mean_exp_bwd(native, grad_bound, log_px_z, log_p, log_q, lse_parts, 0,
                             (log_px_z_grad, log_p_grad, log_q_grad), "iwae_bound")
