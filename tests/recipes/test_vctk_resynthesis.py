import json
import math

import pytest
import torch

from genlib.data import default_data_root
from genlib.data.speech import SpeechWindows, discover_utterances, load_audio
from genlib.data.stft import stft
from genlib.metrics import PESQ_MAX
from genlib.train import Checkpointer
from recipes import vctk_resynthesis as vr

VCTK = default_data_root() / "speech" / "vctk16k"
LIBRI = default_data_root() / "speech" / "librispeech"
pytestmark = pytest.mark.skipif(not VCTK.is_dir(), reason=f"shared VCTK folder missing: {VCTK}")


@pytest.fixture(scope="module")
def utterances():
    utts = discover_utterances(VCTK, corpus="vctk")
    train = [load_audio(u.path) for u in utts if u.speaker == "p225"][:4]
    test = [load_audio(u.path) for u in utts if u.speaker == "p228"][:1]
    return train, test


def test_quick_run_trains_both_decoders_and_reports_every_column(tmp_path):
    args = ["--quick", "--epochs", "5", "--n-test-utterances", "1", "--device", "cpu"]
    rc = vr.main([*args, "--data-dir", str(VCTK), "--out", str(tmp_path)])
    assert rc == 0
    # each row has its own folder and results.json (two runs side by side cannot overwrite each other)
    payloads = {r: json.loads((tmp_path / r / "results.json").read_text()) for r in ("gamma-fc", "is-fc")}
    res = {r: p["results"][r] for r, p in payloads.items()}
    assert all(set(p["results"]) == {r} for r, p in payloads.items())  # the quick default: Gamma FC vs IS FC
    ref = payloads["gamma-fc"]["reference"]
    assert payloads["is-fc"]["reference"] == ref
    assert payloads["is-fc"]["test_data"]["speakers"] == ["p228"]
    assert payloads["is-fc"]["train_data"]["speakers"] == ["p225", "p226", "p227"]
    # the ground-truth magnitude with its own phase is the identity: PESQ at its ceiling, LSD 0, FAD 0
    assert ref["pesq_wb_gt_phase"] == pytest.approx(PESQ_MAX["wb"], abs=0.01)
    assert ref["lsd_db_gt_phase"] < 0.01 and ref["fad_gt_phase"] < 1e-6
    # ...while Griffin-Lim has to estimate the phase: strictly worse, in PESQ and in FAD
    assert ref["pesq_wb_gl_phase"] < ref["pesq_wb_gt_phase"] - 0.1 and ref["fad_gl_phase"] > 1e-4
    for name, r in res.items():
        for key in ("pesq_wb_gt_phase", "pesq_wb_gl_phase", "pesq_nb_gt_phase"):
            assert math.isfinite(r[key]) and 1.0 <= r[key] <= 4.65, (name, key, r[key])
        assert 0 < r["stoi_gt_phase"] < 1 and r["lsd_db_gt_phase"] > 0, (name, r)
        # a decoded (imperfect) magnitude must sit further from the real speech than the real speech itself
        assert r["fad_gt_phase"] > ref["fad_gt_phase"] and math.isfinite(r["fad_gl_phase"]), (name, r)
        assert "pesq_wb_vm_phase" not in r  # magnitude-only rows have no learned phase
        # training must raise the held-out speaker's ELBO well above the same model at initialisation
        assert r["test_elbo_per_frame"] > r["untrained_test_elbo_per_frame"] + 100, (name, r)
    for png in ("spectrograms.png", "precision.png", "loss_curve.png"):
        assert (tmp_path / "gamma-fc" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "is-fc" / "precision.png").exists()  # IS has a fixed shape: no precision map


