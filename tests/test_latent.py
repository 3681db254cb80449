"""Gaussian latent ops (reparameterize, gaussian_kl, sample_gaussian): every kernel
backend against fastvae.reference, forward and backward, over shapes, dtypes, priors,
reductions and free bits; plus bad input, NaN, empty batches and double backward."""
import pytest
import torch

import fastvae
from fastvae import random as fv_random
from fastvae import reference
from tests.conftest import DEVICE, ROW_SUM_FEATURES, assert_as_accurate_as_torch, assert_close

SHAPES = [(0, 5), (1, 1), (3, 7), (257, 129), (4, 3, 5, 6)]
REDUCTIONS = ["batch", "none", "sum", "mean"]


def make_latent(shape, dtype, seed=0, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    logvar = (0.5 * torch.randn(shape, generator=generator)).to(DEVICE, dtype)
    return mu.requires_grad_(requires_grad), logvar.requires_grad_(requires_grad)


def run_both(fn, inputs, seed=1234):
    """Run ``fn`` with the current backend and with the reference from the same seed;
    returns (outputs, reference outputs)."""
    torch.manual_seed(seed)
    out = fn(*inputs)
    with fastvae.use_backend("torch"):
        torch.manual_seed(seed)
        ref_inputs = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]
        ref_out = fn(*ref_inputs)
    return out, ref_out, ref_inputs


