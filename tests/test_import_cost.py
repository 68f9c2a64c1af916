"""Heavy optional pieces load where they are used: importing a sub-package does not pull them in."""

import importlib
import subprocess
import sys

import pytest

SPEECH_STACK = ["torchaudio", "soundfile", "pesq", "pystoi", "scipy.signal"]


def _loaded_after(statement: str, candidates: list[str]) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {candidates!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return out.stdout.split()


@pytest.mark.parametrize(
    "statement, absent",
    [
        ("import genlib.train", SPEECH_STACK),
        ("import genlib.data", ["torchaudio", "soundfile", "scipy"]),
        ("import genlib.metrics", ["pesq", "pystoi", "scipy.signal"]),
        ("import genlib.metrics.images", ["pesq", "pystoi", "scipy.signal"]),
        ("import genlib.cli", ["torch"]),
    ],
)
def test_import_does_not_load_the_heavy_optional_stack(statement, absent):
    assert _loaded_after(statement, absent) == []


def test_the_lazy_names_load_on_first_use():
    # In a fresh interpreter: the speech metrics appear only once one of their names is touched.
    statement = "import genlib.metrics as m\nassert 'pystoi' not in sys.modules\nm.stoi"
    assert _loaded_after(statement, ["pystoi"]) == ["pystoi"]


@pytest.mark.parametrize("package", ["genlib.data", "genlib.metrics", "genlib.train"])
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_fad_stays_the_function_when_its_module_is_imported_too():
    # genlib.metrics.fad is both a submodule and a function; the package exports the function.
    statement = ("import genlib.metrics.images, genlib.metrics.fad\nfrom genlib.metrics import fad\n"
                 "print(fad.__name__)")  # a function's name is 'fad', the module's 'genlib.metrics.fad'
    out = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fad"
