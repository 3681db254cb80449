"""fastvae.eval on a model with latent groups (fastvae.models.DeepVAE): the KL and the
active units of each group in evaluate() and report.md, and the hierarchical VAE's
pictures (samples by temperature, reconstructions from the top groups, KL per group).

The model is a tiny DeepVAE (8×8 images, groups at 1×1, 4×4 and 8×8).  For the active
units to say something, its top group's posterior head is replaced by one that reads its
mean straight from the bottom-up activations (so it moves with x), and the middle
group's head is zeroed (q = N(0, I) for every x: no active unit).  A unit of a group is an
element of its latent map; a model whose posterior means are set shows a group active by
its spatial pattern alone."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from fastvae import eval as fe
from fastvae.eval.report import FIELDS
from fastvae.models import DeepVAE, MLPVAE
from tests.test_eval import find_grid, read_png, texts

GROUP_KEYS = ("num_groups", "group_resolutions", "kl_per_group", "kl_per_group_fraction", "units_per_group",
              "active_units_per_group", "active_groups")
WIDTH, CHANNELS = 8, 2


class TopActivationsPosterior(nn.Module):
    """A posterior head whose mean is ``gain`` × the first channels of the bottom-up
    activations (its input is [h, a] along channels) and whose log-variance is 0."""

    def __init__(self, gain=30.0):
        super().__init__()
        self.gain = gain

    def forward(self, inputs):
        mean = self.gain * inputs[:, WIDTH:WIDTH + CHANNELS]
        return torch.cat([mean, torch.zeros_like(mean)], dim=1)


def deep_model(shaped=True):
    torch.manual_seed(0)
    model = DeepVAE(data_shape=(1, 8, 8), resolutions=(8, 4, 1), width=WIDTH, encoder_blocks=(1, 1, 1),
                    decoder_groups=(1, 1, 1), latent_channels=CHANNELS)
    if shaped:
        model.groups[0].posterior = TopActivationsPosterior()
        with torch.no_grad():
            model.groups[1].posterior.c4.weight.zero_()
            model.groups[1].posterior.c4.bias.zero_()
    return model


def image_data(n=24):
    """Binary 8×8 images, each mostly dark or mostly bright (so the top group has
    something to read)."""
    generator = torch.Generator().manual_seed(1)
    brightness = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < 0.5, 0.1, 0.9)
    return (torch.rand(n, 1, 8, 8, generator=generator) < brightness).float()


@pytest.fixture(scope="module")
def evaluated():
    model, x = deep_model(), image_data()
    return model, x, fe.evaluate(model, x, num_samples=3, batch_size=10)


def test_evaluate_reports_the_kl_and_active_units_of_each_group(evaluated):
    model, x, results = evaluated
    json.dumps(results)
    assert results["num_groups"] == 3 and results["group_resolutions"] == [1, 4, 8]
    kl_per_dim = torch.tensor(results["kl_per_dim"], dtype=torch.float64)
    # The groups' KL sums their channels' entries of the ELBO pass's kl_per_dim.
    assert results["kl_per_group"] == pytest.approx(kl_per_dim.view(3, CHANNELS).sum(1).tolist(), rel=1e-12)
    assert sum(results["kl_per_group"]) == pytest.approx(kl_per_dim.sum().item(), rel=1e-12)
    assert sum(results["kl_per_group"]) == pytest.approx(results["kl"], rel=1e-5)
    assert sum(results["kl_per_group_fraction"]) == pytest.approx(1.0)
    assert results["kl_per_group_fraction"] == pytest.approx(
        [kl / sum(results["kl_per_group"]) for kl in results["kl_per_group"]])
    # A unit is an element of a group's [C, r, r] map: C·r² of them per group.
    assert results["units_per_group"] == [CHANNELS * 1, CHANNELS * 16, CHANNELS * 64]
    assert sum(results["active_units_per_group"]) <= sum(results["units_per_group"])
    # The counts are those of the elements' variance over all points, taken at once here.
    with torch.no_grad():
        maps = [torch.cat(parts) for parts in zip(*(model.posterior_mean_groups(x[i:i + 7]) for i in range(0, 24, 7)))]
    direct = [int((m.double().flatten(1).var(dim=0) > results["active_threshold"]).sum()) for m in maps]
    assert results["active_units_per_group"] == direct
    # The top group reads x: active; the middle one's head is zeroed: no active unit.
    assert results["active_units_per_group"][0] == CHANNELS and results["active_units_per_group"][1] == 0
    assert results["active_groups"] == sum(1 for units in results["active_units_per_group"] if units > 0)
    assert set(GROUP_KEYS) <= set(FIELDS)
    # From the same passes as the rest: the other keys are those of evaluate() of any model.
    elbo = fe.elbo_estimate(model, x, batch_size=10)
    assert results["kl_per_dim"] == elbo.kl_per_dim.tolist()


def checkerboard(side):
    """[side, side] of ±1 with a mean of 0 over the map."""
    index = torch.arange(side)
    return ((index[:, None] + index[None, :]) % 2 * 2 - 1).float()


def spatial_model():
    """A DeepVAE whose posterior means are set (``posterior_mean_groups`` replaced on the
    instance; its ``posterior_mean`` averages them): the 1×1 top group is constant, the
    4×4 group a fixed checkerboard whatever x, and the 8×8 group a checkerboard whose sign
    flips with x's brightness.  Every channel's mean over its map is then the same for all
    x, yet the 8×8 group's elements move with x."""
    model = deep_model(shaped=False)

    def posterior_mean_groups(x):
        batch = x.shape[0]
        sign = torch.where(x.mean((1, 2, 3)) > 0.5, 1.0, -1.0).view(batch, 1, 1, 1)
        return [torch.full((batch, CHANNELS, 1, 1), 0.3), checkerboard(4).expand(batch, CHANNELS, 4, 4).clone(),
                sign * checkerboard(8).expand(batch, CHANNELS, 8, 8)]

    model.posterior_mean_groups = posterior_mean_groups
    return model


