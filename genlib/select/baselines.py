"""Random subset baseline with the same budgets and weighting convention as the coreset selectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genlib.select._common import check_budget_args, check_labels, class_plan

Tensor = torch.Tensor

__all__ = ["RandomSelector"]


class RandomSelector:
    """Uniform random subset, per class by default.

    Args:
        fraction: share of examples to keep, in (0, 1]; or give ``budget``.
        budget: number of examples to keep.
        per_class: sample within each class, budgets split as in :class:`~genlib.select.Craig`.
        seed: seeds the draw (``None``: a fresh draw from torch's global generator).

    ``fit(x, labels=None)`` (only ``len(x)`` is used), ``select()`` returns ``(indices, weights)``, every
    pick weighted ``class_size / class_budget`` so that the weights sum to each class's size.
    """

    def __init__(
        self,
        fraction: float | None = None,
        *,
        budget: int | None = None,
        per_class: bool = True,
        seed: int | None = None,
    ):
        self.fraction, self.budget = check_budget_args(fraction, budget)
        self.per_class = bool(per_class)
        self.seed = seed
        self.n_: int | None = None
        self.labels_: Tensor | None = None

    def fit(self, x: Any, labels: Any = None) -> RandomSelector:
        """Record the number of examples (rows of ``x``) and their ``(n,)`` integer ``labels``."""
        if not isinstance(x, (Tensor, np.ndarray)) or x.ndim < 1:
            raise ValueError(
                f"x must be a tensor or array with a leading example dimension, got {type(x).__name__}"
            )
        n = int(x.shape[0])
        if n == 0:
            raise ValueError("x must hold at least one example")
        if labels is None and self.per_class:
            raise ValueError("labels are required with per_class=True")
        self.device_ = x.device if isinstance(x, Tensor) else torch.device("cpu")
        self.labels_ = None if labels is None else check_labels(labels, n)
        self.n_ = n
        return self

    def select(self) -> tuple[Tensor, Tensor]:
        """``(indices, weights)``: each class's draw in random order, classes in increasing order."""
        if self.n_ is None:
            raise RuntimeError("RandomSelector.select() called before fit()")
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        idx, w = [], []
        for rows, k in class_plan(self.labels_, self.n_, self.fraction, self.budget, self.per_class):
            size = self.n_ if rows is None else rows.numel()
            pick = torch.randperm(size, generator=gen)[:k]
            idx.append(pick if rows is None else rows.cpu()[pick])
            w.append(torch.full((k,), size / k, dtype=torch.float32))
        return torch.cat(idx).to(self.device_), torch.cat(w).to(self.device_)

    def fit_select(self, x: Any, labels: Any = None) -> tuple[Tensor, Tensor]:
        """``fit(x, labels).select()``."""
        return self.fit(x, labels).select()
