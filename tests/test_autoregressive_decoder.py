"""fastvae.models.autoregressive_decoder: the MADE masks make logit i a function of x_<i
only (the Jacobian is strictly lower-triangular), p(x|z) sums to 1 over every binary x,
the ancestral sampler draws from the same conditionals the likelihood uses, and an MLP VAE
with it keeps the model contract."""
import itertools

import pytest
import torch

from fastvae.models import MLPVAE, build_model
from fastvae.models.autoregressive_decoder import AutoregressiveBernoulliDecoder, made_masks


def make_decoder(data_size=6, latent_dim=3, hidden_sizes=(9, 7), dtype=torch.float64):
    torch.manual_seed(0)
    decoder = AutoregressiveBernoulliDecoder(data_size, latent_dim, hidden_sizes).to(dtype)
    with torch.no_grad():  # weights far from zero, so that every allowed path is felt
        for parameter in decoder.parameters():
            parameter.mul_(3.0)
    return decoder


@pytest.mark.parametrize("hidden_sizes", [(9,), (9, 7), (4, 12, 5)])
def test_the_jacobian_of_the_logits_is_strictly_lower_triangular(hidden_sizes):
    decoder = make_decoder(hidden_sizes=hidden_sizes)
    z, base = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    x = torch.rand(1, 6, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda x: decoder.logits(x, z, base)[0], x)[:, 0, :]  # [D, D]
    assert torch.equal(jacobian.triu(), torch.zeros_like(jacobian))
    # And it is dense below the diagonal: every earlier pixel reaches every later logit.
    assert (jacobian.tril(-1).abs() > 0).sum() == 6 * 5 // 2


def test_the_masks_degrees():
    masks = made_masks(3, [4])
    assert torch.equal(masks[0], torch.tensor([[1., 0., 0.], [1., 1., 0.], [1., 0., 0.], [1., 1., 0.]]))
    assert torch.equal(masks[1], torch.tensor([[0., 0., 0., 0.], [1., 0., 1., 0.], [1., 1., 1., 1.]]))
    # One variable: its logit sees nothing of x.
    assert made_masks(1, [2])[1].sum() == 0


@pytest.mark.parametrize("hidden_sizes", [(9,), (9, 7)])
def test_the_likelihood_sums_to_one_over_all_binary_images(hidden_sizes):
    decoder = make_decoder(hidden_sizes=hidden_sizes)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)  # [64, 6]
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(1, 3, generator=generator, dtype=torch.float64).expand(64, 3)
        base = torch.randn(1, 6, generator=generator, dtype=torch.float64).expand(64, 6)
        log_p = -decoder.nll(images, z, base)
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)


def test_ancestral_sampling_uses_the_likelihoods_conditionals():
    """The probabilities along an ancestral sample are σ(logits) of that sample (teacher
    forcing), and the samples' frequencies match p(x|z) over all 64 images."""
    decoder = make_decoder()
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(1, 3, generator=generator, dtype=torch.float64).expand(20000, 3)
    base = torch.randn(1, 6, generator=generator, dtype=torch.float64).expand(20000, 6)
    x, probabilities = decoder.ancestral(z, base, generator)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(probabilities, torch.sigmoid(decoder.logits(x, z, base)), atol=1e-12)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    exact = torch.exp(-decoder.nll(images, z[:64], base[:64]))
    codes = (x * 2.0 ** torch.arange(5, -1, -1, dtype=torch.float64)).sum(1).long()
    frequencies = torch.bincount(codes, minlength=64).double() / 20000
    assert (frequencies - exact).abs().max() < 0.015
    # The same generator state gives the same sample.
    again, _ = decoder.ancestral(z[:5], base[:5], torch.Generator().manual_seed(8))
    once_more, _ = decoder.ancestral(z[:5], base[:5], torch.Generator().manual_seed(8))
    assert torch.equal(again, once_more)


def test_an_mlp_vae_with_it_keeps_the_model_contract():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(1, 2, 3), hidden_sizes=(8,), latent_dim=2, decoder="autoregressive",
                   autoregressive_hidden_sizes=(10,))
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6))).view(64, 1, 2, 3)
    z = torch.randn(1, 2).expand(64, 2)
    assert torch.logsumexp(-model.reconstruction_nll(z, images), 0).item() == pytest.approx(0.0, abs=1e-5)
    # The log-weights' log-likelihood term is the decoder's, for every one of K samples.
    log_weights = model.log_importance_weights(images[:4], 5)
    assert log_weights.shape == (5, 4) and torch.isfinite(log_weights).all()
    decoded = model.decode(torch.zeros(3, 2), torch.Generator().manual_seed(1))
    assert decoded.shape == (3, 1, 2, 3) and ((decoded > 0) & (decoded < 1)).all()
    assert model.sample(4, torch.Generator().manual_seed(2)).shape == (4, 1, 2, 3)
    assert model.reconstruct(images[:2]).shape == (2, 1, 2, 3)
    with pytest.raises(ValueError, match=r"MLPVAE.decode: z must have shape \[N, 2\]"):
        model.decode(torch.zeros(3, 5))
    # A checkpoint's config and state dict (the masks are rebuilt, not stored) give the same model.
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert not any("mask" in name for name in model.state_dict())
    assert torch.equal(rebuilt.reconstruction_nll(z, images), model.reconstruction_nll(z, images))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="AutoregressiveBernoulliDecoder: hidden_sizes"):
        AutoregressiveBernoulliDecoder(6, 2, hidden_sizes=())
    with pytest.raises(ValueError, match="AutoregressiveBernoulliDecoder: data_size"):
        AutoregressiveBernoulliDecoder(0, 2)
