"""Helpers shared by fastvae's benchmarks (bench_latent.py, bench_likelihood.py,
bench_train.py): timing, peak memory (on the CPU too), the copy-bandwidth ceiling, run
metadata, the providers (eager, compile, fastvae backends), input sets and the three
modes (fwd, bwd, fwd+bwd), one case's records, speedups, the performance bars' verdicts, the
common command-line options, and the JSON and markdown reports.  A benchmark script
brings its ops, sizes, inputs and minimum-bytes formulas; the rest is here.

How times are taken:

* Warm-up calls first, so compilation, autotuning and allocator growth stay out of the
  numbers.
* On CUDA, one pair of CUDA events around each repetition; on the CPU,
  ``time.perf_counter`` around each (CPU ops are synchronous).
* The statistic is the median over repetitions.
* Inputs that fit in the cache would time the cache, not memory: benchmarks rotate among
  enough independent input sets (:func:`rotation_sets`) that each repetition reads
  memory no recent repetition touched.  Rotation, rather than flushing the cache between
  repetitions, keeps the timed region to the op alone.

This file is a plain module next to the benchmark scripts (bench/ is not a package); the
scripts put their own folder on ``sys.path`` and ``import common``.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent

MIB = 2**20
# Cache sizes used when the device does not report its own.
FALLBACK_GPU_L2_BYTES = 50 * MIB
FALLBACK_CPU_LLC_BYTES = 32 * MIB
# Rotate among enough input sets to cover this many times the cache.
CACHE_COVER_FACTOR = 2
MAX_ROTATION_SETS = 64

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------


def default_device() -> torch.device:
    """The first CUDA device if there is one, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def parse_device(spec: Optional[str]) -> torch.device:
    """``--device`` to a torch.device (``cuda`` means ``cuda:0``); None → :func:`default_device`."""
    if spec is None:
        return default_device()
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {spec}: no CUDA device is available here")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise SystemExit(f"--device {spec}: only cpu and cuda are supported")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's or the CPU's name, as fastvae's reports give it."""
    from fastvae.eval import device_name as name

    return name(device)


def slugify(text: str) -> str:
    """Lower case, runs of anything but letters and digits as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_slug(device: torch.device) -> str:
    """A file-name tag for the device: e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu-amd-epyc``."""
    slug = slugify(device_name(device))
    return slug if device.type == "cuda" else f"cpu-{slug}"


def cache_bytes(device: torch.device) -> int:
    """The last-level cache that repeated runs could be served from: the GPU's L2, or
    the CPU's largest cache as sysfs reports it."""
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        return int(size) or FALLBACK_GPU_L2_BYTES
    sizes = []
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", size_file.read_text().strip())
        if match:
            sizes.append(int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])
    return max(sizes, default=FALLBACK_CPU_LLC_BYTES)


def rotation_sets(bytes_per_set: int, device: torch.device, max_calls: Optional[int] = None) -> int:
    """How many independent input sets to rotate among so that the sets together cover
    the cache ``CACHE_COVER_FACTOR`` times; 1 when one set already does.  Never more than
    ``MAX_ROTATION_SETS``, nor more than ``max_calls`` (sets beyond the calls made are
    never used)."""
    wanted = math.ceil(CACHE_COVER_FACTOR * cache_bytes(device) / max(bytes_per_set, 1))
    limit = MAX_ROTATION_SETS if max_calls is None else min(MAX_ROTATION_SETS, max_calls)
    return max(1, min(wanted, limit))


