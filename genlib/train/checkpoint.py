"""Periodic, atomic checkpoints that resume a run exactly where it stopped.

A checkpoint stores the ``state_dict`` of every stateful object it is given (models, optimizers, LR
schedulers, gradient scalers, genlib preconditioners), the state of any ``torch.Generator`` (e.g. the one
shuffling batches), the global RNG states (Python, NumPy, torch CPU and every CUDA device), the step and an
``extra`` dict (history, config). Restoring all of them makes the resumed run draw the same random numbers
in the same order, so it continues bit-for-bit like an uninterrupted one (on the same device and build)::

    ckpt = Checkpointer("runs/x/checkpoints", every=1000, keep=3)
    resumed = ckpt.resume(model=model, optimizer=opt)          # None on a fresh start
    start = resumed.step if resumed else 0
    for step in range(start, total):
        ...train one step...
        ckpt.maybe_save(step + 1, model=model, optimizer=opt, extra={"loss": loss.item()})
"""

from __future__ import annotations

import os
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlib.utils import atomic_save, load_checkpoint

__all__ = ["Checkpointer", "Resumed", "get_rng_state", "set_rng_state"]

_FORMAT = "genlib.checkpoint"
_RESERVED = {"step", "extra", "path", "map_location", "restore_rng", "force"}


def get_rng_state() -> dict[str, Any]:
    """Global RNG states: Python ``random``, NumPy's global generator, torch CPU and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the global state is what user code draws from
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state` (CUDA ones only where the same GPUs are visible)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())  # map_location may have moved the byte tensors
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all([c.cpu() for c in cuda])
        else:
            warnings.warn(
                f"checkpoint holds RNG states for {len(cuda)} CUDA devices but "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} are visible: CUDA RNG not "
                "restored, so GPU random draws will differ from the original run",
                stacklevel=3,
            )


@dataclass
class Resumed:
    """What :meth:`Checkpointer.resume` restored: the step to continue from, the ``extra`` dict, the file."""

    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _state_of(name: str, obj: Any) -> tuple[str, Any]:
    if isinstance(obj, torch.Generator):
        return "generator", obj.get_state()
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return "state_dict", obj.state_dict()
    raise ValueError(
        f"{name} must have state_dict()/load_state_dict() (a module, optimizer, scheduler...) or be a "
        f"torch.Generator, got {type(obj).__name__}"
    )


class Checkpointer:
    """Atomic checkpoints ``{prefix}_{step:08d}.pt`` in ``directory`` every ``every`` steps; keeps ``keep``.

    Args:
        directory: folder for the checkpoint files (created on first save).
        every: :meth:`maybe_save` writes when ``step % every == 0``.
        keep: how many of the newest checkpoints to keep (older ones are deleted after each save);
            ``None`` keeps all.
        prefix: file-name prefix, so several checkpoint series can share a folder.
    """

    def __init__(
        self, directory: str | os.PathLike, every: int = 1000, keep: int | None = 3, prefix: str = "ckpt"
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
            raise ValueError(f"every must be a positive int (steps between checkpoints), got {every!r}")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0):
            raise ValueError(f"keep must be None or a positive int, got {keep!r}")
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"prefix must be a non-empty file-name-safe string, got {prefix!r}")
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self.prefix = prefix
        self._pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)\.pt$")

    def path_for(self, step: int) -> Path:
        """The file a checkpoint of ``step`` is written to."""
        return self.directory / f"{self.prefix}_{step:08d}.pt"

    def checkpoints(self) -> list[Path]:
        """Existing checkpoint files of this series, oldest step first."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = self._pattern.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest checkpoint file, or ``None`` when there is none."""
        files = self.checkpoints()
        return files[-1] if files else None

    def should_save(self, step: int) -> bool:
        """True when ``step`` is a positive multiple of ``every``."""
        return step > 0 and step % self.every == 0

    def save(self, step: int, *, extra: dict[str, Any] | None = None, **stateful: Any) -> Path:
        """Write a checkpoint of ``step`` now (atomically) and prune old ones; returns its path.

        ``stateful`` maps names to objects with ``state_dict()`` / ``load_state_dict()`` or to
        ``torch.Generator`` objects; :meth:`resume` restores them by the same names.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        bad = _RESERVED & set(stateful)
        if bad:
            raise ValueError(f"names {sorted(bad)} are reserved; pass the objects under other names")
        if not stateful:
            raise ValueError("save needs at least one object to checkpoint, e.g. save(step, model=model)")
        if extra is not None and not isinstance(extra, dict):
            raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
        kinds, states = {}, {}
        for name, obj in stateful.items():
            kinds[name], states[name] = _state_of(name, obj)
        record = {
            "format": _FORMAT,
            "step": step,
            "kinds": kinds,
            "states": states,
            "rng": get_rng_state(),
            "extra": extra or {},
        }
        path = atomic_save(record, self.path_for(step))
        if self.keep is not None:
            for old in self.checkpoints()[: -self.keep]:
                old.unlink(missing_ok=True)
        return path

    def maybe_save(
        self, step: int, *, force: bool = False, extra: dict[str, Any] | None = None, **stateful: Any
    ) -> Path | None:
        """:meth:`save` when :meth:`should_save` (or ``force``, e.g. at the last step); else ``None``."""
        if force or self.should_save(step):
            return self.save(step, extra=extra, **stateful)
        return None

    def resume(
        self,
        *,
        path: str | os.PathLike | None = None,
        map_location: str | torch.device | None = "cpu",
        restore_rng: bool = True,
        **stateful: Any,
    ) -> Resumed | None:
        """Restore the newest checkpoint (or ``path``) into the given objects; ``None`` when there is none.

        Every name passed must be in the checkpoint (names saved but not passed are ignored, e.g. to load
        only a model). With ``restore_rng`` the global RNG states are restored too, which an exact
        continuation needs. Tensors are loaded onto ``map_location`` first; ``load_state_dict`` then
        moves them to where each object's parameters live.
        """
        bad = _RESERVED & set(stateful)
        if bad:
            raise ValueError(f"names {sorted(bad)} are reserved; pass the objects under other names")
        if path is None:
            path = self.latest()
            if path is None:
                return None
        record = load_checkpoint(path, map_location=map_location)
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a genlib Checkpointer file")
        missing = sorted(set(stateful) - set(record["states"]))
        if missing:
            raise ValueError(
                f"{path} holds no state for {missing}; it has {sorted(record['states'])}"
            )
        for name, obj in stateful.items():
            kind, state = record["kinds"][name], record["states"][name]
            if kind == "generator":
                if not isinstance(obj, torch.Generator):
                    raise ValueError(f"{name} was saved as a torch.Generator, got {type(obj).__name__}")
                obj.set_state(state)
            else:
                _state_of(name, obj)  # validates the interface
                obj.load_state_dict(state)
        if restore_rng:
            set_rng_state(record["rng"])
        return Resumed(step=int(record["step"]), extra=record["extra"], path=Path(path))
