"""fastvae.validation through every public op: under set_validate_args(True) each value an
op's formula does not define (NaN, the infinities that are not meaningful there, data
outside its domain) is a ValueError naming the op and the argument; without it nothing is
refused (the op computes its documented result); and the values that are meaningful (−inf
log weights, ±inf Bernoulli logits in the samplers) pass either way."""
import math

import pytest
import torch

import fastvae
from tests.conftest import DEVICE

NAN, INF = math.nan, math.inf


def zeros(*shape):
    return torch.zeros(shape, device=DEVICE)


def full(value, *shape):
    return torch.full(shape, value, device=DEVICE)


# Each public op: a call taking a dict of its tensor arguments, and valid arguments
# (small shapes: every case runs the op).
OPS = {
    "reparameterize": (lambda a: fastvae.reparameterize(**a), lambda: {"mu": zeros(2, 3), "logvar": zeros(2, 3)}),
    "gaussian_kl": (lambda a: fastvae.gaussian_kl(**a),
                    lambda: {"mu": zeros(2, 3), "logvar": zeros(2, 3), "prior_mu": zeros(1, 3),
                             "prior_logvar": zeros(3)}),
    "sample_gaussian": (lambda a: fastvae.sample_gaussian(**a),
                        lambda: {"mu": zeros(2, 3), "logvar": zeros(2, 3), "prior_mu": zeros(1, 3),
                                 "prior_logvar": zeros(3)}),
    "sample_gaussian_k": (lambda a: fastvae.sample_gaussian_k(num_samples=2, **a),
                          lambda: {"mu": zeros(2, 3), "logvar": zeros(2, 3), "prior_mu": zeros(1, 3),
                                   "prior_logvar": zeros(3)}),
    "sample_truncated_normal": (lambda a: fastvae.sample_truncated_normal(low=-1.0, high=2.0, **a),
                                lambda: {"loc": zeros(2, 3), "log_scale": zeros(2, 3), "prior_loc": zeros(1, 3),
                                         "prior_log_scale": zeros(3)}),
    "log_mean_exp": (lambda a: fastvae.log_mean_exp(**a), lambda: {"x": zeros(3, 2)}),
    "iwae_bound": (lambda a: fastvae.iwae_bound(**a),
                   lambda: {"log_px_z": zeros(3, 2), "log_p": zeros(3, 2), "log_q": zeros(3, 2)}),
    "sample_categorical": (lambda a: fastvae.sample_categorical(tau=0.5, **a),
                           lambda: {"logits": zeros(2, 4), "prior_logits": zeros(4)}),
    "bernoulli_nll": (lambda a: fastvae.bernoulli_nll(**a), lambda: {"logits": zeros(2, 3), "x": full(0.5, 2, 3)}),
    "continuous_bernoulli_nll": (lambda a: fastvae.continuous_bernoulli_nll(**a),
                                 lambda: {"logits": zeros(2, 3), "x": full(0.5, 2, 3)}),
    "gaussian_nll": (lambda a: fastvae.gaussian_nll(**a),
                     lambda: {"mean": zeros(2, 3), "x": zeros(2, 3), "logvar": zeros(1, 3)}),
    "bits_per_dim": (lambda a: fastvae.bits_per_dim(**a), lambda: {"nll": zeros(2), "x": zeros(2, 3)}),
    "bernoulli_sample": (lambda a: fastvae.bernoulli_sample(**a), lambda: {"logits": zeros(2, 3)}),
    "bernoulli_mean": (lambda a: fastvae.bernoulli_mean(**a), lambda: {"logits": zeros(2, 3)}),
    "continuous_bernoulli_sample": (lambda a: fastvae.continuous_bernoulli_sample(**a),
                                    lambda: {"logits": zeros(2, 3)}),
    "continuous_bernoulli_mean": (lambda a: fastvae.continuous_bernoulli_mean(**a), lambda: {"logits": zeros(2, 3)}),
    "gaussian_sample": (lambda a: fastvae.gaussian_sample(**a), lambda: {"mean": zeros(2, 3), "logvar": zeros(1, 3)}),
    "gaussian_mean": (lambda a: fastvae.gaussian_mean(**a), lambda: {"mean": zeros(2, 3), "logvar": zeros(1, 3)}),
    "discretized_logistic_nll": (lambda a: fastvae.discretized_logistic_nll(**a),
                                 lambda: {"mean": zeros(2, 3), "log_scale": zeros(2, 3), "x": full(-1.0, 2, 3)}),
    "discretized_logistic_mixture_nll": (lambda a: fastvae.discretized_logistic_mixture_nll(num_mixtures=1, **a),
                                         lambda: {"params": zeros(2, 3, 2), "x": full(-1.0, 2, 1, 2)}),
    "discretized_logistic_sample": (lambda a: fastvae.discretized_logistic_sample(**a),
                                    lambda: {"mean": zeros(2, 3), "log_scale": zeros(2, 3)}),
    "discretized_logistic_mean": (lambda a: fastvae.discretized_logistic_mean(**a),
                                  lambda: {"mean": zeros(2, 3), "log_scale": zeros(2, 3)}),
    "discretized_logistic_mixture_sample": (lambda a: fastvae.discretized_logistic_mixture_sample(num_mixtures=1, **a),
                                            lambda: {"params": zeros(2, 3, 2)}),
    "discretized_logistic_mixture_mean": (lambda a: fastvae.discretized_logistic_mixture_mean(num_mixtures=1, **a),
                                          lambda: {"params": zeros(2, 3, 2)}),
    **{op: (lambda a, op=op: getattr(fastvae, op)(**a),
            lambda: {"loc": zeros(2, 3), "log_scale": zeros(2, 3), "prior_loc": zeros(1, 3),
                     "prior_log_scale": zeros(3)})
       for op in ("sample_laplace", "sample_logistic", "sample_cauchy")},
    "diffuse": (lambda a: fastvae.diffuse(**a), lambda: {"x": zeros(2, 3), "gamma": zeros(2)}),
    "diffusion_loss": (lambda a: fastvae.diffusion_loss(**a),
                       lambda: {"eps_hat": zeros(2, 3), "noise_seed": torch.tensor([1, 2], device=DEVICE),
                                "weight": zeros(2)}),
}

