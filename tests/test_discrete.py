"""sample_categorical: every kernel backend against fastvae.reference, forward and
backward (soft and straight-through hard), and the reference against float64 math,
torch.distributions and gradcheck; sampling statistics; bad input."""
import math

import pytest
import torch
from scipy import stats

import fastvae
from fastvae import reference
from fastvae.random import draw_seed, philox_uniform
from tests.conftest import DEVICE, KERNEL_BACKENDS, assert_as_accurate_as_torch, assert_close

OP = "fastvae.sample_categorical"


def _leaf(shape, dtype=torch.float32, scale=1.5, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    tensor = (scale * torch.randn(shape, generator=gen)).to(device=DEVICE, dtype=dtype)
    return tensor.requires_grad_(requires_grad)


def _grad_outputs(z, kl, seed=123):
    """Random incoming gradients: the op is not the last layer."""
    gen = torch.Generator().manual_seed(seed)
    grad_z = torch.randn(z.shape, generator=gen).to(device=z.device, dtype=z.dtype)
    grad_kl = torch.randn(kl.shape, generator=gen).to(device=kl.device, dtype=kl.dtype)
    return grad_z, grad_kl


def _leaves(*tensors):
    return [t for t in tensors if t is not None and t.requires_grad]


def _op(backend, logits, tau, hard=False, prior=None, reduction="none", seed=0):
    torch.manual_seed(seed)
    with fastvae.use_backend(backend):
        return fastvae.sample_categorical(logits, tau, hard=hard, prior_logits=prior, reduction=reduction)


def _reference(logits, tau, hard=False, prior=None, reduction="none", seed=0):
    # The seed the op draws: the same call to the same generator.
    torch.manual_seed(seed)
    return reference.sample_categorical(logits, tau, draw_seed(DEVICE), hard, prior, reduction)


def _fwd_bwd(fn, leaves, *args, **kwargs):
    z, kl = fn(*args, **kwargs)
    grads = torch.autograd.grad([z, kl], leaves, _grad_outputs(z, kl), allow_unused=True) if leaves else ()
    return z, kl, grads


def _compare(backend, dtype, logits, tau=0.7, hard=False, prior=None, reduction="none", leaves=None,
             grad_scale=1.0):
    leaves = _leaves(logits, prior) if leaves is None else leaves
    z, kl, grads = _fwd_bwd(_op, leaves, backend, logits, tau, hard, prior, reduction)
    z_ref, kl_ref, grads_ref = _fwd_bwd(_reference, leaves, logits, tau, hard, prior, reduction)
    assert z.shape == logits.shape and z.dtype == logits.dtype
    assert kl.shape == kl_ref.shape and kl.dtype == torch.float32
    assert_close(z, z_ref, dtype, msg="z")
    # Both compute the KL in float32 from the same (rounded) logits.
    assert_close(kl, kl_ref, torch.float32, scale=10, msg="kl")
    for leaf, grad, grad_ref in zip(leaves, grads, grads_ref):
        assert grad.shape == leaf.shape and grad.dtype == leaf.dtype
        assert_close(grad, grad_ref, leaf.dtype, scale=grad_scale, msg="grad")
    return z, kl, grads


# --------------------------------------------------------------------------------------
# Kernels against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (6, 2), (4, 3, 10), (0, 5)])
def test_matches_reference(kernel_backend, dtype, shape, hard):
    logits = _leaf(shape, dtype)
    _compare(kernel_backend, dtype, logits, tau=0.7, hard=hard)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_matches_reference_prior(kernel_backend, dtype, hard):
    logits = _leaf((5, 9), dtype)
    prior = _leaf((9,), dtype, seed=1)
    _compare(kernel_backend, dtype, logits, tau=1.3, hard=hard, prior=prior, reduction="batch")


def test_matches_reference_across_blocks(kernel_backend, dtype):
    # 257 rows of 129 categories: 17 row blocks, the last holding one row, and rows
    # padded from 129 to 256 lanes; a full-size prior requiring grad.
    logits = _leaf((257, 129), dtype)
    prior = _leaf((257, 129), dtype, seed=1)
    _compare(kernel_backend, dtype, logits, tau=0.5, prior=prior, reduction="batch")


@pytest.mark.parametrize(
    "prior_shape",
    [(10,), (1, 1, 10), (4, 1, 10), (3, 10), (4, 3, 10)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_prior_broadcast(kernel_backend, prior_shape):
    logits = _leaf((4, 3, 10))
    prior = _leaf(prior_shape, seed=2)
    _compare(kernel_backend, torch.float32, logits, prior=prior, reduction="batch", grad_scale=10)


def test_prior_interleaved_broadcast(kernel_backend):
    # Row dimensions that collapse to three strided ones: the launcher copies the prior.
    logits = _leaf((2, 3, 4, 5))
    prior = _leaf((2, 1, 4, 5), seed=2)
    _compare(kernel_backend, torch.float32, logits, prior=prior, reduction="batch", grad_scale=10)


def test_prior_noncontiguous_and_mixed_dtype(kernel_backend):
    logits = _leaf((6, 8), torch.bfloat16)
    base = _leaf((8, 6), torch.float32, seed=3)
    _compare(kernel_backend, torch.bfloat16, logits, prior=base.t(), leaves=[logits, base], grad_scale=10)


def test_prior_in_a_third_dtype(kernel_backend):
    # float16 logits with a full-size bfloat16 prior: the C++ launchers read such a prior
    # as float32 and cast its gradient back to bfloat16.
    logits = _leaf((5, 7), torch.float16)
    prior = _leaf((5, 7), torch.bfloat16, seed=4)
    _, _, (grad_logits, grad_prior) = _compare(kernel_backend, torch.float16, logits, prior=prior, reduction="batch",
                                               grad_scale=10)
    assert grad_logits.dtype == torch.float16 and grad_prior.dtype == torch.bfloat16


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_matches_reference_wide_rows(kernel_backend, hard):
    # 4500 categories: wider than the 4096 columns a CUDA block holds in registers, so its
    # last columns are reloaded and their noise regenerated in every pass.
    logits = _leaf((3, 4500))
    prior = _leaf((3, 4500), seed=1)
    _compare(kernel_backend, torch.float32, logits, tau=0.8, hard=hard, prior=prior, reduction="batch")


@pytest.mark.parametrize("with_prior", [False, True], ids=["uniform", "prior"])
def test_kl_of_the_widest_rows_does_not_drift(kernel_backend, with_prior):
    """At the 65536 categories the kernel backends take, a row's softmax totals and KL
    summed in float32 one element at a time drift: every backend's KL is as close to the
    float64 sum of the terms as the torch backend's pairwise float32 sum."""
    logits = _leaf((2, 65536), scale=3.0, requires_grad=False)
    prior = _leaf((2, 65536), seed=1, requires_grad=False) if with_prior else None
    exact = reference.categorical_kl_terms(logits.double(), prior.double() if with_prior else None)
    _, kl = _op(kernel_backend, logits, 1.0, prior=prior, reduction="batch")
    kl_torch = reference.categorical_kl_terms(logits, prior)  # the torch backend's KL, without its slow noise
    assert_as_accurate_as_torch(kl, exact, kl_torch, msg="KL")


@pytest.mark.parametrize("reduction", ["batch", "none", "sum", "mean"])
def test_reductions(kernel_backend, reduction):
    logits = _leaf((4, 3, 5))
    prior = _leaf((5,), seed=1)
    z, kl, _ = _compare(kernel_backend, torch.float32, logits, hard=True, prior=prior, reduction=reduction,
                        grad_scale=10)
    expected_shape = {"batch": (4,), "none": (4, 3), "sum": (), "mean": ()}[reduction]
    assert kl.shape == expected_shape


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_noncontiguous_logits(kernel_backend, hard):
    base = _leaf((12, 7))
    logits = base.t()[:, ::2]  # [7, 6], strides (1, 14)
    assert not logits.is_contiguous()
    _compare(kernel_backend, torch.float32, logits, hard=hard, leaves=[base])


@pytest.mark.parametrize("used", ["z", "kl"])
def test_one_output_used(kernel_backend, used):
    # The unused output's gradient is None, not zeros: the backward skips its term.
    logits = _leaf((5, 6))
    prior = _leaf((6,), seed=1)
    grads = []
    for fn, args in ((_op, (kernel_backend,)), (_reference, ())):
        z, kl = fn(*args, logits, 0.9, False, prior, "batch")
        out = z if used == "z" else kl
        grad_out = _grad_outputs(z, kl)[0 if used == "z" else 1]
        grads.append(torch.autograd.grad(out, [logits, prior], grad_out, allow_unused=True))
    (grad_logits, grad_prior), (grad_logits_ref, grad_prior_ref) = grads
    assert_close(grad_logits, grad_logits_ref, torch.float32)
    if used == "z":
        assert grad_prior is None and grad_prior_ref is None
    else:
        assert_close(grad_prior, grad_prior_ref, torch.float32)


def test_float64_runs_on_torch(kernel_backend):
    logits = _leaf((3, 4), torch.float64)
    z, kl = _op(kernel_backend, logits, 0.5, reduction="batch")
    z_ref, kl_ref = _reference(logits, 0.5, reduction="batch")
    assert z.dtype == torch.float64 and kl.dtype == torch.float64
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(kl, kl_ref, rtol=0, atol=0)


def test_double_backward_raises(kernel_backend):
    logits = _leaf((3, 4))
    z, kl = _op(kernel_backend, logits, 0.5, reduction="batch")
    (grad,) = torch.autograd.grad(z.pow(2).sum() + kl.sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


@pytest.mark.slow
def test_torch_compile_fullgraph(kernel_backend, fallback_random):
    logits = _leaf((4, 3, 5))
    prior = _leaf((5,), seed=1)

    def loss(logits, prior):
        z, kl = fastvae.sample_categorical(logits, 0.5, hard=True, prior_logits=prior)
        return (z * torch.arange(5.0, device=z.device)).sum() + kl.sum()

    # The seed is drawn inside the graph: eager's generator stream needs fallback_random.
    compiled = torch.compile(loss, fullgraph=True)
    results = []
    for fn in (compiled, loss):
        torch.manual_seed(3)
        out = fn(logits, prior)
        results.append((out,) + torch.autograd.grad(out, (logits, prior)))
    for actual, expected in zip(*results):
        assert_close(actual, expected, torch.float32)


# --------------------------------------------------------------------------------------
# The reference against float64 math
# --------------------------------------------------------------------------------------


def test_reference_kl_closed_form():
    logits = _leaf((6, 3, 7), torch.float64, requires_grad=False)
    prior = _leaf((7,), torch.float64, seed=1, requires_grad=False)
    p = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    q = torch.exp(prior) / torch.exp(prior).sum(-1, keepdim=True)
    expected = (p * (torch.log(p) - torch.log(q))).sum(-1)
    torch.testing.assert_close(reference.categorical_kl_terms(logits, prior), expected, rtol=1e-12, atol=1e-12)
    uniform = (p * (torch.log(p) + math.log(7))).sum(-1)
    torch.testing.assert_close(reference.categorical_kl_terms(logits), uniform, rtol=1e-12, atol=1e-12)
    dist = torch.distributions
    expected = dist.kl_divergence(dist.Categorical(logits=logits), dist.Categorical(logits=prior.expand_as(logits)))
    torch.testing.assert_close(reference.categorical_kl_terms(logits, prior), expected, rtol=1e-10, atol=1e-12)
    # The float32 computation of float32 inputs.
    kl32 = reference.categorical_kl_terms(logits.float(), prior.float())
    assert kl32.dtype == torch.float32
    torch.testing.assert_close(kl32.double(), expected, rtol=1e-5, atol=1e-6)


def test_reference_kl_gradcheck():
    logits = _leaf((3, 2, 5), torch.float64)
    prior = _leaf((2, 5), torch.float64, seed=1)
    assert torch.autograd.gradcheck(reference.categorical_kl_terms, (logits, prior))
    assert torch.autograd.gradcheck(lambda x: reference.categorical_kl_terms(x), (logits,))


def test_reference_kl_gradient_formulas():
    # The kernels' analytic gradients: ∂KL/∂x = p·((log p − log q) − KL), ∂KL/∂u = q − p.
    logits = _leaf((4, 6), torch.float64)
    prior = _leaf((4, 6), torch.float64, seed=1)
    kl = reference.categorical_kl_terms(logits, prior)
    grad_logits, grad_prior = torch.autograd.grad(kl.sum(), (logits, prior))
    log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(prior, -1)
    p, q = log_p.exp(), log_q.exp()
    torch.testing.assert_close(grad_logits, p * ((log_p - log_q) - kl[:, None]))
    torch.testing.assert_close(grad_prior, q - p)


def test_reference_gumbel_softmax_float64():
    logits = _leaf((5, 4), torch.float64, requires_grad=False)
    seed_offset = draw_seed(DEVICE)
    u = philox_uniform(seed_offset, logits.shape).double().clamp_min(1e-20)
    expected = torch.softmax((logits - torch.log(-torch.log(u))) / 0.3, dim=-1)
    z = reference.gumbel_softmax(logits, 0.3, seed_offset)
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-7)
    hard = reference.gumbel_softmax(logits, 0.3, seed_offset, hard=True)
    torch.testing.assert_close(hard, torch.nn.functional.one_hot(expected.argmax(-1), 4).double())


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------

ALL_BACKENDS = ["torch"] + KERNEL_BACKENDS


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_hard_sample_frequencies(backend):
    # Gumbel-max: the argmax of logits + g is distributed as softmax(logits).
    probs = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4])
    samples = 10000
    logits = torch.log(probs).to(DEVICE).expand(samples, 5)
    z, _ = _op(backend, logits, 0.5, hard=True, seed=1234)
    assert torch.all((z == 0) | (z == 1)) and torch.all(z.sum(-1) == 1)
    counts = z.sum(0).cpu().double()
    expected = probs.double() / probs.double().sum() * samples
    _, p_value = stats.chisquare(counts.numpy(), expected.numpy())
    assert p_value > 1e-3, (counts, p_value)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_small_tau_soft_is_nearly_hard(backend):
    logits = _leaf((1, 6), requires_grad=False).expand(2000, 6)
    soft, _ = _op(backend, logits, 0.01, seed=7)
    hard, _ = _op(backend, logits, 0.01, hard=True, seed=7)
    # Same noise: the soft sample's argmax is the hard sample's category.
    assert torch.equal(soft.argmax(-1), hard.argmax(-1))
    assert soft.max(-1).values.mean() > 0.99
    assert (soft - hard).abs().sum(-1).median() < 1e-3


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_reproducible_and_fresh(backend):
    logits = _leaf((4, 3, 6), requires_grad=False)
    z1, kl1 = _op(backend, logits, 0.5, seed=5)
    z2, kl2 = _op(backend, logits, 0.5, seed=5)
    assert torch.equal(z1, z2) and torch.equal(kl1, kl2)
    with fastvae.use_backend(backend):
        z3, _ = fastvae.sample_categorical(logits, 0.5)  # the generator has moved on
    assert not torch.equal(z1, z3)
    with fastvae.use_backend(backend):
        a, _ = fastvae.sample_categorical(logits, 0.5, generator=torch.Generator(DEVICE).manual_seed(9))
        b, _ = fastvae.sample_categorical(logits, 0.5, generator=torch.Generator(DEVICE).manual_seed(9))
    assert torch.equal(a, b) and not torch.equal(a, z1)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"tau": float("nan")}, ValueError, "tau"),
        ({"tau": float("inf")}, ValueError, "tau"),
        ({"tau": torch.tensor(0.5)}, TypeError, "tau"),
        ({"tau": True}, TypeError, "tau"),
        ({"hard": 1}, TypeError, "hard"),
        ({"prior_logits": torch.zeros(4)}, ValueError, "prior_logits"),
        ({"prior_logits": torch.zeros(2, 3, 5)}, ValueError, "prior_logits"),
        ({"prior_logits": torch.zeros(3, 1)}, ValueError, "prior_logits"),
        ({"prior_logits": torch.zeros(())}, ValueError, "prior_logits"),
        ({"prior_logits": torch.zeros(5, dtype=torch.int64)}, TypeError, "prior_logits"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"generator": 3}, TypeError, "generator"),
    ],
)
def test_bad_arguments(kwargs, error, name):
    args = {"logits": torch.zeros(3, 5, device=DEVICE), "tau": 0.5, **kwargs}
    with pytest.raises(error, match=f"^{OP}: .*{name}"):
        fastvae.sample_categorical(**args)


