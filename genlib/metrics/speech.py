"""Speech quality metrics: PESQ (ITU-T P.862 / P.862.2 via the ``pesq`` package), STOI / ESTOI (``pystoi``),
log-spectral distance and spectral convergence on the paper's STFT.

Policy for inputs where a metric is undefined (stated once, applied everywhere here):

- misuse raises ``ValueError`` naming the argument: not a 1-D real signal, NaN/Inf, reference and degraded
  lengths differ (re-synthesis keeps the length; pad or trim explicitly first), a sample rate the metric
  does not support;
- a valid signal on which the metric is undefined -- all-zero (silent) input, PESQ finding no speech, or
  input too short (PESQ needs >= 0.25 s; STOI needs >= 30 non-silent 25.6 ms frames at 10 kHz, so at least
  ``STOI_MIN_SECONDS`` = 0.3968 s of signal) -- returns ``nan`` and emits an
  :class:`UndefinedMetricWarning`, for PESQ and STOI alike, so a batch evaluation is never killed by one
  silent or short clip.
  Average batches with ``numpy.nanmean`` and report how many were NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pesq as _pesq
import pystoi
import torch

from genlib.data.stft import HOP_LENGTH, N_FFT, stft
from genlib.utils import check_tensor

__all__ = [
    "UndefinedMetricWarning",
    "PESQ_MAX",
    "STOI_MIN_SECONDS",
    "pesq",
    "pesq_batch",
    "stoi",
    "lsd",
    "spectral_convergence",
]

# STOI works on 30 frames of 256 samples, hop 128, at 10 kHz: (30 - 1) * 128 + 256 = 3968 samples.
STOI_MIN_SECONDS = 3968 / 10000

# Highest score each PESQ mode can give (a signal against itself).
PESQ_MAX = {"wb": 4.644, "nb": 4.549}


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is undefined for this input (silent or too short); ``nan`` was returned."""


