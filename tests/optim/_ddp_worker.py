"""Worker for test_ddp.py: 2 gloo processes train the same small model on different data shards.

``test_ddp.py`` imports this module and calls ``torch.multiprocessing.spawn(worker, ...)``: spawned children
inherit ``sys.path`` and re-import it by name. Also runnable as ``python _ddp_worker.py OUT_DIR``. Each rank
writes its parameters and preconditioner tensors to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from genlib.optim import LRA, Dense, Kron

WORLD = 2
STEPS = 20

CONFIGS = {
    # whitening with a DDP-wrapped model: DDP all-reduces .grad in backward()
    "kron-whiten-ddp": dict(family=Kron, kw=dict(lr=0.05, momentum=0.9, update_probability=0.5), ddp=True),
    # whitening through step(closure) without backward(): the optimizer differentiates and all-reduces
    "lra-whiten-closure": dict(
        family=LRA, kw=dict(lr=0.05, rank=3, momentum=0.9, update_probability=0.5), ddp=False, closure=True
    ),
    # Newton types: the closure runs the unwrapped module; the optimizer all-reduces g and Hv itself
    "lra-hvp": dict(family=LRA, kw=dict(lr=0.2, rank=4, curvature="hvp", update_probability=0.5), ddp=False),
    "dense-finite-diff": dict(family=Dense, kw=dict(lr=0.2, curvature="finite_diff"), ddp=False),
    # negative control: no all-reduce of the closure's gradients → ranks drift apart
    "kron-hvp-unsynced": dict(
        family=Kron, kw=dict(lr=0.2, curvature="hvp", sync_closure_grads=False), ddp=False
    ),
}


def _pre_tensors(opt) -> list[torch.Tensor]:
    return [
        t.clone() for pcs in opt.preconditioners for pc in pcs for t in pc.state_dict()["tensors"].values()
    ]


def run_config(rank: int, cfg: dict) -> dict[str, list[torch.Tensor]]:
    torch.manual_seed(0)  # identical initial model on every rank
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    net = DDP(model) if cfg["ddp"] else model
    opt = cfg["family"](net.parameters(), **cfg["kw"])
    pre0 = _pre_tensors(opt)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
    for _ in range(STEPS):
        X, Y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
        if opt.curvature == "whiten" and not cfg.get("closure"):
            opt.zero_grad()
            (net(X) - Y).square().mean().backward()
            opt.step()
        else:
            opt.step(lambda X=X, Y=Y: (model(X) - Y).square().mean())
    params = [p.detach().clone() for p in model.parameters()]
    return {"params": params, "pre": _pre_tensors(opt), "pre0": pre0}


def worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank, world_size=WORLD
    )
    try:
        results = {name: run_config(rank, cfg) for name, cfg in CONFIGS.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # leave together: a gloo process closing while another still runs can abort
    finally:
        dist.destroy_process_group()


def launch(out_dir: str) -> None:
    mp.spawn(worker, args=(out_dir,), nprocs=WORLD, join=True)


if __name__ == "__main__":
    launch(sys.argv[1])
