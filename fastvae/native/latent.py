"""Native launchers of the Gaussian latent family (csrc/cpu/latent.cpp, csrc/cuda/latent.cu),
with the signatures of :mod:`fastvae.kernels.latent`'s."""
from __future__ import annotations

import torch

from . import address, dtype_code, gaussian_dtypes, prior_layout_args

LAUNCHERS = ("gaussian_latent_fwd", "gaussian_latent_bwd", "backward_reads_sample")
KL_MODE_CODES = {"none": 0, "element": 1, "row": 2}


def gaussian_latent_fwd(native, mu, logvar, prior_mu, prior_logvar, seed_offset, sample: bool, kl_mode: str, z_dtype):
    """As :func:`fastvae.kernels.latent.gaussian_latent_fwd`."""
    batch = mu.shape[0]
    features = mu[0].numel() if batch else int(torch.Size(mu.shape[1:]).numel())
    mu, logvar, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype)
    z = torch.empty(mu.shape, dtype=z_dtype, device=mu.device) if sample else None
    row_partials = native.constant("LATENT_ROW_PARTIAL_WIDTH")
    row_partials = -(-features // row_partials) if row_partials else 1
    kl = None
    if kl_mode == "element":
        kl = torch.empty(mu.shape, dtype=torch.float32, device=mu.device)
    elif kl_mode == "row":
        kl = torch.zeros((batch, max(row_partials, 1)), dtype=torch.float32, device=mu.device)
    if batch and features:
        prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(prior_mu, prior_logvar, mu.shape)
        native.launch(
            "gaussian_latent_fwd", mu.device,
            address(mu), address(logvar), address(prior_mu), address(prior_logvar),
            address(seed_offset) if sample else 0, address(z), address(kl),
            batch, features, row_partials, prior_mu_layout, prior_logvar_layout, sizes,
            dtype_code(z_dtype, "sample_gaussian"), dtype_code(prior_dtype, "sample_gaussian"), KL_MODE_CODES[kl_mode],
        )
    if kl_mode == "row":
        # Partial sums per column chunk, added in float64 in a fixed order (one float32
        # rounding at the end, however many partials): bitwise repeatable.
        kl = kl[:, 0].contiguous() if kl.shape[1] == 1 else kl.sum(dim=1, dtype=torch.float64).float()
    return z, kl


def backward_reads_sample(native, z_dtype: torch.dtype) -> bool:
    """Whether the backward takes z (see :func:`fastvae.kernels.latent.backward_reads_sample`).

    On the CPU, yes for float32: the ten rounds of 32-bit products of Philox are most of
    a backward that regenerates ε, while reading z costs one load.  In float32, z − mu is
    σ·ε up to half an ulp of z; a bfloat16 or float16 z would lose most of σ·ε's bits
    where |mu| ≫ σ, so those regenerate ε.  The CUDA kernel always regenerates: on a GPU
    the op is memory-bound, and Philox hides under its memory traffic."""
    return native.name == "cpu" and z_dtype == torch.float32


def gaussian_latent_bwd(native, grad_z, grad_kl, mu, logvar, prior_mu, prior_logvar, seed_offset, z,
                        prior_mu_grad: bool, prior_logvar_grad: bool):
    """As :func:`fastvae.kernels.latent.gaussian_latent_bwd`; the prior gradients come back
    per element in float32.  z: the forward's sample when :func:`backward_reads_sample`,
    else None."""
    batch = mu.shape[0]
    features = mu[0].numel() if batch else int(torch.Size(mu.shape[1:]).numel())
    grad_dtypes = (mu.dtype, logvar.dtype)
    z_dtype = torch.promote_types(mu.dtype, logvar.dtype)
    mu_c, logvar_c, prior_mu, prior_logvar, prior_dtype = gaussian_dtypes(mu, logvar, prior_mu, prior_logvar, z_dtype)
    if grad_z is not None and grad_z.dtype != z_dtype:
        grad_z = grad_z.to(z_dtype)
    grad_mu = torch.empty(mu.shape, dtype=z_dtype, device=mu.device)
    grad_logvar = torch.empty(mu.shape, dtype=z_dtype, device=mu.device)
    wants_prior = grad_kl is not None
    grad_prior_mu = torch.empty(mu.shape, dtype=torch.float32, device=mu.device) if prior_mu_grad and wants_prior else None
    grad_prior_logvar = (
        torch.empty(mu.shape, dtype=torch.float32, device=mu.device) if prior_logvar_grad and wants_prior else None
    )
    if batch and features:
        prior_mu, prior_logvar, prior_mu_layout, prior_logvar_layout, sizes = prior_layout_args(prior_mu, prior_logvar, mu.shape)
        native.launch(
            "gaussian_latent_bwd", mu.device,
            address(mu_c), address(logvar_c), address(prior_mu), address(prior_logvar),
            address(seed_offset) if grad_z is not None and z is None else 0,
            address(z) if grad_z is not None else 0, address(grad_z), address(grad_kl),
            address(grad_mu), address(grad_logvar), address(grad_prior_mu), address(grad_prior_logvar),
            batch, features, prior_mu_layout, prior_logvar_layout, sizes,
            dtype_code(z_dtype, "sample_gaussian"), dtype_code(prior_dtype, "sample_gaussian"),
            grad_kl is not None and grad_kl.shape == mu.shape,
        )
    return grad_mu.to(grad_dtypes[0]), grad_logvar.to(grad_dtypes[1]), grad_prior_mu, grad_prior_logvar
