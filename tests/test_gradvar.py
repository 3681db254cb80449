"""fastvae.eval.gradient_variance: on a tiny model, the unbiased estimators of the
encoder's ELBO gradient (reparameterized, score function with and without baselines)
agree in mean within their standard errors; the score function's variance is far above
the reparameterized one's and baselines cut it; the categorical latent's Gumbel-softmax
estimates are sane against REINFORCE's; the statistics are the moments of the draws; the
files; clear errors."""
import json
import math

import pytest
import torch

from fastvae.eval import gradient_variance, write_gradient_variance
from fastvae.eval.gradvar import _accumulate, encoder_parameters
from fastvae.models import DiscreteVAE, HierarchicalVAE, MLPVAE

DATA_SIZE = 12
NUM_ESTIMATES = 600
GAUSSIAN_KEYS = ["reparameterized", "score_function", "score_function_running_mean", "score_function_learned"]


def binary_batch(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, DATA_SIZE, generator=generator) < 0.4).float()


@pytest.fixture(scope="module")
def gaussian():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(DATA_SIZE,), hidden_sizes=(6,), latent_dim=2)
    return model, gradient_variance(model, binary_batch(8), num_estimates=NUM_ESTIMATES, seed=3, baseline_steps=200)


@pytest.fixture(scope="module")
def categorical():
    torch.manual_seed(0)
    model = DiscreteVAE(data_shape=(DATA_SIZE,), hidden_sizes=(6,), num_variables=2, num_categories=3)
    return model, gradient_variance(model, binary_batch(8), num_estimates=400, temperatures=(1.0, 0.1), seed=3,
                                    baseline_steps=100)


def z_scores(first, second) -> torch.Tensor:
    """Per-coordinate z of the difference of two estimators' means (independent draws)."""
    return (first.mean - second.mean) / (first.variance / first.num_estimates
                                         + second.variance / second.num_estimates).sqrt()


def test_unbiased_estimators_agree_in_mean(gaussian):
    _, result = gaussian
    statistics = result.statistics
    assert list(statistics) == GAUSSIAN_KEYS
    reference = statistics["reparameterized"]
    # The coordinates where the gradient is clearly nonzero (the reparameterized mean is
    # many standard errors from 0): a z-test of each score-function estimator against it.
    signal = reference.mean.abs() / reference.standard_error()
    coordinates = signal.argsort(descending=True)[:6]
    assert float(signal[coordinates].min()) > 10
    for key in GAUSSIAN_KEYS[1:]:
        z = z_scores(statistics[key], reference)[coordinates]
        assert float(z.abs().max()) < 4.0, (key, z)
    # And all coordinates at once: the squared z's average about 1 (a χ² per coordinate).
    for key in GAUSSIAN_KEYS[1:]:
        z = z_scores(statistics[key], reference)
        z = z[torch.isfinite(z)]
        assert 0.5 < float((z ** 2).mean()) < 1.6, key


def test_a_biased_estimator_fails_the_same_test(gaussian):
    """The z-test has power: the score function with a baseline that depends on z,
    b = m + (ℓ − m)/2 around the running mean m, whose estimates have half the true
    gradient's mean, is caught."""
    model, result = gaussian
    from fastvae.models.score_function import learning_signal, score_function_loss

    x = binary_batch(8)
    center = result.summary["baselines"]["running_mean"]["value"]

    def halved():
        log_px_z, log_p, log_q, _ = model.score_function_terms(x)
        signal = learning_signal(log_px_z, log_p, log_q)
        return score_function_loss(log_px_z, log_p, log_q, center + (signal - center) / 2)

    torch.manual_seed(11)
    biased = _accumulate("halved", "halved", halved, encoder_parameters(model), NUM_ESTIMATES)
    reference = result.statistics["reparameterized"]
    coordinates = (reference.mean.abs() / reference.standard_error()).argsort(descending=True)[:6]
    assert float(z_scores(biased, reference)[coordinates].abs().max()) > 4.0


def test_the_score_function_is_noisier_and_baselines_cut_its_variance(gaussian):
    _, result = gaussian
    rows = {row["key"]: row for row in result.summary["estimators"]}
    assert rows["reparameterized"]["variance_ratio"] == 1.0
    assert rows["score_function"]["variance_ratio"] > 100
    assert rows["score_function_running_mean"]["trace"] < rows["score_function"]["trace"] / 10
    assert rows["score_function_learned"]["trace"] < rows["score_function"]["trace"] / 10
    assert rows["reparameterized"]["snr"] > rows["score_function_running_mean"]["snr"] > rows["score_function"]["snr"]
    assert result.summary["num_parameters"] == sum(p.numel() for p in encoder_parameters(gaussian[0]))


