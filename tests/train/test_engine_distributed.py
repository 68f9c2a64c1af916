"""The engine under torchrun with 2 gloo processes on CPU: DDP gives the model one process trains on the same
global batches; a resumed 2-process run equals an uninterrupted one, and resumes on 1 process too; the
semi-supervised trainer (Adam with DDP, Newton-type PSGD syncing its own gradients) keeps ranks identical."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("_engine_worker.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _run(out: Path, job: str, nproc: int) -> list[list[torch.Tensor]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), job]
        env.pop("WORLD_SIZE", None)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               str(WORKER), str(out), job]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"{job}.rank{r}.pt", weights_only=True) for r in range(nproc)]


def _close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float) -> bool:
    return all(torch.allclose(p, q, atol=atol, rtol=0) for p, q in zip(a, b, strict=True))


def test_two_processes_train_the_model_one_process_trains(tmp_path):
    solo = tmp_path / "solo"
    solo.mkdir()
    (one,) = _run(solo, "classifier-3", 1)
    r0, r1 = _run(tmp_path, "classifier-3", 2)
    assert all(torch.equal(p, q) for p, q in zip(r0, r1))  # DDP keeps the ranks identical
    # the same global batches, gradients averaged over the two halves: equal up to float summation order
    assert _close(one, r0, atol=1e-5)
    assert not _close(one, [p + 1e-3 for p in r0], atol=1e-5)  # the tolerance can fail


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    ref, _ = _run(full, "classifier-4", 2)
    part = tmp_path / "part"
    part.mkdir()
    _run(part, "classifier-2-ckpt", 2)  # stopped after 2 epochs
    assert sorted(p.name for p in (part / "ckpt").iterdir())[-1] == "ckpt_00000002.pt"
    r0, r1 = _run(part, "classifier-4-ckpt", 2)  # the same command with the full target resumes
    assert all(torch.equal(p, q) for p, q in zip(ref, r0)) and all(torch.equal(p, q) for p, q in zip(r0, r1))
    # and on another world size: the batches are the global ones, so one process continues the same run
    other = tmp_path / "other"
    other.mkdir()
    _run(other, "classifier-2-ckpt", 2)
    (solo,) = _run(other, "classifier-4-ckpt", 1)
    assert _close(ref, solo, atol=1e-5)


@pytest.mark.parametrize("job", ["semisup", "semisup-hvp"])
def test_semi_supervised_training_keeps_ranks_identical(tmp_path, job):
    r0, r1 = _run(tmp_path, job, 2)
    assert all(torch.equal(p, q) for p, q in zip(r0, r1))
    n = len(r0) // 2
    assert all(not torch.equal(a, b) for a, b in zip(r0[:n], r0[n:]))  # every parameter was trained
