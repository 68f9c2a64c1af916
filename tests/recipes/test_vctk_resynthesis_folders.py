"""vctk_resynthesis on your own folders: training / test folders and speakers, a 48 kHz VCTK 0.92 folder and
a flat LJSpeech-style folder written in the real formats (from real VCTK speech), ``--evaluate-only`` on a
saved model, per-row output folders, the model saved at every checkpoint, and the new rows (learned-shape IS,
complex Normal)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from genlib.data import default_data_root
from genlib.data.speech import discover_utterances, load_audio
from genlib.data.stft import stft
from genlib.train import Checkpointer
from recipes import vctk_resynthesis as vr

VCTK = default_data_root() / "speech" / "vctk16k"
pytestmark = pytest.mark.skipif(not VCTK.is_dir(), reason=f"shared VCTK folder missing: {VCTK}")


def _real(speaker: str, n: int, seconds: float | None = None) -> list[np.ndarray]:
    """The first ``n`` real 16 kHz utterances of a shared VCTK speaker (optionally cut to ``seconds``)."""
    utts = [u for u in discover_utterances(VCTK, corpus="vctk") if u.speaker == speaker][:n]
    waves = [sf.read(u.path, dtype="float32")[0] for u in utts]
    return [w[: int(16000 * seconds)] if seconds else w for w in waves]


def _write(path: Path, wave16k: np.ndarray, sr: int) -> None:
    """``wave16k`` resampled to ``sr``, written as 16-bit PCM (WAV or FLAC by the suffix) as corpora ship."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = torchaudio.functional.resample(torch.from_numpy(wave16k), 16000, sr).numpy()
    sf.write(path, np.clip(wave, -1, 1), sr, subtype="PCM_16")


def _vctk092(root: Path, speakers: dict[str, list[np.ndarray]]) -> Path:
    """A VCTK 0.92 folder: ``wav48_silence_trimmed/pXXX/pXXX_NNN_mic{1,2}.flac`` at 48 kHz."""
    for spk, waves in speakers.items():
        for i, w in enumerate(waves, 1):
            for mic in ("mic1", "mic2"):
                _write(root / "wav48_silence_trimmed" / spk / f"{spk}_{i:03d}_{mic}.flac", w, 48000)
    (root / "speaker-info.txt").write_text("ID AGE GENDER ACCENTS\n")
    return root


def _ljspeech(root: Path, waves: list[np.ndarray]) -> Path:
    """An LJSpeech-style flat folder: ``wavs/LJ001-NNNN.wav`` at 22.05 kHz beside a ``metadata.csv``."""
    for i, w in enumerate(waves, 1):
        _write(root / "wavs" / f"LJ001-{i:04d}.wav", w, 22050)
    (root / "metadata.csv").write_text("LJ001-0001|text|text\n")
    return root


