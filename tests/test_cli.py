"""The ``fastvae`` command: a tiny ``fastvae train`` leaves the whole run folder and its
ELBO improves; ``--config`` files with flags overriding them; ``--stop-at`` or a signal
(SIGINT, SIGTERM: a real process) then ``--resume`` give the uninterrupted run bit for
bit and metrics.jsonl line for line; ``--resume`` of a finished run or past an unreadable
checkpoint; ``eval`` and ``sample`` on its checkpoint; a two-β ``sweep``; short, clear
errors; ``python -m fastvae`` and an import that loads no compiler stack; and ``fastvae
train`` under torchrun (2 processes, gloo), where a signal to one process stops both.
Runs are in-process (``cli.main``) on tiny sprites and a tiny conv model, but for the
signal tests, which need a process of their own.  The report's numbers are each paired with
the points they cover, and say where and how the run ran."""

import contextlib
import io
import json
import os
import platform
import re
import signal
import struct
import subprocess
import sys
import time
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
    # Not keys of this run's results: `fastvae eval`'s checkpoint, a run stopped by its time
    # limit's stopped_by, and a model with latent groups' numbers (tests/test_eval_groups.py).
    group_keys = {"num_groups", "group_resolutions", "kl_per_group", "kl_per_group_fraction", "units_per_group",
                  "active_units_per_group", "active_groups"}
    diffusion_keys = {key for key in FIELDS if key.startswith("diffusion_")}  # tests/test_eval_diffusion.py
    assert set(FIELDS) - set(results) == {"checkpoint", "stopped_by"} | group_keys | diffusion_keys
    fields = (run / "report.md").read_text().split("## Fields of results.json")[1]
    for key in results:
        assert f"| `{key}` | " in fields, key


# A short run with an IWAE estimate between its two halves (--iwae-every 4 of 8 steps).
SHORT_RUN = ["--steps", "8", "--batch-size", "8", "--log-every", "2", "--iwae-every", "4", "--no-pictures"]


def without_timings(folder: Path) -> list:
    """metrics.jsonl's events without their wall-clock fields."""
    return [{k: v for k, v in event.items() if k != "time"} for event in read_metrics(folder / "metrics.jsonl")]