def test_a_group_whose_information_is_in_its_spatial_pattern_is_active():
    model, x = spatial_model(), image_data()
    sign = torch.where(x.mean((1, 2, 3)) > 0.5, 1.0, -1.0).double()
    assert 0 < (sign > 0).sum() < len(sign)
    units = fe.group_active_units(model, x, batch_size=10)
    assert units.units_per_group == [CHANNELS, CHANNELS * 16, CHANNELS * 64]
    assert [tuple(v.shape) for v in units.variances] == [(CHANNELS, 1, 1), (CHANNELS, 4, 4), (CHANNELS, 8, 8)]
    assert torch.allclose(units.variances[2], torch.full((CHANNELS, 8, 8), sign.var().item(), dtype=torch.float64))
    # The 4×4 group's elements differ from each other but not from x to x: inactive.
    assert units.variances[1].abs().max() < 1e-12
    assert units.active_units_per_group == [0, 0, CHANNELS * 64] and units.active_groups == 1
    # The channels' means over their maps do not move: counted by channel, nothing is active.
    assert fe.active_units(model, x).count == 0
    results = fe.evaluate(model, x, num_samples=2, batch_size=10)
    assert results["active_units"] == 0
    assert results["active_units_per_group"] == [0, 0, CHANNELS * 64] and results["active_groups"] == 1
    assert results["units_per_group"] == units.units_per_group
    assert sum(results["active_units_per_group"]) <= sum(results["units_per_group"])


def test_save_pictures_marks_the_groups_by_their_active_elements(tmp_path, saved_figures):
    model, x = spatial_model(), image_data(12)
    fe.save_pictures(model, x, tmp_path / "measured", num_samples=4)
    bars = saved_figures["kl_per_group.png"].axes[0].patches[:3]
    assert [bar.get_hatch() for bar in bars] == ["//", "//", None]
    # Given the evaluation's counts, it draws those.
    fe.save_pictures(model, x, tmp_path / "given", num_samples=4, active_units_per_group=[1, 0, 0])
    bars = saved_figures["kl_per_group.png"].axes[0].patches[:3]
    assert [bar.get_hatch() for bar in bars] == [None, "//", "//"]


