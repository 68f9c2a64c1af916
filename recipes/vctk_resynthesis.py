"""VCTK re-synthesis: VAE decoders for STFT magnitude and phase (the dissertation's Table 6.2 analogue).

Rows (``--rows``, comma separated; ``--quick`` runs the first two):

    gamma-fc            Gamma magnitude,              FC 513 -> 512 -> 512 -> latent per frame
    is-fc               Itakura-Saito (baseline),     FC
    lognormal-vm-fc     log-normal magnitude + von Mises phase, FC (encoder sees the phase as cos/sin)
    gamma-vm-fc         Gamma magnitude + von Mises phase,      FC (encoder sees the phase as cos/sin)
    gamma-conv1d        Gamma, Conv1d over frames (trained on random windows of consecutive frames)
    gamma-conv1d-gru    Gamma, Conv1d + GRU over the latent sequence
    gamma-conv1d-bigru  Gamma, Conv1d + BiGRU

FC rows train on every ``every``-th STFT frame of the training speakers, conv rows on ``n_windows`` random
windows of ``window_frames`` frames; optimizer PSGD-LRA (gradient-whitening curvature) by default, Adam with
``--optimizer adam`` (and by default with ``--quick``). On held-out speakers each utterance is encoded,
decoded (posterior mean), and the decoded magnitude (``magnitude_mean``) is turned back into a waveform with
three phases: the ground-truth phase (GT), Griffin-Lim (GL, torchaudio) and, for von Mises rows, the learned
phase location (vM; random phase is the reference it must beat). Reported per row and phase: PESQ wideband
(P.862.2) and narrowband (P.862), STOI / ESTOI, log-spectral distance, and FAD: under VGGish when
``--vggish-checkpoint`` points at a local state dict (comparable to published FAD), otherwise under the
offline Resemblyzer speaker embedding -- that FAD is NOT comparable to the VGGish FAD of the literature;
compare rows only.

Writes ``results.json``, ``spectrograms.png`` (ground truth vs each row), ``precision_<row>.png`` (Fig. 6.3:
the magnitude precision E[r]^2 / Var r of every Gamma / log-normal decoder) and ``loss_curves.png``.
Training saves ``train_<row>_<epoch>.pt`` atomically every ``checkpoint_every`` epochs; rerunning with the
same ``--out`` continues each row from the newest intact one (the two newest are kept), so a long run that
stops or diverges loses at most that many epochs (``--grad-clip`` guards Adam against the divergence it
showed on long runs). A rerun with other settings (anything but --epochs, the evaluation options, --rows and
--device) is refused, naming each change.

    python -m recipes.vctk_resynthesis --quick                    # Gamma FC vs IS FC, a few CPU minutes
    python -m recipes.vctk_resynthesis --rows all                 # every row (meant for a GPU)
    python -m recipes.vctk_resynthesis --latent-dim 16            # compression study (Fig. 6.4)
    python -m recipes.vctk_resynthesis --corpus librispeech       # train / test on LibriSpeech speakers
    python -m recipes.vctk_resynthesis --corpus vctk+librispeech  # more training data, VCTK test speakers

Measured on a CPU (benchmarks/vctk_resynthesis.md):
- On the three VCTK training speakers alone, every row stays near the PESQ floor at beta 1 (~1.1 with GT
  phase). With ``--beta 0.01 --epochs 150`` the model fits the training speakers' harmonics but reaches only
  ~1.5 on the held-out speaker.
- With more speakers and more steps the gap closes: ``--corpus vctk+librispeech
  --max-librispeech-utterances 1000 --optimizer adam --lr 5e-4 --grad-clip 1000 --beta 0.01 --epochs 200``
  (~270 speakers, 81k steps, ~30 min per row on one thread). Held-out p228: Gamma FC PESQ-wb 3.82 vs
  IS FC 3.42 (paper: 4.4 vs 3.1).
"""

from __future__ import annotations