def upstream_grads(outputs, seed=7):
    """Random output gradients: the op is not the last layer."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=generator).to(o.device, o.dtype) for o in outputs]


def grads_of(outputs, inputs, grad_outputs):
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sample_gaussian_matches_reference(kernel_backend, dtype, shape):
    mu, logvar = make_latent(shape, dtype)
    (z, kl), (z_ref, kl_ref), ref_inputs = run_both(fastvae.sample_gaussian, [mu, logvar])
    assert z.dtype == dtype and z.shape == mu.shape
    assert kl.dtype == torch.float32 and kl.shape == (shape[0],)
    assert_close(z, z_ref, dtype)
    features = max(1, mu[0].numel()) if shape[0] else 1
    assert_close(kl, kl_ref, torch.float32, scale=features)
    grad_z, grad_kl = upstream_grads([z, kl])
    grads = grads_of([z, kl], [mu, logvar], [grad_z, grad_kl])
    grads_ref = grads_of([z_ref, kl_ref], ref_inputs, [grad_z, grad_kl])
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad.dtype == dtype
        assert_close(grad, grad_ref, dtype, scale=4)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("free_bits", [0.0, 0.6])
def test_gaussian_kl_reductions_and_free_bits(kernel_backend, reduction, free_bits):
    mu, logvar = make_latent((33, 10), torch.float32)
    with torch.no_grad():
        mu[:, :4] *= 0.1  # low-KL dimensions, held by free bits
        logvar[:, :4] *= 0.1
    kl, kl_ref, ref_inputs = run_both(lambda m, v: fastvae.gaussian_kl(m, v, free_bits=free_bits, reduction=reduction), [mu, logvar])
    assert kl.shape == kl_ref.shape
    assert_close(kl, kl_ref, torch.float32, scale=10)
    (grad_kl,) = upstream_grads([kl])
    for grad, grad_ref in zip(grads_of([kl], [mu, logvar], [grad_kl]), grads_of([kl_ref], ref_inputs, [grad_kl])):
        assert_close(grad, grad_ref, torch.float32)


def test_free_bits_semantics(kernel_backend):
    """Batch mean of the objective is Σ_j max(free_bits, mean_b KL_bj); held dimensions get no gradient."""
    mu, logvar = make_latent((64, 6), torch.float32)
    with torch.no_grad():
        mu[:, :2] *= 0.01
        logvar[:, :2] *= 0.01
        mu[:, 2:] *= 3.0
    free_bits = 0.5
    objective = fastvae.gaussian_kl(mu, logvar, free_bits=free_bits, reduction="mean")
    true_per_dim = reference.gaussian_kl_terms(mu.detach(), logvar.detach()).mean(0)
    assert bool((true_per_dim[:2] < free_bits).all()) and bool((true_per_dim[2:] > free_bits).all())
    assert torch.allclose(objective, torch.clamp_min(true_per_dim, free_bits).sum(), rtol=1e-5)
    objective.backward()
    assert torch.all(mu.grad[:, :2] == 0) and torch.all(logvar.grad[:, :2] == 0)
    assert torch.all(mu.grad[:, 2:].abs().sum(0) > 0)


def test_free_bits_per_channel_of_conv_latent(kernel_backend):
    mu, logvar = make_latent((8, 3, 4, 4), torch.float32)
    with torch.no_grad():
        mu[:, 0] *= 0.01
        logvar[:, 0] *= 0.01
    free_bits = 1.0
    kl = fastvae.gaussian_kl(mu, logvar, free_bits=free_bits, reduction="none")
    per_channel = reference.gaussian_kl_terms(mu.detach(), logvar.detach()).sum((2, 3)).mean(0)
    assert per_channel[0] < free_bits < per_channel[1:].min()
    # A held channel puts free_bits / (H·W) at each of its elements.
    torch.testing.assert_close(kl[:, 0], torch.full_like(kl[:, 0], free_bits / 16))
    torch.testing.assert_close(kl.sum((0, 2, 3)) / 8, torch.clamp_min(per_channel, free_bits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "prior_shape",
    [(1, 129), (129,), (37, 129), ()],
    ids=["row", "vector", "full", "scalar"],
)
def test_prior_broadcast_and_gradients(kernel_backend, prior_shape):
    mu, logvar = make_latent((37, 129), torch.float32)
    generator = torch.Generator().manual_seed(3)
    prior_mu = torch.randn(prior_shape, generator=generator).to(DEVICE).requires_grad_()
    prior_logvar = (0.3 * torch.randn(prior_shape, generator=generator)).to(DEVICE).requires_grad_()
    inputs = [mu, logvar, prior_mu, prior_logvar]
    (z, kl), (z_ref, kl_ref), ref_inputs = run_both(fastvae.sample_gaussian, inputs)
    assert_close(kl, kl_ref, torch.float32, scale=129)
    grad_z, grad_kl = upstream_grads([z, kl])
    for grad, grad_ref in zip(grads_of([z, kl], inputs, [grad_z, grad_kl]), grads_of([z_ref, kl_ref], ref_inputs, [grad_z, grad_kl])):
        assert grad.shape == grad_ref.shape
        assert_close(grad, grad_ref, torch.float32, scale=37 * 8)


@pytest.mark.parametrize("prior_shape", [(1, 129), (37, 129)], ids=["row", "full"])
def test_prior_gets_no_gradient_when_only_z_is_differentiated(kernel_backend, prior_shape):
    """A prior requiring grad, with the KL unused: the prior gets no gradient (as from the
    torch backend) rather than a failed sum of the gradient the kernel did not write."""
    mu, logvar = make_latent((37, 129), torch.float32)
    prior_mu = torch.zeros(prior_shape, device=DEVICE, requires_grad=True)
    prior_logvar = torch.zeros(prior_shape, device=DEVICE, requires_grad=True)
    z, _ = fastvae.sample_gaussian(mu, logvar, prior_mu, prior_logvar)
    grads = torch.autograd.grad(z.sum(), [mu, logvar, prior_mu, prior_logvar], allow_unused=True)
    with fastvae.use_backend("torch"):
        z_ref, _ = fastvae.sample_gaussian(mu, logvar, prior_mu, prior_logvar)
        grads_ref = torch.autograd.grad(z_ref.sum(), [mu, logvar, prior_mu, prior_logvar], allow_unused=True)
    assert grads[2] is None and grads[3] is None and grads_ref[2] is None and grads_ref[3] is None
    assert_close(grads[0], grads_ref[0], torch.float32)


@pytest.mark.parametrize("prior_shape", [(1, 3, 1, 1), (4, 3, 5, 6), (1, 3, 1, 6), (1, 1, 5, 1)], ids=str)
def test_conv_latent_priors(kernel_backend, prior_shape):
    mu, logvar = make_latent((4, 3, 5, 6), torch.float32)
    generator = torch.Generator().manual_seed(4)
    prior_mu = torch.randn(prior_shape, generator=generator).to(DEVICE).requires_grad_()
    prior_logvar = (0.3 * torch.randn(prior_shape, generator=generator)).to(DEVICE).requires_grad_()
    inputs = [mu, logvar, prior_mu, prior_logvar]
    kl, kl_ref, ref_inputs = run_both(lambda *a: fastvae.gaussian_kl(*a, reduction="none"), inputs)
    assert_close(kl, kl_ref, torch.float32)
    (grad_kl,) = upstream_grads([kl])
    for grad, grad_ref in zip(grads_of([kl], inputs, [grad_kl]), grads_of([kl_ref], ref_inputs, [grad_kl])):
        assert_close(grad, grad_ref, torch.float32, scale=20)


def test_mixed_precision_prior(kernel_backend):
    """A float32 learned prior with a bfloat16 posterior, as under autocast."""
    mu, logvar = make_latent((16, 8), torch.bfloat16)
    prior_mu = torch.zeros(8, device=DEVICE, requires_grad=True)
    z, kl = fastvae.sample_gaussian(mu, logvar, prior_mu)
    assert z.dtype == torch.bfloat16 and kl.dtype == torch.float32
    (z.float().sum() + kl.sum()).backward()
    assert prior_mu.grad.dtype == torch.float32 and mu.grad.dtype == torch.bfloat16


def test_non_contiguous_inputs(kernel_backend):
    base_mu, base_logvar = make_latent((20, 30), torch.float32, requires_grad=False)
    mu = base_mu.t().requires_grad_()  # [30, 20], strided
    logvar = base_logvar.t().requires_grad_()
    assert not mu.is_contiguous()
    (z, kl), (z_ref, kl_ref), ref_inputs = run_both(fastvae.sample_gaussian, [mu, logvar])
    assert_close(z, z_ref, torch.float32)
    assert_close(kl, kl_ref, torch.float32, scale=20)
    grad_z, grad_kl = upstream_grads([z, kl])
    for grad, grad_ref in zip(grads_of([z, kl], [mu, logvar], [grad_z, grad_kl]), grads_of([z_ref, kl_ref], ref_inputs, [grad_z, grad_kl])):
        assert_close(grad, grad_ref, torch.float32)


def test_reparameterize_matches_reference(kernel_backend, dtype):
    mu, logvar = make_latent((19, 33), dtype)
    z, z_ref, ref_inputs = run_both(fastvae.reparameterize, [mu, logvar])
    assert_close(z, z_ref, dtype)
    (grad_z,) = upstream_grads([z])
    for grad, grad_ref in zip(grads_of([z], [mu, logvar], [grad_z]), grads_of([z_ref], ref_inputs, [grad_z])):
        assert_close(grad, grad_ref, dtype)


def test_sample_gaussian_equals_its_parts(kernel_backend):
    """The fused op draws the same z as reparameterize and the same KL as gaussian_kl."""
    mu, logvar = make_latent((9, 17), torch.float32, requires_grad=False)
    torch.manual_seed(5)
    z, kl = fastvae.sample_gaussian(mu, logvar)
    torch.manual_seed(5)
    assert torch.equal(z, fastvae.reparameterize(mu, logvar))
    assert torch.equal(kl, fastvae.gaussian_kl(mu, logvar))


def test_same_seed_same_bits_fresh_noise_each_call(kernel_backend):
    mu, logvar = make_latent((65, 31), torch.float32, requires_grad=False)
    torch.manual_seed(0)
    first, _ = fastvae.sample_gaussian(mu, logvar)
    second, _ = fastvae.sample_gaussian(mu, logvar)
    torch.manual_seed(0)
    again, _ = fastvae.sample_gaussian(mu, logvar)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    with_generator, _ = fastvae.sample_gaussian(mu, logvar, generator=generator)
    generator.manual_seed(11)
    assert torch.equal(with_generator, fastvae.sample_gaussian(mu, logvar, generator=generator)[0])


def test_backward_is_bitwise_repeatable(kernel_backend):
    mu, logvar = make_latent((300, 70), torch.float32)
    prior_mu = torch.zeros(1, 70, device=DEVICE, requires_grad=True)
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        z, kl = fastvae.sample_gaussian(mu, logvar, prior_mu)
        results.append(torch.autograd.grad((z.square().sum() + kl.sum()), [mu, logvar, prior_mu]) + (kl,))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def audit_latent(rows, features, seed=0):
    """mu ~ 0.5·N(0, 1), logvar ~ U(−2, 0) (float32, no gradient): a trained encoder's
    range, where each element adds about half a nat to a row's KL."""
    generator = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(rows, features, generator=generator)
    logvar = -2.0 * torch.rand(rows, features, generator=generator)
    return mu.to(DEVICE), logvar.to(DEVICE)


