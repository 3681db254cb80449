"""The deep hierarchical VAE's training step (``fastvae.models.DeepVAE``): time and peak
memory with fastvae's fused ops against the same model on the eager reference ops and
under torch.compile.

A step is what ``fastvae.train.Trainer`` does per batch: ``zero_grad``, the forward pass
(``model(x)``, its loss), the backward pass and an Adam update, at a fixed batch.
Providers (the same model, the same initial weights):

* ``fastvae``: the model on fastvae's fastest backend for the device (``cpu`` on a CPU,
  else the Triton kernels under its interpreter; ``triton``, else ``cuda``, on a GPU);
  a backend can also be named (``cpu``, ``triton``, ``cuda``);
* ``eager``: ``fastvae.use_backend("torch")``: every fastvae op is
  :mod:`fastvae.reference`'s plain PyTorch, run eagerly;
* ``compile``: that reference model under ``torch.compile``;
* ``fastvae+compile`` (or ``<backend>+compile``): the fused model under ``torch.compile``.

Measured per provider (bench/README.md, "The deep model's training step"): the median
step time and its spread over repeated steps after warm-up; the peak memory of a step
beyond what existed before it (model, optimizer state, batch): on the CPU counted
exactly from the allocator's events (``common.cpu_allocations``), twice, and the two
counts must agree; on CUDA from ``torch.cuda.max_memory_allocated``.  Where fastvae's ops
matter (CPU, uncompiled providers): the bytes that the latent ops' and the likelihood's
forward calls leave allocated in a step (their outputs and the tensors they save for the
backward) and their share of the step's peak, and the peak of the likelihood head's loss
forward+backward alone on the decoder's output.  Also the model's parameter count and
number of latent groups, the fastvae custom ops a step runs, and each provider's loss and
gradients against eager's from the same weights and seed.

Usage (from the repository root)::

    python bench/bench_deep.py --device cpu --sizes cpu     # the committed CPU run
    python bench/bench_deep.py --sizes gpu                  # on a GPU
    python bench/bench_deep.py --device cpu --sizes tiny --reps 2 --providers eager,fastvae

Writes bench/results/deep-<device>-<sizes>.json and a markdown report beside it, and
prints the report.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

# bench/ is a folder of scripts, not a package: make its shared code importable
# whether this file runs as a script or is loaded by path (tests/test_bench.py).
_BENCH_DIR = str(Path(__file__).resolve().parent)
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import bench_train  # noqa: E402
import common  # noqa: E402

import fastvae  # noqa: E402
from fastvae.models import build_model  # noqa: E402

BENCHMARK = "deep"
FUSED = "fastvae"
COMPILE_SUFFIX = bench_train.COMPILE_SUFFIX
BASELINES = common.BASELINES
CASE_KEYS = ("model", "batch", "dtype")
RECORD_KEYS = CASE_KEYS + ("provider",)
MODEL_SEED = bench_train.MODEL_SEED
DATA_SEED = bench_train.DATA_SEED
LEARNING_RATE = bench_train.LEARNING_RATE
CHECK_TOLERANCE = bench_train.CHECK_TOLERANCE
MAX_INPUT_SETS = bench_train.MAX_INPUT_SETS
DTYPES = bench_train.DTYPES
OP_SHARE_STEPS = 2

# The public ops of fastvae.ops that DeepVAE's training step calls, by the term of the
# loss they compute (the breakdown of the step's memory).
LATENT_OPS = ("sample_gaussian", "sample_gaussian_k", "gaussian_kl", "reparameterize")
LIKELIHOOD_OPS = ("bernoulli_nll", "continuous_bernoulli_nll", "gaussian_nll", "discretized_logistic_nll",
                  "discretized_logistic_mixture_nll")
TERMS = {"latent": LATENT_OPS, "likelihood": LIKELIHOOD_OPS}


@dataclass(frozen=True)
class DeepCase:
    """One benchmarked DeepVAE: its build_model config and the kind of data it models."""

    name: str
    describe: str
    config: dict

    @property
    def binary_data(self) -> bool:
        return self.config.get("likelihood", "bernoulli") == "bernoulli"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config["data_shape"])


def _deep(**config) -> dict:
    return {"name": "deep", **config}


MNIST_CPU = _deep(data_shape=[1, 28, 28], resolutions=[28, 14, 7, 1], width=32, bottleneck=8,
                  encoder_blocks=[1, 1, 1, 1], decoder_groups=[1, 2, 2, 1], latent_channels=4, activation="silu")
MODELS = {
    # The CPU sizes: a step takes a fraction of a second to seconds on two cores.
    "mnist_cpu": DeepCase("mnist_cpu", "binarized-MNIST-like 1x28x28, Bernoulli; resolutions 28-14-7-1, width 32, "
                          "bottleneck 8, 6 groups of 4 channels, silu", MNIST_CPU),
    "cifar_mixture_cpu": DeepCase(
        "cifar_mixture_cpu", "8-bit CIFAR-like 3x32x32, 10-component discretized logistic mixture; resolutions "
        "32-16-8-4-1, width 32, bottleneck 8, 8 groups of 4 channels, silu",
        _deep(data_shape=[3, 32, 32], resolutions=[32, 16, 8, 4, 1], width=32, bottleneck=8,
              encoder_blocks=[1, 1, 1, 1, 1], decoder_groups=[1, 2, 2, 2, 1], latent_channels=4, activation="silu",
              likelihood="discretized_logistic_mixture", num_mixtures=10)),
    # The GPU sizes.  VDVAE's CIFAR-10 model (Child 2021): width 384, bottleneck 96,
    # 16-channel latents, encoder 32x11, 16x6, 8x6, 4x3, 1x3 and decoder 1x1, 4x3, 8x6,
    # 16x11, 32x22 (its pooling and unpooling blocks counted as blocks), gelu.
    "cifar_vdvae": DeepCase(
        "cifar_vdvae", "VDVAE-CIFAR-10-like 3x32x32, 10-component mixture; resolutions 32-16-8-4-1, width 384, "
        "bottleneck 96, 43 groups of 16 channels, gelu",
        _deep(data_shape=[3, 32, 32], resolutions=[32, 16, 8, 4, 1], width=384, bottleneck=96,
              encoder_blocks=[11, 6, 6, 3, 3], decoder_groups=[22, 11, 6, 3, 1], latent_channels=16,
              activation="gelu", likelihood="discretized_logistic_mixture", num_mixtures=10)),
    "mnist_gpu": DeepCase(
        "mnist_gpu", "binarized-MNIST-like 1x28x28, Bernoulli; resolutions 28-14-7-1, width 128, bottleneck 32, "
        "16 groups of 8 channels, gelu",
        _deep(data_shape=[1, 28, 28], resolutions=[28, 14, 7, 1], width=128, bottleneck=32,
              encoder_blocks=[3, 3, 3, 2], decoder_groups=[6, 6, 3, 1], latent_channels=8, activation="gelu")),
    # Smoke sizes (tests, gpu_session.py --dry-run): a few milliseconds a step.
    "tiny_bernoulli": DeepCase(
        "tiny_bernoulli", "tiny 1x8x8, Bernoulli; resolutions 8-4-1, width 8, 3 groups of 2 channels",
        _deep(data_shape=[1, 8, 8], resolutions=[8, 4, 1], width=8, bottleneck=4, encoder_blocks=[1, 1, 1],
              decoder_groups=[1, 1, 1], latent_channels=2, activation="silu")),
    "tiny_mixture": DeepCase(
        "tiny_mixture", "tiny 3x8x8, 10-component mixture; resolutions 8-4-1, width 8, 3 groups of 2 channels",
        _deep(data_shape=[3, 8, 8], resolutions=[8, 4, 1], width=8, bottleneck=4, encoder_blocks=[1, 1, 1],
              decoder_groups=[1, 1, 1], latent_channels=2, activation="silu",
              likelihood="discretized_logistic_mixture", num_mixtures=10)),
}
# (model, batch)
SIZE_PRESETS = {
    "cpu": [("mnist_cpu", 64), ("cifar_mixture_cpu", 16)],
    "gpu": [("cifar_vdvae", 16), ("cifar_vdvae", 32), ("mnist_gpu", 128)],
    "tiny": [("tiny_bernoulli", 4), ("tiny_mixture", 2)],
}


# --------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------


def fused_backend(device: torch.device) -> Optional[str]:
    """The backend ``fastvae`` stands for: on CUDA what ``auto`` picks (triton, else
    cuda); on the CPU the C++ extension, else the Triton kernels under the interpreter;
    None when the device has no kernel backend."""
    kernels = common.kernel_providers(device)
    order = ("triton", "cuda") if device.type == "cuda" else ("cpu", "triton")
    return next((name for name in order if name in kernels), None)


def provider_backend(provider: str, device: torch.device) -> str:
    """The fastvae backend a provider runs: ``torch`` (the reference) for the baselines."""
    if provider in BASELINES:
        return "torch"
    name = provider[:-len(COMPILE_SUFFIX)] if provider.endswith(COMPILE_SUFFIX) else provider
    return fused_backend(device) if name == FUSED else name


def is_compiled(provider: str) -> bool:
    return bench_train.is_compiled(provider)


def parse_providers(spec: Optional[str], device: torch.device) -> list[str]:
    """``--providers``, checked against the device; by default eager, compile, fastvae and
    fastvae+compile."""
    kernels = common.kernel_providers(device)
    if fused_backend(device) is not None:
        kernels = [FUSED] + kernels
    allowed = list(BASELINES) + kernels + [k + COMPILE_SUFFIX for k in kernels]
    if spec is None:
        return [p for p in ("eager", "compile", FUSED, FUSED + COMPILE_SUFFIX) if p in allowed]
    requested = common.parse_list(spec, what="provider")
    missing = [p for p in requested if p not in allowed]
    if missing:
        raise SystemExit(f"bench_deep.py --providers: {missing} not available for {device.type} here (Triton on the "
                         f"CPU only under TRITON_INTERPRET=1); available: {allowed}")
    return requested


# --------------------------------------------------------------------------------------
# Models, data, steps
# --------------------------------------------------------------------------------------


def new_model(case: DeepCase, device: torch.device):
    torch.manual_seed(MODEL_SEED)
    return build_model(dict(case.config)).to(device)


def make_batch(case: DeepCase, batch: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Random data of the model's kind: binary {0, 1} images (p = 0.13, MNIST's mean) or
    8-bit images on the grid k/255."""
    shape = (batch,) + case.input_shape
    if case.binary_data:
        return (torch.rand(shape, generator=generator) < 0.13).float().to(device)
    return (torch.randint(0, 256, shape, generator=generator).float() / 255.0).to(device)


