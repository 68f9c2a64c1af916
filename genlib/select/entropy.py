"""Confidence filters on classifier logits: entropy filtering of generated samples and pseudo-labelling.

Two scores of how confidently a classifier places a sample (dissertation ch. 5):

- ``"h2"``: the Shannon entropy ``H(p) = -sum_k p_k log p_k`` of ``p(y|z) = softmax(logits)``, in nats.
  Low entropy = confident; the filter keeps the **lowest** values.
- ``"h1"``: ``logsumexp(logits)``, minus the free energy of an energy-based reading of the classifier
  (Grathwohl et al. 2020; Liu et al. 2020): high values = low energy = the sample lies where the model has
  mass. The filter keeps the **highest** values. Unlike ``h2`` it is not invariant to a shift of the logits,
  so compare scores from one classifier only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.distributions import Categorical

from genlib.select._common import as_tensor, check_fraction, check_labels

Tensor = torch.Tensor
Score = Literal["h2", "h1"]

__all__ = ["EntropyFilter", "PseudoLabeler", "confidence_scores"]


def confidence_scores(logits: Tensor, score: Score = "h2") -> Tensor:
    """Per-example ``"h2"`` entropy (nats, lower = confident) or ``"h1"`` logsumexp (higher = confident)."""
    logits = as_tensor(logits, "logits", ndim=2)
    if score in ("h2", "h1") and logits.shape[0] == 0:
        return logits.new_empty(0)  # Categorical cannot be built over zero rows
    if score == "h2":
        return Categorical(logits=logits).entropy()
    if score == "h1":
        return torch.logsumexp(logits, dim=1)
    raise ValueError(f"score must be 'h2' or 'h1', got {score!r}")


def _check_rule(threshold: Any, keep_fraction: Any) -> tuple[float | None, float | None]:
    if (threshold is None) == (keep_fraction is None):
        raise ValueError("give exactly one of threshold or keep_fraction (in (0, 1])")
    if keep_fraction is not None:
        return None, check_fraction(keep_fraction, "keep_fraction")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if t != t:
        raise ValueError("threshold must not be NaN")
    return t, None


def _keep(scores: Tensor, eligible: Tensor, higher_is_better: bool, threshold, keep_fraction) -> Tensor:
    """Sorted indices of the eligible examples passing ``threshold``, or the ``round(keep_fraction * n)``
    most confident eligible ones (ties broken by index)."""
    n = scores.shape[0]
    if threshold is not None:
        ok = scores >= threshold if higher_is_better else scores <= threshold
        return torch.nonzero(ok & eligible).squeeze(1)
    k = min(max(1, int(keep_fraction * n + 0.5)), int(eligible.sum()))
    key = torch.where(eligible, scores if not higher_is_better else -scores, torch.inf)
    order = torch.argsort(key, stable=True)[:k]
    return torch.sort(order).values


class EntropyFilter:
    """Keep the generated samples a classifier is confident about.

    Args:
        score: ``"h2"`` (entropy of softmax, keep low) or ``"h1"`` (logsumexp, keep high); see module doc.
        threshold: keep ``h2 <= threshold`` (or ``h1 >= threshold``).
        keep_fraction: instead, keep the ``round(keep_fraction * n)`` most confident samples (at least 1).
        require_agreement: also drop samples whose ``argmax`` disagrees with the label passed to ``fit``
            (the class the sample was generated for). With ``keep_fraction`` the budget still counts all
            ``n`` inputs, so fewer samples come back when too few agree.

    ``fit(logits, labels=None)``, then ``select()`` returns ``(indices, weights)``: the kept rows in
    increasing order and weights of one. ``scores_`` holds the per-sample score.
    """

    def __init__(
        self,
        score: Score = "h2",
        threshold: float | None = None,
        keep_fraction: float | None = None,
        *,
        require_agreement: bool = False,
    ):
        if score not in ("h2", "h1"):
            raise ValueError(f"score must be 'h2' or 'h1', got {score!r}")
        self.score = score
        self.threshold, self.keep_fraction = _check_rule(threshold, keep_fraction)
        self.require_agreement = bool(require_agreement)
        self.scores_: Tensor | None = None

    def fit(self, logits: Any, labels: Any = None) -> EntropyFilter:
        """Score ``(n, K)`` logits; ``labels`` ``(n,)`` are the intended classes (needed for agreement)."""
        logits = as_tensor(logits, "logits", ndim=2)
        n = logits.shape[0]
        if n == 0:
            raise ValueError("logits must hold at least one row")
        self.scores_ = confidence_scores(logits, self.score)
        self.agree_ = torch.ones(n, dtype=torch.bool, device=logits.device)
        if labels is not None:
            labels = check_labels(labels, n, num_classes=logits.shape[1]).to(logits.device)
            self.agree_ = logits.argmax(1) == labels
        elif self.require_agreement:
            raise ValueError("require_agreement=True needs the intended labels: fit(logits, labels)")
        return self

    def select(self) -> tuple[Tensor, Tensor]:
        """``(indices, weights)`` of the kept samples."""
        if self.scores_ is None:
            raise RuntimeError("EntropyFilter.select() called before fit()")
        eligible = self.agree_ if self.require_agreement else torch.ones_like(self.agree_)
        idx = _keep(self.scores_, eligible, self.score == "h1", self.threshold, self.keep_fraction)
        return idx, torch.ones(idx.shape[0], dtype=torch.float32, device=idx.device)

    def fit_select(self, logits: Any, labels: Any = None) -> tuple[Tensor, Tensor]:
        """``fit(logits, labels).select()``."""
        return self.fit(logits, labels).select()


class PseudoLabeler:
    """Label unlabelled real data with a classifier and keep the confident part.

    Args:
        threshold: keep samples with entropy ``h2 <= threshold`` (or ``h1 >= threshold``).
        keep_fraction: instead, keep the ``round(keep_fraction * n)`` most confident samples.
        score: ``"h2"`` or ``"h1"``, as :class:`EntropyFilter`.
        weighting: ``"uniform"`` (weights 1) or ``"confidence"`` (weight = the max softmax probability).

    ``fit(logits)``, then ``select()`` returns ``(indices, labels, weights)``: labels are the argmax.
    """

    def __init__(
        self,
        threshold: float | None = None,
        keep_fraction: float | None = None,
        *,
        score: Score = "h2",
        weighting: Literal["uniform", "confidence"] = "uniform",
    ):
        if weighting not in ("uniform", "confidence"):
            raise ValueError(f"weighting must be 'uniform' or 'confidence', got {weighting!r}")
        self._filter = EntropyFilter(score, threshold, keep_fraction)
        self.weighting = weighting
        self.probs_: Tensor | None = None

    def fit(self, logits: Any) -> PseudoLabeler:
        """Score ``(n, K)`` logits of unlabelled examples."""
        self._filter.fit(logits)
        self.probs_ = torch.softmax(as_tensor(logits, "logits", ndim=2), dim=1)
        self.scores_ = self._filter.scores_
        return self

    def select(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(indices, labels, weights)`` of the kept examples, indices increasing."""
        if self.probs_ is None:
            raise RuntimeError("PseudoLabeler.select() called before fit()")
        idx, w = self._filter.select()
        conf, labels = self.probs_[idx].max(1)
        if self.weighting == "confidence":
            w = conf.float()
        return idx, labels, w

    def fit_select(self, logits: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``fit(logits).select()``."""
        return self.fit(logits).select()
