"""Helpers shared by fastvae's benchmarks (bench_latent.py now; likelihood and training
benchmarks later): timing, peak memory, the copy-bandwidth ceiling, run metadata,
speedups, and the JSON and markdown reports.

How times are taken (see /work/.library/device/METHOD.md, "Time properly"):

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


def cpu_model_name() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


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
    """Peak device memory of one call beyond what existed before it and the tensors it
    returns, in MiB: the workspace and the saved activations an implementation needs.
    ``setup()`` runs first and what it keeps alive counts as existing before the call.

    CUDA only (``torch.cuda.max_memory_allocated``); None on the CPU, where torch's
    allocations are invisible to tracemalloc and there is no peak counter to reset.
    """
    if device.type != "cuda":
        return None
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
