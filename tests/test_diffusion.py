"""Diffusion ops (diffuse, diffusion_loss) and their reference (fastvae.reference_diffusion):
the reference against float64 math (at 2^20 elements a row too) and gradcheck; every
kernel backend against the reference, forward and backward, over shapes, dtypes, mixed
dtypes, reductions, extreme γ and empty batches; the noise (each backend's is the
reference's, the loss regenerates the noise that formed z_t, same seed same bits); row
sums that do not drift with the row's length; bad arguments."""
import math

import pytest
import torch

import fastvae
from fastvae import reference_diffusion as diffusion_reference
from fastvae.random import draw_seed, philox_normal
from tests.conftest import DEVICE, KERNEL_BACKENDS, ROW_SUM_FEATURES, TOLERANCES, assert_as_accurate_as_torch

EPS32 = torch.finfo(torch.float32).eps


def make_data(shape, dtype, seed=0, requires_grad=True, gamma_dtype=None):
    """x ~ N(0, 1) of ``shape`` and γ spread over [−6, 6], one per row."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    gamma = torch.linspace(-6.0, 6.0, shape[0]).to(DEVICE, gamma_dtype or dtype)
    return x.requires_grad_(requires_grad), gamma.requires_grad_(requires_grad)


def make_prediction(shape, dtype, seed=1, requires_grad=True, weight_dtype=None):
    """ε̂ ~ N(0, 1) of ``shape`` and weights in [0.5, 1.5], one per row."""
    generator = torch.Generator().manual_seed(seed)
    eps_hat = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    weight = (0.5 + torch.rand(shape[0], generator=generator)).to(DEVICE, weight_dtype or dtype)
    return eps_hat.requires_grad_(requires_grad), weight.requires_grad_(requires_grad)


def exact_diffuse(x, gamma, seed_offset):
    """z_t in float64 from the float32 noise: α·x + σ·ε with α² = sigmoid(−γ)."""
    x, gamma = x.detach().double(), gamma.detach().double()
    eps = philox_normal(seed_offset.cpu(), tuple(x.shape)).double().to(x.device)
    per_row = (-1,) + (1,) * (x.dim() - 1)
    return torch.sigmoid(-gamma).sqrt().view(per_row) * x + torch.sigmoid(gamma).sqrt().view(per_row) * eps


def exact_squared_error(eps_hat, seed_offset):
    """Σ_n (ε − ε̂)² per row in float64, of the float32 noise."""
    eps = philox_normal(seed_offset.cpu(), tuple(eps_hat.shape)).double().to(eps_hat.device)
    return (eps - eps_hat.detach().double()).flatten(1).square().sum(1)


def upstream(output, seed=7):
    """A random incoming gradient (not ones: the op is not the last layer)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(output.shape, generator=generator).to(output.device, output.dtype)


def assert_matches(actual, expected, dtype, scale=1.0, msg=""):
    """Kernel against reference: the dtype's tolerance (tests/conftest.py), atol scaled
    for row sums."""
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * scale, equal_nan=True,
                               msg=msg or None)


def clone_leaf(tensor):
    return tensor.detach().clone().requires_grad_(tensor.requires_grad)


# --------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------


def test_reference_is_the_float64_math():
    """z_t, the squared error and the loss of the reference in float32 against the same
    formulas in float64 (the same float32 noise)."""
    x, gamma = make_data((6, 3, 10), torch.float32, requires_grad=False)
    seed_offset = torch.tensor([12, 345], dtype=torch.int64, device=DEVICE)
    z = diffusion_reference.diffuse(x, gamma, seed_offset)
    assert z.dtype == torch.float32 and z.shape == x.shape
    torch.testing.assert_close(z.double(), exact_diffuse(x, gamma, seed_offset), rtol=1e-6, atol=1e-6)
    eps_hat, weight = make_prediction((6, 3, 10), torch.float32, requires_grad=False)
    squared_error = exact_squared_error(eps_hat, seed_offset)
    torch.testing.assert_close(diffusion_reference.noise_prediction_squared_error(eps_hat, seed_offset).double(),
                               squared_error, rtol=1e-6, atol=0)
    loss = diffusion_reference.diffusion_loss(eps_hat, seed_offset, weight)
    assert loss.dtype == torch.float32 and loss.shape == (6,)
    torch.testing.assert_close(loss.double(), 0.5 * weight.double() * squared_error, rtol=1e-6, atol=0)


