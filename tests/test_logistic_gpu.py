"""Discretized logistic ops on a CUDA device (marked gpu; skipped without one): every
kernel backend against the reference (in float64) at the benchmark sizes, a tensor past
2**31 elements (int64 indexing), and bitwise repeatability."""
import pytest
import torch

import fastvae
from fastvae import reference
from tests.conftest import TOLERANCES, assert_close

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
GPU_BACKENDS = ["triton", "cuda"]


def present(backend):
    return torch.cuda.is_available() and backend in fastvae.backends.available(CUDA)


def make_params(batch, num_mixtures, size, dtype, seed=0):
    """[B, 10K, size, size] in NVAE's layout: logits, then per channel means in (−1, 1),
    log-scales around −2 and raw coefficients."""
    gen = torch.Generator(device=CUDA).manual_seed(seed)
    shape = (batch, num_mixtures, size, size)
    blocks = [1.5 * torch.randn(shape, device=CUDA, generator=gen)]
    for _ in range(3):
        blocks.append(2.0 * torch.rand(shape, device=CUDA, generator=gen) - 1.0)
        blocks.append(-2.0 + 0.7 * torch.randn(shape, device=CUDA, generator=gen))
        blocks.append(torch.randn(shape, device=CUDA, generator=gen))
    return torch.cat(blocks, dim=1).to(dtype).requires_grad_()


def grad_scale(grad_ref, dtype):
    """The dtype's atol, or 1e-5 of the largest gradient (float32 conditioning; see
    tests/test_logistic.py), whichever is larger."""
    return max(1.0, 1e-5 * float(grad_ref.abs().max()) / TOLERANCES[dtype][1])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("batch,size,reduction", [(64, 32, "none"), (16, 64, "batch")], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mixture_at_benchmark_sizes(backend, batch, size, reduction, dtype):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    params = make_params(batch, 10, size, dtype)
    gen = torch.Generator(device=CUDA).manual_seed(1)
    x = torch.randint(0, 256, (batch, 3, size, size), device=CUDA, generator=gen).to(torch.uint8)
    with fastvae.use_backend(backend):
        nll = fastvae.discretized_logistic_mixture_nll(params, x, 10, reduction=reduction)
    ref_params = params.detach().double().requires_grad_()
    nll_ref = reference.discretized_logistic_mixture_nll(ref_params, x, 10, reduction=reduction)
    # Per pixel tens of nats; per sample sums of thousands of pixels.
    torch.testing.assert_close(nll.double(), nll_ref, rtol=1e-5, atol=1e-3)
    grad_out = torch.randn(nll.shape, device=CUDA, generator=gen)
    (grad,) = torch.autograd.grad(nll, params, grad_out)
    (grad_ref,) = torch.autograd.grad(nll_ref, ref_params, grad_out.double())
    assert grad.dtype == dtype
    assert_close(grad, grad_ref, dtype, scale=grad_scale(grad_ref, dtype))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_logistic_at_real_sizes(backend, dtype):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    gen = torch.Generator(device=CUDA).manual_seed(2)
    shape = (64, 3, 64, 64)
    mean = (2.0 * torch.rand(shape, device=CUDA, generator=gen) - 1.0).to(dtype).requires_grad_()
    log_scale = (-3.0 + torch.randn(shape, device=CUDA, generator=gen)).to(dtype).requires_grad_()
    x = torch.randint(0, 256, shape, device=CUDA, generator=gen).to(torch.uint8)
    with fastvae.use_backend(backend):
        nll = fastvae.discretized_logistic_nll(mean, log_scale, x)
    ref = [t.detach().double().requires_grad_() for t in (mean, log_scale)]
    nll_ref = reference.discretized_logistic_nll(*ref, x)
    torch.testing.assert_close(nll.double(), nll_ref, rtol=1e-5, atol=1e-3)
    grad_out = torch.randn(nll.shape, device=CUDA, generator=gen)
    grads = torch.autograd.grad(nll, (mean, log_scale), grad_out)
    grads_ref = torch.autograd.grad(nll_ref, ref, grad_out.double())
    for grad, grad_ref in zip(grads, grads_ref):
        assert_close(grad, grad_ref, dtype, scale=grad_scale(grad_ref, dtype))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_past_two_to_the_31_elements(backend):
    """discretized_logistic_nll on bfloat16 [rows, 1024] with 2**31 + 4096 elements: the
    last rows (entirely past element 2**31) hold their own values, so an index that
    wrapped around would read the first rows' and fail."""
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    if torch.cuda.get_device_properties(CUDA).total_memory < 40 * 2**30:
        pytest.skip("needs about 20 GiB of GPU memory")
    features = 1024
    rows = 2**31 // features + 4
    tail = rows - 8
    gen = torch.Generator(device=CUDA).manual_seed(3)
    mean = torch.full((rows, features), 0.25, device=CUDA, dtype=torch.bfloat16)
    log_scale = torch.full((rows, features), -3.0, device=CUDA, dtype=torch.bfloat16)
    x = torch.full((rows, features), 160, device=CUDA, dtype=torch.uint8)
    mean[tail:] = (2.0 * torch.rand((8, features), device=CUDA, generator=gen) - 1.0).to(torch.bfloat16)
    log_scale[tail:] = (-2.0 + torch.randn((8, features), device=CUDA, generator=gen)).to(torch.bfloat16)
    x[tail:] = torch.randint(0, 256, (8, features), device=CUDA, generator=gen).to(torch.uint8)
    mean.requires_grad_(), log_scale.requires_grad_()
    with fastvae.use_backend(backend):
        nll = fastvae.discretized_logistic_nll(mean, log_scale, x)
        grad_mean, grad_log_scale = torch.autograd.grad(nll.sum(), (mean, log_scale))
    ref = [t[tail:].detach().double().requires_grad_() for t in (mean, log_scale)]
    nll_ref = reference.discretized_logistic_nll(*ref, x[tail:])
    torch.testing.assert_close(nll[tail:].double(), nll_ref, rtol=1e-5, atol=1e-3)
    grads_ref = torch.autograd.grad(nll_ref.sum(), ref)
    for grad, grad_ref in zip((grad_mean[tail:], grad_log_scale[tail:]), grads_ref):
        assert_close(grad, grad_ref, torch.bfloat16, scale=grad_scale(grad_ref, torch.bfloat16))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bitwise_repeatable_on_device(backend):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    params = make_params(64, 10, 32, torch.float32)
    x = torch.randint(0, 256, (64, 3, 32, 32), device=CUDA).to(torch.uint8)
    results = []
    with fastvae.use_backend(backend):
        for _ in range(2):
            nll = fastvae.discretized_logistic_mixture_nll(params, x, 10)
            per_pixel = fastvae.discretized_logistic_mixture_nll(params, x, 10, reduction="none")
            results.append((nll, per_pixel) + torch.autograd.grad(nll.sum() + per_pixel.square().sum(), params))
    for first, second in zip(*results):
        assert torch.equal(first, second)
