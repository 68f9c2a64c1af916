"""Small shared helpers: device choice, seeding, atomic checkpoints, strict JSON and argument validation.

Argument validation has a global switch, as ``torch.distributions`` has (:func:`set_validate_args`,
:func:`validation_enabled`, the context manager :func:`validate_args`), and the classes that check inputs on
hot paths take ``validate_args: bool | None = None`` (``None`` follows the switch). With it off, nothing on
those paths reads tensor values on the host (no ``.item()``, ``bool(tensor)``, ``int(tensor)``), so
``torch.compile`` captures them without graph breaks and no step waits on a device sync; checks on Python
metadata alone (shape, dtype, ndim) stay on, since they cost nothing and never break a graph.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "json_safe",
    "json_dumps",
    "write_json",
    "check_tensor",
    "check_positive",
    "check_int",
    "set_validate_args",
    "validation_enabled",
    "validate_args",
    "resolve_validate_args",
    "hash_seed",
    "derive_seed",
]

# On by default, like torch.distributions: clear errors first, speed when asked for.
_VALIDATE_ARGS = True


def set_validate_args(flag: bool) -> None:
    """Switch genlib's value checks on hot paths on (the default) or off, for every object whose own
    ``validate_args`` is ``None``.

    Off, the VAE's ELBO, the likelihoods' ``log_prob``, the latent EBM's energy and the Langevin samplers skip
    the checks that read tensor values (NaN / Inf inputs, labels out of range, diverging chains), so they
    compile without graph breaks; bad input then yields NaN or an indexing error instead of a clear message.
    """
    global _VALIDATE_ARGS
    if not isinstance(flag, bool):
        raise ValueError(f"flag must be a bool, got {flag!r}")
    _VALIDATE_ARGS = flag


def validation_enabled() -> bool:
    """Whether genlib's value checks are on by default (see :func:`set_validate_args`)."""
    return _VALIDATE_ARGS


@contextmanager
def validate_args(flag: bool) -> Iterator[None]:
    """Context manager: :func:`set_validate_args` (``flag``) inside the block, the previous setting after.

    Enter it outside a compiled function (``torch.compile`` guards on the setting, so switching it later
    recompiles rather than silently reusing a graph built under the other setting).
    """
    previous = _VALIDATE_ARGS
    set_validate_args(flag)
    try:
        yield
    finally:
        set_validate_args(previous)


def resolve_validate_args(flag: bool | None, name: str = "validate_args") -> bool:
    """An object's effective setting: ``flag`` itself, or the global default when it is ``None``."""
    if flag is None:
        return _VALIDATE_ARGS
    if not isinstance(flag, bool):
        raise ValueError(f"{name} must be True, False or None (None: genlib.set_validate_args), got {flag!r}")
    return flag


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hash_seed(text: str) -> int:
    """A 63-bit seed from ``text`` (blake2b): the key of one named random stream, the same on any machine."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream ``(seed, *keys)`` (e.g. ``(seed, "batches", step)``): distinct keys give
    unrelated streams, the same keys the same stream on any machine, rank or world size."""
    return hash_seed(":".join(str(k) for k in (seed, *keys)))


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


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is empty, truncated or not a torch file at all (the message names it)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint file whose pickle would import or call code (refused; the message names it)."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint written by :func:`atomic_save` without running any code from the file.

    Only tensors, plain containers and scalars are unpickled (``torch.load(weights_only=True)``), which is
    all genlib writes: a file whose pickle asks for anything else (e.g. ``os.system``) raises
    :class:`UnsafeCheckpointError` before anything from it runs. An empty, truncated or foreign file raises
    :class:`CorruptCheckpointError`; a missing one ``FileNotFoundError``. Every message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a file written by genlib)")
    # torch.save writes a zip archive whose central directory comes last: an empty, truncated or random
    # file fails this check, and a raw (non-torch) pickle is never handed to an unpickler.
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        what = "empty" if size == 0 else f"{size} bytes but not a torch zip archive (truncated or foreign)"
        raise CorruptCheckpointError(f"checkpoint {path} is damaged: {what}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - the names only make the message more precise
            names = []
        asked = f" (it imports {', '.join(names)})" if names else ""
        raise UnsafeCheckpointError(
            f"refusing to load {path}: its pickle asks for code a genlib checkpoint never holds{asked}; "
            "it was not written by genlib, or was altered. Nothing from it was run."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, OSError) as err:
        raise CorruptCheckpointError(f"checkpoint {path} is damaged: {err}") from err


def json_safe(obj: Any) -> Any:
    """``obj`` as strict-JSON data: NaN / ±inf become ``None`` (JSON has no such numbers), tuples lists,
    NumPy scalars and one-element tensors Python numbers, paths and devices strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic) or (isinstance(obj, torch.Tensor) and obj.numel() == 1):
        return json_safe(obj.item())
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return json_safe(obj.tolist())
    if isinstance(obj, (os.PathLike, torch.device)):
        return str(obj)
    raise ValueError(f"cannot write a {type(obj).__name__} as JSON: {obj!r:.100}")


def json_dumps(obj: Any, indent: int | None = None) -> str:
    """``json.dumps`` of :func:`json_safe` (``obj``): strict JSON that any parser reads (no bare ``NaN``)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (:func:`json_dumps`) to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json_dumps(obj, indent=indent) + "\n")


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
    # math, not NumPy: a NumPy bool would break a torch.compile graph wherever this runs inside one.
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validate an integer hyper-parameter ``>= minimum`` (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
