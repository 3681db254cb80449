"""Benchmark of the reconstruction likelihoods: ``bernoulli_nll``, ``gaussian_nll`` and
``discretized_logistic_mixture_nll``.

Each op is timed forward (``fwd``), backward alone (``bwd``) and forward plus backward
(``fwd+bwd``), for every provider:

* a fastvae backend (``triton``, ``cuda``, ``cpu``): the public op with that backend
  chosen.  An op that this fastvae does not have yet is skipped for the kernel
  providers, with the reason in the records (``skipped``);
* ``eager``: the pure-PyTorch reference (:mod:`fastvae.reference`) called directly;
* ``compile``: ``torch.compile`` of the same reference function.

Reported per case: median time, bandwidth against the minimum bytes
(:func:`bernoulli_nll_min_bytes`, :func:`gaussian_nll_min_bytes`,
:func:`mixture_nll_min_bytes`), percent of the measured device-to-device copy bandwidth,
peak extra memory (CUDA, every provider) and its ratio to eager's, speedups over eager and
compile, and the relative error of the provider's output and gradient against eager's.
The timing, memory, report and command-line machinery is bench/common.py's, shared with
bench_latent.py.

Usage (from the repository root)::

    python bench/bench_likelihood.py                                   # GPU: the bars' sizes, float32 + bfloat16
    python bench/bench_likelihood.py --device cpu --sizes tiny --reps 3  # CPU smoke run (what CI runs)
    python bench/bench_likelihood.py --ops discretized_logistic_mixture_nll --mixture-x uint8

Writes bench/results/likelihood-<device>.json and a markdown report beside it (with a
``-<preset>`` or ``-custom`` tag for other than the default sizes; ``-uint8`` for a run
with uint8 mixture data) and prints the report.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

# bench/ is a folder of scripts, not a package: make its shared helpers importable
# whether this file runs as a script or is loaded by path (tests/test_bench.py).
_BENCH_DIR = str(Path(__file__).resolve().parent)
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import common  # noqa: E402

import fastvae  # noqa: E402
from fastvae import reference  # noqa: E402

BENCHMARK = "likelihood"
BERNOULLI, GAUSSIAN, MIXTURE = "bernoulli_nll", "gaussian_nll", "discretized_logistic_mixture_nll"
# Sizes per op: (B, D) for the element-wise likelihoods, (B, K, C, H, W) for the mixture
# (x is [B, C, H, W], params [B, P, H, W] with P = 10·K for C = 3, 3·K for C = 1).
SIZE_PRESETS = {
    "default": {
        BERNOULLI: [(65536, 784)],
        GAUSSIAN: [(65536, 3072)],
        MIXTURE: [(64, 10, 3, 32, 32), (16, 10, 3, 64, 64)],
    },
    "tiny": {
        BERNOULLI: [(64, 32)],
        GAUSSIAN: [(64, 48)],
        MIXTURE: [(2, 3, 3, 4, 4)],
    },
}
MODES = common.MODES
BASELINES = common.BASELINES
# A record is one (op, size, dtype, x dtype, mode, provider); a case is the same without
# provider.
CASE_KEYS = ("op", "shape", "num_mixtures", "dtype", "x_dtype", "mode")
RECORD_KEYS = CASE_KEYS + ("provider",)
INPUT_SEED = 0
FLOAT32_BYTES = 4
NUM_BINS = 256
# gaussian_nll is timed with a scalar logvar (a fixed decoder variance): only mean gets a
# gradient.  Not the default 0, so no code path can skip the scale.
GAUSSIAN_LOGVAR = -1.0
MIXTURE_X_FORMATS = ("float", "uint8")

# The performance bars (bench/README.md, "Performance bars"): forward+backward at each op's largest size.  Each
# criterion is (record field, comparison, threshold), as common.bar_verdict reads them.
ELEMENTWISE_GPU_BAR = (("pct_of_copy", ">=", 90.0), ("speedup_vs_eager", ">=", 3.0), ("speedup_vs_compile", ">", 1.0))
MIXTURE_GPU_BAR = (("speedup_vs_eager", ">=", 8.0), ("speedup_vs_compile", ">=", 2.0),
                   ("peak_extra_vs_eager", "<=", 0.1))
GPU_BARS = {BERNOULLI: ELEMENTWISE_GPU_BAR, GAUSSIAN: ELEMENTWISE_GPU_BAR, MIXTURE: MIXTURE_GPU_BAR}
# The cpu backend's bars (bench/README.md, "Performance bars"): the element-wise
# likelihoods at half the copy bandwidth and faster than compile; the mixture ≥ 4× eager
# and ≥ 1.5× compile.
ELEMENTWISE_CPU_BAR = (("pct_of_copy", ">=", 50.0), ("speedup_vs_compile", ">", 1.0))
CPU_BARS = {BERNOULLI: ELEMENTWISE_CPU_BAR, GAUSSIAN: ELEMENTWISE_CPU_BAR,
            MIXTURE: (("speedup_vs_eager", ">=", 4.0), ("speedup_vs_compile", ">=", 1.5))}


# --------------------------------------------------------------------------------------
# Minimum bytes
# --------------------------------------------------------------------------------------


def _passes(forward: int, backward: int, mode: str) -> int:
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[mode]


def bernoulli_nll_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``bernoulli_nll(logits, x)`` on [batch, dim] must move through memory.

    With n = batch·dim elements of s = dtype's size (logits and x alike) and the nll per
    sample ([batch] float32, ``reduction='batch'``); x is data and gets no gradient:

    * fwd: read logits, x; write nll                              → 2·n·s + 4·batch
    * bwd: read grad_nll, logits, x (the gradient g·(σ(l) − x) needs both); write
      grad_logits                                                 → 3·n·s + 4·batch
    * fwd+bwd: the two passes                                     → 5·n·s + 8·batch

    (20 bytes per element in float32, plus 8 per row.)  A design that computes σ(l) − x
    in the forward and saves it moves the same fwd+bwd total: one write more forward, one
    read less backward.
    """
    elements, size = batch * dim, dtype.itemsize
    return _passes(2 * elements * size + FLOAT32_BYTES * batch, 3 * elements * size + FLOAT32_BYTES * batch, mode)


