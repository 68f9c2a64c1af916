"""Smoke test of ``python -m recipes.vae_optimizers --quick`` (Adam vs PSGD on one VAE)."""

import json
import math

from recipes.vae_optimizers import main


def test_vae_optimizers_trains_every_optimizer_past_the_coin_flip_model(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"adam", "psgd-kron"}
    # A Bernoulli model that says 0.5 for each of the 64 pixels scores 64·log(0.5) ≈ −44.4 nats; a trained
    # VAE's importance-weighted log p(x) must beat that clearly, and IWAE is at least the ELBO on average.
    for r in results.values():
        assert r["test_log_px"] > 64 * math.log(0.5) + 10
        assert r["test_log_px"] >= r["test_elbo"] - 0.5
    for name in ("loss_curves.png", "samples_adam.png", "samples_psgd-kron.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_dir_is_the_data_root_or_the_folder_and_bad_flags_exit_2(tmp_path, capsys, monkeypatch):
    import pytest
    import torch

    from genlib.data.images import default_data_root
    from recipes.vae_optimizers import Config, load_data

    root = default_data_root()
    if not (root / "digits" / "mnist_4k.npz").is_file():
        pytest.skip("shared MNIST-4k not present")
    a, _ = load_data(Config(data_dir=str(root)))
    b, _ = load_data(Config(data_dir=str(root / "digits")))
    assert a.shape[1:] == (1, 28, 28) and torch.equal(a, b)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in ((["--data-dir", str(tmp_path)], "holds no mnist_4k.npz"),
                          (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
                          (["--device", "cuda"], "--device cuda requested but no CUDA GPU is visible")):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", str(tmp_path / "o")])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_runs_under_torchrun_with_two_processes(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "recipes.vae_optimizers", "--steps", "40", "--out", str(tmp_path), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test ELBO") == 1  # rank 0 alone reports
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for r in results.values():
        assert r["test_log_px"] > 64 * math.log(0.5) + 5 and len(r["history"]["train_loss"]) == 2
