"""MetricsLogger: JSON lines + CSV with a growing header, resume, scalar conversion."""

import csv
import math

import numpy as np
import pytest
import torch

from genlib.train import MetricsLogger, read_jsonl


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_jsonl_and_csv_with_new_columns(tmp_path):
    log = MetricsLogger(tmp_path / "run")
    log.log(step=1, loss=torch.tensor(0.5))
    log.log(step=2, loss=np.float32(0.25))
    log.log(step=3, loss=0.125, acc=0.9)  # a new key widens the CSV
    log.log(step=4, acc=0.95)
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == [
        {"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}, {"step": 3, "loss": 0.125, "acc": 0.9},
        {"step": 4, "acc": 0.95},
    ]
    rows = _csv(tmp_path / "run" / "metrics.csv")
    assert rows == [["step", "loss", "acc"], ["1", "0.5", ""], ["2", "0.25", ""], ["3", "0.125", "0.9"],
                    ["4", "", "0.95"]]
    h = log.history()
    assert h["step"] == [1.0, 2.0, 3.0, 4.0] and math.isnan(h["loss"][3]) and math.isnan(h["acc"][0])
    assert log.series("acc") == [0.9, 0.95]


def test_resume_appends_and_fresh_start_truncates(tmp_path):
    MetricsLogger(tmp_path).log(epoch=1, loss=1.0)
    resumed = MetricsLogger(tmp_path, resume=True)
    resumed.log(epoch=2, loss=0.5)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert len(_csv(tmp_path / "metrics.csv")) == 3
    MetricsLogger(tmp_path)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [] and _csv(tmp_path / "metrics.csv") == []


def test_bad_metrics(tmp_path):
    log = MetricsLogger(tmp_path)
    with pytest.raises(ValueError, match="metric 'w' must be a scalar"):
        log.log(w=torch.ones(3))
    with pytest.raises(ValueError, match="metric 'm' must be a number"):
        log.log(m=[1, 2])
    with pytest.raises(ValueError, match="at least one metric"):
        log.log()
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
