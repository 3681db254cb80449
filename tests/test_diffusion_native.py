"""The diffusion ops' C++ launchers (fastvae/native/diffusion.py: csrc/cpu/diffusion.cpp,
csrc/cuda/diffusion.cu), called directly on [B, N] tensors against
fastvae/reference_diffusion.py and its autograd: every dtype and mixed dtypes, rows of one
task and of several, empty batches and rows, γ at ±30, row sums at N > 2^20, bitwise
repeatability, and ε as the Gaussian latent's normal."""
import pytest
import torch

from fastvae import reference_diffusion as reference
from tests.conftest import assert_as_accurate_as_torch, assert_close


def _extension(device: str):
    if device == "cpu":
        return pytest.importorskip("fastvae._C", reason="the CPU C++ backend is not built here")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return pytest.importorskip("fastvae._C_cuda", reason="the CUDA C++ backend is not built here")


@pytest.fixture(params=["cpu", "cuda"])
def native(request):
    """(launchers, device) of each C++ backend present here."""
    from fastvae.native import launchers

    extension = _extension(request.param)
    if not hasattr(extension, "diffuse_fwd"):
        pytest.fail(f"{extension.__name__} was built without the diffusion ops: rebuild it")
    return launchers(request.param, "diffusion"), torch.device(request.param)


def _seed_offset(device, seed=20260, base=977):
    return torch.tensor([seed, base], dtype=torch.int64, device=device)


def _gammas(batch, device, dtype=torch.float32):
    """γ across the batch from −30 to 30 (α or σ down to 3e-7)."""
    return torch.linspace(-30.0, 30.0, batch, device=device).to(dtype) if batch > 1 else torch.full(
        (batch,), 0.7, device=device, dtype=dtype)


def backend_noise(launchers, seed_offset, batch, features, device):
    """The backend's own ε: diffusion_loss_bwd at ε̂ = 0, w = 1, grad_loss = 1 writes
    1·1·(0 − ε) = −ε exactly."""
    grad = torch.empty(batch, features, device=device)
    launchers.diffusion_loss_bwd(torch.ones(batch, device=device), torch.zeros(batch, features, device=device),
                                 seed_offset, torch.ones(batch, device=device), grad_eps_hat=grad)
    return -grad


def _diffuse(launchers, x, gamma, seed_offset):
    z = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, gamma.dtype), device=x.device)
    launchers.diffuse_fwd(x, gamma, seed_offset, z=z)
    return z


def _diffuse_grads(launchers, grad_z, x, gamma, seed_offset):
    grad_x = torch.empty_like(x)
    grad_gamma = torch.empty(gamma.shape, device=x.device)
    launchers.diffuse_bwd(grad_z, x, gamma, seed_offset, grad_x=grad_x, grad_gamma=grad_gamma)
    return grad_x, grad_gamma


def _loss(launchers, eps_hat, seed_offset, weight):
    loss = torch.empty(eps_hat.shape[0], device=eps_hat.device)
    squared_error = torch.empty(eps_hat.shape[0], device=eps_hat.device)
    launchers.diffusion_loss_fwd(eps_hat, seed_offset, weight, loss=loss, squared_error=squared_error)
    return loss, squared_error


def _loss_grad(launchers, grad_loss, eps_hat, seed_offset, weight):
    grad = torch.empty_like(eps_hat)
    launchers.diffusion_loss_bwd(grad_loss, eps_hat, seed_offset, weight, grad_eps_hat=grad)
    return grad


# (x or ε̂ dtype, γ or weight dtype): alike and mixed.
DTYPE_PAIRS = [
    (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
    (torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16), (torch.float32, torch.float16),
]
# Odd rows; one column; rows of several CPU tasks (8192 columns) and CUDA chunks (128).
SHAPES = [(5, 301), (1, 1), (3, 2 * 8192 + 77)]


# ∂γ against float64: α, σ and their slopes are float32 (a few ulps from expf, the division
# and the square root, under 1e-6 relative), their terms rounded once each; a float32
# running sum is off by more than this at N = 2^20.
SLOPE_TOLERANCE = 2e-6


def _ids(pair):
    return "-".join(str(d).replace("torch.", "") for d in pair)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=_ids)
