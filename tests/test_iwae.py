"""IWAE ops (sample_gaussian_k, log_mean_exp, iwae_bound): every kernel backend against
fastvae.reference, forward and backward (with random upstream gradients: the op is not
the last layer), over shapes, dtypes, priors and sample counts; the reference against
float64 closed forms and gradcheck; plus reproducibility, stability, bad input, NaN,
empty batches, double backward and the torch.library registrations."""
import math

import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.random import draw_seed, philox_normal
from tests.conftest import DEVICE, KERNEL_BACKENDS, ROW_SUM_FEATURES, assert_as_accurate_as_torch, assert_close

# The empty batch [0, D] is test_empty_batch_and_empty_latent's: reference.sample_gaussian_k
# cannot reshape an empty [K, 0, N] (reshape(K, 0, -1) is ambiguous).
SAMPLE_SHAPES = [(1, 1), (3, 7), (257, 129), (3, 1100), (2, 3, 4, 5)]
BACKENDS = ["torch"] + KERNEL_BACKENDS
IWAE_LAUNCHERS = (
    "sample_gaussian_k_fwd", "sample_gaussian_k_bwd",
    "log_mean_exp_fwd", "log_mean_exp_bwd",
    "iwae_bound_fwd", "iwae_bound_bwd",
)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def make_latent(shape, dtype, seed=0, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    logvar = (0.5 * torch.randn(shape, generator=generator)).to(DEVICE, dtype)
    return mu.requires_grad_(requires_grad), logvar.requires_grad_(requires_grad)


def make_prior(shape, seed=3, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    prior_mu = torch.randn(shape, generator=generator).to(DEVICE)
    prior_logvar = (0.3 * torch.randn(shape, generator=generator)).to(DEVICE)
    return prior_mu.requires_grad_(requires_grad), prior_logvar.requires_grad_(requires_grad)


def make_log_densities(shape, dtype, seed=0, requires_grad=True):
    """(log_px_z, log_p, log_q) of ``shape`` [K, B]: log weights of a few nats' spread."""
    generator = torch.Generator().manual_seed(seed)
    log_px_z = 2.0 * torch.randn(shape, generator=generator) - 5.0
    log_p = torch.randn(shape, generator=generator) - 3.0
    log_q = torch.randn(shape, generator=generator) - 2.0
    return [t.to(DEVICE, dtype).requires_grad_(requires_grad) for t in (log_px_z, log_p, log_q)]


def detached_copies(tensors):
    return [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in tensors]


def sample_both(mu, logvar, num_samples, prior_mu=None, prior_logvar=None, seed=1234):
    """sample_gaussian_k with the current backend, and fastvae.reference.sample_gaussian_k
    on copies of the inputs with the (seed, base) the op draws after torch.manual_seed(seed).
    Returns (outputs, reference outputs, reference inputs)."""
    torch.manual_seed(seed)
    out = fastvae.sample_gaussian_k(mu, logvar, num_samples, prior_mu, prior_logvar)
    ref_inputs = detached_copies([mu, logvar, prior_mu, prior_logvar])
    torch.manual_seed(seed)
    seed_offset = draw_seed(DEVICE)
    ref_mu, ref_logvar, ref_prior_mu, ref_prior_logvar = ref_inputs
    ref_out = reference.sample_gaussian_k(ref_mu, ref_logvar, num_samples, seed_offset, ref_prior_mu, ref_prior_logvar)
    return out, ref_out, ref_inputs


def upstream_grads(outputs, seed=7):
    """Random output gradients: the op is not the last layer."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=generator).to(o.device, o.dtype) for o in outputs]


def grads_of(outputs, inputs, grad_outputs):
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True)


def assert_grads_close(grads, grads_ref, dtype, scale=1.0):
    for grad, grad_ref in zip(grads, grads_ref):
        assert (grad is None) == (grad_ref is None)
        if grad is not None:
            assert grad.shape == grad_ref.shape and grad.dtype == grad_ref.dtype
            assert_close(grad, grad_ref, dtype, scale=scale)


@pytest.fixture
def kernel_launches(kernel_backend, monkeypatch):
    """The kernels/iwae.py launchers called during the test, in order: proof that the
    kernel path ran, not the reference."""
    launches = []
    if kernel_backend != "triton":
        return launches
    import fastvae.kernels.iwae as iwae_kernels

    for name in IWAE_LAUNCHERS:
        launcher = getattr(iwae_kernels, name)

        def spy(*args, _name=name, _launcher=launcher, **kwargs):
            launches.append(_name)
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(iwae_kernels, name, spy)
    return launches


def assert_launched(kernel_backend, launches, *names):
    if kernel_backend == "triton":
        assert launches == list(names)


# --------------------------------------------------------------------------------------
# sample_gaussian_k against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SAMPLE_SHAPES, ids=str)
def test_sample_gaussian_k_matches_reference(kernel_backend, dtype, shape, kernel_launches):
    num_samples = 2 if math.prod(shape) > 10000 else 3  # the interpreter is slow
    mu, logvar = make_latent(shape, dtype)
    (z, log_q, log_p), (z_ref, log_q_ref, log_p_ref), ref_inputs = sample_both(mu, logvar, num_samples)
    assert z.shape == (num_samples,) + shape and z.dtype == dtype
    for log_density in (log_q, log_p):
        assert log_density.shape == (num_samples, shape[0]) and log_density.dtype == torch.float32
    assert_close(z, z_ref, dtype)
    features = max(1, math.prod(shape[1:]))
    # Both compute in float32 from the same inputs: float32 tolerances for the sums.
    assert_close(log_q, log_q_ref, torch.float32, scale=features)
    assert_close(log_p, log_p_ref, torch.float32, scale=features)
    grad_outputs = upstream_grads([z, log_q, log_p])
    grads = grads_of([z, log_q, log_p], [mu, logvar], grad_outputs)
    grads_ref = grads_of([z_ref, log_q_ref, log_p_ref], ref_inputs, grad_outputs)
    assert_grads_close(grads, grads_ref, dtype, scale=4 * num_samples)
    assert_launched(kernel_backend, kernel_launches, "sample_gaussian_k_fwd", "sample_gaussian_k_bwd")


@pytest.mark.parametrize("features", ROW_SUM_FEATURES)
def test_log_density_row_sums_do_not_drift_with_size(kernel_backend, features):
    """log q and log p summed in float32 one element at a time drift as D grows (log p by
    hundreds of nats at D = 2^20): every backend's are as close to the float64 sums of
    their terms (from the z it returns) as the torch backend's pairwise float32 sums, with
    mu ~ 0.5·N(0, 1), logvar ~ U(−2, 0) and the standard normal prior."""
    if kernel_backend == "triton" and features > 2**16:
        pytest.skip("the interpreter draws 2^20 normals for about a minute; Triton's row sums (in-tile sums, partials "
                    "added in float64) are checked at 2^20 by gaussian_kl and the likelihoods")
    generator = torch.Generator().manual_seed(0)
    mu = (0.5 * torch.randn(2, features, generator=generator)).to(DEVICE)
    logvar = (-2.0 * torch.rand(2, features, generator=generator)).to(DEVICE)
    zero = torch.zeros((), dtype=torch.float64, device=DEVICE)

    def sample_and_exact():
        torch.manual_seed(5)
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 1)
        exact_q = reference.gaussian_log_density(z.double(), mu.double(), logvar.double()).sum(-1)
        exact_p = reference.gaussian_log_density(z.double(), zero, zero).sum(-1)
        return log_q, log_p, exact_q, exact_p

    log_q, log_p, exact_q, exact_p = sample_and_exact()
    with fastvae.use_backend("torch"):
        log_q_torch, log_p_torch, exact_q_torch, exact_p_torch = sample_and_exact()
    assert_as_accurate_as_torch(log_q, exact_q, log_q_torch, exact_q_torch, msg="log q")
    assert_as_accurate_as_torch(log_p, exact_p, log_p_torch, exact_p_torch, msg="log p")


@pytest.mark.parametrize(
    "used", [("z",), ("log_q",), ("log_p",), ("log_q", "log_p"), ("z", "log_p")], ids=lambda u: "+".join(u)
)
def test_sample_gaussian_k_gradient_of_each_output(kernel_backend, used, kernel_launches):
    """Outputs left out of the loss get no gradient (None reaches the kernel, which skips
    their terms); the prior gets a gradient only through log p."""
    mu, logvar = make_latent((9, 13), torch.float32)
    prior_mu, prior_logvar = make_prior((1, 13))
    inputs = [mu, logvar, prior_mu, prior_logvar]
    outputs, ref_outputs, ref_inputs = sample_both(mu, logvar, 4, prior_mu, prior_logvar)
    index = {"z": 0, "log_q": 1, "log_p": 2}
    chosen = [outputs[index[name]] for name in used]
    chosen_ref = [ref_outputs[index[name]] for name in used]
    grad_outputs = upstream_grads(chosen)
    grads = grads_of(chosen, inputs, grad_outputs)
    grads_ref = grads_of(chosen_ref, ref_inputs, grad_outputs)
    assert_grads_close(grads, grads_ref, torch.float32, scale=16)
    assert_launched(kernel_backend, kernel_launches, "sample_gaussian_k_fwd", "sample_gaussian_k_bwd")


def test_log_q_gradient_is_minus_half_per_log_variance(kernel_backend):
    """log q(z_k|x) = −½Σ(log 2π + logvar + ε²) at z = mu + σε: its total derivative is 0
    in mu and −½ per sample in logvar (the path through z cancels)."""
    mu, logvar = make_latent((6, 5), torch.float32)
    _, log_q, _ = fastvae.sample_gaussian_k(mu, logvar, 3)
    grad_mu, grad_logvar = torch.autograd.grad(log_q.sum(), [mu, logvar])
    assert torch.equal(grad_mu, torch.zeros_like(grad_mu))
    torch.testing.assert_close(grad_logvar, torch.full_like(grad_logvar, -1.5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_sample_gaussian_k_at_tiny_variance(backend, dtype):
    """σ = e^−40 ≪ |mu|: log q is −½Σ(log 2π + logvar + ε²) from ε (in z, (z − mu)² loses ε²
    to z's rounding), and z + log q has gradient 1 in mu (in z, two terms of size e^40
    cancel and swallow it)."""
    if backend != "torch" and dtype == torch.float64:
        pytest.skip("float64 runs on the torch backend")
    mu = torch.tensor([[0.0, 1.0, -3.0]], device=DEVICE, dtype=dtype, requires_grad=True)
    logvar = torch.full((1, 3), -80.0, device=DEVICE, dtype=dtype, requires_grad=True)
    torch.manual_seed(21)
    seed_offset = draw_seed(DEVICE)
    torch.manual_seed(21)
    with fastvae.use_backend(backend):
        z, log_q, _ = fastvae.sample_gaussian_k(mu, logvar, 2)
        (z.sum() + log_q.sum()).backward()
    eps = philox_normal(seed_offset, (2, 1, 3)).double().cpu()
    expected = (-0.5 * (math.log(2 * math.pi) - 80.0 + eps**2)).sum(-1)
    torch.testing.assert_close(log_q.double().cpu(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(mu.grad.double().cpu(), torch.full((1, 3), 2.0, dtype=torch.float64))
    # ∂/∂logvar = Σ_k (σ·ε_k/2 − ½), σ·ε_k/2 ≈ 1e-18.
    torch.testing.assert_close(logvar.grad.double().cpu(), torch.full((1, 3), -1.0, dtype=torch.float64))


def test_sample_gaussian_k_log_q_nan_of_a_nan_mu_only(kernel_backend):
    """log q is computed from ε, yet a NaN mu (whose z is NaN) still gives a NaN log q."""
    fastvae.set_validate_args(False)
    mu, logvar = make_latent((3, 4), torch.float32, requires_grad=False)
    mu[1, 0] = float("nan")
    _, log_q, _ = fastvae.sample_gaussian_k(mu, logvar, 2)
    with fastvae.use_backend("torch"):
        _, log_q_ref, _ = fastvae.sample_gaussian_k(mu, logvar, 2)
    for out in (log_q, log_q_ref):
        assert torch.isnan(out[:, 1]).all() and torch.isfinite(out[:, [0, 2]]).all()


@pytest.mark.parametrize(
    "latent_shape, prior_shape",
    [((37, 19), (1, 19)), ((37, 19), (19,)), ((37, 19), (37, 19)), ((37, 19), ()),
     ((4, 3, 5, 6), (1, 3, 1, 1)), ((4, 3, 5, 6), (1, 3, 1, 6))],
    ids=["row", "vector", "full", "scalar", "per-channel", "interleaved"],
)
def test_sample_gaussian_k_broadcast_priors(kernel_backend, latent_shape, prior_shape, kernel_launches):
    mu, logvar = make_latent(latent_shape, torch.float32)
    prior_mu, prior_logvar = make_prior(prior_shape)
    inputs = [mu, logvar, prior_mu, prior_logvar]
    (z, log_q, log_p), (z_ref, log_q_ref, log_p_ref), ref_inputs = sample_both(mu, logvar, 4, prior_mu, prior_logvar)
    features = math.prod(latent_shape[1:])
    assert_close(z, z_ref, torch.float32)
    assert_close(log_p, log_p_ref, torch.float32, scale=features)
    grad_outputs = upstream_grads([z, log_q, log_p])
    grads = grads_of([z, log_q, log_p], inputs, grad_outputs)
    grads_ref = grads_of([z_ref, log_q_ref, log_p_ref], ref_inputs, grad_outputs)
    assert grads[2].shape == prior_shape and grads[3].shape == prior_shape
    # Broadcast prior gradients sum over the batch and 4 samples.
    assert_grads_close(grads, grads_ref, torch.float32, scale=4 * latent_shape[0] * 8)
    assert_launched(kernel_backend, kernel_launches, "sample_gaussian_k_fwd", "sample_gaussian_k_bwd")


def test_sample_gaussian_k_non_contiguous_inputs(kernel_backend):
    base_mu, base_logvar = make_latent((20, 30), torch.float32, requires_grad=False)
    mu = base_mu.t().requires_grad_()  # [30, 20], strided
    logvar = base_logvar.t().requires_grad_()
    prior_mu = torch.randn(20, 2, device=DEVICE)[:, 0].requires_grad_()  # stride 2
    assert not mu.is_contiguous() and not prior_mu.is_contiguous()
    inputs = [mu, logvar, prior_mu]
    (z, log_q, log_p), (z_ref, log_q_ref, log_p_ref), ref_inputs = sample_both(mu, logvar, 3, prior_mu)
    assert_close(z, z_ref, torch.float32)
    assert_close(log_q, log_q_ref, torch.float32, scale=20)
    assert_close(log_p, log_p_ref, torch.float32, scale=20)
    grad_outputs = upstream_grads([z, log_q, log_p])
    grads = grads_of([z, log_q, log_p], inputs, grad_outputs)
    grads_ref = grads_of([z_ref, log_q_ref, log_p_ref], ref_inputs + [None], grad_outputs)
    assert_grads_close(grads, grads_ref, torch.float32, scale=100)


def test_single_sample_draws_what_reparameterize_draws(kernel_backend):
    """With K = 1, element i of z uses offset base + i, as reparameterize's z does."""
    mu, logvar = make_latent((9, 17), torch.float32, requires_grad=False)
    torch.manual_seed(5)
    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 1)
    torch.manual_seed(5)
    assert torch.equal(z[0], fastvae.reparameterize(mu, logvar))
    assert z.shape == (1, 9, 17) and log_q.shape == (1, 9) and log_p.shape == (1, 9)


def test_same_seed_same_bits_fresh_noise_each_call(kernel_backend):
    mu, logvar = make_latent((65, 31), torch.float32, requires_grad=False)
    torch.manual_seed(0)
    first = fastvae.sample_gaussian_k(mu, logvar, 3)
    second = fastvae.sample_gaussian_k(mu, logvar, 3)
    torch.manual_seed(0)
    again = fastvae.sample_gaussian_k(mu, logvar, 3)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], second[0])
    # Each sample has its own noise.
    assert not torch.equal(first[0][0], first[0][1]) and not torch.equal(first[0][1], first[0][2])
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    with_generator = fastvae.sample_gaussian_k(mu, logvar, 3, generator=generator)[0]
    generator.manual_seed(11)
    assert torch.equal(with_generator, fastvae.sample_gaussian_k(mu, logvar, 3, generator=generator)[0])


