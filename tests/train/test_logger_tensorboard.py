"""MetricsLogger(tensorboard=True): scalars read back from the event files, rewind / resume / fresh start."""

import importlib.util
import math

import pytest
import torch

from genlib.train import MetricsLogger, read_jsonl


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard itself reads from ``directory``, as ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def tb():
    pytest.importorskip("tensorboard")


def test_scalars_go_to_tensorboard_beside_jsonl_and_csv(tmp_path, tb):
    with MetricsLogger(tmp_path, tensorboard=True) as log:
        log.log(step=1, loss=torch.tensor(0.5), acc=0.25, phase="train", done=False)
        log.log(step=2, loss=0.125, lr=1e-3)
        log.log(step=5, loss=float("nan"))  # JSON null; not plotted
    assert log.tensorboard_dir == tmp_path / "tensorboard" / "metrics"
    series = _scalars(log.tensorboard_dir)
    assert set(series) == {"loss", "acc", "lr"}  # the step key, strings, bools and None are not plotted
    assert series["loss"] == [(1, 0.5), (2, 0.125)]
    assert series["acc"] == [(1, 0.25)] and series["lr"][0][0] == 2
    assert series["lr"][0][1] == pytest.approx(1e-3)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 5]  # unchanged


def test_step_key_and_records_without_it(tmp_path, tb):
    with MetricsLogger(tmp_path, name="train", tensorboard=True, step_key="iter") as log:
        log.log(iter=10, loss=1.0)
        log.log(iter=20, loss=0.5)
        log.log(val_loss=0.7)  # no "iter": placed at its position, 2
    series = _scalars(tmp_path / "tensorboard" / "train")
    assert series["loss"] == [(10, 1.0), (20, 0.5)] and series["val_loss"] == [(2, pytest.approx(0.7))]


def test_rewind_hides_the_rewound_points_and_resume_continues(tmp_path, tb):
    with MetricsLogger(tmp_path, tensorboard=True, step_key="iter") as log:
        for i in range(1, 6):
            log.log(iter=i, loss=float(i))
    # An interrupted run resumed from its checkpoint at iter 3 logs iters 4 and 5 again, differently.
    with MetricsLogger(tmp_path, resume=True, tensorboard=True, step_key="iter") as log:
        assert log.rewind(3, key="iter") == 2
        for i in (4, 5, 6):
            log.log(iter=i, loss=10.0 * i)
    assert _scalars(log.tensorboard_dir)["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0),
                                                    (6, 60.0)]
    assert [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 40, 50, 60]
    # A fresh start drops the old event files as it truncates the JSON lines.
    with MetricsLogger(tmp_path, tensorboard=True, step_key="iter") as log:
        log.log(iter=1, loss=-1.0)
    assert _scalars(log.tensorboard_dir)["loss"] == [(1, -1.0)]


def test_logging_after_close_reopens_the_writer(tmp_path, tb):
    log = MetricsLogger(tmp_path, tensorboard=True)
    log.log(step=0, x=1.0)
    log.close()
    log.log(step=1, x=2.0)
    log.close()
    assert _scalars(log.tensorboard_dir)["x"] == [(0, 1.0), (1, 2.0)]


def test_without_the_option_nothing_of_tensorboard_is_written(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(step=1, loss=math.pi)
    log.close()  # harmless without a writer
    assert log.tensorboard_dir is None and not (tmp_path / "tensorboard").exists()


def test_missing_tensorboard_gives_a_clear_import_error(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MetricsLogger(tmp_path, tensorboard=True)
    MetricsLogger(tmp_path).log(step=1, loss=0.5)  # the option unused: fine without the package


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="tensorboard must be a bool"):
        MetricsLogger(tmp_path, tensorboard="yes")
    with pytest.raises(ValueError, match="step_key must be a non-empty metric name"):
        MetricsLogger(tmp_path, step_key="")
