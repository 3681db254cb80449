"""fastvae.eval: the IWAE estimate, the ELBO gap, active units, KL per dimension, mutual
information, PNG pictures, rate–distortion, and report.md.

The models here are small VAEs of the tests' own, written with fastvae's ops against the
contract of fastvae.models.base, so the evaluation is checked independently of the
library's models: a tiny MLP VAE, a linear-Gaussian model whose log p(x) and exact
posterior are known in closed form, and a test double that serves a fixed table of
log-weights (to check the chunked combination exactly).
"""
import importlib.metadata
import json
import math
import platform

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastvae
from fastvae import eval as fe
from fastvae.eval.report import FIELDS
from fastvae.models.base import VAE, VAEOutput


# --------------------------------------------------------------------------------------
# Models of the tests' own
# --------------------------------------------------------------------------------------


class TinyVAE(VAE):
    """One linear encoder to (mu, logvar), one linear decoder to Bernoulli logits."""

    def __init__(self, data_dim=16, latent_dim=4):
        super().__init__()
        self.data_shape, self.latent_dim = (data_dim,), latent_dim
        self.config = {"name": "tiny", "data_dim": data_dim, "latent_dim": latent_dim}
        self.encoder = nn.Linear(data_dim, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, data_dim)

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, x, beta=1.0, free_bits=0.0):
        mu, logvar = self.encode(x)
        z, kl = fastvae.sample_gaussian(mu, logvar)
        nll = fastvae.bernoulli_nll(self.decoder(z), x)
        kl_per_dim = fastvae.gaussian_kl(mu, logvar, reduction="none").mean(0)
        return VAEOutput((nll + beta * kl).mean(), (-nll - kl).detach(), nll.detach(), kl.detach(), kl_per_dim.detach())

    def log_importance_weights(self, x, num_samples):
        mu, logvar = self.encode(x)
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, num_samples)
        logits = self.decoder(z).flatten(0, 1)
        targets = x.expand(num_samples, *x.shape).flatten(0, 1)
        log_px_z = -fastvae.bernoulli_nll(logits, targets).view(num_samples, -1)
        return log_px_z + log_p - log_q

    def posterior_mean(self, x):
        return self.encode(x)[0]

    def posterior_params(self, x):
        return self.encode(x)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))

    def sample(self, num_samples, generator=None):
        z = torch.randn(num_samples, self.latent_dim, generator=generator)
        return self.decode(z)

    def reconstruct(self, x):
        return self.decode(self.posterior_mean(x))


class LinearGaussianVAE(VAE):
    """z ~ N(0, I), x|z ~ N(Wz + b, σ²I), with W = Q·diag(s) (orthonormal columns Q) so that
    the exact posterior is a diagonal Gaussian:
    precision 1 + s²/σ², mean (s/σ²)/precision · Qᵀ(x − b).  ``posterior_scale`` < 1
    shrinks the encoder's mean away from the exact one."""

    def __init__(self, data_dim=6, latent_dim=3, noise_std=0.5, posterior_scale=1.0, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.data_shape, self.latent_dim = (data_dim,), latent_dim
        self.config = {"name": "linear_gaussian"}
        q, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim, generator=generator))
        self.scales = 0.5 + 1.5 * torch.rand(latent_dim, generator=generator)
        self.register_buffer("weight", q * self.scales)
        self.register_buffer("bias", torch.randn(data_dim, generator=generator))
        self.noise_var = noise_std**2
        self.posterior_scale = posterior_scale

    def log_marginal(self, x):
        covariance = self.weight @ self.weight.T + self.noise_var * torch.eye(self.weight.shape[0])
        return torch.distributions.MultivariateNormal(self.bias.double(), covariance.double()).log_prob(x.double())

    def encode(self, x):
        precision = 1.0 + self.scales**2 / self.noise_var
        q = self.weight / self.scales
        mu = (x - self.bias) @ q * (self.scales / self.noise_var / precision)
        logvar = (-torch.log(precision)).expand_as(mu)
        return self.posterior_scale * mu, logvar

    def log_px_z(self, x, z):
        mean = z @ self.weight.T + self.bias
        return -fastvae.gaussian_nll(mean, x, logvar=math.log(self.noise_var))

    def forward(self, x, beta=1.0, free_bits=0.0):
        mu, logvar = self.encode(x)
        z, kl = fastvae.sample_gaussian(mu, logvar)
        nll = -self.log_px_z(x, z)
        kl_per_dim = fastvae.gaussian_kl(mu, logvar, reduction="none").mean(0)
        return VAEOutput((nll + beta * kl).mean(), -nll - kl, nll, kl, kl_per_dim)

    def log_importance_weights(self, x, num_samples):
        mu, logvar = self.encode(x)
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, num_samples)
        targets = x.expand(num_samples, *x.shape).flatten(0, 1)
        log_px_z = self.log_px_z(targets, z.flatten(0, 1)).view(num_samples, -1)
        return log_px_z + log_p - log_q

    def posterior_mean(self, x):
        return self.encode(x)[0]

    def posterior_params(self, x):
        return self.encode(x)


