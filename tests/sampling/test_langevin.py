"""Plain Langevin and MALA against targets with known moments."""

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from genlib.sampling import LangevinSampler, gaussian_moment_error, langevin

LAMBDAS = torch.tensor([0.5, 1.0, 2.0, 4.0])  # precisions of a diagonal Gaussian target


def diag_gaussian_log_prob(z):
    return -0.5 * (LAMBDAS * z.square()).sum(1)


def rotated_gaussian(d=10, kappa=100.0, seed=0):
    """N(mean, cov) with cov eigenvalues log-spaced in [1, kappa] along random axes."""
    g = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = (rot * torch.logspace(0, math.log10(kappa), d, dtype=torch.float64)) @ rot.T
    mean = 3 * torch.randn(d, generator=g, dtype=torch.float64)
    return mean, cov


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ula_stationary_variance_is_the_discretised_closed_form(temperature):
    # z' = (1 - s lam) z + sqrt(2 T s) eps has stationary variance T / (lam (1 - s lam / 2)): the O(s) bias of
    # unadjusted Langevin. A wrong noise scale or drift would move every entry by a large factor.
    s, n = 0.3, 8000
    g = torch.Generator().manual_seed(0)
    z, diag = langevin(diag_gaussian_log_prob, torch.zeros(n, 4), 100, s, temperature, generator=g)
    expected = temperature / (LAMBDAS * (1 - s * LAMBDAS / 2))
    torch.testing.assert_close(z.var(0), expected, rtol=0.06, atol=0.0)
    assert z.var(0)[-1] > 2 * temperature / LAMBDAS[-1]  # clearly not the exact target at this step size
    assert diag.acceptance is None and diag.acceptance_rate is None


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_mala_removes_the_discretisation_bias(temperature):
    s, n = 0.3, 8000
    g = torch.Generator().manual_seed(1)
    z, diag = langevin(diag_gaussian_log_prob, torch.zeros(n, 4), 150, s, temperature, mala=True, generator=g)
    torch.testing.assert_close(z.var(0), temperature / LAMBDAS, rtol=0.07, atol=0.0)
    assert z.mean(0).abs().max() < 4 * (temperature / LAMBDAS.min() / n) ** 0.5
    assert 0.3 < diag.acceptance_rate < 0.99  # adjustment active: some proposals rejected
    assert diag.acceptance.shape == (150,)


def test_mala_matches_an_ill_conditioned_gaussian():
    # kappa = 100 in 10 dims, offset mean, chains from N(0, I): every direction must equilibrate.
    mean, cov = rotated_gaussian()
    target = MultivariateNormal(mean.float(), cov.float())
    g = torch.Generator().manual_seed(2)
    z, diag = langevin(target.log_prob, torch.randn(1000, 10, generator=g), 700, 1.0, mala=True, generator=g)
    mean_err, cov_err = gaussian_moment_error(z, mean, cov)
    # Exact samples give errors ~ sqrt(d / n) = 0.1; an unconverged chain is at ~1 in the slow directions.
    assert mean_err < 0.3 and cov_err < 0.25, (mean_err, cov_err)
    assert 0.4 < diag.acceptance_rate < 0.95


def test_mala_matches_a_gaussian_mixture():
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.8], [0.0, -1.2]])
    covs = torch.stack(
        [torch.tensor([[0.5, 0.2], [0.2, 0.4]]), 0.3 * torch.eye(2), torch.diag(torch.tensor([0.6, 0.2]))]
    )
    weights = torch.tensor([0.5, 0.3, 0.2])
    mix = MixtureSameFamily(Categorical(weights), MultivariateNormal(means, covs))
    true_mean = weights @ means
    centred = means - true_mean
    true_cov = (weights[:, None, None] * (covs + centred[:, :, None] * centred[:, None, :])).sum(0)
    g = torch.Generator().manual_seed(3)
    z, diag = langevin(mix.log_prob, torch.randn(4000, 2, generator=g), 300, 0.2, mala=True, generator=g)
    # Monte Carlo standard errors with 4000 samples are ~0.015 for the mean, ~0.02 for the covariance.
    torch.testing.assert_close(z.mean(0), true_mean, atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), true_cov, atol=0.08, rtol=0)
    assert diag.acceptance_rate > 0.5


def test_diagnostics_trace_the_run():
    z0 = torch.full((500, 4), 5.0)
    z, diag = langevin(diag_gaussian_log_prob, z0, 40, 0.1, generator=torch.Generator().manual_seed(4))
    assert diag.energy.shape == diag.grad_norm.shape == diag.displacement.shape == (41,)
    assert diag.n_steps == 40 and diag.n_warmup == 0
    # t = 0 is the initial state: hand-computed energy and gradient norm, zero displacement.
    assert diag.energy[0].item() == pytest.approx(0.5 * 25 * LAMBDAS.sum().item())
    assert diag.grad_norm[0].item() == pytest.approx(5 * LAMBDAS.norm().item(), rel=1e-5)
    assert diag.displacement[0] == 0
    # Chains relax from far out: energy falls towards d / 2 = 2, chains move away from z0.
    assert diag.energy[-1] < 0.1 * diag.energy[0] and abs(diag.energy[-1] - 2.0) < 0.5
    assert diag.displacement[-1].item() == pytest.approx((z - z0).norm(dim=1).mean().item(), rel=1e-5)
    assert diag.displacement[-1] > 5.0


