"""fastvae.nn.committed_rate: the δ-VAE's committed rate keeps KL(q(z_d|x) ‖ N(0, 1)) >= δ
for every sample and latent dimension, as the fused KL computes it in float32 and float64,
at initialization, after training steps and for adversarial encoder outputs; the variance
roots against scipy's Lambert W; the models and the errors that take it."""
import math

import pytest
import torch

import fastvae
from fastvae import ops
from fastvae.models import ConvVAE, MLPVAE, build_model
from fastvae.nn import GaussianLatent, committed_logvar, committed_logvar_bound, committed_rate_variances

DELTAS = [1e-6, 1e-3, 0.1, 1.0, 5.0, 40.0]
DTYPES = [torch.float32, torch.float64]


def kl_terms(mu, logvar, backend):
    with fastvae.use_backend(backend):
        return ops.gaussian_kl(mu, logvar, reduction="none")


@pytest.mark.parametrize("delta", [1e-8, 1e-4, 0.05, 0.5, 2.0, 10.0, 60.0, 300.0])
def test_variances_are_the_lambert_w_roots(delta):
    special = pytest.importorskip("scipy.special")
    lower, upper = committed_rate_variances(delta)
    argument = -math.exp(-1.0 - 2.0 * delta)
    assert lower == pytest.approx(-special.lambertw(argument, 0).real, rel=1e-12, abs=1e-300)
    assert upper == pytest.approx(-special.lambertw(argument, -1).real, rel=1e-12)
    assert lower <= 1.0 <= upper
    # Each is a root of σ² − 1 − log σ² = 2δ (the lower one through its logarithm).
    for log_variance in (math.log(upper), committed_logvar_bound(delta, torch.float64)):
        assert math.expm1(log_variance) - log_variance == pytest.approx(2 * delta, rel=1e-9)


def test_zero_rate_is_the_unit_variance_and_no_bound():
    assert committed_rate_variances(0.0) == (1.0, 1.0)
    assert committed_logvar_bound(0.0) == math.inf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("delta", DELTAS)
def test_the_bound_is_a_value_of_the_dtype_just_below_the_exact_root(delta, dtype):
    bound = committed_logvar_bound(delta, dtype)
    assert float(torch.tensor(bound, dtype=dtype)) == bound
    # Its exact KL at μ = 0 is above δ by no more than the rounding margin of the dtype.
    kl_at_bound = 0.5 * (math.expm1(bound) - bound)
    assert delta <= kl_at_bound <= delta + 10 * torch.finfo(dtype).eps * (2 + abs(bound))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("delta", DELTAS)
def test_adversarial_encoder_outputs_keep_every_kl_above_delta(delta, dtype, backend):
    """raw log-variances from −1e4 to 1e4, means 0 (the KL's minimum) or large: each
    element's KL as the fused op computes it in dtype is >= δ, and finite."""
    raw = torch.cat([torch.tensor([-1e4, -1e3, -88.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.0, 1e3, 1e4]),
                     torch.linspace(-30, 30, 301)]).to(dtype)
    logvar = committed_logvar(raw, delta)
    assert logvar.dtype == dtype and torch.isfinite(logvar).all()
    assert (logvar <= committed_logvar_bound(delta, dtype)).all()
    for mu in (torch.zeros_like(raw), torch.full_like(raw, 1e3)):
        kl = kl_terms(mu[None], logvar[None], backend)
        assert torch.isfinite(kl).all()
        assert (kl >= delta).all(), (kl.min().item(), delta)
    # raw = ±inf (which the fused op would refuse as a logvar): the bound itself, and −inf.
    infinite = committed_logvar(torch.tensor([-math.inf, math.inf], dtype=dtype), delta)
    assert infinite.tolist() == [committed_logvar_bound(delta, dtype), -math.inf]


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_bound_is_tight_at_zero_mean(dtype):
    """At raw → −inf and μ = 0 the KL is δ up to the rounding margin, not far above."""
    for delta in (0.1, 1.0, 5.0):
        logvar = committed_logvar(torch.tensor([-1e4], dtype=dtype), delta)
        kl = kl_terms(torch.zeros_like(logvar)[None], logvar[None], "torch").item()
        assert delta <= kl <= delta * (1 + 1e-4), (delta, kl)


def test_the_parameterization_is_smooth_and_monotone():
    raw = torch.linspace(-10, 10, 201, dtype=torch.float64, requires_grad=True)
    logvar = committed_logvar(raw, 0.5)
    assert (logvar[1:] < logvar[:-1]).all()
    (gradient,) = torch.autograd.grad(logvar.sum(), raw)
    assert torch.allclose(gradient, -torch.sigmoid(raw.detach()))


