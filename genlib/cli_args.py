"""Argument validators shared by the recipes' command lines: one-line argparse errors that name the flag.

Each validator is an argparse ``type=``: it raises :class:`argparse.ArgumentTypeError`, which argparse turns
into ``error: argument --flag: <why>`` and exit status 2 instead of a traceback from deep inside a run::

    p.add_argument("--device", type=device, default=None)
    p.add_argument("--max-iters", type=int_at_least(1))
    p.add_argument("--grad-clip", type=positive_float)

:func:`find_data_folder` lets every image recipe's ``--data-dir`` be either the data root (the folder holding
``digits/mnist_4k.npz``) or the folder holding the files itself.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "device",
    "int_at_least",
    "positive_float",
    "float_in",
    "find_data_folder",
    "DATA_DIR_HELP",
    "add_engine_arguments",
    "engine_options",
    "run_recipe",
]

# Appended to each image recipe's --data-dir help, so every recipe states the same two accepted forms.
DATA_DIR_HELP = "the data root (holding digits/mnist_4k.npz) or the folder holding the files itself"

_CUDA = re.compile(r"cuda(?::(\d+))?")


def device(value: str) -> str:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` (a visible GPU) or ``auto`` (cuda when visible, else cpu).

    Returns the device string (``auto`` resolved). A GPU asked for on a machine without one is refused here,
    before any data is loaded, rather than by a CUDA error mid-run.
    """
    text = value.strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = _CUDA.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--device must be cpu, cuda or cuda:N (or auto), got {value!r}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"--device {value} requested but no CUDA GPU is visible; use --device cpu"
        )
    if match.group(1) is not None:
        count = torch.cuda.device_count()
        if int(match.group(1)) >= count:
            raise argparse.ArgumentTypeError(
                f"--device {value} requested but only {count} CUDA GPU(s) are visible "
                f"(cuda:0 .. cuda:{count - 1})"
            )
    return text


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value!r}")
        return number

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


def _finite(value: str, expected: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a finite number ``> 0`` (``inf`` and ``nan`` are refused: e.g. ``--grad-clip inf``
    would silently switch clipping off)."""
    number = _finite(value, "a finite number > 0")
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value!r}")
    return number


def float_in(low: float, high: float, low_inclusive: bool = False, high_inclusive: bool = True
             ) -> Callable[[str], float]:
    """An argparse type: a finite number in the interval from ``low`` to ``high`` (open or closed ends)."""
    interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    expected = f"a number in {interval}"

    def parse(value: str) -> float:
        number = _finite(value, expected)
        above = number >= low if low_inclusive else number > low
        below = number <= high if high_inclusive else number < high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {value!r}")
        return number

    parse.__name__ = "float_in"
    return parse


def find_data_folder(
    data_dir: str | os.PathLike, filename: str, subdirs: Sequence[str] = ("digits",)
) -> Path | None:
    """The folder holding ``filename``: ``data_dir`` itself, else the first of ``data_dir/<subdir>`` that
    holds it (for a data root, ``digits/`` holds ``mnist_4k.npz``); ``None`` when none does."""
    root = Path(data_dir).expanduser()
    for folder in (root, *(root / s for s in subdirs)):
        if (folder / filename).is_file():
            return folder
    return None


# The training engine's options that add_engine_arguments adds as flags (--compile-optimizers for
# compile_optimizers).
_ENGINE_OPTIONS = ("precision", "compile", "compile_optimizers", "num_workers")


def run_recipe(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
               prog: str | None = None) -> int:
    """Run a recipe's ``main(argv)`` as a command: its exit status, and a resume refused because the output
    folder holds a run with other settings (:class:`~genlib.train.SettingsMismatchError`, which names each
    setting) printed as one line, ``PROG: error: ...`` with status 2 like argparse's errors, not as a
    traceback. Called from Python, ``main`` itself still raises."""
    from genlib.train.checkpoint import SettingsMismatchError

    try:
        result = main(argv)
    except SettingsMismatchError as err:
        print(f"{prog or Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        return 2
    # anything but an int (None) means success
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision``, ``--compile``, ``--compile-optimizers`` and ``--num-workers``: the training engine's
    options (:class:`genlib.train.Engine`), the same flags in every recipe that trains. Read them with
    :func:`engine_options`."""
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast precision of the loss (fp16 with a gradient scaler; default fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model and loss (genlib's value checks off inside)")
    parser.add_argument("--compile-optimizers", action="store_true",
                        help="torch.compile each optimizer's step too (no NaN check of PSGD's gradients; "
                        "not with the Newton-type *-hvp optimizers or fp16)")
    parser.add_argument("--num-workers", type=int_at_least(0), default=0,
                        help="DataLoader worker processes preparing batches (default 0: in the trainer)")


def engine_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   optimizers: Sequence[str]) -> dict[str, Any]:
    """The engine's options parsed from :func:`add_engine_arguments`' flags, as keyword arguments
    (``precision``, ``compile``, ``compile_optimizers``, ``num_workers``: fields of the recipes' configs and
    of :class:`~genlib.train.SemiSupervisedConfig`). First refuses, naming the flags, what
    :class:`genlib.train.Engine` cannot compile: ``--compile-optimizers`` with a Newton-type optimizer among
    ``optimizers`` (the recipes' ``*-hvp`` names step with a closure, which differentiates the loss twice) or
    with ``--precision fp16`` (a ``GradScaler`` steps the optimizers)."""
    if args.compile_optimizers:
        closure = [name for name in optimizers if name.endswith("-hvp")]
        if closure:
            parser.error(f"--compile-optimizers: {', '.join(closure)} steps with a closure, which runs "
                         "eager; drop --compile-optimizers or choose a whitening optimizer")
        if args.precision == "fp16":
            parser.error("--compile-optimizers: --precision fp16 steps the optimizers through a "
                         "GradScaler, which runs eager; use bf16 or fp32")
    return {name: getattr(args, name) for name in _ENGINE_OPTIONS}
