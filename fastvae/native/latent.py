"""Native launchers of the Gaussian latent family (csrc/cpu/latent.cpp, csrc/cuda/latent.cu),
with the signatures of :mod:`fastvae.kernels.latent`'s."""
from __future__ import annotations

import math

import torch

from fastvae.row_sums import sum_partials_into

from . import (address, cast_into_output, dtype_code, gaussian_dtypes, output_dtype_code, prior_layout_args,
               written_buffer)

LAUNCHERS = ("gaussian_latent_fwd", "gaussian_latent_bwd", "backward_reads_sample")
KL_MODE_CODES = {"none": 0, "element": 1, "row": 2}


def _features(mu) -> int:
    """Elements per sample of mu [B, ...] (from the shape: no indexing on the hot path)."""
    return math.prod(mu.shape[1:])


def gaussian_latent_fwd(native, mu, logvar, prior_mu, prior_logvar, seed_offset, kl_mode: str, z, kl):
    """As :func:`fastvae.kernels.latent.gaussian_latent_fwd`: writes z and kl."""
    batch, features = mu.shape[0], _features(mu)
    z_dtype = z.dtype if z is not None else torch.promote_types(mu.dtype, logvar.dtype)
    mu, logvar, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype)
    row_partials = native.constant("LATENT_ROW_PARTIAL_WIDTH")
    row_partials = -(-features // row_partials) if row_partials else 1
    kl_partials = kl
    if kl_mode == "row" and row_partials > 1:
        kl_partials = torch.zeros((batch, row_partials), dtype=torch.float32, device=mu.device)
    elif kl_mode == "row" and not features:
        kl.zero_()  # a sample of no elements has no KL (one partial per row: kl itself)
    if batch and features:
        prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(prior_mu, prior_logvar, mu.shape)
        native.launch(
            "gaussian_latent_fwd", mu.device,
            address(mu), address(logvar), address(prior_mu), address(prior_logvar),
            address(seed_offset) if z is not None else 0, address(z), address(kl_partials),
            batch, features, max(row_partials, 1), prior_mu_layout, prior_logvar_layout, sizes,
            dtype_code(z_dtype, "sample_gaussian"), dtype_code(prior_dtype, "sample_gaussian"), KL_MODE_CODES[kl_mode],
        )
    if kl_partials is not kl:
        sum_partials_into(kl, kl_partials)


def backward_reads_sample(native, z_dtype: torch.dtype) -> bool:
    """Whether the backward takes z (see :func:`fastvae.kernels.latent.backward_reads_sample`).

    On the CPU, yes for float32: the ten rounds of 32-bit products of Philox are most of
    a backward that regenerates ε, while reading z costs one load.  In float32, z − mu is
    σ·ε up to half an ulp of z; a bfloat16 or float16 z would lose most of σ·ε's bits
    where |mu| ≫ σ, so those regenerate ε.  The CUDA kernel always regenerates: on a GPU
    the op is memory-bound, and Philox hides under its memory traffic."""
    return native.name == "cpu" and z_dtype == torch.float32


def gaussian_latent_bwd(native, grad_z, grad_kl, mu, logvar, prior_mu, prior_logvar, seed_offset, z,
                        grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar):
    """As :func:`fastvae.kernels.latent.gaussian_latent_bwd`: writes the gradients, each
    prior's in its own dtype.  z: the forward's sample when :func:`backward_reads_sample`,
    else None."""
    batch, features = mu.shape[0], _features(mu)
    if not (batch and features):
        return
    z_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    mu_c, logvar_c, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype)
    if grad_z is not None and grad_z.dtype != z_dtype:
        grad_z = grad_z.to(z_dtype)
    # The C++ writes grad_mu and grad_logvar in the dtype it reads mu and logvar in.
    grad_mu_written, grad_logvar_written = written_buffer(grad_mu, z_dtype), written_buffer(grad_logvar, z_dtype)
    prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(
        prior_mu, prior_logvar, mu.shape
    )
    op = "sample_gaussian"
    native.launch(
        "gaussian_latent_bwd", mu.device,
        mu=address(mu_c), logvar=address(logvar_c), prior_mu=address(prior_mu), prior_logvar=address(prior_logvar),
        seed_offset=address(seed_offset) if grad_z is not None and z is None else 0,
        z=address(z) if grad_z is not None else 0, grad_z=address(grad_z), grad_kl=address(grad_kl),
        grad_mu=address(grad_mu_written), grad_logvar=address(grad_logvar_written),
        grad_prior_mu=address(grad_prior_mu), grad_prior_logvar=address(grad_prior_logvar),
        batch=batch, features=features, prior_mu_layout=prior_mu_layout, prior_logvar_layout=prior_logvar_layout,
        sizes=sizes, dtype=dtype_code(z_dtype, op), prior_dtype=dtype_code(prior_dtype, op),
        grad_prior_mu_dtype=output_dtype_code(grad_prior_mu, op),
        grad_prior_logvar_dtype=output_dtype_code(grad_prior_logvar, op),
        grad_kl_per_element=grad_kl is not None and grad_kl.shape == mu.shape,
    )
    cast_into_output(grad_mu, grad_mu_written)
    cast_into_output(grad_logvar, grad_logvar_written)
