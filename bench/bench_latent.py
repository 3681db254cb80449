"""Benchmark of the Gaussian latent ops, ``sample_gaussian``, ``gaussian_kl`` and ``reparameterize``.

Each op is timed forward (``fwd``), backward alone (``bwd``) and forward plus backward
(``fwd+bwd``), for every provider:

* a fastvae backend (``triton``, ``cuda``, ``cpu``): the public op with that backend chosen;
* ``eager``: the pure-PyTorch reference (:mod:`fastvae.reference`) called directly;
* ``compile``: ``torch.compile`` of the same reference function.

For ``sample_gaussian`` and ``reparameterize`` the baselines are timed as a user's eager model would write it:
the reference's math with ε from ``torch.randn_like``, torch's own generator (compile
fuses it into its kernel).  The reference's own noise is fastvae's Philox stream written
in int64 torch arithmetic, bit-exact with the kernels but dozens of kernels per draw:
timing that would inflate every speedup.  The correctness check of every provider still
runs against the reference with fastvae's noise, from the same seed.  Reported per case: median time, bandwidth against the
minimum bytes (:func:`sample_gaussian_min_bytes`, :func:`gaussian_kl_min_bytes`), percent
of the measured device-to-device copy bandwidth, peak extra memory (CUDA), speedups over
eager and compile, and the relative error of the provider's outputs and gradients
against eager's from the same seed.

With the cpu backend, each size also gets a ``philox_floor`` record: the extension's
bare Philox + Box–Muller loop (``fastvae_philox_normal_floor`` of the cpu extension, the
sampling loops' own code and nothing else) filling B·D normals, and the sampling ops' cpu records get their
time over it (``x_philox_floor``).

Usage (from the repository root)::

    python bench/bench_latent.py                                   # GPU: three sizes, float32 + bfloat16
    python bench/bench_latent.py --device cpu --sizes tiny --reps 3  # CPU smoke run (what CI runs)
    python bench/bench_latent.py --ops sample_gaussian --dtypes bfloat16 --merge

Writes bench/results/latent-<device>.json and a markdown report beside it (with a
``-<preset>`` or ``-custom`` tag for other than the default sizes) and prints the report.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

# bench/ is a folder of scripts, not a package: make its shared helpers importable
# whether this file runs as a script or is loaded by path (tests/test_bench.py).
_BENCH_DIR = str(Path(__file__).resolve().parent)
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import common  # noqa: E402

import fastvae  # noqa: E402
from fastvae import reference  # noqa: E402
from fastvae.random import draw_seed  # noqa: E402

BENCHMARK = "latent"
SIZE_PRESETS = {
    "default": [(4096, 64), (65536, 256), (262144, 512)],
    "tiny": [(64, 16)],
}
MODES = common.MODES
BASELINES = common.BASELINES
# A record is one (op, size, dtype, mode, provider); a case is the same without provider.
CASE_KEYS = ("op", "batch", "dim", "dtype", "mode")
RECORD_KEYS = CASE_KEYS + ("provider",)
INPUT_SEED = 0
FLOAT32_BYTES = 4

# The performance bars (bench/README.md, "Performance bars"): at the largest size, forward+backward.  Each criterion is
# (record field, comparison, threshold), as common.bar_verdict reads them.
LARGEST_DEFAULT_SIZE = SIZE_PRESETS["default"][-1]
GPU_BAR = (("pct_of_copy", ">=", 90.0), ("speedup_vs_eager", ">=", 3.0), ("speedup_vs_compile", ">", 1.0))
GPU_BAR_OPS = ("sample_gaussian", "gaussian_kl")
# The cpu backend's bars, per op: the element-wise ops at half the copy bandwidth, the
# sampling op near the bare cost of its normals.
CPU_BARS = {
    "gaussian_kl": (("pct_of_copy", ">=", 50.0), ("speedup_vs_compile", ">", 1.0)),
    "reparameterize": (("pct_of_copy", ">=", 50.0), ("speedup_vs_compile", ">", 1.0)),
    "sample_gaussian": (("speedup_vs_eager", ">=", 2.0), ("speedup_vs_compile", ">=", 3.0),
                        ("x_philox_floor", "<=", 1.5)),
}
# At the tiny size a call is its Python path: no op slower than eager.
CPU_TINY_BAR = (("speedup_vs_eager", ">=", 1.0),)
PHILOX_FLOOR = "philox_floor"  # the op name of the floor's records


# --------------------------------------------------------------------------------------
# Minimum bytes
# --------------------------------------------------------------------------------------


def sample_gaussian_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``sample_gaussian`` on a [batch, dim] latent must move through memory.

    With n = batch·dim elements of s = dtype's size, z in the input dtype and the KL
    per sample ([batch] float32, ``reduction='batch'``):

    * fwd: read mu, logvar; write z, kl                          → 3·n·s + 4·batch
    * bwd: read grad_z, grad_kl, mu, logvar (ε is regenerated from the seed, never
      stored); write grad_mu, grad_logvar                       → 5·n·s + 4·batch
    * fwd+bwd: the two passes                                    → 8·n·s + 8·batch

    In float32 fwd+bwd is 32 bytes per element (bench/README.md's byte model), plus 8 bytes per row for the
    [batch] KL and its gradient.  The 16-byte seed tensor is left out.
    """
    elements, size = batch * dim, dtype.itemsize
    per_pass = {
        "fwd": 3 * elements * size + FLOAT32_BYTES * batch,
        "bwd": 5 * elements * size + FLOAT32_BYTES * batch,
    }
    per_pass["fwd+bwd"] = per_pass["fwd"] + per_pass["bwd"]
    return per_pass[mode]