def model_facts(case: DeepCase) -> dict:
    """Parameter count, latent groups and their channels of the case's model (built on the
    CPU, no data)."""
    model = build_model(dict(case.config))
    return {"parameters": sum(p.numel() for p in model.parameters()), "groups": model.num_groups,
            "latent_channels": model.latent_channels, "latent_dim": model.latent_dim,
            "group_resolutions": list(model.group_resolutions)}


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


def step_peak_memory(step: Callable, x: torch.Tensor, device: torch.device) -> dict:
    """The most memory allocated during one step beyond what was allocated before it
    (``peak_extra_mib``).  CPU: counted from the allocator's events twice
    (``peak_extra_repeat_mib``), each with a step first under the same profiler so that
    the gradients it leaves, which the measured step's ``zero_grad`` frees, are counted
    when freed.  CUDA: ``max_memory_allocated`` (also the total, ``peak_mib``)."""
    if device.type != "cuda":
        counts = [common.cpu_allocations(lambda: (step(x),), setup=lambda: step(x)).peak_bytes for _ in range(2)]
        return {"peak_mib": None, "peak_extra_mib": counts[0] / common.MIB,
                "peak_extra_repeat_mib": counts[1] / common.MIB}
    peak, extra = bench_train.peak_memory_mib(step, x, device)
    return {"peak_mib": peak, "peak_extra_mib": extra, "peak_extra_repeat_mib": None}


