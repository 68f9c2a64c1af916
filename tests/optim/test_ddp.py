"""DDP: two gloo CPU processes on different data shards end with bit-identical preconditioners and params."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ranks_hold_identical_preconditioners(tmp_path, monkeypatch):
    # Spawned children inherit sys.path and re-import the worker module by name.
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    worker = importlib.import_module("_ddp_worker")
    worker.launch(str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for name in ("kron-whiten-ddp", "lra-whiten-closure", "lra-hvp", "dense-finite-diff"):
        for a, b in zip(r0[name]["pre"], r1[name]["pre"], strict=True):
            assert torch.equal(a, b), name
        for a, b in zip(r0[name]["params"], r1[name]["params"], strict=True):
            assert torch.equal(a, b), name
        # the preconditioners were really fitted, far from where they started
        assert any(not torch.allclose(a, b, rtol=0.05) for a, b in zip(r0[name]["pre"], r0[name]["pre0"])), (
            name
        )
    # Without the all-reduce the shards' different curvature makes the ranks diverge: the sync matters.
    pairs = zip(r0["kron-hvp-unsynced"]["pre"], r1["kron-hvp-unsynced"]["pre"], strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)
    assert "_ddp_worker" in sys.modules and os.path.exists(tmp_path / "rank1.pt")