def reparameterize_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``reparameterize`` on a [batch, dim] latent must move through memory.

    With n = batch·dim elements of s = dtype's size, z in the input dtype:

    * fwd: read mu, logvar; write z                              → 3·n·s
    * bwd: read grad_z, logvar (∂mu = grad_z; ∂logvar = grad_z·σ·ε/2 with ε regenerated
      from the seed); write grad_mu, grad_logvar                 → 4·n·s
    * fwd+bwd: the two passes                                    → 7·n·s

    (28 bytes per element in float32.)
    """
    elements, size = batch * dim, dtype.itemsize
    per_pass = {"fwd": 3 * elements * size, "bwd": 4 * elements * size}
    per_pass["fwd+bwd"] = per_pass["fwd"] + per_pass["bwd"]
    return per_pass[mode]


def gaussian_kl_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``gaussian_kl`` on a [batch, dim] latent must move through memory.

    With n = batch·dim elements of s = dtype's size and the KL per sample ([batch] float32):

    * fwd: read mu, logvar; write kl                             → 2·n·s + 4·batch
    * bwd: read grad_kl, mu, logvar; write grad_mu, grad_logvar  → 4·n·s + 4·batch
    * fwd+bwd: the two passes                                    → 6·n·s + 8·batch

    (24 bytes per element in float32, plus 8 per row.)
    """
    elements, size = batch * dim, dtype.itemsize
    per_pass = {
        "fwd": 2 * elements * size + FLOAT32_BYTES * batch,
        "bwd": 4 * elements * size + FLOAT32_BYTES * batch,
    }
    per_pass["fwd+bwd"] = per_pass["fwd"] + per_pass["bwd"]
    return per_pass[mode]


