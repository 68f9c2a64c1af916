"""STFT features as in the dissertation's speech chapter: 16 kHz audio, periodic Hann window of 1024 samples
(64 ms), hop 128 (8 ms), 1024-point FFT (513 bins).

``stft`` / ``istft`` wrap :func:`torch.stft` / :func:`torch.istft` (``center=True``; the window meets the
NOLA condition, so ``istft(stft(x), len(x))`` reconstructs ``x`` up to float rounding). Magnitude-only models
get their phase back from :func:`reconstruct`, which uses torchaudio's Griffin-Lim.

Shapes follow DESIGN.md: a wave ``(L,)`` gives a complex spectrum ``(F, T)``; a batch ``(B, L)`` gives
``(B, F, T)``.
"""

from __future__ import annotations

import torch
import torchaudio

from genlib.utils import check_positive, check_tensor

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "WIN_LENGTH",
    "N_FREQS",
    "stft",
    "istft",
    "log_power",
    "phase",
    "griffin_lim",
    "reconstruct",
]

SAMPLE_RATE = 16_000
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 128
N_FREQS = N_FFT // 2 + 1


def _window(n_fft: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Periodic Hann: the window for which overlap-add at hop n_fft/k sums to a constant.
    return torch.hann_window(n_fft, periodic=True, device=device, dtype=dtype)


def _check_fft(n_fft: int, hop_length: int) -> None:
    if not isinstance(n_fft, int) or n_fft < 2:
        raise ValueError(f"n_fft must be an int >= 2, got {n_fft!r}")
    if not isinstance(hop_length, int) or not 0 < hop_length <= n_fft // 2:
        # hop > n_fft/2 breaks the Hann window's NOLA condition, so istft would be ill-posed.
        raise ValueError(f"hop_length must be an int in [1, n_fft/2 = {n_fft // 2}], got {hop_length!r}")


def stft(wave: torch.Tensor, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """Complex STFT of a real wave ``(L,)`` -> ``(F, T)`` or a batch ``(B, L)`` -> ``(B, F, T)``.

    ``F = n_fft // 2 + 1`` and ``T = 1 + L // hop_length`` (frames are centred, reflect-padded).
    """
    check_tensor(wave, "wave", ndim=(1, 2), floating=True)
    if wave.is_complex():
        raise ValueError("wave must be a real tensor (a waveform), got a complex tensor")
    _check_fft(n_fft, hop_length)
    if wave.shape[-1] <= n_fft // 2:
        # reflect padding needs more samples than the pad width
        raise ValueError(f"wave must have more than n_fft/2 = {n_fft // 2} samples, got {wave.shape[-1]}")
    return torch.stft(
        wave,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=_window(n_fft, wave.device, wave.dtype),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )


def istft(spec: torch.Tensor, length: int | None = None, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """Inverse of :func:`stft`: complex ``(F, T)`` -> ``(L,)`` or ``(B, F, T)`` -> ``(B, L)``.

    ``length`` trims / zero-pads the output to the original number of samples (pass ``len(wave)``
    to invert exactly; without it the output has ``hop_length * (T - 1)`` samples).
    """
    check_tensor(spec, "spec", ndim=(2, 3))
    if not spec.is_complex():
        raise ValueError(f"spec must be a complex tensor (F, T) or (B, F, T), got dtype {spec.dtype}")
    n_fft = 2 * (spec.shape[-2] - 1)
    _check_fft(n_fft, hop_length)
    if length is not None and (not isinstance(length, int) or length < 1):
        raise ValueError(f"length must be a positive int or None, got {length!r}")
    real_dtype = spec.real.dtype
    return torch.istft(
        spec,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=_window(n_fft, spec.device, real_dtype),
        center=True,
        length=length,
    )


def _magnitude(x: torch.Tensor, name: str) -> torch.Tensor:
    check_tensor(x, name, ndim=(2, 3), floating=True)
    if x.is_complex():
        return x.abs()
    if bool((x < 0).any()):
        raise ValueError(
            f"{name} must be a complex spectrum or a non-negative magnitude, got negative values"
        )
    return x


def log_power(spec: torch.Tensor, floor: float = 1e-10) -> torch.Tensor:
    """``log(max(|S|², floor))`` of a complex spectrum (or a real magnitude); natural log.

    The floor (default 1e-10, i.e. -100 dB) keeps silent bins finite.
    """
    check_positive(floor, "floor")
    return _magnitude(spec, "spec").square().clamp_min(floor).log()


def phase(spec: torch.Tensor) -> torch.Tensor:
    """Phase angle of a complex spectrum, in ``(-pi, pi]``."""
    check_tensor(spec, "spec", ndim=(2, 3))
    if not spec.is_complex():
        raise ValueError(f"spec must be a complex tensor, got dtype {spec.dtype}")
    return spec.angle()


def griffin_lim(
    magnitude: torch.Tensor,
    length: int | None = None,
    n_iter: int = 64,
    momentum: float = 0.99,
    hop_length: int = HOP_LENGTH,
    seed: int | None = 0,
) -> torch.Tensor:
    """Waveform whose STFT magnitude approximates ``magnitude`` ``(F, T)`` / ``(B, F, T)``.

    Uses :class:`torchaudio.transforms.GriffinLim` (fast Griffin-Lim with momentum) with the paper's
    window. Its random phase initialisation is drawn under ``torch.random.fork_rng`` seeded with
    ``seed`` so results are reproducible without touching the global RNG (``seed=None``: unseeded).
    """
    mag = _magnitude(magnitude, "magnitude")
    n_fft = 2 * (mag.shape[-2] - 1)
    _check_fft(n_fft, hop_length)
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    gl = torchaudio.transforms.GriffinLim(
        n_fft=n_fft,
        n_iter=n_iter,
        win_length=n_fft,
        hop_length=hop_length,
        power=1.0,
        momentum=momentum,
        length=length,
        rand_init=True,
    ).to(device=mag.device, dtype=mag.dtype)
    if seed is None:
        return gl(mag)
    devices = [mag.device] if mag.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return gl(mag)


def reconstruct(
    magnitude: torch.Tensor,
    phase: None | str | torch.Tensor = None,
    length: int | None = None,
    hop_length: int = HOP_LENGTH,
    n_iter: int = 64,
    seed: int | None = 0,
) -> torch.Tensor:
    """Waveform from a magnitude spectrum ``(F, T)`` / ``(B, F, T)`` and a phase.

    ``phase``:
      - a real tensor of the magnitude's shape: that phase (e.g. the original one; "oracle phase");
      - ``"griffinlim"`` or ``None`` (default: no phase is known, so estimate one): Griffin-Lim;
      - ``"zero"``: zero phase; ``"random"``: uniform random phase (seeded) -- baselines.
    """
    mag = _magnitude(magnitude, "magnitude")
    if phase is None or (isinstance(phase, str) and phase == "griffinlim"):
        return griffin_lim(mag, length=length, n_iter=n_iter, hop_length=hop_length, seed=seed)
    if isinstance(phase, str):
        if phase == "zero":
            ph = torch.zeros_like(mag)
        elif phase == "random":
            gen = torch.Generator().manual_seed(0 if seed is None else seed)
            ph = (torch.rand(mag.shape, generator=gen, dtype=mag.dtype) * 2 - 1).to(mag.device) * torch.pi
        else:
            raise ValueError(f"phase must be None, 'griffinlim', 'zero', 'random' or a tensor, got {phase!r}")
    else:
        ph = check_tensor(phase, "phase", floating=True)
        if ph.is_complex() or ph.shape != mag.shape:
            raise ValueError(
                f"phase tensor must be real with the magnitude's shape {tuple(mag.shape)}, "
                f"got {tuple(ph.shape)} {ph.dtype}"
            )
    return istft(torch.polar(mag, ph.to(mag)), length=length, hop_length=hop_length)