@pytest.mark.parametrize(
    "logits, error",
    [
        (torch.zeros(3, 5, dtype=torch.int64), TypeError),
        (torch.zeros(3, 5, dtype=torch.bool), TypeError),
        (torch.zeros(5), ValueError),
        (torch.zeros(()), ValueError),
        (torch.zeros(3, 0), ValueError),
        ([[0.0, 1.0]], TypeError),
    ],
    ids=["int64", "bool", "1-dim", "0-dim", "no-categories", "list"],
)
def test_bad_logits(logits, error):
    with pytest.raises(error, match=f"^{OP}: logits"):
        fastvae.sample_categorical(logits, 0.5)


def test_device_mismatch():
    logits = torch.zeros(3, 5, device=DEVICE)
    with pytest.raises(ValueError, match=f"^{OP}: prior_logits is on meta"):
        fastvae.sample_categorical(logits, 0.5, prior_logits=torch.zeros(5, device="meta"))


def test_cpu_extension_rejects_bad_launches():
    # What the C++ would otherwise turn into a bad read or a division by zero.
    extension = pytest.importorskip("fastvae._C", reason="the CPU C++ backend is not built here")
    logits, z, kl = torch.zeros(2, 3), torch.empty(2, 3), torch.empty(2)
    prior, seed = torch.zeros(3), draw_seed(torch.device("cpu"))
    args = [logits.data_ptr(), 0, seed.data_ptr(), z.data_ptr(), kl.data_ptr(), 2, 3, [0, 0, 1, 1], 0.5,
            -math.log(3), 0, 0, False]
    extension.categorical_fwd(*args)
    with pytest.raises(ValueError, match="categorical_fwd: the seed_offset tensor is missing"):
        extension.categorical_fwd(*args[:2], 0, *args[3:])
    with pytest.raises(ValueError, match="categorical_fwd: the prior's size1 must be positive"):
        extension.categorical_fwd(args[0], prior.data_ptr(), *args[2:7], [0, 0, 1, 0], *args[8:])
    with pytest.raises(ValueError, match="categorical_fwd: the prior must be float32 or in the logits' dtype"):
        extension.categorical_fwd(args[0], prior.data_ptr(), *args[2:7], [0, 0, 1, 1], 0.5, -math.log(3), 1, 2, False)


