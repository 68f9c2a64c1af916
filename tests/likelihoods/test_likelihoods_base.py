"""The Likelihood contract: the package docstring's user recipe, checkpoints, and use inside the VAE."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import genlib.likelihoods as L
from genlib.likelihoods import Likelihood, positive
from genlib.nn.config import from_spec, to_spec


class Poisson(Likelihood):  # the package docstring's recipe, verbatim
    n_params = 1

    def distribution(self, raw):
        return torch.distributions.Poisson(positive(raw[:, 0]))


class StudentT(Likelihood):
    n_params = 2

    def __init__(self, df: float = 4.0):
        super().__init__()
        self.df = df

    def distribution(self, raw):
        return torch.distributions.StudentT(self.df, raw[:, 0], positive(raw[:, 1], 1e-3))


def test_user_likelihoods_from_the_recipe_follow_the_contract():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    counts = torch.poisson(torch.full((4, 3), 2.0), generator=g).double()
    np.testing.assert_allclose(
        Poisson().log_prob(counts, raw[:, :1]).numpy(),
        stats.poisson.logpmf(counts, np.exp(raw[:, 0])),
        rtol=1e-12,
    )
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ref = stats.t.logpdf(x, 3.0, raw[:, 0], 1e-3 + np.exp(raw[:, 1]))
    np.testing.assert_allclose(StudentT(3.0).log_prob(x, raw).numpy(), ref, rtol=1e-12)
    with pytest.raises(ValueError, match="n_params=1"):
        Poisson()(raw)  # two channels given to a one-channel likelihood
    spec = to_spec(StudentT(df=3.0))
    assert spec["config"] == {"df": 3.0} and from_spec(spec).df == 3.0


def test_base_class_without_a_distribution_says_what_to_implement():
    with pytest.raises(NotImplementedError, match="distribution"):
        Likelihood()(torch.zeros(2, 1, 3))


@pytest.mark.parametrize(
    "lik",
    [
        L.Gaussian(0.2),
        L.Gaussian("decoder", min_sigma=1e-2),
        L.Bernoulli(),
        L.Gamma(floor=1e-5),
        L.ItakuraSaito(concentration=2.0),
        L.LogNormalVonMises(),
        L.GammaVonMises(),
        L.ComplexNormal(),
        L.ComplexLaplace(floor=1e-4),
    ],
    ids=lambda m: type(m).__name__,
)
def test_configs_round_trip_to_an_identical_likelihood(lik):
    rebuilt = from_spec(to_spec(lik))
    assert type(rebuilt) is type(lik) and rebuilt.get_config() == lik.get_config()
    raw = torch.randn(2, lik.n_params, 5, generator=torch.Generator().manual_seed(1))
    d1, d2 = lik(raw), rebuilt(raw)
    torch.testing.assert_close(d1.mean, d2.mean)


def test_learned_sigma_survives_a_checkpoint():
    lik = L.Gaussian("learned", sigma_shape=(3,), init_sigma=0.5)
    with torch.no_grad():
        lik.log_sigma.copy_(torch.tensor([-2.0, 0.0, 1.0]))
    rebuilt = from_spec(to_spec(lik))
    rebuilt.load_state_dict(lik.state_dict())
    torch.testing.assert_close(rebuilt.sigma, lik.sigma)


def test_vae_trains_with_a_spectral_likelihood_and_reloads_it(tmp_path):
    from genlib.models import VAE
    from genlib.nn import LogPowerFeatures, MLPDecoder, MLPEncoder

    torch.manual_seed(0)
    f = 16
    # complex frames whose power follows a smooth spectral envelope times exponential noise (CN(0, v))
    v = torch.exp(-torch.linspace(0, 4, f))[None] * torch.exp(torch.randn(64, 1))
    x = torch.complex(torch.randn(64, f), torch.randn(64, f)) * (v / 2).sqrt()
    lik = L.ItakuraSaito()
    enc = MLPEncoder((f,), 2, hidden=(32,), features=LogPowerFeatures())
    vae = VAE(enc, MLPDecoder(2, (f,), n_params=lik.n_params, hidden=(32,)), lik)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = vae.elbo(x).loss
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    # the loss per frame improves by many nats; a decoder stuck at v = 1 scores this data much worse
    final = float(loss.detach())
    assert final < first - 5.0
    stuck = -lik.log_prob(x, torch.zeros(64, 1, f)).sum(1).mean()
    assert final < float(stuck) - 5.0
    # and it gets within 2 nats per frame of the generating model's NLL (measured: -4.2 vs -5.2)
    oracle = -lik.log_prob(x, torch.log(v)[:, None].expand(64, 1, f)).sum(1).mean()
    assert final < float(oracle) + 2.0
    vae.save(tmp_path / "m.pt")
    back = VAE.load(tmp_path / "m.pt")
    assert isinstance(back.likelihood, L.ItakuraSaito) and back.likelihood.concentration == 1.0
    vae.eval(), back.eval()
    torch.testing.assert_close(back.reconstruct(x), vae.reconstruct(x))
    assert back.reconstruct(x).dtype == torch.float32  # IS reconstructs magnitudes E|x|
    assert math.isfinite(float(back.elbo(x).loss.detach()))
