"""The ``genlib`` console script dispatches to recipes and rejects unknown commands."""

import pytest

from genlib.cli import main


def test_unknown_command_is_rejected_with_the_valid_names(capsys):
    assert main(["bogus"]) == 2
    assert "quickstart" in capsys.readouterr().err


def test_alias_dispatches_to_the_recipe_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["xor", "--help"])
    assert exit_info.value.code == 0
    assert "delayed" in capsys.readouterr().out.lower()
