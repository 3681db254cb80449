"""Smoke tests of the benchmarks on the CPU (CI): bench/bench_latent.py,
bench/bench_likelihood.py and bench/bench_train.py run end to end at a tiny size with the
eager and compile providers (and Triton, under the interpreter that tests/conftest.py
switches on without a GPU), write their JSON and markdown, and print their tables; plus
the minimum-bytes models, the bar checks, the training benchmark's routing check and the
shared helpers in bench/common.py.

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
OPS = ("sample_gaussian", "gaussian_kl", "reparameterize")


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
        # Counted on the CPU too (common.cpu_allocations): eager's forward saves tensors.
        assert record["peak_extra_mib"] >= 0, label
        if record["provider"] == "eager" and record["mode"] == "fwd":
            assert record["peak_extra_mib"] > 0, label
        assert record["rel_err_vs_eager"] < 1e-4, label
        if record["provider"] == "eager":
            assert record["speedup_vs_eager"] == 1.0
        if record["provider"] == "compile":
            assert record["speedup_vs_compile"] == 1.0
        assert is_positive_finite(record["speedup_vs_eager"]) and is_positive_finite(record["speedup_vs_compile"])

    elements = TINY_BATCH * TINY_DIM
    by_key = {(r["op"], r["mode"], r["provider"]): r for r in records}
    # The byte model (bench/README.md): sample_gaussian fwd+bwd moves 32 bytes per element in float32 (plus the
    # [B] float32 KL and its gradient, 8 bytes per row).
    assert by_key["sample_gaussian", "fwd+bwd", "eager"]["min_bytes"] == 32 * elements + 8 * TINY_BATCH
    assert by_key["gaussian_kl", "fwd+bwd", "eager"]["min_bytes"] == 24 * elements + 8 * TINY_BATCH
    assert by_key["reparameterize", "fwd+bwd", "eager"]["min_bytes"] == 28 * elements

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


def test_reparameterize_min_bytes(bench_latent):
    batch, dim = 4096, 64
    assert bench_latent.reparameterize_min_bytes(batch, dim, torch.float32, "fwd") == 12 * batch * dim
    assert bench_latent.reparameterize_min_bytes(batch, dim, torch.float32, "bwd") == 16 * batch * dim
    assert bench_latent.reparameterize_min_bytes(batch, dim, torch.bfloat16, "fwd+bwd") == 14 * batch * dim


def test_bench_latent_philox_floor_and_cpu_bars(bench_latent, tmp_path):
    """With the cpu backend the run times the extension's bare Philox + Box–Muller loop,
    gives each sampling op's cpu records their time over it, and checks every op at the
    tiny size against eager (no op slower than eager)."""
    if "cpu" not in backends.available("cpu") or bench_latent.philox_normal_floor() is None:
        pytest.skip("the CPU C++ backend is not built here")
    out = tmp_path / "floor.json"
    assert bench_latent.main(smoke_argv(out, ["eager", "cpu"], **{"--modes": "fwd+bwd"})) == 0
    records = json.loads(out.read_text())["records"]
    (floor,) = [r for r in records if r["op"] == "philox_floor"]
    assert is_positive_finite(floor["median_ms"]) and is_positive_finite(floor["normals_per_s"])
    for record in records:
        sampling_cpu = record["op"] in ("sample_gaussian", "reparameterize") and record["provider"] == "cpu"
        if sampling_cpu:
            assert record["x_philox_floor"] == pytest.approx(record["median_ms"] / floor["median_ms"])
        else:
            assert record["x_philox_floor"] is None
    largest, rows = bench_latent.bar_rows(records, "cpu")
    assert largest == (TINY_BATCH, TINY_DIM)
    assert {r["op"] for r in rows} == set(OPS)
    assert all(r["criteria"] == bench_latent.common.describe_criteria(bench_latent.CPU_TINY_BAR) for r in rows)
    report = out.with_suffix(".md").read_text()
    assert "## Philox floor (cpu)" in report and "| philox_floor |" not in report.split("## Philox floor")[0]


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


# --------------------------------------------------------------------------------------
# CPU memory (bench/common.py, cpu_allocations)
# --------------------------------------------------------------------------------------


def test_cpu_allocations_counts_temporaries_exactly(bench_latent):
    """A temporary of N bytes freed before the call returns is N bytes of peak extra
    memory; one that ATen allocates inside C++ is counted too: ``mm`` into an output
    that is neither row- nor column-major computes into a contiguous buffer and copies
    it (a TorchDispatchMode would see only ``aten.mm.out``)."""
    common = bench_latent.common

    def python_temporary():
        scratch = torch.empty(1000, dtype=torch.uint8)
        del scratch
        return (torch.ones(10),)  # 40 bytes returned: part of the level, not extra

    usage = common.cpu_allocations(python_temporary)
    assert (usage.peak_bytes, usage.end_bytes, usage.output_bytes) == (1000, 40, 40)
    assert common.peak_extra_memory_mib(python_temporary, torch.device("cpu")) == (1000 - 40) / common.MIB

    a, b = torch.randn(64, 32), torch.randn(32, 48)
    out = torch.empty(64, 96)[:, ::2]

    def mm_into_strided_output():
        torch.mm(a, b, out=out)
        return ()  # out existed before the call: nothing new is returned

    usage = common.cpu_allocations(mm_into_strided_output)
    assert (usage.peak_bytes, usage.end_bytes) == (64 * 48 * 4, 0)
    torch.testing.assert_close(out, a @ b)


def _saved_tensors(output: torch.Tensor) -> list:
    """Every tensor the autograd graph behind ``output`` saved (its nodes' ``_saved_*``)."""
    found, seen, pending = [], set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                found += [t for t in (value if isinstance(value, (tuple, list)) else [value])
                          if isinstance(t, torch.Tensor)]
        pending += [next_node for next_node, _ in node.next_functions]
    return found


def _mixture_inputs(batch=2, components=10, side=8):
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(batch, 10 * components, side, side, generator=generator)
    params[:, 3 * components:6 * components] = params[:, 3 * components:6 * components] * 0.5 - 2  # log-scales
    x = torch.randint(0, 256, (batch, 3, side, side), generator=generator).float() / 127.5 - 1
    return params.requires_grad_(), x, components, torch.randn(batch, generator=generator)


def test_cpu_allocations_counts_saved_tensors_and_their_release(bench_latent):
    """The eager mixture's forward leaves allocated exactly the tensors its autograd
    graph saved (distinct storages, inputs and output aside); a backward run after a
    forward done in ``setup`` ends with those freed and the gradient allocated."""
    from fastvae import reference

    common = bench_latent.common
    params, x, components, grad_nll = _mixture_inputs()
    kept = {}

    def forward():
        kept["nll"] = reference.discretized_logistic_mixture_nll(params, x, components, reduction="batch")
        return (kept["nll"],)

    usage = common.cpu_allocations(forward)
    held = {t.untyped_storage().data_ptr() for t in (params, x, kept["nll"])}
    saved = [t for t in _saved_tensors(kept["nll"]) if t.untyped_storage().data_ptr() not in held]
    saved_bytes = common.storage_bytes(saved)
    # About a dozen B×C×K×H×W tensors (params has 10K channels, C·K = 3K): more than 3× params.
    assert saved_bytes > 3 * params.numel() * 4
    assert usage.end_bytes - usage.output_bytes == saved_bytes
    assert usage.peak_bytes >= usage.end_bytes

    pending = {}
    usage = common.cpu_allocations(
        lambda: torch.autograd.grad(pending.pop("nll"), params, grad_nll),
        setup=lambda: pending.update(nll=forward()[0]),
    )
    assert usage.output_bytes == params.numel() * 4
    assert usage.end_bytes == usage.output_bytes - saved_bytes


@pytest.mark.skipif("cpu" not in backends.available("cpu"), reason="the cpu backend is not built")
def test_cpu_mixture_extra_memory_is_a_tenth_of_eager(bench_latent):
    """The mixture's memory bar (bench/README.md): fwd+bwd peak extra memory of the cpu
    backend ≤ 1/10 of eager's (the reference's), counted by common.cpu_allocations."""
    import fastvae
    from fastvae import reference

    common = bench_latent.common
    params, x, components, grad_nll = _mixture_inputs()

    def forward_backward(nll_of):
        def call():
            nll = nll_of(params, x, components, reduction="batch")
            return (nll,) + torch.autograd.grad(nll, params, grad_nll)
        return call

    cpu = torch.device("cpu")
    eager = common.peak_extra_memory_mib(forward_backward(reference.discretized_logistic_mixture_nll), cpu)
    fastvae.set_validate_args(False)  # as the benchmarks measure: the checks' temporaries are not the op's
    with fastvae.use_backend("cpu"):
        fused = common.peak_extra_memory_mib(forward_backward(fastvae.discretized_logistic_mixture_nll), cpu)
    assert eager > 0
    assert fused <= eager / 10, f"cpu backend {fused * common.MIB:.0f} bytes, eager {eager * common.MIB:.0f}"


# --------------------------------------------------------------------------------------
# bench/bench_likelihood.py
# --------------------------------------------------------------------------------------

LIKELIHOOD_OPS = ("bernoulli_nll", "gaussian_nll", "discretized_logistic_mixture_nll")
# The tiny preset: bernoulli 64×32, gaussian 64×48, the mixture B=2, K=3, x 3×4×4.
TINY_LIKELIHOOD = {
    "bernoulli_nll": ("64x32", None, 64 * 32),
    "gaussian_nll": ("64x48", None, 64 * 48),
    "discretized_logistic_mixture_nll": ("2x3x4x4", 3, 2 * 3 * 4 * 4),
}


@pytest.fixture(scope="module")
def bench_likelihood():
    return load_bench_script("bench_likelihood")


def test_bench_likelihood_tiny_cpu(bench_likelihood, tmp_path, capsys):
    import fastvae

    providers = ["eager", "compile"] + (["triton"] if "triton" in backends.available("cpu") else [])
    out = tmp_path / "likelihood.json"
    # One timed repetition per case: the interpreted mixture kernel takes ~0.5 s a call.
    assert bench_likelihood.main(smoke_argv(out, providers, **{"--budget-ms": "1"})) == 0

    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "likelihood"
    meta = payload["metadata"]
    assert meta["command"].startswith("python bench/bench_likelihood.py --device cpu")
    assert meta["device"]["type"] == "cpu" and meta["mixture_x"] == "float"
    assert is_positive_finite(payload["copy"]["gbps"])

    records = payload["records"]
    keys = {(r["op"], r["mode"], r["provider"]) for r in records}
    assert keys == {(op, mode, p) for op in LIKELIHOOD_OPS for mode in MODES for p in providers}
    assert len(records) == len(keys)
    for record in records:
        label = f"{record['op']} {record['mode']} {record['provider']}"
        shape, num_mixtures, elements = TINY_LIKELIHOOD[record["op"]]
        assert (record["shape"], record["num_mixtures"], record["elements"]) == (shape, num_mixtures, elements), label
        assert record["dtype"] == record["x_dtype"] == "float32"
        assert is_positive_finite(record["min_bytes"])
        assert record["bytes_per_element"] == pytest.approx(record["min_bytes"] / elements)
        if record["provider"] not in ("eager", "compile") and not hasattr(fastvae, record["op"]):
            # A fused op not written yet: skipped with the reason, neither timed nor an error.
            assert record["skipped"] and record["op"] in record["skipped"], label
            assert record["median_ms"] is None and record["error"] is None
            continue
        assert record["error"] is None and record["skipped"] is None, f"{label}: {record['error']}"
        for field in ("median_ms", "min_ms", "gbps", "pct_of_copy"):
            assert is_positive_finite(record[field]), f"{label}: {field} = {record[field]}"
        assert record["min_ms"] <= record["median_ms"]
        assert record["gbps"] == pytest.approx(record["min_bytes"] / (record["median_ms"] * 1e-3) / 1e9)
        # Counted on the CPU too (common.cpu_allocations); eager's forward saves tensors, so
        # every fwd record has a ratio to it.
        assert record["peak_extra_mib"] >= 0, label
        if record["mode"] == "fwd":
            assert record["peak_extra_vs_eager"] >= 0, label
            if record["provider"] == "eager":
                assert record["peak_extra_mib"] > 0 and record["peak_extra_vs_eager"] == 1.0, label
        assert record["rel_err_vs_eager"] < 1e-4, label
        assert is_positive_finite(record["speedup_vs_eager"]) and is_positive_finite(record["speedup_vs_compile"])
        if record["provider"] == "eager":
            assert record["speedup_vs_eager"] == 1.0

    by_key = {(r["op"], r["mode"], r["provider"]): r for r in records}
    # By hand, float32 (4 bytes), reduction='batch' (a [B] float32 nll and its gradient):
    # bernoulli 64×32 fwd+bwd: forward reads logits, x; backward reads logits, x, writes
    # grad_logits: 5 × 2048 elements × 4 bytes, plus 4 bytes per row each way.
    assert by_key["bernoulli_nll", "fwd+bwd", "eager"]["min_bytes"] == 5 * 2048 * 4 + 8 * 64
    # gaussian 64×48 bwd (scalar logvar, only mean gets a gradient): read mean, x, write grad_mean.
    assert by_key["gaussian_nll", "bwd", "eager"]["min_bytes"] == 3 * 3072 * 4 + 4 * 64
    # The mixture, 32 pixels of P = 10·3 = 30 params and 3 sub-pixels of x: forward reads
    # params and x; backward reads params and x and writes grad_params.
    mixture = by_key["discretized_logistic_mixture_nll", "fwd+bwd", "eager"]
    assert mixture["min_bytes"] == 32 * (3 * 30 * 4 + 2 * 3 * 4) + 8 * 2 == 12304

    printed = capsys.readouterr().out
    assert "| op | x shape | dtype | mode | provider | median ms |" in printed
    assert printed.count("| discretized_logistic_mixture_nll | 2x3x4x4 K=3 | float32 |") == 3 * len(providers)
    assert "## Performance bars" in printed
    assert out.with_suffix(".md").read_text().strip() == printed.strip()


def test_bench_likelihood_skips_a_missing_op(bench_likelihood, tmp_path, monkeypatch):
    """A fused op not in fastvae yet: the kernel provider's records say why, the
    baselines are still timed, and the report lists the skip once."""
    common = bench_likelihood.common
    case = bench_likelihood.Case("bernoulli_nll", (4, 8), torch.float32, torch.float32)
    monkeypatch.delattr(bench_likelihood.fastvae, "bernoulli_nll", raising=False)
    with pytest.raises(common.ProviderSkipped, match="bernoulli_nll"):
        bench_likelihood.build_forward(case, "triton")

    real_build_forward = bench_likelihood.build_forward

    def build_forward(case, provider):
        return real_build_forward(case, "triton" if provider == "compile" else provider)

    monkeypatch.setattr(bench_likelihood, "build_forward", build_forward)
    out = tmp_path / "skipped.json"
    bench_likelihood.main(smoke_argv(out, ["eager", "compile"], **{"--ops": "bernoulli_nll"}))
    records = {(r["mode"], r["provider"]): r for r in json.loads(out.read_text())["records"]}
    for mode in MODES:
        assert "bernoulli_nll" in records[mode, "compile"]["skipped"]
        assert records[mode, "compile"]["median_ms"] is None and records[mode, "compile"]["error"] is None
        assert records[mode, "eager"]["median_ms"] > 0 and records[mode, "eager"]["skipped"] is None
    report = out.with_suffix(".md").read_text()
    assert report.count("bernoulli_nll is not in this fastvae yet") == 1


@pytest.mark.parametrize("dtype, x_dtype, fwd, bwd", [
    (torch.float32, torch.float32, 100 * 4 + 3 * 4, 200 * 4 + 3 * 4),
    (torch.bfloat16, torch.bfloat16, 100 * 2 + 3 * 2, 200 * 2 + 3 * 2),
    (torch.float32, torch.uint8, 100 * 4 + 3, 200 * 4 + 3),
])
def test_mixture_min_bytes(bench_likelihood, dtype, x_dtype, fwd, bwd):
    """Per pixel, K = 10, C = 3: P = 100 params read forward; backward reads them again
    and writes their gradient; x (3 sub-pixels) read in each pass; 4 bytes per sample."""
    batch, k, c, h, w = 16, 10, 3, 64, 64
    pixels = batch * h * w
    nbytes = bench_likelihood.mixture_nll_min_bytes
    assert nbytes(batch, k, c, h, w, dtype, x_dtype, "fwd") == fwd * pixels + 4 * batch
    assert nbytes(batch, k, c, h, w, dtype, x_dtype, "bwd") == bwd * pixels + 4 * batch
    assert nbytes(batch, k, c, h, w, dtype, x_dtype, "fwd+bwd") == (fwd + bwd) * pixels + 8 * batch
    # C = 1: P = 3K.
    assert nbytes(2, 5, 1, 3, 3, torch.float32, torch.float32, "fwd") == 18 * (15 * 4 + 4) + 8


def test_elementwise_likelihood_min_bytes(bench_likelihood):
    batch, dim = 65536, 784
    for formula in (bench_likelihood.bernoulli_nll_min_bytes, bench_likelihood.gaussian_nll_min_bytes):
        assert formula(batch, dim, torch.float32, "fwd") == 8 * batch * dim + 4 * batch
        assert formula(batch, dim, torch.float32, "bwd") == 12 * batch * dim + 4 * batch
        assert formula(batch, dim, torch.bfloat16, "fwd+bwd") == 10 * batch * dim + 8 * batch


def test_bench_likelihood_sizes_and_bars(bench_likelihood, tmp_path):
    sizes = bench_likelihood.parse_sizes("default")
    assert sizes["bernoulli_nll"] == [(65536, 784)] and sizes["gaussian_nll"] == [(65536, 3072)]
    assert sizes["discretized_logistic_mixture_nll"] == [(64, 10, 3, 32, 32), (16, 10, 3, 64, 64)]
    custom = bench_likelihood.parse_sizes("128x784,4x10x3x8x8")
    assert custom["bernoulli_nll"] == custom["gaussian_nll"] == [(128, 784)]
    assert custom["discretized_logistic_mixture_nll"] == [(4, 10, 3, 8, 8)]
    with pytest.raises(SystemExit, match="BxKxCxHxW"):
        bench_likelihood.parse_sizes("4x10x2x8x8")
    with pytest.raises(SystemExit, match="unknown op"):
        bench_likelihood.main(["--device", "cpu", "--sizes", "tiny", "--ops", "poisson_nll"])

    # The mixture's GPU bar at its largest size (the two default sizes tie): ≥ 8× eager,
    # ≥ 2× compile, extra memory ≤ 1/10 of eager's; baselines are not checked.
    def record(shape, provider, eager, compile_, memory, pct=None):
        return {"op": "discretized_logistic_mixture_nll", "shape": shape, "num_mixtures": 10, "dtype": "float32",
                "mode": "fwd+bwd", "provider": provider, "elements": 196608, "error": None, "skipped": None,
                "speedup_vs_eager": eager, "speedup_vs_compile": compile_, "peak_extra_vs_eager": memory,
                "pct_of_copy": pct}

    records = [record("64x3x32x32", "eager", 1.0, 0.3, 1.0), record("64x3x32x32", "triton", 9.0, 2.5, 0.05),
               record("16x3x64x64", "triton", 9.0, 2.5, 0.2)]
    largest, rows = bench_likelihood.bar_rows(records, "cuda")
    assert largest == {"discretized_logistic_mixture_nll": 196608}
    assert [(r["shape"], r["verdict"]) for r in rows] == [("64x3x32x32", "met"),
                                                          ("16x3x64x64", "missed: peak_extra_vs_eager")]
    assert bench_likelihood.bar_rows(records, "cpu")[1] == []  # the CPU bar is the cpu backend's


# --------------------------------------------------------------------------------------
# bench/bench_train.py
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_train():
    return load_bench_script("bench_train")


def test_bench_train_tiny_cpu(bench_train, tmp_path, capsys):
    """Every provider trains both tiny models: timed, checked against eager, routed as
    named (eager runs no fastvae custom op; Triton runs the fused ops)."""
    triton = "triton" in backends.available("cpu")
    # aot_eager: the compile path (dynamo, AOTAutograd) without inductor's minutes-long
    # CPU code generation; the GPU run uses inductor.
    providers = ["eager", "compile"] + (["triton", "triton+compile"] if triton else [])
    out = tmp_path / "train.json"
    argv = ["--device", "cpu", "--tiny", "--reps", "2", "--min-reps", "1", "--warmup", "1", "--budget-ms", "1",
            "--compile-backend", "aot_eager", "--op-share-steps", "1", "--providers", ",".join(providers), "--out", str(out)]
    assert bench_train.main(argv) == 0

    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "train"
    meta = payload["metadata"]
    assert meta["command"].startswith("python bench/bench_train.py --device cpu --tiny")
    assert meta["device"]["type"] == "cpu" and meta["compile_backend"] == "aot_eager"
    records = payload["records"]
    cases = {("mlp", 16, "784"), ("conv_mixture", 2, "3x8x8")}
    assert {(r["model"], r["batch"], r["input"], r["provider"]) for r in records} == {
        case + (p,) for case in cases for p in providers}
    for record in records:
        label = f"{record['model']} {record['provider']}"
        assert record["error"] is None, f"{label}: {record['error']}"
        assert record["dtype"] == "float32"
        for field in ("median_ms", "min_ms", "steps_per_s", "samples_per_s", "speedup_vs_eager", "speedup_vs_compile"):
            assert is_positive_finite(record[field]), f"{label}: {field} = {record[field]}"
        assert record["steps_per_s"] == pytest.approx(1e3 / record["median_ms"])
        assert record["samples_per_s"] == pytest.approx(record["batch"] * record["steps_per_s"])
        # On the CPU: the step's extra memory (activations, gradients, Adam's temporaries),
        # but no total (nothing counts what was allocated before the profiler started).
        assert record["peak_mib"] is None and is_positive_finite(record["peak_extra_mib"]), label
        # The ops' share of the step, from a profile of a few more steps.
        if record["provider"] == "compile":
            assert record["op_share"] is None and record["op_share_method"] is None, label
        else:
            assert 0 < record["op_share"] < 1 and is_positive_finite(record["op_ms"]), label
            assert record["op_share_method"] == ("custom ops" if record["compiled"] else "op ranges"), label
        if record["backend"] == "torch":
            assert record["custom_op_ms"] is None, label
        else:
            assert is_positive_finite(record["custom_op_ms"]), label
            if not record["compiled"]:  # the custom ops run inside the public ops
                assert record["custom_op_ms"] <= record["op_ms"] * (1 + 1e-9), label
        assert record["rel_err_vs_eager"] < 1e-3, label
        assert record["backend"] == ("torch" if record["provider"] in ("eager", "compile") else "triton")
        assert record["compiled"] == record["provider"].endswith("compile")
        if record["backend"] == "torch":
            assert record["fastvae_ops"] == [], label
        else:
            assert record["fastvae_ops"], label
    if triton:
        by_key = {(r["model"], r["provider"]): r for r in records}
        # The mixture model's step runs the fused mixture op; the MLP's the Bernoulli one.
        assert any("mixture" in op for op in by_key["conv_mixture", "triton"]["fastvae_ops"])
        assert any("bernoulli" in op for op in by_key["mlp", "triton"]["fastvae_ops"])
    printed = capsys.readouterr().out
    assert "| model | batch | input | dtype | provider | median ms | steps/s |" in printed
    assert "| ops ms | ops % |" in printed
    assert out.with_suffix(".md").read_text().strip() == printed.strip()


def test_bench_train_eager_routes_every_op_through_the_reference(bench_train, monkeypatch):
    """fastvae.use_backend('torch') runs the models' every op as fastvae.reference's
    PyTorch: no kernel module is ever looked up, and the reference functions are called."""
    import fastvae
    from fastvae import reference
    from fastvae.ops import _common

    def no_kernels(backend, family):
        raise AssertionError(f"the torch backend looked up {backend} kernels of {family}")

    monkeypatch.setattr(_common, "kernel_module", no_kernels)
    called = set()
    for name in ("sample_gaussian", "bernoulli_nll", "discretized_logistic_mixture_nll"):
        original = getattr(reference, name)
        monkeypatch.setattr(reference, name, lambda *a, _f=original, _n=name, **k: called.add(_n) or _f(*a, **k))
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    with fastvae.use_backend("torch"):
        for name, side in (("mlp", None), ("conv_mixture", 8)):
            case = bench_train.MODELS[name]
            model = bench_train.new_model(case, side, device)
            step = bench_train.training_step(model, torch.optim.Adam(model.parameters()), device, "float32")
            x = bench_train.make_batch(case, 4, side, device, generator)
            assert bench_train.fastvae_ops_of_step(step, x) == []
    assert called == {"sample_gaussian", "bernoulli_nll", "discretized_logistic_mixture_nll"}


def test_op_share_attributes_backward_nodes_by_sequence_number(bench_train):
    """The op share counts an op's forward range and the backward nodes created inside
    it, not those of ops before or after it, even where an op at the range's end
    records the number the next node (outside) will take."""
    from torch.profiler import ProfilerActivity, profile, record_function

    weight = torch.randn(256, requires_grad=True)
    data = torch.randn(256)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        with record_function(bench_train.STEP_RANGE):
            before = weight * 2  # MulBackward0: not the op's
            with record_function(bench_train.OP_RANGE_PREFIX + "example"):
                inside = before.exp().sum()  # ExpBackward0, SumBackward0
                data.neg()  # no node, but it records the next node's number
            (inside * 3).backward()  # MulBackward0: not the op's
    share = bench_train.op_share_of_events(profiler.profiler.kineto_results.events(), ranges=True)
    assert share["steps"] == 1
    assert share["backward_nodes"] == ["ExpBackward0", "SumBackward0"]
    assert 0 < share["op_ms"] < share["step_ms"] and share["op_share"] == pytest.approx(share["op_ms"] / share["step_ms"])
    assert share["custom_op_ms"] == 0
    assert bench_train._union_ns([(0, 10), (5, 20), (30, 40)]) == 30


def test_bench_train_routing_check_and_arguments(bench_train):
    with pytest.raises(RuntimeError, match="still ran fastvae custom ops"):
        bench_train.check_routing("eager", ["gaussian_latent_fwd"])
    with pytest.raises(RuntimeError, match="ran no fastvae custom op"):
        bench_train.check_routing("triton+compile", [])
    bench_train.check_routing("compile", [])
    assert bench_train.provider_backend("cuda+compile") == "cuda" and bench_train.provider_backend("compile") == "torch"
    assert bench_train.parse_sizes("default") == [("mlp", 4096, None), ("mlp", 65536, None), ("conv_mixture", 128, 32)]
    assert bench_train.parse_sizes("cpu") == [("mlp", 1024, None), ("conv_mixture", 32, 32)]
    assert bench_train.parse_sizes("mlp:8,conv_mixture:4:16") == [("mlp", 8, None), ("conv_mixture", 4, 16)]
    for bad in ("resnet:4", "mlp:0", "conv_mixture:4:10", "mlp"):
        with pytest.raises(SystemExit):
            bench_train.parse_sizes(bad)
    with pytest.raises(SystemExit, match="not available"):
        bench_train.parse_providers("eager,cuda", torch.device("cpu"))
    # The GPU bar: the conv mixture VAE at 3x32x32, kernel providers, >= 1.5x eager.
    records = [{"model": "conv_mixture", "input": "3x32x32", "provider": p, "speedup_vs_eager": s, "error": None,
                "skipped": None} for p, s in (("eager", 1.0), ("triton", 1.6), ("triton+compile", 1.2))]
    assert [(r["provider"], r["verdict"]) for r in bench_train.bar_rows(records, "cuda")] == [
        ("triton", "met"), ("triton+compile", "missed: speedup_vs_eager")]
    assert bench_train.bar_rows(records, "cpu") == []


# --------------------------------------------------------------------------------------
# bench/bench_deep.py
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_deep():
    return load_bench_script("bench_deep")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads' spinning makes each of
    the tiny model's steps tens of times slower.  (The cpu backend's scratch grows with the
    thread count, so its memory counts are exact for a given thread count.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# About 30 s on the 2-core machine, most of it dynamo tracing the model for the two compiled providers.
@pytest.mark.slow
def test_bench_deep_tiny_mixture_every_cpu_provider(bench_deep, tmp_path, capsys, one_thread):
    """Every CPU provider trains the tiny mixture DeepVAE: timed, checked against eager,
    its step's peak memory counted twice with equal results, and the fused model's peak
    below eager's (the eager mixture's saved temporaries dominate it; bench/README.md,
    "The deep model's training step")."""
    fused = bench_deep.fused_backend(torch.device("cpu"))
    providers = ["eager", "compile"] + (["fastvae", "fastvae+compile"] if fused else [])
    out = tmp_path / "deep.json"
    # aot_eager: the compile path (dynamo, AOTAutograd) without inductor's slow CPU code generation.
    argv = ["--device", "cpu", "--sizes", "tiny_mixture:2", "--reps", "1", "--min-reps", "1", "--warmup", "1",
            "--budget-ms", "1", "--op-share-steps", "1", "--compile-backend", "aot_eager",
            "--providers", ",".join(providers), "--out", str(out)]
    assert bench_deep.main(argv) == 0

    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "deep"
    meta = payload["metadata"]
    assert meta["command"].startswith("python bench/bench_deep.py --device cpu --sizes tiny_mixture:2")
    assert meta["fused_backend"] == fused and meta["providers"] == providers
    assert len(meta["load_average_start"]) == 3 and len(meta["load_average_end"]) == 3
    records = {r["provider"]: r for r in payload["records"]}
    assert sorted(records) == sorted(providers)
    for provider, record in records.items():
        compiled = provider.endswith("compile")
        assert record["error"] is None, f"{provider}: {record['error']}"
        assert (record["model"], record["batch"], record["input"], record["dtype"]) == (
            "tiny_mixture", 2, "3x8x8", "float32")
        assert (record["groups"], record["latent_channels"], record["group_resolutions"]) == (3, 2, [1, 4, 8])
        assert record["parameters"] == sum(p.numel() for p in bench_deep.new_model(
            bench_deep.MODELS["tiny_mixture"], torch.device("cpu")).parameters())
        for field in ("median_ms", "min_ms", "p20_ms", "p80_ms", "steps_per_s", "samples_per_s",
                      "speedup_vs_eager", "speedup_vs_compile", "peak_extra_mib", "peak_extra_vs_eager"):
            assert is_positive_finite(record[field]), f"{provider}: {field} = {record[field]}"
        assert record["min_ms"] <= record["median_ms"] and record["peak_mib"] is None
        # Exact and repeatable: the second count of the step's memory is the first.
        assert record["peak_extra_repeat_mib"] == record["peak_extra_mib"] and record["memory_repeatable"] is True
        assert record["rel_err_vs_eager"] < 1e-3, provider
        assert record["backend"] == ("torch" if provider in ("eager", "compile") else fused)
        assert bool(record["fastvae_ops"]) == (record["backend"] != "torch"), provider
        if compiled:
            assert record["held_mib"] is None and record["likelihood_head_mib"] is None, provider
        else:
            assert record["op_calls"] == {"latent": 3, "likelihood": 1}, provider
            assert record["likelihood_head_repeat_mib"] == record["likelihood_head_mib"] > 0, provider
            for term in ("latent", "likelihood"):
                assert record["held_mib"][term] > 0, (provider, term)
                assert record["held_share"][term] == pytest.approx(record["held_mib"][term] / record["peak_extra_mib"])
            assert 0 < record["op_share"] < 1, provider
    if fused:
        eager = records["eager"]
        for provider in ("fastvae", "fastvae+compile"):
            assert records[provider]["peak_extra_mib"] < eager["peak_extra_mib"], provider
        assert any("mixture" in op for op in records["fastvae"]["fastvae_ops"])
        # Where: the mixture's forward holds less for the backward, and its loss
        # forward+backward alone needs a fraction of eager's.
        assert records["fastvae"]["held_mib"]["likelihood"] < eager["held_mib"]["likelihood"]
        assert records["fastvae"]["likelihood_head_mib"] < eager["likelihood_head_mib"] / 10
    printed = capsys.readouterr().out
    assert "| model | batch | dtype | provider | median ms |" in printed
    assert "## Where fastvae's ops matter" in printed and "load average" in printed
    assert out.with_suffix(".md").read_text().strip() == printed.strip()


def test_bench_deep_sizes_and_providers(bench_deep):
    cpu = torch.device("cpu")
    assert bench_deep.parse_sizes("cpu") == [("mnist_cpu", 64), ("cifar_mixture_cpu", 16)]
    assert bench_deep.parse_sizes("mnist_gpu:8,tiny_bernoulli:2") == [("mnist_gpu", 8), ("tiny_bernoulli", 2)]
    for bad in ("resnet:4", "mnist_cpu:0", "mnist_cpu", "mnist_cpu:x"):
        with pytest.raises(SystemExit, match="--sizes"):
            bench_deep.parse_sizes(bad)
    # The GPU sizes are constructible here (not run): VDVAE's CIFAR-10 model has 43 groups
    # of 16 channels and about 38M parameters.
    assert {name for name, _ in bench_deep.SIZE_PRESETS["gpu"]} == {"cifar_vdvae", "mnist_gpu"}
    vdvae = bench_deep.model_facts(bench_deep.MODELS["cifar_vdvae"])
    assert (vdvae["groups"], vdvae["latent_channels"]) == (43, 16) and 30e6 < vdvae["parameters"] < 45e6
    cpu_mnist = bench_deep.model_facts(bench_deep.MODELS["mnist_cpu"])
    assert cpu_mnist["groups"] == 6 and cpu_mnist["group_resolutions"] == [1, 7, 7, 14, 14, 28]
    assert bench_deep.provider_backend("compile", cpu) == "torch"
    assert bench_deep.provider_backend("cpu+compile", cpu) == "cpu"
    if bench_deep.fused_backend(cpu) is not None:
        assert bench_deep.parse_providers(None, cpu) == ["eager", "compile", "fastvae", "fastvae+compile"]
        assert bench_deep.provider_backend("fastvae+compile", cpu) == bench_deep.fused_backend(cpu)
    with pytest.raises(SystemExit, match="not available"):
        bench_deep.parse_providers("eager,cuda", cpu)
    assert bench_deep.bar_rows([], "cuda") == []


# --------------------------------------------------------------------------------------
# bench/bench_diffusion.py
# --------------------------------------------------------------------------------------

DIFFUSION_CASES = {"diffuse": MODES, "diffusion_loss": MODES, "diffuse_and_loss": ("fwd+bwd",), "step": ("step",)}


@pytest.fixture(scope="module")
def bench_diffusion():
    return load_bench_script("bench_diffusion")


def test_bench_diffusion_tiny_cpu(bench_diffusion, tmp_path, capsys):
    """Every case and provider at the tiny sizes: timed, memory counted, checked against the
    reference with fastvae's noise; a kernel backend without a diffusion kernel is skipped
    with the reason, neither timed nor an error."""
    kernels = [name for name in ("cpu", "triton") if name in backends.available("cpu")]
    providers = ["eager", "compile", "torch"] + kernels
    out = tmp_path / "diffusion.json"
    # aot_eager: the compile path (dynamo, AOTAutograd) without inductor's slow CPU code generation.
    argv = smoke_argv(out, providers, **{"--budget-ms": "1", "--compile-backend": "aot_eager"})
    assert bench_diffusion.main(argv) == 0

    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "diffusion"
    meta = payload["metadata"]
    assert meta["command"].startswith("python bench/bench_diffusion.py --device cpu --sizes tiny")
    assert len(meta["load_average_start"]) == 3 and meta["compile_backend"] == "aot_eager"
    records = payload["records"]
    keys = {(r["op"], r["mode"], r["provider"]) for r in records}
    assert keys == {(op, mode, p) for op, modes in DIFFUSION_CASES.items() for mode in modes for p in providers}
    assert len(records) == len(keys)
    for record in records:
        label = f"{record['op']} {record['mode']} {record['provider']}"
        step = record["op"] == "step"
        assert (record["batch"], record["dim"], record["dtype"]) == ((16, 32) if step else (64, 32)) + ("float32",)
        if record["skipped"]:
            assert record["provider"] in kernels and f"no {record['provider']} kernel" in record["skipped"], label
            assert record["median_ms"] is None and record["error"] is None, label
            continue
        assert record["error"] is None, f"{label}: {record['error']}"
        assert is_positive_finite(record["median_ms"]) and record["min_ms"] <= record["median_ms"], label
        assert record["peak_extra_mib"] >= 0, label
        assert is_positive_finite(record["speedup_vs_eager"]) and is_positive_finite(record["speedup_vs_compile"])
        # torch: the public ops on the reference, the very computation eager is checked in.
        if record["provider"] == "torch":
            assert record["rel_err_vs_eager"] < 1e-6, label
        assert record["rel_err_vs_eager"] < (1e-3 if step else 1e-4), label
        if step:
            assert record["steps_per_s"] == pytest.approx(1e3 / record["median_ms"])
            assert record["samples_per_s"] == pytest.approx(16 * record["steps_per_s"])
            assert record["peak_extra_mib"] > 0 and record["min_bytes"] is None and record["gbps"] is None, label
            assert bool(record["fastvae_ops"]) == (record["provider"] in kernels), label
        else:
            assert record["gbps"] == pytest.approx(record["min_bytes"] / (record["median_ms"] * 1e-3) / 1e9)
    by_key = {(r["op"], r["mode"], r["provider"]): r for r in records}
    # eager's pair holds ε (and ε − ε̂) between forward and backward: counted on the CPU.
    assert by_key["diffuse_and_loss", "fwd+bwd", "eager"]["peak_extra_mib"] > 0
    assert by_key["diffuse_and_loss", "fwd+bwd", "eager"]["peak_extra_vs_eager"] == 1.0
    # By hand, float32, 64×32: diffuse fwd+bwd reads x, γ, ∂z_t, x, γ and writes z_t, ∂x, ∂γ.
    assert by_key["diffuse", "fwd+bwd", "eager"]["min_bytes"] == 5 * 2048 * 4 + 3 * 64 * 4

    printed = capsys.readouterr().out
    assert "| op | B×D | dtype | mode | provider | median ms |" in printed and "## The training step" in printed
    assert printed.count("| diffuse_and_loss | 64x32 | float32 | fwd+bwd |") == len(providers)
    assert out.with_suffix(".md").read_text().strip() == printed.strip()


def test_bench_diffusion_skips_a_backend_without_kernels(bench_diffusion, tmp_path, monkeypatch):
    """The routing probe: the torch backend runs no fastvae custom op; a backend whose
    diffusion ops run none is skipped naming each op it lacks, and the run goes on."""
    common, cpu = bench_diffusion.common, torch.device("cpu")
    assert bench_diffusion.custom_ops_of("diffuse", "torch", cpu, torch.float32) == []
    assert bench_diffusion.custom_ops_of("diffusion_loss", "torch", cpu, torch.float32) == []
    if "cpu" not in backends.available("cpu"):
        pytest.skip("the CPU C++ backend is not built here")
    import fastvae

    recorder = bench_diffusion.FastvaeOpRecorder()  # it sees the fused ops of an op that has them
    with fastvae.use_backend("cpu"), recorder:
        fastvae.gaussian_kl(torch.randn(2, 4), torch.randn(2, 4))
    assert recorder.ops == {"gaussian_latent_fwd"}

    monkeypatch.setattr(bench_diffusion, "custom_ops_of",
                        lambda op, backend, device, dtype: [] if op == "diffusion_loss" else ["diffuse_fwd"])
    assert bench_diffusion.require_fused("diffuse", "cpu", cpu, torch.float32) == ["diffuse_fwd"]
    with pytest.raises(common.ProviderSkipped, match="^fastvae.diffusion_loss has no cpu kernel"):
        bench_diffusion.require_fused("diffuse_and_loss", "cpu", cpu, torch.float32)
    out = tmp_path / "skipped.json"
    bench_diffusion.main(smoke_argv(out, ["eager", "cpu"], **{"--ops": "diffusion_loss,step"}))
    records = json.loads(out.read_text())["records"]
    for record in records:
        label = f"{record['op']} {record['mode']} {record['provider']}"
        if record["provider"] == "cpu":
            assert "fastvae.diffusion_loss has no cpu kernel" in record["skipped"], label
            assert record["median_ms"] is None and record["error"] is None, label
        else:
            assert record["median_ms"] > 0 and record["skipped"] is None, label
    assert out.with_suffix(".md").read_text().count("- step cpu: fastvae.diffusion_loss has no cpu kernel") == 1


def test_diffusion_min_bytes(bench_diffusion):
    batch, dim = 4096, 784
    n = batch * dim
    assert bench_diffusion.diffuse_min_bytes(batch, dim, torch.float32, "fwd") == 8 * n + 4 * batch
    assert bench_diffusion.diffuse_min_bytes(batch, dim, torch.float32, "bwd") == 12 * n + 8 * batch
    assert bench_diffusion.diffuse_min_bytes(batch, dim, torch.bfloat16, "fwd+bwd") == 10 * n + 6 * batch
    loss = bench_diffusion.diffusion_loss_min_bytes
    assert loss(batch, dim, torch.float32, "fwd") == 4 * n + 8 * batch
    assert loss(batch, dim, torch.float32, "bwd") == 8 * n + 12 * batch
    assert loss(batch, dim, torch.bfloat16, "fwd+bwd") == 6 * n + 6 * batch + 8 * batch
    # The pair: 48 bytes per element in float32; per row γ, w, ∂γ, ∂w and their rereads,
    # the float32 loss and its gradient; the [D] scale read twice and its gradient written.
    assert bench_diffusion.diffuse_and_loss_min_bytes(batch, dim, torch.float32) == 48 * n + 32 * batch + 12 * dim
    with pytest.raises(ValueError, match="fwd\\+bwd only"):
        bench_diffusion.diffuse_and_loss_min_bytes(batch, dim, torch.float32, "fwd")


def test_bench_diffusion_baselines_and_sizes(bench_diffusion, capsys):
    """eager is the reference's math with torch.randn's ε (and the loss with a stored ε);
    the sizes and options parse as documented."""
    from fastvae import reference_diffusion

    x, gamma = torch.rand(4, 6) * 2 - 1, torch.tensor([-13.3, -2.0, 0.5, 5.0])
    torch.manual_seed(3)
    z_t, eps = bench_diffusion.diffuse_torch_noise(x, gamma)
    torch.manual_seed(3)
    assert torch.equal(eps, torch.randn(4, 6))
    alpha, sigma = torch.sigmoid(-gamma).sqrt()[:, None], torch.sigmoid(gamma).sqrt()[:, None]
    torch.testing.assert_close(z_t, alpha * x + sigma * eps)
    seed = torch.tensor([11, 0])
    stored = reference_diffusion.noise(seed, (4, 6))
    eps_hat, weight = torch.randn(4, 6), torch.full((4,), 18.3)
    torch.testing.assert_close(bench_diffusion.diffusion_loss_stored_noise(eps_hat, weight, stored),
                               reference_diffusion.diffusion_loss(eps_hat, seed, weight))

    sizes = bench_diffusion.parse_sizes("cpu")
    assert sizes["diffuse"] == [(16384, 784)] and sizes["step"] == [(1024, 784)]
    assert bench_diffusion.parse_sizes("128x784,8x16") == {op: [(128, 784), (8, 16)] for op in DIFFUSION_CASES}
    with pytest.raises(SystemExit, match="BxD"):
        bench_diffusion.parse_sizes("4x3x8x8")
    with pytest.raises(SystemExit, match="unknown op"):
        bench_diffusion.main(["--device", "cpu", "--sizes", "tiny", "--ops", "denoise"])
    from fastvae import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "diffusion", "--help"])
    assert exit_info.value.code == 0
    assert "--compile-backend" in capsys.readouterr().out
