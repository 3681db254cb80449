"""fastvae.models: every model keeps the VAE contract of base.py; priors, objectives (IWAE,
DReG), the hierarchical KL and the discrete model's importance weights."""
import copy
import json
import math

import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.models import (MODELS, ConvVAE, DiscreteVAE, HierarchicalVAE, MixtureOfGaussiansPrior, MLPVAE,
                            StandardNormalPrior, VampPrior, VAEOutput, anneal_temperature, build_model, priors)

BATCH = 6


def binary_data(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand((BATCH,) + tuple(shape), generator=generator) < 0.3).float()


def grid_data(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH,) + tuple(shape), generator=generator).float() / 255


def unit_data(shape, seed=0):
    return torch.rand((BATCH,) + tuple(shape), generator=torch.Generator().manual_seed(seed))


# (id, config, data maker): tiny versions of every model, prior, objective and decoder.
CASES = [
    ("mlp", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16, 16], "latent_dim": 3}, binary_data),
    ("mlp-iwae", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                  "objective": "iwae", "num_samples": 4}, binary_data),
    ("mlp-iwae-dreg", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                       "objective": "iwae", "num_samples": 4, "dreg": True}, binary_data),
    ("mlp-mixture", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                     "prior": "mixture", "prior_components": 4}, binary_data),
    ("mlp-vamp-iwae", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                       "prior": "vamp", "prior_components": 3, "objective": "iwae", "num_samples": 3}, binary_data),
    ("mlp-autoregressive", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                            "prior": "autoregressive", "prior_components": 2, "prior_hidden_sizes": [8, 8]},
     binary_data),
    ("conv-autoregressive-iwae-dreg", {"name": "conv", "data_shape": [1, 8, 8], "channels": [4, 8], "hidden_dim": 16,
                                       "latent_dim": 3, "prior": "autoregressive", "prior_components": 1,
                                       "prior_hidden_sizes": [8], "objective": "iwae", "num_samples": 3,
                                       "dreg": True}, binary_data),
    ("mlp-laplace", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3, "latent": "laplace"},
     binary_data),
    ("mlp-logistic-iwae-dreg", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                                "latent": "logistic", "objective": "iwae", "num_samples": 3, "dreg": True},
     binary_data),
    ("mlp-laplace-score-function", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                                    "latent": "laplace", "objective": "score_function", "baseline": "learned"},
     binary_data),
    ("mlp-cauchy-iwae", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                         "latent": "cauchy", "objective": "iwae", "num_samples": 3}, binary_data),
    ("conv-truncated-normal", {"name": "conv", "data_shape": [1, 8, 8], "channels": [4, 8], "hidden_dim": 16,
                               "latent_dim": 3, "latent": "truncated_normal", "latent_bounds": [-1.0, 2.0]},
     binary_data),
    ("mlp-gaussian", {"name": "mlp", "data_shape": [2, 3, 2], "hidden_sizes": [16], "latent_dim": 3,
                      "likelihood": "gaussian", "likelihood_kwargs": {"learn_logvar": True}}, unit_data),
    ("conv-bernoulli", {"name": "conv", "data_shape": [1, 8, 8], "channels": [4, 8], "hidden_dim": 16,
                        "latent_dim": 3}, binary_data),
    ("conv-mixture", {"name": "conv", "data_shape": [3, 8, 8], "channels": [4, 8], "hidden_dim": 16,
                      "latent_dim": 3, "likelihood": "discretized_logistic_mixture", "num_mixtures": 2}, grid_data),
    ("hierarchical", {"name": "hierarchical", "data_shape": [12], "latent_dims": [4, 3], "hidden_dim": 16},
     binary_data),
    ("hierarchical-iwae", {"name": "hierarchical", "data_shape": [1, 4, 4], "latent_dims": [4, 3, 2],
                           "hidden_dim": 16, "objective": "iwae", "num_samples": 3}, binary_data),
    ("discrete", {"name": "discrete", "data_shape": [12], "hidden_sizes": [16], "num_variables": 3,
                  "num_categories": 4}, binary_data),
    ("mlp-committed-autoregressive", {"name": "mlp", "data_shape": [12], "hidden_sizes": [16], "latent_dim": 3,
                                      "committed_rate": 0.2, "decoder": "autoregressive",
                                      "autoregressive_hidden_sizes": [10]}, binary_data),
    ("mlp-autoregressive-iwae-dreg", {"name": "mlp", "data_shape": [1, 3, 4], "hidden_sizes": [16], "latent_dim": 3,
                                      "decoder": "autoregressive", "autoregressive_hidden_sizes": [10, 8],
                                      "objective": "iwae", "num_samples": 3, "dreg": True}, binary_data),
    ("conv-committed", {"name": "conv", "data_shape": [1, 8, 8], "channels": [4, 8], "hidden_dim": 16,
                        "latent_dim": 3, "committed_rate": 0.5}, binary_data),
]
IDS = [case[0] for case in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    _, config, make_data = request.param
    torch.manual_seed(0)
    model = build_model(config)
    return model, make_data(model.data_shape)


def expected_kl_dims(model):
    if isinstance(model, DiscreteVAE):
        return model.num_variables
    prior = getattr(model, "prior", None)
    return 0 if prior is not None and not prior.analytic_kl else model.latent_dim


def test_every_model_is_registered():
    assert {"mlp", "conv", "hierarchical", "discrete"} <= set(MODELS)


def test_forward_shapes_and_finite_loss(case):
    model, x = case
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    for name in ("elbo", "nll", "kl"):
        value = getattr(out, name)
        assert value.shape == (BATCH,) and value.dtype == torch.float32 and not value.requires_grad, name
        assert torch.isfinite(value).all(), name
    assert out.kl_per_dim.shape == (expected_kl_dims(model),)
    torch.testing.assert_close(out.elbo, -(out.nll + out.kl))
    assert all(math.isfinite(v) for v in out.metrics().values())


def test_backward_reaches_every_parameter(case):
    model, x = case
    model(x).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


def test_importance_weights_and_bound(case):
    model, x = case
    log_w = model.log_importance_weights(x, 5)
    assert log_w.shape == (5, BATCH) and log_w.dtype == torch.float32 and torch.isfinite(log_w).all()
    zeros = torch.zeros_like(log_w)
    bound = fastvae.iwae_bound(log_w, zeros, zeros)
    assert (bound >= log_w.mean(0)).all()


def test_rebuild_from_config(case):
    model, x = case
    config = json.loads(json.dumps(model.config))  # what a checkpoint stores
    torch.manual_seed(123)
    twin = build_model(config)
    twin.load_state_dict(model.state_dict())
    assert twin.config == model.config
    torch.manual_seed(5)
    expected = model(x).loss
    torch.manual_seed(5)
    assert torch.equal(twin(x).loss, expected)


def test_same_seed_same_loss(case):
    model, x = case
    losses = []
    for _ in range(2):
        torch.manual_seed(9)
        losses.append(model(x, beta=0.7).loss)
        torch.manual_seed(9)
        losses.append(model.log_importance_weights(x, 3))
    assert torch.equal(losses[0], losses[2]) and torch.equal(losses[1], losses[3])


def test_evaluation_methods(case):
    model, x = case
    mean = model.posterior_mean(x)
    assert mean.shape == (BATCH, model.latent_dim)
    decoded = model.decode(mean)
    reconstruction = model.reconstruct(x)
    samples = model.sample(4, torch.Generator().manual_seed(1))
    assert decoded.shape == reconstruction.shape == x.shape
    assert samples.shape == (4,) + tuple(model.data_shape)
    for images in (decoded, reconstruction, samples):
        assert ((images >= 0) & (images <= 1)).all()
    assert torch.equal(samples, model.sample(4, torch.Generator().manual_seed(1)))
    params = model.posterior_params(x)
    if isinstance(model, (MLPVAE, ConvVAE)) and model.latent_family == "gaussian":
        assert params[0].shape == params[1].shape == (BATCH, model.latent_dim)
    else:  # only a Gaussian q(z|x) has (mu, logvar)
        assert params is None


def test_free_bits_change_objective_not_kl(case):
    model, x = case
    objective = getattr(model, "objective", "elbo")
    analytic = getattr(getattr(model, "prior", None), "analytic_kl", True)
    if objective != "elbo" or not analytic:
        with pytest.raises(ValueError, match="free_bits=0|free bits"):
            model(x, free_bits=1.0)
        return
    torch.manual_seed(3)
    plain = model(x)
    torch.manual_seed(3)
    held = model(x, free_bits=5.0)
    assert torch.equal(held.kl, plain.kl) and torch.equal(held.elbo, plain.elbo)
    assert held.loss > plain.loss
    torch.testing.assert_close(held.extras["kl_objective"], torch.full((BATCH,), 5.0 * held.kl_per_dim.numel()))


def test_bad_batch_shape(case):
    model, x = case
    with pytest.raises(ValueError, match="x must have shape"):
        model(x.flatten(1)[:, :-1])


# --------------------------------------------------------------------------------------
# Model-specific behaviour
# --------------------------------------------------------------------------------------


def test_burda_model_is_the_default_mlp():
    model = MLPVAE()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    assert shapes == [(784, 200), (200, 200), (200, 100), (50, 200), (200, 200), (200, 784)]
    assert all(isinstance(m, torch.nn.Tanh) for m in model.modules()
               if isinstance(m, (torch.nn.Tanh, torch.nn.ReLU, torch.nn.SiLU)))
    assert model.likelihood.name == "bernoulli" and isinstance(model.prior, StandardNormalPrior)


def test_beta_zero_removes_kl_from_gradient():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3)
    x = binary_data((12,))
    torch.manual_seed(4)
    model(x, beta=0.0).loss.backward()
    beta_zero = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(4)
    mu, logvar = model.encode(x)
    z, _ = fastvae.sample_gaussian(mu, logvar)
    model.likelihood.nll(model.decoder_params(z), x).mean().backward()
    for got, expected in zip(beta_zero, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    model.zero_grad()
    torch.manual_seed(4)
    model(x, beta=1.0).loss.backward()
    assert any(not torch.equal(a, p.grad) for a, p in zip(beta_zero, model.parameters()))


def test_hierarchical_kl_is_the_sum_of_conditional_layer_kls():
    torch.manual_seed(0)
    model = HierarchicalVAE(data_shape=(12,), latent_dims=(4, 3, 2), hidden_dim=16)
    x = binary_data((12,))
    torch.manual_seed(7)
    layers, _ = model.infer(x)
    torch.manual_seed(7)
    out = model(x)
    assert len(layers) == 3 and layers[-1].prior_mu is None
    hand = []
    for layer in layers:
        hand.append(reference.gaussian_kl(layer.mu, layer.logvar, layer.prior_mu, layer.prior_logvar, reduction="none"))
    torch.testing.assert_close(out.kl, sum(terms.sum(1) for terms in hand))
    torch.testing.assert_close(out.kl_per_dim, torch.cat([terms.mean(0) for terms in hand]))
    # The conditional priors are the top-down path's: p(z_2 | z_3) from t_2 = TD(z_3).
    state = model._state(1, layers[2].z, None)
    prior_mu, prior_logvar = model.priors[1].params(state)
    torch.testing.assert_close(layers[1].prior_mu, prior_mu)
    torch.testing.assert_close(layers[1].prior_logvar, prior_logvar)
    # and the lower layers' KLs reach the priors' parameters.
    out_kl = sum(layer.kl.sum() for layer in layers)
    out_kl.backward()
    assert model.priors[0].head.weight.grad.abs().sum() > 0


def test_hierarchical_decode_top_or_all_layers():
    torch.manual_seed(0)
    model = HierarchicalVAE(data_shape=(12,), latent_dims=(4, 3), hidden_dim=16)
    top, every = torch.randn(5, 3), torch.randn(5, 7)
    assert model.decode(top).shape == model.decode(every).shape == (5, 12)
    # Giving every layer with the bottom at its prior mean is the same as giving the top.
    state = model._state(0, top, None)
    bottom = model.priors[0].params(state)[0]
    torch.testing.assert_close(model.decode(torch.cat([bottom, top], 1)), model.decode(top))
    with pytest.raises(ValueError, match=r"z must have shape \[N, 7\]"):
        model.decode(torch.randn(5, 4))


def test_mixture_prior_log_prob_matches_torch_distributions(monkeypatch):
    torch.manual_seed(0)
    prior = MixtureOfGaussiansPrior(3, num_components=5)
    with torch.no_grad():
        prior.logvars.copy_(torch.randn(5, 3))
        prior.logits.copy_(torch.randn(5))
    means, logvars, log_weights = prior.components()
    distribution = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_weights),
        torch.distributions.Independent(torch.distributions.Normal(means, torch.exp(0.5 * logvars)), 1),
    )
    z = torch.randn(4, 6, 3) * 2
    torch.testing.assert_close(prior.log_prob(z), distribution.log_prob(z))
    monkeypatch.setattr(priors, "_MIXTURE_CHUNK_ELEMENTS", 20)  # several chunks
    torch.testing.assert_close(prior.log_prob(z), distribution.log_prob(z))