def test_backward_is_bitwise_repeatable(kernel_backend):
    mu, logvar = make_latent((8, 1100), torch.float32)  # two column blocks
    prior_mu = torch.zeros(1, 1100, device=DEVICE, requires_grad=True)
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 2, prior_mu)
        loss = z.square().sum() + log_q.sum() + log_p.square().sum()
        results.append(torch.autograd.grad(loss, [mu, logvar, prior_mu]) + (log_q, log_p))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_noise_is_standard_normal(kernel_backend):
    """ε = (z − μ)/σ over K samples has moments 0 and 1 and passes Kolmogorov–Smirnov."""
    scipy_stats = pytest.importorskip("scipy.stats")
    mu = torch.linspace(-3, 3, 32 * 64, device=DEVICE).reshape(32, 64)
    logvar = torch.linspace(-2, 2, 32 * 64, device=DEVICE).reshape(32, 64).flip(1)
    torch.manual_seed(2024)
    z, _, _ = fastvae.sample_gaussian_k(mu, logvar, 4)
    eps = ((z - mu) / torch.exp(0.5 * logvar)).flatten().double().cpu()
    assert abs(eps.mean().item()) < 4 / eps.numel() ** 0.5
    assert abs(eps.var().item() - 1) < 0.05
    assert scipy_stats.kstest(eps.numpy(), "norm").pvalue > 1e-3


