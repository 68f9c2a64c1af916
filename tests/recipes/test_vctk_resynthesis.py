import json
import math

import pytest

from genlib.data import default_data_root
from recipes import vctk_resynthesis

VCTK = default_data_root() / "speech" / "vctk16k"
pytestmark = pytest.mark.skipif(not VCTK.is_dir(), reason=f"shared VCTK folder missing: {VCTK}")


def test_quick_run_trains_both_decoders_and_beats_untrained(tmp_path):
    rc = vctk_resynthesis.main(
        ["--quick", "--epochs", "8", "--optimizer", "adam", "--data-dir", str(VCTK), "--out", str(tmp_path)]
    )
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(res) == {"gamma", "itakura-saito"}
    for name, r in res.items():
        for key in ("pesq_wb_gt_phase", "pesq_wb_gl_phase"):
            assert math.isfinite(r[key]) and 1.0 <= r[key] <= 4.65, (name, key, r[key])
        assert math.isfinite(r["lsd_db"]) and r["lsd_db"] > 0, (name, r["lsd_db"])
        # training must raise the held-out speaker's ELBO well above the same model at initialisation
        assert r["test_elbo_per_frame"] > r["untrained_test_elbo_per_frame"] + 100, (name, r)
    # ground-truth phase can only help: GL must estimate the phase the GT run is given
    assert res["gamma"]["pesq_wb_gt_phase"] >= res["gamma"]["pesq_wb_gl_phase"] - 0.05
    for png in ("spectrograms.png", "precision_gamma.png", "loss_curves.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_bad_epochs_rejected():
    with pytest.raises(SystemExit):
        vctk_resynthesis.main(["--epochs", "0"])
