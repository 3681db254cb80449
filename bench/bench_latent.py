"""Benchmark of the Gaussian latent ops, ``sample_gaussian`` and ``gaussian_kl``.

Each op is timed forward (``fwd``), backward alone (``bwd``) and forward plus backward
(``fwd+bwd``), for every provider:

* a fastvae backend (``triton``, ``cuda``, ``cpu``): the public op with that backend chosen;
* ``eager``: the pure-PyTorch reference (:mod:`fastvae.reference`) called directly;
* ``compile``: ``torch.compile`` of the same reference function.

Every provider draws the call's Philox seed inside the timed region (the public op does
it itself; eager and compile call :func:`fastvae.random.draw_seed`), since drawing the
noise is part of the op's cost.  Reported per case: median time, bandwidth against the
minimum bytes (:func:`sample_gaussian_min_bytes`, :func:`gaussian_kl_min_bytes`), percent
of the measured device-to-device copy bandwidth, peak extra memory (CUDA), speedups over
eager and compile, and the relative error of the provider's outputs and gradients
against eager's from the same seed.

Usage (from the repository root)::

    python bench/bench_latent.py                                   # GPU: three sizes, float32 + bfloat16
    python bench/bench_latent.py --device cpu --sizes tiny --reps 3  # CPU smoke run (what CI runs)
    python bench/bench_latent.py --ops sample_gaussian --dtypes bfloat16 --merge

Writes bench/results/latent-<device>.json and a markdown report beside it (with a
``-<preset>`` or ``-custom`` tag for other than the default sizes) and prints the report.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
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
MODES = ("fwd", "bwd", "fwd+bwd")
BASELINES = ("eager", "compile")
# A record is one (op, size, dtype, mode, provider); a case is the same without provider.
CASE_KEYS = ("op", "batch", "dim", "dtype", "mode")
RECORD_KEYS = CASE_KEYS + ("provider",)
# Relative error against eager above which a provider's results are flagged: both
# compute in float32, so float32 agrees to rounding, and the low-precision dtypes to the
# rounding of their outputs.
CHECK_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
CHECK_SEED = 1234
INPUT_SEED = 0
ERROR_TEXT_LIMIT = 2000
DEFAULT_COPY_MIB = {"cuda": 512, "cpu": 64}
FLOAT32_BYTES = 4

# DESIGN.md, "Performance bars": at the largest size, forward+backward.  Each criterion is
# (record field, threshold, strictly greater?).
LARGEST_DEFAULT_SIZE = SIZE_PRESETS["default"][-1]
GPU_BAR = (("pct_of_copy", 90.0, False), ("speedup_vs_eager", 3.0, False), ("speedup_vs_compile", 1.0, True))
CPU_BAR = (("speedup_vs_eager", 2.0, False), ("speedup_vs_compile", 1.0, True))
CPU_BAR_OPS = ("sample_gaussian",)  # the cpu backend's bar names sample_gaussian (and the mixture)


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

    In float32 fwd+bwd is DESIGN.md's 32 bytes per element, plus 8 bytes per row for the
    [batch] KL and its gradient.  The 16-byte seed tensor is left out.
    """
    elements, size = batch * dim, dtype.itemsize
    per_pass = {
        "fwd": 3 * elements * size + FLOAT32_BYTES * batch,
        "bwd": 5 * elements * size + FLOAT32_BYTES * batch,
    }
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

    def output_specs(self, batch: int, dim: int, dtype: torch.dtype) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of each output, in the order the op returns them."""
        kl = ((batch,), torch.float32)
        return [((batch, dim), dtype), kl] if self.draws_noise else [kl]


OPS = {
    "sample_gaussian": LatentOp(
        "sample_gaussian", fastvae.sample_gaussian, reference.sample_gaussian, True, sample_gaussian_min_bytes
    ),
    "gaussian_kl": LatentOp("gaussian_kl", fastvae.gaussian_kl, reference.gaussian_kl, False, gaussian_kl_min_bytes),
}

Forward = Callable[[torch.Tensor, torch.Tensor], tuple]


def as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def kernel_providers(device: torch.device) -> list[str]:
    """fastvae backends that run on ``device``, the torch one (= eager) excepted."""
    return [name for name in fastvae.backends.available(device) if name != "torch"]


def default_providers(device: torch.device) -> list[str]:
    """eager, compile and every kernel backend for the device.  On the CPU the Triton
    backend runs only in its interpreter, which is no performance number: it is left
    out unless asked for with ``--providers``."""
    kernels = kernel_providers(device)
    if device.type == "cpu":
        kernels = [name for name in kernels if name != "triton"]
    return list(BASELINES) + kernels


def check_providers(requested: Sequence[str], device: torch.device) -> list[str]:
    """``requested`` if every one runs here, else exit naming what is missing."""
    allowed = list(BASELINES) + [name for name in fastvae.backends.available(device)]
    missing = [name for name in requested if name not in allowed]
    if missing:
        hint = ""
        if "triton" in missing and device.type == "cpu":
            hint = " (on the CPU, Triton runs only under TRITON_INTERPRET=1 set in the environment)"
        raise SystemExit(f"provider(s) {missing} not available for {device.type} here{hint}; available: {allowed}")
    return list(requested)


def build_forward(op: LatentOp, provider: str) -> Forward:
    """mu, logvar → the op's outputs as a tuple, for ``provider``.

    Kernel providers call the public op, which draws its seed itself; the caller makes
    the backend current (``fastvae.use_backend``).  eager and compile draw the seed here,
    inside the timed call, so all providers pay for it alike.
    """
    if provider not in BASELINES:
        return lambda mu, logvar: as_tuple(op.public(mu, logvar))
    function = op.reference if provider == "eager" else torch.compile(op.reference, dynamic=False)
    if op.draws_noise:
        return lambda mu, logvar: as_tuple(function(mu, logvar, draw_seed(mu.device)))
    return lambda mu, logvar: as_tuple(function(mu, logvar))


def backend_scope(provider: str):
    """Make a kernel provider's backend current; nothing to do for eager and compile."""
    return contextlib.nullcontext() if provider in BASELINES else fastvae.use_backend(provider)


