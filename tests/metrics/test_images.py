"""Reference-classifier sample metrics: a CNN trained on real MNIST-4k digits, label agreement, the
Fréchet distance in its feature space (its ordering on real / blurred / noise sets), safe save/load."""

import json
import math
import pickle
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genlib.data import default_data_root, load_mnist_npz
from genlib.metrics import (
    ReferenceClassifier,
    SampleQuality,
    feature_frechet_distance,
    label_agreement,
    sample_quality,
    train_reference_classifier,
)

N_TRAIN, N_TEST = 2000, 1000


@pytest.fixture(scope="module")
def mnist():
    path = default_data_root() / "digits" / "mnist_4k.npz"
    if not path.is_file():
        pytest.skip(f"MNIST-4k not available at {path}")
    x, y = load_mnist_npz(path)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN : N_TRAIN + N_TEST]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="module")
def trained(mnist):
    """The reference classifier, trained once for the whole module (and its training time)."""
    x_tr, y_tr, _, _ = mnist
    # Smaller and shorter than the defaults (width 32, 15 epochs) to keep this file fast on a slow CPU;
    # one thread, since these small batches gain little from more and lose much on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        clf = train_reference_classifier(
            x_tr, y_tr, epochs=4, width=16, batch_size=32, lr=3e-3, seed=0, device="cpu"
        )
        return clf, time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def _blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.avg_pool2d(x, 3, 1, 1), 3, 1, 1)


# ---------------------------------------------------------------------------------------------- classifier


def test_reference_classifier_is_accurate_on_held_out_digits(mnist, trained):
    _, _, x_te, y_te = mnist
    clf, seconds = trained
    assert not clf.training
    acc = float((clf(x_te).argmax(1) == y_te).double().mean())
    print(f"\nreference classifier: held-out accuracy {acc:.3f}, trained in {seconds:.1f} s")
    assert acc > 0.90


def test_label_agreement_equals_accuracy_and_is_chance_for_shuffled_labels(mnist, trained):
    _, _, x_te, y_te = mnist
    clf, _ = trained
    with torch.no_grad():
        pred = clf(x_te).argmax(1)  # an independent path: forward, not predict
    agree = label_agreement(clf, x_te, y_te)
    assert agree["overall"] == pytest.approx(float((pred == y_te).double().mean()), abs=1e-12)
    assert agree["counts"] == torch.bincount(y_te, minlength=10).tolist()
    for c in range(10):
        assert agree["per_class"][c] == pytest.approx(float((pred[y_te == c] == c).double().mean()))
    shuffled = y_te[torch.randperm(len(y_te), generator=torch.Generator().manual_seed(1))]
    assert 0.05 < label_agreement(clf, x_te, shuffled)["overall"] < 0.16


def test_per_class_agreement_matches_a_hand_count(monkeypatch):
    clf = ReferenceClassifier((1, 8, 8), num_classes=3, width=4, feature_dim=8)
    #               requested:  0  0  1  1  1
    #               predicted:  0  2  1  1  0   -> class 0: 1/2, class 1: 2/3, class 2: no draws
    monkeypatch.setattr(clf, "predict", lambda x, batch_size=500: torch.tensor([0, 2, 1, 1, 0]))
    agree = label_agreement(clf, torch.rand(5, 1, 8, 8), torch.tensor([0, 0, 1, 1, 1]))
    assert agree["overall"] == pytest.approx(3 / 5)
    assert agree["per_class"] == [pytest.approx(1 / 2), pytest.approx(2 / 3), None]
    assert agree["counts"] == [2, 3, 0]


def test_predict_and_embed_restore_training_mode_and_use_eval_mode():
    torch.manual_seed(0)
    clf = ReferenceClassifier((1, 8, 8), num_classes=3, width=4, feature_dim=8).train()
    x = torch.rand(20, 1, 8, 8)
    labels, feats = clf.predict(x, batch_size=7), clf.embed(x, batch_size=7)
    assert clf.training
    assert labels.dtype == torch.int64 and labels.shape == (20,)
    assert feats.dtype == torch.float64 and feats.shape == (20, 8)
    clf.eval()
    with torch.no_grad():
        # Eval-mode batch norm makes each image's output independent of its batch: batching changes nothing.
        assert torch.equal(labels, clf(x).argmax(1))
        assert torch.allclose(feats, clf.features(x).double(), atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 9, 13)])
def test_any_image_size_from_8_pixels(shape):
    clf = ReferenceClassifier(shape, num_classes=10, feature_dim=16)
    x = torch.rand(3, *shape)
    assert clf(x).shape == (3, 10) and clf.features(x).shape == (3, 16)
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        ReferenceClassifier((1, 7, 28), num_classes=10)


def test_training_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    state = torch.get_rng_state()
    opts = dict(epochs=2, batch_size=16, width=4, feature_dim=8, device="cpu")
    a = train_reference_classifier(x, y, seed=5, **opts)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_reference_classifier(x, y, seed=5, **opts)
    c = train_reference_classifier(x, y, seed=6, **opts)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.num_classes == 3 and not a.training


