"""``load_svhn`` through ``torchvision.datasets.SVHN``: small files written in the official ``.mat`` layout.

torchvision checks every file's md5 against the official one, so these tests register the md5 of each small
file they write in ``SVHN.split_list`` (restored afterwards); an unregistered file must be rejected.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.datasets import SVHN

from genlib.data import load_svhn, load_svhn_semi_supervised

OFFICIAL = {split: tuple(entry) for split, entry in SVHN.split_list.items()}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _mat(folder: Path, split: str, labels: list[int], seed: int = 0) -> tuple[np.ndarray, Path]:
    """A small file in the official layout: X uint8 (32, 32, 3, N), y (N, 1) with 10 for digit 0."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, len(labels)), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}_32x32.mat"
    scipy.io.savemat(path, {"X": x, "y": np.array(labels, np.uint8)[:, None]})
    return x, path


@pytest.fixture
def official(monkeypatch):
    """``write(folder, split, labels, seed=0, x=None) -> x``: write a file, accept it as the official one."""

    def write(folder: Path, split: str, labels: list[int], seed: int = 0, x: np.ndarray | None = None):
        x_written, path = _mat(folder, split, labels, seed)
        if x is not None:
            scipy.io.savemat(path, {"X": x, "y": np.array(labels, np.uint8)[:, None]})
            x_written = x
        url, filename, _ = OFFICIAL[split]
        monkeypatch.setitem(SVHN.split_list, split, [url, filename, _md5(path)])
        return x_written

    return write


def test_axis_order_and_label_mapping(tmp_path, official):
    x = np.zeros((32, 32, 3, 5), np.uint8)
    x[5, 7, 2, 1] = 200  # row 5, column 7, blue channel, second example
    official(tmp_path, "train", [10, 3, 1, 10, 9], x=x)
    images, labels = load_svhn(tmp_path, "train")
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [0, 3, 1, 0, 9] and labels.dtype == torch.int64
    assert images[1, 2, 5, 7] == pytest.approx(200 / 255)
    assert torch.count_nonzero(images) == 1


def test_random_content_matches_transpose(tmp_path, official):
    x = official(tmp_path, "test", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], seed=3)
    images, labels = load_svhn(tmp_path, "test")
    assert torch.equal(images, torch.from_numpy(x).permute(3, 2, 0, 1).float() / 255)
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


def test_missing_file_bad_split_and_unofficial_file(tmp_path):
    expected = r"(?s)not found: .*train_32x32\.mat.*test_32x32\.mat.*extra_32x32\.mat.*download=True"
    with pytest.raises(FileNotFoundError, match=expected):
        load_svhn(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_svhn(tmp_path, "validation")
    _mat(tmp_path, "train", [1, 2])  # right layout, but not the official file: its md5 differs
    unofficial = rf"train_32x32\.mat is not the official SVHN train file .*{OFFICIAL['train'][2]}"
    with pytest.raises(ValueError, match=unofficial):
        load_svhn(tmp_path, "train")


def test_semi_supervised_protocol(tmp_path, official):
    train_labels = [c if c else 10 for c in range(10)] * 5  # 50 examples, 5 per class
    official(tmp_path, "train", train_labels, seed=1)
    official(tmp_path, "test", [1, 2, 10], seed=2)
    official(tmp_path, "extra", [4, 4, 4, 10], seed=3)
    x_train, _ = load_svhn(tmp_path, "train")

    d = load_svhn_semi_supervised(tmp_path, n_labeled=20, seed=0)
    assert torch.bincount(d.y_labeled, minlength=10).tolist() == [2] * 10
    assert d.x_unlabeled.shape[0] == 30 and d.y_test.tolist() == [1, 2, 0]
    # labelled and unlabelled images are disjoint and together are exactly the training set
    rows = {tuple(r.tolist()) for r in (x_train.flatten(1) * 255).round()}
    lab = {tuple(r.tolist()) for r in (d.x_labeled.flatten(1) * 255).round()}
    unl = {tuple(r.tolist()) for r in (d.x_unlabeled.flatten(1) * 255).round()}
    assert not lab & unl and lab | unl == rows

    e = load_svhn_semi_supervised(tmp_path, n_labeled=20, seed=0, include_extra=True)
    assert torch.equal(e.x_labeled, d.x_labeled)
    assert len(e.x_unlabeled) == 34 and e.y_unlabeled[-4:].tolist() == [4, 4, 4, 0]  # streamed: a Dataset


def test_download_fetches_the_official_url_through_torchvision(tmp_path, official, monkeypatch):
    import torchvision.datasets.svhn as tv_svhn

    staged = tmp_path / "staged"
    official(staged, "test", [7, 10])  # what the "server" holds; its md5 is now the expected one
    calls = []

    def fake_download_url(url, root, filename=None, md5=None, **kwargs):
        calls.append((url, Path(root), filename, md5))
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes((staged / filename).read_bytes())

    monkeypatch.setattr(tv_svhn, "download_url", fake_download_url)  # no network in tests
    x, y = load_svhn(tmp_path / "svhn", "test", download=True)
    assert y.tolist() == [7, 0] and x.shape == (2, 3, 32, 32)
    url, root, filename, md5 = calls[0]
    assert (url, root, filename) == (
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat", tmp_path / "svhn", "test_32x32.mat"
    )
    assert md5 == _md5(staged / "test_32x32.mat")
