"""Fréchet Audio Distance: closed forms, scipy reference, rank-deficient covariances, the embedding
protocol, Resemblyzer on real VCTK speakers and the VGGish loader / front end."""


import numpy as np
import pytest
import scipy.linalg
import torch

from genlib.data import load_audio
from genlib.metrics import (
    Embedding,
    ResemblyzerEmbedding,
    VGGish,
    VGGishEmbedding,
    embed_waves,
    fad,
    fad_from_audio,
    frechet_distance,
    gaussian_fit,
    vggish_examples,
)
from tests._paths import SHARED_DATA

VCTK = SHARED_DATA / "speech" / "vctk16k"


def test_identical_sets_give_zero():
    e = torch.randn(300, 16, generator=torch.Generator().manual_seed(0)) @ torch.randn(16, 16)
    assert fad(e, e) == pytest.approx(0.0, abs=1e-9)
    assert fad(e.numpy(), e.numpy().copy()) == pytest.approx(0.0, abs=1e-9)


def test_closed_form_for_diagonal_gaussians():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = (
        torch.randn(8, generator=g, dtype=torch.float64),
        torch.randn(8, generator=g, dtype=torch.float64),
    )
    s1 = torch.rand(8, generator=g, dtype=torch.float64) + 0.1  # standard deviations
    s2 = torch.rand(8, generator=g, dtype=torch.float64) + 0.1
    expected = float((mu1 - mu2).square().sum() + (s1 - s2).square().sum())
    got = frechet_distance(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2), eps=0.0)
    assert got == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2)) == pytest.approx(
        expected, rel=1e-8
    )


def test_matches_scipy_reference_on_well_conditioned_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((500, 10)), rng.standard_normal((400, 10)) @ rng.standard_normal((10, 10)) + 1
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = (
        np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    )
    assert fad(a, b, eps=0.0) == pytest.approx(ref, rel=1e-9)
    mu, cov = gaussian_fit(a)
    assert np.allclose(mu.numpy(), m1) and np.allclose(cov.numpy(), c1)


def test_rank_deficient_covariances_stay_real_nonnegative_and_exact():
    # Fewer samples than dimensions: both covariances are singular. The trace term has an exact
    # independent form: tr sqrt(S1^1/2 S2 S1^1/2) = ||X1c X2c^T||_* / sqrt((n1-1)(n2-1)) for centred data.
    rng = np.random.default_rng(3)
    for trial in range(5):
        x1 = rng.standard_normal((12, 64))
        x2 = 0.5 * rng.standard_normal((9, 64)) + (0.1 if trial % 2 else 0.0)
        got = fad(x1, x2, eps=0.0)
        c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
        tr_sqrt = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt(11 * 8)
        exact = (
            np.sum((x1.mean(0) - x2.mean(0)) ** 2)
            + np.trace(np.cov(x1, rowvar=False))
            + np.trace(np.cov(x2, rowvar=False))
            - 2 * tr_sqrt
        )
        assert isinstance(got, float) and got >= 0 and got == pytest.approx(exact, rel=1e-12)
    # A set against itself, rank-deficient: 0 to rounding (the scipy.linalg.sqrtm route goes negative here).
    assert 0.0 <= fad(x1, x1) < 1e-12 and 0.0 <= fad(x1, x1, eps=0.0) < 1e-12


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        fad(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="same dimension, got 4 and 3"):
        fad(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="sigma2 must have shape \\(2, 2\\)"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="embeddings contains NaN"):
        fad(torch.full((3, 2), float("nan")), torch.randn(3, 2))
    with pytest.raises(ValueError, match="Embedding protocol"):
        embed_waves([torch.zeros(100)], embedding=lambda w: w)


class _BandEnergies:
    """A tiny deterministic embedding for plumbing tests: log energy in 4 bands per 1024-sample frame."""

    sample_rate = 8000

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(wave))
        frames = torch.stft(wave, 256, 128, window=torch.hann_window(256), return_complex=True).abs().square()
        return torch.stack([b.sum(0) for b in frames.chunk(4, dim=0)], dim=1).clamp_min(1e-8).log()


