"""VAE against the closed forms of a linear-Gaussian model: x = W z + b + σ ε, z ~ N(0, I).

Then p(x) = N(b, W Wᵀ + σ² I) and, with W = U diag(s) (orthogonal columns), the exact posterior is the
diagonal Gaussian N(M⁻¹ Wᵀ (x − b) / σ², M⁻¹), M = I + Wᵀ W / σ², which a diagonal q can represent.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from genlib.models import VAE, ELBOTerms
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import StandardNormal

D, L, SIGMA = 6, 3, 0.5


class FixedGaussian(nn.Module):
    """The Likelihood contract with a fixed σ, so these tests check the VAE's arithmetic alone."""

    n_params = 1

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, raw):
        return Normal(raw[:, 0], self.sigma)

    def log_prob(self, x, raw):
        return self(raw).log_prob(x)


class LinearDecoder(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.latent_dim, self.n_params = w.shape[1], 1
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(b.clone())

    def forward(self, z):
        return (z @ self.w.T + self.b)[:, None]


class LinearEncoder(nn.Module):
    def __init__(self, a, b, logvar):
        super().__init__()
        self.latent_dim = a.shape[0]
        self.a, self.b, self.logvar = nn.Parameter(a.clone()), b.clone(), nn.Parameter(logvar.clone())

    def forward(self, x):
        mu = (x - self.b) @ self.a.T
        return mu, self.logvar.expand_as(mu)


def linear_gaussian(exact_posterior: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    s = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    w, b = u * s, torch.randn(D, generator=g, dtype=torch.float64)
    m_inv = 1.0 / (1.0 + s**2 / SIGMA**2)
    a, logvar = (m_inv[:, None] * w.T) / SIGMA**2, torch.log(m_inv)
    if not exact_posterior:  # a plausible but wrong q: biased mean map, wider variance
        a, logvar = 0.8 * a, logvar + 0.5
    vae = VAE(LinearEncoder(a, b, logvar), LinearDecoder(w, b), FixedGaussian(SIGMA)).double()
    marginal = MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))
    x = marginal.sample((8,))
    return vae, marginal, x, (w, b, a, logvar)


def closed_form_elbo(x, w, b, a, logvar):
    """E_q[log p(x|z)] − KL(q‖N(0,I)) for the linear-Gaussian model, exactly."""
    mu, var = (x - b) @ a.T, torch.exp(logvar)
    resid = x - mu @ w.T - b
    trace = (w.square().sum(0) * var).sum(-1)  # tr(W diag(var) Wᵀ)
    rec = -0.5 * D * math.log(2 * math.pi * SIGMA**2) - (resid.square().sum(1) + trace) / (2 * SIGMA**2)
    kl = 0.5 * (mu.square() + var - 1 - logvar).sum(1)
    return rec, kl


def test_exact_posterior_gives_exact_log_likelihood_for_any_k_and_chunking():
    torch.manual_seed(0)
    vae, marginal, x, _ = linear_gaussian(exact_posterior=True)
    exact = marginal.log_prob(x)
    # With q = p(z|x) every importance weight p(x,z)/q(z|x) equals p(x): zero variance.
    torch.testing.assert_close(vae.log_likelihood(x, n_importance=1), exact, atol=1e-9, rtol=0)
    torch.testing.assert_close(vae.log_likelihood(x, n_importance=37, chunk_size=5), exact, atol=1e-9, rtol=0)


def test_elbo_terms_match_closed_form_and_kl_matches_torch():
    torch.manual_seed(0)
    vae, _, x, (w, b, a, logvar) = linear_gaussian(exact_posterior=False)
    n = 20000
    terms = vae.elbo(x.repeat(n, 1))
    assert isinstance(terms, ELBOTerms)
    rec, kl = closed_form_elbo(x, w, b, a, logvar)
    mu = (x - b) @ a.T
    torch_kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(terms.kl[: len(x)], torch_kl)
    torch.testing.assert_close(kl, torch_kl)
    # Monte Carlo mean of the one-sample reconstruction term -> its expectation (standard error ~0.02).
    torch.testing.assert_close(terms.reconstruction.view(n, -1).mean(0), rec, atol=0.06, rtol=0)
    torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.kl)
    torch.testing.assert_close(terms.loss, -terms.elbo.mean())


def test_beta_scales_only_the_kl_term():
    vae, _, x, _ = linear_gaussian(exact_posterior=False)
    torch.manual_seed(1)
    t1 = vae.elbo(x)
    vae.beta = 0.3
    torch.manual_seed(1)
    t2 = vae.elbo(x)
    torch.testing.assert_close(t2.reconstruction, t1.reconstruction)
    torch.testing.assert_close(t2.kl, t1.kl)
    torch.testing.assert_close(t2.elbo, t1.reconstruction - 0.3 * t1.kl)


def test_iwae_rises_from_the_elbo_to_the_exact_log_likelihood():
    torch.manual_seed(0)
    vae, marginal, x, (w, b, a, logvar) = linear_gaussian(exact_posterior=False)
    exact = marginal.log_prob(x)
    rec, kl = closed_form_elbo(x, w, b, a, logvar)
    elbo = rec - kl
    assert (exact - elbo).mean() > 0.3  # q is far enough from the posterior for the test to mean something
    iw10 = vae.log_likelihood(x, n_importance=10)
    iw_big = vae.log_likelihood(x, n_importance=20000)
    assert elbo.mean() < iw10.mean() < iw_big.mean() <= exact.mean() + 0.01
    torch.testing.assert_close(iw_big, exact, atol=0.04, rtol=0)