def nvidia_driver_version(device: torch.device) -> Optional[str]:
    """The NVIDIA driver version, read (never set) through ``nvidia-smi``; None if that fails."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index or 0}"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_metadata(device: torch.device) -> dict:
    """What the numbers were measured on (no host name)."""
    info = {"type": device.type, "name": device_name(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            index=device.index,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 2),
            l2_cache_mib=round(cache_bytes(device) / MIB, 2),
            driver=nvidia_driver_version(device),
            cuda_runtime=torch.version.cuda,
        )
    else:
        info.update(
            torch_threads=torch.get_num_threads(),
            logical_cpus=os.cpu_count(),
            last_level_cache_mib=round(cache_bytes(device) / MIB, 2),
        )
    return info


def git_commit() -> Optional[str]:
    """The checked-out commit (read only), or None outside a git checkout or before the
    first commit."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(device: torch.device, argv: Sequence[str], script: str) -> dict:
    """Versions, device, date and the exact command line of a run."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # triton absent or broken: the run may still time the others
        triton_version = None
    import fastvae

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", script, *argv]),
        "device": device_metadata(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "fastvae": getattr(fastvae, "__version__", None),
        "git_commit": git_commit(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    }


# --------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Per-repetition times of one benchmark case, in milliseconds."""

    median_ms: float
    min_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    rotation_sets: int

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def time_calls(
    call: Callable[[int], object],
    device: torch.device,
    *,
    setup: Optional[Callable[[int], object]] = None,
    rotation: int = 1,
    warmup: int = 5,
    max_reps: int = 100,
    min_reps: int = 5,
    budget_ms: float = 1000.0,
) -> Timing:
    """Median time of ``call(i)``, i cycling over ``range(rotation)`` input sets.

    ``setup(i)``, when given, runs before every call, outside the timed region (e.g. the
    forward pass whose graph a timed backward consumes); on CUDA its work is queued
    before the start event, so the events enclose ``call`` alone.

    ``warmup`` untimed calls first (at least one: it compiles).  Then the number of
    repetitions is fitted to ``budget_ms`` from a host-clock estimate of one call, and
    kept within [min(min_reps, max_reps), max_reps], so a slow eager baseline at a
    large size does not run for minutes.
    """
    def prepare(i: int) -> None:
        if setup is not None:
            setup(i)

    for i in range(max(1, warmup)):
        prepare(i % rotation)
        call(i % rotation)
    prepare(0)
    synchronize(device)
    start = time.perf_counter()
    call(0)
    synchronize(device)
    estimate_ms = (time.perf_counter() - start) * 1e3
    fitted = max_reps if math.isinf(budget_ms) else int(budget_ms / max(estimate_ms, 1e-6))
    reps = max(min(min_reps, max_reps), min(fitted, max_reps))

    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for rep in range(reps):
            prepare(rep % rotation)
            starts[rep].record()
            call(rep % rotation)
            ends[rep].record()
        synchronize(device)
        times_ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        times_ms = []
        for rep in range(reps):
            prepare(rep % rotation)
            start = time.perf_counter()
            call(rep % rotation)
            times_ms.append((time.perf_counter() - start) * 1e3)

    ordered = sorted(times_ms)
    return Timing(
        median_ms=statistics.median(ordered),
        min_ms=ordered[0],
        p20_ms=_quantile(ordered, 0.2),
        p80_ms=_quantile(ordered, 0.8),
        reps=reps,
        rotation_sets=rotation,
    )


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view counts its storage once)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def peak_extra_memory_mib(
    run_once: Callable[[], Sequence[torch.Tensor]],
    device: torch.device,
    setup: Optional[Callable[[], object]] = None,
) -> Optional[float]:
    """Peak memory of one call beyond what existed before it and the tensors it returns,
    in MiB: the workspace and the saved activations an implementation needs.
    ``setup()`` runs first and what it keeps alive counts as existing before the call.

    On CUDA, ``torch.cuda.max_memory_allocated``; on the CPU, :func:`cpu_allocations`
    (the profiler's record of every allocation), with the same definition.
    """
    if device.type != "cuda":
        usage = cpu_allocations(run_once, setup)
        return max(usage.peak_bytes - usage.output_bytes, 0) / MIB
    if setup is not None:
        setup()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    outputs = run_once()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    extra = peak - before - storage_bytes(outputs)
    del outputs
    return max(extra, 0) / MIB


# The profiler range around the measured call, whose start and end bound its allocations.
MEASURED_CALL_RANGE = "fastvae_bench.measured_call"


@dataclass
class CpuAllocations:
    """What one call did to the CPU allocator, in bytes relative to the memory allocated
    when it started: the highest level during the call, the level at its end, and the
    distinct storages of the tensors it returned (part of both)."""

    peak_bytes: int
    end_bytes: int
    output_bytes: int


