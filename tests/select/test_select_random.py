"""Random baseline: budgets, weights and uniformity."""

import pytest
import torch

from genlib.select import RandomSelector
from genlib.select._common import allocate_budget


def test_per_class_budgets_and_weights():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx, w = RandomSelector(0.1, seed=0).fit_select(torch.randn(100, 3), labels)
    assert len(set(idx.tolist())) == 10
    assert torch.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert w.tolist() == [10.0] * 10  # class_size / class_budget
    for c, size in enumerate([50, 30, 20]):
        assert float(w[labels[idx] == c].sum()) == size
    idx, w = RandomSelector(budget=7, per_class=False, seed=0).fit_select(torch.randn(100, 3))
    assert idx.numel() == 7 and float(w.sum()) == pytest.approx(100)


def test_uneven_budgets_follow_allocation():
    labels = torch.tensor([0] * 7 + [1] * 93)
    idx, w = RandomSelector(budget=10, seed=1).fit_select(labels.numpy(), labels)
    assert torch.bincount(labels[idx]).tolist() == allocate_budget(torch.tensor([7, 93]), 10).tolist()
    assert float(w[labels[idx] == 0].sum()) == pytest.approx(7)
    assert float(w[labels[idx] == 1].sum()) == pytest.approx(93)


def test_seeded_and_uniform():
    x = torch.zeros(20, 1)
    labels = torch.zeros(20, dtype=torch.long)
    a = RandomSelector(0.25, seed=5).fit_select(x, labels)[0]
    assert torch.equal(a, RandomSelector(0.25, seed=5).fit_select(x, labels)[0])
    counts = torch.zeros(20)
    for s in range(800):
        counts[RandomSelector(0.25, seed=s).fit_select(x, labels)[0]] += 1
    # each example is drawn with probability 5/20: binomial(800, 0.25), sd ~12.2
    assert float((counts - 200).abs().max()) < 5 * 12.25


def test_bad_input():
    with pytest.raises(ValueError, match="fraction"):
        RandomSelector(-0.1)
    with pytest.raises(ValueError, match="budget"):
        RandomSelector(budget=0)
    with pytest.raises(ValueError, match="labels are required"):
        RandomSelector(0.5).fit(torch.zeros(4))
    with pytest.raises(ValueError, match="labels must have shape"):
        RandomSelector(0.5).fit(torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds"):
        RandomSelector(budget=5, per_class=False).fit_select(torch.zeros(4))
    with pytest.raises(ValueError, match="x must be"):
        RandomSelector(0.5, per_class=False).fit([1, 2, 3])