# --------------------------------------------------------------------------------------
# Inputs and the three modes
# --------------------------------------------------------------------------------------


@dataclass
class InputSet:
    """One independent set of inputs: mu, logvar (requiring grad, as in training) and
    random upstream gradients of the op's outputs."""

    mu: torch.Tensor
    logvar: torch.Tensor
    grad_outputs: tuple[torch.Tensor, ...]

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu, self.logvar


def make_input_set(op: LatentOp, batch: int, dim: int, dtype: torch.dtype, device: torch.device) -> InputSet:
    # Random values, never zeros (METHOD.md): zeros hide unwritten outputs and can run fast.
    mu = torch.randn(batch, dim, device=device).to(dtype).requires_grad_()
    logvar = (0.5 * torch.randn(batch, dim, device=device)).to(dtype).requires_grad_()
    grads = tuple(torch.randn(shape, device=device).to(out_dtype) for shape, out_dtype in op.output_specs(batch, dim, dtype))
    return InputSet(mu, logvar, grads)


def forward_and_gradients(forward: Forward, inputs: InputSet) -> list[torch.Tensor]:
    """Outputs and input gradients of one forward+backward from ``CHECK_SEED``."""
    torch.manual_seed(CHECK_SEED)
    outputs = forward(*inputs.inputs)
    grads = torch.autograd.grad(outputs, inputs.inputs, inputs.grad_outputs)
    return [output.detach() for output in outputs] + list(grads)


@dataclass
class ModeCalls:
    """How one mode is timed: ``setup(i)`` untimed before each ``call(i)`` (i the input
    set), and ``run_once()`` returning the tensors one call hands back (after
    ``setup(0)``), for the memory count."""

    call: Callable[[int], tuple]
    setup: Optional[Callable[[int], None]] = None

    def run_once(self) -> tuple:
        return self.call(0)

    def setup_once(self) -> None:
        if self.setup is not None:
            self.setup(0)


def mode_calls(mode: str, forward: Forward, sets: Sequence[InputSet]) -> ModeCalls:
    """The calls that time ``mode`` of ``forward`` on the input ``sets``.

    ``bwd`` runs a fresh forward before each repetition, untimed, and times the
    backward alone (``torch.autograd.grad``, not ``backward``, so no ``.grad``
    accumulates).  A fresh graph per repetition rather than ``retain_graph=True``:
    torch.compile's backward donates saved buffers and refuses a retained graph, and a
    training step never reuses one either.
    """
    if mode == "fwd":
        return ModeCalls(call=lambda i: forward(*sets[i].inputs))
    if mode == "bwd":
        pending = {}

        def setup(i):
            pending[i] = forward(*sets[i].inputs)

        def call(i):
            return torch.autograd.grad(pending.pop(i), sets[i].inputs, sets[i].grad_outputs)

        return ModeCalls(call=call, setup=setup)
    if mode == "fwd+bwd":
        def call(i):
            outputs = forward(*sets[i].inputs)
            return outputs + torch.autograd.grad(outputs, sets[i].inputs, sets[i].grad_outputs)

        return ModeCalls(call=call)
    raise ValueError(f"unknown mode {mode!r}")


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT] + " …"


