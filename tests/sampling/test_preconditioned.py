"""PSGD-preconditioned Langevin: HVPs, closed-form stationary moments, exactness with MALA, speed-up."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from genlib.optim.preconditioners import DensePreconditioner
from genlib.sampling import LangevinSampler, PreconditionedLangevin, energy_hvp, gaussian_moment_error


def rotated_gaussian(d=10, kappa=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = (rot * torch.logspace(0, math.log10(kappa), d, dtype=torch.float64)) @ rot.T
    mean = 3 * torch.randn(d, generator=g, dtype=torch.float64)
    return mean, cov, MultivariateNormal(mean.float(), cov.float())


def fixed_preconditioner(p: torch.Tensor) -> DensePreconditioner:
    """A dense preconditioner holding exactly P (upper-triangular Q with Q^T Q = P)."""
    pre = DensePreconditioner(p.shape[0], triangular=True, init_scale=1.0)
    pre.Q.copy_(torch.linalg.cholesky(p.double()).T.float())
    return pre


def test_energy_hvp_matches_the_hessian():
    mean, cov, target = rotated_gaussian(d=4, kappa=10.0)
    z, v = torch.randn(6, 4), torch.randn(6, 4)
    # Gaussian: the energy's Hessian is the precision matrix, at every z.
    expected = v @ torch.linalg.inv(cov).float()
    torch.testing.assert_close(energy_hvp(target.log_prob, z, v), expected, rtol=1e-4, atol=1e-4)

    # Non-quadratic, per chain: compare with autograd's full Hessian of each chain's energy.
    def log_prob(x):
        return -(x.pow(4).sum(1) / 4 + torch.cosh(x @ torch.tensor([1.0, -0.5, 0.2, 0.3])))

    hv = energy_hvp(log_prob, z, v)
    for i in range(6):
        hess = torch.autograd.functional.hessian(lambda x: -log_prob(x[None])[0], z[i])
        torch.testing.assert_close(hv[i], hess @ v[i], rtol=1e-5, atol=1e-5)
    assert torch.equal(energy_hvp(lambda x: x.sum(1), z, v), torch.zeros_like(z))  # linear: no curvature


def test_fixed_exact_preconditioner_gives_the_closed_form_ula_bias():
    # With P = cov the step is z' - m = (1 - s)(z - m) + sqrt(2 s) Q^T eps in every direction, so the
    # stationary covariance is exactly cov / (1 - s / 2): the bias is isotropic after preconditioning.
    mean, cov, target = rotated_gaussian()
    s = 0.4
    sampler = PreconditionedLangevin(fixed_preconditioner(cov), 40, s, warmup_steps=0, fit_steps=0)
    g = torch.Generator().manual_seed(1)
    z, diag = sampler.run(target.log_prob, torch.randn(4000, 10, generator=g), generator=g)
    m_err, c_err = gaussian_moment_error(z, mean, cov / (1 - s / 2))
    assert m_err < 0.1 and c_err < 0.1, (m_err, c_err)
    _, c_err_exact = gaussian_moment_error(z, mean, cov)
    assert c_err_exact > 0.2  # the unadjusted chain is visibly biased at this step
    assert diag.n_warmup == 0 and diag.acceptance is None


def test_mala_is_exact_with_any_fixed_preconditioner():
    # A deliberately wrong (random SPD) P: MALA's proposal-density ratio must still make the target invariant.
    mean, cov, target = rotated_gaussian(d=6, kappa=20.0, seed=2)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    wrong_p = a @ a.T / 6 + 0.5 * torch.eye(6, dtype=torch.float64)
    sampler = PreconditionedLangevin(
        fixed_preconditioner(wrong_p), n_steps=300, step_size=0.5, mala=True, warmup_steps=0, fit_steps=0
    )
    z, diag = sampler.run(target.log_prob, torch.randn(3000, 6, generator=g), generator=g)
    m_err, c_err = gaussian_moment_error(z, mean, cov)
    assert m_err < 0.12 and c_err < 0.12, (m_err, c_err)  # exact samples: ~sqrt(6 / 3000) = 0.045
    assert 0.2 < diag.acceptance_rate < 0.95


def steps_to_threshold(sampler, target, z0, mean, cov, threshold, seed):
    class Reached(Exception):
        pass

    def callback(t, z):
        m_err, c_err = gaussian_moment_error(z, mean, cov)
        if m_err < threshold and c_err < threshold:
            raise Reached(t)

    try:
        sampler.run(target.log_prob, z0, torch.Generator().manual_seed(seed), callback=callback)
    except Reached as hit:
        return hit.args[0]
    except RuntimeError:  # diverged
        return math.inf
    return math.inf


def test_fitted_preconditioner_reaches_the_moments_in_several_times_fewer_steps():
    # kappa = 100, 10 dims, chains from N(0, I). Plain ULA at its best step from a grid around the stability
    # limit 2 / lambda_max = 2 (it needs ~250 steps; smaller steps are slower, larger ones too biased to ever
    # reach the threshold) vs the PSGD-preconditioned sampler counting its warm-up steps.
    mean, cov, target = rotated_gaussian()
    z0 = torch.randn(1000, 10, generator=torch.Generator().manual_seed(4))
    threshold = 0.2  # whitened mean / covariance error; exact samples give ~0.1
    plain = min(
        steps_to_threshold(LangevinSampler(n_steps=600, step_size=s), target, z0, mean, cov, threshold, 5)
        for s in (0.3, 0.5, 0.7, 1.0)
    )
    sampler = PreconditionedLangevin("dense", n_steps=100, step_size=0.25, warmup_steps=10, fit_steps=30)
    precond = steps_to_threshold(sampler, target, z0, mean, cov, threshold, 5)
    assert plain < 600 and precond * 4 <= plain, (plain, precond)
    # The fitted P is close to the target covariance (PSGD's fixed point for a Gaussian is H^-1 = cov).
    p = sampler.preconditioner.to_dense().double()
    chol = torch.linalg.cholesky(cov)
    half = torch.linalg.solve_triangular(chol, p, upper=False)
    eig = torch.linalg.eigvalsh(torch.linalg.solve_triangular(chol, half.T, upper=False))  # of L^-1 P L^-T
    assert eig.max() / eig.min() < 10  # from condition number 100 down to < 10


def test_warmup_then_frozen_mala_matches_the_target_and_reports_phases():
    mean, cov, target = rotated_gaussian(seed=6)
    sampler = PreconditionedLangevin("dense", 60, 0.8, mala=True, warmup_steps=15, fit_steps=30)
    g = torch.Generator().manual_seed(7)
    z, diag = sampler.run(target.log_prob, torch.randn(2000, 10, generator=g), generator=g)
    m_err, c_err = gaussian_moment_error(z, mean, cov)
    assert m_err < 0.15 and c_err < 0.15, (m_err, c_err)
    assert diag.n_warmup == 15 and diag.n_steps == 75
    assert diag.energy.shape == (76,) and diag.acceptance.shape == (60,)  # acceptance: frozen phase only
    assert diag.acceptance_rate > 0.4
    # Frozen P: a second run with no fitting leaves the preconditioner untouched.
    q = sampler.preconditioner.Q.clone()
    frozen = PreconditionedLangevin(sampler.preconditioner, n_steps=5, warmup_steps=0, fit_steps=0)
    frozen.run(target.log_prob, z, generator=g)
    assert torch.equal(frozen.preconditioner.Q, q)
    # A family-name sampler keeps refining its P across runs until reset().
    n_updates = sampler.preconditioner.num_updates
    sampler.run(target.log_prob, z, generator=g)
    assert sampler.preconditioner.num_updates == n_updates + 45
    sampler.reset()
    assert sampler.preconditioner is None


@pytest.mark.parametrize("family", ["diag", "lra"])
def test_other_families_sample_an_axis_aligned_ill_conditioned_gaussian(family):
    # Diagonal curvature, condition number 100: a diagonal (or diagonal + low-rank) P is exact here.
    var = torch.logspace(0, 2, 8, dtype=torch.float64)
    mean = torch.linspace(-3, 3, 8, dtype=torch.float64)
    target = MultivariateNormal(mean.float(), torch.diag(var).float())
    sampler = PreconditionedLangevin(family, 60, 0.8, mala=True, warmup_steps=15, fit_steps=40)
    g = torch.Generator().manual_seed(8)
    z, diag = sampler.run(target.log_prob, torch.randn(2000, 8, generator=g), generator=g)
    m_err, c_err = gaussian_moment_error(z, mean, torch.diag(var))
    assert m_err < 0.15 and c_err < 0.15, (family, m_err, c_err)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        PreconditionedLangevin("kron")
    with pytest.raises(ValueError, match="preconditioner must be"):
        PreconditionedLangevin(object())
    with pytest.raises(ValueError, match="warmup_steps"):
        PreconditionedLangevin(warmup_steps=-1)
    with pytest.raises(ValueError, match="step_size"):
        PreconditionedLangevin(step_size=0)
    with pytest.raises(ValueError, match="preconditioner_lr"):
        PreconditionedLangevin(preconditioner_lr=-0.1)
    with pytest.raises(ValueError, match="flat chains"):
        PreconditionedLangevin("dense").run(lambda z: -z.square().sum((1, 2)), torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match="v must have"):
        energy_hvp(lambda z: -z.square().sum(1), torch.zeros(4, 2), torch.zeros(4, 3))


def test_runaway_chains_raise_naming_the_step_and_step_size():
    def repulsive(z):  # log p = |z|^2 / 2: PSGD fits P = |H|^-1 = I, each step multiplies z by 1 + s
        return 0.5 * z.square().sum(1)

    z0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    kw = dict(n_steps=60, step_size=0.5, warmup_steps=0, fit_steps=5)
    with pytest.raises(RuntimeError, match=r"(?s)blew up at step \d+ of 60.*step_size=0\.5.*smaller"):
        PreconditionedLangevin("diag", **kw).run(repulsive, z0)
    z, _ = PreconditionedLangevin("diag", validate_args=False, **kw).run(repulsive, z0)
    assert torch.isfinite(z).all() and z.norm(dim=1).max() > 1e8
