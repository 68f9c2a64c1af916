"""genlib.utils: device choice, seeding, atomic checkpoints and argument checks."""

import math
import random

import numpy as np
import pytest
import torch

from genlib.utils import (
    atomic_save,
    check_positive,
    check_tensor,
    default_device,
    load_checkpoint,
    seed_everything,
)


def test_default_device_follows_cuda_availability():
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(4)  # noqa: NPY002 - the global RNGs


def test_seed_everything_reproduces_all_rngs():
    g = seed_everything(11)
    a = _draws()
    ga = torch.rand(3, generator=g)
    seed_everything(11)
    b = _draws()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert torch.equal(ga, torch.rand(3, generator=torch.Generator().manual_seed(11)))
    seed_everything(12)
    assert _draws()[0] != a[0]
    for bad in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            seed_everything(bad)


def test_atomic_save_round_trip_and_failure_keeps_old_file(tmp_path):
    path = tmp_path / "deep" / "dir" / "ckpt.pt"
    obj = {"w": torch.arange(5.0), "step": 3}
    assert atomic_save(obj, path) == path
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], obj["w"]) and loaded["step"] == 3
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails; which error is pickle's business
        atomic_save({"f": lambda: 0}, path)
    assert torch.equal(load_checkpoint(path)["w"], obj["w"])  # the old file survived intact
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_check_tensor():
    x = torch.zeros(2, 3)
    assert check_tensor(x, "x", ndim=(2, 3), floating=True) is x
    with pytest.raises(ValueError, match="x must be a torch.Tensor, got list"):
        check_tensor([1.0], "x")
    with pytest.raises(ValueError, match=r"x must have 3 or 4 dims, got shape \(2, 3\)"):
        check_tensor(x, "x", ndim=(3, 4))
    with pytest.raises(ValueError, match="x must be a floating-point tensor, got dtype torch.int64"):
        check_tensor(torch.zeros(2, dtype=torch.long), "x", floating=True)
    assert check_tensor(torch.zeros(2, dtype=torch.cfloat), "z", floating=True).is_complex()
    nan = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        check_tensor(nan, "x")
    assert check_tensor(nan, "x", finite=False) is nan


def test_check_positive():
    assert check_positive(2, "lr") == 2.0 and check_positive(0, "wd", allow_zero=True) == 0.0
    for bad, match in ((0, "lr must be finite and > 0"), (-1e-3, "> 0"), (math.inf, "finite"),
                       (math.nan, "finite"), ("abc", "lr must be a number")):
        with pytest.raises(ValueError, match=match):
            check_positive(bad, "lr")
    with pytest.raises(ValueError, match=">= 0"):
        check_positive(-1, "wd", allow_zero=True)


def test_atomic_write_text_replaces_whole_file_and_leaves_no_temp(tmp_path):
    from genlib.utils import atomic_write_text

    path = tmp_path / "sub" / "progress.json"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    assert [p.name for p in path.parent.iterdir()] == ["progress.json"]
