"""SemiSupervisedTrainer's checkpoints: settings-checked resume, no duplicated metric rows, strict JSON."""

import json

import pytest
import torch

from genlib.likelihoods import Gaussian
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.train import MetricsLogger, SemiSupervisedConfig, SemiSupervisedTrainer, read_jsonl
from genlib.train.checkpoint import SettingsMismatchError


def _data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(4)
    x = 3.0 * torch.eye(4, 6)[y] + 0.3 * torch.randn(16, 6, generator=g)
    return x, x[::4], y[::4]


def _trainer(out, optimizer=None, settings=None, logger=None, **kw):
    torch.manual_seed(0)
    prior = LatentEBMPrior(2, 4, hidden=(8,), n_steps=2)
    vae = VAE(MLPEncoder((6,), 2, hidden=(8,)), MLPDecoder(2, (6,), hidden=(8,)), Gaussian(0.5), prior)
    cfg = dict(n_iters=4, batch_size=8, langevin_steps=2, eval_every=1, checkpoint_every=2, progress=False)
    cfg.update(kw)
    return SemiSupervisedTrainer(vae, SemiSupervisedConfig(**cfg), optimizer=optimizer, device="cpu",
                                 checkpoint_dir=out / "checkpoints", logger=logger, settings=settings)


def test_rerun_with_other_settings_is_refused_by_name(tmp_path):
    x_u, x_l, y_l = _data()
    _trainer(tmp_path, settings={"data_dir": "a"}).fit(x_u, x_l, y_l)
    with pytest.raises(SettingsMismatchError, match=r"'train.seed': \(0, 1\)"):
        _trainer(tmp_path, settings={"data_dir": "a"}, seed=1).fit(x_u, x_l, y_l)
    with pytest.raises(SettingsMismatchError, match=r"'optimizer_class': \('Adam', 'SGD'\)"):
        _trainer(tmp_path, optimizer=torch.optim.SGD, settings={"data_dir": "a"}).fit(x_u, x_l, y_l)
    with pytest.raises(SettingsMismatchError, match=r"'data_dir': \('a', 'b'\)"):
        _trainer(tmp_path, settings={"data_dir": "b"}).fit(x_u, x_l, y_l)
    with pytest.raises(ValueError, match="at step 4, more than n_iters 2"):
        _trainer(tmp_path, settings={"data_dir": "a"}, n_iters=2).fit(x_u, x_l, y_l)
    # what may change on a resume: the target (upwards), cadences, progress bar
    t = _trainer(tmp_path, settings={"data_dir": "a"}, n_iters=6, eval_every=3, checkpoint_every=3)
    assert t.fit(x_u, x_l, y_l)["iter"] == [1, 2, 3, 4, 5, 6]


def test_resumed_run_does_not_log_rows_twice_and_logs_strict_json(tmp_path):
    x_u, x_l, y_l = _data()
    _trainer(tmp_path, logger=MetricsLogger(tmp_path, resume=True)).fit(x_u, x_l, y_l, (x_l, y_l))
    # killed after logging iterations 3 and 4 but before the checkpoint of 4 was written
    (tmp_path / "checkpoints" / "ckpt_00000004.pt").unlink()
    _trainer(tmp_path, logger=MetricsLogger(tmp_path, resume=True)).fit(x_u, x_l, y_l, (x_l, y_l))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    text = (tmp_path / "metrics.jsonl").read_text()
    for line in text.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
    assert "aug_loss" not in rows[0]  # no augmentation: no synthetic loss recorded
