import pytest
import torch

from genlib.nn import LogPowerFeatures, MLPDecoder, MLPEncoder


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (10,)])
def test_mlp_encoder_decoder_shapes(shape):
    enc = MLPEncoder(shape, latent_dim=6, hidden=(32,))
    mu, logvar = enc(torch.rand(5, *shape))
    assert mu.shape == logvar.shape == (5, 6)
    dec = MLPDecoder(6, shape, n_params=3, hidden=(32, 16))
    assert dec(mu).shape == (5, 3, *shape)


def test_decoder_channels_are_separate_parameter_maps():
    # Each of the n_params channels must be an independent function of z: zeroing the weights that
    # produce channel 1 must leave channel 0 unchanged.
    dec = MLPDecoder(4, (2, 3), n_params=2, hidden=(8,))
    z = torch.randn(3, 4)
    before = dec(z)
    with torch.no_grad():
        dec.net.net[-1].weight[6:].zero_()
        dec.net.net[-1].bias[6:].zero_()
    after = dec(z)
    assert torch.equal(before[:, 0], after[:, 0])
    assert torch.equal(after[:, 1], torch.zeros_like(after[:, 1]))


def test_mlp_encoder_with_log_power_features_on_complex_frames():
    torch.manual_seed(0)
    enc = MLPEncoder((17,), 4, hidden=(16,), features=LogPowerFeatures(with_phase=True))
    assert enc.net.net[0].in_features == 3 * 17
    x = torch.randn(8, 17, dtype=torch.cfloat)
    mu, logvar = enc(x)
    assert mu.shape == (8, 4) and mu.dtype == torch.float32
    # Magnitude-only features see |x| only: a global phase rotation leaves a log-power encoder unchanged.
    enc_mag = MLPEncoder((17,), 4, hidden=(16,), features=LogPowerFeatures())
    rotated = x * torch.exp(1j * torch.tensor(0.7))
    torch.testing.assert_close(enc_mag(rotated)[0], enc_mag(x)[0])
    torch.testing.assert_close(enc_mag(x.abs())[0], enc_mag(x)[0])


def test_activation_choice_changes_the_function():
    torch.manual_seed(0)
    a = MLPEncoder((5,), 2, hidden=(8,), activation="relu")
    b = MLPEncoder((5,), 2, hidden=(8,), activation="tanh")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 5)
    assert not torch.allclose(a(x)[0], b(x)[0])


def test_bad_input():
    with pytest.raises(ValueError, match="latent_dim"):
        MLPEncoder((4,), 0)
    with pytest.raises(ValueError, match="latent_dim"):
        MLPDecoder(-1, (4,))
    with pytest.raises(ValueError, match="n_params"):
        MLPDecoder(2, (4,), n_params=0)
    with pytest.raises(ValueError, match="in_shape"):
        MLPEncoder((4, 0), 2)
    with pytest.raises(ValueError, match="hidden"):
        MLPEncoder((4,), 2, hidden=(8, -3))
    with pytest.raises(ValueError, match="activation"):
        MLPEncoder((4,), 2, activation="swishy")
    enc = MLPEncoder((1, 28, 28), 2, hidden=(8,))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\)"):
        enc(torch.rand(3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x must have shape"):
        enc(torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match="LogPowerFeatures"):
        MLPEncoder((4,), 2, hidden=(8,))(torch.randn(2, 4, dtype=torch.cfloat))
    with pytest.raises(ValueError, match="floating-point"):
        MLPEncoder((4,), 2, hidden=(8,))(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2\)"):
        MLPDecoder(2, (4,), hidden=(8,))(torch.randn(3, 5))
