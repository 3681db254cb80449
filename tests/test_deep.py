"""The deep hierarchical VAE (fastvae.models.DeepVAE): shapes at every resolution, the
fused per-group KL against the reference, gradients to every group, the IWAE bound, the
temperature and group-count sampling, the stabilizers, and that it learns."""
import math

import pytest
import torch

import fastvae
from fastvae import reference
from fastvae.models import DeepVAE, build_model

CPU_BACKENDS = [name for name in ("torch", "cpu") if name in fastvae.backends.available("cpu")]

# A small model at MNIST's 28 × 28 (the preset's shape of hierarchy) and one on 8-bit
# colour images with the logistic mixture.
MNIST_KWARGS = dict(data_shape=(1, 28, 28), resolutions=(28, 14, 7, 1), width=8, encoder_blocks=(1, 1, 1, 1),
                    decoder_groups=(1, 2, 1, 1), latent_channels=2)
COLOUR_KWARGS = dict(data_shape=(3, 16, 16), resolutions=(16, 8, 4, 1), width=8, encoder_blocks=(1, 1, 1, 1),
                     decoder_groups=(1, 1, 1, 1), latent_channels=3, likelihood="discretized_logistic_mixture",
                     num_mixtures=3)
TINY_KWARGS = dict(data_shape=(1, 8, 8), resolutions=(8, 4, 1), width=8, encoder_blocks=(1, 1, 1),
                   decoder_groups=(1, 1, 1), latent_channels=2)


def binary_images(batch, shape=(1, 28, 28), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand((batch,) + tuple(shape), generator=generator) > 0.5).float()


def colour_images(batch, shape=(3, 16, 16), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch,) + tuple(shape), generator=generator).float() / 255


def make(kwargs, seed=0, **changes):
    torch.manual_seed(seed)
    return DeepVAE(**{**kwargs, **changes})


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request):
    with fastvae.use_backend(request.param):
        yield request.param


# -- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, images", [(MNIST_KWARGS, binary_images), (COLOUR_KWARGS, colour_images)],
                         ids=["mnist", "colour"])
def test_shapes_at_every_resolution(kwargs, images, cpu_backend):
    model = make(kwargs)
    x = images(3)
    activations = model._bottom_up(x)
    assert [tuple(a.shape) for a in activations] == [(3, kwargs["width"], r, r) for r in kwargs["resolutions"]]
    groups, params = model.infer(x)
    expected = [r for r, n in reversed(list(zip(kwargs["resolutions"], kwargs["decoder_groups"]))) for _ in range(n)]
    assert model.group_resolutions == expected and model.num_groups == len(expected)
    channels = kwargs["latent_channels"]
    for group, side in zip(groups, expected):
        for tensor in (group.z, group.mu, group.logvar, group.prior_mu, group.prior_logvar):
            assert tuple(tensor.shape) == (3, channels, side, side)
        assert group.kl.shape == (3,) and group.kl_per_dim.shape == (channels,)
    assert params.shape[0] == 3 and params.shape[2:] == x.shape[2:]
    out = model(x)
    assert out.loss.dim() == 0 and out.elbo.shape == out.kl.shape == out.nll.shape == (3,)
    assert out.kl_per_dim.shape == (model.latent_dim,) == (len(expected) * channels,)
    assert model.posterior_mean(x).shape == (3, model.latent_dim)
    assert model.log_importance_weights(x, 4).shape == (4, 3)
    assert model.sample(2).shape == (2,) + x.shape[1:]
    assert model.reconstruct(x, groups=1).shape == x.shape
    assert model.decode(torch.zeros(2, model.latent_dim)).shape == (2,) + x.shape[1:]


def test_an_empty_batch():
    model = make(TINY_KWARGS)
    out = model(torch.zeros(0, 1, 8, 8))
    assert out.elbo.shape == (0,)
    assert model.log_importance_weights(torch.zeros(0, 1, 8, 8), 3).shape == (3, 0)


# -- the fused per-group KL -----------------------------------------------------------