def test_empty_batch_and_empty_latent(kernel_backend, dtype):
    mu, logvar = make_latent((0, 7), dtype)
    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 3)
    assert z.shape == (3, 0, 7) and z.dtype == dtype
    assert log_q.shape == (3, 0) and log_p.shape == (3, 0) and log_q.dtype == torch.float32
    (z.sum() + log_q.sum() + log_p.sum()).backward()
    assert mu.grad.shape == (0, 7) and logvar.grad.shape == (0, 7) and mu.grad.dtype == dtype
    with fastvae.use_backend("torch"):
        z_ref, log_q_ref, _ = fastvae.sample_gaussian_k(mu, logvar, 3)
    assert z_ref.shape == z.shape and log_q_ref.shape == log_q.shape
    # No latent features: the log densities are empty sums, 0.
    mu, logvar = make_latent((4, 0), dtype)
    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 2)
    assert z.shape == (2, 4, 0)
    assert torch.equal(log_q, torch.zeros(2, 4, device=DEVICE)) and torch.equal(log_p, torch.zeros(2, 4, device=DEVICE))


def test_sample_gaussian_k_nan_propagates_only_where_it_belongs(kernel_backend):
    fastvae.set_validate_args(False)
    mu, logvar = make_latent((4, 5), torch.float32, requires_grad=False)
    mu[1, 2] = float("nan")
    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 3)
    assert torch.isnan(z[:, 1, 2]).all() and torch.isnan(log_q[:, 1]).all() and torch.isnan(log_p[:, 1]).all()
    assert torch.isfinite(z[:, [0, 2, 3]]).all() and torch.isfinite(z[:, 1, [0, 1, 3, 4]]).all()
    assert torch.isfinite(log_q[:, [0, 2, 3]]).all() and torch.isfinite(log_p[:, [0, 2, 3]]).all()


