"""Periodic, atomic checkpoints that resume a run exactly where it stopped.

A checkpoint stores the ``state_dict`` of every stateful object it is given (models, optimizers, LR
schedulers, gradient scalers, genlib preconditioners), the state of any ``torch.Generator`` (e.g. the one
shuffling batches), the global RNG states (Python, NumPy, torch CPU and every CUDA device), the step and an
``extra`` dict (history, config). Restoring all of them makes the resumed run draw the same random numbers
in the same order, so it continues bit-for-bit like an uninterrupted one (on the same device and build)::

    ckpt = Checkpointer("runs/x/checkpoints", every=1000, keep=3, settings={"seed": 0, "lr": 1e-3})
    resumed = ckpt.resume(model=model, optimizer=opt, max_step=total)   # None on a fresh start
    start = resumed.step if resumed else 0
    for step in range(start, total):
        ...train one step...
        ckpt.maybe_save(step + 1, model=model, optimizer=opt, extra={"loss": loss.item()})

Trustworthy resume:

- ``settings`` (everything the run's result depends on: seed, data, optimizer, hyper-parameters; not the
  number of steps to train to, progress bars, device or evaluation cadence) are recorded in every checkpoint,
  and :meth:`Checkpointer.resume` refuses, naming each changed setting as (saved, now), before loading
  anything into the given objects. ``max_step`` refuses a checkpoint that has already trained further than
  the run asks for.
- Files are read with ``torch.load(weights_only=True)`` only (:func:`genlib.utils.load_checkpoint`): a file
  whose pickle would run code is refused.
- A damaged newest checkpoint (truncated, empty) is skipped with a warning naming it and the older one
  resumed from; leftover temporary files of interrupted saves are removed.
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlib.utils import CorruptCheckpointError, atomic_save, json_safe, load_checkpoint, write_json

__all__ = [
    "Checkpointer",
    "Resumed",
    "SettingsMismatchError",
    "check_settings_file",
    "get_rng_state",
    "normalize_settings",
    "set_rng_state",
    "settings_diff",
]

_FORMAT = "genlib.checkpoint"
_RESERVED = {"step", "extra", "path", "map_location", "restore_rng", "force", "max_step", "max_step_name"}
_UNSET = "<unset>"


class SettingsMismatchError(ValueError):
    """An output folder holds a run made under other settings than the run that tries to resume from it, or
    one further along than this run's total steps."""


def normalize_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Flat ``{"a.b": value}`` view of a (nested) settings dict with JSON-like values, for comparison.

    Dataclasses become dicts, tuples lists and NaN ``None`` (so a value compares equal to itself after a
    round trip through a file); nested dicts are flattened with dotted keys so a change names the leaf.
    """
    if not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict of name -> value, got {type(settings).__name__}")
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            try:
                flat[prefix] = json_safe(value)
            except ValueError as err:
                raise ValueError(f"setting {prefix!r}: {err}") from None

    walk("", settings)
    return flat


def settings_diff(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (saved, now)}`` for every setting that differs (``"<unset>"`` where one side lacks it)."""
    saved, now = normalize_settings(saved), normalize_settings(now)
    return {
        k: (saved.get(k, _UNSET), now.get(k, _UNSET))
        for k in list(saved) + [k for k in now if k not in saved]
        if saved.get(k, _UNSET) != now.get(k, _UNSET)
    }


def _mismatch_message(where: str, changed: dict[str, tuple[Any, Any]], folder: Path) -> str:
    listed = ", ".join(f"{k!r}: {v!r}" for k, v in changed.items())
    return (f"{where} was trained with other settings (saved, now): {{{listed}}}; use another --out, or "
            f"delete {folder} to start over")


def check_settings_file(
    path: str | os.PathLike, settings: dict[str, Any], *, guards: str | os.PathLike | None = None
) -> None:
    """Tie saved results to the settings that produced them, for results that are not checkpoints.

    The first call writes ``settings`` to the JSON file ``path`` (atomically); later calls raise
    :class:`SettingsMismatchError` naming every setting that differs as (saved, now). ``guards`` is the
    results file the settings vouch for (e.g. a study's progress records): when it exists but ``path``
    does not, its settings are unknown and the call refuses too.
    """
    path = Path(path)
    now = normalize_settings(settings)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is damaged ({err}); delete {path.parent} to start over") from None
        changed = settings_diff(saved, now)
        if changed:
            raise SettingsMismatchError(_mismatch_message(str(guards or path), changed, path.parent))
        return
    if guards is not None and Path(guards).is_file():
        raise SettingsMismatchError(
            f"{guards} has no record of its settings ({path.name} is missing), so it cannot be told apart "
            f"from another run's; use another --out, or delete {path.parent} to start over"
        )
    write_json(path, now)