def test_fused_group_kl_equals_the_reference_composed_one(cpu_backend):
    model = make(MNIST_KWARGS)
    x = binary_images(5)
    torch.manual_seed(2)
    groups, _ = model.infer(x)
    for index, group in enumerate(groups):
        terms = reference.gaussian_kl_terms(group.mu.double(), group.logvar.double(), group.prior_mu.double(),
                                            group.prior_logvar.double())
        torch.testing.assert_close(group.kl.double(), terms.sum((1, 2, 3)), rtol=1e-5, atol=1e-5,
                                   msg=f"group {index}")
        torch.testing.assert_close(group.kl_per_dim.double(), terms.sum((2, 3)).mean(0), rtol=1e-5, atol=1e-5)
    torch.manual_seed(2)
    out = model(x)
    kl = torch.stack([group.kl for group in groups], 1)
    torch.testing.assert_close(model.kl_per_group(out.kl_per_dim), kl.mean(0), rtol=1e-5, atol=1e-5)


def test_the_fused_model_matches_the_reference_model():
    """The cpu backend's model and the torch reference's, same weights and seed: the same
    noise (Philox at the same offsets), so the same ELBO and gradients up to rounding."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the cpu backend is not built")
    results = {}
    for backend in ("torch", "cpu"):
        model = make(MNIST_KWARGS)
        with fastvae.use_backend(backend):
            torch.manual_seed(7)
            out = model(binary_images(4), beta=0.7, free_bits=0.05)
            out.loss.backward()
        results[backend] = (out.elbo, out.kl, out.kl_per_dim, [p.grad.clone() for p in model.parameters()])
    for fused, composed in zip(results["cpu"][:3], results["torch"][:3]):
        torch.testing.assert_close(fused, composed, rtol=1e-4, atol=1e-4)
    for fused, composed in zip(results["cpu"][3], results["torch"][3]):
        torch.testing.assert_close(fused, composed, rtol=1e-3, atol=1e-4)


def test_gradients_reach_every_group(cpu_backend):
    model = make(MNIST_KWARGS)
    model(binary_images(4)).loss.backward()
    for index, group in enumerate(model.groups):
        for name, module in (("posterior", group.posterior.c4), ("prior", group.prior.c4),
                             ("projection", group.project)):
            assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, f"group {index} {name}"
    assert all(p.grad is not None for p in model.parameters())


# -- the IWAE bound -------------------------------------------------------------------


def test_one_sample_log_weight_is_the_elbo_of_that_sample(cpu_backend):
    """At K = 1 the IWAE bound is the single-sample ELBO: log p(x|z) + Σ_i log p(z_i|z_<i)
    − Σ_i log q(z_i|x, z_<i), composed here from each group's z, q and p in float64."""
    model = make(MNIST_KWARGS)
    x = binary_images(4)
    torch.manual_seed(3)
    log_weight = model.log_importance_weights(x, 1)
    torch.manual_seed(3)
    groups, params = model.infer(x)
    log_px_z = -model.likelihood.nll(params, x).double()
    latent = sum((reference.gaussian_log_density(g.z.double(), g.prior_mu.double(), g.prior_logvar.double())
                  - reference.gaussian_log_density(g.z.double(), g.mu.double(), g.logvar.double())).sum((1, 2, 3))
                 for g in groups)
    torch.testing.assert_close(log_weight[0].double(), log_px_z + latent, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fastvae.iwae_bound(log_weight, torch.zeros_like(log_weight),
                                                  torch.zeros_like(log_weight)), log_weight[0])


def test_the_bound_is_never_below_the_mean_log_weight(cpu_backend):
    model = make(MNIST_KWARGS)
    torch.manual_seed(0)
    log_weights = model.log_importance_weights(binary_images(6), 8)
    zeros = torch.zeros_like(log_weights)
    bound = fastvae.iwae_bound(log_weights, zeros, zeros)
    assert (bound >= log_weights.mean(0)).all()
    assert (bound <= log_weights.max(0).values + 1e-4).all()