@pytest.mark.parametrize("features", ROW_SUM_FEATURES)
@pytest.mark.parametrize("reduction", ["batch", "sum", "mean"])
def test_kl_row_sums_do_not_drift_with_size(kernel_backend, reduction, features):
    """A row's KL summed in float32 one element at a time drifts as D grows (tens of nats
    at D = 2^20): every backend's is as close to the float64 sum of the terms as the torch
    backend's pairwise float32 sum."""
    if kernel_backend == "triton" and features > 2**16 and reduction != "batch":
        pytest.skip("the interpreter takes 10 to 20 s a call at 2^20; 'sum' and 'mean' add up the 'batch' rows "
                    "in torch")
    mu, logvar = audit_latent(2, features)
    exact = reference.reduce(reference.gaussian_kl_terms(mu.double(), logvar.double()), reduction)
    kl = fastvae.gaussian_kl(mu, logvar, reduction=reduction)
    with fastvae.use_backend("torch"):
        kl_torch = fastvae.gaussian_kl(mu, logvar, reduction=reduction)
    assert_as_accurate_as_torch(kl, exact, kl_torch, msg=f"KL '{reduction}'")


@pytest.mark.parametrize("features", ROW_SUM_FEATURES)
def test_sample_gaussian_kl_row_sums_do_not_drift_with_size(kernel_backend, features):
    """The same for the KL that comes with a sample, against a full-size prior."""
    if kernel_backend == "triton" and features > 2**16:
        pytest.skip("the interpreter draws 2^20 normals for about a minute; the KL's row sum is gaussian_kl's, "
                    "checked at 2^20 above")
    mu, logvar = audit_latent(2, features)
    prior_mu, prior_logvar = audit_latent(2, features, seed=1)
    exact = reference.gaussian_kl_terms(mu.double(), logvar.double(), prior_mu.double(), prior_logvar.double()).sum(1)
    _, kl = fastvae.sample_gaussian(mu, logvar, prior_mu, prior_logvar)
    with fastvae.use_backend("torch"):  # the reference's KL does not depend on the sample
        kl_torch = fastvae.gaussian_kl(mu, logvar, prior_mu, prior_logvar)
    assert_as_accurate_as_torch(kl, exact, kl_torch, msg="KL")


