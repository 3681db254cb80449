"""Reconstruction likelihoods (bernoulli_nll, continuous_bernoulli_nll, gaussian_nll,
bits_per_dim) and their _sample / _mean helpers: every kernel backend against
fastvae.reference, forward and backward, over shapes, dtypes, reductions and logvar
layouts; the reference against torch's own distributions and gradcheck in float64; the
continuous Bernoulli's normalizer at extreme logits and across its Taylor switch;
samples against their distributions; bad input, NaN, empty batches, double backward."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastvae
from fastvae import reference
from tests.conftest import DEVICE, ROW_SUM_FEATURES, assert_as_accurate_as_torch, assert_close

SHAPES = [(0, 5), (1, 1), (3, 7), (257, 129), (4, 3, 5, 7)]
REDUCTIONS = ["batch", "none", "sum", "mean"]
FAMILIES = ["bernoulli", "continuous_bernoulli", "gaussian"]
# The interpreter evaluates both sides of a tl.where in NumPy, so the discarded branch of
# a guarded division (kernels/math.py's log1p at u = 1) warns; the kept values are exact.
pytestmark = pytest.mark.filterwarnings(
    "ignore:divide by zero encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)
OPS = {
    "bernoulli": fastvae.bernoulli_nll,
    "continuous_bernoulli": fastvae.continuous_bernoulli_nll,
    "gaussian": fastvae.gaussian_nll,
}


def make_inputs(family, shape, dtype, seed=0, requires_grad=True, x_dtype=None):
    """(params, x): logits and x in [0, 1] for the Bernoullis, mean and x for the Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    x_dtype = x_dtype or dtype
    if family == "gaussian":
        params = torch.randn(shape, generator=generator)
        x = params + 0.7 * torch.randn(shape, generator=generator)
    else:
        params = 3.0 * torch.randn(shape, generator=generator)
        x = torch.rand(shape, generator=generator)
    params = params.to(DEVICE, dtype).requires_grad_(requires_grad)
    x = x.to(DEVICE, x_dtype).requires_grad_(requires_grad and x_dtype.is_floating_point)
    return params, x


def run_both(fn, inputs):
    """``fn`` with the current backend and with the reference, on fresh leaf copies of
    the inputs; returns (out, reference out, reference inputs)."""
    out = fn(*inputs)
    with fastvae.use_backend("torch"):
        ref_inputs = [
            t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs
        ]
        ref_out = fn(*ref_inputs)
    return out, ref_out, ref_inputs