def test_reference_gradcheck_float64():
    """The reference's gradients (x and γ of z_t; ε̂ and w of the loss) are its
    function's: torch.autograd.gradcheck in float64."""
    x, gamma = make_data((3, 4), torch.float64)
    eps_hat, weight = make_prediction((3, 4), torch.float64)
    seed_offset = torch.tensor([3, 9], dtype=torch.int64, device=DEVICE)
    assert torch.autograd.gradcheck(lambda x, g: diffusion_reference.diffuse(x, g, seed_offset), (x, gamma))
    assert torch.autograd.gradcheck(lambda e, w: diffusion_reference.diffusion_loss(e, seed_offset, w),
                                    (eps_hat, weight))


def test_reference_at_two_to_the_20_elements_a_row():
    """Row sums over N = 2^20: the reference's loss and ∂γ (torch's pairwise float32
    sums) stay within a few float32 ulps of the float64 math."""
    features = 2**20
    seed_offset = torch.tensor([5, 2**33], dtype=torch.int64, device=DEVICE)
    noise = philox_normal(seed_offset.cpu(), (1, features)).to(DEVICE)
    eps_hat, weight = make_prediction((1, features), torch.float32)
    loss = diffusion_reference.diffusion_loss(eps_hat, seed_offset, weight)
    exact_loss = 0.5 * weight.detach().double() * (noise.double() - eps_hat.detach().double()).square().sum(1)
    torch.testing.assert_close(loss.double(), exact_loss, rtol=4 * EPS32, atol=0)
    # ∂γ with grad_z = ε and x = −ε: every term (α + σ)·ε² ≥ 0, so the relative error of
    # the sum is the summation's, not a cancellation's.
    gamma = torch.tensor([-1.0], device=DEVICE, requires_grad=True)
    z = diffusion_reference.diffuse(-noise, gamma, seed_offset)
    (grad_gamma,) = torch.autograd.grad(z, gamma, noise)
    gamma64 = gamma.detach().double()
    alpha, sigma = torch.sigmoid(-gamma64).sqrt(), torch.sigmoid(gamma64).sqrt()
    exact = 0.5 * alpha * sigma * (alpha + sigma) * noise.double().square().sum(1)
    torch.testing.assert_close(grad_gamma.double(), exact, rtol=8 * EPS32, atol=0)


