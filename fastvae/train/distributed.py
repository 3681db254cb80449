"""Distributed data parallel training under ``torchrun``, with ``torch.distributed``.

``torchrun --nproc_per_node N script.py`` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK in their environment.  :func:`init_from_env` joins them into a process group
(gloo on the CPU, nccl on CUDA); the trainer then wraps the model in
``DistributedDataParallel``, which averages the gradients over the processes, and gives
each process its share of every global batch.  Only rank 0 writes files.

Without those variables (or with WORLD_SIZE 1) everything here is a no-op for a single
process, so the same script runs with and without torchrun.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedContext",
    "init_from_env",
    "current_context",
    "wrap_model",
    "shard_batch",
    "all_reduce_sum",
    "all_gather_objects",
    "barrier",
    "cleanup",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of processes, its local rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"fastvae.train.distributed: environment variable {name} must be an int, got {value!r}") from None


def current_context() -> DistributedContext:
    """The context of the initialized process group, or a single process's."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return DistributedContext()


def init_from_env(backend: Optional[str] = None) -> DistributedContext:
    """Join the process group ``torchrun`` describes in the environment.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; None picks nccl when CUDA is available, else
            gloo.

    Returns:
        The :class:`DistributedContext`; a single process's when WORLD_SIZE is unset or
        1.  Calling it again once the group exists returns the group's context.  On
        CUDA it also makes ``cuda:LOCAL_RANK`` the current device.

    Example::

        # torchrun --nproc_per_node 2 train.py
        >>> context = init_from_env()
        >>> context.rank, context.world_size
        (0, 2)
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if dist.is_available() and dist.is_initialized():
        return current_context()
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("fastvae.train.distributed.init_from_env: this torch build has no torch.distributed")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, local_rank)


def wrap_model(
    module: nn.Module, context: DistributedContext, device: torch.device, find_unused_parameters: bool = False
) -> nn.Module:
    """``DistributedDataParallel(module)`` when ``context`` has several processes, else
    ``module``.  DDP broadcasts rank 0's weights at construction, so every process starts
    from the same model.  DDP finds the tensors of a dataclass output such as
    ``VAEOutput`` itself."""
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else context.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def shard_batch(indices: Tensor, context: DistributedContext) -> Tensor:
    """This process's contiguous share of a global batch's ``indices``: the batch is
    split into ``world_size`` equal parts (its size must divide evenly)."""
    if not context.enabled:
        return indices
    size = indices.shape[0]
    if size % context.world_size:
        raise ValueError(
            f"fastvae.train.distributed.shard_batch: a batch of {size} does not split evenly over "
            f"{context.world_size} processes"
        )
    share = size // context.world_size
    return indices[context.rank * share:(context.rank + 1) * share]


def all_reduce_sum(tensor: Tensor, context: DistributedContext) -> Tensor:
    """The sum of ``tensor`` over the processes (``tensor`` itself for one process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any, context: DistributedContext) -> List[Any]:
    """[value of rank 0, value of rank 1, ...]: picklable objects from every process."""
    if not context.enabled:
        return [value]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    """Wait for every process (nothing for one process)."""
    if context.enabled:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was initialized (call once at the end of a script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