def cpu_allocations(run_once: Callable[[], Sequence[torch.Tensor]],
                    setup: Optional[Callable[[], object]] = None) -> CpuAllocations:
    """Count every CPU allocation and free of ``run_once()`` in order (after an
    uncounted ``setup()``), from the profiler's memory events.

    CPU tensors get their memory from c10's CPU allocator, which reports each allocation
    and each free with its size to the profiler when ``profile_memory=True``: every
    tensor of every ATen op, those the ops allocate inside C++ (e.g. a contiguous
    buffer an ``out=`` op computes into before copying), inductor's buffers, the
    launchers' scratch tensors and autograd's saved tensors alike; a TorchDispatchMode
    would see only the tensors that cross the dispatcher.  Not seen: memory that C++
    takes from ``malloc`` directly (the cpu backend's per-thread ``std::vector`` scratch
    of a few KiB) and NumPy's (the Triton interpreter's).

    The allocator reports a free only for a block allocated while a profiler recorded
    memory, so ``setup()`` runs under the same profiler: a backward freeing the graph
    its setup's forward built is then counted.  The call itself is marked with a
    profiler range; the events inside it are summed in time order.  The running sum's
    maximum is the peak, its final value what the call left allocated.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        if setup is not None:
            setup()
        with record_function(MEASURED_CALL_RANGE):
            outputs = run_once()
    output_bytes = storage_bytes(t for t in as_tuple(outputs) if isinstance(t, torch.Tensor))
    del outputs
    events = profiler.profiler.kineto_results.events()
    ranges = [e for e in events if e.name() == MEASURED_CALL_RANGE]
    if len(ranges) != 1:
        raise RuntimeError(f"expected one profiler range {MEASURED_CALL_RANGE!r}, found {len(ranges)}")
    start = ranges[0].start_ns()
    end = start + ranges[0].duration_ns()
    changes = sorted(
        (e.start_ns(), index, e.nbytes()) for index, e in enumerate(events)
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU and start <= e.start_ns() <= end
    )
    level = peak = 0
    for _, _, nbytes in changes:
        level += nbytes
        peak = max(peak, level)
    return CpuAllocations(peak_bytes=peak, end_bytes=level, output_bytes=output_bytes)


def measure_copy_bandwidth(device: torch.device, buffer_bytes: int, reps: int = 50, warmup: int = 5) -> dict:
    """The device's copy ceiling: median time of ``dst.copy_(src)`` on ``buffer_bytes``
    buffers, counting the bytes read plus the bytes written (2 × buffer_bytes)."""
    elements = buffer_bytes // 4
    src = torch.randn(elements, device=device)  # not zeros: see METHOD.md
    dst = torch.empty_like(src)
    timing = time_calls(
        lambda _: dst.copy_(src), device, warmup=warmup, max_reps=reps, min_reps=reps, budget_ms=float("inf")
    )
    moved = 2 * elements * 4
    return {
        "buffer_mib": round(elements * 4 / MIB, 2),
        "bytes_moved": moved,
        "median_ms": timing.median_ms,
        "gbps": gbps(moved, timing.median_ms),
        "reps": timing.reps,
    }


def gbps(num_bytes: int, milliseconds: Optional[float]) -> Optional[float]:
    """Bandwidth in GB/s (10^9 bytes per second)."""
    if milliseconds is None or milliseconds <= 0:
        return None
    return num_bytes / (milliseconds * 1e-3) / 1e9


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 (0 for two empty or zero tensors)."""
    expected64 = expected.detach().double()
    difference = torch.linalg.vector_norm(actual.detach().double() - expected64).item()
    norm = torch.linalg.vector_norm(expected64).item()
    return difference / norm if norm > 0 else difference


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def parse_list(spec: str, allowed: Optional[Sequence[str]] = None, what: str = "value") -> list[str]:
    """Split a comma-separated option, checking each item against ``allowed``."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise SystemExit(f"empty list of {what}s")
    if allowed is not None:
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise SystemExit(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
    return items


def parse_dtypes(spec: str) -> list[torch.dtype]:
    return [DTYPES[name] for name in parse_list(spec, list(DTYPES), "dtype")]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def parse_shapes(spec: str, presets: dict[str, list[tuple[int, ...]]]) -> list[tuple[int, ...]]:
    """A preset name (e.g. ``tiny``) or a comma-separated list of shapes such as
    ``4096x64,65536x256``."""
    if spec in presets:
        return list(presets[spec])
    shapes = []
    for item in parse_list(spec, what="size"):
        try:
            shape = tuple(int(part) for part in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"size {item!r}: expected a preset {list(presets)} or sizes like 4096x64") from None
        if any(part <= 0 for part in shape):
            raise SystemExit(f"size {item!r}: every dimension must be positive")
        shapes.append(shape)
    return shapes


def sizes_tag(spec: str, presets: dict) -> str:
    """'' for the default sizes, the preset's name, or 'custom': a results file's tag, so
    smoke runs at tiny sizes never overwrite the real results file."""
    if spec == "default":
        return ""
    return spec if spec in presets else "custom"


# --------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------

# The two baselines every benchmark times: the reference called directly, and
# torch.compile of it.  Every other provider is a fastvae backend.
BASELINES = ("eager", "compile")
MODES = ("fwd", "bwd", "fwd+bwd")


class ProviderSkipped(Exception):
    """Raised by a benchmark's forward builder when a provider cannot run a case at all
    (e.g. the op is not in this fastvae yet): its records get ``skipped`` = the reason,
    and neither a time nor an error."""


def kernel_providers(device: torch.device) -> list[str]:
    """fastvae backends that run on ``device``, the torch one (= eager) excepted."""
    import fastvae

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
    import fastvae

    allowed = list(BASELINES) + [name for name in fastvae.backends.available(device)]
    missing = [name for name in requested if name not in allowed]
    if missing:
        hint = ""
        if "triton" in missing and device.type == "cpu":
            hint = " (on the CPU, Triton runs only under TRITON_INTERPRET=1 set in the environment)"
        raise SystemExit(f"provider(s) {missing} not available for {device.type} here{hint}; available: {allowed}")
    return list(requested)


def backend_scope(provider: str):
    """Make a kernel provider's backend current; nothing to do for eager and compile."""
    import contextlib

    import fastvae

    return contextlib.nullcontext() if provider in BASELINES else fastvae.use_backend(provider)


