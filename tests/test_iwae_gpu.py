"""IWAE ops on a CUDA device (marked gpu; skipped without one): real sizes against the
reference, a tensor past 2**31 elements (int64 indexing), bitwise repeatability."""
import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.random import draw_seed
from tests.conftest import assert_close

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
GPU_BACKENDS = ["triton", "cuda"]


def present(backend):
    return torch.cuda.is_available() and backend in fastvae.backends.available(CUDA)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_sample_gaussian_k_and_bound_at_real_sizes(backend, dtype):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    generator = torch.Generator(device=CUDA).manual_seed(0)
    mu = torch.randn(4096, 64, device=CUDA, generator=generator).to(dtype).requires_grad_()
    logvar = (0.5 * torch.randn(4096, 64, device=CUDA, generator=generator)).to(dtype).requires_grad_()
    log_px_z = torch.randn(64, 4096, device=CUDA, generator=generator).requires_grad_()
    with fastvae.use_backend(backend):
        torch.manual_seed(1)
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 64)
        bound = fastvae.iwae_bound(log_px_z, log_p, log_q)
    torch.manual_seed(1)
    z_ref, log_q_ref, log_p_ref = reference.sample_gaussian_k(mu, logvar, 64, draw_seed(CUDA))
    bound_ref = reference.iwae_bound(log_px_z, log_p_ref, log_q_ref)
    assert_close(z, z_ref, dtype)
    torch.testing.assert_close(log_q, log_q_ref, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(bound, bound_ref, rtol=1e-4, atol=1e-2)
    grad_bound = torch.randn_like(bound)
    grads = torch.autograd.grad(bound, [mu, logvar, log_px_z], grad_bound)
    grads_ref = torch.autograd.grad(bound_ref, [mu, logvar, log_px_z], grad_bound)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad.float(), grad_ref.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_past_two_to_the_31_elements(backend):
    """z of [K, B, D] with more than 2**31 elements: its tail matches the reference."""
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    if torch.cuda.get_device_properties(CUDA).total_memory < 40 * 2**30:
        pytest.skip("needs about 20 GiB of GPU memory")
    num_samples, features = 2, 1024
    batch = 2**30 // features + 4  # K·B·D = 2**31 + 8192
    mu = torch.full((batch, features), 0.5, device=CUDA, dtype=torch.bfloat16)
    logvar = torch.full((batch, features), -1.0, device=CUDA, dtype=torch.bfloat16)
    with fastvae.use_backend(backend):
        torch.manual_seed(3)
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, num_samples)
    torch.manual_seed(3)
    seed, base = draw_seed(CUDA).tolist()
    tail = batch - 8  # the last rows of sample k = 1 lie past element 2**31
    offset = torch.tensor([seed, base + (batch + tail) * features], device=CUDA)
    z_tail, log_q_tail, log_p_tail = reference.sample_gaussian_k(mu[tail:], logvar[tail:], 1, offset)
    assert_close(z[1, tail:], z_tail[0], torch.bfloat16)
    torch.testing.assert_close(log_q[1, tail:], log_q_tail[0], rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(log_p[1, tail:], log_p_tail[0], rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bitwise_repeatable_on_device(backend):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    mu = torch.randn(2048, 128, device=CUDA, requires_grad=True)
    logvar = torch.randn(2048, 128, device=CUDA, requires_grad=True)
    results = []
    with fastvae.use_backend(backend):
        for _ in range(2):
            torch.manual_seed(9)
            z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 16)
            bound = fastvae.iwae_bound(-z.square().sum(-1), log_p, log_q)
            results.append((z, bound) + torch.autograd.grad(bound.sum(), [mu, logvar]))
    for first, second in zip(*results):
        assert torch.equal(first, second)