NON_FINITE = (NAN, INF, -INF)
# (op, argument, bad value): a float put in one element of the argument, or a
# (tensor, extra keyword arguments) pair that replaces the argument.
REFUSED = (
    [(op, arg, v) for op in ("reparameterize",) for arg in ("mu", "logvar") for v in NON_FINITE]
    + [(op, arg, v) for op in ("gaussian_kl", "sample_gaussian", "sample_gaussian_k")
       for arg in ("mu", "logvar", "prior_mu", "prior_logvar") for v in NON_FINITE]
    + [(op, arg, v) for op in ("sample_laplace", "sample_logistic", "sample_cauchy")
       for arg in ("loc", "log_scale", "prior_loc", "prior_log_scale") for v in NON_FINITE]
    + [("sample_truncated_normal", arg, v) for arg in ("loc", "log_scale", "prior_loc", "prior_log_scale")
       for v in NON_FINITE]
    + [("diffuse", arg, v) for arg in ("x", "gamma") for v in NON_FINITE]
    + [("diffusion_loss", arg, v) for arg in ("eps_hat", "weight") for v in NON_FINITE]
    + [("log_mean_exp", "x", v) for v in (NAN, INF)]
    + [("iwae_bound", arg, v) for arg in ("log_px_z", "log_p") for v in (NAN, INF)]
    + [("iwae_bound", "log_q", v) for v in (NAN, -INF)]
    + [("sample_categorical", arg, v) for arg in ("logits", "prior_logits") for v in NON_FINITE]
    + [(op, "logits", v) for op in ("bernoulli_nll", "continuous_bernoulli_nll") for v in NON_FINITE]
    + [(op, "x", v) for op in ("bernoulli_nll", "continuous_bernoulli_nll") for v in NON_FINITE + (-0.5, 1.5)]
    + [(op, "x", (torch.tensor([[0, 1, 2]] * 2, dtype=torch.uint8), {}))
       for op in ("bernoulli_nll", "continuous_bernoulli_nll")]
    + [("gaussian_nll", arg, v) for arg in ("mean", "x", "logvar") for v in NON_FINITE]
    + [("gaussian_nll", "logvar", (v, {})) for v in NON_FINITE]  # a Python number
    + [("bits_per_dim", "nll", v) for v in NON_FINITE]
    + [(op, "logits", NAN) for op in ("bernoulli_sample", "bernoulli_mean", "continuous_bernoulli_sample",
                                      "continuous_bernoulli_mean")]
    + [(op, arg, v) for op in ("gaussian_sample", "gaussian_mean") for arg in ("mean", "logvar") for v in NON_FINITE]
    + [(op, arg, v) for op in ("discretized_logistic_nll", "discretized_logistic_sample", "discretized_logistic_mean")
       for arg in ("mean", "log_scale") for v in NON_FINITE]
    + [(op, "params", v) for op in ("discretized_logistic_mixture_nll", "discretized_logistic_mixture_sample",
                                    "discretized_logistic_mixture_mean") for v in NON_FINITE]
    # x off its domain: NaN, ±inf, outside [−1, 1], between two levels, a uint8 level ≥ num_bins.
    + [(op, "x", v) for op in ("discretized_logistic_nll", "discretized_logistic_mixture_nll")
       for v in NON_FINITE + (1.5, 0.5)]
    + [("discretized_logistic_nll", "x", (torch.tensor([[0, 99, 100]] * 2, dtype=torch.uint8), {"num_bins": 100})),
       ("discretized_logistic_mixture_nll", "x",
        (torch.tensor([[[0, 200]]] * 2, dtype=torch.uint8), {"num_bins": 100}))]
)

