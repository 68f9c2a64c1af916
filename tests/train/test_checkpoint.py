"""Checkpointer: an interrupted run resumed from its checkpoint ends bit-for-bit like an uninterrupted one."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from genlib.train import Checkpointer, get_rng_state, set_rng_state
from genlib.utils import seed_everything


class _Crash(Exception):
    pass


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _run(directory, seed=0, total=20, crash_at=None, restore_rng=True, device="cpu"):
    """20 steps of a dropout net fed by four RNGs: a private torch.Generator (data), NumPy's and Python's
    global ones (noise, loss scale) and torch's global one (dropout; the CUDA one on a GPU). Checkpoints
    every 10 steps."""
    seed_everything(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    data = torch.Generator().manual_seed(seed + 1)
    ckpt = Checkpointer(directory, every=10, keep=1)
    resumed = ckpt.resume(model=model, optimizer=opt, scheduler=sched, data=data, restore_rng=restore_rng)
    start = resumed.step if resumed else 0
    for step in range(start, total):
        if step == crash_at:
            raise _Crash
        x = torch.randn(8, 4, generator=data)
        noise = torch.from_numpy(np.random.standard_normal(8)).float()  # noqa: NPY002 - global RNG on purpose
        x, y = x.to(device), (x.sum(1) + 0.1 * noise).to(device)
        loss = ((model(x).squeeze(1) - y) ** 2).mean() * (1 + random.random())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ckpt.maybe_save(step + 1, model=model, optimizer=opt, scheduler=sched, data=data,
                        extra={"loss": loss.item()})
    return model, opt, ckpt


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("device", DEVICES)
def test_resume_is_bit_exact(tmp_path, device):
    ref_model, ref_opt, _ = _run(tmp_path / "a", device=device)
    with pytest.raises(_Crash):
        _run(tmp_path / "b", crash_at=15, device=device)
    # a fresh "process": different seed and fresh objects; everything must come from the checkpoint
    model, opt, ckpt = _run(tmp_path / "b", seed=123, device=device)
    assert _same(model, ref_model)
    for s, r in zip(opt.state.values(), ref_opt.state.values()):
        assert torch.equal(s["exp_avg"], r["exp_avg"]) and torch.equal(s["exp_avg_sq"], r["exp_avg_sq"])
    assert [p.name for p in ckpt.checkpoints()] == ["ckpt_00000020.pt"]  # keep=1 pruned step 10
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["ckpt_00000020.pt"]  # no temp files


@pytest.mark.parametrize("device", DEVICES)
def test_resume_without_rng_restore_differs(tmp_path, device):
    """Negative control: the RNG states are what make the continuation exact."""
    ref_model, _, _ = _run(tmp_path / "a", device=device)
    with pytest.raises(_Crash):
        _run(tmp_path / "b", crash_at=15, device=device)
    model, _, _ = _run(tmp_path / "b", seed=123, restore_rng=False, device=device)
    assert not _same(model, ref_model)


def test_latest_extra_and_partial_restore(tmp_path):
    ckpt = Checkpointer(tmp_path, every=5, keep=None)
    assert ckpt.latest() is None and ckpt.resume(model=nn.Linear(2, 2)) is None
    model = nn.Linear(2, 2)
    for step in range(1, 13):
        ckpt.maybe_save(step, model=model, opt=torch.optim.SGD(model.parameters(), lr=0.1), extra={"s": step})
    assert [p.name for p in ckpt.checkpoints()] == ["ckpt_00000005.pt", "ckpt_00000010.pt"]
    ckpt.save(12, model=model, extra={"s": 12})
    assert ckpt.latest().name == "ckpt_00000012.pt"
    fresh = nn.Linear(2, 2)
    r = ckpt.resume(model=fresh, path=ckpt.checkpoints()[0], restore_rng=False)
    assert r.step == 5 and r.extra == {"s": 5} and _same(fresh, model)


def test_rng_state_round_trip():
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="every must be a positive int"):
        Checkpointer(tmp_path, every=0)
    with pytest.raises(ValueError, match="keep must be None or a positive int"):
        Checkpointer(tmp_path, keep=0)
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(ValueError, match="thing must have state_dict"):
        ckpt.save(1, thing=3.0)
    with pytest.raises(ValueError, match="reserved"):
        ckpt.save(1, path=nn.Linear(1, 1))
    with pytest.raises(ValueError, match="at least one object"):
        ckpt.save(1)
    ckpt.save(1, model=nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"holds no state for \['optimizer'\]"):
        ckpt.resume(model=nn.Linear(1, 1), optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ckpt.resume(model=nn.Linear(1, 1), path=tmp_path / "nope.pt")