def test_vamp_prior_is_the_mixture_of_posteriors_at_pseudo_inputs():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, prior="vamp", prior_components=4)
    prior = model.prior
    assert isinstance(prior, VampPrior)
    # The encoder's parameters belong to the model once; the pseudo-inputs to the prior.
    assert [name for name, _ in prior.named_parameters()] == ["pseudo_inputs"]
    mu, logvar = model.encode(prior.pseudo_inputs.clamp(0, 1))
    distribution = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(4)),
        torch.distributions.Independent(torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), 1),
    )
    z = torch.randn(5, 3)
    torch.testing.assert_close(prior.log_prob(z), distribution.log_prob(z))


def test_mixture_prior_kl_is_the_monte_carlo_estimate():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, prior="mixture", prior_components=4)
    x = binary_data((12,))
    torch.manual_seed(2)
    out = model(x)
    torch.manual_seed(2)
    mu, logvar = model.encode(x)
    z, log_q, _ = fastvae.sample_gaussian_k(mu, logvar, 1)
    torch.testing.assert_close(out.kl, (log_q[0] - model.prior.log_prob(z[0])).detach())
    assert out.kl_per_dim.numel() == 0


def test_mixture_prior_sample_draws_from_components():
    prior = MixtureOfGaussiansPrior(2, num_components=3)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]))
        prior.logvars.fill_(-30.0)
        prior.logits.copy_(torch.tensor([0.0, 0.0, -100.0]))
    z = prior.sample(200, torch.Generator().manual_seed(0))
    distances = (z[:, None, :] - prior.means[None]).norm(dim=-1)
    nearest = distances.argmin(1)
    assert (distances.min(1).values < 1e-3).all() and set(nearest.tolist()) == {0, 1}
    assert torch.equal(z, prior.sample(200, torch.Generator().manual_seed(0)))


