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
    # the saved model carries the generation settings, which genlib sample and augmentation then use
    from genlib.models import VAE
    from recipes.svhn_semisup import Config

    cfg, prior = Config.quick(), VAE.load(out / "vae.pt").prior
    assert prior.guidance == cfg.generation_guidance != 1.0
    s = prior.sampler
    assert (s.n_steps, s.step_size, s.temperature) == (cfg.generation_steps, cfg.generation_step_size,
                                                       cfg.generation_temperature)
    assert res["sample_quality"]["latent_fd"] >= 0


@pytest.mark.skipif(not _have_mnist(), reason="needs digits/mnist_4k.npz under the shared data folder")
def test_ablation_runs_every_variant_from_one_shared_model(tmp_path):
    out = tmp_path / "abl"
    args = ["--quick", "--ablation", "--iters", "40", "--t-a", "30", "--seeds", "0", "--ls", "10", "20",
            "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out / "ablation.json").read_text())
    names = ["baseline", "naive", "H", "H&CRAIG", "H&AdaCore", "H&Random", "H&CRAIG&PL"]
    for table in ("latent", "downstream"):
        assert list(res[table]) == names, table
        for name in names:
            row = res[table][name]
            assert set(row) == {"10", "20"} and len(row["10"]) == 1
            assert all(0.0 <= a <= 1.0 for a in row["10"] + row["20"])
        assert res[table]["baseline"]["10"] == res[table]["baseline"]["20"]  # one baseline, whatever L
    assert list(res["labels_right"]) == names[1:]  # the baseline selects nothing
    md = (out / "ablation.md").read_text()
    assert md.count("| H&CRAIG |") == 5 and "oracle" in md
    gain = res["downstream_gain"]["H&CRAIG"]["10"][0]
    assert gain == res["downstream"]["H&CRAIG"]["10"][0] - res["downstream"]["baseline"]["10"][0]
    # an interrupted study resumes: finished branches are read back, a missing one is recomputed exactly
    progress = json.loads((out / "ablation_progress.json").read_text())
    assert len(progress) == 14
    del progress["0/20/H&CRAIG"]
    (out / "ablation_progress.json").write_text(json.dumps(progress))
    assert main(args) == 0
    assert json.loads((out / "ablation.json").read_text()) == res


def test_bad_t_a_is_rejected():
    with pytest.raises(SystemExit):
        main(["--quick", "--iters", "40", "--t-a", "40"])


def _fast_quick(monkeypatch):
    """--quick with a one-epoch supervised baseline, so a smoke run takes seconds."""
    import dataclasses

    from recipes import svhn_semisup

    quick = svhn_semisup.Config.quick
    monkeypatch.setattr(svhn_semisup.Config, "quick",
                        classmethod(lambda cls: dataclasses.replace(quick(), baseline_epochs=1)))


@pytest.mark.skipif(not _have_mnist(), reason="needs digits/mnist_4k.npz under the shared data folder")
def test_zero_iterations_reports_the_untrained_model_without_crashing(tmp_path, monkeypatch):
    _fast_quick(monkeypatch)
    out = tmp_path / "run"
    assert main(["--quick", "--iters", "0", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["train"]["n_iters"] == 0 and res["eval_iter"] == []
    assert 0.0 <= res["latent_classifier_accuracy"] <= 1.0
    assert (out / "samples.png").stat().st_size > 0 and not (out / "loss_curves.png").exists()


@pytest.mark.skipif(not _have_mnist(), reason="needs digits/mnist_4k.npz under the shared data folder")
@pytest.mark.parametrize("sub", ["", "digits"])
def test_data_dir_is_the_data_root_or_the_folder_holding_the_file(tmp_path, monkeypatch, sub):
    from recipes import svhn_semisup

    seen = []

    def stop(cfg, data_dir, seed):
        seen.append(data_dir)
        raise KeyboardInterrupt  # the folder is all this test needs; stop before any training

    monkeypatch.setattr(svhn_semisup, "load_data", stop)
    root = default_data_root()
    with pytest.raises(KeyboardInterrupt):
        main(["--quick", "--data-dir", str(root / sub), "--no-progress", "--out", str(tmp_path)])
    assert (root / "digits").samefile(seen[0])


def test_bad_data_dir_and_device_are_argparse_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "holds no mnist_4k.npz" in capsys.readouterr().err
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for argv, message in ((["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
                          (["--device", "cuda"], "--device cuda requested but no CUDA GPU is visible"),
                          (["--seed", "-1"], "argument --seed: must be an integer >= 0"),
                          (["--lr", "0"], "argument --lr: must be a finite number > 0")):
        with pytest.raises(SystemExit) as e:
            main(["--quick", *argv, "--out", str(tmp_path / "o")])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not _have_mnist(), reason="needs digits/mnist_4k.npz under the shared data folder")
def test_rerun_with_other_settings_is_refused_by_name(tmp_path):
    out = tmp_path / "run"
    base = ["--quick", "--iters", "20", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(base) == 0
    strict = {"parse_constant": lambda c: pytest.fail(f"bare {c} in a JSON file")}
    res = json.loads((out / "results.json").read_text(), **strict)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, **strict)
    with pytest.raises(ValueError, match="at step 20, more than n_iters 10"):
        main([*base, "--iters", "10"])
    with pytest.raises(ValueError, match=r"'optimizer': \('adam', 'psgd-kron'\)"):
        main([*base, "--optimizer", "psgd-kron"])
    with pytest.raises(ValueError, match=r"'seed': \(0, 7\)"):
        main([*base, "--seed", "7"])
    with pytest.raises(ValueError, match=r"'train.lr': \(0.001, 0.003\)"):
        main([*base, "--lr", "3e-3"])
    assert json.loads((out / "results.json").read_text()) == res  # the refused runs wrote nothing


@pytest.mark.skipif(not _have_mnist(), reason="needs digits/mnist_4k.npz under the shared data folder")
def test_ablation_records_are_tied_to_their_settings(tmp_path, monkeypatch):
    import recipes.svhn_semisup as svhn

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop  # a study interrupted right after it started (before its first branch)

    monkeypatch.setattr(svhn, "load_data", stop)
    out = tmp_path / "abl"
    args = ["--quick", "--ablation", "--iters", "40", "--t-a", "30", "--seeds", "0", "--ls", "10",
            "--out", str(out)]
    with pytest.raises(Stop):
        main(args)
    with pytest.raises(ValueError, match=r"'augment.start_iter': \(30, 20\)"):
        main([*args, "--t-a", "20"])
    with pytest.raises(ValueError, match=r"'optimizer': \('adam', 'psgd-kron'\)"):
        main([*args, "--optimizer", "psgd-kron"])
    with pytest.raises(ValueError, match=r"'train.n_iters': \(40, 50\)"):
        main([*args, "--iters", "50"])
    with pytest.raises(Stop):  # more seeds and Ls only add records: allowed
        main([*args, "--seeds", "0", "1", "--ls", "10", "20"])
    # records without their settings cannot be vouched for
    (out / "ablation_settings.json").unlink()
    (out / "ablation_progress.json").write_text("{}")
    with pytest.raises(ValueError, match="has no record of its settings"):
        main(args)