def test_iwae_objective_trains_on_the_bound(cpu_backend):
    model = make(TINY_KWARGS, objective="iwae", num_samples=3)
    torch.manual_seed(0)
    out = model(binary_images(4, (1, 8, 8)))
    torch.testing.assert_close(out.loss, -out.extras["iwae"].mean())
    out.loss.backward()
    assert model.groups[0].posterior.c4.weight.grad.abs().sum() > 0
    assert out.elbo.shape == out.kl.shape == (4,) and out.kl_per_dim.shape == (model.latent_dim,)


# -- sampling -------------------------------------------------------------------------


def _captured_latents(model):
    """Hooks recording each group's prior mean and the z its projection absorbs."""
    priors, latents, handles = [], [], []
    for group in model.groups:
        handles.append(group.prior.register_forward_hook(
            lambda module, inputs, output, c=group.latent_channels: priors.append(output[:, :c].clone())))
        handles.append(group.project.register_forward_pre_hook(lambda module, inputs: latents.append(inputs[0])))
    return priors, latents, handles


def test_temperature_zero_samples_the_prior_means():
    model = make(MNIST_KWARGS)
    priors, latents, handles = _captured_latents(model)
    first = model.sample(3, generator=torch.Generator().manual_seed(1), temperature=0.0)
    for handle in handles:
        handle.remove()
    assert len(latents) == model.num_groups
    for prior_mu, z in zip(priors, latents):
        torch.testing.assert_close(z, prior_mu, rtol=0, atol=0)
    second = model.sample(3, generator=torch.Generator().manual_seed(2), temperature=[0.0] * model.num_groups)
    assert torch.equal(first, second)
    assert not torch.equal(first, model.sample(3, generator=torch.Generator().manual_seed(1), temperature=1.0))


def test_a_temperature_per_group():
    """t = 0 on the top groups holds them at their prior means whatever the noise."""
    model = make(MNIST_KWARGS)
    priors, latents, handles = _captured_latents(model)
    temperatures = [0.0, 0.0] + [0.5] * (model.num_groups - 2)
    model.sample(2, generator=torch.Generator().manual_seed(4), temperature=temperatures)
    for handle in handles:
        handle.remove()
    for index in range(model.num_groups):
        same = torch.equal(latents[index], priors[index])
        assert same == (index < 2), index


def test_reconstruct_keeps_the_top_groups_of_the_posterior():
    model = make(MNIST_KWARGS)
    x = binary_images(2)
    posterior_means = []
    activations = model._bottom_up(x)

    def choose(index, h, prior_mu, prior_logvar):
        posterior_means.append(model._posterior(index, h, activations)[0])
        return posterior_means[-1]

    model._top_down(2, choose)
    priors, latents, handles = _captured_latents(model)
    generator = torch.Generator().manual_seed(0)
    model.reconstruct(x, groups=2, temperature=0.0, generator=generator)
    for handle in handles:
        handle.remove()
    assert torch.equal(latents[0], posterior_means[0]) and torch.equal(latents[1], posterior_means[1])
    for index in range(2, model.num_groups):
        assert torch.equal(latents[index], priors[index])
    full = model.reconstruct(x)
    assert torch.equal(full, model.reconstruct(x, groups=model.num_groups, generator=generator))
    assert full.min() >= 0 and full.max() <= 1


def test_sampling_is_deterministic_given_the_generator():
    model = make(MNIST_KWARGS)
    one = model.sample(2, generator=torch.Generator().manual_seed(5), temperature=0.8)
    two = model.sample(2, generator=torch.Generator().manual_seed(5), temperature=0.8)
    assert torch.equal(one, two)


# -- the stabilizers ------------------------------------------------------------------


def test_log_variances_are_soft_clamped():
    model = make(TINY_KWARGS, logvar_bound=3.0)
    with torch.no_grad():
        for group in model.groups:
            group.posterior.c4.bias.fill_(1e4)
            group.prior.c4.bias.fill_(-1e4)
    groups, _ = model.infer(binary_images(2, (1, 8, 8)))
    for group in groups:
        assert group.logvar.max() <= 3.0 and group.prior_logvar.min() >= -3.0
        assert torch.isfinite(group.kl).all()