def as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


# --------------------------------------------------------------------------------------
# Cases: input sets, the three modes, one provider's records
# --------------------------------------------------------------------------------------

# Relative error against eager above which a provider's results are flagged: both
# compute in float32, so float32 agrees to rounding, and the low-precision dtypes to the
# rounding of their outputs.
CHECK_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
CHECK_SEED = 1234
ERROR_TEXT_LIMIT = 2000

# forward(*InputSet.args) → the op's outputs as a tuple.
Forward = Callable[..., tuple]


@dataclass
class InputSet:
    """One independent set of inputs of a benchmarked op."""

    args: tuple  # the forward's positional arguments
    wrt: tuple  # those the backward differentiates (requiring grad, as in training)
    grad_outputs: tuple  # random upstream gradients of the op's outputs, never zeros


def forward_and_gradients(forward: Forward, inputs: InputSet, seed: int = CHECK_SEED) -> list[torch.Tensor]:
    """Outputs and input gradients of one forward+backward, from ``seed``."""
    torch.manual_seed(seed)
    outputs = forward(*inputs.args)
    grads = torch.autograd.grad(outputs, inputs.wrt, inputs.grad_outputs)
    return [output.detach() for output in outputs] + list(grads)


@dataclass
class ModeCalls:
    """How one mode is timed: ``setup(i)`` untimed before each ``call(i)`` (i the input
    set), and ``run_once()`` returning the tensors one call hands back (after
    ``setup_once()``), for the memory count."""

    call: Callable[[int], tuple]
    setup: Optional[Callable[[int], None]] = None

    def run_once(self) -> tuple:
        return self.call(0)

    def setup_once(self) -> None:
        if self.setup is not None:
            self.setup(0)


