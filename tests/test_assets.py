"""The README's figures: every image it links is in the repository, and every figure that
``assets/make_figures.py`` makes has a README entry showing it with the recipe command it comes from.
Cheap: nothing is run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from assets.make_figures import ASSETS, FIGURES, MAX_BYTES, STAMP, ensure_run, main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# markdown images ![alt](path) and HTML <img src="path">
LINKS = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README) + re.findall(r"<img[^>]*\bsrc=\"([^\"]+)\"", README)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_image_the_readme_links_is_in_the_repository():
    local = [link for link in LINKS if not link.startswith(("http://", "https://"))]
    assert local, "the README links no images"
    missing = [link for link in local if not (REPO / link).is_file()]
    assert not missing, f"README links images that are not in the repository: {missing}"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_has_a_readme_entry_with_its_command(name):
    spec = FIGURES[name]
    assert f"assets/{name}.png" in LINKS, f"README shows no assets/{name}.png"
    assert spec.command in README, f"README does not give {name}'s command `{spec.command}`"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_is_a_small_png(name):
    path = ASSETS / f"{name}.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size <= MAX_BYTES


def test_a_finished_run_is_reused_and_a_missing_one_named(tmp_path):
    spec = FIGURES["psgd_vs_adam"]
    with pytest.raises(FileNotFoundError, match="no finished run"):
        ensure_run(spec, tmp_path, allow_run=False)
    folder = tmp_path / spec.recipe
    folder.mkdir()
    for f in spec.outputs:
        (folder / f).write_text("{}")
    (folder / STAMP).write_text(json.dumps({"recipe": spec.recipe, "args": list(spec.args)}))
    assert ensure_run(spec, tmp_path, allow_run=False) == folder
    # the same folder made by another command is not taken for this figure's run
    (folder / STAMP).write_text(json.dumps({"recipe": spec.recipe, "args": ["--steps", "7"]}))
    with pytest.raises(FileNotFoundError):
        ensure_run(spec, tmp_path, allow_run=False)


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--only" in capsys.readouterr().out
    for argv in (["--only", "no_such_figure"], ["--rerun", "--no-run"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