# Meaningful values: accepted with and without value checks.
ACCEPTED = (
    [("log_mean_exp", "x", -INF), ("iwae_bound", "log_px_z", -INF), ("iwae_bound", "log_p", -INF),
     ("iwae_bound", "log_q", INF)]
    + [(op, "logits", v) for op in ("bernoulli_sample", "bernoulli_mean", "continuous_bernoulli_sample",
                                    "continuous_bernoulli_mean") for v in (INF, -INF)]
)


def with_value(op, argument, value):
    """(call, arguments, keyword arguments) of ``op`` with ``value`` in ``argument``."""
    call, make_args = OPS[op]
    args = make_args()
    extra = {}
    if isinstance(value, tuple):
        replacement, extra = value
        args[argument] = replacement.to(DEVICE) if isinstance(replacement, torch.Tensor) else replacement
    else:
        args[argument].view(-1)[1] = value
    return call, {**args, **extra}


def case_id(case):
    op, argument, value = case
    shown = value if not isinstance(value, tuple) else (
        f"{value[0].dtype}".replace("torch.", "") if isinstance(value[0], torch.Tensor) else f"number {value[0]}")
    return f"{op}-{argument}-{shown}"


def test_every_public_op_is_covered():
    # The public classes (Diffused, what diffuse returns) are no ops.
    ops = {name for name in fastvae.ops.__all__ if not isinstance(getattr(fastvae.ops, name), type)}
    assert set(OPS) == ops
    assert {op for op, _, _ in REFUSED} == ops


@pytest.mark.parametrize("case", REFUSED, ids=case_id)
def test_value_checks_refuse_with_the_op_and_argument(case):
    op, argument, value = case
    call, args = with_value(op, argument, value)
    fastvae.set_validate_args(True)
    with pytest.raises(ValueError) as info:
        call(args)
    assert str(info.value).startswith(f"fastvae.{op}: {argument} "), str(info.value)
    # Without value checks the op runs (its result for such input is documented per op).
    fastvae.set_validate_args(False)
    call(args)


@pytest.mark.parametrize("case", ACCEPTED, ids=case_id)
def test_meaningful_infinities_pass(case):
    op, argument, value = case
    call, args = with_value(op, argument, value)
    for validate in (True, False):
        fastvae.set_validate_args(validate)
        call(args)