def iwae_direct_gradients(model, x, num_samples, seed):
    """Encoder and decoder gradients of the DReG estimator, computed directly from its
    definition with autograd.grad: the encoder gets Σ_k w̃_k² ∇ log w_k with q's parameters
    held fixed (gradient through z only), the decoder Σ_k w̃_k ∇ log w_k."""
    encoder = list(model.encoder.parameters()) + list(model.latent.parameters())
    decoder = list(model.decoder.parameters())
    torch.manual_seed(seed)
    mu, logvar = model.encode(x)
    z, _, _ = fastvae.sample_gaussian_k(mu, logvar, num_samples)
    log_px_z = model._log_likelihood(z, x)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_q = torch.distributions.Normal(mu.detach(), torch.exp(0.5 * logvar.detach())).log_prob(z).sum(-1)
    log_w = log_px_z + log_p - log_q
    weights = torch.softmax(log_w.detach(), 0)
    encoder_grads = torch.autograd.grad(-(weights ** 2 * log_w).sum(0).mean(), encoder, retain_graph=True)
    decoder_grads = torch.autograd.grad(-(weights * log_w).sum(0).mean(), decoder)
    return encoder_grads, decoder_grads


def model_gradients(model, x, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    model(x).loss.backward()
    encoder = list(model.encoder.parameters()) + list(model.latent.parameters())
    return [p.grad.clone() for p in encoder], [p.grad.clone() for p in model.decoder.parameters()]


def test_dreg_gradient_matches_its_definition_and_differs_from_iwae():
    torch.manual_seed(0)
    config = dict(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, objective="iwae", num_samples=4)
    dreg = MLPVAE(**config, dreg=True)
    iwae = MLPVAE(**config)
    iwae.load_state_dict(dreg.state_dict())
    x = binary_data((12,))
    dreg_encoder, dreg_decoder = model_gradients(dreg, x, seed=3)
    iwae_encoder, iwae_decoder = model_gradients(iwae, x, seed=3)
    direct_encoder, direct_decoder = iwae_direct_gradients(dreg, x, 4, seed=3)
    for got, expected in zip(dreg_encoder, direct_encoder):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for got, expected, plain in zip(dreg_decoder, direct_decoder, iwae_decoder):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)
    difference = sum((a - b).abs().sum() for a, b in zip(dreg_encoder, iwae_encoder))
    assert difference > 1e-3
    # The loss is the IWAE bound either way.
    torch.manual_seed(3)
    loss_dreg = dreg(x).loss
    torch.manual_seed(3)
    torch.testing.assert_close(loss_dreg, iwae(x).loss)


