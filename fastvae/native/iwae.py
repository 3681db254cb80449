"""Native launchers of the IWAE family (csrc/cpu/iwae.cpp, csrc/cuda/iwae.cu), with the
signatures of :mod:`fastvae.kernels.iwae`'s: they write into the outputs the op allocates."""
from __future__ import annotations

import math

import torch

from fastvae.row_sums import sum_partials_into

from . import (address, cast_into_output, dtype_code, gaussian_dtypes, output_dtype_code, prior_layout_args,
               written_buffer)

LAUNCHERS = (
    "sample_gaussian_k_fwd", "sample_gaussian_k_bwd",
    "log_mean_exp_fwd", "log_mean_exp_bwd",
    "iwae_bound_fwd", "iwae_bound_bwd",
)


def _features(mu: torch.Tensor) -> int:
    return int(torch.Size(mu.shape[1:]).numel())


def sample_gaussian_k_fwd(native, mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples: int, z, log_q, log_p):
    """As :func:`fastvae.kernels.iwae.sample_gaussian_k_fwd`: writes z [K, B, *inner],
    log_q and log_p (float32 [K, B])."""
    batch, features = mu.shape[0], _features(mu)
    num_rows = num_samples * batch
    if num_rows == 0 or features == 0:
        log_q.zero_()
        log_p.zero_()
        return
    mu, logvar, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z.dtype)
    width = native.constant("SAMPLE_GAUSSIAN_K_ROW_PARTIAL_WIDTH")
    row_partials = -(-features // width) if width else 1
    log_q_partials = torch.empty((num_rows, row_partials), dtype=torch.float32, device=mu.device)
    log_p_partials = torch.empty((num_rows, row_partials), dtype=torch.float32, device=mu.device)
    prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(prior_mu, prior_logvar, mu.shape)
    native.launch(
        "sample_gaussian_k_fwd", mu.device,
        address(mu), address(logvar), address(prior_mu), address(prior_logvar), address(seed_offset),
        address(z), address(log_q_partials), address(log_p_partials),
        num_samples, batch, features, row_partials, prior_mu_layout, prior_logvar_layout, sizes,
        dtype_code(z.dtype, "sample_gaussian_k"), dtype_code(prior_dtype, "sample_gaussian_k"),
    )
    sum_partials_into(log_q, log_q_partials)
    sum_partials_into(log_p, log_p_partials)


def sample_gaussian_k_bwd(native, grad_z, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset,
                          num_samples: int, grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar):
    """As :func:`fastvae.kernels.iwae.sample_gaussian_k_bwd`: writes the gradients summed
    over the K samples, each prior's in its own dtype."""
    batch, features = mu.shape[0], _features(mu)
    if batch == 0 or features == 0:
        return
    op = "sample_gaussian_k"
    z_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    mu_c, logvar_c, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype)
    if grad_z is not None and grad_z.dtype != z_dtype:
        grad_z = grad_z.to(z_dtype)
    # Gradients of float32 outputs; cast only under an unusual caller.
    grad_log_q = grad_log_q.float() if grad_log_q is not None else None
    grad_log_p = grad_log_p.float() if grad_log_p is not None else None
    # The C++ writes grad_mu and grad_logvar in the dtype it reads mu and logvar in.
    grad_mu_written, grad_logvar_written = written_buffer(grad_mu, z_dtype), written_buffer(grad_logvar, z_dtype)
    prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(
        prior_mu, prior_logvar, mu.shape
    )
    needs_noise = grad_z is not None or grad_log_p is not None
    native.launch(
        "sample_gaussian_k_bwd", mu.device,
        mu=address(mu_c), logvar=address(logvar_c), prior_mu=address(prior_mu), prior_logvar=address(prior_logvar),
        seed_offset=address(seed_offset) if needs_noise else 0, grad_z=address(grad_z),
        grad_log_q=address(grad_log_q), grad_log_p=address(grad_log_p),
        grad_mu=address(grad_mu_written), grad_logvar=address(grad_logvar_written),
        grad_prior_mu=address(grad_prior_mu), grad_prior_logvar=address(grad_prior_logvar),
        num_samples=num_samples, batch=batch, features=features, prior_mu_layout=prior_mu_layout,
        prior_logvar_layout=prior_logvar_layout, sizes=sizes, dtype=dtype_code(z_dtype, op),
        prior_dtype=dtype_code(prior_dtype, op), grad_prior_mu_dtype=output_dtype_code(grad_prior_mu, op),
        grad_prior_logvar_dtype=output_dtype_code(grad_prior_logvar, op),
    )
    cast_into_output(grad_mu, grad_mu_written)
    cast_into_output(grad_logvar, grad_logvar_written)


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


