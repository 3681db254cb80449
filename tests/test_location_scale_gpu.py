"""Location-scale latent ops on a CUDA device (marked gpu; skipped without one): every
kernel backend against the reference at benchmark sizes, a tensor past 2**31 elements
(int64 indexing), and bitwise repeatability."""
import pytest
import torch

import fastvae
from fastvae import reference_location_scale as ls_reference
from fastvae.random import draw_seed
from tests.conftest import assert_close

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
GPU_BACKENDS = ["triton", "cuda"]
FAMILIES = ["laplace", "logistic", "cauchy"]


def present(backend):
    return torch.cuda.is_available() and backend in fastvae.backends.available(CUDA)


def reference_sample(family, loc, log_scale, seed_offset, prior_loc):
    sample = getattr(ls_reference, f"sample_{family}")
    return sample(loc, log_scale, seed_offset, prior_loc)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(4096, 64), (65536, 256), (64, 32, 16, 16)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_at_real_sizes(backend, family, shape, dtype):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    generator = torch.Generator(device=CUDA).manual_seed(0)
    loc = torch.randn(shape, device=CUDA, generator=generator).to(dtype).requires_grad_()
    log_scale = (0.5 * torch.randn(shape, device=CUDA, generator=generator)).to(dtype).requires_grad_()
    prior_loc = torch.randn((1,) + shape[1:], device=CUDA, generator=generator).requires_grad_()
    with fastvae.use_backend(backend):
        torch.manual_seed(1)
        z, log_q, kl = getattr(fastvae, f"sample_{family}")(loc, log_scale, prior_loc)
    torch.manual_seed(1)
    z_ref, log_q_ref, kl_ref = reference_sample(family, loc, log_scale, draw_seed(CUDA), prior_loc)
    assert_close(z, z_ref, dtype)
    # Row sums of a few hundred to 8192 terms (the Cauchy's log q holds −2·log|x| of
    # x up to 1e9): relative to the row's size.
    torch.testing.assert_close(log_q, log_q_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-4, atol=1e-3)
    grads_out = [torch.randn_like(z), torch.randn_like(log_q), torch.randn_like(kl)]
    grads = torch.autograd.grad([z, log_q, kl], [loc, log_scale, prior_loc], grads_out)
    grads_ref = torch.autograd.grad([z_ref, log_q_ref, kl_ref], [loc, log_scale, prior_loc], grads_out)
    assert_close(grads[0], grads_ref[0], dtype, scale=4)
    # ∂log_scale holds grad_z·e^log_scale·x: relative to |x|, up to 1e9 for the Cauchy.
    torch.testing.assert_close(grads[1].double(), grads_ref[1].double(), rtol=2e-2 if dtype != torch.float32 else 1e-4,
                               atol=4e-2 if dtype != torch.float32 else 1e-4)
    torch.testing.assert_close(grads[2], grads_ref[2], rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_past_two_to_the_31_elements(backend):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    features = 1024
    rows = 2**31 // features + 4  # 2**31 + 4096 elements
    if torch.cuda.get_device_properties(CUDA).total_memory < 40 * 2**30:
        pytest.skip("needs about 30 GiB of GPU memory")
    loc = torch.full((rows, features), 0.25, device=CUDA, dtype=torch.bfloat16).requires_grad_()
    log_scale = torch.full((rows, features), -0.5, device=CUDA, dtype=torch.bfloat16).requires_grad_()
    with fastvae.use_backend(backend):
        torch.manual_seed(3)
        z, _, kl = fastvae.sample_laplace(loc, log_scale)
        z.backward(torch.ones_like(z), inputs=[log_scale])
    torch.manual_seed(3)
    seed, base = draw_seed(CUDA).tolist()
    tail = rows - 8  # rows entirely past element 2**31
    offset = torch.tensor([seed, base + tail * features], device=CUDA)
    with torch.no_grad():
        z_ref, _, kl_ref = ls_reference.sample_laplace(loc[tail:], log_scale[tail:], offset)
    assert_close(z[tail:], z_ref, torch.bfloat16)
    # Every term of these rows is the same KL (as in tests/test_latent_gpu.py): the row
    # sum may move by `features` times a term's few ulps.
    torch.testing.assert_close(kl[tail:], kl_ref, rtol=0, atol=features * 4 * torch.finfo(torch.float32).eps)
    noise = ls_reference.standard_laplace(offset, (8, features)).to(CUDA)
    expected_grad = (torch.exp(torch.tensor(-0.5)) * noise).to(torch.bfloat16)
    assert_close(log_scale.grad[tail:], expected_grad, torch.bfloat16)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_bitwise_repeatable_on_device(backend, family):
    if not present(backend):
        pytest.skip(f"{backend} backend not present")
    loc = torch.randn(65536, 256, device=CUDA, requires_grad=True)
    log_scale = torch.randn(65536, 256, device=CUDA, requires_grad=True)
    prior_log_scale = torch.zeros(1, 256, device=CUDA, requires_grad=True)
    options = {} if family == "logistic" else {"free_bits": 0.1}
    results = []
    with fastvae.use_backend(backend):
        for _ in range(2):
            torch.manual_seed(9)
            z, log_q, kl = getattr(fastvae, f"sample_{family}")(loc, log_scale, prior_log_scale=prior_log_scale,
                                                                **options)
            grads = torch.autograd.grad([z.clamp(-10, 10).square().sum(), log_q.sum(), kl.sum()],
                                        [loc, log_scale, prior_log_scale])
            results.append((z, log_q, kl) + grads)
    for first, second in zip(*results):
        assert torch.equal(first, second)
