"""Fréchet Audio Distance: the Fréchet (2-Wasserstein) distance between Gaussians fitted to embeddings of
real and generated audio, with a pluggable embedding.

``FD = ‖μ₁ - μ₂‖² + tr Σ₁ + tr Σ₂ - 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}``

The last trace is computed in float64 as the nuclear norm of ``Σ₁^{1/2} Σ₂^{1/2}`` (its singular values
are the square roots of the eigenvalues of ``Σ₁Σ₂``), with each ``Σ^{1/2}`` from a symmetric eigen-
decomposition whose rounding-noise eigenvalues (below ``d·ε_machine·λ_max``, possibly negative) are set
to 0 -- not with ``scipy.linalg.sqrtm(Σ₁Σ₂)``, which on near-singular covariances (fewer samples than
dimensions) returns complex values and can make the trace term, and FAD, negative. A tiny ridge
``eps·I`` (default 1e-10) is added to both covariances, in the traces too, so a set against itself
scores 0.

Embeddings (the :class:`Embedding` protocol: ``sample_rate`` and ``__call__(wave) -> (n, D)``):

- :class:`ResemblyzerEmbedding` -- the pretrained GE2E speaker encoder shipped inside the ``resemblyzer``
  package (works offline). Its 256-d embeddings describe *voice*, and its FAD is **not comparable** to
  the usual VGGish-based FAD numbers in the literature; compare it only with itself.
- :class:`VGGishEmbedding` -- the VGGish architecture (Hershey et al., 2017) loading a user-given local
  checkpoint (torchaudio's ``vggish.pt`` state dict or torchvggish's ``vggish-*.pth``); this is the FAD
  of Kilgour et al. (2019), up to resampling details.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torchaudio
from torch import nn

from genlib.utils import check_positive, check_tensor, default_device

__all__ = [
    "frechet_distance",
    "gaussian_fit",
    "fad",
    "Embedding",
    "embed_waves",
    "fad_from_audio",
    "ResemblyzerEmbedding",
    "VGGish",
    "VGGishEmbedding",
    "vggish_examples",
]


def _as_float64(x: object, name: str, ndim: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check_tensor(x, name, ndim=ndim, floating=True)
    if x.is_complex():
        raise ValueError(f"{name} must be real, got a complex tensor")
    return x.detach().to("cpu", torch.float64)


def gaussian_fit(embeddings: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of embeddings ``(N, D)``, ``N >= 2``."""
    e = _as_float64(embeddings, "embeddings", 2)
    if e.shape[0] < 2:
        raise ValueError(
            f"embeddings must have at least 2 rows (N, D) to fit a covariance, got {tuple(e.shape)}"
        )
    return e.mean(0), torch.cov(e.T).reshape(e.shape[1], e.shape[1])


def _sqrt_and_trace(s: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Square root and trace of the PSD matrix ``s + eps·I``, from one eigendecomposition of ``s``."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    # Eigenvalues below eigh's resolution (d · machine-eps · largest) are rounding noise around 0 and may be
    # negative; sqrt would turn ~1e-16 of noise into ~1e-8 per direction, so they are set to 0 first.
    tol = w.shape[0] * torch.finfo(w.dtype).eps * w.abs().max()
    w = torch.where(w > tol, w, torch.zeros_like(w)) + eps
    return (v * w.sqrt()) @ v.T, w.sum()


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor, eps: float = 1e-10
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``; real and >= 0 by construction.

    ``eps`` is the ridge added to both covariances' diagonals (0 disables it).
    """
    check_positive(eps, "eps", allow_zero=True)
    mu1, mu2 = _as_float64(mu1, "mu1", 1), _as_float64(mu2, "mu2", 1)
    s1, s2 = _as_float64(sigma1, "sigma1", 2), _as_float64(sigma2, "sigma2", 2)
    d = mu1.shape[0]
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match the means, got {tuple(s.shape)}")
    if mu2.shape != mu1.shape:
        raise ValueError(
            f"mu1 and mu2 must have the same shape, got {tuple(mu1.shape)} and {tuple(mu2.shape)}"
        )
    r1, tr1 = _sqrt_and_trace(s1, eps)
    r2, tr2 = _sqrt_and_trace(s2, eps)
    # tr (S1^1/2 S2 S1^1/2)^1/2 = nuclear norm of S1^1/2 S2^1/2: singular values carry absolute error
    # ~machine-eps·σ_max, with no square root of rounding noise.
    tr_sqrt = torch.linalg.svdvals(r1 @ r2).sum()
    dist = (mu1 - mu2).square().sum() + tr1 + tr2 - 2 * tr_sqrt
    # Exact arithmetic gives >= 0; clamp the last-ulp rounding of identical inputs.
    return float(dist.clamp_min(0))


def fad(
    real_embeddings: torch.Tensor | np.ndarray, fake_embeddings: torch.Tensor | np.ndarray, eps: float = 1e-10
) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets ``(N1, D)`` and ``(N2, D)``."""
    mu1, s1 = gaussian_fit(real_embeddings)
    mu2, s2 = gaussian_fit(fake_embeddings)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"real and fake embeddings must have the same dimension, got {mu1.shape[0]} and {mu2.shape[0]}"
        )
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)