def _log_mean_exp_fwd(native, x, log_p, log_q, dim: int, out, lse_parts, op: str):
    num_samples, columns, inner = _reduced_layout(x.shape, dim)
    if columns == 0:
        return
    inputs, dtype = _common_dtype(op, *[t for t in (x, log_p, log_q) if t is not None])
    x, log_p, log_q = inputs if log_p is not None else (inputs[0], None, None)
    native.launch(
        "log_mean_exp_fwd", x.device,
        address(x), address(log_p), address(log_q), address(out), address(lse_parts),
        num_samples, columns, inner, math.log(num_samples), dtype_code(dtype, op),
    )


def _log_mean_exp_bwd(native, grad_out, x, log_p, log_q, lse_parts, dim: int, grads, op: str):
    """Writes grads = (grad_x, grad_log_p, grad_log_q), each None when not asked for."""
    num_samples, columns, inner = _reduced_layout(x.shape, dim)
    if columns == 0 or all(g is None for g in grads):
        return
    inputs, dtype = _common_dtype(op, *[t for t in (x, log_p, log_q) if t is not None])
    x, log_p, log_q = inputs if log_p is not None else (inputs[0], None, None)
    # The C++ writes every gradient in the one dtype it reads the inputs in.
    written = [written_buffer(grad, dtype) for grad in grads]
    grad_out = grad_out.float()  # the gradient of a float32 output: a no-op but for an unusual caller
    native.launch(
        "log_mean_exp_bwd", x.device,
        address(x), address(log_p), address(log_q), address(lse_parts), address(grad_out),
        *(address(g) for g in written), num_samples, columns, inner, dtype_code(dtype, op),
    )
    for grad, buffer in zip(grads, written):
        if grad is not None:
            cast_into_output(grad, buffer)


def log_mean_exp_fwd(native, x, dim: int, out, lse_parts):
    """As :func:`fastvae.kernels.iwae.log_mean_exp_fwd`: writes out and lse_parts."""
    _log_mean_exp_fwd(native, x, None, None, dim, out, lse_parts, "log_mean_exp")


def log_mean_exp_bwd(native, grad_out, x, lse_parts, dim: int, grad_x):
    """As :func:`fastvae.kernels.iwae.log_mean_exp_bwd`: writes grad_x."""
    _log_mean_exp_bwd(native, grad_out, x, None, None, lse_parts, dim, (grad_x, None, None), "log_mean_exp")


def iwae_bound_fwd(native, log_px_z, log_p, log_q, bound, lse_parts):
    """As :func:`fastvae.kernels.iwae.iwae_bound_fwd`: writes bound and lse_parts."""
    _log_mean_exp_fwd(native, log_px_z, log_p, log_q, 0, bound, lse_parts, "iwae_bound")


def iwae_bound_bwd(native, grad_bound, log_px_z, log_p, log_q, lse_parts, grad_log_px_z, grad_log_p, grad_log_q):
    """As :func:`fastvae.kernels.iwae.iwae_bound_bwd`: writes grad·w, grad·w and −grad·w
    into the gradients of (log_px_z, log_p, log_q), each None when not asked for."""
    _log_mean_exp_bwd(native, grad_bound, log_px_z, log_p, log_q, lse_parts, 0,
                      (grad_log_px_z, grad_log_p, grad_log_q), "iwae_bound")
