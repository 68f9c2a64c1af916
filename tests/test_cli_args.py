"""The shared argparse validators: one-line errors naming the flag, exit status 2, no traceback."""

import argparse

import pytest
import torch

from genlib.cli_args import device, find_data_folder, float_in, int_at_least, positive_float, run_recipe
from genlib.train.checkpoint import SettingsMismatchError


def _parse(argv, **arguments):
    p = argparse.ArgumentParser(prog="t")
    for flag, kind in arguments.items():
        p.add_argument(f"--{flag.replace('_', '-')}", type=kind)
    return p.parse_args(argv)


def _error(capsys, argv, **arguments) -> str:
    with pytest.raises(SystemExit) as info:
        _parse(argv, **arguments)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_device_accepts_cpu_and_resolves_auto(monkeypatch):
    assert _parse(["--device", "cpu"], device=device).device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _parse(["--device", "auto"], device=device).device == "cpu"


@pytest.mark.parametrize("bad", ["tpu", "gpu", "cuda:x", "cuda:-1", ""])
def test_device_rejects_unknown_names(capsys, bad):
    err = _error(capsys, ["--device", bad], device=device)
    assert "--device must be cpu, cuda or cuda:N" in err


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_device_cuda_without_gpu_is_one_line(capsys, monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _error(capsys, ["--device", name], device=device)
    assert f"--device {name} requested but no CUDA GPU is visible" in err


def test_device_index_beyond_the_visible_gpus(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _parse(["--device", "cuda:1"], device=device).device == "cuda:1"
    err = _error(capsys, ["--device", "cuda:2"], device=device)
    assert "only 2 CUDA GPU(s) are visible" in err


def test_int_at_least(capsys):
    assert _parse(["--n", "0"], n=int_at_least(0)).n == 0
    for bad in ("-1", "1.5", "x"):
        assert "argument --n: must be an integer >= 0" in _error(capsys, ["--n", bad], n=int_at_least(0))


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "0", "-1", "x"])
def test_positive_float_rejects_non_finite_and_non_positive(capsys, bad):
    err = _error(capsys, [f"--grad-clip={bad}"], grad_clip=positive_float)
    assert "argument --grad-clip: must be a finite number > 0" in err


def test_positive_float_accepts_finite_positive():
    assert _parse(["--grad-clip", "0.5"], grad_clip=positive_float).grad_clip == 0.5


def test_float_in_respects_open_and_closed_ends(capsys):
    frac = float_in(0, 1)  # (0, 1]
    assert _parse(["--f", "1"], f=frac).f == 1.0
    for bad in ("0", "1.01", "nan"):
        assert "must be a number in (0, 1]" in _error(capsys, ["--f", bad], f=frac)
    assert _parse(["--f", "0"], f=float_in(0, 1, low_inclusive=True)).f == 0.0


def test_find_data_folder_accepts_the_root_or_the_folder_itself(tmp_path):
    digits = tmp_path / "digits"
    digits.mkdir()
    (digits / "mnist_4k.npz").write_bytes(b"")
    assert find_data_folder(tmp_path, "mnist_4k.npz") == digits
    assert find_data_folder(digits, "mnist_4k.npz") == digits
    assert find_data_folder(tmp_path, "train_32x32.mat") is None
    assert find_data_folder(tmp_path / "nowhere", "mnist_4k.npz") is None


def test_run_recipe_prints_a_refused_resume_as_one_line_and_passes_other_errors_on(capsys):
    def refused(argv):
        raise SettingsMismatchError(f"runs/x was trained with other settings: {{'seed': (0, {argv[0]})}}")

    assert run_recipe(refused, ["1"], prog="genlib quickstart") == 2
    err = capsys.readouterr().err
    assert err == "genlib quickstart: error: runs/x was trained with other settings: {'seed': (0, 1)}\n"
    assert run_recipe(lambda argv: 3) == 3 and run_recipe(lambda argv: None) == 0

    def broken(argv):
        raise ValueError("a bug, not a refusal")

    with pytest.raises(ValueError, match="a bug"):  # only refusals lose their traceback
        run_recipe(broken)
