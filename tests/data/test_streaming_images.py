"""Images streamed from disk: ``MemmapImages`` / ``svhn_dataset`` (a uint8 ``.npy`` cache of SVHN's official
``.mat``, written by the test in the official layout with its md5 registered, as in test_svhn.py),
``ConcatImages``, ``load_svhn_semi_supervised(include_extra=True)``, and the semi-supervised trainer fed a
dataset instead of a tensor."""

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.datasets import SVHN

from genlib.data import (
    ConcatImages,
    MemmapImages,
    load_svhn,
    load_svhn_semi_supervised,
    svhn_dataset,
)
from genlib.likelihoods import Gaussian
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.train import AugmentConfig, SemiSupervisedConfig, SemiSupervisedTrainer, StepBatches, step_loader

OFFICIAL = {split: tuple(entry) for split, entry in SVHN.split_list.items()}


@pytest.fixture
def official(monkeypatch):
    """``write(folder, split, labels, seed=0) -> X``: a small ``{split}_32x32.mat`` in the official layout
    (X uint8 (32, 32, 3, N), y (N, 1), 10 for digit 0), accepted as the official file (md5 registered)."""

    def write(folder: Path, split: str, labels: list[int], seed: int = 0) -> np.ndarray:
        x = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3, len(labels)), dtype=np.uint8)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": x, "y": np.array(labels, np.uint8)[:, None]})
        url, filename, _ = OFFICIAL[split]
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        monkeypatch.setitem(SVHN.split_list, split, [url, filename, md5])
        return x

    return write