def gaussian_nll_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``gaussian_nll(mean, x, logvar)`` with a scalar logvar on [batch, dim]
    must move through memory.

    With n = batch·dim elements of s = dtype's size (mean and x alike) and the nll per
    sample ([batch] float32); the scalar logvar is no tensor, x is data, so only mean
    gets a gradient:

    * fwd: read mean, x; write nll                                → 2·n·s + 4·batch
    * bwd: read grad_nll, mean, x (the gradient g·(mean − x)·e^(−logvar) needs both);
      write grad_mean                                             → 3·n·s + 4·batch
    * fwd+bwd: the two passes                                     → 5·n·s + 8·batch

    (20 bytes per element in float32, plus 8 per row.)
    """
    elements, size = batch * dim, dtype.itemsize
    return _passes(2 * elements * size + FLOAT32_BYTES * batch, 3 * elements * size + FLOAT32_BYTES * batch, mode)


def mixture_param_channels(num_mixtures: int, channels: int) -> int:
    """P, the channels of the mixture's params: 3K for C = 1, 10K for C = 3 (NVAE's layout)."""
    return (3 if channels == 1 else 10) * num_mixtures


def mixture_nll_min_bytes(batch: int, num_mixtures: int, channels: int, height: int, width: int,
                          dtype: torch.dtype, x_dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``discretized_logistic_mixture_nll(params, x, K)`` must move through
    memory, x [batch, C, height, width], params [batch, P, height, width].

    With N = batch·height·width pixels, P = 10·K params per pixel (3·K for C = 1) of
    s = dtype's size, C sub-pixels of x per pixel of s_x = x's size (the params dtype for
    float x, 1 for uint8 levels) and the nll per sample ([batch] float32); x is data and
    gets no gradient:

    * fwd: read params, x; write nll                              → N·(P·s + C·s_x) + 4·batch
    * bwd: read grad_nll, params, x (every component's gradient needs both); write
      grad_params                                                 → N·(2·P·s + C·s_x) + 4·batch
    * fwd+bwd: the two passes                                     → N·(3·P·s + 2·C·s_x) + 8·batch

    (K = 10, C = 3, float32: 1224 bytes per pixel, 408 per sub-pixel of x, plus 8 per
    sample.)  Computing the gradient in the forward and scaling it in the backward moves
    more: N·(4·P·s + C·s_x) over both passes.
    """
    pixels = batch * height * width
    params = pixels * mixture_param_channels(num_mixtures, channels) * dtype.itemsize
    data = pixels * channels * x_dtype.itemsize
    return _passes(params + data + FLOAT32_BYTES * batch, 2 * params + data + FLOAT32_BYTES * batch, mode)


