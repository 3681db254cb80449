"""The discretized logistic and its mixture (discretized_logistic_nll,
discretized_logistic_mixture_nll, their _sample and _mean): every kernel backend against
fastvae.reference (run in float64 on the same inputs), forward and backward with random
upstream gradients (the op is not the last layer), over shapes, dtypes, channel counts,
component counts, bin counts, x dtypes, layouts, reductions and extreme parameters; the
reference against gradcheck, normalization over all levels and a direct PixelCNN++-style
formula; sampling statistics (chi-square at fixed seeds); bad input, NaN, empty batches,
double backward, the torch.library registrations, torch.compile, and what the autograd
graph saves."""
import decimal
import math

import pytest
import torch
from scipy import stats

import fastvae
from fastvae import reference
from tests.conftest import (DEVICE, KERNEL_BACKENDS, ROW_SUM_FEATURES, TOLERANCES, assert_as_accurate_as_torch,
                            assert_close)

BACKENDS = ["torch"] + KERNEL_BACKENDS

# The interpreter runs the kernels in numpy and evaluates both sides of every tl.where:
# the unselected side's log(0) or x/0 warns (e.g. log1p's Goldberg correction where
# 1 + x == 1), though the result is exact.
pytestmark = pytest.mark.filterwarnings(
    "ignore:divide by zero encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning",
    "ignore:overflow encountered:RuntimeWarning",
)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def num_params(channels, num_mixtures):
    return (3 if channels == 1 else 10) * num_mixtures


def make_params(batch, channels, num_mixtures, spatial, dtype=torch.float32, seed=0, log_scale=-2.0,
                requires_grad=True):
    """Mixture params [B, P, *spatial] in NVAE's layout, built slot block by slot block
    (independently of fastvae.reference.mixture_parameters): logits, then per channel
    means in (−1, 1), log-scales around ``log_scale``, raw coefficients."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, num_mixtures) + tuple(spatial)
    blocks = [1.5 * torch.randn(shape, generator=gen)]
    for _ in range(channels):
        blocks.append(2.0 * torch.rand(shape, generator=gen) - 1.0)
        blocks.append(log_scale + 0.7 * torch.randn(shape, generator=gen))
        if channels == 3:
            blocks.append(torch.randn(shape, generator=gen))
    params = torch.cat(blocks, dim=1).to(DEVICE, dtype)
    return params.requires_grad_(requires_grad)


def make_levels(shape, num_bins=256, seed=1):
    """Random level indices (int64) with the lowest and highest levels present."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, num_bins, shape, generator=gen)
    flat = levels.view(-1)
    if flat.numel() >= 4:
        flat[0], flat[1], flat[-1] = 0, num_bins - 1, 0
    return levels.to(DEVICE)


def as_data(levels, num_bins=256, dtype=torch.float32):
    """The grid values −1 + 2i/(num_bins − 1) of ``levels`` in ``dtype`` (rounded to it)."""
    return (levels.double() * (2.0 / (num_bins - 1)) - 1.0).to(dtype)


def upstream(out, seed=7):
    """A random incoming gradient: the op is not the last layer."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=gen).to(out.device, out.dtype)


def grad_tolerance_scale(grad_ref, dtype, grad_scale=1.0):
    """atol scale for a gradient against the float64 reference: the dtype's atol, or 1e-5 of
    the largest gradient, whichever is larger.  A float32 kernel cannot hold the grid value
    x − mean closer than half an ulp, and with a sharp logistic (1/scale up to e^7) the
    gradients amplify that by up to 1/scale²: a normwise error, not an elementwise one."""
    _, atol = TOLERANCES[dtype]
    largest = float(grad_ref.abs().max()) if grad_ref.numel() else 0.0
    return max(grad_scale, 1e-5 * largest / atol)


def float64_copy(t):
    return t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t


def check_mixture(params, x, num_mixtures, num_bins=256, reduction="none", nll_scale=1.0, grad_scale=1.0):
    """The op (current backend) against fastvae.reference in float64 on the same inputs,
    forward and backward.  Returns (nll, grad_params)."""
    nll = fastvae.discretized_logistic_mixture_nll(params, x, num_mixtures, num_bins, reduction)
    ref_params = float64_copy(params)
    nll_ref = reference.discretized_logistic_mixture_nll(ref_params, float64_copy(x), num_mixtures, num_bins,
                                                         reduction)
    assert nll.shape == nll_ref.shape and nll.dtype == torch.float32
    assert_close(nll, nll_ref, torch.float32, scale=nll_scale, msg="nll")
    grad_out = upstream(nll)
    (grad,) = torch.autograd.grad(nll, params, grad_out)
    (grad_ref,) = torch.autograd.grad(nll_ref, ref_params, grad_out.double())
    assert grad.shape == params.shape and grad.dtype == params.dtype
    assert_close(grad, grad_ref, params.dtype, scale=grad_tolerance_scale(grad_ref, params.dtype, grad_scale),
                 msg="grad_params")
    return nll, grad


def make_logistic(shape, dtype=torch.float32, seed=0, log_scale=-2.0):
    gen = torch.Generator().manual_seed(seed)
    mean = (2.0 * torch.rand(shape, generator=gen) - 1.0).to(DEVICE, dtype).requires_grad_()
    log_scale = (log_scale + torch.randn(shape, generator=gen)).to(DEVICE, dtype).requires_grad_()
    return mean, log_scale


def check_logistic(mean, log_scale, x, num_bins=256, reduction="none", grad_scale=1.0):
    nll = fastvae.discretized_logistic_nll(mean, log_scale, x, num_bins, reduction)
    ref_mean, ref_log_scale = float64_copy(mean), float64_copy(log_scale)
    nll_ref = reference.discretized_logistic_nll(ref_mean, ref_log_scale, float64_copy(x), num_bins, reduction)
    assert nll.shape == nll_ref.shape and nll.dtype == torch.float32
    assert_close(nll, nll_ref, torch.float32, msg="nll")
    grad_out = upstream(nll)
    grads = torch.autograd.grad(nll, (mean, log_scale), grad_out)
    grads_ref = torch.autograd.grad(nll_ref, (ref_mean, ref_log_scale), grad_out.double())
    for name, leaf, grad, grad_ref in zip(("mean", "log_scale"), (mean, log_scale), grads, grads_ref):
        assert grad.shape == leaf.shape and grad.dtype == leaf.dtype
        assert_close(grad, grad_ref, leaf.dtype, scale=grad_tolerance_scale(grad_ref, leaf.dtype, grad_scale),
                     msg=f"grad_{name}")
    return nll, grads


@pytest.fixture
def kernel_launches(kernel_backend, monkeypatch):
    """The kernels/logistic.py launchers called during the test: proof that the kernel
    path ran, not the reference."""
    launches = []
    if kernel_backend != "triton":
        return launches
    import fastvae.kernels.logistic as logistic_kernels

    for name in ("discretized_logistic_fwd", "discretized_logistic_bwd", "logistic_mixture_fwd",
                 "logistic_mixture_bwd"):
        launcher = getattr(logistic_kernels, name)

        def spy(*args, _name=name, _launcher=launcher, **kwargs):
            launches.append(_name)
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(logistic_kernels, name, spy)
    return launches


# --------------------------------------------------------------------------------------
# The mixture: kernels against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,num_mixtures,spatial", [
    (1, 1, (5, 7)), (1, 3, (1, 1)), (1, 10, (5, 7)),
    (3, 1, (5, 7)), (3, 3, (1, 1)), (3, 10, (8, 8)),
], ids=str)
def test_mixture_matches_reference(kernel_backend, dtype, channels, num_mixtures, spatial, kernel_launches):
    params = make_params(2, channels, num_mixtures, spatial, dtype)
    x = as_data(make_levels((2, channels) + spatial), dtype=torch.float32)
    check_mixture(params, x, num_mixtures)
    if kernel_backend == "triton":
        assert kernel_launches == ["logistic_mixture_fwd", "logistic_mixture_bwd"]


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_nll_does_not_depend_on_requires_grad(kernel_backend, channels):
    """The nll is the same bits whether or not the forward also computes the gradient
    (as the cpu backend does for params that require grad)."""
    params = make_params(2, channels, 4, (9, 11))
    x = as_data(make_levels((2, channels, 9, 11)))
    for reduction in ("none", "batch"):
        with_grad = fastvae.discretized_logistic_mixture_nll(params, x, 4, reduction=reduction)
        with torch.no_grad():
            without = fastvae.discretized_logistic_mixture_nll(params, x, 4, reduction=reduction)
        assert torch.equal(with_grad.detach(), without)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("per_pixel", [True, False], ids=["per_pixel", "per_sample"])
def test_mixture_forward_gradient_is_the_backward_at_one(kernel_backend, channels, per_pixel):
    """A forward that writes ∂nll/∂params writes the backward kernel's gradient for an
    upstream gradient of 1, bit for bit; scaled, the backward's for any upstream one."""
    from fastvae.ops._common import kernel_module
    from fastvae.ops.logistic import _grad_params_buffer, _mixture_scale_grad

    launchers = kernel_module(kernel_backend, "logistic")
    if not launchers.mixture_forward_writes_grad():
        with pytest.raises(ValueError, match="computes no gradient in the forward"):
            launchers.logistic_mixture_fwd(make_params(1, 1, 2, (3,)), as_data(make_levels((1, 1, 3))), 2, 256,
                                           per_pixel, torch.empty(1, 3, device=DEVICE),
                                           torch.empty(1, 6, 3, device=DEVICE))
        return
    # 2·70 pixels: tasks of 64 pixels, the last one partial; channels_last params.
    params = make_params(2, channels, 5, (7, 20), requires_grad=False)
    params = params.contiguous(memory_format=torch.channels_last)
    x = as_data(make_levels((2, channels, 7, 20)))

    def forward(grad_params):
        nll = torch.empty((2, 7, 20) if per_pixel else (2,), device=DEVICE)
        launchers.logistic_mixture_fwd(params, x, 5, 256, per_pixel, nll, grad_params)
        return nll

    def backward(grad_nll):
        grad_params = _grad_params_buffer(params)
        launchers.logistic_mixture_bwd(grad_nll, params, x, 5, 256, grad_params)
        return grad_params

    grad = _grad_params_buffer(params)
    nll = forward(grad)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nll, forward(None))
    assert torch.equal(grad, backward(torch.ones_like(nll)))
    incoming = upstream(nll)
    torch.testing.assert_close(_mixture_scale_grad(grad, incoming), backward(incoming), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["batch", "none", "sum", "mean"])
