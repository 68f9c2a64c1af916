"""The ``genlib`` console script dispatches to recipes and rejects unknown commands."""

import importlib
import json

import pytest

from genlib.cli import RECIPES, main


def test_unknown_command_is_rejected_with_the_valid_names(capsys):
    assert main(["bogus"]) == 2
    assert "quickstart" in capsys.readouterr().err


def test_alias_dispatches_to_the_recipe_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["xor", "--help"])
    assert exit_info.value.code == 0
    assert "delayed" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("command", ["sample", "quickstart", "xor", "svhn", "vctk", "vae_optimizers"])
def test_subcommand_help_names_the_subcommand(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: genlib {command} ")


def test_xor_summarize_returns_exit_status_zero(tmp_path, capsys):
    run = {"optimizer": "adam", "arch": "rnn", "length": 16, "seed": 0, "rank": None, "solved": True,
           "iterations": 40, "final_running_loss": 0.05, "seconds": 0.1, "curve": []}
    (tmp_path / "results.json").write_text(json.dumps({"config": {"max_iters": 100}, "runs": [run]}))
    assert main(["xor", "--summarize", str(tmp_path)]) == 0
    assert "adam" in capsys.readouterr().out


def test_recipe_exit_status_passes_through(monkeypatch):
    import genlib.recipes.quickstart as quickstart

    monkeypatch.setattr(quickstart, "main", lambda argv: 3)
    assert main(["quickstart"]) == 3
    monkeypatch.setattr(quickstart, "main", lambda argv: [{"rows": 1}])  # not a status: success
    assert main(["quickstart"]) == 0


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_main_is_typed_to_return_an_exit_status(name):
    import importlib
    import typing

    module = importlib.import_module(f"genlib.recipes.{name}")
    assert typing.get_type_hints(module.main)["return"] is int


def test_a_refused_resume_is_one_line_from_genlib_and_from_python_m(monkeypatch, capsys):
    import inspect

    import genlib.recipes.quickstart as quickstart

    from genlib.train.checkpoint import SettingsMismatchError

    def refused(argv):
        raise SettingsMismatchError("runs/q was trained with other settings (saved, now): {'seed': (0, 1)}")

    monkeypatch.setattr(quickstart, "main", refused)
    assert main(["quickstart"]) == 2
    assert capsys.readouterr().err.startswith("genlib quickstart: error: runs/q was trained")
    entry = 'if __name__ == "__main__":\n    raise SystemExit(run_recipe(main))'
    for name in RECIPES:  # python -m recipes.NAME goes through the same wrapper
        source = inspect.getsource(importlib.import_module(f"genlib.recipes.{name}"))
        assert source.rstrip().endswith(entry), name
