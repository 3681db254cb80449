"""fastvae.models.autoregressive_prior: the MADE prior's density is normalized (numerical
integration in 2-D, at random weights and after training steps, Gaussian and mixture
conditionals), its ancestral samples follow that density (KS tests of both marginals),
its conditionals are autoregressive (a strictly lower-triangular Jacobian), the model's
KL and IWAE use its exact log-density, float64 agrees, and bad arguments are refused."""
import math

import pytest
import torch

import fastvae
from fastvae.models import AutoregressivePrior, MLPVAE, make_prior
from fastvae.models.autoregressive_prior import MaskedLinear, hidden_degrees

# A grid over [-L, L]^2 fine enough for the conditionals' widths below (standard
# deviations above ~0.1 for the weights these tests draw).
GRID_HALF_WIDTH = 12.0
GRID_POINTS = 961


def randomize(prior: AutoregressivePrior, seed: int, scale: float = 0.6) -> AutoregressivePrior:
    """Every weight and bias drawn N(0, scale²): the conditionals depend on z_<d in earnest."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return prior


def train_steps(prior: AutoregressivePrior, steps: int = 25) -> AutoregressivePrior:
    """A few Adam steps of maximum likelihood on a curved 2-D data set (z_2 ≈ z_1² − 1)."""
    generator = torch.Generator().manual_seed(7)
    first = torch.randn(256, generator=generator, dtype=torch.float64)
    data = torch.stack([first, first ** 2 - 1 + 0.3 * torch.randn(256, generator=generator, dtype=torch.float64)], 1)
    optimizer = torch.optim.Adam(prior.parameters(), lr=2e-2)
    before = prior.log_prob(data).mean().item()
    for _ in range(steps):
        optimizer.zero_grad()
        (-prior.log_prob(data).mean()).backward()
        optimizer.step()
    assert prior.log_prob(data).mean().item() > before + 0.1  # the steps changed the density
    return prior


def grid_density(prior: AutoregressivePrior):
    """(axis [G], density [G, G] with [i, j] at (axis[i], axis[j]), cell area) in float64."""
    axis = torch.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID_POINTS, dtype=torch.float64)
    first, second = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        density = prior.log_prob(torch.stack([first, second], -1)).exp()
    step = (axis[1] - axis[0]).item()
    return axis, density, step * step


def two_d_prior(num_components: int, state: str, seed: int = 0) -> AutoregressivePrior:
    torch.manual_seed(seed)
    prior = randomize(AutoregressivePrior(2, num_components, hidden_sizes=(8, 8)).double(), seed, scale=0.4)
    return train_steps(prior) if state == "trained" else prior


@pytest.mark.parametrize("state", ["random", "trained"])
@pytest.mark.parametrize("num_components", [1, 3], ids=["gaussian", "mixture3"])
def test_the_density_integrates_to_one_in_2d(num_components, state):
    prior = two_d_prior(num_components, state)
    _, density, area = grid_density(prior)
    assert density.sum().item() * area == pytest.approx(1.0, abs=1e-4)
    # The mass is well inside the grid, so the sum above measures the whole of it.
    border = torch.cat([density[0], density[-1], density[:, 0], density[:, -1]])
    assert border.sum().item() * area ** 0.5 < 1e-4
    # The second dimension's conditional depends on the first: not a product density.
    marginal_first, marginal_second = density.sum(1) * area ** 0.5, density.sum(0) * area ** 0.5
    product = marginal_first[:, None] * marginal_second[None, :]
    assert (density - product).abs().sum().item() * area > 0.05


@pytest.mark.parametrize("num_components", [1, 3], ids=["gaussian", "mixture3"])
def test_samples_follow_the_density(num_components):
    """Kolmogorov–Smirnov tests of each marginal of 20000 ancestral samples against the
    marginal CDF integrated from the density on the grid."""
    stats = pytest.importorskip("scipy.stats")
    import numpy as np

    prior = two_d_prior(num_components, "trained", seed=1)
    axis, density, area = grid_density(prior)
    samples = prior.sample(20000, torch.Generator().manual_seed(3))
    assert samples.dtype == torch.float64 and samples.shape == (20000, 2)
    for dim, marginal in ((0, density.sum(1)), (1, density.sum(0))):
        cdf_values = (torch.cumsum(marginal, 0) / marginal.sum()).numpy()
        # The CDF at a grid point sums the cells up to it: shift by half a cell.
        points = axis.numpy() + 0.5 * (axis[1] - axis[0]).item()

        def cdf(values, points=points, cdf_values=cdf_values):
            return np.interp(values, points, cdf_values, left=0.0, right=1.0)

        assert stats.kstest(samples[:, dim].numpy(), cdf).pvalue > 1e-3, dim
    # and the draws are the generator's: the same seed, the same samples.
    assert torch.equal(samples, prior.sample(20000, torch.Generator().manual_seed(3)))
    assert not torch.equal(samples, prior.sample(20000, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("hidden_sizes", [(16, 16), (3,), ()], ids=["two-hidden", "narrow", "direct-only"])
def test_the_conditionals_are_autoregressive(hidden_sizes):
    """∂(parameters of p(z_d | ·))/∂z_j is zero for j >= d (the first dimension's are
    constants) and, at random weights, nonzero for every j < d reachable by the masks."""
    size = 5
    prior = randomize(AutoregressivePrior(size, 2, hidden_sizes=hidden_sizes).double(), seed=2)
    z = torch.randn(size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def parameters_of(z):
        return torch.stack(prior.conditionals(z), -2)  # [D, 3, M]

    jacobian = torch.autograd.functional.jacobian(parameters_of, z)  # [D, 3, M, D]
    by_dimension = jacobian.abs().amax(dim=(1, 2))  # [D (output), D (input)]
    assert torch.equal(by_dimension.triu(), torch.zeros(size, size, dtype=torch.float64))
    lower = by_dimension.tril(-1)[torch.ones(size, size).tril(-1).bool()]
    assert (lower > 0).all(), by_dimension


def test_the_first_conditional_is_a_learned_unconditional_mixture():
    prior = randomize(AutoregressivePrior(3, 2, hidden_sizes=(8,)), seed=5)
    means, logvars, log_weights = prior.conditionals(torch.randn(4, 3))
    for values in (means, logvars, log_weights):
        assert torch.equal(values[:, 0], values[:1, 0].expand(4, -1))
    torch.testing.assert_close(log_weights.exp().sum(-1), torch.ones(4, 3))
    # They come from the output layer's biases, which the training changes.
    bias = prior.output.used_bias().view(3, 3, 2)
    torch.testing.assert_close(means[0, 0], bias[0, 0])


def test_masks_follow_the_made_degrees():
    assert hidden_degrees(7, 4).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert hidden_degrees(3, 1).tolist() == [1, 1, 1]
    prior = AutoregressivePrior(3, 1, hidden_sizes=(4,))
    # hidden unit k (degree 1, 2, 1, 2) sees inputs of degree <= its own.
    assert prior.hidden[0].mask.tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]]
    # the 3 outputs of dimension d see hidden units of degree < d.
    assert prior.output.mask.view(3, 3, 4)[:, 0].tolist() == [[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]
    assert prior.direct.mask.view(3, 3, 3)[:, 0].tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    # The masks are no part of a checkpoint: they follow from the constructor's arguments.
    assert not any(key.endswith("mask") for key in prior.state_dict())


def test_a_one_dimensional_prior_is_its_learned_mixture():
    prior = randomize(AutoregressivePrior(1, 3, hidden_sizes=(4,)).double(), seed=1)
    bias = prior.output.used_bias().view(3, 3)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=bias[2]),
        torch.distributions.Normal(bias[0], torch.exp(0.5 * 10 * torch.tanh(bias[1] / 10))))
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(prior.log_prob(z), mixture.log_prob(z[:, 0]))


def test_initial_prior_is_the_standard_normal():
    """With one component the untrained prior is N(0, I), the standard normal prior's density."""
    prior = AutoregressivePrior(4, 1, hidden_sizes=(8,))
    z = torch.randn(10, 4)
    with torch.no_grad():
        torch.testing.assert_close(prior.log_prob(z), make_prior("standard_normal", 4).log_prob(z))


