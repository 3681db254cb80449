"""Native launchers of the truncated-normal latent (csrc/cpu/truncated_normal.cpp,
csrc/cuda/truncated_normal.cu), with the signatures of
:mod:`fastvae.kernels.truncated_normal`'s."""
from __future__ import annotations

import math

import torch

from fastvae.row_sums import sum_partials_into

from . import address, cast_into_output, dtype_code, gaussian_dtypes, output_dtype_code, prior_layout_args, written_buffer

LAUNCHERS = ("truncated_normal_fwd", "truncated_normal_bwd")
OP = "sample_truncated_normal"


def truncated_normal_fwd(native, loc, log_scale, prior_loc, prior_log_scale, seed_offset, low: float, high: float,
                         per_element: bool, z, log_q, kl):
    """As :func:`fastvae.kernels.truncated_normal.truncated_normal_fwd`: writes z, log_q and kl."""
    batch, features = loc.shape[0], math.prod(loc.shape[1:])
    loc, log_scale, prior_loc, prior_log_scale, prior_dtype = gaussian_dtypes(loc, log_scale, prior_loc,
                                                                              prior_log_scale, z.dtype)
    width = native.constant("TRUNCATED_NORMAL_ROW_PARTIAL_WIDTH")
    row_partials = -(-features // width) if width else 1
    log_q_partials, kl_partials = log_q, kl
    if not per_element and row_partials > 1:
        log_q_partials = torch.zeros((batch, row_partials), dtype=torch.float32, device=loc.device)
        kl_partials = torch.zeros((batch, row_partials), dtype=torch.float32, device=loc.device)
    elif not per_element and not features:
        log_q.zero_()  # a sample of no elements has no log density and no KL
        kl.zero_()
    if batch and features:
        prior_loc, prior_log_scale, prior_loc_layout, prior_log_scale_layout, sizes = prior_layout_args(
            prior_loc, prior_log_scale, loc.shape)
        native.launch(
            "truncated_normal_fwd", loc.device,
            loc=address(loc), log_scale=address(log_scale), prior_loc=address(prior_loc),
            prior_log_scale=address(prior_log_scale), seed_offset=address(seed_offset), z=address(z),
            log_q=address(log_q_partials), kl=address(kl_partials), batch=batch, features=features,
            row_partials=max(row_partials, 1), prior_loc_layout=prior_loc_layout,
            prior_log_scale_layout=prior_log_scale_layout, sizes=sizes, low=float(low), high=float(high),
            dtype=dtype_code(z.dtype, OP), prior_dtype=dtype_code(prior_dtype, OP), per_element=per_element,
        )
    if log_q_partials is not log_q:
        sum_partials_into(log_q, log_q_partials)
        sum_partials_into(kl, kl_partials)


def truncated_normal_bwd(native, grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale, seed_offset,
                         low: float, high: float, grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale):
    """As :func:`fastvae.kernels.truncated_normal.truncated_normal_bwd`: writes the
    gradients, each prior's in its own dtype."""
    batch, features = loc.shape[0], math.prod(loc.shape[1:])
    if not (batch and features):
        return
    z_dtype = torch.promote_types(loc.dtype, log_scale.dtype)
    loc_c, log_scale_c, prior_loc, prior_log_scale, prior_dtype = gaussian_dtypes(loc, log_scale, prior_loc,
                                                                                  prior_log_scale, z_dtype)
    if grad_z is not None and grad_z.dtype != z_dtype:
        grad_z = grad_z.to(z_dtype)
    # The C++ writes grad_loc and grad_log_scale in the dtype it reads loc and log_scale in.
    grad_loc_written = written_buffer(grad_loc, z_dtype)
    grad_log_scale_written = written_buffer(grad_log_scale, z_dtype)
    prior_loc, prior_log_scale, prior_loc_layout, prior_log_scale_layout, sizes = prior_layout_args(
        prior_loc, prior_log_scale, loc.shape)
    per_element = any(g is not None and g.shape == loc.shape for g in (grad_log_q, grad_kl))
    native.launch(
        "truncated_normal_bwd", loc.device,
        loc=address(loc_c), log_scale=address(log_scale_c), prior_loc=address(prior_loc),
        prior_log_scale=address(prior_log_scale), seed_offset=address(seed_offset), grad_z=address(grad_z),
        grad_log_q=address(grad_log_q), grad_kl=address(grad_kl), grad_loc=address(grad_loc_written),
        grad_log_scale=address(grad_log_scale_written), grad_prior_loc=address(grad_prior_loc),
        grad_prior_log_scale=address(grad_prior_log_scale), batch=batch, features=features,
        prior_loc_layout=prior_loc_layout, prior_log_scale_layout=prior_log_scale_layout, sizes=sizes,
        low=float(low), high=float(high), dtype=dtype_code(z_dtype, OP), prior_dtype=dtype_code(prior_dtype, OP),
        grad_prior_loc_dtype=output_dtype_code(grad_prior_loc, OP),
        grad_prior_log_scale_dtype=output_dtype_code(grad_prior_log_scale, OP),
        grad_per_element=per_element,
    )
    cast_into_output(grad_loc, grad_loc_written)
    cast_into_output(grad_log_scale, grad_log_scale_written)
