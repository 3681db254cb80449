"""Smoke test of the benchmarks on the CPU (CI): bench/bench_latent.py runs end to end at
a tiny size with the eager and compile providers (and Triton, under the interpreter
that tests/conftest.py switches on without a GPU), writes its JSON and markdown, and
prints its table; plus the minimum-bytes model and the report helpers.

bench/ is a folder of scripts, not a package, so the script is loaded by its path.
"""
import importlib.util
import json
import math
import platform
import sys
from pathlib import Path

import pytest
import torch

from fastvae import backends

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
TINY_BATCH, TINY_DIM = 64, 16
MODES = ("fwd", "bwd", "fwd+bwd")
OPS = ("sample_gaussian", "gaussian_kl")


def load_bench_script(name: str):
    """Import bench/<name>.py by path (it puts bench/ on sys.path for ``common``)."""
    module_name = f"fastvae_bench_{name}"
    spec = importlib.util.spec_from_file_location(module_name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_latent():
    return load_bench_script("bench_latent")


def smoke_argv(out: Path, providers, **overrides) -> list[str]:
    """A fast CPU run: tiny size, one dtype, few repetitions, a small copy buffer."""
    options = {
        "--device": "cpu", "--sizes": "tiny", "--dtypes": "float32", "--reps": "3", "--min-reps": "1",
        "--warmup": "1", "--copy-mib": "8", "--providers": ",".join(providers), "--out": str(out),
    }
    options.update(overrides)
    return [item for pair in options.items() for item in pair]


def is_positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_latent_tiny_cpu(bench_latent, tmp_path, capsys):
    providers = ["eager", "compile"] + (["triton"] if "triton" in backends.available("cpu") else [])
    out = tmp_path / "latent.json"
    assert bench_latent.main(smoke_argv(out, providers)) == 0

    payload = json.loads(out.read_text())
    meta = payload["metadata"]
    for key in ("date_utc", "command", "torch", "triton", "python", "fastvae", "device"):
        assert key in meta, key
    assert meta["device"]["type"] == "cpu" and meta["device"]["name"]
    assert meta["command"].startswith("python bench/bench_latent.py --device cpu")
    node = platform.node()
    if len(node) >= 8:  # a short host name could match by chance
        assert node not in out.read_text(), "results must not name the host"
    assert is_positive_finite(payload["copy"]["gbps"])

    records = payload["records"]
    keys = {(r["op"], r["mode"], r["provider"]) for r in records}
    assert keys == {(op, mode, p) for op in OPS for mode in MODES for p in providers}
    assert len(records) == len(keys)
    for record in records:
        label = f"{record['op']} {record['mode']} {record['provider']}"
        assert record["error"] is None, f"{label}: {record['error']}"
        assert (record["batch"], record["dim"], record["dtype"]) == (TINY_BATCH, TINY_DIM, "float32")
        for field in ("median_ms", "min_ms", "gbps", "pct_of_copy", "min_bytes"):
            assert is_positive_finite(record[field]), f"{label}: {field} = {record[field]}"
        assert record["min_ms"] <= record["median_ms"]
        assert record["gbps"] == pytest.approx(record["min_bytes"] / (record["median_ms"] * 1e-3) / 1e9)
        assert record["peak_extra_mib"] is None  # no peak-memory counter on the CPU
        assert record["rel_err_vs_eager"] < 1e-4, label
        if record["provider"] == "eager":
            assert record["speedup_vs_eager"] == 1.0
        if record["provider"] == "compile":
            assert record["speedup_vs_compile"] == 1.0
        assert is_positive_finite(record["speedup_vs_eager"]) and is_positive_finite(record["speedup_vs_compile"])

    elements = TINY_BATCH * TINY_DIM
    by_key = {(r["op"], r["mode"], r["provider"]): r for r in records}
    # DESIGN.md: sample_gaussian fwd+bwd moves 32 bytes per element in float32 (plus the
    # [B] float32 KL and its gradient, 8 bytes per row).
    assert by_key["sample_gaussian", "fwd+bwd", "eager"]["min_bytes"] == 32 * elements + 8 * TINY_BATCH
    assert by_key["gaussian_kl", "fwd+bwd", "eager"]["min_bytes"] == 24 * elements + 8 * TINY_BATCH

    printed = capsys.readouterr().out
    assert "| op | B×D | dtype | mode | provider | median ms |" in printed
    assert printed.count("| sample_gaussian | 64x16 | float32 |") == 3 * len(providers)
    assert out.with_suffix(".md").read_text().strip() == printed.strip()


def test_bench_latent_merge_keeps_other_records(bench_latent, tmp_path, capsys):
    out = tmp_path / "merged.json"
    base = smoke_argv(out, ["eager"], **{"--modes": "fwd"})
    bench_latent.main(base + ["--ops", "sample_gaussian"])
    bench_latent.main(base + ["--ops", "gaussian_kl", "--merge"])
    payload = json.loads(out.read_text())
    assert {(r["op"], r["mode"]) for r in payload["records"]} == {("sample_gaussian", "fwd"), ("gaussian_kl", "fwd")}
    assert len(payload["metadata"]["previous_runs"]) == 1


def test_bench_latent_records_a_failing_provider_and_goes_on(bench_latent, tmp_path, monkeypatch):
    """A provider that fails (as torch.compile may) leaves its error string in its
    records; the other providers are still timed."""
    real_build_forward = bench_latent.build_forward

    def build_forward(op, provider):
        if provider == "compile":
            raise RuntimeError("compile broke")
        return real_build_forward(op, provider)

    monkeypatch.setattr(bench_latent, "build_forward", build_forward)
    out = tmp_path / "failing.json"
    bench_latent.main(smoke_argv(out, ["eager", "compile"], **{"--ops": "gaussian_kl"}))
    records = {(r["mode"], r["provider"]): r for r in json.loads(out.read_text())["records"]}
    for mode in MODES:
        assert records[mode, "compile"]["error"] == "RuntimeError: compile broke"
        assert records[mode, "compile"]["median_ms"] is None
        assert records[mode, "eager"]["error"] is None and records[mode, "eager"]["median_ms"] > 0
    assert "compile broke" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("dtype, fwd, bwd", [(torch.float32, 12, 20), (torch.bfloat16, 6, 10)])
def test_sample_gaussian_min_bytes(bench_latent, dtype, fwd, bwd):
    batch, dim = 4096, 64
    per_row = 4 * batch  # the [B] float32 KL (fwd) or its gradient (bwd)
    assert bench_latent.sample_gaussian_min_bytes(batch, dim, dtype, "fwd") == fwd * batch * dim + per_row
    assert bench_latent.sample_gaussian_min_bytes(batch, dim, dtype, "bwd") == bwd * batch * dim + per_row
    assert bench_latent.sample_gaussian_min_bytes(batch, dim, dtype, "fwd+bwd") == (fwd + bwd) * batch * dim + 2 * per_row


def test_gaussian_kl_min_bytes(bench_latent):
    batch, dim = 4096, 64
    assert bench_latent.gaussian_kl_min_bytes(batch, dim, torch.float32, "fwd") == 8 * batch * dim + 4 * batch
    assert bench_latent.gaussian_kl_min_bytes(batch, dim, torch.float32, "bwd") == 16 * batch * dim + 4 * batch
    assert bench_latent.gaussian_kl_min_bytes(batch, dim, torch.bfloat16, "fwd+bwd") == 12 * batch * dim + 8 * batch


def test_bench_latent_help_and_bad_arguments(bench_latent, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_latent.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--providers" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown mode"):
        bench_latent.main(["--device", "cpu", "--sizes", "tiny", "--modes", "sideways"])


def test_common_helpers(bench_latent):
    common = bench_latent.common
    assert common.parse_shapes("tiny", bench_latent.SIZE_PRESETS) == [(TINY_BATCH, TINY_DIM)]
    assert common.parse_shapes("8x4,2x3", {}) == [(8, 4), (2, 3)]
    records = [
        {"op": "a", "mode": "fwd", "provider": "eager", "median_ms": 4.0},
        {"op": "a", "mode": "fwd", "provider": "compile", "median_ms": 2.0},
        {"op": "a", "mode": "fwd", "provider": "triton", "median_ms": 1.0},
        {"op": "a", "mode": "fwd", "provider": "cuda", "median_ms": None},
    ]
    common.add_speedups(records, ("op", "mode"))
    assert [r["speedup_vs_eager"] for r in records] == [1.0, 2.0, 4.0, None]
    assert [r["speedup_vs_compile"] for r in records] == [0.5, 1.0, 2.0, None]
    merged = common.merge_records(records[:2], [{"op": "a", "mode": "fwd", "provider": "compile", "median_ms": 3.0}],
                                  ("op", "mode", "provider"))
    assert [r["median_ms"] for r in merged] == [4.0, 3.0]
    assert common.format_number(None) == "—" and common.format_number(0.012345) == "0.0123"
    assert common.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
