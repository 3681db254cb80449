"""End-to-end benchmark: training steps per second and peak memory of fastvae's models.

A training step is what ``fastvae.train.Trainer`` does per batch: the forward pass
(``model(x)``, its loss), the backward pass and an Adam update.  Timed for:

* ``mlp``: Burda et al.'s one-stochastic-layer MLP VAE (784-200-200-50, tanh, Bernoulli
  decoder) on 784-dimensional binary data, at batch 4096 and 65536;
* ``conv_mixture``: the convolutional VAE with PixelCNN++'s discretized logistic mixture
  decoder (10 components, NVAE's RGB coupling) on 32×32×3 8-bit images, at batch 128;

and, for each, every provider:

* a fastvae backend (``triton``, ``cuda``, ``cpu``): the model's ops on that backend
  (``fastvae.use_backend``), eager PyTorch around them;
* ``<backend>+compile``: the same under ``torch.compile`` (the fused ops are custom ops,
  so the graph compiles around them);
* ``eager``: the same model with ``fastvae.use_backend("torch")``: every fastvae op is
  then :mod:`fastvae.reference`'s plain PyTorch, run eagerly;
* ``compile``: that model under ``torch.compile`` (the reference ops compiled by inductor).

Before timing, each provider's routing is checked: a step runs under a dispatch mode
that records which ``torch.ops.fastvae`` custom ops ran.  The eager baseline must run
none (all reference PyTorch), a kernel provider at least one; the names go into the
records (``fastvae_ops``).  Every provider's loss and gradients from the same initial
weights and seed are compared with eager's (``rel_err_vs_eager``).

Reported per case: median step time, steps and samples per second, peak memory of a
step beyond what existed before it (CUDA: ``max_memory_allocated``, which gives the total
too; the CPU: the profiler's allocation events, ``common.cpu_allocations``), on the CPU
the share of the step spent in fastvae's ops (:func:`op_share_of_step`), speedups over
eager and compile, and the performance bar: on a GPU, a training step of the conv
mixture VAE ≥ 1.5× the same model with eager reference ops.

Usage (from the repository root)::

    python bench/bench_train.py                                  # GPU: default sizes, float32 and bf16 autocast
    python bench/bench_train.py --device cpu --tiny --reps 3      # CPU smoke run (what CI runs)
    python bench/bench_train.py --device cpu --sizes cpu          # the CPU run, with the ops' share
    python bench/bench_train.py --sizes conv_mixture:128 --providers eager,triton --merge

Writes bench/results/train-<device>.json and a markdown report beside it (with a
``-tiny``, ``-cpu`` or ``-custom`` tag for other than the default sizes) and prints the report.
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
from torch.utils._python_dispatch import TorchDispatchMode

# bench/ is a folder of scripts, not a package: make its shared helpers importable
# whether this file runs as a script or is loaded by path (tests/test_bench.py).
_BENCH_DIR = str(Path(__file__).resolve().parent)
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import common  # noqa: E402

import fastvae  # noqa: E402
from fastvae.models import build_model  # noqa: E402

BENCHMARK = "train"
COMPILE_SUFFIX = "+compile"
BASELINES = common.BASELINES
# A record is one (model, batch, input, dtype, provider); a case is the same without provider.
CASE_KEYS = ("model", "batch", "input", "dtype")
RECORD_KEYS = CASE_KEYS + ("provider",)
MODEL_SEED = 0
DATA_SEED = 1
CHECK_SEED = common.CHECK_SEED
LEARNING_RATE = 1e-3
# Loss and gradients of a provider against eager's, from the same weights and noise:
# float32 agrees to rounding (summed over a whole model); bf16 autocast to its rounding.
CHECK_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}
# At most this many input batches rotate (at the large sizes one batch already exceeds
# the cache, and each costs memory).
MAX_INPUT_SETS = 4
DTYPES = ("float32", "bfloat16")  # bfloat16: the forward under torch.autocast (weights stay float32)


@dataclass(frozen=True)
class ModelCase:
    """One benchmarked model: its build_model config for an image side, and its data."""

    name: str
    describe: str
    binary_data: bool  # Bernoulli decoder on {0, 1} data, else 8-bit images k/255

    def config(self, side: Optional[int]) -> dict:
        if self.name == "mlp":
            return {"name": "mlp", "data_shape": [784], "hidden_sizes": [200, 200], "latent_dim": 50,
                    "activation": "tanh", "likelihood": "bernoulli"}
        return {"name": "conv", "data_shape": [3, side, side], "likelihood": "discretized_logistic_mixture",
                "num_mixtures": 10}

    def input_shape(self, side: Optional[int]) -> tuple[int, ...]:
        return (784,) if self.name == "mlp" else (3, side, side)


MODELS = {
    "mlp": ModelCase("mlp", "MLP VAE 784-200-200-50 tanh, Bernoulli", True),
    "conv_mixture": ModelCase("conv_mixture", "conv VAE, 10-component discretized logistic mixture", False),
}
DEFAULT_SIDE = {"mlp": None, "conv_mixture": 32}
# (model, batch, image side or None)
SIZE_PRESETS = {
    "default": [("mlp", 4096, None), ("mlp", 65536, None), ("conv_mixture", 128, 32)],
    "tiny": [("mlp", 16, None), ("conv_mixture", 2, 8)],
    # The committed CPU run: sizes at which a step takes tens to hundreds of
    # milliseconds on two cores (bench/README.md, "Running bench_train.py").
    "cpu": [("mlp", 1024, None), ("conv_mixture", 32, 32)],
}

# The performance bar (bench/README.md, "Performance bars"): a training step of the conv mixture VAE ≥ 1.5× the same
# model with eager reference ops (GPU).
GPU_BAR = (("speedup_vs_eager", ">=", 1.5),)
BAR_MODEL, BAR_INPUT = "conv_mixture", "3x32x32"


# --------------------------------------------------------------------------------------
# Providers and routing
# --------------------------------------------------------------------------------------


def provider_backend(provider: str) -> str:
    """The fastvae backend a provider runs: ``torch`` (the reference) for the baselines."""
    if provider in BASELINES:
        return "torch"
    return provider[:-len(COMPILE_SUFFIX)] if provider.endswith(COMPILE_SUFFIX) else provider


def is_compiled(provider: str) -> bool:
    return provider == "compile" or provider.endswith(COMPILE_SUFFIX)


def available_providers(device: torch.device) -> list[str]:
    kernels = common.kernel_providers(device)
    return list(BASELINES) + kernels + [k + COMPILE_SUFFIX for k in kernels]


def default_providers(device: torch.device) -> list[str]:
    """eager, compile, and each kernel backend of the device with and without compile;
    Triton on the CPU (its interpreter: no performance number) only when named."""
    kernels = [k for k in common.kernel_providers(device) if not (device.type == "cpu" and k == "triton")]
    return list(BASELINES) + kernels + [k + COMPILE_SUFFIX for k in kernels]


def parse_providers(spec: Optional[str], device: torch.device) -> list[str]:
    if spec is None:
        return default_providers(device)
    requested = common.parse_list(spec, what="provider")
    allowed = available_providers(device)
    missing = [p for p in requested if p not in allowed]
    if missing:
        hint = (" (on the CPU, Triton runs only under TRITON_INTERPRET=1 set in the environment)"
                if any(provider_backend(p) == "triton" for p in missing) and device.type == "cpu" else "")
        raise SystemExit(f"provider(s) {missing} not available for {device.type} here{hint}; available: {allowed}")
    return requested


class FastvaeOpRecorder(TorchDispatchMode):
    """Records the ``torch.ops.fastvae`` custom ops that run while it is active."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastvae":
            self.ops.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def fastvae_ops_of_step(step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> list[str]:
    """The fastvae custom ops one (uncompiled) training step runs, sorted."""
    recorder = FastvaeOpRecorder()
    with recorder:
        step(x)
    return sorted(recorder.ops)


def check_routing(provider: str, ops: Sequence[str]) -> None:
    """The eager baseline must run no fastvae kernel (only the reference's PyTorch); a
    kernel provider must run at least one."""
    backend = provider_backend(provider)
    if backend == "torch" and ops:
        raise RuntimeError(f"{provider}: fastvae.use_backend('torch') still ran fastvae custom ops {list(ops)}")
    if backend != "torch" and not ops:
        raise RuntimeError(f"{provider}: backend {backend!r} ran no fastvae custom op: the model bypasses it")


# --------------------------------------------------------------------------------------
# Models, data, steps
# --------------------------------------------------------------------------------------


def make_batch(case: ModelCase, batch: int, side: Optional[int], device: torch.device,
               generator: torch.Generator) -> torch.Tensor:
    """Random data of the model's kind: binary {0, 1} images (p = 0.13, MNIST's mean) or
    8-bit images on the grid k/255."""
    shape = (batch,) + case.input_shape(side)
    if case.binary_data:
        return (torch.rand(shape, generator=generator) < 0.13).float().to(device)
    return (torch.randint(0, 256, shape, generator=generator).float() / 255.0).to(device)


def autocast_scope(device: torch.device, dtype: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def new_model(case: ModelCase, side: Optional[int], device: torch.device):
    torch.manual_seed(MODEL_SEED)
    return build_model(case.config(side)).to(device)


def training_step(model, optimizer, device: torch.device, dtype: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """One update on a batch, as the trainer takes it; returns the detached loss."""

    def step(x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast_scope(device, dtype):
            output = model(x)
        output.loss.backward()
        optimizer.step()
        return output.loss.detach()

    return step


def loss_and_gradients(model, x: torch.Tensor, device: torch.device, dtype: str) -> list[torch.Tensor]:
    """The loss and every parameter's gradient of one forward+backward from CHECK_SEED."""
    torch.manual_seed(CHECK_SEED)
    with autocast_scope(device, dtype):
        loss = model(x).loss
    parameters = [p for p in model.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return [loss.detach().float().reshape(1)] + [g.detach().float() for g in gradients if g is not None]


def compile_scope(provider: str):
    """For compiled providers: inductor draws random numbers with torch's generator
    (``fallback_random``), so the compiled model samples the same noise as eager and the
    check compares like with like (the models draw one seed per op call: no cost)."""
    if not is_compiled(provider):
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(fallback_random=True)


# --------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------


def base_record(case: ModelCase, batch: int, side: Optional[int], dtype: str, provider: str) -> dict:
    shape = case.input_shape(side)
    return {
        "model": case.name, "description": case.describe, "batch": batch,
        "input": "x".join(str(s) for s in shape), "dtype": dtype, "provider": provider,
        "backend": provider_backend(provider), "compiled": is_compiled(provider),
        "median_ms": None, "min_ms": None, "p20_ms": None, "p80_ms": None, "reps": None,
        "steps_per_s": None, "samples_per_s": None, "peak_mib": None, "peak_extra_mib": None,
        "rel_err_vs_eager": None, "fastvae_ops": None, "error": None, "skipped": None,
        "op_share": None, "op_ms": None, "custom_op_ms": None, "op_share_method": None,
    }


def peak_memory_mib(step: Callable, x: torch.Tensor, device: torch.device) -> tuple[Optional[float], Optional[float]]:
    """(peak allocated during one step, the same beyond what was allocated before it),
    in MiB.  On the CPU only the second, counted from the profiler's allocation events
    (``common.cpu_allocations``), with a step run first under the same profiler so that
    the gradients it leaves, which the measured step's ``zero_grad`` frees, are counted
    when freed; the CPU has no total of what was allocated before."""
    if device.type != "cuda":
        usage = common.cpu_allocations(lambda: (step(x),), setup=lambda: step(x))
        return None, usage.peak_bytes / common.MIB
    common.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step(x)
    common.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / common.MIB, max(peak - before, 0) / common.MIB


# --------------------------------------------------------------------------------------
# The ops' share of a step
# --------------------------------------------------------------------------------------

STEP_RANGE = "fastvae_bench.step"
OP_RANGE_PREFIX = "fastvae_bench.op."
BACKWARD_EVENT_PREFIX = "autograd::engine::evaluate_function: "
CUSTOM_OP_PREFIX = "fastvae::"
# Steps profiled for the op share by default, after the timed ones (so warm: compiled,
# allocator grown).
OP_SHARE_STEPS = 3


@contextlib.contextmanager
def public_op_ranges():
    """Each public op of ``fastvae.ops`` (the models call them as ``ops.<name>``) wrapped in
    a profiler range ``fastvae_bench.op.<name>`` while the context is open.  Used only in
    the profiled steps of uncompiled models: under torch.compile a changed attribute
    recompiles, and inductor fuses across the ranges anyway."""
    from fastvae import ops
    from torch.profiler import record_function

    originals = {name: getattr(ops, name) for name in ops.__all__ if callable(getattr(ops, name))}

    def wrap(name, function):
        def in_range(*args, **kwargs):
            with record_function(OP_RANGE_PREFIX + name):
                return function(*args, **kwargs)
        return in_range

    try:
        for name, function in originals.items():
            setattr(ops, name, wrap(name, function))
        yield
    finally:
        for name, function in originals.items():
            setattr(ops, name, function)


def _union_ns(intervals: Sequence[tuple[int, int]]) -> int:
    """Total length of the union of [start, end) intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start >= reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def op_share_of_events(events, ranges: bool) -> dict:
    """The time of the profiled steps spent in fastvae's ops, from a profile's events:
    per step, the ops' milliseconds (``op_ms``) and their share of the step's.

    ``ranges`` (an uncompiled model run under :func:`public_op_ranges`): the public ops'
    forward ranges (checks, seed draw, the custom op or the reference's PyTorch), plus,
    backward, the autograd nodes those ranges created (``backward_nodes``), found by the
    sequence number an op that creates a node records and its node's backward event
    repeats.  Otherwise the ``fastvae::`` custom op events alone (forward and backward
    kernels; what a compiled graph calls).  ``custom_op_ms`` is the latter in both
    cases.  Overlapping intervals (nested events) count once."""
    def interval(event):
        return event.start_ns(), event.start_ns() + event.duration_ns()

    steps = [interval(e) for e in events if e.name() == STEP_RANGE]
    custom_ops = [interval(e) for e in events if e.name().startswith(CUSTOM_OP_PREFIX)]
    attributed, nodes = custom_ops, []
    if ranges:
        forward_ranges = [e for e in events if e.name().startswith(OP_RANGE_PREFIX)]
        spans = {}  # thread → its ranges
        for e in forward_ranges:
            spans.setdefault(e.start_thread_id(), []).append(interval(e))
        # Every op run with grad mode on records the number the next autograd node will
        # get, whether or not it creates that node; the one that does is the last to
        # start with that number (the count moves on when it creates it).  Backward
        # events repeat their node's number and name the forward thread (a forward
        # event's fwd_thread_id is 0).
        last_start = {}
        for e in events:
            if e.sequence_nr() >= 0 and e.fwd_thread_id() == 0:
                key = (e.start_thread_id(), e.sequence_nr())
                last_start[key] = max(last_start.get(key, e.start_ns()), e.start_ns())
        created = {key for key, start in last_start.items()
                   if any(lo <= start < hi for lo, hi in spans.get(key[0], ()))}
        backward = [e for e in events if e.name().startswith(BACKWARD_EVENT_PREFIX)
                    and (e.fwd_thread_id(), e.sequence_nr()) in created]
        attributed = [interval(e) for e in forward_ranges + backward]
        nodes = sorted(e.name()[len(BACKWARD_EVENT_PREFIX):] for e in backward)
    count = max(len(steps), 1)
    step_ns = sum(end - start for start, end in steps)
    op_ns = _union_ns(attributed)
    return {"steps": len(steps), "backward_nodes": nodes, "step_ms": step_ns / 1e6 / count,
            "op_ms": op_ns / 1e6 / count, "custom_op_ms": _union_ns(custom_ops) / 1e6 / count,
            "op_share": op_ns / step_ns if step_ns else None}


def op_share_of_step(step: Callable, sets: Sequence[torch.Tensor], provider: str, steps: int = OP_SHARE_STEPS) -> dict:
    """Profile ``steps`` steps (each in a ``fastvae_bench.step`` range) and
    measure the ops' share (:func:`op_share_of_events`): by the public ops' ranges for an
    uncompiled model, by the custom ops a compiled graph calls for ``<backend>+compile``;
    None for ``compile``, whose reference ops inductor fuses into kernels shared with the
    rest of the model, so no time is theirs alone.  A run separate from the timed one:
    the profiler costs a few microseconds an op."""
    from torch.profiler import ProfilerActivity, profile, record_function

    compiled = is_compiled(provider)
    if provider == "compile":
        return {"op_share": None, "op_ms": None, "custom_op_ms": None, "op_share_method": None}
    scope = contextlib.nullcontext() if compiled else public_op_ranges()
    with scope, profile(activities=[ProfilerActivity.CPU]) as profiler:
        for i in range(steps):
            with record_function(STEP_RANGE):
                step(sets[i % len(sets)])
    share = op_share_of_events(profiler.profiler.kineto_results.events(), ranges=not compiled)
    if share["steps"] != steps:
        raise RuntimeError(f"profiled {share['steps']} step ranges, expected {steps}")
    return {"op_share": share["op_share"], "op_ms": share["op_ms"],
            "custom_op_ms": None if provider_backend(provider) == "torch" else share["custom_op_ms"],
            "op_share_method": "custom ops" if compiled else "op ranges"}


def bench_provider(record: dict, case: ModelCase, side: Optional[int], dtype: str, sets: Sequence[torch.Tensor],
                   expected: Sequence[torch.Tensor], compile_backend: str, device: torch.device, args) -> dict:
    """Check and time one provider on one case, filling ``record`` (or its ``error``)."""
    provider = record["provider"]
    label = f"{case.name} {record['batch']}x{record['input']} {dtype} {provider}"
    if is_compiled(provider):
        torch._dynamo.reset()
    try:
        with fastvae.use_backend(provider_backend(provider)), compile_scope(provider):
            model = new_model(case, side, device)
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
            ops = fastvae_ops_of_step(training_step(model, optimizer, device, dtype), sets[0])
            check_routing(provider, ops)
            record["fastvae_ops"] = ops
            model = new_model(case, side, device)  # fresh weights: the same start as eager's
            if is_compiled(provider):
                model.compile(backend=compile_backend)
            actual = loss_and_gradients(model, sets[0], device, dtype)
            record["rel_err_vs_eager"] = max(common.relative_error(a, e) for a, e in zip(actual, expected))
            del actual
            if record["rel_err_vs_eager"] > CHECK_TOLERANCE[dtype]:
                common.log(f"{label}: WARNING relative error vs eager {record['rel_err_vs_eager']:.3g}")
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
            step = training_step(model, optimizer, device, dtype)
            timing = common.time_calls(lambda i: step(sets[i]), device, rotation=len(sets), warmup=args.warmup,
                                       max_reps=args.reps, min_reps=args.min_reps, budget_ms=args.budget_ms)
            record.update(timing.as_dict())
            record.pop("rotation_sets", None)
            record["steps_per_s"] = 1e3 / timing.median_ms
            record["samples_per_s"] = record["batch"] * record["steps_per_s"]
            record["peak_mib"], record["peak_extra_mib"] = peak_memory_mib(step, sets[0], device)
            if args.op_share_steps and device.type == "cpu":
                record.update(op_share_of_step(step, sets, provider, args.op_share_steps))
            common.log(f"{label}: {timing.median_ms:.4g} ms/step, {record['steps_per_s']:.4g} steps/s")
    except Exception as error:  # noqa: BLE001 (an out-of-memory or a failed compile must not end the run)
        common.log(f"{label}: FAILED\n{traceback.format_exc()}")
        record["error"] = common.error_text(error)
    finally:
        if is_compiled(provider):
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def bench_case(case: ModelCase, batch: int, side: Optional[int], dtype: str, providers: Sequence[str],
               device: torch.device, args) -> list[dict]:
    """Every provider on one (model, batch, dtype), on shared input batches."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    first = make_batch(case, batch, side, device, generator)
    bytes_per_set = first.numel() * first.element_size()
    count = min(MAX_INPUT_SETS, common.rotation_sets(bytes_per_set, device, max_calls=args.warmup + 1 + args.reps))
    sets = [first] + [make_batch(case, batch, side, device, generator) for _ in range(count - 1)]
    with fastvae.use_backend("torch"):
        expected = loss_and_gradients(new_model(case, side, device), first, device, dtype)
    records = [bench_provider(base_record(case, batch, side, dtype, provider), case, side, dtype, sets, expected,
                              args.compile_backend, device, args) for provider in providers]
    del sets, expected
    return records


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def sort_records(records: list[dict], providers: Sequence[str]) -> list[dict]:
    """Order: model, input, batch, dtype, then eager, compile and the kernel providers."""
    order = list(BASELINES) + [p for p in providers if p not in BASELINES]

    def key(record):
        provider = record["provider"]
        return (list(MODELS).index(record["model"]) if record["model"] in MODELS else len(MODELS),
                record["input"], record["batch"], DTYPES.index(record["dtype"]) if record["dtype"] in DTYPES else 9,
                order.index(provider) if provider in order else len(order), provider)

    return sorted(records, key=key)


RESULT_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("batch", lambda r: str(r["batch"])),
    ("input", lambda r: r["input"]),
    ("dtype", lambda r: r["dtype"]),
    ("provider", lambda r: r["provider"]),
    ("median ms", lambda r: r["median_ms"] if r["error"] is None else "error"),
    ("steps/s", lambda r: r["steps_per_s"]),
    ("samples/s", lambda r: r["samples_per_s"]),
    ("peak MiB", lambda r: r["peak_mib"]),
    ("step MiB", lambda r: r["peak_extra_mib"]),
    ("ops ms", lambda r: r.get("op_ms")),
    ("ops %", lambda r: None if r.get("op_share") is None else 100.0 * r["op_share"]),
    ("× eager", lambda r: r.get("speedup_vs_eager")),
    ("× compile", lambda r: r.get("speedup_vs_compile")),
    ("rel err", lambda r: r["rel_err_vs_eager"]),
]


def bar_rows(records: list[dict], device_type: str) -> list[dict]:
    """The performance bar on a GPU: every kernel provider of the conv mixture VAE at
    3×32×32, ≥ 1.5× eager.  None on the CPU (the bar is a GPU one)."""
    if device_type != "cuda":
        return []
    return [dict(r, verdict=common.bar_verdict(r, GPU_BAR)) for r in records
            if r["model"] == BAR_MODEL and r["input"] == BAR_INPUT and r["provider"] not in BASELINES]


def markdown_report(payload: dict) -> str:
    meta, records = payload["metadata"], payload["records"]
    device = meta["device"]
    versions = f"torch {meta['torch']}, Triton {meta['triton']}, Python {meta['python']}, fastvae {meta['fastvae']}"
    if device["type"] == "cuda":
        versions += f", CUDA {device.get('cuda_runtime')}, driver {device.get('driver')}"
    lines = [
        f"# fastvae training-step benchmark: {device['name']}",
        "",
        f"- date (UTC): {meta['date_utc']}; commit: {meta['git_commit'] or 'none'}",
        f"- versions: {versions}",
        f"- command: `{meta['command']}`",
        "- a step = forward, backward and an Adam update; median over repetitions; peak MiB = the most memory "
        "allocated during a step (CUDA only), step MiB = that beyond what existed before it (on the CPU from the "
        "profiler's allocation events, in a separate untimed step); × eager / × compile "
        "= their median over this one's; rel err = largest ‖out − eager‖/‖eager‖ over the loss and the gradients "
        "from the same weights and seed; bfloat16 = the forward under torch.autocast.",
        "- ops ms / ops % (CPU) = per step, the time in fastvae's ops (eager: in the reference ops they replace) and "
        "its share of the step, from a profile of a few more steps: by the public ops' ranges and the backward nodes "
        "they create, or, compiled, by the fastvae custom ops the graph calls; none for compile, whose reference ops "
        "inductor fuses with the rest of the model (bench/README.md).",
        "- eager and compile run the same model with fastvae.use_backend('torch') (fastvae.reference's PyTorch); "
        "checked: their steps run no fastvae custom op, each kernel provider's run at least one.",
    ]
    for name in dict.fromkeys(r["model"] for r in records):
        lines.append(f"- {name}: {MODELS[name].describe if name in MODELS else name}")
    lines += ["", "## Results", "", common.markdown_table(records, RESULT_COLUMNS)]
    lines += common.problem_lines([dict(r, op=r["model"]) for r in records],
                                  lambda r: f"{r['model']} {r['batch']}x{r['input']} {r['dtype']} {r['provider']}")
    rows = bar_rows(records, device["type"])
    if device["type"] == "cuda":
        lines += ["", f"## Performance bar (training step, conv mixture VAE at {BAR_INPUT}: ≥ 1.5× eager)", ""]
        if rows:
            lines.append(common.markdown_table(rows, [
                ("batch", lambda r: str(r["batch"])), ("dtype", lambda r: r["dtype"]),
                ("provider", lambda r: r["provider"]), ("× eager", lambda r: r.get("speedup_vs_eager")),
                ("bar", lambda r: r["verdict"]),
            ]))
        else:
            lines.append(f"No kernel provider of the conv mixture VAE at {BAR_INPUT} was measured in this run.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_sizes(spec: str) -> list[tuple[str, int, Optional[int]]]:
    """A preset (default, tiny) or a list of MODEL:BATCH[:SIDE], e.g. ``mlp:4096,conv_mixture:64:32``."""
    if spec in SIZE_PRESETS:
        return list(SIZE_PRESETS[spec])
    sizes = []
    for item in common.parse_list(spec, what="size"):
        parts = item.split(":")
        if parts[0] not in MODELS or len(parts) not in (2, 3):
            raise SystemExit(f"size {item!r}: expected a preset {list(SIZE_PRESETS)} or MODEL:BATCH[:SIDE] with "
                             f"MODEL in {list(MODELS)}")
        try:
            numbers = [int(p) for p in parts[1:]]
        except ValueError:
            raise SystemExit(f"size {item!r}: BATCH and SIDE must be integers") from None
        if any(n <= 0 for n in numbers):
            raise SystemExit(f"size {item!r}: BATCH and SIDE must be positive")
        side = numbers[1] if len(numbers) == 2 else DEFAULT_SIDE[parts[0]]
        if parts[0] == "mlp":
            side = None
        elif side % 4:
            raise SystemExit(f"size {item!r}: the conv model's image side must be divisible by 4")
        sizes.append((parts[0], numbers[0], side))
    return sizes


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a training step (forward, backward, Adam) of fastvae's MLP and conv mixture VAEs with "
        "fastvae's kernels against the same models with eager reference ops and with torch.compile.",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present, else cpu)")
    parser.add_argument("--sizes", default="default",
                        help="a preset (default: mlp at batch 4096 and 65536, conv_mixture at 128 on 3x32x32; tiny; "
                        "cpu: mlp at 1024, conv_mixture at 32 on 3x32x32) "
                        "or MODEL:BATCH[:SIDE],... e.g. mlp:4096,conv_mixture:64:32")
    parser.add_argument("--tiny", action="store_true", help="the tiny sizes (= --sizes tiny): a CPU smoke run")
    parser.add_argument("--dtypes", default=None,
                        help="float32 and/or bfloat16 (bf16 autocast of the forward); default: both on CUDA, float32 "
                        "on the CPU")
    parser.add_argument("--providers", default=None,
                        help="comma-separated: eager, compile, fastvae backends and <backend>+compile (default: all "
                        "for the device; Triton on the CPU only if named, under TRITON_INTERPRET=1)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    parser.add_argument("--reps", type=int, default=50, help="most timed steps per case (default: 50)")
    parser.add_argument("--min-reps", type=int, default=5, help="fewest timed steps per case (default: 5)")
    parser.add_argument("--budget-ms", type=float, default=3000.0,
                        help="timed milliseconds to aim for per case (default: 3000)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the first compiles; default: 5)")
    parser.add_argument("--op-share-steps", type=int, default=OP_SHARE_STEPS,
                        help="on the CPU, steps profiled after the timed ones for the share of the step spent in "
                        f"fastvae's ops; 0 skips it (default: {OP_SHARE_STEPS})"),
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path; the markdown report goes beside it (default: "
                        "bench/results/train-<device>[-<sizes tag>].json)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the records of an existing --out file that this run does not measure again")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes = "tiny"
    if args.reps < 1 or args.min_reps < 1 or args.warmup < 0 or args.op_share_steps < 0:
        parser.error("--reps and --min-reps must be at least 1, --warmup and --op-share-steps at least 0")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Measure everything ``args`` asks for; returns the payload written to JSON."""
    device = common.parse_device(args.device)
    sizes = parse_sizes(args.sizes)
    dtypes = common.parse_list(args.dtypes or ("float32,bfloat16" if device.type == "cuda" else "float32"),
                               DTYPES, "dtype")
    providers = parse_providers(args.providers, device)
    out_path = args.out or common.default_results_path(BENCHMARK, device, common.sizes_tag(args.sizes, SIZE_PRESETS))
    metadata = common.run_metadata(device, argv, "bench/bench_train.py")
    metadata["providers"] = list(providers)
    metadata["compile_backend"] = args.compile_backend
    metadata["flush_denormal"] = flush_denormals(device)
    common.log(f"device: {metadata['device']['name']}; providers: {providers}")
    records = []
    try:
        for model_name, batch, side in sizes:
            for dtype in dtypes:
                records += bench_case(MODELS[model_name], batch, side, dtype, providers, device, args)
    finally:
        if metadata["flush_denormal"]:
            torch.set_flush_denormal(False)
    return common.finish_run(
        BENCHMARK, out_path, args.merge, metadata, None, records, RECORD_KEYS, CASE_KEYS,
        sort=lambda records: sort_records(records, providers), report=markdown_report,
    )


def flush_denormals(device: torch.device) -> bool:
    """On the CPU, flush denormal floats to zero (for every provider alike), as
    ``fastvae train`` does: Adam's second moments of a Bernoulli decoder's saturated
    logits underflow into denormals, whose arithmetic is tens of times slower there.  The
    flag is per thread and worker threads inherit it when they start, so ``main`` sets it
    before any parallel op has started them."""
    return device.type == "cpu" and torch.set_flush_denormal(True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    flush_denormals(common.parse_device(args.device))
    return common.main_without_value_checks(run, args, argv)


if __name__ == "__main__":
    sys.exit(main())
