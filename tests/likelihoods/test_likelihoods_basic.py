"""Gaussian and Bernoulli likelihoods against torch.distributions / scipy, and learning sigma."""


import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import log_expit
from torch.distributions import Normal

from genlib.likelihoods import Bernoulli, Gaussian, positive
from tests._paths import SHARED_DATA

DIGITS = SHARED_DATA / "digits" / "mnist_4k.npz"


def test_fixed_gaussian_matches_torch_and_scipy():
    g = torch.Generator().manual_seed(0)
    raw, x = (
        torch.randn(4, 1, 3, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 5, generator=g).double(),
    )
    lik = Gaussian(0.3)
    assert lik.n_params == 1 and not list(lik.parameters())
    lp = lik.log_prob(x, raw)
    torch.testing.assert_close(lp, Normal(raw[:, 0], 0.3).log_prob(x))
    np.testing.assert_allclose(lp.numpy(), stats.norm.logpdf(x, raw[:, 0], 0.3), rtol=1e-12)
    torch.testing.assert_close(lik.mean(raw), raw[:, 0])


def test_decoder_sigma_is_a_second_channel():
    g = torch.Generator().manual_seed(1)
    raw, x = torch.randn(6, 2, 7, generator=g).double(), torch.randn(6, 7, generator=g).double()
    lik = Gaussian("decoder", min_sigma=1e-3)
    assert lik.n_params == 2
    sigma = 1e-3 + torch.exp(raw[:, 1])
    np.testing.assert_allclose(
        lik.log_prob(x, raw).numpy(), stats.norm.logpdf(x, raw[:, 0], sigma), rtol=1e-12
    )


def test_learned_sigma_is_a_parameter_and_gradient_descent_reaches_the_data_std():
    torch.manual_seed(0)
    std = torch.tensor([0.05, 0.4, 2.0])
    x = torch.randn(4000, 3) * std + torch.tensor([0.5, -1.0, 3.0])
    mean = x.mean(0)
    raw = mean.expand(4000, 1, 3)  # the decoder predicts the mean: sigma's MLE is the per-column std
    target = x.std(0, correction=0)
    for shape, want in (((3,), target), ((), (x - mean).square().mean().sqrt())):
        lik = Gaussian("learned", sigma_shape=shape, init_sigma=1.0)
        assert [n for n, _ in lik.named_parameters()] == ["log_sigma"] and lik.log_sigma.shape == shape
        assert "log_sigma" in lik.state_dict()
        opt = torch.optim.Adam(lik.parameters(), lr=0.05)
        for _ in range(400):
            opt.zero_grad()
            loss = -lik.log_prob(x, raw).sum(-1).mean()
            loss.backward()
            opt.step()
        torch.testing.assert_close(lik.sigma.detach(), want, rtol=2e-3, atol=0)
        # and the learned model's log-density is scipy's at that sigma
        np.testing.assert_allclose(
            lik.log_prob(x, raw).detach().numpy(),
            stats.norm.logpdf(x, mean, lik.sigma.detach()),
            rtol=1e-5,
            atol=1e-5,
        )


def test_learned_sigma_broadcasts_per_channel_and_rejects_shapes_that_do_not():
    lik = Gaussian("learned", sigma_shape=(2, 1, 1), init_sigma=0.5)
    raw, x = torch.zeros(3, 1, 2, 4, 4), torch.ones(3, 2, 4, 4)
    np.testing.assert_allclose(
        lik.log_prob(x, raw).detach().numpy(), stats.norm.logpdf(1.0, 0.0, 0.5), rtol=1e-6
    )
    with pytest.raises(ValueError, match="does not broadcast to the data shape"):
        lik(torch.zeros(3, 1, 3, 4, 4))