def latent_launchers(backend):
    from fastvae.ops._common import kernel_module

    return kernel_module(backend, "latent")


def test_noise_crosses_the_offset_carry(kernel_backend):
    """Offsets base + i whose low word wraps mid-row (the carry into the counter's high
    word): the forward's z and the regenerated ε of the backward are the reference's."""
    launchers = latent_launchers(kernel_backend)
    shape = (3, 777)  # rows cross the CPU's 256-column tiles and the carry at 2^32
    seed_offset = torch.tensor([2**40 + 17, 2**32 - 1000], dtype=torch.int64, device=DEVICE)
    zeros = torch.zeros(shape, device=DEVICE)
    z = torch.empty(shape, device=DEVICE)
    launchers.gaussian_latent_fwd(zeros, zeros, None, None, seed_offset, "none", z=z, kl=None)
    expected = fv_random.philox_normal(seed_offset.cpu(), shape)
    torch.testing.assert_close(z.cpu(), expected, rtol=0, atol=5e-6)
    # With logvar = 0 and grad_z = 1, grad_logvar = ε/2.
    grad_mu, grad_logvar = torch.empty(shape, device=DEVICE), torch.empty(shape, device=DEVICE)
    launchers.gaussian_latent_bwd(torch.ones(shape, device=DEVICE), None, zeros, zeros, None, None, seed_offset, None,
                                  grad_mu=grad_mu, grad_logvar=grad_logvar, grad_prior_mu=None, grad_prior_logvar=None)
    torch.testing.assert_close(grad_logvar.cpu(), 0.5 * expected, rtol=0, atol=3e-6)


