"""CRAIG: gradients, per-class budgets and weights, and argument checks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genlib.select import Craig, facility_location, logit_gradients
from genlib.select._common import allocate_budget


def _data(n=600, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(torch.tensor([0.1, 0.2, 0.3, 0.4])[:k], n, replacement=True, generator=g)
    logits = 2 * torch.randn(n, k, generator=g, dtype=torch.float64)
    return logits, labels


def test_logit_gradients_equal_autograd_per_example():
    logits, labels = _data(50)
    per_example = torch.func.vmap(torch.func.grad(lambda z, y: F.cross_entropy(z[None], y[None])))(
        logits, labels
    )
    torch.testing.assert_close(logit_gradients(logits, labels), per_example)


@pytest.mark.parametrize(
    "counts, budget, expected",
    [
        ([50, 30, 20], 10, [5, 3, 2]),
        ([1, 1, 98], 3, [1, 1, 1]),  # the >= 1 floor wins over proportionality
        ([1, 2, 97], 10, [1, 1, 8]),  # floor-overshoot taken back from the large class
        ([0, 10, 10], 5, [0, 3, 2]),  # empty classes get nothing; tie broken toward the first
        ([33, 33, 34], 100, [33, 33, 34]),
    ],
)
def test_allocate_budget_examples(counts, budget, expected):
    assert allocate_budget(torch.tensor(counts), budget).tolist() == expected


def test_allocate_budget_properties():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        counts = torch.randint(0, 40, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g)
        n, nonempty = int(counts.sum()), int((counts > 0).sum())
        if n == 0:
            continue
        budget = int(torch.randint(nonempty, n + 1, (1,), generator=g))
        parts = allocate_budget(counts, budget)
        assert int(parts.sum()) == budget
        assert bool((parts <= counts).all()) and bool((parts[counts > 0] >= 1).all())
        assert bool((parts[counts == 0] == 0).all())
        quota = budget * counts.double() / n
        # proportional up to rounding, except where the >= 1 floor forced a class up
        assert bool(((parts - quota).abs() < 1 + (quota < 1).double() * nonempty).all())


def test_per_class_budgets_and_weights():
    logits, labels = _data()
    counts = torch.bincount(labels)
    craig = Craig(0.1).fit(logits, labels)
    idx, w = craig.select()
    assert idx.dtype == torch.long and w.dtype == torch.float32
    assert len(set(idx.tolist())) == idx.numel() == 60
    expected = allocate_budget(counts, 60)
    assert torch.bincount(labels[idx], minlength=4).tolist() == expected.tolist()
    for c in range(4):
        assert float(w[labels[idx] == c].sum()) == int(counts[c])  # weights sum to each class's size
    assert craig.budgets_ == expected.tolist()


def test_selection_is_facility_location_on_class_gradients():
    logits, labels = _data(300)
    idx, w = Craig(budget=20).fit(logits, labels).select()
    grads = logit_gradients(logits, labels)
    rows = torch.nonzero(labels == 2).squeeze(1)
    ref = facility_location(grads[rows], int((labels[idx] == 2).sum()))
    assert idx[labels[idx] == 2].tolist() == rows[ref.indices].tolist()
    assert w[labels[idx] == 2].tolist() == ref.weights.float().tolist()


def test_gradient_input_and_global_selection():
    logits, labels = _data(300)
    grads = logit_gradients(logits, labels)
    a = Craig(0.1).fit_select(logits, labels)
    b = Craig(0.1, features="gradients").fit_select(grads, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    idx, w = Craig(budget=7, per_class=False, features="gradients").fit_select(grads)
    assert idx.numel() == 7 and float(w.sum()) == 300


def test_coreset_gradient_beats_random_on_average():
    # CRAIG's point: the weighted coreset gradient approximates the full gradient sum.
    logits, labels = _data(800, seed=3)
    grads = logit_gradients(logits, labels)
    full = grads.sum(0)
    idx, w = Craig(0.05).fit_select(logits, labels)
    craig_err = float((full - (w[:, None].double() * grads[idx]).sum(0)).norm())
    g = torch.Generator().manual_seed(0)
    rand_err = []
    for _ in range(20):
        r = torch.randperm(800, generator=g)[:40]
        rand_err.append(float((full - 20.0 * grads[r].sum(0)).norm()))
    assert craig_err < np.median(rand_err)


def test_stochastic_seeded_and_numpy_input():
    logits, labels = _data(400)
    a = Craig(0.1, greedy="stochastic", seed=3).fit_select(logits.numpy(), labels.numpy())
    b = Craig(0.1, greedy="stochastic", seed=3).fit_select(logits, labels)
    assert torch.equal(a[0], b[0])


def test_bad_input():
    logits, labels = _data(50)
    with pytest.raises(ValueError, match="labels must have shape"):
        Craig(0.1).fit(logits, labels[:-1])
    with pytest.raises(ValueError, match="fraction"):
        Craig(1.5)
    with pytest.raises(ValueError, match="fraction"):
        Craig(0.0)
    with pytest.raises(ValueError, match="exactly one"):
        Craig(0.1, budget=3)
    with pytest.raises(ValueError, match="num_classes"):
        Craig(0.1).fit(logits, torch.full((50,), 4))
    with pytest.raises(ValueError, match=">= 0"):
        Craig(0.1).fit(logits, torch.full((50,), -1))
    with pytest.raises(ValueError, match="integer"):
        Craig(0.1).fit(logits, labels.float())
    bad = logits.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Craig(0.1).fit(bad, labels)
    with pytest.raises(ValueError, match="labels are required"):
        Craig(0.1).fit(logits)
    with pytest.raises(ValueError, match="budget=2 is smaller"):
        Craig(budget=2).fit(logits, labels).select()
    with pytest.raises(ValueError, match="features"):
        Craig(0.1, features="probs")
    with pytest.raises(RuntimeError, match="before fit"):
        Craig(0.1).select()