def get_rng_state() -> dict[str, Any]:
    """Global RNG states: Python ``random``, NumPy's global generator, torch CPU and every CUDA device."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - what user code draws from
    return {
        "python": random.getstate(),
        # keys as a tensor: a checkpoint holds no NumPy arrays, so it loads with weights_only=True
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state` (CUDA ones only where the same GPUs are visible)."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
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
            ``None`` keeps all. Keep at least 2 to have an intact one to fall back to if the newest is
            damaged.
        prefix: file-name prefix, so several checkpoint series can share a folder.
        settings: everything the run's result depends on (seed, data, optimizer, model and training
            hyper-parameters; nested dicts and dataclasses allowed), recorded in every checkpoint.
            :meth:`resume` refuses a checkpoint saved under other settings. Leave out what may change
            between a run and its continuation: the number of steps to train to, progress bars, device,
            evaluation / checkpoint cadence. ``None``: no check.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int = 1000,
        keep: int | None = 3,
        prefix: str = "ckpt",
        settings: dict[str, Any] | None = None,
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
        self.settings = None if settings is None else normalize_settings(settings)
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

    def _remove_leftovers(self) -> None:
        """Delete temporary files of saves that were killed before their rename (``.{prefix}_*.tmp``)."""
        if self.directory.is_dir():
            for p in self.directory.glob(f".{self.prefix}_*.tmp"):
                if self._pattern.match(p.name[1:].split(".pt.", 1)[0] + ".pt"):
                    p.unlink(missing_ok=True)

    def save(self, step: int, *, extra: dict[str, Any] | None = None, **stateful: Any) -> Path:
        """Write a checkpoint of ``step`` now (atomically) and prune old ones; returns its path.

        ``stateful`` maps names to objects with ``state_dict()`` / ``load_state_dict()`` or to
        ``torch.Generator`` objects; :meth:`resume` restores them by the same names. ``extra`` must hold
        plain data (containers, numbers, strings, tensors): checkpoints are read back with
        ``weights_only=True``.
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
            "settings": self.settings,
            "extra": extra or {},
        }
        self._remove_leftovers()
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

    def _load_newest_intact(self, map_location: str | torch.device | None) -> tuple[Path, Any] | None:
        """The newest checkpoint that loads, warning about each damaged newer one it skips."""
        files = self.checkpoints()
        damaged: list[tuple[Path, CorruptCheckpointError]] = []
        for path in reversed(files):
            try:
                record = load_checkpoint(path, map_location=map_location)
            except CorruptCheckpointError as err:
                damaged.append((path, err))
                continue
            for bad, err in damaged:
                warnings.warn(
                    f"checkpoint {bad} is damaged ({err}); resuming from the older {path} instead",
                    stacklevel=3,
                )
            return path, record
        if damaged:
            names = ", ".join(str(p) for p, _ in damaged)
            raise CorruptCheckpointError(
                f"every checkpoint in {self.directory} is damaged ({names}): {damaged[0][1]}; "
                f"delete {self.directory} to start over"
            )
        return None

    def check_settings(self, record: dict[str, Any], path: str | os.PathLike) -> None:
        """Raise :class:`SettingsMismatchError` naming every setting of ``record`` that differs from
        :attr:`settings` as (saved, now); nothing is checked when this checkpointer has no settings."""
        if self.settings is None:
            return
        saved = record.get("settings")
        if saved is None:
            raise SettingsMismatchError(
                f"{path} records no settings, so it cannot be told apart from another run's; use another "
                f"--out, or delete {self.directory} to start over"
            )
        changed = settings_diff(saved, self.settings)
        if changed:
            raise SettingsMismatchError(_mismatch_message(str(path), changed, self.directory))

    def resume(
        self,
        *,
        path: str | os.PathLike | None = None,
        map_location: str | torch.device | None = "cpu",
        restore_rng: bool = True,
        max_step: int | None = None,
        max_step_name: str = "max_step",
        **stateful: Any,
    ) -> Resumed | None:
        """Restore the newest checkpoint (or ``path``) into the given objects; ``None`` when there is none.

        Every name passed must be in the checkpoint (names saved but not passed are ignored, e.g. to load
        only a model). With ``restore_rng`` the global RNG states are restored too, which an exact
        continuation needs. Tensors are loaded onto ``map_location`` first; ``load_state_dict`` then
        moves them to where each object's parameters live.

        Before anything is loaded into the objects the checkpoint's settings are compared with
        :attr:`settings` (:class:`SettingsMismatchError` naming each change) and, with ``max_step`` (the
        step the run trains to; ``max_step_name`` is how the message names it, e.g. ``"--epochs"``), a
        checkpoint already past it is refused (``ValueError``). Without ``path``, a damaged newest file is
        skipped with a warning naming it and the older one used.
        """
        bad = _RESERVED & set(stateful)
        if bad:
            raise ValueError(f"names {sorted(bad)} are reserved; pass the objects under other names")
        if path is None:
            self._remove_leftovers()
            found = self._load_newest_intact(map_location)
            if found is None:
                return None
            path, record = found
        else:
            record = load_checkpoint(path, map_location=map_location)
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a genlib Checkpointer file")
        self.check_settings(record, path)
        step = int(record["step"])
        if max_step is not None and step > max_step:
            raise SettingsMismatchError(
                f"{path} is at step {step}, more than {max_step_name} {max_step}: raise {max_step_name}, use "
                f"another --out, or delete {self.directory} to start over"
            )
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
        return Resumed(step=step, extra=record["extra"], path=Path(path))