def mode_calls(mode: str, forward: Forward, sets: Sequence[InputSet]) -> ModeCalls:
    """The calls that time ``mode`` of ``forward`` on the input ``sets``.

    ``fwd`` is one forward call (building the autograd graph, as in training).  ``bwd``
    runs a fresh forward before each repetition, untimed, and times the backward alone
    (``torch.autograd.grad``, not ``backward``, so no ``.grad`` accumulates).  A fresh
    graph per repetition rather than ``retain_graph=True``: torch.compile's backward
    donates saved buffers and refuses a retained graph, and a training step never reuses
    one either.  ``fwd+bwd`` is both in one timed call.
    """
    if mode == "fwd":
        return ModeCalls(call=lambda i: forward(*sets[i].args))
    if mode == "bwd":
        pending = {}

        def setup(i):
            pending[i] = forward(*sets[i].args)

        def call(i):
            return torch.autograd.grad(pending.pop(i), sets[i].wrt, sets[i].grad_outputs)

        return ModeCalls(call=call, setup=setup)
    if mode == "fwd+bwd":
        def call(i):
            outputs = forward(*sets[i].args)
            return outputs + torch.autograd.grad(outputs, sets[i].wrt, sets[i].grad_outputs)

        return ModeCalls(call=call)
    raise ValueError(f"unknown mode {mode!r}")


def error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT] + " …"


def measurement_fields() -> dict:
    """The fields of a record that measuring fills in, all unset."""
    return {
        "median_ms": None, "gbps": None, "pct_of_copy": None, "peak_extra_mib": None,
        "rel_err_vs_eager": None, "error": None, "skipped": None,
    }


def measure_mode(record: dict, mode: str, forward: Forward, sets: Sequence[InputSet], copy_gbps: float,
                 device: torch.device, args, label: str) -> None:
    """Time one mode and count its memory into ``record`` (which has ``min_bytes``), or
    set its ``error``.  ``args`` carries warmup, reps, min_reps and budget_ms."""
    calls = None
    try:
        calls = mode_calls(mode, forward, sets)
        timing = time_calls(
            calls.call, device, setup=calls.setup, rotation=len(sets), warmup=args.warmup,
            max_reps=args.reps, min_reps=args.min_reps, budget_ms=args.budget_ms,
        )
        record.update(timing.as_dict())
        record["gbps"] = gbps(record["min_bytes"], timing.median_ms)
        record["pct_of_copy"] = 100.0 * record["gbps"] / copy_gbps if record["gbps"] and copy_gbps else None
        # Every provider, baselines included: the bars compare extra memory with eager's.
        record["peak_extra_mib"] = peak_extra_memory_mib(calls.run_once, device, calls.setup_once)
        log(f"{label} {mode}: {timing.median_ms:.4g} ms, {record['gbps']:.4g} GB/s")
    except Exception as error:  # noqa: BLE001 (an out-of-memory at one size must not end the run)
        log(f"{label} {mode}: FAILED\n{traceback.format_exc()}")
        record["error"] = error_text(error)
    finally:
        calls = None  # release any pending forward graphs before the next mode
        if record["error"] and device.type == "cuda":
            torch.cuda.empty_cache()


def bench_provider(
    records: Sequence[dict],
    modes: Sequence[str],
    provider: str,
    build: Callable[[], Forward],
    sets: Sequence[InputSet],
    expected: Sequence[torch.Tensor],
    copy_gbps: float,
    device: torch.device,
    args,
    label: str,
    check_build: Optional[Callable[[], Forward]] = None,
) -> list[dict]:
    """Every mode of one provider on one case: ``records`` (one per mode, in the order of
    ``modes``) filled in and returned.  ``build()`` makes the provider's forward (with
    the provider's backend current); a failure there or in the first call (which is when
    torch.compile compiles) sets every record's ``error``, a :class:`ProviderSkipped`
    its ``skipped``, and the run goes on.  ``check_build()``, when given, makes the
    forward whose outputs are checked against ``expected`` in place of the timed one (a
    baseline timed with torch's own noise is checked with fastvae's)."""
    records = [dict(record, copy_gbps=copy_gbps) for record in records]
    dtype = records[0]["dtype"] if records else "float32"
    if provider == "compile":
        torch._dynamo.reset()  # a fresh, fully specialized compile for this case
    try:
        with backend_scope(provider):
            try:
                forward = build()
                checked = forward if check_build is None else check_build()
                actual = forward_and_gradients(checked, sets[0])
                del checked
                rel_err = max((relative_error(a, e) for a, e in zip(actual, expected)), default=0.0)
                del actual
            except ProviderSkipped as reason:
                log(f"{label}: skipped: {reason}")
                for record in records:
                    record["skipped"] = str(reason)
                return records
            except Exception as error:  # noqa: BLE001 (record it and go on)
                log(f"{label}: FAILED\n{traceback.format_exc()}")
                for record in records:
                    record["error"] = error_text(error)
                return records
            if rel_err > CHECK_TOLERANCE.get(dtype, 2e-2):
                log(f"{label}: WARNING relative error vs eager {rel_err:.3g}")
            for record, mode in zip(records, modes):
                record["rel_err_vs_eager"] = rel_err
                measure_mode(record, mode, forward, sets, copy_gbps, device, args, label)
    finally:
        if provider == "compile":
            torch._dynamo.reset()  # drop the compiled graphs and their memory
    return records