# --------------------------------------------------------------------------------------
# The ops and their providers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentOp:
    """One benchmarked op: its public fastvae function, its reference, and its byte model."""

    name: str
    public: Callable  # fastvae.<op>(mu, logvar)
    reference: Callable  # fastvae.reference.<op>(mu, logvar[, seed_offset])
    draws_noise: bool  # the reference takes a seed_offset drawn per call
    min_bytes: Callable[[int, int, torch.dtype, str], int]
    returns_kl: bool = True

    def output_specs(self, batch: int, dim: int, dtype: torch.dtype) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of each output, in the order the op returns them."""
        outputs = [((batch, dim), dtype)] if self.draws_noise else []
        return outputs + [((batch,), torch.float32)] if self.returns_kl else outputs


OPS = {
    "sample_gaussian": LatentOp(
        "sample_gaussian", fastvae.sample_gaussian, reference.sample_gaussian, True, sample_gaussian_min_bytes
    ),
    "gaussian_kl": LatentOp("gaussian_kl", fastvae.gaussian_kl, reference.gaussian_kl, False, gaussian_kl_min_bytes),
    "reparameterize": LatentOp(
        "reparameterize", fastvae.reparameterize, reference.reparameterize, True, reparameterize_min_bytes,
        returns_kl=False,
    ),
}
SAMPLING_OPS = tuple(name for name, op in OPS.items() if op.draws_noise)

Forward = common.Forward


def sample_gaussian_torch_noise(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sample_gaussian as eager PyTorch code writes it: the reference's math, with ε from
    torch's own generator."""
    dtype = reference.compute_dtype(mu, logvar)
    eps = torch.randn(mu.shape, device=mu.device, dtype=dtype)
    z = (mu.to(dtype) + torch.exp(0.5 * logvar.to(dtype)) * eps).to(mu.dtype)
    return z, reference.gaussian_kl(mu, logvar)


def reparameterize_torch_noise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """reparameterize as eager PyTorch code writes it: the reference's math, with ε from
    torch's own generator."""
    dtype = reference.compute_dtype(mu, logvar)
    eps = torch.randn(mu.shape, device=mu.device, dtype=dtype)
    return (mu.to(dtype) + torch.exp(0.5 * logvar.to(dtype)) * eps).to(mu.dtype)


TORCH_NOISE = {"sample_gaussian": sample_gaussian_torch_noise, "reparameterize": reparameterize_torch_noise}


def build_forward(op: LatentOp, provider: str) -> Forward:
    """mu, logvar → the op's outputs as a tuple, for ``provider``, as timed.

    Kernel providers call the public op, which draws its seed itself; the caller makes
    the backend current (``fastvae.use_backend``).  eager and compile draw their noise
    inside the timed call with torch's generator, so all providers pay for it.
    """
    if provider not in BASELINES:
        return lambda mu, logvar: common.as_tuple(op.public(mu, logvar))
    function = TORCH_NOISE.get(op.name, op.reference)
    if provider == "compile":
        function = torch.compile(function, dynamic=False)
    return lambda mu, logvar: common.as_tuple(function(mu, logvar))


def build_check(op: LatentOp, provider: str) -> Forward:
    """The forward whose outputs are checked: the timed one, but for the baselines of an
    op that draws noise, the reference with fastvae's Philox noise from a seed drawn as
    the public op draws it (so every provider is compared on the same ε)."""
    if provider not in BASELINES or not op.draws_noise:
        return build_forward(op, provider)
    return lambda mu, logvar: common.as_tuple(op.reference(mu, logvar, draw_seed(mu.device)))


# --------------------------------------------------------------------------------------
# Inputs and the three modes
# --------------------------------------------------------------------------------------


def make_input_set(op: LatentOp, batch: int, dim: int, dtype: torch.dtype, device: torch.device) -> common.InputSet:
    """mu, logvar (requiring grad, as in training) and random upstream gradients of the
    op's outputs."""
    # Random values, never zeros (METHOD.md): zeros hide unwritten outputs and can run fast.
    mu = torch.randn(batch, dim, device=device).to(dtype).requires_grad_()
    logvar = (0.5 * torch.randn(batch, dim, device=device)).to(dtype).requires_grad_()
    grads = tuple(torch.randn(shape, device=device).to(out_dtype) for shape, out_dtype in op.output_specs(batch, dim, dtype))
    return common.InputSet(args=(mu, logvar), wrt=(mu, logvar), grad_outputs=grads)


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def base_record(op: LatentOp, batch: int, dim: int, dtype: torch.dtype, mode: str, provider: str) -> dict:
    min_bytes = op.min_bytes(batch, dim, dtype, mode)
    return {
        "op": op.name, "batch": batch, "dim": dim, "shape": f"{batch}x{dim}",
        "dtype": common.dtype_name(dtype), "mode": mode, "provider": provider,
        "min_bytes": min_bytes, "bytes_per_element": min_bytes / (batch * dim),
        **common.measurement_fields(),
    }