def test_sample_gaussian_k_nan_raises_under_validate_args(kernel_backend):
    mu, logvar = make_latent((4, 5), torch.float32, requires_grad=False)
    logvar[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"fastvae.sample_gaussian_k: logvar contains NaN"):
        fastvae.sample_gaussian_k(mu, logvar, 2)


def test_float64_runs_on_reference():
    mu, logvar = make_latent((5, 6), torch.float64)
    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 2)
    assert z.dtype == torch.float64 and log_q.dtype == torch.float64 and log_p.dtype == torch.float64
    assert fastvae.iwae_bound(log_q, log_p, log_q).dtype == torch.float64
    assert fastvae.log_mean_exp(log_q).dtype == torch.float64


def test_mixed_precision_prior(kernel_backend):
    """A float32 learned prior with a bfloat16 posterior, as under autocast."""
    mu, logvar = make_latent((16, 8), torch.bfloat16)
    prior_mu = torch.zeros(8, device=DEVICE, requires_grad=True)
    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 2, prior_mu)
    assert z.dtype == torch.bfloat16 and log_q.dtype == torch.float32 and log_p.dtype == torch.float32
    (z.float().sum() + log_q.sum() + log_p.sum()).backward()
    assert prior_mu.grad.dtype == torch.float32 and mu.grad.dtype == torch.bfloat16