# --------------------------------------------------------------------------------------
# The ops, their sizes, inputs and providers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One size and dtype of one op: everything its records, inputs and bytes depend on."""

    op: str
    size: tuple[int, ...]  # (B, D), or (B, K, C, H, W) for the mixture
    dtype: torch.dtype
    x_dtype: torch.dtype

    @property
    def is_mixture(self) -> bool:
        return self.op == MIXTURE

    @property
    def batch(self) -> int:
        return self.size[0]

    @property
    def num_mixtures(self) -> Optional[int]:
        return self.size[1] if self.is_mixture else None

    @property
    def x_shape(self) -> tuple[int, ...]:
        """x's shape: [B, D], or [B, C, H, W] for the mixture."""
        return (self.size[0],) + self.size[2:] if self.is_mixture else self.size

    @property
    def shape(self) -> str:
        return "x".join(str(n) for n in self.x_shape)

    @property
    def elements(self) -> int:
        """Elements of x (the data): what ``bytes_per_element`` divides by."""
        count = 1
        for n in self.x_shape:
            count *= n
        return count

    def min_bytes(self, mode: str) -> int:
        if self.op == BERNOULLI:
            return bernoulli_nll_min_bytes(*self.size, self.dtype, mode)
        if self.op == GAUSSIAN:
            return gaussian_nll_min_bytes(*self.size, self.dtype, mode)
        return mixture_nll_min_bytes(*self.size, self.dtype, self.x_dtype, mode)

    def constants(self) -> tuple:
        """The op's arguments after its tensors: logvar for gaussian, K and num_bins for
        the mixture."""
        if self.op == GAUSSIAN:
            return (GAUSSIAN_LOGVAR,)
        if self.is_mixture:
            return (self.num_mixtures, NUM_BINS)
        return ()

    @property
    def label(self) -> str:
        k = f" K={self.num_mixtures}" if self.is_mixture else ""
        x = f" x {common.dtype_name(self.x_dtype)}" if self.x_dtype != self.dtype else ""
        return f"{self.op} {self.shape}{k} {common.dtype_name(self.dtype)}{x}"


OPS = (BERNOULLI, GAUSSIAN, MIXTURE)
REFERENCES = {
    BERNOULLI: reference.bernoulli_nll,
    GAUSSIAN: reference.gaussian_nll,
    MIXTURE: reference.discretized_logistic_mixture_nll,
}


def parse_sizes(spec: str) -> dict[str, list[tuple[int, ...]]]:
    """``--sizes``: a preset, or a list in which BxD sizes are for bernoulli and gaussian
    and BxKxCxHxW sizes (C = 1 or 3) for the mixture."""
    if spec in SIZE_PRESETS:
        return {op: list(sizes) for op, sizes in SIZE_PRESETS[spec].items()}
    sizes = {op: [] for op in OPS}
    for shape in common.parse_shapes(spec, {}):
        if len(shape) == 2:
            sizes[BERNOULLI].append(shape)
            sizes[GAUSSIAN].append(shape)
        elif len(shape) == 5 and shape[2] in (1, 3):
            sizes[MIXTURE].append(shape)
        else:
            raise SystemExit(f"--sizes: {'x'.join(map(str, shape))}: give BxD (bernoulli, gaussian) or "
                             f"BxKxCxHxW with C = 1 or 3 (the mixture)")
    return sizes


