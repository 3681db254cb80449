"""fastvae.reference, the ground truth, against float64 closed forms and gradcheck."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from fastvae import reference
from fastvae.random import philox_normal

SEED = torch.tensor([2024, 17])


def random_latent(shape, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=generator, dtype=dtype)
    logvar = 0.7 * torch.randn(shape, generator=generator, dtype=dtype)
    return mu, logvar


@pytest.mark.parametrize("prior", [False, True])
def test_gaussian_kl_equals_torch_distributions(prior):
    mu, logvar = random_latent((16, 9))
    prior_mu, prior_logvar = random_latent((1, 9), seed=1) if prior else (None, None)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(prior_mu, torch.exp(0.5 * prior_logvar)) if prior else Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(q, p)
    terms = reference.gaussian_kl_terms(mu, logvar, prior_mu, prior_logvar)
    torch.testing.assert_close(terms, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference.gaussian_kl(mu, logvar, prior_mu, prior_logvar), expected.sum(1))


def test_reductions():
    terms = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    assert torch.equal(reference.reduce(terms, "none"), terms)
    assert reference.reduce(terms, "batch").tolist() == [66.0, 210.0]
    assert reference.reduce(terms, "sum").item() == 276.0
    assert reference.reduce(terms, "mean").item() == 138.0
    assert reference.reduce(torch.zeros(0, 3), "batch").shape == (0,)


def test_reparameterize_is_mu_plus_sigma_eps():
    mu, logvar = random_latent((5, 7))
    z = reference.reparameterize(mu, logvar, SEED)
    eps = philox_normal(SEED, (5, 7)).double()
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps, rtol=1e-12, atol=1e-12)
    assert z.dtype == torch.float64


def test_low_precision_inputs_compute_in_float32():
    mu, logvar = random_latent((4, 6), dtype=torch.bfloat16)
    kl = reference.gaussian_kl(mu, logvar)
    z = reference.reparameterize(mu, logvar, SEED)
    assert kl.dtype == torch.float32 and z.dtype == torch.bfloat16
    expected = reference.gaussian_kl(mu.double(), logvar.double())
    torch.testing.assert_close(kl.double(), expected, rtol=1e-6, atol=1e-6)


def test_free_bits_closed_form():
    mu = torch.tensor([[0.0, 2.0], [0.1, -2.0]], dtype=torch.float64)
    logvar = torch.zeros_like(mu)
    kl_true = 0.5 * mu**2  # per element, unit variances
    objective = reference.gaussian_kl(mu, logvar, free_bits=0.5)
    # Dimension 0 has mean KL 0.0025 < 0.5: held at 0.5 for every sample.
    torch.testing.assert_close(objective, 0.5 + kl_true[:, 1])
    torch.testing.assert_close(objective.mean(), torch.clamp_min(kl_true.mean(0), 0.5).sum())


def test_log_density_and_bound_closed_forms():
    z, mu = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-0.2], dtype=torch.float64)
    logvar = torch.tensor([0.4], dtype=torch.float64)
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
    torch.testing.assert_close(reference.gaussian_log_density(z, mu, logvar), expected)
    log_weights = torch.tensor([[0.0, -1.0], [math.log(3.0), -1.0]], dtype=torch.float64)
    torch.testing.assert_close(reference.log_mean_exp(log_weights), torch.tensor([math.log(2.0), -1.0], dtype=torch.float64))


def test_gradcheck_gaussian_kl_with_priors():
    mu, logvar = random_latent((3, 4))
    prior_mu, prior_logvar = random_latent((1, 4), seed=2)
    inputs = [t.requires_grad_() for t in (mu, logvar, prior_mu, prior_logvar)]
    assert torch.autograd.gradcheck(lambda *a: reference.gaussian_kl(*a, reduction="batch"), inputs)


def test_gradcheck_sample_gaussian():
    mu, logvar = random_latent((3, 4))
    inputs = [mu.requires_grad_(), logvar.requires_grad_()]
    assert torch.autograd.gradcheck(lambda m, v: reference.sample_gaussian(m, v, SEED), inputs)


def test_gradcheck_free_bits_away_from_the_threshold():
    mu, logvar = random_latent((6, 3))
    inputs = [mu.requires_grad_(), logvar.requires_grad_()]
    assert torch.autograd.gradcheck(lambda m, v: reference.gaussian_kl(m, v, free_bits=0.3, reduction="none"), inputs)
