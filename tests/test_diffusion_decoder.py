"""The diffusion decoder: its continuous-time term is the limit of a direct Monte Carlo
of the discrete-time T-step bound (Σ_i KL(q(z_s|z_t,x) ‖ p(z_s|z_t))) as T grows; the
t = 0 term is a distribution over the data's levels; L_prior's closed form matches Monte
Carlo; the bound is >= an exact −log p(x|z) computed by quadrature for a one-point toy;
the learned schedule's shape gets the variance gradient; sampling (both samplers) has the
data's shape and range and repeats under a seed; a tiny diffusion-decoder VAE learns;
the wiring into MLPVAE/ConvVAE and its errors."""

import math

import pytest
import torch
from torch import nn

import fastvae
from fastvae.models import ConvVAE, DeepVAE, DiscreteVAE, HierarchicalVAE, MLPVAE, build_model
from fastvae.models.denoisers import MLPDenoiser
from fastvae.models.diffusion_decoder import DiffusionDecoder, low_discrepancy_times


def random_decoder(data_size=6, latent_dim=3, levels=2, t_samples=1, schedule="fixed", seed=0):
    """A decoder whose denoiser is a fixed random MLP (its output layer not at zero)."""
    torch.manual_seed(seed)
    denoiser = MLPDenoiser(data_size, latent_dim, (16,))
    with torch.no_grad():
        denoiser.output.weight.normal_(0, 0.3)
        denoiser.output.bias.normal_(0, 0.3)
    return DiffusionDecoder((data_size,), denoiser, schedule=schedule, levels=levels, t_samples=t_samples)


def binary_batch(count, size, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, size, generator=generator) < 0.5).float()


