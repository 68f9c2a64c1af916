"""pyro interop: genlib's likelihood distributions are pyro distributions (``pyro.sample(..., obs=x)``,
``.to_event``, ``.expand`` under ``pyro.plate``), a genlib VAE trains with pyro's SVI as a model/guide pair,
and pyro's NUTS is the reference sampler against which ``genlib.sampling`` is checked on a non-Gaussian
target."""

from __future__ import annotations

import pyro
import pyro.distributions as pdist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.ops.stats import effective_sample_size

from genlib.data import default_data_root, load_mnist_npz
from genlib.likelihoods import (
    Bernoulli,
    ComplexLaplace,
    ComplexNormal,
    Gamma,
    GammaVonMises,
    Gaussian,
    ItakuraSaito,
    Likelihood,
    LogNormalVonMises,
)
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors.base import gaussian_log_prob
from genlib.sampling import LangevinSampler

B, D = 5, 7

LIKELIHOODS = {
    "gaussian-fixed": Gaussian,
    "gaussian-learned": lambda: Gaussian("learned"),
    "gaussian-decoder": lambda: Gaussian("decoder"),
    "bernoulli": Bernoulli,
    "gamma": Gamma,
    "itakura-saito": ItakuraSaito,
    "itakura-saito-learned-shape": lambda: ItakuraSaito("decoder"),
    "lognormal-vonmises": LogNormalVonMises,
    "gamma-vonmises": GammaVonMises,
    "complex-normal": ComplexNormal,
    "complex-laplace": ComplexLaplace,
}


def _case(make) -> tuple[Likelihood, torch.Tensor, torch.Tensor]:
    """A likelihood, raw decoder outputs (B, n_params, D) and data x (B, D) in its support."""
    torch.manual_seed(0)
    lik = make()
    raw = torch.randn(B, lik.n_params, D)
    x = torch.rand(B, D) if isinstance(lik, Bernoulli) else lik(raw).sample()  # grey-scale for Bernoulli
    return lik, raw, x


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_pyro_sample_obs_scores_exactly_genlibs_log_density(name):
    lik, raw, x = _case(LIKELIHOODS[name])

    def model():
        with pyro.plate("data", B):
            pyro.sample("x", lik(raw).to_event(1), obs=x)

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    expected = lik.log_prob(x, raw).sum(-1)
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], expected)
    torch.testing.assert_close(trace.log_prob_sum(), expected.sum())


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_expand_keeps_the_class_and_plate_broadcasts_one_row(name):
    lik, raw, x = _case(LIKELIHOODS[name])
    one = lik(raw[:1])  # batch (1, D)
    expanded = one.expand((B, D))
    assert type(expanded) is type(one) and expanded.batch_shape == (B, D)
    torch.testing.assert_close(expanded.mean, one.mean.expand(B, D))
    assert one.to_event(1).event_shape == (D,) and one.to_event(1).batch_shape == (1,)

    def model():
        with pyro.plate("data", B):  # pyro expands the (1,)-batched site to the plate's (B,)
            pyro.sample("x", lik(raw[:1]).to_event(1), obs=x)

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    expected = lik.log_prob(x, raw[:1].expand(B, -1, -1)).sum(-1)
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], expected)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_unobserved_site_draws_from_the_likelihood(name):
    lik, raw, x = _case(LIKELIHOODS[name])

    def model():
        with pyro.plate("data", B):
            return pyro.sample("x", lik(raw).to_event(1))

    draw = model()
    assert draw.shape == x.shape and draw.dtype == x.dtype
    assert torch.isfinite(lik.log_prob(draw, raw)).all()


# -- a genlib VAE as a pyro model / guide pair --------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """256 real MNIST digits (every 16th of the shared 4k subset, all classes), binarised at 0.5."""
    try:
        images, _ = load_mnist_npz(default_data_root() / "digits" / "mnist_4k.npz")
    except FileNotFoundError as err:
        pytest.skip(f"shared MNIST subset not found: {err}")
    return (images[::16][:256] > 0.5).float()


def _vae() -> VAE:
    torch.manual_seed(0)
    lik = Bernoulli()
    return VAE(MLPEncoder((1, 28, 28), 8, hidden=(128,)), MLPDecoder(8, (1, 28, 28), hidden=(128,)), lik)


