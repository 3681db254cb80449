"""One command that validates fastvae on a GPU in under nine minutes: build, GPU tests,
benchmarks, one results folder with a summary.

    bash bench/gpu_session.sh                 # on a machine with one CUDA GPU
    python bench/gpu_session.py --dry-run     # the same steps on the CPU, at tiny sizes

Steps, in order, each a subprocess with a time limit (bench/README.md, "A GPU session"):

1. ``environment``: torch, Triton, the device and its compute capability, nvcc, which
   helper packages import (pytest, matplotlib, pybind11).
2. ``build``: ``setup.py build_ext --inplace`` of both C++ modules for the device's
   architecture only (``FASTVAE_CUDA_ARCH``), every source compiled in parallel.  A
   failed or late build is recorded and the session goes on: the triton backend needs no
   build, and the tests and benchmarks of the cuda backend then report it missing.
3. ``tests: fast``: every ``gpu``-marked test but the ones past 2**31 elements.
4. ``tests: > 2**31 elements``: those (tens of GiB each), last.
5. ``bench: ...``: the benchmarks, split into pieces merged into one file per benchmark
   (``--merge``): first the pieces the performance bars are checked on, then, while time
   is left, the rest of the benchmarks' default sizes, dtypes and modes.
6. ``kernel resources``: ``bench/kernel_resources.py``, when this checkout has it.

Then the summary: every bar met or missed, every test group's counts, each step's time,
written as summary.md and summary.json beside everything else (bench JSON and markdown,
junit XML and per-test outcomes, the logs, bandwidth.png) in
``bench/results/gpu-<device>-<UTC date>/``, and printed.

Time: each step has a budget (``BUDGETS``, with the estimate behind it); a step may use
the time earlier steps left unused, but never the budgets of the steps after it, so the
whole session ends within ``--budget-s`` (540 s) however the steps go.  ``--dry-run``
runs the same steps on the CPU (the build with every compiler replaced by ``true``, so
nothing is compiled; the GPU tests, which all skip there; the benchmarks at their tiny
sizes with Triton's interpreter) into a temporary folder; tests/test_gpu_session.py runs
it in CI.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Pure-Python helpers a bare GPU machine may lack (pytest, pybind11), installed here with
# `pip install --target .gpu_deps pytest pybind11` and carried along; put on the path when
# present (bench/README.md, "A GPU session").
EXTRA_SITE = ROOT / ".gpu_deps"

# The session's time, seconds: nine minutes of a fifteen-minute device lease, the rest
# being the machine's start (a few minutes) and a rerun's margin.
TOTAL_BUDGET_S = 540
REPORT_RESERVE_S = 10  # the summary, the plot and copying the folder

# Budgets per step, seconds, estimated for an H100/H200 with 16 CPU cores and cold
# caches (no Triton, inductor or compiler cache survives between leases):
# - environment: a Python start importing torch and asking the device (about 5 s).
# - build: the CPU module's 6 files and the CUDA module's 5 .cu files plus its bindings
#   compile side by side, one compiler per core.  On the 2-core development VM the CPU
#   files took 8 to 114 s each (serially; bench/README.md) and the .cu files are about
#   40 s each for one architecture; on 16 cores the build is its slowest file, a minute
#   or two.  120 s.
# - tests, fast: 87 gpu-marked tests; each Triton specialization compiles once
#   (about 1 s each, a few dozen), the reference at the benchmark sizes runs in
#   milliseconds, the widest categorical rows (65536 columns) compile longest.  120 s.
# - tests past 2**31 elements: 11 tests, each a few 4 GiB tensors and one kernel call
#   forward and backward; seconds each.  45 s.
# - benchmarks: a piece starts Python and CUDA (about 5 s), compiles each case's
#   reference with inductor (cold: 10-15 s for the first graph of the process, then 3-6 s
#   per graph, a forward and a backward per case) and its Triton kernels, and times every
#   provider for at most --budget-ms per mode (0.3 s).  Memory-bound at 262144x512
#   fwd+bwd: 4.3 GB of minimum traffic, ~1.5 ms at 3 TB/s fused, 10-20 ms eager, so the
#   timing itself is seconds; compiling dominates.  Per piece below.
# - kernel resources: another compile of every Triton specialization for two targets;
#   what is left of 20 s (it is optional).
BUDGETS = {
    "environment": 10,
    "build": 120,
    "tests: fast": 120,
    "tests: > 2**31 elements": 45,
    "kernel resources": 20,
}
GPU_TIMING = ["--reps", "50", "--min-reps", "5", "--warmup", "3", "--budget-ms", "300"]


@dataclass
class BenchPiece:
    """One benchmark command of the session: ``args`` added to the script's own, merged
    into the benchmark's one results file after the first piece.  ``core`` pieces hold
    the cases the performance bars are checked on and run in order with their budget;
    the others run afterwards only while the time left covers their estimate.
    ``in_dry_run``: also run by ``--dry-run`` (at the tiny sizes every piece of a
    benchmark measures the same cases, so one merged piece suffices to check merging)."""

    name: str
    benchmark: str  # latent, likelihood, train, deep, diffusion
    args: list
    budget_s: int
    core: bool
    in_dry_run: bool = False


# Each core piece: its cases × (one inductor compile pair + Triton kernels + timing of 4
# providers) plus a process start.  latent: 2 ops × 2 dtypes at 262144x512, ~60 s;
# likelihood: 4 float32 cases (the mixture's graph is the largest), ~65 s; train: the
# conv mixture VAE's whole step under inductor, cold, 40-60 s, plus eager and the two
# kernel providers, ~90 s.  The extra pieces: the smaller latent sizes (4 cases, ~45 s),
# bfloat16 likelihoods (~55 s), the fwd and bwd modes alone (timing only, compiles
# cached: ~30 s each), the MLP VAE (~70 s), bf16 autocast of the conv VAE (~80 s), the
# conv VAE's kernel providers under torch.compile (~70 s); the deep hierarchical VAE
# (bench_deep.py) at VDVAE's CIFAR-10 size, batch 16, eager and the fused model without
# torch.compile (inductor compiling a 43-group model's step cold would take minutes): a
# process and CUDA start (~10 s), the Triton specializations of the latent op at five
# resolutions and of the mixture (~15 s cold), then steps of a 39M-parameter model,
# about ten per provider at tenths of a second each, ~45 s; the diffusion ops and a
# denoiser's training step at 65536x784 (bench_diffusion.py: four cases, two inductor
# compiles each, ~60 s).  In --providers, KERNELS stands
# for the device's kernel backends (triton, and cuda if it was built) and
# COMPILED_KERNELS for each of them under torch.compile; without --providers a benchmark
# runs every provider for the device.
BENCH_PIECES = [
    BenchPiece("latent: bars", "latent",
               ["--sizes", "262144x512", "--dtypes", "float32,bfloat16", "--modes", "fwd+bwd"], 60, True, True),
    BenchPiece("likelihood: bars", "likelihood",
               ["--sizes", "65536x784,65536x3072,64x10x3x32x32,16x10x3x64x64", "--dtypes", "float32",
                "--modes", "fwd+bwd"], 65, True, True),
    BenchPiece("train: bar", "train",
               ["--sizes", "conv_mixture:128:32", "--dtypes", "float32", "--providers", "eager,compile,KERNELS"],
               90, True, True),
    BenchPiece("latent: smaller sizes", "latent",
               ["--sizes", "4096x64,65536x256", "--dtypes", "float32,bfloat16", "--modes", "fwd+bwd"], 45, False, True),
    BenchPiece("deep: VDVAE CIFAR-10 size", "deep",
               ["--sizes", "cifar_vdvae:16", "--dtypes", "float32", "--providers", "eager,fastvae"], 60, False, True),
    BenchPiece("diffusion: ops and step", "diffusion",
               ["--sizes", "65536x784", "--dtypes", "float32", "--providers", "eager,compile,KERNELS"],
               60, False, True),
    BenchPiece("likelihood: bfloat16", "likelihood",
               ["--sizes", "65536x784,65536x3072,64x10x3x32x32,16x10x3x64x64", "--dtypes", "bfloat16",
                "--modes", "fwd+bwd"], 55, False),
    BenchPiece("latent: fwd, bwd", "latent",
               ["--sizes", "262144x512", "--dtypes", "float32,bfloat16", "--modes", "fwd,bwd"], 35, False),
    BenchPiece("likelihood: fwd, bwd", "likelihood",
               ["--sizes", "65536x784,65536x3072,64x10x3x32x32,16x10x3x64x64", "--dtypes", "float32",
                "--modes", "fwd,bwd"], 35, False),
    BenchPiece("train: mlp", "train",
               ["--sizes", "mlp:4096,mlp:65536", "--dtypes", "float32", "--providers", "eager,compile,KERNELS"],
               70, False),
    BenchPiece("train: bfloat16", "train",
               ["--sizes", "conv_mixture:128:32", "--dtypes", "bfloat16", "--providers", "eager,compile,KERNELS"],
               80, False),
    BenchPiece("train: compiled kernel providers", "train",
               ["--sizes", "conv_mixture:128:32", "--dtypes", "float32", "--providers", "COMPILED_KERNELS"],
               70, False),
]
SCRIPTS = {"latent": "bench/bench_latent.py", "likelihood": "bench/bench_likelihood.py",
           "train": "bench/bench_train.py", "deep": "bench/bench_deep.py", "diffusion": "bench/bench_diffusion.py"}

# Pytest's selection of the two test groups (tests whose name says past 2**31 elements
# allocate tens of GiB; they run last).
LARGE_TESTS = "past_two_to_the_31"
TEST_GROUPS = [("tests: fast", "fast", f"not {LARGE_TESTS}"), ("tests: > 2**31 elements", "large", LARGE_TESTS)]
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "timeout", "not run")


# --------------------------------------------------------------------------------------
# Running steps within the time
# --------------------------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    status: str  # ok, failed (rc), timeout, skipped (why)
    seconds: float = 0.0
    limit_s: Optional[float] = None
    command: Optional[str] = None
    log: Optional[str] = None
    returncode: Optional[int] = None
    note: str = ""


class Clock:
    """The session's deadline.  ``limit(budget, reserved)``: a step may run until what is
    left, less ``reserved`` (the budgets of the steps after it and the report), and at
    most twice its budget (a hung step must not eat everything earlier steps saved)."""

    def __init__(self, total_s: float):
        self.start = time.monotonic()
        self.total_s = total_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def limit(self, budget_s: float, reserved_s: float) -> float:
        return max(0.0, min(2 * budget_s, self.left() - reserved_s))


def run_logged(command: Sequence[str], log_path: Path, limit_s: float, env: dict, name: str) -> StepResult:
    """Run ``command`` from the repository root, stdout and stderr into ``log_path``, for at
    most ``limit_s`` seconds; then its whole process group is ended (TERM, then KILL)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    text = " ".join(shlex.quote(str(part)) for part in command)
    result = StepResult(name, "ok", limit_s=round(limit_s, 1), command=text, log=str(log_path))
    if limit_s < 1:
        result.status, result.note = "skipped", "no time left"
        log_path.write_text(f"$ {text}\nnot run: no time left\n")
        return result
    started = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {text}\n")
        log.flush()
        process = subprocess.Popen([str(part) for part in command], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            result.returncode = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            result.status = "timeout"
            end_process_group(process)
            log.write(f"\n[gpu_session] stopped after {limit_s:.0f} s (its time limit)\n")
    result.seconds = round(time.monotonic() - started, 1)
    if result.status == "ok" and result.returncode != 0:
        result.status = "failed"
    return result


def end_process_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------
# Environment and build
# --------------------------------------------------------------------------------------

PROBE = r"""
import importlib.util, json, platform, shutil, subprocess, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda}
try:
    import triton
    info["triton"] = triton.__version__
except Exception as error:
    info["triton"] = None
for name in ("pytest", "matplotlib", "pybind11", "numpy", "tqdm"):
    info[f"has_{name}"] = importlib.util.find_spec(name) is not None
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(device=props.name, capability=f"{props.major}{props.minor}",
                memory_gib=round(props.total_memory / 2**30, 1), device_count=torch.cuda.device_count())
else:
    from fastvae.eval import device_name
    info.update(device=device_name(torch.device("cpu")), capability=None, memory_gib=None, device_count=0)
nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if shutil.which("/usr/local/cuda/bin/nvcc") else None)
info["nvcc"] = None
if nvcc:
    info["nvcc"] = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
info["cpu_count"] = __import__("os").cpu_count()
print("PROBE " + json.dumps(info))
"""

BACKENDS_PROBE = r"""
import json, torch, fastvae
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
print("PROBE " + json.dumps({d: fastvae.backends.available(d) for d in devices}))
"""


def read_probe(log_path: Path) -> Optional[dict]:
    for line in log_path.read_text().splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE "):])
    return None


def ensure_kernels_link() -> str:
    """``fastvae.kernels`` is ``kernels/`` (setup.py maps it for an install); a checkout
    run in place needs the link fastvae/kernels -> ../kernels, which git does not carry."""
    link = ROOT / "fastvae" / "kernels"
    if link.exists():
        return "present"
    link.symlink_to(Path("..") / "kernels", target_is_directory=True)
    return "created"


def build_command(dry_run: bool, scratch: Path) -> list:
    """The device's build: both modules in place.  The dry run builds into ``scratch`` with
    every compiler and linker replaced by ``true`` (:func:`build_env`): setup.py's
    decisions, its parallel compilation and the commands it prints, in a second, with
    nothing compiled (setuptools has no --dry-run any more)."""
    if dry_run:
        return [sys.executable, "setup.py", "build_ext", "--force", "--build-temp", str(scratch / "temp"),
                "--build-lib", str(scratch / "lib")]
    return [sys.executable, "setup.py", "build_ext", "--inplace"]


def build_env(base: dict, capability: Optional[str], dry_run: bool) -> dict:
    env = dict(base)
    env["FASTVAE_BUILD_JOBS"] = str(os.cpu_count() or 1)
    if dry_run:
        env.update(CC="true", CXX="true", LDSHARED="true", LDCXXSHARED="true")
    if dry_run or not capability:
        env["FASTVAE_CUDA"] = "0"
    else:
        env["FASTVAE_CUDA"] = "1"
        env["FASTVAE_CUDA_ARCH"] = capability
    return env


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


GPU_MARK = re.compile(r"^(@pytest\.mark\.gpu\b|pytestmark\s*=.*\bpytest\.mark\.gpu\b)", re.MULTILINE)


def gpu_test_files() -> list:
    """tests/test_*_gpu.py and every other test file that marks a test ``gpu``."""
    files = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name.endswith("_gpu.py") or GPU_MARK.search(path.read_text()):
            files.append(str(path.relative_to(ROOT)))
    return files


def pytest_command(files: Sequence[str], selection: str, junit: Path) -> list:
    # -v prints each test's id as it starts and its outcome as it ends, so a group stopped
    # at its time limit still tells which tests ran and which one it stopped in;
    # faulthandler dumps every thread's stack of a test that runs over 90 s into the log.
    return [sys.executable, "-m", "pytest", *files, "-m", "gpu", "-k", selection, "-v", "-rA",
            "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "faulthandler_timeout=90"]


_TEST_LINE = re.compile(r"^(tests/\S+?\.py::.*?)(?: (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b.*)?$")
_SELECTED = re.compile(r"collected (\d+) items?(?: / (\d+) deselected)?(?: / (\d+) selected)?")
_VERBOSE_OUTCOME = {"PASSED": "passed", "FAILED": "failed", "SKIPPED": "skipped", "ERROR": "error",
                    "XFAIL": "xfailed", "XPASS": "xpassed"}


def parse_test_log(text: str, stopped: bool) -> tuple:
    """Per-test outcomes from pytest's ``-v`` output: ``({nodeid: outcome}, selected)``.
    A test that started and has no outcome is 'timeout' when the group was ``stopped``
    at its time limit (else 'error': pytest itself died); selected tests never reached
    are counted by :func:`count_outcomes`."""
    outcomes, selected, running = {}, None, None
    for line in text.splitlines():
        found = _SELECTED.search(line)
        if found and selected is None:
            total, deselected, chosen = (int(g) if g else None for g in found.groups())
            selected = chosen if chosen is not None else total - (deselected or 0)
        match = _TEST_LINE.match(line.rstrip())
        if not match:
            continue
        nodeid, verdict = match.group(1).strip(), match.group(2)
        if verdict:
            # A test that fails in teardown is listed again, as ERROR: keep the worse.
            outcome = _VERBOSE_OUTCOME[verdict]
            if outcomes.get(nodeid) not in ("failed", "error"):
                outcomes[nodeid] = outcome
            running = None
        else:
            running = nodeid
    if running is not None and running not in outcomes:
        outcomes[running] = "timeout" if stopped else "error"
    return outcomes, selected


def junit_details(junit: Path) -> dict:
    """{nodeid-like name: (seconds, message)} from a junit XML file pytest finished."""
    if not junit.exists():
        return {}
    details = {}
    try:
        tree = ElementTree.parse(junit)
    except ElementTree.ParseError:
        return {}
    for case in tree.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        message = ""
        for child in case:
            if child.tag in ("failure", "error", "skipped") and (child.get("message") or "").strip():
                message = child.get("message").strip().splitlines()[0][:300]
        details[case.get("name", "")] = (float(case.get("time", 0.0)), message, name)
    return details


def count_outcomes(outcomes: dict, selected: Optional[int]) -> dict:
    counts = {outcome: 0 for outcome in OUTCOMES}
    for outcome in outcomes.values():
        counts[outcome] += 1
    if selected is not None:
        counts["not run"] = max(0, selected - len(outcomes))
    return counts


def test_group_result(step: StepResult, junit: Path) -> dict:
    text = Path(step.log).read_text() if step.log and Path(step.log).exists() else ""
    outcomes, selected = parse_test_log(text, stopped=step.status == "timeout")
    details = junit_details(junit)
    tests = []
    for nodeid, outcome in outcomes.items():
        seconds, message, _ = details.get(nodeid.split("::")[-1], (None, "", ""))
        tests.append({"test": nodeid, "outcome": outcome, "seconds": seconds, "message": message})
    return {"status": step.status, "selected": selected, "counts": count_outcomes(outcomes, selected), "tests": tests}


# --------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------


def bench_command(piece: BenchPiece, out: Path, merge: bool, dry_run: bool, kernel_providers: Sequence[str]) -> list:
    script = [sys.executable, SCRIPTS[piece.benchmark]]
    if dry_run:
        # The CPU at the tiny size: two repetitions, the eager baseline, Triton under its
        # interpreter and the cpu backend where it is built.  torch.compile is left out:
        # inductor's C++ code generation takes tens of seconds per graph on a CPU.
        providers = ",".join(["eager", "triton"] + [k for k in kernel_providers if k == "cpu"])
        if piece.benchmark == "train":  # a whole model under the interpreter takes a minute: one kernel backend
            providers = "eager," + ("cpu" if "cpu" in kernel_providers else "triton")
        if piece.benchmark == "deep":  # fastvae = the cpu backend where built, else Triton's interpreter
            providers = "eager,fastvae"
        args = ["--device", "cpu", "--sizes", "tiny", "--reps", "2", "--min-reps", "1", "--warmup", "1",
                "--dtypes", "float32", "--providers", providers]
        if piece.benchmark == "deep":
            args += ["--op-share-steps", "0"]
        if piece.benchmark not in ("train", "deep"):
            args += ["--copy-mib", "8"]
            modes = piece.args[piece.args.index("--modes") + 1] if "--modes" in piece.args else None
            if modes:
                args += ["--modes", modes]
    else:
        kernels = [k for k in kernel_providers if k != "cpu"]
        substitutes = {"COMPILED_KERNELS": [k + "+compile" for k in kernels], "KERNELS": kernels}
        args = []
        for arg in piece.args:
            for placeholder, names in substitutes.items():
                if placeholder in arg.split(","):
                    arg = ",".join(p for p in arg.split(",") if p != placeholder) + "," + ",".join(names)
            args.append(arg.strip(","))
        args += ["--device", "cuda"] + GPU_TIMING
    args += ["--out", str(out)] + (["--merge"] if merge else [])
    return script + args


def bench_bar_rows(benchmark: str, payload: dict) -> list:
    """Every performance-bar row of one benchmark's results, through the benchmark's own
    ``bar_rows`` (bench/bench_*.py), as plain dicts."""
    module = load_bench_module(benchmark)
    device_type = payload["metadata"]["device"]["type"]
    result = module.bar_rows(payload["records"], device_type)
    rows = result[1] if isinstance(result, tuple) else result
    if not rows:  # bench_deep.py sets no bar
        return []
    criteria = {
        "latent": lambda r: module.GPU_BAR if device_type == "cuda" else module.CPU_BAR,
        "likelihood": lambda r: (module.GPU_BARS if device_type == "cuda" else module.CPU_BARS)[r["op"]],
        "train": lambda r: module.GPU_BAR,
    }[benchmark]
    summary = []
    for row in rows:
        bar = criteria(row)
        summary.append({
            "benchmark": benchmark,
            "case": bar_case(benchmark, row),
            "dtype": row["dtype"],
            "provider": row["provider"],
            "bar": module.common.describe_criteria(bar),
            "values": {name: row.get(name) for name, _, _ in bar},
            "verdict": row["verdict"],
        })
    return summary


def bar_case(benchmark: str, row: dict) -> str:
    if benchmark == "latent":
        return f"{row['op']} {row['batch']}x{row['dim']}"
    if benchmark == "likelihood":
        size = row["shape"] + (f" K={row['num_mixtures']}" if row.get("num_mixtures") else "")
        return f"{row['op']} {size}"
    return f"{row['model']} {row['batch']}x{row['input']}"


_MODULES = {}


def load_bench_module(benchmark: str):
    """bench/bench_<benchmark>.py, loaded by path (bench/ is a folder of scripts; it
    imports fastvae, from this checkout)."""
    if benchmark not in _MODULES:
        import importlib.util

        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))

        name = f"fastvae_gpu_session_bench_{benchmark}"
        spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"bench_{benchmark}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _MODULES[benchmark] = module
    return _MODULES[benchmark]