class TableVAE(VAE):
    """Serves log-weights from a fixed table [K, N]: data point i is x = [i], and each
    call hands out the next ``num_samples`` rows of its column.  Records the calls."""

    def __init__(self, table):
        super().__init__()
        self.data_shape, self.latent_dim, self.config = (1,), 1, {"name": "table"}
        self.table = table
        self.served = torch.zeros(table.shape[1], dtype=torch.long)
        self.calls = []

    def log_importance_weights(self, x, num_samples):
        index = x[:, 0].long()
        self.calls.append((x.shape[0], num_samples))
        columns = [self.table[self.served[i]:self.served[i] + num_samples, i] for i in index.tolist()]
        self.served[index] += num_samples
        return torch.stack(columns, dim=1)

    def posterior_mean(self, x):
        return torch.zeros(x.shape[0], 1)


def index_data(n):
    return torch.arange(n, dtype=torch.float32).unsqueeze(1)


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return TinyVAE(**kwargs)


def uniform_data(n=48, dim=16, seed=1):
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# The IWAE estimate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 36, 37, 100, None])
def test_chunked_samples_combine_to_the_logsumexp_over_all_k(chunk):
    num_samples, points = 37, 11
    table = 30.0 * torch.randn(num_samples, points, generator=torch.Generator().manual_seed(3))
    model = TableVAE(table)
    result = fe.iwae_estimate(model, index_data(points), num_samples=num_samples, batch_size=4, sample_chunk=chunk)
    expected = torch.logsumexp(table.double(), dim=0) - math.log(num_samples)
    torch.testing.assert_close(result.log_likelihood, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.mean_log_weight, table.double().mean(0), rtol=0, atol=1e-10)
    assert result.log_likelihood.dtype == torch.float64 and result.num_samples == num_samples
    # Batched over points and K: one call per (batch, chunk), never one per data point.
    chunk_size = min(chunk or num_samples, num_samples)
    assert len(model.calls) == 3 * math.ceil(num_samples / chunk_size)
    assert model.calls[0] == (4, chunk_size)


def test_equal_log_weights_give_the_mean_exactly():
    value = -123.456789
    model = TableVAE(torch.full((10, 5), value))
    result = fe.iwae_estimate(model, index_data(5), num_samples=10, batch_size=2, sample_chunk=3)
    assert (result.log_likelihood >= result.mean_log_weight).all()
    torch.testing.assert_close(result.log_likelihood, result.mean_log_weight, rtol=0, atol=1e-12)
    stored = torch.tensor(value).double()  # the table holds the float32 nearest to value
    torch.testing.assert_close(result.log_likelihood, stored.expand(5), rtol=0, atol=1e-9)


