import pytest
import torch
from torch import nn

from genlib.nn import (
    Conv1dFrameEncoder,
    DCGANDecoder,
    LogPowerFeatures,
    MLPEncoder,
    WideResNetEncoder,
    from_spec,
    get_config,
    to_spec,
)
from genlib.nn.config import Configurable


class PlainScale(nn.Module):
    """Not Configurable: stores its constructor arguments under the same names (scikit-learn style)."""

    def __init__(self, factor: float, offset: float = 0.0):
        super().__init__()
        self.factor = factor
        self.offset = offset

    def forward(self, x):
        return self.factor * x + self.offset


class Forgetful(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.k = factor


class Base(Configurable, nn.Module):
    def __init__(self, width: int, depth: int = 2):
        super().__init__()
        self.width, self.depth = width, depth


class Derived(Base):
    def __init__(self, width: int, tag: str = "x"):
        super().__init__(width, depth=5)
        self.tag = tag


def test_configurable_records_the_outermost_call_with_defaults_and_positionals():
    assert Base(3).get_config() == {"width": 3, "depth": 2}
    # Only the most derived __init__ records: its arguments are what rebuilds the object.
    assert Derived(4, tag="y").get_config() == {"width": 4, "tag": "y"}
    assert MLPEncoder((1, 28, 28), 8, (64,)).get_config()["hidden"] == (64,)


CASES = {
    "mlp+features": (
        lambda: MLPEncoder((12,), 3, (8,), activation="elu", features=LogPowerFeatures(True, eps=1e-5)),
        lambda: torch.randn(2, 12, dtype=torch.cfloat),
    ),
    "wrn": (
        lambda: WideResNetEncoder(1, 3, depth=10, widen_factor=1, image_size=28),
        lambda: torch.rand(2, 1, 28, 28),
    ),
    "dcgan": (lambda: DCGANDecoder(3, 1, 2, image_size=28, base_channels=4), lambda: torch.randn(2, 3)),
    "conv1d+bigru": (
        lambda: Conv1dFrameEncoder(12, 3, hidden=(8,), temporal="bigru", gru_hidden=4, with_phase=True),
        lambda: torch.randn(2, 12, 5, dtype=torch.cfloat),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_spec_round_trip_rebuilds_the_same_function(case):
    make, make_input = CASES[case]
    torch.manual_seed(0)
    original = make().eval()
    spec = to_spec(original)
    rebuilt = from_spec(spec).eval()
    assert type(rebuilt) is type(original) and to_spec(rebuilt) == spec
    rebuilt.load_state_dict(original.state_dict())  # strict: same parameter names and shapes
    x = make_input()
    a, b = original(x), rebuilt(x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(u, v)


def test_nested_module_arguments_are_stored_as_specs():
    spec = to_spec(MLPEncoder((12,), 3, features=LogPowerFeatures(with_phase=True)))
    assert spec["config"]["features"] == {
        "__class__": "genlib.nn.features.LogPowerFeatures",
        "config": {"with_phase": True, "eps": 1e-8},
    }


def test_non_configurable_modules_are_read_from_attributes():
    # (Rebuilt by hand rather than from_spec: test modules need not be importable by name.)
    spec = to_spec(PlainScale(2.0, offset=1.0))
    assert spec["__class__"].endswith(".PlainScale") and spec["config"] == {"factor": 2.0, "offset": 1.0}
    m = PlainScale(**spec["config"])
    assert (m.factor, m.offset) == (2.0, 1.0)
    with pytest.raises(ValueError, match="'factor' of Forgetful"):
        get_config(Forgetful(2.0))


def test_bad_specs():
    class Local(Configurable, nn.Module):
        pass

    with pytest.raises(ValueError, match="inside a function"):
        to_spec(Local())
    with pytest.raises(ValueError, match="torch.nn.Module"):
        to_spec("not a module")
    with pytest.raises(ValueError, match="not found"):
        from_spec({"__class__": "genlib.nn.NoSuchNet", "config": {}})
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        from_spec({"__class__": "genlib.utils.atomic_save", "config": {}})
    with pytest.raises(ValueError, match="__class__"):
        from_spec({"config": {}})