def test_residual_branches_are_scaled_by_depth():
    deep = make(TINY_KWARGS, decoder_groups=(4, 4, 1))
    shallow = make(TINY_KWARGS, decoder_groups=(1, 0, 0))
    scale = (deep.groups[0].resblock.c4.weight.std() / shallow.groups[0].resblock.c4.weight.std()).item()
    assert scale == pytest.approx(math.sqrt(1 / 9), rel=0.35)


def test_kl_balancing_weights_only_during_warm_up():
    model = make(MNIST_KWARGS, kl_balancing=True)
    plain = make(MNIST_KWARGS)
    x = binary_images(4)
    kl = torch.rand(4, model.num_groups) * 5
    weights = model.kl_balance_weights(kl)
    assert weights.shape == (model.num_groups,) and weights.mean().item() == pytest.approx(1.0)
    expected = (kl.mean(0) + 0.01) / model.kl_group_sizes
    torch.testing.assert_close(weights, expected / expected.mean())
    for beta, equal in ((1.0, True), (0.5, False)):
        torch.manual_seed(0)
        balanced = model(x, beta=beta)
        torch.manual_seed(0)
        unbalanced = plain(x, beta=beta)
        assert torch.equal(balanced.elbo, unbalanced.elbo)
        assert torch.equal(balanced.loss, unbalanced.loss) == equal


def test_spectral_regularization_estimates_the_largest_singular_values():
    model = make(TINY_KWARGS, spectral_coeff=0.1)
    assert "groups.0.project.spectral_u" in model.state_dict()
    model.train()
    for _ in range(200):
        estimate = model.spectral_norm_sum()
    exact = sum(torch.linalg.matrix_norm(conv.weight.flatten(1), 2) for conv in model._convolutions())
    torch.testing.assert_close(estimate, exact, rtol=1e-3, atol=1e-4)
    torch.manual_seed(0)
    out = model(binary_images(2, (1, 8, 8)))
    torch.testing.assert_close(out.loss, (-out.elbo).mean() + 0.1 * out.extras["spectral_norm_sum"],
                               rtol=1e-5, atol=1e-4)
    out.loss.backward()
    model.eval()
    before = model.groups[0].project.spectral_u.clone()
    model.spectral_norm_sum()
    assert torch.equal(before, model.groups[0].project.spectral_u)


# -- the config and the checks --------------------------------------------------------


def test_config_rebuilds_the_model():
    model = make(COLOUR_KWARGS, kl_balancing=True, spectral_coeff=0.01)
    rebuilt = build_model(model.config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    x = colour_images(2)
    torch.manual_seed(0)
    one = model(x).elbo
    torch.manual_seed(0)
    assert torch.equal(one, rebuilt(x).elbo)


def test_same_seed_same_bits(cpu_backend):
    model = make(MNIST_KWARGS)
    x = binary_images(3)
    torch.manual_seed(11)
    first = model(x)
    first.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(11)
    second = model(x)
    second.loss.backward()
    assert torch.equal(first.loss, second.loss)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))


@pytest.mark.parametrize("changes, message", [
    (dict(data_shape=(1, 28, 20)), "H = W"),
    (dict(resolutions=(32, 16, 1)), "resolutions\\[0\\] must be the data's side 28"),
    (dict(resolutions=(28, 12, 1), encoder_blocks=(1, 1, 1), decoder_groups=(1, 1, 1)), "resolutions\\[1\\] = 12"),
    (dict(encoder_blocks=(1, 1)), "encoder_blocks must have one entry per resolution"),
    (dict(decoder_groups=(0, 0, 0, 0)), "at least one latent group"),
    (dict(decoder_groups=(1, -1, 0, 0)), "decoder_groups\\[1\\] must be an int >= 0"),
    (dict(width=0), "width must be an int >= 1"),
    (dict(logvar_bound=0.0), "logvar_bound must be > 0"),
    (dict(kl_balancing=1), "kl_balancing must be a bool"),
    (dict(activation="swish"), "unknown activation"),
])
def test_bad_configs_name_the_argument(changes, message):
    with pytest.raises((ValueError, TypeError), match=f"fastvae.models.DeepVAE: .*{message}"):
        DeepVAE(**{**MNIST_KWARGS, **changes})


