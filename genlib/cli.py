"""The ``genlib`` console script: a thin front for the recipes (``genlib NAME --help``).

The recipes are installed as :mod:`genlib.recipes` (the repository's ``recipes/`` folder, where
``python -m recipes.NAME`` runs the same code). ``genlib sample ...`` runs
``genlib.recipes.sample_synthetic``; other names map to ``genlib.recipes.NAME``.
"""

from __future__ import annotations

import importlib
import sys

ALIASES = {
    "sample": "sample_synthetic",
    "xor": "delayed_xor",
    "svhn": "svhn_semisup",
    "vctk": "vctk_resynthesis",
}
RECIPES = (
    "quickstart", "vae_optimizers", "delayed_xor", "svhn_semisup", "sample_synthetic", "vctk_resynthesis"
)


def main(argv: list[str] | None = None) -> int:
    """Run ``genlib COMMAND [options]``; returns the exit status (argparse errors exit with status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join(RECIPES + tuple(ALIASES))
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: genlib COMMAND [--help] [options]\n\ncommands: {names}")
        return 0
    name = ALIASES.get(argv[0], argv[0])
    if name not in RECIPES:
        print(f"genlib: unknown command {argv[0]!r}; expected one of: {names}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"genlib.recipes.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"genlib.recipes.{name}":
            raise
        print(f"genlib: the {name!r} recipe is not part of this version yet", file=sys.stderr)
        return 2
    from genlib.cli_args import run_recipe

    # argparse names the program after sys.argv[0]: make each recipe's usage line read "genlib NAME ...".
    saved_argv = sys.argv
    sys.argv = [f"genlib {argv[0]}", *argv[1:]]
    try:
        return run_recipe(module.main, argv[1:], prog=f"genlib {argv[0]}")
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    raise SystemExit(main())