def hand_log_prob(prior: AutoregressivePrior, z: torch.Tensor) -> torch.Tensor:
    """log p(z) dimension by dimension with torch.distributions, the conditionals taken
    from a pass on z (those of dimension d read z_<d only)."""
    means, logvars, log_weights = prior.conditionals(z.double())
    total = torch.zeros(z.shape[:-1], dtype=torch.float64)
    for dim in range(z.shape[-1]):
        mixture = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=log_weights[..., dim, :]),
            torch.distributions.Normal(means[..., dim, :], torch.exp(0.5 * logvars[..., dim, :])))
        total = total + mixture.log_prob(z[..., dim].double())
    return total


def tiny_model(**overrides):
    config = dict(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, prior="autoregressive",
                  prior_components=2, prior_hidden_sizes=(8, 8), prior_lr_scale=1.0)
    config.update(overrides)
    torch.manual_seed(0)
    model = MLPVAE(**config)
    randomize(model.prior, seed=3, scale=0.4)
    return model


def binary(batch=6, seed=0):
    return (torch.rand(batch, 12, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def test_the_importance_weights_use_the_exact_log_density():
    model = tiny_model()
    x = binary()
    torch.manual_seed(11)
    log_w = model.log_importance_weights(x, 7)
    torch.manual_seed(11)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z, log_q, _ = fastvae.sample_gaussian_k(mu, logvar, 7)
        log_px_z = -model.likelihood.nll(model.decoder_params(z.flatten(0, 1)), x.repeat(7, 1)).view(7, 6)
        hand = log_px_z.double() + hand_log_prob(model.prior, z) - log_q.double()
    torch.testing.assert_close(log_w.double(), hand, rtol=1e-5, atol=1e-4)


def test_the_elbo_kl_is_the_monte_carlo_estimate_at_the_fused_sample():
    model = tiny_model()
    x = binary()
    torch.manual_seed(2)
    out = model(x)
    torch.manual_seed(2)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z, log_q, _ = fastvae.sample_gaussian_k(mu, logvar, 1)
        expected = log_q[0].double() - hand_log_prob(model.prior, z[0])
    torch.testing.assert_close(out.kl.double(), expected, rtol=1e-5, atol=1e-4)
    assert out.kl_per_dim.numel() == 0
    # The KL reaches the prior's weights: the ELBO trains the prior.
    out.loss.backward()
    assert model.prior.output.weight.grad.abs().sum() > 0


def test_float64_agrees_with_float32():
    prior = randomize(AutoregressivePrior(6, 3, hidden_sizes=(32, 32)), seed=4, scale=0.3)
    z = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    single = prior.log_prob(z)
    twin = randomize(AutoregressivePrior(6, 3, hidden_sizes=(32, 32)).double(), seed=4, scale=0.3)
    double = twin.log_prob(z.double())
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    torch.testing.assert_close(single.double(), double, rtol=1e-5, atol=1e-5)
    # bf16 autocast around it does not lower the density's precision.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = prior.log_prob(z)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, single)
    # A float64 model's ELBO and importance weights, with its float64 prior.
    model = tiny_model().double()
    x = binary().double()
    assert model(x).loss.dtype == torch.float64 or torch.isfinite(model(x).loss)
    log_w = model.log_importance_weights(x, 4)
    assert torch.isfinite(log_w).all()


def test_log_prob_in_chunks_is_the_same(monkeypatch):
    from fastvae.models import autoregressive_prior

    prior = randomize(AutoregressivePrior(4, 2, hidden_sizes=(8,)), seed=6, scale=0.4)
    z = torch.randn(3, 11, 4)
    whole = prior.log_prob(z)
    monkeypatch.setattr(autoregressive_prior, "_CHUNK_ELEMENTS", 50)  # rows of 2
    torch.testing.assert_close(prior.log_prob(z), whole)
    assert whole.shape == (3, 11)


def test_sample_device_and_count():
    prior = AutoregressivePrior(3, 2, hidden_sizes=(4,))
    assert prior.sample(5).shape == (5, 3) and prior.sample(5, device="cpu").device.type == "cpu"
    assert prior.sample(2, torch.Generator(device="cpu").manual_seed(0)).dtype == torch.float32


def test_bad_arguments_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="AutoregressivePrior: num_components must be an int >= 1, got 0"):
        AutoregressivePrior(3, 0)
    with pytest.raises(TypeError, match="AutoregressivePrior: latent_dim must be an int"):
        AutoregressivePrior(2.5)
    with pytest.raises(ValueError, match=r"AutoregressivePrior: hidden_sizes\[1\] must be an int >= 1, got 0"):
        AutoregressivePrior(3, 1, hidden_sizes=(4, 0))
    with pytest.raises(TypeError, match="AutoregressivePrior: hidden_sizes must be a list"):
        AutoregressivePrior(3, 1, hidden_sizes=16)
    prior = AutoregressivePrior(3)
    with pytest.raises(ValueError, match=r"log_prob: z must have shape \[\.\.\., 3\], got \(4, 2\)"):
        prior.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sample: num_samples must be an int >= 1, got 0"):
        prior.sample(0)
    with pytest.raises(ValueError, match="AutoregressivePrior: free bits need the KL of each latent dimension"):
        prior.posterior_sample(torch.zeros(2, 3), torch.zeros(2, 3), free_bits=0.5)
    with pytest.raises(ValueError, match=r"MLPVAE: prior_hidden_sizes\[0\] must be an int >= 1"):
        MLPVAE(data_shape=(4,), prior="autoregressive", prior_hidden_sizes=(0,))
    with pytest.raises(ValueError, match="MaskedLinear: mask must have shape"):
        MaskedLinear(3, 2, torch.ones(3, 2))
    with pytest.raises(ValueError, match="unknown prior 'made'.*'autoregressive'"):
        make_prior("made", 3)


def test_the_prior_trains_with_the_model():
    """A few ELBO steps of a tiny model raise the prior's log-density of the posterior
    means: the prior moves toward the aggregate posterior."""
    model = tiny_model(prior_components=1)
    x = binary(batch=32, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = model(x).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 1.0
    assert all(math.isfinite(value) for value in losses)


def test_lr_scale_slows_the_prior_under_adam_and_keeps_the_density():
    """The same initial density; one Adam step moves the conditionals' parameters
    lr_scale times as far (Adam's step is the learning rate whatever the gradient's scale)."""
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    moved = {}
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        prior = AutoregressivePrior(3, 2, hidden_sizes=(8,), lr_scale=scale)
        with torch.no_grad():
            before = torch.stack(prior.conditionals(z), -2)
        moved[scale] = before
        optimizer = torch.optim.Adam(prior.parameters(), lr=1e-3)
        (-prior.log_prob(z).mean()).backward()
        optimizer.step()
        with torch.no_grad():
            moved[scale] = (torch.stack(prior.conditionals(z), -2) - before, before)
    torch.testing.assert_close(moved[1.0][1], moved[0.1][1])
    torch.testing.assert_close(moved[0.1][0], 0.1 * moved[1.0][0], rtol=1e-2, atol=1e-6)
    for bad in (0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="AutoregressivePrior: lr_scale must be a number in"):
            AutoregressivePrior(3, lr_scale=bad)


def test_the_vaes_default_prior_rate_is_a_hundredth():
    """The rate at which the README's comparison found the prior training without
    collapse is the models' default; the class alone learns at the full rate."""
    model = MLPVAE(data_shape=(12,), hidden_sizes=(16,), latent_dim=3, prior="autoregressive")
    assert model.prior.lr_scale == 0.01 and model.config["prior_lr_scale"] == 0.01
    assert model.prior.output.gain == 0.01 and AutoregressivePrior(3).lr_scale == 1.0
