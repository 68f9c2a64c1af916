"""Delayed-XOR study under torchrun: two CPU processes (gloo) give the runs of one process, and a killed
two-process study continues with only its missing runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from recipes.delayed_xor import main, run_key

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

ROOT = Path(__file__).resolve().parents[2]
# 4 runs (PSGD-LRA and Adam, seeds 0 and 1), two per process; PSGD-LRA's HVP closure must not all-reduce
# over the processes, which run different runs.
STUDY = ["--lengths", "10", "--max-iters", "30", "--optimizers", "psgd_lra", "adam", "--seeds", "2",
         "--device", "cpu"]


def _torchrun(out: Path) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # cwd=ROOT puts recipes/ on the path
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "recipes.delayed_xor", *STUDY, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _outcome(run: dict) -> dict:
    """A run's result, without its wall time."""
    return {k: v for k, v in run.items() if k != "seconds"}


def test_two_processes_run_the_study_of_one_and_continue_a_killed_study(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*STUDY, "--workers", "1", "--out", str(one)]) == 0
    capsys.readouterr()
    expected = _results(one)

    stdout = _torchrun(two)
    assert stdout.count("saved to") == 1 and "4 missing run(s) over 2 processes" in stdout  # process 0 only
    got = _results(two)
    assert got["complete"] and [_outcome(r) for r in got["runs"]] == [_outcome(r) for r in expected["runs"]]
    untimed = lambda rows: [{k: v for k, v in row.items() if k != "mean_seconds"} for row in rows]  # noqa: E731
    assert untimed(got["summary"]) == untimed(expected["summary"])
    assert {k: v for k, v in got["config"].items() if k not in ("workers", "out")} == {
        k: v for k, v in expected["config"].items() if k not in ("workers", "out")}
    assert (two / "loss_curves.png").stat().st_size > 0
    assert not list(two.glob("results.rank*"))  # the part files are merged and gone

    # Killed mid-study: results.json holds PSGD-LRA seed 0, process 1's part file Adam seed 0 (not merged
    # yet). Both carry a wall time a re-run would not reproduce.
    runs = got["runs"]
    kept, part = dict(runs[0], seconds=1234.5), dict(runs[2], seconds=4321.5)
    (two / "results.json").write_text(json.dumps(dict(got, runs=[kept], complete=False)))
    (two / "results.rank1.part.json").write_text(json.dumps(dict(config=got["config"], rank=1, runs=[part])))
    stdout = _torchrun(two)
    assert "2 saved run(s) kept" in stdout and "2 missing run(s) over 2 processes" in stdout
    got = _results(two)
    assert got["complete"] and not list(two.glob("results.rank*"))
    by_key = {run_key(r): r for r in got["runs"]}
    assert len(got["runs"]) == 4 == len(by_key)
    assert by_key[run_key(kept)]["seconds"] == 1234.5 and by_key[run_key(part)]["seconds"] == 4321.5
    assert {k: _outcome(r) for k, r in by_key.items()} == {run_key(r): _outcome(r) for r in expected["runs"]}
