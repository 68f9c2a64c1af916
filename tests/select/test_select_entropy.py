"""Entropy filter and pseudo-labeller against scipy and explicit sorting."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import entropy

from genlib.select import EntropyFilter, PseudoLabeler, confidence_scores


def _logits(n=200, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, k, generator=g, dtype=torch.float64)


def test_scores_match_scipy():
    logits = _logits()
    np.testing.assert_allclose(
        confidence_scores(logits, "h2").numpy(), entropy(softmax(logits.numpy(), axis=1), axis=1), rtol=1e-12
    )
    np.testing.assert_allclose(
        confidence_scores(logits, "h1").numpy(), logsumexp(logits.numpy(), axis=1), rtol=1e-12
    )
    # extreme logits: a one-hot softmax has zero entropy, no NaN
    assert float(confidence_scores(torch.tensor([[1e4, 0.0, -1e4]]), "h2")) == 0.0


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.333, 1.0])
def test_keep_fraction_keeps_exactly_the_lowest_entropy(fraction):
    logits = _logits()
    h = entropy(softmax(logits.numpy(), axis=1), axis=1)
    idx, w = EntropyFilter("h2", keep_fraction=fraction).fit_select(logits)
    k = int(fraction * 200 + 0.5)
    assert idx.tolist() == sorted(np.argsort(h, kind="stable")[:k].tolist())
    assert w.dtype == torch.float32 and bool((w == 1).all())


def test_h1_keeps_the_highest_logsumexp():
    logits = _logits()
    lse = logsumexp(logits.numpy(), axis=1)
    idx, _ = EntropyFilter("h1", keep_fraction=0.2).fit_select(logits)
    assert idx.tolist() == sorted(np.argsort(-lse, kind="stable")[:40].tolist())
    idx, _ = EntropyFilter("h1", threshold=float(np.median(lse))).fit_select(logits)
    assert idx.tolist() == np.nonzero(lse >= np.median(lse))[0].tolist()


def test_threshold_splits_the_scores():
    logits = _logits()
    f = EntropyFilter(threshold=0.5).fit(logits)
    idx, _ = f.select()
    keep = torch.zeros(200, dtype=torch.bool)
    keep[idx] = True
    assert bool((f.scores_[keep] <= 0.5).all()) and bool((f.scores_[~keep] > 0.5).all())
    assert 0 < idx.numel() < 200


def test_agreement_with_intended_labels():
    logits = _logits()
    labels = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(1))
    agree = logits.argmax(1) == labels
    idx, _ = EntropyFilter(threshold=10.0, require_agreement=True).fit_select(logits, labels)
    assert idx.tolist() == torch.nonzero(agree).squeeze(1).tolist()
    # a fraction budget counts all inputs and never takes a disagreeing sample
    idx, _ = EntropyFilter(keep_fraction=0.5, require_agreement=True).fit_select(logits, labels)
    assert idx.numel() == min(100, int(agree.sum())) and bool(agree[idx].all())
    # without the option, labels are ignored for selection
    assert EntropyFilter(keep_fraction=0.5).fit_select(logits, labels)[0].numel() == 100


def test_pseudo_labeler():
    logits = _logits()
    idx, labels, w = PseudoLabeler(keep_fraction=0.3).fit_select(logits)
    assert idx.numel() == 60
    assert torch.equal(labels, logits[idx].argmax(1))
    assert bool((w == 1).all())
    h = entropy(softmax(logits.numpy(), axis=1), axis=1)
    assert idx.tolist() == sorted(np.argsort(h, kind="stable")[:60].tolist())
    _, _, w = PseudoLabeler(threshold=0.8, weighting="confidence").fit_select(logits.numpy())
    idx, _, _ = PseudoLabeler(threshold=0.8).fit_select(logits)
    np.testing.assert_allclose(w.numpy(), softmax(logits.numpy(), axis=1)[idx.numpy()].max(1), rtol=1e-6)


def test_bad_input():
    logits = _logits(10)
    with pytest.raises(ValueError, match="exactly one"):
        EntropyFilter(threshold=1.0, keep_fraction=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        EntropyFilter()
    with pytest.raises(ValueError, match="keep_fraction"):
        EntropyFilter(keep_fraction=1.2)
    with pytest.raises(ValueError, match="keep_fraction"):
        EntropyFilter(keep_fraction=0)
    with pytest.raises(ValueError, match="score"):
        EntropyFilter("h3", threshold=1.0)
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        EntropyFilter(threshold=1.0).fit(bad)
    with pytest.raises(ValueError, match="needs the intended labels"):
        EntropyFilter(threshold=1.0, require_agreement=True).fit(logits)
    with pytest.raises(ValueError, match="num_classes"):
        EntropyFilter(threshold=1.0).fit(logits, torch.full((10,), 5))
    with pytest.raises(ValueError, match="shape"):
        EntropyFilter(threshold=1.0).fit(logits, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="dims"):
        EntropyFilter(threshold=1.0).fit(logits[0])
    with pytest.raises(ValueError, match="weighting"):
        PseudoLabeler(threshold=1.0, weighting="soft")
    with pytest.raises(RuntimeError, match="before fit"):
        PseudoLabeler(threshold=1.0).select()
