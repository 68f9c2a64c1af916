"""Spectral likelihoods: raw-channel conventions against scipy, the IS minimiser, edge gradients, bad input,
and maximum-likelihood fits on real VCTK spectra."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.optimize import brentq
from scipy.special import digamma

from genlib.likelihoods import (
    ComplexLaplace,
    ComplexNormal,
    Gamma,
    GammaVonMises,
    ItakuraSaito,
    LogNormalVonMises,
    positive,
)
from tests._paths import SHARED_DATA

VCTK = SHARED_DATA / "speech" / "vctk16k"
SPECTRAL = [Gamma, ItakuraSaito, LogNormalVonMises, GammaVonMises, ComplexNormal, ComplexLaplace]
COMPLEX_ONLY = [LogNormalVonMises, GammaVonMises, ComplexNormal, ComplexLaplace]


def _data(seed=0, shape=(3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    r = torch.from_numpy(np.random.default_rng(seed).gamma(2.0, 1.0, size=shape)) + 1e-3
    theta = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    x = torch.polar(r.double(), theta)
    raw_gen = lambda n: torch.randn(shape[0], n, *shape[1:], generator=g, dtype=torch.float64)  # noqa: E731
    return x, r.double().numpy(), theta.numpy(), raw_gen


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def test_channels_map_to_the_documented_parameters_and_scipy_densities():
    x, r, theta, raw_of = _data()
    fl = 1e-6
    # Gamma: alpha, beta
    raw = raw_of(2)
    a, b = (fl + np.exp(raw[:, i].numpy()) for i in range(2))
    d = Gamma()(raw)
    np.testing.assert_allclose(d.log_prob(x).numpy(), stats.gamma.logpdf(r, a, scale=1 / b), rtol=1e-10)
    np.testing.assert_allclose(d.magnitude_mean.numpy(), a / b, rtol=1e-12)
    np.testing.assert_allclose(d.magnitude_precision.numpy(), a, rtol=1e-12)
    # Itakura-Saito: v = mean power
    raw = raw_of(1)
    v = 1e-12 + np.exp(raw[:, 0].numpy())
    lik = ItakuraSaito(concentration=2.0)
    ref = stats.gamma.logpdf(r**2, 2.0, scale=v / 2.0) + np.log(2 * r)
    np.testing.assert_allclose(lik.log_prob(x, raw).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(lik(raw).power.numpy(), v, rtol=1e-12)
    # LogNormal-von Mises: m, s, mu, kappa
    raw = raw_of(4)
    m, s, mu, k = (
        raw[:, 0].numpy(),
        fl + np.exp(raw[:, 1].numpy()),
        raw[:, 2].numpy(),
        np.exp(raw[:, 3].numpy()),
    )
    d = LogNormalVonMises()(raw)
    ref = (
        stats.lognorm.logpdf(r, s, scale=np.exp(m)) + stats.vonmises.logpdf(_wrap(theta - mu), k) - np.log(r)
    )
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-9)
    np.testing.assert_allclose(d.phase_concentration.numpy(), k, rtol=1e-12)
    np.testing.assert_allclose(d.magnitude_mean.numpy(), np.exp(m + s**2 / 2), rtol=1e-12)
    np.testing.assert_allclose(d.magnitude_precision.numpy(), 1 / np.expm1(s**2), rtol=1e-9)
    # Gamma-von Mises: alpha, beta, mu, kappa
    raw = raw_of(4)
    a, b = fl + np.exp(raw[:, 0].numpy()), fl + np.exp(raw[:, 1].numpy())
    mu, k = raw[:, 2].numpy(), np.exp(raw[:, 3].numpy())
    d = GammaVonMises()(raw)
    ref = stats.gamma.logpdf(r, a, scale=1 / b) + stats.vonmises.logpdf(_wrap(theta - mu), k) - np.log(r)
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-9)
    np.testing.assert_allclose(np.cos(d.phase_loc.numpy() - mu), 1.0, rtol=1e-12)
    # Complex normal / Laplace: Re mu, Im mu, scale
    raw = raw_of(3)
    loc = raw[:, 0].numpy() + 1j * raw[:, 1].numpy()
    sc = fl + np.exp(raw[:, 2].numpy())
    xn = x.numpy()
    ref = -np.log(np.pi * sc**2) - np.abs(xn - loc) ** 2 / sc**2
    np.testing.assert_allclose(ComplexNormal().log_prob(x, raw).numpy(), ref, rtol=1e-10)
    ref = stats.gamma.logpdf(np.abs(xn - loc), 2.0, scale=sc) - np.log(2 * np.pi * np.abs(xn - loc))
    np.testing.assert_allclose(ComplexLaplace().log_prob(x, raw).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(ComplexLaplace().mean(raw).numpy(), loc)


def test_magnitude_models_accept_magnitudes_and_complex_bins_alike():
    x, _, _, raw_of = _data(seed=3)
    for lik in (Gamma(), ItakuraSaito()):
        raw = raw_of(lik.n_params)
        torch.testing.assert_close(lik.log_prob(x, raw), lik.log_prob(x.abs(), raw))


def test_gamma_von_mises_with_vanishing_concentration_is_gamma_with_uniform_phase():
    x, r, _, raw_of = _data(seed=4)
    raw = raw_of(4)
    raw[:, 3] = -1e4  # kappa = exp(-1e4) = 0
    a, b = 1e-6 + np.exp(raw[:, 0].numpy()), 1e-6 + np.exp(raw[:, 1].numpy())
    ref = stats.gamma.logpdf(r, a, scale=1 / b) - np.log(2 * np.pi * r)
    np.testing.assert_allclose(GammaVonMises().log_prob(x, raw).numpy(), ref, rtol=1e-10)
    torch.testing.assert_close(GammaVonMises().log_prob(x, raw), Gamma()(raw[:, :2]).plane_log_prob(x))


def test_itakura_saito_nll_is_the_is_divergence_and_is_minimised_at_the_observed_power():
    power = torch.tensor([1e-4, 0.3, 2.0, 50.0], dtype=torch.float64)
    x = torch.polar(power.sqrt(), torch.tensor([0.1, -2.0, 3.0, 1.0], dtype=torch.float64))
    grid = torch.logspace(-6, 3, 9001, dtype=torch.float64)  # candidate model variances v
    for alpha in (1.0, 3.0):
        lik = ItakuraSaito(concentration=alpha, floor=1e-300)  # no floor: v is exactly the grid
        raw = torch.log(grid)[:, None, None].expand(-1, 1, 4)
        nll = -lik.log_prob(x.expand(len(grid), 4), raw)  # (V, 4)
        best = grid[nll.argmin(0)]
        torch.testing.assert_close(best, power, rtol=3e-3, atol=0)  # grid spacing is 0.23%
        # NLL(v) - NLL(|x|^2) = alpha * d_IS(|x|^2 | v), exactly
        ratio = power / grid[:, None]
        d_is = ratio - torch.log(ratio) - 1
        at_truth = -lik.log_prob(x[None], torch.log(power)[None, None])
        torch.testing.assert_close(nll - at_truth, alpha * d_is, rtol=1e-7, atol=1e-9)


def _all_raw_combinations(n_params, values):
    combos = torch.tensor(list(itertools.product(values, repeat=n_params)), dtype=torch.float32)  # (K, P)
    return combos.T[None]  # (1, P, K)


@pytest.mark.parametrize("cls", SPECTRAL)
def test_gradients_are_finite_at_the_edges_of_the_support(cls):
    lik = cls()
    raw = _all_raw_combinations(lik.n_params, [-1e4, -60.0, 0.0, 60.0, 1e4])
    k = raw.shape[-1]
    mags = torch.tensor([0.0, 1e-30, 1e-3, 1.0, 1e3])
    phases = torch.tensor([0.0, 3.0, -1.0, 2.0, -3.1])
    for m, p in zip(mags, phases):
        raw_ = raw.clone().requires_grad_()
        x = torch.polar(m.expand(1, k), p.expand(1, k))
        lp = lik.log_prob(x, raw_)
        assert torch.isfinite(lp).all(), f"{cls.__name__}: non-finite log-density at |x|={m}"
        (grad,) = torch.autograd.grad(lp.sum(), raw_)
        assert torch.isfinite(grad).all(), f"{cls.__name__}: non-finite gradient at |x|={m}"


@pytest.mark.parametrize("cls", SPECTRAL)
def test_bad_input_raises_value_errors_that_name_the_problem(cls):
    lik = cls()
    x = torch.polar(torch.rand(2, 6) + 0.1, torch.rand(2, 6))
    raw = torch.randn(2, lik.n_params, 6)
    with pytest.raises(ValueError, match=rf"n_params={lik.n_params}"):
        lik(torch.randn(2, lik.n_params + 1, 6))
    with pytest.raises(ValueError, match="raw must have shape"):
        lik(torch.randn(6))
    with pytest.raises(ValueError, match="raw contains NaN"):
        lik(raw.index_fill(2, torch.tensor([3]), float("nan")))
    with pytest.raises(ValueError, match="x contains NaN"):
        lik.log_prob(x.index_fill(1, torch.tensor([0]), complex("nan")), raw)
    with pytest.raises(ValueError, match=r"x must have shape \(B, \*data_shape\) = \(2, 6\)"):
        lik.log_prob(x[:, :5], raw)
    with pytest.raises(ValueError, match="raw must be a real tensor"):
        lik(raw.to(torch.cfloat))
    if cls in COMPLEX_ONLY:
        with pytest.raises(ValueError, match="must be a complex tensor"):
            lik.log_prob(x.abs(), raw)
    else:
        with pytest.raises(ValueError, match="non-negative magnitudes"):
            lik.log_prob(-x.abs(), raw)


def test_constructor_arguments_are_validated():
    with pytest.raises(ValueError, match="concentration"):
        ItakuraSaito(concentration=0.0)
    with pytest.raises(ValueError, match="floor"):
        Gamma(floor=-1.0)


def test_sample_and_mean_follow_the_raw_parameters():
    torch.manual_seed(0)
    raw = torch.zeros(20_000, 4, 1, dtype=torch.float64)
    raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3] = math.log(3.0), math.log(2.0), 1.0, math.log(5.0)
    lik = GammaVonMises()
    x = lik.sample(raw)
    assert float(x.abs().mean()) == pytest.approx(1.5, rel=0.02)  # alpha / beta
    assert complex(x.mean()) == pytest.approx(complex(lik.mean(raw)[0, 0]), abs=0.03)
    # the von Mises circular mean of the phase is mu
    assert float(torch.angle(torch.polar(torch.ones_like(x.real), torch.angle(x)).mean())) == pytest.approx(
        1.0, abs=0.02
    )


# -- real speech ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spectrum():
    """|STFT| of one real VCTK utterance, 64 low bins x all frames (float64), frames with signal only."""
    sf = pytest.importorskip("soundfile")
    files = sorted(VCTK.glob("p225/*.wav"))
    if not files:
        pytest.skip(f"VCTK wavs not found under {VCTK}")
    wav, _ = sf.read(files[0], dtype="float64")
    spec = torch.stft(torch.from_numpy(wav), 512, 128, window=torch.hann_window(512, dtype=torch.float64),
                      return_complex=True)[4:68]  # fmt: skip
    energy = spec.abs().square().sum(0)
    return spec[:, energy > energy.median()]  # (64, T)


def _fit(lik, x, init):
    """Per-bin raw parameters shared across frames, maximising the summed log-likelihood (L-BFGS)."""
    t = x.shape[1]
    raw = init.clone().requires_grad_()
    opt = torch.optim.LBFGS(
        [raw],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )
    xb = x.T[:, :, None]  # frames as the batch: (T, F, 1)

    def closure():
        opt.zero_grad()
        loss = -lik.log_prob(xb, raw.expand(t, -1, -1, -1)).mean(0).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return raw.detach()[0, :, :, 0]  # (P, F)


def test_itakura_saito_fit_on_real_speech_reaches_the_mean_power_per_bin(spectrum):
    # The MLE of the mean power v of Gamma(alpha, alpha / v) powers is their sample mean, for any alpha.
    init = torch.log(spectrum.abs().square().mean(1))[None, None, :, None] + 1.0  # start e-fold away
    raw = _fit(ItakuraSaito(concentration=1.0), spectrum, init)
    v = positive(raw[0], 1e-12)
    torch.testing.assert_close(v, spectrum.abs().square().mean(1), rtol=1e-6, atol=0)


def test_gamma_fit_on_real_speech_solves_the_gamma_mle_equations(spectrum):
    # Gamma MLE: beta = alpha / mean(r), and log(alpha) - digamma(alpha) = log(mean r) - mean(log r).
    r = spectrum.abs()
    init = torch.zeros(1, 2, r.shape[0], 1, dtype=torch.float64)
    init[0, 1, :, 0] = -torch.log(r.mean(1))
    raw = _fit(Gamma(), spectrum, init)
    alpha, beta = positive(raw[0], 1e-6), positive(raw[1], 1e-6)
    s = (torch.log(r.mean(1)) - torch.log(r).mean(1)).numpy()
    ref = np.array([brentq(lambda a, si=si: np.log(a) - digamma(a) - si, 1e-4, 1e4) for si in s])
    np.testing.assert_allclose(alpha.numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose((alpha / beta).numpy(), r.mean(1).numpy(), rtol=1e-6)


def test_itakura_saito_learned_shape_is_gamma_on_power_with_rate_one_over_y():
    # eq. 6.11-6.12 as written: shape alpha from the network, rate 1 / y; scored as a density over |x|
    x, r, _, raw_of = _data(seed=7)
    lik = ItakuraSaito(concentration="decoder")
    assert lik.n_params == 2 and lik.learned_shape and not ItakuraSaito().learned_shape
    raw = raw_of(2)
    y, a = 1e-12 + np.exp(raw[:, 0].numpy()), 1e-6 + np.exp(raw[:, 1].numpy())
    ref = stats.gamma.logpdf(r**2, a, scale=y) + np.log(2 * r)
    np.testing.assert_allclose(lik.log_prob(x, raw).numpy(), ref, rtol=1e-10)
    d = lik(raw)
    np.testing.assert_allclose(d.power.numpy(), a * y, rtol=1e-12)  # mean power alpha * y
    np.testing.assert_allclose(d.concentration.numpy(), a, rtol=1e-12)
    # the precision map now varies with the learned shape (a fixed shape gives a constant map)
    assert d.magnitude_precision.std() > 1 and ItakuraSaito()(raw[:, :1]).magnitude_precision.std() < 1e-12
    # as a function of (alpha, y), eq. 6.12's NLL differs from ours only by a term free of the parameters
    p = r**2
    eq612 = p / y - a * np.log(p / y) + torch.lgamma(torch.from_numpy(a)).numpy() + 2 * np.log(p)
    gap = eq612 + lik.log_prob(x, raw).numpy()
    np.testing.assert_allclose(gap, np.log(p) + np.log(2 * r), rtol=1e-9, atol=1e-9)
    # alpha = 1 (raw[:, 1] = 0 up to the floor) agrees with the fixed-shape model at v = y
    raw1 = torch.stack([raw[:, 0], torch.full_like(raw[:, 0], math.log(1 - 1e-6))], 1)
    torch.testing.assert_close(lik.log_prob(x, raw1), ItakuraSaito().log_prob(x, raw[:, :1]))
    # ...and not elsewhere: the fixed shape cannot express alpha != 1
    raw2 = torch.stack([raw[:, 0], torch.full_like(raw[:, 0], math.log(3.0))], 1)
    assert not torch.allclose(lik.log_prob(x, raw2), ItakuraSaito().log_prob(x, raw[:, :1]))
    with pytest.raises(ValueError, match=r"n_params=2"):
        lik(raw[:, :1])
    with pytest.raises(ValueError, match="concentration must be a positive float or 'decoder'"):
        ItakuraSaito(concentration="learned")


def test_itakura_saito_learned_shape_round_trips_through_a_saved_vae(tmp_path):
    from genlib.models import VAE
    from genlib.nn import MLPDecoder, MLPEncoder

    lik = ItakuraSaito(concentration="decoder")
    vae = VAE(MLPEncoder((6,), 2, hidden=(8,)), MLPDecoder(2, (6,), n_params=lik.n_params, hidden=(8,)), lik)
    vae.save(tmp_path / "vae.pt")
    back = VAE.load(tmp_path / "vae.pt")
    assert back.likelihood.learned_shape and back.likelihood.n_params == 2
