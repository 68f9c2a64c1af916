"""float32 numerics at the edges: every value float32 can represent comes out finite and matches a float64
reference to float32 precision; values whose true result overflows float32 are clamped (documented)."""

import math

import pytest
import torch

from genlib.likelihoods import ComplexNormal, Gaussian, ItakuraSaito, LogNormalVonMises
from genlib.likelihoods.base import positive

F32 = torch.finfo(torch.float32)


def _close_or_clamped(got: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    """float32 ``got`` equals float64 ``ref`` to ``rtol``, or is ``+-finfo.max`` where ``ref`` overflows."""
    assert torch.isfinite(got).all(), got
    over = ref.abs() > F32.max
    torch.testing.assert_close(got[over].double(), ref[over].sign() * F32.max, rtol=0, atol=0)
    torch.testing.assert_close(got[~over].double(), ref[~over], rtol=rtol, atol=0)


def test_lognormal_von_mises_moments_at_large_log_scale_match_float64():
    # raw[:, 1] = 2.6 gives s = 13.46, s^2 / 2 = 90.6: exp(m + s^2/2) overflows float32 for m > -1.9.
    m = torch.tensor([-30.0, -10.0, -3.0, 0.0, 5.0, 0.5])
    raw1 = torch.tensor([2.6, 2.6, 2.6, 2.6, 2.6, -1.0])
    mu = torch.tensor([0.3, -2.0, 1.0, 0.3, 3.0, 0.0])
    kappa_raw = torch.tensor([1.0, 0.0, 5.0, 1.0, -3.0, 2.0])
    raw = torch.stack([m, raw1, mu, kappa_raw], 1).unsqueeze(-1)  # (6, 4, 1)
    d = LogNormalVonMises()(raw)

    # float64 reference from the float32 parameters (so only the arithmetic differs)
    s = (1e-6 + positive(raw1)).double()
    md, kappa = m.double(), positive(kappa_raw).double()
    log_mean = md + s**2 / 2
    a = torch.special.i1e(kappa) / torch.special.i0e(kappa)
    ref_mean = torch.exp(log_mean)
    ref_var = torch.expm1(s**2) * torch.exp(2 * md + s**2) + ref_mean**2 * (1 - a**2)

    rtol = 3e-5  # exp of an argument ~90 carries ~90 float32 ulps of relative error
    mag = d.magnitude_mean.squeeze(-1)
    _close_or_clamped(mag, ref_mean, rtol)
    assert (mag == F32.max).tolist() == [False, False, False, True, True, False]
    _close_or_clamped(d.variance.squeeze(-1), ref_var, rtol)
    torch.testing.assert_close(
        d.magnitude_precision.squeeze(-1).double(), 1 / torch.expm1(s**2), rtol=1e-5, atol=1e-45
    )
    complex_mean = d.mean.squeeze(-1)
    _close_or_clamped(complex_mean.abs(), ref_mean * a, rtol)
    resynth = d.resynthesize().squeeze(-1)
    assert torch.isfinite(torch.view_as_real(resynth)).all()
    torch.testing.assert_close(resynth.abs(), mag, rtol=1e-6, atol=0)


def _is_log_prob_f64(r: torch.Tensor, v: torch.Tensor, a: float = 1.0) -> torch.Tensor:
    """log Gamma(r^2; a, a / v) + log(2 r), in float64 (where r^2 neither over- nor underflows)."""
    r, v = r.double(), v.double()
    p = r**2
    return torch.distributions.Gamma(a, a / v).log_prob(p) + math.log(2.0) + torch.log(r)


@pytest.mark.parametrize("concentration", [1.0, 2.5])
def test_itakura_saito_log_prob_at_extreme_magnitudes_matches_float64(concentration):
    lik = ItakuraSaito(concentration=concentration)
    r = torch.tensor([1e-30, 1e-25, 1e-19, 1e-3, 1.0, 3e4, 1e20, 1e30])
    raw0 = torch.tensor([0.0, -50.0, -40.0, -5.0, 0.0, 15.0, 2e29, 6e29])  # v up to ~3e38
    v = 1e-12 + positive(raw0)
    got = lik.log_prob(r.view(-1, 1), raw0.view(-1, 1, 1)).squeeze(-1)
    ref = _is_log_prob_f64(r, v, concentration)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=2e-5)
    # the old evaluation floored the power at 1.2e-38, i.e. every |x| < 1.1e-19 scored as 1.1e-19
    assert got[0] < got[1] - 10


def test_itakura_saito_log_prob_clamps_where_the_true_value_overflows():
    # |x| = 1e20 against v = 1: log p = -1e40, below -finfo32.max; was NaN.
    lp = ItakuraSaito().log_prob(torch.tensor([[1e20]]), torch.zeros(1, 1, 1))
    assert lp.item() == -F32.max


def test_gaussian_large_residual_over_large_sigma_is_finite_and_exact():
    x = torch.tensor([[1e20, -3e25, 2.0]])
    mu = torch.tensor([[0.0, 5e24, 1.0]])
    for lik, raw, sigma in (
        (Gaussian("decoder"), torch.stack([mu, torch.tensor([[41.0, 60.0, 0.0]])], 1), None),
        (Gaussian(1e12), mu.unsqueeze(1), torch.full((1, 3), 1e12)),
    ):
        if sigma is None:
            sigma = lik.min_sigma + positive(raw[:, 1])
        got = lik.log_prob(x, raw)
        z = (x.double() - mu.double()) / sigma.double()
        ref = -0.5 * z**2 - torch.log(sigma.double()) - 0.5 * math.log(2 * math.pi)
        assert torch.isfinite(got).all(), got
        torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-5)


def test_complex_normal_large_residual_over_large_sigma_is_finite_and_exact():
    x = torch.tensor([[1e20 + 1e20j, -2e22 + 3e21j, 0.5 - 0.5j]])
    raw = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [41.0, 100.0, -1.0]]])
    sigma = 1e-6 + positive(raw[:, 2])
    got = ComplexNormal().log_prob(x, raw)
    d = x.to(torch.complex128) - torch.complex(raw[:, 0], raw[:, 1]).to(torch.complex128)
    ref = -(d.abs() ** 2) / sigma.double() ** 2 - math.log(math.pi) - 2 * torch.log(sigma.double())
    assert torch.isfinite(got).all(), got
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-5)


def test_log_probs_clamp_at_minus_max_where_the_true_value_overflows():
    assert Gaussian(1e-3).log_prob(torch.tensor([[1e30]]), torch.zeros(1, 1, 1)).item() == -F32.max
    raw = torch.tensor([[[0.0], [0.0], [-10.0]]])
    assert ComplexNormal().log_prob(torch.tensor([[1e30 + 0j]]), raw).item() == -F32.max