def scales(gamma):
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def discrete_bound_monte_carlo(decoder, x, context, z, steps, draws, generator):
    r"""[N] Σ_{i=1..T} KL(q(z_s|z_t,x) ‖ p(z_s|z_t)), s = (i − 1)/T, t = i/T, every i
    summed, ``draws`` z_t ~ q(z_t|x) each, from the Gaussians' own means and variance:
    q(z_s|z_t,x) = N(μ(x), v), p(z_s|z_t) = N(μ(x̂), v) with
    μ(x) = α_{t|s}σ_s²/σ_t²·z_t + α_s·σ_{t|s}²/σ_t²·x, v = σ_{t|s}²σ_s²/σ_t²."""
    count, size = x.shape
    rows = steps * draws
    x_tilde = (2 * x - 1).double().repeat(rows, 1)  # row r: point r % count, step r // (count·draws) + 1
    i = (torch.arange(rows * count) // (count * draws) + 1).double()
    t, s = i / steps, (i - 1) / steps
    gamma_t, gamma_s = decoder.schedule(t.float()).double(), decoder.schedule(s.float()).double()
    (alpha_t, sigma_t), (alpha_s, sigma_s) = scales(gamma_t), scales(gamma_s)
    eps = torch.randn(x_tilde.shape, generator=generator, dtype=torch.float64)
    z_t = alpha_t[:, None] * x_tilde + sigma_t[:, None] * eps
    eps_hat = decoder.predict_noise(z_t.float(), gamma_t.float(), context.repeat(rows, 1), z.repeat(rows, 1))
    x_hat = (z_t - sigma_t[:, None] * eps_hat.double()) / alpha_t[:, None]
    alpha_ts = alpha_t / alpha_s
    sigma_ts_sq = sigma_t ** 2 - alpha_ts ** 2 * sigma_s ** 2
    variance = sigma_ts_sq * sigma_s ** 2 / sigma_t ** 2
    mean_gap = (alpha_s * sigma_ts_sq / sigma_t ** 2)[:, None] * (x_tilde - x_hat)
    kl = (mean_gap ** 2).sum(1) / (2 * variance)
    return kl.view(rows, count).sum(0) / draws


@torch.no_grad()
def test_the_continuous_term_is_the_limit_of_the_discrete_bound():
    """Seeded Monte Carlo of about 2.5% relative error: the T-step bound's excess over the
    continuous-time term falls from about 300% (T = 10) to 10% (T = 100) to within the
    noise (T = 1000); the decoder's own discrete-time term agrees with the direct one."""
    decoder = random_decoder(t_samples=8000)
    x, z = binary_batch(2, 6), torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    context = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(4)
    continuous = decoder.diffusion_term(2 * x - 1, context, z, generator).double().sum().item()
    excess = {}
    for steps in (10, 100, 1000):
        direct = discrete_bound_monte_carlo(decoder, x, context, z, steps, 16000 // steps, generator).sum().item()
        # The decoder's own discrete-time term (weight T·expm1(γ_t − γ_s)) is the same bound.
        decoder.t_samples = 2000
        fused = decoder.diffusion_term(2 * x - 1, context, z, generator, steps=steps).double().sum().item()
        decoder.t_samples = 8000
        assert fused == pytest.approx(direct, rel=0.1), steps
        excess[steps] = direct / continuous - 1
    assert excess[10] > 1.5 and 0.04 < excess[100] < 0.3 and abs(excess[1000]) < 0.04, excess


@pytest.mark.parametrize("levels", [2, 256])
def test_the_t0_term_is_a_distribution_over_the_levels(levels):
    decoder = random_decoder(levels=levels)
    z_0 = torch.randn(5, 6) * 1.5
    probabilities = decoder.level_log_probs(z_0).exp()
    assert probabilities.shape == (5, 6, levels)
    assert torch.allclose(probabilities.sum(-1), torch.ones(5, 6), atol=1e-5)
    # At z_0 = α_0·v_k the level v_k is the likeliest.
    alpha_0, _ = scales(decoder.schedule.gamma_0)
    k = torch.randint(0, levels, (5, 6))
    values = torch.linspace(-1, 1, levels)
    assert torch.equal(decoder.level_log_probs(alpha_0 * values[k]).argmax(-1), k)
    x = k.float() / (levels - 1)
    recon = decoder.reconstruction_term(x, 2 * x - 1, torch.Generator().manual_seed(0))
    assert recon.shape == (5,) and (recon >= 0).all()


def test_the_prior_term_is_its_kl_by_monte_carlo():
    decoder = DiffusionDecoder((4,), MLPDenoiser(4, 2, (8,)), schedule="fixed", gamma_min=-5.0, gamma_max=1.0)
    x_tilde = 2 * binary_batch(3, 4) - 1
    closed = decoder.prior_term(x_tilde)
    alpha_1, sigma_1 = scales(torch.tensor(1.0, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    z_1 = alpha_1 * x_tilde.double() + sigma_1 * torch.randn((200000,) + x_tilde.shape, generator=generator,
                                                             dtype=torch.float64)
    log_q = torch.distributions.Normal(alpha_1 * x_tilde.double(), sigma_1).log_prob(z_1).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z_1).sum(-1)
    monte_carlo = (log_q - log_p).mean(0)
    assert torch.allclose(closed.double(), monte_carlo, atol=5e-3), (closed, monte_carlo)


class OnePointGuess(nn.Module):
    """A denoiser whose guess at x̃ is a point mass at ``x_tilde`` (s = e^−10): the
    optimal one for data that is always that point."""

    def __init__(self, x_tilde):
        super().__init__()
        self.x_tilde = x_tilde

    def forward(self, z_t, gamma, context, z):
        mean = self.x_tilde.expand_as(z_t)
        return torch.stack([mean, torch.full_like(z_t, -10.0)], dim=1)


@pytest.mark.parametrize("levels", [2, 256])
def test_the_bound_is_above_the_exact_nll_of_a_one_point_toy(levels):
    """With ε̂ exact (x̂ = x*) the diffusion term is 0 and the reverse process is
    q(z_s|z_t, x*), so p(z_0) = ∫ N(z_1; 0, I)·q(z_0|z_1, x*) dz_1 is Gaussian and
    −log p(x*) = −Σ_i log ∫ p(z_0,i)·p(x*_i|z_0,i) dz_0,i by quadrature."""
    gamma_min, gamma_max = -6.0, 1.0
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0]]) if levels == 2 else torch.tensor([[0.0, 100 / 255, 200 / 255, 1.0]])
    x_tilde = 2 * x - 1
    decoder = DiffusionDecoder((4,), OnePointGuess(x_tilde), levels=levels, t_samples=1, gamma_min=gamma_min,
                               gamma_max=gamma_max)
    generator = torch.Generator().manual_seed(0)
    draws = 4000  # of t, ε and z_0: the bound's expectation to about 0.01 nats
    terms = decoder.terms(x.repeat(draws, 1), torch.zeros(draws, 1), x.repeat(draws, 1), generator)
    assert terms.diffusion.abs().max() < 1e-2 and (terms.prior == terms.prior[0]).all()
    bound = terms.total().mean().item()
    prior = terms.prior

    (alpha_0, sigma_0), (alpha_1, sigma_1) = scales(torch.tensor(gamma_min).double()), scales(
        torch.tensor(gamma_max).double())
    alpha_10 = alpha_1 / alpha_0
    sigma_10_sq = sigma_1 ** 2 - alpha_10 ** 2 * sigma_0 ** 2
    mean = alpha_0 * sigma_10_sq / sigma_1 ** 2 * x_tilde.double()[0]
    variance = (alpha_10 * sigma_0 ** 2 / sigma_1 ** 2) ** 2 + sigma_10_sq * sigma_0 ** 2 / sigma_1 ** 2
    grid = torch.linspace(-1.6, 1.6, 32001, dtype=torch.float64)  # σ_0 = 0.05: 1600 points per σ_0
    density = torch.exp(-(grid[:, None] - mean) ** 2 / (2 * variance)) / torch.sqrt(2 * math.pi * variance)
    logits = -(grid[:, None] - alpha_0 * torch.linspace(-1, 1, levels, dtype=torch.float64)) ** 2 / (2 * sigma_0 ** 2)
    index = torch.round(x[0] * (levels - 1)).long()
    likelihood = torch.exp(logits[:, index] - torch.logsumexp(logits, -1, keepdim=True))  # [G, 4]
    step = (grid[1] - grid[0]).item()
    exact = -torch.log((density * likelihood).sum(0) * step).sum().item()
    assert exact <= bound + 0.02
    if levels == 2:  # z_0 all but decides x: the gap is about KL(q(z_1|x) ‖ p(z_1)) alone
        assert bound - exact <= prior[0].item() + 0.05, (bound, exact, prior[0].item())
    else:  # σ_0 = 0.05 spans several of the 256 levels: a gap at t = 0 too, still a small part
        assert bound - exact <= 0.15 * bound, (bound, exact)


