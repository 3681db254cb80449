"""fastvae.eval.diffusion: a diffusion decoder's bound terms, the noise of their estimate,
and the evaluation's report of them."""
import pytest
import torch

import fastvae.eval as fe
from fastvae.eval.report import FIELDS
from fastvae.models import MLPVAE


def diffusion_model(t_samples=1, seed=0):
    torch.manual_seed(seed)
    model = MLPVAE(data_shape=(12,), hidden_sizes=(8,), latent_dim=3, likelihood="diffusion",
                   diffusion_t_samples=t_samples, diffusion_hidden_sizes=(16,))
    with torch.no_grad():  # an output layer off zero, so that ε̂ depends on z
        model.diffusion.denoiser.output.weight.normal_(0, 0.3)
    return model


def binary_data(count=12, size=12):
    return (torch.rand(count, size, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def test_the_spread_measures_the_noise_of_the_estimate_and_shrinks_with_more_t_samples():
    data = binary_data()
    one = fe.diffusion_bound_spread(diffusion_model(1), data, num_repeats=6, batch_size=5, num_points=10)
    many = fe.diffusion_bound_spread(diffusion_model(16), data, num_repeats=6, batch_size=5, num_points=10)
    assert one["diffusion_t_samples"] == 1 and many["diffusion_t_samples"] == 16
    assert one["diffusion_spread_num_points"] == 10 and one["diffusion_spread_repeats"] == 6
    assert one["diffusion_loss_std"] > 0 and one["diffusion_loss_std_between_latents"] > 0
    # The shared draws make the two latents' difference far less noisy than either estimate.
    assert one["diffusion_loss_std_between_latents"] < one["diffusion_loss_std"]
    assert many["diffusion_loss_std"] < one["diffusion_loss_std"] / 2
    # The terms' means estimate the same bound whatever S is.
    assert many["diffusion_prior"] == pytest.approx(one["diffusion_prior"], rel=1e-5)
    assert many["diffusion_loss"] == pytest.approx(one["diffusion_loss"], rel=0.5)
    again = fe.diffusion_bound_spread(diffusion_model(1), data, num_repeats=6, batch_size=5, num_points=10)
    assert again == one  # seeded: bit for bit


def test_the_spread_refuses_a_model_without_a_diffusion_decoder_and_one_repeat():
    model = MLPVAE(data_shape=(12,), hidden_sizes=(8,), latent_dim=3)
    with pytest.raises(ValueError, match="diffusion_bound_spread: the model has no diffusion decoder"):
        fe.diffusion_bound_spread(model, binary_data())
    with pytest.raises(ValueError, match="num_repeats must be >= 2"):
        fe.diffusion_bound_spread(diffusion_model(), binary_data(), num_repeats=1)


def test_evaluate_uses_the_t_samples_asked_for_reports_them_and_restores_the_model(tmp_path):
    model = diffusion_model(1)
    results = fe.evaluate(model, binary_data(), num_samples=4, batch_size=6, diffusion_t_samples=8,
                          diffusion_spread_points=6)
    assert model.diffusion.t_samples == 1
    assert results["diffusion_t_samples"] == 8 and results["diffusion_spread_num_points"] == 6
    diffusion_keys = {key for key in FIELDS if key.startswith("diffusion_")}
    assert diffusion_keys <= set(results) and not set(results) - set(FIELDS)
    assert results["iwae"] >= results["iwae_mean_log_weight"]
    text = fe.write_report(tmp_path / "report.md", results, pictures={}).read_text()
    assert "IWAE: a bound on a bound" in text and "S = 8 t-samples" in text
    plain = fe.evaluate(MLPVAE(data_shape=(12,), hidden_sizes=(8,), latent_dim=3), binary_data(), num_samples=2)
    assert not diffusion_keys & set(plain)
