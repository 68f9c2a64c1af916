"""A tiny metrics logger: one JSON object per line (``name.jsonl``) plus a CSV view (``name.csv``).

Each :meth:`MetricsLogger.log` call appends one record and flushes it, so a crashed run keeps every line
written so far (a line cut short by the crash is dropped when the file is read back). The CSV's columns are
the union of the keys seen; when a new key appears the CSV is rewritten with the wider header (cheap: logs
are per epoch or every N steps). Lines are strict JSON: NaN and infinities are written as ``null``.
"""

from __future__ import annotations

import csv
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

    ``log(step=3, loss=0.5, acc=0.9)`` returns the record written (NaN / inf as ``None``). :attr:`records`
    holds all of them.
    """

    def __init__(self, directory: str | os.PathLike, name: str = "metrics", resume: bool = False):
        if not isinstance(name, str) or not name or os.sep in name:
            raise ValueError(f"name must be a non-empty file stem, got {name!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.directory / f"{name}.jsonl"
        self.csv_path = self.directory / f"{name}.csv"
        self.records: list[dict[str, Any]] = []
        if resume and self.jsonl_path.is_file():
            self.records = read_jsonl(self.jsonl_path)
        self._rewrite()  # also drops a half-written last line, which the next append would extend

    def log(self, **metrics: Any) -> dict[str, Any]:
        """Append one record (keys in the order given) to both files."""
        if not metrics:
            raise ValueError("log needs at least one metric, e.g. log(step=1, loss=0.3)")
        record = {k: _plain(v, k) for k, v in metrics.items()}
        with open(self.jsonl_path, "a") as f:
            f.write(json_dumps(record) + "\n")
        self.records.append(record)
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
        kept = [r for r in self.records if not (isinstance(r.get(key), (int, float)) and r[key] > step)]
        dropped = len(self.records) - len(kept)
        if dropped:
            self.records = kept
            self._rewrite()
        return dropped

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
