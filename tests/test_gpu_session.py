"""bench/gpu_session.py, the one-command GPU validation: its dry run on the CPU (the same
steps at tiny sizes) writes every file the GPU session writes and a summary that parses;
and the pieces a dry run cannot reach on a CPU: a group of tests stopped at its time
limit, the GPU benchmark commands, the bars of GPU results, the deadline.

bench/ is a folder of scripts, not a package, so the script is loaded by its path.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_session.py"


@pytest.fixture(scope="module")
def session():
    spec = importlib.util.spec_from_file_location("fastvae_gpu_session", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastvae_gpu_session"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_writes_every_file_and_a_summary_that_parses(tmp_path, session):
    # Through the wrapper, as on a device: from another folder, no PYTHONPATH, the
    # runner's output folder in $OUT.
    out, device_out = tmp_path / "session", tmp_path / "device-out"
    device_out.mkdir()
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(PYTHON=sys.executable, OUT=str(device_out))
    completed = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--dry-run", "--out", str(out)],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "## Performance bars" in completed.stdout and f"results: {out}" in completed.stdout
    assert (device_out / out.name / "summary.json").is_file()

    expected = ["environment.json", "tests.json", "tests-fast.xml", "tests-large.xml", "summary.json", "summary.md",
                "bandwidth.png", "logs/environment.log", "logs/build.log", "logs/backends.log",
                "logs/tests-fast.log", "logs/tests-large.log"]
    expected += [f"{name}.{suffix}" for name in session.SCRIPTS for suffix in ("json", "md")]
    missing = [name for name in expected if not (out / name).is_file()]
    assert not missing, f"missing {missing}; the folder has {sorted(p.name for p in out.rglob('*'))}"
    assert (out / "bandwidth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert summary["wall_s"] <= summary["budget_s"]
    statuses = {step["name"]: step["status"] for step in summary["steps"]}
    run = [name for name in statuses if name.startswith("bench: ")]
    assert run == [f"bench: {p.name}" for p in session.BENCH_PIECES if p.in_dry_run]
    for name in ["environment", "build", "tests: fast", "tests: > 2**31 elements"] + run:
        assert statuses[name] == "ok", (name, statuses[name], (out / "logs").iterdir())
    # setup.py --dry-run went through the build and compiled nothing.
    assert "build_ext" in (out / "logs" / "build.log").read_text()

    # On a CPU every gpu test is skipped: each one is listed, none is lost.
    for name, group in summary["tests"].items():
        counts = group["counts"]
        assert group["selected"] > 0 and counts["skipped"] == group["selected"], (name, counts)
        assert len(group["tests"]) == group["selected"]
    large = summary["tests"]["tests: > 2**31 elements"]["tests"]
    assert all(session.LARGE_TESTS in t["test"] for t in large)
    assert not any(session.LARGE_TESTS in t["test"] for t in summary["tests"]["tests: fast"]["tests"])

    # The merged piece kept the first piece's records of the same benchmark.
    latent = json.loads((out / "latent.json").read_text())
    assert latent["metadata"].get("previous_runs")
    # The bars are the benchmarks' own (on the CPU: the cpu backend's, where it is built).
    for bar in summary["bars"]:
        assert bar["verdict"] == "met" or bar["verdict"].startswith(("missed", "error", "skipped")), bar
    markdown = (out / "summary.md").read_text()
    for bar in summary["bars"]:
        assert bar["verdict"] in markdown


def test_a_group_stopped_at_its_limit_names_the_test_it_stopped_in(session):
    log = "\n".join([
        "============================= test session starts ==============================",
        "collected 40 items / 30 deselected / 10 selected",
        "",
        "tests/test_latent_gpu.py::test_sample_gaussian_at_real_sizes[float32-(4096, 64)-triton] PASSED [ 10%]",
        "tests/test_latent_gpu.py::test_sample_gaussian_at_real_sizes[float32-(4096, 64)-cuda] SKIPPED (cuda "
        "backend not present) [ 20%]",
        "tests/test_latent_gpu.py::test_bitwise_repeatable_on_device[triton] FAILED [ 30%]",
        "tests/test_latent_gpu.py::test_bitwise_repeatable_on_device[triton] ERROR [ 30%]",
        "tests/test_discrete.py::test_gpu_bitwise_repeatable ",
        "[gpu_session] stopped after 90 s (its time limit)",
    ])
    outcomes, selected = session.parse_test_log(log, stopped=True)
    assert selected == 10
    assert outcomes == {
        "tests/test_latent_gpu.py::test_sample_gaussian_at_real_sizes[float32-(4096, 64)-triton]": "passed",
        "tests/test_latent_gpu.py::test_sample_gaussian_at_real_sizes[float32-(4096, 64)-cuda]": "skipped",
        "tests/test_latent_gpu.py::test_bitwise_repeatable_on_device[triton]": "failed",
        "tests/test_discrete.py::test_gpu_bitwise_repeatable": "timeout",
    }
    counts = session.count_outcomes(outcomes, selected)
    assert [counts[name] for name in ("passed", "skipped", "failed", "timeout", "not run")] == [1, 1, 1, 1, 6]
    # A process that died on its own (not stopped) leaves its test as an error.
    died = session.parse_test_log(log, stopped=False)[0]
    assert died["tests/test_discrete.py::test_gpu_bitwise_repeatable"] == "error"
    # Without deselection pytest says only "collected N items".
    assert session.parse_test_log("collected 7 items\n", stopped=False) == ({}, 7)


def test_a_step_past_its_limit_is_stopped_with_its_children(tmp_path, session):
    log = tmp_path / "sleep.log"
    start = time.monotonic()
    # The child shell starts a grandchild: the whole process group must end.
    result = session.run_logged(["bash", "-c", "sleep 60 & sleep 60"], log, 1.0, dict(os.environ), "sleep")
    assert time.monotonic() - start < 20
    assert result.status == "timeout" and "stopped after" in log.read_text()
    failed = session.run_logged(["bash", "-c", "exit 3"], tmp_path / "exit.log", 10, dict(os.environ), "exit")
    assert failed.status == "failed" and failed.returncode == 3
    skipped = session.run_logged(["true"], tmp_path / "late.log", 0.2, dict(os.environ), "late")
    assert skipped.status == "skipped" and skipped.note == "no time left"


def test_each_step_keeps_the_time_of_the_steps_after_it(session):
    clock = session.Clock(100)
    assert clock.limit(10, 50) == 20  # at most twice its own budget
    assert 49 <= clock.limit(60, 50) <= 50  # never the later steps' reserve
    assert clock.limit(60, 150) == 0
    # The budgets of the core steps fit the session with room for the report.
    core = sum(session.BUDGETS.values()) + sum(p.budget_s for p in session.BENCH_PIECES if p.core)
    assert core + session.REPORT_RESERVE_S <= session.TOTAL_BUDGET_S


def test_gpu_benchmark_commands(tmp_path, session):
    pieces = {p.name: p for p in session.BENCH_PIECES}
    train = session.bench_command(pieces["train: bar"], tmp_path / "train.json", False, False, ["cuda", "triton"])
    providers = train[train.index("--providers") + 1]
    assert providers == "eager,compile,cuda,triton"
    assert train[train.index("--device") + 1] == "cuda" and "--merge" not in train
    # Without the cuda module (a failed build) the triton backend still runs; no empty name.
    train = session.bench_command(pieces["train: compiled kernel providers"], tmp_path / "t.json", True, False,
                                  ["triton"])
    assert train[train.index("--providers") + 1] == "triton+compile" and "--merge" in train
    # No kernel backend at all: an empty list, which the session skips rather than runs.
    train = session.bench_command(pieces["train: compiled kernel providers"], tmp_path / "t.json", True, False, [])
    assert train[train.index("--providers") + 1] == ""
    latent = session.bench_command(pieces["latent: bars"], tmp_path / "l.json", False, False, ["triton", "cuda"])
    assert "--providers" not in latent  # every provider for the device
    assert latent[latent.index("--budget-ms") + 1] == "300"
    dry = session.bench_command(pieces["latent: bars"], tmp_path / "l.json", False, True, ["cpu", "triton"])
    assert dry[dry.index("--providers") + 1] == "eager,triton,cpu" and dry[dry.index("--sizes") + 1] == "tiny"
    assert dry[dry.index("--modes") + 1] == "fwd+bwd"
    # The deep model: VDVAE's CIFAR-10 size, eager and the fused model (fastvae's fastest backend).
    deep = session.bench_command(pieces["deep: VDVAE CIFAR-10 size"], tmp_path / "d.json", False, False,
                                 ["triton", "cuda"])
    assert deep[1] == "bench/bench_deep.py" and deep[deep.index("--sizes") + 1] == "cifar_vdvae:16"
    assert deep[deep.index("--providers") + 1] == "eager,fastvae" and deep[deep.index("--device") + 1] == "cuda"
    dry = session.bench_command(pieces["deep: VDVAE CIFAR-10 size"], tmp_path / "d.json", True, True, ["cpu"])
    assert dry[dry.index("--sizes") + 1] == "tiny" and "--copy-mib" not in dry and "--merge" in dry
    # It sets no performance bar: no rows in the summary.
    assert session.bench_bar_rows("deep", {"metadata": {"device": {"type": "cuda"}}, "records": []}) == []


def gpu_record(**fields):
    record = {"mode": "fwd+bwd", "dtype": "float32", "error": None, "skipped": None, "pct_of_copy": 95.0,
              "speedup_vs_eager": 4.0, "speedup_vs_compile": 1.2}
    record.update(fields)
    return record


def test_bars_of_gpu_results_and_the_bandwidth_plot(tmp_path, session):
    device = {"type": "cuda", "name": "NVIDIA H100"}
    latent = {"metadata": {"device": device}, "records": [
        gpu_record(op="sample_gaussian", batch=262144, dim=512, provider="triton"),
        gpu_record(op="sample_gaussian", batch=262144, dim=512, provider="cuda", pct_of_copy=80.0),
        gpu_record(op="sample_gaussian", batch=262144, dim=512, provider="eager", pct_of_copy=9.0),
        gpu_record(op="sample_gaussian", batch=4096, dim=64, provider="triton", pct_of_copy=10.0),
    ]}
    mixture = dict(op="discretized_logistic_mixture_nll", shape="64x3x32x32", num_mixtures=10, elements=196608,
                   x_dtype="float32")
    likelihood = {"metadata": {"device": device}, "records": [
        gpu_record(provider="triton", speedup_vs_eager=9.0, speedup_vs_compile=2.5, peak_extra_vs_eager=0.05,
                   **mixture),
        gpu_record(provider="cuda", speedup_vs_eager=9.0, speedup_vs_compile=2.5, peak_extra_vs_eager=0.5,
                   **mixture),
    ]}
    train = {"metadata": {"device": device}, "records": [
        gpu_record(model="conv_mixture", batch=128, input="3x32x32", provider="triton", speedup_vs_eager=1.7),
        gpu_record(model="conv_mixture", batch=128, input="3x32x32", provider="cuda", speedup_vs_eager=None,
                   error="RuntimeError: x"),
    ]}
    bars = (session.bench_bar_rows("latent", latent) + session.bench_bar_rows("likelihood", likelihood)
            + session.bench_bar_rows("train", train))
    verdicts = {(b["benchmark"], b["provider"]): b["verdict"] for b in bars}
    assert verdicts == {
        ("latent", "triton"): "met", ("latent", "cuda"): "missed: pct_of_copy",
        ("likelihood", "triton"): "met", ("likelihood", "cuda"): "missed: peak_extra_vs_eager",
        ("train", "triton"): "met", ("train", "cuda"): "error",
    }
    assert all(b["case"] for b in bars)
    rows = session.bandwidth_rows({"latent": latent, "likelihood": likelihood})
    # Only each op's largest size, every provider with a percentage.
    assert sorted(provider for _, provider, _ in rows) == ["cuda", "cuda", "eager", "triton", "triton"]
    png = tmp_path / "bandwidth.png"
    session.plot_bandwidth(rows, png, "NVIDIA H100")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_test_files_include_every_gpu_mark(session):
    files = session.gpu_test_files()
    assert "tests/test_latent_gpu.py" in files and "tests/test_discrete.py" in files
    assert "tests/test_gpu_session.py" not in files  # it names the mark only in strings
    for path in (ROOT / "tests").glob("test_*.py"):
        marks = [line for line in path.read_text().splitlines() if line.startswith(("@pytest.mark.gpu", "pytestmark"))]
        if any("mark.gpu" in line for line in marks):
            assert f"tests/{path.name}" in files
