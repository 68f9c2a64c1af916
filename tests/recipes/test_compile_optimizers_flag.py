"""``--compile-optimizers`` in the recipes that train: passed to the engine, and refused by name where the
engine could only fail (a Newton-type optimizer steps with a closure; fp16 steps through a GradScaler)."""

import json

import pytest
import torch

import recipes.vae_optimizers as vae_optimizers
from genlib.train.engine import Engine, needs_closure
from recipes import quickstart, svhn_semisup, vctk_resynthesis


def test_the_hvp_suffix_names_exactly_the_closure_optimizers():
    # engine_options recognises closure optimizers by their recipe names
    params = [torch.zeros(3, requires_grad=True)]
    for name, factory in vae_optimizers.OPTIMIZERS.items():
        assert needs_closure(factory(params)) == name.endswith("-hvp"), name
    for name, factory in svhn_semisup.OPTIMIZERS.items():
        assert needs_closure(factory(params, 1e-3)) == name.endswith("-hvp"), name
    for name in ("adam", "psgd-kron", "psgd-lra", "psgd-lra-hvp"):
        opt = vctk_resynthesis.make_optimizer(vctk_resynthesis.Config(optimizer=name), params)
        assert needs_closure(opt) == name.endswith("-hvp"), name


COMPILE = "--compile-optimizers"
CLOSURE = "steps with a closure"


@pytest.mark.parametrize("main, argv, message", [
    (vae_optimizers.main, [COMPILE, "--optimizers", "adam", "psgd-kron-hvp"], "psgd-kron-hvp " + CLOSURE),
    (vae_optimizers.main, [COMPILE, "--precision", "fp16"], "fp16 steps the optimizers through a"),
    (vae_optimizers.main, ["--optimizers", "adam", "adam"], "--optimizers names each optimizer once"),
    (svhn_semisup.main, [COMPILE, "--quick", "--optimizer", "psgd-lra-hvp"], "psgd-lra-hvp " + CLOSURE),
    (vctk_resynthesis.main, [COMPILE, "--quick", "--optimizer", "psgd-lra-hvp"], "psgd-lra-hvp " + CLOSURE),
    (quickstart.main, [COMPILE, "--quick", "--precision", "fp16"], "fp16 steps the optimizers through a"),
])
def test_what_cannot_compile_is_refused_by_name(tmp_path, capsys, main, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_vae_optimizers_passes_the_flag_to_the_engine(tmp_path, monkeypatch):
    seen = []

    class Recording(Engine):
        def __init__(self, *args, compile_optimizers=False, **kwargs):
            seen.append(compile_optimizers)  # the compiled step itself: tests/train (compiled steps = eager)
            super().__init__(*args, compile_optimizers=False, **kwargs)

    monkeypatch.setattr(vae_optimizers, "Engine", Recording)
    argv = ["--steps", "2", "--optimizers", "adam", "psgd-kron", "--device", "cpu"]
    assert vae_optimizers.main([*argv, "--compile-optimizers", "--out", str(tmp_path)]) == 0
    assert seen == [True, True]
    config = json.loads((tmp_path / "results.json").read_text())["config"]
    assert config["compile_optimizers"] and config["optimizers"] == ["adam", "psgd-kron"]
    assert vae_optimizers.main([*argv, "--optimizers", "psgd-kron", "--out", str(tmp_path / "b")]) == 0
    assert seen[2:] == [False]
