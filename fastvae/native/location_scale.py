"""Native launchers of the location-scale latent family (csrc/cpu/location_scale.cpp,
csrc/cuda/location_scale.cu), with the signatures of :mod:`fastvae.kernels.location_scale`'s."""
from __future__ import annotations

import math

import torch

from fastvae.row_sums import sum_partials_into

from . import (address, cast_into_output, dtype_code, gaussian_dtypes, output_dtype_code, prior_layout_args,
               written_buffer)

LAUNCHERS = ("location_scale_fwd", "location_scale_bwd")
# csrc/include/fastvae/latent_args.h, enum KLMode.
MODE_CODES = {"element": 1, "row": 2}
OP = "sample_laplace / sample_logistic / sample_cauchy"


def _row_partials(native, features: int) -> int:
    width = native.constant("LOCATION_SCALE_ROW_PARTIAL_WIDTH")
    return max(-(-features // width), 1) if width else 1


def _partials(output, mode: str, batch: int, features: int, row_partials: int):
    """Where the C++ writes a row-summed output: [B, row_partials] partial sums when a row
    has more than one (added by :func:`sum_partials_into`), else the output itself."""
    if mode == "row" and row_partials > 1:
        return torch.zeros((batch, row_partials), dtype=torch.float32, device=output.device)
    if mode == "row" and not features:
        output.zero_()  # a sample of no elements: log q and KL sums of 0
    return output


def location_scale_fwd(native, loc, log_scale, prior_loc, prior_log_scale, seed_offset, family: int,
                       log_q_mode: str, kl_mode: str, z, log_q, kl):
    """As :func:`fastvae.kernels.location_scale.location_scale_fwd`: writes z, log_q and kl."""
    batch, features = loc.shape[0], math.prod(loc.shape[1:])
    loc, log_scale, prior_loc, prior_log_scale, prior_dtype = gaussian_dtypes(loc, log_scale, prior_loc,
                                                                              prior_log_scale, z.dtype)
    row_partials = _row_partials(native, features)
    log_q_partials = _partials(log_q, log_q_mode, batch, features, row_partials)
    kl_partials = _partials(kl, kl_mode, batch, features, row_partials)
    if batch and features:
        prior_loc, prior_log_scale, prior_loc_layout, prior_log_scale_layout, sizes = prior_layout_args(
            prior_loc, prior_log_scale, loc.shape
        )
        native.launch(
            "location_scale_fwd", loc.device,
            loc=address(loc), log_scale=address(log_scale), prior_loc=address(prior_loc),
            prior_log_scale=address(prior_log_scale), seed_offset=address(seed_offset), z=address(z),
            log_q=address(log_q_partials), kl=address(kl_partials), batch=batch, features=features,
            row_partials=row_partials, prior_loc_layout=prior_loc_layout, prior_log_scale_layout=prior_log_scale_layout,
            sizes=sizes, dtype=dtype_code(z.dtype, OP), prior_dtype=dtype_code(prior_dtype, OP), family=family,
            log_q_mode=MODE_CODES[log_q_mode], kl_mode=MODE_CODES[kl_mode],
        )
    if log_q_partials is not log_q:
        sum_partials_into(log_q, log_q_partials)
    if kl_partials is not kl:
        sum_partials_into(kl, kl_partials)


def location_scale_bwd(native, grad_z, grad_log_q, grad_kl, loc, log_scale, prior_loc, prior_log_scale, seed_offset,
                       family: int, grad_loc, grad_log_scale, grad_prior_loc, grad_prior_log_scale):
    """As :func:`fastvae.kernels.location_scale.location_scale_bwd`: writes the gradients,
    each prior's in its own dtype."""
    batch, features = loc.shape[0], math.prod(loc.shape[1:])
    if not (batch and features):
        return
    z_dtype = torch.promote_types(loc.dtype, log_scale.dtype)
    loc_c, log_scale_c, prior_loc, prior_log_scale, prior_dtype = gaussian_dtypes(loc, log_scale, prior_loc,
                                                                                  prior_log_scale, z_dtype)
    if grad_z is not None and grad_z.dtype != z_dtype:
        grad_z = grad_z.to(z_dtype)
    grad_log_q = None if grad_log_q is None else grad_log_q.to(torch.float32)
    grad_kl = None if grad_kl is None else grad_kl.to(torch.float32)
    # The C++ writes grad_loc and grad_log_scale in the dtype it reads loc and log_scale in.
    grad_loc_written = written_buffer(grad_loc, z_dtype)
    grad_log_scale_written = written_buffer(grad_log_scale, z_dtype)
    prior_loc, prior_log_scale, prior_loc_layout, prior_log_scale_layout, sizes = prior_layout_args(
        prior_loc, prior_log_scale, loc.shape
    )
    native.launch(
        "location_scale_bwd", loc.device,
        loc=address(loc_c), log_scale=address(log_scale_c), prior_loc=address(prior_loc),
        prior_log_scale=address(prior_log_scale), seed_offset=address(seed_offset), grad_z=address(grad_z),
        grad_log_q=address(grad_log_q), grad_kl=address(grad_kl), grad_loc=address(grad_loc_written),
        grad_log_scale=address(grad_log_scale_written), grad_prior_loc=address(grad_prior_loc),
        grad_prior_log_scale=address(grad_prior_log_scale), batch=batch, features=features,
        prior_loc_layout=prior_loc_layout, prior_log_scale_layout=prior_log_scale_layout, sizes=sizes,
        dtype=dtype_code(z_dtype, OP), prior_dtype=dtype_code(prior_dtype, OP),
        grad_prior_loc_dtype=output_dtype_code(grad_prior_loc, OP),
        grad_prior_log_scale_dtype=output_dtype_code(grad_prior_log_scale, OP), family=family,
        grad_log_q_per_element=grad_log_q is not None and grad_log_q.shape == loc.shape,
        grad_kl_per_element=grad_kl is not None and grad_kl.shape == loc.shape,
    )
    cast_into_output(grad_loc, grad_loc_written)
    cast_into_output(grad_log_scale, grad_log_scale_written)