def test_bad_calls_name_the_argument():
    model = make(TINY_KWARGS)
    x = binary_images(2, (1, 8, 8))
    with pytest.raises(ValueError, match="temperature must be a number or 3 numbers"):
        model.sample(2, temperature=[1.0, 1.0])
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="groups must be None or an int in \\[0, 3\\]"):
        model.reconstruct(x, groups=4)
    with pytest.raises(ValueError, match="decode: z must have shape \\[N, 6\\]"):
        model.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="kl_per_group: kl_per_dim must end in 6"):
        model.kl_per_group(torch.zeros(4))
    with pytest.raises(ValueError, match="x must have shape \\[B, 1, 8, 8\\]"):
        model(torch.zeros(2, 1, 28, 28))
    with pytest.raises(RuntimeError, match="spectral_norm_sum: the model was built with spectral_coeff=0"):
        model.spectral_norm_sum()


# -- it learns ------------------------------------------------------------------------


def _squares(count, generator):
    """Binary 8 × 8 images of a 3 × 3 square at one of 36 positions, 2% of the pixels
    flipped: log 36 ≈ 3.6 nats of position that a latent can carry."""
    rows = torch.randint(0, 6, (count,), generator=generator)
    cols = torch.randint(0, 6, (count,), generator=generator)
    grid = torch.arange(8)
    in_rows = (grid[None, :] >= rows[:, None]) & (grid[None, :] < rows[:, None] + 3)
    in_cols = (grid[None, :] >= cols[:, None]) & (grid[None, :] < cols[:, None] + 3)
    images = (in_rows[:, :, None] & in_cols[:, None, :]).float()
    flips = torch.rand(images.shape, generator=generator) < 0.02
    return torch.where(flips, 1 - images, images).unsqueeze(1)


def test_a_tiny_deep_model_learns():
    """Trained for 250 steps, the test ELBO passes what any model that ignores its latents
    can reach (the pixels' marginals: about −26 nats here; 64·H(0.02) ≈ 6.3 nats is the
    noise floor) and the KL shows the latents in use."""
    generator = torch.Generator().manual_seed(0)
    train, test = _squares(512, generator), _squares(128, generator)
    model = make(TINY_KWARGS, width=16, activation="silu")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def evaluate():
        torch.manual_seed(1)
        with torch.no_grad():
            out = model(test)
        return out.elbo.mean().item(), out.kl.mean().item()

    before, _ = evaluate()
    for step in range(250):
        batch = train[torch.randint(0, 512, (32,), generator=generator)]
        optimizer.zero_grad()
        model(batch, beta=min(1.0, step / 50)).loss.backward()
        optimizer.step()
    after, kl = evaluate()
    assert after > -23 and after > before + 40, (before, after)
    assert kl > 2, kl


def test_the_iwae_evaluation_takes_the_models_rows_per_call():
    """A convolutional hierarchy's K·B rows are costly: the IWAE estimate calls the model
    with at most ``iwae_rows_per_call`` rows (2^24 elements of its widest activation)."""
    from fastvae.eval import iwae_estimate

    model = make(MNIST_KWARGS)
    assert model.iwae_rows_per_call == (1 << 24) // (8 * 28 * 28)
    model.iwae_rows_per_call = 12
    chunks = []
    weights = model.log_importance_weights

    def recorded(x, num_samples):
        chunks.append(num_samples * x.shape[0])
        return weights(x, num_samples)

    model.log_importance_weights = recorded
    iwae_estimate(model, binary_images(8), num_samples=7, batch_size=4)
    assert max(chunks) <= 12 and sum(chunks) == 7 * 8
