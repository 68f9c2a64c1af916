"""``torch.distributed`` for genlib's trainers: one process per device under ``torchrun``.

``torchrun --nproc-per-node N -m recipes.svhn_semisup ...`` sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``;
:func:`init_distributed` reads them, starts the process group (``nccl`` on GPUs, ``gloo`` on CPUs) and
returns the process's :class:`DistributedContext`. Without ``torchrun`` it returns the single-process
context and starts nothing, so the same code runs both ways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from genlib.utils import default_device

__all__ = ["DistributedContext", "init_distributed", "finish_distributed", "context", "all_gather_objects",
           "barrier"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs, figures and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context() -> DistributedContext:
    """The running process group's context (single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(),
                                  int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistributedContext()


def init_distributed(device: torch.device | str | None = None) -> tuple[DistributedContext, torch.device]:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); returns
    ``(context, device)``. The device is ``cuda:LOCAL_RANK`` on GPUs (each process its own), else
    ``device`` or the default one. Idempotent: a started group is reused."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is not None:
        device = torch.device(device)
    if world <= 1 or not dist.is_available():
        return context(), device if device is not None else default_device()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return context(), device


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    ctx = context()
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if context().distributed:
        dist.barrier()


def finish_distributed() -> bool:
    """End distributed training: wait for every rank and close the process group; returns whether this
    process goes on (rank 0, alone, for evaluation and reports). ``True`` in a single process."""
    ctx = context()
    if ctx.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return ctx.is_main
