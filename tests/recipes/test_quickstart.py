"""README's main command: ``python -m recipes.quickstart`` (the whole pipeline), its --quick smoke path."""

import json

import torch

from genlib.data import SyntheticDataset
from recipes.quickstart import main


def test_quickstart_runs_the_pipeline_end_to_end(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    # 50 labels of 10 classes: chance is 0.1; the semi-supervised latent classifier must be far above it
    assert res["latent_classifier_accuracy"] > 0.6
    acc = res["downstream_accuracy"]
    assert list(acc) == ["real labels only", "+ naive synthetic (all draws)", "+ H&CRAIG synthetic"]
    assert all(a > 0.5 for a in acc.values()), acc
    c = res["selection_counts"]
    assert c["generated"] == 1000 and c["filtered"] <= 500 and c["selected"] == round(0.1 * c["filtered"])
    ds = SyntheticDataset(tmp_path / "synthetic.pt")
    assert len(ds) == c["selected"] and abs(float(ds.weights.sum()) - c["filtered"]) < 1e-3
    assert ds.x.shape[1:] == (1, 8, 8) and float(ds.x.min()) >= 0 and float(ds.x.max()) <= 1
    assert torch.bincount(ds.y, minlength=10).min() >= 1  # every class represented
    for png in ("samples.png", "samples_by_entropy.png", "selected.png", "loss_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_data_dir_finds_mnist_and_names_what_it_expected(tmp_path):
    import pytest

    from genlib.data.images import default_data_root
    from recipes.quickstart import Config, load_data

    with pytest.raises(FileNotFoundError, match="mnist_4k.npz"):
        load_data(Config(data_dir=str(tmp_path)))
    with pytest.raises(SystemExit):
        main(["--n-labeled", "15"])  # not a multiple of the 10 classes
    root = default_data_root()
    if not (root / "digits" / "mnist_4k.npz").is_file():
        pytest.skip("shared MNIST-4k not present")
    x_l, y_l, x_u, x_t, y_t = load_data(Config(data_dir=str(root)))  # finds digits/mnist_4k.npz
    assert x_l.shape[1:] == (1, 28, 28) and len(x_l) == 50 and len(x_t) == 400 and len(x_u) == 3550
    assert torch.bincount(y_l, minlength=10).tolist() == [5] * 10