def bench_group(op, batch, dim, dtype, providers, modes, copy_gbps, device, args) -> list[dict]:
    """All providers and modes of one (op, size, dtype), on shared inputs."""
    return common.bench_case(
        label=f"{op.name} {batch}x{dim} {common.dtype_name(dtype)}",
        providers=providers,
        modes=modes,
        make_records=lambda provider: [base_record(op, batch, dim, dtype, mode, provider) for mode in modes],
        # Looked up at call time, so a test can replace build_forward.
        build=lambda provider: build_forward(op, provider),
        build_check=lambda provider: build_check(op, provider),
        make_input_set=lambda: make_input_set(op, batch, dim, dtype, device),
        footprint_bytes=op.min_bytes(batch, dim, dtype, "fwd+bwd"),
        copy_gbps=copy_gbps,
        device=device,
        args=args,
    )


def philox_normal_floor() -> Optional[Callable[[int, int, int, int], None]]:
    """``fastvae_philox_normal_floor(out address, count, seed, offset)`` of the cpu
    extension (csrc/cpu/latent.cpp), through ctypes (which releases the GIL), or None
    where the extension or the entry is missing."""
    try:
        import fastvae._C as native  # noqa: PLC0415 (optional extension)
    except ImportError:
        return None
    try:
        function = ctypes.CDLL(native.__file__).fastvae_philox_normal_floor
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64]
    function.restype = None
    return function


def philox_floor_record(batch: int, dim: int, device: torch.device, copy_gbps: float, args) -> Optional[dict]:
    """The cpu backend's floor for sampling B·D normals: the extension's Philox +
    Box–Muller loop with nothing else (no loads, no other math, one float32 store per
    normal; :func:`philox_normal_floor`), timed like a provider.  None without it."""
    floor = philox_normal_floor()
    if floor is None:
        return None
    count = batch * dim
    out = torch.empty(count, dtype=torch.float32)
    seed, base = (int(v) for v in draw_seed(device))
    record = dict(base_record(OPS["sample_gaussian"], batch, dim, torch.float32, "fwd", "cpu"), op=PHILOX_FLOOR,
                  min_bytes=4 * count, bytes_per_element=4.0)
    timing = common.time_calls(
        lambda i: floor(out.data_ptr(), count, seed, base), device, warmup=args.warmup,
        max_reps=args.reps, min_reps=args.min_reps, budget_ms=args.budget_ms,
    )
    record.update(timing.as_dict())
    record["gbps"] = common.gbps(record["min_bytes"], timing.median_ms)
    record["pct_of_copy"] = 100.0 * record["gbps"] / copy_gbps if copy_gbps else None
    record["normals_per_s"] = count / (timing.median_ms * 1e-3)
    common.log(f"{PHILOX_FLOOR} {batch}x{dim}: {timing.median_ms:.4g} ms, {record['normals_per_s']:.4g} normals/s")
    return record


def add_floor_ratios(records: list[dict]) -> None:
    """``x_philox_floor``: a sampling op's cpu time over the floor of its size (every mode;
    the floor is one draw of the op's normals, which its forward makes once and its
    float32 backward not at all, as it reads z)."""
    floors = {(r["batch"], r["dim"]): r["median_ms"] for r in records if r["op"] == PHILOX_FLOOR and r["median_ms"]}
    for record in records:
        floor = floors.get((record["batch"], record["dim"]))
        timed = record["op"] in SAMPLING_OPS and record["provider"] == "cpu" and record.get("median_ms")
        record["x_philox_floor"] = record["median_ms"] / floor if timed and floor else None


