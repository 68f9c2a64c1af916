"""Worker for test_engine_distributed.py: ``torchrun --nproc-per-node N _engine_worker.py OUT JOB``
(or with plain ``python`` for one process). Each rank writes ``OUT/JOB.rank{r}.pt``: its final parameters
(``semisup`` jobs: the initial ones, then the final ones).

Jobs:
- ``classifier-E`` / ``classifier-E-ckpt``: ``train_classifier`` (no dropout: a deterministic loss) for E
  epochs on fixed blobs, global batch 32; ``-ckpt`` checkpoints every epoch into ``OUT/ckpt`` and resumes.
- ``semisup`` / ``semisup-hvp``: ``SemiSupervisedTrainer`` for a few iterations with Adam / Newton-type PSGD.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
from torch import nn

from genlib.optim import Kron
from genlib.train import Checkpointer, SemiSupervisedConfig, SemiSupervisedTrainer, train_classifier
from genlib.train.distributed import context, finish_distributed, init_distributed


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 6, generator=g) * 3
    y = torch.arange(n) % 3
    return centers[y] + torch.randn(n, 6, generator=g), y


def classifier(out: Path, epochs: int, ckpt: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = blobs(96, seed=1)
    checkpointer = Checkpointer(out / "ckpt", every=1) if ckpt else None
    train_classifier(model, (x, y), epochs=epochs, lr=0.05, batch_size=32, device="cpu", progress=False,
                     seed=0, checkpointer=checkpointer)
    return [p.detach().clone() for p in model.parameters()]


def semisup(hvp: bool) -> list[torch.Tensor]:
    from genlib.likelihoods import Gaussian
    from genlib.models import VAE
    from genlib.nn import MLPDecoder, MLPEncoder
    from genlib.priors import LatentEBMPrior

    torch.manual_seed(0)
    vae = VAE(MLPEncoder((6,), 2, hidden=(16,)), MLPDecoder(2, (6,), hidden=(16,)), Gaussian(0.5),
              LatentEBMPrior(2, 3, hidden=(16,)))
    x_u, _ = blobs(64, seed=1)
    x_l, y_l = blobs(6, seed=2)
    cfg = SemiSupervisedConfig(n_iters=4, batch_size=16, langevin_steps=3, lr=1e-2, ebm_lr=1e-2,
                               progress=False, eval_every=0)
    opt = functools.partial(Kron, curvature="hvp") if hvp else None
    initial = [p.detach().clone() for p in vae.parameters()]
    SemiSupervisedTrainer(vae, cfg, optimizer=opt, device="cpu").fit(x_u, x_l, y_l)
    return initial + [p.detach().clone() for p in vae.parameters()]


def main(out: str, job: str) -> None:
    torch.set_num_threads(1)
    init_distributed("cpu")
    out_dir = Path(out)
    kind, *rest = job.split("-")
    if kind == "classifier":
        params = classifier(out_dir, int(rest[0]), "ckpt" in rest)
    else:
        params = semisup("hvp" in rest)
    torch.save(params, out_dir / f"{job}.rank{context().rank}.pt")
    finish_distributed()  # close the gloo group before exit: its threads otherwise may abort the process


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