def test_mixture_reductions(kernel_backend, reduction):
    params = make_params(3, 1, 3, (4, 5))
    x = as_data(make_levels((3, 1, 4, 5)))
    nll, _ = check_mixture(params, x, 3, reduction=reduction, nll_scale=10)
    expected_shape = {"batch": (3,), "none": (3, 4, 5), "sum": (), "mean": ()}[reduction]
    assert nll.shape == expected_shape


def test_mixture_blocks_and_spatial_shapes(kernel_backend):
    """More pixels than one block, a 1-D and a 3-D spatial shape, and no spatial dims."""
    for spatial in [(1500,), (2, 3, 5), ()]:
        params = make_params(2, 1, 2, spatial)
        x = as_data(make_levels((2, 1) + spatial))
        check_mixture(params, x, 2, reduction="none" if spatial else "batch")


@pytest.mark.parametrize("num_bins", [32, 256])
def test_mixture_num_bins_and_x_dtypes(kernel_backend, num_bins):
    """Float x (float32, bfloat16, float16) and uint8 levels give the same nll."""
    params = make_params(2, 3, 3, (3, 5))
    levels = make_levels((2, 3, 3, 5), num_bins)
    nll_uint8, _ = check_mixture(params, levels.to(torch.uint8), 3, num_bins)
    check_mixture(params, as_data(levels, num_bins, torch.bfloat16), 3, num_bins)
    with torch.no_grad():
        for x_dtype in (torch.float32, torch.float16):
            nll = fastvae.discretized_logistic_mixture_nll(params, as_data(levels, num_bins, x_dtype), 3, num_bins,
                                                           "none")
            torch.testing.assert_close(nll, nll_uint8, rtol=0, atol=0)


def test_mixture_noncontiguous_and_channels_last(kernel_backend):
    params = make_params(2, 3, 2, (5, 6), requires_grad=False)
    x = as_data(make_levels((2, 3, 5, 6)))
    nll_ref = fastvae.discretized_logistic_mixture_nll(params, x, 2, reduction="none")
    layouts = {
        "channels_last": params.contiguous(memory_format=torch.channels_last),
        "channel_slice": torch.cat([params, params[:, :3]], dim=1)[:, :20],
        "transposed_spatial": params.transpose(2, 3).contiguous().transpose(2, 3),
        "batch_expanded": params[:1].expand(2, -1, -1, -1),
    }
    x_transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    for name, variant in layouts.items():
        if name in ("channel_slice", "transposed_spatial"):  # forward only: same bits
            nll = fastvae.discretized_logistic_mixture_nll(variant, x_transposed, 2, reduction="none")
            torch.testing.assert_close(nll, nll_ref, rtol=0, atol=0, msg=name)
            continue
        variant = variant.detach().requires_grad_()
        x_variant = x[:1].expand(2, -1, -1, -1) if name == "batch_expanded" else x_transposed
        nll, grad = check_mixture(variant, x_variant, 2)
        if name == "channels_last":
            torch.testing.assert_close(nll, nll_ref, rtol=0, atol=0, msg=name)
            # The gradient is written in the layout it is read in.
            assert grad.is_contiguous(memory_format=torch.channels_last)


def test_mixture_extreme_parameters(kernel_backend):
    """log_scale at −7, +7 and below −7 (clamped: no gradient), logits at ±50, edge bins."""
    K = 3
    params = make_params(2, 3, K, (4, 4), requires_grad=False)
    log_scale_slots = [K + 3 * K * c + K + k for c in range(3) for k in range(K)]
    params[0, log_scale_slots[0::3]] = -7.0
    params[0, log_scale_slots[1::3]] = 7.0
    params[1, log_scale_slots[2::3]] = -9.0
    params[1, log_scale_slots[0::3]] = -7.0
    params[0, 0], params[0, 1] = 50.0, -50.0
    params[1, 2] = -50.0
    levels = make_levels((2, 3, 4, 4))
    levels[0, :, 0] = 0
    levels[1, :, 1] = 255
    params.requires_grad_()
    _, grad = check_mixture(params, as_data(levels), K)
    below = torch.zeros_like(params, dtype=torch.bool)
    below[:, log_scale_slots] = params.detach()[:, log_scale_slots] < -7.0
    assert below.any() and torch.all(grad[below] == 0)


