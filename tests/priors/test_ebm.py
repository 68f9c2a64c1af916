"""LatentEBMPrior: sign convention, Bayes consistency, KL, ML gradient, sampling and a short training run.

A prior with ``hidden=()`` has a linear score ``F(z) = W z + b``; then everything is closed form:
``p(z | y) = N(w_y, I)``, ``p(z) = sum_y pi_y N(w_y, I)`` with ``pi_y ∝ exp(b_y + ||w_y||^2 / 2)`` and
``Z = sum_y exp(b_y + ||w_y||^2 / 2)``.
"""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genlib.nn import from_spec, to_spec
from genlib.priors import LatentEBMPrior, Prior
from genlib.sampling import LangevinSampler, PreconditionedLangevin


def linear_prior(w, b):
    prior = LatentEBMPrior(w.shape[1], w.shape[0], hidden=(), guidance=1.0)  # draws from p(z|y) itself
    lin = prior.score.net[0]
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return prior


W = torch.tensor([[1.0, 0.0], [-1.0, 0.5]])
B = torch.tensor([math.log(0.25), math.log(0.75)])


def test_energy_sign_convention_hand_computed():
    prior = linear_prior(W, B)
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, 3.0]])
    f = z @ W.T + B  # hand-computed scores
    sq = 0.5 * (z**2).sum(1)
    expected_energy = -torch.log(f.exp().sum(1)) + sq
    torch.testing.assert_close(prior.energy(z), expected_energy)
    torch.testing.assert_close(prior.energy(z, 1), -f[:, 1] + sq)
    torch.testing.assert_close(prior.energy(z, torch.tensor([0, 1, 0])), -f[[0, 1, 2], [0, 1, 0]] + sq)
    # log_prob = -energy: lower energy is more probable.
    torch.testing.assert_close(prior.log_prob(z), -expected_energy)
    # Ordering by hand: z = (-1, .5) (at w_1, the heavier class) beats (1, 0) (at w_0) beats (0, 3) (far out).
    lp = prior.log_prob(z)
    assert lp[1] > lp[0] > lp[2]
    assert prior.energy(z).argmin() == 1


def test_log_prob_is_unnormalised_by_the_documented_constant():
    # ∫ exp(log_prob(z)) dz = (2 pi)^(d/2) Z with Z = sum_y exp(b_y + ||w_y||^2 / 2) for a linear score.
    prior = linear_prior(W, B)
    grid = torch.linspace(-9, 9, 601, dtype=torch.float64)
    zz = torch.cartesian_prod(grid, grid)
    prior = prior.double()
    integral = prior.log_prob(zz).exp().sum() * (grid[1] - grid[0]) ** 2
    log_z = torch.logsumexp(B.double() + 0.5 * (W.double() ** 2).sum(1), 0)
    assert integral.item() == pytest.approx((2 * math.pi * log_z.exp()).item(), rel=1e-6)


def test_classifier_is_bayes_rule_of_the_joint():
    torch.manual_seed(0)
    prior = LatentEBMPrior(3, 4, hidden=(16, 16))
    z = torch.randn(10, 3)
    probs = prior.classify(z)
    torch.testing.assert_close(probs, prior.logits(z).softmax(-1))
    for y in range(4):  # p(y | z) = p(y, z) / p(z): the unknown Z cancels
        torch.testing.assert_close(probs[:, y], (prior.log_prob(z, y) - prior.log_prob(z)).exp())
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    expected = -probs[torch.arange(10), y].log().mean()
    torch.testing.assert_close(prior.classification_loss(z, y), expected)


def test_class_conditional_langevin_samples_are_classified_as_their_class():
    w = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    prior = linear_prior(w, torch.zeros(2))
    g = torch.Generator().manual_seed(1)
    samplers = [
        LangevinSampler(n_steps=100, step_size=0.3, mala=True),
        PreconditionedLangevin("dense", n_steps=30, step_size=0.8, mala=True, warmup_steps=5, fit_steps=10),
    ]
    for y, sampler in [(0, samplers[0]), (1, samplers[0]), (0, samplers[1]), (1, samplers[1])]:
        z, diag = prior.sample(3000, y=y, sampler=sampler, generator=g, return_diagnostics=True)
        # p(z | y) = N(w_y, I) exactly
        torch.testing.assert_close(z.mean(0), w[y], atol=0.08, rtol=0)
        torch.testing.assert_close(torch.cov(z.T), torch.eye(2), atol=0.1, rtol=0)
        accuracy = (prior.classify(z).argmax(1) == y).float().mean()
        assert accuracy > 0.95  # P(N(2, 1) > 0) = 0.977
        assert diag.acceptance_rate > 0.5