def _model_guide(vae: VAE):
    latent = vae.latent_dim

    def model(x):
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(torch.zeros(latent), 1.0).to_event(1))
            pyro.sample("x", vae.decode(z).to_event(3), obs=x)

    def guide(x):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            mu, logvar = vae.encode(x)
            pyro.sample("z", pdist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    return model, guide


def test_pyro_elbo_of_the_vae_equals_genlibs_at_the_same_latent_draw(digits):
    vae = _vae()
    model, guide = _model_guide(vae)
    x = digits[:32]
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    pyro_elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()

    z = guide_trace.nodes["z"]["value"]
    mu, logvar = vae.encode(x)
    reconstruction = vae.likelihood.log_prob(x, vae.decoder(z)).flatten(1).sum(1)
    genlib_elbo = reconstruction + vae.prior.log_prob(z) - gaussian_log_prob(z, mu, logvar)
    torch.testing.assert_close(pyro_elbo, genlib_elbo.sum(), rtol=1e-5, atol=1e-2)


@pytest.mark.slow
def test_svi_trains_the_genlib_vae(digits):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = _vae()
    model, guide = _model_guide(vae)
    enc0 = [p.detach().clone() for p in vae.encoder.parameters()]
    dec0 = [p.detach().clone() for p in vae.decoder.parameters()]

    def genlib_elbo() -> float:  # genlib's own estimator (analytic KL), averaged over draws
        with torch.no_grad():
            return torch.stack([vae.elbo(digits).elbo.mean() for _ in range(20)]).mean().item()

    before = genlib_elbo()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), loss=Trace_ELBO())
    first = svi.step(digits) / len(digits)
    # one step moved both halves: pyro.module registered the encoder (guide) and the decoder (model)
    assert all(not torch.equal(a, b) for a, b in zip(enc0, vae.encoder.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(dec0, vae.decoder.parameters()))
    assert first == pytest.approx(-before, rel=0.05)  # SVI's loss is -ELBO, same expectation as genlib's
    for _ in range(150):
        svi.step(digits)
    after = genlib_elbo()
    assert after > before + 200, (before, after)  # from about -545 nats per digit to about -200
    pyro_loss = sum(svi.evaluate_loss(digits) for _ in range(20)) / 20 / len(digits)
    assert pyro_loss == pytest.approx(-after, rel=0.03)


# -- NUTS as the reference sampler ---------------------------------------------------------------------------

SHAPES = torch.tensor([2.0, 0.7])


def log_gamma_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Independent log-Gamma coordinates, ``z_i = log x_i`` with ``x_i ~ Gamma(k_i, 1)``: skewed (an
    exponential left tail, a doubly exponential right one), not Gaussian; its moments are polygamma values."""
    return (SHAPES * z - torch.exp(z)).sum(-1)


def _statistics(z: torch.Tensor) -> torch.Tensor:
    """Per-draw functions whose means are checked, ``(N, 6)``: ``z``, ``(z - E z)^2`` and ``(z - E z)^3``
    per coordinate (mean, variance and third central moment: the skew a Gaussian approximation lacks)."""
    centred = z - torch.special.digamma(SHAPES)
    return torch.cat([z, centred.square(), centred**3], dim=1)


EXACT = torch.cat([torch.special.polygamma(n, SHAPES) for n in range(3)])  # digamma, trigamma, tetragamma


@pytest.fixture(scope="module")
def nuts_reference() -> tuple[torch.Tensor, torch.Tensor]:
    """NUTS draws of the target: the statistics' means and their Monte Carlo standard errors (from the
    effective sample size of each statistic's chain, 250-400 of the 1000 draws)."""
    pyro.set_rng_seed(0)
    kernel = NUTS(potential_fn=lambda params: -log_gamma_log_prob(params["z"]))
    mcmc = MCMC(kernel, num_samples=1000, warmup_steps=300, initial_params={"z": torch.zeros(2)},
                disable_progbar=True)
    mcmc.run()
    stats = _statistics(mcmc.get_samples()["z"])
    ess = effective_sample_size(stats.unsqueeze(0), chain_dim=0, sample_dim=1)
    return stats.mean(0), stats.std(0) / ess.sqrt()


def _z_scores(sampler: LangevinSampler, reference: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(genlib - NUTS) / combined standard error for each statistic; 4000 independent genlib chains."""
    g = torch.Generator().manual_seed(1)
    z, _ = sampler.run(log_gamma_log_prob, 0.5 * torch.randn(4000, 2, generator=g), generator=g)
    stats = _statistics(z)
    mean, se = stats.mean(0), stats.std(0) / len(z) ** 0.5
    nuts_mean, nuts_se = reference
    return (mean - nuts_mean) / (nuts_se.square() + se.square()).sqrt()


@pytest.mark.slow
def test_nuts_reference_matches_the_exact_moments(nuts_reference):
    mean, se = nuts_reference
    assert ((mean - EXACT).abs() < 4 * se).all(), (mean, EXACT, se)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampler",
    [LangevinSampler(n_steps=1000, step_size=0.05, mala=True), LangevinSampler(n_steps=1000, step_size=0.01)],
    ids=["mala", "unadjusted"],
)
def test_genlib_langevin_agrees_with_nuts(nuts_reference, sampler):
    z_scores = _z_scores(sampler, nuts_reference)
    assert (z_scores.abs() < 4).all(), z_scores


@pytest.mark.slow
def test_the_tolerance_catches_a_wrong_sampler(nuts_reference):
    # Noise too small by sqrt(2) (temperature 1/2: the chains target p^2) must fail the same check.
    wrong = LangevinSampler(n_steps=1000, step_size=0.05, mala=True, temperature=0.5)
    z_scores = _z_scores(wrong, nuts_reference)
    assert (z_scores.abs() > 4).sum() >= 3, z_scores
