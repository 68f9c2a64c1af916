"""The spectral densities against scipy.stats (plus each Jacobian), normalisation and their samplers."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import quad, quad_vec
from torch.distributions import Gamma, LogNormal

from genlib.likelihoods.distributions import (
    CircularComplexLaplace,
    CircularComplexNormal,
    GammaMagnitude,
    ItakuraSaitoMagnitude,
    PolarVonMises,
    StableVonMises,
    log_i0,
    mean_resultant_length,
)

D64 = torch.float64


def _points(n, seed=0, scale=2.0):
    g = np.random.default_rng(seed)
    r = g.gamma(2.0, scale / 2, size=n) + 1e-3
    theta = g.uniform(-math.pi, math.pi, size=n)
    return r, theta, torch.polar(torch.tensor(r), torch.tensor(theta))


def _params(n, seed=1):
    g = np.random.default_rng(seed)
    return [
        torch.tensor(g.uniform(lo, hi, size=n))
        for lo, hi in ((0.5, 4.0), (0.3, 3.0), (-3.0, 3.0), (0.0, 8.0))
    ]


def _wrap(a):
    return (a + math.pi) % (2 * math.pi) - math.pi


# -- log-densities equal scipy plus the Jacobian -----------------------------------------------------------
def test_gamma_magnitude_is_scipy_gamma_at_the_modulus():
    r, _, x = _points(50)
    a, b, _, _ = _params(50)
    ref = stats.gamma.logpdf(r, a.numpy(), scale=1 / b.numpy())
    d = GammaMagnitude(a, b)
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(d.log_prob(torch.tensor(r)).numpy(), ref, rtol=1e-10, atol=1e-10)
    # on the plane with a uniform phase: p(r) / (2 pi r)
    np.testing.assert_allclose(d.plane_log_prob(x).numpy(), ref - np.log(2 * np.pi * r), rtol=1e-10)


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_itakura_saito_is_a_gamma_on_power_with_the_2r_jacobian(alpha):
    r, _, x = _points(40, seed=2)
    v = _params(40, seed=3)[1]
    ref = stats.gamma.logpdf(r**2, alpha, scale=v.numpy() / alpha) + np.log(2 * r)
    np.testing.assert_allclose(ItakuraSaitoMagnitude(v, alpha).log_prob(x).numpy(), ref, rtol=1e-10)
    if alpha == 1.0:  # exponential power <=> CN(0, v) on the bin: magnitude is Rayleigh with sigma^2 = v / 2
        np.testing.assert_allclose(
            ItakuraSaitoMagnitude(v).log_prob(x).numpy(),
            stats.rayleigh.logpdf(r, scale=np.sqrt(v / 2)),
            rtol=1e-10,
        )
        cn = CircularComplexNormal(torch.zeros(40, dtype=torch.complex128), v.sqrt())
        torch.testing.assert_close(ItakuraSaitoMagnitude(v).plane_log_prob(x), cn.log_prob(x))


def test_gamma_von_mises_is_gamma_times_von_mises_over_r():
    r, theta, x = _points(60, seed=4)
    a, b, mu, k = _params(60, seed=5)
    d = PolarVonMises(Gamma(a, b), mu, k)
    ref = (
        stats.gamma.logpdf(r, a.numpy(), scale=1 / b.numpy())
        + stats.vonmises.logpdf(_wrap(theta - mu.numpy()), k.numpy())
        - np.log(r)
    )
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-9, atol=1e-9)


def test_lognormal_von_mises_is_lognormal_times_von_mises_over_r():
    r, theta, x = _points(60, seed=6)
    m, s, mu, k = _params(60, seed=7)
    m = m - 1.5
    d = PolarVonMises(LogNormal(m, s), mu, k)
    ref = (
        stats.lognorm.logpdf(r, s.numpy(), scale=np.exp(m.numpy()))
        + stats.vonmises.logpdf(_wrap(theta - mu.numpy()), k.numpy())
        - np.log(r)
    )
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-9, atol=1e-9)


def test_complex_normal_is_two_real_normals_with_half_the_variance():
    _, _, x = _points(50, seed=8)
    mu = torch.complex(*(torch.randn(2, 50, dtype=D64, generator=torch.Generator().manual_seed(0))))
    sigma = _params(50, seed=9)[1]
    sd = sigma.numpy() / np.sqrt(2)
    ref = stats.norm.logpdf(x.real, mu.real, sd) + stats.norm.logpdf(x.imag, mu.imag, sd)
    d = CircularComplexNormal(mu, sigma)
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-10)
    closed = -np.log(np.pi * sigma.numpy() ** 2) - (x - mu).abs().numpy() ** 2 / sigma.numpy() ** 2
    np.testing.assert_allclose(d.log_prob(x).numpy(), closed, rtol=1e-10)


def test_complex_laplace_is_a_gamma2_radius_with_uniform_angle():
    _, _, x = _points(50, seed=10)
    mu = torch.complex(*(torch.randn(2, 50, dtype=D64, generator=torch.Generator().manual_seed(1))))
    b = _params(50, seed=11)[1]
    rad = (x - mu).abs().numpy()
    ref = stats.gamma.logpdf(rad, 2.0, scale=b.numpy()) - np.log(2 * np.pi * rad)
    np.testing.assert_allclose(CircularComplexLaplace(mu, b).log_prob(x).numpy(), ref, rtol=1e-10)


def test_stable_von_mises_matches_scipy_and_has_finite_gradients_everywhere():
    theta = torch.linspace(-3, 3, 7, dtype=D64)
    k = torch.tensor([0.0, 1e-8, 0.5, 3.0, 50.0, 1e4, 1e7], dtype=D64, requires_grad=True)
    lp = StableVonMises(torch.full_like(theta, 0.4), k).log_prob(theta)
    kn = k.detach().numpy()
    ref = stats.vonmises.logpdf(_wrap(theta.numpy() - 0.4), np.maximum(kn, 1e-300))
    np.testing.assert_allclose(lp.detach().numpy()[:6], ref[:6], rtol=1e-9)
    lp.sum().backward()
    assert torch.isfinite(k.grad).all()  # torch's VonMises gives NaN at both ends
    from scipy.special import i0, i0e, i1e

    np.testing.assert_allclose(log_i0(k.detach()).numpy()[:5], np.log(i0(kn[:5])), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(log_i0(k.detach()).numpy(), np.log(i0e(kn)) + kn, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mean_resultant_length(k.detach()).numpy(), i1e(kn) / i0e(kn), rtol=1e-12)


# -- kappa -> 0 ---------------------------------------------------------------------------------------------
def test_gamma_von_mises_with_zero_concentration_is_gamma_with_uniform_phase():
    r, _, x = _points(40, seed=12)
    a, b, mu, _ = _params(40, seed=13)
    uniform = stats.gamma.logpdf(r, a.numpy(), scale=1 / b.numpy()) - np.log(2 * np.pi * r)
    for k in (0.0, 1e-9):
        d = PolarVonMises(Gamma(a, b), mu, torch.full_like(a, k))
        np.testing.assert_allclose(d.log_prob(x).numpy(), uniform, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        PolarVonMises(Gamma(a, b), mu, 0.0).log_prob(x), GammaMagnitude(a, b).plane_log_prob(x)
    )


# -- each density integrates to 1 ---------------------------------------------------------------------------
def _magnitude_integral(dist):
    f = lambda r: math.exp(dist.log_prob(torch.tensor(r, dtype=D64)).item())  # noqa: E731
    return quad(f, 0, np.inf, epsabs=1e-11, epsrel=1e-10, limit=200)[0]


def _plane_integral(dist, center=0j, n_theta=512, log_prob=None):
    """int p(x) dA in polar coordinates about `center`: trapezoid in theta (exact for periodic analytic
    integrands), adaptive quadrature in r."""
    log_prob = log_prob or dist.log_prob
    theta = torch.arange(n_theta, dtype=D64) * (2 * math.pi / n_theta)

    def ring(r):
        x = complex(center) + torch.polar(torch.full_like(theta, r), theta)
        return torch.exp(log_prob(x)).numpy() * r

    val = quad_vec(ring, 0, np.inf, epsabs=1e-12, epsrel=1e-10, limit=400)[0]
    return val.sum() * (2 * math.pi / n_theta)


@pytest.mark.parametrize("a,b", [(0.8, 2.0), (1.0, 0.5), (6.0, 3.0)])
def test_gamma_magnitude_integrates_to_one_over_magnitude_and_over_the_plane(a, b):
    d = GammaMagnitude(torch.tensor(a, dtype=D64), torch.tensor(b, dtype=D64))
    assert _magnitude_integral(d) == pytest.approx(1.0, abs=1e-6)
    if a >= 1:
        assert _plane_integral(d, log_prob=d.plane_log_prob) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("alpha,v", [(1.0, 2.0), (0.7, 0.3), (4.0, 5.0)])
def test_itakura_saito_integrates_to_one_over_magnitude(alpha, v):
    d = ItakuraSaitoMagnitude(torch.tensor(v, dtype=D64), alpha)
    assert _magnitude_integral(d) == pytest.approx(1.0, abs=1e-6)
    assert _plane_integral(d, log_prob=d.plane_log_prob) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("k", [0.0, 2.0, 15.0])
def test_polar_von_mises_densities_integrate_to_one_over_the_plane(k):
    t = lambda v: torch.tensor(v, dtype=D64)  # noqa: E731
    for magnitude in (Gamma(t(2.5), t(1.5)), Gamma(t(1.0), t(4.0)), LogNormal(t(-0.5), t(0.6))):
        d = PolarVonMises(magnitude, t(1.0), t(k))
        assert _plane_integral(d) == pytest.approx(1.0, abs=1e-6)


def test_polar_density_without_the_jacobian_would_not_integrate_to_one():
    # The check has teeth: p_R(r) p_VM(theta), without / r, integrates to E[r] = alpha / beta.
    t = lambda v: torch.tensor(v, dtype=D64)  # noqa: E731
    d = PolarVonMises(Gamma(t(3.0), t(1.0)), t(0.0), t(2.0))
    no_jacobian = lambda x: d.log_prob(x) + torch.log(x.abs())  # noqa: E731
    assert _plane_integral(d, log_prob=no_jacobian) == pytest.approx(3.0, abs=1e-5)


@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_complex_normal_and_laplace_integrate_to_one_over_the_plane(scale):
    mu = torch.tensor(0.7 - 1.2j, dtype=torch.complex128)
    s = torch.tensor(scale, dtype=D64)
    for d in (CircularComplexNormal(mu, s), CircularComplexLaplace(mu, s)):
        assert _plane_integral(d, center=mu.item()) == pytest.approx(1.0, abs=1e-6)
    # About the origin too, and on a Cartesian grid for the Gaussian (no cusp).
    assert _plane_integral(CircularComplexNormal(mu, s)) == pytest.approx(1.0, abs=1e-5)
    h = scale / 40
    grid = torch.arange(-10 * scale, 10 * scale, h, dtype=D64)
    xr, xi = torch.meshgrid(grid + mu.real, grid + mu.imag, indexing="ij")
    dens = torch.exp(CircularComplexNormal(mu, s).log_prob(torch.complex(xr, xi)))
    assert float(dens.sum() * h * h) == pytest.approx(1.0, abs=1e-6)


# -- samplers and moments -----------------------------------------------------------------------------------
N = 40_000


def _ks(samples, cdf):
    return stats.kstest(samples.numpy().ravel(), cdf).pvalue


def test_samplers_match_their_densities():
    torch.manual_seed(0)
    t = lambda v: torch.tensor(v, dtype=D64)  # noqa: E731
    # Gamma magnitude
    r = GammaMagnitude(t(2.0), t(3.0)).sample((N,))
    assert _ks(r, stats.gamma(2.0, scale=1 / 3).cdf) > 1e-3
    # IS: power is Gamma(alpha, scale v / alpha)
    r = ItakuraSaitoMagnitude(t(2.0), 1.5).rsample((N,))
    assert _ks(r.square(), stats.gamma(1.5, scale=2.0 / 1.5).cdf) > 1e-3
    # Polar: magnitude and phase separately, and the phase of a zero-concentration model is uniform
    x = PolarVonMises(Gamma(t(2.0), t(1.0)), t(2.5), t(3.0)).sample((N,))
    assert _ks(x.abs(), stats.gamma(2.0).cdf) > 1e-3
    assert _ks(_wrap(torch.angle(x) - 2.5), stats.vonmises(3.0).cdf) > 1e-3
    x = PolarVonMises(LogNormal(t(0.0), t(0.5)), t(0.0), t(0.0)).sample((N,))
    assert _ks(torch.angle(x), stats.uniform(-math.pi, 2 * math.pi).cdf) > 1e-3
    # Complex normal: real part N(Re mu, sigma^2 / 2); Laplace: |x - mu| / b ~ Gamma(2)
    mu = torch.tensor(1.0 + 2.0j, dtype=torch.complex128)
    x = CircularComplexNormal(mu, t(0.8)).rsample((N,))
    assert _ks(x.real, stats.norm(1.0, 0.8 / math.sqrt(2)).cdf) > 1e-3
    assert _ks(x.imag, stats.norm(2.0, 0.8 / math.sqrt(2)).cdf) > 1e-3
    x = CircularComplexLaplace(mu, t(0.8)).rsample((N,))
    assert _ks((x - mu).abs() / 0.8, stats.gamma(2.0).cdf) > 1e-3
    assert _ks(torch.angle(x - mu), stats.uniform(-math.pi, 2 * math.pi).cdf) > 1e-3


@pytest.mark.parametrize(
    "make",
    [
        lambda t: GammaMagnitude(t(2.0), t(3.0)),
        lambda t: ItakuraSaitoMagnitude(t(2.0)),
        lambda t: ItakuraSaitoMagnitude(t(0.5), 3.0),
        lambda t: PolarVonMises(Gamma(t(2.0), t(1.0)), t(2.5), t(1.5)),
        lambda t: PolarVonMises(LogNormal(t(-0.3), t(0.4)), t(-1.0), t(4.0)),
        lambda t: CircularComplexNormal(t(1.0) + 2j, t(0.8)),
        lambda t: CircularComplexLaplace(t(-1.0) + 0.5j, t(0.8)),
    ],
)
def test_mean_variance_and_magnitude_mean_match_monte_carlo(make):
    torch.manual_seed(1)
    d = make(lambda v: torch.tensor(v, dtype=D64))
    x = d.sample((200_000,))
    tol = 5 * math.sqrt(float(d.variance) / x.shape[0])
    assert abs(complex(x.mean()) - complex(d.mean)) < tol
    var = (x - x.mean()).abs().square().mean()
    assert float(var) == pytest.approx(float(d.variance), rel=0.02)
    if hasattr(d, "magnitude_mean"):
        assert float(x.abs().mean()) == pytest.approx(float(d.magnitude_mean), abs=tol)
        m, v = x.abs().mean(), x.abs().var()
        assert float(m**2 / v) == pytest.approx(float(d.magnitude_precision), rel=0.03)


def test_polar_mean_shrinks_with_phase_uncertainty_but_resynthesis_keeps_the_magnitude():
    t = lambda v: torch.tensor(v, dtype=D64)  # noqa: E731
    d = PolarVonMises(Gamma(t(4.0), t(2.0)), t(0.5), t(1.0))
    a = float(mean_resultant_length(t(1.0)))
    assert complex(d.mean) == pytest.approx(2.0 * a * complex(math.cos(0.5), math.sin(0.5)))
    assert complex(d.resynthesize()) == pytest.approx(2.0 * complex(math.cos(0.5), math.sin(0.5)))
    assert complex(d.resynthesize(t(-1.0))) == pytest.approx(2.0 * complex(math.cos(-1.0), math.sin(-1.0)))
    assert float(d.magnitude_precision) == pytest.approx(4.0)
    assert float(PolarVonMises(Gamma(t(4.0), t(2.0)), t(7.0), t(1.0)).phase_loc) == pytest.approx(
        7.0 - 2 * math.pi
    )


def test_bad_values_and_parameters_raise_clear_errors():
    t = lambda v: torch.tensor(v, dtype=D64)  # noqa: E731
    with pytest.raises(ValueError, match="non-negative magnitudes"):
        GammaMagnitude(t(1.0), t(1.0)).log_prob(t([0.5, -0.1]))
    with pytest.raises(ValueError, match="complex tensor"):
        CircularComplexLaplace(t(0.0), t(1.0)).log_prob(t([0.5]))
    with pytest.raises(ValueError, match="complex tensor"):
        PolarVonMises(Gamma(t(1.0), t(1.0)), t(0.0), t(1.0)).log_prob(t([0.5]))
    with pytest.raises(ValueError, match="NaN"):
        CircularComplexNormal(t(0.0), t(1.0)).log_prob(torch.tensor([complex("nan+1j")]))
    with pytest.raises(ValueError, match="dtype"):
        ItakuraSaitoMagnitude(t(1.0)).log_prob(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="scale"):
        CircularComplexNormal(t(0.0), t(-1.0))
    with pytest.raises(ValueError, match="concentration"):
        PolarVonMises(Gamma(t(1.0), t(1.0)), t(0.0), t(-1.0))
    with pytest.raises(ValueError, match="magnitude must be"):
        PolarVonMises(torch.distributions.Normal(t(0.0), t(1.0)), t(0.0), t(1.0))