def test_diffuse_matches_reference_and_its_autograd(native, dtypes, shape):
    launchers, device = native
    data_dtype, gamma_dtype = dtypes
    z_dtype = torch.promote_types(data_dtype, gamma_dtype)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=generator).to(device, data_dtype)
    gamma = _gammas(shape[0], device, gamma_dtype)
    grad_z = torch.randn(shape, generator=generator).to(device, z_dtype)
    seed_offset = _seed_offset(device)

    z = _diffuse(launchers, x, gamma, seed_offset)
    assert z.dtype == z_dtype
    assert_close(z, reference.diffuse(x, gamma, seed_offset), z_dtype, msg="z")

    grad_x, grad_gamma = _diffuse_grads(launchers, grad_z, x, gamma, seed_offset)
    # Autograd of the reference in float64 on the same inputs, with the backend's ε, so
    # the row sums are held to their float32 terms' accuracy (γ's slopes reach 1e-14).
    x64 = x.double().requires_grad_()
    gamma64 = gamma.double().requires_grad_()
    eps = backend_noise(launchers, seed_offset, *shape, device).double()
    z64 = reference.signal_scale(gamma64)[:, None] * x64 + reference.noise_scale(gamma64)[:, None] * eps
    z64.backward(grad_z.double())
    assert grad_x.dtype == data_dtype
    assert_close(grad_x, x64.grad, data_dtype, msg="grad_x")
    alpha, sigma = reference.signal_scale(gamma.double()), reference.noise_scale(gamma.double())
    signal_part = (-0.5 * alpha * sigma**2) * (grad_z.double() * x.double()).sum(1)
    noise_part = (0.5 * sigma * alpha**2) * (grad_z.double() * eps).sum(1)
    error = (grad_gamma.double() - gamma64.grad).abs()
    assert bool((error <= SLOPE_TOLERANCE * (signal_part.abs() + noise_part.abs())).all()), (grad_gamma, gamma64.grad)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=_ids)
def test_diffusion_loss_matches_reference_and_its_autograd(native, dtypes, shape):
    launchers, device = native
    data_dtype, weight_dtype = dtypes
    generator = torch.Generator().manual_seed(4)
    eps_hat = torch.randn(shape, generator=generator).to(device, data_dtype)
    weight = (torch.rand(shape[0], generator=generator) * 4.0 - 1.0).to(device, weight_dtype)
    grad_loss = torch.randn(shape[0], generator=generator).to(device)
    seed_offset = _seed_offset(device, seed=5, base=2**40 - 3)  # offsets across the 2^32 carry

    loss, squared_error = _loss(launchers, eps_hat, seed_offset, weight)
    scale = shape[1]  # the row sums' size
    expected = reference.diffusion_loss(eps_hat, seed_offset, weight)
    assert_close(loss, expected, torch.float32, scale=scale, msg="loss")
    assert_close(squared_error, reference.noise_prediction_squared_error(eps_hat, seed_offset), torch.float32,
                 scale=scale, msg="squared_error")
    assert loss.dtype == squared_error.dtype == torch.float32

    eps_hat_leaf = eps_hat.detach().requires_grad_()
    reference.diffusion_loss(eps_hat_leaf, seed_offset, weight).backward(grad_loss)
    grad = _loss_grad(launchers, grad_loss, eps_hat, seed_offset, weight)
    assert grad.dtype == data_dtype
    assert_close(grad, eps_hat_leaf.grad, data_dtype, scale=float(weight.float().abs().max()) * 4, msg="grad_eps_hat")


def test_noise_is_the_gaussian_latents_normal():
    """ε is Philox's normal at base + b·N + n, bit for bit what the latent loops draw
    (fastvae._C.philox_normal), and the forward and backward regenerate the same ε: a
    prediction equal to it has no error at all."""
    extension = _extension("cpu")
    from fastvae.native import launchers

    cpu = launchers("cpu", "diffusion")
    batch, features = 3, 2 * 8192 + 11
    seed_offset = _seed_offset("cpu", seed=77, base=2**32 - 5000)
    eps = backend_noise(cpu, seed_offset, batch, features, "cpu")
    expected = torch.empty(batch * features)
    extension.philox_normal(77, 2**32 - 5000, expected.numel(), expected.data_ptr())
    assert torch.equal(eps.flatten(), expected)
    loss, squared_error = _loss(cpu, eps, seed_offset, torch.ones(batch))
    assert torch.equal(squared_error, torch.zeros(batch)) and torch.equal(loss, torch.zeros(batch))
    # σ·ε alone: at x = 0 the forward's noise is the backward's.
    gamma = torch.tensor([-3.0, 0.0, 4.0])
    z = _diffuse(cpu, torch.zeros(batch, features), gamma, seed_offset)
    torch.testing.assert_close(z, reference.noise_scale(gamma)[:, None] * eps, rtol=2e-7, atol=0)


