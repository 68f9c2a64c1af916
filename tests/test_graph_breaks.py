"""With validation off the hot paths compile whole: the ELBO, the EBM energy and Langevin runs have no
graph breaks (no ``.item()`` or ``int(tensor)`` checks); with it on (the default) bad input gets clear
errors."""

from unittest import mock

import pytest
import torch
import torch._dynamo as dynamo
from torch.distributions import Distribution

import genlib
from genlib.likelihoods import (
    Bernoulli,
    ComplexLaplace,
    ComplexNormal,
    Gamma,
    GammaVonMises,
    Gaussian,
    ItakuraSaito,
    LogNormalVonMises,
)
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.sampling import LangevinSampler, PreconditionedLangevin, langevin

LATENT, CLASSES, DATA = 4, 3, 6


def graph_breaks(fn, *args) -> int:
    dynamo.reset()
    try:
        return dynamo.explain(fn)(*args).graph_break_count
    finally:
        dynamo.reset()


@pytest.fixture(autouse=True)
def _restore_torch_distributions_default():
    # torch 2.11's first torch.compile / explain switches torch.distributions' default validation off for
    # the whole process (pytorch#185438 scopes it); later tests must not inherit that.
    before = Distribution._validate_args
    yield
    Distribution.set_default_validate_args(before)


@pytest.fixture
def validation_off():
    with genlib.validate_args(False):
        yield


def _prior(**kw) -> LatentEBMPrior:
    return LatentEBMPrior(LATENT, CLASSES, hidden=(16,), n_steps=3, step_size=0.01, **kw)


def _vae(likelihood, prior=None, **kw) -> VAE:
    enc = MLPEncoder((DATA,), LATENT, hidden=(16,))
    dec = MLPDecoder(LATENT, (DATA,), n_params=likelihood.n_params, hidden=(16,))
    return VAE(enc, dec, likelihood, prior, **kw)


LIKELIHOODS = {"gaussian": Gaussian(), "gaussian-decoder": Gaussian("decoder"),
               "gaussian-learned": Gaussian("learned"), "bernoulli": Bernoulli()}


@pytest.mark.parametrize("lik", LIKELIHOODS, ids=str)
@pytest.mark.parametrize("ebm", [False, True], ids=["normal-prior", "ebm-prior"])
def test_elbo_has_no_graph_breaks_with_validation_off(validation_off, lik, ebm):
    torch.manual_seed(0)
    vae = _vae(LIKELIHOODS[lik], _prior() if ebm else None)
    assert graph_breaks(vae.elbo, torch.rand(5, DATA)) == 0


def test_validation_on_is_what_breaks_the_elbo_graph():
    # The count above is 0 because the checks are off, not because explain() sees nothing: with them on,
    # every finiteness check (x, raw, the distribution's arguments) is a host sync and a break.
    vae = _vae(Gaussian(), _prior())
    assert genlib.validation_enabled()
    assert graph_breaks(vae.elbo, torch.rand(5, DATA)) >= 3
    # A per-object setting wins over the global one in both directions.
    with genlib.validate_args(False):
        checked = _vae(Gaussian(validate_args=True), _prior(), validate_args=True)
        assert graph_breaks(checked.elbo, torch.rand(5, DATA)) > 0
    unchecked = _vae(Gaussian(validate_args=False), _prior(validate_args=False), validate_args=False)
    assert graph_breaks(unchecked.elbo, torch.rand(5, DATA)) == 0


def test_ebm_energy_and_log_prob_have_no_graph_breaks_with_validation_off(validation_off):
    prior = _prior()
    z, y = torch.randn(5, LATENT), torch.tensor([0, 1, 2, 0, 1])
    assert graph_breaks(prior.energy, z, y) == 0
    assert graph_breaks(prior.energy, z) == 0
    assert graph_breaks(prior.log_prob, z) == 0
    assert graph_breaks(prior.log_prob, z, y) == 0
    assert graph_breaks(lambda z, y: prior.guided_log_prob(z, y, 3.0), z, y) == 0
    assert graph_breaks(prior.kl, z, torch.zeros_like(z), z) == 0


@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace:UserWarning")  # resuming after a break
def test_ebm_label_check_breaks_the_graph_only_when_on():
    prior = _prior()
    z, y = torch.randn(5, LATENT), torch.tensor([0, 1, 2, 0, 1])
    assert graph_breaks(prior.energy, z, y) > 0  # int(y.min()) / int(y.max())
    prior.validate_args = False
    assert graph_breaks(prior.energy, z, y) == 0


@pytest.mark.parametrize("mala", [False, True], ids=["ula", "mala"])
def test_a_whole_langevin_run_has_no_graph_breaks_with_validation_off(validation_off, mala):
    # dynamo unrolls the Python loop over the (few) steps, so the whole run is one graph, not just a step.
    prior = _prior()
    sampler = LangevinSampler(n_steps=3, step_size=0.01, mala=mala)
    assert graph_breaks(lambda z0: sampler.run(prior.log_prob, z0)[0], torch.randn(5, LATENT)) == 0
    y = torch.tensor([0, 1, 2, 0, 1])
    assert graph_breaks(lambda z0: prior.sample(5, y=y, z0=z0), torch.randn(5, LATENT)) == 0


