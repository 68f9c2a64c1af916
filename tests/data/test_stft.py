"""The paper's STFT: agreement with librosa, perfect reconstruction, features and Griffin-Lim."""


import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from genlib.data import stft as S
from genlib.metrics import spectral_convergence
from tests._paths import SHARED_DATA

DATA = SHARED_DATA


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """1.5 s of a real VCTK utterance (16 kHz, float32)."""
    path = DATA / "speech" / "vctk16k" / "p225" / "p225_003.wav"
    if not path.is_file():
        pytest.skip(f"VCTK wav not found at {path}")
    wav, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    return torch.from_numpy(wav[8000:32000])


def test_constants_are_the_papers():
    assert (S.SAMPLE_RATE, S.N_FFT, S.WIN_LENGTH, S.HOP_LENGTH, S.N_FREQS) == (16000, 1024, 1024, 128, 513)
    assert S.WIN_LENGTH / S.SAMPLE_RATE == 0.064


def test_stft_matches_librosa(speech):
    spec = S.stft(speech)
    # librosa's 'hann' is the periodic (fftbins=True) window; centred, reflect-padded frames.
    ref = librosa.stft(
        speech.numpy(), n_fft=1024, hop_length=128, window="hann", center=True, pad_mode="reflect"
    )
    assert spec.dtype == torch.complex64 and spec.shape == ref.shape == (513, 1 + len(speech) // 128)
    np.testing.assert_allclose(spec.numpy(), ref, atol=2e-4 * np.abs(ref).max())


def test_sine_peaks_at_its_bin():
    t = torch.arange(16000) / 16000
    spec = S.stft(torch.sin(2 * torch.pi * 1000 * t))
    assert int(spec.abs().mean(1).argmax()) == 1000 * 1024 // 16000  # bin 64


def test_perfect_reconstruction(speech):
    np.testing.assert_allclose(S.istft(S.stft(speech), len(speech)).numpy(), speech.numpy(), atol=1e-5)
    batch = torch.stack([speech, speech.flip(0)]).double()
    spec = S.stft(batch)
    assert spec.shape[:2] == (2, 513)
    back = S.istft(spec, batch.shape[-1])
    assert (back - batch).abs().max() < 1e-12  # float64: exact up to rounding


def test_log_power_and_phase(speech):
    spec = S.stft(speech)
    np.testing.assert_allclose(S.log_power(spec).exp(), spec.abs().square().clamp_min(1e-10), rtol=1e-4)
    silent = S.stft(torch.zeros(2048))
    assert torch.allclose(S.log_power(silent), torch.full(silent.shape, float(np.log(1e-10))))
    assert torch.allclose(torch.polar(spec.abs(), S.phase(spec)), spec, atol=1e-5)


def test_reconstruct_with_oracle_phase_is_exact(speech):
    spec = S.stft(speech)
    wave = S.reconstruct(spec.abs(), S.phase(spec), length=len(speech))
    assert (wave - speech).abs().max() < 1e-5


def test_griffin_lim_beats_random_and_zero_phase(speech):
    mag = S.stft(speech).abs()
    sc = {
        p: float(spectral_convergence(speech, S.reconstruct(mag, p, length=len(speech), n_iter=32)))
        for p in ("random", "zero", "griffinlim")
    }
    assert sc["griffinlim"] < 0.25 * sc["random"] and sc["griffinlim"] < 0.25 * sc["zero"], sc
    # phase=None means "no phase known": Griffin-Lim; seeded, hence reproducible
    a = S.reconstruct(mag, None, length=len(speech), n_iter=4, seed=3)
    b = S.griffin_lim(mag, length=len(speech), n_iter=4, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, S.griffin_lim(mag, length=len(speech), n_iter=4, seed=4))


def test_bad_input():
    with pytest.raises(ValueError, match="wave must be a real"):
        S.stft(torch.zeros(2048, dtype=torch.complex64))
    with pytest.raises(ValueError, match="wave must have 1 or 2 dims"):
        S.stft(torch.zeros(1, 1, 2048))
    with pytest.raises(ValueError, match="hop_length"):
        S.stft(torch.zeros(4096), hop_length=600)
    with pytest.raises(ValueError, match="more than n_fft/2"):
        S.stft(torch.zeros(100))
    with pytest.raises(ValueError, match="spec must be a complex"):
        S.istft(torch.zeros(513, 10))
    mag = torch.ones(513, 10)
    with pytest.raises(ValueError, match="non-negative"):
        S.reconstruct(-mag)
    with pytest.raises(ValueError, match="phase must be None"):
        S.reconstruct(mag, "oracle")
    with pytest.raises(ValueError, match="magnitude's shape"):
        S.reconstruct(mag, torch.zeros(513, 9))
