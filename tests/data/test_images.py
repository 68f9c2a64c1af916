"""Image loaders on the shared real files and semi-supervised splits (SVHN's .mat files: test_svhn.py)."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genlib.data import (
    default_data_root,
    load_digits_sklearn,
    load_image_folder_crops,
    load_mnist_npz,
    semi_supervised_split,
)
from genlib.data import images as images_module
from tests._paths import SHARED_DATA

DATA = SHARED_DATA
MNIST = DATA / "digits" / "mnist_4k.npz"
CROPS = DATA / "digits" / "svhn_real_crops"
needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")
needs_crops = pytest.mark.skipif(not CROPS.is_dir(), reason=f"{CROPS} not present")


# ---------------------------------------------------------------------------------------------- real files


@needs_mnist
def test_mnist_npz_values_labels_and_range():
    x, y = load_mnist_npz(MNIST)
    raw = np.load(MNIST)
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(raw["labels"].astype(np.int64)))
    assert torch.bincount(y, minlength=10).tolist() == [400] * 10
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # exact pixel values, in the file's (row, column) order
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(raw["images"]))


@needs_mnist
def test_default_root_finds_shared_data_and_default_mnist_path():
    assert default_data_root() == DATA.resolve()
    x, _ = load_mnist_npz()
    assert x.shape[0] == 4000


def test_default_root_env_and_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLIB_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path.resolve()
    monkeypatch.delenv("GENLIB_DATA_ROOT")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(images_module, "_PROJECT_ROOT", tmp_path / "nowhere" / "project")
    with pytest.raises(FileNotFoundError, match=r"(?s)no data folder found.*shared.*GENLIB_DATA_ROOT"):
        default_data_root()


def test_mnist_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_mnist_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"lacks arrays \['labels'\]"):
        load_mnist_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "int16.npz", images=np.zeros((3, 28, 28), np.int16), labels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"int16\.npz: 'images' must be uint8 or float"):
        load_mnist_npz(tmp_path / "int16.npz")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0, 11, 3, -1]), r"bad\.npz: 'labels' must lie in \[0, 10\).*-1, 11 \(2 of 4 entries\)"),
        (np.array([0.0, 1.0, 2.0, 3.0]), r"bad\.npz: 'labels' must be an integer array, got dtype float64"),
        (np.array([True, False, True, True]), r"must be an integer array, got dtype bool"),
        (np.zeros((4, 1), np.int64), r"'labels' must have shape \(4,\)"),
    ],
)
def test_mnist_npz_rejects_bad_labels_naming_file_and_values(tmp_path, labels, match):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 28, 28), np.uint8), labels=labels)
    with pytest.raises(ValueError, match=match):
        load_mnist_npz(tmp_path / "bad.npz")


def test_mnist_npz_num_classes_bounds_the_labels(tmp_path):
    np.savez(tmp_path / "ok.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.array([0, 1, 4]))
    assert load_mnist_npz(tmp_path / "ok.npz")[1].tolist() == [0, 1, 4]
    with pytest.raises(ValueError, match=r"\[0, 3\) \(num_classes=3\).*4 \(1 of 3"):
        load_mnist_npz(tmp_path / "ok.npz", num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        load_mnist_npz(tmp_path / "ok.npz", num_classes=0)


def test_mnist_npz_images_float_in_unit_interval_or_uint8_28x28(tmp_path):
    labels = np.array([1, 2])
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28))
    np.savez(tmp_path / "float.npz", images=x, labels=labels)
    got, _ = load_mnist_npz(tmp_path / "float.npz")
    assert got.dtype == torch.float32 and torch.equal(got[:, 0], torch.from_numpy(x.astype(np.float32)))
    x[1, 3, 4], x[0, 0, 0] = 255.0, np.nan
    np.savez(tmp_path / "float255.npz", images=x, labels=labels)
    with pytest.raises(ValueError, match=r"float255\.npz: float 'images' must lie in \[0, 1\].*255\.0.*nan"):
        load_mnist_npz(tmp_path / "float255.npz")
    np.savez(tmp_path / "32.npz", images=np.zeros((2, 32, 32), np.uint8), labels=labels)
    with pytest.raises(ValueError, match=r"32\.npz: 'images' must have shape \(N, 28, 28\), got \(2, 32"):
        load_mnist_npz(tmp_path / "32.npz")


@needs_crops
def test_svhn_crops_labels_and_pixels_match_pil():
    x, y = load_image_folder_crops(CROPS)
    assert y.tolist() == [0, 1, 2, 5, -1, -1, -1, -1, -1]
    assert x.shape == (9, 3, 32, 32) and x.dtype == torch.float32
    ref = np.array(Image.open(CROPS / "svhn_digit_5.png").convert("RGB"))  # (H, W, C)
    assert torch.equal((x[3] * 255).round().to(torch.uint8), torch.from_numpy(ref).permute(2, 0, 1))
    assert float(x.std()) > 0.05  # real photos, not blank


def test_crops_errors(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "svhn_digit_3.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "unlabeled_0.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_image_folder_crops(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cat.png")
    with pytest.raises(ValueError, match="cannot read a label from cat.png"):
        load_image_folder_crops(tmp_path)
    with pytest.raises(FileNotFoundError, match="crop folder not found"):
        load_image_folder_crops(tmp_path / "nope")


def test_sklearn_digits_exact_and_upsampled():
    from sklearn.datasets import load_digits

    ref = load_digits()
    x, y = load_digits_sklearn()
    assert x.shape == (1797, 1, 8, 8)
    assert torch.equal(x[:, 0], torch.from_numpy(ref.images.astype(np.float32) / 16))
    assert torch.equal(y, torch.from_numpy(ref.target).long())
    up, _ = load_digits_sklearn(image_size=32)
    assert up.shape == (1797, 1, 32, 32) and 0 <= float(up.min()) and float(up.max()) <= 1
    # an integer-factor bilinear upsampling keeps each image's mean intensity, and pooling back to 8x8
    # gives the original digit up to interpolation blur
    assert torch.allclose(up.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-6)
    back = F.interpolate(up, size=8, mode="area")
    assert float(torch.corrcoef(torch.stack([back.flatten(), x.flatten()]))[0, 1]) > 0.95
    with pytest.raises(ValueError, match="image_size"):
        load_digits_sklearn(image_size=4)


# ---------------------------------------------------------------------------------------------- splits


def _labels(per_class=(30, 30, 30, 30), n_unknown=7):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)] + [torch.full((n_unknown,), -1)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(9))]


def test_split_balanced_disjoint_complete():
    y = _labels()
    s = semi_supervised_split(y, n_labeled=40, n_test=20, seed=1)
    assert torch.bincount(y[s.labeled], minlength=4).tolist() == [10, 10, 10, 10]
    all_idx = torch.cat([s.labeled, s.unlabeled, s.test])
    assert all_idx.numel() == y.numel() and torch.equal(all_idx.sort().values, torch.arange(y.numel()))
    assert (y[s.test] >= 0).all()  # test examples need labels
    assert (y[s.unlabeled] == -1).sum() == 7  # unknown-label examples all end up unlabelled
    assert s.test.numel() == 20 and s.unlabeled.numel() == y.numel() - 60


def test_split_deterministic_per_seed():
    y = _labels()
    a, b = semi_supervised_split(y, 40, 20, seed=5), semi_supervised_split(y.numpy(), 40, 20, seed=5)
    c = semi_supervised_split(y, 40, 20, seed=6)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a.labeled, c.labeled)


def test_split_unbalanced_and_errors():
    y = _labels(per_class=(50, 3, 50, 50))
    s = semi_supervised_split(y, n_labeled=17, seed=0, balanced=False)
    assert s.labeled.numel() == 17 and s.test.numel() == 0
    with pytest.raises(ValueError, match=r"class 1 has 3 examples .* need 10"):
        semi_supervised_split(y, n_labeled=40)
    with pytest.raises(ValueError, match="divisible"):
        semi_supervised_split(y, n_labeled=41)
    with pytest.raises(ValueError, match="exceeds"):
        semi_supervised_split(y, n_labeled=100, n_test=100)
    with pytest.raises(ValueError, match="integers"):
        semi_supervised_split(y.float())
    with pytest.raises(ValueError, match="num_classes=3"):
        semi_supervised_split(y, n_labeled=12, num_classes=3)