def test_the_learned_schedules_shape_gets_the_variance_gradient():
    """Its shape (l1, l2, l3) gets ∇ Σ_b L̂_b²/(2·mean(L̂)·N·S) and its endpoints ∇ of
    the bound Σ_b L̂_b/(N·S)."""
    decoder = random_decoder(schedule="learned", t_samples=3)
    x, z = binary_batch(4, 6), torch.randn(4, 3)
    context = torch.randn(4, 6)
    decoder.diffusion_term(2 * x - 1, context, z, torch.Generator().manual_seed(5)).mean().backward()
    hooked = {name: p.grad.clone() for name, p in decoder.schedule.named_parameters()}
    decoder.zero_grad()

    # The same draws, without the hooks: the row losses L̂_b as plain functions.
    generator = torch.Generator().manual_seed(5)
    x_rep, count = (2 * x - 1).repeat(3, 1), 12
    t = low_discrepancy_times(count, "cpu", generator)
    gamma, weight = decoder.schedule.gamma_and_derivative(t)
    z_t, seed = fastvae.diffuse(x_rep, gamma, generator=generator)
    rows = fastvae.diffusion_loss(decoder.predict_noise(z_t, gamma, context.repeat(3, 1), z.repeat(3, 1)), seed,
                                  weight)
    (rows.pow(2).sum() / (2 * rows.detach().mean()) / count).backward(retain_graph=True)
    for name in ("l1_weight", "l2_weight", "l2_bias", "l3_weight"):
        expected = decoder.schedule.get_parameter(name).grad
        assert torch.allclose(hooked[name], expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item()), name
    decoder.zero_grad()
    (rows.sum() / count).backward()
    for name in ("gamma_start", "span_raw"):
        assert torch.allclose(hooked[name], decoder.schedule.get_parameter(name).grad, rtol=1e-4), name