@pytest.mark.parametrize("mu_scale", [1.0, 1000.0], ids=["mu~1", "mu>>sigma"])
def test_backward_from_z_equals_backward_from_regenerated_noise(kernel_backend, mu_scale):
    """Backends whose backward reads z (the cpu backend in float32) give the gradients of
    the backward that regenerates ε, up to the rounding of z, also where |mu| ≫ σ."""
    launchers = latent_launchers(kernel_backend)
    mu, logvar = make_latent((37, 300), torch.float32, requires_grad=False)
    mu, logvar = mu * mu_scale, logvar - 4.0
    seed_offset = torch.tensor([5, 77], dtype=torch.int64, device=DEVICE)
    z, kl = torch.empty_like(mu), torch.empty(mu.shape[0], device=DEVICE)
    launchers.gaussian_latent_fwd(mu, logvar, None, None, seed_offset, "row", z=z, kl=kl)
    grad_z, grad_kl = upstream_grads([z, kl])

    def backward(z):
        grads = torch.empty_like(mu), torch.empty_like(logvar)
        launchers.gaussian_latent_bwd(grad_z, grad_kl, mu, logvar, None, None, seed_offset, z, *grads, None, None)
        return grads

    if not launchers.backward_reads_sample(torch.float32):
        with pytest.raises(ValueError, match="regenerates ε and takes no z"):
            backward(z)
        return
    assert not launchers.backward_reads_sample(torch.bfloat16)  # z − mu in bfloat16 loses σ·ε
    from_z, regenerated = backward(z), backward(None)
    assert torch.equal(from_z[0], regenerated[0])
    # |z − mu − σ·ε| ≤ ulp(z)/2, so the difference is at most |grad_z|·ulp(z)/4.
    bound = grad_z.abs() * torch.finfo(torch.float32).eps * z.abs() / 2 + 1e-6
    assert ((from_z[1] - regenerated[1]).abs() <= bound).all()


def test_in_place_change_of_z_never_gives_a_wrong_gradient(kernel_backend):
    """A backward that reads z refuses once z was changed in place (autograd's version
    check); one that regenerates ε gives the gradient of the changed z."""
    mu, logvar = make_latent((6, 9), torch.float32)
    z, _ = fastvae.sample_gaussian(mu, logvar)
    noise = (z.detach() - mu.detach()) / torch.exp(0.5 * logvar.detach())
    z.mul_(3.0)
    try:
        grad_mu, grad_logvar = torch.autograd.grad(z.sum(), [mu, logvar])
    except RuntimeError as error:
        assert "modified by an inplace operation" in str(error)
        assert latent_launchers(kernel_backend).backward_reads_sample(torch.float32)
        return
    torch.testing.assert_close(grad_mu, torch.full_like(mu, 3.0))
    torch.testing.assert_close(grad_logvar, 1.5 * noise * torch.exp(0.5 * logvar.detach()), rtol=1e-5, atol=1e-5)


def test_noise_is_standard_normal(kernel_backend):
    """ε = (z − μ)/σ passes Kolmogorov–Smirnov against N(0, 1) and has moments 0 and 1."""
    scipy_stats = pytest.importorskip("scipy.stats")
    mu = torch.linspace(-3, 3, 64 * 128, device=DEVICE).reshape(64, 128)
    logvar = torch.linspace(-2, 2, 64 * 128, device=DEVICE).reshape(64, 128).flip(1)
    torch.manual_seed(2024)
    z, _ = fastvae.sample_gaussian(mu, logvar)
    eps = ((z - mu) / torch.exp(0.5 * logvar)).flatten().double().cpu()
    assert abs(eps.mean().item()) < 4 / eps.numel() ** 0.5
    assert abs(eps.var().item() - 1) < 0.05
    assert scipy_stats.kstest(eps.numpy(), "norm").pvalue > 1e-3
    # Neighbouring elements are independent (no counter reuse across rows or columns).
    assert abs(torch.corrcoef(torch.stack([eps[:-1], eps[1:]]))[0, 1].item()) < 0.03


def test_empty_batch(kernel_backend):
    mu, logvar = make_latent((0, 7), torch.float32)
    z, kl = fastvae.sample_gaussian(mu, logvar)
    assert z.shape == (0, 7) and kl.shape == (0,)
    assert fastvae.gaussian_kl(mu, logvar, reduction="sum").item() == 0.0
    assert fastvae.gaussian_kl(mu, logvar, free_bits=0.5, reduction="none").shape == (0, 7)
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == (0, 7)