def test_the_compiled_run_gives_the_eager_run_s_chains(validation_off):
    # Compiled, the gradient comes from torch.func instead of torch.autograd.grad: the same numbers.
    prior = _prior()
    z0 = torch.randn(6, LATENT)

    def run(z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, diag = langevin(prior.log_prob, z0, n_steps=4, step_size=0.05, mala=True)
        return z, diag.energy

    torch.manual_seed(1)
    z_eager, e_eager = run(z0)
    dynamo.reset()
    compiled = torch.compile(run, backend="eager", fullgraph=True)  # fullgraph: a break would raise
    torch.manual_seed(1)
    z_comp, e_comp = compiled(z0)
    dynamo.reset()
    torch.testing.assert_close(z_comp, z_eager)
    torch.testing.assert_close(e_comp, e_eager)
    assert not torch.equal(z_eager, z0)
    assert all(p.grad is None for p in prior.parameters())  # sampling never leaves .grad on the EBM


def _spectral_case(cls):
    lik = cls()
    raw = torch.randn(3, lik.n_params, 5)
    x = torch.randn(3, 5, dtype=torch.cfloat)
    return lik, x, raw


@pytest.mark.parametrize("cls", [Gamma, ItakuraSaito, LogNormalVonMises, GammaVonMises, ComplexNormal,
                                 ComplexLaplace], ids=lambda c: c.__name__)
def test_spectral_log_probs_have_no_graph_breaks_with_validation_off(validation_off, cls):
    lik, x, raw = _spectral_case(cls)
    assert graph_breaks(lik.log_prob, x, raw) == 0


def test_spectral_distributions_follow_the_likelihood_s_setting():
    lik, x, raw = _spectral_case(GammaVonMises)
    assert lik(raw)._validate_args and lik(raw).magnitude._validate_args
    with genlib.validate_args(False):
        assert not lik(raw)._validate_args and not lik(raw).magnitude._validate_args
        with pytest.raises(ValueError, match="raw contains NaN"):
            GammaVonMises(validate_args=True).log_prob(x, raw.index_fill(0, torch.tensor([0]), float("nan")))


# -- with validation on (the default), the same bad inputs still raise the clear errors --------------------
def test_validation_on_keeps_the_clear_errors():
    assert genlib.validation_enabled()
    vae, prior = _vae(Gaussian(), _prior()), _prior()
    bad_x = torch.rand(4, DATA).index_fill(0, torch.tensor([1]), float("nan"))
    with pytest.raises(ValueError, match="x contains NaN"):
        vae.elbo(bad_x)
    with pytest.raises(ValueError, match="raw contains NaN"):
        Gaussian().log_prob(torch.rand(4, DATA), bad_x[:, None])
    with pytest.raises(ValueError, match="x contains NaN"):
        Gaussian().log_prob(bad_x, torch.rand(4, 1, DATA))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\], got values in \[0, 3\]"):
        prior.energy(torch.randn(4, LATENT), torch.tensor([0, 3, 1, 1]))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\]"):
        prior.log_prob(torch.randn(4, LATENT), 3)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\]"):
        prior.sample(2, y=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="z0 contains NaN"):
        langevin(prior.log_prob, bad_x[:, :LATENT])
    with pytest.raises(ValueError, match="not finite at z0"):
        langevin(lambda z: z.sum(1) * float("nan"), torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="Langevin diverged at step 1"):
        langevin(lambda z: -z.pow(2).sum(1) * torch.exp(z.abs().sum(1)), torch.full((2, 2), 30.0),
                 step_size=1.0, max_norm=1e30)
    with pytest.raises(ValueError, match="z0 contains NaN"):
        sampler = PreconditionedLangevin("diag", n_steps=1, warmup_steps=0, fit_steps=0)
        sampler.run(prior.log_prob, bad_x[:, :LATENT])


def test_validation_off_skips_the_value_checks_only():
    bad_x = torch.rand(4, DATA).index_fill(0, torch.tensor([1]), float("nan"))
    with genlib.validate_args(False):
        vae, prior = _vae(Gaussian(), _prior()), _prior()
        assert torch.isnan(vae.elbo(bad_x).elbo[1]) and torch.isfinite(vae.elbo(bad_x).elbo[0])
        z, _ = langevin(prior.log_prob, bad_x[:, :LATENT], n_steps=2)  # no check, no error: NaN chains
        assert torch.isnan(z[1]).all()
        # Shape and dtype checks cost nothing and stay on.
        with pytest.raises(ValueError, match="z must have shape"):
            prior.energy(torch.randn(4, LATENT + 1))
        with pytest.raises(ValueError, match="y must be an int or an int64 tensor"):
            prior.energy(torch.randn(4, LATENT), torch.zeros(4))
        with pytest.raises(ValueError, match=r"y must lie in \[0, 2\], got 7"):
            prior.energy(torch.randn(4, LATENT), 7)  # a Python int is checked for free
        with pytest.raises(ValueError, match="raw must have shape"):
            Gaussian().log_prob(torch.rand(4, DATA), torch.rand(4, 2, DATA))
    assert genlib.validation_enabled()  # the context manager restored the default