def test_low_mass_bins_match_float64(kernel_backend):
    """Bins whose mass is far below 1e-5 (a sharp logistic far from x), where PixelCNN++'s
    approximation would switch branch: the kernel in float32 against the reference in
    float64, single logistic and mixture."""
    mean = torch.linspace(-0.9, 0.9, 96, device=DEVICE).reshape(1, 96).repeat(3, 1)
    log_scale = torch.tensor([[-7.0], [-5.0], [-3.5]], device=DEVICE).expand(3, 96).contiguous()
    levels = make_levels((3, 96))
    mass = -reference.discretized_logistic_nll_terms(mean.double(), log_scale.double(), levels.to(torch.uint8))
    assert (mass < math.log(1e-5)).float().mean() > 0.8
    check_logistic(mean.clone().requires_grad_(), log_scale.clone().requires_grad_(), as_data(levels))
    K = 2
    params = make_params(2, 3, K, (6, 8), log_scale=-5.0)
    x = as_data(make_levels((2, 3, 6, 8)))
    nll, _ = check_mixture(params, x, K)
    assert (nll > -math.log(1e-5)).float().mean() > 0.8


@pytest.mark.parametrize("pixels", ROW_SUM_FEATURES)
def test_mixture_batch_nll_does_not_drift_with_size(kernel_backend, pixels):
    """The same for the mixture's nll, summed over a sample's pixels."""
    if kernel_backend == "triton" and pixels > 2**16:
        pytest.skip("the interpreter takes a minute at 2^20 pixels; Triton's row sums (in-tile sums, partials "
                    "added in float64) are checked at 2^20 by the single logistic")
    params = make_params(2, 1, 2, (pixels,), requires_grad=False)
    x = as_data(make_levels((2, 1, pixels)))
    exact = reference.discretized_logistic_mixture_nll_terms(params.double(), x.double(), 2).sum(1)
    nll = fastvae.discretized_logistic_mixture_nll(params, x, 2)
    with fastvae.use_backend("torch"):
        nll_torch = fastvae.discretized_logistic_mixture_nll(params, x, 2)
    assert_as_accurate_as_torch(nll, exact, nll_torch, msg="nll")


def test_mixture_empty(kernel_backend):
    for batch, spatial in [(0, (4, 4)), (2, (0, 3))]:
        params = make_params(batch, 3, 2, spatial)
        x = as_data(make_levels((batch, 3) + spatial))
        for reduction, shape in [("none", (batch,) + spatial), ("batch", (batch,)), ("sum", ()), ("mean", ())]:
            nll = fastvae.discretized_logistic_mixture_nll(params, x, 2, reduction=reduction)
            assert nll.shape == shape and nll.dtype == torch.float32
            (grad,) = torch.autograd.grad(nll.sum(), params)
            assert grad.shape == params.shape and torch.all(grad == 0)


def test_mixture_bitwise_repeatable(kernel_backend):
    params = make_params(2, 3, 3, (5, 5))
    x = as_data(make_levels((2, 3, 5, 5)))
    results = []
    for _ in range(2):
        nll = fastvae.discretized_logistic_mixture_nll(params, x, 3)
        results.append((nll,) + torch.autograd.grad(nll.sum(), params))
    for first, second in zip(*results):
        assert torch.equal(first, second)


# --------------------------------------------------------------------------------------
# The single discretized logistic: kernels against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 7), (2, 3, 33, 40), (5,)], ids=str)
def test_logistic_matches_reference(kernel_backend, dtype, shape, kernel_launches):
    mean, log_scale = make_logistic(shape, dtype)
    check_logistic(mean, log_scale, as_data(make_levels(shape)))
    if kernel_backend == "triton":
        assert kernel_launches == ["discretized_logistic_fwd", "discretized_logistic_bwd"]


@pytest.mark.parametrize("reduction", ["batch", "none", "sum", "mean"])
@pytest.mark.parametrize("num_bins", [32, 256])
def test_logistic_reductions_and_bins(kernel_backend, reduction, num_bins):
    mean, log_scale = make_logistic((4, 3, 6, 5))
    levels = make_levels((4, 3, 6, 5), num_bins)
    nll, _ = check_logistic(mean, log_scale, as_data(levels, num_bins), num_bins, reduction)
    nll_uint8 = fastvae.discretized_logistic_nll(mean, log_scale, levels.to(torch.uint8), num_bins, reduction)
    nll_bf16 = fastvae.discretized_logistic_nll(mean, log_scale, as_data(levels, num_bins, torch.bfloat16),
                                                num_bins, reduction)
    torch.testing.assert_close(nll_uint8, nll, rtol=0, atol=0)
    torch.testing.assert_close(nll_bf16, nll, rtol=0, atol=0)


@pytest.mark.parametrize("features", ROW_SUM_FEATURES)
def test_logistic_batch_nll_does_not_drift_with_size(kernel_backend, features):
    """A sample's nll summed in float32 one element at a time drifts as D grows: every
    backend's is as close to the float64 sum of the terms as the torch backend's pairwise
    float32 sum."""
    mean, log_scale = (t.detach() for t in make_logistic((2, features)))
    x = as_data(make_levels((2, features)))
    exact = reference.discretized_logistic_nll_terms(mean.double(), log_scale.double(), x.double()).sum(1)
    nll = fastvae.discretized_logistic_nll(mean, log_scale, x)
    with fastvae.use_backend("torch"):
        nll_torch = fastvae.discretized_logistic_nll(mean, log_scale, x)
    assert_as_accurate_as_torch(nll, exact, nll_torch, msg="nll")


def test_logistic_extremes_and_clamp_gradient(kernel_backend):
    levels = make_levels((4, 64))
    levels[:, :8] = 0
    levels[:, 8:16] = 255
    levels[:] = levels[0]
    mean = (2.0 * torch.rand(1, 64, generator=torch.Generator().manual_seed(2)) - 1.0).to(DEVICE).repeat(4, 1)
    log_scale = torch.tensor([[-7.0], [7.0], [-9.0], [-100.0]], device=DEVICE).expand(4, 64).contiguous()
    mean.requires_grad_(), log_scale.requires_grad_()
    nll, (grad_mean, grad_log_scale) = check_logistic(mean, log_scale, as_data(levels))
    # Below the clamp the log-scale gets no gradient (torch.clamp_min's), at it a full one.
    assert torch.all(grad_log_scale[2:] == 0) and torch.all(grad_log_scale[0] != 0)
    # −9 and −100 both act as −7.
    assert torch.equal(nll[0], nll[2]) and torch.equal(nll[0], nll[3])