def test_discrete_importance_weights_estimate_exact_log_likelihood():
    """With exact categorical samples the IWAE estimate converges to log p(x), which a
    model with 2 variables of 3 classes gives exactly by summing over all 9 latents."""
    torch.manual_seed(0)
    model = DiscreteVAE(data_shape=(6,), hidden_sizes=(8,), num_variables=2, num_categories=3)
    x = binary_data((6,))[:3]
    with torch.no_grad():
        one_hots = torch.eye(3)
        latents = torch.stack([torch.cat([one_hots[a], one_hots[b]]) for a in range(3) for b in range(3)])  # [9, 6]
        log_px_z = -torch.stack([model.likelihood.nll(model.decoder_params(latents), row.expand(9, 6)) for row in x])
        exact = torch.logsumexp(log_px_z - 2 * math.log(3), dim=1)
        torch.manual_seed(1)
        log_w = model.log_importance_weights(x, 3000)
    estimate = fastvae.log_mean_exp(log_w, dim=0)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.03)


def test_discrete_temperature_is_settable():
    torch.manual_seed(0)
    model = DiscreteVAE(data_shape=(12,), hidden_sizes=(16,), num_variables=3, num_categories=4)
    x = binary_data((12,))
    torch.manual_seed(1)
    warm = model(x)
    model.temperature = 0.2
    assert model.latent.temperature == 0.2
    torch.manual_seed(1)
    cold = model(x)
    assert cold.extras["temperature"].item() == pytest.approx(0.2) and not torch.equal(warm.nll, cold.nll)
    with pytest.raises(ValueError, match="temperature must be positive"):
        model.temperature = 0.0
    assert anneal_temperature(0) == 1.0 and anneal_temperature(10**9) == 0.5
    assert anneal_temperature(1000, initial=1.0, minimum=0.1, rate=1e-3) == pytest.approx(math.exp(-1))


