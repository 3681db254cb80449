"""Gaussian latent ops on a CUDA device (marked gpu; skipped without one): every kernel
backend against the reference at benchmark sizes, a tensor past 2**31 elements (int64
indexing), and bitwise repeatability."""
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
@pytest.mark.parametrize("shape", [(4096, 64), (65536, 256), (262144, 512), (64, 32, 16, 16)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_sample_gaussian_at_real_sizes(backend, shape, dtype):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    generator = torch.Generator(device=CUDA).manual_seed(0)
    mu = torch.randn(shape, device=CUDA, generator=generator).to(dtype).requires_grad_()
    logvar = (0.5 * torch.randn(shape, device=CUDA, generator=generator)).to(dtype).requires_grad_()
    prior_mu = torch.randn((1,) + shape[1:], device=CUDA, generator=generator).requires_grad_()
    with fastvae.use_backend(backend):
        torch.manual_seed(1)
        z, kl = fastvae.sample_gaussian(mu, logvar, prior_mu)
    torch.manual_seed(1)
    seed_offset = draw_seed(CUDA)
    z_ref, kl_ref = reference.sample_gaussian(mu, logvar, seed_offset, prior_mu)
    assert_close(z, z_ref, dtype)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-4, atol=1e-3)
    grad_z = torch.randn_like(z)
    grad_kl = torch.randn_like(kl)
    grads = torch.autograd.grad([z, kl], [mu, logvar, prior_mu], [grad_z, grad_kl])
    grads_ref = torch.autograd.grad([z_ref, kl_ref], [mu, logvar, prior_mu], [grad_z, grad_kl])
    for grad, grad_ref in zip(grads[:2], grads_ref[:2]):
        assert_close(grad, grad_ref, dtype, scale=4)
    torch.testing.assert_close(grads[2], grads_ref[2], rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_past_two_to_the_31_elements(backend):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    features = 1024
    rows = 2**31 // features + 4  # 2**31 + 4096 elements
    if torch.cuda.get_device_properties(CUDA).total_memory < 40 * 2**30:
        pytest.skip("needs about 30 GiB of GPU memory")
    mu = torch.full((rows, features), 0.25, device=CUDA, dtype=torch.bfloat16).requires_grad_()
    logvar = torch.full((rows, features), -0.5, device=CUDA, dtype=torch.bfloat16).requires_grad_()
    with fastvae.use_backend(backend):
        torch.manual_seed(3)
        z, kl = fastvae.sample_gaussian(mu, logvar)
        z.backward(torch.ones_like(z), inputs=[logvar])
    torch.manual_seed(3)
    seed, base = draw_seed(CUDA).tolist()
    tail = rows - 8  # rows entirely past element 2**31
    offset = torch.tensor([seed, base + tail * features], device=CUDA)
    with torch.no_grad():
        z_ref, kl_ref = reference.sample_gaussian(mu[tail:], logvar[tail:], offset)
    assert_close(z[tail:], z_ref, torch.bfloat16)
    # Every term of these rows is the same KL, so the GPU's rounding does not average out
    # over a row (tests/conftest.py, "On a GPU"): ex2.approx's 2 ulp and the fused
    # multiply-adds' other order of rounding move each term by up to 2 ulps of its
    # intermediates (below 2: 2 ulps = 2**-22), halved, and the row sum by `features`
    # times that, 2.4e-4 of 86.5 nats.  torch's float32 default (rtol 1.3e-6, atol 1e-5:
    # 1.2e-4 here) allows one term-ulp per element.  (Every row holds the same inputs, so
    # a wrapped index shows in z above, whose noise follows the element's offset.)
    torch.testing.assert_close(kl[tail:], kl_ref, rtol=0, atol=features * 2 * torch.finfo(torch.float32).eps)
    eps = reference.standard_normal(offset, (8, features)).to(CUDA)
    expected_grad = (0.5 * torch.exp(torch.tensor(-0.25)) * eps).to(torch.bfloat16)
    assert_close(logvar.grad[tail:], expected_grad, torch.bfloat16)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bitwise_repeatable_on_device(backend):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    mu = torch.randn(65536, 256, device=CUDA, requires_grad=True)
    logvar = torch.randn(65536, 256, device=CUDA, requires_grad=True)
    prior_logvar = torch.zeros(1, 256, device=CUDA, requires_grad=True)
    results = []
    with fastvae.use_backend(backend):
        for _ in range(2):
            torch.manual_seed(9)
            z, kl = fastvae.sample_gaussian(mu, logvar, prior_logvar=prior_logvar, free_bits=0.1)
            grads = torch.autograd.grad([z.square().sum(), kl.sum()], [mu, logvar, prior_logvar])
            results.append((z, kl) + grads)
    for first, second in zip(*results):
        assert torch.equal(first, second)
