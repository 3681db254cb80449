"""Diffusion ops on a CUDA device (marked gpu; skipped without one): every kernel backend
against the reference at a training step's sizes, a tensor past 2**31 elements (int64
indexing), and bitwise repeatability."""
import pytest
import torch

import fastvae
from fastvae import reference_diffusion as diffusion_reference
from fastvae.random import draw_seed
from tests.conftest import assert_close

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
GPU_BACKENDS = ["triton", "cuda"]


def present(backend):
    return torch.cuda.is_available() and backend in fastvae.backends.available(CUDA)


def inputs(shape, dtype, seed=0):
    """x ~ N(0, 1), γ over [−13, 5] (a VDM schedule's range), ε̂ ~ N(0, 1), w in [1, 2]."""
    generator = torch.Generator(device=CUDA).manual_seed(seed)
    x = torch.randn(shape, device=CUDA, generator=generator).to(dtype).requires_grad_()
    gamma = (-13.0 + 18.0 * torch.rand(shape[0], device=CUDA, generator=generator)).requires_grad_()
    eps_hat = torch.randn(shape, device=CUDA, generator=generator).to(dtype).requires_grad_()
    weight = (1.0 + torch.rand(shape[0], device=CUDA, generator=generator)).requires_grad_()
    return x, gamma, eps_hat, weight


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(4096, 784), (128, 3, 32, 32)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_at_real_sizes(backend, shape, dtype):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    x, gamma, eps_hat, weight = inputs(shape, dtype)
    with fastvae.use_backend(backend):
        torch.manual_seed(1)
        z, noise_seed = fastvae.diffuse(x, gamma)
        loss = fastvae.diffusion_loss(eps_hat, noise_seed, weight)
    torch.manual_seed(1)
    seed_offset = draw_seed(CUDA)
    assert torch.equal(seed_offset, noise_seed)
    z_ref = diffusion_reference.diffuse(x, gamma, seed_offset)
    loss_ref = diffusion_reference.diffusion_loss(eps_hat, seed_offset, weight)
    assert z.dtype == z_ref.dtype
    assert_close(z, z_ref, dtype)
    # Row sums of 784 to 3072 terms of size about 2.
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-3)
    grads_out = [torch.randn_like(z), torch.randn_like(loss)]
    leaves = [x, gamma, eps_hat, weight]
    grads = torch.autograd.grad([z, loss], leaves, grads_out)
    grads_ref = torch.autograd.grad([z_ref, loss_ref], leaves, grads_out)
    assert_close(grads[0], grads_ref[0], dtype, scale=4)
    torch.testing.assert_close(grads[1], grads_ref[1], rtol=1e-3, atol=1e-2)
    assert_close(grads[2], grads_ref[2], dtype, scale=4)
    torch.testing.assert_close(grads[3], grads_ref[3], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_past_two_to_the_31_elements(backend):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    if torch.cuda.get_device_properties(CUDA).total_memory < 40 * 2**30:
        pytest.skip("needs about 30 GiB of GPU memory")
    features = 1024
    rows = 2**31 // features + 4  # 2**31 + 4096 elements
    x = torch.full((rows, features), 0.25, device=CUDA, dtype=torch.bfloat16)
    gamma = torch.zeros(rows, device=CUDA, requires_grad=True)
    weight = torch.ones(rows, device=CUDA)
    with fastvae.use_backend(backend):
        torch.manual_seed(3)
        z, noise_seed = fastvae.diffuse(x, gamma)
        (grad_gamma,) = torch.autograd.grad(z, gamma, torch.ones_like(z))
        loss = fastvae.diffusion_loss(x, noise_seed, weight)
    seed, base = noise_seed.tolist()
    tail = rows - 8  # rows entirely past element 2**31
    offset = torch.tensor([seed, base + tail * features], device=CUDA)
    tail_gamma = gamma.detach()[tail:].requires_grad_()
    z_ref = diffusion_reference.diffuse(x[tail:], tail_gamma, offset)
    (grad_gamma_ref,) = torch.autograd.grad(z_ref, tail_gamma, torch.ones_like(z_ref))
    assert_close(z[tail:], z_ref, torch.bfloat16)
    torch.testing.assert_close(grad_gamma[tail:], grad_gamma_ref, rtol=1e-4, atol=1e-3)
    loss_ref = diffusion_reference.diffusion_loss(x[tail:], offset, weight[tail:])
    torch.testing.assert_close(loss[tail:], loss_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bitwise_repeatable_on_device(backend):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    x, gamma, eps_hat, weight = inputs((65536, 256), torch.float32)
    results = []
    with fastvae.use_backend(backend):
        for _ in range(2):
            torch.manual_seed(9)
            z, noise_seed = fastvae.diffuse(x, gamma)
            loss = fastvae.diffusion_loss(eps_hat, noise_seed, weight)
            grads = torch.autograd.grad([z.square().sum(), loss.sum()], [x, gamma, eps_hat, weight])
            results.append((z, loss) + grads)
    for first, second in zip(*results):
        assert torch.equal(first, second)
