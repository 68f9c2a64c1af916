"""The recipes' streamed-data paths: svhn_semisup ``--include-extra`` (SVHN extra as a memory-mapped dataset)
and vctk_resynthesis ``--stream-frames`` (FC rows trained from a SpeechFrameCache under ``<out>/frames/``)."""

import hashlib
import json

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.datasets import SVHN

from genlib.data import ConcatImages, SpeechFrameCache, SpeechFrames, discover_vctk
from genlib.train import SemiSupervisedConfig
from tests._paths import SHARED_DATA

VCTK = SHARED_DATA / "speech" / "vctk16k"
need_vctk = pytest.mark.skipif(not VCTK.is_dir(), reason=f"shared VCTK folder missing: {VCTK}")


# ------------------------------------------------------------------ svhn_semisup --include-extra


@pytest.fixture
def svhn_files(tmp_path, monkeypatch):
    """Small train / test / extra files in the official .mat layout, registered as the official ones."""
    folder = tmp_path / "svhn"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10), ("extra", 6)):
        labels = np.array([(i % 10) or 10 for i in range(n)], np.uint8)[:, None]
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        path = folder / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": x, "y": labels})
        url, filename, _ = SVHN.split_list[split]
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        monkeypatch.setitem(SVHN.split_list, split, [url, filename, md5])
    return folder


def test_include_extra_is_refused_with_quick_and_ablation(tmp_path, capsys):
    from recipes.svhn_semisup import main

    for extra in (["--quick"], ["--data-dir", str(tmp_path), "--ablation"]):
        with pytest.raises(SystemExit) as e:
            main(["--include-extra", *extra, "--out", str(tmp_path / "o")])
        assert e.value.code == 2 and "--include-extra" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.filterwarnings("ignore:.*fewer than the classifier's feature_dim:RuntimeWarning")
def test_include_extra_streams_extra_through_a_full_svhn_run(tmp_path, svhn_files, monkeypatch):
    import recipes.svhn_semisup as svhn

    full = svhn.Config

    def tiny() -> svhn.Config:  # the full SVHN path (WRN-28-2 / DCGAN, Gaussian) on a CPU-seconds budget
        return full(
            n_labeled=20, latent_dim=4, ebm_hidden=(8,), baseline_epochs=1, generation_steps=2,
            quality_per_class=1, judge_epochs=1,
            train=SemiSupervisedConfig(n_iters=2, batch_size=8, langevin_steps=2, eval_every=0,
                                       checkpoint_every=2, progress=False))

    monkeypatch.setattr(svhn, "Config", tiny)
    seen = []
    load = svhn.load_data

    def spy(*args, **kwargs):
        data = load(*args, **kwargs)
        seen.append(data)
        return data

    monkeypatch.setattr(svhn, "load_data", spy)
    out = tmp_path / "run"
    assert svhn.main(["--data-dir", str(svhn_files), "--include-extra", "--out", str(out), "--no-progress",
                      "--device", "cpu"]) == 0
    x_u = seen[0].x_unlabeled
    assert isinstance(x_u, ConcatImages) and len(x_u) == 20 + 6
    res = json.loads((out / "results.json").read_text())
    assert res["n_unlabeled"] == 26 and 0.0 <= res["latent_classifier_accuracy"] <= 1.0
    assert all((svhn_files / f"{split}_32x32.uint8.npy").is_file() for split in ("train", "extra"))
    # the checkpoint records the choice: the same --out without --include-extra is refused by name
    with pytest.raises(ValueError, match="include_extra"):
        svhn.main(["--data-dir", str(svhn_files), "--out", str(out), "--no-progress", "--device", "cpu"])


# ------------------------------------------------------------------ vctk_resynthesis --stream-frames


@need_vctk
def test_train_from_a_frame_cache_equals_train_from_the_tensor(tmp_path):
    from recipes import vctk_resynthesis as vr

    utts = [u for u in discover_vctk(VCTK) if u.speaker == "p225"][:3]
    tensor = SpeechFrames(utts, every=10).data
    cache = SpeechFrameCache(utts, tmp_path / "frames", every=10)
    cfg = vr.Config(latent_dim=4, hidden=(32,), epochs=2, optimizer="adam", device="cpu")
    models = []
    for data in (tensor, cache):
        torch.manual_seed(0)
        vae = vr.build_vae(cfg, vr.ROWS["gamma-fc"], tensor.shape[1])
        curve = vr.train(cfg, vae, data, batch_size=64)
        models.append((vae, curve))
    (a, curve_a), (b, curve_b) = models
    assert curve_a == curve_b and len(curve_a) == 2
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@need_vctk
def test_quick_run_with_stream_frames(tmp_path):
    from recipes import vctk_resynthesis as vr

    args = ["--quick", "--stream-frames", "--rows", "gamma-fc", "--epochs", "1", "--n-test-utterances", "1",
            "--no-fad", "--device", "cpu", "--data-dir", str(VCTK), "--out", str(tmp_path)]
    assert vr.main(args) == 0
    res = json.loads((tmp_path / "gamma-fc" / "results.json").read_text())
    assert res["config"]["stream_frames"] is True
    assert res["results"]["gamma-fc"]["test_elbo_per_frame"] > res["results"]["gamma-fc"][
        "untrained_test_elbo_per_frame"]
    meta = json.loads((tmp_path / "frames" / "cache.json").read_text())
    train_utts = [u for u in discover_vctk(VCTK) if u.speaker != "p228"]  # p228: the held-out speaker
    assert meta["n_frames"] == len(SpeechFrames(train_utts, every=10))
    # the rerun reuses the cache (and continues the finished checkpoint); in-memory frames resume it too
    cache = SpeechFrameCache(train_utts, tmp_path / "frames", every=10)
    assert cache.status == "reused"
    assert vr.main([a for a in args if a != "--stream-frames"]) == 0