# --------------------------------------------------------------------------------------
# log_mean_exp and iwae_bound against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, dim",
    [((3, 7), 0), ((5, 4, 6), 1), ((5, 4, 6), -1), ((1, 1), 0), ((1,), 0), ((700, 3), 0), ((2, 300), 0), ((3, 0), 0)],
    ids=str,
)
def test_log_mean_exp_matches_reference(kernel_backend, dtype, shape, dim, kernel_launches):
    generator = torch.Generator().manual_seed(1)
    x = (3.0 * torch.randn(shape, generator=generator)).to(DEVICE, dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out = fastvae.log_mean_exp(x, dim)
    out_ref = reference.log_mean_exp(x_ref, dim)
    assert out.shape == out_ref.shape and out.dtype == torch.float32
    assert_close(out, out_ref, torch.float32, scale=4)
    (grad_out,) = upstream_grads([out])
    (grad,) = torch.autograd.grad(out, [x], grad_out)
    (grad_ref,) = torch.autograd.grad(out_ref, [x_ref], grad_out)
    assert grad.dtype == dtype
    assert_close(grad, grad_ref, dtype)
    assert_launched(kernel_backend, kernel_launches, "log_mean_exp_fwd", "log_mean_exp_bwd")


def test_log_mean_exp_non_contiguous(kernel_backend):
    x = torch.randn(6, 40, device=DEVICE).t().requires_grad_()  # [40, 6], strided
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fastvae.log_mean_exp(x, 1), reference.log_mean_exp(x_ref, 1)
    assert_close(out, out_ref, torch.float32)
    (grad_out,) = upstream_grads([out])
    assert_close(torch.autograd.grad(out, [x], grad_out)[0], torch.autograd.grad(out_ref, [x_ref], grad_out)[0], torch.float32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on ±inf: log(0), inf − inf
def test_log_mean_exp_is_stable(kernel_backend):
    fastvae.set_validate_args(False)  # which refuse the +inf term whose result is checked here
    x = torch.tensor(
        [[1000.0, -1000.0, -1000.0, float("-inf"), float("-inf"), 3.0],
         [-1000.0, -1000.0, 1000.0, float("-inf"), 0.0, float("inf")]],
        device=DEVICE, requires_grad=True,
    )
    out = fastvae.log_mean_exp(x, dim=0)
    log2 = math.log(2.0)
    expected = torch.tensor([1000.0 - log2, -1000.0, 1000.0 - log2, float("-inf"), -log2, float("inf")])
    torch.testing.assert_close(out.cpu(), expected)
    assert torch.equal(out, reference.log_mean_exp(x.detach(), dim=0))
    (grad,) = torch.autograd.grad(out[:3].sum() + out[4], [x])
    torch.testing.assert_close(grad[:, [0, 1, 2, 4]].cpu(), torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 1.0]]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_log_mean_exp_gradient_is_the_softmax_at_large_magnitudes(backend, dtype):
    """The gradient is softmax(x − max), exact, not exp(x − result) rebuilt from a rounded
    result: four terms of −1e8 (float32) or −1e17 (float64) each get ¼, not 1; and terms a
    few ulps apart get their float64 softmax."""
    if backend != "torch" and dtype == torch.float64:
        pytest.skip("float64 runs on the torch backend")
    large = 1e8 if dtype == torch.float32 else 1e17
    ulp = float(torch.finfo(dtype).eps) * 2.0 ** math.floor(math.log2(large))  # spacing at `large`
    columns = torch.stack([torch.full((4,), -large, dtype=torch.float64),
                           -large + ulp * torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)], dim=1)
    x = columns.to(DEVICE, dtype).requires_grad_()
    assert torch.equal(x.detach().double().cpu(), columns)  # exactly representable
    weights = torch.softmax(columns - columns.max(0).values, dim=0)
    log_px_z = x.detach().clone().requires_grad_()
    log_p, log_q = (torch.zeros_like(log_px_z, requires_grad=True) for _ in range(2))
    with fastvae.use_backend(backend):
        (grad_x,) = torch.autograd.grad(fastvae.log_mean_exp(x, dim=0).sum(), [x])
        bound = fastvae.iwae_bound(log_px_z, log_p, log_q)
        grads = torch.autograd.grad(bound.sum(), [log_px_z, log_p, log_q])
    torch.testing.assert_close(grad_x.double().cpu(), weights, rtol=1e-6, atol=0)
    for grad, sign in zip(grads, (1.0, 1.0, -1.0)):
        torch.testing.assert_close(grad.double().cpu(), sign * weights, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_reference_log_mean_exp_single_sample_empty_and_minus_inf(dtype):
    """K = 1 gives x itself (bitwise) with gradient 1; an empty batch gives an empty result;
    a column of −inf gives −inf and leaves the other columns' gradients alone."""
    x = torch.tensor([[3.0e7, -2.5, 1e-30]], dtype=dtype, requires_grad=True)
    out = reference.log_mean_exp(x, dim=0)
    assert out.dtype == dtype and torch.equal(out, x.detach()[0])
    (grad,) = torch.autograd.grad(out.sum(), [x])
    assert torch.equal(grad, torch.ones_like(x))
    assert reference.log_mean_exp(torch.zeros(3, 0, dtype=dtype), dim=0).shape == (0,)
    assert reference.iwae_bound(*[torch.zeros(3, 0, dtype=dtype)] * 3).shape == (0,)
    x = torch.tensor([[float("-inf"), 0.0], [float("-inf"), math.log(3.0)]], dtype=dtype, requires_grad=True)
    out = reference.log_mean_exp(x, dim=0)
    assert out[0] == float("-inf")
    torch.testing.assert_close(out[1], torch.tensor(math.log(2.0), dtype=dtype))
    (grad,) = torch.autograd.grad(out[1], [x])
    torch.testing.assert_close(grad[:, 1], torch.tensor([0.25, 0.75], dtype=dtype))


@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (1, 4), (64, 300), (3, 0)], ids=str)
def test_iwae_bound_matches_reference(kernel_backend, dtype, shape, kernel_launches):
    inputs = make_log_densities(shape, dtype)
    ref_inputs = detached_copies(inputs)
    bound = fastvae.iwae_bound(*inputs)
    bound_ref = reference.iwae_bound(*ref_inputs)
    assert bound.shape == shape[1:] and bound.dtype == torch.float32
    assert_close(bound, bound_ref, torch.float32, scale=4)
    (grad_bound,) = upstream_grads([bound])
    grads = torch.autograd.grad(bound, inputs, grad_bound)
    grads_ref = torch.autograd.grad(bound_ref, ref_inputs, grad_bound)
    assert_grads_close(grads, grads_ref, dtype)
    assert_launched(kernel_backend, kernel_launches, "iwae_bound_fwd", "iwae_bound_bwd")