def test_row_sums_do_not_drift_with_the_row_length(native):
    """At N = 2^20 + 3 a float32 running sum is thousands of ulps off; Σ(ε − ε̂)² stays
    as close to the float64 sum of its float32 terms as torch's pairwise sum, and ∂γ
    within SLOPE_TOLERANCE of its float64 value."""
    launchers, device = native
    batch, features = 2, 2**20 + 3
    generator = torch.Generator().manual_seed(8)
    eps_hat = (0.5 * torch.randn(batch, features, generator=generator)).to(device)
    seed_offset = _seed_offset(device, seed=9, base=123)
    eps = backend_noise(launchers, seed_offset, batch, features, device)

    _, squared_error = _loss(launchers, eps_hat, seed_offset, torch.ones(batch, device=device))
    terms = (eps - eps_hat) ** 2  # the float32 terms, as the C++ forms them
    torch_result = reference.noise_prediction_squared_error(eps_hat.cpu(), seed_offset.cpu())
    torch_terms = (reference.noise(seed_offset.cpu(), eps_hat.shape) - eps_hat.cpu()) ** 2
    assert_as_accurate_as_torch(squared_error.cpu(), terms.double().sum(1).cpu(), torch_result,
                                torch_terms.double().sum(1), msg="squared_error")

    x = torch.randn(batch, features, generator=generator).to(device)
    grad_z = torch.randn(batch, features, generator=generator).to(device)
    gamma = torch.tensor([-1.5, 2.5], device=device)
    _, grad_gamma = _diffuse_grads(launchers, grad_z, x, gamma, seed_offset)
    alpha, sigma = reference.signal_scale(gamma.double()), reference.noise_scale(gamma.double())
    signal_part = (-0.5 * alpha * sigma**2) * (grad_z.double() * x.double()).sum(1)
    noise_part = (0.5 * sigma * alpha**2) * (grad_z.double() * eps.double()).sum(1)
    error = (grad_gamma.double() - (signal_part + noise_part)).abs()
    assert bool((error <= SLOPE_TOLERANCE * (signal_part.abs() + noise_part.abs())).all()), error


def _all_outputs(launchers, device):
    generator = torch.Generator().manual_seed(11)
    shape = (7, 3 * 8192 + 5)  # more tasks than threads, rows of several tasks
    x = torch.randn(shape, generator=generator).to(device)
    gamma = _gammas(shape[0], device)
    seed_offset = _seed_offset(device)
    weight = torch.rand(shape[0], generator=generator).to(device)
    grad_loss = torch.randn(shape[0], generator=generator).to(device)
    return (_diffuse(launchers, x, gamma, seed_offset), *_diffuse_grads(launchers, x.flip(1), x, gamma, seed_offset),
            *_loss(launchers, x, seed_offset, weight), _loss_grad(launchers, grad_loss, x, seed_offset, weight))


def test_bitwise_repeatable(native):
    launchers, device = native
    for first, second in zip(_all_outputs(launchers, device), _all_outputs(launchers, device)):
        assert torch.equal(first, second)


def test_cpu_results_do_not_depend_on_the_thread_count():
    """Tasks and their row sums follow the shape, never the threads (csrc/cpu/diffusion.cpp)."""
    _extension("cpu")
    from fastvae.native import launchers

    cpu = launchers("cpu", "diffusion")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = _all_outputs(cpu, "cpu")
        torch.set_num_threads(2)
        two_threads = _all_outputs(cpu, "cpu")
    finally:
        torch.set_num_threads(threads)
    for single, double in zip(one_thread, two_threads):
        assert torch.equal(single, double)