def test_generator_makes_runs_reproducible_and_sampler_equals_function():
    sampler = LangevinSampler(n_steps=10, step_size=0.2, mala=True)
    z0 = torch.randn(64, 4)
    a, _ = sampler.run(diag_gaussian_log_prob, z0, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    b, _ = langevin(diag_gaussian_log_prob, z0, 10, 0.2, mala=True, generator=g)
    seen = []
    g = torch.Generator().manual_seed(6)
    c, _ = sampler.run(diag_gaussian_log_prob, z0, g, callback=lambda t, z: seen.append((t, z)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [t for t, _ in seen] == list(range(1, 11)) and torch.equal(seen[-1][1], c)


def test_sampling_leaves_model_gradients_untouched():
    lin = torch.nn.Linear(3, 1)
    langevin(lambda z: lin(z)[:, 0] - 0.5 * z.square().sum(1), torch.randn(8, 3), 5, 0.1)
    assert all(p.grad is None for p in lin.parameters())


def test_bad_arguments_are_rejected():
    z0 = torch.zeros(8, 4)
    with pytest.raises(ValueError, match="log_prob_fn must map"):
        langevin(lambda z: z.sum(), z0)
    with pytest.raises(ValueError, match="step_size"):
        langevin(diag_gaussian_log_prob, z0, step_size=0.0)
    with pytest.raises(ValueError, match="temperature"):
        langevin(diag_gaussian_log_prob, z0, temperature=-1.0)
    with pytest.raises(ValueError, match="n_steps"):
        langevin(diag_gaussian_log_prob, z0, n_steps=-1)
    with pytest.raises(ValueError, match="z0"):
        langevin(diag_gaussian_log_prob, torch.zeros(4))
    with pytest.raises(ValueError, match="z0"):
        langevin(diag_gaussian_log_prob, torch.full((8, 4), math.nan))
    with pytest.raises(ValueError, match="n_steps"):
        LangevinSampler(n_steps=1.5)
    # Unadjusted chains at an unstable step blow up: a clear error instead of NaN samples.
    with pytest.raises(RuntimeError, match="reduce step_size"):
        langevin(diag_gaussian_log_prob, torch.ones(8, 4), n_steps=200, step_size=10.0)
    # MALA rejects the same blow-ups and stays finite.
    z, diag = langevin(diag_gaussian_log_prob, torch.ones(8, 4), n_steps=50, step_size=10.0, mala=True)
    assert torch.isfinite(z).all() and diag.acceptance_rate < 0.2


def test_moment_error_is_small_for_exact_samples_only():
    mean, cov = rotated_gaussian(d=5, kappa=50.0, seed=7)
    exact = MultivariateNormal(mean, cov).sample((20000,))
    m_err, c_err = gaussian_moment_error(exact, mean, cov)
    assert m_err < 0.05 and c_err < 0.05
    m_err, c_err = gaussian_moment_error(mean + 1.5 * (exact - mean), mean, cov)  # too wide by 1.5
    assert c_err > 1.0
    with pytest.raises(ValueError, match="cov"):
        gaussian_moment_error(exact, mean, cov[:2, :2])


def repulsive_log_prob(z):
    """log p = |z|^2: every step multiplies z by (1 + 2 s), so chains run away while staying finite."""
    return z.square().sum(1)


def test_runaway_chains_raise_naming_the_step_and_step_size():
    z0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match=r"(?s)blew up at step \d+ of 37.*step_size=0\.5.*smaller"):
        langevin(repulsive_log_prob, z0, n_steps=37, step_size=0.5)
    with pytest.raises(RuntimeError, match="max_norm=100"):
        LangevinSampler(n_steps=10, step_size=0.5, max_norm=100.0).run(repulsive_log_prob, z0)
    # validate_args=False skips the check: the chains end far out, but finite (which the old code let through)
    z, _ = langevin(repulsive_log_prob, z0, n_steps=37, step_size=0.5, validate_args=False)
    assert torch.isfinite(z).all() and z.norm(dim=1).max() > 1e9
    # a well-behaved run under the same bound does not raise
    langevin(diag_gaussian_log_prob, torch.randn(8, 4), n_steps=20, step_size=0.1, max_norm=100.0)
    with pytest.raises(ValueError, match="max_norm"):
        langevin(diag_gaussian_log_prob, torch.randn(8, 4), max_norm=0.0)