@runtime_checkable
class Embedding(Protocol):
    """Maps one mono waveform at ``sample_rate`` to a sequence of embeddings ``(n, D)`` (``n`` may be 0)."""

    sample_rate: int

    def __call__(self, wave: torch.Tensor) -> torch.Tensor: ...


def embed_waves(
    waves: Sequence[torch.Tensor | np.ndarray] | torch.Tensor, embedding: Embedding, sr: int = 16000
) -> torch.Tensor:
    """Embeddings of all ``waves`` (1-D signals at ``sr``; or a batch ``(B, L)``), concatenated ``(N, D)``.

    Waves are resampled to ``embedding.sample_rate`` with ``torchaudio.functional.resample`` when needed.
    """
    if not isinstance(embedding, Embedding):
        raise ValueError(
            f"embedding must follow the Embedding protocol (sample_rate, __call__), got {embedding!r}"
        )
    if not isinstance(sr, int) or sr <= 0:
        raise ValueError(f"sr must be a positive int (Hz), got {sr!r}")
    if isinstance(waves, torch.Tensor) and waves.ndim == 2:
        waves = list(waves)
    if isinstance(waves, (torch.Tensor, np.ndarray)) or len(waves) == 0:
        raise ValueError("waves must be a non-empty sequence of 1-D waveforms or a (B, L) tensor")
    out = []
    for i, w in enumerate(waves):
        w = _as_float64(w, f"waves[{i}]", 1).to(torch.float32)
        if sr != embedding.sample_rate:
            w = torchaudio.functional.resample(w, sr, embedding.sample_rate)
        out.append(torch.as_tensor(embedding(w)).detach().to("cpu", torch.float64))
    return torch.cat(out)


def fad_from_audio(
    real_waves: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    fake_waves: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    embedding: Embedding,
    sr: int = 16000,
    eps: float = 1e-10,
) -> float:
    """FAD between two sets of waveforms at ``sr`` under ``embedding`` (see the module docstring).

    To score many generated sets against one real set, call :func:`embed_waves` once on the real
    waves and :func:`fad` per set.
    """
    real = embed_waves(real_waves, embedding, sr)
    fake = embed_waves(fake_waves, embedding, sr)
    for name, e in (("real_waves", real), ("fake_waves", fake)):
        if e.shape[0] < 2:
            raise ValueError(f"{name} gave {e.shape[0]} embeddings; FAD needs >= 2 (longer or more audio)")
    return fad(real, fake, eps=eps)


class ResemblyzerEmbedding:
    """Partial-utterance embeddings of resemblyzer's pretrained speaker encoder (256-d, 1.6 s windows).

    Each wave is volume-normalised and long silences are trimmed by resemblyzer's ``preprocess_wav``
    (``preprocess=False`` skips this), then cut into 1.6 s partials at ``rate`` per second; one
    L2-normalised embedding per partial. Offline: the weights ship inside the package.
    FAD under this embedding is NOT comparable to VGGish FAD.
    """

    sample_rate = 16000

    def __init__(self, device: str | torch.device | None = None, rate: float = 1.3, preprocess: bool = True):
        from resemblyzer import VoiceEncoder  # optional at import time of genlib.metrics

        check_positive(rate, "rate")
        if rate < 0.625:  # partials are 1.6 s long and must cover the utterance
            raise ValueError(f"rate must be >= 0.625 partials per second, got {rate!r}")
        self.rate = float(rate)
        self.preprocess = preprocess
        self.encoder = VoiceEncoder(device=device or default_device(), verbose=False)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        from resemblyzer import preprocess_wav

        w = _as_float64(wave, "wave", 1).numpy().astype(np.float32)
        if not w.any():  # silence (or nothing): no voice to embed; resemblyzer would divide by zero
            return torch.empty(0, 256)
        if self.preprocess:
            w = preprocess_wav(w)
        if len(w) == 0:  # no voiced 30 ms window survived the trimming
            return torch.empty(0, 256)
        _, partials, _ = self.encoder.embed_utterance(w, return_partials=True, rate=self.rate)
        return torch.from_numpy(partials)


# VGGish front end (Hershey et al. 2017): 25 ms / 10 ms frames, 64 mel bands 125-7500 Hz, log(mel + 0.01),
# examples of 96 frames (0.96 s) without overlap.
_VGG_SR, _VGG_WIN, _VGG_HOP, _VGG_FFT = 16000, 400, 160, 512
_VGG_MELS, _VGG_FMIN, _VGG_FMAX, _VGG_FRAMES = 64, 125.0, 7500.0, 96


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(f / 700.0)


