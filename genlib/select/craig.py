"""CRAIG: weighted coresets whose gradients cover the full data's (Mirzasoleiman, Bilmes & Leskovec, 2020).

The gradient of the training loss on the full set is approximated by a weighted sum over a subset ``S``,
each selected example standing in for the examples whose gradients are closest to its own. The error of
that approximation is bounded by ``sum_i min_{j in S} |g_i - g_j|``, so picking ``S`` is facility location
on per-example gradients (:mod:`genlib.select.facility`), and each weight is the size of the element's
cluster. As in the paper, the gradients are those of the cross-entropy loss with respect to the logits,
``g = softmax(logits) - onehot(y)``: a cheap proxy for the full gradient that needs no backward pass.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from genlib.select._common import as_tensor, check_budget_args, check_labels, class_plan
from genlib.select.facility import Greedy, Metric, _check_chunk, _check_greedy, facility_location

Tensor = torch.Tensor

__all__ = ["Craig", "logit_gradients"]


def logit_gradients(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example gradient of the cross-entropy loss w.r.t. the logits: ``softmax(logits) - onehot(y)``."""
    logits = as_tensor(logits, "logits", ndim=2)
    labels = check_labels(labels, logits.shape[0], num_classes=logits.shape[1]).to(logits.device)
    g = torch.softmax(logits, dim=1)
    g[torch.arange(g.shape[0], device=g.device), labels] -= 1.0
    return g


class Craig:
    """Facility-location coreset over last-layer gradients (CRAIG), selected per class.

    Args:
        fraction: share of the examples to keep, in (0, 1]; or give ``budget`` instead.
        budget: number of examples to keep.
        per_class: select within each class, the budget split in proportion to class size (largest
            remainder rounding, at least one per non-empty class); weights then sum to each class's size.
        greedy: ``"lazy"`` (exact greedy), ``"stochastic"`` (stochastic greedy, for large classes) or
            ``"naive"`` (plain greedy, slow; a reference).
        features: ``"logits"`` (``fit`` gets logits and turns them into ``softmax - onehot``) or
            ``"gradients"`` (``fit`` gets per-example gradients, e.g. flattened last-layer ones, as is).
        metric: ``"euclidean"`` (CRAIG's) or ``"sqeuclidean"``.
        chunk_size: candidates per distance block of the torch engine (GPU, or CPU above 24
            dimensions), memory ``O(n * chunk_size)``; ``None`` picks one per device. On CPU in low
            dimensions a compiled engine runs instead (:func:`~genlib.select.facility.facility_location`).
        epsilon: stochastic greedy's accuracy.
        seed: seeds stochastic greedy.

    Example::

        idx, w = Craig(fraction=0.1).fit(logits, labels).select()
        # train on x[idx] with per-example loss weights w
    """

    def __init__(
        self,
        fraction: float | None = None,
        *,
        budget: int | None = None,
        per_class: bool = True,
        greedy: Greedy = "lazy",
        features: Literal["logits", "gradients"] = "logits",
        metric: Metric = "euclidean",
        chunk_size: int | None = None,
        epsilon: float = 0.01,
        seed: int | None = None,
    ):
        self.fraction, self.budget = check_budget_args(fraction, budget)
        _check_greedy(greedy)
        if features not in ("logits", "gradients"):
            raise ValueError(f"features must be 'logits' or 'gradients', got {features!r}")
        if metric not in ("euclidean", "sqeuclidean"):
            raise ValueError(f"metric must be 'euclidean' or 'sqeuclidean', got {metric!r}")
        _check_chunk(chunk_size)
        if greedy == "stochastic" and not 0.0 < float(epsilon) < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
        self.per_class = bool(per_class)
        self.greedy = greedy
        self.features = features
        self.metric = metric
        self.chunk_size = chunk_size
        self.epsilon = float(epsilon)
        self.seed = seed
        self.features_: Tensor | None = None
        self.labels_: Tensor | None = None

    def fit(self, x: Any, labels: Any = None) -> Craig:
        """Store the per-example gradients to cover.

        Args:
            x: ``(n, K)`` logits, or ``(n, D)`` gradients with ``features="gradients"``.
            labels: ``(n,)`` integer classes; required for logits and for ``per_class``.
        """
        x = as_tensor(x, "logits" if self.features == "logits" else "gradients", ndim=2)
        if labels is None and (self.features == "logits" or self.per_class):
            need = "features='logits'" if self.features == "logits" else "per_class=True"
            raise ValueError(f"labels are required with {need}")
        if labels is not None:
            k = x.shape[1] if self.features == "logits" else None
            labels = check_labels(labels, x.shape[0], num_classes=k).to(x.device)
        self.labels_ = labels
        self.features_ = logit_gradients(x, labels) if self.features == "logits" else x
        return self

    def select(self) -> tuple[Tensor, Tensor]:
        """Run facility location (per class); return ``(indices, weights)``.

        ``indices`` (LongTensor) lists each class's picks in greedy order, classes in increasing order;
        ``weights`` (float32) are cluster sizes. Also sets ``gains_`` (marginal gains, same order),
        ``objective_`` (facility-location value, summed over classes) and ``budgets_`` (picks per group).
        """
        if self.features_ is None:
            raise RuntimeError(f"{type(self).__name__}.select() called before fit()")
        feats = self.features_
        n = feats.shape[0]
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        idx, w, gains, budgets, objective = [], [], [], [], 0.0
        for rows, k in class_plan(self.labels_, n, self.fraction, self.budget, self.per_class):
            sub = feats if rows is None else feats[rows]
            res = facility_location(
                sub,
                k,
                greedy=self.greedy,
                metric=self.metric,
                chunk_size=self.chunk_size,
                epsilon=self.epsilon,
                generator=gen,
            )
            idx.append(res.indices if rows is None else rows[res.indices])
            w.append(res.weights.float())
            gains.append(res.gains)
            budgets.append(k)
            objective += res.objective
        self.gains_ = torch.cat(gains)
        self.objective_ = objective
        self.budgets_ = budgets
        return torch.cat(idx), torch.cat(w)

    def fit_select(self, x: Any, labels: Any = None) -> tuple[Tensor, Tensor]:
        """``fit(x, labels).select()``."""
        return self.fit(x, labels).select()