def base_record(op: LatentOp, batch: int, dim: int, dtype: torch.dtype, mode: str, provider: str) -> dict:
    min_bytes = op.min_bytes(batch, dim, dtype, mode)
    return {
        "op": op.name, "batch": batch, "dim": dim, "shape": f"{batch}x{dim}",
        "dtype": common.dtype_name(dtype), "mode": mode, "provider": provider,
        "min_bytes": min_bytes, "bytes_per_element": min_bytes / (batch * dim),
        "median_ms": None, "gbps": None, "pct_of_copy": None, "peak_extra_mib": None,
        "rel_err_vs_eager": None, "error": None,
    }


def bench_provider(op, batch, dim, dtype, provider, modes, sets, expected, copy_gbps, device, args) -> list[dict]:
    """Every mode of one provider on one (op, size, dtype); failures become records with
    ``error`` set, and the run goes on."""
    records = [dict(base_record(op, batch, dim, dtype, mode, provider), copy_gbps=copy_gbps) for mode in modes]
    label = f"{op.name} {batch}x{dim} {common.dtype_name(dtype)} {provider}"
    if provider == "compile":
        torch._dynamo.reset()  # a fresh, fully specialized compile for this case
    try:
        with backend_scope(provider):
            try:
                forward = build_forward(op, provider)
                # The first call also compiles (compile), so compile failures land here.
                actual = forward_and_gradients(forward, sets[0])
                rel_err = max(common.relative_error(a, e) for a, e in zip(actual, expected))
                del actual
            except Exception as error:  # noqa: BLE001 (record it and go on, as the issue asks)
                common.log(f"{label}: FAILED\n{traceback.format_exc()}")
                for record in records:
                    record["error"] = error_text(error)
                return records
            if rel_err > CHECK_TOLERANCE[common.dtype_name(dtype)]:
                common.log(f"{label}: WARNING relative error vs eager {rel_err:.3g}")
            for record, mode in zip(records, modes):
                record["rel_err_vs_eager"] = rel_err
                measure_mode(record, mode, forward, sets, copy_gbps, device, args, label)
    finally:
        if provider == "compile":
            torch._dynamo.reset()  # drop the compiled graphs and their memory
    return records


def measure_mode(record, mode, forward, sets, copy_gbps, device, args, label) -> None:
    """Time one mode and count its memory into ``record``, or set its ``error``."""
    calls = None
    try:
        calls = mode_calls(mode, forward, sets)
        timing = common.time_calls(
            calls.call, device, setup=calls.setup, rotation=len(sets), warmup=args.warmup,
            max_reps=args.reps, min_reps=args.min_reps, budget_ms=args.budget_ms,
        )
        record.update(timing.as_dict())
        record["gbps"] = common.gbps(record["min_bytes"], timing.median_ms)
        record["pct_of_copy"] = 100.0 * record["gbps"] / copy_gbps if record["gbps"] and copy_gbps else None
        record["peak_extra_mib"] = common.peak_extra_memory_mib(calls.run_once, device, calls.setup_once)
        common.log(f"{label} {mode}: {timing.median_ms:.4g} ms, {record['gbps']:.4g} GB/s")
    except Exception as error:  # noqa: BLE001 (an out-of-memory at one size must not end the run)
        common.log(f"{label} {mode}: FAILED\n{traceback.format_exc()}")
        record["error"] = error_text(error)
    finally:
        calls = None  # release any pending forward graphs before the next mode
        if record["error"] and device.type == "cuda":
            torch.cuda.empty_cache()


def bench_group(op, batch, dim, dtype, providers, modes, copy_gbps, device, args) -> list[dict]:
    """All providers and modes of one (op, size, dtype), on shared inputs."""
    footprint = op.min_bytes(batch, dim, dtype, "fwd+bwd")
    calls_per_case = max(1, args.warmup) + 1 + args.reps
    sets = [make_input_set(op, batch, dim, dtype, device)
            for _ in range(common.rotation_sets(footprint, device, max_calls=calls_per_case))]
    # Eager's outputs and gradients from the check seed: what every provider is checked against.
    expected = forward_and_gradients(build_forward(op, "eager"), sets[0])
    records = []
    for provider in providers:
        records += bench_provider(op, batch, dim, dtype, provider, modes, sets, expected, copy_gbps, device, args)
    del sets, expected
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


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


