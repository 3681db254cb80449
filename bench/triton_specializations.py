"""Every Triton kernel specialization fastvae's ops launch, captured from the real launch
path and compiled ahead of time for the GPUs (sm_90a, sm_80) without one.

Triton's interpreter (how the kernels run on a CPU) accepts code the GPU compiler
rejects, and says nothing of registers or spills.  This module:

* **captures** (:func:`capture`): while it is active, every launch ``kernel[grid](...)``
  of a kernel in ``fastvae.kernels`` is intercepted (``run`` of Triton's
  ``InterpretedFunction`` and ``JITFunction``, the method ``__getitem__``'s launcher
  calls) and turned into the specialization Triton's JIT would compile for a CUDA GPU,
  by Triton's own binder for the CUDA backend (``create_function_from_signature`` and
  ``JITFunction._pack_args``): pointer element types, a None argument as a constexpr
  None, integers as i32 or i64 by value, an integer equal to 1 as the constexpr 1,
  ``tt.divisibility`` 16 for pointers and integers divisible by 16, floats as fp32,
  constexpr values, num_warps and num_stages.  The kernel itself is not run (its outputs
  stay uninitialised), so the capture is fast at any size.  Launchers whose choices
  depend on the device (a function of ``fastvae.kernels`` with a ``device`` parameter,
  e.g. the mixture's tile) are called as on a CUDA device.
* **drives** the ops (:func:`op_matrix`, :func:`benchmark_cases`): every Triton-backed
  public op × float32 / bfloat16 / float16 × every option that changes a kernel, forward
  and backward, plus the benchmarks' default sizes.
* **compiles** (:func:`compile_all`) each unique specialization with
  ``triton.compiler.compile`` for a ``GPUTarget``, in worker processes without the
  interpreter, and reads registers, spills and stack from the ptxas log of that very
  compile (ptxas ``-v``, which Triton runs; ``knobs.nvidia.dump_ptxas_log`` prints it),
  shared memory from the kernel's metadata.

tests/test_triton_aot.py compiles everything in CI; bench/kernel_resources.py writes the
resource table.  bench/ is a folder of scripts: import this file by path or with bench/
on ``sys.path``.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import io
import itertools
import json
import os
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNEL_DIR = REPO_ROOT / "kernels"
KERNEL_PACKAGE = "fastvae.kernels"
# (name, compute capability): the GPUs the kernels are compiled for.  Triton compiles
# capability 90 as sm_90a.
ARCHS = (("sm_90a", 90), ("sm_80", 80))
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------
# Specializations
# --------------------------------------------------------------------------------------


def _plain(value):
    """A constexpr value as JSON keeps it."""
    value = getattr(value, "value", value)  # tl.constexpr
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class Specialization:
    """One compiled variant of a kernel, as Triton's JIT keys it for a CUDA GPU.

    ``signature`` maps every argument name to its Triton type ("*bf16", "i32", "fp32",
    or "constexpr"); ``constexprs`` the constexpr arguments (declared ones and those the
    JIT made constexpr: None pointers, integers equal to 1) to their values;
    ``divisible_by_16`` names the pointer and integer arguments Triton marks
    ``tt.divisibility`` 16."""

    kernel: str  # "<module under fastvae.kernels>.<function>", e.g. "latent.gaussian_latent_fwd_kernel"
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible_by_16: tuple[str, ...]
    num_warps: int
    num_stages: int

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "signature": dict(self.signature), "constexprs": dict(self.constexprs),
                "divisible_by_16": list(self.divisible_by_16), "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    @classmethod
    def from_json(cls, data: dict) -> "Specialization":
        return cls(data["kernel"], tuple(data["signature"].items()), tuple(data["constexprs"].items()),
                   tuple(data["divisible_by_16"]), data["num_warps"], data["num_stages"])

    @property
    def key(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @property
    def pointer_types(self) -> dict[str, str]:
        return {name: ty[1:] for name, ty in self.signature if ty.startswith("*")}

    @property
    def declared_constexprs(self) -> dict[str, object]:
        """The constexprs the kernel declares (``tl.constexpr`` parameters), by name."""
        declared = set(_declared_constexpr_names(self.kernel))
        return {name: value for name, value in self.constexprs if name in declared}

    def describe(self) -> str:
        """One line naming the kernel and everything that specializes it."""
        consts = ", ".join(f"{k}={v}" for k, v in self.constexprs)
        types = ", ".join(f"{k}: {t}" for k, t in self.signature if t != "constexpr")
        return (f"{self.kernel}[num_warps={self.num_warps}, num_stages={self.num_stages}]"
                f"({types}; {consts}; divisible by 16: {', '.join(self.divisible_by_16) or '-'})")


@functools.lru_cache(maxsize=None)
def _declared_constexpr_names(kernel: str) -> tuple[str, ...]:
    module_name, function_name = kernel.split(".")
    tree = ast.parse((KERNEL_DIR / f"{module_name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function_name:
            return tuple(a.arg for a in node.args.args
                         if a.annotation is not None and "constexpr" in ast.unparse(a.annotation))
    raise KeyError(kernel)


# --------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _cuda_backend():
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    return make_backend(GPUTarget("cuda", ARCHS[0][1], 32))


@functools.lru_cache(maxsize=None)
def _binder(python_fn):
    """(JITFunction, binder) of a kernel's Python function: the binder Triton's JIT builds
    for the CUDA backend, which maps launch arguments to (bound args, specialization,
    options)."""
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jit_fn = JITFunction(python_fn)
    return jit_fn, create_function_from_signature(jit_fn.signature, jit_fn.params, _cuda_backend())


def specialize(python_fn, args, kwargs) -> Specialization:
    """The specialization Triton's JIT compiles for a CUDA GPU for the launch
    ``kernel[grid](*args, **kwargs)`` (what ``JITFunction.run`` computes before it
    compiles)."""
    from triton import knobs

    jit_fn, binder = _binder(python_fn)
    backend = _cuda_backend()
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", False) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_fn._pack_args(backend, kwargs, bound_args, specialization, options)
    names = jit_fn.arg_names
    divisible = []
    for path, attributes in attrs.items():
        if ["tt.divisibility", 16] in [list(a) for a in attributes]:
            divisible.append(names[path[0]])
    module = python_fn.__module__.rsplit(".", 1)[-1]
    return Specialization(
        kernel=f"{module}.{python_fn.__name__}",
        signature=tuple(signature.items()),
        constexprs=tuple((names[path[0]], _plain(value)) for path, value in sorted(constexprs.items())),
        divisible_by_16=tuple(sorted(divisible, key=names.index)),
        num_warps=options.num_warps,
        num_stages=options.num_stages,
    )


@dataclass
class Recorder:
    """The launches seen inside :func:`capture`: each specialization with the labels of
    the cases that launched it (``label`` is set by the caller around each case)."""

    specializations: dict[str, Specialization] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)
    label: str = ""
    errors: dict[str, str] = field(default_factory=dict)  # case label → the error its call raised

    def record(self, spec: Specialization) -> None:
        self.specializations.setdefault(spec.key, spec)
        self.labels.setdefault(spec.key, set()).add(self.label)


def _kernel_modules():
    return [importlib.import_module(f"{KERNEL_PACKAGE}.{path.stem}")
            for path in sorted(KERNEL_DIR.glob("*.py")) if path.stem != "__init__"]


def device_dependent_functions() -> list[tuple[object, str]]:
    """(module, name) of each function in ``fastvae.kernels`` that takes a ``device``:
    launcher helpers whose choice depends on where the tensors are, which
    :func:`capture` calls as on a CUDA device."""
    found = []
    for module in _kernel_modules():
        for name, value in vars(module).items():
            if inspect.isfunction(value) and value.__module__ == module.__name__:
                if "device" in inspect.signature(value).parameters:
                    found.append((module, name))
    return found


@contextlib.contextmanager
def capture(execute: bool = False):
    """Record every kernel launch of ``fastvae.kernels`` as its CUDA specialization.

    The kernels are not run unless ``execute`` (their outputs are then uninitialised,
    which only the numbers, not the launches, depend on); value checks are off, since
    they would read those numbers."""
    import fastvae
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    recorder = Recorder()
    originals = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def make_run(original):
        def run(self, *args, grid, warmup, **kwargs):
            if not warmup and getattr(self.fn, "__module__", "").startswith(KERNEL_PACKAGE + "."):
                recorder.record(specialize(self.fn, args, kwargs))
                if not execute:
                    return None
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

        return run

    def as_on_cuda(function):
        parameter = list(inspect.signature(function).parameters).index("device")

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            args = list(args)
            if "device" in kwargs:
                kwargs["device"] = torch.device("cuda")
            elif len(args) > parameter:
                args[parameter] = torch.device("cuda")
            return function(*args, **kwargs)

        return wrapper

    patched = [(module, name, getattr(module, name)) for module, name in device_dependent_functions()]
    validate = fastvae.validate_args_enabled()
    try:
        for cls, original in originals.items():
            cls.run = make_run(original)
        for module, name, function in patched:
            setattr(module, name, as_on_cuda(function))
        fastvae.set_validate_args(False)
        with fastvae.use_backend("triton"):
            yield recorder
    finally:
        for cls, original in originals.items():
            cls.run = original
        for module, name, function in patched:
            setattr(module, name, function)
        fastvae.set_validate_args(validate)


def launched_kernels() -> set[str]:
    """Every kernel a launcher in kernels/*.py launches (``name[grid](...)``), as
    "<module>.<function>"."""
    launched = set()
    for path in sorted(KERNEL_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        jitted = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                  and any("jit" in ast.unparse(d) for d in node.decorator_list)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in jitted):
                launched.add(f"{path.stem}.{node.func.value.id}")
    return launched


def device_reads_outside_device_functions() -> list[str]:
    """Places in kernels/*.py that read a tensor's device kind (``.type``, ``.is_cuda``)
    outside a function with a ``device`` parameter: choices :func:`capture` would not see
    as on a GPU.  Empty while every such choice goes through a ``device`` parameter."""
    found = []
    for path in sorted(KERNEL_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            if any(a.arg == "device" for a in function.args.args + function.args.kwonlyargs):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and node.attr in ("is_cuda", "type") \
                        and "device" in ast.unparse(node.value):
                    found.append(f"{path.name}:{node.lineno} in {function.name}: {ast.unparse(node)}")
    return found


# --------------------------------------------------------------------------------------
# The op matrix
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One op call (forward, and backward where ``run`` asks for it)."""

    label: str
    run: Callable[[], None]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _device() -> torch.device:
    """Where the ops run in a capture: a GPU if there is one, else the CPU (Triton's
    interpreter must then have been chosen before fastvae's kernels were imported)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _new(shape, dtype, grad=False, lazy=False):
    """An input: zeros, or uninitialised (``lazy``: pages never touched, for the
    benchmarks' sizes; the kernels are not run in a capture)."""
    tensor = torch.empty(shape, dtype=dtype, device=_device()) if lazy else torch.zeros(shape, dtype=dtype,
                                                                                        device=_device())
    return tensor.requires_grad_(grad)


def _backward(outputs, inputs, lazy=False):
    """Differentiate the outputs given (each with an incoming gradient) in the inputs that
    require grad."""
    outputs = [o for o in outputs if o is not None]
    inputs = [i for i in inputs if i is not None and i.requires_grad]
    if not outputs or not inputs:
        return
    grads = [torch.empty_like(o) if lazy else torch.ones_like(o) for o in outputs]
    torch.autograd.grad(outputs, inputs, grads, allow_unused=True)


# Which outputs of a two- or three-output op get an incoming gradient.
_GRAD_SUBSETS = {
    2: {"fwd": (), "bwd(all)": (0, 1), "bwd(out0)": (0,), "bwd(out1)": (1,)},
    3: {"fwd": (), "bwd(all)": (0, 1, 2), "bwd(out0)": (0,), "bwd(out1)": (1,), "bwd(out2)": (2,)},
}

# The matrix varies every option that changes a kernel (its constexprs, its pointer
# types, the constexpr 1 Triton makes of an integer argument) over one input shape per
# op, chosen so that every integer is a multiple of 16 as in most real calls; the
# benchmarks' sizes (benchmark_cases) add their own block sizes.  A full product of
# every option with several shapes gave some 4,500 specializations, hours of compiling.
# So: options known not to change a kernel are left out (the reductions 'sum' and
# 'mean' run the kernels of 'batch'), a few are taken at one value of another (the
# categorical priors at C = 1000); the product of the rest is taken in float32, and
# bfloat16 and float16 (which change only the loads, stores and pointer types) take a
# subset of each option's values (``_options``), every op and kernel included.


def _options(dtype, every, some):
    """The values of one option to combine with ``dtype``: ``every`` in float32, ``some``
    (a subset) in the 16-bit dtypes."""
    return every if dtype == torch.float32 else some


def _latent_prior(kind: str, shape, dtype, prior_dtype=None):
    """(prior_mu, prior_logvar) of an image latent [B, C, H, W]: none, per channel
    (``bcast``) or full-size, requiring grad as the kind says (``-grad-mu``,
    ``-grad-both``); ``mu-only`` gives a prior mean alone."""
    if kind == "none":
        return None, None
    prior_shape = tuple(shape) if kind.startswith("full") else (1, shape[1], 1, 1)
    wanted = kind.split("-grad-")[1] if "-grad-" in kind else ""
    pdtype = prior_dtype or dtype
    prior_mu = _new(prior_shape, pdtype, grad=wanted in ("mu", "both"))
    if kind == "mu-only":
        return prior_mu, None
    return prior_mu, _new(prior_shape, pdtype, grad=wanted in ("logvar", "both"))


LATENT_SHAPE = (16, 4, 8, 8)
LATENT_PRIORS = ("none", "mu-only", "bcast", "bcast-grad-mu", "bcast-grad-both", "full-grad-both")
# (reduction, free_bits): KL per element, per sample, and per element for free bits.
KL_OPTIONS = (("none", 0.0), ("batch", 0.0), ("batch", 0.5))


def _latent_cases() -> Iterable[Case]:
    import fastvae

    shape = LATENT_SHAPE
    for dtype in DTYPES:
        d = _dtype_name(dtype)
        for mode in ("fwd", "bwd"):
            def run(dtype=dtype, mode=mode):
                mu, logvar = _new(shape, dtype, mode == "bwd"), _new(shape, dtype, mode == "bwd")
                _backward([fastvae.reparameterize(mu, logvar)], [mu, logvar])
            yield Case(f"reparameterize {d} {mode}", run)
        prior_options = [(p, None) for p in _options(dtype, LATENT_PRIORS, ("none", "bcast-grad-mu", "full-grad-both"))]
        if dtype != torch.float32:  # a float32 learned prior under autocast
            prior_options.append(("bcast-grad-both", torch.float32))
        for (prior, prior_dtype), (reduction, free_bits) in itertools.product(
                prior_options, _options(dtype, KL_OPTIONS, KL_OPTIONS[:2])):
            options = f"prior={prior}{' float32' if prior_dtype else ''} reduction={reduction} free_bits={free_bits}"
            for grads in _options(dtype, list(_GRAD_SUBSETS[2]), ["fwd", "bwd(all)"]):
                def run(prior=prior, prior_dtype=prior_dtype, reduction=reduction, free_bits=free_bits,
                        grads=grads, dtype=dtype):
                    mu, logvar = _new(shape, dtype, grads != "fwd"), _new(shape, dtype, grads != "fwd")
                    prior_mu, prior_logvar = _latent_prior(prior, shape, dtype, prior_dtype)
                    z, kl = fastvae.sample_gaussian(mu, logvar, prior_mu, prior_logvar, free_bits=free_bits,
                                                    reduction=reduction)
                    _backward([(z, kl)[i] for i in _GRAD_SUBSETS[2][grads]], [mu, logvar, prior_mu, prior_logvar])
                yield Case(f"sample_gaussian {d} {options} {grads}", run)
            for mode in _options(dtype, ("fwd", "bwd"), ()):
                def run_kl(prior=prior, prior_dtype=prior_dtype, reduction=reduction, free_bits=free_bits,
                           mode=mode, dtype=dtype):
                    mu, logvar = _new(shape, dtype, mode == "bwd"), _new(shape, dtype, mode == "bwd")
                    prior_mu, prior_logvar = _latent_prior(prior, shape, dtype, prior_dtype)
                    kl = fastvae.gaussian_kl(mu, logvar, prior_mu, prior_logvar, free_bits=free_bits,
                                             reduction=reduction)
                    _backward([kl], [mu, logvar, prior_mu, prior_logvar])
                yield Case(f"gaussian_kl {d} {options} {mode}", run_kl)


TRUNCATED_NORMAL_PRIORS = ("none", "mu-only", "bcast-grad-both", "full-grad-both")


def _truncated_normal_cases() -> Iterable[Case]:
    """sample_truncated_normal: each prior kind × per-element or per-sample outputs × the
    gradients flowing into each output (the bounds are fp32 arguments, never constexprs)."""
    import fastvae

    shape = LATENT_SHAPE
    for dtype in DTYPES:
        d = _dtype_name(dtype)
        priors = _options(dtype, TRUNCATED_NORMAL_PRIORS, ("none", "full-grad-both"))
        for prior, reduction in itertools.product(priors, _options(dtype, ("none", "batch"), ("batch",))):
            every_grad = prior in ("none", "bcast-grad-both") and dtype == torch.float32
            for grads in list(_GRAD_SUBSETS[3]) if every_grad else ["fwd", "bwd(all)"]:
                def run(prior=prior, reduction=reduction, grads=grads, dtype=dtype):
                    loc, log_scale = _new(shape, dtype, grads != "fwd"), _new(shape, dtype, grads != "fwd")
                    prior_loc, prior_log_scale = _latent_prior(prior, shape, dtype)
                    outputs = fastvae.sample_truncated_normal(loc, log_scale, -1.0, float("inf"), prior_loc,
                                                              prior_log_scale, reduction=reduction)
                    _backward([outputs[i] for i in _GRAD_SUBSETS[3][grads]], [loc, log_scale, prior_loc,
                                                                               prior_log_scale])
                yield Case(f"sample_truncated_normal {d} prior={prior} reduction={reduction} {grads}", run)


IWAE_SAMPLES = (1, 5)  # K = 1 makes the backward's K argument the constexpr 1
LOG_MEAN_EXP_SAMPLES = (1, 7, 100, 5000)  # BLOCK_K 1, 8, 64 and a loop over K


def _iwae_cases() -> Iterable[Case]:
    import fastvae

    shape = LATENT_SHAPE
    for dtype in DTYPES:
        d = _dtype_name(dtype)
        for num_samples, prior in itertools.product(
                _options(dtype, IWAE_SAMPLES, (5,)), ("none", "bcast", "bcast-grad-both", "full-grad-both")):
            for grads in _options(dtype, list(_GRAD_SUBSETS[3]), ["fwd", "bwd(all)"]):
                def run(num_samples=num_samples, prior=prior, grads=grads, dtype=dtype):
                    mu, logvar = _new(shape, dtype, grads != "fwd"), _new(shape, dtype, grads != "fwd")
                    prior_mu, prior_logvar = _latent_prior(prior, shape, dtype)
                    outputs = fastvae.sample_gaussian_k(mu, logvar, num_samples, prior_mu, prior_logvar)
                    _backward([outputs[i] for i in _GRAD_SUBSETS[3][grads]], [mu, logvar, prior_mu, prior_logvar])
                yield Case(f"sample_gaussian_k {d} K={num_samples} prior={prior} {grads}", run)
        for num_samples, (layout, dim), mode in itertools.product(
                _options(dtype, LOG_MEAN_EXP_SAMPLES, (7, 5000)), (("[K,B]", 0), ("[B,K,16]", 1)), ("fwd", "bwd")):
            def run(num_samples=num_samples, layout=layout, dim=dim, mode=mode, dtype=dtype):
                shape = (num_samples, 32) if dim == 0 else (16, num_samples, 16)
                x = _new(shape, dtype, mode == "bwd")
                _backward([fastvae.log_mean_exp(x, dim=dim)], [x])
            yield Case(f"log_mean_exp {d} K={num_samples} x={layout} dim={dim} {mode}", run)
        for num_samples, grads in itertools.product(_options(dtype, LOG_MEAN_EXP_SAMPLES, (7,)), _options(dtype, (
                (False, False, False), (True, True, True), (True, False, False), (False, False, True)),
                ((False, False, False), (True, True, True)))):
            def run(num_samples=num_samples, grads=grads, dtype=dtype):
                inputs = [_new((num_samples, 32), dtype, g) for g in grads]
                _backward([fastvae.iwae_bound(*inputs)], inputs)
            flows = ",".join(n for n, g in zip(("log_px_z", "log_p", "log_q"), grads) if g) or "none"
            yield Case(f"iwae_bound {d} K={num_samples} grad into {flows}", run)


# BLOCK_C from 1 to 65536 (and num_warps 4, 8, 16), odd and power-of-two C.
CATEGORIES = (1, 3, 10, 100, 1000, 4096, 16384, 65536)
CATEGORICAL_PRIORS = ("none", "bcast", "bcast-grad", "full-grad", "bcast-float32-grad")


def _categorical_case(dtype, categories, hard, prior, grads) -> Case:
    import fastvae

    def run():
        shape = (16, 4, categories) if categories <= 4096 else (2, categories)
        logits = _new(shape, dtype, grads != "fwd")
        prior_logits = None
        if prior != "none":
            pdtype = torch.float32 if "float32" in prior else dtype
            prior_shape = shape if prior.startswith("full") else (categories,)
            prior_logits = _new(prior_shape, pdtype, prior.endswith("grad"))
        z, kl = fastvae.sample_categorical(logits, 0.5, hard=hard, prior_logits=prior_logits)
        _backward([(z, kl)[i] for i in _GRAD_SUBSETS[2][grads]], [logits, prior_logits])
    return Case(f"sample_categorical {_dtype_name(dtype)} C={categories} hard={hard} prior={prior} {grads}", run)


def _discrete_cases() -> Iterable[Case]:
    for dtype in DTYPES:
        # Soft and hard, no prior, forward and backward, at every C (in float32).
        for categories, hard, grads in itertools.product(
                _options(dtype, CATEGORIES, (3, 1000, 65536)), (False, True), ("fwd", "bwd(all)")):
            yield _categorical_case(dtype, categories, hard, "none", grads)
        # Every prior and gradient, at one C.
        for categories, prior, grads in itertools.product(
                (1000,), CATEGORICAL_PRIORS, _GRAD_SUBSETS[2]):
            if not (prior == "bcast-float32-grad" and dtype == torch.float32):
                yield _categorical_case(dtype, categories, False, prior, grads)


def _likelihood_cases() -> Iterable[Case]:
    import fastvae

    shape = (16, 3, 8, 8)
    for dtype, reduction in itertools.product(DTYPES, ("none", "batch")):
        d = _dtype_name(dtype)
        for op, x_kind, grads in itertools.product(
                ("bernoulli_nll", "continuous_bernoulli_nll"),
                _options(dtype, ("same", "uint8", "bool"), ("same", "float32", "uint8")),
                _options(dtype, ("none", "logits", "x", "both"), ("none", "both"))):
            if grads in ("x", "both") and x_kind in ("uint8", "bool"):
                continue  # integer x takes no gradient
            if x_kind == "float32" and dtype == torch.float32:
                continue
            if dtype != torch.float32 and op == "continuous_bernoulli_nll" and x_kind != "same":
                continue

            def run(op=op, x_kind=x_kind, grads=grads, dtype=dtype, reduction=reduction):
                logits = _new(shape, dtype, grads in ("logits", "both"))
                x_dtype = {"same": dtype, "float32": torch.float32, "uint8": torch.uint8, "bool": torch.bool}[x_kind]
                x = _new(shape, x_dtype, grads in ("x", "both"))
                _backward([getattr(fastvae, op)(logits, x, reduction=reduction)], [logits, x])
            yield Case(f"{op} {d} x={x_kind} reduction={reduction} grad into {grads}", run)
        for logvar_kind, grads in itertools.product(
                ("number", "bcast", "full", "bcast-float32"),
                _options(dtype, ((False, False, False), (True, False, False), (False, True, False), (True, True, True),
                                 (False, False, True)), ((False, False, False), (True, True, True)))):
            if (logvar_kind == "number" and grads[2]) or (logvar_kind == "bcast-float32" and dtype == torch.float32):
                continue

            def run(logvar_kind=logvar_kind, grads=grads, dtype=dtype, reduction=reduction):
                mean, x = _new(shape, dtype, grads[0]), _new(shape, dtype, grads[1])
                logvar = 0.5
                if logvar_kind != "number":
                    lshape = shape if logvar_kind == "full" else (1, shape[1], 1, 1)
                    logvar = _new(lshape, torch.float32 if "float32" in logvar_kind else dtype, grads[2])
                inputs = [mean, x] + ([logvar] if logvar_kind != "number" else [])
                _backward([fastvae.gaussian_nll(mean, x, logvar, reduction=reduction)], inputs)
            flows = ",".join(n for n, g in zip(("mean", "x", "logvar"), grads) if g) or "none"
            yield Case(f"gaussian_nll {d} logvar={logvar_kind} reduction={reduction} grad into {flows}", run)


def _logistic_cases() -> Iterable[Case]:
    import fastvae

    for dtype, reduction, x_kind in itertools.product(DTYPES, ("none", "batch"), ("float", "uint8")):
        d = _dtype_name(dtype)
        if dtype != torch.float32 and reduction == "none" and x_kind == "float":
            continue
        # num_bins = 2 makes the top level the constexpr 1; a chunk half's rows are
        # twice as far apart (read in place).
        for num_bins, layout, mode in itertools.product(_options(dtype, (2, 256), (256,)), ("contiguous", "chunk"),
                                                        ("fwd", "bwd")):
            def run(num_bins=num_bins, layout=layout, mode=mode, dtype=dtype, reduction=reduction, x_kind=x_kind):
                shape = (16, 3, 8, 8)
                if layout == "chunk":
                    both = _new((16, 6, 8, 8), dtype, mode == "bwd")
                    mean, log_scale = both.chunk(2, dim=1)
                    leaves = [both]
                else:
                    mean, log_scale = _new(shape, dtype, mode == "bwd"), _new(shape, dtype, mode == "bwd")
                    leaves = [mean, log_scale]
                x = _new(shape, torch.uint8 if x_kind == "uint8" else dtype)
                nll = fastvae.discretized_logistic_nll(mean, log_scale, x, num_bins=num_bins, reduction=reduction)
                _backward([nll], leaves)
            yield Case(f"discretized_logistic_nll {d} x={x_kind} num_bins={num_bins} layout={layout} "
                       f"reduction={reduction} {mode}", run)
        # K = 1, 10, 5: BLOCK_K 1, 16, 8.
        for channels, num_mixtures, layout, mode in itertools.product(
                _options(dtype, (1, 3), (3,)), _options(dtype, (1, 10), (5,)), ("contiguous", "channels_last"),
                ("fwd", "bwd")):
            if layout == "channels_last" and (num_mixtures != 10 or reduction != "batch"):
                continue

            def run(channels=channels, num_mixtures=num_mixtures, layout=layout, mode=mode, dtype=dtype,
                    reduction=reduction, x_kind=x_kind):
                params_channels = (3 if channels == 1 else 10) * num_mixtures
                params = _new((16, params_channels, 8, 8), dtype)
                x = _new((16, channels, 8, 8), torch.uint8 if x_kind == "uint8" else dtype)
                if layout == "channels_last":
                    params = params.to(memory_format=torch.channels_last)
                    x = x.to(memory_format=torch.channels_last)
                params.requires_grad_(mode == "bwd")
                nll = fastvae.discretized_logistic_mixture_nll(params, x, num_mixtures, reduction=reduction)
                _backward([nll], [params])
            yield Case(f"discretized_logistic_mixture_nll {d} C={channels} K={num_mixtures} x={x_kind} "
                       f"{layout} reduction={reduction} {mode}", run)


LOCATION_SCALE_FAMILIES = ("laplace", "logistic", "cauchy")
LOCATION_SCALE_PRIORS = ("none", "bcast", "bcast-grad-both", "full-grad-both")


def _location_scale_cases() -> Iterable[Case]:
    import fastvae

    shape = LATENT_SHAPE
    for dtype in DTYPES:
        d = _dtype_name(dtype)
        for family, prior, (reduction, free_bits) in itertools.product(
                LOCATION_SCALE_FAMILIES, _options(dtype, LOCATION_SCALE_PRIORS, ("none", "full-grad-both")),
                _options(dtype, KL_OPTIONS, KL_OPTIONS[:2])):
            if family == "logistic" and free_bits:
                continue  # the logistic's KL is an estimate: no free bits
            if family != "laplace" and prior in ("bcast", "bcast-grad-both"):
                continue  # the families share the prior loads: the Laplace's cases cover them
            sample = getattr(fastvae, f"sample_{family}")
            options = {"reduction": reduction, **({"free_bits": free_bits} if free_bits else {})}
            every_grads = list(_GRAD_SUBSETS[3]) if family == "laplace" else ["fwd", "bwd(all)", "bwd(out0)"]
            for grads in _options(dtype, every_grads, ["fwd", "bwd(all)"]):
                def run(sample=sample, prior=prior, options=options, grads=grads, dtype=dtype):
                    loc, log_scale = _new(shape, dtype, grads != "fwd"), _new(shape, dtype, grads != "fwd")
                    prior_loc, prior_log_scale = _latent_prior(prior, shape, dtype)
                    outputs = sample(loc, log_scale, prior_loc, prior_log_scale, **options)
                    _backward([outputs[i] for i in _GRAD_SUBSETS[3][grads]], [loc, log_scale, prior_loc,
                                                                               prior_log_scale])
                yield Case(f"sample_{family} {d} prior={prior} reduction={reduction} free_bits={free_bits} {grads}",
                           run)


DIFFUSION_SHAPE = (16, 3, 8, 8)
# Which inputs of diffuse (x, γ) and of diffusion_loss (ε̂, w) require grad.
DIFFUSION_GRADS = {"fwd": (), "bwd(all)": (0, 1), "bwd(in0)": (0,), "bwd(in1)": (1,)}


def _diffusion_cases() -> Iterable[Case]:
    """diffuse and diffusion_loss: x and γ of one dtype or γ float32 (z in the promoted
    dtype), each input's gradient asked for or not."""
    import fastvae

    shape = DIFFUSION_SHAPE
    for dtype in DTYPES:
        d = _dtype_name(dtype)
        for gamma_dtype in dict.fromkeys((dtype, torch.float32)):
            for grads in _options(dtype, list(DIFFUSION_GRADS), ["fwd", "bwd(all)"]):
                def run(dtype=dtype, gamma_dtype=gamma_dtype, wanted=DIFFUSION_GRADS[grads]):
                    x, gamma = _new(shape, dtype, 0 in wanted), _new(shape[:1], gamma_dtype, 1 in wanted)
                    z, noise_seed = fastvae.diffuse(x, gamma)
                    _backward([z], [x, gamma])
                    eps_hat, weight = _new(shape, dtype, 0 in wanted), _new(shape[:1], gamma_dtype, 1 in wanted)
                    _backward([fastvae.diffusion_loss(eps_hat, noise_seed, weight)], [eps_hat, weight])
                yield Case(f"diffuse, diffusion_loss {d} gamma/weight {_dtype_name(gamma_dtype)} {grads}", run)


def op_matrix() -> list[Case]:
    """Every Triton-backed public op × dtype × each option that changes a kernel, forward
    and backward (with the gradient flowing into each input or not)."""
    return [*_latent_cases(), *_iwae_cases(), *_discrete_cases(), *_likelihood_cases(), *_logistic_cases(),
            *_location_scale_cases(), *_truncated_normal_cases(), *_diffusion_cases()]


# --------------------------------------------------------------------------------------
# The benchmarks' sizes
# --------------------------------------------------------------------------------------


def _load_bench_script(name: str):
    import importlib.util
    import sys

    module_name = f"fastvae_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


BENCH_DTYPES = (torch.float32, torch.bfloat16)  # what the benchmarks run on a GPU


def benchmark_cases(train: bool = True) -> list[Case]:
    """The ops at the default sizes of bench/bench_latent.py and bench/bench_likelihood.py
    (forward, and backward), in the GPU benchmarks' dtypes; with ``train``, one training
    step (forward and backward) of each model of bench/bench_train.py at its default
    sizes, float32 and bfloat16 autocast.  Labels start ``bench:``.  Inputs are never
    written (the kernels do not run in a capture), so their memory is not touched."""
    import fastvae

    cases = []
    latent = _load_bench_script("bench_latent")
    for (batch, dim), dtype, op in itertools.product(latent.SIZE_PRESETS["default"], BENCH_DTYPES, latent.OPS):
        def run(batch=batch, dim=dim, dtype=dtype, op=op):
            for grad in (False, True):
                mu, logvar = _new((batch, dim), dtype, grad, lazy=True), _new((batch, dim), dtype, grad, lazy=True)
                outputs = latent.OPS[op].public(mu, logvar)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                _backward(list(outputs) if grad else [], [mu, logvar], lazy=True)
        cases.append(Case(f"bench:latent {op} {batch}x{dim} {_dtype_name(dtype)}", run))

    likelihood = _load_bench_script("bench_likelihood")
    for op, sizes in likelihood.SIZE_PRESETS["default"].items():
        for size, dtype in itertools.product(sizes, BENCH_DTYPES):
            x_dtypes = (dtype, torch.uint8) if op == likelihood.MIXTURE else (dtype,)
            for x_dtype in x_dtypes:
                def run(op=op, size=size, dtype=dtype, x_dtype=x_dtype):
                    for grad in (False, True):
                        if op == likelihood.MIXTURE:
                            batch, num_mixtures, channels, height, width = size
                            params_channels = likelihood.mixture_param_channels(num_mixtures, channels)
                            params = _new((batch, params_channels, height, width), dtype, grad, lazy=True)
                            x = _new((batch, channels, height, width), x_dtype, lazy=True)
                            nll = fastvae.discretized_logistic_mixture_nll(params, x, num_mixtures,
                                                                           num_bins=likelihood.NUM_BINS)
                            leaves = [params]
                        else:
                            first = _new(size, dtype, grad, lazy=True)
                            x = _new(size, dtype, lazy=True)
                            if op == likelihood.BERNOULLI:
                                nll = fastvae.bernoulli_nll(first, x)
                            else:
                                nll = fastvae.gaussian_nll(first, x, likelihood.GAUSSIAN_LOGVAR)
                            leaves = [first]
                        _backward([nll] if grad else [], leaves, lazy=True)
                x_name = f" x {_dtype_name(x_dtype)}" if x_dtype != dtype else ""
                cases.append(Case(f"bench:likelihood {op} {'x'.join(map(str, size))} {_dtype_name(dtype)}{x_name}",
                                  run))

    if train:
        bench_train = _load_bench_script("bench_train")
        for (name, batch, side), dtype in itertools.product(bench_train.SIZE_PRESETS["default"],
                                                            ("float32", "bfloat16")):
            def run(name=name, batch=batch, side=side, dtype=dtype):
                case = bench_train.MODELS[name]
                model = bench_train.new_model(case, side, _device())
                x = torch.zeros((batch,) + case.input_shape(side), device=_device())
                with bench_train.autocast_scope(_device(), dtype):
                    loss = model(x).loss
                loss.backward()
            cases.append(Case(f"bench:train {name} {batch}{'' if side is None else f' {side}x{side}'} {dtype}", run))
    return cases


def capture_cases(cases: Iterable[Case]) -> Recorder:
    """Run every case inside one :func:`capture`; a case whose call raises is recorded in
    ``errors`` (its launches before the error are kept) and the rest still run."""
    with capture() as recorder:
        for case in cases:
            recorder.label = case.label
            try:
                case.run()
            except Exception as error:  # noqa: BLE001  (reported, not hidden: see Recorder.errors)
                recorder.errors[case.label] = f"{type(error).__name__}: {error}"
    return recorder


# --------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------

_PTXAS_FUNCTION = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


def parse_ptxas_log(log: str) -> dict:
    """Registers, stack frame and spill bytes of the one kernel in a ``ptxas -v`` log."""
    registers = _PTXAS_REGISTERS.search(log)
    frame = _PTXAS_FUNCTION.search(log)
    if registers is None or frame is None:
        raise ValueError(f"no resource usage in the ptxas log:\n{log}")
    return {"registers": int(registers.group(1)), "stack_bytes": int(frame.group(1)),
            "spill_store_bytes": int(frame.group(2)), "spill_load_bytes": int(frame.group(3))}


def _worker_init(cache_dir: str) -> None:
    # The kernels must be JITFunctions (compilable), not the interpreter's: decided when
    # fastvae.kernels is first imported, which is here, in a fresh process.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir


def compile_specialization(spec_json: dict, capability: int, resources: bool = True) -> dict:
    """Compile one specialization for ``capability`` (90: sm_90a, 80: sm_80); returns its
    resources (``{}`` unless ``resources``), or ``{"error": message}``."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    spec = Specialization.from_json(spec_json)
    module_name, function_name = spec.kernel.split(".")
    kernel = getattr(importlib.import_module(f"{KERNEL_PACKAGE}.{module_name}"), function_name)
    if not hasattr(kernel, "params"):
        return {"error": f"{spec.kernel} is not a JITFunction here (TRITON_INTERPRET set?)"}
    names = kernel.arg_names
    signature = dict(spec.signature)
    constexprs = {(names.index(name),): value for name, value in spec.constexprs}
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in spec.divisible_by_16}
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = resources
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton_compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", capability, 32),
                                      options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as error:  # noqa: BLE001  (any compile error is the result)
        return {"error": f"{type(error).__name__}: {error}"}
    if not resources:
        return {}
    ptxas_log = log.getvalue()
    if "Used " not in ptxas_log:  # a Triton cache hit runs no ptxas: run it on the cached PTX
        ptxas_log = _ptxas_verbose(compiled.asm["ptx"], capability)
    resources = parse_ptxas_log(ptxas_log)
    resources.update(shared_bytes=compiled.metadata.shared, num_warps=compiled.metadata.num_warps)
    return resources


def _ptxas_verbose(ptx: str, capability: int) -> str:
    """``ptxas -v`` of ``ptx`` by the ptxas Triton uses, as Triton runs it."""
    import subprocess

    from triton import knobs

    arch = "sm_90a" if capability == 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([knobs.nvidia.ptxas.path, "-v", f"--gpu-name={arch}", str(source), "-o",
                                 str(Path(folder) / "kernel.cubin")], capture_output=True, text=True, check=True)
    return result.stdout + result.stderr


def _compile_job(job):
    return compile_specialization(*job)


def compile_all(specs: list[Specialization], archs=ARCHS, workers: Optional[int] = None,
                cache_dir: Optional[str] = None, resources: bool = True) -> dict:
    """Compile every specialization for every arch in ``workers`` processes (default: the
    CPUs this process may use), with Triton's cache in ``cache_dir`` (default: a fresh
    temporary folder, so that every compile is done).  Returns {(spec key, arch name):
    resources (``{}`` unless ``resources``) or {"error": ...}}.

    The workers are spawned processes, which import the caller's main module: a script
    calling this must do so under ``if __name__ == "__main__"``."""
    import multiprocessing

    workers = workers or len(os.sched_getaffinity(0))
    jobs = [(spec, name, capability) for spec in specs for name, capability in archs]
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fastvae-triton-aot-"))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(cache_dir,)) as pool:
            results = pool.map(_compile_job, [(spec.to_json(), capability, resources) for spec, _, capability in jobs],
                               chunksize=4)
            return {(spec.key, name): result for (spec, name, _), result in zip(jobs, results)}
