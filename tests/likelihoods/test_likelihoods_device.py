"""Every likelihood on every available device (CPU always, CUDA when present) in float32 agrees with the
float64 CPU computation, keeps its tensors on the device, and samples there."""

import pytest
import torch

import genlib.likelihoods as L

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LIKELIHOODS = [
    L.Gaussian(0.3),
    L.Gaussian("learned", sigma_shape=(6, 1)),
    L.Gaussian("decoder"),
    L.Bernoulli(),
    L.Gamma(),
    L.ItakuraSaito(concentration=1.5),
    L.LogNormalVonMises(),
    L.GammaVonMises(),
    L.ComplexNormal(),
    L.ComplexLaplace(),
]


def _data(lik, g):
    shape = (4, 6, 9)  # (B, F, T)
    if isinstance(lik, L.Bernoulli):
        return torch.rand(shape, generator=g, dtype=torch.float64)
    if isinstance(lik, L.Gaussian):
        return torch.randn(shape, generator=g, dtype=torch.float64)
    r = torch.rand(shape, generator=g, dtype=torch.float64) * 3 + 0.05
    return torch.polar(r, torch.rand(shape, generator=g, dtype=torch.float64) * 6.2 - 3.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lik", LIKELIHOODS, ids=lambda m: f"{type(m).__name__}-{m.n_params}")
def test_float32_on_device_matches_float64_on_cpu(lik, device):
    g = torch.Generator().manual_seed(0)
    x64 = _data(lik, g)
    raw64 = torch.randn(4, lik.n_params, 6, 9, generator=g, dtype=torch.float64)
    ref = lik.double().log_prob(x64, raw64)
    lik32 = lik.float().to(device)
    x = x64.to(device, torch.complex64 if x64.is_complex() else torch.float32)
    raw = raw64.to(device, torch.float32).requires_grad_()
    lp = lik32.log_prob(x, raw)
    assert lp.device.type == device and lp.dtype == torch.float32
    torch.testing.assert_close(lp.double().cpu(), ref, rtol=1e-4, atol=1e-4)
    (grad,) = torch.autograd.grad(lp.sum(), raw)
    assert torch.isfinite(grad).all()
    dist = lik32(raw.detach())
    for value in (dist.mean, dist.sample()):
        assert value.device.type == device and value.shape == x.shape and torch.isfinite(value).all()
    if hasattr(dist, "resynthesize"):
        phase = torch.zeros(x.shape, device=device)
        out = dist.resynthesize(phase)
        assert out.is_complex() and out.device.type == device
        torch.testing.assert_close(out.real, dist.magnitude_mean)
    lik.float().cpu()  # the module-level instances are shared between parameter cases