def bench_case(
    label: str,
    providers: Sequence[str],
    modes: Sequence[str],
    make_records: Callable[[str], list[dict]],
    build: Callable[[str], Forward],
    make_input_set: Callable[[], InputSet],
    footprint_bytes: int,
    copy_gbps: float,
    device: torch.device,
    args,
    build_check: Optional[Callable[[str], Forward]] = None,
) -> list[dict]:
    """All providers and modes of one case (op, size, dtype), on shared inputs.

    ``make_records(provider)`` gives the provider's unmeasured records, one per mode;
    ``build(provider)`` its forward; ``make_input_set()`` one independent input set, made
    as many times as :func:`rotation_sets` asks for ``footprint_bytes`` (the bytes one
    call touches).  Every provider is checked against eager's outputs and gradients:
    ``build_check(provider)``'s forward where given, else ``build(provider)``'s.
    """
    calls_per_case = max(1, args.warmup) + 1 + args.reps
    sets = [make_input_set() for _ in range(rotation_sets(footprint_bytes, device, max_calls=calls_per_case))]
    check = build if build_check is None else build_check
    expected = forward_and_gradients(check("eager"), sets[0])
    records = []
    for provider in providers:
        records += bench_provider(make_records(provider), modes, provider, lambda p=provider: build(p), sets,
                                  expected, copy_gbps, device, args, f"{label} {provider}",
                                  check_build=None if build_check is None else (lambda p=provider: build_check(p)))
    del sets, expected
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


# --------------------------------------------------------------------------------------
# Records, speedups, reports
# --------------------------------------------------------------------------------------


def add_speedups(records: list[dict], case_keys: Sequence[str], baselines: Sequence[str] = ("eager", "compile")) -> None:
    """Set ``speedup_vs_<baseline>`` = baseline median / record median, for records that
    share every ``case_keys`` field with a timed record of that baseline provider; None
    where either time is missing."""
    by_case = {}
    for record in records:
        if record.get("median_ms") is not None:
            by_case[tuple(record[k] for k in case_keys) + (record["provider"],)] = record["median_ms"]
    for record in records:
        for baseline in baselines:
            base_ms = by_case.get(tuple(record[k] for k in case_keys) + (baseline,))
            mine = record.get("median_ms")
            record[f"speedup_vs_{baseline}"] = base_ms / mine if base_ms is not None and mine else None


def add_memory_ratios(records: list[dict], case_keys: Sequence[str], baseline: str = "eager") -> None:
    """Set ``peak_extra_vs_<baseline>`` = this record's peak extra memory / the
    baseline's, same case; None where either is missing or the baseline's is 0.  The
    mixture's performance bar asks for ≤ 1/10 of eager's (bench/README.md)."""
    by_case = {}
    for record in records:
        if record["provider"] == baseline and record.get("peak_extra_mib") is not None:
            by_case[tuple(record[k] for k in case_keys)] = record["peak_extra_mib"]
    for record in records:
        base = by_case.get(tuple(record[k] for k in case_keys))
        mine = record.get("peak_extra_mib")
        record[f"peak_extra_vs_{baseline}"] = mine / base if base and mine is not None else None


def merge_records(old: list[dict], new: list[dict], key_fields: Sequence[str]) -> list[dict]:
    """``old`` with every record that ``new`` measures again replaced; new ones appended."""
    def key(record):
        return tuple(record.get(k) for k in key_fields)

    remeasured = {key(r) for r in new}
    return [r for r in old if key(r) not in remeasured] + list(new)