def test_too_many_categories_for_kernels(kernel_backend):
    from fastvae.kernels.discrete import MAX_CATEGORIES
    from fastvae.ops.discrete import KERNEL_MAX_CATEGORIES

    assert KERNEL_MAX_CATEGORIES == MAX_CATEGORIES == 65536
    logits = torch.zeros(1, 65537, device=DEVICE)
    with pytest.raises(ValueError, match=f"^{OP}: logits has 65537 categories"):
        fastvae.sample_categorical(logits, 0.5)


def test_nan_rejected_when_validating():
    logits = torch.zeros(3, 5, device=DEVICE)
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match=f"^{OP}: logits contains NaN"):
        fastvae.sample_categorical(logits, 0.5)
    with pytest.raises(ValueError, match=f"^{OP}: prior_logits contains NaN"):
        fastvae.sample_categorical(torch.zeros(3, 5), 0.5, prior_logits=logits)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_nan_stays_in_its_row(backend, hard):
    fastvae.set_validate_args(False)
    clean = _leaf((4, 6), requires_grad=False)
    dirty = clean.clone()
    dirty[1, 2] = float("nan")
    results = []
    for logits in (clean, dirty):
        logits = logits.clone().requires_grad_(True)
        z, kl, (grad,) = _fwd_bwd(_op, [logits], backend, logits, 0.5, hard, None, "none")
        results.append((z, kl, grad))
    others = [0, 2, 3]
    for clean_out, dirty_out in zip(*results):
        assert torch.isnan(dirty_out[1]).all()
        torch.testing.assert_close(dirty_out[others], clean_out[others], rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# On a CUDA device (marked gpu; skipped without one)
# --------------------------------------------------------------------------------------

CUDA = torch.device("cuda")


def _gpu_backends():
    return [b for b in fastvae.backends.available(CUDA) if b != "torch"] if torch.cuda.is_available() else []


@pytest.mark.gpu
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("shape", [(65536, 32, 16), (4096, 512), (64, 8192), (8, 65536)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gpu_at_real_sizes(shape, dtype, hard):
    generator = torch.Generator(device=CUDA).manual_seed(0)
    logits = (2 * torch.randn(shape, device=CUDA, generator=generator)).to(dtype).requires_grad_()
    prior = torch.randn(shape[-1], device=CUDA, generator=generator).requires_grad_()
    for backend in _gpu_backends():
        with fastvae.use_backend(backend):
            torch.manual_seed(1)
            z, kl = fastvae.sample_categorical(logits, 0.5, hard=hard, prior_logits=prior)
        torch.manual_seed(1)
        z_ref, kl_ref = reference.sample_categorical(logits, 0.5, draw_seed(CUDA), hard, prior)
        if hard:  # the argmax may differ where y's top two round alike
            assert (z.argmax(-1) != z_ref.argmax(-1)).float().mean() < 1e-4
        else:
            assert_close(z, z_ref, dtype)
        torch.testing.assert_close(kl, kl_ref, rtol=1e-4, atol=1e-3)
        grad_z, grad_kl = _grad_outputs(z, kl)
        grads = torch.autograd.grad([z, kl], [logits, prior], [grad_z, grad_kl])
        grads_ref = torch.autograd.grad([z_ref, kl_ref], [logits, prior], [grad_z, grad_kl])
        assert_close(grads[0], grads_ref[0], dtype, scale=4)
        torch.testing.assert_close(grads[1], grads_ref[1], rtol=1e-3, atol=1e-2)


@pytest.mark.gpu
def test_gpu_past_two_to_the_31_elements():
    if torch.cuda.get_device_properties(CUDA).total_memory < 40 * 2**30:
        pytest.skip("needs about 20 GiB of GPU memory")
    categories = 1024
    rows = 2**31 // categories + 8  # 2**31 + 8192 elements
    logits = torch.zeros((rows, categories), device=CUDA, dtype=torch.bfloat16)
    logits[:, 0] = 1.0
    logits.requires_grad_()
    for backend in _gpu_backends():
        with fastvae.use_backend(backend):
            torch.manual_seed(3)
            z, kl = fastvae.sample_categorical(logits, 0.5, reduction="none")
            (grad,) = torch.autograd.grad(z, logits, torch.ones_like(z) * (torch.arange(categories, device=CUDA) == 3))
        torch.manual_seed(3)
        seed, base = draw_seed(CUDA).tolist()
        tail = rows - 4  # rows entirely past element 2**31
        offset = torch.tensor([seed, base + tail * categories], device=CUDA)
        tail_logits = logits[tail:].detach().requires_grad_()
        z_ref, kl_ref = reference.sample_categorical(tail_logits, 0.5, offset, reduction="none")
        (grad_ref,) = torch.autograd.grad(z_ref, tail_logits, torch.ones_like(z_ref) * (torch.arange(categories, device=CUDA) == 3))
        assert_close(z[tail:], z_ref, torch.bfloat16)
        torch.testing.assert_close(kl[tail:], kl_ref)
        assert_close(grad[tail:], grad_ref, torch.bfloat16)
        del z, kl, grad


@pytest.mark.gpu
def test_gpu_bitwise_repeatable():
    logits = torch.randn(65536, 64, device=CUDA, requires_grad=True)
    prior = torch.randn(1, 64, device=CUDA, requires_grad=True)
    for backend in _gpu_backends():
        results = []
        with fastvae.use_backend(backend):
            for _ in range(2):
                torch.manual_seed(9)
                z, kl = fastvae.sample_categorical(logits, 0.7, hard=True, prior_logits=prior)
                grads = torch.autograd.grad([(z * torch.arange(64.0, device=CUDA)).sum(), kl.sum()], [logits, prior])
                results.append((z, kl) + grads)
        for first, second in zip(*results):
            assert torch.equal(first, second)