def test_iwae_bound_mixed_dtypes_and_partial_gradients(kernel_backend):
    """A bfloat16 decoder log-likelihood with float32 latent log densities; only some
    inputs require grad."""
    log_px_z, log_p, log_q = make_log_densities((5, 9), torch.float32)
    log_px_z = log_px_z.detach().to(torch.bfloat16).requires_grad_()
    log_q = log_q.detach()
    bound = fastvae.iwae_bound(log_px_z, log_p, log_q)
    bound_ref = reference.iwae_bound(*detached_copies([log_px_z, log_p, log_q]))
    assert bound.dtype == torch.float32
    assert_close(bound, bound_ref, torch.float32)
    grad_px_z, grad_p = torch.autograd.grad(bound.sum(), [log_px_z, log_p])
    assert grad_px_z.dtype == torch.bfloat16 and grad_p.dtype == torch.float32
    # d/dlog p(x|z) = d/dlog p(z) = softmax over samples: each column sums to 1.
    torch.testing.assert_close(grad_p.sum(0), torch.ones(9, device=DEVICE))
    assert_close(grad_px_z, grad_p, torch.bfloat16)


def test_iwae_bound_is_log_mean_exp_of_the_log_weights_and_above_the_elbo(kernel_backend):
    log_px_z, log_p, log_q = make_log_densities((8, 33), torch.float32, requires_grad=False)
    log_weights = log_px_z + log_p - log_q
    bound = fastvae.iwae_bound(log_px_z, log_p, log_q)
    assert torch.equal(bound, fastvae.log_mean_exp(log_weights, dim=0))
    # Jensen: the bound is never below the mean of the log weights (the ELBO estimate).
    assert bool((bound >= log_weights.mean(0) - 1e-6).all())
    assert bool((bound > log_weights.mean(0) + 1e-3).all())  # strictly, for distinct weights
    # With one sample it is the log weight itself.
    single = fastvae.iwae_bound(log_px_z[:1], log_p[:1], log_q[:1])
    assert_close(single, log_weights[0], torch.float32)


def test_iwae_end_to_end_matches_reference(kernel_backend):
    """sample_gaussian_k → a small decoder → iwae_bound, gradients to the encoder
    outputs and a learned prior, against the same pipeline on the reference."""
    mu, logvar = make_latent((6, 4), torch.float32)
    prior_logvar = torch.zeros(1, 4, device=DEVICE, requires_grad=True)
    torch.manual_seed(0)
    decoder = torch.nn.Linear(4, 10).to(DEVICE)
    x = torch.rand(6, 10, device=DEVICE).round()

    def neg_bound(mu, logvar, prior_logvar, seed_offset=None):
        if seed_offset is None:
            torch.manual_seed(42)
            z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 5, prior_logvar=prior_logvar)
        else:
            z, log_q, log_p = reference.sample_gaussian_k(mu, logvar, 5, seed_offset, prior_logvar=prior_logvar)
        logits = decoder(z)  # [K, B, 10]
        log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        bound = fastvae.iwae_bound(log_px_z, log_p, log_q) if seed_offset is None else reference.iwae_bound(log_px_z, log_p, log_q)
        return -bound.mean()

    loss = neg_bound(mu, logvar, prior_logvar)
    ref_inputs = detached_copies([mu, logvar, prior_logvar])
    torch.manual_seed(42)
    loss_ref = neg_bound(*ref_inputs, seed_offset=draw_seed(DEVICE))
    assert_close(loss, loss_ref, torch.float32, scale=4)
    assert_grads_close(torch.autograd.grad(loss, [mu, logvar, prior_logvar]), torch.autograd.grad(loss_ref, ref_inputs), torch.float32)