def test_the_statistics_are_the_moments_of_the_draws():
    """The accumulated sums give the unbiased mean and variance of the draws themselves."""
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(DATA_SIZE,), hidden_sizes=(3,), latent_dim=2)
    parameters = encoder_parameters(model)
    x = binary_batch(4)
    draws = []

    def loss():
        out = model.elbo_output(x).loss
        draws.append(torch.cat([-g.reshape(-1) for g in torch.autograd.grad(out, parameters, retain_graph=True)]))
        return out

    stats = _accumulate("r", "r", loss, parameters, 7)
    stacked = torch.stack(draws).double()
    torch.testing.assert_close(stats.mean, stacked.mean(0))
    torch.testing.assert_close(stats.variance, stacked.var(0), rtol=1e-9, atol=1e-12)
    assert math.isclose(stats.trace, float(stacked.var(0).sum()), rel_tol=1e-9)
    assert math.isclose(stats.snr, float(stacked.mean(0).norm() / stacked.var(0).sum().sqrt()), rel_tol=1e-9)


def test_the_measurement_is_repeatable_and_leaves_the_model_alone(gaussian):
    model, _ = gaussian
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    first, again = (gradient_variance(model, binary_batch(8), num_estimates=5, seed=3, baseline_draws=4,
                                      baseline_steps=3) for _ in range(2))
    assert again.summary == first.summary
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in before.items())


def test_the_categorical_latent_gumbel_softmax_against_reinforce(categorical):
    _, result = categorical
    rows = {row["key"]: row for row in result.summary["estimators"]}
    assert list(rows) == ["gumbel_softmax_t1", "gumbel_softmax_t0.1"] + GAUSSIAN_KEYS[1:]
    assert result.summary["reference"] == "gumbel_softmax_t1" and rows["gumbel_softmax_t1"]["variance_ratio"] == 1
    statistics = result.statistics
    # Biased, but at a low temperature the relaxed gradient points where REINFORCE's
    # (with its best baseline, the least noisy unbiased estimate) does.
    cold, unbiased = statistics["gumbel_softmax_t0.1"].mean, statistics["score_function_learned"].mean
    cosine = float(cold @ unbiased / (cold.norm() * unbiased.norm()))
    assert cosine > 0.8
    assert 0.5 < cold.norm() / unbiased.norm() < 2
    # A colder relaxation is noisier; REINFORCE without a baseline is the noisiest.
    assert rows["gumbel_softmax_t0.1"]["trace"] > rows["gumbel_softmax_t1"]["trace"]
    assert rows["score_function"]["trace"] > max(row["trace"] for key, row in rows.items() if key != "score_function")
    assert all(math.isfinite(row[name]) for row in rows.values() for name in ("trace", "snr", "mean_norm"))


def test_a_trained_baseline_is_the_checkpoints():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(DATA_SIZE,), hidden_sizes=(6,), latent_dim=2, objective="score_function",
                   baseline="running_mean")
    x = binary_batch(8)
    model(x).loss.backward()  # one training step's forward: the running mean is set
    result = gradient_variance(model, x, num_estimates=4)
    info = result.summary["baselines"]["running_mean"]
    assert info["value"] == float(model.control_variate.running_mean) and "checkpoint" in info["source"]
    assert "trained for" in result.summary["baselines"]["learned"]["source"]
    untrained = gradient_variance(MLPVAE(data_shape=(DATA_SIZE,), hidden_sizes=(6,), latent_dim=2), x,
                                  num_estimates=4, baseline_draws=3, baseline_steps=2)
    assert "3 extra draws" in untrained.summary["baselines"]["running_mean"]["source"]
    assert "2 Adam steps" in untrained.summary["baselines"]["learned"]["source"]


def test_the_files(categorical, tmp_path):
    _, result = categorical
    paths = write_gradient_variance(result, tmp_path / "out", title="tiny", notes=["a note"])
    table = paths["md"].read_text()
    assert table.startswith("# tiny\n\na note\n")
    assert "| Gumbel-softmax τ=0.1 |" in table and "| score function, learned baseline |" in table
    assert "variance / Gumbel-softmax τ=1" in table and "SNR: ‖mean‖ / √trace" in table
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(result.summary))
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_name_the_argument():
    model = MLPVAE(data_shape=(DATA_SIZE,), hidden_sizes=(3,), latent_dim=2)
    x = binary_batch(2)
    with pytest.raises(ValueError, match="gradient_variance: num_estimates must be >= 2"):
        gradient_variance(model, x, num_estimates=1)
    with pytest.raises(ValueError, match=r"gradient_variance: x must have shape \[B, 12\]"):
        gradient_variance(model, torch.zeros(2, 5))
    discrete = DiscreteVAE(data_shape=(DATA_SIZE,), hidden_sizes=(3,), num_variables=2, num_categories=3)
    with pytest.raises(ValueError, match="gradient_variance: temperatures must be one or more numbers > 0"):
        gradient_variance(discrete, x, temperatures=(1.0, 0.0))
    hierarchical = HierarchicalVAE(data_shape=(DATA_SIZE,), latent_dims=(2, 2), hidden_dim=4)
    with pytest.raises(ValueError, match="'hierarchical' model has no score-function estimator"):
        gradient_variance(hierarchical, x)
    with pytest.raises(TypeError, match="gradient_variance: model must be a fastvae.models.VAE"):
        gradient_variance(torch.nn.Linear(2, 2), x)
