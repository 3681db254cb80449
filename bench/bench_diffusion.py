"""Benchmark of the diffusion ops, ``diffuse`` and ``diffusion_loss``, alone, as the pair a
training step uses, and inside a whole training step of a small denoiser.

The cases (``--ops``):

* ``diffuse``: z_t = α_t·x + σ_t·ε with x and γ requiring grad; fwd, bwd and fwd+bwd;
* ``diffusion_loss``: ½·w·‖ε − ε̂‖² per row with ε̂ and w requiring grad; fwd, bwd and fwd+bwd;
* ``diffuse_and_loss``: the pair as a training step chains it, z_t → a stand-in denoiser
  ε̂ = z_t·s (s a per-feature scale requiring grad) → the loss, with γ, w and s requiring
  grad; fwd+bwd, with its peak extra memory (the fused ops never store ε);
* ``step``: one training step (zero_grad, forward, backward, Adam) of a small MLP denoiser
  ε̂(z_t, γ) on [B, D] data with the continuous-time diffusion loss of Kingma et al. (2021):
  t ~ U(0, 1), the linear schedule γ(t) = −13.3 + 18.3·t, weight γ'(t) = 18.3, the batch mean
  of ½·γ'(t)·‖ε − ε̂‖².  An op that is faster alone but does not speed the step does not
  speed training: this case says whether it does.

Every case is timed for every provider:

* a fastvae backend (``triton``, ``cuda``, ``cpu``; ``torch`` when named): the public ops
  with that backend chosen.  A backend that has no diffusion kernel yet (its ops still run
  the torch reference: no fastvae custom op runs under it) is skipped, with the reason in
  the records (``skipped``);
* ``eager``: the reference's math (:mod:`fastvae.reference_diffusion`) as a user writes it,
  with ε from ``torch.randn`` (torch's own generator), drawn in the forward and kept for the
  loss (``diffusion_loss`` alone reads that stored ε);
* ``compile``: ``torch.compile`` of the same function.

The reference's own noise is fastvae's Philox stream in int64 torch arithmetic (dozens of
kernels per draw), which would inflate every speedup, so eager and compile use torch's;
every provider is checked (outputs and gradients, or the step's loss and gradients)
against the reference with fastvae's noise from the same seed, as in bench_latent.py.

Reported per case: median time, bandwidth against the minimum bytes
(:func:`diffuse_min_bytes`, :func:`diffusion_loss_min_bytes`,
:func:`diffuse_and_loss_min_bytes`), percent of the measured copy bandwidth, peak extra
memory (on the CPU from the allocator's events, ``common.cpu_allocations``) and its ratio
to eager's, speedups over eager and compile, and the relative error against the
reference; for the step, steps and samples per second and the step's peak memory.  The
timing, memory, report and command-line machinery is bench/common.py's.

Usage (from the repository root)::

    python bench/bench_diffusion.py                                      # GPU: default sizes, float32 + bfloat16
    python bench/bench_diffusion.py --device cpu --sizes tiny --reps 3   # CPU smoke run (what CI runs)
    python bench/bench_diffusion.py --device cpu --sizes cpu --dtypes float32   # the committed CPU run
    python bench/bench_diffusion.py --ops step --sizes 4096x784 --merge

Writes bench/results/diffusion-<device>.json and a markdown report beside it (with a
``-<preset>`` or ``-custom`` tag for other than the default sizes) and prints the report.
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
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# bench/ is a folder of scripts, not a package: make its shared helpers importable
# whether this file runs as a script or is loaded by path (tests/test_bench.py).
_BENCH_DIR = str(Path(__file__).resolve().parent)
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import common  # noqa: E402

import fastvae  # noqa: E402
from fastvae import reference_diffusion as reference  # noqa: E402
from fastvae.random import draw_seed  # noqa: E402
from fastvae.reference import compute_dtype  # noqa: E402

BENCHMARK = "diffusion"
DIFFUSE, LOSS, PAIR, STEP = "diffuse", "diffusion_loss", "diffuse_and_loss", "step"
OPS = (DIFFUSE, LOSS, PAIR, STEP)
# The public fastvae ops each case runs (what a backend must have a kernel for).
PUBLIC_OPS = {DIFFUSE: (DIFFUSE,), LOSS: (LOSS,), PAIR: (DIFFUSE, LOSS), STEP: (DIFFUSE, LOSS)}
# Sizes per case, [B, D]: the ops on flat data of D features per row, the step's denoiser
# on D-dimensional data (784: MNIST).
SIZE_PRESETS = {
    "default": {DIFFUSE: [(4096, 784), (65536, 784)], LOSS: [(4096, 784), (65536, 784)],
                PAIR: [(4096, 784), (65536, 784)], STEP: [(4096, 784), (65536, 784)]},
    "tiny": {DIFFUSE: [(64, 32)], LOSS: [(64, 32)], PAIR: [(64, 32)], STEP: [(16, 32)]},
    # The committed CPU run: sizes at which a call takes milliseconds to tens of
    # milliseconds on two cores (bench/README.md, "Diffusion ops").
    "cpu": {DIFFUSE: [(16384, 784)], LOSS: [(16384, 784)], PAIR: [(16384, 784)], STEP: [(1024, 784)]},
}
MODES = common.MODES
PAIR_MODES = ("fwd+bwd",)
STEP_MODE = "step"  # a step's record: forward, backward and the optimizer's update
BASELINES = common.BASELINES
# A record is one (op, size, dtype, mode, provider); a case is the same without provider.
CASE_KEYS = ("op", "shape", "dtype", "mode")
RECORD_KEYS = CASE_KEYS + ("provider",)
INPUT_SEED = 0
MODEL_SEED = 0
DATA_SEED = 1
FLOAT32_BYTES = 4

# The continuous-time loss of the step: VDM's linear schedule γ(t) = γ_min + (γ_max − γ_min)·t
# (Kingma et al. 2021, the fixed schedule of their CIFAR-10 runs), whose γ'(t) is the weight.
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0
GAMMA_SLOPE = GAMMA_MAX - GAMMA_MIN  # γ'(t) = 18.3
DENOISER_HIDDEN = 512
LEARNING_RATE = 1e-3
# The step's loss and gradients against eager's, from the same weights and noise: float32
# agrees to rounding summed over a network; bf16 autocast to its rounding.
STEP_CHECK_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}
MAX_STEP_INPUT_SETS = 4


# --------------------------------------------------------------------------------------
# Minimum bytes
# --------------------------------------------------------------------------------------


def _passes(forward: int, backward: int, mode: str) -> int:
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[mode]


def diffuse_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``diffuse(x, gamma)`` on x [batch, dim] must move through memory.

    With n = batch·dim elements of s = dtype's size (x, z_t and γ [batch] alike; ε is
    generated from the seed, never read or written), x and γ requiring grad:

    * fwd: read x, γ; write z_t                                    → 2·n·s + B·s
    * bwd: read ∂z_t, x, γ (∂x = α·∂z_t; ∂γ = Σ_i ∂z_t·(α'·x + σ'·ε) needs x, with ε
      regenerated); write ∂x, ∂γ                                   → 3·n·s + 2·B·s
    * fwd+bwd: the two passes                                      → 5·n·s + 3·B·s

    (20 bytes per element in float32.)
    """
    elements, size = batch * dim, dtype.itemsize
    return _passes(2 * elements * size + batch * size, 3 * elements * size + 2 * batch * size, mode)