# --------------------------------------------------------------------------------------
# Bad input, NaN, double backward
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, 0), ValueError, r"sample_gaussian_k: num_samples must be a positive int, got 0"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, -2), ValueError, r"sample_gaussian_k: num_samples"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, 2.0), TypeError, r"sample_gaussian_k: num_samples must be a positive int, got float"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, True), TypeError, r"sample_gaussian_k: num_samples"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, torch.tensor(3)), TypeError, r"sample_gaussian_k: num_samples"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v[:, :3], 2), ValueError, r"sample_gaussian_k: logvar has shape \(4, 3\)"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m.long(), v, 2), TypeError, r"sample_gaussian_k: mu must have a floating dtype"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m[0, 0], v[0, 0], 2), ValueError, r"sample_gaussian_k: mu must have at least 1"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, 2, prior_mu=torch.zeros(3)), ValueError, r"sample_gaussian_k: prior_mu of shape \(3,\) does not broadcast"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, 2, prior_logvar=torch.zeros(2, 4, 5)), ValueError, r"sample_gaussian_k: prior_logvar"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v.to("meta"), 2), ValueError, r"sample_gaussian_k: logvar is on meta"),
        (lambda m, v, x: fastvae.sample_gaussian_k(m, v, 2, generator=42), TypeError, r"sample_gaussian_k: generator must be a torch.Generator"),
        (lambda m, v, x: fastvae.log_mean_exp(x[:0]), ValueError, r"log_mean_exp: x of shape \(0, 5\) has no samples along dim 0"),
        (lambda m, v, x: fastvae.log_mean_exp(x, dim=2), ValueError, r"log_mean_exp: dim 2 is out of range for x"),
        (lambda m, v, x: fastvae.log_mean_exp(x, dim=0.0), TypeError, r"log_mean_exp: dim must be an int"),
        (lambda m, v, x: fastvae.log_mean_exp(x.long()), TypeError, r"log_mean_exp: x must have a floating dtype"),
        (lambda m, v, x: fastvae.log_mean_exp(x[0, 0]), ValueError, r"log_mean_exp: x must have at least 1"),
        (lambda m, v, x: fastvae.log_mean_exp([1.0, 2.0]), TypeError, r"log_mean_exp: x must be a torch.Tensor"),
        (lambda m, v, x: fastvae.iwae_bound(x, x, x[:, :4]), ValueError, r"iwae_bound: log_q has shape \(3, 4\) but log_px_z has shape \(3, 5\)"),
        (lambda m, v, x: fastvae.iwae_bound(x, x[None], x), ValueError, r"iwae_bound: log_p has shape"),
        (lambda m, v, x: fastvae.iwae_bound(x[:0], x[:0], x[:0]), ValueError, r"iwae_bound: log_px_z of shape \(0, 5\) has no samples"),
        (lambda m, v, x: fastvae.iwae_bound(x, x.int(), x), TypeError, r"iwae_bound: log_p must have a floating dtype"),
        (lambda m, v, x: fastvae.iwae_bound(x, x, x.to("meta")), ValueError, r"iwae_bound: log_q is on meta"),
    ],
)
def test_bad_input_names_op_and_argument(call, error, message):
    mu, logvar = make_latent((4, 5), torch.float32, requires_grad=False)
    x = torch.randn(3, 5, device=DEVICE)
    with pytest.raises(error, match=message):
        call(mu, logvar, x)


def test_log_mean_exp_and_iwae_bound_nan(kernel_backend):
    """NaN reaches only its own column; under validate_args it is an error naming the
    argument (−inf log weights are valid and pass)."""
    log_px_z, log_p, log_q = make_log_densities((4, 6), torch.float32, requires_grad=False)
    log_p[2, 3] = float("nan")
    log_q[0, 1] = float("inf")  # a weight of −inf: allowed
    with pytest.raises(ValueError, match=r"fastvae.iwae_bound: log_p contains NaN"):
        fastvae.iwae_bound(log_px_z, log_p, log_q)
    with pytest.raises(ValueError, match=r"fastvae.log_mean_exp: x contains NaN"):
        fastvae.log_mean_exp(log_p)
    fastvae.set_validate_args(False)
    bound = fastvae.iwae_bound(log_px_z, log_p, log_q)
    assert torch.isnan(bound[3]) and torch.isfinite(bound[[0, 1, 2, 4, 5]]).all()
    out = fastvae.log_mean_exp(log_p.t(), dim=1)
    assert torch.isnan(out[3]) and torch.isfinite(out[[0, 1, 2, 4, 5]]).all()


