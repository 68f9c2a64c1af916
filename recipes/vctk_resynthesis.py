"""VCTK re-synthesis: VAE decoders for STFT magnitude and phase (the dissertation's Table 6.2 analogue).

Rows (``--rows``, comma separated; ``--quick`` runs the first two):

    gamma-fc            Gamma magnitude,              FC 513 -> 512 -> 512 -> latent per frame
    is-fc               Itakura-Saito, fixed shape alpha = 1 (the IS divergence exactly; the IS-VAE)
    is-learned-fc       Itakura-Saito as eq. 6.11-6.12 write it: shape alpha from the network, rate 1/y
    lognormal-vm-fc     log-normal magnitude + von Mises phase, FC (encoder sees the phase as cos/sin)
    gamma-vm-fc         Gamma magnitude + von Mises phase,      FC (encoder sees the phase as cos/sin)
    gamma-conv1d        Gamma, Conv1d over frames (trained on random windows of consecutive frames)
    gamma-conv1d-gru    Gamma, Conv1d + GRU over the latent sequence
    gamma-conv1d-bigru  Gamma, Conv1d + BiGRU
    cn-fc               complex Normal CN(mu, sigma^2), FC: the row Table 6.2 omits because mu -> 0; it is
                        re-synthesised from |mu| and reports ``loc_power_fraction`` = sum |mu|^2 / sum |x|^2

Table 6.2's "Itakura-Saito FC (baseline)" is eq. 6.11-6.12, whose text says alpha is "estimated by the NN":
``is-learned-fc``. ``is-fc`` fixes alpha = 1, where the two agree (genlib.likelihoods.ItakuraSaito).

Data. Training folders: ``--train-dir`` (repeatable; any layout of genlib.data.speech: VCTK, LibriSpeech,
or a flat folder of wav/flac with free names such as LJSpeech), else the ``--corpus`` preset (the shared
VCTK / LibriSpeech folders). ``--train-speakers`` restricts them. The test set is ``--test-dir`` (any layout;
``--test-speakers`` picks speakers in it) or, without it, speakers held out of the training folders:
``--test-speakers``, else ``--train-speaker-fraction f`` (train on a random fraction f of the speakers, test
on the rest: the paper's protocol is f = 0.1 of VCTK's 110 speakers with every 10th frame, "1 % of VCTK"),
else the LibriSpeech preset's ``librispeech_test_speakers``, else the last speaker id (p228 in the shared
four-speaker folder, so the defaults train on p225-p227 and test on p228 -- far less than the paper's).
Files not at 16 kHz (VCTK's 48 kHz, LJSpeech's 22.05 kHz) are resampled on load; the run says how many.
``--evaluate-only`` trains nothing: it loads each row's saved model and evaluates it on the test set.

FC rows train on every ``every``-th STFT frame of the training speakers, conv rows on ``n_windows`` random
windows of ``window_frames`` frames. The frames are held in memory, or with ``--stream-frames`` (for corpora
whose frames do not fit, e.g. all of VCTK: ~2 M frames, ~8 GB) computed once, utterance by utterance, into
``<out>/frames/`` (:class:`genlib.data.speech.SpeechFrameCache`: a complex64 ``.npy`` reused by later runs
with the same files and STFT settings, rebuilt otherwise) and read from disk through the DataLoader
(``--num-workers``; same batches, same model as in memory). The default optimizer is ``psgd-kron``: Kron in
the QEQ coordinates with diagonal factors for each matrix's largest dim and for dims above 256, step entries
clamped. On the Gamma FC model it costs about Adam's step and ties tuned Adam at equal CPU time; in the
``--quick`` run it is ahead on the IS FC row, level within noise at equal time (benchmarks/README.md, "sixth
run"), and the paper trains with PSGD. ``--optimizer adam`` is the measured baseline (``--lr 3e-4`` is its
tuned lr in the quick config; 1e-3, the default, is the lr of the recorded long runs), ``--optimizer
psgd-lra`` (gradient whitening, momentum 0.9) the paper's PSGD and ``psgd-lra-hvp`` its Newton type. On the
test set each utterance is encoded, decoded (posterior mean), and the decoded magnitude (``magnitude_mean``)
is turned back into a waveform with three phases: the ground-truth phase (GT), Griffin-Lim (GL, torchaudio)
and, for von Mises rows, the learned phase location (vM; random phase is the reference it must beat). Reported
per row and phase: PESQ wideband (P.862.2) and narrowband (P.862), STOI / ESTOI, log-spectral distance, and
FAD: under VGGish when ``--vggish-checkpoint`` points at a local state dict (comparable to published FAD),
otherwise under the offline Resemblyzer speaker embedding -- that FAD is NOT comparable to the VGGish FAD of
the literature; compare rows only.

Each row has its own folder ``<out>/<row>/`` (so runs of different rows never overwrite each other):
``results.json``, ``spectrograms.png`` (ground truth vs the row), ``precision.png`` (Fig. 6.3: the magnitude
precision E[r]^2 / Var r; not for the fixed-shape IS row, whose precision is a constant),
``loss_curve.png``,
the model ``vae.pt`` (rewritten at every checkpoint, so a stopped run can be evaluated) and the training
checkpoints ``train_<epoch>.pt``, written atomically every ``checkpoint_every`` epochs; rerunning with the
same ``--out`` continues each row from the newest intact one (the two newest are kept), so a long run that
stops or diverges loses at most that many epochs (``--grad-clip`` guards Adam against the divergence it
showed on long runs). A rerun with other training settings or other training files is refused, naming each
change.
``--evaluate-only`` writes into ``<out>/<row>/eval_<test folder>/`` (its ``results.json`` keeps the training
run's settings and data as ``trained_config`` / ``train_data``).

    python -m recipes.vctk_resynthesis --quick                    # Gamma FC vs IS FC, a few CPU minutes
    python -m recipes.vctk_resynthesis --rows all                 # every row (meant for a GPU)
    python -m recipes.vctk_resynthesis --latent-dim 16            # compression study (Fig. 6.4)
    python -m recipes.vctk_resynthesis --corpus librispeech       # train / test on LibriSpeech speakers
    python -m recipes.vctk_resynthesis --corpus vctk+librispeech  # more training data, VCTK test speakers
    python -m recipes.vctk_resynthesis --train-dir VCTK-Corpus-0.92 --train-speaker-fraction 0.1  # the paper
    python -m recipes.vctk_resynthesis --train-dir VCTK-Corpus-0.92 --stream-frames --num-workers 4  # on disk
    python -m recipes.vctk_resynthesis --quick --evaluate-only --test-dir LJSpeech-1.1  # saved models
    torchrun --nproc-per-node 4 -m recipes.vctk_resynthesis --rows all --precision bf16  # DDP, rank 0 scores

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
import hashlib
import json
import math
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from genlib.cli_args import (
    add_engine_arguments,
    engine_options,
    float_in,
    int_at_least,
    positive_float,
    run_recipe,
)
from genlib.cli_args import device as device_arg
from genlib.data import default_data_root
from genlib.data.speech import (
    SpeechFrameCache,
    SpeechFrames,
    SpeechWindows,
    Utterance,
    discover_utterances,
    load_audio,
    sample_rates,
    split_by_speaker,
)
from genlib.data.stft import HOP_LENGTH, SAMPLE_RATE, reconstruct, stft
from genlib.likelihoods import (
    ComplexNormal,
    Gamma,
    GammaVonMises,
    ItakuraSaito,
    Likelihood,
    LogNormalVonMises,
)
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
from genlib.optim import LRA, ExponentialDecaySchedule, Kron
from genlib.train import Checkpointer
from genlib.train.batches import StepBatches, step_loader
from genlib.train.checkpoint import normalize_settings
from genlib.train.distributed import context, finish_distributed, init_distributed
from genlib.train.engine import Engine
from genlib.utils import default_device, seed_everything, write_json
from genlib.viz import save_loss_curves, save_precision_map, save_spectrograms

SR = SAMPLE_RATE  # 16 kHz: every file is resampled to it on load


@dataclass(frozen=True)
class Row:
    """One row of Table 6.2: a likelihood (with constructor ``options``) and a network (``"fc"`` per frame or
    ``"conv"`` over frames, ``temporal`` ``"gru"`` / ``"bigru"``)."""

    likelihood: type
    net: str
    temporal: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def make_likelihood(self) -> Likelihood:
        """A fresh likelihood of this row."""
        return self.likelihood(**dict(self.options))

    @property
    def von_mises(self) -> bool:
        """A polar model with a von Mises phase."""
        return self.likelihood in (LogNormalVonMises, GammaVonMises)

    @property
    def phase_aware(self) -> bool:
        """The model has a phase of its own (von Mises, complex Normal); its encoder sees cos/sin phase."""
        return self.von_mises or self.likelihood is ComplexNormal

    @property
    def constant_precision(self) -> bool:
        """Fixed-shape Itakura-Saito: its magnitude precision is one number, not a map worth drawing."""
        return self.likelihood is ItakuraSaito and dict(self.options).get("concentration") != "decoder"


ROWS = {
    "gamma-fc": Row(Gamma, "fc"),
    "is-fc": Row(ItakuraSaito, "fc"),
    "is-learned-fc": Row(ItakuraSaito, "fc", options=(("concentration", "decoder"),)),
    "lognormal-vm-fc": Row(LogNormalVonMises, "fc"),
    "gamma-vm-fc": Row(GammaVonMises, "fc"),
    "gamma-conv1d": Row(Gamma, "conv"),
    "gamma-conv1d-gru": Row(Gamma, "conv", "gru"),
    "gamma-conv1d-bigru": Row(Gamma, "conv", "bigru"),
    "cn-fc": Row(ComplexNormal, "fc"),
}
CORPORA = ("vctk", "librispeech", "vctk+librispeech")


@dataclass
class Config:
    corpus: str = "vctk"  # training preset when train_dirs is empty; vctk+librispeech tests on VCTK speakers
    data_dir: str = field(default_factory=lambda: str(default_data_root() / "speech" / "vctk16k"))
    librispeech_dir: str = field(default_factory=lambda: str(default_data_root() / "speech" / "librispeech"))
    train_dirs: tuple[str, ...] = ()  # your training folders (any layout); replace the corpus preset
    train_speakers: tuple[str, ...] = ()  # () = every speaker of the training folders not held out
    test_dir: str | None = None  # evaluate on this folder (any layout); None = speakers held out of training
    test_speakers: tuple[
        str, ...
    ] = ()  # in test_dir, or held out of the training folders (see the docstring)
    train_speaker_fraction: float | None = None  # train on this random fraction of speakers, test on the rest
    librispeech_test_speakers: tuple[str, ...] = ("1688", "1998")  # held out with --corpus librispeech
    max_librispeech_utterances: int = 120  # random subset of the training utterances (memory, CPU time)
    evaluate_only: bool = False  # load <out>/<row>/vae.pt and evaluate it; no training
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
    lr: float = 1e-3  # Adam: the recorded long runs' lr (3e-4 is the quick config's tuned one)
    psgd_lr: float = 1e-4  # PSGD-LRA: lr 1e-3 diverged (NaN) within 3 epochs on VCTK frames
    # psgd-kron (best in the --quick recipe run of 1.5e-4 and 3e-4; 1.5e-4 and 3e-4 tie at equal CPU time)
    psgd_kron_lr: float = 3e-4
    # psgd-lra-hvp (the papers' Newton type, exact Hessian-vector products): lr is a fraction of a Newton step
    psgd_hvp_lr: float = 1e-2
    # psgd-kron: level with tuned Adam at equal CPU time on the Gamma FC model at about Adam's step cost,
    # level within noise on IS FC, PSGD as in the paper (benchmarks/README.md); psgd-lra: the paper's
    optimizer: str = "psgd-kron"  # or "adam", "psgd-lra" or "psgd-lra-hvp"
    grad_clip: float | None = None  # max gradient norm (None: off); see benchmarks/vctk_resynthesis.md
    checkpoint_every: int = 10  # epochs between atomic checkpoints (<out>/<row>/train_<epoch>.pt, vae.pt)
    n_test_utterances: int = 10  # per test speaker
    griffin_lim_iters: int = 64
    fad: bool = True
    fad_rate: float = 2.0  # Resemblyzer partials (1.6 s windows) per second of audio
    vggish_checkpoint: str | None = None  # a local VGGish state dict: FAD comparable to the literature's
    seed: int = 0
    out: str = "runs/vctk_resynthesis"  # each row writes into <out>/<row>/
    device: str = field(default_factory=lambda: str(default_device()))
    precision: str = "fp32"  # the training engine's autocast: fp32, bf16 or fp16
    compile: bool = False
    compile_optimizers: bool = False
    num_workers: int = 0
    stream_frames: bool = False  # FC rows read their frames from <out>/frames/ (on disk), not from memory


QUICK = {
    "rows": ("gamma-fc", "is-fc"),
    "epochs": 40,
    "n_test_utterances": 2,
    "griffin_lim_iters": 32,
    "n_windows": 128,
}


# ---------------------------------------------------------------------------------------------- data
def _discover(folder: str, arg: str, corpus: str = "auto") -> list[Utterance]:
    """The utterances of ``folder``; a missing folder or unknown layout names the argument that gave it."""
    try:
        return discover_utterances(folder, corpus=corpus)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise FileNotFoundError(f"{arg} {folder}: {e}") from e


def _by_speaker(utts: list[Utterance]) -> dict[str, list[Utterance]]:
    out: dict[str, list[Utterance]] = {}
    for u in utts:
        out.setdefault(u.speaker, []).append(u)
    return out


def _check_speakers(wanted: tuple[str, ...], have: list[Utterance], arg: str, where: str) -> None:
    missing = sorted(set(wanted) - {u.speaker for u in have})
    if missing:
        known = sorted({u.speaker for u in have})
        shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
        raise ValueError(
            f"{arg}: speakers {missing} have no utterances in {where}; its speakers are: {shown}"
        )


def _test_folder(cfg: Config) -> list[Utterance]:
    """The utterances of ``cfg.test_dir``, restricted to ``cfg.test_speakers`` when given."""
    assert cfg.test_dir is not None
    test = _discover(cfg.test_dir, "--test-dir")
    if cfg.test_speakers:
        _check_speakers(cfg.test_speakers, test, "--test-speakers", f"--test-dir {cfg.test_dir}")
        test = [u for u in test if u.speaker in cfg.test_speakers]
    return test


def load_corpus(cfg: Config) -> tuple[list[Utterance], list[Utterance]]:
    """Training and test utterances (see the module docstring for how each is chosen).

    Speakers held out of the training folders never appear in training; a ``test_dir`` is taken as given
    (it may share speakers with training: the results report them). With ``evaluate_only`` and a
    ``test_dir`` no training folder is read and the training list is empty.
    """
    if cfg.corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {cfg.corpus!r}")
    if cfg.train_speaker_fraction is not None:
        if not 0 < cfg.train_speaker_fraction < 1:
            raise ValueError(f"--train-speaker-fraction must be in (0, 1), got {cfg.train_speaker_fraction}")
        if cfg.test_speakers and cfg.test_dir is None:
            raise ValueError(
                "--train-speaker-fraction holds out the other speakers itself: drop --test-speakers"
            )
        if cfg.train_speakers:
            raise ValueError(
                "--train-speaker-fraction picks the training speakers itself: drop --train-speakers"
            )
    if cfg.evaluate_only and cfg.test_dir is not None:  # nothing to train: the training folders may be absent
        return [], _test_folder(cfg)
    libri_extra: list[Utterance] = []
    if cfg.train_dirs:
        pool = [u for d in cfg.train_dirs for u in _discover(d, "--train-dir")]
        where = "the --train-dir folders"
    elif cfg.corpus == "librispeech":
        pool = _discover(cfg.librispeech_dir, "--librispeech-dir", "librispeech")
        where = f"--librispeech-dir {cfg.librispeech_dir}"
    else:
        pool = _discover(cfg.data_dir, "--data-dir", "vctk")
        where = f"--data-dir {cfg.data_dir}"
        if cfg.corpus == "vctk+librispeech":
            libri_extra = _discover(cfg.librispeech_dir, "--librispeech-dir", "librispeech")
    speakers = sorted(_by_speaker(pool))

    if cfg.test_dir is not None:
        test = _test_folder(cfg)
        held: set[str] = set()
    elif cfg.test_speakers:
        _check_speakers(cfg.test_speakers, pool, "--test-speakers", where)
        held = set(cfg.test_speakers)
    elif cfg.train_speaker_fraction is not None:
        f = cfg.train_speaker_fraction
        if len(speakers) < 2:
            raise ValueError(f"--train-speaker-fraction needs two or more speakers; {where} holds {speakers}")
        split = split_by_speaker(pool, train=f, val=0.0, test=1 - f, seed=cfg.seed)
        held = {u.speaker for u in split["test"]}
    elif cfg.corpus == "librispeech" and not cfg.train_dirs:
        missing = set(cfg.librispeech_test_speakers) - set(speakers)
        if missing:
            raise ValueError(f"librispeech_test_speakers not found under {cfg.librispeech_dir}: {missing}")
        held = set(cfg.librispeech_test_speakers)
    else:
        if len(speakers) < 2:
            raise ValueError(
                f"{where} holds one speaker ({speakers[0]}), nothing to hold out for testing: "
                "give --test-dir (a folder to evaluate on) or more training speakers"
            )
        held = {speakers[-1]}
    if cfg.test_dir is None:
        test = [u for u in pool if u.speaker in held]

    if cfg.train_speakers:
        _check_speakers(cfg.train_speakers, pool, "--train-speakers", where)
        both = sorted(held.intersection(cfg.train_speakers))
        if both:
            raise ValueError(f"--train-speakers {both} are the held-out test speakers; choose others")
        train = [u for u in pool if u.speaker in cfg.train_speakers]
    else:
        train = [u for u in pool if u.speaker not in held]
    if not train:
        raise ValueError(f"no training utterances left in {where} after holding out {sorted(held)}")

    rng = random.Random(cfg.seed)
    if cfg.corpus == "librispeech" and not cfg.train_dirs and len(train) > cfg.max_librispeech_utterances:
        train = rng.sample(train, cfg.max_librispeech_utterances)
    if libri_extra:
        if len(libri_extra) > cfg.max_librispeech_utterances:
            libri_extra = rng.sample(libri_extra, cfg.max_librispeech_utterances)
        train = train + libri_extra
    return train, test


def test_utterances(cfg: Config, test_utts: list[Utterance]) -> list[Utterance]:
    """The first ``n_test_utterances`` of each test speaker."""
    return [u for utts in _by_speaker(test_utts).values() for u in utts[: cfg.n_test_utterances]]


def test_waves(cfg: Config, test_utts: list[Utterance]) -> list[torch.Tensor]:
    """The first ``n_test_utterances`` of each test speaker, as 16 kHz waves."""
    return [load_audio(u.path) for u in test_utterances(cfg, test_utts)]


def describe(utts: list[Utterance]) -> dict[str, Any]:
    """What a set of utterances is, for the log and ``results.json``: counts, speakers, layouts and the
    native sample rates (files not at 16 kHz are resampled on load)."""
    spk = sorted(_by_speaker(utts))
    info: dict[str, Any] = {
        "n_utterances": len(utts),
        "speakers": spk,
        "layouts": sorted({u.corpus for u in utts}),
        "folders": sorted({str(u.path.parent) for u in utts})[:20],
        "native_sample_rates": {str(k): v for k, v in sample_rates(utts).items()},
        "resampled_to": SR,
    }
    return info


def describe_line(what: str, info: dict[str, Any]) -> str:
    """One log line: how many utterances and speakers, and what gets resampled."""
    spk = info["speakers"]
    names = ", ".join(spk[:6]) + (", ..." if len(spk) > 6 else "")
    rates = {int(k): v for k, v in info["native_sample_rates"].items()}
    other = {k: v for k, v in rates.items() if k != SR}
    if other:
        resample = "; resampling to 16 kHz: " + ", ".join(
            f"{v} files at {k / 1000:g} kHz" for k, v in other.items()
        )
    else:
        resample = "; all at 16 kHz"
    layouts = "/".join(info["layouts"])
    return f"{what}: {info['n_utterances']} utterances, {len(spk)} speakers ({names}), {layouts}{resample}"


def training_data_id(train_utts: list[Utterance]) -> str:
    """A fingerprint of the training files (speaker and file name, order-free) for resumed-run checks."""
    names = sorted(f"{u.speaker}/{u.path.name}" for u in train_utts)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return f"{len(names)} files, sha256 {digest}"


# --------------------------------------------------------------------------------------------- model
def build_vae(cfg: Config, row: Row, n_freq: int) -> VAE:
    likelihood = row.make_likelihood()
    if row.net == "fc":
        features = LogPowerFeatures(with_phase=row.phase_aware)
        enc = MLPEncoder((n_freq,), cfg.latent_dim, hidden=cfg.hidden, features=features)
        dec = MLPDecoder(cfg.latent_dim, (n_freq,), n_params=likelihood.n_params, hidden=cfg.hidden[::-1])
    else:
        enc = Conv1dFrameEncoder(
            n_freq, cfg.latent_dim, cfg.conv_hidden, cfg.kernel_size, with_phase=row.phase_aware,
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
    # refit the preconditioner every step at first, then on ~10% of steps (the PSGD papers' schedule)
    refit = ExponentialDecaySchedule(start=1.0, end=0.1, decay_steps=200)
    if cfg.optimizer == "psgd-kron":
        # diagonal factors for each matrix's largest dim and for dims above 256: dense 512-wide factors cost
        # twice Adam's whole step here and did not buy more per second (benchmarks/README.md)
        return Kron(params, lr=cfg.psgd_kron_lr, momentum=0.9, coords="QEQ", memory_save_mode="one_diag",
                    max_size=256, max_update_abs=1.0, update_probability=refit)
    if cfg.optimizer == "psgd-lra":
        return LRA(params, lr=cfg.psgd_lr, momentum=0.9, rank=10, update_probability=refit)
    if cfg.optimizer == "psgd-lra-hvp":
        # the optimizer differentiates the loss itself (step(closure)), so --grad-clip bounds its step
        return LRA(params, lr=cfg.psgd_hvp_lr, rank=10, curvature="hvp", update_probability=refit,
                   grad_clip_max_norm=cfg.grad_clip)
    raise ValueError(f"optimizer must be 'adam', 'psgd-kron', 'psgd-lra' or 'psgd-lra-hvp', got "
                     f"{cfg.optimizer!r}")


def optimizer_lr(cfg: Config) -> float:
    """The learning rate the chosen optimizer uses."""
    return {"adam": cfg.lr, "psgd-kron": cfg.psgd_kron_lr, "psgd-lra-hvp": cfg.psgd_hvp_lr}.get(
        cfg.optimizer, cfg.psgd_lr)


def _diverged(cfg: Config, epoch: int, what: str, checkpoints: Checkpointer | None) -> RuntimeError:
    lr = optimizer_lr(cfg)
    latest = checkpoints.latest() if checkpoints is not None else None
    resume = f"; {latest} holds the last saved epoch: rerun with the same --out to continue" if latest else ""
    return RuntimeError(
        f"training diverged in epoch {epoch} ({what}) with --optimizer {cfg.optimizer} --lr {lr:g}, "
        f"--grad-clip {cfg.grad_clip}: lower --lr or set --grad-clip{resume}"
    )


def _training_setup(cfg: Config) -> dict:
    """The settings a training checkpoint must match to be continued (not epochs, outputs, the test set or
    metrics; the training files themselves are checked by :func:`training_data_id`)."""
    skip = {"epochs", "out", "n_test_utterances", "griffin_lim_iters", "fad", "fad_rate", "vggish_checkpoint",
            "device", "checkpoint_every", "rows", "test_dir", "test_speakers", "librispeech_test_speakers",
            "evaluate_only", "compile", "compile_optimizers", "num_workers", "stream_frames"}  # fmt: skip
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def train(
    cfg: Config,
    vae: VAE,
    data: torch.Tensor | Dataset,
    batch_size: int,
    checkpoints: Checkpointer | None = None,
    *,
    data_id: str | None = None,
    model_path: Path | None = None,
) -> list[float]:
    """Minibatch ELBO training on ``(N, F)`` frames or ``(N, F, T)`` windows; mean loss per epoch.

    ``data`` is a tensor (trained on its device) or a map-style dataset of frames such as
    :class:`~genlib.data.speech.SpeechFrameCache` (read through the DataLoader, pinned on CUDA, onto the
    model's device): the same seed draws the same batches either way.

    With ``checkpoints``, the model, optimizer, losses and RNG states are saved every ``cfg.checkpoint_every``
    epochs and at the end, and training continues from the newest intact one it finds (a finished run
    returns at once): an interrupted or diverged run loses at most that many epochs. A checkpoint made with
    other settings (:func:`_training_setup`, and ``data_id``, :func:`training_data_id` of the training files)
    or more epochs than ``cfg.epochs`` is refused, naming them. With ``model_path``, the model alone is also
    written there (atomically, :meth:`VAE.save`, with its ``epoch``) at every checkpoint, ready to evaluate.
    """
    opt = make_optimizer(cfg, vae.parameters())
    if checkpoints is not None:
        setup = _training_setup(cfg)
        if data_id is not None:
            setup["training_data"] = data_id
        checkpoints.settings = normalize_settings(setup)
    engine: Engine

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        try:  # the likelihood refuses NaN / Inf decoder outputs: the weights have blown up
            loss = vae.elbo(batch["frames"]).loss
        except ValueError as err:
            raise _diverged(cfg, engine.units_done + 1, str(err), checkpoints) from err
        return loss, {"loss": loss}

    in_memory = isinstance(data, torch.Tensor)
    device = data.device if in_memory else next(vae.parameters()).device
    batches = StepBatches({"frames": data}, batch_size, seed=cfg.seed, order="epochs")
    engine = Engine(
        vae, opt, loss_fn, device=device, precision=cfg.precision, compile=cfg.compile,
        compile_optimizers=cfg.compile_optimizers, grad_clip=cfg.grad_clip, checkpointer=checkpoints,
        unit="epoch", steps_per_unit=batches.steps_per_epoch(), desc="epochs",
        divergence_hint=lambda epoch, what: str(_diverged(cfg, epoch, what, checkpoints)),
    )
    batches = StepBatches({"frames": data}, batch_size, seed=cfg.seed, order="epochs", **engine.shard)
    history = engine.fit(
        lambda a, b: step_loader(batches, a, b, num_workers=cfg.num_workers,
                                 pin_memory=not in_memory and device.type == "cuda"), cfg.epochs,
        total_name="--epochs",
        on_save=None if model_path is None else (lambda epoch: vae.save(model_path, epoch=epoch)),
    )
    vae.eval()
    return history.get("loss", [])


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
    """Posterior-mean decoding of one utterance ``(F, T)``: magnitude, precision (phase), all ``(F, T)``.

    The complex Normal row decodes ``|mu|`` as its magnitude, ``|mu|^2 / sigma^2`` as its precision and
    ``angle(mu)`` as its phase."""
    device = next(vae.parameters()).device
    if row.net == "fc":  # frames are rows: (T, F)
        dist = vae.decode(vae.encode(spec.T.to(device))[0])
        out = lambda t: t.T.float().cpu()  # noqa: E731
    else:
        dist = vae.decode(vae.encode(spec[None].to(device))[0])
        out = lambda t: t[0].float().cpu()  # noqa: E731
    if row.likelihood is ComplexNormal:
        mu = dist.mean
        return {"magnitude": out(mu.abs()), "precision": out(mu.abs().square() / dist.variance),
                "phase": out(mu.angle())}  # fmt: skip
    decoded = {"magnitude": out(dist.magnitude_mean), "precision": out(dist.magnitude_precision)}
    if row.von_mises:
        decoded["phase"] = out(dist.phase_loc)
    return decoded


# ---------------------------------------------------------------------------------------------- eval
def waveforms(cfg: Config, decoded: dict, spec: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """Re-synthesised waves per phase: ``gt``, ``gl`` and, for rows with a phase of their own (von Mises, and
    complex Normal's ``angle(mu)``), ``vm`` and ``random``."""
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


def _speaker_list(value: str) -> tuple[str, ...]:
    """argparse type: comma-separated speaker ids."""
    ids = tuple(v.strip() for v in value.split(",") if v.strip())
    if not ids:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated speaker ids, e.g. p225,p226; got {value!r}"
        )
    return ids


def eval_folder(cfg: Config, row_out: Path) -> Path:
    """Where a row's results go: ``<out>/<row>/`` after training, ``<out>/<row>/eval_<test set>/`` with
    ``--evaluate-only`` (so evaluating on other data never overwrites the training run's results)."""
    if not cfg.evaluate_only:
        return row_out
    name = Path(cfg.test_dir).resolve().name if cfg.test_dir is not None else "heldout"
    if cfg.test_speakers:
        name += "_" + "-".join(cfg.test_speakers)
    return row_out / ("eval_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name))


def parse_config(argv: list[str] | None = None) -> Config:
    """The run's :class:`Config` from the command line (``--help`` lists every option)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default=None, help=f"comma-separated rows or 'all': {', '.join(ROWS)}")
    parser.add_argument("--corpus", choices=CORPORA, default=None,
                        help="training preset when no --train-dir is given (default vctk)")  # fmt: skip
    parser.add_argument("--data-dir", default=None, help="VCTK folder (default: <data root>/speech/vctk16k)")
    parser.add_argument("--librispeech-dir", default=None, help="default: <data root>/speech/librispeech")
    parser.add_argument("--train-dir", action="append", default=None, metavar="DIR",
                        help="a training folder in any layout (VCTK, LibriSpeech, flat wav/flac); "
                        "repeatable; replaces the --corpus preset")  # fmt: skip
    parser.add_argument("--train-speakers", type=_speaker_list, default=None,
                        help="comma-separated speakers to train on (default: all not held out)")  # fmt: skip
    parser.add_argument(
        "--test-dir",
        default=None,
        metavar="DIR",
        help="evaluate on this folder (any layout); default: speakers held out of training",
    )
    parser.add_argument("--test-speakers", type=_speaker_list, default=None,
                        help="comma-separated test speakers: in --test-dir, else held out of the training "
                        "folders (default: the last speaker id, p228 in the shared VCTK folder)")  # fmt: skip
    parser.add_argument(
        "--train-speaker-fraction",
        type=float_in(0, 1, high_inclusive=False),
        default=None,
        help="train on this random fraction of the speakers, test on the rest (the paper: 0.1)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="train nothing: evaluate each row's saved <out>/<row>/vae.pt on the test set",
    )
    parser.add_argument("--latent-dim", type=int, default=None, help="default 32 (16: compression study)")
    parser.add_argument("--beta", type=float, default=None, help="KL weight (default 1: the ELBO)")
    parser.add_argument("--hidden", default=None, help="FC widths, e.g. 1024,1024 (default 512,512)")
    parser.add_argument("--every", type=int, default=None, help="FC rows: keep every n-th frame (default 10)")
    parser.add_argument("--stream-frames", action="store_true",
                        help="FC rows: compute the training frames once into <out>/frames/ (a complex64 .npy "
                        "reused by later runs) and read them from disk instead of memory")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--optimizer", choices=("adam", "psgd-kron", "psgd-lra", "psgd-lra-hvp"), default=None,
        help="default psgd-kron (Kron-QEQ with cheap diagonal factors on wide dims: level with tuned Adam "
             "at equal CPU time here at about Adam's step cost, benchmarks/README.md; the paper's family); "
             "adam; psgd-lra: the paper's PSGD; psgd-lra-hvp: the papers' Newton-type PSGD (exact "
             "Hessian-vector products)",
    )
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the chosen optimizer")
    parser.add_argument(
        "--grad-clip",
        type=positive_float,
        default=None,
        help="clip the gradient norm to this finite value > 0 (default: off)",
    )
    add_engine_arguments(parser)
    parser.add_argument("--n-test-utterances", type=int, default=None, help="per test speaker")
    parser.add_argument(
        "--max-librispeech-utterances",
        type=int,
        default=None,
        help=f"LibriSpeech training utterances (random subset; default {Config.max_librispeech_utterances})",
    )
    parser.add_argument("--no-fad", action="store_true", help="skip the FAD columns")
    parser.add_argument(
        "--vggish-checkpoint",
        default=None,
        help="local VGGish state dict (torchaudio's vggish.pt or torchvggish's vggish-10086976.pth): FAD "
        "under VGGish, comparable to published FAD; default: Resemblyzer (offline, not comparable)",
    )
    parser.add_argument("--out", default=Config.out, help="output root; each row writes into <out>/<row>/")
    parser.add_argument("--seed", type=int_at_least(0), default=Config.seed)
    parser.add_argument(
        "--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda when available)"
    )
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
        cfg.grad_clip = args.grad_clip
    if args.lr is not None:
        if not args.lr > 0:
            parser.error(f"--lr must be > 0, got {args.lr}")
        cfg.lr = cfg.psgd_lr = cfg.psgd_kron_lr = cfg.psgd_hvp_lr = args.lr
    for name in ("corpus", "optimizer", "data_dir", "librispeech_dir", "latent_dim", "epochs", "every",
                 "n_test_utterances", "max_librispeech_utterances", "device", "test_dir", "train_speakers",
                 "test_speakers", "train_speaker_fraction"):  # fmt: skip
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.train_dir:
        cfg.train_dirs = tuple(args.train_dir)
    cfg.evaluate_only = args.evaluate_only
    for name, value in engine_options(parser, args, [cfg.optimizer]).items():
        setattr(cfg, name, value)
    cfg.stream_frames = args.stream_frames
    cfg.fad = cfg.fad and not args.no_fad
    cfg.vggish_checkpoint = args.vggish_checkpoint
    try:  # the data choice is checked before anything is written or trained
        load_corpus(cfg)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        parser.error(str(e))
    if cfg.evaluate_only:
        missing = [
            str(Path(cfg.out) / r / "vae.pt")
            for r in cfg.rows
            if not (Path(cfg.out) / r / "vae.pt").is_file()
        ]
        if missing:
            parser.error(f"--evaluate-only needs a trained model per row; not found: {', '.join(missing)} "
                         "(train first with the same --out and --rows)")  # fmt: skip
    return cfg


def run_row(
    cfg: Config, name: str, row: Row, data: dict[str, Any], device: torch.device
) -> tuple[dict, list]:
    """Train (or, with ``--evaluate-only``, load) one row and evaluate it; writes its folder's files and
    returns its metrics and loss curve. Under ``torchrun`` every rank trains; rank 0 alone evaluates."""
    main_rank = context().is_main
    if cfg.evaluate_only and not main_rank:
        return {}, []
    row_out = Path(cfg.out) / name
    folder = eval_folder(cfg, row_out)
    specs, waves = data["specs"], data["waves"]
    metrics: dict[str, Any] = {}
    train_info, test_info = data["train_info"], data["test_info"]
    trained_config = asdict(cfg)
    if cfg.evaluate_only:  # what the model was trained on: its training run's record, when there is one
        record = row_out / "results.json"
        saved = json.loads(record.read_text()) if record.is_file() else {}
        train_info, trained_config = saved.get("train_data"), saved.get("config")
    if train_info is not None:
        test_info = {**test_info, "speakers_also_in_training": sorted(
            set(test_info["speakers"]) & set(train_info["speakers"]))}  # fmt: skip
        if test_info["speakers_also_in_training"]:
            print(f"{name}: NOTE test speakers also in training: {test_info['speakers_also_in_training']}")
    if cfg.evaluate_only:
        model_path = row_out / "vae.pt"
        vae = VAE.load(model_path, map_location=device).eval()
        if type(vae.likelihood) is not row.likelihood:
            got = type(vae.likelihood).__name__
            want = row.likelihood.__name__
            raise ValueError(f"{model_path} holds a {got} decoder, not row {name}'s {want}")
        curve: list[float] = []
    else:
        seed_everything(cfg.seed)
        vae = build_vae(cfg, row, specs[0].shape[0]).to(device)
        metrics["untrained_test_elbo_per_frame"] = elbo_per_frame(vae, row, specs)
        start = time.perf_counter()
        # keep 2: an intact older checkpoint to fall back to if the newest is damaged
        checkpoints = Checkpointer(row_out, every=cfg.checkpoint_every, keep=2, prefix="train")
        batch = cfg.batch_size if row.net == "fc" else cfg.window_batch_size
        curve = train(cfg, vae, data[row.net], batch, checkpoints, data_id=data["train_id"],
                      model_path=row_out / "vae.pt")  # fmt: skip
        metrics["train_seconds"] = time.perf_counter() - start
        model_path = row_out / "vae.pt"
        if not main_rank:
            return metrics, curve
    seed_everything(cfg.seed)  # Griffin-Lim and the ELBO noise: a reloaded model scores the same
    decoded = [decode_utterance(vae, row, s) for s in specs]
    metrics = {
        **evaluate(cfg, waves, decoded, data["embed"], data["real_emb"]),
        "test_elbo_per_frame": elbo_per_frame(vae, row, specs),
        "active_latents": active_latents(vae, row, specs),
        **metrics,
    }
    if row.likelihood is ComplexNormal:  # Table 6.2 omits this row: how much of the power does mu carry?
        loc_power = sum(float(d["magnitude"].square().sum()) for d in decoded)
        metrics["loc_power_fraction"] = loc_power / sum(float(s.abs().square().sum()) for s in specs)
    folder.mkdir(parents=True, exist_ok=True)
    if not row.constant_precision:
        save_precision_map(decoded[0]["precision"].clamp_min(1e-6), folder / "precision.png", sr=SR,
                           hop=HOP_LENGTH, title=f"{name}: magnitude precision E[r]^2 / Var r")  # fmt: skip
    save_spectrograms({"ground truth": specs[0], name: decoded[0]["magnitude"]}, folder / "spectrograms.png",
                      sr=SR, hop=HOP_LENGTH)  # fmt: skip
    if curve:
        save_loss_curves({name: curve, "epoch": list(range(1, len(curve) + 1))}, folder / "loss_curve.png")
    payload = {"config": asdict(cfg), "trained_config": trained_config, "row": name, "model": str(model_path),
               "fad_embedding": data["embed_name"], "train_data": train_info,
               "test_data": test_info, "reference": data["reference"],
               "results": {name: metrics}}  # fmt: skip
    write_json(folder / "results.json", payload)  # undefined scores (NaN) as null
    return metrics, curve


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    ctx, device = init_distributed(cfg.device)  # under torchrun: each row trains with DDP, rank 0 evaluates
    warnings.simplefilter("ignore", UndefinedMetricWarning)  # undefined scores are NaN, averaged with nanmean
    rows = {name: ROWS[name] for name in cfg.rows}

    train_utts, test_utts = load_corpus(cfg)
    chosen = test_utterances(cfg, test_utts)
    waves = [load_audio(u.path) for u in chosen]
    data: dict[str, Any] = {"waves": waves, "specs": [stft(w) for w in waves], "fc": None, "conv": None,
                            "train_id": training_data_id(train_utts)}  # fmt: skip
    data["test_info"] = describe(chosen)
    data["train_info"] = None if cfg.evaluate_only else describe(train_utts)
    if data["train_info"] is not None:
        print(describe_line("training data", data["train_info"]))
    print(describe_line("test data", data["test_info"]))
    if not cfg.evaluate_only:
        fc_rows, conv_rows = (any(r.net == net for r in rows.values()) for net in ("fc", "conv"))
        streamed = fc_rows and cfg.stream_frames
        # decoded once when the frames are computed in memory; a streamed cache reads its files itself
        in_memory = conv_rows or (fc_rows and not streamed)
        train_waves = [load_audio(u.path) for u in train_utts] if in_memory else []
        if streamed:
            if ctx.distributed and not ctx.is_main:
                dist.barrier()  # rank 0 builds (or checks) the cache; the others then open it
            data["fc"] = SpeechFrameCache(train_utts, Path(cfg.out) / "frames", every=cfg.every)
            if ctx.distributed and ctx.is_main:
                dist.barrier()
            print(f"FC frames {data['fc'].status} on disk: {data['fc'].path / SpeechFrameCache.FRAMES}")
        elif fc_rows:
            data["fc"] = SpeechFrames(train_waves, every=cfg.every).data.to(device)
        if conv_rows:
            windows = SpeechWindows(train_waves, cfg.n_windows, frames=cfg.window_frames, seed=cfg.seed)
            data["conv"] = windows.data.to(device)
        print(
            f"{0 if data['fc'] is None else len(data['fc'])} frames for FC rows, "
            f"{0 if data['conv'] is None else len(data['conv'])} windows of {cfg.window_frames} for conv "
            f"rows; latent {cfg.latent_dim}; optimizer {cfg.optimizer}; device {device}"
        )
    if ctx.is_main:
        data["embed"], data["embed_name"] = fad_embedding(cfg, device)
        data["real_emb"] = embed_waves(waves, data["embed"], sr=SR) if data["embed"] is not None else None
        # reference rows: the ground-truth magnitude, with GT phase (PESQ's ceiling) and Griffin-Lim phase
        seed_everything(cfg.seed)
        data["reference"] = evaluate(cfg, waves, [{"magnitude": s.abs()} for s in data["specs"]],
                                     data["embed"], data["real_emb"])  # fmt: skip
    results = {name: run_row(cfg, name, row, data, device)[0] for name, row in rows.items()}
    if not finish_distributed():
        return 0

    def fmt(r: dict, key: str, width: int, prec: int = 2) -> str:
        v = r.get(key)
        return f"{'-':>{width}}" if v is None or not math.isfinite(v) else f"{v:>{width}.{prec}f}"

    fad_note = {"vggish": "VGGish (comparable to published FAD)", "none": "not computed",
                "resemblyzer": "Resemblyzer, NOT comparable to VGGish FAD"}[data["embed_name"]]  # fmt: skip
    print(f"\ntest set, {len(waves)} utterances; FAD: {fad_note}")
    cols = [("PESQwb GT", "pesq_wb_gt_phase", 2), ("PESQwb GL", "pesq_wb_gl_phase", 2),
            ("PESQwb vM", "pesq_wb_vm_phase", 2), ("PESQnb GT", "pesq_nb_gt_phase", 2),
            ("STOI GT", "stoi_gt_phase", 3), ("ESTOI GT", "estoi_gt_phase", 3),
            ("LSD GT", "lsd_db_gt_phase", 2),
            ("FAD GT", "fad_gt_phase", 4), ("FAD GL", "fad_gl_phase", 4), ("FAD vM", "fad_vm_phase", 4),
            ("ELBO/frame", "test_elbo_per_frame", 1), ("active z", "active_latents", 0)]  # fmt: skip
    print(f"{'row':<22}" + "".join(f"{c:>11}" for c, _, _ in cols))
    for name, r in {"ground-truth |X|": data["reference"], **results}.items():
        print(f"{name:<22}" + "".join(fmt(r, key, 11, p) for _, key, p in cols))
    for name, r in results.items():
        if "loc_power_fraction" in r:
            print(f"{name}: |mu| carries {100 * r['loc_power_fraction']:.2f}% of the test power (mu -> 0)")
    folders = ", ".join(str(eval_folder(cfg, Path(cfg.out) / n)) for n in results)
    print(f"\nsaved results.json, spectrograms.png, precision.png, loss_curve.png in {folders}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_recipe(main))
