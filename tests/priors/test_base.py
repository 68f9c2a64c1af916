import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genlib.priors import Prior, StandardNormal


class ShiftedNormal(Prior):
    """N(m, s^2 I): a normalised prior that relies on the base class's Monte Carlo KL."""

    def __init__(self, latent_dim: int, m: float, s: float):
        super().__init__(latent_dim)
        self.m, self.s = m, s

    def log_prob(self, z):
        return Normal(self.m, self.s).log_prob(z).flatten(1).sum(1)

    def sample(self, n):
        return self.m + self.s * torch.randn(n, self.latent_dim)


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 7)])
def test_standard_normal_kl_matches_torch(shape):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(shape, generator=g) * 2
    logvar = torch.randn(shape, generator=g)
    prior = StandardNormal(4)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(prior.kl(mu, logvar, None), expected)
    # The base-class estimator log q(z) - log p(z) is unbiased for the same quantity.
    z = mu + torch.exp(0.5 * logvar) * torch.randn((20000, *shape), generator=g)
    mc = Prior.kl(prior, mu.expand_as(z).flatten(0, 1), logvar.expand_as(z).flatten(0, 1), z.flatten(0, 1))
    torch.testing.assert_close(mc.view(20000, shape[0]).mean(0), expected, atol=0.1, rtol=0.02)


def test_standard_normal_log_prob_matches_torch():
    z = torch.randn(6, 3, 5)
    expected = Normal(0.0, 1.0).log_prob(z).sum((1, 2))
    torch.testing.assert_close(StandardNormal(3).log_prob(z), expected)
    assert StandardNormal(3).log_prob(torch.zeros(1, 3)).item() == pytest.approx(-1.5 * math.log(2 * math.pi))


def test_standard_normal_sample_moments_and_shapes():
    torch.manual_seed(0)
    prior = StandardNormal(4)
    z = prior.sample(20000)
    assert z.shape == (20000, 4)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(4), atol=0.04, rtol=0)
    assert prior.sample(2, length=9).shape == (2, 4, 9)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(prior.sample(5, generator=g1), prior.sample(5, generator=g2))
    assert prior.double().sample(2).dtype == torch.float64


def test_base_class_monte_carlo_kl_for_a_non_standard_prior():
    g = torch.Generator().manual_seed(1)
    prior = ShiftedNormal(3, m=0.5, s=2.0)
    mu, logvar = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    n = 40000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 2, 3, generator=g)
    mc = prior.kl(mu.expand(n, 2, 3).flatten(0, 1), logvar.expand(n, 2, 3).flatten(0, 1), z.flatten(0, 1))
    exact = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.5, 2.0)).sum(1)
    torch.testing.assert_close(mc.view(n, 2).mean(0), exact, atol=0.03, rtol=0.01)


def test_bad_input():
    with pytest.raises(ValueError, match="latent_dim"):
        StandardNormal(0)
    with pytest.raises(ValueError, match="latent_dim"):
        StandardNormal(2.5)
    prior = StandardNormal(3)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 3\)"):
        prior.log_prob(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="logvar"):
        prior.kl(torch.zeros(2, 3), torch.zeros(2, 4), None)
    with pytest.raises(ValueError, match="n must be a positive int"):
        prior.sample(0)
    with pytest.raises(ValueError, match="length"):
        prior.sample(2, length=-1)
    with pytest.raises(ValueError, match="share a shape"):
        ShiftedNormal(3, 0.0, 1.0).kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 3))