def test_nan_stays_nan():
    assert torch.isnan(committed_logvar(torch.tensor([math.nan]), 0.5)).all()


def make_model(kind, delta, dtype=torch.float32):
    torch.manual_seed(0)
    if kind == "mlp":
        model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=4, committed_rate=delta)
    elif kind == "mlp-autoregressive":
        model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=4, committed_rate=delta,
                       decoder="autoregressive", autoregressive_hidden_sizes=(10,))
    else:
        model = ConvVAE(data_shape=(1, 8, 8), channels=(4, 8), hidden_dim=16, latent_dim=4, committed_rate=delta)
    return model.to(dtype)


def per_dimension_kl(model, x):
    mu, logvar = model.posterior_params(x)
    return ops.gaussian_kl(mu, logvar, reduction="none")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mlp", "mlp-autoregressive", "conv"])
@pytest.mark.parametrize("delta", [1e-3, 0.3, 4.0])
def test_models_keep_the_rate_at_init_and_after_training(kind, delta, dtype):
    """Every sample's and dimension's KL is >= δ at initialization and after steps of a
    large learning rate on the ELBO at β = 10 (which pushes the KL down as hard as it can),
    and the reported per-dimension KL is >= δ."""
    model = make_model(kind, delta, dtype)
    generator = torch.Generator().manual_seed(1)
    shape = (32,) + tuple(model.data_shape)
    x = (torch.rand(shape, generator=generator) < 0.3).to(dtype)
    assert (per_dimension_kl(model, x) >= delta).all()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(25):
        optimizer.zero_grad()
        out = model(x, beta=10.0)
        out.loss.backward()
        optimizer.step()
    kl = per_dimension_kl(model, x)
    assert torch.isfinite(kl).all() and (kl >= delta).all(), kl.min().item()
    assert (out.kl_per_dim >= delta).all() and (out.kl >= delta * model.latent_dim).all()
    # The bound sits where the optimizer drove it: at zero mean the KL is close to δ.
    assert kl.min().item() < delta + 0.5


def test_the_rate_is_kept_by_a_rebuilt_model():
    model = make_model("mlp", 0.7)
    rebuilt = build_model(model.config)
    assert rebuilt.config["committed_rate"] == 0.7 and rebuilt.latent.committed_rate == 0.7
    rebuilt.load_state_dict(model.state_dict())
    x = torch.ones(3, 12)
    assert torch.equal(rebuilt.posterior_params(x)[1], model.posterior_params(x)[1])


def test_no_rate_is_the_head_output_itself():
    torch.manual_seed(0)
    latent = GaussianLatent(5, 3)
    h = torch.randn(4, 5)
    assert torch.equal(latent.params(h)[1], latent.head(h).chunk(2, dim=1)[1])


@pytest.mark.parametrize("value, error, message", [
    (-0.1, ValueError, "committed_rate must be a finite number >= 0"),
    (math.nan, ValueError, "committed_rate must be a finite number >= 0"),
    (math.inf, ValueError, "committed_rate must be a finite number >= 0"),
    (True, TypeError, "committed_rate must be a Python number >= 0"),
    ("0.1", TypeError, "committed_rate must be a Python number >= 0"),
])
def test_bad_rates_are_clear_errors(value, error, message):
    with pytest.raises(error, match="fastvae.nn.GaussianLatent: " + message):
        GaussianLatent(4, 2, committed_rate=value)
    with pytest.raises(error, match="fastvae.nn.committed_logvar_bound: " + message):
        committed_logvar_bound(value)
    with pytest.raises(error, match="fastvae.nn.committed_rate_variances: " + message):
        committed_rate_variances(value)


def test_other_errors():
    with pytest.raises(ValueError, match="committed_logvar: committed_rate must be > 0"):
        committed_logvar(torch.zeros(3), 0.0)
    with pytest.raises(TypeError, match="committed_logvar_bound: dtype must be a floating dtype"):
        committed_logvar_bound(0.1, torch.int64)
    with pytest.raises(ValueError, match="'standard_normal' prior only"):
        MLPVAE(data_shape=(12,), prior="vamp", committed_rate=0.1)
    with pytest.raises(ValueError, match="'standard_normal' prior only"):
        ConvVAE(data_shape=(1, 8, 8), prior="mixture", committed_rate=0.1)