@pytest.mark.parametrize("sampler", ["ancestral", "deterministic"])
def test_sampling_has_the_datas_shape_and_range_and_repeats_under_a_seed(sampler):
    for levels in (2, 256):
        decoder = random_decoder(levels=levels)
        context, z = torch.randn(5, 6), torch.randn(5, 3)
        samples = decoder.sample(context, z, steps=7, sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (5, 6) and samples.min() >= 0 and samples.max() <= 1
        again = decoder.sample(context, z, steps=7, sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert torch.equal(samples, again)
        other = decoder.sample(context, z, steps=7, sampler=sampler, generator=torch.Generator().manual_seed(1))
        assert not torch.equal(samples, other)
    with pytest.raises(ValueError, match="diffusion_sampler must be one of"):
        decoder.sample(context, z, sampler="euler")


def test_model_sample_reconstruct_decode_for_both_models():
    mlp = MLPVAE(data_shape=(1, 8, 8), hidden_sizes=(16,), latent_dim=3, likelihood="diffusion",
                 diffusion_hidden_sizes=(32,), diffusion_steps=4, diffusion_sampler="deterministic")
    conv = ConvVAE(data_shape=(1, 8, 8), channels=(4,), hidden_dim=8, latent_dim=3, likelihood="diffusion",
                   diffusion_channels=(8, 8), diffusion_steps=4, diffusion_levels=256)
    for model in (mlp, conv):
        samples = model.sample(3, torch.Generator().manual_seed(0))
        assert samples.shape == (3, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1
        assert torch.equal(samples, model.sample(3, torch.Generator().manual_seed(0)))
        x = torch.randint(0, 2, (2, 1, 8, 8)).float()
        assert model.reconstruct(x).shape == (2, 1, 8, 8)
        assert model.log_importance_weights(x, 3).shape == (3, 2)
        terms = model.diffusion_terms(x, model.posterior_mean(x), torch.Generator().manual_seed(0))
        assert all(term.shape == (2,) for term in terms) and model.diffusion_t_samples == 1
        out = model(x)
        assert set(out.extras) >= {"diffusion_prior", "diffusion_loss", "diffusion_reconstruction"}
        total = out.extras["diffusion_prior"] + out.extras["diffusion_loss"] + out.extras["diffusion_reconstruction"]
        assert torch.allclose(total, out.nll)
        rebuilt = build_model(model.config)
        rebuilt.load_state_dict(model.state_dict())
        assert rebuilt.config == model.config and rebuilt.diffusion.sampler == model.diffusion.sampler


def test_a_tiny_diffusion_decoder_vae_learns():
    """Two binary prototypes with 5% flips: the bound falls clearly within 150 steps."""
    torch.manual_seed(0)
    prototypes = (torch.rand(2, 32) < 0.3).float()
    data = (prototypes[torch.arange(256) % 2] + (torch.rand(256, 32) < 0.05).float()) % 2
    model = MLPVAE(data_shape=(32,), hidden_sizes=(32,), latent_dim=4, likelihood="diffusion",
                   diffusion_hidden_sizes=(64, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        batch = data[torch.randint(0, 256, (16,))]
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-30:]) / 30
    assert last < 0.7 * first, (first, last)  # 17 → 10 nats; the flips alone are 6.4


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="diffusion_levels must be 2"):
        MLPVAE(data_shape=(4,), likelihood="diffusion", diffusion_levels=16)
    with pytest.raises(ValueError, match="diffusion_schedule must be"):
        MLPVAE(data_shape=(4,), likelihood="diffusion", diffusion_schedule="cosine")
    with pytest.raises(ValueError, match="diffusion_sampler must be one of"):
        ConvVAE(data_shape=(1, 8, 8), channels=(4,), likelihood="diffusion", diffusion_sampler="euler")
    with pytest.raises(ValueError, match="needs likelihood='bernoulli', got 'diffusion'"):
        MLPVAE(data_shape=(4,), likelihood="diffusion", decoder="autoregressive")
    with pytest.raises(ValueError, match="must be divisible by 4"):
        ConvVAE(data_shape=(1, 6, 6), channels=(2,), likelihood="diffusion", diffusion_channels=(4, 4, 4))
    for model, kwargs in ((DeepVAE, {}), (HierarchicalVAE, {}), (DiscreteVAE, {})):
        with pytest.raises(ValueError, match="single-latent models 'mlp' and 'conv' only"):
            model(likelihood="diffusion", **kwargs)
    plain = MLPVAE(data_shape=(4,), hidden_sizes=(8,), latent_dim=2)
    with pytest.raises(ValueError, match="likelihood is not 'diffusion'"):
        plain.diffusion_terms(torch.zeros(1, 4), torch.zeros(1, 2))
    assert plain.diffusion is None and "diffusion_steps" not in plain.config


@pytest.mark.parametrize("objective", ["iwae", "score_function"])
def test_the_other_objectives_train_the_diffusion_decoder(objective):
    """The IWAE objective puts the bound inside its log-weights; the score-function
    objective's learning signal is the bound's unbiased estimate.  Both reach every
    network, the denoiser and the learned schedule's endpoints included."""
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(8,), hidden_sizes=(8,), latent_dim=2, likelihood="diffusion", objective=objective,
                   num_samples=3, diffusion_hidden_sizes=(16,), diffusion_schedule="learned")
    out = model(binary_batch(4, 8))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.elbo.shape == (4,)
    for name in ("diffusion.denoiser.output.weight", "diffusion.schedule.gamma_start", "encoder.1.0.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@torch.no_grad()
def test_shared_noise_terms_are_the_terms_with_every_latent_on_the_same_draws():
    decoder = random_decoder(data_size=6, latent_dim=3, t_samples=3)
    x = binary_batch(4, 6)
    z = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))
    context = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    shared = decoder.shared_noise_terms(x, z, context, torch.Generator().manual_seed(7))
    for k in range(2):
        # One latent alone, from the same generator state: the same draws, the same bound.
        alone = decoder.terms(x, z[k], context[k], torch.Generator().manual_seed(7))
        for name in ("prior", "diffusion", "reconstruction"):
            torch.testing.assert_close(getattr(shared, name)[k], getattr(alone, name), rtol=1e-5, atol=1e-4)
    assert not torch.equal(shared.diffusion[0], shared.diffusion[1])  # the latents' ε̂ differ
    same = decoder.shared_noise_terms(x, z[:1].expand(2, 4, 3), context[:1].expand(2, 4, 6))
    assert torch.equal(same.total()[0], same.total()[1])


@torch.no_grad()
def test_importance_weights_share_the_decoders_draws_across_latents():
    torch.manual_seed(0)
    model = MLPVAE(data_shape=(12,), hidden_sizes=(8,), latent_dim=2, likelihood="diffusion", diffusion_t_samples=2)
    x = binary_batch(3, 12)
    mu, logvar = model.encode(x)
    z = mu.expand(4, 3, 2)  # four copies of the same latent
    log_px_z = model._log_likelihood(z, x)
    assert log_px_z.shape == (4, 3) and torch.equal(log_px_z, log_px_z[:1].expand(4, 3))