EXTREME_GAMMA = [-30.0, -10.0, -1e-3, 0.0, 10.0, 30.0]


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_extreme_gamma_against_float64(backend):
    """γ = ±30 (α or σ about 3e-7, SNR e^∓30): z_t and both gradients, in float32 on
    each backend, to float32's relative accuracy of the float64 math."""
    x = torch.randn(len(EXTREME_GAMMA), 40, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    x.requires_grad_()
    gamma = torch.tensor(EXTREME_GAMMA, device=DEVICE, requires_grad=True)
    with fastvae.use_backend(backend):
        torch.manual_seed(4)
        z, noise_seed = fastvae.diffuse(x, gamma)
    grad_z = upstream(z)
    grad_x, grad_gamma = torch.autograd.grad(z, [x, gamma], grad_z)
    x64, gamma64 = x.detach().double().requires_grad_(), gamma.detach().double().requires_grad_()
    z64 = diffusion_reference.diffuse(x64, gamma64, noise_seed)
    grad_x64, grad_gamma64 = torch.autograd.grad(z64, [x64, gamma64], grad_z.double())
    torch.testing.assert_close(z.double(), z64, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(grad_x.double(), grad_x64, rtol=2e-6, atol=1e-30)
    # A row sum of 40 terms with both signs: relative to the sum of their sizes.
    scale = (grad_z.double().abs() * (x64.detach().abs() + 3)).sum(1) * (0.5 * torch.sigmoid(-gamma64).sqrt()
                                                                         * torch.sigmoid(gamma64).sqrt())
    assert bool(((grad_gamma.double() - grad_gamma64).abs() <= 1e-5 * scale.detach()).all()), (grad_gamma,
                                                                                              grad_gamma64)


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_gamma_past_float32_range_stays_finite(backend):
    """At |γ| = 1e4 (e^γ overflows float32) α and σ are 0 and 1: z_t is x or ε, and
    nothing is NaN (the kernels' ∂γ included; the reference's is NaN where α or σ is 0,
    the derivative of √s at s = 0)."""
    x, _ = make_data((2, 9), torch.float32)
    gamma = torch.tensor([-1e4, 1e4], device=DEVICE, requires_grad=True)
    with fastvae.use_backend(backend):
        z, noise_seed = fastvae.diffuse(x, gamma)
        grad_x, grad_gamma = torch.autograd.grad(z, [x, gamma], upstream(z))
    noise = philox_normal(noise_seed.cpu(), (2, 9)).to(DEVICE)
    torch.testing.assert_close(z[0], x[0].detach(), rtol=0, atol=0)
    torch.testing.assert_close(z[1], noise[1], rtol=3e-6, atol=3e-6)
    torch.testing.assert_close(grad_x, torch.stack([upstream(z)[0], torch.zeros(9, device=DEVICE)]), rtol=0, atol=0)
    if backend != "torch":
        assert torch.equal(grad_gamma, torch.zeros_like(grad_gamma))


# --------------------------------------------------------------------------------------
# Public ops: dtypes, arguments
# --------------------------------------------------------------------------------------


def test_float64_runs_on_the_reference(kernel_backend):
    x, gamma = make_data((3, 4), torch.float64)
    z, noise_seed = fastvae.diffuse(x, gamma)
    assert z.dtype == torch.float64 and z.grad_fn.name() != "_DirectCallBackward"
    torch.testing.assert_close(z, diffusion_reference.diffuse(x, gamma, noise_seed), rtol=0, atol=0)
    loss = fastvae.diffusion_loss(x, noise_seed, gamma)
    assert loss.dtype == torch.float64


@pytest.mark.parametrize("reduction, shape", [("batch", (4,)), ("sum", ()), ("mean", ())])
def test_reductions_and_dtypes(reduction, shape):
    with fastvae.use_backend("torch"):
        x, gamma = make_data((4, 3, 2), torch.bfloat16, gamma_dtype=torch.float16)
        z, noise_seed = fastvae.diffuse(x, gamma)
        assert z.dtype == torch.float32 and z.shape == x.shape
        assert noise_seed.dtype == torch.int64 and noise_seed.shape == (2,)
        loss = fastvae.diffusion_loss(x, noise_seed, gamma, reduction=reduction)
        assert loss.dtype == torch.float32 and loss.shape == shape
        per_row = fastvae.diffusion_loss(x, noise_seed, gamma)
        expected = {"batch": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
        torch.testing.assert_close(loss, expected)


def _x():
    return torch.zeros(4, 5, device=DEVICE)


def _row():
    return torch.zeros(4, device=DEVICE)


def _seed():
    return torch.tensor([1, 2], dtype=torch.int64, device=DEVICE)


BAD_CALLS = [
    (lambda: fastvae.diffuse(_x(), torch.zeros(3, device=DEVICE)), ValueError,
     r"fastvae.diffuse: gamma must have shape \[B\] = \[4\] \(one value per row of x\), got \[3\]"),
    (lambda: fastvae.diffuse(_x(), torch.zeros(4, 1, device=DEVICE)), ValueError,
     r"fastvae.diffuse: gamma must have shape \[B\] = \[4\]"),
    (lambda: fastvae.diffuse(_x(), 0.5), TypeError, "fastvae.diffuse: gamma must be a torch.Tensor"),
    (lambda: fastvae.diffuse(_x().long(), _row()), TypeError, "fastvae.diffuse: x must have a floating dtype"),
    (lambda: fastvae.diffuse(torch.tensor(1.0), _row()), ValueError, "fastvae.diffuse: x must have at least 1"),
    (lambda: fastvae.diffuse(_x(), _row().to("meta")), ValueError, "fastvae.diffuse: gamma is on meta"),
    (lambda: fastvae.diffuse(_x(), _row(), generator=3), TypeError,
     "fastvae.diffuse: generator must be a torch.Generator"),
    (lambda: fastvae.diffusion_loss(_x(), _seed().int(), _row()), ValueError,
     r"fastvae.diffusion_loss: noise_seed must be the int64 tensor of shape \[2\] that fastvae.diffuse returned, "
     r"got torch.int32 \[2\]"),
    (lambda: fastvae.diffusion_loss(_x(), _seed()[:1], _row()), ValueError,
     r"fastvae.diffusion_loss: noise_seed must be .* got torch.int64 \[1\]"),
    (lambda: fastvae.diffusion_loss(_x(), 7, _row()), ValueError,
     "fastvae.diffusion_loss: noise_seed must be .* got int"),
    (lambda: fastvae.diffusion_loss(_x(), _seed().to("meta"), _row()), ValueError,
     "fastvae.diffusion_loss: noise_seed is on meta"),
    (lambda: fastvae.diffusion_loss(_x(), _seed(), torch.zeros(5, device=DEVICE)), ValueError,
     r"fastvae.diffusion_loss: weight must have shape \[B\] = \[4\] \(one value per row of eps_hat\)"),
    (lambda: fastvae.diffusion_loss(_x(), _seed(), _row().long()), TypeError,
     "fastvae.diffusion_loss: weight must have a floating dtype"),
    (lambda: fastvae.diffusion_loss(_x(), _seed(), _row(), reduction="none"), ValueError,
     "fastvae.diffusion_loss: reduction must be 'batch', 'sum' or 'mean', got 'none'"),
    (lambda: fastvae.diffusion_loss(_x(), _seed(), _row(), reduction="avg"), ValueError,
     "fastvae.diffusion_loss: reduction must be 'batch', 'sum' or 'mean', got 'avg'"),
    (lambda: fastvae.diffusion_loss(_x().bool(), _seed(), _row()), TypeError,
     "fastvae.diffusion_loss: eps_hat must have a floating dtype"),
]


@pytest.mark.parametrize("index", range(len(BAD_CALLS)))
def test_bad_arguments_name_op_and_argument(index):
    call, error, message = BAD_CALLS[index]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("argument", ["x", "gamma", "eps_hat", "weight"])
def test_nonfinite_raises_under_validate_args(argument):
    x, gamma = make_data((3, 4), torch.float32, requires_grad=False)
    eps_hat, weight = make_prediction((3, 4), torch.float32, requires_grad=False)
    values = {"x": x, "gamma": gamma, "eps_hat": eps_hat, "weight": weight}
    values[argument].view(-1)[1] = float("nan")
    op = "diffuse" if argument in ("x", "gamma") else "diffusion_loss"
    with pytest.raises(ValueError, match=rf"fastvae.{op}: {argument} contains NaN or infinity"):
        if op == "diffuse":
            fastvae.diffuse(x, gamma)
        else:
            fastvae.diffusion_loss(eps_hat, _seed(), weight)


# --------------------------------------------------------------------------------------
# Every kernel backend against the reference
# --------------------------------------------------------------------------------------

SHAPES = [(0, 5), (3, 0), (5,), (1, 1), (3, 7), (67, 129), (4, 3, 5, 6)]


def check_against_reference(shape, dtype, gamma_dtype=None, weight_dtype=None, reduction="batch", x=None):
    """z_t, the loss and every gradient (random incoming gradients) of the current
    backend against the reference's, from the same seed."""
    if x is None:
        x, gamma = make_data(shape, dtype, gamma_dtype=gamma_dtype)
    else:
        gamma = make_data(shape, dtype, gamma_dtype=gamma_dtype)[1]
    eps_hat, weight = make_prediction(shape, dtype, weight_dtype=weight_dtype)
    features = math.prod(shape[1:])
    torch.manual_seed(1234)
    z, noise_seed = fastvae.diffuse(x, gamma)
    loss = fastvae.diffusion_loss(eps_hat, noise_seed, weight, reduction=reduction)
    ref_leaves = [clone_leaf(t) for t in (x, gamma, eps_hat, weight)]
    with fastvae.use_backend("torch"):
        torch.manual_seed(1234)
        z_ref, noise_seed_ref = fastvae.diffuse(*ref_leaves[:2])
        loss_ref = fastvae.diffusion_loss(ref_leaves[2], noise_seed_ref, ref_leaves[3], reduction=reduction)
    assert torch.equal(noise_seed, noise_seed_ref)
    assert z.dtype == z_ref.dtype == torch.promote_types(x.dtype, gamma.dtype) and z.shape == x.shape
    assert loss.dtype == loss_ref.dtype == torch.float32 and loss.shape == loss_ref.shape
    assert_matches(z, z_ref, dtype, msg="z_t")
    rows = shape[0] if reduction == "sum" else 1
    assert_matches(loss, loss_ref, torch.float32, scale=max(features, 1) * rows, msg="loss")
    grads_in = [upstream(z), upstream(loss, seed=8)]
    grads = torch.autograd.grad([z, loss], [x, gamma, eps_hat, weight], grads_in)
    grads_ref = torch.autograd.grad([z_ref, loss_ref], ref_leaves, grads_in)
    for name, grad, grad_ref, leaf in zip(("x", "gamma", "eps_hat", "weight"), grads, grads_ref,
                                          (x, gamma, eps_hat, weight)):
        assert grad.dtype == grad_ref.dtype == leaf.dtype and grad.shape == grad_ref.shape == leaf.shape, name
        row_sum = name in ("gamma", "weight")
        assert_matches(grad, grad_ref, leaf.dtype, scale=4 * max(features, 1) if row_sum else 4.0,
                       msg=f"gradient of {name}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(kernel_backend, dtype, shape):
    check_against_reference(shape, dtype)


@pytest.mark.parametrize("dtype, gamma_dtype, weight_dtype", [
    (torch.bfloat16, torch.float32, torch.float32),  # a bfloat16 denoiser with a float32 schedule
    (torch.float16, torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float16, torch.bfloat16),
], ids=str)
def test_mixed_dtypes(kernel_backend, dtype, gamma_dtype, weight_dtype):
    """z_t in the promoted dtype; each gradient in its input's dtype."""
    check_against_reference((9, 33), dtype, gamma_dtype, weight_dtype)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions_match_reference(kernel_backend, reduction):
    """A reduced loss hands the backward an expanded gradient."""
    check_against_reference((17, 20), torch.float32, reduction=reduction)


def test_non_contiguous_input(kernel_backend):
    x = torch.randn(30, 20, generator=torch.Generator().manual_seed(3)).to(DEVICE).t().requires_grad_()
    assert not x.is_contiguous()
    check_against_reference((20, 30), torch.float32, x=x)


@pytest.mark.parametrize("wanted", ["x", "gamma"])
def test_gradient_of_one_input(kernel_backend, wanted):
    """A gradient asked of x or of γ alone (the other input needs none) is the
    reference's."""
    x, gamma = make_data((11, 40), torch.float32, requires_grad=False)
    leaf = {"x": x, "gamma": gamma}[wanted].requires_grad_()
    torch.manual_seed(2)
    z, _ = fastvae.diffuse(x, gamma)
    (grad,) = torch.autograd.grad(z, leaf, upstream(z))
    with fastvae.use_backend("torch"):
        torch.manual_seed(2)
        z_ref, _ = fastvae.diffuse(x, gamma)
        (grad_ref,) = torch.autograd.grad(z_ref, leaf, upstream(z_ref))
    assert_matches(grad, grad_ref, torch.float32, scale=4 * 40 if wanted == "gamma" else 4)


@pytest.mark.parametrize("wanted", ["eps_hat", "weight"])
def test_loss_gradient_of_one_input(kernel_backend, wanted):
    eps_hat, weight = make_prediction((11, 40), torch.float32, requires_grad=False)
    leaf = {"eps_hat": eps_hat, "weight": weight}[wanted].requires_grad_()
    noise_seed = _seed()
    loss = fastvae.diffusion_loss(eps_hat, noise_seed, weight)
    (grad,) = torch.autograd.grad(loss, leaf, upstream(loss))
    with fastvae.use_backend("torch"):
        loss_ref = fastvae.diffusion_loss(eps_hat, noise_seed, weight)
        (grad_ref,) = torch.autograd.grad(loss_ref, leaf, upstream(loss_ref))
    assert_matches(grad, grad_ref, torch.float32, scale=4 * 40 if wanted == "weight" else 4)


# --------------------------------------------------------------------------------------
# The noise
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_loss_regenerates_the_noise_that_formed_z(backend):
    """ε̂ = (z_t − α·x)/σ, the noise recovered from z_t, has a loss of about 0 (float32
    rounding of z_t, relative to the loss at ε̂ = 0, Σε²); the noise of another seed has
    about 2 per element."""
    x, gamma = make_data((6, 500), torch.float32, requires_grad=False)
    gamma = gamma.clamp(-4, 4)
    weight = torch.ones(6, device=DEVICE)
    with fastvae.use_backend(backend):
        z, noise_seed = fastvae.diffuse(x, gamma)
        gamma64 = gamma.double()[:, None]
        recovered = (z.double() - torch.sigmoid(-gamma64).sqrt() * x.double()) / torch.sigmoid(gamma64).sqrt()
        loss = fastvae.diffusion_loss(recovered.float(), noise_seed, weight)
        at_zero = fastvae.diffusion_loss(torch.zeros_like(x), noise_seed, weight)
        other = fastvae.diffusion_loss(recovered.float(), noise_seed + torch.tensor([0, 1], device=DEVICE), weight)
    assert bool((loss < 1e-9 * at_zero).all()), loss
    torch.testing.assert_close(at_zero.double(), 0.5 * exact_squared_error(torch.zeros_like(x), noise_seed),
                               rtol=1e-5, atol=0)
    assert bool(((other / 500 - 1.0).abs() < 0.25).all()), other


def test_same_noise_on_every_backend(kernel_backend):
    """z_t of one seed is the reference's to a few float32 ulps (Philox's words are exact;
    only Box–Muller's last bits may differ)."""
    x, gamma = make_data((64, 300), torch.float32, requires_grad=False)
    torch.manual_seed(99)
    z, _ = fastvae.diffuse(x, gamma)
    with fastvae.use_backend("torch"):
        torch.manual_seed(99)
        z_ref, _ = fastvae.diffuse(x, gamma)
    torch.testing.assert_close(z, z_ref, rtol=3e-6, atol=3e-6)


def test_noise_crosses_the_offset_carry(kernel_backend):
    """Offsets base + b·N + n whose low word wraps mid-row: the forward's z at γ = 80
    (σ = 1, α = 0 in float32) is ε, the loss's S at ε̂ = 0 is Σε², and the loss's backward
    (grad 1, w = 1) is −ε: each the reference's noise."""
    from fastvae.ops._common import kernel_module

    launchers = kernel_module(kernel_backend, "diffusion")
    shape = (3, 777)
    seed_offset = torch.tensor([2**40 + 17, 2**32 - 1000], dtype=torch.int64, device=DEVICE)
    expected = philox_normal(seed_offset.cpu(), shape).to(DEVICE)
    zeros, ones = torch.zeros(shape, device=DEVICE), torch.ones(3, device=DEVICE)
    z = torch.empty(shape, device=DEVICE)
    launchers.diffuse_fwd(zeros, torch.full((3,), 80.0, device=DEVICE), seed_offset, z=z)
    torch.testing.assert_close(z, expected, rtol=3e-6, atol=3e-6)
    loss, squared_error = torch.empty(3, device=DEVICE), torch.empty(3, device=DEVICE)
    launchers.diffusion_loss_fwd(zeros, seed_offset, ones, loss=loss, squared_error=squared_error)
    torch.testing.assert_close(squared_error, expected.square().sum(1), rtol=1e-5, atol=0)
    torch.testing.assert_close(loss, 0.5 * squared_error, rtol=0, atol=0)
    grad_eps_hat = torch.empty(shape, device=DEVICE)
    launchers.diffusion_loss_bwd(ones, zeros, seed_offset, ones, grad_eps_hat=grad_eps_hat)
    torch.testing.assert_close(grad_eps_hat, -expected, rtol=3e-6, atol=3e-6)
    # ∂γ at x = 0, grad_z = ε: ½·α·σ·α·Σε², the backward's own regenerated noise.
    grad_x, grad_gamma = torch.empty(shape, device=DEVICE), torch.empty(3, device=DEVICE)
    gamma = torch.tensor([-1.0, 0.0, 2.0], device=DEVICE)
    launchers.diffuse_bwd(expected, zeros, gamma, seed_offset, grad_x=grad_x, grad_gamma=grad_gamma)
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    torch.testing.assert_close(grad_x, alpha[:, None] * expected, rtol=3e-6, atol=3e-6)
    torch.testing.assert_close(grad_gamma, 0.5 * alpha * sigma * alpha * expected.square().sum(1), rtol=1e-5,
                               atol=0)


def test_same_seed_same_bits_fresh_noise_each_call(kernel_backend):
    x, gamma = make_data((65, 31), torch.float32, requires_grad=False)
    torch.manual_seed(0)
    first, first_seed = fastvae.diffuse(x, gamma)
    second, _ = fastvae.diffuse(x, gamma)
    torch.manual_seed(0)
    again, again_seed = fastvae.diffuse(x, gamma)
    assert torch.equal(first, again) and torch.equal(first_seed, again_seed)
    assert not torch.equal(first, second)
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    with_generator, _ = fastvae.diffuse(x, gamma, generator=generator)
    generator.manual_seed(11)
    assert torch.equal(with_generator, fastvae.diffuse(x, gamma, generator=generator)[0])


def test_forward_and_backward_are_bitwise_repeatable(kernel_backend):
    x, gamma = make_data((300, 70), torch.float32)
    eps_hat, weight = make_prediction((300, 70), torch.float32)
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        z, noise_seed = fastvae.diffuse(x, gamma)
        loss = fastvae.diffusion_loss(eps_hat, noise_seed, weight)
        grads = torch.autograd.grad([z, loss], [x, gamma, eps_hat, weight], [upstream(z), upstream(loss)])
        results.append((z, loss) + grads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------


def test_empty_batch(kernel_backend):
    x, gamma = make_data((0, 7), torch.float32)
    z, noise_seed = fastvae.diffuse(x, gamma)
    assert z.shape == (0, 7)
    loss = fastvae.diffusion_loss(z, noise_seed, gamma, reduction="batch")
    assert loss.shape == (0,)
    assert fastvae.diffusion_loss(z, noise_seed, gamma, reduction="sum").item() == 0.0
    (z.sum() + loss.sum()).backward()
    assert x.grad.shape == (0, 7) and gamma.grad.shape == (0,)


def test_nan_stays_in_its_row(kernel_backend):
    fastvae.set_validate_args(False)
    x, gamma = make_data((4, 5), torch.float32, requires_grad=False)
    x[1, 2] = float("nan")
    eps_hat, weight = make_prediction((4, 5), torch.float32, requires_grad=False)
    eps_hat[2, 0] = float("nan")
    z, noise_seed = fastvae.diffuse(x, gamma)
    loss = fastvae.diffusion_loss(eps_hat, noise_seed, weight)
    assert torch.isnan(z[1, 2]) and torch.isfinite(z[[0, 2, 3]]).all() and torch.isfinite(z[1, [0, 1, 3, 4]]).all()
    assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3]]).all()


def test_double_backward_raises(kernel_backend):
    x, gamma = make_data((4, 5), torch.float32)
    z, noise_seed = fastvae.diffuse(x, gamma)
    (grad_gamma,) = torch.autograd.grad(z.square().sum(), [gamma], create_graph=True)
    with pytest.raises(RuntimeError, match="fastvae.diffuse: double backward"):
        grad_gamma.sum().backward()
    eps_hat, weight = make_prediction((4, 5), torch.float32)
    loss = fastvae.diffusion_loss(eps_hat, noise_seed, weight)
    (grad_eps_hat,) = torch.autograd.grad(loss.sum(), [eps_hat], create_graph=True)
    with pytest.raises(RuntimeError, match="fastvae.diffusion_loss: double backward"):
        grad_eps_hat.sum().backward()


# --------------------------------------------------------------------------------------
# Row sums
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("features", ROW_SUM_FEATURES)
def test_row_sums_do_not_drift_with_size(kernel_backend, features):
    """Over N = 2^16 (2^20, slow) a row's squared error and ∂γ are as close to the
    float64 sum of their terms as the torch backend's pairwise sums."""
    if kernel_backend == "triton" and features > 2**16:
        pytest.skip("the interpreter takes about 20 s a kernel at 2^20; Triton's row sums are fastvae.row_sums' "
                    "float64 sum of per-block partials, the same at any N")
    seed_offset = torch.tensor([77, 2**20], dtype=torch.int64, device=DEVICE)
    eps_hat, weight = make_prediction((1, features), torch.float32, requires_grad=False)
    loss = fastvae.diffusion_loss(eps_hat, seed_offset, weight)
    with fastvae.use_backend("torch"):
        loss_torch = fastvae.diffusion_loss(eps_hat, seed_offset, weight)
    noise = philox_normal(seed_offset.cpu(), (1, features)).to(DEVICE)
    terms = (noise - eps_hat).square()  # float32, as the kernels form them
    exact = 0.5 * weight.double() * terms.double().sum(1)
    assert_as_accurate_as_torch(loss, exact, loss_torch, msg="loss")
    # ∂γ with grad_z = ε and x = −ε: terms (α + σ)·ε² ≥ 0 (no cancellation to hide drift).
    gamma = torch.tensor([-1.0], device=DEVICE, requires_grad=True)
    torch.manual_seed(6)
    noise = philox_normal(draw_seed(DEVICE).cpu(), (1, features)).to(DEVICE)
    grads = []
    for backend in (kernel_backend, "torch"):
        with fastvae.use_backend(backend):
            torch.manual_seed(6)
            z, _ = fastvae.diffuse(-noise, gamma)
            grads.append(torch.autograd.grad(z, gamma, noise)[0])
    gamma64 = gamma.detach().double()
    alpha, sigma = torch.sigmoid(-gamma64).sqrt(), torch.sigmoid(gamma64).sqrt()
    exact_grad = 0.5 * alpha * sigma * (alpha + sigma) * noise.double().square().sum(1)
    assert_as_accurate_as_torch(grads[0], exact_grad, grads[1], msg="gradient of gamma")


def test_compiled_step_equals_eager(kernel_backend):
    """diffuse and diffusion_loss under torch.compile(fullgraph=True) (the custom ops
    traced, the seed drawn in the graph) give eager's bits, forward and backward."""
    import torch._dynamo

    def step(x, gamma, weight):
        z, noise_seed = fastvae.diffuse(x, gamma)
        loss = fastvae.diffusion_loss(0.5 * z, noise_seed, weight, reduction="mean")
        return z, loss

    x, gamma = make_data((6, 2, 9), torch.float32)
    weight = make_prediction((6, 2, 9), torch.float32)[1]
    results = []
    torch._dynamo.reset()
    for function in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        torch.manual_seed(21)
        z, loss = function(x, gamma, weight)
        results.append((z, loss) + torch.autograd.grad([z, loss], [x, gamma, weight], [upstream(z), upstream(loss)]))
    torch._dynamo.reset()
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)