def test_sample_checks_the_labels_once_not_at_every_step():
    prior = LatentEBMPrior(LATENT, CLASSES, hidden=(16,), n_steps=7, step_size=0.01)
    y = torch.tensor([0, 1, 2, 0])
    calls, original = [], torch.Tensor.min

    def counting_min(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, "min", counting_min):
        prior.sample(4, y=y)  # guided target
        prior.sample(4, y=y, guidance=1.0)  # the plain joint target
        assert len(calls) == 2  # one range check per call, none in the 7 Langevin steps
        prior.energy(torch.randn(4, LATENT), y)
        assert len(calls) == 3  # (the spy does see the check)


def test_the_switch_rejects_non_bools_naming_the_argument():
    with pytest.raises(ValueError, match="flag must be a bool"):
        genlib.set_validate_args("no")
    with pytest.raises(ValueError, match="validate_args must be True, False or None"):
        VAE(MLPEncoder((DATA,), LATENT), MLPDecoder(LATENT, (DATA,)), Gaussian(), validate_args=1)
    with pytest.raises(ValueError, match="validate_args must be True, False or None"):
        Gaussian(validate_args="off")
    with pytest.raises(ValueError, match="validate_args must be True, False or None"):
        _prior(validate_args=0)
    with pytest.raises(ValueError, match="validate_args must be True, False or None"):
        LangevinSampler(validate_args="yes")
    with pytest.raises(ValueError, match="validate_args must be True, False or None"):
        PreconditionedLangevin(validate_args=1)
    with pytest.raises(ValueError, match="flag must be a bool"), genlib.validate_args(None):
        pass
    assert genlib.validation_enabled()


def test_validate_args_survives_save_and_load(tmp_path):
    vae = _vae(Gaussian(validate_args=False), _prior(validate_args=True), validate_args=False)
    loaded = VAE.load(vae.save(tmp_path / "m.pt"))
    assert loaded.validate_args is False and loaded.likelihood.validate_args is False
    assert loaded.prior.validate_args is True


def test_likelihood_checks_follow_genlib_not_torch_s_default():
    # torch.compile switches torch.distributions' default off process-wide (torch 2.11); genlib's
    # likelihoods pass their own setting to every distribution they build, so their checks stay on.
    Distribution.set_default_validate_args(False)
    with pytest.raises(ValueError, match="non-negative magnitudes"):
        Gamma().log_prob(-torch.rand(2, 5), torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match="x contains NaN"):
        ComplexNormal().log_prob(torch.full((2, 5), complex(float("nan"), 0)), torch.randn(2, 3, 5))


def test_the_switch_is_on_the_package_without_importing_torch_eagerly():
    assert genlib.set_validate_args is genlib.utils.set_validate_args
    assert {"set_validate_args", "validation_enabled", "validate_args"} <= set(dir(genlib))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        genlib.not_a_name  # noqa: B018


def test_a_compiled_elbo_follows_the_switch_when_it_changes():
    # dynamo guards on the setting: switching validation back on recompiles with the checks, so a function
    # compiled while it was off does not keep skipping them.
    vae = _vae(Gaussian(), _prior())
    bad_x = torch.rand(4, DATA).index_fill(0, torch.tensor([1]), float("nan"))
    dynamo.reset()
    compiled = torch.compile(vae.elbo, backend="eager")
    try:
        with genlib.validate_args(False):
            assert torch.isnan(compiled(bad_x).loss)
        with pytest.raises(ValueError, match="x contains NaN"):
            compiled(bad_x)
    finally:
        dynamo.reset()


def test_energy_hvp_compiles_whole_and_matches_eager():
    # PreconditionedLangevin's fit: under torch.compile the HVP comes from torch.func (jvp of grad), which
    # dynamo traces; autograd.grad with requires_grad_ would break the graph
    from genlib.sampling.preconditioned import energy_hvp

    prior = _prior()
    z, v = torch.randn(8, LATENT), torch.randn(8, LATENT)
    compiled = torch.compile(lambda z, v: energy_hvp(prior.log_prob, z, v), backend="eager", fullgraph=True)
    assert torch.allclose(compiled(z, v), energy_hvp(prior.log_prob, z, v), atol=1e-6)
    assert graph_breaks(lambda z, v: energy_hvp(prior.log_prob, z, v), z, v) == 0