def test_log_weight_infinities_give_their_limits():
    """A −inf log weight is a zero term; log q = +inf is a zero weight."""
    fastvae.set_validate_args(True)
    x = torch.tensor([[0.0, -INF], [math.log(3.0), -INF]], device=DEVICE)
    out = fastvae.log_mean_exp(x, dim=0)
    assert out[1] == -INF
    torch.testing.assert_close(out[0].cpu(), torch.tensor(math.log(2.0)))
    log_q = torch.tensor([[0.0, 0.0], [INF, 0.0]], device=DEVICE)
    bound = fastvae.iwae_bound(torch.zeros(2, 2, device=DEVICE), torch.zeros(2, 2, device=DEVICE), log_q)
    torch.testing.assert_close(bound.cpu(), torch.tensor([-math.log(2.0), 0.0]))


def test_bernoulli_samplers_at_infinite_logits():
    """±inf logits are the certain outcomes: samples and means 1 and 0."""
    fastvae.set_validate_args(True)
    logits = torch.tensor([INF, -INF] * 3, device=DEVICE)
    certain = torch.tensor([1.0, 0.0] * 3, device=DEVICE)
    for op in (fastvae.bernoulli_sample, fastvae.bernoulli_mean, fastvae.continuous_bernoulli_sample,
               fastvae.continuous_bernoulli_mean):
        assert torch.equal(op(logits), certain), op.__name__


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: fastvae.gaussian_kl(zeros(2, 3), zeros(2, 3), free_bits=INF), ValueError,
         "fastvae.gaussian_kl: free_bits must be finite"),
        (lambda: fastvae.sample_gaussian(zeros(2, 3), zeros(2, 3), free_bits=NAN), ValueError,
         "fastvae.sample_gaussian: free_bits must be >= 0"),
        (lambda: fastvae.sample_laplace(zeros(2, 3), zeros(2, 3), free_bits=INF), ValueError,
         "fastvae.sample_laplace: free_bits must be finite"),
        (lambda: fastvae.sample_cauchy(zeros(2, 3), zeros(2, 3), free_bits=NAN), ValueError,
         "fastvae.sample_cauchy: free_bits must be >= 0"),
        (lambda: fastvae.gaussian_sample(zeros(2, 3), temperature=INF), ValueError,
         "fastvae.gaussian_sample: temperature must be finite"),
        (lambda: fastvae.discretized_logistic_sample(zeros(2, 3), zeros(2, 3), temperature=INF), ValueError,
         "fastvae.discretized_logistic_sample: temperature must be finite"),
        (lambda: fastvae.discretized_logistic_mixture_sample(zeros(2, 3, 2), 1, temperature=INF), ValueError,
         "fastvae.discretized_logistic_mixture_sample: temperature must be finite"),
        (lambda: fastvae.sample_truncated_normal(zeros(2, 3), zeros(2, 3), 1.0, 1.0), ValueError,
         "fastvae.sample_truncated_normal: low must be < high"),
        (lambda: fastvae.sample_truncated_normal(zeros(2, 3), zeros(2, 3), NAN, 1.0), ValueError,
         "fastvae.sample_truncated_normal: low must not be NaN"),
        (lambda: fastvae.sample_truncated_normal(zeros(2, 3), zeros(2, 3), -INF, INF), ValueError,
         "fastvae.sample_truncated_normal: low and high must not both be infinite"),
        (lambda: fastvae.bits_per_dim(zeros(2, 3), zeros(2, 3)), ValueError, r"fastvae.bits_per_dim: nll must be a scalar"),
        (lambda: fastvae.bits_per_dim(zeros(3), zeros(2, 3)), ValueError, r"fastvae.bits_per_dim: nll must be .* \(2,\)"),
        (lambda: fastvae.bits_per_dim(zeros(2), [[0.0]]), TypeError, "fastvae.bits_per_dim: x must be a torch.Tensor"),
    ],
)
def test_argument_checks_run_without_value_checks(call, error, message):
    """Python-number settings and shapes read no tensor values: checked always."""
    fastvae.set_validate_args(False)
    with pytest.raises(error, match=message):
        call()


def test_bits_per_dim_takes_a_scalar_or_one_nll_per_sample():
    fastvae.set_validate_args(True)
    x = zeros(2, 3, 4)
    torch.testing.assert_close(fastvae.bits_per_dim(full(12 * math.log(2.0), 2), x).cpu(), torch.ones(2))
    assert fastvae.bits_per_dim(torch.tensor(24 * math.log(2.0), device=DEVICE), x).item() == pytest.approx(2.0)