def bandwidth_rows(payloads: dict) -> list:
    """(label, provider, % of copy) of every op's fwd+bwd at its largest size in the run,
    from the op benchmarks' records."""
    rows = []
    for benchmark in ("latent", "likelihood"):
        payload = payloads.get(benchmark)
        if not payload:
            continue
        records = [r for r in payload["records"] if r["mode"] == "fwd+bwd"]
        size_of = (lambda r: r["batch"] * r["dim"]) if benchmark == "latent" else (lambda r: r["elements"])
        largest = {}
        for record in records:
            largest[record["op"]] = max(largest.get(record["op"], 0), size_of(record))
        for record in records:
            if size_of(record) != largest[record["op"]] or record.get("pct_of_copy") is None:
                continue
            size = f"{record['batch']}x{record['dim']}" if benchmark == "latent" else record["shape"]
            rows.append((f"{record['op']}\n{size} {record['dtype']}", record["provider"], record["pct_of_copy"]))
    return rows


def plot_bandwidth(rows: Sequence[tuple], path: Path, device: str) -> None:
    """Grouped bars: GB/s as % of the measured copy bandwidth per op and provider, with the
    90% bar as a line.  matplotlib's Agg canvas without pyplot, as fastvae.eval draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(label for label, _, _ in rows))
    providers = list(dict.fromkeys(provider for _, provider, _ in rows))
    values = {(label, provider): pct for label, provider, pct in rows}
    figure = Figure(figsize=(max(6.0, 1.6 * len(labels) + 2), 4.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(providers))
    for index, provider in enumerate(providers):
        xs = [i + (index - (len(providers) - 1) / 2) * width for i in range(len(labels))]
        heights = [values.get((label, provider), 0.0) for label in labels]
        axes.bar(xs, heights, width=width, label=provider)
    axes.axhline(90.0, color="black", linestyle="--", linewidth=1, label="bar: 90% of copy")
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels, fontsize=7)
    axes.set_ylabel("GB/s (minimum bytes) as % of copy")
    axes.set_title(f"fwd+bwd at each op's largest size: {device}", fontsize=10)
    axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)


# --------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summary_markdown(summary: dict) -> str:
    env = summary["environment"] or {}
    lines = [
        f"# fastvae GPU session{' (dry run on the CPU)' if summary['dry_run'] else ''}: {env.get('device', '?')}",
        "",
        f"- date (UTC): {summary['started_utc']}; commit: {summary.get('git_commit') or 'none'}; "
        f"wall time {summary['wall_s']:.0f} s of a {summary['budget_s']:.0f} s budget",
        f"- torch {env.get('torch')}, Triton {env.get('triton')}, Python {env.get('python')}, "
        f"CUDA {env.get('torch_cuda')}, nvcc: {env.get('nvcc') or 'none'}; compute capability {env.get('capability')}",
        f"- backends after the build: {summary.get('backends')}",
        "",
        "## Performance bars",
        "",
    ]
    bars = summary["bars"]
    if bars:
        lines.append(markdown_table(
            ["benchmark", "case", "dtype", "provider", "bar", "values", "verdict"],
            [[b["benchmark"], b["case"], b["dtype"], b["provider"], b["bar"],
              ", ".join(f"{k} {format_value(v)}" for k, v in b["values"].items()), b["verdict"]] for b in bars]))
    else:
        lines.append("No performance bar was checked (no benchmark results of a bar's case).")
    lines += ["", "## Tests", ""]
    groups = summary["tests"]
    lines.append(markdown_table(["group", "status", "selected"] + list(OUTCOMES),
                                [[name, g["status"], format_value(g["selected"])] + [g["counts"][o] for o in OUTCOMES]
                                 for name, g in groups.items()]))
    bad = [(name, t) for name, g in groups.items() for t in g["tests"]
           if t["outcome"] in ("failed", "error", "timeout", "xpassed")]
    if bad:
        lines += ["", "Not passed:", ""]
        lines += [f"- {name}: `{t['test']}` {t['outcome']}{': ' + t['message'] if t['message'] else ''}"
                  for name, t in bad]
    lines += ["", "## Steps", ""]
    lines.append(markdown_table(["step", "status", "seconds", "limit s", "log"],
                                [[s["name"], s["status"] + (f" ({s['note']})" if s["note"] else ""), s["seconds"],
                                  format_value(s["limit_s"]), Path(s["log"]).name if s["log"] else "-"]
                                 for s in summary["steps"]]))
    lines += ["", "## Files", ""]
    lines += [f"- `{name}`" for name in summary["files"]]
    return "\n".join(lines)


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------


def child_env(dry_run: bool) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(EXTRA_SITE)] if EXTRA_SITE.is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)  # the real kernels
    return env


def results_folder(requested: Optional[Path], dry_run: bool, device: str, started: datetime.datetime) -> Path:
    if requested is not None:
        return requested
    if dry_run:
        return Path(tempfile.mkdtemp(prefix="fastvae-gpu-session-dry-run-"))
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "unknown-device"
    return RESULTS_DIR / f"gpu-{slug}-{started.strftime('%Y%m%d-%H%M')}"


def run_session(args) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = Clock(args.budget_s)
    env = child_env(args.dry_run)
    # On a device the checkout runs in place; a dry run uses the package as the tests do.
    link = "not checked (dry run)" if args.dry_run else ensure_kernels_link()
    staging = Path(tempfile.mkdtemp(prefix="fastvae-gpu-session-"))
    steps = []
    pieces = [p for p in BENCH_PIECES if p.in_dry_run or not args.dry_run]

    def later_budget(names) -> float:
        """The budgets of the steps ``names`` and the core benchmark pieces, and the report's."""
        return sum(BUDGETS[name] for name in names) + sum(p.budget_s for p in pieces if p.core) + REPORT_RESERVE_S

    # 1. environment
    probe_log = staging / "logs" / "environment.log"
    step = run_logged([sys.executable, "-c", PROBE], probe_log, clock.limit(BUDGETS["environment"], 0), env,
                      "environment")
    steps.append(step)
    environment = read_probe(probe_log) if probe_log.exists() else None
    device = (environment or {}).get("device") or "unknown device"
    out = results_folder(args.out, args.dry_run, device, started)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    shutil.move(str(staging / "logs"), str(logs))
    shutil.rmtree(staging, ignore_errors=True)
    step.log = str(logs / "environment.log")
    if environment is not None:
        environment["kernels_link"] = link
        environment["extra_site"] = str(EXTRA_SITE) if EXTRA_SITE.is_dir() else None
    (out / "environment.json").write_text(json.dumps(environment, indent=1) + "\n")
    capability = (environment or {}).get("capability")
    if not args.dry_run and not (environment or {}).get("cuda_available"):
        print("gpu_session: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)

    # 2. build
    reserve = later_budget(["tests: fast", "tests: > 2**31 elements", "kernel resources"])
    if args.skip_build:
        steps.append(StepResult("build", "skipped", note="--skip-build"))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="fastvae-gpu-session-build-"))
        steps.append(run_logged(build_command(args.dry_run, scratch), logs / "build.log",
                                clock.limit(BUDGETS["build"], reserve), build_env(env, capability, args.dry_run),
                                "build"))
        shutil.rmtree(scratch, ignore_errors=True)
    backends_log = logs / "backends.log"
    # Which backends import now (the cuda one only if the build made its module).
    run_logged([sys.executable, "-c", BACKENDS_PROBE], backends_log, clock.limit(BUDGETS["environment"], reserve), env,
               "backends")
    backends = read_probe(backends_log) or {}
    kernel_providers = [b for b in backends.get("cuda" if not args.dry_run else "cpu", []) if b != "torch"]

    # 3-4. tests
    tests = {}
    files = gpu_test_files()
    for index, (name, tag, selection) in enumerate(TEST_GROUPS):
        later = [g[0] for g in TEST_GROUPS[index + 1:]] + ["kernel resources"]
        junit = out / f"tests-{tag}.xml"
        if environment is not None and not environment.get("has_pytest"):
            step = StepResult(name, "skipped", note=f"pytest is not installed (carry it in {EXTRA_SITE.name}/)")
            steps.append(step)
            tests[name] = {"status": step.status, "selected": None, "counts": count_outcomes({}, None), "tests": []}
            continue
        step = run_logged(pytest_command(files, selection, junit), logs / f"tests-{tag}.log",
                          clock.limit(BUDGETS[name], later_budget(later)), env, name)
        steps.append(step)
        tests[name] = test_group_result(step, junit)
    (out / "tests.json").write_text(json.dumps(tests, indent=1) + "\n")

    # 5. benchmarks: the bar pieces with their budgets, then the rest while time is left
    written = set()
    core = [p for p in pieces if p.core]
    for piece in pieces:
        target = out / f"{piece.benchmark}.json"
        log = logs / ("bench-" + re.sub(r"[^a-z0-9]+", "-", piece.name.lower()).strip("-") + ".log")
        if piece.core:
            after = core[core.index(piece) + 1:]
            limit = clock.limit(piece.budget_s, BUDGETS["kernel resources"] + REPORT_RESERVE_S
                                + sum(p.budget_s for p in after))
        else:
            limit = clock.left() - BUDGETS["kernel resources"] - REPORT_RESERVE_S
            if limit < piece.budget_s:
                steps.append(StepResult(f"bench: {piece.name}", "skipped", note=f"needs ~{piece.budget_s} s, "
                                        f"{max(0, limit):.0f} s left", log=None))
                continue
        command = bench_command(piece, target, piece.benchmark in written, args.dry_run, kernel_providers)
        if "--providers" in command and not command[command.index("--providers") + 1]:
            steps.append(StepResult(f"bench: {piece.name}", "skipped", note="no kernel backend for the device"))
            continue
        step = run_logged(command, log, limit, env, f"bench: {piece.name}")
        steps.append(step)
        if target.exists():
            written.add(piece.benchmark)

    # 6. kernel resources
    resources = ROOT / "bench" / "kernel_resources.py"
    if resources.exists():
        # The table of the specializations the benchmarks launch, into the results folder (the
        # committed whole-matrix table needs no GPU: it is made on any machine); its
        # compiles spread over the machine's cores.  On the CPU only that it starts.
        command = [sys.executable, str(resources.relative_to(ROOT))] + (
            ["--help"] if args.dry_run
            else ["--bench-only", "--cuda-archs", "", "--out", str(out / "kernel-resources.json")])
        steps.append(run_logged(command, logs / "kernel-resources.log",
                                clock.limit(BUDGETS["kernel resources"], REPORT_RESERVE_S), env, "kernel resources"))
    else:
        steps.append(StepResult("kernel resources", "skipped", note="bench/kernel_resources.py not in this checkout"))

    # summary
    payloads = {}
    for benchmark in SCRIPTS:
        path = out / f"{benchmark}.json"
        if path.exists():
            payloads[benchmark] = json.loads(path.read_text())
    bars = []
    for benchmark, payload in payloads.items():
        try:
            bars += bench_bar_rows(benchmark, payload)
        except Exception as error:  # noqa: BLE001 (a report must still be written)
            bars.append({"benchmark": benchmark, "case": "-", "dtype": "-", "provider": "-", "bar": "-",
                         "values": {}, "verdict": f"error reading the results: {error}"})
    plot_note = ""
    rows = bandwidth_rows(payloads)
    if rows:
        try:
            plot_bandwidth(rows, out / "bandwidth.png", device)
        except ImportError as error:
            plot_note = f"no bandwidth.png: {error}"
    else:
        plot_note = "no bandwidth.png: no op benchmark results"
    summary = {
        "dry_run": args.dry_run,
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(),
        "budget_s": args.budget_s,
        "wall_s": round(clock.elapsed(), 1),
        "environment": environment,
        "backends": backends,
        "steps": [asdict(s) for s in steps],
        "tests": tests,
        "bars": bars,
        "plot": plot_note or "bandwidth.png",
        "files": [],
    }
    summary["files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) + ["summary.json",
                                                                                                   "summary.md"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    markdown = summary_markdown(summary)
    (out / "summary.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nresults: {out}")
    if args.copy_to:
        destination = Path(args.copy_to) / out.name
        shutil.copytree(out, destination, dirs_exist_ok=True)
        print(f"copied to {destination}")
    summary["folder"] = str(out)
    return summary


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validate fastvae on a GPU in one command: build for the device, the "
                                     "gpu tests, the benchmarks, a summary (bench/README.md, 'A GPU session').")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU at tiny sizes, into a temporary folder (what CI runs)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: bench/results/gpu-<device>-<UTC date>/, or a temporary "
                        "folder with --dry-run)")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S,
                        help=f"the whole session's time, seconds (default: {TOTAL_BUDGET_S})")
    parser.add_argument("--skip-build", action="store_true", help="use the C++ modules already built")
    parser.add_argument("--copy-to", default=None, help="also copy the results folder into this folder at the end")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    run_session(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
