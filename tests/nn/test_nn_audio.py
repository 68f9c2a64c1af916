import pytest
import torch

from genlib.nn import Conv1dFrameDecoder, Conv1dFrameEncoder, GRULatent


@pytest.mark.parametrize("temporal", [None, "gru", "bigru"])
@pytest.mark.parametrize("with_phase", [False, True])
def test_conv1d_frame_encoder_decoder_shapes(temporal, with_phase):
    enc = Conv1dFrameEncoder(33, 6, hidden=(16,), with_phase=with_phase, temporal=temporal, gru_hidden=8)
    for t in (1, 11):
        mu, logvar = enc(torch.randn(3, 33, t, dtype=torch.cfloat))
        assert mu.shape == logvar.shape == (3, 6, t)
        dec = Conv1dFrameDecoder(6, 33, n_params=2, hidden=(16,), temporal=temporal, gru_hidden=8)
        assert dec(mu).shape == (3, 2, 33, t)
    assert enc.conv[0].in_channels == (3 if with_phase else 1) * 33


def _influence(net, x, t):
    """Which output frames change when input frame t changes."""
    x2 = x.clone()
    x2[..., t] += 1.0
    out, out2 = net(x), net(x2)
    out, out2 = (out[0], out2[0]) if isinstance(out, tuple) else (out, out2)
    return (out - out2).abs().flatten(0, -2).amax(0) > 1e-6


def test_gru_is_causal_and_bigru_sees_the_future():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 10)
    changed = _influence(GRULatent(4, 8), x, t=5)
    assert not changed[:5].any() and changed[5:].all()
    changed = _influence(GRULatent(4, 8, bidirectional=True), x, t=5)
    assert changed.all()
    assert GRULatent(4, 8, bidirectional=True)(x).shape == (2, 16, 10)


def test_conv_receptive_field_is_local_without_a_gru():
    torch.manual_seed(0)
    # Two k=3 layers plus a 1x1 head: frame t reaches frames t-2..t+2 only.
    dec = Conv1dFrameDecoder(3, 5, hidden=(8, 8), kernel_size=3)
    changed = _influence(dec, torch.randn(1, 3, 12), t=6)
    assert changed.nonzero().flatten().tolist() == [4, 5, 6, 7, 8]
    enc = Conv1dFrameEncoder(5, 3, hidden=(8,), kernel_size=5)
    changed = _influence(enc, torch.rand(1, 5, 12) + 0.1, t=6)
    assert changed.nonzero().flatten().tolist() == [4, 5, 6, 7, 8]
    # With a GRU in the decoder the influence runs to the end of the sequence.
    dec = Conv1dFrameDecoder(3, 5, hidden=(8,), temporal="gru", gru_hidden=4)
    assert _influence(dec, torch.randn(1, 3, 12), t=6)[5:].all()


def test_bad_input():
    with pytest.raises(ValueError, match="latent_dim"):
        Conv1dFrameEncoder(10, 0)
    with pytest.raises(ValueError, match="n_freq"):
        Conv1dFrameDecoder(4, -2)
    with pytest.raises(ValueError, match="kernel_size"):
        Conv1dFrameEncoder(10, 4, kernel_size=4)
    with pytest.raises(ValueError, match="temporal"):
        Conv1dFrameDecoder(4, 10, temporal="lstm")
    enc = Conv1dFrameEncoder(10, 4, hidden=(8,))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 10, T\)"):
        enc(torch.randn(2, 12, 5, dtype=torch.cfloat))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 10, T\)"):
        enc(torch.randn(2, 10, dtype=torch.cfloat))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4, T\)"):
        Conv1dFrameDecoder(4, 10, hidden=(8,))(torch.randn(2, 4))
