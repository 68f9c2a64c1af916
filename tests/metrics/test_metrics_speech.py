"""PESQ / STOI / ESTOI / LSD on real speech: maxima, monotonicity in noise, Voicebank pairs, policy for
undefined input, and argument errors."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from genlib.metrics import (
    PESQ_MAX,
    UndefinedMetricWarning,
    lsd,
    pesq,
    pesq_batch,
    spectral_convergence,
    stoi,
)
from tests._paths import SHARED_DATA

DATA = SHARED_DATA / "speech"


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        pytest.skip(f"real speech file not found at {path}")
    wav, sr = sf.read(path, dtype="float64")
    assert sr == 16000
    return wav


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return _read(DATA / "vctk16k" / "p226" / "p226_011.wav")[: 3 * 16000]


@pytest.fixture(scope="module")
def noisy_levels(clean):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(len(clean))
    return [clean + s * noise for s in (0.002, 0.01, 0.05)]


def test_pesq_of_a_signal_against_itself_is_the_maximum(clean):
    assert pesq(clean, clean, mode="wb") == pytest.approx(PESQ_MAX["wb"], abs=0.01)
    assert pesq(torch.from_numpy(clean), torch.from_numpy(clean), mode="nb") == pytest.approx(
        PESQ_MAX["nb"], abs=0.01
    )


def test_scores_decrease_monotonically_with_noise(clean, noisy_levels):
    for metric in (
        lambda d: pesq(clean, d, mode="wb"),
        lambda d: pesq(clean, d, mode="nb"),
        lambda d: stoi(clean, d),
        lambda d: stoi(clean, d, extended=True),
    ):
        scores = [metric(clean)] + [metric(d) for d in noisy_levels]
        assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert stoi(clean, clean) == pytest.approx(1.0, abs=1e-9)
    distances = [float(lsd(torch.from_numpy(clean), torch.from_numpy(d))) for d in [clean, *noisy_levels]]
    assert distances[0] == 0.0 and all(a < b for a, b in zip(distances, distances[1:])), distances


def test_voicebank_noisy_pairs_score_below_clean():
    for name in ("p287_001.wav", "p287_004.wav"):
        ref = _read(DATA / "vctk16k_noisy_pairs" / "clean" / name)
        deg = _read(DATA / "vctk16k_noisy_pairs" / "noisy" / name)
        assert pesq(ref, deg) < PESQ_MAX["wb"] - 1.0
        assert stoi(ref, deg) < stoi(ref, ref)
        assert float(lsd(torch.from_numpy(ref), torch.from_numpy(deg))) > 1.0


def test_lsd_closed_form_for_a_gain(clean):
    x = torch.from_numpy(clean)
    # Doubling the wave multiplies every power bin by 4: LSD = 10 log10 4 dB wherever the floor is not hit.
    assert float(lsd(x, 2 * x, floor=1e-30)) == pytest.approx(10 * np.log10(4), rel=1e-9)
    # Batched: one distance per row.
    batch = torch.stack([x, x])
    assert torch.allclose(
        lsd(batch, torch.stack([x, 2 * x]), floor=1e-30), torch.tensor([0, 10 * np.log10(4)]).double()
    )
    # Against silence the floor decides: a higher floor caps the distance.
    assert float(lsd(x, torch.zeros_like(x), floor=1.0)) < float(lsd(x, torch.zeros_like(x)))
    assert float(spectral_convergence(x, x)) == 0.0
    assert float(spectral_convergence(x, 2 * x)) == pytest.approx(1.0, rel=1e-9)


def test_undefined_inputs_give_nan_with_warning(clean):
    silent = np.zeros(16000)
    with pytest.warns(UndefinedMetricWarning, match="all zeros"):
        assert np.isnan(pesq(silent, silent))
    with pytest.warns(UndefinedMetricWarning, match="0.25 s"):
        assert np.isnan(pesq(clean[:2000], clean[:2000]))
    with pytest.warns(UndefinedMetricWarning, match="no speech"):  # a 20 Hz hum: P.862's filters remove it
        hum = np.sin(2 * np.pi * 20 * np.arange(16000) / 16000)
        assert np.isnan(pesq(hum, hum))
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(stoi(silent, silent))
    with pytest.warns(UndefinedMetricWarning, match="too few non-silent frames"):
        assert np.isnan(stoi(clean[:4000], clean[:4000], extended=True))
    with pytest.warns(UndefinedMetricWarning):
        scores = pesq_batch([clean, silent], [clean, silent])
    assert scores[0] == pytest.approx(PESQ_MAX["wb"], abs=0.01) and np.isnan(scores[1])


def test_bad_input_raises_clear_errors(clean):
    with pytest.raises(ValueError, match="sr must be one of \\(16000,\\) for PESQ mode 'wb'"):
        pesq(clean, clean, sr=8000, mode="wb")
    with pytest.raises(ValueError, match="sr must be one of \\(8000, 16000\\)"):
        pesq(clean, clean, sr=44100, mode="nb")
    with pytest.raises(ValueError, match="mode must be 'wb'"):
        pesq(clean, clean, mode="swb")
    with pytest.raises(ValueError, match="same length, got 48000 and 47999"):
        pesq(clean, clean[:-1])
    with pytest.raises(ValueError, match="same length"):
        stoi(clean, clean[:-1], 16000)
    with pytest.raises(ValueError, match="same shape"):
        lsd(torch.from_numpy(clean), torch.from_numpy(clean[:-1]))
    with pytest.raises(ValueError, match="ref must be a real 1-D signal"):
        pesq(np.stack([clean, clean]), clean)
    with pytest.raises(ValueError, match="deg contains NaN"):
        stoi(clean, np.full_like(clean, np.nan), 16000)
    with pytest.raises(ValueError, match="ref must be a 1-D torch.Tensor or numpy array"):
        pesq(list(clean), clean)
    with pytest.raises(ValueError, match="same number of signals"):
        pesq_batch([clean], [clean, clean])


@pytest.mark.parametrize("n", [1, 100, 400, 3000])
def test_too_short_signals_give_nan_with_warning_for_stoi_and_pesq_alike(clean, n):
    x = clean[8000 : 8000 + n]
    for metric in (stoi, lambda r, d: stoi(r, d, extended=True), pesq):
        with pytest.warns(UndefinedMetricWarning, match=r"undefined \((too few non-silent|signals have)"):
            assert np.isnan(metric(x, x))
    # the minimum is 0.3968 s whatever the rate
    with pytest.warns(UndefinedMetricWarning, match="needs at least 3175 at 8000 Hz"):
        assert np.isnan(stoi(clean[:3000], clean[:3000], sr=8000))


def test_stoi_on_clip_that_is_almost_all_silence_gives_nan():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(300), np.zeros(16000)])
    with pytest.warns(UndefinedMetricWarning, match="too few non-silent frames"):
        assert np.isnan(stoi(x, x + 1e-3 * rng.standard_normal(len(x))))