def format_number(value, digits: int = 3) -> str:
    """Compact text for a table cell: '—' for missing, ≥ ``digits`` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, Callable[[dict], object]]]) -> str:
    """A markdown table: ``columns`` is (header, row → cell value); numbers go through
    :func:`format_number`."""
    header = "| " + " | ".join(title for title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = []
        for _, cell in columns:
            value = cell(row)
            cells.append(value if isinstance(value, str) else format_number(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_results_path(benchmark: str, device: torch.device, tag: str = "") -> Path:
    """bench/results/<benchmark>-<device slug>[-<tag>].json"""
    suffix = f"-{tag}" if tag else ""
    return RESULTS_DIR / f"{benchmark}-{device_slug(device)}{suffix}.json"


def read_results(path: Path) -> Optional[dict]:
    """A results file written earlier, or None if there is none."""
    if not path.exists():
        return None
    with open(path) as handle:
        return json.load(handle)


def write_results(json_path: Path, payload: dict, markdown: str) -> Path:
    """Write the JSON and, beside it with the suffix .md, the markdown report; returns
    the markdown path."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "w") as handle:
        json.dump(payload, handle, indent=1, allow_nan=False)
        handle.write("\n")
    markdown_path = json_path.with_suffix(".md")
    markdown_path.write_text(markdown + "\n")
    return markdown_path


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries the results table alone."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# The performance bars (bench/README.md)
# --------------------------------------------------------------------------------------

_COMPARISONS = {
    ">=": lambda value, threshold: value >= threshold,
    ">": lambda value, threshold: value > threshold,
    "<=": lambda value, threshold: value <= threshold,
}


def bar_verdict(record: dict, criteria: Sequence[tuple[str, str, float]]) -> str:
    """'met', 'missed: <fields>', 'error' or 'skipped' for one record against
    ``criteria``, each (record field, comparison '>=' / '>' / '<=', threshold).  A field
    that is missing (None) misses its criterion."""
    if record.get("skipped"):
        return "skipped"
    if record.get("error"):
        return "error"
    missed = [field for field, comparison, threshold in criteria
              if record.get(field) is None or not _COMPARISONS[comparison](record[field], threshold)]
    return "met" if not missed else "missed: " + ", ".join(missed)


def describe_criteria(criteria: Sequence[tuple[str, str, float]]) -> str:
    """``criteria`` as text, e.g. 'speedup_vs_eager ≥ 8, speedup_vs_compile ≥ 2'."""
    symbols = {">=": "≥", ">": ">", "<=": "≤"}
    return ", ".join(f"{field} {symbols[comparison]} {format_number(threshold)}"
                     for field, comparison, threshold in criteria)


# --------------------------------------------------------------------------------------
# Command line and the run around the cases
# --------------------------------------------------------------------------------------

DEFAULT_COPY_MIB = {"cuda": 512, "cpu": 64}


def add_common_arguments(parser, benchmark: str, presets: dict, sizes_help: str, ops: Sequence[str],
                         default_dtypes: str = "float32,bfloat16") -> None:
    """The options every op benchmark has (bench/README.md, "Options"): device, sizes,
    dtypes, ops, modes, providers, repetitions, warm-up, copy buffer, output, merge."""
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present, else cpu)")
    parser.add_argument("--sizes", default="default", help=f"a preset {list(presets)} or {sizes_help} (default: default)")
    parser.add_argument("--dtypes", default=default_dtypes, help=f"comma-separated (default: {default_dtypes})")
    parser.add_argument("--ops", default=",".join(ops), help=f"comma-separated, from {list(ops)}")
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
                        f"(default: bench/results/{benchmark}-<device>[-<sizes tag>].json)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the records of an existing --out file that this run does not measure again "
                        "(for splitting a long GPU run into several commands)")


def check_common_arguments(parser, args) -> None:
    if args.reps < 1 or args.min_reps < 1 or args.warmup < 0:
        parser.error("--reps and --min-reps must be at least 1, --warmup at least 0")


def run_providers(spec: Optional[str], device: torch.device) -> list[str]:
    """``--providers`` checked against the device, or the defaults when not given."""
    if spec is None:
        return default_providers(device)
    return check_providers(parse_list(spec, what="provider"), device)


