"""fastvae.models.latent_families: the single-latent models with a Laplace, logistic,
Cauchy or truncated-normal latent: their densities against scipy, the IWAE's log weights
from each family's exact densities, the KL the ELBO reports, the prior's draws, the
posterior mean, and the checks.  (tests/test_models.py runs every model contract test on
these latents too; the ops themselves are tested in tests/test_location_scale.py and
tests/test_truncated_normal.py.)"""
import math
import re

import pytest
import torch

from fastvae import cli
from fastvae.models import MLPVAE, build_model
from fastvae.models.latent_families import LATENTS, FamilyLatentPrior

scipy_stats = pytest.importorskip("scipy.stats")
scipy_integrate = pytest.importorskip("scipy.integrate")

FAMILIES = LATENTS[1:]
BOUNDS = [-1.0, 2.0]


def scipy_prior(family: str):
    """The family's standard member, p(z), in scipy."""
    if family == "truncated_normal":
        return scipy_stats.truncnorm(BOUNDS[0], BOUNDS[1])
    return {"laplace": scipy_stats.laplace, "logistic": scipy_stats.logistic, "cauchy": scipy_stats.cauchy}[family]()


def scipy_posterior(family: str, loc: float, scale: float):
    if family == "truncated_normal":
        return scipy_stats.truncnorm((BOUNDS[0] - loc) / scale, (BOUNDS[1] - loc) / scale, loc=loc, scale=scale)
    return {"laplace": scipy_stats.laplace, "logistic": scipy_stats.logistic,
            "cauchy": scipy_stats.cauchy}[family](loc=loc, scale=scale)


def numerical_kl(q, p, support=(-math.inf, math.inf)) -> float:
    """KL(q ‖ p) by quadrature, split at q's median and at 0 (the Laplace densities' kinks)."""
    cuts = sorted({support[0], support[1], *(c for c in (float(q.median()), 0.0) if support[0] < c < support[1])})
    integrand = lambda t: q.pdf(t) * (q.logpdf(t) - p.logpdf(t)) if q.pdf(t) > 0 else 0.0  # noqa: E731
    return sum(scipy_integrate.quad(integrand, a, b, limit=200, epsabs=1e-12)[0] for a, b in zip(cuts, cuts[1:]))


def tiny_model(family: str, **kwargs) -> MLPVAE:
    torch.manual_seed(0)
    bounds = BOUNDS if family == "truncated_normal" else None
    return MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, latent=family, latent_bounds=bounds, **kwargs)


def binary_batch(batch: int = 5) -> torch.Tensor:
    return (torch.rand(batch, 12, generator=torch.Generator().manual_seed(1)) < 0.4).float()


@pytest.mark.parametrize("family", FAMILIES)
def test_importance_weights_use_each_familys_exact_densities(family):
    """log w = log p(x|z) + log p(z) − log q(z|x), with log q and log p from scipy at the
    drawn z (float64)."""
    model, x = tiny_model(family), binary_batch()
    torch.manual_seed(3)
    mu, logvar = model.encode(x)
    z, log_q, log_p = model.prior.sample_k(mu, logvar, 4)
    assert z.shape == (4, 5, 3) and log_q.shape == log_p.shape == (4, 5)
    scale = torch.exp(0.5 * logvar.double()).detach().numpy()
    loc = mu.double().detach().numpy()
    zs = z.double().detach().numpy()
    expected_q = sum(scipy_posterior(family, loc[:, d], scale[:, d]).logpdf(zs[:, :, d]) for d in range(3))
    expected_p = scipy_prior(family).logpdf(zs).sum(-1)
    torch.testing.assert_close(log_q.double(), torch.from_numpy(expected_q), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_p.double(), torch.from_numpy(expected_p), rtol=1e-4, atol=1e-4)
    torch.manual_seed(3)
    log_w = model.log_importance_weights(x, 4)
    log_px_z = model._log_likelihood(z, x)
    torch.testing.assert_close(log_w, (log_px_z + log_p - log_q).float())