def bar_rows(records: list[dict], device_type: str) -> tuple[Optional[tuple[int, int]], list[dict]]:
    """DESIGN.md's bars, checked on fwd+bwd at the largest size in ``records``: on a GPU
    every kernel provider of both ops; on the CPU the cpu backend on sample_gaussian."""
    timed = [r for r in records if r["mode"] == "fwd+bwd"]
    if not timed:
        return None, []
    largest = max(((r["batch"], r["dim"]) for r in timed), key=lambda size: (size[0] * size[1], size))
    criteria = GPU_BAR if device_type == "cuda" else CPU_BAR
    rows = []
    for record in timed:
        if (record["batch"], record["dim"]) != largest or record["provider"] in BASELINES:
            continue
        if device_type != "cuda" and (record["provider"] != "cpu" or record["op"] not in CPU_BAR_OPS):
            continue
        missed = []
        for field, threshold, strict in criteria:
            value = record.get(field)
            if value is None or (value <= threshold if strict else value < threshold):
                missed.append(field)
        verdict = "error" if record["error"] else ("met" if not missed else "missed: " + ", ".join(missed))
        rows.append(dict(record, verdict=verdict))
    return largest, rows


def markdown_report(payload: dict) -> str:
    """The run's metadata, the results table and the bar check, as markdown."""
    meta, copy, records = payload["metadata"], payload["copy"], payload["records"]
    device = meta["device"]
    versions = f"torch {meta['torch']}, Triton {meta['triton']}, Python {meta['python']}, fastvae {meta['fastvae']}"
    if device["type"] == "cuda":
        versions += f", CUDA {device.get('cuda_runtime')}, driver {device.get('driver')}"
    lines = [
        f"# fastvae latent benchmark: {device['name']}",
        "",
        f"- date (UTC): {meta['date_utc']}; commit: {meta['git_commit'] or 'none'}",
        f"- versions: {versions}",
        f"- command: `{meta['command']}`",
        f"- copy ceiling: {common.format_number(copy['gbps'])} GB/s (`dst.copy_(src)` on "
        f"{copy['buffer_mib']} MiB buffers, bytes read + written)",
        "- GB/s counts the minimum bytes (bench/README.md); median over repetitions; "
        "extra MiB = peak memory beyond inputs and outputs (CUDA only); "
        "× eager / × compile = their median over this one's; rel err = ‖out − eager‖/‖eager‖ "
        "over outputs and gradients from one seed.",
    ]
    if meta.get("previous_runs"):
        lines.append(f"- merged with {len(meta['previous_runs'])} earlier run(s) of this file")
    lines += ["", "## Results", "", common.markdown_table(records, RESULT_COLUMNS)]
    errors = [r for r in records if r["error"]]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {r['op']} {r['shape']} {r['dtype']} {r['mode']} {r['provider']}: {r['error']}" for r in errors]
    largest, rows = bar_rows(records, device["type"])
    if largest is not None:
        bars = ("≥ 90% of copy, ≥ 3× eager, faster than compile" if device["type"] == "cuda"
                else "cpu backend: ≥ 2× eager, faster than compile (sample_gaussian)")
        lines += ["", f"## DESIGN.md bars ({bars}), fwd+bwd at {largest[0]}x{largest[1]}", ""]
        if largest != LARGEST_DEFAULT_SIZE:
            lines.append(f"The bars are stated at the largest benchmark size, "
                         f"{LARGEST_DEFAULT_SIZE[0]}x{LARGEST_DEFAULT_SIZE[1]}; this run's largest is smaller, "
                         f"so these verdicts say nothing about them.")
            lines.append("")
        if rows:
            lines.append(common.markdown_table(rows, [
                ("op", lambda r: r["op"]), ("dtype", lambda r: r["dtype"]), ("provider", lambda r: r["provider"]),
                ("% copy", lambda r: r["pct_of_copy"]), ("× eager", lambda r: r.get("speedup_vs_eager")),
                ("× compile", lambda r: r.get("speedup_vs_compile")), ("bar", lambda r: r["verdict"]),
            ]))
        else:
            lines.append("No kernel provider the bars apply to was measured in this run.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time fastvae's sample_gaussian and gaussian_kl (fwd, bwd, fwd+bwd) against eager "
        "PyTorch and torch.compile of fastvae.reference.",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present, else cpu)")
    parser.add_argument("--sizes", default="default",
                        help=f"a preset {list(SIZE_PRESETS)} or BxD list such as 4096x64,65536x256 (default: default)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: float32,bfloat16)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {list(OPS)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {list(MODES)}")
    parser.add_argument("--providers", default=None,
                        help="comma-separated: eager, compile and fastvae backends (default: eager, compile and "
                        "every kernel backend for the device; Triton on the CPU only if named, under TRITON_INTERPRET=1)")
    parser.add_argument("--reps", type=int, default=100, help="most timed repetitions per case (default: 100)")
    parser.add_argument("--min-reps", type=int, default=5, help="fewest timed repetitions per case (default: 5)")
    parser.add_argument("--budget-ms", type=float, default=1000.0,
                        help="timed milliseconds to aim for per case; fits the repetitions between --min-reps and "
                        "--reps (default: 1000)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default: 5)")
    parser.add_argument("--copy-mib", type=int, default=None,
                        help="MiB per buffer of the copy-bandwidth measurement (default: 512 on CUDA, 64 on the CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path; the markdown report goes beside it as .md "
                        "(default: bench/results/latent-<device>[-<sizes tag>].json)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the records of an existing --out file that this run does not measure again "
                        "(for splitting a long GPU run into several commands)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.min_reps < 1 or args.warmup < 0:
        parser.error("--reps and --min-reps must be at least 1, --warmup at least 0")
    return args


def sizes_tag(spec: str) -> str:
    """'' for the default sizes, the preset's name, or 'custom': smoke runs at tiny sizes
    never overwrite the real results file."""
    if spec == "default":
        return ""
    return spec if spec in SIZE_PRESETS else "custom"


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Measure everything ``args`` asks for; returns the payload written to JSON."""
    device = common.parse_device(args.device)
    sizes = common.parse_shapes(args.sizes, SIZE_PRESETS)
    if any(len(size) != 2 for size in sizes):
        raise SystemExit("--sizes: the latent ops are benchmarked on [B, D] latents: give BxD")
    dtypes = common.parse_dtypes(args.dtypes)
    ops = [OPS[name] for name in common.parse_list(args.ops, list(OPS), "op")]
    modes = common.parse_list(args.modes, MODES, "mode")
    providers = (default_providers(device) if args.providers is None
                 else check_providers(common.parse_list(args.providers, what="provider"), device))
    out_path = args.out or common.default_results_path(BENCHMARK, device, sizes_tag(args.sizes))

    metadata = common.run_metadata(device, argv, "bench/bench_latent.py")
    metadata["providers"] = providers
    common.log(f"device: {metadata['device']['name']}; providers: {providers}")
    copy_mib = args.copy_mib or DEFAULT_COPY_MIB[device.type]
    copy = common.measure_copy_bandwidth(device, copy_mib * common.MIB)
    common.log(f"copy ceiling: {copy['gbps']:.4g} GB/s")

    torch.manual_seed(INPUT_SEED)
    records = []
    for op in ops:
        for batch, dim in sizes:
            for dtype in dtypes:
                records += bench_group(op, batch, dim, dtype, providers, modes, copy["gbps"], device, args)

    previous = common.read_results(out_path) if args.merge else None
    if previous is not None:
        records = common.merge_records(previous["records"], records, RECORD_KEYS)
        metadata["previous_runs"] = previous["metadata"].pop("previous_runs", []) + [previous["metadata"]]
    common.add_speedups(records, CASE_KEYS, BASELINES)
    payload = {
        "benchmark": BENCHMARK,
        "metadata": metadata,
        "copy": copy,
        "records": sort_records(records, providers),
    }
    markdown = markdown_report(payload)
    markdown_path = common.write_results(out_path, payload, markdown)
    print(markdown)
    common.log(f"wrote {out_path} and {markdown_path}")
    return payload


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # Value checks (fastvae.set_validate_args) sync the device and are off in use: time
    # the ops as they run in training.
    validate = fastvae.validate_args_enabled()
    fastvae.set_validate_args(False)
    try:
        run(args, argv)
    finally:
        fastvae.set_validate_args(validate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