def start_run(device: torch.device, argv: Sequence[str], script: str, providers: Sequence[str],
              copy_mib: Optional[int]) -> tuple[dict, dict]:
    """The run's metadata and its copy-bandwidth measurement (``copy_mib`` MiB buffers,
    or :data:`DEFAULT_COPY_MIB` for the device)."""
    metadata = run_metadata(device, argv, script)
    metadata["providers"] = list(providers)
    log(f"device: {metadata['device']['name']}; providers: {list(providers)}")
    copy = measure_copy_bandwidth(device, (copy_mib or DEFAULT_COPY_MIB[device.type]) * MIB)
    log(f"copy ceiling: {copy['gbps']:.4g} GB/s")
    return metadata, copy


def finish_run(
    benchmark: str,
    out_path: Path,
    merge: bool,
    metadata: dict,
    copy: dict,
    records: list[dict],
    record_keys: Sequence[str],
    case_keys: Sequence[str],
    sort: Callable[[list[dict]], list[dict]],
    report: Callable[[dict], str],
    annotate: Optional[Callable[[list[dict]], None]] = None,
) -> dict:
    """Merge with the existing file (``merge``), add the speedups (and ``annotate``'s
    fields), write the JSON and the markdown report, print the report; returns the
    payload."""
    previous = read_results(out_path) if merge else None
    if previous is not None:
        records = merge_records(previous["records"], records, record_keys)
        metadata["previous_runs"] = previous["metadata"].pop("previous_runs", []) + [previous["metadata"]]
    add_speedups(records, case_keys, BASELINES)
    if annotate is not None:
        annotate(records)
    payload = {"benchmark": benchmark, "metadata": metadata, "copy": copy, "records": sort(records)}
    markdown = report(payload)
    markdown_path = write_results(out_path, payload, markdown)
    print(markdown)
    log(f"wrote {out_path} and {markdown_path}")
    return payload


def main_without_value_checks(run: Callable, args, argv: Sequence[str]) -> int:
    """``run(args, argv)`` with fastvae's value checks off: they sync the device and are
    off in use (fastvae.set_validate_args), so the ops are timed as they run in training."""
    import fastvae

    validate = fastvae.validate_args_enabled()
    fastvae.set_validate_args(False)
    try:
        run(args, argv)
    finally:
        fastvae.set_validate_args(validate)
    return 0


def report_header(title: str, payload: dict) -> list[str]:
    """The markdown report's first lines: title, date, versions, command, copy ceiling
    and what the columns mean."""
    meta, copy = payload["metadata"], payload["copy"]
    device = meta["device"]
    versions = f"torch {meta['torch']}, Triton {meta['triton']}, Python {meta['python']}, fastvae {meta['fastvae']}"
    if device["type"] == "cuda":
        versions += f", CUDA {device.get('cuda_runtime')}, driver {device.get('driver')}"
    lines = [
        f"# {title}: {device['name']}",
        "",
        f"- date (UTC): {meta['date_utc']}; commit: {meta['git_commit'] or 'none'}",
        f"- versions: {versions}",
        f"- command: `{meta['command']}`",
        f"- copy ceiling: {format_number(copy['gbps'])} GB/s (`dst.copy_(src)` on "
        f"{copy['buffer_mib']} MiB buffers, bytes read + written)",
        "- GB/s counts the minimum bytes (bench/README.md); median over repetitions; "
        "extra MiB = peak memory of one call beyond inputs and outputs (CUDA: max_memory_allocated; CPU: "
        "the profiler's allocation events, in a separate untimed call); "
        "× eager / × compile = their median over this one's; rel err = ‖out − eager‖/‖eager‖ "
        "over outputs and gradients from one seed.",
    ]
    if meta.get("previous_runs"):
        lines.append(f"- merged with {len(meta['previous_runs'])} earlier run(s) of this file")
    return lines


def problem_lines(records: Sequence[dict], describe: Callable[[dict], str]) -> list[str]:
    """The report's "Errors" section (one line per record, ``describe(record)`` naming it)
    and "Skipped" section (one line per op, provider and reason); empty when there are
    none."""
    lines = []
    errors = [r for r in records if r.get("error")]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {describe(r)}: {r['error']}" for r in errors]
    skipped = list(dict.fromkeys(f"- {r['op']} {r['provider']}: {r['skipped']}" for r in records if r.get("skipped")))
    if skipped:
        lines += ["", "## Skipped", ""] + skipped
    return lines