def test_double_backward_raises(kernel_backend):
    mu, logvar = make_latent((4, 5), torch.float32)
    z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 3)
    (grad_mu,) = torch.autograd.grad(z.square().sum() + log_p.sum(), [mu], create_graph=True)
    with pytest.raises(RuntimeError, match=r"fastvae.sample_gaussian_k: double backward"):
        torch.autograd.grad(grad_mu.sum(), [mu])
    x = torch.randn(3, 5, device=DEVICE, requires_grad=True)
    (grad_x,) = torch.autograd.grad(fastvae.log_mean_exp(x).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match=r"fastvae.log_mean_exp: double backward"):
        torch.autograd.grad(grad_x.square().sum(), [x])
    (grad_x,) = torch.autograd.grad(fastvae.iwae_bound(x, x.detach(), x.detach()).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match=r"fastvae.iwae_bound: double backward"):
        torch.autograd.grad(grad_x.square().sum(), [x])


# --------------------------------------------------------------------------------------
# torch integration
# --------------------------------------------------------------------------------------


def test_compiles_without_graph_breaks(kernel_backend):
    """The IWAE objective traces with fullgraph=True (AOT autograd on the fake
    implementations) and equals eager."""
    import torch._dynamo

    torch._dynamo.reset()
    mu, logvar = make_latent((6, 4), torch.float32)
    log_px_z = torch.randn(3, 6, device=DEVICE)

    def objective(mu, logvar):
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 3)
        return -(fastvae.iwae_bound(log_px_z - z.square().sum(-1), log_p, log_q).mean() + fastvae.log_mean_exp(log_q).mean())

    torch.manual_seed(5)
    eager = objective(mu, logvar)
    eager_grads = torch.autograd.grad(eager, [mu, logvar])
    compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    result = compiled(mu, logvar)
    torch.testing.assert_close(result, eager)
    for grad, eager_grad in zip(torch.autograd.grad(result, [mu, logvar]), eager_grads):
        torch.testing.assert_close(grad, eager_grad)


# --------------------------------------------------------------------------------------
# The reference itself: float64 closed forms and gradcheck
# --------------------------------------------------------------------------------------


def test_reference_sample_gaussian_k_closed_form():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    logvar = 0.5 * torch.randn(5, 2, 3, generator=generator, dtype=torch.float64)
    prior_mu = torch.randn(1, 2, 1, generator=generator, dtype=torch.float64)
    prior_logvar = 0.3 * torch.randn(2, 3, generator=generator, dtype=torch.float64)
    seed_offset = torch.tensor([123456789, 1000], dtype=torch.int64)
    z, log_q, log_p = reference.sample_gaussian_k(mu, logvar, 4, seed_offset, prior_mu, prior_logvar)
    eps = philox_normal(seed_offset, (4, 5, 2, 3)).double()
    std = torch.exp(0.5 * logvar)
    torch.testing.assert_close(z, mu + std * eps)
    q = torch.distributions.Normal(mu, std)
    p = torch.distributions.Normal(prior_mu.expand_as(mu), torch.exp(0.5 * prior_logvar).expand_as(mu))
    torch.testing.assert_close(log_q, q.log_prob(z).flatten(2).sum(-1))
    torch.testing.assert_close(log_p, p.log_prob(z).flatten(2).sum(-1))
    assert z.dtype == log_q.dtype == log_p.dtype == torch.float64 and log_q.shape == (4, 5)


def test_reference_log_mean_exp_and_iwae_bound_closed_form():
    x = torch.tensor([[0.0, 1.0], [2.0, -3.0], [-1.0, 0.5]], dtype=torch.float64)
    expected = torch.log(torch.exp(x).mean(0))
    torch.testing.assert_close(reference.log_mean_exp(x), expected)
    torch.testing.assert_close(reference.log_mean_exp(x.t(), dim=1), expected)
    zeros = torch.zeros_like(x)
    torch.testing.assert_close(reference.iwae_bound(x, zeros + 0.5, zeros + 0.5), expected)


def test_reference_gradcheck():
    generator = torch.Generator().manual_seed(0)
    seed_offset = torch.tensor([99, 7], dtype=torch.int64)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).requires_grad_()

    mu, logvar, prior_mu, prior_logvar = rand(3, 4), rand(3, 4, scale=0.5), rand(1, 4), rand(4, scale=0.3)
    assert torch.autograd.gradcheck(
        lambda *a: reference.sample_gaussian_k(a[0], a[1], 2, seed_offset, a[2], a[3]), (mu, logvar, prior_mu, prior_logvar)
    )
    x = rand(5, 3, 2, scale=3.0)
    for dim in (0, 1, -1):
        assert torch.autograd.gradcheck(lambda t: reference.log_mean_exp(t, dim), (x,))
        assert torch.autograd.gradgradcheck(lambda t: reference.log_mean_exp(t, dim), (x,))
    # Far from 0, where the detached shift is large.
    assert torch.autograd.gradcheck(lambda t: reference.log_mean_exp(t + 1e4, 0), (x,))
    # log q from ε: the total derivative (0 in mu, −½ in logvar per sample), at small σ too.
    tiny = (logvar.detach() - 30.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, v: reference.sample_gaussian_k(m, v, 3, seed_offset), (mu, tiny))
    assert torch.autograd.gradcheck(reference.iwae_bound, (rand(4, 3), rand(4, 3), rand(4, 3)))
