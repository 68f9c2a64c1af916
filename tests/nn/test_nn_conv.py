import pytest
import torch

from genlib.nn import DCGANDecoder, WideResNetEncoder


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_wide_resnet_encoder_shapes(channels, size):
    enc = WideResNetEncoder(channels, latent_dim=7, depth=10, widen_factor=1, image_size=size)
    mu, logvar = enc(torch.rand(4, channels, size, size))
    assert mu.shape == logvar.shape == (4, 7)
    assert enc.embed(torch.rand(2, channels, size, size)).shape == (2, 64)


def test_wide_resnet_28_2_architecture():
    enc = WideResNetEncoder(3, latent_dim=10)  # WRN-28-2: 4 blocks per group, widths 32/64/128
    blocks = [m for m in enc.modules() if type(m).__name__ == "_WideBlock"]
    assert len(blocks) == 12
    assert [b.conv2.out_channels for b in blocks[::4]] == [32, 64, 128]
    # Published size of WRN-28-2 is ~1.5M parameters (Zagoruyko & Komodakis 2016; Oliver et al. 2018).
    n = sum(p.numel() for p in enc.body.parameters())
    assert 1.40e6 < n < 1.55e6
    # Two stride-2 groups: the last feature map of a 32x32 input is 8x8.
    feats = {}
    blocks[-1].register_forward_hook(lambda m, i, o: feats.setdefault("last", o))
    enc.eval()(torch.rand(1, 3, 32, 32))
    assert feats["last"].shape == (1, 128, 8, 8)


@pytest.mark.parametrize(("size", "n_params"), [(28, 1), (32, 2), (64, 3)])
def test_dcgan_decoder_shapes(size, n_params):
    dec = DCGANDecoder(latent_dim=5, out_channels=3, n_params=n_params, image_size=size, base_channels=8)
    assert dec(torch.randn(2, 5)).shape == (2, n_params, 3, size, size)


def test_dcgan_32_is_four_deconvolutions_and_28_is_a_centre_crop():
    torch.manual_seed(0)
    d32 = DCGANDecoder(4, 1, 1, image_size=32, base_channels=8).eval()
    d28 = DCGANDecoder(4, 1, 1, image_size=28, base_channels=8).eval()
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in d32.modules()) == 4
    d28.load_state_dict(d32.state_dict())
    z = torch.randn(3, 4)
    torch.testing.assert_close(d28(z), d32(z)[..., 2:30, 2:30])


def test_bad_input():
    with pytest.raises(ValueError, match="depth"):
        WideResNetEncoder(3, 8, depth=12)
    with pytest.raises(ValueError, match="latent_dim"):
        WideResNetEncoder(3, 0)
    with pytest.raises(ValueError, match="latent_dim"):
        DCGANDecoder(0, 3)
    with pytest.raises(ValueError, match="image_size"):
        DCGANDecoder(4, 3, image_size=4)
    enc = WideResNetEncoder(3, 4, depth=10, widen_factor=1, image_size=32)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, 32, 32\)"):
        enc(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4\)"):
        DCGANDecoder(4, 3, base_channels=8)(torch.randn(2, 4, 1, 1))