import argparse
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genlib.cli_args import device as device_arg
from genlib.cli_args import int_at_least, positive_float
from genlib.data import default_data_root
from genlib.data.speech import (
    SpeechFrames,
    SpeechWindows,
    discover_utterances,
    load_audio,
    split_by_speaker,
)
from genlib.data.stft import HOP_LENGTH, reconstruct, stft
from genlib.likelihoods import Gamma, GammaVonMises, ItakuraSaito, LogNormalVonMises
from genlib.metrics import (
    Embedding,
    ResemblyzerEmbedding,
    UndefinedMetricWarning,
    VGGishEmbedding,
    embed_waves,
    fad,
    lsd,
    pesq,
    stoi,
)
from genlib.models import VAE
from genlib.nn import Conv1dFrameDecoder, Conv1dFrameEncoder, LogPowerFeatures, MLPDecoder, MLPEncoder
from genlib.optim import LRA, ExponentialDecaySchedule
from genlib.train import Checkpointer
from genlib.train.checkpoint import normalize_settings
from genlib.utils import default_device, seed_everything, write_json
from genlib.viz import save_loss_curves, save_precision_map, save_spectrograms

SR = 16000


@dataclass(frozen=True)
class Row:
    """One row of Table 6.2: a likelihood and a network (``"fc"`` per frame or ``"conv"`` over frames)."""

    likelihood: type
    net: str
    temporal: str | None = None

    @property
    def von_mises(self) -> bool:
        return self.likelihood in (LogNormalVonMises, GammaVonMises)


ROWS = {
    "gamma-fc": Row(Gamma, "fc"),
    "is-fc": Row(ItakuraSaito, "fc"),
    "lognormal-vm-fc": Row(LogNormalVonMises, "fc"),
    "gamma-vm-fc": Row(GammaVonMises, "fc"),
    "gamma-conv1d": Row(Gamma, "conv"),
    "gamma-conv1d-gru": Row(Gamma, "conv", "gru"),
    "gamma-conv1d-bigru": Row(Gamma, "conv", "bigru"),
}
CORPORA = ("vctk", "librispeech", "vctk+librispeech")


@dataclass
class Config:
    corpus: str = "vctk"  # training data; vctk+librispeech tests on the VCTK test speakers
    data_dir: str = field(default_factory=lambda: str(default_data_root() / "speech" / "vctk16k"))
    librispeech_dir: str = field(default_factory=lambda: str(default_data_root() / "speech" / "librispeech"))
    train_speakers: tuple[str, ...] = ("p225", "p226", "p227")
    test_speakers: tuple[str, ...] = ("p228",)
    librispeech_test_speakers: tuple[str, ...] = ("1688", "1998")  # held out with --corpus librispeech
    max_librispeech_utterances: int = 120  # random subset of the training utterances (memory, CPU time)
    rows: tuple[str, ...] = tuple(ROWS)
    every: int = 10  # FC rows: every 10th frame; neighbouring 64 ms frames (8 ms hop) overlap heavily
    n_windows: int = 256  # conv rows: random windows of consecutive frames, drawn once
    window_frames: int = 32
    latent_dim: int = 32  # 16 for the compression study
    beta: float = 1.0  # KL weight; 1 is the ELBO
    hidden: tuple[int, ...] = (512, 512)
    conv_hidden: tuple[int, ...] = (256, 256)
    kernel_size: int = 3
    gru_hidden: int = 128
    epochs: int = 300
    batch_size: int = 128  # frames (FC rows)
    window_batch_size: int = 16  # windows (conv rows)
    lr: float = 1e-3  # Adam
    psgd_lr: float = 1e-4  # PSGD-LRA: lr 1e-3 diverged (NaN) within 3 epochs on VCTK frames
    optimizer: str = "psgd-lra"  # or "adam"
    grad_clip: float | None = None  # max gradient norm (None: off); see benchmarks/vctk_resynthesis.md
    checkpoint_every: int = 10  # epochs between atomic training checkpoints (out/train_<row>_<epoch>.pt)
    n_test_utterances: int = 10  # per test speaker
    griffin_lim_iters: int = 64
    fad: bool = True
    fad_rate: float = 2.0  # Resemblyzer partials (1.6 s windows) per second of audio
    vggish_checkpoint: str | None = None  # a local VGGish state dict: FAD comparable to the literature's
    seed: int = 0
    out: str = "runs/vctk_resynthesis"
    device: str = field(default_factory=lambda: str(default_device()))


