"""Smoke test of recipes/svhn_semisup.py's --quick path on a reduced budget."""

import json

import pytest

from genlib.data.images import default_data_root
from recipes.svhn_semisup import main


def _have_mnist() -> bool:
    try:
        return (default_data_root() / "digits" / "mnist_4k.npz").is_file()
    except FileNotFoundError:
        return False


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.skipif(not _have_mnist(), reason="needs digits/mnist_4k.npz under the shared data folder")
def test_quick_run_writes_outputs_and_beats_chance(tmp_path):
    out = tmp_path / "run"
    assert main(["--quick", "--iters", "120", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_labeled"] == 100 and res["n_test"] == 1000 and res["n_unlabeled"] == 2900
    assert res["latent_classifier_accuracy"] > 0.2  # 10 classes: chance 0.1
    assert res["supervised_only_accuracy"] > 0.5
    for name in ("samples.png", "loss_curves.png", "metrics.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    # running again resumes the finished run from its checkpoint: same accuracy, no new training
    assert main(["--quick", "--iters", "120", "--out", str(out), "--no-progress"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["latent_classifier_accuracy"] == res["latent_classifier_accuracy"]