def test_fad_from_audio_resamples_and_matches_fad():
    g = torch.Generator().manual_seed(4)
    real = [torch.randn(16000, generator=g) * torch.linspace(0, 1, 16000) for _ in range(3)]
    fake = [torch.randn(16000, generator=g) * 0.3 for _ in range(3)]
    emb = _BandEnergies()
    assert isinstance(emb, Embedding)
    value = fad_from_audio(real, fake, emb, sr=16000)
    assert emb.seen == [8000] * 6  # every wave resampled to the embedding's rate
    assert value == pytest.approx(fad(embed_waves(real, emb), embed_waves(fake, emb)), rel=1e-12)
    assert value > 1.0 and fad_from_audio(torch.stack(real), torch.stack(real), emb) < 1e-9
    with pytest.raises(ValueError, match="fake_waves gave 0 embeddings"):
        fad_from_audio(real, [torch.zeros(100)], _Silent())


class _Silent:
    """An embedding that finds nothing to embed (as Resemblyzer does on pure silence)."""

    sample_rate = 16000

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.randn(3, 4) if bool(wave.any()) else torch.empty(0, 4)


@pytest.fixture(scope="module")
def vctk_embeddings() -> dict[str, list[torch.Tensor]]:
    if not VCTK.is_dir():
        pytest.skip(f"VCTK data not found at {VCTK}")
    emb = ResemblyzerEmbedding(device="cpu")
    out = {}
    for spk in ("p225", "p226", "p227"):
        files = sorted((VCTK / spk).glob("*.wav"))[:8]
        out[spk] = [emb(load_audio(f)) for f in files]
    return out


def test_resemblyzer_separates_speakers(vctk_embeddings):
    e = vctk_embeddings
    first, second = torch.cat(e["p225"][:4]), torch.cat(e["p225"][4:])
    assert first.shape[1] == 256 and torch.allclose(first.norm(dim=1), torch.ones(len(first)), atol=1e-5)
    same = fad(first, second)
    emb = ResemblyzerEmbedding(device="cpu")
    assert emb(torch.zeros(16000)).shape == (0, 256)  # silence: nothing to embed, no numpy warnings
    for other in ("p226", "p227"):
        assert fad(first, torch.cat(e[other][4:])) > 2 * same, (other, same)


def test_vggish_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"VGGish checkpoint not found: {tmp_path / 'vggish.pt'}"):
        VGGishEmbedding(tmp_path / "vggish.pt")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="not a VGGish state dict"):
        VGGish.load_checkpoint(tmp_path / "bad.pt")


def test_vggish_front_end_framing_and_mel_bands():
    sr = 16000
    t = torch.arange(2 * sr) / sr
    ex = vggish_examples(torch.sin(2 * torch.pi * 1000 * t))
    n_frames = 1 + (2 * sr - 400) // 160
    assert ex.shape == ((n_frames - 96) // 96 + 1, 1, 96, 64)
    # The loudest band is the one whose HTK-mel centre is nearest 1 kHz.
    mel = lambda f: 1127 * np.log1p(f / 700)  # noqa: E731
    centres = np.linspace(mel(125), mel(7500), 66)[1:-1]
    assert int(ex.mean(dim=(0, 1, 2)).argmax()) == int(np.abs(centres - mel(1000)).argmin())
    assert vggish_examples(torch.zeros(15000)).shape[0] == 0  # < 0.96 s of frames


def test_vggish_loads_torchaudio_style_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = VGGish().half().float()  # half-precision weights, so the fp16 file below holds them exactly
    # torchaudio names its submodules features_network / embedding_network.
    state = {
        k.replace("features.", "features_network.", 1).replace(
            "embeddings.", "embedding_network.", 1
        ): v.half()
        for k, v in src.state_dict().items()
    }
    torch.save(state, tmp_path / "vggish.pt")
    emb = VGGishEmbedding(tmp_path / "vggish.pt", device="cpu")
    wave = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = src.eval()(vggish_examples(wave))
    got = emb(wave)
    assert got.shape == (1, 128) and torch.allclose(got, expected, atol=1e-5)