def test_guided_log_prob_is_marginal_plus_w_times_class_log_probability():
    prior = linear_prior(W, B)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(4))
    for y in (0, 1):
        torch.testing.assert_close(prior.guided_log_prob(z, y, 1.0), prior.log_prob(z, y))
        log_p_y = prior.log_prob(z, y) - prior.log_prob(z)  # log p(y|z) by Bayes' rule
        torch.testing.assert_close(prior.guided_log_prob(z, y, 3.0), prior.log_prob(z) + 3.0 * log_p_y)


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_guided_draws_match_the_guided_density(guidance):
    # Two classes at (±2, 0): the guided target factorises into z2 ~ N(0, 1) and a 1-d density in z1, whose
    # mean and variance a grid gives; guidance moves the draws off the class boundary z1 = 0 (and w = 1 is
    # p(z|y) = N((2, 0), I)).
    w = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    prior = linear_prior(w, torch.zeros(2))
    prior.guidance = guidance
    grid = torch.linspace(-8, 10, 20001, dtype=torch.float64)
    f = torch.stack([2 * grid, -2 * grid], 1)
    log_g = f.logsumexp(1) - grid**2 / 2 + guidance * (f[:, 0] - f.logsumexp(1))
    dens = (log_g - log_g.max()).exp()
    dens = dens / dens.sum()
    mean = float((dens * grid).sum())
    var = float((dens * (grid - mean) ** 2).sum())
    sampler = LangevinSampler(n_steps=200, step_size=0.2, mala=True)
    z = prior.sample(4000, y=0, sampler=sampler, generator=torch.Generator().manual_seed(5))
    assert float(z[:, 0].mean()) == pytest.approx(mean, abs=0.06)
    assert float(z[:, 0].var()) == pytest.approx(var, abs=0.08)
    assert float(z[:, 1].var()) == pytest.approx(1.0, abs=0.08)
    wrong_side = float((z[:, 0] < 0).float().mean())
    if guidance == 1.0:
        assert mean == pytest.approx(2.0, abs=1e-3) and wrong_side == pytest.approx(0.023, abs=0.01)
    else:
        assert wrong_side < 0.002  # P(N(2, 1) < 0) = 0.023 without guidance


