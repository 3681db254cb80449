"""Reconstruction likelihoods on a CUDA device (marked gpu; skipped without one): every
kernel backend against the reference at benchmark sizes, a tensor past 2**31 elements
(int64 indexing), and bitwise repeatability."""
import pytest
import torch

import fastvae
from fastvae import reference
from tests.conftest import assert_close

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
GPU_BACKENDS = ["triton", "cuda"]
OPS = {
    "bernoulli": (fastvae.bernoulli_nll, reference.bernoulli_nll),
    "continuous_bernoulli": (fastvae.continuous_bernoulli_nll, reference.continuous_bernoulli_nll),
}


def present(backend):
    return torch.cuda.is_available() and backend in fastvae.backends.available(CUDA)


def require(backend, gib=0):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    if gib and torch.cuda.get_device_properties(CUDA).total_memory < gib * 2**30:
        pytest.skip(f"needs about {gib} GiB of GPU memory")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("family", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bernoulli_at_real_size(backend, family, dtype):
    require(backend)
    generator = torch.Generator(device=CUDA).manual_seed(0)
    shape = (65536, 784)
    logits = (3 * torch.randn(shape, device=CUDA, generator=generator)).to(dtype).requires_grad_()
    x = torch.rand(shape, device=CUDA, generator=generator).round().to(torch.uint8)
    op, ref = OPS[family]
    with fastvae.use_backend(backend):
        nll = op(logits, x)
    nll_ref = ref(logits, x)
    torch.testing.assert_close(nll, nll_ref, rtol=1e-4, atol=1e-3)
    grad_nll = torch.randn_like(nll)
    (grad,) = torch.autograd.grad(nll, [logits], grad_nll)
    (grad_ref,) = torch.autograd.grad(nll_ref, [logits], grad_nll)
    assert_close(grad, grad_ref, dtype, scale=4)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gaussian_at_real_size(backend, dtype):
    require(backend)
    generator = torch.Generator(device=CUDA).manual_seed(1)
    shape = (65536, 3, 32, 32)  # 65536 × 3072
    mean = torch.randn(shape, device=CUDA, generator=generator).to(dtype).requires_grad_()
    x = (mean.detach().float() + 0.5 * torch.randn(shape, device=CUDA, generator=generator)).to(dtype)
    logvar = (0.3 * torch.randn(1, 3, 1, 1, device=CUDA, generator=generator)).requires_grad_()
    with fastvae.use_backend(backend):
        nll = fastvae.gaussian_nll(mean, x, logvar)
    nll_ref = reference.gaussian_nll(mean, x, logvar)
    torch.testing.assert_close(nll, nll_ref, rtol=1e-4, atol=1e-2)
    grad_nll = torch.randn_like(nll)
    grads = torch.autograd.grad(nll, [mean, logvar], grad_nll)
    grads_ref = torch.autograd.grad(nll_ref, [mean, logvar], grad_nll)
    assert_close(grads[0], grads_ref[0], dtype, scale=4)
    torch.testing.assert_close(grads[1], grads_ref[1], rtol=1e-3, atol=1.0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("family", ["continuous_bernoulli", "gaussian"])
def test_past_two_to_the_31_elements(backend, family):
    require(backend, gib=40)
    features = 1024
    rows = 2**31 // features + 4  # 2**31 + 4096 elements
    tail = rows - 8  # rows entirely past element 2**31
    generator = torch.Generator(device=CUDA).manual_seed(2)
    params = torch.full((rows, features), 0.25, device=CUDA, dtype=torch.bfloat16)
    x = torch.full((rows, features), 0.5, device=CUDA, dtype=torch.bfloat16)
    with torch.no_grad():  # distinct values in the tail, so a wrapped index shows
        params[tail:] = (3 * torch.randn(8, features, device=CUDA, generator=generator)).to(torch.bfloat16)
        x[tail:] = torch.rand(8, features, device=CUDA, generator=generator).to(torch.bfloat16)
    params.requires_grad_()
    if family == "gaussian":
        op = lambda p, t, reduction: fastvae.gaussian_nll(p, t, -0.5, reduction)  # noqa: E731
        ref = lambda p, t, reduction: reference.gaussian_nll(p, t, -0.5, reduction)  # noqa: E731
    else:
        op, ref = fastvae.continuous_bernoulli_nll, reference.continuous_bernoulli_nll
    with fastvae.use_backend(backend):
        nll = op(params, x, "batch")
        (grad,) = torch.autograd.grad(nll.sum(), [params])
        with torch.no_grad():
            terms_tail = op(params, x, "none")[tail:].clone()
    tail_params = params.detach()[tail:].clone().requires_grad_()
    nll_ref = ref(tail_params, x[tail:], "batch")
    (grad_ref,) = torch.autograd.grad(nll_ref.sum(), [tail_params])
    torch.testing.assert_close(nll[tail:], nll_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(terms_tail, ref(tail_params.detach(), x[tail:], "none"))
    assert_close(grad[tail:], grad_ref, torch.bfloat16)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bitwise_repeatable_on_device(backend):
    require(backend)
    generator = torch.Generator(device=CUDA).manual_seed(3)
    logits = torch.randn(65536, 784, device=CUDA, generator=generator, requires_grad=True)
    x = torch.rand(65536, 784, device=CUDA, generator=generator)
    mean = torch.randn(4096, 3, 32, 32, device=CUDA, generator=generator, requires_grad=True)
    target = torch.randn(4096, 3, 32, 32, device=CUDA, generator=generator)
    logvar = torch.zeros(1, 3, 1, 1, device=CUDA, requires_grad=True)
    results = []
    with fastvae.use_backend(backend):
        for _ in range(2):
            cb = fastvae.continuous_bernoulli_nll(logits, x)
            gaussian = fastvae.gaussian_nll(mean, target, logvar)
            grads = torch.autograd.grad([cb.square().sum(), gaussian.square().sum()], [logits, mean, logvar])
            results.append((cb, gaussian) + grads)
    for first, second in zip(*results):
        assert torch.equal(first, second)
