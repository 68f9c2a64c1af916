"""Trustworthy checkpoints: no code runs from a file, settings-checked resume, damaged files, strict JSON."""

import json
import math
import os

import pytest
import torch
from torch import nn

from genlib.likelihoods import Bernoulli
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.train import Checkpointer, MetricsLogger, read_jsonl
from genlib.train.checkpoint import SettingsMismatchError
from genlib.utils import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    json_dumps,
    load_checkpoint,
    write_json,
)


class _Payload:
    """Unpickling it calls ``open(marker, "w")``: creates the marker file if any code from the file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _ShellPayload(_Payload):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _vae():
    return VAE(MLPEncoder((4,), 2, (8,)), MLPDecoder(2, (4,), 1, (8,)), Bernoulli())


def _malicious_files(tmp_path, payload_cls):
    """A VAE.save file and a Checkpointer file, each with the payload hidden in an otherwise valid record."""
    marker = tmp_path / "marker"
    vae_file = _vae().save(tmp_path / "vae.pt")
    record = torch.load(vae_file, weights_only=True)
    record["extra"] = {"note": payload_cls(marker)}
    torch.save(record, vae_file)
    ckpt = Checkpointer(tmp_path / "ckpts", every=1)
    ckpt_file = ckpt.save(3, model=nn.Linear(2, 2))
    record = torch.load(ckpt_file, weights_only=True)
    record["extra"] = {"note": payload_cls(marker)}
    torch.save(record, ckpt_file)
    return marker, vae_file, ckpt, ckpt_file


@pytest.mark.parametrize("payload_cls", [_Payload, _ShellPayload])
def test_no_loader_runs_code_from_a_malicious_file(tmp_path, payload_cls):
    marker, vae_file, ckpt, ckpt_file = _malicious_files(tmp_path, payload_cls)
    loads = {
        "load_checkpoint": lambda: load_checkpoint(vae_file),
        "VAE.load": lambda: VAE.load(vae_file),
        "Checkpointer.resume": lambda: ckpt.resume(model=nn.Linear(2, 2)),
        "Checkpointer.resume(path)": lambda: ckpt.resume(model=nn.Linear(2, 2), path=ckpt_file),
    }
    for name, load in loads.items():
        with pytest.raises(UnsafeCheckpointError, match="refusing to load") as err:
            load()
        assert str(err.value).count(".pt") >= 1 and "weights_only=False" not in str(err.value), name
        assert not marker.exists(), f"{name} ran code from the file"
    # a bare pickle (not a torch zip file) is never unpickled either
    import pickle

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"x": payload_cls(marker)}))
    with pytest.raises(CorruptCheckpointError, match="raw.pt"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_genlib_files_load_safely_with_all_their_state(tmp_path):
    # the Checkpointer's record (RNG states included) and optimizer states are plain data
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt = Checkpointer(tmp_path, every=1, settings={"seed": 0})
    ckpt.save(1, model=model, optimizer=opt, gen=torch.Generator().manual_seed(3), extra={"h": [1.0]})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt.latest()) == []
    r = ckpt.resume(model=nn.Linear(3, 2), optimizer=torch.optim.Adam(nn.Linear(3, 2).parameters()))
    assert r.step == 1 and r.extra == {"h": [1.0]}


def _series(directory, settings, steps=(1, 2), keep=2):
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(directory, every=1, keep=keep, settings=settings)
    for s in steps:
        with torch.no_grad():
            model.weight.fill_(s)
        ckpt.save(s, model=model)
    return ckpt


def test_resume_refuses_other_settings_naming_each_before_loading(tmp_path):
    saved = {"seed": 0, "optimizer": "adam", "train": {"lr": 1e-3, "hidden": (8, 8)}, "data_dir": None}
    _series(tmp_path, saved)
    now = {"seed": 1, "optimizer": "psgd-kron", "train": {"lr": 1e-3, "hidden": [8, 8]}, "data_dir": None}
    model = nn.Linear(2, 2)
    before = model.weight.clone()
    with pytest.raises(SettingsMismatchError) as err:
        Checkpointer(tmp_path, every=1, settings=now).resume(model=model)
    msg = str(err.value)
    assert "'seed': (0, 1)" in msg and "'optimizer': ('adam', 'psgd-kron')" in msg
    assert "train.lr" not in msg and "hidden" not in msg  # equal values (tuple vs list) are not changes
    assert "use another --out" in msg and str(tmp_path) in msg
    assert torch.equal(model.weight, before)  # nothing was loaded into the model
    # an added setting and a NaN one are named / compared like any other
    with pytest.raises(SettingsMismatchError, match=r"'extra_knob': \('<unset>', 3\)"):
        Checkpointer(tmp_path, every=1, settings={**saved, "extra_knob": 3}).resume(model=model)
    nan_dir = tmp_path / "nan"
    _series(nan_dir, {"clip": float("nan")})
    assert Checkpointer(nan_dir, every=1, settings={"clip": float("nan")}).resume(model=model).step == 2
    # same settings resume; a checkpoint past the run's total is refused, naming the total
    r = Checkpointer(tmp_path, every=1, settings=saved).resume(model=model, max_step=5)
    assert r.step == 2 and float(model.weight.detach()[0, 0]) == 2.0
    with pytest.raises(ValueError, match="at step 2, more than --iters 1"):
        ckpt = Checkpointer(tmp_path, every=1, settings=saved)
        ckpt.resume(model=model, max_step=1, max_step_name="--iters")
    # a checkpoint without recorded settings cannot be vouched for
    _series(tmp_path / "none", None)
    with pytest.raises(SettingsMismatchError, match="records no settings"):
        Checkpointer(tmp_path / "none", every=1, settings=saved).resume(model=model)


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path):
    ckpt = _series(tmp_path, {"seed": 0})
    old, new = ckpt.checkpoints()
    new.write_bytes(new.read_bytes()[: new.stat().st_size // 2])  # truncated: killed mid-copy, disk full
    model = nn.Linear(2, 2)
    with pytest.warns(UserWarning) as rec:
        r = ckpt.resume(model=model)
    assert r.step == 1 and r.path == old and float(model.weight.detach()[0, 0]) == 1.0
    msg = " ".join(str(w.message) for w in rec)
    assert str(new) in msg and str(old) in msg
    # every file damaged: an error naming them, not torch's "PytorchStreamReader failed"
    old.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="ckpt_00000001.pt"):
        ckpt.resume(model=model)


@pytest.mark.parametrize("content", [b"", os.urandom(2048), b"PK\x03\x04" + os.urandom(500)])
def test_empty_or_random_file_gives_an_error_naming_it(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    for load in (lambda: load_checkpoint(path), lambda: VAE.load(path),
                 lambda: Checkpointer(tmp_path).resume(model=nn.Linear(1, 1), path=path)):
        with pytest.raises(CorruptCheckpointError, match="model.pt is damaged"):
            load()


def test_leftover_temp_files_of_killed_saves_are_removed(tmp_path):
    ckpt = _series(tmp_path, None, steps=(1,))
    stale = tmp_path / ".ckpt_00000002.pt.x1y2z3.tmp"  # what atomic_save leaves when killed before rename
    stale.write_bytes(b"half")
    other = tmp_path / ".notes.tmp"
    other.write_bytes(b"not ours")
    assert ckpt.resume(model=nn.Linear(2, 2)).step == 1
    assert not stale.exists() and other.exists()
    stale.write_bytes(b"half")
    ckpt.save(2, model=nn.Linear(2, 2))
    assert not stale.exists()


def test_metrics_log_tolerates_a_half_written_line_and_writes_strict_json(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(step=1, loss=float("nan"), acc=float("inf"))
    log.log(step=2, loss=0.5, acc=0.9)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}")) for line in text.splitlines()]
    assert rows[0] == {"step": 1, "loss": None, "acc": None}
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-line
    with pytest.warns(UserWarning, match="line 3 is incomplete"):
        assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    with pytest.warns(UserWarning):
        resumed = MetricsLogger(tmp_path, resume=True)
    resumed.log(step=3, loss=0.25)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    h = resumed.history()
    assert math.isnan(h["loss"][0]) and h["loss"][1:] == [0.5, 0.25]
    # a damaged line that is not the last is an error naming the file and line
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_rewind_drops_rows_logged_after_the_resumed_step(tmp_path):
    log = MetricsLogger(tmp_path)
    for s in (10, 20, 30):
        log.log(iter=s, loss=1.0 / s)
    resumed = MetricsLogger(tmp_path, resume=True)
    assert resumed.rewind(20, key="iter") == 1
    resumed.log(iter=30, loss=0.5)
    assert [r["iter"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 30]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4


def test_json_helpers_write_null_for_nan(tmp_path):
    obj = {"a": float("nan"), "b": [1.0, float("-inf")], "c": (1, 2), "t": torch.tensor(2.5)}
    assert json.loads(json_dumps(obj)) == {"a": None, "b": [1.0, None], "c": [1, 2], "t": 2.5}
    path = write_json(tmp_path / "r.json", obj)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    with pytest.raises(ValueError, match="cannot write a object"):
        json_dumps({"x": object()})


def test_genlib_sample_refuses_a_malicious_checkpoint(tmp_path):
    from genlib.cli import main as cli

    marker, vae_file, _, _ = _malicious_files(tmp_path, _Payload)
    with pytest.raises(UnsafeCheckpointError, match="vae.pt"):
        cli(["sample", "--checkpoint", str(vae_file), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert not marker.exists()


def test_settings_file_ties_saved_results_to_their_settings(tmp_path):
    from genlib.train.checkpoint import check_settings_file

    path, results = tmp_path / "settings.json", tmp_path / "progress.json"
    check_settings_file(path, {"lr": 0.1, "sizes": (2, 3)}, guards=results)  # first call records them
    results.write_text("{}")
    check_settings_file(path, {"lr": 0.1, "sizes": [2, 3]}, guards=results)  # same settings: fine
    with pytest.raises(SettingsMismatchError, match=r"progress.json .*'lr': \(0.1, 0.2\).*delete"):
        check_settings_file(path, {"lr": 0.2, "sizes": [2, 3]}, guards=results)
    path.unlink()
    with pytest.raises(SettingsMismatchError, match="has no record of its settings"):
        check_settings_file(path, {"lr": 0.1}, guards=results)
