"""`genlib sample` / recipes.sample_synthetic: a dataset file any classifier can load, counts per stage."""

import json

import pytest
import torch

from genlib.cli import main as cli
from genlib.data import SyntheticDataset
from genlib.likelihoods import Bernoulli
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from recipes.sample_synthetic import main


def _checkpoint(tmp_path, prior=True):
    torch.manual_seed(0)
    shape = (1, 8, 8)
    p = LatentEBMPrior(4, 3, hidden=(16,), n_steps=5) if prior else None
    vae = VAE(MLPEncoder(shape, 4, hidden=(32,)), MLPDecoder(4, shape, hidden=(32,)), Bernoulli(), p)
    return str(vae.save(tmp_path / "vae.pt"))


def test_sample_writes_a_weighted_dataset_with_consistent_counts(tmp_path):
    out = tmp_path / "out"
    ckpt = _checkpoint(tmp_path)
    args = ["--checkpoint", ckpt, "--samples-per-class", "40", "--langevin-steps", "5",
            "--entropy-keep", "0.5", "--coreset", "craig", "--coreset-fraction", "0.25",
            "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    ds = SyntheticDataset(out / "synthetic.pt")
    summary = json.loads((out / "summary.json").read_text())
    c = summary["counts"]
    assert c["generated"] == 120 and c["filtered"] <= 60 and len(ds) == c["selected"]
    # CRAIG weights are cluster sizes: they add up to the number of draws that passed the filter
    assert abs(float(ds.weights.sum()) - c["filtered"]) < 1e-4
    assert ds.x.shape[1:] == (1, 8, 8) and set(ds.y.tolist()) <= {0, 1, 2}
    assert ds.meta["counts"] == c and ds.meta["source_checkpoint"] == ckpt
    # draws are generated class by class, 40 each: a kept draw's label is the block it came from
    gi = ds.meta["generated_index"]
    assert gi.unique().numel() == len(ds) and torch.equal(gi // 40, ds.y)
    assert torch.all(ds.meta["entropy"] <= torch.log(torch.tensor(3.0)) + 1e-5)  # at most log K nats
    for png in ("samples_by_entropy.png", "selected.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the same seed reproduces the same dataset
    assert main(args[:-4] + ["--out", str(tmp_path / "again"), "--device", "cpu"]) == 0
    assert torch.equal(SyntheticDataset(tmp_path / "again" / "synthetic.pt").x, ds.x)


def test_cli_alias_and_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["sample", "--help"])
    assert e.value.code == 0 and "--samples-per-class" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([])  # neither --checkpoint nor --quick
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "missing.pt")])
    with pytest.raises(ValueError, match="LatentEBMPrior"):
        main(["--checkpoint", _checkpoint(tmp_path, prior=False), "--out", str(tmp_path / "o"),
              "--device", "cpu"])
    with pytest.raises(SystemExit):  # refused by argparse, naming --entropy-keep (see below)
        main(["--checkpoint", _checkpoint(tmp_path), "--entropy-keep", "2", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--langevin-steps", "-1", "an integer >= 0"),
        ("--samples-per-class", "0", "an integer >= 1"),
        ("--entropy-keep", "2", "a number in (0, 1]"),
        ("--entropy-keep", "nan", "a number in (0, 1]"),
        ("--coreset-fraction", "0", "a number in (0, 1]"),
        ("--seed", "-3", "an integer >= 0"),
    ],
)
def test_every_numeric_flag_is_checked_by_argparse_naming_the_flag(tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", _checkpoint(tmp_path), flag, value, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: must be {expected}" in err
    assert "n_steps" not in err and not (tmp_path / "o").exists()


def test_device_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("tpu", "--device must be cpu, cuda or cuda:N"),
                            ("cuda", "--device cuda requested but no CUDA GPU is visible")):
        with pytest.raises(SystemExit) as e:
            main(["--checkpoint", _checkpoint(tmp_path), "--device", device, "--out", str(tmp_path / "o")])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_defaults_draw_what_the_api_draws_and_the_judge_beside_the_checkpoint_scores_them(tmp_path):
    from genlib.metrics.images import ReferenceClassifier, label_agreement
    from genlib.train import generate_labelled

    torch.manual_seed(0)
    shape = (1, 8, 8)
    prior = LatentEBMPrior(4, 3, hidden=(16,), n_steps=7, step_size=0.05, temperature=0.5, guidance=4.0)
    vae = VAE(MLPEncoder(shape, 4, hidden=(32,)), MLPDecoder(4, shape, hidden=(32,)), Bernoulli(), prior)
    ckpt = str(vae.save(tmp_path / "vae.pt"))
    judge = ReferenceClassifier(shape, 3, width=4, feature_dim=8)
    judge.save(tmp_path / "reference_classifier.pt")
    out = tmp_path / "out"
    assert main(["--checkpoint", ckpt, "--samples-per-class", "20", "--coreset", "none", "--out", str(out),
                 "--device", "cpu"]) == 0
    # no sampler flags: the checkpoint's own generation sampler, exactly the API's default draws
    gen = generate_labelled(VAE.load(ckpt), 20, generator=torch.Generator().manual_seed(0))
    ds = SyntheticDataset(out / "synthetic.pt")
    assert torch.allclose(ds.x, gen.x[ds.meta["generated_index"]], atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    expected = label_agreement(ReferenceClassifier.load(tmp_path / "reference_classifier.pt"),
                               gen.x.clamp(0, 1), gen.y)
    got = summary["reference_agreement"]["unfiltered"]
    assert got["counts"] == [20, 20, 20] and abs(got["overall"] - expected["overall"]) < 1e-9
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    # --guidance overrides the checkpoint's: the unguided draws of the same chains
    assert main(["--checkpoint", ckpt, "--samples-per-class", "20", "--coreset", "none", "--out",
                 str(tmp_path / "unguided"), "--device", "cpu", "--guidance", "1"]) == 0
    unguided_model = VAE.load(ckpt)
    unguided_model.prior.guidance = 1.0
    unguided = generate_labelled(unguided_model, 20, generator=torch.Generator().manual_seed(0))
    ds1 = SyntheticDataset(tmp_path / "unguided" / "synthetic.pt")
    assert torch.allclose(ds1.x, unguided.x[ds1.meta["generated_index"]], atol=1e-6)
    assert not torch.allclose(unguided.z, gen.z, atol=1e-3)