def test_logistic_noncontiguous_chunks(kernel_backend):
    """mean, log_scale = decoder_output.chunk(2, dim=1): rows read in place, any stride."""
    gen = torch.Generator().manual_seed(4)
    out = torch.randn(3, 6, 5, 7, generator=gen).to(DEVICE).requires_grad_()
    mean, log_scale = out.chunk(2, dim=1)
    x = as_data(make_levels((3, 3, 5, 7)))
    nll = fastvae.discretized_logistic_nll(mean, log_scale, x, reduction="none")
    expected = reference.discretized_logistic_nll(mean.double(), log_scale.double(), x.double(), reduction="none")
    assert_close(nll, expected, torch.float32)
    (grad,) = torch.autograd.grad(nll, out, upstream(nll))
    (grad_ref,) = torch.autograd.grad(
        reference.discretized_logistic_nll(*[t.double() for t in out.chunk(2, dim=1)], x, reduction="none"),
        out, upstream(nll).double())
    assert_close(grad, grad_ref, torch.float32)
    transposed = fastvae.discretized_logistic_nll(mean.transpose(2, 3), log_scale.transpose(2, 3), x.transpose(2, 3),
                                                  reduction="none")
    assert_close(transposed, expected.transpose(2, 3), torch.float32)


def test_logistic_empty_and_no_grad_to_x(kernel_backend):
    mean, log_scale = make_logistic((0, 4))
    for reduction, shape in [("none", (0, 4)), ("batch", (0,)), ("sum", ()), ("mean", ())]:
        nll = fastvae.discretized_logistic_nll(mean, log_scale, torch.zeros(0, 4, device=DEVICE), reduction=reduction)
        assert nll.shape == shape
    mean, log_scale = make_logistic((2, 5))
    x = as_data(make_levels((2, 5))).requires_grad_()
    nll = fastvae.discretized_logistic_nll(mean, log_scale, x)
    grads = torch.autograd.grad(nll.sum(), (mean, log_scale, x), allow_unused=True)
    assert grads[0] is not None and grads[1] is not None and grads[2] is None


def test_float64_runs_on_reference(kernel_backend, kernel_launches):
    params = make_params(2, 3, 2, (3, 3), torch.float64)
    x = as_data(make_levels((2, 3, 3, 3)), dtype=torch.float64)
    nll = fastvae.discretized_logistic_mixture_nll(params, x, 2)
    assert nll.dtype == torch.float64
    torch.testing.assert_close(nll, reference.discretized_logistic_mixture_nll(params, x, 2), rtol=0, atol=0)
    assert kernel_launches == []


# --------------------------------------------------------------------------------------
# The reference: gradcheck, normalization, PixelCNN++
# --------------------------------------------------------------------------------------


def exact_logistic_nll(value, mean, log_scale, level, num_bins):
    """(−log P, ∂/∂mean, ∂/∂log_scale) of the discretized logistic in 60-digit decimal
    arithmetic from the exact values of the float inputs (Python floats): the bin mass
    σ(a) − σ(b) itself, no stable rewriting, so an independent ground truth."""
    with decimal.localcontext() as context:
        context.prec = 60
        D = decimal.Decimal
        top = num_bins - 1
        scale_exponent = D(max(log_scale, -7.0))
        inv_scale = (-scale_exponent).exp()
        half = D(1) / D(top)
        a = inv_scale * (D(value) - D(mean) + half)
        b = inv_scale * (D(value) - D(mean) - half)

        def sigmoid(t):
            return 1 / (1 + (-t).exp())

        def slope(t):  # σ'(t)
            return sigmoid(t) * sigmoid(-t)

        # Mass and its derivatives in mean (∂a = ∂b = −s) and log_scale (∂a = −a, ∂b = −b).
        if level == 0:
            mass, d_mean, d_log_scale = sigmoid(a), -inv_scale * slope(a), -a * slope(a)
        elif level == top:
            mass, d_mean, d_log_scale = sigmoid(-b), inv_scale * slope(b), b * slope(b)
        else:
            # Both edges on one side of the mean keep the subtraction of two numbers below ½.
            mass = sigmoid(a) - sigmoid(b) if b < 0 else sigmoid(-b) - sigmoid(-a)
            d_mean = -inv_scale * (slope(a) - slope(b))
            d_log_scale = b * slope(b) - a * slope(a)
        if log_scale < -7.0:
            d_log_scale = D(0)
        return float(-mass.ln()), float(-d_mean / mass), float(-d_log_scale / mass)