def test_a_48k_vctk_folder_of_other_speakers_and_flat_folders_choose_train_and_test(tmp_path):
    short = {
        s: _real(src, 2, seconds=0.5) for s, src in (("p300", "p225"), ("p301", "p226"), ("p302", "p227"))
    }
    vctk48 = _vctk092(tmp_path / "VCTK-Corpus-0.92", short)
    # no built-in speakers: train on all but the last speaker id, test on it (mic1 only)
    train, test = vr.load_corpus(vr.Config(data_dir=str(vctk48)))
    assert {u.speaker for u in train} == {"p300", "p301"} and {u.speaker for u in test} == {"p302"}
    assert all(u.path.name.endswith("_mic1.flac") for u in train + test) and len(train) == 4
    info = vr.describe(test)
    assert info["native_sample_rates"] == {"48000": 2} and info["speakers"] == ["p302"]
    line = vr.describe_line("test data", info)
    assert "resampling to 16 kHz: 2 files at 48 kHz" in line and "p302" in line
    # explicit speakers, and the paper's protocol (a random fraction of the speakers for training)
    train, test = vr.load_corpus(
        vr.Config(data_dir=str(vctk48), train_speakers=("p300",), test_speakers=("p302",))
    )
    assert {u.speaker for u in train} == {"p300"} and {u.speaker for u in test} == {"p302"}
    train, test = vr.load_corpus(vr.Config(data_dir=str(vctk48), train_speaker_fraction=0.34, seed=1))
    assert len({u.speaker for u in train}) == 1 and len({u.speaker for u in test}) == 2
    assert not {u.speaker for u in train} & {u.speaker for u in test}
    # bad speakers name the argument and the speakers there are
    with pytest.raises(
        ValueError, match=r"--test-speakers: speakers \['p228'\] have no utterances .*p300, p301"
    ):
        vr.load_corpus(vr.Config(data_dir=str(vctk48), test_speakers=("p228",)))
    with pytest.raises(ValueError, match=r"--train-speakers \['p302'\] are the held-out test speakers"):
        vr.load_corpus(vr.Config(data_dir=str(vctk48), train_speakers=("p302",)))
    # a flat folder (one speaker, named after the folder): trains, but there is no one to hold out ...
    lj = _ljspeech(tmp_path / "LJSpeech-1.1", _real("p228", 2, seconds=0.5))
    with pytest.raises(ValueError, match="holds one speaker .*LJSpeech-1.1.* give --test-dir"):
        vr.load_corpus(vr.Config(train_dirs=(str(lj),)))
    # ... so it is tested on another folder; training folders of several layouts mix
    train, test = vr.load_corpus(vr.Config(train_dirs=(str(lj), str(vctk48)), test_dir=str(VCTK),
                                           test_speakers=("p228",)))  # fmt: skip
    assert {u.speaker for u in train} == {"LJSpeech-1.1", "p300", "p301", "p302"}
    assert {u.corpus for u in train} == {"flat", "vctk"} and {u.speaker for u in test} == {"p228"}
    assert vr.describe(train)["native_sample_rates"] == {"22050": 2, "48000": 6}
    # evaluating a saved model reads no training folder (they may not exist where it is evaluated)
    absent = str(tmp_path / "absent")
    train, test = vr.load_corpus(vr.Config(evaluate_only=True, test_dir=str(lj), data_dir=absent))
    assert train == [] and [u.path.name for u in test] == ["LJ001-0001.wav", "LJ001-0002.wav"]
    with pytest.raises(FileNotFoundError, match=r"--data-dir .*absent: speech root not found"):
        vr.load_corpus(vr.Config(test_dir=str(lj), data_dir=absent))
    with pytest.raises(FileNotFoundError, match=r"--test-dir .*nowhere: speech root not found"):
        vr.load_corpus(vr.Config(test_dir=str(tmp_path / "nowhere")))