def test_bernoulli_matches_torch_on_binary_and_cross_entropy_on_grey_targets():
    g = torch.Generator().manual_seed(2)
    raw = 3 * torch.randn(5, 1, 10, generator=g, dtype=torch.float64)
    xb = (torch.rand(5, 10, generator=g) > 0.5).double()
    lik = Bernoulli()
    torch.testing.assert_close(
        lik.log_prob(xb, raw), torch.distributions.Bernoulli(logits=raw[:, 0]).log_prob(xb)
    )
    xg = torch.rand(5, 10, generator=g, dtype=torch.float64)
    logits = raw[:, 0].numpy()
    ref = xg.numpy() * log_expit(logits) + (1 - xg.numpy()) * log_expit(-logits)
    np.testing.assert_allclose(lik.log_prob(xg, raw).numpy(), ref, rtol=1e-12)
    torch.testing.assert_close(lik.mean(raw), torch.sigmoid(raw[:, 0]))
    with pytest.raises(ValueError):
        lik.log_prob(xg + 1.0, raw)  # outside [0, 1]


def test_bernoulli_mle_on_real_digits_is_the_pixel_mean():
    # Real MNIST: the per-pixel logit maximising the grey-scale Bernoulli likelihood is logit(mean pixel).
    if not DIGITS.is_file():
        pytest.skip(f"real MNIST subset not found at {DIGITS}")
    x = torch.from_numpy(np.load(DIGITS)["images"][::8]).double().div(255)  # (500, 28, 28)
    p = x.mean(0).clamp(1e-3, 1 - 1e-3)
    raw = torch.logit(p).expand(len(x), 1, 28, 28).clone().requires_grad_()
    lik = Bernoulli()
    lik.log_prob(x, raw).sum().backward()
    grad = raw.grad.sum(0)[0]
    interior = (x.mean(0) > 1e-3) & (x.mean(0) < 1 - 1e-3)
    assert grad[interior].abs().max() < 1e-9  # stationary where the mean is not clipped
    worse = lik.log_prob(x, raw.detach() + 0.1).sum()
    assert lik.log_prob(x, raw.detach()).sum() > worse


def test_sigma_and_logits_have_finite_gradients_at_extreme_raw_values():
    extremes = torch.tensor([-1e4, -60.0, 0.0, 60.0, 1e4])
    a, b = torch.meshgrid(extremes, extremes, indexing="ij")
    raw = torch.stack([a.flatten(), b.flatten()])[None].clone().requires_grad_()  # (1, 2, 25)
    for lik, x in (
        (Gaussian("decoder"), torch.linspace(-5, 5, 25)[None]),
        (Gaussian("learned"), torch.linspace(-5, 5, 25)[None]),
        (Bernoulli(), torch.linspace(0, 1, 25)[None]),
    ):
        r = raw if lik.n_params == 2 else raw[:, :1]
        lp = lik.log_prob(x, r)
        assert torch.isfinite(lp).all()
        (grad,) = torch.autograd.grad(lp.sum(), raw)
        assert torch.isfinite(grad).all()


def test_positive_is_exp_below_the_threshold_and_linear_above():
    raw = torch.tensor([-1e4, -3.0, 0.0, 19.0, 21.0, 1e4], dtype=torch.float64, requires_grad=True)
    out = positive(raw, floor=1e-3)
    torch.testing.assert_close(out[:4], 1e-3 + torch.exp(raw[:4]))
    e20 = np.exp(20.0)
    torch.testing.assert_close(
        out[4:].detach(), torch.tensor([1e-3 + 2 * e20, 1e-3 + e20 * (1e4 - 19)]).double()
    )
    (g,) = torch.autograd.grad(out.sum(), raw)
    torch.testing.assert_close(g, torch.tensor([0.0, np.exp(-3.0), 1.0, np.exp(19.0), e20, e20]).double())


def test_gaussian_constructor_validates_its_arguments():
    for bad in ("learnt", -1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            Gaussian(bad)
    with pytest.raises(ValueError, match="init_sigma"):
        Gaussian("learned", init_sigma=1e-4, min_sigma=1e-3)
    with pytest.raises(RuntimeError, match="learned"):
        _ = Gaussian(0.5).sigma
