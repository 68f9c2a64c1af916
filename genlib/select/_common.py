"""Argument handling shared by the selectors: tensor conversion, label checks, budgets per class."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from genlib.utils import check_tensor

Tensor = torch.Tensor


def as_tensor(
    x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None, floating: bool = True
) -> Tensor:
    """Accept a tensor or a NumPy array (converted without copying where possible) and validate it."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    x = check_tensor(x, name, ndim=ndim, floating=floating)
    if floating and x.is_complex():
        raise ValueError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    return x


def check_labels(labels: Any, n: int, name: str = "labels", num_classes: int | None = None) -> Tensor:
    """Integer class labels of shape ``(n,)`` in ``[0, num_classes)``; returned as a LongTensor."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match the {n} examples, got {tuple(labels.shape)}"
        )
    labels = labels.long()
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be >= 0, got min {int(labels.min())}")
    if n and num_classes is not None and int(labels.max()) >= num_classes:
        raise ValueError(f"{name} must be < num_classes={num_classes}, got max {int(labels.max())}")
    return labels


def check_fraction(fraction: Any, name: str = "fraction") -> float:
    """A fraction in (0, 1]."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {fraction!r}") from None
    if not (0.0 < f <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {fraction!r}")
    return f


def check_budget_args(fraction: Any, budget: Any) -> tuple[float | None, int | None]:
    """Exactly one of ``fraction`` (in (0, 1]) and ``budget`` (a positive int) must be given."""
    if (fraction is None) == (budget is None):
        raise ValueError("give exactly one of fraction (in (0, 1]) or budget (a positive int)")
    if fraction is not None:
        return check_fraction(fraction), None
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive int, got {budget!r}")
    return None, int(budget)


def total_budget(n: int, fraction: float | None, budget: int | None, min_size: int = 1) -> int:
    """The number of examples to keep out of ``n``: ``round(fraction * n)`` or ``budget``, at least
    ``min_size`` (one per non-empty class) and at most ``n``."""
    if budget is not None:
        if budget > n:
            raise ValueError(f"budget={budget} exceeds the number of examples n={n}")
        if budget < min_size:
            raise ValueError(
                f"budget={budget} is smaller than the number of non-empty classes ({min_size}); "
                "each needs at least one example (or use per_class=False)"
            )
        return budget
    return min(n, max(min_size, int(math.floor(fraction * n + 0.5))))


def allocate_budget(counts: Tensor, budget: int) -> Tensor:
    """Split ``budget`` over classes in proportion to ``counts`` (largest-remainder rounding).

    Every non-empty class gets at least one example and no class more than it holds; the parts sum to
    ``budget`` exactly. ``counts`` is a 1-D integer tensor; returns a LongTensor of the same shape.
    """
    counts = counts.long().cpu()
    n, nonempty = int(counts.sum()), int((counts > 0).sum())
    if not nonempty <= budget <= n:
        raise ValueError(f"budget must be between {nonempty} (non-empty classes) and {n}, got {budget}")
    quota = budget * counts.double() / n
    parts = torch.where(counts > 0, quota.floor().clamp(min=1), torch.zeros_like(quota)).long()
    rest = quota - parts
    deficit = budget - int(parts.sum())
    if deficit > 0:
        # Each fractional remainder is < 1 and they sum to the deficit, so >= deficit classes have a
        # positive remainder; one more example each fits, since floor(q) < q <= count.
        parts[torch.argsort(rest, descending=True, stable=True)[:deficit]] += 1
    while deficit < 0:  # the ">= 1" floor overshot: take back from the classes rounded up the most
        order = torch.argsort(rest, stable=True)
        for c in order[parts[order] > 1].tolist():
            if deficit == 0:
                break
            parts[c] -= 1
            rest[c] += 1
            deficit += 1
    return parts


def class_plan(
    labels: Tensor | None, n: int, fraction: float | None, budget: int | None, per_class: bool
) -> list[tuple[Tensor | None, int]]:
    """The groups to select from and their budgets: ``[(rows, k), ...]``.

    With ``per_class`` each non-empty class is a group (``rows`` its example indices, in order) and the
    total budget is split in proportion to class size (:func:`allocate_budget`); otherwise one group holds
    every example (``rows=None``).
    """
    if not per_class or labels is None:
        return [(None, total_budget(n, fraction, budget))]
    counts = torch.bincount(labels.cpu(), minlength=1)
    parts = allocate_budget(counts, total_budget(n, fraction, budget, min_size=int((counts > 0).sum())))
    order = torch.argsort(labels, stable=True)
    groups = order.split(counts.tolist())
    return [(rows, int(k)) for rows, k in zip(groups, parts.tolist()) if k > 0]
