"""The truncated-normal latent (sample_truncated_normal): the reference against scipy and
numerical integration (KS tests, log densities, log Z, the KL estimate's expectation),
its gradients (gradcheck, the implicit gradient against finite differences at fixed
noise), stability deep in the tails, and every kernel backend against the reference."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import fastvae
from fastvae import reference_truncated_normal as ref_tn
from tests.conftest import DEVICE, KERNEL_BACKENDS, ROW_SUM_FEATURES, TOLERANCES

INF = math.inf
# (low, high) of the standard normal's truncations under test: two-sided, one-sided, and
# intervals deep in either tail.
INTERVALS = [(-1.0, 2.0), (-INF, 0.5), (3.0, INF), (8.0, 9.0), (-50.0, -49.0), (-INF, -30.0), (0.0, 1e-3)]


def uniforms(n, seed=0):
    return ref_tn.uniform_noise(torch.tensor([seed, 0]), (n,)).double()


@pytest.mark.parametrize("low,high", INTERVALS, ids=str)
def test_reference_sample_follows_scipy_truncnorm(low, high):
    # loc 0.5, σ 2: the standardized bounds are (low − 0.5)/2, (high − 0.5)/2.
    n = 4000
    loc = torch.full((n, 1), 0.5, dtype=torch.float64)
    log_scale = torch.full((n, 1), math.log(2.0), dtype=torch.float64)
    z, _, _ = ref_tn.sample_truncated_normal(loc, log_scale, low, high, torch.tensor([11, 5]))
    z = z.flatten().numpy()
    assert np.all((z >= low) & (z <= high))
    a, b = (low - 0.5) / 2.0, (high - 0.5) / 2.0
    result = stats.kstest(z, stats.truncnorm(a, b, loc=0.5, scale=2.0).cdf)
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize("low,high", INTERVALS + [(-1e4, -1e4 + 1e-3), (40.0, 40.0 + 1e-6)], ids=str)
def test_reference_quantile_matches_scipy(low, high):
    u = uniforms(64, seed=3)
    alpha, beta = torch.full_like(u, low), torch.full_like(u, high)
    x = ref_tn.standard_truncated_normal_quantile(alpha, beta, u)
    expected = stats.truncnorm.ppf(u.numpy(), low, high)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-12, atol=1e-12 * max(1.0, min(abs(low), abs(high))))
    assert bool(((x >= low) & (x <= high)).all())


@pytest.mark.parametrize("low,high", INTERVALS + [(-1e-6, 1e-6)], ids=str)
def test_reference_log_prob_and_log_mass_match_scipy(low, high):
    loc = torch.tensor([0.0, 0.3, -0.2], dtype=torch.float64)
    log_scale = torch.tensor([0.0, -0.5, 0.4], dtype=torch.float64)
    scale = log_scale.exp()
    u = uniforms(3, seed=1)
    alpha, beta = (low - loc) / scale, (high - loc) / scale
    z = loc + scale * ref_tn.standard_truncated_normal_quantile(alpha, beta, u)
    log_prob = ref_tn.truncated_normal_log_prob(z, loc, log_scale, low, high)
    expected = stats.truncnorm.logpdf(z.numpy(), alpha.numpy(), beta.numpy(), loc=loc.numpy(), scale=scale.numpy())
    np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-9)
    log_mass = ref_tn.log_normal_mass(alpha, beta)
    # log Z = log φ(x) − log of the truncated density at x, for x in [α, β].
    x = ((z - loc) / scale).numpy()
    expected_mass = stats.norm.logpdf(x) - stats.truncnorm.logpdf(x, alpha.numpy(), beta.numpy())
    np.testing.assert_allclose(log_mass.numpy(), expected_mass, rtol=1e-9)
    outside = ref_tn.truncated_normal_log_prob(torch.tensor([low - 1.0, high + 1.0]).double(), loc[:1],
                                                log_scale[:1], low, high)
    assert bool((outside[torch.isfinite(torch.tensor([low - 1.0, high + 1.0]))] == -INF).all())


def test_reference_log_mass_against_numerical_integration():
    for low, high, loc, sigma in [(-1.0, 2.0, 0.3, 0.7), (0.0, INF, -2.0, 1.5), (1.0, 1.5, 0.0, 0.1)]:
        alpha = torch.tensor([(low - loc) / sigma], dtype=torch.float64)
        beta = torch.tensor([(high - loc) / sigma], dtype=torch.float64)
        mass, _ = integrate.quad(lambda t: stats.norm.pdf(t), alpha.item(), beta.item(), epsabs=0, epsrel=1e-13)
        assert ref_tn.log_normal_mass(alpha, beta).item() == pytest.approx(math.log(mass), rel=1e-10, abs=1e-12)


def test_kl_estimate_has_the_kl_as_expectation():
    # E_q[log q(z) − log p(z)] against the KL by numerical integration, at 2·10^5 samples
    # (the estimate's standard error is about 2e-3 here).
    low, high = -0.5, 2.0
    q_loc, q_sigma, p_loc, p_sigma = 0.4, 0.6, -0.3, 1.3
    n = 200_000
    loc = torch.full((n, 1), q_loc, dtype=torch.float64)
    log_scale = torch.full((n, 1), math.log(q_sigma), dtype=torch.float64)
    prior_loc = torch.tensor([[p_loc]], dtype=torch.float64)
    prior_log_scale = torch.tensor([[math.log(p_sigma)]], dtype=torch.float64)
    _, _, kl = ref_tn.sample_truncated_normal(loc, log_scale, low, high, torch.tensor([3, 9]), prior_loc,
                                              prior_log_scale, reduction="none")
    q = stats.truncnorm((low - q_loc) / q_sigma, (high - q_loc) / q_sigma, loc=q_loc, scale=q_sigma)
    p = stats.truncnorm((low - p_loc) / p_sigma, (high - p_loc) / p_sigma, loc=p_loc, scale=p_sigma)
    exact, _ = integrate.quad(lambda t: q.pdf(t) * (q.logpdf(t) - p.logpdf(t)), low, high, epsrel=1e-12)
    standard_error = kl.std().item() / math.sqrt(n)
    assert abs(kl.mean().item() - exact) < 5 * standard_error, (kl.mean().item(), exact, standard_error)


def test_reference_gradcheck():
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 4, generator=generator, dtype=torch.float64).requires_grad_()
    log_scale = (0.3 * torch.randn(3, 4, generator=generator, dtype=torch.float64)).requires_grad_()
    prior_loc = torch.randn(1, 4, generator=generator, dtype=torch.float64).requires_grad_()
    prior_log_scale = (0.2 * torch.randn(3, 4, generator=generator, dtype=torch.float64)).requires_grad_()
    seed_offset = torch.tensor([5, 17])
    for low, high in [(-0.5, 1.0), (-INF, 0.2), (0.1, INF)]:
        def terms(loc, log_scale, prior_loc, prior_log_scale):
            return ref_tn.sample_truncated_normal(loc, log_scale, low, high, seed_offset, prior_loc,
                                                  prior_log_scale, reduction="none")

        assert torch.autograd.gradcheck(terms, (loc, log_scale, prior_loc, prior_log_scale))
        assert torch.autograd.gradgradcheck(terms, (loc, log_scale, prior_loc, prior_log_scale))


@pytest.mark.parametrize("low,high", [(-0.5, 1.0), (2.0, 2.5), (-INF, -3.0), (-40.0, -39.5)], ids=str)
def test_implicit_gradient_matches_finite_differences(low, high):
    # At fixed u, x(α, β) = Φ⁻¹((1 − u)Φ(α) + uΦ(β)): its derivative by central differences
    # of the quantile itself (no autograd) against the implicit derivative.
    u = uniforms(16, seed=8)
    alpha, beta = torch.full_like(u, low), torch.full_like(u, high)
    x = ref_tn.standard_truncated_normal_quantile(alpha, beta, u)
    d_alpha, d_beta = ref_tn.quantile_gradients(alpha, beta, u, x)
    step = 1e-6
    if math.isfinite(low):
        numeric = (ref_tn.standard_truncated_normal_quantile(alpha + step, beta, u)
                   - ref_tn.standard_truncated_normal_quantile(alpha - step, beta, u)) / (2 * step)
        torch.testing.assert_close(d_alpha, numeric, rtol=1e-5, atol=1e-8)
    else:
        assert bool((d_alpha == 0).all())
    numeric = (ref_tn.standard_truncated_normal_quantile(alpha, beta + step, u)
               - ref_tn.standard_truncated_normal_quantile(alpha, beta - step, u)) / (2 * step)
    torch.testing.assert_close(d_beta, numeric, rtol=1e-5, atol=1e-8)


TAIL_CASES = [
    # (loc, log_scale, low, high)
    (0.0, 0.0, -50.0, -49.0),
    (0.0, 0.0, -1e4, -1e4 + 1.0),
    (0.0, math.log(1e-3), 1.0, 2.0),        # α = 1000: deep in the upper tail
    (0.0, math.log(1e-3), -INF, -1.0),      # β = −1000
    (1e4, 0.0, 0.0, 1.0),                   # huge loc: α = −1e4
    (-3e4, 2.0, 5.0, INF),
    (0.0, 0.0, 40.0, 40.0 + 1e-6),          # an interval of width 1e-6 far out
    (0.0, 0.0, -1e-6, 1e-6),
]


@pytest.mark.parametrize("loc,log_scale,low,high", TAIL_CASES, ids=str)
def test_tails_stay_finite_and_inside(loc, log_scale, low, high):
    loc_t = torch.full((64, 3), loc, dtype=torch.float64, requires_grad=True)
    log_scale_t = torch.full((64, 3), log_scale, dtype=torch.float64, requires_grad=True)
    prior_loc = torch.full((1, 3), 0.5, dtype=torch.float64, requires_grad=True)
    z, log_q, kl = ref_tn.sample_truncated_normal(loc_t, log_scale_t, low, high, torch.tensor([1, 2]), prior_loc)
    assert bool(((z >= low) & (z <= high)).all())
    for t in (z, log_q, kl):
        assert bool(torch.isfinite(t).all())
    grads = torch.autograd.grad((z.sum() + log_q.sum() + kl.sum()), (loc_t, log_scale_t, prior_loc))
    for grad in grads:
        assert bool(torch.isfinite(grad).all())


def test_public_function_on_the_torch_backend():
    torch.manual_seed(0)
    loc = torch.randn(5, 3, device=DEVICE, requires_grad=True)
    log_scale = (0.1 * torch.randn(5, 3, device=DEVICE)).requires_grad_()
    with fastvae.use_backend("torch"):
        torch.manual_seed(4)
        z, log_q, kl = fastvae.sample_truncated_normal(loc, log_scale, -0.5, INF)
        torch.manual_seed(4)
        z_again, _, _ = fastvae.sample_truncated_normal(loc, log_scale, -0.5, INF)
    assert z.shape == loc.shape and z.dtype == torch.float32
    assert log_q.shape == (5,) and kl.shape == (5,) and log_q.dtype == torch.float32
    assert bool((z >= -0.5).all())
    assert torch.equal(z, z_again)
    expected = ref_tn.truncated_normal_log_prob(z.detach(), loc.detach(), log_scale.detach(), -0.5, INF).sum(1)
    torch.testing.assert_close(log_q.detach(), expected)
    (z.sum() + log_q.sum() + kl.sum()).backward()
    assert bool(torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all())


@pytest.mark.parametrize("low,high,message", [
    (1.0, 1.0, "low must be < high"),
    (2.0, 1.0, "low must be < high"),
    (math.nan, 1.0, "low must not be NaN"),
    (0.0, math.nan, "high must not be NaN"),
    (-INF, INF, "must not both be infinite"),
])
def test_bad_intervals_are_refused(low, high, message):
    loc = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=f"fastvae.sample_truncated_normal: .*{message}"):
        fastvae.sample_truncated_normal(loc, loc, low, high)


def test_bad_arguments_are_refused():
    loc = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="fastvae.sample_truncated_normal: low must be a Python number"):
        fastvae.sample_truncated_normal(loc, loc, torch.tensor(0.0), 1.0)
    with pytest.raises(ValueError, match="fastvae.sample_truncated_normal: log_scale has shape"):
        fastvae.sample_truncated_normal(loc, torch.zeros(2, 4), 0.0, 1.0)
    with pytest.raises(ValueError, match="fastvae.sample_truncated_normal: prior_loc of shape"):
        fastvae.sample_truncated_normal(loc, loc, 0.0, 1.0, prior_loc=torch.zeros(4))
    with pytest.raises(ValueError, match="fastvae.sample_truncated_normal: reduction"):
        fastvae.sample_truncated_normal(loc, loc, 0.0, 1.0, reduction="max")
    with pytest.raises(ValueError, match="fastvae.sample_truncated_normal: loc contains NaN"):
        fastvae.sample_truncated_normal(torch.full((2, 3), math.nan), loc, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# Every kernel backend against the reference
# --------------------------------------------------------------------------------------

SHAPES = [(0, 5), (1, 1), (3, 7), (33, 65), (4, 3, 5, 6)]
BACKEND_INTERVALS = [(-1.0, 2.0), (-INF, 0.5), (0.25, INF), (2.5, 3.0)]


def make_inputs(shape, dtype, seed=0, prior="broadcast"):
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=generator).to(DEVICE, dtype).requires_grad_()
    log_scale = (0.5 * torch.randn(shape, generator=generator)).to(DEVICE, dtype).requires_grad_()
    if prior is None:
        return loc, log_scale, None, None
    prior_shape = (1,) + tuple(shape[1:]) if prior == "broadcast" else tuple(shape)
    prior_loc = (0.5 * torch.randn(prior_shape, generator=generator)).to(DEVICE, dtype).requires_grad_()
    prior_log_scale = (0.3 * torch.randn(prior_shape, generator=generator)).to(DEVICE, dtype).requires_grad_()
    return loc, log_scale, prior_loc, prior_log_scale


def run_with(backend, inputs, low, high, reduction, seed=1234, grad_seed=7):
    """Outputs and the gradients of Σ g·output (random g: the op is not the last layer)
    in every input that requires grad, on ``backend`` from a fixed seed."""
    inputs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    with fastvae.use_backend(backend):
        torch.manual_seed(seed)
        outputs = fastvae.sample_truncated_normal(*inputs[:2], low, high, *inputs[2:], reduction=reduction)
    generator = torch.Generator().manual_seed(grad_seed)
    upstream = [torch.randn(o.shape, generator=generator).to(o.device, o.dtype) for o in outputs]
    wanted = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(outputs, wanted, upstream, allow_unused=True) if wanted[0].numel() else [
        torch.zeros_like(t) for t in wanted]
    return outputs, grads


# Gradients: several terms of log-density slopes (up to |x|·φ/Z) are added, each rounded in
# float32; the 16-bit dtypes round the inputs the same for both, and the outputs once.
GRAD_SCALE = {torch.float32: 20.0, torch.bfloat16: 4.0, torch.float16: 4.0}


def assert_matches(actual, expected, dtype, scale, what):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol * scale, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("low,high", BACKEND_INTERVALS, ids=str)
def test_backend_matches_reference(kernel_backend, dtype, shape, low, high):
    inputs = make_inputs(shape, dtype)
    (z, log_q, kl), grads = run_with(kernel_backend, inputs, low, high, "batch")
    (z_ref, log_q_ref, kl_ref), grads_ref = run_with("torch", inputs, low, high, "batch")
    assert z.dtype == dtype and z.shape == inputs[0].shape
    assert log_q.dtype == torch.float32 and log_q.shape == (shape[0],) and kl.shape == (shape[0],)
    assert bool(((z >= low) & (z <= high)).all())
    assert_matches(z, z_ref, dtype, 1.0, "z")
    features = max(1, math.prod(shape[1:]))
    # log q and kl are taken at the rounded z in the 16-bit dtypes on both sides, but their
    # sums of ``features`` terms are float32 with the terms' rounding each.
    assert_matches(log_q, log_q_ref, torch.float32, 4.0 * features, "log_q")
    assert_matches(kl, kl_ref, torch.float32, 4.0 * features, "kl")
    for grad, grad_ref, name in zip(grads, grads_ref, ("loc", "log_scale", "prior_loc", "prior_log_scale")):
        assert grad.dtype == dtype
        assert_matches(grad, grad_ref, dtype, GRAD_SCALE[dtype] * (shape[0] if name.startswith("prior") else 1),
                       f"grad {name}")


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_backend_reductions_and_full_size_priors(kernel_backend, reduction):
    inputs = make_inputs((6, 2, 5), torch.float32, seed=3, prior="full")
    outputs, grads = run_with(kernel_backend, inputs, -0.5, 1.5, reduction)
    outputs_ref, grads_ref = run_with("torch", inputs, -0.5, 1.5, reduction)
    for output, output_ref in zip(outputs, outputs_ref):
        assert output.shape == output_ref.shape and output.dtype == output_ref.dtype
        assert_matches(output, output_ref, torch.float32, 40.0, "output")
    for grad, grad_ref in zip(grads, grads_ref):
        assert_matches(grad, grad_ref, torch.float32, 40.0, "grad")


def test_backend_gradient_of_one_output_at_a_time(kernel_backend):
    inputs = make_inputs((5, 9), torch.float32, seed=4)
    for which in range(3):
        results = []
        for backend in (kernel_backend, "torch"):
            leaves = [t.detach().clone().requires_grad_() for t in inputs]
            with fastvae.use_backend(backend):
                torch.manual_seed(11)
                output = fastvae.sample_truncated_normal(leaves[0], leaves[1], -INF, 1.0, *leaves[2:])[which]
            results.append(torch.autograd.grad(output.sum() * 1.7, leaves, allow_unused=True))
        for grad, grad_ref in zip(*results):
            if grad_ref is None or (which < 2 and grad is None):
                # Only the KL reads the prior: without its gradient the prior gets none.
                assert grad is None or not bool(grad.any())
                continue
            assert_matches(grad, grad_ref, torch.float32, 20.0, f"output {which}")


@pytest.mark.parametrize("low,high", [(-1.0, 2.0), (3.0, INF), (-INF, -4.0), (6.0, 6.5)], ids=str)
def test_backend_samples_follow_scipy_truncnorm(kernel_backend, low, high):
    # [4, 1000]: four rows of one tile each (Triton's interpreter pays per program).
    loc = torch.full((4, 1000), 0.5, device=DEVICE)
    log_scale = torch.full((4, 1000), math.log(0.8), device=DEVICE)
    torch.manual_seed(21)
    z, _, _ = fastvae.sample_truncated_normal(loc, log_scale, low, high)
    z = z.double().cpu().flatten().numpy()
    assert np.all((z >= low) & (z <= high))
    a, b = (low - 0.5) / 0.8, (high - 0.5) / 0.8
    assert stats.kstest(z, stats.truncnorm(a, b, loc=0.5, scale=0.8).cdf).pvalue > 1e-3


@pytest.mark.parametrize("loc,log_scale,low,high", TAIL_CASES, ids=str)
def test_backend_tails_stay_finite_and_inside(kernel_backend, loc, log_scale, low, high):
    shape = (16, 3)
    loc_t = torch.full(shape, loc, device=DEVICE)
    log_scale_t = torch.full(shape, log_scale, device=DEVICE)
    prior_loc = torch.full((1, 3), 0.5, device=DEVICE)
    inputs = (loc_t, log_scale_t, prior_loc, None)
    (z, log_q, kl), grads = run_with(kernel_backend, inputs, low, high, "none")
    (z_ref, log_q_ref, kl_ref), _ = run_with("torch", inputs, low, high, "none")
    assert bool(((z >= low) & (z <= high)).all())
    for t in (z, log_q, kl, *grads):
        assert bool(torch.isfinite(t).all())
    # log q in float32 stays as exact as its inputs allow even where it is the difference of
    # ½x² ≈ 5·10^7 and log Z: the construction of docs/architecture.md.
    torch.testing.assert_close(log_q.double(), log_q_ref.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z.double(), z_ref.double(), rtol=1e-6, atol=1e-4 * min(high - low, 1.0))


def test_same_noise_on_every_backend():
    """Every backend draws the same uniform for element i (word 0 of Philox at base + i):
    the samples agree to float32 rounding."""
    inputs = make_inputs((7, 11), torch.float32, seed=9, prior=None)
    samples = {}
    for backend in ["torch"] + KERNEL_BACKENDS:
        (z, _, _), _ = run_with(backend, inputs, -2.0, 0.5, "batch", seed=77)
        samples[backend] = z
    for backend, z in samples.items():
        torch.testing.assert_close(z, samples["torch"], rtol=1e-5, atol=1e-6, msg=backend)


def test_backend_is_bitwise_repeatable(kernel_backend):
    inputs = make_inputs((40, 70), torch.float32, seed=2)
    first = run_with(kernel_backend, inputs, -1.0, INF, "batch")
    second = run_with(kernel_backend, inputs, -1.0, INF, "batch")
    for a, b in zip([*first[0], *first[1]], [*second[0], *second[1]]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("features", [2**13] + ROW_SUM_FEATURES)
def test_row_sums_are_exact(kernel_backend, features):
    """log q and the KL of a row of ``features`` elements: the float64 sum of the
    backend's own per-element terms, rounded once (row_sums.py, csrc/cpu/row_sum.h)."""
    if kernel_backend == "triton" and features > 2**13:
        pytest.skip("Triton's interpreter takes about 0.3 s per tile of this kernel: 40 s a call at 2^16 "
                    "(2^13 covers its eight partial sums per row)")
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(2, features, generator=generator).to(DEVICE)
    log_scale = (0.3 * torch.randn(2, features, generator=generator)).to(DEVICE)
    sums, terms = [], []
    for reduction in ("batch", "none"):
        torch.manual_seed(5)
        outputs = fastvae.sample_truncated_normal(loc, log_scale, -1.0, 3.0, reduction=reduction)
        (sums if reduction == "batch" else terms).append(outputs[1:])
    for row_sum, element_terms in zip(sums[0], terms[0]):
        exact = element_terms.double().sum(1)
        error = (row_sum.double() - exact).abs()
        assert bool((error <= 2 * torch.finfo(torch.float32).eps * exact.abs()).all()), (error, exact)


def test_backend_double_backward_is_refused(kernel_backend):
    loc, log_scale, _, _ = make_inputs((3, 4), torch.float32, prior=None)
    _, _, kl = fastvae.sample_truncated_normal(loc, log_scale, -1.0, 1.0)
    (grad_loc,) = torch.autograd.grad(kl.sum(), loc, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_loc.sum().backward()