def held_by_terms(step: Callable, x: torch.Tensor) -> dict:
    """CPU, uncompiled: per term of the loss (``latent``, ``likelihood``), the bytes that
    its ops' forward calls leave allocated in one step, summed over the calls: for each
    call of a public op (wrapped in a profiler range, bench_train.public_op_ranges), the
    allocations minus the frees inside its range, i.e. its outputs and the tensors it
    saves for its backward.  With a step first under the same profiler, as
    common.cpu_allocations does."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    with bench_train.public_op_ranges(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step(x)
        with record_function(common.MEASURED_CALL_RANGE):
            step(x)
    events = profiler.profiler.kineto_results.events()
    (measured,) = [e for e in events if e.name() == common.MEASURED_CALL_RANGE]
    start, end = measured.start_ns(), measured.start_ns() + measured.duration_ns()
    ranges = {term: [] for term in TERMS}
    calls = {term: 0 for term in TERMS}
    for event in events:
        name = event.name()
        if not name.startswith(bench_train.OP_RANGE_PREFIX) or not start <= event.start_ns() <= end:
            continue
        op = name[len(bench_train.OP_RANGE_PREFIX):]
        for term, ops in TERMS.items():
            if op in ops:
                ranges[term].append((event.start_ns(), event.start_ns() + event.duration_ns()))
                calls[term] += 1
    held = {term: 0 for term in TERMS}
    for event in events:
        if event.name() != "[memory]" or event.device_type() != DeviceType.CPU:
            continue
        for term, spans in ranges.items():
            if any(lo <= event.start_ns() <= hi for lo, hi in spans):
                held[term] += event.nbytes()
    return {"held_mib": {term: held[term] / common.MIB for term in TERMS}, "op_calls": calls}


def likelihood_head_memory(model, x: torch.Tensor, device: torch.device) -> list[float]:
    """The likelihood head's loss forward+backward alone, on the decoder's output for x:
    its peak memory beyond its input and what it returns (the [B] nll and the gradient of
    the decoder's output), MiB, as bench_likelihood.py counts a fwd+bwd call.  On the CPU
    twice (the two counts must agree), on CUDA once."""
    with torch.no_grad():
        _, params = model.infer(x)
    params = params.detach().requires_grad_()

    def forward_backward():
        nll = model.likelihood.nll(params, x)
        return (nll.detach(),) + torch.autograd.grad(nll.sum(), params)

    repeats = 2 if device.type != "cuda" else 1
    return [common.peak_extra_memory_mib(forward_backward, device) for _ in range(repeats)]


# --------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------


def base_record(case: DeepCase, batch: int, dtype: str, provider: str, device: torch.device, facts: dict) -> dict:
    return {
        "model": case.name, "description": case.describe, "batch": batch,
        "input": "x".join(str(s) for s in case.input_shape), "dtype": dtype, "provider": provider,
        "backend": provider_backend(provider, device), "compiled": is_compiled(provider),
        **facts,
        "median_ms": None, "min_ms": None, "p20_ms": None, "p80_ms": None, "reps": None,
        "steps_per_s": None, "samples_per_s": None,
        "peak_mib": None, "peak_extra_mib": None, "peak_extra_repeat_mib": None, "memory_repeatable": None,
        "held_mib": None, "held_share": None, "op_calls": None,
        "likelihood_head_mib": None, "likelihood_head_repeat_mib": None,
        "op_share": None, "op_ms": None, "rel_err_vs_eager": None, "fastvae_ops": None, "error": None,
        "skipped": None,
    }


def bench_provider(record: dict, case: DeepCase, dtype: str, sets: Sequence[torch.Tensor],
                   expected: Sequence[torch.Tensor], device: torch.device, args) -> dict:
    """Check, time and measure one provider on one case, filling ``record`` (or its
    ``error``)."""
    provider, backend = record["provider"], record["backend"]
    label = f"{case.name} {record['batch']} {dtype} {provider}"
    compiled = is_compiled(provider)
    if compiled:
        torch._dynamo.reset()
    try:
        with fastvae.use_backend(backend), bench_train.compile_scope(provider):
            model = new_model(case, device)
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
            ops = bench_train.fastvae_ops_of_step(bench_train.training_step(model, optimizer, device, dtype), sets[0])
            bench_train.check_routing("eager" if backend == "torch" else provider, ops)
            record["fastvae_ops"] = ops
            model = new_model(case, device)  # fresh weights: the same start as eager's
            if compiled:
                model.compile(backend=args.compile_backend)
            actual = bench_train.loss_and_gradients(model, sets[0], device, dtype)
            record["rel_err_vs_eager"] = max(common.relative_error(a, e) for a, e in zip(actual, expected))
            del actual
            if record["rel_err_vs_eager"] > CHECK_TOLERANCE[dtype]:
                common.log(f"{label}: WARNING relative error vs eager {record['rel_err_vs_eager']:.3g}")
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
            step = bench_train.training_step(model, optimizer, device, dtype)
            timing = common.time_calls(lambda i: step(sets[i]), device, rotation=len(sets), warmup=args.warmup,
                                       max_reps=args.reps, min_reps=args.min_reps, budget_ms=args.budget_ms)
            record.update(timing.as_dict())
            record.pop("rotation_sets", None)
            record["steps_per_s"] = 1e3 / timing.median_ms
            record["samples_per_s"] = record["batch"] * record["steps_per_s"]
            record.update(step_peak_memory(step, sets[0], device))
            if device.type != "cuda":
                record["memory_repeatable"] = record["peak_extra_mib"] == record["peak_extra_repeat_mib"]
            if not compiled:
                heads = likelihood_head_memory(model, sets[0], device)
                record["likelihood_head_mib"] = heads[0]
                if len(heads) > 1:
                    record["likelihood_head_repeat_mib"] = heads[1]
                    record["memory_repeatable"] = record["memory_repeatable"] and heads[0] == heads[1]
            if device.type != "cuda" and not compiled:
                record.update(held_by_terms(step, sets[0]))
                record["held_share"] = {term: (mib / record["peak_extra_mib"] if record["peak_extra_mib"] else None)
                                        for term, mib in record["held_mib"].items()}
            if device.type != "cuda" and args.op_share_steps:
                share = bench_train.op_share_of_step(step, sets, "eager" if provider == "eager" else provider,
                                                     args.op_share_steps)
                record["op_share"], record["op_ms"] = share["op_share"], share["op_ms"]
            if record["memory_repeatable"] is False:
                common.log(f"{label}: WARNING the two memory counts differ: {record['peak_extra_mib']} and "
                           f"{record['peak_extra_repeat_mib']} MiB (step), {record['likelihood_head_mib']} and "
                           f"{record['likelihood_head_repeat_mib']} MiB (likelihood head)")
            common.log(f"{label}: {timing.median_ms:.4g} ms/step, peak extra {record['peak_extra_mib']:.4g} MiB")
    except Exception as error:  # noqa: BLE001 (an out-of-memory or a failed compile must not end the run)
        common.log(f"{label}: FAILED\n{traceback.format_exc()}")
        record["error"] = common.error_text(error)
    finally:
        if compiled:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def bench_case(case: DeepCase, batch: int, dtype: str, providers: Sequence[str], device: torch.device,
               args) -> list[dict]:
    """Every provider on one (model, batch, dtype), on shared input batches."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    first = make_batch(case, batch, device, generator)
    bytes_per_set = first.numel() * first.element_size()
    count = min(MAX_INPUT_SETS, common.rotation_sets(bytes_per_set, device, max_calls=args.warmup + 1 + args.reps))
    sets = [first] + [make_batch(case, batch, device, generator) for _ in range(count - 1)]
    facts = model_facts(case)
    with fastvae.use_backend("torch"):
        expected = bench_train.loss_and_gradients(new_model(case, device), first, device, dtype)
    records = [bench_provider(base_record(case, batch, dtype, provider, device, facts), case, dtype, sets, expected,
                              device, args) for provider in providers]
    del sets, expected
    return records


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def load_average() -> Optional[list[float]]:
    """The 1-, 5- and 15-minute load averages (None where the system does not say)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def sort_records(records: list[dict], providers: Sequence[str]) -> list[dict]:
    canonical = list(BASELINES) + [FUSED, FUSED + COMPILE_SUFFIX]
    order = canonical + [p for p in providers if p not in canonical]  # merged runs: the same order
    models = list(MODELS)

    def key(record):
        provider = record["provider"]
        return (models.index(record["model"]) if record["model"] in models else len(models), record["batch"],
                DTYPES.index(record["dtype"]) if record["dtype"] in DTYPES else 9,
                order.index(provider) if provider in order else len(order), provider)

    return sorted(records, key=key)


def _pct(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


RESULT_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("batch", lambda r: str(r["batch"])),
    ("dtype", lambda r: r["dtype"]),
    ("provider", lambda r: r["provider"] + ("" if r["provider"] in BASELINES or r["backend"] in r["provider"]
                                            else f" ({r['backend']})")),
    ("median ms", lambda r: r["median_ms"] if r["error"] is None else "error"),
    ("p20–p80 ms", lambda r: None if r["p20_ms"] is None
     else f"{common.format_number(r['p20_ms'])}–{common.format_number(r['p80_ms'])}"),
    ("reps", lambda r: None if r["reps"] is None else str(r["reps"])),
    ("step MiB", lambda r: r["peak_extra_mib"]),
    ("peak MiB", lambda r: r["peak_mib"]),
    ("× eager MiB", lambda r: r.get("peak_extra_vs_eager")),
    ("× eager", lambda r: r.get("speedup_vs_eager")),
    ("× compile", lambda r: r.get("speedup_vs_compile")),
    ("rel err", lambda r: r["rel_err_vs_eager"]),
]

BREAKDOWN_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("batch", lambda r: str(r["batch"])),
    ("provider", lambda r: r["provider"]),
    ("step MiB", lambda r: r["peak_extra_mib"]),
    ("latent held MiB", lambda r: (r["held_mib"] or {}).get("latent")),
    ("latent % of step", lambda r: _pct((r["held_share"] or {}).get("latent"))),
    ("likelihood held MiB", lambda r: (r["held_mib"] or {}).get("likelihood")),
    ("likelihood % of step", lambda r: _pct((r["held_share"] or {}).get("likelihood"))),
    ("likelihood head fwd+bwd MiB", lambda r: r["likelihood_head_mib"]),
    ("ops % of step time", lambda r: _pct(r["op_share"])),
    ("latent / likelihood calls", lambda r: None if r["op_calls"] is None
     else f"{r['op_calls']['latent']} / {r['op_calls']['likelihood']}"),
]


def markdown_report(payload: dict) -> str:
    meta, records = payload["metadata"], payload["records"]
    device = meta["device"]
    versions = f"torch {meta['torch']}, Triton {meta['triton']}, Python {meta['python']}, fastvae {meta['fastvae']}"
    if device["type"] == "cuda":
        versions += f", CUDA {device.get('cuda_runtime')}, driver {device.get('driver')}"
    cpus = device.get("logical_cpus")
    runs = meta.get("previous_runs", []) + [meta]
    lines = [
        f"# fastvae deep hierarchical VAE training step: {device['name']}",
        "",
        f"- date (UTC): {meta['date_utc']}; commit: {meta['git_commit'] or 'none'}",
        f"- versions: {versions}",
    ]
    loaded = False
    for run in runs:
        start, end = run.get("load_average_start"), run.get("load_average_end")
        line = f"- command: `{run['command']}`"
        if device["type"] != "cuda":
            line += (f" (at {run['date_utc']}; load average (1, 5, 15 min) {start} at its start, {end} at its end, "
                     f"on {cpus} logical CPUs, {device.get('torch_threads')} torch threads)")
            loaded = loaded or max((start or [0])[0], (end or [0])[0]) >= 0.5 * (cpus or 1)
        lines.append(line)
    if loaded:
        lines.append("- the machine was shared and loaded during the run: the times are noisy, compare them with "
                     "care. The memory figures are exact counts and do not depend on the load.")
    lines += [
        "- a step = zero_grad, forward, backward and an Adam update at a fixed batch; median and the 20th-80th "
        "percentiles over the timed steps after the warm-up ones.",
        "- step MiB = the most memory allocated during one step beyond what existed before it (the model, Adam's "
        "state, the batch): on the CPU counted from the allocator's every allocation and free "
        "(common.cpu_allocations), twice per provider, and equal both times"
        + ("" if all(r["memory_repeatable"] is not False for r in records) else " except where the JSON says "
           "memory_repeatable false")
        + "; on CUDA max_memory_allocated (peak MiB = the total); × eager MiB = step MiB over eager's.",
        "- eager = the same model and weights with fastvae.use_backend('torch') (fastvae.reference's PyTorch, "
        "whose Gaussian noise is fastvae's Philox stream in int64 torch arithmetic, so that every provider draws "
        "the same noise); compile = that under torch.compile; fastvae = the fused ops on the backend in brackets; "
        "rel err = largest ‖out − eager‖/‖eager‖ over the loss and gradients from the same weights and seed.",
    ]
    for name in dict.fromkeys(r["model"] for r in records):
        first = next(r for r in records if r["model"] == name)
        lines.append(f"- {name}: {first['description']}; {first['parameters']:,} parameters, {first['groups']} "
                     f"latent groups of {first['latent_channels']} channels at resolutions "
                     f"{first['group_resolutions']} (top first)")
    lines += ["", "## Results", "", common.markdown_table(records, RESULT_COLUMNS)]
    rows = [r for r in records if r["held_mib"] is not None or r["likelihood_head_mib"] is not None]
    if rows:
        lines += [
            "", "## Where fastvae's ops matter", "",
            "latent / likelihood held MiB (CPU, uncompiled) = the bytes the latent ops' (sample_gaussian per group) "
            "and the likelihood's forward calls leave allocated in one step, summed over the calls: allocations "
            "minus frees inside each call, i.e. its outputs and the tensors it saves for its backward (the saved ones "
            "live until the backward; an output may be freed sooner); % of step = that over step MiB. "
            "likelihood head fwd+bwd MiB = the peak memory of the likelihood's loss forward and backward alone on "
            "the decoder's output, beyond that "
            "input and its outputs (the nll and the gradient), counted twice and equal both times on the CPU. "
            "ops % of step time (CPU) = the time in those ops' forward and backward over the step's, from a "
            "profile of a few more steps (bench_train.py's op share).",
            "",
            common.markdown_table(rows, BREAKDOWN_COLUMNS),
        ]
    lines += common.problem_lines([dict(r, op=r["model"]) for r in records],
                                  lambda r: f"{r['model']} {r['batch']} {r['dtype']} {r['provider']}")
    return "\n".join(lines)


def bar_rows(records: list[dict], device_type: str) -> list[dict]:
    """No performance bar is set on the deep model's step (bench/README.md): none."""
    return []


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_sizes(spec: str) -> list[tuple[str, int]]:
    """A preset (cpu, gpu, tiny) or MODEL:BATCH items, e.g. ``cifar_vdvae:16,mnist_gpu:128``."""
    if spec in SIZE_PRESETS:
        return list(SIZE_PRESETS[spec])
    sizes = []
    for item in common.parse_list(spec, what="size"):
        parts = item.split(":")
        if len(parts) != 2 or parts[0] not in MODELS:
            raise SystemExit(f"bench_deep.py --sizes: {item!r}: expected a preset {list(SIZE_PRESETS)} or "
                             f"MODEL:BATCH with MODEL in {list(MODELS)}")
        try:
            batch = int(parts[1])
        except ValueError:
            raise SystemExit(f"bench_deep.py --sizes: {item!r}: BATCH must be an integer") from None
        if batch <= 0:
            raise SystemExit(f"bench_deep.py --sizes: {item!r}: BATCH must be positive")
        sizes.append((parts[0], batch))
    return sizes


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a training step (forward, backward, Adam) of fastvae's deep hierarchical VAE (DeepVAE) "
        "and count its peak memory, with fastvae's fused ops against the same model on eager reference ops and "
        "under torch.compile.",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present, else cpu)")
    parser.add_argument("--sizes", default=None,
                        help=f"a preset {list(SIZE_PRESETS)} (default: gpu on CUDA, cpu on the CPU) or MODEL:BATCH,... "
                        f"with MODEL in {list(MODELS)}")
    parser.add_argument("--dtypes", default="float32",
                        help="float32 and/or bfloat16 (bf16 autocast of the forward; default: float32)")
    parser.add_argument("--providers", default=None,
                        help="comma-separated: eager, compile, fastvae, fastvae+compile, or a backend (cpu, triton, "
                        "cuda) with or without +compile (default: eager, compile, fastvae, fastvae+compile)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    parser.add_argument("--reps", type=int, default=30, help="most timed steps per case (default: 30)")
    parser.add_argument("--min-reps", type=int, default=5, help="fewest timed steps per case (default: 5)")
    parser.add_argument("--budget-ms", type=float, default=5000.0,
                        help="timed milliseconds to aim for per case (default: 5000)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles; default: 3)")
    parser.add_argument("--op-share-steps", type=int, default=OP_SHARE_STEPS,
                        help=f"on the CPU, steps profiled for the ops' share of the step time; 0 skips it "
                        f"(default: {OP_SHARE_STEPS})")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path; the markdown report goes beside it (default: "
                        "bench/results/deep-<device>-<sizes>.json)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the records of an existing --out file that this run does not measure again")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.min_reps < 1 or args.warmup < 0 or args.op_share_steps < 0:
        parser.error("--reps and --min-reps must be at least 1, --warmup and --op-share-steps at least 0")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Measure everything ``args`` asks for; returns the payload written to JSON."""
    device = common.parse_device(args.device)
    spec = args.sizes or ("gpu" if device.type == "cuda" else "cpu")
    sizes = parse_sizes(spec)
    dtypes = common.parse_list(args.dtypes, DTYPES, "dtype")
    providers = parse_providers(args.providers, device)
    tag = spec if spec in SIZE_PRESETS else "custom"
    out_path = args.out or common.default_results_path(BENCHMARK, device, tag)
    metadata = common.run_metadata(device, argv, "bench/bench_deep.py")
    metadata["load_average_start"] = load_average()
    metadata["providers"] = list(providers)
    metadata["fused_backend"] = fused_backend(device)
    metadata["compile_backend"] = args.compile_backend
    metadata["flush_denormal"] = bench_train.flush_denormals(device)
    common.log(f"device: {metadata['device']['name']}; providers: {providers}; load {metadata['load_average_start']}")
    records = []
    try:
        for model_name, batch in sizes:
            for dtype in dtypes:
                records += bench_case(MODELS[model_name], batch, dtype, providers, device, args)
    finally:
        if metadata["flush_denormal"]:
            torch.set_flush_denormal(False)
    metadata["load_average_end"] = load_average()

    def annotate(records):
        common.add_memory_ratios(records, CASE_KEYS)

    return common.finish_run(
        BENCHMARK, out_path, args.merge, metadata, None, records, RECORD_KEYS, CASE_KEYS,
        sort=lambda records: sort_records(records, providers), report=markdown_report, annotate=annotate,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    bench_train.flush_denormals(common.parse_device(args.device))
    return common.main_without_value_checks(run, args, argv)


if __name__ == "__main__":
    sys.exit(main())
