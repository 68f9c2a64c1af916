"""Generated, labelled, weighted datasets: one file format, a Dataset to read it, and mixing with real data.

File format (version 1)
-----------------------
One ``torch.save`` file (written atomically; conventionally ``*.pt``) holding a dict::

    {
      "format":  "genlib.synthetic_dataset",
      "version": 1,
      "x":       float tensor (N, ...)   generated examples, e.g. images (N, C, H, W) in [0, 1]
      "y":       int64 tensor (N,)       class labels >= 0 (the class each example was generated for)
      "weights": float32 tensor (N,)     per-example loss weights >= 0 (selector weights; 1 if none)
      "meta":    dict                    plain data: str / int / float / bool / None / list / dict / tensor,
                                         e.g. {"source_checkpoint": ..., "sampler": {...}, "selector": {...},
                                         "entropy": tensor (N,)}
    }

All tensors are stored on the CPU. Files are read back with ``torch.load(weights_only=True)``, so opening a
dataset never runs pickled code; that is why ``meta`` must be plain data.

Mixing with real data
---------------------
Every dataset here yields ``(x, y, weight)``. :class:`WeightedConcatDataset` chains datasets that yield
``(x, y)`` (weight 1) or ``(x, y, w)`` and multiplies each part's weights by a coefficient, so
``combine_real_and_synthetic(real, synthetic, synthetic_weight=0.5)`` trains any downstream classifier on
``sum_real ce + 0.5 * sum_synth w * ce``; ``share=0.25`` instead scales the synthetic weights to sum to a
quarter of the real data's.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from genlib.utils import atomic_save

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "save_synthetic_dataset",
    "load_synthetic_dataset",
    "WeightedTensorDataset",
    "SyntheticDataset",
    "WeightedConcatDataset",
    "combine_real_and_synthetic",
]

FORMAT_NAME = "genlib.synthetic_dataset"
FORMAT_VERSION = 1


def _to_tensor(a: Any, name: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    return a


def _validate(x: Any, y: Any, weights: Any | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check and normalise (x, y, weights): float x (N, ...), int64 y (N,) >= 0, float32 weights (N,) >= 0."""
    x, y = _to_tensor(x, "x"), _to_tensor(y, "y")
    if x.ndim < 1 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point tensor (N, ...), got dtype {x.dtype} shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf")
    n = x.shape[0]
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match x, got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise ValueError(f"y must be class labels >= 0, got min {int(y.min())}")
    if weights is None:
        w = torch.ones(n, dtype=torch.float32, device=x.device)
    else:
        w = _to_tensor(weights, "weights")
        if not w.is_floating_point() and w.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"weights must be a real tensor, got dtype {w.dtype}")
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},) to match x, got {tuple(w.shape)}")
        w = w.to(torch.float32)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights contain NaN or Inf")
        if n and float(w.min()) < 0:
            raise ValueError(f"weights must be >= 0, got min {float(w.min())}")
    return x, y.long(), w


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(obj: Any, where: str) -> None:
    """meta must survive ``torch.load(weights_only=True)``: plain containers, scalars and tensors only."""
    if isinstance(obj, _PLAIN) or isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"meta keys must be str, got {k!r} at {where}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ValueError(
        f"meta must be plain data (str, int, float, bool, None, list, tuple, dict, tensor); "
        f"{where} is a {type(obj).__name__}"
    )


def _plain_copy(obj: Any) -> Any:
    """Detached CPU copies of tensors inside meta (numpy scalars become Python numbers)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, dict):
        return {k: _plain_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_copy(v) for v in obj)
    return obj


def save_synthetic_dataset(
    path: str | os.PathLike,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    weights: torch.Tensor | np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Validate and write a synthetic dataset in the format above (atomically); returns the path.

    ``weights`` defaults to ones; ``meta`` (numpy arrays and scalars are converted to tensors / numbers)
    must otherwise be plain data. ``x`` is stored as float32 unless it is float64 / float16 / bfloat16
    already (kept as given).
    """
    x, y, w = _validate(x, y, weights)
    meta = _plain_copy({} if meta is None else meta)
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    _check_plain(meta, "meta")
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "x": x.detach().cpu().contiguous(),
        "y": y.cpu().contiguous(),
        "weights": w.cpu().contiguous(),
        "meta": meta,
    }
    return atomic_save(record, path)