def test_marginal_sampling_matches_the_mixture_weights():
    # Marginal p(z) = sum_y pi_y N(w_y, I) with pi ∝ exp(b + |w|^2 / 2): checks logsumexp's sign too.
    prior = linear_prior(W, B)
    pi = torch.softmax(B + 0.5 * (W**2).sum(1), 0)
    sampler = LangevinSampler(n_steps=150, step_size=0.3, mala=True)
    z = prior.sample(4000, sampler=sampler, generator=torch.Generator().manual_seed(2))
    mean = pi @ W
    centred = W - mean
    cov = torch.eye(2) + (pi[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
    torch.testing.assert_close(z.mean(0), mean, atol=0.07, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.1, rtol=0)


def test_kl_is_gaussian_kl_minus_logsumexp_and_exact_up_to_log_z():
    torch.manual_seed(3)
    prior = LatentEBMPrior(2, 3, hidden=(8,))
    mu, logvar, z = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    gauss = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(prior.kl(mu, logvar, z), gauss - prior.logits(z).logsumexp(-1))
    # Linear score: KL(q || p) (exact, by Monte Carlo with the closed-form Z) = mean kl + log Z.
    prior = linear_prior(W, B)
    mu, logvar = torch.tensor([[0.5, -0.3]]), torch.tensor([[-0.5, 0.2]])
    zs = mu + (0.5 * logvar).exp() * torch.randn(200000, 2, generator=torch.Generator().manual_seed(4))
    log_z = torch.logsumexp(B + 0.5 * (W**2).sum(1), 0)
    log_p = prior.log_prob(zs) - math.log(2 * math.pi) - log_z
    exact = (Normal(mu, (0.5 * logvar).exp()).log_prob(zs).sum(1) - log_p).mean()
    ours = prior.kl(mu.expand_as(zs), logvar.expand_as(zs), zs).mean() + log_z
    # Same samples; they differ only by the Monte Carlo error (~0.002) of log q - log N, which ours has
    # in closed form. A flipped score sign or a mis-stated constant is off by > 0.5.
    assert ours.item() == pytest.approx(exact.item(), abs=0.01)


def test_ebm_loss_gradient_is_the_difference_of_expectations():
    # For F(z) = W z + b: grad_W logsumexp F(z) = softmax(F(z)) z^T, grad_b = softmax(F(z)).
    torch.manual_seed(5)
    prior = linear_prior(torch.randn(3, 2), torch.randn(3))
    z_pos = (torch.randn(50, 2) + 1.0).requires_grad_(True)
    z_neg = torch.randn(70, 2).requires_grad_(True)
    prior.ebm_loss(z_pos, z_neg).backward()
    lin = prior.score.net[0]
    with torch.no_grad():
        sp, sn = prior.classify(z_pos), prior.classify(z_neg)
        ml_grad_w = sp.T @ z_pos / 50 - sn.T @ z_neg / 70  # E_q[softmax z^T] - E_p[softmax z^T]
        ml_grad_b = sp.mean(0) - sn.mean(0)
    torch.testing.assert_close(-lin.weight.grad, ml_grad_w)
    torch.testing.assert_close(-lin.bias.grad, ml_grad_b)
    assert z_pos.grad is None and z_neg.grad is None  # detached from encoder and sampler


def test_short_training_learns_the_classes_and_the_data_region():
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    centres = torch.tensor([[2.0, 2.0], [-2.0, 1.0], [0.0, -2.5]])

    def data(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return centres[y] + 0.4 * torch.randn(n, 2, generator=g), y

    prior = LatentEBMPrior(2, 3, hidden=(32, 32), n_steps=20, step_size=0.15, guidance=1.0)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(80):  # short-run (20-step) negatives, as in Pang et al.; enough on this easy data
        z_pos, y = data(128)
        z_neg = prior.sample(128, generator=g)
        loss = prior.ebm_loss(z_pos, z_neg) + prior.classification_loss(z_pos, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z_test, y_test = data(500)
    assert (prior.classify(z_test).argmax(1) == y_test).float().mean() > 0.97
    # Data points get lower energy than the same number of base-distribution (N(0, I)) points.
    assert prior.energy(z_test).mean() < prior.energy(torch.randn(500, 2, generator=g)).mean() - 1.0
    # Conditional samples land near their class centre and are classified as it.
    for y in range(3):
        z = prior.sample(300, y=y, generator=g)
        assert (z.mean(0) - centres[y]).norm() < 0.7
        assert (prior.classify(z).argmax(1) == y).float().mean() > 0.85  # chance: 0.33


def test_prior_contract_config_and_no_parameter_grads_from_sampling():
    prior = LatentEBMPrior(4, 3, guidance=8.0)
    assert isinstance(prior, Prior) and prior.latent_dim == 4
    rebuilt = from_spec(to_spec(prior))
    assert rebuilt.guidance == 8.0
    prior.guidance = 5.0  # a checkpoint keeps the live setting, as genlib sample --guidance sets it
    assert from_spec(to_spec(prior)).guidance == 5.0
    rebuilt.load_state_dict(prior.state_dict())
    z = torch.randn(6, 4)
    torch.testing.assert_close(rebuilt.log_prob(z), prior.log_prob(z))
    out = prior.sample(5)
    assert out.shape == (5, 4) and not out.requires_grad
    assert all(p.grad is None for p in prior.parameters())


def test_bad_arguments_are_rejected():
    prior = LatentEBMPrior(2, 3, hidden=(8,))
    with pytest.raises(ValueError, match="n_classes"):
        LatentEBMPrior(2, 0)
    with pytest.raises(ValueError, match="latent_dim"):
        LatentEBMPrior(0, 2)
    with pytest.raises(ValueError, match="z must have shape"):
        prior.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="z must have shape"):
        prior.log_prob(torch.randn(4, 2, 5))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\]"):
        prior.log_prob(torch.randn(4, 2), 3)
    with pytest.raises(ValueError, match="y must be"):
        prior.classification_loss(torch.randn(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="y must be"):
        prior.energy(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be"):
        prior.sample(0)
    with pytest.raises(ValueError, match="sampler"):
        prior.sample(2, sampler=object())
    with pytest.raises(ValueError, match="z0"):
        prior.sample(2, z0=torch.randn(3, 2))
    with pytest.raises(ValueError, match="guidance"):
        LatentEBMPrior(2, 3, guidance=0.0)
    with pytest.raises(ValueError, match="guidance"):
        prior.sample(2, y=0, guidance=float("nan"))
    with pytest.raises(ValueError, match="guidance must be finite and > 0"):
        prior.guidance = -1.0
    with pytest.raises(ValueError, match="guidance must be finite and > 0"):
        prior.guided_log_prob(torch.randn(4, 2), 0, float("inf"))
    with pytest.raises(ValueError, match="logvar"):
        prior.kl(torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 2))