@pytest.mark.parametrize("family", ["laplace", "cauchy"])
def test_elbo_reports_the_analytic_kl(family):
    """The KL the ELBO reports for the analytic families is KL(q ‖ p) integrated numerically
    by scipy, per sample; kl_per_dim is its batch mean per dimension."""
    model, x = tiny_model(family), binary_batch(3)
    out = model(x)
    with torch.no_grad():
        mu, logvar = model.encode(x)
    scale = torch.exp(0.5 * logvar.double()).detach()
    prior = scipy_prior(family)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for b in range(3):
        for d in range(3):
            expected[b, d] = numerical_kl(scipy_posterior(family, float(mu[b, d]), float(scale[b, d])), prior)
    torch.testing.assert_close(out.kl.double(), expected.sum(1), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out.kl_per_dim.double(), expected.mean(0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("family", ["logistic", "truncated_normal"])
def test_monte_carlo_kl_is_log_q_minus_log_p_and_unbiased(family):
    """The logistic's and the truncated normal's KL is log q(z|x) − log p(z) at the drawn z:
    its mean over many draws approaches the KL integrated by scipy."""
    prior = FamilyLatentPrior(family, 2, BOUNDS if family == "truncated_normal" else None)
    mu = torch.tensor([[0.3, -0.5]]).expand(20000, 2).contiguous()
    logvar = torch.tensor([[-1.0, 0.4]]).expand(20000, 2).contiguous()
    torch.manual_seed(0)
    out = prior.posterior_sample(mu, logvar)
    assert out.kl_per_dim.numel() == 0
    torch.testing.assert_close(out.kl, prior.posterior_log_prob(out.z, mu, logvar) - prior.log_prob(out.z),
                               rtol=1e-5, atol=1e-5)
    expected = 0.0
    for d in range(2):
        q = scipy_posterior(family, float(mu[0, d]), math.exp(0.5 * float(logvar[0, d])))
        support = BOUNDS if family == "truncated_normal" else (-math.inf, math.inf)
        expected += numerical_kl(q, scipy_prior(family), support)
    standard_error = out.kl.double().std() / math.sqrt(out.kl.numel())
    assert abs(out.kl.double().mean() - expected) < 4 * standard_error


@pytest.mark.parametrize("family", FAMILIES)
def test_prior_draws_follow_the_standard_member(family):
    prior = FamilyLatentPrior(family, 4, BOUNDS if family == "truncated_normal" else None)
    z = prior.sample(5000, torch.Generator().manual_seed(2))
    assert z.shape == (5000, 4) and z.dtype == torch.float32
    assert scipy_stats.kstest(z.flatten().numpy(), scipy_prior(family).cdf).pvalue > 1e-3
    if family == "truncated_normal":
        assert z.min() >= BOUNDS[0] and z.max() <= BOUNDS[1]
    again = prior.sample(5000, torch.Generator().manual_seed(2))
    assert torch.equal(z, again)


def test_truncated_normal_posterior_mean_is_the_truncated_mean():
    model, x = tiny_model("truncated_normal"), binary_batch()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mu, logvar = mu * 8, logvar - 2  # locations outside the interval too
        mean = model.prior.posterior_location(mu, logvar)
    scale = torch.exp(0.5 * logvar.double())
    for b in range(5):
        for d in range(3):
            q = scipy_posterior("truncated_normal", float(mu[b, d]), float(scale[b, d]))
            assert float(mean[b, d]) == pytest.approx(q.mean(), rel=1e-4, abs=1e-5)


def test_cauchy_posterior_mean_is_its_location():
    model, x = tiny_model("cauchy"), binary_batch()
    with torch.no_grad():
        assert torch.equal(model.posterior_mean(x), model.encode(x)[0])
    assert model.posterior_params(x) is None


@pytest.mark.parametrize("family", ["laplace", "cauchy"])
def test_free_bits_hold_the_analytic_kl(family):
    model, x = tiny_model(family), binary_batch()
    torch.manual_seed(0)
    held = model(x, free_bits=5.0)
    torch.manual_seed(0)
    free = model(x)
    # Every dimension's batch-mean KL is below 5 nats at initialization: the loss holds it there.
    assert (free.kl_per_dim < 5).all()
    torch.testing.assert_close(held.loss, (held.nll + 3 * 5.0).mean())


@pytest.mark.parametrize("config, message", [
    ({"latent": "student_t"}, "latent must be one of ['gaussian', 'laplace', 'logistic', 'cauchy', "
                              "'truncated_normal'], got 'student_t'"),
    ({"latent": "laplace", "prior": "vamp"}, "the 'laplace' latent has its own standard prior; prior must be "
                                             "'standard_normal'"),
    ({"latent": "laplace", "latent_bounds": [0, 1]}, "latent_bounds is the truncated normal's interval"),
    ({"latent": "truncated_normal", "latent_bounds": [1, 1]}, "latent_bounds must be low < high"),
    ({"latent": "truncated_normal", "latent_bounds": [float("-inf"), float("inf")]}, "not both infinite"),
    ({"latent": "truncated_normal", "latent_bounds": [0]}, "latent_bounds must be two numbers"),
    ({"latent": "cauchy", "committed_rate": 0.2}, "holds for the 'standard_normal' prior only, with the 'gaussian' "
                                                  "latent (got prior 'standard_normal', latent 'cauchy')"),
])
def test_bad_latent_settings_are_refused(config, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, **config)
    assert str(error.value).startswith("fastvae.models.MLPVAE: ")


@pytest.mark.parametrize("family", ["logistic", "truncated_normal"])
def test_free_bits_are_refused_without_an_analytic_kl(family):
    model, x = tiny_model(family), binary_batch()
    with pytest.raises(ValueError, match="Monte Carlo estimate"):
        model(x, free_bits=0.5)


def test_the_truncated_normal_default_interval_is_in_the_config():
    model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, latent="truncated_normal")
    assert model.config["latent_bounds"] == [-2.0, 2.0]
    assert build_model(model.config).latent_bounds == [-2.0, 2.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_model_learns(family):
    """A few Adam steps on one batch lower the negative ELBO."""
    model, x = tiny_model(family), binary_batch(16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    first = -model(x).elbo.mean().item()
    for _ in range(60):
        optimizer.zero_grad()
        model(x).loss.backward()
        optimizer.step()
    losses = []
    for seed in range(5):
        torch.manual_seed(seed)
        losses.append(-model(x).elbo.mean().item())
    assert sum(losses) / len(losses) < first - 0.5


def test_train_and_sweep_with_a_laplace_latent(tmp_path):
    """`--latent` reaches the model from `fastvae train` and from `fastvae sweep`."""
    common = ["--data", "sprites", "--latent-dim", "3", "--channels", "4,8", "--hidden-dim", "16",
              "--iwae-samples", "3", "--iwae-points", "4", "--eval-batch-size", "8", "--num-train", "32",
              "--num-test", "8",
              "--no-progress", "--no-tensorboard", "--no-pictures", "--batch-size", "8", "--steps", "6"]
    out = tmp_path / "run"
    assert cli.main(["train", *common, "--latent", "truncated_normal", "--latent-bounds=-1.5,1",
                     "--out", str(out)]) == 0
    config = cli.options.read_toml(out / "config.toml")
    assert config["latent"] == "truncated_normal" and config["latent_bounds"] == [-1.5, 1.0]
    sweep = tmp_path / "sweep"
    assert cli.main(["sweep", "--betas", "0.5,2", *common, "--latent", "laplace", "--out", str(sweep)]) == 0
    for beta in ("0.5", "2"):
        assert cli.options.read_toml(sweep / f"beta-{beta}" / "config.toml")["latent"] == "laplace"
    assert (sweep / "rate_distortion.md").is_file()