def test_evaluate_only_scores_a_saved_model_on_a_48k_vctk_folder_and_a_flat_folder(tmp_path, capsys):
    out = tmp_path / "runs"
    # Adam: the model the resampling tolerances below were set on (2 epochs of the default PSGD-Kron leave a
    # rougher model, LSD 14.8 dB, whose scores move more under resampling)
    base = ["--quick", "--rows", "gamma-fc", "--n-test-utterances", "2", "--no-fad", "--device", "cpu",
            "--optimizer", "adam"]
    assert vr.main([*base, "--epochs", "2", "--out", str(out)]) == 0
    trained = (out / "gamma-fc" / "results.json").read_bytes()
    heldout = json.loads(trained)["results"]["gamma-fc"]
    # the held-out speaker again, from the saved model: the training run's numbers exactly
    assert vr.main([*base, "--evaluate-only", "--out", str(out)]) == 0
    again = json.loads((out / "gamma-fc" / "eval_heldout" / "results.json").read_text())["results"][
        "gamma-fc"
    ]
    # Every metric exactly, but PESQ: the pesq package does not always reproduce its own score near the floor
    # (the same pair of waves scored 1.039, 1.331 and 1.034 in one process), so PESQ only has to be valid.
    def reproducible(d):
        return {k: v for k, v in d.items() if not k.startswith("pesq_")}

    assert reproducible(again) == reproducible({
        k: v for k, v in heldout.items() if k not in ("untrained_test_elbo_per_frame", "train_seconds")
    })
    assert {k for k in again if k.startswith("pesq_")} == {k for k in heldout if k.startswith("pesq_")}
    assert all(1.0 <= v <= 4.7 for k, v in again.items() if k.startswith("pesq_"))
    # the same two p228 utterances as a 48 kHz VCTK 0.92 folder: resampled back to 16 kHz on load, and said so
    vctk48 = _vctk092(tmp_path / "VCTK-Corpus-0.92", {"p228": _real("p228", 2)})
    capsys.readouterr()
    assert vr.main([*base, "--evaluate-only", "--test-dir", str(vctk48), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "test data: 2 utterances, 1 speakers (p228), vctk; resampling to 16 kHz: 2 files at 48 kHz" in log
    payload = json.loads((out / "gamma-fc" / "eval_VCTK-Corpus-0.92" / "results.json").read_text())
    assert payload["test_data"]["native_sample_rates"] == {"48000": 2}
    assert payload["test_data"]["speakers_also_in_training"] == []  # from the training run's record
    assert payload["train_data"]["speakers"] == ["p225", "p226", "p227"]
    assert payload["trained_config"]["epochs"] == 2 and payload["config"]["evaluate_only"]
    assert payload["model"] == str(out / "gamma-fc" / "vae.pt")
    r48 = payload["results"]["gamma-fc"]
    # 16 k -> 48 k -> 16 k loses almost nothing: the scores match the 16 kHz originals'
    assert r48["pesq_wb_gt_phase"] == pytest.approx(heldout["pesq_wb_gt_phase"], abs=0.05)
    assert r48["lsd_db_gt_phase"] == pytest.approx(heldout["lsd_db_gt_phase"], abs=0.3)
    assert r48["stoi_gt_phase"] == pytest.approx(heldout["stoi_gt_phase"], abs=0.02)
    # (not the ELBO: the resampler's low-pass empties the bins near 8 kHz, whose density the Gamma decoder
    # scores very differently; a model tested on 48 kHz files is scored on what it is given)
    # a flat LJSpeech-style folder at 22.05 kHz with free names
    lj = _ljspeech(tmp_path / "LJSpeech-1.1", _real("p228", 2))
    absent = str(tmp_path / "no-training-data-here")
    argv = [*base, "--evaluate-only", "--test-dir", str(lj), "--data-dir", absent, "--out", str(out)]
    assert vr.main(argv) == 0
    payload = json.loads((out / "gamma-fc" / "eval_LJSpeech-1.1" / "results.json").read_text())
    assert payload["test_data"]["speakers"] == ["LJSpeech-1.1"] and payload["test_data"]["layouts"] == [
        "flat"
    ]
    assert payload["test_data"]["native_sample_rates"] == {"22050": 2}
    r = payload["results"]["gamma-fc"]
    assert 1.0 <= r["pesq_wb_gt_phase"] <= 4.65 and math.isfinite(r["lsd_db_gt_phase"])
    assert (out / "gamma-fc" / "eval_LJSpeech-1.1" / "spectrograms.png").read_bytes()[:4] == b"\x89PNG"
    # evaluating elsewhere never touched the training run's results
    assert (out / "gamma-fc" / "results.json").read_bytes() == trained


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--test-dir", "{tmp}/nowhere"], "--test-dir {tmp}/nowhere: speech root not found"),
        (["--train-speakers", "p999"], "--train-speakers: speakers ['p999'] have no utterances"),
        (["--train-dir", "{tmp}"], "--train-dir {tmp}: no utterances found under"),
        (
            ["--evaluate-only", "--rows", "gamma-fc"],
            "--evaluate-only needs a trained model per row; not found: {tmp}/o/gamma-fc/vae.pt",
        ),
        (["--train-speaker-fraction", "1"], "argument --train-speaker-fraction: must be a number in (0, 1)"),
    ],
)
def test_bad_folders_and_speakers_are_one_line_errors_naming_the_argument(capsys, tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        vr.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message.replace("{tmp}", str(tmp_path)) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_the_model_is_saved_at_every_checkpoint_and_other_training_files_are_refused(tmp_path, monkeypatch):
    frames = stft(load_audio(sorted((VCTK / "p225").glob("*.wav"))[0]))[:, ::4].T.contiguous()
    cfg = vr.Config(latent_dim=8, hidden=(32,), epochs=4, optimizer="adam", device="cpu", checkpoint_every=2)
    torch.manual_seed(0)
    vae = vr.build_vae(cfg, vr.ROWS["gamma-fc"], frames.shape[1])
    saved, save = [], vr.VAE.save
    monkeypatch.setattr(
        vr.VAE, "save", lambda self, path, **kw: (saved.append(kw["epoch"]), save(self, path, **kw))[1]
    )
    ckpts = Checkpointer(tmp_path, every=2, keep=2, prefix="train")
    vr.train(cfg, vae, frames, 32, ckpts, data_id="4 files, sha256 aaaa", model_path=tmp_path / "vae.pt")
    assert saved == [2, 4]  # not only at the end: a stopped run leaves a model to evaluate
    back = vr.VAE.load(tmp_path / "vae.pt")
    for a, b in zip(vae.parameters(), back.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"training_data"):
        vr.train(cfg, vae, frames, 32, ckpts, data_id="5 files, sha256 bbbb")
    # the fingerprint names files by speaker and name, in any order
    utts = discover_utterances(VCTK, corpus="vctk")[:3]
    assert vr.training_data_id(utts) == vr.training_data_id(utts[::-1]) != vr.training_data_id(utts[:2])


def test_learned_shape_is_and_complex_normal_rows_train_and_decode():
    frames = stft(load_audio(sorted((VCTK / "p225").glob("*.wav"))[0]))[:, ::3].T.contiguous()
    spec = stft(load_audio(sorted((VCTK / "p228").glob("*.wav"))[0]))
    cfg = vr.Config(latent_dim=8, hidden=(64,), epochs=6, optimizer="adam", lr=1e-3, device="cpu")
    assert vr.ROWS["is-fc"].constant_precision and not vr.ROWS["is-learned-fc"].constant_precision
    assert vr.ROWS["cn-fc"].phase_aware and not vr.ROWS["is-learned-fc"].phase_aware
    for name in ("is-learned-fc", "cn-fc"):
        row = vr.ROWS[name]
        torch.manual_seed(0)
        vae = vr.build_vae(cfg, row, frames.shape[1])
        before = vr.elbo_per_frame(vae, row, [spec])
        vr.train(cfg, vae, frames, batch_size=64)
        assert vr.elbo_per_frame(vae, row, [spec]) > before + 100, name
        decoded = vr.decode_utterance(vae, row, spec)
        assert decoded["magnitude"].shape == spec.shape and bool((decoded["magnitude"] >= 0).all())
        if name == "is-learned-fc":  # the learned shape gives a precision map that varies over bins
            assert vae.likelihood.learned_shape and decoded["precision"].std() > 0.01
            assert "phase" not in decoded
        else:  # complex Normal: |mu| is the magnitude, angle(mu) the phase
            dist = vae.decode(vae.encode(spec.T)[0])
            torch.testing.assert_close(decoded["magnitude"], dist.mean.abs().T.detach())
            torch.testing.assert_close(decoded["phase"], dist.mean.angle().T.detach())