def upstream_grad(output, seed=7):
    """A random output gradient: the op is not the last layer."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(output.shape, generator=generator).to(output.device, output.dtype)


def grads_of(output, inputs, grad_output):
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad([output], wanted, [grad_output])


def check_against_reference(fn, inputs, dtype, features, grad_scale=1.0):
    out, ref_out, ref_inputs = run_both(fn, inputs)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    # Both compute in float32 from the same (rounded) inputs: only summation order differs.
    assert_close(out, ref_out, torch.float32, scale=max(features, 1))
    grad_out = upstream_grad(out)
    grads = grads_of(out, inputs, grad_out)
    grads_ref = grads_of(ref_out, ref_inputs, grad_out)
    assert len(grads) == len(grads_ref)
    for tensor, grad, grad_ref in zip([t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad], grads, grads_ref):
        assert grad.shape == tensor.shape and grad.dtype == tensor.dtype
        assert_close(grad, grad_ref, dtype, scale=grad_scale)
    return out


# --------------------------------------------------------------------------------------
# Kernels against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nll_matches_reference(kernel_backend, dtype, shape, family):
    params, x = make_inputs(family, shape, dtype)
    if family == "gaussian":
        fn = lambda m, t: fastvae.gaussian_nll(m, t, logvar=-0.3)  # noqa: E731
    else:
        fn = OPS[family]
    features = math.prod(shape[1:])
    out = check_against_reference(fn, [params, x], dtype, features, grad_scale=4)
    assert out.shape == (shape[0],) and out.dtype == torch.float32


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_reduction(kernel_backend, family, reduction):
    params, x = make_inputs(family, (33, 3, 10), torch.float32)
    out = check_against_reference(lambda p, t: OPS[family](p, t, reduction=reduction), [params, x], torch.float32, 33 * 30)
    expected_shape = {"batch": (33,), "none": (33, 3, 10), "sum": (), "mean": ()}[reduction]
    assert out.shape == expected_shape


@pytest.mark.parametrize("family", FAMILIES)
def test_non_contiguous_inputs(kernel_backend, family):
    base_params, base_x = make_inputs(family, (20, 30), torch.float32, requires_grad=False)
    params = base_params.t().requires_grad_()  # [30, 20], strided
    x = base_x.t().requires_grad_()
    assert not params.is_contiguous() and not x.is_contiguous()
    check_against_reference(OPS[family], [params, x], torch.float32, 20)
    # A slice with a row stride, in 'none'.
    sliced_params = base_params[:, ::3].detach().requires_grad_()
    sliced_x = base_x[:, 1::3].detach().requires_grad_()
    check_against_reference(lambda p, t: OPS[family](p, t, reduction="none"), [sliced_params[:, :10], sliced_x],
                            torch.float32, 1)


@pytest.mark.parametrize("family", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("x_dtype", [torch.bool, torch.uint8], ids=str)
def test_binary_x(kernel_backend, family, x_dtype):
    logits, x_float = make_inputs(family, (9, 2, 5, 3), torch.bfloat16, requires_grad=False)
    x_float = (x_float > 0.5).to(torch.bfloat16)
    x = x_float.to(x_dtype)
    logits.requires_grad_()
    out = OPS[family](logits, x)
    out_float = OPS[family](logits, x_float)
    assert torch.equal(out, out_float)
    (grad,) = torch.autograd.grad(out.sum(), [logits])
    (grad_float,) = torch.autograd.grad(out_float.sum(), [logits])
    assert torch.equal(grad, grad_float)
    with fastvae.use_backend("torch"):
        assert_close(out, OPS[family](logits, x), torch.float32, scale=30)


def test_mixed_dtypes(kernel_backend):
    """bfloat16 logits with float16 soft targets (promoted: float32); each gradient in its
    input's dtype."""
    logits, x = make_inputs("bernoulli", (6, 40), torch.bfloat16, x_dtype=torch.float16)
    out = check_against_reference(fastvae.continuous_bernoulli_nll, [logits, x], torch.bfloat16, 40)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_of_x_only(kernel_backend, family):
    """x as a soft target (or a Gaussian's data) requiring grad, the params not:
    d/dx = −l for the Bernoullis, (x − mean)·e^(−logvar) for the Gaussian."""
    params, x = make_inputs(family, (5, 11), torch.float32)
    params.requires_grad_(False)
    out = OPS[family](params, x, reduction="none")
    grad_out = upstream_grad(out)
    (grad_x,) = torch.autograd.grad(out, [x], grad_out)
    expected = grad_out * (x.detach() - params) if family == "gaussian" else -grad_out * params
    torch.testing.assert_close(grad_x, expected)


@pytest.mark.parametrize(
    "logvar_shape",
    [None, (), (1, 3, 1, 1), (3, 1, 1), (1, 1, 5, 1), (4, 3, 5, 7)],
    ids=["number", "scalar", "channel", "channel-3d", "row", "full"],
)
def test_gaussian_logvar_layouts(kernel_backend, logvar_shape):
    mean, x = make_inputs("gaussian", (4, 3, 5, 7), torch.float32)
    if logvar_shape is None:
        logvar = -1.25
        inputs = [mean, x]
        fn = lambda m, t: fastvae.gaussian_nll(m, t, logvar)  # noqa: E731
    else:
        generator = torch.Generator().manual_seed(5)
        logvar = (0.5 * torch.randn(logvar_shape, generator=generator)).to(DEVICE).requires_grad_()
        inputs = [mean, x, logvar]
        fn = fastvae.gaussian_nll
    # The broadcast logvar's gradient sums up to 4·35 terms.
    check_against_reference(fn, inputs, torch.float32, 105, grad_scale=140)


def test_gaussian_learned_logvar_mixed_precision(kernel_backend):
    """A float32 per-channel logvar with a bfloat16 decoder, as under autocast."""
    mean, x = make_inputs("gaussian", (8, 3, 4, 5), torch.bfloat16)
    logvar = torch.zeros(1, 3, 1, 1, device=DEVICE, requires_grad=True)
    nll = fastvae.gaussian_nll(mean, x, logvar)
    assert nll.dtype == torch.float32
    nll.sum().backward()
    assert logvar.grad.dtype == torch.float32 and logvar.grad.shape == (1, 3, 1, 1)
    assert mean.grad.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16