# --quick uses Adam unless --optimizer is given: PSGD-LRA costs ~7 s/epoch here on one CPU thread vs ~1 s.
QUICK = {
    "rows": ("gamma-fc", "is-fc"),
    "epochs": 40,
    "n_test_utterances": 2,
    "griffin_lim_iters": 32,
    "optimizer": "adam",
    "n_windows": 128,
}


# ---------------------------------------------------------------------------------------------- data
def load_corpus(cfg: Config) -> tuple[list, list]:
    """Training and test utterances of ``cfg.corpus`` (test speakers never appear in training)."""
    if cfg.corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {cfg.corpus!r}")
    vctk = lambda: split_by_speaker(  # noqa: E731
        discover_utterances(cfg.data_dir, corpus="vctk"),
        speakers={"train": cfg.train_speakers, "test": cfg.test_speakers},
    )
    if cfg.corpus == "vctk":
        split = vctk()
        return split["train"], split["test"]
    libri = discover_utterances(cfg.librispeech_dir, corpus="librispeech")
    if cfg.corpus == "librispeech":
        test_spk = set(cfg.librispeech_test_speakers)
        missing = test_spk - {u.speaker for u in libri}
        if missing:
            raise ValueError(f"librispeech_test_speakers not found under {cfg.librispeech_dir}: {missing}")
        train = [u for u in libri if u.speaker not in test_spk]
        test = [u for u in libri if u.speaker in test_spk]
    else:  # vctk+librispeech: more (and more varied) training speakers, VCTK test speakers
        split = vctk()
        train, test = libri, split["test"]
    if len(train) > cfg.max_librispeech_utterances:
        train = random.Random(cfg.seed).sample(train, cfg.max_librispeech_utterances)
    if cfg.corpus == "vctk+librispeech":
        train = split["train"] + train
    return train, test


def test_waves(cfg: Config, test_utts: list) -> list[torch.Tensor]:
    """The first ``n_test_utterances`` of each test speaker, as 16 kHz waves."""
    by_speaker: dict[str, list] = {}
    for u in test_utts:
        by_speaker.setdefault(u.speaker, []).append(u)
    chosen = [u for utts in by_speaker.values() for u in utts[: cfg.n_test_utterances]]
    return [load_audio(u.path) for u in chosen]


# --------------------------------------------------------------------------------------------- model
def build_vae(cfg: Config, row: Row, n_freq: int) -> VAE:
    likelihood = row.likelihood()
    if row.net == "fc":
        features = LogPowerFeatures(with_phase=row.von_mises)
        enc = MLPEncoder((n_freq,), cfg.latent_dim, hidden=cfg.hidden, features=features)
        dec = MLPDecoder(cfg.latent_dim, (n_freq,), n_params=likelihood.n_params, hidden=cfg.hidden[::-1])
    else:
        enc = Conv1dFrameEncoder(
            n_freq, cfg.latent_dim, cfg.conv_hidden, cfg.kernel_size, with_phase=row.von_mises,
            temporal=row.temporal, gru_hidden=cfg.gru_hidden,
        )  # fmt: skip
        dec = Conv1dFrameDecoder(
            cfg.latent_dim, n_freq, likelihood.n_params, cfg.conv_hidden[::-1], cfg.kernel_size,
            temporal=row.temporal, gru_hidden=cfg.gru_hidden,
        )  # fmt: skip
    return VAE(enc, dec, likelihood, beta=cfg.beta)


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "psgd-lra":
        # refit the preconditioner every step at first, then on ~10% of steps (the PSGD papers' schedule)
        refit = ExponentialDecaySchedule(start=1.0, end=0.1, decay_steps=200)
        return LRA(params, lr=cfg.psgd_lr, momentum=0.9, rank=10, update_probability=refit)
    raise ValueError(f"optimizer must be 'psgd-lra' or 'adam', got {cfg.optimizer!r}")


def _diverged(cfg: Config, epoch: int, what: str, checkpoints: Checkpointer | None) -> RuntimeError:
    lr = cfg.lr if cfg.optimizer == "adam" else cfg.psgd_lr
    latest = checkpoints.latest() if checkpoints is not None else None
    resume = f"; {latest} holds the last saved epoch: rerun with the same --out to continue" if latest else ""
    return RuntimeError(
        f"training diverged in epoch {epoch} ({what}) with --optimizer {cfg.optimizer} --lr {lr:g}, "
        f"--grad-clip {cfg.grad_clip}: lower --lr or set --grad-clip{resume}"
    )