def sort_records(records: list[dict], providers: Sequence[str]) -> list[dict]:
    """Order: op, size, dtype, mode, then eager, compile and the kernel providers."""
    op_order = list(OPS)
    provider_order = list(BASELINES) + [p for p in providers if p not in BASELINES]

    def key(record):
        provider = record["provider"]
        return (
            op_order.index(record["op"]) if record["op"] in op_order else len(op_order),
            record["batch"] * record["dim"], record["batch"], record["dtype"],
            MODES.index(record["mode"]),
            provider_order.index(provider) if provider in provider_order else len(provider_order), provider,
        )

    return sorted(records, key=key)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

RESULT_COLUMNS = [
    ("op", lambda r: r["op"]),
    ("B×D", lambda r: r["shape"]),
    ("dtype", lambda r: r["dtype"]),
    ("mode", lambda r: r["mode"]),
    ("provider", lambda r: r["provider"]),
    ("median ms", lambda r: r["median_ms"] if r["error"] is None else "error"),
    ("GB/s", lambda r: r["gbps"]),
    ("% copy", lambda r: r["pct_of_copy"]),
    ("extra MiB", lambda r: r["peak_extra_mib"]),
    ("× eager", lambda r: r.get("speedup_vs_eager")),
    ("× compile", lambda r: r.get("speedup_vs_compile")),
    ("rel err", lambda r: r["rel_err_vs_eager"]),
]


def is_tiny(size: tuple[int, int]) -> bool:
    return size[0] * size[1] <= SIZE_PRESETS["tiny"][0][0] * SIZE_PRESETS["tiny"][0][1]


def bar_rows(records: list[dict], device_type: str) -> tuple[Optional[tuple[int, int]], list[dict]]:
    """The performance bars, checked on fwd+bwd at the largest size in ``records``: on a GPU
    every kernel provider of sample_gaussian and gaussian_kl; on the CPU the cpu backend
    on each op with a bar (CPU_BARS), or at the tiny size every op against eager."""
    timed = [r for r in records if r["mode"] == "fwd+bwd" and r["op"] in OPS]
    if not timed:
        return None, []
    largest = max(((r["batch"], r["dim"]) for r in timed), key=lambda size: (size[0] * size[1], size))
    rows = []
    for record in timed:
        if (record["batch"], record["dim"]) != largest or record["provider"] in BASELINES:
            continue
        if device_type == "cuda":
            if record["op"] in GPU_BAR_OPS:
                rows.append(dict(record, verdict=common.bar_verdict(record, GPU_BAR)))
            continue
        criteria = CPU_TINY_BAR if is_tiny(largest) else CPU_BARS.get(record["op"])
        if record["provider"] == "cpu" and criteria:
            rows.append(dict(record, verdict=common.bar_verdict(record, criteria),
                             criteria=common.describe_criteria(criteria)))
    return largest, rows


def floor_lines(records: list[dict]) -> list[str]:
    """The report's Philox-floor section: the floor per size and the sampling ops' cpu
    times over it."""
    floors = [r for r in records if r["op"] == PHILOX_FLOOR]
    if not floors:
        return []
    ops = [r for r in records if r.get("x_philox_floor") is not None]
    lines = ["", "## Philox floor (cpu)", "",
             "`fastvae_philox_normal_floor` (cpu extension): the sampling loops' Philox4x32-10 + Box–Muller code alone, "
             "B·D float32 normals written; × floor = the op's median over it.", "",
             common.markdown_table(floors, [
                 ("B×D", lambda r: r["shape"]), ("median ms", lambda r: r["median_ms"]),
                 ("normals/s", lambda r: r.get("normals_per_s")),
             ])]
    if ops:
        lines += ["", common.markdown_table(ops, [
            ("op", lambda r: r["op"]), ("B×D", lambda r: r["shape"]), ("dtype", lambda r: r["dtype"]),
            ("mode", lambda r: r["mode"]), ("median ms", lambda r: r["median_ms"]),
            ("× floor", lambda r: r["x_philox_floor"]),
        ])]
    return lines