def test_mlp_training_lowers_the_loss():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(12,), hidden_sizes=(32,), latent_dim=2)
    generator = torch.Generator().manual_seed(0)
    patterns = (torch.rand(2, 12, generator=generator) < 0.5).float()
    x = patterns[torch.arange(16) % 2]

    def evaluate():
        torch.manual_seed(100)
        with torch.no_grad():
            return model(x).loss.item()

    before = evaluate()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        optimizer.zero_grad()
        model(x).loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < before - 2.0, (before, after)


def test_configuration_errors():
    with pytest.raises(ValueError, match="unknown prior 'laplace'"):
        MLPVAE(data_shape=(4,), prior="laplace")
    with pytest.raises(ValueError, match="objective must be one of"):
        MLPVAE(data_shape=(4,), objective="vimco")
    with pytest.raises(ValueError, match="dreg=True is a gradient estimator of the IWAE"):
        MLPVAE(data_shape=(4,), dreg=True)
    with pytest.raises(ValueError, match="DReG|dreg=True needs"):
        HierarchicalVAE(data_shape=(4,), objective="iwae", dreg=True)
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvVAE(data_shape=(1, 30, 30))
    with pytest.raises(ValueError, match="does not fit data_shape"):
        ConvVAE(data_shape=(2, 8, 8), likelihood="discretized_logistic_mixture")
    with pytest.raises(ValueError, match="unknown activation"):
        MLPVAE(data_shape=(4,), activation="swish2")
    with pytest.raises(ValueError, match="unknown model"):
        build_model({"name": "transformer"})
    with pytest.raises(ValueError, match="committed_rate=0.1 bounds KL.*'standard_normal' prior only"):
        MLPVAE(data_shape=(4,), prior="mixture", committed_rate=0.1)
    with pytest.raises(ValueError, match="GaussianLatent: committed_rate must be a finite number >= 0"):
        ConvVAE(data_shape=(1, 8, 8), committed_rate=-0.5)
    with pytest.raises(ValueError, match="decoder must be one of \\['mlp', 'autoregressive'\\], got 'pixelcnn'"):
        MLPVAE(data_shape=(4,), decoder="pixelcnn")
    with pytest.raises(ValueError, match="decoder='autoregressive' .* needs likelihood='bernoulli'"):
        MLPVAE(data_shape=(4,), decoder="autoregressive", likelihood="gaussian")
    with pytest.raises(ValueError, match="autoregressive_hidden_sizes"):
        MLPVAE(data_shape=(4,), decoder="autoregressive", autoregressive_hidden_sizes=[0])
    model = MLPVAE(data_shape=(4,), hidden_sizes=(8,), latent_dim=2, prior="mixture")
    with pytest.raises(ValueError, match="free bits need the KL of each latent dimension"):
        model(torch.zeros(2, 4), free_bits=0.5)


def test_bfloat16_autocast(case):
    model, x = case
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_vamp_prior_follows_a_copied_model():
    """The VampPrior holds the model's encoder as a bound method: a deep copy (an EMA of
    the weights) must use the copy's encoder, not the original's."""
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, prior="vamp", prior_components=4)
    twin = copy.deepcopy(model)
    assert twin.prior.encode.__self__ is twin
    with torch.no_grad():
        for parameter in twin.encoder.parameters():
            parameter.add_(1.0)
    z = torch.randn(5, 3)
    assert not torch.equal(twin.prior.log_prob(z), model.prior.log_prob(z))
