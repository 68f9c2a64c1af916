"""Figures: valid PNGs whose pixels show what was drawn (read back with matplotlib.image)."""

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from genlib.viz import save_image_grid, save_loss_curves, save_precision_map, save_spectrograms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)[..., :3]  # float RGB in [0, 1]
    assert img.std() > 0.01  # not a blank canvas
    return img


def test_image_grid_places_images_in_order(tmp_path):
    images = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])  # black then white
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=2, cell_inches=1.0)
    assert path == tmp_path / "sub" / "grid.png"
    img = _read(path).mean(axis=2)
    h, w = img.shape
    assert img[h // 2, w // 4] < 0.05 and img[h // 2, 3 * w // 4] > 0.95  # each cell's centre
    assert img[:, : w // 2].mean() < img[:, w // 2 :].mean() - 0.4


def test_image_grid_color_and_labels(tmp_path):
    red = torch.zeros(3, 3, 6, 6)
    red[:, 0] = 1.0
    img = _read(save_image_grid(red, tmp_path / "g.png", nrow=3, labels=["a", "b", "c"], title="t"))
    h, w, _ = img.shape
    centre = img[h // 2, w // 6]  # the middle of the first cell
    assert centre[0] > 0.9 and centre[1] < 0.1 and centre[2] < 0.1
    with pytest.raises(ValueError, match="one entry per image"):
        save_image_grid(red, tmp_path / "g.png", labels=["a"])
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        save_image_grid(torch.rand(2, 2, 4, 4), tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        save_image_grid(red, tmp_path / "g.jpg")


def test_spectrogram_shows_a_tone_at_its_frequency(tmp_path):
    sr, n_fft, hop = 16000, 512, 128
    t = np.arange(sr) / sr
    tone = torch.from_numpy(np.sin(2 * np.pi * 6000 * t).astype(np.float32))  # 3/4 of the way up
    spec = torch.stft(tone, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    path = save_spectrograms({"tone": spec, "magnitude": spec.abs()}, tmp_path / "s.png", sr=sr, hop=hop)
    img = _read(path)
    h, w, _ = img.shape
    left = img[:, int(0.1 * w) : int(0.4 * w)]  # inside the first panel, away from the colour bar
    r, g, b = left[..., 0], left[..., 1], left[..., 2]
    top_of_magma = (r > 0.9) & (g > 0.85) & (b < 0.88) & (b > 0.5)  # the 0 dB colour: pale yellow, not white
    row = int(np.argmax(top_of_magma.sum(axis=1)))
    assert top_of_magma[row].mean() > 0.8  # a line across the whole panel
    assert 0.1 * h < row < 0.4 * h  # image rows count from the top: high frequencies must be up there
    with pytest.raises(ValueError, match=r"must have shape \(F, T\)"):
        save_spectrograms({"x": torch.ones(5)}, tmp_path / "s.png", sr=sr, hop=hop)
    with pytest.raises(ValueError, match="magnitudes >= 0"):
        save_spectrograms({"x": -torch.ones(4, 4)}, tmp_path / "s.png", sr=sr, hop=hop)
    with pytest.raises(ValueError, match="non-empty mapping"):
        save_spectrograms({}, tmp_path / "s.png", sr=sr, hop=hop)


def test_precision_map_orientation(tmp_path):
    p = np.exp(np.linspace(0, 5, 64))[:, None] * np.ones((1, 50))  # precision grows with frequency
    img = _read(save_precision_map(p, tmp_path / "p.png", sr=16000, hop=256, title="precision"))
    h, w, _ = img.shape
    panel = img[:, int(0.2 * w) : int(0.6 * w)] @ np.array([0.299, 0.587, 0.114])  # viridis: lighter = larger
    assert panel[int(0.25 * h)].mean() > panel[int(0.75 * h)].mean() + 0.15  # high frequencies on top
    _read(save_precision_map(torch.rand(1, 8, 9) + 0.1, tmp_path / "q.png"))  # bin axes, batch of one
    with pytest.raises(ValueError, match="> 0 for a log colour scale"):
        save_precision_map(np.zeros((4, 4)), tmp_path / "p.png")
    with pytest.raises(ValueError, match="both sr and hop"):
        save_precision_map(p, tmp_path / "p.png", sr=16000)


def test_loss_curves_from_history_and_records(tmp_path):
    history = {"epoch": [1, 2, 3, 4], "train_loss": [2.0, 1.0, 0.6, 0.4],
               "eval_accuracy": [0.3, 0.6, 0.7, 0.8], "seconds": [1.0, 1.0, 1.0, 1.0]}
    wide = _read(save_loss_curves(history, tmp_path / "a.png", logy=True))
    records = [{"step": i, "loss": 1.0 / i} for i in range(1, 20)]
    narrow = _read(save_loss_curves(records, tmp_path / "b.png"))
    assert wide.shape[1] > 1.5 * narrow.shape[1]  # two panels vs one
    with pytest.raises(ValueError, match=r"keys \['nope'\] are not numeric"):
        save_loss_curves(history, tmp_path / "c.png", keys=["nope"])
    with pytest.raises(ValueError, match="mapping name -> values or a list of records"):
        save_loss_curves(3, tmp_path / "c.png")


def test_entropy_grid_orders_each_class_from_confident_to_uncertain(tmp_path):
    from genlib.viz import entropy_grid_order, save_entropy_grid

    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    entropy = torch.tensor([0.9, 0.5, 0.1, 0.2, 0.5, 0.8])
    # class 0 rows {1, 3, 5} by entropy: 3 (0.2), 1 (0.5), 5 (0.8); class 1: 2 (0.1), 4 (0.5), 0 (0.9)
    assert entropy_grid_order(labels, entropy, per_class=3).tolist() == [3, 1, 5, 2, 4, 0]
    assert entropy_grid_order(labels, entropy, per_class=2).tolist() == [3, 5, 2, 0]  # ends of the ranking
    images = entropy.view(-1, 1, 1, 1).expand(6, 1, 8, 8)  # brightness = entropy
    img = _read(save_entropy_grid(images, labels, entropy, tmp_path / "e.png", per_class=3)).mean(axis=2)
    h, w = img.shape
    row = img[int(h * 0.45)]  # through the first row of images (class 0)
    assert row[w // 6] < row[w // 2] < row[5 * w // 6]  # brightness rises left to right with entropy
    with pytest.raises(ValueError, match="labels and entropy"):
        entropy_grid_order(labels, entropy[:3])