def test_nan_propagates_only_where_it_belongs(kernel_backend):
    fastvae.set_validate_args(False)
    mu, logvar = make_latent((4, 5), torch.float32, requires_grad=False)
    mu[1, 2] = float("nan")
    z, kl = fastvae.sample_gaussian(mu, logvar)
    assert torch.isnan(z[1, 2]) and torch.isnan(kl[1])
    assert torch.isfinite(z[[0, 2, 3]]).all() and torch.isfinite(kl[[0, 2, 3]]).all()
    assert torch.isfinite(z[1, [0, 1, 3, 4]]).all()


def test_nan_raises_under_validate_args(kernel_backend):
    mu, logvar = make_latent((4, 5), torch.float32, requires_grad=False)
    logvar[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"fastvae.sample_gaussian: logvar contains NaN or infinity"):
        fastvae.sample_gaussian(mu, logvar)


def test_double_backward_raises(kernel_backend):
    mu, logvar = make_latent((4, 5), torch.float32)
    z, kl = fastvae.sample_gaussian(mu, logvar)
    (grad_mu,) = torch.autograd.grad((z.square().sum() + kl.sum()), [mu], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_mu.sum().backward()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, v: fastvae.sample_gaussian(m, v[:, :3]), ValueError, r"sample_gaussian: logvar has shape \(4, 3\)"),
        (lambda m, v: fastvae.sample_gaussian(m.long(), v), TypeError, r"sample_gaussian: mu must have a floating dtype"),
        (lambda m, v: fastvae.gaussian_kl(m, v, prior_mu=torch.zeros(3)), ValueError, r"gaussian_kl: prior_mu of shape \(3,\) does not broadcast"),
        (lambda m, v: fastvae.gaussian_kl(m, v, prior_mu=torch.zeros(2, 4, 5)), ValueError, r"gaussian_kl: prior_mu"),
        (lambda m, v: fastvae.gaussian_kl(m, v, free_bits=-0.1), ValueError, r"gaussian_kl: free_bits must be >= 0"),
        (lambda m, v: fastvae.gaussian_kl(m, v, reduction="avg"), ValueError, r"gaussian_kl: reduction must be one of"),
        (lambda m, v: fastvae.sample_gaussian(m, v.to("meta")), ValueError, r"sample_gaussian: logvar is on meta"),
        (lambda m, v: fastvae.reparameterize(m[0, 0], v[0, 0]), ValueError, r"reparameterize: mu must have at least 1"),
        (lambda m, v: fastvae.sample_gaussian(m, v, generator=42), TypeError, r"sample_gaussian: generator must be a torch.Generator"),
        (lambda m, v: fastvae.reparameterize(m, "logvar"), TypeError, r"reparameterize: logvar must be a torch.Tensor"),
    ],
)
def test_bad_input_names_op_and_argument(call, error, message):
    mu, logvar = make_latent((4, 5), torch.float32, requires_grad=False)
    with pytest.raises(error, match=message):
        call(mu, logvar)


def test_float64_runs_on_reference():
    mu, logvar = make_latent((5, 6), torch.float64)
    z, kl = fastvae.sample_gaussian(mu, logvar)
    assert z.dtype == torch.float64 and kl.dtype == torch.float64


def test_autocast_inputs(kernel_backend):
    layer = torch.nn.Linear(12, 16).to(DEVICE)
    x = torch.randn(8, 12, device=DEVICE)
    with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
        mu, logvar = layer(x).chunk(2, dim=1)
        z, kl = fastvae.sample_gaussian(mu, logvar)
    assert z.dtype == torch.bfloat16 and kl.dtype == torch.float32
    (z.float().sum() + kl.sum()).backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_cpu_reparameterize_backward_hands_the_incoming_gradient_on():
    """Without a KL term ∂mu is ∂z exactly: the cpu backend's eager backward returns ∂z
    itself (no copy, as autograd's own add does) and writes only ∂logvar = ∂z·(z − mu)/2."""
    if "cpu" not in fastvae.backends.available("cpu"):
        pytest.skip("the CPU C++ backend is not built here")
    with fastvae.use_backend("cpu"):
        mu, logvar = make_latent((8, 33), torch.float32)
        z = fastvae.reparameterize(mu, logvar)
        grad_z = torch.randn_like(z)
        grad_mu, grad_logvar = torch.autograd.grad(z, [mu, logvar], grad_z)
    assert grad_mu.data_ptr() == grad_z.data_ptr() and torch.equal(grad_mu, grad_z)
    assert torch.equal(grad_logvar, grad_z * 0.5 * (z.detach() - mu.detach()))