# -------------------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_orders_real_blurred_and_noise(mnist, trained):
    _, _, x_te, _ = mnist
    clf, _ = trained
    half_a, half_b = x_te[:500], x_te[500:]
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    fd_real = feature_frechet_distance(clf, half_a, half_b)
    fd_blur = feature_frechet_distance(clf, half_a, _blur(half_b))
    fd_noise = feature_frechet_distance(clf, half_a, noise)
    print(f"\nFD real/real {fd_real:.3g}, real/blurred {fd_blur:.3g}, real/noise {fd_noise:.3g}")
    assert 0 < fd_real < fd_blur < fd_noise
    assert fd_noise > 20 * fd_real
    # Symmetric, as a distance between the two Gaussian fits must be.
    assert feature_frechet_distance(clf, half_b, half_a) == pytest.approx(fd_real, rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero(mnist, trained):
    _, _, x_te, _ = mnist
    clf, _ = trained
    # Far below the smallest meaningful distance (real vs real is ~1 for these features).
    assert feature_frechet_distance(clf, x_te[:500], x_te[:500]) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_needs_two_images_and_warns_below_feature_dim():
    clf = ReferenceClassifier((1, 8, 8), num_classes=3, width=4, feature_dim=8)
    x = torch.rand(20, 1, 8, 8)
    with pytest.raises(ValueError, match=r"x_b has 1 image.*at least 2"):
        feature_frechet_distance(clf, x, x[:1])
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        feature_frechet_distance(clf, x, x[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_frechet_distance(clf, x, x[10:])  # 10 >= feature_dim 8: no warning


# ---------------------------------------------------------------------------------------- sample_quality


def test_sample_quality_reports_the_same_numbers_and_strict_json(mnist, trained):
    _, _, x_te, y_te = mnist
    clf, _ = trained
    draws, labels = x_te[:300], y_te[:300]
    real, other, recon = x_te[300:650], x_te[650:], _blur(x_te[650:])
    q = sample_quality(clf, draws, labels, real, x_reconstructions=recon, x_real_other=other)
    assert isinstance(q, SampleQuality)
    agree = label_agreement(clf, draws, labels)
    assert q.agreement == agree["overall"] and q.per_class_agreement == agree["per_class"]
    assert q.fd_samples == pytest.approx(feature_frechet_distance(clf, draws, real), rel=1e-9)
    assert q.fd_reconstructions == pytest.approx(feature_frechet_distance(clf, recon, real), rel=1e-9)
    assert q.fd_real_real == pytest.approx(feature_frechet_distance(clf, other, real), rel=1e-9)
    assert (q.n_samples, q.n_reference) == (300, 350)
    d = json.loads(json.dumps(q.to_dict(), allow_nan=False))
    assert d["fd_samples"] == q.fd_samples and d["per_class_agreement"] == q.per_class_agreement
    text = q.format()
    assert f"{100 * q.agreement:.1f}%" in text and "reconstructions" in text and "real vs real" in text

    bare = sample_quality(clf, draws, labels, real)
    assert bare.fd_reconstructions is None and bare.fd_real_real is None
    assert json.loads(json.dumps(bare.to_dict(), allow_nan=False))["fd_real_real"] is None
    assert "-" in bare.format()


def test_to_dict_replaces_non_finite_numbers_with_none():
    q = SampleQuality(float("nan"), [0.5, None, float("inf")], 1.0, None, float("nan"), 10, 10)
    d = json.loads(json.dumps(q.to_dict(), allow_nan=False))
    assert d["agreement"] is None and d["fd_real_real"] is None
    assert d["per_class_agreement"] == [0.5, None, None]
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())


# ---------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_predictions(mnist, trained, tmp_path):
    _, _, x_te, _ = mnist
    clf, _ = trained
    path = clf.save(tmp_path / "sub" / "ref.pt")
    assert path == tmp_path / "sub" / "ref.pt"
    loaded = ReferenceClassifier.load(path)
    assert not loaded.training and loaded.config() == clf.config()
    assert torch.equal(loaded.predict(x_te), clf.predict(x_te))
    assert torch.equal(loaded.embed(x_te[:50]), clf.embed(x_te[:50]))


class _Exploit:
    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_refuses_a_malicious_pickle_and_foreign_files(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    bad = tmp_path / "bad.pt"
    torch.save({"format": "genlib.metrics.ReferenceClassifier", "payload": exploit}, bad)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"bad\.pt is not a ReferenceClassifier file"):
        ReferenceClassifier.load(bad)
    assert not marker.exists()
    # The same payload as a raw pickle (no torch zip container) is refused too.
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(exploit, protocol=2))
    with pytest.raises(ValueError, match=r"raw\.pkl"):
        ReferenceClassifier.load(raw)
    assert not marker.exists()

    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=r"weights\.pt is not a ReferenceClassifier file"):
        ReferenceClassifier.load(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ReferenceClassifier.load(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.filterwarnings("ignore:x_samples has 6 images:RuntimeWarning")
def test_inputs_are_validated_with_errors_naming_the_argument():
    clf = ReferenceClassifier((1, 8, 8), num_classes=3, width=4, feature_dim=8)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        label_agreement(clf, torch.rand(6, 1, 9, 9), y)
    with pytest.raises(ValueError, match=r"x must be a floating-point.*divide uint8 images by 255"):
        clf.predict((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"x must hold pixel values in \[0, 1\]"):
        clf.embed(x * 2 - 1)
    with pytest.raises(ValueError, match=r"y must be an int64 tensor of shape \(6,\) in \[0, 3\)"):
        label_agreement(clf, x, y.to(torch.int32))
    with pytest.raises(ValueError, match=r"y must be .* in \[0, 3\), got a label 3"):
        label_agreement(clf, x, y + 1)
    with pytest.raises(ValueError, match=r"x_samples must have shape"):
        sample_quality(clf, torch.rand(6, 1, 8, 9), y, x)
    with pytest.raises(ValueError, match=r"x_real has 1 image"):
        sample_quality(clf, x, y, x[:1])
    with pytest.raises(ValueError, match="classifier must be a ReferenceClassifier"):
        label_agreement(torch.nn.Linear(2, 2), x, y)
    with pytest.raises(ValueError, match=r"y must be .* got a label 3"):
        train_reference_classifier(x, y + 1, num_classes=3, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="x must be a float torch.Tensor"):
        train_reference_classifier(x.numpy(), y, epochs=1, device="cpu")
