"""README's main command: ``python -m recipes.quickstart`` (the whole pipeline), its --quick smoke path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from genlib.data import SyntheticDataset
from recipes.quickstart import main

REPO = Path(__file__).resolve().parents[2]


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


def test_runs_on_svhn_mat_files(tmp_path, monkeypatch):
    # SVHN's official layout (X uint8 (32, 32, 3, N), y (N, 1), 10 for digit 0), filled with real MNIST-4k
    # digits as RGB so the colour path (Gaussian likelihood on 3x32x32) runs end to end. torchvision's SVHN
    # checks each file's md5, so the files written here are registered as the official ones.
    import hashlib

    import numpy as np
    import pytest
    import scipy.io

    from genlib.data.images import default_data_root, load_mnist_npz

    path = default_data_root() / "digits" / "mnist_4k.npz"
    if not path.is_file():
        pytest.skip("shared MNIST-4k not present")
    x, y = load_mnist_npz(path)
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:600]  # the file is by class
    x, y = x[pick], y[pick]
    img = torch.nn.functional.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)  # (600, 3, 32, 32)
    raw = (img * 255).round().to(torch.uint8).permute(2, 3, 1, 0).numpy()  # (32, 32, 3, N)
    lab = np.where(y.numpy() == 0, 10, y.numpy()).astype(np.uint8)[:, None]
    data = tmp_path / "svhn"
    data.mkdir()
    scipy.io.savemat(data / "train_32x32.mat", {"X": raw[..., :500], "y": lab[:500]})
    scipy.io.savemat(data / "test_32x32.mat", {"X": raw[..., 500:], "y": lab[500:]})
    from torchvision.datasets import SVHN

    for split in ("train", "test"):
        url, filename, _ = SVHN.split_list[split]
        md5 = hashlib.md5((data / filename).read_bytes()).hexdigest()
        monkeypatch.setitem(SVHN.split_list, split, [url, filename, md5])
    out = tmp_path / "out"
    assert main(["--quick", "--iters", "30", "--classifier-epochs", "3", "--data-dir", str(data),
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert all(0.0 <= a <= 1.0 for a in res["downstream_accuracy"].values())
    assert SyntheticDataset(out / "synthetic.pt").x.shape[1:] == (3, 32, 32)


def test_data_dir_accepts_the_root_or_the_folder_and_flags_are_checked(tmp_path, capsys, monkeypatch):
    import pytest

    import recipes.quickstart as quickstart
    from genlib.data.images import default_data_root

    root = default_data_root()
    if not (root / "digits" / "mnist_4k.npz").is_file():
        pytest.skip("shared MNIST-4k not present")
    seen = []

    def stop(cfg):
        seen.append(cfg.data_dir)
        raise KeyboardInterrupt  # the resolved folder is all this test needs: stop before training

    monkeypatch.setattr(quickstart, "load_split", stop)
    for data_dir in (root, root / "digits"):
        with pytest.raises(KeyboardInterrupt):
            main(["--data-dir", str(data_dir), "--out", str(tmp_path / "o"), "--device", "cpu"])
        assert (root / "digits").samefile(seen[-1])
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the data root (holding digits/mnist_4k.npz) or the folder holding the files itself" in help_text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in ((["--data-dir", str(tmp_path)], "holds neither mnist_4k.npz nor SVHN"),
                          (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
                          (["--device", "cuda"], "--device cuda requested but no CUDA GPU is visible")):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", str(tmp_path / "o")])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_rerun_in_the_same_out_with_another_seed_is_refused_by_name(tmp_path):
    import pytest

    base = ["--quick", "--iters", "20", "--classifier-epochs", "1", "--out", str(tmp_path), "--device", "cpu",
            "--no-progress"]
    assert main(base) == 0
    res = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    with pytest.raises(ValueError, match=r"'seed': \(0, 1\).*use another --out"):
        main([*base, "--seed", "1"])
    with pytest.raises(ValueError, match="at step 20, more than n_iters 10"):
        main([*base, "--iters", "10"])
    # as a command, a refusal is one line and exit status 2, not a traceback
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "recipes.quickstart", *base, "--seed", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("quickstart.py: error: ") and "'seed': (0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    # nothing of the refused runs was written over the first run's results
    assert json.loads((tmp_path / "results.json").read_text()) == res