def _training_setup(cfg: Config) -> dict:
    """The settings a training checkpoint must match to be continued (not epochs, outputs or metrics)."""
    skip = {"epochs", "out", "n_test_utterances", "griffin_lim_iters", "fad", "fad_rate", "vggish_checkpoint",
            "device", "checkpoint_every", "rows"}  # fmt: skip
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def train(
    cfg: Config, vae: VAE, data: torch.Tensor, batch_size: int, checkpoints: Checkpointer | None = None
) -> list[float]:
    """Minibatch ELBO training on ``(N, F)`` frames or ``(N, F, T)`` windows; mean loss per epoch.

    With ``checkpoints``, the model, optimizer, losses and RNG states are saved every ``cfg.checkpoint_every``
    epochs and at the end, and training continues from the newest intact one it finds (a finished run
    returns at once): an interrupted or diverged run loses at most that many epochs. A checkpoint made with
    other settings (:func:`_training_setup`) or more epochs than ``cfg.epochs`` is refused, naming them.
    """
    opt = make_optimizer(cfg, vae.parameters())
    losses: list[float] = []
    if checkpoints is not None:
        checkpoints.settings = normalize_settings(_training_setup(cfg))
        resumed = checkpoints.resume(map_location=next(vae.parameters()).device, max_step=cfg.epochs,
                                     max_step_name="--epochs", vae=vae, optimizer=opt)
        if resumed is not None:
            losses = list(resumed.extra["losses"])
    vae.train()
    for epoch in tqdm(range(len(losses) + 1, cfg.epochs + 1), desc="epochs", leave=False):
        perm = torch.randperm(len(data), device=data.device)
        total = 0.0
        for idx in perm.split(batch_size):
            try:  # the likelihood refuses NaN / Inf decoder outputs: the weights have blown up
                loss = vae.elbo(data[idx]).loss
            except ValueError as err:
                raise _diverged(cfg, epoch, str(err), checkpoints) from err
            if not torch.isfinite(loss):
                raise _diverged(cfg, epoch, f"loss {float(loss)}", checkpoints)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item()
        losses.append(total / math.ceil(len(data) / batch_size))
        if checkpoints is not None:
            checkpoints.maybe_save(epoch, force=epoch == cfg.epochs, extra={"losses": losses}, vae=vae,
                                   optimizer=opt)  # fmt: skip
    vae.eval()
    return losses


@torch.no_grad()
def elbo_per_frame(vae: VAE, row: Row, specs: list[torch.Tensor]) -> float:
    """Mean ELBO per STFT frame (nats) over whole utterances ``(F, T)``, seeded so trained and untrained
    models see the same noise. Von Mises rows include the phase density, so compare them only together."""
    device = next(vae.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        if row.net == "fc":
            return vae.elbo(torch.cat([s.T for s in specs]).to(device)).elbo.mean().item()
        total = sum(vae.elbo(s[None].to(device)).elbo.item() for s in specs)
        return total / sum(s.shape[-1] for s in specs)


@torch.no_grad()
def active_latents(vae: VAE, row: Row, specs: list[torch.Tensor], threshold: float = 0.01) -> int:
    """Latent dimensions in use: mean KL(q(z_d|x) || N(0, 1)) over the test frames above ``threshold`` nats.
    A VAE whose decoder ignores most of its latent (posterior collapse) compresses far more than its size."""
    device = next(vae.parameters()).device
    kls = []
    for s in specs:
        mu, logvar = vae.encode((s.T if row.net == "fc" else s[None]).to(device))
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar)  # (T, D) or (1, D, T)
        kls.append(kl if row.net == "fc" else kl[0].T)
    return int((torch.cat(kls).mean(0) > threshold).sum())