def test_a_minus_infinity_weight_counts_as_zero():
    table = torch.tensor([[0.0, -math.inf], [-math.inf, -math.inf], [2.0, 1.0]])
    result = fe.iwae_estimate(TableVAE(table), index_data(2), num_samples=3, sample_chunk=1)
    expected = torch.logsumexp(table.double(), 0) - math.log(3)
    torch.testing.assert_close(result.log_likelihood, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iwae_estimate_is_never_below_the_mean_log_weight(seed):
    model = tiny_model(seed)
    with torch.no_grad():
        model.encoder.weight.mul_(3.0)  # a poor posterior: widely spread weights
    result = fe.iwae_estimate(model, uniform_data(seed=seed + 10), num_samples=50, batch_size=16, sample_chunk=7)
    assert result.num_points == 48
    assert (result.log_likelihood >= result.mean_log_weight).all()
    assert (result.log_likelihood > result.mean_log_weight).any()


def test_random_table_iwae_is_never_below_the_mean():
    for seed in range(3):
        table = 50.0 * torch.randn(64, 32, generator=torch.Generator().manual_seed(seed))
        result = fe.iwae_estimate(TableVAE(table), index_data(32), num_samples=64, sample_chunk=9)
        assert (result.log_likelihood >= result.mean_log_weight).all()


def test_exact_posterior_gives_log_p_x_for_every_k():
    model = LinearGaussianVAE(posterior_scale=1.0)
    x = model.bias + torch.randn(20, 6, generator=torch.Generator().manual_seed(5)) * 1.5
    exact = model.log_marginal(x)
    for num_samples in (1, 16):
        result = fe.iwae_estimate(model, x, num_samples=num_samples, batch_size=8, sample_chunk=5)
        # With q(z|x) = p(z|x) every log-weight equals log p(x): IWAE = ELBO = log p(x).
        torch.testing.assert_close(result.log_likelihood, exact, rtol=0, atol=2e-4)
        torch.testing.assert_close(result.mean_log_weight, exact, rtol=0, atol=2e-4)
    gap = fe.elbo_gap(result.log_likelihood, result.mean_log_weight)
    torch.testing.assert_close(gap, torch.zeros(20, dtype=torch.float64), rtol=0, atol=1e-5)


def test_iwae_estimate_rises_with_k_towards_log_p_x():
    model = LinearGaussianVAE(posterior_scale=0.3)
    x = model.bias + torch.randn(64, 6, generator=torch.Generator().manual_seed(6)) * 1.5
    exact = model.log_marginal(x).mean().item()
    means = [fe.iwae_estimate(model, x, num_samples=k, batch_size=64, seed=k).mean for k in (1, 10, 100, 1000)]
    assert means == sorted(means), means
    assert means[0] < exact - 3.0  # the poor posterior's ELBO is far below
    # K = 1000 closes all but a few percent of the gap (the rest is the estimate's noise).
    assert abs(means[-1] - exact) < 0.1 * (exact - means[0])


def test_same_seed_same_estimate_and_the_callers_random_state_is_kept():
    model, x = tiny_model(), uniform_data()
    state = torch.get_rng_state()
    first = fe.iwae_estimate(model, x, num_samples=20, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    second = fe.iwae_estimate(model, x, num_samples=20, seed=7)
    other = fe.iwae_estimate(model, x, num_samples=20, seed=8)
    assert torch.equal(first.log_likelihood, second.log_likelihood)
    assert not torch.equal(first.log_likelihood, other.log_likelihood)
    assert model.training  # the training flag is restored


class BatchDataset(torch.utils.data.Dataset):
    """A data set with a fast batch(indices) method, as fastvae.data's."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index]

    def batch(self, indices):
        return self.x[indices]


class LabelledDataset(BatchDataset):
    batch = None

    def __getitem__(self, index):
        return self.x[index], index


def test_tensor_and_datasets_give_the_same_estimate():
    model, x = tiny_model(), uniform_data(n=30)
    expected = fe.iwae_log_likelihood(model, x, num_samples=8, batch_size=7)
    for data in (BatchDataset(x), LabelledDataset(x)):
        assert torch.equal(fe.iwae_log_likelihood(model, data, num_samples=8, batch_size=7), expected)
    first = fe.iwae_log_likelihood(model, x, num_samples=8, batch_size=7, num_points=10)
    assert first.shape == (10,)


def test_iwae_estimate_summary_statistics():
    table = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    result = fe.iwae_estimate(TableVAE(table), index_data(8), num_samples=5)
    values = result.log_likelihood
    assert result.mean == pytest.approx(values.mean().item())
    assert result.stderr == pytest.approx(values.std().item() / math.sqrt(8))
    assert result.nll == -result.mean and result.num_points == 8
    assert result.elbo_mean == pytest.approx(table.double().mean().item())


def test_bits_per_dim_follows_fastvae_bits_per_dim():
    x = torch.rand(3, 3, 8, 8)
    nll = torch.tensor([700.0, 800.0, 900.0])
    torch.testing.assert_close(fe.bits_per_dim(nll, (3, 8, 8)), fastvae.bits_per_dim(nll, x))
    assert fe.bits_per_dim(100.0, (784,)) == pytest.approx(100.0 / (math.log(2) * 784))
    with pytest.raises(ValueError, match="bits_per_dim"):
        fe.bits_per_dim(1.0, (0,))


def test_elbo_gap_checks_its_arguments():
    with pytest.raises(ValueError, match="elbo_gap"):
        fe.elbo_gap(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="elbo_gap: elbo"):
        fe.elbo_gap(torch.zeros(3), [0.0, 0.0, 0.0])


def test_bad_arguments_name_the_function_and_argument():
    model, x = tiny_model(), uniform_data()
    with pytest.raises(ValueError, match="iwae_estimate: num_samples"):
        fe.iwae_estimate(model, x, num_samples=0)
    with pytest.raises(TypeError, match="iwae_estimate: sample_chunk"):
        fe.iwae_estimate(model, x, num_samples=4, sample_chunk=2.5)
    with pytest.raises(TypeError, match="iwae_estimate: model"):
        fe.iwae_estimate(nn.Linear(2, 2), x)
    with pytest.raises(ValueError, match="data_shape"):
        fe.iwae_estimate(model, torch.rand(4, 9), num_samples=2)
    with pytest.raises(ValueError, match="no data points"):
        fe.iwae_estimate(model, torch.rand(0, 16), num_samples=2)
    with pytest.raises(TypeError, match="data"):
        fe.iwae_estimate(model, 3.0, num_samples=2)
    with pytest.raises(ValueError, match="active_units: threshold"):
        fe.active_units(model, x, threshold=-1.0)


# --------------------------------------------------------------------------------------
# Latent space: active units, KL per dimension, mutual information
# --------------------------------------------------------------------------------------


def copying_model(log_var=-6.0, copies=2):
    """Latent dims [0, copies) copy x's first features (×10); the others ignore x."""
    model = tiny_model()
    with torch.no_grad():
        model.encoder.weight.zero_()
        model.encoder.bias.zero_()
        model.encoder.bias[model.latent_dim:] = log_var
        for d in range(copies):
            model.encoder.weight[d, d] = 10.0
        model.encoder.bias[copies:model.latent_dim] = 0.5
    return model


def test_active_units_copying_dims_are_active_and_constant_ones_are_not():
    x = uniform_data(n=50)
    units = fe.active_units(copying_model(copies=2), x, batch_size=7)
    assert units.active.tolist() == [True, True, False, False]
    assert units.count == 2 and units.latent_dim == 4
    assert set(units.ranked[:2]) == {0, 1}
    # Streaming in batches of 7 equals the variance over all posterior means at once.
    model = tiny_model(3)
    units = fe.active_units(model, x, batch_size=7)
    with torch.no_grad():
        expected = torch.cat([model.posterior_mean(batch) for batch in x.split(7)]).double().var(dim=0)
    torch.testing.assert_close(units.variance, expected, rtol=1e-12, atol=1e-14)
    assert fe.active_units(model, x, threshold=1e9).count == 0
    with pytest.raises(ValueError, match="at least 2"):
        fe.active_units(model, x[:1])


def test_kl_per_dimension_is_the_data_set_mean_with_uneven_batches():
    model, x = tiny_model(2), uniform_data(n=50)
    kl = fe.kl_per_dimension(model, x, batch_size=7)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        expected = fastvae.gaussian_kl(mu, logvar, reduction="none").double().mean(0)
    assert kl.dtype == torch.float64 and kl.shape == (4,)
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=1e-7)


def test_mutual_information_zero_without_x_and_at_most_log_n_with_it():
    x = uniform_data(n=60)
    assert abs(fe.mutual_information(copying_model(copies=0), x, batch_size=16)) < 1e-9
    informative = fe.mutual_information(copying_model(copies=4), x, batch_size=16)
    assert 0.9 * math.log(60) < informative <= math.log(60) + 1e-9
    partial = fe.mutual_information(copying_model(log_var=2.0, copies=1), x, batch_size=16)
    assert 0.0 < partial < informative


def test_mutual_information_is_none_without_posterior_params():
    assert fe.mutual_information(TableVAE(torch.zeros(1, 4)), index_data(4)) is None


# --------------------------------------------------------------------------------------
# PNG and pictures
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (5, 9, 1), (5, 9, 3), (64, 33, 3)])
def test_png_round_trip_is_exact(tmp_path, shape):
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = fe.write_png(tmp_path / "image.png", pixels)
    with Image.open(path) as image:
        image.load()
        assert image.mode == ("RGB" if shape[-1:] == (3,) and len(shape) == 3 else "L")
        read = np.array(image)
    assert np.array_equal(read, pixels.reshape(read.shape).numpy())
    assert not list(tmp_path.glob("*.partial"))


