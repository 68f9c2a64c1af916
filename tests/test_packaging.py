"""Packaging: the wheel ships the recipes as ``genlib.recipes`` (no top-level ``recipes``), ``py.typed`` and
the ``genlib`` console script; from the repository ``python -m recipes.NAME`` still works.

The wheel is built from a copy of the sources with ``pip wheel --no-deps`` (pip fetches the build backend from
the package index) and installed by unpacking it -- a pure-Python wheel is exactly its files -- instead of a
fresh virtual environment, which would reinstall the whole torch stack.
"""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from genlib.cli import RECIPES

ROOT = Path(__file__).resolve().parents[1]
_SOURCES = ("pyproject.toml", "README.md", "genlib", "recipes")
_NETWORK_ERRORS = (
    "No matching distribution found", "Could not fetch", "Failed to establish a new connection",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in _SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        if any(e in run.stdout + run.stderr for e in _NETWORK_ERRORS):
            pytest.skip(f"pip could not fetch the build backend: {run.stderr[-300:]}")
        raise AssertionError(f"pip wheel failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    (whl,) = out.glob("genlib-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def _run_installed(target: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -S``: no .pth files, so the development (editable) install cannot leak in; genlib comes only
    from ``target`` (first on the path), the dependencies from this interpreter's site-packages (last)."""
    prefix = (f"import sys; sys.path.insert(0, {str(target)!r}); "
              f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n")
    return subprocess.run([sys.executable, "-S", "-c", prefix + code], capture_output=True, text=True,
                          cwd=cwd, env={"OMP_NUM_THREADS": "1", "PATH": ""})


@pytest.mark.slow
def test_wheel_ships_recipes_inside_genlib_and_nothing_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"genlib", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert "genlib/py.typed" in names
    assert "genlib/recipes/__init__.py" in names
    for name in RECIPES:
        assert f"genlib/recipes/{name}.py" in names
    # Every module of the source tree is in the wheel (the package list in pyproject.toml is complete).
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "genlib").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))


@pytest.mark.slow
def test_wheel_declares_the_genlib_console_script(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (entry,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        config = configparser.ConfigParser()
        config.read_string(zf.read(entry).decode())
    assert config["console_scripts"]["genlib"].strip() == "genlib.cli:main"


@pytest.mark.slow
def test_installed_wheel_runs_genlib_quickstart_help_and_has_no_recipes_package(installed, tmp_path):
    code = (
        "import sys, genlib\n"
        f"assert genlib.__file__.startswith({str(installed)!r}), genlib.__file__\n"
        "try:\n    import recipes\nexcept ModuleNotFoundError:\n    print('no top-level recipes')\n"
        "from genlib.cli import main\n"
        "sys.exit(main(['quickstart', '--help']))\n"
    )
    run = _run_installed(installed, code, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("no top-level recipes\nusage: genlib quickstart ")


def test_recipes_import_each_other_relatively():
    # An absolute `recipes.X` import works from the repository only; installed, the package is genlib.recipes.
    for path in (ROOT / "recipes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                module = node.module or ""
                assert module.split(".")[0] != "recipes", f"{path.name}: from {module} import"
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "recipes" for a in node.names), f"{path.name}: import"


def test_recipes_run_as_modules_from_the_repository():
    run = subprocess.run([sys.executable, "-m", "recipes.quickstart", "--help"], capture_output=True,
                         text=True, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("usage: ")
    assert "--quick" in run.stdout


def test_py_typed_marks_the_package():
    assert (ROOT / "genlib" / "py.typed").is_file()