@pytest.mark.parametrize("row", ["gamma-conv1d", "gamma-conv1d-gru", "gamma-conv1d-bigru"])
def test_conv_rows_decode_whole_utterances_and_training_improves_the_elbo(row, utterances):
    train_waves, test_waves = utterances
    cfg = vr.Config(
        rows=(row,), latent_dim=8, conv_hidden=(48,), gru_hidden=16, epochs=8, optimizer="adam", lr=3e-4,
        window_frames=16, device="cpu",
    )  # fmt: skip
    windows = SpeechWindows(train_waves, n_windows=48, frames=cfg.window_frames, seed=0).data
    torch.manual_seed(0)
    vae = vr.build_vae(cfg, vr.ROWS[row], windows.shape[1])
    raw = vae.decoder(vae.encode(windows[:3])[0])
    assert raw.shape == (3, 2, 513, cfg.window_frames)  # (B, n_params, F, T) for the Gamma likelihood
    specs = [stft(w) for w in test_waves]
    before = vr.elbo_per_frame(vae, vr.ROWS[row], specs)
    vr.train(cfg, vae, windows, batch_size=8)
    after = vr.elbo_per_frame(vae, vr.ROWS[row], specs)
    assert after > before + 100, (before, after)
    # trained on 16-frame windows, the model decodes a whole held-out utterance of any length T
    decoded = vr.decode_utterance(vae, vr.ROWS[row], specs[0])
    assert decoded["magnitude"].shape == specs[0].shape and decoded["precision"].shape == specs[0].shape
    assert bool((decoded["magnitude"] > 0).all()) and "phase" not in decoded


