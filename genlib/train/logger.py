"""A tiny metrics logger: one JSON object per line (``name.jsonl``) plus a CSV view (``name.csv``).

Each :meth:`MetricsLogger.log` call appends one record and flushes it, so a crashed run keeps every line
written so far (a line cut short by the crash is dropped when the file is read back). The CSV's columns are
the union of the keys seen; when a new key appears the CSV is rewritten with the wider header (cheap: logs
are per epoch or every N steps). Lines are strict JSON: NaN and infinities are written as ``null``.

With ``tensorboard=True`` the numeric metrics also go to TensorBoard event files (``torch.utils.tensorboard``,
which needs the optional ``tensorboard`` package), under ``directory/tensorboard/name``:
``tensorboard --logdir directory/tensorboard`` shows every logger of a run side by side.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlib.utils import atomic_write_text, json_dumps

__all__ = ["MetricsLogger", "read_jsonl"]


def _plain(value: Any, key: str) -> Any:
    """Python scalars for JSON/CSV: 0-d tensors and NumPy scalars become numbers."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {key!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf: strict parsers reject them
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise ValueError(f"metric {key!r} must be a number, string, bool or None, got {type(value).__name__}")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``.jsonl`` metrics file.

    A last line cut short (a run killed while writing it) is skipped with a warning; a damaged line
    elsewhere raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    for n, (i, line) in enumerate(numbered):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if n == len(numbered) - 1:
                warnings.warn(f"{path}: line {i} is incomplete (a run stopped while writing it); skipped",
                              stacklevel=2)
                break
            raise ValueError(f"{path}: line {i} is not a JSON record ({err})") from None
    return records


class MetricsLogger:
    """Append metric records to ``directory/name.jsonl`` and ``directory/name.csv``.

    Args:
        directory: folder for the two files (created if missing), e.g. next to a run's results.
        name: file stem.
        resume: keep and continue existing files (e.g. after resuming from a checkpoint); otherwise they
            are started afresh. After a checkpoint resume at step ``s`` call :meth:`rewind` so rows
            logged after ``s`` by the interrupted run are not there twice.
        tensorboard: also write every numeric metric as a TensorBoard scalar (``SummaryWriter.add_scalar``)
            to :attr:`tensorboard_dir` = ``directory/tensorboard/name``. Needs the ``tensorboard`` package
            (``pip install tensorboard``); without the option nothing of it is imported.
        step_key: the metric used as TensorBoard's step (e.g. ``"iter"`` or ``"epoch"``); a record without
            it is placed at its position in :attr:`records`. Strings, bools and ``None`` are not plotted.

    ``log(step=3, loss=0.5, acc=0.9)`` returns the record written (NaN / inf as ``None``). :attr:`records`
    holds all of them. The TensorBoard files follow the same rules: a fresh start deletes this logger's old
    event files, and :meth:`rewind` hides the rewound steps' points in TensorBoard (its ``purge_step``).
    Call :meth:`close` (or use the logger as a context manager) to flush and close the TensorBoard writer.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        name: str = "metrics",
        resume: bool = False,
        tensorboard: bool = False,
        step_key: str = "step",
    ):
        if not isinstance(name, str) or not name or os.sep in name:
            raise ValueError(f"name must be a non-empty file stem, got {name!r}")
        if not isinstance(tensorboard, bool):
            raise ValueError(f"tensorboard must be a bool, got {tensorboard!r}")
        if not isinstance(step_key, str) or not step_key:
            raise ValueError(f"step_key must be a non-empty metric name, got {step_key!r}")
        if tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "MetricsLogger(tensorboard=True) needs the tensorboard package: pip install tensorboard "
                "(or pip install genlib[dev])"
            )
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.directory / f"{name}.jsonl"
        self.csv_path = self.directory / f"{name}.csv"
        self.tensorboard_dir: Path | None = self.directory / "tensorboard" / name if tensorboard else None
        self.step_key = step_key
        self._writer: Any = None  # a SummaryWriter when tensorboard=True
        self.records: list[dict[str, Any]] = []
        if resume and self.jsonl_path.is_file():
            self.records = read_jsonl(self.jsonl_path)
        self._rewrite()  # also drops a half-written last line, which the next append would extend
        if self.tensorboard_dir is not None:
            if not resume and self.tensorboard_dir.is_dir():
                for old in self.tensorboard_dir.glob("events.out.tfevents.*"):  # only this logger's own
                    old.unlink()
            self._open_writer()

    def _open_writer(self, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is optional

        if self._writer is not None:
            self._writer.close()
        self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=purge_step)

    def _tensorboard_step(self, record: dict[str, Any], index: int) -> int:
        value = record.get(self.step_key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
        return index

    def _write_tensorboard(self, record: dict[str, Any], index: int) -> None:
        if self._writer is None:  # closed earlier: logging again reopens it
            self._open_writer()
        step = self._tensorboard_step(record, index)
        for key, value in record.items():
            if key != self.step_key and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()  # like the JSON lines: what was logged survives a crash

    def log(self, **metrics: Any) -> dict[str, Any]:
        """Append one record (keys in the order given) to both files."""
        if not metrics:
            raise ValueError("log needs at least one metric, e.g. log(step=1, loss=0.3)")
        record = {k: _plain(v, k) for k, v in metrics.items()}
        with open(self.jsonl_path, "a") as f:
            f.write(json_dumps(record) + "\n")
        self.records.append(record)
        if self.tensorboard_dir is not None:
            self._write_tensorboard(record, len(self.records) - 1)
        new = [k for k in record if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite_csv()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(record)
        return record

    def rewind(self, step: int, key: str = "step") -> int:
        """Drop the records whose ``key`` is greater than ``step`` (e.g. those an interrupted run logged
        after its last checkpoint, which the resumed run logs again); returns how many were dropped."""
        gone = [isinstance(r.get(key), (int, float)) and r[key] > step for r in self.records]
        kept = [r for r, g in zip(self.records, gone) if not g]
        dropped = len(self.records) - len(kept)
        if dropped:
            if self.tensorboard_dir is not None:
                # TensorBoard hides points at steps >= purge_step written before it: the rewound ones.
                steps = [self._tensorboard_step(r, i) for i, r in enumerate(self.records) if gone[i]]
                self._open_writer(purge_step=min(steps))
            self.records = kept
            self._rewrite()
        return dropped

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the JSON lines and CSV need nothing); a later
        :meth:`log` opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rewrite(self) -> None:
        """Rewrite both files from :attr:`records` (the JSON lines atomically)."""
        atomic_write_text(self.jsonl_path, "".join(json_dumps(r) + "\n" for r in self.records))
        self.columns = []
        for r in self.records:
            self.columns += [k for k in r if k not in self.columns]
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        with open(self.csv_path, "w", newline="") as f:
            if self.columns:
                w = csv.DictWriter(f, self.columns)
                w.writeheader()
                w.writerows(self.records)

    def series(self, key: str) -> list[Any]:
        """The values of ``key`` over the records that have it (for plotting)."""
        return [r[key] for r in self.records if key in r]

    def history(self) -> dict[str, list[float]]:
        """Numeric columns as ``{key: values}``, NaN where a record lacks the key or holds ``None`` (NaN
        written as JSON null) (for save_loss_curves)."""
        out: dict[str, list[float]] = {}
        for k in self.columns:
            vals = [math.nan if r.get(k) is None else r[k] for r in self.records]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                out[k] = [float(v) for v in vals]
        return out