def test_optional_outputs_are_the_full_calls(native):
    """grad_x or grad_gamma alone, loss or squared_error alone: the same bits as together."""
    launchers, device = native
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(4, 9001, generator=generator).to(device, torch.bfloat16)
    gamma = _gammas(4, device)
    grad_z = torch.randn(4, 9001, generator=generator).to(device)
    seed_offset = _seed_offset(device)
    grad_x, grad_gamma = _diffuse_grads(launchers, grad_z, x, gamma, seed_offset)
    only_x = torch.empty_like(x)
    launchers.diffuse_bwd(grad_z, x, gamma, seed_offset, grad_x=only_x, grad_gamma=None)
    only_gamma = torch.empty(4, device=device)
    launchers.diffuse_bwd(grad_z, x, gamma, seed_offset, grad_x=None, grad_gamma=only_gamma)
    assert torch.equal(only_x, grad_x) and torch.equal(only_gamma, grad_gamma)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0], device=device)
    loss, squared_error = _loss(launchers, x, seed_offset, weight)
    only_loss, only_squared_error = torch.empty(4, device=device), torch.empty(4, device=device)
    launchers.diffusion_loss_fwd(x, seed_offset, weight, loss=only_loss, squared_error=None)
    launchers.diffusion_loss_fwd(x, seed_offset, weight, loss=None, squared_error=only_squared_error)
    assert torch.equal(only_loss, loss) and torch.equal(only_squared_error, squared_error)


def test_empty_batches_and_rows(native):
    """B = 0 writes nothing; a row of N = 0 elements has no error and no ∂γ (zeros)."""
    launchers, device = native
    seed_offset = _seed_offset(device)
    for batch, features in ((0, 7), (3, 0), (0, 0)):
        x = torch.randn(batch, features, device=device)
        gamma = torch.zeros(batch, device=device)
        assert _diffuse(launchers, x, gamma, seed_offset).shape == (batch, features)
        grad_x = torch.empty_like(x)
        grad_gamma = torch.full((batch,), float("nan"), device=device)
        launchers.diffuse_bwd(x, x, gamma, seed_offset, grad_x=grad_x, grad_gamma=grad_gamma)
        assert torch.equal(grad_gamma, torch.zeros(batch, device=device))
        loss = torch.full((batch,), float("nan"), device=device)
        squared_error = torch.full((batch,), float("nan"), device=device)
        launchers.diffusion_loss_fwd(x, seed_offset, gamma, loss=loss, squared_error=squared_error)
        assert torch.equal(loss, torch.zeros(batch, device=device))
        assert torch.equal(squared_error, torch.zeros(batch, device=device))
        assert _loss_grad(launchers, gamma, x, seed_offset, gamma).shape == (batch, features)


def test_unsupported_dtype_and_bad_arguments_are_refused(native):
    launchers, device = native
    seed_offset = _seed_offset(device)
    x = torch.randn(2, 5, device=device)
    with pytest.raises(TypeError, match=r"fastvae\.diffuse: .*float64"):
        launchers.diffuse_fwd(x.double(), torch.zeros(2, device=device), seed_offset, z=torch.empty_like(x))
    with pytest.raises(TypeError, match=r"fastvae\.diffusion_loss: .*float64"):
        launchers.diffusion_loss_fwd(x, seed_offset, torch.ones(2, device=device, dtype=torch.float64),
                                     loss=torch.empty(2, device=device), squared_error=None)
    extension = _extension(device.type)
    stream = {} if device.type == "cpu" else {"stream": torch.cuda.current_stream(device).cuda_stream}
    out = torch.empty(2, device=device)
    with pytest.raises(ValueError, match="diffusion_loss_fwd: row_partials must be 1"):
        extension.diffusion_loss_fwd(eps_hat=x.data_ptr(), seed_offset=seed_offset.data_ptr(), weight=0,
                                     loss=0, squared_error=out.data_ptr(), batch=2, features=5, row_partials=3,
                                     eps_hat_dtype=0, weight_dtype=0, **stream)
    with pytest.raises(ValueError, match="diffuse_fwd: x has unsupported dtype code 7"):
        extension.diffuse_fwd(x=x.data_ptr(), gamma=out.data_ptr(), seed_offset=seed_offset.data_ptr(),
                              z=x.data_ptr(), batch=2, features=5, x_dtype=7, gamma_dtype=0, z_dtype=0, **stream)
    with pytest.raises(ValueError, match="diffusion_loss_fwd: weight is missing"):
        extension.diffusion_loss_fwd(eps_hat=x.data_ptr(), seed_offset=seed_offset.data_ptr(), weight=0,
                                     loss=out.data_ptr(), squared_error=0, batch=2, features=5, row_partials=1,
                                     eps_hat_dtype=0, weight_dtype=0, **stream)