def test_group_active_units_checks_its_arguments():
    x = image_data(4)
    with pytest.raises(TypeError, match="group_active_units: model has no latent groups"):
        fe.group_active_units(MLPVAE(data_shape=(1, 8, 8), hidden_sizes=(4,), latent_dim=2), x)
    model = deep_model(shaped=False)
    with pytest.raises(ValueError, match="group_active_units: a variance over the data needs at least 2"):
        fe.group_active_units(model, x[:1])
    with pytest.raises(ValueError, match="group_active_units: threshold"):
        fe.group_active_units(model, x, threshold=-1.0)
    model.posterior_mean_groups = lambda x: [torch.zeros(x.shape[0], CHANNELS, 2, 2)] * 3
    with pytest.raises(ValueError, match=r"group_active_units: model.posterior_mean_groups returned shapes"):
        fe.group_active_units(model, x)


def test_a_model_without_groups_gets_no_group_keys(tmp_path):
    model = MLPVAE(data_shape=(16,), hidden_sizes=(8,), latent_dim=3)
    results = fe.evaluate(model, image_data(12).view(12, 64)[:, :16], num_samples=2)
    assert not set(GROUP_KEYS) & set(results)
    assert not fe.has_latent_groups(model) and fe.has_latent_groups(deep_model(shaped=False))
    text = fe.write_report(tmp_path / "report.md", results, pictures={}).read_text()
    assert "## KL per group" not in text and "| active groups |" not in text


def group_rows(text):
    """{group index: its cells} of report.md's KL-per-group table."""
    section = text.split("## KL per group")[1].split("## KL per dimension")[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in section.splitlines()
            if line.startswith("| ")]
    assert rows[0] == ["group", "resolution", "KL (nats)", "fraction of the KL", "active units", "active"]
    return {int(cells[0]): cells for cells in rows[1:]}


def test_report_shows_the_kl_per_group_and_a_group_without_active_units(tmp_path, evaluated):
    _, _, results = evaluated
    text = fe.write_report(tmp_path / "report.md", results, pictures={}).read_text()
    rows = group_rows(text)
    assert sorted(rows) == [0, 1, 2]
    assert rows[0][1:] == ["1×1", f"{results['kl_per_group'][0]:.4f}",
                           f"{100 * results['kl_per_group_fraction'][0]:.1f}%", f"{CHANNELS} of {CHANNELS}", "yes"]
    assert rows[1][1] == "4×4" and rows[1][4:] == [f"0 of {CHANNELS * 16}", "no"]
    assert rows[2][1] == "8×8" and rows[2][4] == f"{results['active_units_per_group'][2]} of {CHANNELS * 64}"
    assert f"| active groups | {results['active_groups']} of 3 (groups with an active unit" in text
    assert "The levels that carry information (a group with an active unit): 1×1 (group 0)" in text
    assert "Carrying no information (no active unit): 4×4 (group 1)" in text
    # The KL per dimension keeps its per-channel table.
    assert "| dimension | KL (nats) |" in text.split("## KL per dimension")[1]


def test_report_names_the_levels_from_results_alone(tmp_path):
    results = {"num_points": 10, "latent_dim": 8, "active_threshold": 0.01, "num_groups": 4,
               "group_resolutions": [1, 4, 4, 8], "kl_per_group": [3.0, 0.0, 1.0, 0.0],
               "kl_per_group_fraction": [0.75, 0.0, 0.25, 0.0], "units_per_group": [2, 32, 32, 128],
               "active_units_per_group": [2, 0, 1, 0], "active_groups": 2,
               "kl_per_dim": [1.5, 1.5, 0, 0, 0.5, 0.5, 0, 0]}
    text = fe.write_report(tmp_path / "report.md", results, pictures={}).read_text()
    rows = group_rows(text)
    assert [rows[g][5] for g in range(4)] == ["yes", "no", "yes", "no"]
    assert rows[0][2:5] == ["3.0000", "75.0%", "2 of 2"]
    assert [rows[g][4] for g in range(1, 4)] == ["0 of 32", "1 of 32", "0 of 128"]
    assert "carry information (a group with an active unit): 1×1 (group 0), 4×4 (group 2)." in text
    assert "Carrying no information (no active unit): 4×4 (group 1), 8×8 (group 3)." in text
    assert "spatial pattern" not in text
    top_silent = dict(results, active_units_per_group=[0, 0, 1, 0], active_groups=1)
    text = fe.write_report(tmp_path / "top.md", top_silent, pictures={}).read_text()
    assert group_rows(text)[0][5] == "no"
    assert "No level" not in text and "Carrying no information (no active unit): 1×1 (group 0), " in text
    unmeasured = dict(results, active_units_per_group=None, active_groups=None)
    text = fe.write_report(tmp_path / "none.md", unmeasured, pictures={}).read_text()
    assert [group_rows(text)[g][5] for g in range(4)] == ["n/a"] * 4
    assert "| active groups | n/a |" in text and "not measured" in text


