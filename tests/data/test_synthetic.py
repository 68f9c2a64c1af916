"""The synthetic dataset file format: round trip, validation, and mixing with real data."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genlib.data import (
    SyntheticDataset,
    WeightedConcatDataset,
    WeightedTensorDataset,
    combine_real_and_synthetic,
    load_synthetic_dataset,
    save_synthetic_dataset,
)


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    w = torch.rand(n, generator=g) * 2
    return x, y, w


def test_round_trip(tmp_path):
    x, y, w = _data()
    meta = {
        "source_checkpoint": "runs/vae/ckpt_00001000.pt",
        "sampler": {"name": "langevin", "steps": 60, "step_size": 0.1},
        "selector": {"name": "entropy", "keep": 0.5},
        "entropy": torch.rand(12),
        "count": np.int64(7),
        "classes": list(range(10)),
    }
    path = save_synthetic_dataset(tmp_path / "s.pt", x, y, w, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # the temporary file was renamed away
    ds = SyntheticDataset(path)
    assert len(ds) == 12
    assert torch.equal(ds.x, x) and torch.equal(ds.y, y) and torch.equal(ds.weights, w)
    assert ds.y.dtype == torch.int64 and ds.weights.dtype == torch.float32
    assert torch.equal(ds.meta["entropy"], meta["entropy"]) and ds.meta["count"] == 7
    assert ds.meta["sampler"] == meta["sampler"] and ds.meta["classes"] == list(range(10))
    xi, yi, wi = ds[3]
    assert torch.equal(xi, x[3]) and int(yi) == int(y[3]) and float(wi) == float(w[3])
    # the file is plain data: loadable without unpickling code
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "genlib.synthetic_dataset" and raw["version"] == 1


def test_default_weights_numpy_input_and_overwrite(tmp_path):
    x, y, _ = _data(5)
    save_synthetic_dataset(tmp_path / "s.pt", x.numpy(), y.numpy().astype(np.int32))
    ds = SyntheticDataset(tmp_path / "s.pt")
    assert torch.equal(ds.weights, torch.ones(5)) and ds.y.dtype == torch.int64 and ds.meta == {}
    save_synthetic_dataset(tmp_path / "s.pt", x[:2], y[:2])
    assert len(SyntheticDataset(tmp_path / "s.pt")) == 2


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x, y, w: (x, y[:-1], w), r"y must have shape \(12,\)"),
        (lambda x, y, w: (x, y, w[:-1]), r"weights must have shape \(12,\)"),
        (lambda x, y, w: (x, y, -w), "weights must be >= 0"),
        (lambda x, y, w: (x, y, w.index_fill(0, torch.tensor([2]), float("nan"))), "weights contain NaN"),
        (lambda x, y, w: (x.index_fill(0, torch.tensor([1]), float("inf")), y, w), "x contains NaN or Inf"),
        (lambda x, y, w: (x, y.float(), w), "integer class labels"),
        (lambda x, y, w: (x, y - 20, w), "labels >= 0"),
        (lambda x, y, w: ((x * 255).to(torch.uint8), y, w), "floating-point"),
    ],
)
def test_validation_errors(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        save_synthetic_dataset(tmp_path / "s.pt", *change(*_data()))
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_meta_must_be_plain_data(tmp_path):
    x, y, w = _data()
    with pytest.raises(ValueError, match=r"meta\['model'\] is a Linear"):
        save_synthetic_dataset(tmp_path / "s.pt", x, y, w, {"model": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="keys must be str"):
        save_synthetic_dataset(tmp_path / "s.pt", x, y, w, {"a": {1: 2}})


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        SyntheticDataset(tmp_path / "nope.pt")
    torch.save({"x": torch.zeros(2, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a genlib synthetic dataset"):
        load_synthetic_dataset(tmp_path / "other.pt")
    x, y, w = _data()
    torch.save({"format": "genlib.synthetic_dataset", "version": 99, "x": x, "y": y, "weights": w,
                "meta": {}}, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_synthetic_dataset(tmp_path / "v99.pt")
    torch.save({"format": "genlib.synthetic_dataset", "version": 1, "x": x, "y": y, "weights": -w,
                "meta": {}}, tmp_path / "neg.pt")
    with pytest.raises(ValueError, match="neg.pt: weights must be >= 0"):
        SyntheticDataset(tmp_path / "neg.pt")


def test_weighted_concat_real_and_synthetic(tmp_path):
    xs, ys, ws = _data(6, seed=1)
    save_synthetic_dataset(tmp_path / "s.pt", xs, ys, ws)
    xr, yr, _ = _data(4, seed=2)
    mixed = combine_real_and_synthetic((xr, yr), tmp_path / "s.pt", synthetic_weight=0.25)
    assert len(mixed) == 10
    for i in range(4):
        x, y, w = mixed[i]
        assert torch.equal(x, xr[i]) and int(y) == int(yr[i]) and float(w) == 1.0
    for i in range(6):
        x, y, w = mixed[4 + i]
        assert torch.equal(x, xs[i]) and int(y) == int(ys[i])
        assert float(w) == pytest.approx(0.25 * float(ws[i]))
    assert float(mixed[-1][2]) == pytest.approx(0.25 * float(ws[-1]))
    # the batched view equals the item view, and DataLoader collates (x, y, w) batches
    x, y, w = mixed.as_tensors()
    items = [mixed[i] for i in range(10)]
    assert torch.equal(x, torch.stack([t[0] for t in items]))
    assert torch.allclose(w, torch.stack([t[2] for t in items]))
    xb, yb, wb = next(iter(DataLoader(mixed, batch_size=10)))
    assert torch.equal(xb, x) and torch.equal(yb, y) and torch.allclose(wb, w)


def test_share_scales_synthetic_weights_to_a_fraction_of_the_real_total(tmp_path):
    xs, ys, ws = _data(6, seed=1)
    xr, yr, _ = _data(4, seed=2)
    synth = WeightedTensorDataset(xs, ys, ws)
    mixed = combine_real_and_synthetic((xr, yr), synth, share=0.5)
    _, _, w = mixed.as_tensors()
    assert torch.all(w[:4] == 1.0)
    assert float(w[4:].sum()) == pytest.approx(0.5 * 4)  # half the real part's total weight
    assert torch.allclose(w[4:] / w[4:].sum(), ws / ws.sum())  # relative synthetic weights unchanged
    # a real part that carries weights of its own counts with them (and works without a batched view)
    real_w = WeightedTensorDataset(xr, yr, torch.full((4,), 3.0))
    _, _, w2 = combine_real_and_synthetic(real_w, synth, share=1.0).as_tensors()
    assert float(w2[4:].sum()) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="not both"):
        combine_real_and_synthetic((xr, yr), synth, synthetic_weight=0.5, share=0.5)
    with pytest.raises(ValueError, match="sum to 0"):
        combine_real_and_synthetic((xr, yr), WeightedTensorDataset(xs, ys, torch.zeros(6)), share=0.5)


def test_weighted_concat_errors_and_non_tensor_parts():
    x, y, w = _data(4)
    with pytest.raises(ValueError, match=r"coefficients\[1\] must be finite and >= 0"):
        WeightedConcatDataset([TensorDataset(x, y), WeightedTensorDataset(x, y, w)], [1.0, -1.0])
    with pytest.raises(ValueError, match="one entry per dataset"):
        WeightedConcatDataset([TensorDataset(x, y)], [1.0, 2.0])
    with pytest.raises(ValueError, match="example shapes differ"):
        WeightedConcatDataset([TensorDataset(x, y), TensorDataset(x[:, :, :2], y)])

    class Listed(torch.utils.data.Dataset):  # not tensor-backed: no batched view
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i], int(y[i])

    mixed = WeightedConcatDataset([Listed(), WeightedTensorDataset(x, y, w)], [2.0, 3.0])
    assert mixed.as_tensors() is None
    assert float(mixed[1][2]) == 2.0 and float(mixed[5][2]) == pytest.approx(3 * float(w[1]))
