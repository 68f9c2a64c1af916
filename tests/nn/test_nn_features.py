import math

import pytest
import torch

from genlib.nn import LogPowerFeatures


def test_log_power_and_phase_values():
    x = torch.tensor([[3 + 4j, -1 + 0j, 0 + 2j]], dtype=torch.cfloat)
    f = LogPowerFeatures(with_phase=True, eps=1e-6)(x)
    assert f.shape == (1, 9)
    torch.testing.assert_close(f[0, :3], torch.log(torch.tensor([25.0, 1.0, 4.0]) + 1e-6))
    torch.testing.assert_close(f[0, 3:6], torch.tensor([0.6, -1.0, 0.0]), atol=1e-6, rtol=0)  # cos = Re/|x|
    torch.testing.assert_close(f[0, 6:], torch.tensor([0.8, 0.0, 1.0]), atol=1e-6, rtol=0)  # sin = Im/|x|
    # eps floors silent bins instead of giving -inf.
    assert LogPowerFeatures(eps=1e-8)(torch.zeros(1, 2, dtype=torch.cfloat))[0, 0].item() == pytest.approx(
        math.log(1e-8)
    )


def test_sequences_stack_features_along_channels():
    x = torch.randn(2, 5, 7, dtype=torch.cfloat)
    feats = LogPowerFeatures(with_phase=True)
    assert feats.output_shape((5, 7)) == (15, 7)
    f = feats(x)
    assert f.shape == (2, 15, 7)
    torch.testing.assert_close(f[:, :5], torch.log(x.abs() ** 2 + 1e-8))
    torch.testing.assert_close(f[:, 5:10] ** 2 + f[:, 10:] ** 2, torch.ones(2, 5, 7))
    # Real non-negative magnitudes give the same log-power as the complex spectrum.
    torch.testing.assert_close(LogPowerFeatures()(x.abs()), f[:, :5])


def test_bad_input():
    with pytest.raises(ValueError, match="eps"):
        LogPowerFeatures(eps=0.0)
    with pytest.raises(ValueError, match="negative"):
        LogPowerFeatures()(torch.tensor([[1.0, -2.0]]))
    with pytest.raises(ValueError, match=r"\(B, F, \.\.\.\)"):
        LogPowerFeatures()(torch.ones(3, dtype=torch.cfloat))