@torch.no_grad()
def decode_utterance(vae: VAE, row: Row, spec: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior-mean decoding of one utterance ``(F, T)``: magnitude, precision (phase), all ``(F, T)``."""
    device = next(vae.parameters()).device
    if row.net == "fc":  # frames are rows: (T, F)
        dist = vae.decode(vae.encode(spec.T.to(device))[0])
        out = lambda t: t.T.float().cpu()  # noqa: E731
    else:
        dist = vae.decode(vae.encode(spec[None].to(device))[0])
        out = lambda t: t[0].float().cpu()  # noqa: E731
    decoded = {"magnitude": out(dist.magnitude_mean), "precision": out(dist.magnitude_precision)}
    if row.von_mises:
        decoded["phase"] = out(dist.phase_loc)
    return decoded


# ---------------------------------------------------------------------------------------------- eval
def waveforms(cfg: Config, decoded: dict, spec: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """Re-synthesised waves per phase: ``gt``, ``gl`` and, for von Mises rows, ``vm`` and ``random``."""
    mag = decoded["magnitude"]
    waves = {
        "gt": reconstruct(mag, phase=spec.angle(), length=length),
        "gl": reconstruct(mag, phase="griffinlim", length=length, n_iter=cfg.griffin_lim_iters),
    }
    if "phase" in decoded:
        waves["vm"] = reconstruct(mag, phase=decoded["phase"], length=length)
        waves["random"] = reconstruct(mag, phase="random", length=length)
    return waves


def speech_metrics(ref: torch.Tensor, deg: torch.Tensor) -> dict[str, float]:
    """PESQ-wb, PESQ-nb, STOI, ESTOI and LSD (dB) of one re-synthesised wave against its original."""
    return {
        "pesq_wb": pesq(ref, deg, sr=SR, mode="wb"),
        "pesq_nb": pesq(ref, deg, sr=SR, mode="nb"),
        "stoi": stoi(ref, deg, sr=SR),
        "estoi": stoi(ref, deg, sr=SR, extended=True),
        "lsd_db": lsd(ref, deg).item(),
    }


def evaluate(
    cfg: Config, waves: list[torch.Tensor], decoded: list[dict], embed: Embedding | None, real_emb
) -> dict[str, float]:
    """Metrics averaged over the test utterances (NaN-aware), keyed ``<metric>_<phase>_phase``; FAD per phase
    over all utterances when ``embed`` is given."""
    per_phase: dict[str, list] = {}
    for wave, dec in zip(waves, decoded):
        for phase, y in waveforms(cfg, dec, stft(wave), len(wave)).items():
            per_phase.setdefault(phase, []).append(y)
    out = {}
    for phase, ys in per_phase.items():
        scores = [speech_metrics(w, y) for w, y in zip(waves, ys)]
        for metric in scores[0]:
            out[f"{metric}_{phase}_phase"] = float(np.nanmean([s[metric] for s in scores]))
        if embed is not None:
            out[f"fad_{phase}_phase"] = fad(real_emb, embed_waves(ys, embed, sr=SR))
    return out


def fad_embedding(cfg: Config, device: torch.device) -> tuple[Embedding | None, str]:
    """The FAD embedding and its name: VGGish from ``cfg.vggish_checkpoint`` when given (loaded before any
    training, so a wrong path fails at once), else Resemblyzer; ``(None, "none")`` without FAD."""
    if not cfg.fad:
        return None, "none"
    if cfg.vggish_checkpoint is not None:
        return VGGishEmbedding(cfg.vggish_checkpoint, device=device), "vggish"
    return ResemblyzerEmbedding(device=device, rate=cfg.fad_rate), "resemblyzer"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default=None, help=f"comma-separated rows or 'all': {', '.join(ROWS)}")
    parser.add_argument("--corpus", choices=CORPORA, default=None, help="training data (default vctk)")
    parser.add_argument("--data-dir", default=None, help="VCTK folder (default: <data root>/speech/vctk16k)")
    parser.add_argument("--librispeech-dir", default=None, help="default: <data root>/speech/librispeech")
    parser.add_argument("--latent-dim", type=int, default=None, help="default 32 (16: compression study)")
    parser.add_argument("--beta", type=float, default=None, help="KL weight (default 1: the ELBO)")
    parser.add_argument("--hidden", default=None, help="FC widths, e.g. 1024,1024 (default 512,512)")
    parser.add_argument("--every", type=int, default=None, help="FC rows: keep every n-th frame (default 10)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--optimizer", choices=("psgd-lra", "adam"), default=None, help="default psgd-lra (adam with --quick)"
    )
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the chosen optimizer")
    parser.add_argument("--grad-clip", type=positive_float, default=None,
                        help="clip the gradient norm to this finite value > 0 (default: off)")
    parser.add_argument("--n-test-utterances", type=int, default=None, help="per test speaker")
    parser.add_argument(
        "--max-librispeech-utterances", type=int, default=None,
        help=f"LibriSpeech training utterances (random subset; default {Config.max_librispeech_utterances})",
    )
    parser.add_argument("--no-fad", action="store_true", help="skip the FAD columns")
    parser.add_argument(
        "--vggish-checkpoint", default=None,
        help="local VGGish state dict (torchaudio's vggish.pt or torchvggish's vggish-10086976.pth): FAD "
        "under VGGish, comparable to published FAD; default: Resemblyzer (offline, not comparable)",
    )
    parser.add_argument("--out", default=Config.out)
    parser.add_argument("--seed", type=int_at_least(0), default=Config.seed)
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help=f"CPU smoke config: {QUICK}")
    args = parser.parse_args(argv)
    cfg = Config(out=args.out, seed=args.seed)
    if args.quick:
        for k, v in QUICK.items():
            setattr(cfg, k, v)
    for name in ("latent_dim", "epochs", "every", "n_test_utterances", "max_librispeech_utterances"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.rows:
        names = args.rows.split(",")
        rows = tuple(ROWS) if args.rows == "all" else tuple(r.strip() for r in names if r.strip())
        unknown = [r for r in rows if r not in ROWS]
        if unknown or not rows:
            parser.error(f"--rows must be 'all' or names from {list(ROWS)}, got {args.rows!r}")
        cfg.rows = rows
    if args.hidden:
        try:
            cfg.hidden = tuple(int(h) for h in args.hidden.split(","))
        except ValueError:
            parser.error(f"--hidden must be comma-separated positive ints, got {args.hidden!r}")
        if not all(h > 0 for h in cfg.hidden):
            parser.error(f"--hidden must be comma-separated positive ints, got {args.hidden!r}")
    if args.beta is not None:
        if not args.beta >= 0:
            parser.error(f"--beta must be >= 0, got {args.beta}")
        cfg.beta = args.beta
    if args.grad_clip is not None:
        if not args.grad_clip > 0:
            parser.error(f"--grad-clip must be > 0, got {args.grad_clip}")
        cfg.grad_clip = args.grad_clip
    if args.lr is not None:
        if not args.lr > 0:
            parser.error(f"--lr must be > 0, got {args.lr}")
        cfg.lr = cfg.psgd_lr = args.lr
    for name in ("corpus", "optimizer", "data_dir", "librispeech_dir", "latent_dim", "epochs", "every",
                 "n_test_utterances", "max_librispeech_utterances", "device"):  # fmt: skip
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.fad = cfg.fad and not args.no_fad
    cfg.vggish_checkpoint = args.vggish_checkpoint
    device = torch.device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", UndefinedMetricWarning)  # undefined scores are NaN, averaged with nanmean

    train_utts, test_utts = load_corpus(cfg)
    waves = test_waves(cfg, test_utts)
    specs = [stft(w) for w in waves]
    train_waves = [load_audio(u.path) for u in train_utts]
    rows = {name: ROWS[name] for name in cfg.rows}
    frames = windows = None
    if any(r.net == "fc" for r in rows.values()):
        frames = SpeechFrames(train_waves, every=cfg.every).data.to(device)
    if any(r.net == "conv" for r in rows.values()):
        windows = SpeechWindows(train_waves, cfg.n_windows, frames=cfg.window_frames, seed=cfg.seed)
        windows = windows.data.to(device)
    n_freq = specs[0].shape[0]
    print(
        f"corpus {cfg.corpus}: {len(train_utts)} training utterances "
        f"({0 if frames is None else len(frames)} frames for FC rows, "
        f"{0 if windows is None else len(windows)} windows of {cfg.window_frames} for conv rows); "
        f"{len(waves)} test utterances; latent {cfg.latent_dim}; optimizer {cfg.optimizer}; device {device}"
    )
    embed, embed_name = fad_embedding(cfg, device)
    real_emb = embed_waves(waves, embed, sr=SR) if embed is not None else None

    # reference rows: the ground-truth magnitude itself, with GT phase (PESQ's ceiling) and Griffin-Lim phase
    reference = evaluate(cfg, waves, [{"magnitude": s.abs()} for s in specs], embed, real_emb)
    results, curves, spectra = {}, {}, {"ground truth": specs[0]}
    for name, row in rows.items():
        seed_everything(cfg.seed)
        vae = build_vae(cfg, row, n_freq).to(device)
        untrained = elbo_per_frame(vae, row, specs)
        start = time.perf_counter()
        # keep 2: an intact older checkpoint to fall back to if the newest is damaged
        checkpoints = Checkpointer(out, every=cfg.checkpoint_every, keep=2, prefix=f"train_{name}",
                                   settings=_training_setup(cfg))
        if row.net == "fc":
            curves[name] = train(cfg, vae, frames, cfg.batch_size, checkpoints)
        else:
            curves[name] = train(cfg, vae, windows, cfg.window_batch_size, checkpoints)
        seconds = time.perf_counter() - start
        decoded = [decode_utterance(vae, row, s) for s in specs]
        results[name] = {
            **evaluate(cfg, waves, decoded, embed, real_emb),
            "test_elbo_per_frame": elbo_per_frame(vae, row, specs),
            "untrained_test_elbo_per_frame": untrained,
            "active_latents": active_latents(vae, row, specs),
            "train_seconds": seconds,
        }
        spectra[name] = decoded[0]["magnitude"]
        if row.likelihood is not ItakuraSaito:  # IS has a fixed shape: its precision is a constant
            save_precision_map(
                decoded[0]["precision"].clamp_min(1e-6),
                out / f"precision_{name}.png",
                sr=SR,
                hop=HOP_LENGTH,
                title=f"{name}: magnitude precision E[r]^2 / Var r",
            )
        vae.save(out / f"vae_{name}.pt")

    def fmt(r: dict, key: str, width: int, prec: int = 2) -> str:
        v = r.get(key)
        return f"{'-':>{width}}" if v is None or not math.isfinite(v) else f"{v:>{width}.{prec}f}"

    fad_note = {"vggish": "VGGish (comparable to published FAD)", "none": "not computed",
                "resemblyzer": "Resemblyzer, NOT comparable to VGGish FAD"}[embed_name]  # fmt: skip
    print(f"\nheld-out speakers, {len(waves)} utterances; FAD: {fad_note}")
    cols = [("PESQwb GT", "pesq_wb_gt_phase", 2), ("PESQwb GL", "pesq_wb_gl_phase", 2),
            ("PESQwb vM", "pesq_wb_vm_phase", 2), ("PESQnb GT", "pesq_nb_gt_phase", 2),
            ("STOI GT", "stoi_gt_phase", 3), ("ESTOI GT", "estoi_gt_phase", 3),
            ("LSD GT", "lsd_db_gt_phase", 2),
            ("FAD GT", "fad_gt_phase", 4), ("FAD GL", "fad_gl_phase", 4), ("FAD vM", "fad_vm_phase", 4),
            ("ELBO/frame", "test_elbo_per_frame", 1), ("active z", "active_latents", 0)]  # fmt: skip
    print(f"{'row':<22}" + "".join(f"{c:>11}" for c, _, _ in cols))
    for name, r in {"ground-truth |X|": reference, **results}.items():
        print(f"{name:<22}" + "".join(fmt(r, key, 11, p) for _, key, p in cols))
    save_spectrograms(spectra, out / "spectrograms.png", sr=SR, hop=HOP_LENGTH)
    curves["epoch"] = list(range(1, cfg.epochs + 1))
    save_loss_curves(curves, out / "loss_curves.png")
    payload = {"config": asdict(cfg), "fad_embedding": embed_name, "reference": reference, "results": results}
    write_json(out / "results.json", payload)  # undefined scores (NaN) as null
    print(f"\nsaved {out / 'results.json'}, spectrograms.png, precision_<row>.png, loss_curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
