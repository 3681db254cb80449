"""Location-scale latent ops (sample_laplace, sample_logistic, sample_cauchy) and their
reference (fastvae.reference_location_scale): the noise against scipy.stats, the log
densities and KLs against float64 scipy and numerical integration, gradcheck of the
reference; every kernel backend against the reference, forward and backward, over shapes,
dtypes, priors, reductions and free bits; bad input, NaN, empty batches."""
import math

import pytest
import torch

import fastvae
from fastvae import reference_location_scale as ls_reference
from tests.conftest import DEVICE

scipy_stats = pytest.importorskip("scipy.stats")
scipy_integrate = pytest.importorskip("scipy.integrate")

FAMILIES = ["laplace", "logistic", "cauchy"]
SAMPLERS = {"laplace": fastvae.sample_laplace, "logistic": fastvae.sample_logistic, "cauchy": fastvae.sample_cauchy}
LOG_PROBS = {
    "laplace": ls_reference.laplace_log_prob,
    "logistic": ls_reference.logistic_log_prob,
    "cauchy": ls_reference.cauchy_log_prob,
}
ANALYTIC_KLS = {"laplace": ls_reference.laplace_kl_terms, "cauchy": ls_reference.cauchy_kl_terms}


def make_latent(shape, dtype, seed=0, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    log_scale = (0.5 * torch.randn(shape, generator=generator)).to(DEVICE, dtype)
    return loc.requires_grad_(requires_grad), log_scale.requires_grad_(requires_grad)


def standard_noise(family, loc, log_scale, **kwargs):
    """x = (z − loc)/scale of one call, in float64."""
    z, _, _ = SAMPLERS[family](loc, log_scale, **kwargs)
    return ((z.double() - loc.double()) * torch.exp(-log_scale.double())).detach().cpu()


# --------------------------------------------------------------------------------------
# The noise
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 2024])
def test_noise_follows_the_distribution(family, seed):
    """x = (z − loc)/scale passes Kolmogorov–Smirnov against scipy's standard distribution,
    its quantiles are the distribution's, and neighbours are independent."""
    loc = torch.linspace(-3, 3, 128 * 256, device=DEVICE).reshape(128, 256)
    log_scale = torch.linspace(-1, 1, 128 * 256, device=DEVICE).reshape(128, 256).flip(1)
    torch.manual_seed(seed)
    x = standard_noise(family, loc, log_scale).flatten()
    distribution = getattr(scipy_stats, family)
    assert scipy_stats.kstest(x.numpy(), family).pvalue > 1e-3
    levels = torch.tensor([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99], dtype=torch.float64)
    quantiles = torch.quantile(x, levels)
    expected = torch.from_numpy(distribution.ppf(levels.numpy()))
    # The spread of an empirical quantile: sqrt(p(1 − p)/n) / density at the quantile.
    spread = torch.sqrt(levels * (1 - levels) / x.numel()) / torch.from_numpy(distribution.pdf(expected.numpy()))
    assert ((quantiles - expected).abs() < 5 * spread).all(), (quantiles, expected)
    # Spearman-style check of neighbours: the ranks of x[i] and x[i + 1] are uncorrelated.
    ranks = x.argsort().argsort().double()
    assert abs(torch.corrcoef(torch.stack([ranks[:-1], ranks[1:]]))[0, 1].item()) < 0.03


def test_tail_probability_noise_covers_both_tails_finely():
    """p = ½·u0 + 2^-33 lies in (0, ½], the sign splits evenly, and the sample's largest
    |x| reaches the far tail (the quantile at p ≈ 1/(2n)), which 1 − u would cut at
    −log(2^-24)."""
    seed_offset = torch.tensor([7, 123], dtype=torch.int64)
    sign, p = ls_reference.tail_probability_noise(seed_offset, (1 << 18,))
    assert p.dtype == torch.float32 and bool((p > 0).all()) and bool((p <= 0.5).all())
    assert abs(sign.mean().item()) < 4 / math.sqrt(sign.numel())
    laplace = ls_reference.standard_laplace(seed_offset, (1 << 18,))
    assert laplace.abs().max().item() > math.log(1 << 17) - 3