def markdown_report(payload: dict) -> str:
    """The run's metadata, the results table and the bar check, as markdown."""
    records, device = payload["records"], payload["metadata"]["device"]
    lines = common.report_header("fastvae latent benchmark", payload)
    op_records = [r for r in records if r["op"] != PHILOX_FLOOR]
    lines += ["", "## Results", "", common.markdown_table(op_records, RESULT_COLUMNS)]
    lines += common.problem_lines(records, lambda r: f"{r['op']} {r['shape']} {r['dtype']} {r['mode']} {r['provider']}")
    lines += floor_lines(records)
    largest, rows = bar_rows(records, device["type"])
    if largest is not None:
        bars = ("≥ 90% of copy, ≥ 3× eager, faster than compile" if device["type"] == "cuda"
                else "cpu backend, per op below")
        lines += ["", f"## Performance bars ({bars}), fwd+bwd at {largest[0]}x{largest[1]}", ""]
        if device["type"] == "cuda" and largest != LARGEST_DEFAULT_SIZE:
            lines.append(f"The bars are stated at the largest benchmark size, "
                         f"{LARGEST_DEFAULT_SIZE[0]}x{LARGEST_DEFAULT_SIZE[1]}; this run's largest is smaller, "
                         f"so these verdicts say nothing about them.")
            lines.append("")
        if rows:
            lines.append(common.markdown_table(rows, [
                ("op", lambda r: r["op"]), ("dtype", lambda r: r["dtype"]), ("provider", lambda r: r["provider"]),
                ("% copy", lambda r: r["pct_of_copy"]), ("× eager", lambda r: r.get("speedup_vs_eager")),
                ("× compile", lambda r: r.get("speedup_vs_compile")),
                *([("× floor", lambda r: r.get("x_philox_floor")), ("criteria", lambda r: r["criteria"])]
                  if device["type"] != "cuda" else []),
                ("bar", lambda r: r["verdict"]),
            ]))
        else:
            lines.append("No kernel provider the bars apply to was measured in this run.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time fastvae's sample_gaussian, gaussian_kl and reparameterize (fwd, bwd, fwd+bwd) against eager "
        "PyTorch and torch.compile of fastvae.reference.",
    )
    common.add_common_arguments(parser, BENCHMARK, SIZE_PRESETS, "BxD list such as 4096x64,65536x256", list(OPS))
    args = parser.parse_args(argv)
    common.check_common_arguments(parser, args)
    return args


def sizes_tag(spec: str) -> str:
    """'' for the default sizes, the preset's name, or 'custom' (see common.sizes_tag)."""
    return common.sizes_tag(spec, SIZE_PRESETS)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Measure everything ``args`` asks for; returns the payload written to JSON."""
    device = common.parse_device(args.device)
    sizes = common.parse_shapes(args.sizes, SIZE_PRESETS)
    if any(len(size) != 2 for size in sizes):
        raise SystemExit("--sizes: the latent ops are benchmarked on [B, D] latents: give BxD")
    dtypes = common.parse_dtypes(args.dtypes)
    ops = [OPS[name] for name in common.parse_list(args.ops, list(OPS), "op")]
    modes = common.parse_list(args.modes, MODES, "mode")
    providers = common.run_providers(args.providers, device)
    out_path = args.out or common.default_results_path(BENCHMARK, device, sizes_tag(args.sizes))
    metadata, copy = common.start_run(device, argv, "bench/bench_latent.py", providers, args.copy_mib)

    torch.manual_seed(INPUT_SEED)
    records = []
    for op in ops:
        for batch, dim in sizes:
            for dtype in dtypes:
                records += bench_group(op, batch, dim, dtype, providers, modes, copy["gbps"], device, args)
    if "cpu" in providers and device.type == "cpu" and any(op.draws_noise for op in ops):
        for batch, dim in sizes:
            floor = philox_floor_record(batch, dim, device, copy["gbps"], args)
            records += [floor] if floor is not None else []

    return common.finish_run(
        BENCHMARK, out_path, args.merge, metadata, copy, records, RECORD_KEYS, CASE_KEYS,
        sort=lambda records: sort_records(records, providers), report=markdown_report, annotate=add_floor_ratios,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return common.main_without_value_checks(run, parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