def build_forward(case: Case, provider: str) -> common.Forward:
    """The op's tensors → its outputs as a tuple, for ``provider``: the public fastvae op
    (the caller makes the backend current), the reference, or torch.compile of it."""
    constants = case.constants()
    if provider in BASELINES:
        function = REFERENCES[case.op]
        if provider == "compile":
            function = torch.compile(function, dynamic=False)
    else:
        function = getattr(fastvae, case.op, None)
        if function is None:
            raise common.ProviderSkipped(f"fastvae.{case.op} is not in this fastvae yet")
    return lambda *tensors: common.as_tuple(function(*tensors, *constants))


def make_input_set(case: Case, device: torch.device) -> common.InputSet:
    """One input set of ``case``: the op's first tensor requiring grad (as in training),
    x as data, and a random upstream gradient of the [B] nll.  Random values, never
    zeros (METHOD.md)."""
    grad_nll = torch.randn(case.batch, device=device)
    if case.op == BERNOULLI:
        logits = (2.0 * torch.randn(case.size, device=device)).to(case.dtype).requires_grad_()
        x = torch.rand(case.size, device=device).to(case.dtype)  # soft targets in [0, 1)
        return common.InputSet(args=(logits, x), wrt=(logits,), grad_outputs=(grad_nll,))
    if case.op == GAUSSIAN:
        mean = torch.randn(case.size, device=device).to(case.dtype).requires_grad_()
        x = torch.randn(case.size, device=device).to(case.dtype)
        return common.InputSet(args=(mean, x), wrt=(mean,), grad_outputs=(grad_nll,))
    batch, k, channels, height, width = case.size
    params = torch.randn(batch, mixture_param_channels(k, channels), height, width, device=device)
    # Log-scales around −2, as a trained decoder's (NVAE's layout: K logits, then per
    # channel K means, K log-scales, K coefficients).
    blocks = params[:, k:].unflatten(1, (channels, -1, k))
    blocks[:, :, 1].mul_(0.5).sub_(2.0)
    params = params.to(case.dtype).requires_grad_()
    levels = torch.randint(0, NUM_BINS, (batch, channels, height, width), device=device)
    if case.x_dtype == torch.uint8:
        x = levels.to(torch.uint8)
    else:  # on the grid: −1 + 2·level/(num_bins − 1)
        x = (levels.double() * (2.0 / (NUM_BINS - 1)) - 1.0).to(case.x_dtype)
    return common.InputSet(args=(params, x), wrt=(params,), grad_outputs=(grad_nll,))


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def base_record(case: Case, mode: str, provider: str) -> dict:
    min_bytes = case.min_bytes(mode)
    return {
        "op": case.op, "shape": case.shape, "num_mixtures": case.num_mixtures, "batch": case.batch,
        "dtype": common.dtype_name(case.dtype), "x_dtype": common.dtype_name(case.x_dtype),
        "mode": mode, "provider": provider,
        "elements": case.elements, "min_bytes": min_bytes, "bytes_per_element": min_bytes / case.elements,
        **common.measurement_fields(),
    }


def bench_group(case: Case, providers, modes, copy_gbps, device, args) -> list[dict]:
    """All providers and modes of one case, on shared inputs."""
    return common.bench_case(
        label=case.label,
        providers=providers,
        modes=modes,
        make_records=lambda provider: [base_record(case, mode, provider) for mode in modes],
        # Looked up at call time, so a test can replace build_forward.
        build=lambda provider: build_forward(case, provider),
        make_input_set=lambda: make_input_set(case, device),
        footprint_bytes=case.min_bytes("fwd+bwd"),
        copy_gbps=copy_gbps,
        device=device,
        args=args,
    )