def test_gaussian_non_contiguous_full_logvar(kernel_backend):
    mean, x = make_inputs("gaussian", (6, 9), torch.float32)
    logvar = (0.3 * torch.randn(9, 6)).to(DEVICE).t().requires_grad_()
    assert not logvar.is_contiguous()
    check_against_reference(lambda m, t, v: fastvae.gaussian_nll(m, t, v, reduction="none"), [mean, x, logvar],
                            torch.float32, 1)


def test_backward_is_bitwise_repeatable(kernel_backend):
    mean, x = make_inputs("gaussian", (300, 70), torch.float32)
    logvar = torch.zeros(1, 70, device=DEVICE, requires_grad=True)
    logits, target = make_inputs("continuous_bernoulli", (300, 70), torch.float32)
    results = []
    for _ in range(2):
        nll = fastvae.gaussian_nll(mean, x, logvar)
        cb = fastvae.continuous_bernoulli_nll(logits, target)
        grads = torch.autograd.grad(nll.square().sum() + cb.square().sum(), [mean, x, logvar, logits, target])
        results.append((nll, cb) + grads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_empty_batch(kernel_backend):
    for family in FAMILIES:
        params, x = make_inputs(family, (0, 7), torch.float32)
        nll = OPS[family](params, x)
        assert nll.shape == (0,)
        assert OPS[family](params, x, reduction="sum").item() == 0.0
        assert OPS[family](params, x, reduction="none").shape == (0, 7)
        nll.sum().backward()
        assert params.grad.shape == (0, 7) and x.grad.shape == (0, 7)


def test_float64_runs_on_reference():
    logits, x = make_inputs("bernoulli", (5, 6), torch.float64)
    assert fastvae.bernoulli_nll(logits, x).dtype == torch.float64
    assert fastvae.continuous_bernoulli_nll(logits, x).dtype == torch.float64
    assert fastvae.gaussian_nll(logits, x, torch.zeros(1, 6, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("features", ROW_SUM_FEATURES)
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_nll_does_not_drift_with_size(kernel_backend, family, features):
    """A sample's nll summed in float32 one element at a time drifts as D grows: every
    backend's is as close to the float64 sum of the terms as the torch backend's pairwise
    float32 sum (the Gaussian's with a full-size logvar ~ U(−2, 0))."""
    params, x = make_inputs(family, (2, features), torch.float32, requires_grad=False)
    args = (params, x)
    if family == "gaussian":
        args += ((-2.0 * torch.rand((2, features), generator=torch.Generator().manual_seed(1))).to(DEVICE),)
    terms = {"bernoulli": reference.bernoulli_nll_terms, "continuous_bernoulli": reference.continuous_bernoulli_nll_terms,
             "gaussian": reference.gaussian_nll_terms}[family]
    exact = terms(*(t.double() for t in args)).sum(1)
    nll = OPS[family](*args)
    with fastvae.use_backend("torch"):
        nll_torch = OPS[family](*args)
    assert_as_accurate_as_torch(nll, exact, nll_torch, msg=f"{family} nll")


# --------------------------------------------------------------------------------------
# The math: extremes, the Taylor switch, torch's distributions, gradcheck
# --------------------------------------------------------------------------------------


def float64_truth(fn, params, x):
    """The reference in float64 and its gradient wrt the params (the truth to compare a
    float32 kernel with)."""
    params64 = params.detach().double().requires_grad_()
    out = fn(params64, x.detach().double())
    (grad,) = torch.autograd.grad(out.sum(), [params64])
    return out, grad


@pytest.mark.parametrize("family", ["bernoulli", "continuous_bernoulli"])
def test_extreme_logits(kernel_backend, family):
    ref_terms = {"bernoulli": reference.bernoulli_nll_terms, "continuous_bernoulli": reference.continuous_bernoulli_nll_terms}[family]
    logits = torch.tensor([-100.0, -50.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 50.0, 100.0], device=DEVICE)
    logits = logits[:, None].expand(9, 3).contiguous().requires_grad_()
    x = torch.tensor([0.0, 0.5, 1.0], device=DEVICE).expand(9, 3).contiguous()
    out = OPS[family](logits, x, reduction="none")
    (grad,) = torch.autograd.grad(out.sum(), [logits])
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    expected, expected_grad = float64_truth(ref_terms, logits, x)
    # softplus(l) − x·l is of size |l| here: float32 rounding of 100 is 4e-6.
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=2e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-6)
    if family == "continuous_bernoulli":
        # log C = log|l| for large |l|: the normalizer in the logits does not saturate.
        torch.testing.assert_close(reference.continuous_bernoulli_log_normalizer(torch.tensor([100.0, -100.0])),
                                   torch.full((2,), math.log(100.0)))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_continuous_bernoulli_continuous_across_taylor_switch(kernel_backend, sign):
    threshold = reference.CB_TAYLOR_THRESHOLD
    delta = 1e-6
    logits = sign * torch.tensor([threshold - delta, threshold + delta], dtype=torch.float64)
    # The normalizer itself (reference, float64): the two branches meet.
    logits64 = logits.clone().requires_grad_()
    log_c = reference.continuous_bernoulli_log_normalizer(logits64)
    (grad_c,) = torch.autograd.grad(log_c.sum(), [logits64])
    assert abs(log_c[1] - log_c[0]).item() < 1e-7
    # d log C/dl ≈ l/6 moves by about 2e-6/6 over the gap itself.
    assert abs(grad_c[1] - grad_c[0]).item() < 1e-6
    # The kernel (float32): values and gradients agree across the switch and with the
    # float64 truth.
    l32 = logits.float()[:, None].expand(2, 4).contiguous().to(DEVICE).requires_grad_()
    x = torch.tensor([0.0, 0.3, 0.7, 1.0], device=DEVICE).expand(2, 4).contiguous()
    out = fastvae.continuous_bernoulli_nll(l32, x, reduction="none")
    (grad,) = torch.autograd.grad(out.sum(), [l32])
    assert (out[1] - out[0]).abs().max().item() < 2e-6
    assert (grad[1] - grad[0]).abs().max().item() < 5e-6
    expected, expected_grad = float64_truth(reference.continuous_bernoulli_nll_terms, l32, x)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=0, atol=5e-6)


def test_continuous_bernoulli_kernel_accuracy_over_range(kernel_backend):
    """Float32 kernel against the float64 reference over l in [−120, 120] (both branches)."""
    logits = torch.cat([torch.linspace(-120, 120, 2001), torch.linspace(-0.3, 0.3, 601)]).to(DEVICE)
    x = torch.rand(logits.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    logits, x = logits[:, None].requires_grad_(), x[:, None]
    out = fastvae.continuous_bernoulli_nll(logits, x, reduction="none")
    (grad,) = torch.autograd.grad(out.sum(), [logits])
    expected, expected_grad = float64_truth(reference.continuous_bernoulli_nll_terms, logits, x)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=5e-6)


def test_continuous_bernoulli_matches_torch_distribution():
    """The reference against torch.distributions.ContinuousBernoulli in float64, where
    torch's probabilities-based form is valid (|l| < 10), Taylor region included."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.cat([6.0 * torch.randn(500, generator=generator), 0.05 * torch.randn(100, generator=generator)])
    logits = logits.clamp(-9.5, 9.5).double().requires_grad_()
    x = torch.rand(600, generator=generator).double()
    expected = -torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    nll = reference.continuous_bernoulli_nll_terms(logits, x)
    torch.testing.assert_close(nll, expected, rtol=1e-7, atol=1e-7)
    (grad,) = torch.autograd.grad(nll.sum(), [logits])
    (expected_grad,) = torch.autograd.grad(expected.sum(), [logits])
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


def test_kernel_matches_torch_distributions(kernel_backend):
    """Each float32 kernel against torch's own distribution (float64) on moderate values."""
    generator = torch.Generator().manual_seed(3)
    logits = (4.0 * torch.randn(64, 10, generator=generator)).to(DEVICE)
    x = torch.rand(64, 10, generator=generator).to(DEVICE)
    expected = F.binary_cross_entropy_with_logits(logits.double(), x.double(), reduction="none").sum(1)
    torch.testing.assert_close(fastvae.bernoulli_nll(logits, x).double(), expected, rtol=1e-5, atol=1e-4)
    cb = -torch.distributions.ContinuousBernoulli(logits=logits.double().clamp(-9, 9)).log_prob(x.double()).sum(1)
    torch.testing.assert_close(fastvae.continuous_bernoulli_nll(logits.clamp(-9, 9), x).double(), cb, rtol=1e-5, atol=1e-4)
    mean, target = logits / 4, x * 3
    logvar = (0.5 * torch.randn(1, 10, generator=generator)).to(DEVICE)
    normal = -torch.distributions.Normal(mean.double(), (0.5 * logvar.double()).exp()).log_prob(target.double()).sum(1)
    torch.testing.assert_close(fastvae.gaussian_nll(mean, target, logvar).double(), normal, rtol=1e-5, atol=1e-4)


def test_reference_matches_torch_float64():
    generator = torch.Generator().manual_seed(4)
    logits = (10.0 * torch.randn(200, generator=generator)).double()
    x = torch.rand(200, generator=generator).double()
    torch.testing.assert_close(
        reference.bernoulli_nll_terms(logits, x), F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    )
    mean, logvar = logits / 10, torch.randn(200, generator=generator).double()
    torch.testing.assert_close(
        reference.gaussian_nll_terms(mean, x, logvar),
        -torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(x),
    )
    torch.testing.assert_close(
        reference.gaussian_nll_terms(mean, x, 0.4),
        -torch.distributions.Normal(mean, math.exp(0.2)).log_prob(x),
    )


def test_reference_gradcheck():
    generator = torch.Generator().manual_seed(6)
    # Logits away from ±CB_TAYLOR_THRESHOLD by more than gradcheck's step, both branches.
    logits = torch.tensor([[-30.0, -2.0, -0.5, -0.05, 0.0, 0.03, 0.2, 3.0, 25.0]], dtype=torch.float64)
    logits = logits.expand(3, 9).clone().requires_grad_()
    x = torch.rand(3, 9, generator=generator, dtype=torch.float64).requires_grad_()
    for fn in (reference.bernoulli_nll, reference.continuous_bernoulli_nll):
        for reduction in ("batch", "none"):
            assert torch.autograd.gradcheck(lambda l, t: fn(l, t, reduction), (logits, x))
    mean = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64).requires_grad_()
    target = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64).requires_grad_()
    logvar = (0.3 * torch.randn(1, 3, 1, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(reference.gaussian_nll, (mean, target, logvar))
    assert torch.autograd.gradcheck(lambda m, t: reference.gaussian_nll(m, t, 0.7, "mean"), (mean, target))


def test_bits_per_dim_closed_form():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    dims = 3 * 8 * 8
    nll = torch.tensor([dims * math.log(2.0), 2 * dims * math.log(2.0), 0.0, 8 * dims * math.log(256.0) / 8])
    torch.testing.assert_close(fastvae.bits_per_dim(nll, x), torch.tensor([1.0, 2.0, 0.0, 8.0]))
    # Uniform over 256 levels is 8 bits per dimension, whatever the batch reduction.
    assert fastvae.bits_per_dim(nll[3:].mean(), x).item() == pytest.approx(8.0)
    nll_grad = nll.clone().requires_grad_()
    fastvae.bits_per_dim(nll_grad, x).sum().backward()
    torch.testing.assert_close(nll_grad.grad, torch.full((4,), 1 / (math.log(2.0) * dims)))


def test_bits_per_dim_of_an_nll():
    """A Bernoulli at p = ½ everywhere costs exactly 1 bit per dimension."""
    x = (torch.rand(5, 1, 7, 7) > 0.5).to(DEVICE)
    nll = fastvae.bernoulli_nll(torch.zeros(5, 1, 7, 7, device=DEVICE), x)
    torch.testing.assert_close(fastvae.bits_per_dim(nll, x), torch.ones(5, device=DEVICE))


# --------------------------------------------------------------------------------------
# Samples and means
# --------------------------------------------------------------------------------------


def test_bernoulli_sample_frequencies():
    scipy_stats = pytest.importorskip("scipy.stats")
    probs = torch.tensor([0.02, 0.2, 0.5, 0.7, 0.97])
    logits = torch.logit(probs.double()).float()[:, None].expand(5, 4000).to(DEVICE)
    torch.manual_seed(123)
    samples = fastvae.bernoulli_sample(logits)
    assert samples.dtype == torch.float32 and set(samples.unique().tolist()) <= {0.0, 1.0}
    ones = samples.sum(1).double().cpu()
    observed = torch.stack([ones, 4000 - ones], 1).flatten().numpy()
    expected = torch.stack([4000 * probs, 4000 * (1 - probs)], 1).double().flatten().numpy()
    assert scipy_stats.chisquare(observed, expected, ddof=0).pvalue > 1e-3
    # Saturated logits.
    extremes = torch.tensor([[-100.0, 100.0]], device=DEVICE).expand(1000, 2)
    assert torch.equal(fastvae.bernoulli_sample(extremes), torch.tensor([[0.0, 1.0]], device=DEVICE).expand(1000, 2))


def continuous_bernoulli_cdf(logit):
    if logit == 0:
        return lambda v: v
    return lambda v: torch.expm1(logit * torch.as_tensor(v, dtype=torch.float64)).numpy() / math.expm1(logit)


@pytest.mark.parametrize("logit", [-100.0, -7.0, -0.05, 0.0, 1e-4, 2.5, 40.0])
def test_continuous_bernoulli_sample_kolmogorov_smirnov(logit):
    scipy_stats = pytest.importorskip("scipy.stats")
    logits = torch.full((50, 80), logit, device=DEVICE)
    torch.manual_seed(7)
    samples = fastvae.continuous_bernoulli_sample(logits)
    assert samples.dtype == torch.float32 and samples.shape == logits.shape
    assert bool(((samples >= 0) & (samples <= 1)).all())
    values = samples.flatten().double().cpu().numpy()
    assert scipy_stats.kstest(values, continuous_bernoulli_cdf(logit)).pvalue > 1e-3


def test_continuous_bernoulli_sample_dtypes_and_nan():
    logits = torch.tensor([[-3.0, 0.0, float("nan"), 3.0]], device=DEVICE).to(torch.bfloat16)
    fastvae.set_validate_args(False)
    samples = fastvae.continuous_bernoulli_sample(logits)
    assert samples.dtype == torch.bfloat16
    assert torch.isnan(samples[0, 2]) and torch.isfinite(samples[0, [0, 1, 3]]).all()


def test_continuous_bernoulli_mean():
    # Closed form of torch.distributions (float64, valid for |l| < 10 or so).
    logits = torch.cat([torch.linspace(-9, 9, 181), torch.linspace(-0.12, 0.12, 49)]).double()
    expected = torch.distributions.ContinuousBernoulli(logits=logits).mean
    torch.testing.assert_close(fastvae.continuous_bernoulli_mean(logits), expected, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(fastvae.continuous_bernoulli_mean(logits.float()), expected.float(), rtol=1e-5, atol=2e-6)
    # Continuous across its Taylor switch, and right at the extremes (→ 1/|l| and 1 − 1/l).
    threshold = reference.CB_TAYLOR_THRESHOLD
    around = torch.tensor([threshold - 1e-6, threshold + 1e-6, -threshold - 1e-6, -threshold + 1e-6])
    means = fastvae.continuous_bernoulli_mean(around)
    assert abs(means[0] - means[1]) < 1e-6 and abs(means[2] - means[3]) < 1e-6
    far = fastvae.continuous_bernoulli_mean(torch.tensor([-100.0, 100.0, -1e4, 1e4]))
    torch.testing.assert_close(far, torch.tensor([0.01, 0.99, 1e-4, 1 - 1e-4]))
    # Monte Carlo.
    torch.manual_seed(8)
    for logit in (-4.0, 0.5, 30.0):
        samples = fastvae.continuous_bernoulli_sample(torch.full((50_000,), logit, device=DEVICE))
        mean = fastvae.continuous_bernoulli_mean(torch.tensor([logit]))
        assert abs(samples.double().mean().item() - mean.item()) < 4 * samples.double().std().item() / 50_000 ** 0.5


def test_bernoulli_and_gaussian_means():
    logits = torch.linspace(-60, 60, 121, dtype=torch.float64)
    torch.testing.assert_close(fastvae.bernoulli_mean(logits), torch.sigmoid(logits))
    assert fastvae.bernoulli_mean(logits.to(torch.bfloat16)).dtype == torch.bfloat16
    mean = torch.randn(3, 4, requires_grad=True)
    result = fastvae.gaussian_mean(mean, torch.zeros(1, 4))
    assert torch.equal(result, mean) and not result.requires_grad
    assert not fastvae.bernoulli_mean(mean).requires_grad


def test_gaussian_sample_moments():
    mean = torch.linspace(-2, 2, 4, device=DEVICE)[None, :, None].expand(8000, 4, 5)
    logvar = torch.tensor([-1.0, 0.0, 0.5, 1.2], device=DEVICE)[None, :, None]
    torch.manual_seed(9)
    for temperature in (1.0, 0.6):
        samples = fastvae.gaussian_sample(mean, logvar, temperature=temperature).double()
        std = temperature * (0.5 * logvar.double()).exp().flatten()
        sample_mean = samples.mean((0, 2))
        torch.testing.assert_close(sample_mean, mean[0, :, 0].double(), rtol=0, atol=float(4 * std.max() / 4e4 ** 0.5))
        torch.testing.assert_close(samples.std((0, 2)), std, rtol=0.02, atol=0)
    torch.testing.assert_close(fastvae.gaussian_sample(mean, 0.3, temperature=0.0), mean)
    half = fastvae.gaussian_sample(mean.to(torch.float16), 0.0)
    assert half.dtype == torch.float16
    scipy_stats = pytest.importorskip("scipy.stats")
    eps = fastvae.gaussian_sample(torch.zeros(20000, device=DEVICE), -0.4) / math.exp(-0.2)
    assert scipy_stats.kstest(eps.double().cpu().numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize(
    "sample",
    [fastvae.bernoulli_sample, fastvae.continuous_bernoulli_sample, lambda m, generator=None: fastvae.gaussian_sample(m, 0.2, generator=generator)],
    ids=["bernoulli", "continuous_bernoulli", "gaussian"],
)
def test_samples_reproducible_under_manual_seed(sample):
    logits = torch.randn(33, 17, device=DEVICE)
    torch.manual_seed(0)
    first = sample(logits)
    second = sample(logits)
    torch.manual_seed(0)
    assert torch.equal(first, sample(logits))
    assert not torch.equal(first, second)
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    with_generator = sample(logits, generator=generator)
    generator.manual_seed(11)
    assert torch.equal(with_generator, sample(logits, generator=generator))


# --------------------------------------------------------------------------------------
# Bad input, NaN, double backward
# --------------------------------------------------------------------------------------


def _inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, generator=generator), torch.rand(4, 5, generator=generator)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda l, x: fastvae.bernoulli_nll(l, x[:, :3]), ValueError, r"bernoulli_nll: x has shape \(4, 3\)"),
        (lambda l, x: fastvae.continuous_bernoulli_nll(l.long(), x), TypeError, r"continuous_bernoulli_nll: logits must have a floating dtype"),
        (lambda l, x: fastvae.bernoulli_nll(l, x.long()), TypeError, r"bernoulli_nll: x must be a floating tensor"),
        (lambda l, x: fastvae.bernoulli_nll(l, x.to("meta")), ValueError, r"bernoulli_nll: x is on meta"),
        (lambda l, x: fastvae.bernoulli_nll(l, x, reduction="avg"), ValueError, r"bernoulli_nll: reduction must be one of"),
        (lambda l, x: fastvae.bernoulli_nll(l, x + 1), ValueError, r"bernoulli_nll: x must lie in \[0, 1\]"),
        (lambda l, x: fastvae.continuous_bernoulli_nll(l, -x), ValueError, r"continuous_bernoulli_nll: x must lie in \[0, 1\]"),
        (lambda l, x: fastvae.bernoulli_nll(l, (2 * x).to(torch.uint8) + 1), ValueError, r"bernoulli_nll: x must lie in \[0, 1\]"),
        (lambda l, x: fastvae.bernoulli_nll(l[0, 0], x[0, 0]), ValueError, r"bernoulli_nll: logits must have at least 1"),
        (lambda l, x: fastvae.bernoulli_nll(l, "x"), TypeError, r"bernoulli_nll: x must be a torch.Tensor"),
        (lambda l, x: fastvae.gaussian_nll(l, x[:1]), ValueError, r"gaussian_nll: x has shape \(1, 5\)"),
        (lambda l, x: fastvae.gaussian_nll(l, x.to(torch.uint8)), TypeError, r"gaussian_nll: x must have a floating dtype"),
        (lambda l, x: fastvae.gaussian_nll(l.int(), x), TypeError, r"gaussian_nll: mean must have a floating dtype"),
        (lambda l, x: fastvae.gaussian_nll(l, x, torch.zeros(3)), ValueError, r"gaussian_nll: logvar of shape \(3,\) does not broadcast"),
        (lambda l, x: fastvae.gaussian_nll(l, x, torch.zeros(2, 4, 5)), ValueError, r"gaussian_nll: logvar of shape"),
        (lambda l, x: fastvae.gaussian_nll(l, x, "0"), TypeError, r"gaussian_nll: logvar must be a Python number or a tensor"),
        (lambda l, x: fastvae.gaussian_nll(l, x, torch.zeros(5, device="meta")), ValueError, r"gaussian_nll: logvar is on meta"),
        (lambda l, x: fastvae.gaussian_nll(l, x, float("nan")), ValueError, r"gaussian_nll: logvar must be finite"),
        (lambda l, x: fastvae.gaussian_nll(l, x, reduction=None), ValueError, r"gaussian_nll: reduction must be one of"),
        (lambda l, x: fastvae.bits_per_dim(l.long(), x), TypeError, r"bits_per_dim: nll must have a floating dtype"),
        (lambda l, x: fastvae.bits_per_dim(l, x[:, :0]), ValueError, r"bits_per_dim: x must have shape"),
        (lambda l, x: fastvae.bernoulli_sample(l.long()), TypeError, r"bernoulli_sample: logits must have a floating dtype"),
        (lambda l, x: fastvae.continuous_bernoulli_sample(l, generator=1), TypeError, r"continuous_bernoulli_sample: generator must be"),
        (lambda l, x: fastvae.gaussian_sample(l, temperature=-1.0), ValueError, r"gaussian_sample: temperature must be >= 0"),
        (lambda l, x: fastvae.gaussian_sample(l, torch.zeros(3)), ValueError, r"gaussian_sample: logvar of shape"),
        (lambda l, x: fastvae.gaussian_mean(l, [0.0]), TypeError, r"gaussian_mean: logvar must be a Python number"),
    ],
)
def test_bad_input_names_op_and_argument(call, error, message):
    logits, x = _inputs()
    with pytest.raises(error, match=message):
        call(logits, x)