def test_learned_von_mises_phase_beats_random_phase(utterances):
    train_waves, _ = utterances
    # per-frame absolute STFT phase is hard to learn (see the recipe's notes); a few frames of one utterance
    # are learnable in ~100 steps, enough to check that the learned phase reaches the re-synthesis
    cfg = vr.Config(latent_dim=32, hidden=(256,), epochs=100, optimizer="adam", lr=2e-3, device="cpu")
    spec = stft(train_waves[0])[:, ::12]
    torch.manual_seed(0)
    row = vr.ROWS["gamma-vm-fc"]
    vae = vr.build_vae(cfg, row, spec.shape[0])
    vr.train(cfg, vae, spec.T.contiguous(), batch_size=64)
    decoded = vr.decode_utterance(vae, row, spec)
    assert decoded["phase"].shape == spec.shape
    # energy-weighted phase agreement E[|X|^2 cos(phase error)] / E|X|^2: ~0 for random phase, 1 for perfect
    power = spec.abs().square()
    agreement = float((power * torch.cos(decoded["phase"] - spec.angle())).sum() / power.sum())
    assert agreement > 0.3, agreement
    # the decoded magnitude with the learned phase is closer to the complex spectrum than with random phase
    mag = decoded["magnitude"]
    random_phase = (torch.rand(spec.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * torch.pi
    err_vm = (spec - torch.polar(mag, decoded["phase"])).abs().square().sum()
    err_random = (spec - torch.polar(mag, random_phase)).abs().square().sum()
    assert err_vm < 0.8 * err_random, (float(err_vm), float(err_random))


def test_row_selection_and_bad_arguments():
    assert vr.QUICK["rows"] == ("gamma-fc", "is-fc")
    assert {r for r, spec in vr.ROWS.items() if spec.von_mises} == {"lognormal-vm-fc", "gamma-vm-fc"}
    bad_args = (["--epochs", "0"], ["--latent-dim", "0"], ["--rows", "gamma-fc,bogus"], ["--hidden", "a,b"],
                ["--max-librispeech-utterances", "0"])
    for bad in (*bad_args, ["--beta", "-1"], ["--lr", "0"], ["--grad-clip", "0"]):
        with pytest.raises(SystemExit):
            vr.main(bad)


@pytest.mark.skipif(not LIBRI.is_dir(), reason=f"shared LibriSpeech folder missing: {LIBRI}")
def test_librispeech_corpora_keep_test_speakers_out_of_training():
    cfg = vr.Config(corpus="librispeech", data_dir=str(VCTK), librispeech_dir=str(LIBRI))
    train, test = vr.load_corpus(cfg)
    assert {u.speaker for u in test} == set(cfg.librispeech_test_speakers)
    assert len(train) == cfg.max_librispeech_utterances
    assert not {u.speaker for u in train} & set(cfg.librispeech_test_speakers)
    cfg.corpus = "vctk+librispeech"
    train, test = vr.load_corpus(cfg)
    assert {u.speaker for u in test} == {"p228"}  # the VCTK folder's last speaker is held out
    assert {u.corpus for u in train} == {"vctk", "librispeech"}
    assert "p228" not in {u.speaker for u in train}
    with pytest.raises(ValueError, match="librispeech_test_speakers"):
        vr.load_corpus(
            vr.Config(corpus="librispeech", librispeech_dir=str(LIBRI), librispeech_test_speakers=("0",))
        )
    with pytest.raises(ValueError, match="corpus"):
        vr.load_corpus(vr.Config(corpus="timit"))


def test_divergence_stops_with_a_message_naming_the_learning_rate(utterances):
    # an absurd learning rate blows the weights up within a few steps; the run must stop with advice,
    # not with a NaN check deep inside the likelihood
    train_waves, _ = utterances
    cfg = vr.Config(latent_dim=8, hidden=(64,), epochs=5, optimizer="adam", lr=1e4, device="cpu")
    frames = stft(train_waves[0])[:, ::4].T.contiguous()
    torch.manual_seed(0)
    vae = vr.build_vae(cfg, vr.ROWS["gamma-fc"], frames.shape[1])
    diverged = r"training diverged in epoch \d+ .*--lr 10000, --grad-clip None: lower"
    with pytest.raises(RuntimeError, match=diverged):
        vr.train(cfg, vae, frames, batch_size=32)


def test_training_resumes_from_its_checkpoint_bit_exactly(utterances, tmp_path):
    train_waves, _ = utterances
    frames = stft(train_waves[0])[:, ::4].T.contiguous()

    def run(epochs, checkpoints=None):
        cfg = vr.Config(latent_dim=8, hidden=(64,), epochs=epochs, optimizer="adam", lr=1e-3, device="cpu",
                        grad_clip=50.0, checkpoint_every=1)  # fmt: skip
        torch.manual_seed(0)
        vae = vr.build_vae(cfg, vr.ROWS["gamma-fc"], frames.shape[1])
        return vr.train(cfg, vae, frames, batch_size=32, checkpoints=checkpoints), vae

    full, vae_full = run(4)
    ckpts = Checkpointer(tmp_path, every=1, keep=1, prefix="train_gamma-fc")
    first, _ = run(2, ckpts)  # "interrupted" after two epochs
    assert first == full[:2] and ckpts.latest().name == "train_gamma-fc_00000002.pt"
    torch.manual_seed(123)  # a fresh process: other global RNG state, restored from the checkpoint
    resumed, vae_resumed = run(4, ckpts)
    assert resumed == full
    for a, b in zip(vae_full.parameters(), vae_resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="more than --epochs 3"):
        run(3, ckpts)
    # a checkpoint from other settings is refused by name, not loaded into a mismatched model
    cfg = vr.Config(latent_dim=8, hidden=(64,), epochs=5, optimizer="adam", lr=3e-4, device="cpu")
    vae = vr.build_vae(cfg, vr.ROWS["gamma-fc"], frames.shape[1])
    with pytest.raises(ValueError, match=r"other settings .*'lr': \(0.001, 0.0003\)"):
        vr.train(cfg, vae, frames, batch_size=32, checkpoints=ckpts)


def test_newton_type_psgd_trains_through_a_closure(utterances):
    # --optimizer psgd-lra-hvp: the optimizer differentiates the ELBO itself (exact Hessian-vector products)
    train_waves, _ = utterances
    cfg = vr.Config(latent_dim=8, hidden=(64,), epochs=4, optimizer="psgd-lra-hvp", grad_clip=1.0,
                    device="cpu")
    frames = stft(train_waves[0])[:, ::4].T.contiguous()
    torch.manual_seed(0)
    vae = vr.build_vae(cfg, vr.ROWS["gamma-fc"], frames.shape[1])
    opt = vr.make_optimizer(cfg, vae.parameters())
    assert opt.curvature == "hvp" and opt.param_groups[0]["grad_clip_max_norm"] == 1.0
    losses = vr.train(cfg, vae, frames, batch_size=32)
    assert losses[-1] < losses[0] - 1.0, losses


def test_kron_option_is_the_benchmarked_configuration_and_trains(utterances):
    # the default, --optimizer psgd-kron: Kron in the QEQ coordinates, diagonal factors for each matrix's
    # largest dim and dims above 256, step entries clamped
    train_waves, _ = utterances
    assert vr.Config().optimizer == "psgd-kron"
    cfg = vr.Config(latent_dim=8, hidden=(64,), epochs=4, optimizer="psgd-kron", device="cpu")
    frames = stft(train_waves[0])[:, ::4].T.contiguous()
    torch.manual_seed(0)
    vae = vr.build_vae(cfg, vr.ROWS["gamma-fc"], frames.shape[1])
    opt = vr.make_optimizer(cfg, vae.parameters())
    group = opt.param_groups[0]
    assert (group["coords"], group["memory_save_mode"], group["max_size"], group["max_update_abs"]) == (
        "QEQ", "one_diag", 256, 1.0)
    assert group["lr"] == cfg.psgd_kron_lr == vr.optimizer_lr(cfg)
    losses = vr.train(cfg, vae, frames, batch_size=32)
    assert losses[-1] < losses[0] - 1.0, losses


def test_vggish_checkpoint_switches_the_fad_embedding(tmp_path):
    from genlib.metrics import VGGish

    # a missing checkpoint fails before any training, naming the path
    missing = tmp_path / "nowhere" / "vggish.pt"
    with pytest.raises(FileNotFoundError, match="VGGish checkpoint not found"):
        vr.main(["--quick", "--vggish-checkpoint", str(missing), "--data-dir", str(VCTK),
                 "--out", str(tmp_path)])  # fmt: skip
    assert not (tmp_path / "gamma-fc" / "results.json").exists()
    # a real-format state dict (random weights: the network, not the numbers, is under test)
    torch.manual_seed(0)
    ckpt = tmp_path / "vggish.pt"
    torch.save(VGGish().state_dict(), ckpt)
    args = ["--quick", "--rows", "gamma-fc", "--epochs", "2", "--n-test-utterances", "1", "--device", "cpu"]
    rc = vr.main([*args, "--vggish-checkpoint", str(ckpt), "--data-dir", str(VCTK), "--out", str(tmp_path)])
    assert rc == 0
    payload = json.loads((tmp_path / "gamma-fc" / "results.json").read_text())
    assert payload["fad_embedding"] == "vggish" and payload["config"]["vggish_checkpoint"] == str(ckpt)
    ref, row = payload["reference"], payload["results"]["gamma-fc"]
    assert ref["fad_gt_phase"] < 1e-6  # the real speech against itself
    assert math.isfinite(row["fad_gt_phase"]) and row["fad_gt_phase"] > ref["fad_gt_phase"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--grad-clip", "inf"], "argument --grad-clip: must be a finite number > 0, got 'inf'"),
        (["--grad-clip", "nan"], "argument --grad-clip: must be a finite number > 0"),
        (["--grad-clip", "-1"], "argument --grad-clip: must be a finite number > 0"),
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--device", "cuda"], "--device cuda requested but no CUDA GPU is visible"),
    ],
)
def test_grad_clip_and_device_are_one_line_argparse_errors(capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        vr.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