def diffusion_loss_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes ``diffusion_loss(eps_hat, noise_seed, weight)`` on ε̂ [batch, dim] must
    move through memory.

    With n = batch·dim elements of s = dtype's size (ε̂ and w [batch]), the loss per row
    ([batch] float32, ``reduction='batch'``), ε regenerated from the seed (a stored ε would
    be one more read per pass), ε̂ and w requiring grad:

    * fwd: read ε̂, w; write the loss                               → n·s + B·s + 4·B
    * bwd: read ∂loss, ε̂, w (∂w needs the row's ‖ε − ε̂‖², recomputed on the way); write
      ∂ε̂, ∂w                                                       → 2·n·s + 2·B·s + 4·B
    * fwd+bwd: the two passes                                      → 3·n·s + 3·B·s + 8·B

    (12 bytes per element in float32, plus 20 per row.)  The 16-byte seed is left out.
    """
    elements, size = batch * dim, dtype.itemsize
    return _passes(elements * size + batch * size + FLOAT32_BYTES * batch,
                   2 * elements * size + 2 * batch * size + FLOAT32_BYTES * batch, mode)


def diffuse_and_loss_min_bytes(batch: int, dim: int, dtype: torch.dtype, mode: str = "fwd+bwd") -> int:
    """Fewest bytes the pair ``diffuse`` → ε̂ = z_t·s → ``diffusion_loss`` must move, each of
    the three ops reading its inputs and writing its outputs once (fwd+bwd only).

    x is data (no gradient); γ, w [batch] and the scale s [dim] require grad; n = batch·dim
    elements of s_b = dtype's size:

    * diffuse fwd: read x, γ; write z_t                            → 2·n·s_b + B·s_b
    * ε̂ = z_t·s: read z_t, s; write ε̂                             → 2·n·s_b + D·s_b
    * loss fwd: read ε̂, w; write the loss                          → n·s_b + B·s_b + 4·B
    * loss bwd: read ∂loss, ε̂, w; write ∂ε̂, ∂w                     → 2·n·s_b + 2·B·s_b + 4·B
    * the scale's bwd: read ∂ε̂, z_t, s; write ∂z_t, ∂s             → 3·n·s_b + 2·D·s_b
    * diffuse bwd: read ∂z_t, x, γ (ε regenerated); write ∂γ       → 2·n·s_b + 2·B·s_b

    In all 12·n·s_b + 6·B·s_b + 3·D·s_b + 8·B (48 bytes per element in float32).  A path that
    stores ε reads and writes it once more (8 bytes per element in float32).
    """
    if mode != "fwd+bwd":
        raise ValueError(f"diffuse_and_loss_min_bytes: the pair is timed fwd+bwd only, got mode {mode!r}")
    elements, size = batch * dim, dtype.itemsize
    return 12 * elements * size + 6 * batch * size + 3 * dim * size + 2 * FLOAT32_BYTES * batch


MIN_BYTES = {DIFFUSE: diffuse_min_bytes, LOSS: diffusion_loss_min_bytes, PAIR: diffuse_and_loss_min_bytes}


# --------------------------------------------------------------------------------------
# The baselines' math: the reference's, with torch's own noise
# --------------------------------------------------------------------------------------


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view((-1,) + (1,) * (like.dim() - 1))


def diffuse_torch_noise(x: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t, ε): diffuse as eager PyTorch code writes it, the reference's math with ε from
    ``torch.randn`` in x's dtype (kept by the caller for the loss)."""
    dtype = compute_dtype(x, gamma)
    eps = torch.randn(x.shape, device=x.device, dtype=x.dtype)
    g = _per_row(gamma.to(dtype), x)
    z = reference.signal_scale(g) * x.to(dtype) + reference.noise_scale(g) * eps.to(dtype)
    return z.to(torch.promote_types(x.dtype, gamma.dtype)), eps


def diffusion_loss_stored_noise(eps_hat: torch.Tensor, weight: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """[B] ½·w·Σ_i (ε_i − ε̂_i)² with a stored ε: the reference's math as eager PyTorch code
    writes it."""
    dtype = compute_dtype(eps_hat, weight)
    error = (eps.to(dtype) - eps_hat.to(dtype)).flatten(1)
    return 0.5 * weight.to(dtype) * (error * error).sum(1)


def eager_diffuse(x, gamma):
    return diffuse_torch_noise(x, gamma)[0]


def eager_diffusion_loss(eps_hat, noise_seed, weight, eps):
    return diffusion_loss_stored_noise(eps_hat, weight, eps)


def eager_diffuse_and_loss(x, gamma, weight, scale):
    z_t, eps = diffuse_torch_noise(x, gamma)
    return diffusion_loss_stored_noise(z_t * scale, weight, eps)


EAGER = {DIFFUSE: eager_diffuse, LOSS: eager_diffusion_loss, PAIR: eager_diffuse_and_loss}


# --------------------------------------------------------------------------------------
# The public ops, and the reference with fastvae's noise (what every provider is checked against)
# --------------------------------------------------------------------------------------


def public_diffuse(x, gamma):
    return fastvae.diffuse(x, gamma).z_t


def public_diffusion_loss(eps_hat, noise_seed, weight, eps):
    return fastvae.diffusion_loss(eps_hat, noise_seed, weight)


def public_diffuse_and_loss(x, gamma, weight, scale):
    z_t, noise_seed = fastvae.diffuse(x, gamma)
    return fastvae.diffusion_loss(z_t * scale, noise_seed, weight)


PUBLIC = {DIFFUSE: public_diffuse, LOSS: public_diffusion_loss, PAIR: public_diffuse_and_loss}


def reference_diffuse(x, gamma):
    # The public op draws its seed so, from the same generator: the same ε.
    return reference.diffuse(x, gamma, draw_seed(x.device))


def reference_diffusion_loss(eps_hat, noise_seed, weight, eps):
    return reference.diffusion_loss(eps_hat, noise_seed, weight)


def reference_diffuse_and_loss(x, gamma, weight, scale):
    noise_seed = draw_seed(x.device)
    z_t = reference.diffuse(x, gamma, noise_seed)
    return reference.diffusion_loss(z_t * scale, noise_seed, weight)


REFERENCE = {DIFFUSE: reference_diffuse, LOSS: reference_diffusion_loss, PAIR: reference_diffuse_and_loss}


# --------------------------------------------------------------------------------------
# Which backends have a diffusion kernel
# --------------------------------------------------------------------------------------


class FastvaeOpRecorder(TorchDispatchMode):
    """Records the ``torch.ops.fastvae`` custom ops that run while it is active (under a
    dispatch mode the public ops go through torch.library's dispatch, so it sees them)."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastvae":
            self.ops.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def custom_ops_of(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """The fastvae custom ops that one forward and backward of the public ``op`` runs on a
    small input of ``device`` and ``dtype`` with ``backend`` chosen, sorted: none where the
    backend has no kernel for it (the public op then runs the torch reference)."""
    x = torch.randn(2, 8, device=device).to(dtype).requires_grad_()
    gamma = torch.full((2,), -1.0, device=device).to(dtype).requires_grad_()
    recorder = FastvaeOpRecorder()
    with fastvae.use_backend(backend), recorder:
        if op == DIFFUSE:
            outputs = fastvae.diffuse(x, gamma).z_t
        else:
            outputs = fastvae.diffusion_loss(x, draw_seed(device), gamma)
        torch.autograd.grad(outputs.sum(), (x, gamma))
    return sorted(recorder.ops)


def require_fused(case_op: str, provider: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """For a kernel provider other than ``torch``: the fastvae custom ops the case's public
    ops run, or :class:`common.ProviderSkipped` naming each op that has no kernel for the
    backend (it would time the torch reference under the backend's name)."""
    ops, missing = set(), []
    for op in PUBLIC_OPS[case_op]:
        ran = custom_ops_of(op, provider, device, dtype)
        ops.update(ran)
        if not ran:
            missing.append(f"fastvae.{op}")
    if missing:
        raise common.ProviderSkipped(f"{' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no "
                                     f"{provider} kernel in this fastvae yet (the torch reference runs instead)")
    return sorted(ops)


# --------------------------------------------------------------------------------------
# The op cases
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One size and dtype of one op case."""

    op: str
    batch: int
    dim: int
    dtype: torch.dtype

    @property
    def shape(self) -> str:
        return f"{self.batch}x{self.dim}"

    @property
    def elements(self) -> int:
        return self.batch * self.dim

    @property
    def label(self) -> str:
        return f"{self.op} {self.shape} {common.dtype_name(self.dtype)}"

    def min_bytes(self, mode: str) -> Optional[int]:
        return MIN_BYTES[self.op](self.batch, self.dim, self.dtype, mode) if self.op in MIN_BYTES else None


def build_forward(case: Case, provider: str, device: torch.device, compile_backend: str = "inductor") -> common.Forward:
    """The case's tensors → its outputs as a tuple, for ``provider``, as timed: the public
    ops (the caller makes the backend current; skipped where the backend has no kernel),
    or the eager math with torch's noise, or torch.compile of it."""
    if provider in BASELINES:
        function = EAGER[case.op]
        if provider == "compile":
            function = torch.compile(function, dynamic=False, backend=compile_backend)
    else:
        if provider != "torch":
            require_fused(case.op, provider, device, case.dtype)
        function = PUBLIC[case.op]
    return lambda *tensors: common.as_tuple(function(*tensors))


def build_check(case: Case, provider: str, device: torch.device, compile_backend: str = "inductor") -> common.Forward:
    """The forward whose outputs are checked: the timed one for the kernel providers, the
    reference with fastvae's noise for the baselines (so every provider is compared on the
    same ε, from the same seed)."""
    if provider not in BASELINES:
        return build_forward(case, provider, device, compile_backend)
    function = REFERENCE[case.op]
    return lambda *tensors: common.as_tuple(function(*tensors))


def random_gamma(batch: int, device: torch.device) -> torch.Tensor:
    """γ(t) of the linear schedule at t ~ U(0, 1): from −13.3 (almost data) to 5 (almost noise)."""
    return GAMMA_MIN + GAMMA_SLOPE * torch.rand(batch, device=device)


def make_input_set(case: Case, device: torch.device) -> common.InputSet:
    """One input set: random values, never zeros (METHOD.md); what requires grad is what
    would in training (a learned schedule's γ and w, the denoiser's ε̂ and scale)."""
    batch, dim, dtype = case.batch, case.dim, case.dtype
    grad_loss = torch.randn(batch, device=device)
    if case.op == DIFFUSE:
        x = (2.0 * torch.rand(batch, dim, device=device) - 1.0).to(dtype).requires_grad_()
        gamma = random_gamma(batch, device).to(dtype).requires_grad_()
        grad_z = torch.randn(batch, dim, device=device).to(dtype)
        return common.InputSet(args=(x, gamma), wrt=(x, gamma), grad_outputs=(grad_z,))
    weight = (GAMMA_SLOPE * (0.5 + torch.rand(batch, device=device))).to(dtype).requires_grad_()
    if case.op == LOSS:
        noise_seed = draw_seed(device)
        # The ε a user's diffuse stored (randn_like(x): x's dtype); fastvae's own, so that
        # the eager math computes the same loss as the public op.
        eps = reference.noise(noise_seed, (batch, dim)).to(dtype)
        eps_hat = (eps.float() + 0.5 * torch.randn(batch, dim, device=device)).to(dtype).requires_grad_()
        return common.InputSet(args=(eps_hat, noise_seed, weight, eps), wrt=(eps_hat, weight),
                               grad_outputs=(grad_loss,))
    x = (2.0 * torch.rand(batch, dim, device=device) - 1.0).to(dtype)  # data: no gradient
    gamma = random_gamma(batch, device).to(dtype).requires_grad_()
    scale = (1.0 + 0.1 * torch.randn(dim, device=device)).to(dtype).requires_grad_()
    return common.InputSet(args=(x, gamma, weight, scale), wrt=(gamma, weight, scale), grad_outputs=(grad_loss,))


def base_record(case: Case, mode: str, provider: str) -> dict:
    min_bytes = case.min_bytes(mode) if mode != STEP_MODE else None
    return {
        "op": case.op, "shape": case.shape, "batch": case.batch, "dim": case.dim,
        "dtype": common.dtype_name(case.dtype), "mode": mode, "provider": provider, "elements": case.elements,
        "min_bytes": min_bytes, "bytes_per_element": None if min_bytes is None else min_bytes / case.elements,
        **common.measurement_fields(),
    }


def bench_group(case: Case, providers, modes, copy_gbps, device, args) -> list[dict]:
    """All providers and modes of one op case, on shared inputs."""
    return common.bench_case(
        label=case.label,
        providers=providers,
        modes=modes,
        make_records=lambda provider: [base_record(case, mode, provider) for mode in modes],
        # Looked up at call time, so a test can replace build_forward.
        build=lambda provider: build_forward(case, provider, device, args.compile_backend),
        build_check=lambda provider: build_check(case, provider, device, args.compile_backend),
        make_input_set=lambda: make_input_set(case, device),
        footprint_bytes=case.min_bytes("fwd+bwd"),
        copy_gbps=copy_gbps,
        device=device,
        args=args,
    )


# --------------------------------------------------------------------------------------
# The training step
# --------------------------------------------------------------------------------------


class MLPDenoiser(nn.Module):
    """ε̂(z_t, γ): an MLP on [z_t, t] with t = (γ − γ_min)/(γ_max − γ_min), D + 1 →
    512 → 512 → D, SiLU (a small stand-in for a diffusion decoder's denoiser)."""

    def __init__(self, dim: int, hidden: int = DENOISER_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, z_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        t = ((gamma - GAMMA_MIN) / GAMMA_SLOPE).to(z_t.dtype)
        return self.net(torch.cat([z_t, t.unsqueeze(1)], dim=1))


def schedule(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """γ(t) and its weight γ'(t) = 18.3 at t ~ U(0, 1), one per row (drawn first, so every
    provider's step draws the same t)."""
    gamma = random_gamma(batch, device)
    return gamma, torch.full_like(gamma, GAMMA_SLOPE)


def fused_step_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The step's loss with the public ops: batch mean of ½·γ'(t)·‖ε − ε̂‖²."""
    gamma, weight = schedule(x.shape[0], x.device)
    z_t, noise_seed = fastvae.diffuse(x, gamma)
    return fastvae.diffusion_loss(model(z_t, gamma), noise_seed, weight, reduction="mean")


def eager_step_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same loss as eager PyTorch code writes it: ε from torch.randn, kept for the loss."""
    gamma, weight = schedule(x.shape[0], x.device)
    z_t, eps = diffuse_torch_noise(x, gamma)
    return diffusion_loss_stored_noise(model(z_t, gamma), weight, eps).mean()


def reference_step_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same loss with the reference and fastvae's noise: what every provider is checked against."""
    gamma, weight = schedule(x.shape[0], x.device)
    noise_seed = draw_seed(x.device)
    z_t = reference.diffuse(x, gamma, noise_seed)
    return reference.diffusion_loss(model(z_t, gamma), noise_seed, weight).mean()


def new_denoiser(dim: int, device: torch.device) -> nn.Module:
    torch.manual_seed(MODEL_SEED)
    return MLPDenoiser(dim).to(device)


def autocast_scope(device: torch.device, dtype: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def make_step_data(batch: int, dim: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Binary data scaled to {−1, 1} (p = 0.13 of 1, MNIST's mean), float32."""
    return ((torch.rand(batch, dim, generator=generator) < 0.13).float() * 2.0 - 1.0).to(device)


def step_loss_and_gradients(loss_fn: Callable, model: nn.Module, x: torch.Tensor, device: torch.device,
                            dtype: str) -> list[torch.Tensor]:
    """The loss and every parameter's gradient of one forward+backward from CHECK_SEED."""
    torch.manual_seed(common.CHECK_SEED)
    with autocast_scope(device, dtype):
        loss = loss_fn(model, x)
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    return [loss.detach().float().reshape(1)] + [g.detach().float() for g in gradients]


def step_peak_memory_mib(step: Callable, x: torch.Tensor, device: torch.device) -> tuple[Optional[float], float]:
    """(peak allocated during one step (CUDA only), the same beyond what existed before it),
    in MiB; on the CPU from the allocator's events (``common.cpu_allocations``), a step run
    first under the same profiler so the gradients it leaves, freed by the measured step's
    zero_grad, are counted when freed (as bench_train.py)."""
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


def bench_step_provider(record: dict, case: Case, dtype: str, sets: Sequence[torch.Tensor],
                        expected: Sequence[torch.Tensor], device: torch.device, args) -> dict:
    """One provider's training step: checked against the reference, timed, its memory
    counted; a failure sets the record's ``error``, a backend without a kernel its
    ``skipped``."""
    provider = record["provider"]
    label = f"{STEP} {case.shape} {dtype} {provider}"
    if provider == "compile":
        torch._dynamo.reset()
    try:
        with common.backend_scope(provider):
            if provider not in BASELINES and provider != "torch":
                record["fastvae_ops"] = require_fused(STEP, provider, device, case.dtype)
            model = new_denoiser(case.dim, device)
            check_fn = fused_step_loss if provider not in BASELINES else reference_step_loss
            actual = step_loss_and_gradients(check_fn, model, sets[0], device, dtype)
            record["rel_err_vs_eager"] = max(common.relative_error(a, e) for a, e in zip(actual, expected))
            del actual
            if record["rel_err_vs_eager"] > STEP_CHECK_TOLERANCE[dtype]:
                common.log(f"{label}: WARNING relative error vs eager {record['rel_err_vs_eager']:.3g}")
            loss_fn = fused_step_loss if provider not in BASELINES else eager_step_loss
            if provider == "compile":
                loss_fn = torch.compile(loss_fn, dynamic=False, backend=args.compile_backend)
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

            def step(x: torch.Tensor) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                with autocast_scope(device, dtype):
                    loss = loss_fn(model, x)
                loss.backward()
                optimizer.step()
                return loss.detach()

            timing = common.time_calls(lambda i: step(sets[i]), device, rotation=len(sets), warmup=args.warmup,
                                       max_reps=args.reps, min_reps=args.min_reps, budget_ms=args.budget_ms)
            record.update(timing.as_dict())
            record["steps_per_s"] = 1e3 / timing.median_ms
            record["samples_per_s"] = case.batch * record["steps_per_s"]
            record["peak_mib"], record["peak_extra_mib"] = step_peak_memory_mib(step, sets[0], device)
            common.log(f"{label}: {timing.median_ms:.4g} ms/step, {record['steps_per_s']:.4g} steps/s")
    except common.ProviderSkipped as reason:
        common.log(f"{label}: skipped: {reason}")
        record["skipped"] = str(reason)
    except Exception as error:  # noqa: BLE001 (an out-of-memory or a failed compile must not end the run)
        common.log(f"{label}: FAILED\n{traceback.format_exc()}")
        record["error"] = common.error_text(error)
    finally:
        if provider == "compile":
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def bench_step(case: Case, providers: Sequence[str], device: torch.device, args) -> list[dict]:
    """Every provider's training step on one (size, dtype), on shared data batches; the
    step's dtype is float32 or bfloat16 autocast of the forward (the data and weights stay
    float32)."""
    dtype = common.dtype_name(case.dtype)
    if dtype not in STEP_CHECK_TOLERANCE:
        common.log(f"{STEP} {case.shape}: dtype {dtype} is not a step dtype (float32, bfloat16 autocast); not run")
        return []
    generator = torch.Generator().manual_seed(DATA_SEED)
    first = make_step_data(case.batch, case.dim, device, generator)
    count = min(MAX_STEP_INPUT_SETS, common.rotation_sets(first.numel() * first.element_size(), device,
                                                          max_calls=args.warmup + 1 + args.reps))
    sets = [first] + [make_step_data(case.batch, case.dim, device, generator) for _ in range(count - 1)]
    expected = step_loss_and_gradients(reference_step_loss, new_denoiser(case.dim, device), first, device, dtype)
    records = []
    for provider in providers:
        record = dict(base_record(case, STEP_MODE, provider), steps_per_s=None, samples_per_s=None, peak_mib=None,
                      fastvae_ops=None, min_ms=None, p20_ms=None, p80_ms=None, reps=None, rotation_sets=None)
        records.append(bench_step_provider(record, case, dtype, sets, expected, device, args))
    del sets, expected
    return records


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _dtype_rank(name: str) -> tuple[int, str]:
    names = list(common.DTYPES)
    return (names.index(name) if name in names else len(names), name)


def sort_records(records: list[dict], providers: Sequence[str]) -> list[dict]:
    """Order: op, size, dtype, mode, then eager, compile and the kernel providers."""
    provider_order = list(BASELINES) + [p for p in providers if p not in BASELINES]
    mode_order = list(MODES) + [STEP_MODE]

    def key(record):
        provider = record["provider"]
        return (
            OPS.index(record["op"]) if record["op"] in OPS else len(OPS),
            record["elements"], record["shape"], _dtype_rank(record["dtype"]),
            mode_order.index(record["mode"]) if record["mode"] in mode_order else len(mode_order),
            provider_order.index(provider) if provider in provider_order else len(provider_order), provider,
        )

    return sorted(records, key=key)


def _time_cell(record: dict):
    if record["error"]:
        return "error"
    return "skipped" if record.get("skipped") else record["median_ms"]


OP_COLUMNS = [
    ("op", lambda r: r["op"]),
    ("B×D", lambda r: r["shape"]),
    ("dtype", lambda r: r["dtype"]),
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

STEP_COLUMNS = [
    ("B×D", lambda r: r["shape"]),
    ("dtype", lambda r: r["dtype"]),
    ("provider", lambda r: r["provider"]),
    ("median ms", _time_cell),
    ("steps/s", lambda r: r.get("steps_per_s")),
    ("samples/s", lambda r: r.get("samples_per_s")),
    ("peak MiB", lambda r: r.get("peak_mib")),
    ("step MiB", lambda r: r["peak_extra_mib"]),
    ("step MiB / eager's", lambda r: r.get("peak_extra_vs_eager")),
    ("× eager", lambda r: r.get("speedup_vs_eager")),
    ("× compile", lambda r: r.get("speedup_vs_compile")),
    ("rel err", lambda r: r["rel_err_vs_eager"]),
]


def load_average() -> Optional[list[float]]:
    """The 1-, 5- and 15-minute load averages (None where the system does not say)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def markdown_report(payload: dict) -> str:
    """The run's metadata, the op results and the training steps, as markdown."""
    records, meta = payload["records"], payload["metadata"]
    lines = common.report_header("fastvae diffusion benchmark", payload)
    for run in meta.get("previous_runs", []) + [meta]:
        if run.get("load_average_start") is not None:
            lines.append(f"- load average (1, 5, 15 min) of `{run['command']}`: {run['load_average_start']} at its "
                         f"start, {run.get('load_average_end')} at its end, on {meta['device'].get('logical_cpus')} "
                         f"logical CPUs")
    lines += [
        "- extra / eager's = peak extra memory over eager's, same case. eager and compile: the reference's math with "
        "ε from torch.randn, stored for the loss (diffusion_loss alone reads that stored ε); checked, like every "
        "provider, against the reference with fastvae's noise from the same seed. diffuse_and_loss: diffuse → "
        "ε̂ = z_t·scale → diffusion_loss, γ, w and the scale requiring grad, x data.",
        f"- step: zero_grad, forward, backward and Adam of an MLP denoiser ε̂(z_t, γ) (D + 1 → {DENOISER_HIDDEN} → "
        f"{DENOISER_HIDDEN} → D, SiLU), loss = batch mean of ½·γ'(t)·‖ε − ε̂‖² at t ~ U(0, 1), "
        f"γ(t) = {GAMMA_MIN:g} + {GAMMA_SLOPE:g}·t; step MiB = peak memory of a step beyond what existed before it, "
        "peak MiB the total (CUDA only); bfloat16 = the forward under torch.autocast.",
    ]
    op_records = [r for r in records if r["mode"] != STEP_MODE]
    step_records = [r for r in records if r["mode"] == STEP_MODE]
    if op_records:
        lines += ["", "## The ops", "", common.markdown_table(op_records, OP_COLUMNS)]
    if step_records:
        lines += ["", "## The training step", "", common.markdown_table(step_records, STEP_COLUMNS)]
    lines += common.problem_lines(records, lambda r: f"{r['op']} {r['shape']} {r['dtype']} {r['mode']} {r['provider']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_sizes(spec: str) -> dict[str, list[tuple[int, int]]]:
    """``--sizes``: a preset (each case its sizes), or a list of BxD sizes for every case."""
    if spec in SIZE_PRESETS:
        return {op: list(sizes) for op, sizes in SIZE_PRESETS[spec].items()}
    shapes = common.parse_shapes(spec, {})
    bad = [shape for shape in shapes if len(shape) != 2]
    if bad:
        raise SystemExit(f"--sizes: {'x'.join(map(str, bad[0]))}: the diffusion cases run on [B, D] data: give BxD "
                         f"sizes or a preset {list(SIZE_PRESETS)}")
    return {op: list(shapes) for op in OPS}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time fastvae's diffuse and diffusion_loss (fwd, bwd, fwd+bwd), the pair as a training step "
        "chains it, and a whole training step of an MLP denoiser, against eager PyTorch and torch.compile of the "
        "reference's math.",
    )
    common.add_common_arguments(
        parser, BENCHMARK, SIZE_PRESETS,
        "a list of BxD sizes for every case, such as 4096x784,65536x784 (presets: default, tiny, cpu)", list(OPS),
    )
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compile provider (default: inductor)")
    args = parser.parse_args(argv)
    common.check_common_arguments(parser, args)
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Measure everything ``args`` asks for; returns the payload written to JSON."""
    device = common.parse_device(args.device)
    sizes = parse_sizes(args.sizes)
    dtypes = common.parse_dtypes(args.dtypes)
    ops = common.parse_list(args.ops, list(OPS), "op")
    modes = common.parse_list(args.modes, MODES, "mode")
    providers = common.run_providers(args.providers, device)
    out_path = args.out or common.default_results_path(BENCHMARK, device, common.sizes_tag(args.sizes, SIZE_PRESETS))
    metadata, copy = common.start_run(device, argv, "bench/bench_diffusion.py", providers, args.copy_mib)
    metadata["compile_backend"] = args.compile_backend
    metadata["load_average_start"] = load_average()

    torch.manual_seed(INPUT_SEED)
    records = []
    for op in ops:
        for batch, dim in sizes[op]:
            for dtype in dtypes:
                case = Case(op, batch, dim, dtype)
                if op == STEP:
                    records += bench_step(case, providers, device, args)
                    continue
                case_modes = [mode for mode in modes if op != PAIR or mode in PAIR_MODES]
                if not case_modes:
                    common.log(f"{op}: timed {list(PAIR_MODES)} only, not in --modes {args.modes}; not measured")
                    continue
                records += bench_group(case, providers, case_modes, copy["gbps"], device, args)
    metadata["load_average_end"] = load_average()

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
