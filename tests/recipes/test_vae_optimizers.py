"""Smoke test of ``python -m recipes.vae_optimizers --quick`` (Adam vs PSGD on one VAE)."""

import json
import math

from recipes.vae_optimizers import main


def test_vae_optimizers_trains_every_optimizer_past_the_coin_flip_model(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"adam", "psgd-lra"}
    # A Bernoulli model that says 0.5 for each of the 64 pixels scores 64·log(0.5) ≈ −44.4 nats; a trained
    # VAE's importance-weighted log p(x) must beat that clearly, and IWAE is at least the ELBO on average.
    for r in results.values():
        assert r["test_log_px"] > 64 * math.log(0.5) + 10
        assert r["test_log_px"] >= r["test_elbo"] - 0.5
    for name in ("loss_curves.png", "samples_adam.png", "samples_psgd-lra.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