def _vggish_mel_matrix() -> torch.Tensor:
    # Hand-written because VGGish's triangles are linear in mel, while torchaudio's/librosa's
    # filterbanks are linear in Hz; the weights were trained on the former.
    bins = _hz_to_mel(torch.linspace(0.0, _VGG_SR / 2, _VGG_FFT // 2 + 1, dtype=torch.float64))
    edges = torch.linspace(
        float(_hz_to_mel(torch.tensor(_VGG_FMIN))),
        float(_hz_to_mel(torch.tensor(_VGG_FMAX))),
        _VGG_MELS + 2,
        dtype=torch.float64,
    )
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (bins[:, None] - lo) / (mid - lo)
    down = (hi - bins[:, None]) / (hi - mid)
    w = torch.minimum(up, down).clamp_min(0)
    w[0] = 0.0  # HTK convention: the DC bin never contributes
    return w.to(torch.float32)


def vggish_examples(wave: torch.Tensor) -> torch.Tensor:
    """VGGish input examples ``(n, 1, 96, 64)`` (log-mel patches of 0.96 s) from a 16 kHz wave ``(L,)``.

    ``n = (n_frames - 96) // 96 + 1`` with ``n_frames = 1 + (L - 400) // 160``; shorter waves give ``n = 0``.
    """
    wave = _as_float64(wave, "wave", 1).to(torch.float32)
    if len(wave) < _VGG_WIN:
        return torch.empty(0, 1, _VGG_FRAMES, _VGG_MELS)
    frames = wave.unfold(0, _VGG_WIN, _VGG_HOP) * torch.hann_window(_VGG_WIN, periodic=True)
    mag = torch.fft.rfft(frames, n=_VGG_FFT).abs()
    log_mel = torch.log(mag @ _vggish_mel_matrix() + 0.01)
    if log_mel.shape[0] < _VGG_FRAMES:
        return torch.empty(0, 1, _VGG_FRAMES, _VGG_MELS)
    return log_mel.unfold(0, _VGG_FRAMES, _VGG_FRAMES).transpose(1, 2).unsqueeze(1).contiguous()


class VGGish(nn.Module):
    """The VGGish network: log-mel examples ``(B, 1, 96, 64)`` -> 128-d embeddings ``(B, 128)``.

    Submodule names and indices follow torchvggish (``features``, ``embeddings``); torchaudio's
    ``features_network`` / ``embedding_network`` names are mapped on load by :meth:`load_checkpoint`.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, n_conv in ((1, 64, 1), (64, 128, 1), (128, 256, 2), (256, 512, 2)):
            for j in range(n_conv):
                layers += [nn.Conv2d(c_in if j == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(True),
            nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Linear(4096, 128), nn.ReLU(True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ndim=4)
        if tuple(x.shape[1:]) != (1, _VGG_FRAMES, _VGG_MELS):
            raise ValueError(f"x must have shape (B, 1, 96, 64), got {tuple(x.shape)}")
        h = self.features(x)
        # Flatten in TensorFlow's NHWC order: the original weights expect it.
        return self.embeddings(h.permute(0, 2, 3, 1).flatten(1))

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VGGish:
        """A VGGish with weights from a local checkpoint (torchaudio or torchvggish naming).

        Raises ``FileNotFoundError`` naming ``path`` when the file is missing (nothing is downloaded)
        and ``RuntimeError`` listing the offending keys when the file is not a VGGish state dict.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"VGGish checkpoint not found: {path}. Nothing is downloaded at run time; place a state dict "
                "there (torchaudio's models/vggish.pt or torchvggish's vggish-10086976.pth)."
            )
        state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise RuntimeError(f"{path} does not hold a state dict, got {type(state).__name__}")
        renamed = {}
        for k, v in state.items():
            if k.startswith("pproc."):  # torchvggish's PCA post-processor: FAD uses raw embeddings
                continue
            k = k.replace("features_network.", "features.", 1).replace("embedding_network.", "embeddings.", 1)
            renamed[k] = v
        model = cls()
        missing, unexpected = model.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"{path} is not a VGGish state dict: "
                f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}"
            )
        return model.eval()


class VGGishEmbedding:
    """Raw 128-d VGGish embeddings (before PCA / quantisation), one per 0.96 s of 16 kHz audio.

    ``checkpoint`` is a local file (see :meth:`VGGish.load_checkpoint`); a missing file raises
    ``FileNotFoundError`` naming the path.
    """

    sample_rate = _VGG_SR

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = VGGish.load_checkpoint(checkpoint).to(self.device)

    @torch.no_grad()
    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        ex = vggish_examples(wave)
        if len(ex) == 0:
            return torch.empty(0, 128)
        return self.model(ex.to(self.device)).cpu()