def test_noise_is_the_uniform_pair_through_the_quantiles():
    """Element i is (sign, p) from words 0 and 1 of Philox at base + i, each family's
    quantile of it, in float32."""
    seed_offset = torch.tensor([2**40 + 3, 2**32 - 5], dtype=torch.int64)
    u0, u1 = fastvae.random.philox_uniform_pair(seed_offset, (3, 4))
    assert torch.equal(u0, fastvae.random.philox_uniform(seed_offset, (3, 4)))
    p = (0.5 * u0.double() + 2.0**-33).float().double()
    sign = torch.where(u1 < 0.5, -1.0, 1.0).double()
    expected = {
        "laplace": sign * -torch.log(2 * p),
        "logistic": sign * (torch.log1p(-p) - torch.log(p)),
        "cauchy": sign / torch.tan(math.pi * p),
    }
    for family, noise in (("laplace", ls_reference.standard_laplace), ("logistic", ls_reference.standard_logistic),
                          ("cauchy", ls_reference.standard_cauchy)):
        x = noise(seed_offset, (3, 4))
        assert x.dtype == torch.float32
        torch.testing.assert_close(x.double(), expected[family], rtol=3e-6, atol=1e-6, msg=family)


# --------------------------------------------------------------------------------------
# Log densities and KLs of the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_matches_scipy_including_extremes(family):
    z = torch.tensor([0.0, 0.3, -2.5, 40.0, -1e3, 1e6, 3e30, -1e300], dtype=torch.float64)
    loc = torch.tensor([0.0, -0.2, 1.0, -5.0, 2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    log_scale = torch.tensor([0.0, -3.0, 2.0, 0.5, -20.0, 10.0, 1.0, -1.0], dtype=torch.float64)
    expected = getattr(scipy_stats, family).logpdf(z.numpy(), loc.numpy(), torch.exp(log_scale).numpy())
    if family == "laplace":
        # scipy takes the log of the density, which underflows to 0 past |t| ≈ 745.
        formula = -math.log(2.0) - log_scale - (z - loc).abs() * torch.exp(-log_scale)
        expected = torch.where(torch.isfinite(torch.from_numpy(expected)), torch.from_numpy(expected), formula).numpy()
    got = LOG_PROBS[family](z, loc, log_scale)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(got).all()
    # Float32 keeps its relative accuracy where the float32 arguments are representable.
    got32 = LOG_PROBS[family](z[:6].float(), loc[:6].float(), log_scale[:6].float())
    torch.testing.assert_close(got32.double(), torch.from_numpy(expected[:6]), rtol=1e-6, atol=1e-6)


def integrated_kl(family, loc, log_scale, prior_loc, prior_log_scale):
    """KL(q ‖ p) by numerical integration in float64 (scipy.integrate.quad), in the
    standardized variable of q, with breakpoints at both locations."""
    scale = math.exp(log_scale)

    def log_density(value, center, log_width):
        if family == "laplace":  # scipy's logpdf is log(pdf), -inf once pdf underflows
            return -math.log(2.0) - log_width - abs(value - center) * math.exp(-log_width)
        return getattr(scipy_stats, family).logpdf(value, center, math.exp(log_width))

    def integrand(x):
        value = loc + scale * x
        log_q = log_density(value, loc, log_scale)
        return math.exp(log_q) * scale * (log_q - log_density(value, prior_loc, prior_log_scale))

    width = 60.0 if family == "laplace" else math.inf
    breakpoints = sorted({0.0, (prior_loc - loc) / scale})
    if width == math.inf:
        pieces = [(-math.inf, breakpoints[0]), (breakpoints[-1], math.inf)]
        if len(breakpoints) == 2:
            pieces.insert(1, (breakpoints[0], breakpoints[1]))
        return sum(scipy_integrate.quad(integrand, a, b, limit=500, epsabs=1e-13, epsrel=1e-11)[0] for a, b in pieces)
    inside = [b for b in breakpoints if -width < b < width]
    return scipy_integrate.quad(integrand, -width, width, points=inside or None, limit=500, epsabs=1e-13,
                                epsrel=1e-11)[0]


KL_CASES = [
    (0.0, 0.0, 0.0, 0.0),
    (0.3, -0.2, 1.0, 0.5),
    (5.0, 2.0, -3.0, -1.0),
    (0.1, -3.0, 0.0, 3.0),
    (-2.0, 1.5, 2.0, 1.5),
    (1e-3, 1e-3, 0.0, 0.0),
]


@pytest.mark.parametrize("family", ["laplace", "cauchy"])
@pytest.mark.parametrize("case", KL_CASES, ids=str)
def test_analytic_kl_matches_numerical_integration(family, case):
    loc, log_scale, prior_loc, prior_log_scale = (torch.tensor([value], dtype=torch.float64) for value in case)
    kl = ANALYTIC_KLS[family](loc, log_scale, prior_loc, prior_log_scale).item()
    expected = integrated_kl(family, *case)
    assert kl == pytest.approx(expected, rel=1e-7, abs=1e-11)
    kl32 = ANALYTIC_KLS[family](loc.float(), log_scale.float(), prior_loc.float(), prior_log_scale.float()).item()
    assert kl32 == pytest.approx(kl, rel=2e-5, abs=1e-6)


def exact_kl(family, loc, log_scale, prior_loc, prior_log_scale):
    """The textbook KL formula in 60-digit arithmetic (mpmath, which torch's sympy brings)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        b1, b2 = mpmath.exp(mpmath.mpf(log_scale)), mpmath.exp(mpmath.mpf(prior_log_scale))
        delta = abs(mpmath.mpf(loc) - mpmath.mpf(prior_loc))
        if family == "laplace":
            kl = mpmath.log(b2 / b1) + delta / b2 + b1 / b2 * mpmath.exp(-delta / b1) - 1
        else:
            kl = mpmath.log(((b1 + b2) ** 2 + delta**2) / (4 * b1 * b2))
        return float(kl)


EXTREME_CASES = [
    (1e4, -10.0, -1e4, 0.0),
    (0.0, 30.0, 0.0, -30.0),
    (0.0, -40.0, 0.0, 40.0),
    (1e30, 0.0, -1e30, 0.0),
    (3e-3, -20.0, 0.0, -20.0),
    (0.0, 1e-6, 0.0, 0.0),
    (1e-7, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("case", EXTREME_CASES, ids=str)
def test_analytic_kls_at_extreme_values(case):
    """Large scales and differences (no overflow: γ² = e^80 or Δ² = 1e60 overflow
    float32) and near-equal distributions (no cancellation), in float64 against exact
    arithmetic, and in float32 where the float32 inputs are the same numbers."""
    tensors = [torch.tensor([value], dtype=torch.float64) for value in case]
    float32_case = tuple(t.float().double().item() for t in tensors)
    for family, kl_terms in ANALYTIC_KLS.items():
        if family == "laplace" and abs(case[0] - case[2]) > 1e20:
            continue  # |Δ|/b2 is the KL itself there, nothing to cancel or overflow
        kl = kl_terms(*tensors).item()
        assert kl == pytest.approx(exact_kl(family, *case), rel=1e-10, abs=1e-300), family
        kl32 = kl_terms(*(t.float() for t in tensors)).item()
        assert math.isfinite(kl32)
        assert kl32 == pytest.approx(exact_kl(family, *float32_case), rel=1e-5, abs=1e-30), family


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_gradcheck_float64(family):
    """The reference's gradients (of z, log q and the KL, in every parameter and both
    priors) are its function's: torch.autograd.gradcheck in float64."""
    loc, log_scale = make_latent((3, 4), torch.float64)
    generator = torch.Generator().manual_seed(5)
    prior_loc = torch.randn(1, 4, generator=generator, dtype=torch.float64).requires_grad_()
    prior_log_scale = (0.3 * torch.randn(1, 4, generator=generator, dtype=torch.float64)).requires_grad_()
    seed_offset = torch.tensor([3, 9], dtype=torch.int64)

    def function(loc, log_scale, prior_loc, prior_log_scale):
        sample = getattr(ls_reference, f"sample_{family}")
        return sample(loc, log_scale, seed_offset, prior_loc, prior_log_scale, reduction="none")

    assert torch.autograd.gradcheck(function, (loc, log_scale, prior_loc, prior_log_scale))


@pytest.mark.parametrize("family", ["laplace", "cauchy"])
def test_reference_kl_gradcheck_in_both_branches(family):
    """The KLs' gradients where the Cauchy's is formed in log space (|h| or log t above
    15) and at Δ = 0, where |Δ| has a kink but the KL none."""
    # Element 2 has log t > 15 for the Cauchy; the Laplace KL is |Δ|/b2 ≈ 1e9 there, too
    # large for gradcheck's finite differences, so it gets smaller scales' inverse.
    small_log_scale = -20.0 if family == "cauchy" else -2.0
    loc = torch.tensor([0.0, 3.0, 5.0, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([0.0, 40.0, small_log_scale, -1.0, 0.2], dtype=torch.float64, requires_grad=True)
    prior_loc = torch.tensor([1e-3, 0.0, -5.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    prior_log_scale = torch.tensor([0.1, -2.0, small_log_scale - 0.5, 0.3, -0.2], dtype=torch.float64,
                                   requires_grad=True)
    kl = ANALYTIC_KLS[family]
    assert torch.autograd.gradcheck(kl, (loc, log_scale, prior_loc, prior_log_scale))
    (grad_loc,) = torch.autograd.grad(kl(loc, log_scale, prior_loc, prior_log_scale)[4], [loc])
    assert grad_loc[4].item() == 0.0


# --------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_log_q_is_the_density_at_the_sample_and_kl_its_definition(family):
    """log q is the log density of q at the z it returns; the logistic's KL is
    log q(z) − log p(z) at the same z, the analytic KLs their formulas."""
    loc, log_scale = make_latent((6, 5), torch.float64, requires_grad=False)
    prior_loc, prior_log_scale = 0.3 * torch.ones(5, dtype=torch.float64), -0.2 * torch.ones(5, dtype=torch.float64)
    z, log_q, kl = SAMPLERS[family](loc, log_scale, prior_loc, prior_log_scale, reduction="none")
    assert z.dtype == log_q.dtype == kl.dtype == torch.float64
    torch.testing.assert_close(log_q, LOG_PROBS[family](z, loc, log_scale), rtol=1e-10, atol=1e-10)
    if family == "logistic":
        expected = log_q - LOG_PROBS[family](z, prior_loc, prior_log_scale)
    else:
        expected = ANALYTIC_KLS[family](loc, log_scale, prior_loc, prior_log_scale)
    torch.testing.assert_close(kl, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_log_q_gradient_is_the_total_derivative_along_the_sample(family):
    loc, log_scale = make_latent((4, 3), torch.float32)
    _, log_q, _ = SAMPLERS[family](loc, log_scale, reduction="none")
    grad_loc, grad_log_scale = torch.autograd.grad(log_q.sum(), [loc, log_scale])
    assert torch.equal(grad_loc, torch.zeros_like(loc))
    assert torch.equal(grad_log_scale, -torch.ones_like(log_scale))


@pytest.mark.parametrize("family", ["laplace", "cauchy"])
def test_free_bits_hold_low_kl_dimensions(family):
    loc, log_scale = make_latent((64, 6), torch.float32)
    with torch.no_grad():
        loc[:, :2] *= 0.01
        log_scale[:, :2] *= 0.01
        loc[:, 2:] *= 3.0
    free_bits = 0.5
    _, _, objective = SAMPLERS[family](loc, log_scale, free_bits=free_bits, reduction="mean")
    per_dimension = ANALYTIC_KLS[family](loc.detach(), log_scale.detach()).mean(0)
    assert bool((per_dimension[:2] < free_bits).all()) and bool((per_dimension[2:] > free_bits).all())
    torch.testing.assert_close(objective, torch.clamp_min(per_dimension, free_bits).sum(), rtol=1e-5, atol=1e-5)
    objective.backward()
    assert torch.all(loc.grad[:, :2] == 0) and torch.all(log_scale.grad[:, :2] == 0)
    assert torch.all(loc.grad[:, 2:].abs().sum(0) > 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_monte_carlo_kl_estimates_the_analytic_kl(family):
    """The mean of log q(z) − log p(z) over many samples is the KL (for the logistic,
    against numerical integration), which ties the sampler, log q and the KL together."""
    case = (0.4, -0.3, -0.2, 0.4)
    n = 1 << 17
    loc, log_scale = torch.full((n, 1), case[0]), torch.full((n, 1), case[1])
    prior_loc, prior_log_scale = torch.tensor([case[2]]), torch.tensor([case[3]])
    torch.manual_seed(1)
    z, log_q, kl = SAMPLERS[family](loc, log_scale, prior_loc, prior_log_scale, reduction="none")
    estimates = (log_q - LOG_PROBS[family](z.double(), prior_loc.double(), prior_log_scale.double())).double()
    expected = integrated_kl(family, *case)
    assert abs(estimates.mean().item() - expected) < 5 * estimates.std().item() / math.sqrt(n)
    if family != "logistic":
        assert kl[0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_float64_runs_on_reference():
    loc, log_scale = make_latent((5, 6), torch.float64)
    for family in FAMILIES:
        z, log_q, kl = SAMPLERS[family](loc, log_scale)
        assert z.dtype == log_q.dtype == kl.dtype == torch.float64 and kl.shape == (5,)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reduction, shape", [("batch", (4,)), ("none", (4, 3, 2)), ("sum", ()), ("mean", ())])
def test_reductions_and_dtypes(family, reduction, shape):
    loc, log_scale = make_latent((4, 3, 2), torch.bfloat16)
    z, log_q, kl = SAMPLERS[family](loc, log_scale, reduction=reduction)
    assert z.dtype == torch.bfloat16 and z.shape == loc.shape
    assert log_q.dtype == kl.dtype == torch.float32 and log_q.shape == kl.shape == shape


BAD_CALLS = [
    (lambda f, m, v: f(m, v[:, :3]), ValueError, r"{op}: log_scale has shape \(4, 3\)"),
    (lambda f, m, v: f(m.long(), v), TypeError, r"{op}: loc must have a floating dtype"),
    (lambda f, m, v: f(m, v, prior_loc=torch.zeros(3)), ValueError,
     r"{op}: prior_loc of shape \(3,\) does not broadcast"),
    (lambda f, m, v: f(m, v, prior_log_scale=torch.zeros(2, 4, 5)), ValueError, r"{op}: prior_log_scale"),
    (lambda f, m, v: f(m, v, reduction="avg"), ValueError, r"{op}: reduction must be one of"),
    (lambda f, m, v: f(m, v.to("meta")), ValueError, r"{op}: log_scale is on meta"),
    (lambda f, m, v: f(m[0, 0], v[0, 0]), ValueError, r"{op}: loc must have at least 1"),
    (lambda f, m, v: f(m, v, generator=42), TypeError, r"{op}: generator must be a torch.Generator"),
    (lambda f, m, v: f(m, "log_scale"), TypeError, r"{op}: log_scale must be a torch.Tensor"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_bad_input_names_op_and_argument(family, index):
    call, error, message = BAD_CALLS[index]
    loc, log_scale = make_latent((4, 5), torch.float32, requires_grad=False)
    with pytest.raises(error, match=message.format(op=f"fastvae.sample_{family}")):
        call(SAMPLERS[family], loc, log_scale)


@pytest.mark.parametrize("family", ["laplace", "cauchy"])
def test_bad_free_bits(family):
    loc, log_scale = make_latent((4, 5), torch.float32, requires_grad=False)
    with pytest.raises(ValueError, match=rf"fastvae.sample_{family}: free_bits must be >= 0"):
        SAMPLERS[family](loc, log_scale, free_bits=-0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_nonfinite_raises_under_validate_args(family):
    loc, log_scale = make_latent((4, 5), torch.float32, requires_grad=False)
    log_scale[0, 0] = float("inf")
    with pytest.raises(ValueError, match=rf"fastvae.sample_{family}: log_scale contains NaN or infinity"):
        SAMPLERS[family](loc, log_scale)