def test_gradients_of_the_elbo_match_the_closed_form():
    torch.manual_seed(0)
    vae, _, x, (w, b, _, _) = linear_gaussian(exact_posterior=False)
    n = 20000
    vae.elbo(x.repeat(n, 1)).loss.backward()
    enc = vae.encoder
    a, logvar = enc.a.detach().clone().requires_grad_(), enc.logvar.detach().clone().requires_grad_()
    rec, kl = closed_form_elbo(x, w, b, a, logvar)
    (-(rec - kl).mean()).backward()
    # The reparameterised gradient is unbiased for the gradient of the exact ELBO.
    torch.testing.assert_close(enc.a.grad, a.grad, atol=0.05, rtol=0.05)
    torch.testing.assert_close(enc.logvar.grad, logvar.grad, atol=0.05, rtol=0.05)


def test_reconstruct_and_sample():
    torch.manual_seed(0)
    vae, marginal, x, (w, b, a, _) = linear_gaussian(exact_posterior=False)
    torch.testing.assert_close(vae.reconstruct(x), ((x - b) @ a.T) @ w.T + b)
    assert vae.sample(3).shape == (3, D)
    # Decoded prior draws with observation noise follow the model's marginal N(b, W Wᵀ + σ² I).
    xs = vae.sample(40000, mean=False)
    torch.testing.assert_close(xs.mean(0), b, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(xs.T), marginal.covariance_matrix, atol=0.08, rtol=0)


def test_sequence_latents_are_summed_over_frames():
    # A (B, L, T) latent: KL and log-likelihood sum over latent units and frames.
    from genlib.nn import Conv1dFrameDecoder, Conv1dFrameEncoder

    torch.manual_seed(0)
    enc = Conv1dFrameEncoder(5, 2, hidden=(4,))
    dec = Conv1dFrameDecoder(2, 5, 1, hidden=(4,))
    vae = VAE(enc, dec, FixedGaussian(1.0))
    x = torch.rand(3, 5, 7) + 0.1
    mu, logvar = vae.encode(x)
    torch.manual_seed(2)
    terms = vae.elbo(x)
    torch.testing.assert_close(terms.kl, StandardNormal(2).kl(mu, logvar).view(3))
    torch.manual_seed(2)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    torch.testing.assert_close(terms.reconstruction, Normal(dec(z)[:, 0], 1.0).log_prob(x).sum((1, 2)))
    assert vae.sample(2, length=9).shape == (2, 5, 9)


def test_bad_construction_and_input():
    enc, lik = MLPEncoder((4,), 2, (8,)), FixedGaussian(1.0)
    with pytest.raises(ValueError, match=r"decoder.n_params \(2\) must equal likelihood.n_params \(1\)"):
        VAE(enc, MLPDecoder(2, (4,), n_params=2, hidden=(8,)), lik)
    with pytest.raises(ValueError, match="latent_dim differs"):
        VAE(enc, MLPDecoder(3, (4,), hidden=(8,)), lik)
    with pytest.raises(ValueError, match="latent_dim differs"):
        VAE(enc, MLPDecoder(2, (4,), hidden=(8,)), lik, prior=StandardNormal(5))
    with pytest.raises(ValueError, match="n_params"):
        VAE(enc, MLPDecoder(2, (4,), hidden=(8,)), nn.Identity())
    with pytest.raises(ValueError, match="beta"):
        VAE(enc, MLPDecoder(2, (4,), hidden=(8,)), lik, beta=-1.0)
    with pytest.raises(ValueError, match="prior=None"):
        VAE(nn.Linear(4, 4), nn.Linear(2, 4), lik)
    vae = VAE(enc, MLPDecoder(2, (4,), hidden=(8,)), lik)
    with pytest.raises(ValueError, match="x contains NaN"):
        vae.elbo(torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\)"):
        vae.elbo(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="n_importance"):
        vae.log_likelihood(torch.zeros(2, 4), n_importance=0)
    with pytest.raises(RuntimeError, match=r"encoder must return a pair \(mu, logvar\)"):
        VAE(nn.Linear(4, 2), MLPDecoder(2, (4,), hidden=(8,)), lik).elbo(torch.zeros(2, 4))


def test_elbo_names_dtype_mismatch_and_works_for_a_float64_model():
    vae = VAE(MLPEncoder((4,), 2, (8,)), MLPDecoder(2, (4,), hidden=(8,)), FixedGaussian(1.0))
    x64 = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x has dtype torch\.float64 but .* parameters are torch\.float32"):
        vae.elbo(x64)
    terms = vae.double().elbo(x64)
    assert terms.loss.dtype == torch.float64 and torch.isfinite(terms.elbo).all()
    with pytest.raises(ValueError, match=r"x has dtype torch\.float32 but .* parameters are torch\.float64"):
        vae.elbo(x64.float())


def test_elbo_rejects_an_empty_batch():
    vae = VAE(MLPEncoder((4,), 2, (8,)), MLPDecoder(2, (4,), hidden=(8,)), FixedGaussian(1.0))
    with pytest.raises(ValueError, match=r"x must hold at least one example .*got \(0, 4\)"):
        vae.elbo(torch.zeros(0, 4))
