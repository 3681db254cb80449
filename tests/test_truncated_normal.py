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
from tests.conftest import DEVICE

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
