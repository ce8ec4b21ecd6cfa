"""Data parallel under ``torchrun``: the process group, this process's place in it, and its collectives.

The training loop owns the calls (:func:`setup` before the task is built, :func:`barrier` around the
run store, :func:`teardown` at the end) and hands the resulting :class:`Dist` to the task through
its ``RunContext``. A task that trains data-parallel (``Task.data_parallel = True``) uses the
:class:`Dist` to take its share of every global batch (:meth:`Dist.shard`), average gradients
(:meth:`Dist.average_gradients`, or DDP) and all-reduce what it reports; a task that does not is
refused by the loop before any process group exists (:func:`refuse_reason`).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one process of one (rank 0).
Backend: NCCL on CUDA (one GPU per process: ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def env_rank() -> int:
    """This process's rank as torchrun set it (0 alone); only rank 0 writes results."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    """Number of processes torchrun started (1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a data-parallel job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's share of a global batch: ``items[rank::world]`` (rank 0 gets the extra ones)."""
        return items[self.rank :: self.world]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks, in place; returns it."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over ranks (a new tensor; ``t`` itself alone)."""
        if not self.active:
            return t
        return self.all_reduce_sum(t.detach().clone()) / self.world

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (one flat all-reduce; a missing one counts 0).

        What DDP does, without wrapping the model: for models whose forward DDP does not fit
        (stateful LSTMs, beam-search decoders) or whose shards can be empty.
        """
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self.all_reduce_sum(flat).div_(self.world)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.active:
            import torch.distributed as dist

            dist.broadcast(t, src=src)
        return t


def refuse_reason(kind: str, task_cls: Any) -> str | None:
    """Why task kind ``kind`` cannot run under WORLD_SIZE > 1 (None: it can, or this is one process)."""
    world = env_world_size()
    if world <= 1 or getattr(task_cls, "data_parallel", False):
        return None
    why = getattr(task_cls, "data_parallel_refusal", "") or "it does not split its batches across processes"
    return (f"task.kind={kind} does not train data-parallel: {why}; "
            f"run it as one process, not under torchrun (WORLD_SIZE={world})")


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1; returns (Dist, this process's device)."""
    world = env_world_size()
    if world <= 1:
        return Dist(), device
    import torch.distributed as dist

    if device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def barrier() -> None:
    """Wait for every rank (a no-op alone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group (a no-op alone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Dist", "barrier", "env_rank", "env_world_size", "refuse_reason", "setup", "teardown"]