def _dtype_rank(name: str) -> tuple[int, str]:
    names = list(common.DTYPES)
    return (names.index(name) if name in names else len(names), name)


def sort_records(records: list[dict], providers: Sequence[str]) -> list[dict]:
    """Order: op, size, dtype, x dtype, mode, then eager, compile and the kernel providers."""
    provider_order = list(BASELINES) + [p for p in providers if p not in BASELINES]

    def key(record):
        provider = record["provider"]
        return (
            OPS.index(record["op"]) if record["op"] in OPS else len(OPS),
            record["elements"], record["shape"], record["num_mixtures"] or 0,
            _dtype_rank(record["dtype"]), _dtype_rank(record["x_dtype"]),
            MODES.index(record["mode"]),
            provider_order.index(provider) if provider in provider_order else len(provider_order), provider,
        )

    return sorted(records, key=key)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _size_cell(record: dict) -> str:
    return record["shape"] + (f" K={record['num_mixtures']}" if record["num_mixtures"] else "")


def _time_cell(record: dict):
    if record["error"]:
        return "error"
    return "skipped" if record.get("skipped") else record["median_ms"]


RESULT_COLUMNS = [
    ("op", lambda r: r["op"]),
    ("x shape", _size_cell),
    ("dtype", lambda r: r["dtype"] if r["x_dtype"] == r["dtype"] else f"{r['dtype']}, x {r['x_dtype']}"),
    ("mode", lambda r: r["mode"]),
    ("provider", lambda r: r["provider"]),
    ("median ms", _time_cell),
    ("GB/s", lambda r: r["gbps"]),
    ("% copy", lambda r: r["pct_of_copy"]),
    ("extra MiB", lambda r: r["peak_extra_mib"]),
    ("extra / eager's", lambda r: r.get("peak_extra_vs_eager")),
    ("× eager", lambda r: r.get("speedup_vs_eager")),
    ("× compile", lambda r: r.get("speedup_vs_compile")),
    ("rel err", lambda r: r["rel_err_vs_eager"]),
]


def largest_default_elements(op: str) -> int:
    """Elements of x at the op's largest default size, where its performance bar is stated."""
    return max(Case(op, size, torch.float32, torch.float32).elements for size in SIZE_PRESETS["default"][op])


def bar_rows(records: list[dict], device_type: str) -> tuple[dict[str, int], list[dict]]:
    """The performance bars, checked on fwd+bwd at each op's largest size in ``records`` (by
    elements of x; the mixture's two default sizes tie, so both are checked): on a GPU
    every kernel provider; on the CPU the cpu backend.  Returns the
    largest elements per op and the rows, each with its ``bar`` and ``verdict``."""
    timed = [r for r in records if r["mode"] == "fwd+bwd"]
    largest = {}
    for record in timed:
        largest[record["op"]] = max(largest.get(record["op"], 0), record["elements"])
    bars = GPU_BARS if device_type == "cuda" else CPU_BARS
    rows = []
    for record in timed:
        if record["elements"] != largest[record["op"]] or record["provider"] in BASELINES:
            continue
        if record["op"] not in bars or (device_type != "cuda" and record["provider"] != "cpu"):
            continue
        criteria = bars[record["op"]]
        rows.append(dict(record, bar=common.describe_criteria(criteria), verdict=common.bar_verdict(record, criteria)))
    return largest, rows