def test_group_diagnostics_checks_its_arguments():
    model = deep_model(shaped=False)
    with pytest.raises(ValueError, match="group_diagnostics: kl_per_dim has 5 entries"):
        fe.group_diagnostics(model, torch.zeros(5))
    with pytest.raises(ValueError, match="active_units_per_group"):
        fe.group_diagnostics(model, torch.zeros(6), [1, 0])
    with pytest.raises(ValueError, match=r"between 0 and its group's units \[2, 32, 128\]"):
        fe.group_diagnostics(model, torch.zeros(6), [1, 33, 0])
    with pytest.raises(TypeError, match="no latent groups"):
        fe.group_diagnostics(MLPVAE(data_shape=(4,), hidden_sizes=(4,), latent_dim=2), torch.zeros(2))
    zero = fe.group_diagnostics(model, torch.zeros(6))
    assert zero["kl_per_group_fraction"] == [None] * 3 and zero["active_groups"] is None


def test_spread_group_counts_keep_the_ends_and_the_middle():
    assert fe.spread_group_counts(3) == [0, 1, 2, 3]
    assert fe.spread_group_counts(6) == list(range(7))
    for groups in (7, 8, 20, 33):
        counts = fe.spread_group_counts(groups)
        assert len(counts) == 7 and counts == sorted(set(counts))
        assert {0, 1, groups // 2, groups} <= set(counts) and max(counts) == groups


def test_save_pictures_writes_the_group_pictures_and_no_traversals(tmp_path, evaluated):
    model, x, results = evaluated
    written = fe.save_pictures(model, x, tmp_path, kl_per_dim=torch.tensor(results["kl_per_dim"]), num_samples=8,
                               active_units_per_group=results["active_units_per_group"])
    assert list(written) == ["samples", "samples_by_temperature", "reconstructions", "group_reconstructions",
                             "kl_per_dim", "kl_per_group"]
    assert not (tmp_path / "traversals.png").exists()
    assert read_png(written["kl_per_group"]).shape[:2] == (400, 640)
    # 5 temperatures × 8 samples and the data with 4 group counts × 6 points, 8×8 each.
    for name, rows, columns in (("samples_by_temperature", 5, 8), ("group_reconstructions", 5, 6)):
        pixels = read_png(written[name])
        grid_shape = (rows * 10 + 2, columns * 10 + 2)
        assert pixels.ndim == 2 and pixels.shape[0] > grid_shape[0] and pixels.shape[1] > grid_shape[1]
    text = fe.write_report(tmp_path / "report.md", results).read_text()
    for name in written:
        assert f"![{name}]({name}.png)" in text
    assert "**group_reconstructions.png**: what each level encodes" in text
    assert "**samples_by_temperature.png**: samples at lower temperatures" in text
    assert "**kl_per_group.png**: the KL of each latent group" in text


def test_samples_by_temperature_rows_share_their_noise_and_are_labelled(tmp_path, label_figures):
    model = deep_model()
    temperatures = (1.0, 0.8, 0.0)
    pixels = read_png(fe.save_samples_by_temperature(model, tmp_path / "t.png", temperatures, num_columns=4, seed=5))
    with torch.no_grad():
        rows = [model.sample(4, torch.Generator().manual_seed(5), temperature=t) for t in temperatures]
    grid = fe.to_uint8(fe.image_grid(torch.cat(rows), ncol=4)[0]).numpy()
    assert grid.shape == (3 * 10 + 2, 4 * 10 + 2)
    top, left = find_grid(pixels, grid)
    assert top > 0 and left > 0
    assert texts(label_figures[-1])[1:] == ["t = 1.0", "t = 0.8", "t = 0.0"]
    assert not torch.equal(rows[0], rows[1])
    assert torch.equal(rows[2][0], rows[2][3])  # t = 0: the priors' means, no noise
    again = read_png(fe.save_samples_by_temperature(model, tmp_path / "u.png", temperatures, num_columns=4, seed=5))
    assert np.array_equal(pixels, again)
    with pytest.raises(TypeError, match="save_samples_by_temperature: the model has no latent groups"):
        fe.save_samples_by_temperature(MLPVAE(data_shape=(4,), hidden_sizes=(4,), latent_dim=2), tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"save_samples_by_temperature: temperatures\[1\] must be finite and >= 0"):
        fe.save_samples_by_temperature(model, tmp_path / "bad.png", (1.0, -0.5))


def test_group_reconstructions_keep_the_top_groups(tmp_path, label_figures):
    model, x = deep_model(), image_data(6)
    pixels = read_png(fe.save_group_reconstructions(model, x, tmp_path / "g.png", seed=2))
    counts = [0, 1, 2, 3]
    with torch.no_grad():
        rows = [model.reconstruct(x, groups=k, generator=torch.Generator().manual_seed(2)) for k in counts]
        full = model.reconstruct(x)
    grid = fe.to_uint8(fe.image_grid(torch.cat([x] + rows), ncol=6)[0]).numpy()
    top, left = find_grid(pixels, grid)
    assert top > 0 and left > 0

    def row(index):
        return pixels[top + 2 + 10 * index:top + 10 + 10 * index, left:left + grid.shape[1]]

    def tiles(images):
        return fe.to_uint8(fe.image_grid(images, ncol=6)[0]).numpy()[2:10]

    assert np.array_equal(row(0), tiles(x))
    # All groups kept: the reconstruction at E_q[z|x], exactly; none kept: an
    # unconditional sample, which differs from it.
    assert np.array_equal(row(4), tiles(full))
    assert not np.array_equal(row(1), row(4))
    assert not torch.equal(rows[0], full)
    assert texts(label_figures[-1])[1:] == ["data", "top 0 of 3 groups", "top 1 of 3 groups", "top 2 of 3 groups",
                                            "top 3 of 3 groups"]
    with pytest.raises(ValueError, match="group_counts"):
        fe.save_group_reconstructions(model, x, tmp_path / "bad.png", group_counts=[4])


def test_kl_per_group_chart_marks_inactive_groups(tmp_path, saved_figures):
    pixels = read_png(fe.plot_kl_per_group([3.0, 0.5, 1.5], tmp_path / "kl.png", [1, 4, 8], [True, False, True]))
    assert pixels.shape[:2] == (400, 640)
    axes = saved_figures["kl.png"].axes[0]
    bars = axes.patches[:3]
    assert [bar.get_height() for bar in bars] == [3.0, 0.5, 1.5]
    assert [bar.get_hatch() for bar in bars] == [None, "//", None]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["0\n1×1", "1\n4×4", "2\n8×8"]
    assert [text.get_text() for text in axes.texts] == ["60%", "10%", "30%"]
    assert read_png(fe.plot_kl_per_group([0.2, 9.8], tmp_path / "small.png")).shape[:2] == (400, 640)
    assert [text.get_text() for text in saved_figures["small.png"].axes[0].texts] == ["2.0%", "98%"]
    assert "inactive" not in saved_figures["small.png"].axes[0].get_title()
    assert "1 of 3 groups inactive" in axes.get_title()
    with pytest.raises(ValueError, match="resolutions has 2 entries"):
        fe.plot_kl_per_group([1.0, 2.0, 3.0], tmp_path / "bad.png", [1, 4])


def test_save_pictures_measures_the_groups_itself_without_the_evaluations_numbers(tmp_path, saved_figures):
    model, x = deep_model(), image_data(12)
    written = fe.save_pictures(model, x, tmp_path, num_samples=4, seed=3)
    assert list(written) == ["samples", "samples_by_temperature", "reconstructions", "group_reconstructions",
                             "kl_per_group"]
    expected = fe.group_diagnostics(model, fe.elbo_estimate(model, x, seed=3).kl_per_dim,
                                    fe.group_active_units(model, x).active_units_per_group)
    bars = saved_figures["kl_per_group.png"].axes[0].patches[:3]
    assert [bar.get_height() for bar in bars] == pytest.approx(expected["kl_per_group"])
    assert [bar.get_hatch() is None for bar in bars] == [units > 0 for units in expected["active_units_per_group"]]
