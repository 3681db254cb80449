"""The resource table of fastvae's GPU kernels: every Triton kernel specialization the ops
launch (bench/triton_specializations.py), compiled ahead of time for sm_90a and sm_80, and
the CUDA C++ kernels (csrc/cuda/*.cu) compiled by nvcc: registers per thread, spills,
stack, shared memory, warps, and the resident warps per SM the registers allow.

Usage (from the repository root; no GPU needed)::

    python bench/kernel_resources.py              # capture, compile, write the table
    python bench/kernel_resources.py --render     # rewrite the markdown from the JSON

writes ``bench/results/kernel-resources.json`` and ``kernel-resources.md``.  Compiling
takes about a second per specialization and architecture and core.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

_BENCH_DIR = Path(__file__).resolve().parent
if str(_BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(_BENCH_DIR))

import triton_specializations as specializations  # noqa: E402

REPO_ROOT = _BENCH_DIR.parent
RESULTS = _BENCH_DIR / "results"
DEFAULT_JSON = RESULTS / "kernel-resources.json"
COMMAND = "python bench/kernel_resources.py"

# --------------------------------------------------------------------------------------
# Occupancy
# --------------------------------------------------------------------------------------

# Per-SM limits of compute capability 8.0 (A100) and 9.0 (H100/H200), from the CUDA C++
# Programming Guide's table of technical specifications and the occupancy calculator
# (cuda_occupancy.h): 64K 32-bit registers in 4 sub-partitions, registers allocated per
# warp in units of 256, at most 64 resident warps, 32 resident blocks, 255 registers per
# thread; shared memory per SM (a block's reservation of 1 KB included).
SM_LIMITS = {
    "sm_90a": {"registers": 65536, "max_warps": 64, "max_blocks": 32, "shared_bytes": 228 * 1024},
    "sm_80": {"registers": 65536, "max_warps": 64, "max_blocks": 32, "shared_bytes": 164 * 1024},
}
REGISTER_ALLOCATION_UNIT = 256  # registers, per warp
SUB_PARTITIONS = 4
BLOCK_RESERVED_SHARED_BYTES = 1024
# A memory-bound kernel needs enough loads in flight to cover the memory latency (Little's
# law): ~3.3-4.8 TB/s × ~0.6-0.8 µs over 132 SMs (H100/H200) or ~2 TB/s × ~0.5 µs over
# 108 (A100) is 10-25 KB per SM, i.e. 32 warps (50% occupancy) each with one 16-byte
# load per thread in flight.  Below 32 resident warps, registers cap the bandwidth.
MIN_WARPS_PER_SM = 32


def resident_warps(registers: int, num_warps: int, shared_bytes: int, arch: str) -> dict:
    """Resident warps per SM of a kernel of ``num_warps`` warps per block and ``registers``
    per thread, and what limits them (the occupancy calculator's rules)."""
    limits = SM_LIMITS[arch]
    registers_per_warp = -(-max(registers, 1) * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    warps_per_sub_partition = (limits["registers"] // SUB_PARTITIONS) // registers_per_warp
    blocks = {
        "registers": (warps_per_sub_partition * SUB_PARTITIONS) // num_warps,
        "warps": limits["max_warps"] // num_warps,
        "blocks": limits["max_blocks"],
        "shared memory": limits["shared_bytes"] // (shared_bytes + BLOCK_RESERVED_SHARED_BYTES),
    }
    limit = min(blocks, key=lambda name: (blocks[name], name != "registers"))
    warps = blocks[limit] * num_warps
    by_registers = blocks["registers"] * num_warps
    return {"resident_warps": warps, "limited_by": limit, "warps_by_registers": by_registers,
            "register_capped": by_registers < MIN_WARPS_PER_SM and limit == "registers"}


# --------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")


def cuda_kernel_resources(archs: Sequence[str], nvcc: str) -> list[dict]:
    """Registers, spills, stack and shared memory of every kernel of csrc/cuda/*.cu, from
    ``nvcc -Xptxas -v`` (the flags of setup.py's build), per arch ('90', '80')."""
    include = str(REPO_ROOT / "csrc" / "include")
    rows = []
    for source in sorted((REPO_ROOT / "csrc" / "cuda").glob("*.cu")):
        for arch in archs:
            with tempfile.TemporaryDirectory() as folder:
                command = [nvcc, "-c", str(source), "-o", str(Path(folder) / "x.o"), "-std=c++17", "-O3",
                           "-Xcompiler", "-fPIC", "-I" + include, "-Xptxas", "-v",
                           f"-gencode=arch=compute_{arch},code=sm_{arch}"]
                completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                rows.append({"file": source.name, "arch": f"sm_{arch}", "error": completed.stderr[-2000:]})
                continue
            rows += _parse_nvcc_log(completed.stderr, source.name)
    names = [row["kernel"] for row in rows if "kernel" in row]
    demangled = _demangle(names)
    for row in rows:
        if "kernel" in row:
            row["kernel"] = demangled.get(row["kernel"], row["kernel"])
    return rows


def _parse_nvcc_log(log: str, file: str) -> list[dict]:
    rows, current = [], None
    for line in log.splitlines():
        entry = _PTXAS_ENTRY.search(line)
        if entry:
            current = {"file": file, "kernel": entry.group(1), "arch": entry.group(2)}
            rows.append(current)
            continue
        if current is None:
            continue
        frame = specializations._PTXAS_FUNCTION.search(line)
        if frame:
            current.update(stack_bytes=int(frame.group(1)), spill_store_bytes=int(frame.group(2)),
                           spill_load_bytes=int(frame.group(3)))
        used = specializations._PTXAS_REGISTERS.search(line)
        if used:
            current["registers"] = int(used.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current["shared_bytes"] = int(smem.group(1)) if smem else 0
    return rows


def _demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("cu++filt") or shutil.which("c++filt")
    if not filt or not names:
        return {}
    output = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, output)) if len(output) == len(names) else {}


def collect(args) -> dict:
    import torch
    import triton

    cases = specializations.benchmark_cases(train=not args.no_train)
    if not args.bench_only:
        cases = specializations.op_matrix() + cases
    started = time.time()
    recorder = specializations.capture_cases(cases)
    capture_s = time.time() - started
    specs = sorted(recorder.specializations.values(), key=lambda s: (s.kernel, s.key))
    started = time.time()
    results = specializations.compile_all(specs, workers=args.workers, cache_dir=args.cache_dir)
    compile_s = time.time() - started
    records = []
    for spec in specs:
        records.append({"specialization": spec.to_json(), "cases": sorted(recorder.labels[spec.key]),
                        "resources": {arch: results[(spec.key, arch)] for arch, _ in specializations.ARCHS}})
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cuda = cuda_kernel_resources(args.cuda_archs.split(","), nvcc) if args.cuda_archs else []
    return {
        "metadata": {
            "command": " ".join([COMMAND] + [shlex.quote(a) for a in _shown_arguments(args.argv)]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "triton": triton.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "nvcc": _nvcc_version(nvcc),
            "cases": len(cases), "capture_s": round(capture_s, 1), "compile_s": round(compile_s, 1),
            "workers": args.workers or len(os.sched_getaffinity(0)), "min_warps_per_sm": MIN_WARPS_PER_SM,
            "bench_only": args.bench_only,
        },
        "capture_errors": recorder.errors,
        "triton": records,
        "cuda": cuda,
    }


def _shown_arguments(argv: Sequence[str]) -> list[str]:
    """The command's arguments as the report shows them: without those that change only
    where it works or how fast (a cache folder, the number of processes)."""
    shown, skip = [], False
    for argument in argv:
        if skip:
            skip = False
            continue
        name = argument.split("=")[0]
        if name in ("--cache-dir", "--workers", "--out"):
            skip = "=" not in argument
            continue
        shown.append(argument)
    return shown


def _nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "absent"
    match = re.search(r"release ([\d.]+)", out)
    return match.group(1) if match else "unknown"


# --------------------------------------------------------------------------------------
# The markdown report
# --------------------------------------------------------------------------------------


def _dtype_cell(spec: dict) -> str:
    """The pointer element types: the most common one, then the others by argument."""
    pointers = {n: t[1:] for n, t in spec["signature"].items() if t.startswith("*") and n != "seed_ptr"}
    if not pointers:
        return "-"
    counts = defaultdict(int)
    for t in pointers.values():
        counts[t] += 1
    main = max(counts, key=counts.get)
    others = [f"{n.removesuffix('_ptr')}:{t}" for n, t in pointers.items() if t != main]
    return main + (f" ({', '.join(others)})" if others else "")


def _constexpr_cell(spec: dict) -> str:
    declared = specializations._declared_constexpr_names(spec["kernel"])
    return " ".join(f"{k}={_short(v)}" for k, v in spec["constexprs"].items() if k in declared)


def _short(value) -> str:
    return {True: "T", False: "F", None: "None"}.get(value, str(value)) if isinstance(value, (bool, type(None))) \
        else str(value)


def _group_key(record: dict) -> tuple:
    spec = record["specialization"]
    return (spec["kernel"], _constexpr_cell(spec), _dtype_cell(spec), spec["num_warps"], spec["num_stages"])


def _range(values) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def _ops_cell(cases: set[str]) -> str:
    ops = sorted({c.split()[0] for c in cases if not c.startswith("bench:")})
    bench = sorted(c.removeprefix("bench:") for c in cases if c.startswith("bench:"))
    parts = [", ".join(ops)] if ops else []
    if bench:
        parts.append("**bench** " + "; ".join(bench))
    return "; ".join(parts)


def summarize(payload: dict) -> dict:
    """Per arch: specializations, compile failures, spilling and register-capped ones, and
    those among them that the benchmarks launch."""
    summary = {}
    for arch, _ in specializations.ARCHS:
        spilled, capped, failed = [], [], []
        for record in payload["triton"]:
            resources = record["resources"][arch]
            if "error" in resources:
                failed.append(record)
                continue
            if resources["spill_store_bytes"] or resources["spill_load_bytes"]:
                spilled.append(record)
            occupancy = resident_warps(resources["registers"], resources["num_warps"], resources["shared_bytes"],
                                       arch)
            if occupancy["register_capped"]:
                capped.append(record)
        summary[arch] = {"failed": failed, "spilled": spilled, "capped": capped}
    return summary


def _bench_sizes(records: list[dict]) -> str:
    sizes = sorted({c.removeprefix("bench:") for r in records for c in r["cases"] if c.startswith("bench:")})
    return "; ".join(sizes) if sizes else "none"


def markdown_report(payload: dict) -> str:
    meta = payload["metadata"]
    records = payload["triton"]
    summary = summarize(payload)
    lines = [
        "# Kernel resources: registers, spills, shared memory, occupancy",
        "",
        f"Written by `{meta['command']}` on {meta['date']} at commit {meta['commit']} (Triton {meta['triton']}, "
        f"torch {meta['torch']}, nvcc {meta['nvcc']}).  No GPU is needed: every Triton specialization the ops "
        f"launch is captured from the launchers (bench/triton_specializations.py: {meta['cases']} op calls, "
        f"captured in {meta['capture_s']} s) and compiled ahead of time by `triton.compiler.compile` for each "
        f"architecture ({meta['compile_s']} s on {meta['workers']} processes); registers, stack and spills come "
        f"from the ptxas `-v` log of that compile, shared memory from the compiled kernel's metadata.",
        "",
        "## Summary",
        "",
        f"{len(records)} unique Triton specializations"
        + (" (`--bench-only`: those the benchmarks launch at their default sizes; without it, the op matrix's "
           "too)." if meta.get("bench_only") else ", of the op matrix and the benchmarks' default sizes."),
        "",
        "| arch | compile failures | spilling | spilling at benchmark sizes | register-capped (< "
        f"{MIN_WARPS_PER_SM} warps/SM) | register-capped at benchmark sizes |",
        "|---|---|---|---|---|---|",
    ]
    for arch, _ in specializations.ARCHS:
        s = summary[arch]
        bench_spilled = [r for r in s["spilled"] if any(c.startswith("bench:") for c in r["cases"])]
        bench_capped = [r for r in s["capped"] if any(c.startswith("bench:") for c in r["cases"])]
        lines.append(f"| {arch} | {len(s['failed'])} | {len(s['spilled'])} | {len(bench_spilled)} | "
                     f"{len(s['capped'])} | {len(bench_capped)} |")
    lines.append("")
    for arch, _ in specializations.ARCHS:
        s = summary[arch]
        for title, chosen in (("spill", s["spilled"]), ("are register-capped", s["capped"])):
            kernels = defaultdict(int)
            for r in chosen:
                kernels[r["specialization"]["kernel"]] += 1
            if kernels:
                listed = ", ".join(f"{k} ({n})" for k, n in sorted(kernels.items()))
                lines.append(f"* {arch}: the specializations that {title}, by kernel: {listed}.  "
                             f"Benchmark sizes among them: {_bench_sizes(chosen)}.")
    lines += ["", "Why each remaining spill and register cap is left as it is, with its numbers: bench/README.md, "
              "\"Running `kernel_resources.py`\"."]
    if payload["capture_errors"]:
        lines += ["", f"{len(payload['capture_errors'])} op calls of the matrix raised (their launches before the "
                  "error are captured); the first:", ""]
        for label, error in list(payload["capture_errors"].items())[:5]:
            lines.append(f"* `{label}`: {error}")
    lines += [
        "",
        "## How to read the table",
        "",
        "* One row per kernel × declared constexprs × pointer types × num_warps; a row groups the "
        "specializations that differ only in Triton's integer specializations (an integer equal to 1 made the "
        "constexpr 1, `tt.divisibility` 16 of a pointer or an integer, i32 or i64 by value), reproduced by "
        "Triton's own binder for the CUDA backend, so its registers are a range where those differ.  `n` is "
        "how many specializations the row groups.",
        "* dtype: the pointer element type most arguments have, then the others by argument (placeholders of "
        "absent tensors take another argument's type).",
        "* regs: registers per thread; **spill** st/ld: spill stores / loads in bytes (ptxas), **bold** where "
        "not 0; stack: the stack frame in bytes; smem: shared memory in bytes.",
        f"* warps/SM: resident warps per SM the registers allow with the block's num_warps (65536 registers per "
        f"SM in 4 sub-partitions, allocated per warp in units of {REGISTER_ALLOCATION_UNIT}; at most 64 warps and "
        f"32 blocks per SM on both architectures).  **capped** marks a kernel whose registers hold it under "
        f"{MIN_WARPS_PER_SM} warps per SM (50% occupancy): a memory-bound kernel needs about that many warps, "
        "each with a 16-byte load per thread in flight, to cover the memory latency at full bandwidth "
        "(Little's law: ~3.3-4.8 TB/s × ~0.7 µs over 132 SMs, ~2 TB/s × ~0.5 µs over 108).",
        "* launched by: the public ops whose calls launch it, and the benchmark cases (**bench**) at their "
        "default sizes (bench_latent.py, bench_likelihood.py, bench_train.py).  The JSON beside this file has "
        "every specialization with every op call.",
        "",
    ]
    groups = defaultdict(list)
    for record in records:
        groups[_group_key(record)].append(record)
    for arch, _ in specializations.ARCHS:
        lines += [f"## Triton kernels, {arch}", "",
                  "| kernel | constexprs | dtype | warps | n | regs | spill st/ld | stack | smem | warps/SM | "
                  "launched by |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in sorted(groups):
            group = groups[key]
            kernel, constexprs, dtype, num_warps, _ = key
            resources = [r["resources"][arch] for r in group]
            if any("error" in r for r in resources):
                error = next(r["error"] for r in resources if "error" in r)
                lines.append(f"| {kernel} | {constexprs} | {dtype} | {num_warps} | {len(group)} | "
                             f"**compile error**: {error[:200]} | | | | | |")
                continue
            stores = max(r["spill_store_bytes"] for r in resources)
            loads = max(r["spill_load_bytes"] for r in resources)
            spill = f"**{stores}/{loads}**" if stores or loads else "0/0"
            occupancies = [resident_warps(r["registers"], r["num_warps"], r["shared_bytes"], arch) for r in resources]
            warps = min(o["resident_warps"] for o in occupancies)
            capped = any(o["register_capped"] for o in occupancies)
            cases = set().union(*(set(r["cases"]) for r in group))
            lines.append(
                f"| {kernel.split('.')[1]} | {constexprs} | {dtype} | {num_warps} | {len(group)} | "
                f"{_range([r['registers'] for r in resources])} | {spill} | "
                f"{_range([r['stack_bytes'] for r in resources])} | {_range([r['shared_bytes'] for r in resources])} | "
                f"{warps}{' **capped**' if capped else ''} | {_ops_cell(cases)} |")
        lines.append("")
    lines += ["## CUDA C++ kernels (csrc/cuda)", ""]
    if not payload["cuda"]:
        lines += ["Not collected (nvcc absent or `--cuda-archs ''`).", ""]
    else:
        command = meta.get("cuda_command", meta["command"])
        compiled = [row for row in payload["cuda"] if "error" not in row]
        spilling = [row for row in compiled if row.get("spill_store_bytes") or row.get("spill_load_bytes")]
        lines += [f"From `nvcc -Xptxas -v` with setup.py's flags (`-O3 -std=c++17`), per kernel (`{command}`): "
                  f"{len(compiled)} kernels compiled, {len(payload['cuda']) - len(compiled)} files failed, "
                  f"{len(spilling)} kernels spill.  Resident warps per SM are not given: they depend on the block "
                  "size each launcher picks.  Names are shortened (`fastvae::cuda::(anonymous namespace)::` and "
                  "`fastvae::` dropped).", "",
                  "| file | kernel | arch | regs | spill st/ld | stack | smem |", "|---|---|---|---|---|---|---|"]
        for row in payload["cuda"]:
            if "error" in row:
                lines.append(f"| {row['file']} | **compile error** | {row['arch']} | | | | |")
                continue
            stores, loads = row.get("spill_store_bytes", 0), row.get("spill_load_bytes", 0)
            spill = f"**{stores}/{loads}**" if stores or loads else "0/0"
            name = row["kernel"].replace("fastvae::cuda::(anonymous namespace)::", "").replace("fastvae::", "")
            lines.append(f"| {row['file']} | `{name}` | {row['arch']} | {row.get('registers', '?')} | "
                         f"{spill} | {row.get('stack_bytes', '?')} | {row.get('shared_bytes', '?')} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_JSON,
                        help="JSON path; the markdown goes beside it (default: bench/results/kernel-resources.json)")
    parser.add_argument("--render", action="store_true", help="rewrite the markdown from the JSON; compile nothing")
    parser.add_argument("--cuda-only", action="store_true",
                        help="compile only the CUDA C++ kernels, replacing that section of the JSON")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: the usable CPUs)")
    parser.add_argument("--cache-dir", default=None,
                        help="Triton cache folder to compile into (default: a fresh temporary one)")
    parser.add_argument("--bench-only", action="store_true",
                        help="only the specializations the benchmarks launch at their default sizes, not the op "
                             "matrix's (a few minutes rather than 10-12 of compiling on two cores)")
    parser.add_argument("--no-train", action="store_true",
                        help="leave out bench_train.py's training steps (minutes of model math on a CPU)")
    parser.add_argument("--cuda-archs", default="90,80",
                        help="compute capabilities for the CUDA C++ section ('' for none; default 90,80)")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.render:
        payload = json.loads(args.out.read_text())
    elif args.cuda_only:
        payload = json.loads(args.out.read_text())
        nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
        payload["cuda"] = cuda_kernel_resources(args.cuda_archs.split(","), nvcc) if args.cuda_archs else []
        payload["metadata"]["cuda_command"] = " ".join([COMMAND] + [shlex.quote(a)
                                                                   for a in _shown_arguments(args.argv)])
        payload["metadata"]["nvcc"] = _nvcc_version(nvcc)
        args.out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    else:
        import torch

        if not torch.cuda.is_available():
            # The ops run the Triton backend on CPU tensors only under the interpreter,
            # chosen before fastvae's kernels are imported (nothing is executed: see capture).
            os.environ.setdefault("TRITON_INTERPRET", "1")
        payload = collect(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    report = markdown_report(payload)
    args.out.with_suffix(".md").write_text(report + "\n")
    print(report.split("## How to read")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