def test_nan_raises_under_validate_args(kernel_backend):
    logits, x = _inputs()
    logits[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"fastvae.bernoulli_nll: logits contains NaN"):
        fastvae.bernoulli_nll(logits, x)
    logits, x = _inputs()
    x[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"fastvae.continuous_bernoulli_nll: x must lie in \[0, 1\]"):
        fastvae.continuous_bernoulli_nll(logits, x)
    with pytest.raises(ValueError, match=r"fastvae.gaussian_nll: x contains NaN"):
        fastvae.gaussian_nll(logits, x)
    with pytest.raises(ValueError, match=r"fastvae.bernoulli_sample: logits contains NaN"):
        fastvae.bernoulli_sample(x)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("where", ["params", "x", "logvar"])
def test_nan_propagates_only_where_it_belongs(kernel_backend, family, where):
    if where == "logvar" and family != "gaussian":
        pytest.skip("only the Gaussian has a logvar")
    fastvae.set_validate_args(False)
    params, x = make_inputs(family, (4, 5), torch.float32)
    logvar = torch.zeros(4, 5, device=DEVICE, requires_grad=True)
    with torch.no_grad():
        {"params": params, "x": x, "logvar": logvar}[where][1, 2] = float("nan")
    args = (params, x, logvar) if family == "gaussian" else (params, x)
    nll = OPS[family](*args)
    terms = OPS[family](*args, reduction="none")
    assert torch.isnan(nll[1]) and torch.isfinite(nll[[0, 2, 3]]).all()
    assert torch.isnan(terms[1, 2]) and torch.isnan(terms).sum() == 1
    for grad in torch.autograd.grad(nll.sum(), [t for t in args]):
        assert torch.isfinite(grad[[0, 2, 3]]).all() and torch.isfinite(grad[1, [0, 1, 3, 4]]).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_double_backward_raises(kernel_backend, family):
    params, x = make_inputs(family, (4, 5), torch.float32)
    nll = OPS[family](params, x)
    (grad,) = torch.autograd.grad(nll.sum(), [params], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


def test_compiles_without_graph_break(kernel_backend):
    import torch._dynamo

    torch._dynamo.reset()
    logits, x = make_inputs("bernoulli", (8, 12), torch.float32)
    mean, target = make_inputs("gaussian", (8, 12), torch.float32)
    logvar = torch.zeros(1, 12, device=DEVICE, requires_grad=True)

    def loss(logits, x, mean, target, logvar):
        return (fastvae.bernoulli_nll(logits, x) + fastvae.continuous_bernoulli_nll(logits, x)
                + fastvae.gaussian_nll(mean, target, logvar)).mean()

    # aot_eager: Dynamo (no graph break), the fake implementations and the autograd
    # registration, without inductor's compile time (tests/test_compile.py runs inductor).
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    inputs = [logits, x, mean, target, logvar]
    expected = loss(*inputs)
    result = compiled(*inputs)
    torch.testing.assert_close(result, expected)
    for grad, grad_expected in zip(torch.autograd.grad(result, inputs), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(grad, grad_expected)