def _as_signal(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a 1-D torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 1 or np.iscomplexobj(x) or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a real 1-D signal, got shape {x.shape} dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _pair(ref: object, deg: object) -> tuple[np.ndarray, np.ndarray]:
    r, d = _as_signal(ref, "ref"), _as_signal(deg, "deg")
    if len(r) != len(d):
        raise ValueError(f"ref and deg must have the same length, got {len(r)} and {len(d)} samples")
    return r, d


def _undefined(metric: str, why: str) -> float:
    warnings.warn(f"{metric} undefined ({why}); returning nan", UndefinedMetricWarning, stacklevel=3)
    return float("nan")


def pesq(ref: object, deg: object, sr: int = 16000, mode: str = "wb") -> float:
    """PESQ MOS-LQO of ``deg`` against ``ref`` (1-D, same length).

    ``mode="wb"``: wideband P.862.2, needs ``sr=16000``, range [1.04, 4.64].
    ``mode="nb"``: narrowband P.862, ``sr`` 8000 or 16000, range [1.02, 4.55].
    Silent / too-short input gives ``nan`` with a warning (module docstring).
    """
    if mode not in ("wb", "nb"):
        raise ValueError(f"mode must be 'wb' (wideband P.862.2) or 'nb' (narrowband P.862), got {mode!r}")
    allowed = (16000,) if mode == "wb" else (8000, 16000)
    if sr not in allowed:
        raise ValueError(f"sr must be one of {allowed} for PESQ mode {mode!r}, got {sr!r}; resample first")
    r, d = _pair(ref, deg)
    if len(r) < sr // 4:
        return _undefined("PESQ", f"signals have {len(r)} samples, PESQ needs at least 0.25 s = {sr // 4}")
    if not r.any() or not d.any():
        return _undefined("PESQ", "ref or deg is all zeros")
    try:
        return float(_pesq.pesq(sr, r, d, mode))
    except _pesq.NoUtterancesError:
        return _undefined("PESQ", "no speech detected")


def pesq_batch(
    refs: Sequence[object], degs: Sequence[object], sr: int = 16000, mode: str = "wb"
) -> np.ndarray:
    """PESQ of each pair ``(refs[i], degs[i])``; an array with ``nan`` where PESQ is undefined."""
    if len(refs) != len(degs):
        raise ValueError(
            f"refs and degs must have the same number of signals, got {len(refs)} and {len(degs)}"
        )
    return np.array([pesq(r, d, sr=sr, mode=mode) for r, d in zip(refs, degs)], dtype=np.float64)


def stoi(ref: object, deg: object, sr: int = 16000, extended: bool = False) -> float:
    """STOI (``extended=False``) or ESTOI (``extended=True``) of ``deg`` against ``ref``, via pystoi.

    pystoi resamples to 10 kHz and drops silent frames itself. Signals shorter than ``STOI_MIN_SECONDS``,
    or with too few non-silent frames left, score ``nan`` with an :class:`UndefinedMetricWarning` (as
    :func:`pesq` does; module docstring) instead of pystoi's placeholder 1e-5 or a NumPy ``AxisError``.
    """
    if not isinstance(sr, int) or sr <= 0:
        raise ValueError(f"sr must be a positive int (Hz), got {sr!r}")
    r, d = _pair(ref, deg)
    name = "ESTOI" if extended else "STOI"
    min_len = math.ceil(STOI_MIN_SECONDS * sr)
    if len(r) < min_len:
        why = f"too few non-silent frames: {len(r)} samples, {name} needs at least {min_len} at {sr} Hz"
        return _undefined(name, why)
    if not r.any() or not d.any():
        return _undefined(name, "ref or deg is all zeros")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            score = float(pystoi.stoi(r, d, sr, extended=extended))
        except np.exceptions.AxisError:  # pystoi's STFT of a (near-)empty signal after silence removal
            return _undefined(name, "too few non-silent frames")
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return _undefined(name, "too few non-silent frames")
    return score


def _power_spectra(ref: torch.Tensor, deg: torch.Tensor, n_fft: int, hop_length: int):
    for name, x in (("ref", ref), ("deg", deg)):
        check_tensor(x, name, ndim=(1, 2), floating=True)
        if x.is_complex():
            raise ValueError(f"{name} must be a real waveform (L,) or (B, L), got a complex tensor")
    if ref.shape != deg.shape:
        raise ValueError(
            f"ref and deg must have the same shape, got {tuple(ref.shape)} and {tuple(deg.shape)}"
        )
    ref, deg = ref.to(torch.float64), deg.to(torch.float64)
    return (stft(ref, n_fft, hop_length).abs().square(), stft(deg, n_fft, hop_length).abs().square())


def lsd(
    ref: torch.Tensor,
    deg: torch.Tensor,
    floor: float = 1e-10,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
) -> torch.Tensor:
    """Log-spectral distance in dB on the paper's STFT.

    ``LSD = mean_t sqrt(mean_f (10 log10 P_ref(f,t) - 10 log10 P_deg(f,t))²)`` with power spectra
    ``P = max(|STFT|², floor)``; the absolute floor (default 1e-10, i.e. -100 dB for waves in [-1, 1])
    stops silent bins from dominating. ``ref``, ``deg``: ``(L,)`` -> scalar tensor, ``(B, L)`` -> ``(B,)``.
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor!r}")
    p_ref, p_deg = _power_spectra(ref, deg, n_fft, hop_length)
    diff = 10 * (p_ref.clamp_min(floor).log10() - p_deg.clamp_min(floor).log10())
    return diff.square().mean(dim=-2).sqrt().mean(dim=-1)


def spectral_convergence(
    ref: torch.Tensor, deg: torch.Tensor, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH
) -> torch.Tensor:
    """``‖|S_ref| - |S_deg|‖_F / ‖|S_ref|‖_F`` on the paper's STFT (0 is perfect; phase-blind).

    ``ref``, ``deg``: waveforms ``(L,)`` -> scalar, ``(B, L)`` -> ``(B,)``.
    """
    p_ref, p_deg = _power_spectra(ref, deg, n_fft, hop_length)
    m_ref, m_deg = p_ref.sqrt(), p_deg.sqrt()
    return (m_ref - m_deg).norm(dim=(-2, -1)) / m_ref.norm(dim=(-2, -1))
