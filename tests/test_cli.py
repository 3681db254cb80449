"""The ``fastvae`` command: a tiny ``fastvae train`` leaves the whole run folder and its
ELBO improves; ``--config`` files with flags overriding them; ``--resume`` continues a
stopped run bit for bit; ``eval`` and ``sample`` on its checkpoint; a two-β ``sweep``;
clear errors; ``python -m fastvae``; and ``fastvae train`` under torchrun (2 processes,
gloo).  Runs are in-process (``cli.main``) on tiny sprites and a tiny conv model."""
import contextlib
import io
import json
import math
import os
import platform
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastvae
from fastvae import cli
from fastvae.cli.options import OPTIONS, read_toml
from fastvae.cli.train import evaluation_seed, resolve_settings
from fastvae.eval.report import FIELDS
from fastvae.eval import image_grid
from fastvae.train import load_checkpoint, read_metrics

REPO = Path(__file__).resolve().parents[1]
# A conv VAE small enough that a step takes milliseconds on a CPU.
TINY_MODEL = ["--channels", "4,8", "--hidden-dim", "16", "--latent-dim", "3"]
TINY_DATA = ["--num-train", "64", "--num-test", "16"]
TINY_EVAL = ["--iwae-samples", "4", "--iwae-points", "8", "--eval-batch-size", "16"]
QUIET = ["--no-progress", "--no-tensorboard"]
TRAIN_STEPS = 40
PICTURES = ("samples", "reconstructions", "traversals", "kl_per_dim", "training_curves")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def tiny_train(out: Path, *extra: str) -> list[str]:
    return ["train", *TINY_DATA, *TINY_MODEL, *TINY_EVAL, *QUIET, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run from a TOML file, with flags overriding some of its keys."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.toml"
    config.write_text('# a tiny run\nsteps = 1000\nbatch-size = 8\nlatent_dim = 5\nlr = 3e-3\nlog_every = 5\n'
                      'channels = "4,8"\n')
    out = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(tiny_train(out, "--config", str(config), "--steps", str(TRAIN_STEPS), "--batch-size", "16")) == 0
    (root / "printed.txt").write_text(printed.getvalue())
    return out


def printed_lines(run: Path) -> list[str]:
    """What the run fixture's command printed."""
    return (run.parent / "printed.txt").read_text().splitlines()


def test_train_leaves_the_whole_run_folder(run):
    for name in ("config.toml", "metrics.jsonl", "results.json", "report.md"):
        assert (run / name).is_file(), name
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [f"step_{TRAIN_STEPS:08d}.pt"]
    # The samples: 64 of 1×64×64 in 8 columns, as image_grid lays them out.
    grid = image_grid(torch.zeros(64, 1, 64, 64), ncol=8)
    assert png_size(run / "samples.png") == (grid.shape[2], grid.shape[1])
    for name in PICTURES:
        width, height = png_size(run / f"{name}.png")
        assert width >= 64 and height >= 64, name


def test_config_file_and_flags_resolve_into_config_toml(run):
    saved = read_toml(run / "config.toml")
    # From the file: latent_dim, lr, log_every, channels; from the flags: steps,
    # batch_size (overriding the file's); from the data set's defaults: model, likelihood.
    assert (saved["latent_dim"], saved["lr"], saved["log_every"], saved["channels"]) == (3, 3e-3, 5, [4, 8])
    assert (saved["steps"], saved["batch_size"]) == (TRAIN_STEPS, 16)
    assert (saved["data"], saved["model"], saved["likelihood"], saved["binarize"]) == ("sprites", "conv",
                                                                                     "bernoulli", "none")
    assert "epochs" not in saved and "out" not in saved
    # config.toml holds every setting: rerunning it resolves to the same run.
    assert resolve_settings({}, saved) == {**resolve_settings({}, {}), **saved, "epochs": None}


def test_training_improves_the_elbo_and_the_report_states_it(run):
    events = read_metrics(run / "metrics.jsonl")
    train_elbo = [e["elbo"] for e in events if "elbo" in e and "loss" in e]
    assert len(train_elbo) == TRAIN_STEPS // 5
    assert train_elbo[-1] > train_elbo[0] + 100, train_elbo  # nats: a 64×64 image starts at ~2800
    results = json.loads((run / "results.json").read_text())
    assert results["elbo"] > train_elbo[0] + 100
    assert results["iwae_num_samples"] == 4 and results["iwae_num_points"] == 8 and results["num_points"] == 16
    # The IWAE estimate is never below the ELBO from the same log-weights.
    assert results["iwae"] >= results["iwae_mean_log_weight"]
    assert results["latent_dim"] == 3 and len(results["kl_per_dim"]) == 3
    iwae_events = [e for e in events if "test/iwae_nll" in e]
    assert iwae_events[-1]["step"] == TRAIN_STEPS and iwae_events[-1]["test/iwae"] == results["iwae"]

    report = (run / "report.md").read_text()
    assert f"| {results['elbo']:.2f} ± " in report and "| all 16 test points |" in report
    assert "| IWAE estimate log p̂(x), K = 4 |" in report and "| first 8 of 16 test points |" in report
    assert f"| {results['iwae_mean_log_weight']:.2f} ± " in report
    assert f"{results['elbo_gap']:.2f}" in report and "ELBO gap" in report
    assert f"{results['active_units']} of 3" in report
    assert "## KL per dimension" in report and report.count("| yes |") + report.count("| no |") == 3
    for name in PICTURES:
        assert f"({name}.png)" in report


def test_the_summary_pairs_the_iwae_estimate_with_the_elbo_of_its_own_points(run):
    results = json.loads((run / "results.json").read_text())
    same, every = [line for line in printed_lines(run) if "test points:" in line]
    assert same.startswith("first 8 of 16 test points: IWAE log p(x) >= ")
    iwae = float(re.search(r"IWAE log p\(x\) >= (\S+) nats", same).group(1))
    elbo = float(re.search(r"ELBO (\S+) nats \(same log-weights\)", same).group(1))
    gap = float(re.search(r"ELBO gap (\S+) nats", same).group(1))
    assert iwae >= elbo and gap == pytest.approx(iwae - elbo, abs=0.0011)
    assert (iwae, elbo) == (round(results["iwae"], 3), round(results["iwae_mean_log_weight"], 3))
    assert every.startswith(f"all 16 test points: ELBO {results['elbo']:.3f} nats")


def test_the_report_elbo_is_the_training_lines_test_elbo(run):
    """The same checkpoint's test ELBO, in the training line, metrics.jsonl, results.json
    and report.md: one number (the trainer's evaluation batches and noise seed)."""
    results = json.loads((run / "results.json").read_text())
    logged = [e["eval/elbo"] for e in read_metrics(run / "metrics.jsonl") if "eval/elbo" in e]
    assert results["elbo"] == pytest.approx(logged[-1], rel=1e-12)
    assert results["training_log_elbo"] == logged[-1]
    training_line = [line for line in printed_lines(run) if line.startswith(f"step {TRAIN_STEPS}: train ELBO")]
    assert training_line[-1].endswith(f"test ELBO {results['elbo']:.3f}")
    report = (run / "report.md").read_text()
    assert "is the trainer's final test ELBO (metrics.jsonl `eval/elbo` at step 40): the same points" in report


def test_a_weight_average_run_reports_its_own_test_elbo(tmp_path, capsys):
    out = tmp_path / "ema"
    assert cli.main(tiny_train(out, "--steps", "6", "--batch-size", "8", "--log-every", "3", "--ema-decay", "0.9",
                               "--no-pictures")) == 0
    assert "(one sample per point; of the weight average; the training line's test ELBO is the trained weights')" in (
        capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    last = [e for e in read_metrics(out / "metrics.jsonl") if "eval_ema/elbo" in e][-1]
    assert results["evaluated"] == "ema" and results["elbo"] == pytest.approx(last["eval_ema/elbo"], rel=1e-12)
    report = (out / "report.md").read_text()
    assert "metrics.jsonl `eval_ema/elbo` at step 6): the same points" in report
    assert f"the trained weights' test ELBO, {last['eval/elbo']:.3f}; this report judges the weight average" in report


def test_the_run_says_where_and_how_it_ran(run):
    results = json.loads((run / "results.json").read_text())
    assert results["backend"] in fastvae.backends.available("cpu")  # resolved, not 'auto'
    assert results["device"] == "cpu" and results["device_name"]
    assert (results["fastvae_version"], results["torch_version"]) == (fastvae.__version__, torch.__version__)
    assert results["python_version"] == platform.python_version()
    checkpoint = load_checkpoint(run / "checkpoints" / f"step_{TRAIN_STEPS:08d}.pt")
    assert results["num_parameters"] == sum(p.numel() for p in checkpoint.model.parameters())
    assert results["step"] == TRAIN_STEPS and results["evaluated"] == "weights"
    assert 0 < results["train_seconds"] and 0 <= results["eval_seconds"]
    assert results["train_seconds"] == pytest.approx(checkpoint.state["trainer"]["elapsed"], abs=0.5)
    assert results["seed"] == 0 and results["eval_seed"] == evaluation_seed(0)
    run_table = (run / "report.md").read_text().split("## Run")[1].split("\n## ")[0]
    for row in (f"| fastvae backend | {results['backend']} |", f"| model parameters | {results['num_parameters']:,} |",
                f"| training time | {TRAIN_STEPS} steps, ", f"torch {torch.__version__}", "| evaluation time |",
                "| seed | 0 (evaluation noise seed "):
        assert row in run_table, row


def test_every_results_json_key_is_explained_in_the_report(run):
    results = json.loads((run / "results.json").read_text())
    undocumented = set(results) - set(FIELDS)
    assert not undocumented, f"add these results.json keys to fastvae.eval.report.FIELDS: {sorted(undocumented)}"
    # Only `fastvae eval`'s checkpoint is not a key of a training run's results.
    assert set(FIELDS) - set(results) == {"checkpoint"}
    fields = (run / "report.md").read_text().split("## Fields of results.json")[1]
    for key in results:
        assert f"| `{key}` | " in fields, key


def test_resume_continues_bit_for_bit(tmp_path):
    steps = ["--steps", "8", "--batch-size", "8", "--log-every", "2", "--no-pictures"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main(tiny_train(whole, *steps)) == 0
    assert cli.main(tiny_train(parts, *steps, "--stop-at", "3")) == 0
    assert not (parts / "report.md").exists()
    assert [p.name for p in (parts / "checkpoints").iterdir()] == ["step_00000003.pt"]
    assert cli.main(["train", "--out", str(parts), "--resume"]) == 0

    def final(folder):
        return torch.load(folder / "checkpoints" / "step_00000008.pt", weights_only=True)

    for key, value in final(whole)["model"].items():
        assert torch.equal(value, final(parts)["model"][key]), key
    losses = [[e["loss"] for e in read_metrics(f / "metrics.jsonl") if "loss" in e] for f in (whole, parts)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert json.loads((whole / "results.json").read_text())["elbo"] == json.loads(
        (parts / "results.json").read_text())["elbo"]


def test_eval_and_sample_on_the_checkpoint(run, tmp_path, capsys):
    checkpoint = run / "checkpoints" / f"step_{TRAIN_STEPS:08d}.pt"
    assert cli.main(["eval", str(run), "--iwae-samples", "6", "--num-points", "5", "--batch-size", "3"]) == 0
    folder = run / "eval-test-k6"
    results = json.loads((folder / "results.json").read_text())
    assert results["iwae_num_samples"] == 6 and results["iwae_num_points"] == 5 and results["step"] == TRAIN_STEPS
    assert results["data"] == "sprites" and results["checkpoint"] == str(checkpoint)
    assert results["iwae"] >= results["iwae_mean_log_weight"]
    assert results["seed"] == 0 and results["eval_seed"] == evaluation_seed(0) and results["train_seconds"] > 0
    assert not set(results) - set(FIELDS)
    report = (folder / "report.md").read_text()
    assert "| IWAE estimate log p̂(x), K = 6 |" in report and "| all 5 test points |" in report
    assert "all 5 test points: IWAE log p(x) >=" in capsys.readouterr().out

    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for out in (first, second):
        assert cli.main(["sample", str(checkpoint), "--num", "6", "--ncol", "3", "--seed", "4", "--out", str(out)]) == 0
    grid = image_grid(torch.zeros(6, 1, 64, 64), ncol=3)
    assert png_size(first) == (grid.shape[2], grid.shape[1])
    assert first.read_bytes() == second.read_bytes()
    assert cli.main(["sample", str(checkpoint), "--num", "6", "--seed", "5", "--out", str(second)]) == 0
    assert first.read_bytes() != second.read_bytes()


def test_sweep_over_two_betas(tmp_path):
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--betas", "0.1,8", "--steps", "25", "--batch-size", "16", *TINY_DATA, *TINY_MODEL,
                     *TINY_EVAL, *QUIET, "--no-pictures", "--out", str(out)]) == 0
    for beta in ("0.1", "8"):
        assert (out / f"beta-{beta}" / "report.md").is_file()
        assert read_toml(out / f"beta-{beta}" / "config.toml")["beta"] == float(beta)
    points = {p["beta"]: p for p in json.loads((out / "rate_distortion.json").read_text())}
    assert set(points) == {0.1, 8.0}
    # A heavier KL weight buys a lower rate at a higher distortion.
    assert points[8.0]["rate"] < points[0.1]["rate"]
    assert points[8.0]["distortion"] > points[0.1]["distortion"]
    assert png_size(out / "rate_distortion.png") == (640, 400)
    table = (out / "rate_distortion.md").read_text()
    # The IWAE estimate sits beside the ELBO of its own points, and says which points.
    assert "over the first 8 of 16 test points, beside the ELBO of those same points" in table
    assert points[8.0]["iwae"] >= points[8.0]["iwae_mean_log_weight"] and points[8.0]["iwae_num_points"] == 8
    assert "| 0.1 |" in table and "| 8 |" in table and "[beta-8](beta-8/report.md)" in table
    assert read_toml(out / "sweep.toml", "sweep", allowed=("betas",))["betas"] == [0.1, 8.0]


def test_settings_defaults_per_data_set():
    sprites = resolve_settings({}, {})
    assert (sprites["data"], sprites["model"], sprites["likelihood"], sprites["steps"]) == ("sprites", "conv",
                                                                                           "bernoulli", 1500)
    cifar = resolve_settings({"data": "cifar10"}, {})
    assert (cifar["model"], cifar["likelihood"], cifar["binarize"]) == ("conv", "discretized_logistic_mixture", "none")
    mnist = resolve_settings({"data": "mnist"}, {})
    assert (mnist["model"], mnist["likelihood"], mnist["binarize"], mnist["epochs"]) == ("mlp", "bernoulli",
                                                                                         "dynamic", 10)
    # A run length given in a later layer replaces the other one.
    assert resolve_settings({"epochs": 2}, {"steps": 9})["steps"] is None
    # Every option is a flag of `fastvae train`, and its help names it.
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in OPTIONS:
        assert option.flag in help_text, option.flag


@pytest.mark.parametrize("argv, message", [
    (["train", "--lattent-dim", "3"], "unrecognized arguments: --lattent-dim"),
    (["train", "--batch-size", "many"], "invalid int value: 'many'"),
    (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_errors_name_what_to_change(tmp_path):
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("lattent_dim = 3\n")
    bad_value = tmp_path / "value.toml"
    bad_value.write_text('batch_size = "many"\n')

    def message(argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        return str(exit_info.value.code)

    assert "unknown key 'lattent_dim'" in message(["train", "--config", str(bad_key)])
    assert "batch_size must be an integer" in message(["train", "--config", str(bad_value)])
    assert "no config file" in message(["train", "--config", str(tmp_path / "missing.toml")])
    assert "--channels does not apply to the 'mlp' model" in message(
        ["train", "--model", "mlp", "--channels", "4", "--num-train", "16", "--out", str(tmp_path / "r")])
    assert "no checkpoint file or run folder" in message(["eval", str(tmp_path / "nothing.pt")])
    assert "no checkpoints/step_*.pt" in message(["sample", str(tmp_path)])
    assert "--resume continues a run folder" in message(["train", "--resume"])
    assert "holds no config.toml" in message(["train", "--resume", "--out", str(tmp_path)])
    assert "unknown benchmark 'ops'" in message(["bench", "ops"])
    assert "--betas" in message(["sweep", "--steps", "2"])


def test_a_fresh_run_never_mixes_into_another(run, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(tiny_train(run, "--steps", "2"))
    text = str(exit_info.value.code)
    assert "already holds a run" in text and "--resume" in text and "--overwrite" in text
    assert (run / "report.md").is_file()


def test_bench_command_finds_the_benchmarks(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "train", "--help"])
    assert exit_info.value.code == 0
    assert "--providers" in capsys.readouterr().out


def test_python_dash_m_fastvae_help():
    for argv in ([], ["train"]):
        completed = subprocess.run([sys.executable, "-m", "fastvae", *argv, "--help"], capture_output=True,
                                   text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr
        assert "usage: fastvae" in completed.stdout
    assert "train" in completed.stdout and "--iwae-samples" in completed.stdout


def test_train_under_torchrun_two_processes(tmp_path):
    """`fastvae train` under torchrun on gloo: both processes train, rank 0 writes the
    run folder, and the process group is left cleanly (exit status 0)."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m",
               "fastvae", *tiny_train(out, "--steps", "6", "--batch-size", "8", "--log-every", "3", "--no-pictures")]
    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, f"{finished.stdout}\n{finished.stderr}"
    assert finished.stdout.count("run folder:") == 1  # only rank 0 reports
    assert (out / "report.md").is_file() and (out / "checkpoints" / "step_00000006.pt").is_file()
    assert json.loads((out / "results.json").read_text())["step"] == 6
    # Each process drew its own noise for its half of the trainer's test ELBO: the final
    # one differs from it, and both the summary and the report say why.
    assert "with other noise: report.md says why" in finished.stdout
    assert "split over 2 processes, each with its own noise" in (out / "report.md").read_text()