def load_synthetic_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a synthetic dataset file; returns its dict (``x``, ``y``, ``weights``, ``meta``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"synthetic dataset not found: {path} (write one with save_synthetic_dataset)"
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a genlib synthetic dataset file: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a genlib synthetic dataset file (missing format={FORMAT_NAME!r})")
    if record.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported format version {record.get('version')!r}, this reads {FORMAT_VERSION}"
        )
    missing = {"x", "y", "weights", "meta"} - set(record)
    if missing:
        raise ValueError(f"{path} lacks fields {sorted(missing)}")
    try:
        record["x"], record["y"], record["weights"] = _validate(record["x"], record["y"], record["weights"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return record


class WeightedTensorDataset(TensorDataset):
    """Tensors ``x (N, ...)``, ``y (N,)`` and ``weights (N,)`` (default ones) yielding ``(x, y, weight)``.

    A ``TensorDataset`` subclass, so ``.tensors == (x, y, weights)`` and trainers can slice batches
    directly instead of indexing one example at a time.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None):
        x, y, w = _validate(x, y, weights)
        super().__init__(x, y, w.to(x.device))

    @property
    def x(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def y(self) -> torch.Tensor:
        return self.tensors[1]

    @property
    def weights(self) -> torch.Tensor:
        return self.tensors[2]


class SyntheticDataset(WeightedTensorDataset):
    """A synthetic dataset file (see module docstring) as a torch Dataset yielding ``(x, y, weight)``.

    ``meta`` holds the file's provenance dict; ``path`` where it was read from.
    """

    def __init__(self, path: str | os.PathLike):
        record = load_synthetic_dataset(path)
        super().__init__(record["x"], record["y"], record["weights"])
        self.meta: dict[str, Any] = record["meta"]
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SyntheticDataset({str(self.path)!r}, n={len(self)}, x_shape={tuple(self.x.shape[1:])})"


def _tensors_of(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(x, y, weights or None) of a tensor-backed dataset, else None."""
    if isinstance(ds, WeightedConcatDataset):
        return ds.as_tensors()
    if isinstance(ds, TensorDataset) and len(ds.tensors) in (2, 3):
        t = ds.tensors
        return t[0], t[1], (t[2] if len(t) == 3 else None)
    return None


class WeightedConcatDataset(ConcatDataset):
    """Chain datasets yielding ``(x, y)`` (weight 1) or ``(x, y, w)``, scaling each part's weights.

    ``__getitem__`` returns ``(x, y, coefficient * w)`` with ``w`` a float32 scalar tensor. ``coefficients``
    (default all 1) must be finite and >= 0, one per dataset. Example shapes must agree across parts
    (checked on each part's first example).
    """

    def __init__(self, datasets: Sequence[Dataset], coefficients: Sequence[float] | None = None):
        datasets = list(datasets)
        if not datasets:
            raise ValueError("datasets must be a non-empty sequence of datasets")
        if coefficients is None:
            coefficients = [1.0] * len(datasets)
        coefficients = [float(c) for c in coefficients]
        if len(coefficients) != len(datasets):
            raise ValueError(
                f"coefficients must have one entry per dataset ({len(datasets)}), got {len(coefficients)}"
            )
        for i, c in enumerate(coefficients):
            if not math.isfinite(c) or c < 0:
                raise ValueError(f"coefficients[{i}] must be finite and >= 0, got {c}")
        super().__init__(datasets)
        self.coefficients = coefficients
        shapes = []
        for i, ds in enumerate(self.datasets):
            if len(ds) == 0:
                continue
            item = ds[0]
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValueError(
                    f"datasets[{i}] must yield (x, y) or (x, y, weight), got {type(item).__name__}"
                )
            shapes.append((i, tuple(torch.as_tensor(item[0]).shape)))
        if len({s for _, s in shapes}) > 1:
            raise ValueError(f"example shapes differ across datasets: {shapes} (as (index, shape))")

    def __getitem__(self, idx: int) -> tuple[Any, Any, torch.Tensor]:
        if idx < 0:
            if -idx > len(self):
                raise IndexError(f"index {idx} out of range for {len(self)} examples")
            idx += len(self)
        part = bisect.bisect_right(self.cumulative_sizes, idx)
        local = idx - (self.cumulative_sizes[part - 1] if part > 0 else 0)
        item = self.datasets[part][local]
        w = torch.as_tensor(item[2], dtype=torch.float32) if len(item) == 3 else torch.tensor(1.0)
        return item[0], item[1], w * self.coefficients[part]

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Concatenated ``(x, y, weights)`` when every part is tensor-backed, else ``None``."""
        xs, ys, ws = [], [], []
        for ds, c in zip(self.datasets, self.coefficients):
            t = _tensors_of(ds)
            if t is None:
                return None
            x, y, w = t
            xs.append(x)
            ys.append(y.long())
            ws.append((torch.ones(len(x), device=x.device) if w is None else w.float()) * c)
        return torch.cat(xs), torch.cat(ys), torch.cat(ws)


def _total_weight(ds: Dataset) -> float:
    """Sum of a dataset's example weights (1 for examples yielded as ``(x, y)``)."""
    t = _tensors_of(ds)
    if t is not None:
        return float(len(t[0]) if t[2] is None else t[2].double().sum())
    return float(sum(float(item[2]) if len(item) == 3 else 1.0 for item in (ds[i] for i in range(len(ds)))))


def combine_real_and_synthetic(
    real: Dataset | tuple[torch.Tensor, torch.Tensor],
    synthetic: Dataset | str | os.PathLike,
    synthetic_weight: float | None = None,
    *,
    share: float | None = None,
) -> WeightedConcatDataset:
    """Real data (weight 1) followed by synthetic data, its weights scaled by a coefficient.

    ``real`` is a dataset yielding ``(x, y)`` or ``(x, y, w)``, or a tuple ``(x, y)`` of tensors;
    ``synthetic`` a dataset or the path of a synthetic dataset file. Give at most one of:

    - ``synthetic_weight``: a fixed coefficient on every synthetic weight (default 1);
    - ``share``: scale the synthetic weights so that they sum to ``share`` times the real part's total
      weight. The synthetic data then counts the same in the loss however many samples a selector kept and
      however large its weights are (CRAIG's cluster sizes sum to the number of examples they stand for),
      so naive, filtered and coreset augmentations compare on equal terms.
    """
    if synthetic_weight is not None and share is not None:
        raise ValueError("give synthetic_weight or share, not both")
    if isinstance(real, tuple):
        if len(real) != 2:
            raise ValueError(f"real as a tuple must be (x, y), got {len(real)} items")
        real = WeightedTensorDataset(real[0], real[1])
    if isinstance(synthetic, (str, os.PathLike)):
        synthetic = SyntheticDataset(synthetic)
    coefficient = 1.0 if synthetic_weight is None else synthetic_weight
    if share is not None:
        if not math.isfinite(float(share)) or share < 0:
            raise ValueError(f"share must be finite and >= 0, got {share!r}")
        total = _total_weight(synthetic)
        if total <= 0:
            raise ValueError("the synthetic weights sum to 0: no share of the loss can be given to them")
        coefficient = share * _total_weight(real) / total
    return WeightedConcatDataset([real, synthetic], [1.0, coefficient])