# (num_bins, level, mean − x, log_scale): far-off means of a wide logistic, whose bin width
# a − b would cancel (the first is 56.2344 nats: a bin of e^−50·2/255 at density ¼), a wide
# scale (tiny bins), a sharp one, one below the clamp, and the two edge levels.
EXACT_CASES = [
    (256, 128, 1e4, 50.0), (256, 128, 1000.0, 2.0), (32, 10, -2000.0, 20.0), (256, 40, -0.3, 7.0),
    (256, 200, 0.002, -7.0), (256, 200, 0.002, -9.0), (256, 0, 4.0, -1.0), (256, 255, -4.0, -1.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bin_mass_matches_high_precision(backend):
    """The nll and both gradients against exact_logistic_nll, float32 on every backend (the
    single logistic and a one-component mixture), float64 on the reference."""
    for num_bins, level, offset, log_scale in EXACT_CASES:
        top = num_bins - 1
        value64 = (2.0 * level - top) / top
        for dtype in (torch.float32, torch.float64) if backend == "torch" else (torch.float32,):
            value = torch.tensor([[value64]], dtype=dtype)
            mean = (value.double() + offset).to(dtype)
            expected = torch.tensor(exact_logistic_nll(value.item(), mean.item(), log_scale, level, num_bins),
                                    dtype=torch.float64)
            rtol, atol = (2e-6, 0.0) if dtype == torch.float32 else (1e-12, 0.0)
            grad_rtol, grad_atol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-9, 1e-12)
            mean = mean.to(DEVICE).requires_grad_()
            log_scale_t = torch.tensor([[log_scale]], dtype=dtype, device=DEVICE, requires_grad=True)
            params = torch.stack([torch.zeros_like(mean), mean, log_scale_t], dim=1)  # [1, 3, 1]: K = 1, C = 1
            with fastvae.use_backend(backend):
                nll = fastvae.discretized_logistic_nll(mean, log_scale_t, value.to(DEVICE), num_bins, "none")
                grads = torch.autograd.grad(nll.sum(), [mean, log_scale_t])
                mixture_nll = fastvae.discretized_logistic_mixture_nll(params, value.to(DEVICE)[:, None], 1, num_bins)
                mixture_grads = torch.autograd.grad(mixture_nll.sum(), [mean, log_scale_t])
            case = f"{dtype} case {(num_bins, level, offset, log_scale)}"
            for out, out_grads in ((nll, grads), (mixture_nll, mixture_grads)):
                torch.testing.assert_close(out.double().cpu().flatten(), expected[:1], rtol=rtol, atol=atol, msg=case)
                actual = torch.stack([g.double().cpu().flatten()[0] for g in out_grads])
                torch.testing.assert_close(actual, expected[1:], rtol=grad_rtol, atol=grad_atol, msg=case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixture_responsibilities_at_large_log_probabilities(backend):
    """Two identical components far from x (log P of −5e4 and −2e6 nats): each takes half
    the single logistic's gradient and the logits none.  Weights taken as exp(joint −
    logsumexp) carry the logsumexp's rounding (an ulp of 2e6 is 0.25 nats) into them."""
    value = (2.0 * 100 - 255) / 255
    for offset in (50.0, 2000.0):
        x = torch.tensor([[[value]]], device=DEVICE)
        mean = float(torch.tensor(value + offset, dtype=torch.float32))
        nll_exact, d_mean, d_log_scale = exact_logistic_nll(x.item(), mean, -7.0, 100, 256)
        params = torch.tensor([0.0, 0.0, mean, mean, -7.0, -7.0], device=DEVICE).reshape(1, 6, 1).requires_grad_()
        with fastvae.use_backend(backend):
            nll = fastvae.discretized_logistic_mixture_nll(params, x, 2)
            (grad,) = torch.autograd.grad(nll.sum(), [params])
        torch.testing.assert_close(nll.double().cpu(), torch.tensor([nll_exact], dtype=torch.float64), rtol=1e-6, atol=0)
        expected = torch.tensor([0.0, 0.0, d_mean / 2, d_mean / 2, d_log_scale / 2, d_log_scale / 2],
                                dtype=torch.float64)
        torch.testing.assert_close(grad.double().cpu().flatten(), expected, rtol=1e-5, atol=1e-6, msg=f"offset {offset}")


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")  # the interpreter's max
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_x_gives_nan_in_its_element_only(backend):
    """Without value checks a NaN x gives NaN (not a level's finite value: casting NaN to a
    level index is undefined) in its own element or pixel, and only there."""
    fastvae.set_validate_args(False)
    mean, log_scale = make_logistic((2, 6))
    x = as_data(make_levels((2, 6)))
    x[1, 4] = float("nan")
    params = make_params(2, 3, 3, (4, 5))
    images = as_data(make_levels((2, 3, 4, 5)))
    images[0, 1, 2, 3] = float("nan")  # channel G, which the coupling also carries into B
    with fastvae.use_backend(backend):
        nll = fastvae.discretized_logistic_nll(mean, log_scale, x, reduction="none")
        grads = torch.autograd.grad(nll.sum(), [mean, log_scale])
        mixture_nll = fastvae.discretized_logistic_mixture_nll(params, images, 3, reduction="none")
        (grad_params,) = torch.autograd.grad(mixture_nll.sum(), [params])
    nan = torch.zeros(2, 6, dtype=torch.bool, device=DEVICE)
    nan[1, 4] = True
    assert torch.equal(torch.isnan(nll), nan)
    for grad in grads:
        assert torch.isfinite(grad[~nan]).all() and torch.isnan(grad[nan]).all()
    pixel_nan = torch.zeros(2, 4, 5, dtype=torch.bool, device=DEVICE)
    pixel_nan[0, 2, 3] = True
    assert torch.equal(torch.isnan(mixture_nll), pixel_nan)
    assert torch.isfinite(grad_params.permute(0, 2, 3, 1)[~pixel_nan]).all()
    assert torch.isnan(grad_params[0, :, 2, 3]).any()


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")  # the interpreter's max
@pytest.mark.parametrize("backend", BACKENDS)
def test_level_past_the_grid_gives_nan_on_every_backend(backend):
    """Without value checks a uint8 level of num_bins or more is no level: NaN on every
    backend (each used to give a different finite number), the other elements as the
    reference gives them."""
    fastvae.set_validate_args(False)
    num_bins = 100
    mean, log_scale = make_logistic((2, 6))
    levels = make_levels((2, 6), num_bins)
    levels[0, 3], levels[1, 0] = num_bins, 255
    x = levels.to(torch.uint8)
    params = make_params(2, 3, 2, (2, 3))
    image_levels = make_levels((2, 3, 2, 3), num_bins)
    image_levels[1, 0, 1, 2] = 150  # channel R: the coupling carries it into G and B
    images = image_levels.to(torch.uint8)
    with fastvae.use_backend(backend):
        nll = fastvae.discretized_logistic_nll(mean, log_scale, x, num_bins, reduction="none")
        grads = torch.autograd.grad(nll.sum(), [mean, log_scale])
        mixture_nll = fastvae.discretized_logistic_mixture_nll(params, images, 2, num_bins, reduction="none")
        (grad_params,) = torch.autograd.grad(mixture_nll.sum(), [params])
    nan = levels >= num_bins
    assert torch.equal(torch.isnan(nll), nan)
    for grad in grads:
        assert torch.isnan(grad[nan]).all() and torch.isfinite(grad[~nan]).all()
    in_grid = torch.where(nan, torch.zeros_like(levels), levels).to(torch.uint8)
    nll_ref = reference.discretized_logistic_nll(float64_copy(mean), float64_copy(log_scale), in_grid, num_bins, "none")
    assert_close(nll[~nan], nll_ref[~nan], torch.float32)
    pixel_nan = torch.zeros(2, 2, 3, dtype=torch.bool, device=DEVICE)
    pixel_nan[1, 1, 2] = True
    assert torch.equal(torch.isnan(mixture_nll), pixel_nan)
    assert torch.isfinite(grad_params.permute(0, 2, 3, 1)[~pixel_nan]).all()
    assert torch.isnan(grad_params[1, :, 1, 2]).any()


def test_reference_level_values_are_correctly_rounded():
    """A level's value is (2i − N)/N, N = num_bins − 1, rounded once (as the kernels and the
    samplers compute it), not −1 + i·(2/N), which is off by an ulp at most levels."""
    for num_bins in (2, 3, 32, 100, 256, 65536):
        levels = torch.arange(num_bins)
        exact = (2.0 * levels.double() - (num_bins - 1)) / (num_bins - 1)
        assert torch.equal(reference.level_values(levels, num_bins, torch.float64), exact)
        # Double rounding through float64 is exact here: N < 2^28.
        assert torch.equal(reference.level_values(levels, num_bins, torch.float32), exact.float())


def test_reference_gradcheck_far_from_the_mean():
    """gradcheck where |x − mean| is thousands of bins, wide and sharp."""
    mean = torch.tensor([[30.0, -2.0, 0.5, 1e3]], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([[3.0, -1.0, 7.0, 12.0]], dtype=torch.float64, requires_grad=True)
    levels = torch.tensor([[128, 0, 255, 77]], dtype=torch.uint8)
    assert torch.autograd.gradcheck(
        lambda m, s: reference.discretized_logistic_nll(m, s, levels, 256, "none"), (mean, log_scale))


@pytest.mark.parametrize("num_bins", [8, 256])
def test_reference_gradcheck_logistic(num_bins):
    gen = torch.Generator().manual_seed(0)
    mean = (2.0 * torch.rand(2, 5, generator=gen, dtype=torch.float64) - 1.0).requires_grad_()
    log_scale = (-2.0 + torch.randn(2, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    levels = make_levels((2, 5), num_bins).cpu()
    assert torch.autograd.gradcheck(
        lambda m, s: reference.discretized_logistic_nll(m, s, levels.to(torch.uint8), num_bins, "none"),
        (mean, log_scale))


@pytest.mark.parametrize("channels", [1, 3])
def test_reference_gradcheck_mixture(channels):
    params = make_params(2, channels, 2, (1, 2), torch.float64).detach().cpu().requires_grad_()
    x = as_data(make_levels((2, channels, 1, 2)).cpu(), dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: reference.discretized_logistic_mixture_nll(p, x, 2, reduction="none"), (params,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilities_sum_to_one(backend):
    """Over every level: the single logistic and the mixture with C = 1 at 256 levels, the
    mixture with C = 3 at 16 levels (all 16³ colours, laid along the spatial axis)."""
    with fastvae.use_backend(backend):
        levels = torch.arange(256, device=DEVICE)
        mean, log_scale = make_logistic((3, 1))
        log_scale = log_scale.detach() + torch.tensor([[-4.0], [0.0], [5.0]], device=DEVICE)
        nll = fastvae.discretized_logistic_nll(mean.detach().expand(3, 256), log_scale.expand(3, 256),
                                               levels.to(torch.uint8).expand(3, 256), reduction="none")
        torch.testing.assert_close(torch.exp(-nll.double()).sum(1), torch.ones(3, dtype=torch.float64, device=DEVICE),
                                   rtol=0, atol=2e-5)

        params = make_params(3, 1, 4, (1,), requires_grad=False).expand(3, 12, 256)
        x = as_data(levels).expand(3, 1, 256)
        nll = fastvae.discretized_logistic_mixture_nll(params, x, 4, reduction="none")
        torch.testing.assert_close(torch.exp(-nll.double()).sum(1), torch.ones(3, dtype=torch.float64, device=DEVICE),
                                   rtol=0, atol=2e-5)

        colours = torch.cartesian_prod(*[torch.arange(16, device=DEVICE)] * 3).T  # [3, 4096]: R, G, B
        params = make_params(2, 3, 3, (1,), log_scale=-1.5, requires_grad=False).expand(2, 30, 4096)
        x = colours.to(torch.uint8).unsqueeze(0).expand(2, 3, 4096)
        nll = fastvae.discretized_logistic_mixture_nll(params, x, 3, num_bins=16, reduction="none")
        torch.testing.assert_close(torch.exp(-nll.double()).sum(1), torch.ones(2, dtype=torch.float64, device=DEVICE),
                                   rtol=0, atol=2e-5)


def pixelcnn_pp_nll(params, x, num_mixtures):
    """PixelCNN++'s discretized_mix_logistic_loss (Salimans et al. 2017), written directly
    in NVAE's [B, 10K, H, W] layout for 8-bit data: per-pixel nll [B, H, W]."""
    K = num_mixtures
    batch, _, height, width = params.shape
    logit_probs = params[:, :K]
    blocks = params[:, K:].reshape(batch, 3, 3 * K, height, width)
    means = blocks[:, :, :K]
    log_scales = torch.clamp(blocks[:, :, K:2 * K], min=-7.0)
    coeffs = torch.tanh(blocks[:, :, 2 * K:])
    x = x.unsqueeze(2)  # [B, 3, 1, H, W]
    m2 = means[:, 1] + coeffs[:, 0] * x[:, 0]
    m3 = means[:, 2] + coeffs[:, 1] * x[:, 0] + coeffs[:, 2] * x[:, 1]
    means = torch.stack([means[:, 0], m2, m3], dim=1)
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered_x - 1.0 / 255.0)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - torch.nn.functional.softplus(plus_in)
    log_one_minus_cdf_min = -torch.nn.functional.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2.0 * torch.nn.functional.softplus(mid_in)
    inner_inner_out = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                                  log_pdf_mid - math.log(127.5))
    inner_out = torch.where(x > 0.999, log_one_minus_cdf_min, inner_inner_out)
    log_probs = torch.where(x < -0.999, log_cdf_plus, inner_out)
    log_probs = log_probs.sum(1) + torch.log_softmax(logit_probs, dim=1)
    return -torch.logsumexp(log_probs, dim=1), cdf_delta


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_pixelcnn_pp_where_its_approximation_holds(backend):
    """At moderate scales every bin's mass exceeds PixelCNN++'s 1e-5 switch, so its loss is
    exact there: the layout, coupling and edge bins agree with it."""
    K = 3
    params = make_params(2, 3, K, (5, 6), torch.float64, log_scale=0.0, requires_grad=False)
    params[:, K:] *= 0.5  # means in (−0.5, 0.5), log-scales near −0.35 ± 0.35, coefficients tanh(±0.5)
    levels = make_levels((2, 3, 5, 6))
    x = as_data(levels, dtype=torch.float64)
    expected, cdf_delta = pixelcnn_pp_nll(params, x, K)
    assert torch.all(cdf_delta > 1e-5)
    with fastvae.use_backend(backend):
        nll = fastvae.discretized_logistic_mixture_nll(params.float(), x.float(), K, reduction="none")
    torch.testing.assert_close(nll.double(), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# Samples and means
# --------------------------------------------------------------------------------------


def chi_square_p_value(counts, probabilities, min_expected=5.0):
    """Pearson's chi-square p-value, cells with fewer than ``min_expected`` expected
    counts merged into one."""
    expected = probabilities * counts.sum()
    small = expected < min_expected
    observed = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if expected[-1] == 0:
        assert observed[-1] == 0
        observed, expected = observed[:-1], expected[:-1]
    expected = expected * (observed.sum() / expected.sum())  # float rounding only
    return stats.chisquare(observed.numpy(), expected.numpy()).pvalue


def test_logistic_sample_distribution():
    num_bins, n = 16, 40000
    mean = torch.full((1, n), 0.3, device=DEVICE)
    log_scale = torch.full((1, n), math.log(0.25), device=DEVICE)
    torch.manual_seed(0)
    sample = fastvae.discretized_logistic_sample(mean, log_scale, num_bins)
    assert sample.shape == mean.shape and sample.dtype == mean.dtype
    levels = reference.grid_levels(sample, num_bins)
    torch.testing.assert_close(as_data(levels, num_bins), sample, rtol=0, atol=0)  # on the grid
    counts = torch.bincount(levels.flatten().cpu(), minlength=num_bins).double()
    grid = torch.arange(num_bins, device=DEVICE).to(torch.uint8).reshape(1, -1)
    probabilities = torch.exp(-fastvae.discretized_logistic_nll(
        mean[:, :num_bins], log_scale[:, :num_bins], grid, num_bins, "none")).double().flatten().cpu()
    assert chi_square_p_value(counts, probabilities) > 1e-3


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_sample_distribution(channels):
    """Samples of one pixel's mixture (strong channel coupling for C = 3) against the
    probabilities exp(−nll) of every colour at 16 levels."""
    num_bins, K, n = 16, 3, 40000
    params = make_params(1, channels, K, (1,), log_scale=-1.5, requires_grad=False)
    if channels == 3:  # strong coupling: raw coefficients of the three components
        for c in range(3):
            params[0, K + 3 * K * c + 2 * K:K + 3 * K * (c + 1), 0] = torch.tensor([1.2, -0.8, 0.6])
    torch.manual_seed(1)
    sample = fastvae.discretized_logistic_mixture_sample(params.expand(1, -1, n), K, num_bins)
    assert sample.shape == (1, channels, n) and sample.dtype == params.dtype
    levels = reference.grid_levels(sample, num_bins)[0]  # [C, n]
    torch.testing.assert_close(as_data(levels, num_bins), sample[0], rtol=0, atol=0)
    index = levels[0] if channels == 1 else (levels[0] * num_bins + levels[1]) * num_bins + levels[2]
    counts = torch.bincount(index.cpu(), minlength=num_bins ** channels).double()
    colours = torch.cartesian_prod(*[torch.arange(num_bins, device=DEVICE)] * channels)
    colours = colours.reshape(-1, channels).T.unsqueeze(0).to(torch.uint8)  # [1, C, num_bins ** C], row-major
    nll = fastvae.discretized_logistic_mixture_nll(params.expand(1, -1, colours.shape[2]), colours, K, num_bins, "none")
    probabilities = torch.exp(-nll.double()).flatten().cpu()
    assert chi_square_p_value(counts, probabilities) > 1e-3


def test_samples_reproducible_and_fresh():
    mean, log_scale = make_logistic((2, 3, 4))
    params = make_params(2, 3, 2, (4, 4))
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        draws.append((fastvae.discretized_logistic_sample(mean, log_scale),
                      fastvae.discretized_logistic_mixture_sample(params, 2)))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0]) and not torch.equal(draws[0][1], draws[2][1])
    generator = torch.Generator(device=DEVICE).manual_seed(3)
    first = fastvae.discretized_logistic_mixture_sample(params, 2, generator=generator)
    generator.manual_seed(3)
    assert torch.equal(first, fastvae.discretized_logistic_mixture_sample(params, 2, generator=generator))
    assert not first.requires_grad


def test_sample_temperature_and_dtypes():
    mean = torch.tensor([[-2.0, -0.31, 0.0, 0.52, 3.0]], device=DEVICE)
    log_scale = torch.zeros_like(mean)
    # Temperature 0: the level nearest the clamped mean.
    sample = fastvae.discretized_logistic_sample(mean, log_scale, num_bins=5, temperature=0.0)
    assert sample.tolist() == [[-1.0, -0.5, 0.0, 0.5, 1.0]]
    params = make_params(4, 3, 2, (3, 3), torch.bfloat16, requires_grad=False)
    cold = fastvae.discretized_logistic_mixture_sample(params, 2, num_bins=32, temperature=0.0)
    assert cold.dtype == torch.bfloat16 and cold.shape == (4, 3, 3, 3)
    assert cold.abs().max() <= 1
    levels = reference.grid_levels(cold, 32)
    torch.testing.assert_close(as_data(levels, 32, torch.bfloat16), cold, rtol=0, atol=0)
    sharp = torch.full((1000, 5), -3.0, device=DEVICE)
    wide = fastvae.discretized_logistic_sample(mean.expand(1000, 5), sharp, temperature=2.0)
    narrow = fastvae.discretized_logistic_sample(mean.expand(1000, 5), sharp, temperature=0.5)
    assert wide[:, 2].std() > 2.5 * narrow[:, 2].std()


def test_logistic_mean_within_half_a_level_of_the_discretized_mean():
    num_bins = 32
    grid = torch.arange(num_bins, dtype=torch.float64)
    mean = torch.tensor([-1.3, -0.8, -0.1, 0.0, 0.37, 0.95, 2.0], dtype=torch.float64)
    for log_scale_value in (-7.0, -4.0, -2.0, 0.0, 3.0):
        log_scale = torch.full_like(mean, log_scale_value)
        nll = reference.discretized_logistic_nll_terms(mean[:, None].expand(-1, num_bins), log_scale[:, None].expand(
            -1, num_bins), grid.to(torch.uint8).expand(len(mean), -1), num_bins)
        exact = (torch.exp(-nll) * as_data(grid, num_bins, torch.float64)).sum(1)
        closed_form = fastvae.discretized_logistic_mean(mean, log_scale, num_bins)
        assert closed_form.dtype == torch.float64
        assert torch.all((closed_form - exact).abs() <= 1.0 / (num_bins - 1) + 1e-12)
        if log_scale_value >= 0:  # wide: the sum over levels is the integral up to O(h²/s)
            torch.testing.assert_close(closed_form, exact, rtol=0, atol=2e-3)
    out = fastvae.discretized_logistic_mean(mean.float().to(torch.bfloat16), torch.zeros(7, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.abs().max() <= 1


def test_mixture_mean_equals_sample_average():
    """The mixture mean is the mean of the continuous mixture with the coupling, so it
    matches a Monte Carlo average of fine-grid samples (clamping negligible here)."""
    K, n = 3, 50000
    params = make_params(1, 3, K, (1,), log_scale=-4.0, requires_grad=False)
    for c in range(3):  # means within ±0.3, coefficients within about ±0.5: little clamping
        params[:, K + 3 * K * c:K + 3 * K * c + K] *= 0.3
        params[:, K + 3 * K * c + 2 * K:K + 3 * K * (c + 1)] *= 0.5
    mean = fastvae.discretized_logistic_mixture_mean(params, K)
    assert mean.shape == (1, 3, 1)
    torch.manual_seed(2)
    sample = fastvae.discretized_logistic_mixture_sample(params.expand(1, -1, n), K, num_bins=65536)
    assert sample.abs().max() < 0.999
    torch.testing.assert_close(sample.mean(2, keepdim=True), mean, rtol=0, atol=6e-3)
    single = make_params(2, 1, 1, (3,), requires_grad=False)
    expected = single[:, 1:2].clamp(-1, 1)  # one component: its mean, clamped
    torch.testing.assert_close(fastvae.discretized_logistic_mixture_mean(single, 1), expected)


# --------------------------------------------------------------------------------------
# Bad input, NaN, registrations, compile, memory
# --------------------------------------------------------------------------------------


def _nll_args(**overrides):
    args = {"mean": torch.zeros(2, 3), "log_scale": torch.zeros(2, 3), "x": torch.full((2, 3), -1.0)}
    args.update(overrides)
    return args


def _mixture_args(**overrides):
    args = {"params": torch.zeros(2, 30, 4, 4), "x": torch.full((2, 3, 4, 4), -1.0), "num_mixtures": 3}
    args.update(overrides)
    return args


BAD_NLL = [
    (_nll_args(mean=[0.0]), TypeError, "mean"),
    (_nll_args(mean=torch.zeros(2, 3, dtype=torch.int32)), TypeError, "mean"),
    (_nll_args(log_scale=torch.zeros(2, 4)), ValueError, "log_scale"),
    (_nll_args(x=torch.zeros(2, 4)), ValueError, "x"),
    (_nll_args(x=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "x"),
    (_nll_args(mean=torch.zeros(()), log_scale=torch.zeros(()), x=torch.zeros(())), ValueError, "mean"),
    (dict(_nll_args(), num_bins=1), ValueError, "num_bins"),
    (dict(_nll_args(), num_bins=2.5), TypeError, "num_bins"),
    (dict(_nll_args(x=torch.zeros(2, 3, dtype=torch.uint8)), num_bins=300), ValueError, "num_bins"),
    (dict(_nll_args(), reduction="avg"), ValueError, "reduction"),
    (_nll_args(x=torch.full((2, 3), 1.5)), ValueError, "x"),
    (_nll_args(x=torch.full((2, 3), 0.5)), ValueError, "grid"),
    (_nll_args(x=torch.full((2, 3), float("nan"))), ValueError, "x contains NaN"),
    (dict(_nll_args(x=torch.full((2, 3), 40, dtype=torch.uint8)), num_bins=32), ValueError, "x"),
    (_nll_args(mean=torch.full((2, 3), float("nan"))), ValueError, "mean contains NaN"),
]

BAD_MIXTURE = [
    (_mixture_args(params=torch.zeros(2, 30, 4, 4, dtype=torch.int64)), TypeError, "params"),
    (_mixture_args(params=torch.zeros(30)), ValueError, "params"),
    (_mixture_args(x=torch.zeros(2, 2, 4, 4)), ValueError, "x must have 1 or 3 channels"),
    (_mixture_args(params=torch.zeros(2, 29, 4, 4)), ValueError, "params must have 30 channels"),
    (_mixture_args(params=torch.zeros(2, 9, 4, 4)), ValueError, "params must have 30 channels"),
    (_mixture_args(params=torch.zeros(3, 30, 4, 4)), ValueError, "batch size"),
    (_mixture_args(params=torch.zeros(2, 30, 4, 5)), ValueError, "spatial shape"),
    (_mixture_args(num_mixtures=0), ValueError, "num_mixtures"),
    (_mixture_args(num_mixtures=3.0), TypeError, "num_mixtures"),
    (_mixture_args(num_mixtures=True), TypeError, "num_mixtures"),
    (dict(_mixture_args(), num_bins=0), ValueError, "num_bins"),
    (dict(_mixture_args(), reduction="max"), ValueError, "reduction"),
    (_mixture_args(x=torch.full((2, 3, 4, 4), -1.2)), ValueError, r"\[-1, 1\]"),
    (_mixture_args(x=torch.full((2, 3, 4, 4), 0.001)), ValueError, "grid"),
    (_mixture_args(params=torch.full((2, 30, 4, 4), float("nan"))), ValueError, "params contains NaN"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_NLL)
def test_bad_logistic_input(kwargs, error, match):
    kwargs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match) as info:
        fastvae.discretized_logistic_nll(**kwargs)
    assert str(info.value).startswith("fastvae.discretized_logistic_nll:")


@pytest.mark.parametrize("kwargs,error,match", BAD_MIXTURE)
def test_bad_mixture_input(kwargs, error, match):
    kwargs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match) as info:
        fastvae.discretized_logistic_mixture_nll(**kwargs)
    assert str(info.value).startswith("fastvae.discretized_logistic_mixture_nll:")


def test_bad_sample_and_mean_input():
    params = torch.zeros(2, 30, 4, 4, device=DEVICE)
    cases = [
        (lambda: fastvae.discretized_logistic_mixture_sample(params, 4), ValueError,
         "discretized_logistic_mixture_sample: params"),
        (lambda: fastvae.discretized_logistic_mixture_sample(params, 3, temperature=-1.0), ValueError, "temperature"),
        (lambda: fastvae.discretized_logistic_mixture_sample(params, 3, generator=1), TypeError, "generator"),
        (lambda: fastvae.discretized_logistic_mixture_mean(params, 7), ValueError,
         "discretized_logistic_mixture_mean: params"),
        (lambda: fastvae.discretized_logistic_sample(params, params[:1]), ValueError, "log_scale"),
        (lambda: fastvae.discretized_logistic_mean(params, params, num_bins=1), ValueError, "num_bins"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert str(info.value).startswith("fastvae.discretized_logistic_")


def test_x_on_the_grid_within_rounding_is_accepted():
    levels = torch.arange(256, device=DEVICE)
    params = torch.zeros(1, 3, 256, device=DEVICE)
    for x_dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = as_data(levels, dtype=x_dtype).reshape(1, 1, 256)
        fastvae.discretized_logistic_mixture_nll(params, x, 1)
    # float32 arithmetic off by a few ulp is fine; a quarter of a level is not.
    x = (levels.float() / 127.5 - 1.0).reshape(1, 1, 256)
    fastvae.discretized_logistic_mixture_nll(params, x, 1)
    with pytest.raises(ValueError, match="grid"):
        fastvae.discretized_logistic_mixture_nll(params[..., 1:255], x[..., 1:255] + 0.25 * 2 / 255, 1)


def test_nan_stays_in_its_pixel(kernel_backend):
    fastvae.set_validate_args(False)
    params = make_params(2, 3, 3, (4, 5), requires_grad=False)
    params[0, 3 + 1, 2, 3] = float("nan")  # a mean of channel R
    params[1, 0, 1, 1] = float("nan")  # a logit
    x = as_data(make_levels((2, 3, 4, 5)))
    nll = fastvae.discretized_logistic_mixture_nll(params, x, 3, reduction="none")
    nan = torch.zeros_like(nll, dtype=torch.bool)
    nan[0, 2, 3] = nan[1, 1, 1] = True
    assert torch.equal(torch.isnan(nll), nan)
    mean, log_scale = make_logistic((2, 6))
    mean = mean.detach().clone()
    mean[1, 4] = float("nan")
    nll = fastvae.discretized_logistic_nll(mean, log_scale, as_data(make_levels((2, 6))), reduction="none")
    assert torch.isnan(nll).sum() == 1 and torch.isnan(nll[1, 4])


def test_double_backward_raises(kernel_backend):
    params = make_params(2, 3, 2, (3, 3))
    x = as_data(make_levels((2, 3, 3, 3)))
    (grad,) = torch.autograd.grad(fastvae.discretized_logistic_mixture_nll(params, x, 2).sum(), params,
                                  create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()
    mean, log_scale = make_logistic((2, 4))
    x = as_data(make_levels((2, 4)))
    (grad,) = torch.autograd.grad(fastvae.discretized_logistic_nll(mean, log_scale, x).sum(), mean, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


def test_autograd_saves_only_the_inputs_or_the_gradient(kernel_backend):
    """Memory: the forward keeps nothing for the backward but params and x, or, where the
    backend's forward writes ∂nll/∂params, that gradient alone (no [B, C, K, S]
    intermediates; eager keeps about a dozen of them)."""
    from fastvae.ops.logistic import _mixture_forward_writes_grad

    params = make_params(2, 3, 10, (8, 8))
    x = make_levels((2, 3, 8, 8)).to(torch.uint8)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        nll = fastvae.discretized_logistic_mixture_nll(params, x, 10, reduction="mean")
    big = [t for t in saved if t.numel() > params.shape[0]]
    if _mixture_forward_writes_grad(kernel_backend):
        assert len(big) == 1 and big[0].shape == params.shape
        assert big[0].data_ptr() not in (params.data_ptr(), x.data_ptr())
    else:
        assert {t.data_ptr() for t in big} <= {params.data_ptr(), x.data_ptr()}
    assert all(t.numel() <= params.numel() for t in saved)
    nll.backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()


@pytest.mark.slow
def test_torch_compile_fullgraph(kernel_backend):
    import torch._dynamo

    params = make_params(2, 3, 3, (4, 4))
    x = as_data(make_levels((2, 3, 4, 4)))

    def loss(params, x):
        return fastvae.discretized_logistic_mixture_nll(params, x, 3).mean() * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    results = []
    for fn in (compiled, loss):
        out = fn(params, x)
        results.append((out,) + torch.autograd.grad(out, params))
    for actual, expected in zip(*results):
        assert_close(actual, expected, torch.float32)
