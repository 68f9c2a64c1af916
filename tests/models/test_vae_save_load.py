import pytest
import torch

from genlib.likelihoods import Bernoulli, GammaVonMises, Gaussian
from genlib.models import VAE
from genlib.nn import (
    Conv1dFrameDecoder,
    Conv1dFrameEncoder,
    DCGANDecoder,
    LogPowerFeatures,
    MLPDecoder,
    MLPEncoder,
    WideResNetEncoder,
)
from genlib.priors import StandardNormal
from genlib.utils import load_checkpoint


def image_vae():
    enc = WideResNetEncoder(1, 4, depth=10, widen_factor=1, image_size=28)
    dec = DCGANDecoder(4, 1, 1, image_size=28, base_channels=4)
    return VAE(enc, dec, Bernoulli()), torch.rand(3, 1, 28, 28)


def gaussian_vae():
    enc = MLPEncoder((1, 28, 28), 3, (16,), activation="gelu")
    dec = MLPDecoder(3, (1, 28, 28), 1, (16,))
    lik = Gaussian("learned", sigma_shape=(1, 28, 28), init_sigma=0.5)
    return VAE(enc, dec, lik, prior=StandardNormal(3), beta=0.5), torch.rand(3, 1, 28, 28)


def speech_vae():
    enc = Conv1dFrameEncoder(9, 2, hidden=(8,), with_phase=True, temporal="bigru", gru_hidden=4)
    dec = Conv1dFrameDecoder(2, 9, GammaVonMises.n_params, hidden=(8,), temporal="gru", gru_hidden=4)
    return VAE(enc, dec, GammaVonMises(floor=1e-5)), torch.randn(2, 9, 6, dtype=torch.cfloat)


def frame_vae():
    enc = MLPEncoder((9,), 2, (8,), features=LogPowerFeatures(with_phase=True))
    return VAE(enc, MLPDecoder(2, (9,), 4, (8,)), GammaVonMises()), torch.randn(5, 9, dtype=torch.cfloat)


@pytest.mark.parametrize("build", [image_vae, gaussian_vae, speech_vae, frame_vae])
def test_save_load_round_trip_reproduces_outputs_exactly(tmp_path, build):
    torch.manual_seed(0)
    vae, x = build()
    # A few steps so that weights, batch-norm statistics and learned likelihood parameters leave their init.
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        vae.elbo(x).loss.backward()
        opt.step()
    vae.beta = 0.25  # annealed after construction: the saved config must carry the live value
    vae.eval()
    path = vae.save(tmp_path / "model.pt", epoch=3)
    loaded = VAE.load(path)
    assert not loaded.training and loaded.beta == 0.25
    assert load_checkpoint(path)["extra"] == {"epoch": 3}
    for (k, a), (k2, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert repr(loaded) == repr(vae)
    torch.manual_seed(5)
    t1 = vae.elbo(x)
    torch.manual_seed(5)
    t2 = loaded.elbo(x)
    for a, b in zip(t1, t2):
        assert torch.equal(a, b)
    assert torch.equal(vae.reconstruct(x), loaded.reconstruct(x))


def test_load_rejects_other_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a genlib VAE checkpoint"):
        VAE.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        VAE.load(tmp_path / "missing.pt")