def markdown_report(payload: dict) -> str:
    """The run's metadata, the results table and the bar check, as markdown."""
    records, device = payload["records"], payload["metadata"]["device"]
    lines = common.report_header("fastvae likelihood benchmark", payload)
    lines.append(f"- extra / eager's = peak extra memory over eager's, same case; gaussian_nll with a scalar logvar "
                 f"of {GAUSSIAN_LOGVAR:g}; the mixture with num_bins = {NUM_BINS}, x on the grid.")
    lines += ["", "## Results", "", common.markdown_table(records, RESULT_COLUMNS)]
    lines += common.problem_lines(
        records, lambda r: f"{r['op']} {_size_cell(r)} {r['dtype']} {r['mode']} {r['provider']}")
    largest, rows = bar_rows(records, device["type"])
    if largest:
        where = ("every kernel provider" if device["type"] == "cuda"
                 else "the cpu backend, the CPU bars")
        lines += ["", f"## Performance bars, fwd+bwd at each op's largest size ({where})", ""]
        smaller = [op for op, elements in largest.items() if elements < largest_default_elements(op)]
        if smaller:
            lines.append(f"The bars are stated at each op's largest benchmark size; this run's is smaller for "
                         f"{', '.join(smaller)}, so those verdicts say nothing about them.")
            lines.append("")
        if rows:
            lines.append(common.markdown_table(rows, [
                ("op", lambda r: r["op"]), ("x shape", _size_cell), ("dtype", lambda r: r["dtype"]),
                ("provider", lambda r: r["provider"]), ("% copy", lambda r: r["pct_of_copy"]),
                ("× eager", lambda r: r.get("speedup_vs_eager")), ("× compile", lambda r: r.get("speedup_vs_compile")),
                ("extra / eager's", lambda r: r.get("peak_extra_vs_eager")), ("bar", lambda r: r["bar"]),
                ("verdict", lambda r: r["verdict"]),
            ]))
        else:
            lines.append("No kernel provider the bars apply to was measured in this run.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time fastvae's bernoulli_nll, gaussian_nll and discretized_logistic_mixture_nll (fwd, bwd, "
        "fwd+bwd) against eager PyTorch and torch.compile of fastvae.reference.",
    )
    common.add_common_arguments(
        parser, BENCHMARK, SIZE_PRESETS,
        "a list of BxD sizes (bernoulli, gaussian) and BxKxCxHxW sizes (the mixture) such as 4096x784,8x10x3x32x32",
        list(OPS),
    )
    parser.add_argument("--mixture-x", choices=MIXTURE_X_FORMATS, default="float",
                        help="the mixture's data: float on the 256-level grid in [-1, 1], in the params dtype, or "
                        "uint8 level indices (default: float)")
    args = parser.parse_args(argv)
    common.check_common_arguments(parser, args)
    return args


def sizes_tag(args: argparse.Namespace) -> str:
    """'' for the default sizes, the preset's name, or 'custom' (see common.sizes_tag);
    '-uint8' added for uint8 mixture data, so such a run keeps its own file."""
    tag = common.sizes_tag(args.sizes, SIZE_PRESETS)
    if args.mixture_x == "uint8":
        tag = f"{tag}-uint8" if tag else "uint8"
    return tag


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Measure everything ``args`` asks for; returns the payload written to JSON."""
    device = common.parse_device(args.device)
    sizes = parse_sizes(args.sizes)
    dtypes = common.parse_dtypes(args.dtypes)
    ops = common.parse_list(args.ops, list(OPS), "op")
    modes = common.parse_list(args.modes, MODES, "mode")
    providers = common.run_providers(args.providers, device)
    out_path = args.out or common.default_results_path(BENCHMARK, device, sizes_tag(args))
    metadata, copy = common.start_run(device, argv, "bench/bench_likelihood.py", providers, args.copy_mib)
    metadata["mixture_x"] = args.mixture_x

    torch.manual_seed(INPUT_SEED)
    records = []
    for op in ops:
        if not sizes[op]:
            common.log(f"{op}: no size of its kind in --sizes {args.sizes}; not measured")
        for size in sizes[op]:
            for dtype in dtypes:
                x_dtype = torch.uint8 if op == MIXTURE and args.mixture_x == "uint8" else dtype
                records += bench_group(Case(op, size, dtype, x_dtype), providers, modes, copy["gbps"], device, args)

    return common.finish_run(
        BENCHMARK, out_path, args.merge, metadata, copy, records, RECORD_KEYS, CASE_KEYS,
        sort=lambda records: sort_records(records, providers), report=markdown_report,
        annotate=lambda records: common.add_memory_ratios(records, CASE_KEYS),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return common.main_without_value_checks(run, parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
