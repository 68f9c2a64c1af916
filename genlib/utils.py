"""Small shared helpers: device choice, seeding, atomic checkpoints and argument validation."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "default_device",
    "seed_everything",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "check_tensor",
    "check_positive",
    "check_int",
]


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a CPU generator seeded the same way."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds code that uses the legacy global RNG)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, as :func:`atomic_save` does (e.g. progress records of a study)."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint written by :func:`atomic_save`, with a clear error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a file written by genlib)")
    return torch.load(path, map_location=map_location, weights_only=False)


def check_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    floating: bool = False,
    finite: bool = True,
) -> torch.Tensor:
    """Validate a tensor argument; raise ``ValueError`` naming ``name`` and the expected form."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            dims = " or ".join(map(str, allowed))
            raise ValueError(f"{name} must have {dims} dims, got shape {tuple(x.shape)}")
    if floating and not (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Validate a scalar hyper-parameter: finite and > 0 (or >= 0 with ``allow_zero``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validate an integer hyper-parameter ``>= minimum`` (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