def test_svhn_cache_round_trips_the_mat_and_is_reused_without_it(tmp_path, official):
    official(tmp_path, "train", [10, 3, 1, 10, 9, 2, 2], seed=4)
    x, y = load_svhn(tmp_path, "train")
    cache = tmp_path / "cache"
    ds = svhn_dataset(tmp_path, "train", cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["train_32x32.cache.json", "train_32x32.labels.npy", "train_32x32.uint8.npy"]
    raw = np.load(cache / "train_32x32.uint8.npy", mmap_mode="r")
    assert raw.dtype == np.uint8 and raw.shape == (7, 3, 32, 32) and isinstance(ds.images, np.memmap)
    assert len(ds) == 7 and ds.image_shape == (3, 32, 32) and torch.equal(ds.labels, y)
    batch = ds.__getitems__([6, 0, 3, 3, -1])
    assert batch.dtype == torch.float32 and torch.equal(batch, x[[6, 0, 3, 3, 6]])  # load_svhn's values
    assert torch.equal(ds[2], x[2]) and torch.equal(ds.tensor(), x)
    # second open: the .mat is not read again (gone), the same data comes back
    (tmp_path / "train_32x32.mat").unlink()
    again = svhn_dataset(tmp_path, "train", cache_dir=cache)
    assert torch.equal(again.tensor(), x) and torch.equal(again.labels, y)


def test_svhn_cache_of_another_file_is_rebuilt(tmp_path, official):
    official(tmp_path, "test", [1, 2, 3], seed=0)
    first = svhn_dataset(tmp_path, "test").tensor()  # cache_dir defaults to data_dir
    assert (tmp_path / "test_32x32.uint8.npy").is_file()
    official(tmp_path, "test", [4, 5, 6, 7], seed=1)  # another official md5: the old cache must not be used
    ds = svhn_dataset(tmp_path, "test")
    x, y = load_svhn(tmp_path, "test")
    assert len(ds) == 4 and torch.equal(ds.tensor(), x) and ds.labels.tolist() == y.tolist() == [4, 5, 6, 7]
    assert not torch.equal(first, x[:3])
    # a cache whose arrays disagree with its record is rebuilt too
    np.save(tmp_path / "test_32x32.labels.npy", np.zeros(2, np.int64))
    assert svhn_dataset(tmp_path, "test").labels.tolist() == [4, 5, 6, 7]


def test_memmap_images_subset_pickle_and_errors(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 1, 3, 2), dtype=np.uint8)
    np.save(tmp_path / "x.npy", imgs)
    np.save(tmp_path / "y.npy", np.arange(20) % 4)
    ds = MemmapImages(tmp_path / "x.npy", tmp_path / "y.npy")
    full = torch.from_numpy(imgs).float() / 255
    sub = ds.subset([5, 1, 19])
    assert len(sub) == 3 and torch.equal(sub.tensor(), full[[5, 1, 19]]) and sub.labels.tolist() == [1, 1, 3]
    assert torch.equal(sub.subset([2, 0]).tensor(), full[[19, 5]])
    blob = pickle.dumps(sub)  # DataLoader workers under spawn: the path travels, not the images
    assert len(blob) < 2000 and torch.equal(pickle.loads(blob).tensor(), sub.tensor())
    with pytest.raises(IndexError):
        ds.__getitems__([20])
    np.save(tmp_path / "f.npy", imgs.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 images"):
        MemmapImages(tmp_path / "f.npy")
    with pytest.raises(FileNotFoundError):
        MemmapImages(tmp_path / "missing.npy")


def test_concat_images_batches_equal_the_concatenated_tensor(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, size=(7, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    tensor_part = torch.rand(5, 3, 4, 4)
    ds = ConcatImages([MemmapImages(tmp_path / "a.npy").subset([6, 2, 0]), tensor_part])
    whole = torch.cat([torch.from_numpy(a[[6, 2, 0]]).float() / 255, tensor_part])
    assert len(ds) == 8 and torch.equal(ds.__getitems__(list(range(8))), whole)
    idx = [7, 0, 4, 2, 2, -1]
    assert torch.equal(ds.__getitems__(idx), whole[idx]) and torch.equal(ds[3], whole[3])
    # StepBatches reads it as it reads the tensor: same indices, same batches
    b_ds, b_t = StepBatches({"u": ds}, 4, seed=3), StepBatches({"u": whole}, 4, seed=3)
    for step in range(5):
        assert torch.equal(b_ds[step]["u"], b_t[step]["u"])


def test_dataloader_workers_read_the_memory_maps(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, size=(30, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    whole = MemmapImages(tmp_path / "a.npy")
    ds = ConcatImages([whole.subset(range(0, 30, 2)), whole])
    batches = StepBatches({"u": ds}, 8, seed=0)
    here = [b["u"] for b in step_loader(batches, 0, 6)]
    workers = [b["u"] for b in step_loader(batches, 0, 6, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(here, workers)) and len(workers) == 6


def test_semi_supervised_split_with_extra_streams(tmp_path, official):
    train_labels = [c if c else 10 for c in range(10)] * 5  # 50 examples, 5 per class
    official(tmp_path, "train", train_labels, seed=1)
    official(tmp_path, "test", [1, 2, 10], seed=2)
    official(tmp_path, "extra", [4, 4, 4, 10], seed=3)
    d = load_svhn_semi_supervised(tmp_path, n_labeled=20, seed=0)  # tensors, as before
    e = load_svhn_semi_supervised(tmp_path, n_labeled=20, seed=0, include_extra=True,
                                  cache_dir=tmp_path / "c")
    assert isinstance(d.x_unlabeled, torch.Tensor) and isinstance(e.x_unlabeled, ConcatImages)
    x_extra, y_extra = load_svhn(tmp_path, "extra")
    assert torch.equal(e.x_labeled, d.x_labeled) and torch.equal(e.y_labeled, d.y_labeled)
    assert torch.equal(e.x_test, d.x_test) and torch.equal(e.y_test, d.y_test)
    assert len(e.x_unlabeled) == 34
    assert torch.equal(e.x_unlabeled.__getitems__(list(range(34))), torch.cat([d.x_unlabeled, x_extra]))
    assert torch.equal(e.y_unlabeled, torch.cat([d.y_unlabeled, y_extra]))
    assert sorted(p.name for p in (tmp_path / "c").glob("*.npy")) == [
        "extra_32x32.labels.npy", "extra_32x32.uint8.npy", "train_32x32.labels.npy", "train_32x32.uint8.npy"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="needs /proc (Linux)")
def test_opening_an_extra_sized_memmap_keeps_resident_memory_small(tmp_path):
    # SVHN extra's shape (531,131 images, 1.6 GB of uint8; 6.5 GB as float32), as a sparse file
    path = tmp_path / "extra_32x32.uint8.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(531_131, 3, 32, 32))
    mm[-1] = 255
    mm.flush()
    del mm
    before = _rss_bytes()
    ds = MemmapImages(path)
    batch = ds.__getitems__(torch.randint(len(ds), (100,)).tolist() + [len(ds) - 1])
    assert len(ds) == 531_131 and batch.shape == (101, 3, 32, 32) and float(batch[-1].min()) == 1.0
    assert _rss_bytes() - before < 32 * 2**20  # a few pages and one batch, not 1.6 GB


# ------------------------------------------------------------------ the trainer fed a dataset


def _uint8_blobs(tmp_path: Path, n_per_class: int, seed: int, k: int = 4) -> tuple[Path, torch.Tensor]:
    """Clusters as uint8 images (1, 2, 4) in a .npy; returns the file and the labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n_per_class)
    x = 0.8 * torch.eye(k, 8)[y] + 0.1 + 0.05 * torch.randn(y.numel(), 8, generator=g)
    path = tmp_path / f"blobs{seed}.npy"
    np.save(path, (x.clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1, 1, 2, 4).numpy())
    return path, y


def _vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    prior = LatentEBMPrior(2, 4, hidden=(32, 32))
    return VAE(MLPEncoder((1, 2, 4), 2, hidden=(32,)), MLPDecoder(2, (1, 2, 4), hidden=(32,)), Gaussian(0.5),
               prior)


@pytest.mark.parametrize("augment", [False, True])
def test_trainer_from_a_dataset_equals_trainer_from_its_tensor(tmp_path, augment):
    path_u, _ = _uint8_blobs(tmp_path, 30, seed=1)
    path_l, y_l = _uint8_blobs(tmp_path, 2, seed=2)
    ds_u = MemmapImages(path_u)
    x_u, x_l = ds_u.tensor(), MemmapImages(path_l).tensor()
    # pseudo-label threshold above ln 4 (the most entropy 4 classes have): every unlabelled image joins
    aug = AugmentConfig(20, start_iter=6, reselect_every=6, batch_size=8, pseudo_label_threshold=1.39,
                        coreset=None) if augment else None
    cfg = SemiSupervisedConfig(n_iters=12, batch_size=16, lr=3e-3, ebm_lr=3e-3, langevin_steps=3,
                               eval_every=0, progress=False, augment=aug)
    runs = {}
    for name, source in (("tensor", x_u), ("dataset", ds_u)):
        trainer = SemiSupervisedTrainer(_vae(), cfg, device="cpu")
        trainer.fit(source, x_l, y_l)
        runs[name] = trainer
    a, b = runs["tensor"], runs["dataset"]
    assert a.history["loss"] == b.history["loss"]
    for (name, p), q in zip(a.vae.named_parameters(), b.vae.parameters()):
        assert torch.equal(p, q), name
    if augment:
        assert a.history["select_iter"] == b.history["select_iter"] == [6]
        assert a.selection.counts["pseudo_labeled"] > 0
        assert a.selection.counts == b.selection.counts
        assert torch.equal(a.selection.x, b.selection.x) and torch.equal(a.selection.y, b.selection.y)


def test_trainer_checks_a_dataset_by_one_example(tmp_path):
    path_u, _ = _uint8_blobs(tmp_path, 3, seed=1)
    path_l, y_l = _uint8_blobs(tmp_path, 1, seed=2)
    x_l = MemmapImages(path_l).tensor()
    trainer = SemiSupervisedTrainer(_vae(), SemiSupervisedConfig(n_iters=1, progress=False), device="cpu")
    with pytest.raises(ValueError, match="shape of x_unlabeled"):
        trainer.fit(MemmapImages(path_u), x_l.reshape(-1, 1, 4, 2), y_l)
    with pytest.raises(ValueError, match="x_unlabeled must be a tensor or a map-style Dataset"):
        trainer.fit([x_l[0]], x_l, y_l)
    with pytest.raises(ValueError, match="at least one example"):
        trainer.fit(MemmapImages(path_u).subset([]), x_l, y_l)
