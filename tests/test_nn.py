"""fastvae.nn: latent layers, likelihood heads and the ELBO, against fastvae.reference."""
import math

import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.nn import (ELBO, BernoulliLikelihood, CategoricalLatent, ContinuousBernoulliLikelihood,
                        DiscretizedLogisticLikelihood, DiscretizedLogisticMixtureLikelihood, GaussianLatent,
                        GaussianLikelihood, free_bits_kl, make_likelihood, sample_latent)


def grid_images(shape, num_bins=256, seed=0):
    """Images in [0, 1] on the grid k/(num_bins − 1), as 8-bit data loaders give them."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_bins, shape, generator=generator).float() / (num_bins - 1)


def randn(*shape, seed=0, requires_grad=False):
    tensor = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return tensor.requires_grad_(requires_grad)


# --------------------------------------------------------------------------------------
# Likelihood heads
# --------------------------------------------------------------------------------------


def test_bernoulli_head_matches_reference():
    head = make_likelihood("bernoulli")
    assert isinstance(head, BernoulliLikelihood) and head.param_channels(3) == 3
    logits, x = randn(4, 3, 5, 5), (randn(4, 3, 5, 5, seed=1) > 0).float()
    torch.testing.assert_close(head.nll(logits, x), reference.bernoulli_nll(logits, x))
    torch.testing.assert_close(head.nll(logits, x, reduction="none"), reference.bernoulli_nll(logits, x, "none"))
    torch.testing.assert_close(head.mean(logits), torch.sigmoid(logits))
    sample = head.sample(logits, torch.Generator().manual_seed(3))
    assert sample.shape == x.shape and set(sample.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sample, head.sample(logits, torch.Generator().manual_seed(3)))


def test_continuous_bernoulli_head_matches_reference():
    head = make_likelihood("continuous_bernoulli")
    assert isinstance(head, ContinuousBernoulliLikelihood) and head.param_channels(7) == 7
    logits, x = randn(4, 7) * 3, torch.rand(4, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(head.nll(logits, x), reference.continuous_bernoulli_nll(logits, x))
    mean, sample = head.mean(logits), head.sample(logits)
    assert ((mean > 0) & (mean < 1)).all() and ((sample >= 0) & (sample <= 1)).all()


def test_gaussian_head_fixed_logvar_matches_reference():
    head = make_likelihood("gaussian", logvar=-1.5)
    assert isinstance(head, GaussianLikelihood) and not list(head.parameters())
    mean, x = randn(4, 10), torch.rand(4, 10)
    torch.testing.assert_close(head.nll(mean, x), reference.gaussian_nll(mean, x, -1.5))
    assert ((head.mean(mean * 5) >= 0) & (head.mean(mean * 5) <= 1)).all()


def test_gaussian_head_learned_per_channel_logvar():
    head = GaussianLikelihood(logvar=-1.0, learn_logvar=True, num_channels=3)
    with torch.no_grad():
        head.logvar.copy_(torch.tensor([-1.0, 0.0, 0.5]))
    mean, x = randn(2, 3, 4, 4, requires_grad=True), torch.rand(2, 3, 4, 4)
    nll = head.nll(mean, x)
    expected = reference.gaussian_nll(mean, x, head.logvar.detach().view(1, 3, 1, 1))
    torch.testing.assert_close(nll, expected)
    nll.sum().backward()
    assert head.logvar.grad is not None and head.logvar.grad.shape == (3,) and (head.logvar.grad != 0).all()
    sample = head.sample(mean.detach(), torch.Generator().manual_seed(0))
    assert sample.shape == x.shape and ((sample >= 0) & (sample <= 1)).all()
    assert torch.equal(sample, head.sample(mean.detach(), torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="learned logvar has 3 channels"):
        head.param_channels(5)


def test_discretized_logistic_head_maps_data_to_the_grid():
    head = make_likelihood("discretized_logistic", num_bins=256)
    assert isinstance(head, DiscretizedLogisticLikelihood) and head.param_channels(3) == 6
    params, x = randn(2, 6, 4, 4), grid_images((2, 3, 4, 4))
    mean, log_scale = params.chunk(2, dim=1)
    torch.testing.assert_close(head.nll(params, x), reference.discretized_logistic_nll(mean, log_scale, 2 * x - 1))
    # uint8 data are level indices: the same likelihood.
    torch.testing.assert_close(head.nll(params, (x * 255).round().to(torch.uint8)), head.nll(params, x))
    shown, sample = head.mean(params), head.sample(params)
    assert ((shown >= 0) & (shown <= 1)).all()
    assert torch.allclose(sample * 255, (sample * 255).round(), atol=1e-4)  # on the 8-bit grid
    with pytest.raises(ValueError, match="2·C channels"):
        head.nll(randn(2, 5, 4, 4), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_head_matches_reference(channels):
    head = make_likelihood("discretized_logistic_mixture", num_mixtures=4)
    assert isinstance(head, DiscretizedLogisticMixtureLikelihood)
    assert head.param_channels(channels) == (3 if channels == 1 else 10) * 4
    params, x = randn(2, head.param_channels(channels), 3, 5), grid_images((2, channels, 3, 5))
    torch.testing.assert_close(head.nll(params, x), reference.discretized_logistic_mixture_nll(params, 2 * x - 1, 4))
    assert head.nll(params, x, reduction="none").shape == (2, 3, 5)
    shown = head.mean(params)
    sample = head.sample(params, torch.Generator().manual_seed(0))
    assert shown.shape == sample.shape == x.shape
    assert ((shown >= 0) & (shown <= 1)).all() and ((sample >= 0) & (sample <= 1)).all()
    torch.testing.assert_close(shown, (fastvae.discretized_logistic_mixture_mean(params, 4) + 1) / 2)


def test_mixture_head_refuses_other_channel_counts():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        DiscretizedLogisticMixtureLikelihood(2).param_channels(2)


def test_make_likelihood_errors():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_likelihood("poisson")
    with pytest.raises(TypeError, match="make_likelihood: 'bernoulli' does not take"):
        make_likelihood("bernoulli", num_bins=3)
    with pytest.raises(ValueError, match="num_mixtures"):
        make_likelihood("discretized_logistic_mixture", num_mixtures=0)


# --------------------------------------------------------------------------------------
# Gaussian latent
# --------------------------------------------------------------------------------------


def test_gaussian_latent_kl_terms_match_reference():
    torch.manual_seed(0)
    layer = GaussianLatent(6, 4)
    h = randn(8, 6)
    torch.manual_seed(1)
    out = layer(h, free_bits=0.3)
    mu, logvar = layer.params(h)
    torch.manual_seed(1)
    z, _ = fastvae.sample_gaussian(mu, logvar)
    assert torch.equal(out.z, z)
    assert out.kl.shape == out.kl_objective.shape == (8,) and out.kl_per_dim.shape == (4,)
    torch.testing.assert_close(out.kl, reference.gaussian_kl(mu, logvar))
    torch.testing.assert_close(out.kl_objective, reference.gaussian_kl(mu, logvar, free_bits=0.3))
    torch.testing.assert_close(out.kl_per_dim, reference.gaussian_kl(mu, logvar, reduction="none").mean(0))
    assert not out.kl_per_dim.requires_grad and out.kl.requires_grad


def test_gaussian_latent_makes_one_fused_call(monkeypatch):
    calls = []
    original = fastvae.ops.sample_gaussian

    def counting(*args, **kwargs):
        calls.append(kwargs.get("reduction"))
        return original(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the KL must come from the sampling call, not a second pass")

    monkeypatch.setattr(fastvae.ops, "sample_gaussian", counting)
    monkeypatch.setattr(fastvae.ops, "gaussian_kl", forbidden)
    GaussianLatent(5, 3)(randn(4, 5), free_bits=0.5)
    assert calls == ["none"]


def test_gaussian_latent_conditional_prior_gets_gradient():
    layer = GaussianLatent(6, 4)
    h = randn(5, 6)
    prior_mu, prior_logvar = randn(5, 4, seed=1, requires_grad=True), randn(5, 4, seed=2, requires_grad=True)
    out = layer(h, prior_mu, prior_logvar)
    mu, logvar = layer.params(h)
    torch.testing.assert_close(out.kl, reference.gaussian_kl(mu, logvar, prior_mu, prior_logvar))
    assert out.prior_mu is prior_mu and out.prior_logvar is prior_logvar
    out.kl.sum().backward()
    assert prior_mu.grad.abs().sum() > 0 and prior_logvar.grad.abs().sum() > 0


def test_spatial_gaussian_latent_is_per_channel():
    layer = GaussianLatent(3, 2, spatial=True)
    assert isinstance(layer.head, torch.nn.Conv2d) and layer.head.kernel_size == (1, 1)
    h = randn(4, 3, 5, 5)
    out = layer(h, free_bits=2.0)
    mu, logvar = layer.params(h)
    assert out.z.shape == (4, 2, 5, 5) and out.kl_per_dim.shape == (2,)
    torch.testing.assert_close(out.kl_objective, reference.gaussian_kl(mu, logvar, free_bits=2.0))
    per_channel = reference.gaussian_kl(mu, logvar, reduction="none").sum((2, 3)).mean(0)
    torch.testing.assert_close(out.kl_per_dim, per_channel)


def test_free_bits_hold_small_dimensions_without_gradient():
    mu = torch.tensor([[0.05, 2.0], [-0.05, 3.0]], requires_grad=True)
    logvar = torch.zeros(2, 2, requires_grad=True)
    out = sample_latent(mu, logvar, free_bits=0.5)
    # Dimension 0's KL (~0.001) is held at 0.5; dimension 1's is above it.
    torch.testing.assert_close(out.kl_objective, 0.5 + 0.5 * mu.detach()[:, 1] ** 2)
    out.kl_objective.sum().backward()
    assert (mu.grad[:, 0] == 0).all() and (mu.grad[:, 1] != 0).all()


def test_free_bits_kl_example():
    kl_by_dim = torch.tensor([[0.1, 2.0], [0.3, 4.0]])
    torch.testing.assert_close(free_bits_kl(kl_by_dim, 0.5), torch.tensor([2.5, 4.5]))
    torch.testing.assert_close(free_bits_kl(kl_by_dim, 0.0), kl_by_dim.sum(1))


def test_gaussian_latent_bad_input():
    with pytest.raises(ValueError, match=r"GaussianLatent: h must have shape \[B, in_features\]"):
        GaussianLatent(6, 4)(randn(3, 5))
    with pytest.raises(ValueError, match="latent_dim"):
        GaussianLatent(6, 0)
    with pytest.raises(ValueError, match="free_bits"):
        GaussianLatent(6, 4)(randn(3, 6), free_bits=-1.0)


# --------------------------------------------------------------------------------------
# Categorical latent
# --------------------------------------------------------------------------------------


def test_categorical_latent_matches_reference():
    layer = CategoricalLatent(6, num_variables=3, num_categories=4, temperature=0.7)
    h = randn(5, 6)
    torch.manual_seed(2)
    out = layer(h)
    logits = layer.logits(h)
    torch.manual_seed(2)
    z, kl = fastvae.sample_categorical(logits, 0.7)
    assert torch.equal(out.z, z) and out.z.shape == (5, 3, 4)
    torch.testing.assert_close(out.kl, kl)
    torch.testing.assert_close(out.kl_per_dim, reference.categorical_kl_terms(logits).mean(0))
    torch.testing.assert_close(out.z.sum(-1), torch.ones(5, 3))


def test_categorical_latent_hard_prior_and_temperature():
    layer = CategoricalLatent(6, 2, 5, hard=True)
    h = randn(4, 6)
    prior_logits = randn(5, seed=3)
    out = layer(h, prior_logits=prior_logits)
    assert set(out.z.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.kl, reference.categorical_kl_terms(layer.logits(h), prior_logits).sum(1))
    torch.manual_seed(0)
    cold = layer(h, temperature=0.1)
    layer.hard = False
    torch.manual_seed(0)
    warm = layer(h, temperature=10.0)
    assert warm.z.max() < 0.5 < cold.z.max()
    with pytest.raises(ValueError, match="temperature"):
        layer(h, temperature=0.0)
    with pytest.raises(ValueError, match="num_categories"):
        CategoricalLatent(6, 2, 1)


# --------------------------------------------------------------------------------------
# ELBO
# --------------------------------------------------------------------------------------


def test_elbo_combines_terms():
    nll = torch.tensor([10.0, 12.0], requires_grad=True)
    kl = torch.tensor([1.0, 3.0], requires_grad=True)
    kl_objective = torch.tensor([2.0, 3.0], requires_grad=True)
    out = ELBO()(nll, kl, kl_objective, torch.tensor([0.5, 1.5]), beta=0.5)
    assert out.loss.item() == pytest.approx(((10 + 1.0) + (12 + 1.5)) / 2)
    torch.testing.assert_close(out.elbo, torch.tensor([-11.0, -15.0]))
    torch.testing.assert_close(out.kl, kl.detach())
    torch.testing.assert_close(out.extras["kl_objective"], kl_objective.detach())
    assert not out.elbo.requires_grad and not out.kl_per_dim.requires_grad
    out.loss.backward()
    assert kl.grad is None and torch.equal(kl_objective.grad, torch.tensor([0.25, 0.25]))
    assert set(out.metrics()) == {"loss", "elbo", "nll", "kl", "kl_objective"}


def test_elbo_beta_zero_drops_kl_gradient():
    nll = torch.tensor([1.0], requires_grad=True)
    kl = torch.tensor([math.inf], requires_grad=True)
    out = ELBO()(nll, kl, beta=0.0)
    out.loss.backward()
    assert out.loss.item() == 1.0 and kl.grad is None


def test_elbo_bad_input():
    with pytest.raises(ValueError, match=r"ELBO: kl must have shape \[B\]"):
        ELBO()(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        ELBO()(torch.zeros(3), torch.zeros(3), beta=-1.0)
