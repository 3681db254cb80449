"""Plumbing shared by the op families: backend lookup, the kernel module of a backend,
the placeholders of outputs an op does not compute, seed drawing, the double-backward
guard, torch.compile's constant-result mark, and the direct call of a custom op in eager
mode."""
from __future__ import annotations

import functools
import importlib
from typing import Callable, Optional, TypeVar

import torch

from .. import backends
from ..random import draw_seed

_Function = TypeVar("_Function", bound=Callable)


def assume_constant_result(fn: _Function) -> _Function:
    """Mark ``fn`` as :func:`torch.compiler.assume_constant_result` does, without
    importing ``torch._dynamo``.

    That decorator only sets the attribute below on ``fn`` (torch/_dynamo/decorators.py),
    which dynamo reads when it traces a call of ``fn``; but reaching it imports
    torch._dynamo, seconds of start-up for every ``import fastvae`` and every
    ``fastvae --help``. tests/test_compile.py checks that this mark is the decorator's."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result
def _resolve(op: str, choice: str, device_type: str, dtype: torch.dtype) -> str:
    return backends.resolve(op, torch.device(device_type), dtype)


def direct_call_ok(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether an op may call its custom op's implementation and autograd directly, as a
    ``torch.autograd.Function``, rather than through torch.library's dispatch: in eager
    mode on plain tensors, where the two are the same computation.  Not while
    torch.compile traces (it must see the custom op), nor under a dispatch or function
    mode (FakeTensorMode, a recorder of the ops that run, ...), a functorch transform or
    a tensor subclass."""
    return (
        not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
        and not torch._C._are_functorch_transforms_active()
        and all(t is None or type(t) is torch.Tensor for t in tensors)
    )


class _DirectCall(torch.autograd.Function):
    """A custom op's implementation and registered autograd (its ``setup_context`` and
    ``backward``), called as a ``torch.autograd.Function``: what torch.library's autograd
    kernel does, without its dispatch.  The custom op comes last among the arguments, so
    ``ctx.needs_input_grad`` has the op's own indices in its setup_context and backward."""

    @staticmethod
    def forward(ctx, *args_and_op):
        *args, op = args_and_op
        output = op._init_fn(*args)
        if op._setup_context_fn is not None:
            op._setup_context_fn(ctx=ctx, inputs=tuple(args), output=output)
        ctx.direct = True
        ctx.op = op
        return output

    @staticmethod
    def backward(ctx, *grads):
        needs_input_grad = ctx.needs_input_grad
        ctx.needs_input_grad = needs_input_grad[:-1]
        try:
            result = ctx.op._backward_fn(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs_input_grad
        return (*result, None) if isinstance(result, tuple) else (result, None)


def fused_call(op, *args):
    """Call the custom op ``op`` (a ``torch.library.custom_op``) on ``args``: directly
    where that is the same computation (:func:`direct_call_ok`: eager, plain tensors),
    else through torch.library's dispatch.

    An eager call on a small tensor is otherwise mostly that dispatch, twice (forward
    and backward: bench/README.md has the measurements).  Directly, ``op``'s function
    runs as it is, under :class:`_DirectCall` when autograd records, whose context has
    ``direct`` set: a backward may then reuse what only it holds (the mixture's gradient
    buffer).  A backward calls its backward op through here too; under
    ``create_graph`` that op's registered autograd refuses a double backward as before."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not direct_call_ok(*tensors):
        return op(*args)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _DirectCall.apply(*args, op)
    return op._init_fn(*args)


def pick_backend(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs ``op`` on inputs of ``device`` and (promoted) ``dtype``
    (see :mod:`fastvae.backends`)."""
    # Reading backends._choice here lets torch.compile guard on it.
    return _resolve(op, backends._choice, device.type, dtype)


def promoted_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """The promoted dtype of the tensors given (None skipped): what picks the backend."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    for tensor in present[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


@functools.lru_cache(maxsize=None)
def kernel_module(backend: str, family: str):
    """The module that launches ``family``'s kernels for ``backend`` (looked up once per
    pair: it is on every call's path)."""
    if backend == "triton":
        return importlib.import_module(f"fastvae.kernels.{family}")
    if backend in ("cpu", "cuda"):
        from ..native import launchers

        return launchers(backend, family)
    raise RuntimeError(f"fastvae: backend {backend!r} has no kernels for the {family} ops")


def fill_absent(outputs, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A custom op's outputs as it returns them: each one it does not compute (None in
    its outputs function) becomes a distinct empty float32 tensor on ``like``'s device
    (a custom op returns tensors, and its outputs may not alias one another)."""
    return tuple(like.new_empty((0,), dtype=torch.float32) if t is None else t for t in outputs)


def seed_for(device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
    return draw_seed(device, generator)


def no_double_backward(op: str):
    """A backward that raises: fastvae's fused backward is not itself differentiable."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"fastvae.{op}: double backward (a gradient of a gradient) is not supported; "
            f"use the torch backend (fastvae.use_backend('torch')) for higher-order derivatives"
        )

    return backward