def checkpoint_tensors(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    tensors = dict(state["model"])
    for index, values in state["optimizer"]["state"].items():
        tensors.update({f"optimizer.{index}.{name}": value for name, value in values.items()})
    return tensors


def assert_same_checkpoint(first: Path, second: Path) -> None:
    expected, actual = checkpoint_tensors(first), checkpoint_tensors(second)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


def assert_same_run(whole: Path, parts: Path) -> None:
    """A stopped-and-resumed run equals the uninterrupted one: final weights and
    optimizer state, metrics.jsonl line for line (timings aside), the final results."""
    assert_same_checkpoint(whole / "checkpoints" / "step_00000008.pt", parts / "checkpoints" / "step_00000008.pt")
    assert without_timings(parts) == without_timings(whole)
    ignored = ("train_seconds", "eval_seconds")
    results = [{k: v for k, v in json.loads((f / "results.json").read_text()).items() if k not in ignored}
               for f in (whole, parts)]
    assert results[0] == results[1]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The uninterrupted SHORT_RUN, which the stopped and resumed ones must equal."""
    whole = tmp_path_factory.mktemp("whole") / "run"
    assert cli.main(tiny_train(whole, *SHORT_RUN)) == 0
    events = read_metrics(whole / "metrics.jsonl")
    assert [e["step"] for e in events if "test/iwae" in e] == [4, 8]  # the estimate at 4, the final one
    return whole


@pytest.mark.parametrize("stop_at", [3, 4])
def test_stop_at_then_resume_is_the_uninterrupted_run(whole_run, tmp_path, stop_at):
    """--stop-at then --resume: bit for bit the same weights, and metrics.jsonl line for
    line, with no IWAE estimate added at the stop (at 3) and none repeated (at 4)."""
    parts = tmp_path / "parts"
    assert cli.main(tiny_train(parts, *SHORT_RUN, "--stop-at", str(stop_at))) == 0
    assert not (parts / "report.md").exists()
    assert [p.name for p in (parts / "checkpoints").iterdir()] == [f"step_{stop_at:08d}.pt"]
    assert [e["step"] for e in read_metrics(parts / "metrics.jsonl") if "test/iwae" in e] == [4][:stop_at // 4]
    assert cli.main(["train", "--out", str(parts), "--resume"]) == 0
    assert_same_run(whole_run, parts)


def test_resume_of_a_finished_run_says_so_and_writes_nothing(whole_run, capsys):
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in whole_run.rglob("*") if path.is_file()}
    capsys.readouterr()
    assert cli.main(["train", "--out", str(whole_run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"run in {whole_run} is finished at step 8" in out and "nothing to do" in out
    assert len(out.strip().splitlines()) == 1
    after = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in whole_run.rglob("*") if path.is_file()}
    assert after == before


def test_resume_falls_back_from_an_unreadable_checkpoint(whole_run, tmp_path, capsys):
    parts = tmp_path / "parts"
    assert cli.main(tiny_train(parts, *SHORT_RUN, "--checkpoint-every", "2", "--stop-at", "6")) == 0
    checkpoints = parts / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"step_0000000{s}.pt" for s in (2, 4, 6)]
    latest = checkpoints / "step_00000006.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    capsys.readouterr()
    assert cli.main(["train", "--out", str(parts), "--resume"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(latest) in warning[0] and "unreadable" in warning[0]
    assert "resuming" in captured.out and "from step 4 of 8" in captured.out
    assert_same_run(whole_run, parts)

    # None readable: a clear error naming them, and nothing changed.
    for path in checkpoints.iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--out", str(parts), "--resume"])
    message = str(exit_info.value.code)
    assert "no readable checkpoint" in message and "step_00000008.pt" in message and "--overwrite" in message


def _signal_self_under_fastvae_handler(signum=signal.SIGINT) -> None:
    """Send ``signum`` to this process, only while `fastvae train`'s handler is in place
    (without it, the signal would end the test session)."""
    from fastvae.cli.interrupt import SignalHandling

    if isinstance(getattr(signal.getsignal(signum), "__self__", None), SignalHandling):
        os.kill(os.getpid(), signum)


def test_signals_while_checkpoints_are_written_lose_nothing(whole_run, tmp_path, monkeypatch, capfd):
    """SIGINT while the step-3 checkpoint is written stops the run after step 4; a second
    SIGINT while that checkpoint is written does not lose it; the run resumes exactly
    (the IWAE estimate of step 4, which the stop skipped, is made on resuming)."""
    real_save = torch.save

    def save_under_signal(obj, file, *args, **kwargs):
        _signal_self_under_fastvae_handler()
        return real_save(obj, file, *args, **kwargs)

    parts = tmp_path / "parts"
    monkeypatch.setattr(torch, "save", save_under_signal)
    assert cli.main(tiny_train(parts, *SHORT_RUN, "--checkpoint-every", "3")) == 130
    monkeypatch.undo()
    err = capfd.readouterr().err.strip().splitlines()  # capfd: the handler writes to fd 2 itself
    assert err[0].startswith("fastvae train: already stopping after this step")
    assert err[1:] == [f"fastvae train: stopped by SIGINT at step 4 of 8 with a checkpoint; continue with "
                       f"`fastvae train --out {parts} --resume`"]
    assert sorted(p.name for p in (parts / "checkpoints").iterdir()) == ["step_00000003.pt", "step_00000004.pt"]
    assert read_metrics(parts / "metrics.jsonl")[-1]["step"] == 4
    assert cli.main(["train", "--out", str(parts), "--resume"]) == 0
    assert_same_run(whole_run, parts)


def test_a_signal_during_the_final_evaluation_then_resume(whole_run, tmp_path, monkeypatch, capsys):
    """Interrupted after the final evaluation logged its line (training complete):
    exit 130 saying so; --resume runs the evaluation again and logs it once."""
    from fastvae.train.metrics import MetricsLogger

    real_log = MetricsLogger.log

    def log_then_signal(self, event):
        real_log(self, event)
        if event["step"] == 8 and "test/iwae" in event:
            _signal_self_under_fastvae_handler()

    parts = tmp_path / "parts"
    monkeypatch.setattr(MetricsLogger, "log", log_then_signal)
    assert cli.main(tiny_train(parts, *SHORT_RUN)) == 130
    monkeypatch.undo()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fastvae train: stopped by SIGINT before the final evaluation finished; the training is complete "
        f"(checkpoint at step 8): `fastvae train --out {parts} --resume` evaluates it"]
    assert not (parts / "report.md").exists()
    assert cli.main(["train", "--out", str(parts), "--resume"]) == 0
    assert_same_run(whole_run, parts)


def _environment() -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("WORLD_SIZE", None)
    return env


def _wait_for_training(process: subprocess.Popen, folder: Path, steps: int, timeout: float = 300.0) -> None:
    """Wait until metrics.jsonl logs ``steps`` training steps (the process is training)."""
    deadline = time.monotonic() + timeout
    path = folder / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if path.exists() and path.read_text().count('"loss"') >= steps:
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no {steps} training steps logged within {timeout} s")


# Long enough never to finish on its own before the signal.
ENDLESS_RUN = ["--steps", "1000000", "--batch-size", "8", "--log-every", "1", "--no-pictures"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_command_with_a_checkpoint_and_resume_continues(tmp_path, signum, status):
    """A real `fastvae train` process: SIGINT (or SIGTERM), sent three times, stops it
    after the step in progress with a checkpoint, one line on how to resume, no
    traceback, exit status 130 (143); resumed, it continues exactly as a run never
    stopped (weights, optimizer state and metrics.jsonl at two steps further)."""
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "fastvae", *tiny_train(stopped, *ENDLESS_RUN)], cwd=tmp_path,
                               env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_training(process, stopped, 3)
    for _ in range(3):
        process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == status, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "already stopping" not in line]
    [checkpoint] = list((stopped / "checkpoints").iterdir())
    step = int(checkpoint.stem.split("_")[1])
    assert lines == [f"fastvae train: stopped by {signum.name} at step {step} of 1000000 with a checkpoint; "
                     f"continue with `fastvae train --out {stopped} --resume`"]
    assert read_metrics(stopped / "metrics.jsonl")[-1]["step"] == step

    assert cli.main(["train", "--out", str(stopped), "--resume", "--stop-at", str(step + 2)]) == 0
    never_stopped = tmp_path / "never_stopped"
    assert cli.main(tiny_train(never_stopped, *ENDLESS_RUN, "--stop-at", str(step + 2))) == 0
    name = f"step_{step + 2:08d}.pt"
    assert_same_checkpoint(never_stopped / "checkpoints" / name, stopped / "checkpoints" / name)
    assert without_timings(stopped) == without_timings(never_stopped)


def _worker_of_rank(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker process of ``rank`` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"\nPPid:\t{launcher.pid}\n" in status and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under torchrun (pid {launcher.pid})")


@pytest.mark.slow
def test_under_torchrun_a_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone: rank 0, which writes, stops at the same step (the ranks
    agree on stopping each step), writes the checkpoint of both processes and says how
    to resume."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding torchrun's workers needs /proc")
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m",
               "fastvae", *tiny_train(out, *ENDLESS_RUN)]
    launcher = subprocess.Popen(command, cwd=tmp_path, env=dict(_environment(), OMP_NUM_THREADS="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_training(launcher, out, 3)
    os.kill(_worker_of_rank(launcher, 1), signal.SIGTERM)
    _, err = launcher.communicate(timeout=300)
    [checkpoint] = list((out / "checkpoints").iterdir())
    step = int(checkpoint.stem.split("_")[1])
    assert (f"fastvae train: stopped by SIGTERM at step {step} of 1000000 with a checkpoint; continue with "
            f"`fastvae train --out {out} --resume`") in err.splitlines()
    assert len(torch.load(checkpoint, weights_only=True)["rng"]) == 2
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == step


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


@pytest.mark.parametrize("argv, usage, message", [
    (["train", "--lattent-dim", "3"], "fastvae train", "unrecognized arguments: --lattent-dim 3; did you mean "
                                                       "--latent-dim?"),
    (["train", "--stepz", "10"], "fastvae train", "unrecognized arguments: --stepz 10; did you mean --steps?"),
    (["sample", "run", "--nmu", "3"], "fastvae sample", "unrecognized arguments: --nmu 3"),
    (["train", "--batch-size", "many"], "fastvae train", "invalid int value: 'many'"),
    (["train", "--model", "resnet"], "fastvae train", "invalid choice: 'resnet' (choose from mlp, conv, "
                                                      "hierarchical, discrete, deep)"),
    (["train", "--data", "mnsit"], "fastvae train", "invalid choice: 'mnsit' (choose from sprites, mnist, "
                                                    "fashion_mnist, binarized_mnist, cifar10, image_folder); did "
                                                    "you mean mnist?"),
    (["trian"], "fastvae", "invalid choice: 'trian' (choose from train, eval, sample, sweep, bench, gradvar); did "
                           "you mean train?"),
])
def test_bad_flags_are_short_usage_errors(argv, usage, message, capsys):
    """A usage error shows the (sub)command's own one-line usage, then the error."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"usage: {usage} ") and err[1].endswith(message), err


def test_missing_data_names_the_flag_and_the_variable(run, tmp_path, monkeypatch):
    """The command's data errors say --data-root and FASTVAE_DATA (the Python API's say
    root=); --data-root defaults to $FASTVAE_DATA."""
    empty = tmp_path / "empty"
    empty.mkdir()

    def message(argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        return str(exit_info.value.code)

    monkeypatch.setenv("FASTVAE_DATA", str(empty))
    text = message(["train", "--data", "mnist", "--out", str(tmp_path / "r")])
    assert text.startswith("fastvae train: --data mnist: could not find train-images-idx3-ubyte")
    assert f"looked in: {empty / 'mnist'}" in text and f"(FASTVAE_DATA is {empty})" in text
    assert "--data-root FOLDER" in text and "root=" not in text
    text = message(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")])
    assert f"(--data-root is {tmp_path})" in text and "FASTVAE_DATA" in text and "root=" not in text
    monkeypatch.delenv("FASTVAE_DATA")
    text = message(["eval", str(run), "--data", "fashion_mnist", "--num-points", "2"])
    assert text.startswith("fastvae eval: --data fashion_mnist:") and "neither is set" in text
    assert "--data-root" in text and "FASTVAE_DATA" in text and "root=" not in text
    text = message(["eval", str(run), "--diffusion-t-samples", "2"])
    assert text.startswith("fastvae eval: --diffusion-t-samples is for a model with a diffusion decoder")
    text = message(["train", "--data", "image_folder", "--out", str(tmp_path / "r")])
    assert "--data image_folder needs --data-root FOLDER" in text and "FASTVAE_DATA" in text
    text = message(["train", "--data", "image_folder", "--data-root", str(tmp_path / "none"), "--out",
                    str(tmp_path / "r")])
    assert f"the image folder {tmp_path / 'none'} does not exist" in text and "--data-root" in text
    assert not (tmp_path / "r").exists()  # nothing written


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


def test_import_and_help_load_no_compiler_or_plotting_stack():
    """`import fastvae`, `import fastvae.cli` and `fastvae --help` / `fastvae train --help`
    import neither torch._dynamo (seconds of start-up) nor the optional heavy packages."""
    heavy = ("torch._dynamo", "torch._inductor", "triton", "matplotlib", "scipy", "tensorboard", "sympy")
    script = ("import sys, contextlib, io\n"
              "import fastvae, fastvae.cli\n"
              "for argv in ([], ['train']):\n"
              "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
              "        fastvae.cli.main([*argv, '--help'])\n"
              f"print(sorted(name for name in {heavy!r} if name in sys.modules))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]", completed.stdout


# --------------------------------------------------------------------------------------
# The deep hierarchical model (--model deep) on tiny binarized-MNIST files
# --------------------------------------------------------------------------------------

# A deep model small enough that a step takes milliseconds: one block and one latent
# group of 2 channels at each resolution of the MNIST default (28, 14, 7, 1).
TINY_DEEP = ["--model", "deep", "--width", "8", "--encoder-blocks", "1,1,1,1", "--decoder-groups", "1,1,1,1",
             "--latent-channels", "2"]


@pytest.fixture(scope="module")
def binarized_mnist_root(tmp_path_factory):
    """A data folder of tiny binarized-MNIST .amat files (48 training, 16 valid and 16
    test images): noisy copies of two fixed random prototypes, so a model has something
    to learn, and no real data set is needed."""
    root = tmp_path_factory.mktemp("data")
    generator = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(2, 784, generator=generator) < 0.3).int()
    for split, count in (("train", 48), ("valid", 16), ("test", 16)):
        flips = (torch.rand(count, 784, generator=generator) < 0.05).int()
        images = prototypes[torch.arange(count) % 2] ^ flips
        (root / f"binarized_mnist_{split}.amat").write_text(
            "".join(" ".join(map(str, row)) + "\n" for row in images.tolist()))
    return root


def deep_train(out: Path, root: Path, *extra: str) -> list[str]:
    return ["train", "--data", "binarized_mnist", "--data-root", str(root), *TINY_DEEP, "--batch-size", "8",
            *TINY_EVAL, *QUIET, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def deep_run(binarized_mnist_root, tmp_path_factory):
    """A 4-step run of the tiny deep model, pictures and all."""
    out = tmp_path_factory.mktemp("deep") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(deep_train(out, binarized_mnist_root, "--steps", "4", "--log-every", "2")) == 0
    return out


def test_deep_model_trains_from_the_command_line(deep_run):
    saved = read_toml(deep_run / "config.toml")
    # From the data set's defaults: the resolutions; from the model: its resolved sizes.
    assert (saved["model"], saved["resolutions"], saved["width"], saved["bottleneck"]) == ("deep", [28, 14, 7, 1],
                                                                                           8, 2)
    assert (saved["encoder_blocks"], saved["decoder_groups"], saved["latent_channels"]) == ([1, 1, 1, 1],
                                                                                           [1, 1, 1, 1], 2)
    assert (saved["logvar_bound"], saved["kl_balancing"], saved["spectral_coeff"]) == (10.0, False, 0.0)
    assert saved["likelihood"] == "bernoulli" and saved["activation"] == "gelu"
    results = json.loads((deep_run / "results.json").read_text())
    assert results["step"] == 4 and results["latent_dim"] == 4 * 2 and len(results["kl_per_dim"]) == 8
    assert results["iwae"] >= results["iwae_mean_log_weight"] and results["num_points"] == 16
    checkpoint = load_checkpoint(deep_run / "checkpoints" / "step_00000004.pt")
    assert type(checkpoint.model).__name__ == "DeepVAE" and checkpoint.model.num_groups == 4
    # A model with latent groups: its group pictures instead of a traversal of channels.
    group_pictures = ("kl_per_group", "samples_by_temperature", "group_reconstructions")
    for name in set(PICTURES) - {"traversals"} | set(group_pictures):
        assert (deep_run / f"{name}.png").is_file(), name
    assert not (deep_run / "traversals.png").exists()
    assert "## KL per group" in (deep_run / "report.md").read_text()
    assert results["num_groups"] == 4 and len(results["active_units_per_group"]) == 4


def test_deep_run_config_toml_reruns_the_run(deep_run, tmp_path):
    """config.toml holds every setting of the deep model: rerunning it gives the same
    weights bit for bit."""
    again = tmp_path / "again"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--config", str(deep_run / "config.toml"), "--out", str(again), "--no-pictures"]) == 0
    assert_same_checkpoint(deep_run / "checkpoints" / "step_00000004.pt", again / "checkpoints" / "step_00000004.pt")
    assert read_toml(again / "config.toml") == {**read_toml(deep_run / "config.toml"), "pictures": False}


def test_deep_model_defaults_per_data_set():
    """Each data set's deep defaults resolve to a model that builds for its images."""
    from fastvae.cli.build import model_config
    from fastvae.models import build_model

    shapes = {"binarized_mnist": (1, 28, 28), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
              "cifar10": (3, 32, 32), "sprites": (1, 64, 64)}
    top = {"cifar10": [32, 16, 8, 4, 1], "sprites": [64, 32, 16, 8, 1]}
    for data, shape in shapes.items():
        settings = resolve_settings({"data": data, "model": "deep"}, {})
        assert settings["resolutions"] == top.get(data, [28, 14, 7, 1]), data
        model = build_model(model_config(settings, shape))
        assert model.resolutions[0] == shape[1] and model.num_groups == sum(settings["decoder_groups"])
    cifar = resolve_settings({"data": "cifar10", "model": "deep"}, {})
    assert cifar["likelihood"] == "discretized_logistic_mixture"


def test_a_deep_model_option_given_to_another_model_is_an_error(binarized_mnist_root, tmp_path):
    data = ["--data", "binarized_mnist", "--data-root", str(binarized_mnist_root), "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", "mlp", "--width", "8", *data])
    assert "--width does not apply to the 'mlp' model" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", "deep", "--resolutions", "32,16,8,1", *data])
    assert "resolutions[0] must be the data's side 28" in str(exit_info.value.code)


def test_deep_run_stopped_and_resumed_is_the_uninterrupted_run(deep_run, binarized_mnist_root, tmp_path):
    """--stop-at 2 then --resume: the deep model's weights, optimizer state and
    metrics.jsonl are the uninterrupted 4-step run's, bit for bit."""
    parts = tmp_path / "parts"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(deep_train(parts, binarized_mnist_root, "--steps", "4", "--log-every", "2", "--stop-at",
                                   "2")) == 0
        assert [p.name for p in (parts / "checkpoints").iterdir()] == ["step_00000002.pt"]
        assert cli.main(["train", "--out", str(parts), "--resume", "--no-pictures"]) == 0
    assert_same_checkpoint(deep_run / "checkpoints" / "step_00000004.pt", parts / "checkpoints" / "step_00000004.pt")
    assert without_timings(parts) == without_timings(deep_run)
    ignored = ("train_seconds", "eval_seconds")
    results = [{k: v for k, v in json.loads((f / "results.json").read_text()).items() if k not in ignored}
               for f in (deep_run, parts)]
    assert results[0] == results[1]


def test_eval_and_tempered_samples_of_a_deep_checkpoint(deep_run, tmp_path, capsys):
    assert cli.main(["eval", str(deep_run), "--iwae-samples", "3", "--num-points", "4", "--batch-size", "2"]) == 0
    results = json.loads((deep_run / "eval-test-k3" / "results.json").read_text())
    assert results["iwae_num_samples"] == 3 and results["num_points"] == 4 and results["latent_dim"] == 8
    assert results["iwae"] >= results["iwae_mean_log_weight"]

    def sample(*flags):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        assert cli.main(["sample", str(deep_run), "--num", "4", "--ncol", "2", "--seed", "3", "--out", str(out),
                         *flags]) == 0
        return out.read_bytes()

    plain, one, half, again, cold = (sample(), sample("--temperature", "1"), sample("--temperature", "0.5"),
                                     sample("--temperature", "0.5"), sample("--temperature", "0"))
    assert one == plain  # temperature 1 is the model's own sample
    assert half == again and half != plain and cold != half
    # The default file name says the temperature.
    assert cli.main(["sample", str(deep_run), "--num", "2", "--temperature", "0.5"]) == 0
    assert (deep_run / "samples-seed0-t0.5.png").is_file()


def test_sample_temperature_of_a_model_without_one_is_an_error(run):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", str(run), "--num", "2", "--temperature", "0.5"])
    message = str(exit_info.value.code)
    assert message.startswith("fastvae sample: --temperature: the 'conv' model's sample() takes no temperature")


def test_time_limit_ends_the_run_with_its_report_and_resume_goes_on(tmp_path, capsys):
    """--time-limit (minutes) far below one step's time: the run stops after its first
    step with the final checkpoint, evaluation and report, which say why; --resume
    with the limit has nothing to do; --resume --time-limit 0 trains to the end."""
    out = tmp_path / "limited"
    assert cli.main(tiny_train(out, "--steps", "3", "--batch-size", "8", "--no-pictures", "--time-limit", "1e-9")) == 0
    printed = capsys.readouterr().out
    assert ("stopped at step 1 of 3: the time limit of 1e-09 minutes of training is reached; evaluating this step "
            "as the last") in printed
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001.pt"]
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 1 and results["stopped_by"] == "time_limit"
    assert "Training stopped at its time limit (--time-limit 1e-09 minutes of training) at step 1 of the 3 planned" in (
        (out / "report.md").read_text())
    assert read_toml(out / "config.toml")["time_limit"] == 1e-9
    limit = load_checkpoint(out / "checkpoints" / "step_00000001.pt").train_config.time_limit
    assert limit == pytest.approx(60e-9, rel=1e-12)  # seconds
    assert [e["step"] for e in read_metrics(out / "metrics.jsonl") if e.get("stopped_by") == "time_limit"] == [1]

    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    assert "stopped at its time limit (1e-09 minutes of training) at step 1 of 3" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == results

    assert cli.main(["train", "--out", str(out), "--resume", "--time-limit", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 3 and "stopped_by" not in results
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001.pt", "step_00000003.pt"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(tiny_train(tmp_path / "bad", "--steps", "3", "--time-limit", "-1"))
    assert "--time-limit is minutes of training, >= 0 (0: no limit), got -1.0" in str(exit_info.value.code)


# --------------------------------------------------------------------------------------
# Presets (fastvae/presets/*.toml)
# --------------------------------------------------------------------------------------

PRESET_SHAPES = {"binarized_mnist": (1, 28, 28), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                 "cifar10": (3, 32, 32), "sprites": (1, 64, 64)}


def test_the_shipped_presets():
    from fastvae.cli.build import model_config
    from fastvae.cli.presets import PRESETS_DIR, preset_names, read_preset
    from fastvae.models import build_model

    assert {"deep-mnist-cpu", "deep-mnist-gpu", "deep-cifar10-gpu"} <= set(preset_names())
    for name in preset_names():
        text = (PRESETS_DIR / f"{name}.toml").read_text()
        assert text.startswith(f"# {name}: "), name  # the header says what it is
        settings = read_preset(name)  # parses, and names only known keys (else ConfigError)
        resolved = resolve_settings({}, settings)
        # Built on the meta device: the GPU models' parameters are counted, not allocated.
        with torch.device("meta"):
            model = build_model(model_config(resolved, PRESET_SHAPES[resolved["data"]]))
        count = sum(parameter.numel() for parameter in model.parameters())
        stated = re.search(r"^# Cost: ([\d,]+) parameters", text, re.MULTILINE)
        assert stated and int(stated.group(1).replace(",", "")) == count, (name, count)
        assert train_config_of(resolved).steps == resolved["steps"]


def train_config_of(settings):
    from fastvae.cli.build import train_config

    return train_config(settings, None, "cpu")


def test_the_vdvae_cifar10_preset_keeps_vdvaes_numbers():
    from fastvae.cli.presets import read_preset

    settings = read_preset("deep-cifar10-gpu")
    config = train_config_of(resolve_settings({}, settings))
    assert (settings["width"], settings["bottleneck"], settings["latent_channels"]) == (384, 96, 16)
    # VDVAE's "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3" and "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21".
    assert settings["encoder_blocks"] == [12, 7, 7, 4, 3] and settings["decoder_groups"] == [22, 11, 6, 3, 1]
    assert (config.optimizer, config.adam_betas, config.weight_decay, config.lr) == ("adamw", (0.9, 0.9), 0.01, 2e-4)
    assert (config.lr_warmup_steps, config.ema_decay) == (100, 0.9999)
    # VDVAE's thresholds are on the gradient of nats per dimension; fastvae's loss is per image.
    assert (config.grad_clip, config.skip_threshold) == (200.0 * 3072, 400.0 * 3072)


def test_preset_layers_and_errors(tmp_path):
    from fastvae.cli.presets import preset_names, read_config, read_preset

    # --config NAME reads the preset when no file NAME exists.
    assert read_config("deep-mnist-cpu") == read_preset("deep-mnist-cpu")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--preset", "deep-mnist"])
    assert exit_info.value.code == 2
    with pytest.raises(FileNotFoundError, match="no config file 'nothing.toml' .*presets: .*deep-mnist-cpu"):
        read_config("nothing.toml")
    with pytest.raises(ValueError, match="unknown preset 'deep-mnist'; known presets: deep-cifar10-gpu, "):
        read_preset("deep-mnist")
    # --help lists them (argparse wraps lines at hyphens too: compare without the breaks).
    help_text = "".join(cli.build_parser().command_parsers["train"].format_help().split())
    assert "shippedwithfastvae:" in help_text and all(name in help_text for name in preset_names())


def test_train_with_the_cpu_preset_made_tiny(binarized_mnist_root, tmp_path, capsys):
    """`fastvae train --preset deep-mnist-cpu` with flags that make it tiny, and a --config
    file between the two (the preset under the file, the flags over both)."""
    config = tmp_path / "smaller.toml"
    config.write_text("width = 8\nbottleneck = 2\nsteps = 5\nlr = 0.001\n")
    out = tmp_path / "preset"
    assert cli.main(["train", "--preset", "deep-mnist-cpu", "--config", str(config), "--data-root",
                     str(binarized_mnist_root), "--steps", "2", "--batch-size", "8", "--num-train", "48",
                     "--num-test", "16", "--iwae-samples", "2", "--iwae-points", "4", *QUIET, "--no-pictures",
                     "--out", str(out)]) == 0
    saved = read_toml(out / "config.toml")
    # The preset's, the file's over it, and the flags' over both.
    assert (saved["data"], saved["model"], saved["activation"], saved["decoder_groups"]) == (
        "binarized_mnist", "deep", "silu", [1, 2, 2, 1])
    assert (saved["beta"], saved["ema_decay"], saved["skip_threshold"], saved["lr_warmup_steps"]) == (
        "linear:1000", 0.99, 2000.0, 100)
    assert (saved["width"], saved["bottleneck"], saved["lr"], saved["steps"], saved["batch_size"]) == (8, 2, 0.001,
                                                                                                     2, 8)
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 2 and results["iwae_num_samples"] == 2 and results["latent_dim"] == 6 * 4
    assert "run folder:" in capsys.readouterr().out


# ---- the score-function objective and `fastvae gradvar`

SCORE_FUNCTION = ["--objective", "score_function", "--baseline", "running_mean"]
GRADVAR_TINY = ["--batch-size", "4", "--num-estimates", "6", "--baseline-steps", "3", "--baseline-draws", "3"]


def test_gradvar_on_a_run_writes_the_table_json_and_chart(run, tmp_path, capsys):
    out = tmp_path / "gradvar"
    assert cli.main(["gradvar", str(run), *GRADVAR_TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "gradvar.json").read_text())
    keys = [row["key"] for row in summary["estimators"]]
    assert keys == ["reparameterized", "score_function", "score_function_running_mean", "score_function_learned"]
    assert summary["num_estimates"] == 6 and summary["batch_size"] == 4 and summary["step"] == TRAIN_STEPS
    assert summary["data"] == "sprites" and summary["split"] == "test" and summary["model"] == "conv"
    assert all(row["trace"] > 0 for row in summary["estimators"])
    assert "estimated" in summary["baselines"]["running_mean"]["source"]  # an ELBO run holds no baseline
    table = (out / "gradvar.md").read_text()
    assert "| score function, running-mean baseline |" in table and "first 4 sprites test images" in table
    assert png_size(out / "gradvar.png") == (640, 400)
    printed = capsys.readouterr().out
    assert "| reparameterized |" in printed and f"wrote {out / 'gradvar.md'}" in printed


@pytest.fixture(scope="module")
def score_function_run(tmp_path_factory):
    """SHORT_RUN trained by the score function with a running-mean baseline."""
    whole = tmp_path_factory.mktemp("score") / "run"
    assert cli.main(tiny_train(whole, *SHORT_RUN, *SCORE_FUNCTION)) == 0
    return whole


def test_score_function_run_stopped_and_resumed_is_the_uninterrupted_run(score_function_run, tmp_path):
    config = read_toml(score_function_run / "config.toml")
    assert config["objective"] == "score_function" and config["baseline"] == "running_mean"
    state = torch.load(score_function_run / "checkpoints" / "step_00000008.pt", weights_only=True)["model"]
    assert int(state["control_variate.updates"]) == 8  # one update per step, checkpointed
    parts = tmp_path / "parts"
    assert cli.main(tiny_train(parts, *SHORT_RUN, *SCORE_FUNCTION, "--stop-at", "3")) == 0
    assert cli.main(["train", "--out", str(parts), "--resume"]) == 0
    assert_same_run(score_function_run, parts)
    # gradvar measures with the checkpoint's running mean.
    assert cli.main(["gradvar", str(score_function_run), *GRADVAR_TINY, "--out", str(tmp_path / "g")]) == 0
    baselines = json.loads((tmp_path / "g" / "gradvar.json").read_text())["baselines"]
    assert baselines["running_mean"]["value"] == float(state["control_variate.running_mean"])
    assert "checkpoint" in baselines["running_mean"]["source"]


def test_gradvar_on_a_discrete_run_compares_gumbel_softmax_temperatures(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY_DATA, *TINY_EVAL, *QUIET, "--model", "discrete", "--hidden-sizes", "8",
                     "--num-variables", "2", "--num-categories", "3", "--objective", "score_function", "--baseline",
                     "learned", "--steps", "4", "--batch-size", "8", "--no-pictures", "--out", str(out)]) == 0
    assert cli.main(["gradvar", str(out), *GRADVAR_TINY, "--temperatures", "1,0.5"]) == 0
    summary = json.loads((out / "gradvar.json").read_text())  # the run folder by default
    assert [row["key"] for row in summary["estimators"]][:2] == ["gumbel_softmax_t1", "gumbel_softmax_t0.5"]
    assert summary["reference"] == "gumbel_softmax_t1" and summary["temperatures"] == [1.0, 0.5]
    assert "checkpoint" in summary["baselines"]["learned"]["source"]
    assert (out / "gradvar.md").is_file() and (out / "gradvar.png").is_file()


def test_score_function_and_gradvar_errors(run, tmp_path):
    def message(argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        return str(exit_info.value.code)

    text = message(tiny_train(tmp_path / "r", "--baseline", "learned", "--steps", "2"))
    assert text == ("fastvae train: --baseline learned is a control variate of the score-function estimator; add "
                    "--objective score_function (or leave --baseline out)")
    assert not (tmp_path / "r").exists()
    assert "objective must be one of ['elbo', 'iwae']" in message(
        ["train", *TINY_DATA, *QUIET, "--model", "hierarchical", "--objective", "score_function", "--steps", "2",
         "--out", str(tmp_path / "h")])
    assert message(["gradvar", str(run), "--temperatures", "0.5"]) == (
        "fastvae gradvar: --temperatures are the Gumbel-softmax temperatures of the discrete model; the 'conv' "
        "model's latent is Gaussian: leave the flag out")
    assert "no checkpoint file or run folder" in message(["gradvar", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["gradvar", str(run), "--temperatures", "1,0"])
    assert exit_info.value.code == 2  # a usage error


TINY_DELTA_VAE = ["--model", "mlp", "--hidden-sizes", "16", "--latent-dim", "3", "--decoder", "autoregressive",
                  "--autoregressive-hidden-sizes", "8", "--committed-rate", "0.4"]


def test_a_delta_vae_with_the_autoregressive_decoder_trains_evaluates_and_samples(binarized_mnist_root, tmp_path,
                                                                                    capsys):
    """`fastvae train --committed-rate δ --decoder autoregressive`: the rate holds in every
    dimension of the report, the config rebuilds the model, and `eval` and `sample` (pixel
    by pixel) run on its checkpoint, the same seed giving the same picture."""
    out = tmp_path / "delta"
    assert cli.main(["train", "--data", "binarized_mnist", "--data-root", str(binarized_mnist_root), *TINY_DELTA_VAE,
                     "--steps", "4", "--batch-size", "8", "--log-every", "2", *TINY_EVAL, *QUIET,
                     "--out", str(out)]) == 0
    saved = read_toml(out / "config.toml")
    assert (saved["committed_rate"], saved["decoder"], saved["autoregressive_hidden_sizes"]) == (
        0.4, "autoregressive", [8])
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 4 and len(results["kl_per_dim"]) == 3
    assert min(results["kl_per_dim"]) >= 0.4 and results["kl"] >= 3 * 0.4
    assert results["iwae"] >= results["iwae_mean_log_weight"]
    for picture in ("samples", "reconstructions", "traversals"):
        assert (out / f"{picture}.png").is_file(), picture
    checkpoint = load_checkpoint(out / "checkpoints" / "step_00000004.pt")
    assert checkpoint.model.autoregressive is not None and checkpoint.model.latent.committed_rate == 0.4
    assert cli.main(["eval", str(out), "--iwae-samples", "3", "--num-points", "4", "--batch-size", "2"]) == 0
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for picture in (first, second):
        assert cli.main(["sample", str(out), "--num", "4", "--seed", "2", "--out", str(picture)]) == 0


# --------------------------------------------------------------------------------------
# The autoregressive prior (--prior autoregressive) on the tiny binarized-MNIST files
# --------------------------------------------------------------------------------------

TINY_AUTOREGRESSIVE = ["--model", "mlp", "--hidden-sizes", "16", "--latent-dim", "3", "--prior", "autoregressive",
                       "--prior-components", "2", "--prior-hidden-sizes", "8,8", "--prior-lr-scale", "0.5"]


def autoregressive_train(out: Path, root: Path, *extra: str) -> list[str]:
    return ["train", "--data", "binarized_mnist", "--data-root", str(root), *TINY_AUTOREGRESSIVE, "--batch-size", "8",
            *TINY_EVAL, *QUIET, "--log-every", "2", "--out", str(out), *extra]


def test_the_autoregressive_prior_trains_resumes_evaluates_and_samples(binarized_mnist_root, tmp_path, capsys):
    """A tiny MLP VAE with the MADE prior through `fastvae train`: its settings in
    config.toml, the checkpoint's prior, a report with no KL per dimension (the KL is a
    Monte Carlo estimate), --stop-at then --resume bit for bit, `eval` and `sample`."""
    from fastvae.models import AutoregressivePrior

    whole = tmp_path / "whole"
    assert cli.main(autoregressive_train(whole, binarized_mnist_root, "--steps", "6")) == 0
    saved = read_toml(whole / "config.toml")
    assert (saved["prior"], saved["prior_components"], saved["prior_hidden_sizes"], saved["prior_lr_scale"]) == (
        "autoregressive", 2, [8, 8], 0.5)
    results = json.loads((whole / "results.json").read_text())
    assert results["step"] == 6 and results["kl_per_dim"] == [] and results["latent_dim"] == 3
    assert results["iwae"] >= results["iwae_mean_log_weight"] and not set(results) - set(FIELDS)
    checkpoint = load_checkpoint(whole / "checkpoints" / "step_00000006.pt")
    prior = checkpoint.model.prior
    assert isinstance(prior, AutoregressivePrior)
    assert (prior.num_components, prior.hidden_sizes, prior.lr_scale) == (2, (8, 8), 0.5)
    assert prior.output.weight.abs().sum() > 0  # trained from its zero initialization
    assert (whole / "samples.png").is_file() and (whole / "report.md").is_file()

    parts = tmp_path / "parts"
    assert cli.main(autoregressive_train(parts, binarized_mnist_root, "--steps", "6", "--stop-at", "3")) == 0
    assert cli.main(["train", "--out", str(parts), "--resume"]) == 0
    assert_same_checkpoint(whole / "checkpoints" / "step_00000006.pt", parts / "checkpoints" / "step_00000006.pt")
    assert without_timings(parts) == without_timings(whole)

    assert cli.main(["eval", str(whole), "--iwae-samples", "3", "--num-points", "4", "--batch-size", "2"]) == 0
    evaluated = json.loads((whole / "eval-test-k3" / "results.json").read_text())
    assert evaluated["iwae_num_samples"] == 3 and evaluated["iwae"] >= evaluated["iwae_mean_log_weight"]
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for out in (first, second):
        assert cli.main(["sample", str(whole), "--num", "4", "--seed", "2", "--out", str(out)]) == 0
    assert first.read_bytes() == second.read_bytes()
    capsys.readouterr()


@pytest.mark.parametrize("flags, message", [
    (["--model", "mlp", "--committed-rate", "-0.5"], "committed_rate must be a finite number >= 0"),
    (["--model", "mlp", "--committed-rate", "0.1", "--prior", "vamp"], "'standard_normal' prior only"),
    (["--model", "conv", "--decoder", "autoregressive"], "--decoder does not apply to the 'conv' model"),
    (["--model", "hierarchical", "--committed-rate", "0.1"], "--committed-rate does not apply to the 'hierarchical'"),
    (["--model", "mlp", "--decoder", "autoregressive", "--likelihood", "gaussian"], "needs likelihood='bernoulli'"),
])
def test_delta_vae_options_are_clear_errors(binarized_mnist_root, tmp_path, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", "binarized_mnist", "--data-root", str(binarized_mnist_root), *flags,
                  "--steps", "1", *QUIET, "--out", str(tmp_path / "r")])
    assert message in str(exit_info.value.code)


def test_autoregressive_prior_options_errors(binarized_mnist_root, tmp_path):
    data = ["--data", "binarized_mnist", "--data-root", str(binarized_mnist_root), *QUIET]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", "hierarchical", "--prior-hidden-sizes", "8", *data, "--out",
                  str(tmp_path / "a")])
    assert "--prior-hidden-sizes does not apply to the 'hierarchical' model" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(autoregressive_train(tmp_path / "b", binarized_mnist_root, "--steps", "2", "--free-bits", "0.5"))
    assert "free bits need the KL of each latent dimension" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(autoregressive_train(tmp_path / "c", binarized_mnist_root, "--steps", "2", "--prior-lr-scale", "2"))
    assert "lr_scale must be a number in (0, 1], got 2.0" in str(exit_info.value.code)


# ---- the diffusion decoder (--likelihood diffusion) ----------------------------------

TINY_DIFFUSION = ["--model", "mlp", "--likelihood", "diffusion", "--hidden-sizes", "16", "--latent-dim", "3",
                  "--diffusion-hidden-sizes", "32", "--diffusion-steps", "3"]


def diffusion_train(out: Path, root: Path, *extra: str) -> list[str]:
    return ["train", "--data", "binarized_mnist", "--data-root", str(root), *TINY_DIFFUSION, "--batch-size", "8",
            *TINY_EVAL, *QUIET, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def diffusion_run(binarized_mnist_root, tmp_path_factory):
    """A 4-step run of a tiny MLP VAE with a diffusion decoder, pictures and all."""
    out = tmp_path_factory.mktemp("diffusion") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(diffusion_train(out, binarized_mnist_root, "--steps", "4", "--log-every", "2")) == 0
    return out


def test_diffusion_decoder_trains_from_the_command_line(diffusion_run):
    saved = read_toml(diffusion_run / "config.toml")
    assert (saved["likelihood"], saved["diffusion_levels"], saved["diffusion_schedule"]) == ("diffusion", 2, "fixed")
    assert (saved["diffusion_hidden_sizes"], saved["diffusion_steps"], saved["diffusion_sampler"]) == ([32], 3,
                                                                                                     "ancestral")
    assert saved["diffusion_t_samples"] == 1 and "diffusion_channels" not in saved
    logged = [event for event in read_metrics(diffusion_run / "metrics.jsonl") if "loss" in event]
    for event in logged:
        terms = event["diffusion_prior"] + event["diffusion_loss"] + event["diffusion_reconstruction"]
        assert terms == pytest.approx(event["nll"], rel=1e-5)
    model = load_checkpoint(diffusion_run / "checkpoints" / "step_00000004.pt").model
    assert model.diffusion is not None and model.diffusion.steps == 3
    for name in PICTURES:
        assert (diffusion_run / f"{name}.png").is_file(), name


def test_diffusion_run_stopped_and_resumed_is_the_uninterrupted_run(diffusion_run, binarized_mnist_root, tmp_path):
    """--stop-at 2 then --resume: weights, optimizer state and metrics.jsonl are the
    uninterrupted 4-step run's, bit for bit (t, ε and z_0 drawn from the run's RNG)."""
    parts = tmp_path / "parts"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(diffusion_train(parts, binarized_mnist_root, "--steps", "4", "--log-every", "2",
                                        "--stop-at", "2")) == 0
        assert cli.main(["train", "--out", str(parts), "--resume", "--no-pictures"]) == 0
    assert_same_checkpoint(diffusion_run / "checkpoints" / "step_00000004.pt",
                           parts / "checkpoints" / "step_00000004.pt")
    assert without_timings(parts) == without_timings(diffusion_run)


def test_eval_and_sample_of_a_diffusion_checkpoint(diffusion_run, tmp_path, capsys):
    assert cli.main(["eval", str(diffusion_run), "--iwae-samples", "3", "--num-points", "4", "--batch-size", "2"]) == 0
    results = json.loads((diffusion_run / "eval-test-k3" / "results.json").read_text())
    assert results["iwae_num_samples"] == 3 and results["num_points"] == 4 and results["elbo"] < 0
    assert results["diffusion_t_samples"] == 1 and results["diffusion_loss_std"] >= 0
    out = diffusion_run / "eval-s4"
    assert cli.main(["eval", str(diffusion_run), "--iwae-samples", "3", "--num-points", "4", "--batch-size", "2",
                     "--diffusion-t-samples", "4", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["diffusion_t_samples"] == 4
    assert "S = 4 t-samples" in (out / "report.md").read_text()

    def sample(*flags):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        assert cli.main(["sample", str(diffusion_run), "--num", "4", "--ncol", "2", "--seed", "3", "--out", str(out),
                         *flags]) == 0
        return out.read_bytes()

    plain, three, two, two_again = sample(), sample("--steps", "3"), sample("--steps", "2"), sample("--steps", "2")
    assert plain == three  # the model's own diffusion_steps is 3
    assert two == two_again and two != three
    deterministic = sample("--steps", "2", "--sampler", "deterministic")
    assert deterministic != two and png_size(tmp_path / "4.png") == png_size(tmp_path / "0.png")


def test_diffusion_settings_and_their_errors(run, binarized_mnist_root, tmp_path):
    assert resolve_settings({"data": "cifar10", "likelihood": "diffusion"}, {})["diffusion_levels"] == 256
    assert resolve_settings({"data": "mnist", "likelihood": "diffusion"}, {})["diffusion_levels"] == 2
    assert "diffusion_levels" not in {k for k, v in resolve_settings({"data": "mnist"}, {}).items() if v is not None}
    data = ["--data", "binarized_mnist", "--data-root", str(binarized_mnist_root), "--out", str(tmp_path / "r")]

    def message(argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        return str(exit_info.value.code)

    assert ("--likelihood diffusion (a diffusion decoder) is a decoder of the single-latent models mlp, conv, not of "
            "the 'deep' model") in message(["train", "--model", "deep", "--likelihood", "diffusion", *data])
    assert "--diffusion-steps apply to --likelihood diffusion only" in message(
        ["train", "--model", "mlp", "--diffusion-steps", "5", *data])
    assert message(["sample", str(run), "--steps", "3"]).startswith(
        "fastvae sample: --steps sets a diffusion decoder's sampling; the 'conv' model's likelihood is 'bernoulli'")