def test_png_rejects_bad_pixels():
    with pytest.raises(TypeError, match="uint8"):
        fe.encode_png(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="shape"):
        fe.encode_png(torch.zeros(4, 4, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        fe.encode_png(torch.zeros(0, 4, dtype=torch.uint8))


def read_png(path):
    with Image.open(path) as image:
        image.load()
        return np.array(image)


def test_rgb_image_grid_layout(tmp_path):
    images = torch.rand(5, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    pixels = read_png(fe.save_image_grid(images, tmp_path / "grid.png", ncol=3, padding=2))
    assert pixels.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 3)
    # Image 4 sits in row 1, column 1.
    tile = pixels[2 + 6:2 + 6 + 4, 2 + 8:2 + 8 + 6]
    assert np.array_equal(tile, fe.to_uint8(images[4].permute(1, 2, 0)).numpy())
    assert (pixels[0] == 255).all()  # the padding
    assert fe.as_images(torch.rand(2, 784)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="image_shape"):
        fe.as_images(torch.rand(2, 10))


def test_sample_grid_is_written_with_the_expected_size_and_seeded(tmp_path):
    model = tiny_model()
    first = read_png(fe.save_samples(model, tmp_path / "a.png", num_samples=16, ncol=8, seed=3))
    again = read_png(fe.save_samples(model, tmp_path / "b.png", num_samples=16, ncol=8, seed=3))
    assert first.shape == (2 * 6 + 2, 8 * 6 + 2)  # 4x4 images, padding 2
    assert np.array_equal(first, again)
    assert first[2:6, 2:6].std() > 0


def find_grid(pixels, grid):
    """(top, left) of the uint8 grid [h, w] inside the picture [H, W] (exact pixels)."""
    windows = np.lib.stride_tricks.sliding_window_view(pixels, grid.shape)
    found = np.argwhere((windows == grid).all(axis=(2, 3)))
    assert len(found) >= 1, "the grid's exact pixels are not in the picture"
    return tuple(found[0])


def texts(figure):
    return [text.get_text() for text in figure.texts]


def test_reconstructions_sit_under_their_data_in_labelled_rows(tmp_path, label_figures):
    model, x = tiny_model(), uniform_data(n=5)
    pixels = read_png(fe.save_reconstructions(model, x, tmp_path / "rec.png", ncol=4))
    with torch.no_grad():
        reconstructions = model.reconstruct(x)
    # Rows: data 0-3, their reconstructions, data 4 (and blanks), its reconstruction.
    blank = torch.ones(3, 16)
    tiles = torch.cat([x[:4], reconstructions[:4], x[4:], blank, reconstructions[4:], blank]).view(-1, 1, 4, 4)
    grid = fe.to_uint8(fe.image_grid(tiles, ncol=4)[0]).numpy()
    top, left = find_grid(pixels, grid)
    assert top > 0 and left > 0  # room for the labels

    def tile(row, column):
        return pixels[top + 2 + 6 * row:top + 6 + 6 * row, left + 2 + 6 * column:left + 6 + 6 * column]

    assert np.array_equal(tile(0, 0), fe.to_uint8(x[0].view(4, 4)).numpy())
    assert np.array_equal(tile(1, 0), fe.to_uint8(reconstructions[0].view(4, 4)).numpy())
    assert np.array_equal(tile(2, 0), fe.to_uint8(x[4].view(4, 4)).numpy())
    assert np.array_equal(tile(3, 0), fe.to_uint8(reconstructions[4].view(4, 4)).numpy())
    assert (tile(2, 1) == 255).all()  # blank cell completing the last data row
    # Each row is labelled, data above reconstruction, and the labels are drawn.
    labels = texts(label_figures[-1])
    assert labels[1:] == ["data", "reconstruction", "data", "reconstruction"]
    assert "reconstruction" in labels[0]
    assert (pixels[top:top + grid.shape[0], :left] < 128).any()  # dark text left of the grid


def test_latent_traversals_are_labelled_with_the_dimension_and_the_values(tmp_path, label_figures):
    model, x = tiny_model(), uniform_data(n=10)
    scores = torch.tensor([0.1, 5.0, 0.0, 2.0])
    pixels = read_png(fe.save_latent_traversals(model, x, tmp_path / "t.png", scores=scores, num_dims=2,
                                                num_steps=5, span=2.0))
    with torch.no_grad():
        z = model.posterior_mean(x[:1]).repeat(10, 1)
        values = torch.linspace(-2.0, 2.0, 5)
        z[:5, 1], z[5:, 3] = values, values  # row 0 traverses dim 1, row 1 dim 3
        decoded = model.decode(z)
    grid = fe.to_uint8(fe.image_grid(decoded.view(10, 1, 4, 4), ncol=5)[0]).numpy()
    top, left = find_grid(pixels, grid)
    assert top > 0 and left > 0
    assert np.array_equal(pixels[top + 2:top + 6, left + 2:left + 6], fe.to_uint8(decoded[0].view(4, 4)).numpy())
    labels = texts(label_figures[-1])
    title = " ".join(labels[0].split())  # wrapped to the picture's width
    assert "z[d] from −2 to +2 in 5 steps" in title
    # Rows name their dimension; columns carry z_d's values, at least the two ends.
    assert labels[1:3] == ["z[1]", "z[3]"]
    assert labels[3] == "−2" and labels[-1] == "+2"
    assert set(labels[3:]) <= {"−2", "−1", "0", "+1", "+2"}
    with pytest.raises(ValueError, match="dims"):
        fe.save_latent_traversals(model, x, tmp_path / "bad.png", dims=[7])


def test_traversal_column_labels_all_show_when_they_fit(tmp_path, label_figures):
    model = tiny_model(data_dim=64 * 64)
    x = uniform_data(n=4, dim=64 * 64)
    fe.save_latent_traversals(model, x, tmp_path / "t.png", dims=[0], num_steps=9, span=3.0)
    assert texts(label_figures[-1])[2:] == ["−3", "−2.25", "−1.5", "−0.75", "0", "+0.75", "+1.5", "+2.25", "+3"]


def write_metrics(path):
    lines = []
    for step in range(1, 31):
        lines.append({"step": step, "loss": 100.0 / step, "elbo": -100.0 / step, "kl": 1.0 + step / 10, "nll": 9.0})
        if step % 10 == 0:
            lines.append({"step": step, "split": "eval", "elbo": -120.0 / step, "loss": 120.0 / step})
    lines.append({"step": 30, "eval/kl": 4.0, "train/kl": 4.2, "eval_ema/elbo": -3.5, "lr": 1e-3, "skipped": False})
    lines.append({"step": 30, "test/iwae_nll": 88.5, "test/iwae_num_samples": 5000})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    return path


def test_training_curves_read_and_plotted(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl")
    curves = fe.read_training_curves(metrics)
    assert sorted(curves) == ["elbo", "iwae_nll", "kl", "loss", "nll"]
    assert curves["iwae_nll"] == {"test": [(30, 88.5)]}
    assert len(curves["elbo"]["train"]) == 30 and curves["elbo"]["eval"][-1] == (30, -4.0)
    assert curves["kl"]["eval"] == [(30, 4.0)] and curves["kl"]["train"][-1] == (30, 4.2)
    assert curves["elbo"]["eval_ema"] == [(30, -3.5)]
    pixels = read_png(fe.plot_training_curves(metrics, tmp_path / "curves.png"))
    assert pixels.shape[:2] == (400, 640)
    (tmp_path / "empty.jsonl").write_text(json.dumps({"step": 1, "lr": 0.1}) + "\n")
    with pytest.raises(ValueError, match="plot_training_curves"):
        fe.plot_training_curves(tmp_path / "empty.jsonl", tmp_path / "none.png")


def test_training_curves_fit_the_steps_after_an_initial_spike(tmp_path, saved_figures):
    # ELBO from −5000 at step 10 to about −100: the first steps would flatten the rest.
    lines = [{"step": step, "elbo": -5000.0 if step == 10 else -100.0 - 1000.0 / step, "kl": 3.0 + step / 100}
             for step in range(10, 1010, 10)]
    lines.append({"step": 1000, "eval/elbo": -104.0})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    fe.plot_training_curves(metrics, tmp_path / "curves.png")
    figure = saved_figures["curves.png"]
    elbo, kl = figure.axes
    assert (elbo.get_title(), elbo.get_xlabel()) == ("ELBO (nats) *", "step")  # * : fitted, see the note
    assert kl.get_title() == "KL(q(z|x) ‖ p(z)) (nats)"
    low, high = elbo.get_ylim()
    # The range fits the values after the first 10% of the steps, and the last ones.
    assert -115.0 < low < -109.0 and -101.0 < high < -95.0
    assert {line.get_label() for line in elbo.get_lines()} == {"train", "eval"}
    assert [text.get_text() for text in figure.texts] == [
        "* the y-axis fits the values after the first 10% of steps: earlier ones run off the chart"]
    # A curve without a spike keeps every value in view, and a chart of such says nothing.
    assert kl.get_ylim()[0] <= 3.1 and kl.get_ylim()[1] >= 13.0
    steady = tmp_path / "steady.jsonl"
    steady.write_text("".join(json.dumps({"step": step, "elbo": -200.0 + step}) + "\n" for step in range(1, 101)))
    fe.plot_training_curves(steady, tmp_path / "steady.png")
    assert not saved_figures["steady.png"].texts
    assert saved_figures["steady.png"].axes[0].get_ylim()[0] <= -199.0


def test_kl_per_dim_chart(tmp_path):
    pixels = read_png(fe.plot_kl_per_dim(torch.tensor([0.0, 1.5, 3.0]), tmp_path / "kl.png", threshold=0.5))
    assert pixels.shape[:2] == (400, 640) and pixels.std() > 0
    with pytest.raises(ValueError, match="empty"):
        fe.plot_kl_per_dim([], tmp_path / "none.png")


def test_save_pictures_writes_every_picture(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl")
    written = fe.save_pictures(tiny_model(), BatchDataset(uniform_data(n=40)), tmp_path / "run",
                               kl_per_dim=torch.tensor([0.5, 0.1, 2.0, 0.0]), metrics_path=metrics, num_samples=8)
    assert list(written) == ["samples", "reconstructions", "traversals", "kl_per_dim", "training_curves"]
    for path in written.values():
        assert path.parent == tmp_path / "run" and path.stat().st_size > 0
        read_png(path)


# --------------------------------------------------------------------------------------
# Rate–distortion
# --------------------------------------------------------------------------------------


def train_tiny(beta, x, steps=60):
    model = tiny_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x, beta=beta).loss.backward()
        optimizer.step()
    return model


def test_sweep_betas_collects_points_and_a_larger_beta_lowers_the_rate(tmp_path):
    x = (uniform_data(n=64) > 0.5).float()
    trained = {}

    def train(beta):
        trained[beta] = train_tiny(beta, x)
        return trained[beta]

    points = fe.sweep_betas(train, [0.1, 10.0], data=x)
    assert [p.beta for p in points] == [0.1, 10.0]
    assert points[1].rate < points[0].rate and points[0].distortion < points[1].distortion
    measured = fe.elbo_estimate(trained[0.1], x)
    assert points[0].rate == pytest.approx(measured.kl.mean().item())
    assert points[0].elbo == pytest.approx(measured.mean)
    assert points[0].num_points == 64 and json.dumps(points[0].as_dict())
    pixels = read_png(fe.plot_rate_distortion(points, tmp_path / "rd.png"))
    assert pixels.shape[:2] == (400, 640)


def test_sweep_betas_takes_points_and_checks_its_arguments():
    given = fe.RatePoint(None, 3.0, 50.0, 10)
    points = fe.sweep_betas(lambda beta: given, [0.5, 2])
    assert [(p.beta, p.rate, p.distortion) for p in points] == [(0.5, 3.0, 50.0), (2.0, 3.0, 50.0)]
    with pytest.raises(ValueError, match="data="):
        fe.sweep_betas(lambda beta: tiny_model(), [1.0])
    with pytest.raises(TypeError, match="must return"):
        fe.sweep_betas(lambda beta: 1.0, [1.0])
    with pytest.raises(ValueError, match="beta"):
        fe.sweep_betas(lambda beta: given, [1.0, -2.0])
    with pytest.raises(ValueError, match="empty"):
        fe.sweep_betas(lambda beta: given, [])


# --------------------------------------------------------------------------------------
# evaluate and report.md
# --------------------------------------------------------------------------------------


def test_evaluate_runs_everything(tmp_path):
    model, x = copying_model(copies=2), uniform_data(n=30)
    results = fe.evaluate(model, x, num_samples=20, batch_size=8, iwae_num_points=12)
    json.dumps(results)
    assert results["num_points"] == 30 and results["iwae_num_points"] == 12 and results["iwae_num_samples"] == 20
    assert results["iwae"] >= results["iwae_mean_log_weight"]
    assert results["iwae_nll"] == -results["iwae"]
    assert results["iwae_bits_per_dim"] == pytest.approx(results["iwae_nll"] / (math.log(2) * 16))
    assert results["elbo_bits_per_dim"] == pytest.approx(-results["elbo"] / (math.log(2) * 16))
    assert results["active_units"] == 2 and results["latent_dim"] == 4
    assert len(results["kl_per_dim"]) == 4 and len(results["posterior_mean_variance"]) == 4
    assert 0 < results["mutual_information"] <= math.log(30)
    # The IWAE's numbers and the gap are over its 12 points, the gap from the same log-weights.
    iwae = fe.iwae_estimate(model, x, num_samples=20, batch_size=8, num_points=12)
    assert results["iwae"] == iwae.mean and results["iwae_mean_log_weight"] == iwae.elbo_mean
    assert results["iwae_mean_log_weight_stderr"] == iwae.elbo_stderr
    assert results["elbo_gap"] == pytest.approx((iwae.log_likelihood - iwae.mean_log_weight).mean().item())
    assert results["elbo_gap"] >= 0
    # The ELBO and its terms are over all 30 points, from the model's forward pass.
    elbo = fe.elbo_estimate(model, x, batch_size=8)
    assert results["elbo"] == pytest.approx(elbo.mean)
    assert results["reconstruction_nll"] == pytest.approx(elbo.nll.mean().item())
    assert results["elbo"] == pytest.approx(-(results["reconstruction_nll"] + results["kl"]))
    again = fe.evaluate(model, x, num_samples=20, batch_size=8, iwae_num_points=12)
    assert {k: v for k, v in results.items() if k != "eval_seconds"} == {
        k: v for k, v in again.items() if k != "eval_seconds"}


def shown(report: str, measure: str) -> tuple[float, str]:
    """(the number, the data points) report.md's results table shows for a measure."""
    for line in report.splitlines():
        if line.startswith(f"| {measure}"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            return float(cells[1].split()[0]), cells[2]
    raise AssertionError(f"report.md shows no {measure!r}")


def test_the_iwae_estimate_is_shown_beside_the_elbo_of_its_own_points(tmp_path):
    # The IWAE's points (the first 8) lie far from the data the rest sit on: their
    # log p(x) is far below the ELBO of all 48, which a report must not set beside it.
    model = LinearGaussianVAE(posterior_scale=0.5)
    noise = torch.randn(48, 6, generator=torch.Generator().manual_seed(2))
    x = model.bias + noise * torch.cat([torch.full((8, 1), 4.0), torch.full((40, 1), 0.1)])
    results = fe.evaluate(model, x, num_samples=16, batch_size=8, iwae_num_points=8)
    assert results["iwae"] < results["elbo"]  # different points: no comparison
    assert results["iwae_mean_log_weight"] <= results["iwae"]
    assert results["elbo_gap"] == pytest.approx(results["iwae"] - results["iwae_mean_log_weight"])
    text = fe.write_report(tmp_path / "report.md", results, pictures={}).read_text()
    iwae, iwae_points = shown(text, "IWAE estimate log p̂(x)")
    elbo, elbo_points = shown(text, "ELBO of the same points")
    gap, gap_points = shown(text, "ELBO gap")
    assert iwae_points == elbo_points == gap_points == "first 8 of 48 points"
    assert iwae >= elbo and gap == pytest.approx(iwae - elbo, abs=0.011)
    all_elbo, all_points = shown(text, "ELBO (one sample")
    assert all_points == "all 48 points" and all_elbo == pytest.approx(results["elbo"], abs=0.006)


@pytest.mark.parametrize("seed", range(4))
def test_a_displayed_iwae_estimate_is_never_below_its_elbo(tmp_path, seed):
    # Nearly equal log-weights about a rounding boundary of the display: the tightest case.
    table = -100.005 + 1e-4 * torch.randn(6, 4, generator=torch.Generator().manual_seed(seed)).double()
    iwae = fe.iwae_estimate(TableVAE(table), index_data(4), num_samples=6)
    gap = fe.elbo_gap(iwae.log_likelihood, iwae.mean_log_weight).mean().item()
    results = {"num_points": 4, "iwae_num_points": 4, "iwae_num_samples": 6, "iwae": iwae.mean,
               "iwae_mean_log_weight": iwae.elbo_mean, "elbo_gap": gap}
    text = fe.write_report(tmp_path / "report.md", results, pictures={}).read_text()
    assert shown(text, "IWAE estimate log p̂(x)")[0] >= shown(text, "ELBO of the same points")[0]
    assert shown(text, "ELBO gap")[0] >= 0


def test_provenance_names_the_backend_device_versions_and_parameters():
    model = tiny_model()
    info = fe.provenance(model)
    assert info["backend"] in fastvae.backends.available("cpu")  # resolved, never 'auto'
    assert info["backend"] == fastvae.backends.resolve("sample_gaussian", torch.device("cpu"), torch.float32)
    with fastvae.use_backend("torch"):
        assert fe.provenance(model)["backend"] == "torch"
    assert info["device"] == "cpu" and info["device_name"]
    assert info["num_parameters"] == (16 * 8 + 8) + (4 * 16 + 16)
    assert (info["fastvae_version"], info["torch_version"]) == (fastvae.__version__, torch.__version__)
    assert info["python_version"] == platform.python_version()
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    assert info["triton_version"] == triton_version
    results = fe.evaluate(model, uniform_data(n=8), num_samples=2, seed=5)
    assert {k: results[k] for k in info} == info
    assert results["eval_seed"] == 5 and results["eval_seconds"] >= 0


def test_every_results_key_is_documented_and_the_report_explains_it(tmp_path):
    results = fe.evaluate(copying_model(), uniform_data(n=10), num_samples=4)
    undocumented = set(results) - set(FIELDS)
    assert not undocumented, f"add these results keys to fastvae.eval.report.FIELDS: {sorted(undocumented)}"
    text = fe.write_report(tmp_path / "report.md", results, pictures={}).read_text()
    fields = text.split("## Fields of results.json")[1]
    for key in results:
        assert f"| `{key}` | {FIELDS[key].replace('|', chr(92) + '|')} |" in fields, key
    # A key of the caller's own that FIELDS lacks is listed as such, not hidden.
    text = fe.write_report(tmp_path / "other.md", dict(results, mine=1), pictures={}).read_text()
    assert "| `mine` | (not documented) |" in text


def test_write_report_contents(tmp_path):
    model, x = copying_model(copies=2), uniform_data(n=30)
    results = fe.evaluate(model, x, num_samples=20, batch_size=8)
    pictures = fe.save_pictures(model, x, tmp_path, kl_per_dim=torch.tensor(results["kl_per_dim"]))
    path = fe.write_report(tmp_path / "report.md", results, config={"model": "tiny", "beta": 1.0},
                           notes=["A note of the caller's."])
    text = path.read_text()
    assert f"{results['elbo']:.2f}" in text and f"{results['iwae']:.2f}" in text
    assert "| IWAE estimate log p̂(x), K = 20 |" in text and "| all 30 points |" in text
    assert f"{results['elbo_gap']:.2f}" in text
    assert "2 of 4" in text and "A note of the caller's." in text
    run = text.split("## Run")[1].split("##")[0]
    assert f"| fastvae backend | {results['backend']} |" in run
    assert f"| model parameters | {results['num_parameters']:,} |" in run
    assert f"torch {torch.__version__}" in run and "evaluation time" in run
    kl_rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith(("yes |", "no |"))]
    assert len(kl_rows) == 4
    for name in pictures:
        assert f"![{name}]({name}.png)" in text
    assert "**reconstructions.png**: reconstructions: rows of data points" in text
    assert '"beta": 1.0' in text
    no_mi = dict(results, mutual_information=None)
    assert "n/a" in fe.write_report(tmp_path / "other.md", no_mi, pictures={}).read_text()
    # A discrete model's KL is per variable, not per posterior-mean dimension: no pairing.
    per_variable = dict(results, kl_per_dim=[0.25, 0.5])
    text = fe.write_report(tmp_path / "discrete.md", per_variable, pictures={}).read_text()
    assert "| latent variable | KL (nats) |" in text and "| 1 | 0.5000 |" in text and "| active |" not in text
