"""Delayed-XOR recipe: the data generator's contract, the RNN's recurrence, and a tiny PSGD-LRA run."""

import json

import pytest
import torch
from torch import nn

from recipes.delayed_xor import (
    XorConfig,
    XorRNN,
    logistic_loss,
    main,
    make_batch,
    run_one,
    run_study,
    summarize,
)


def test_batch_targets_are_xor_of_the_two_marked_values():
    gen = torch.Generator().manual_seed(0)
    length = 40
    x, y = make_batch(512, length, gen)
    assert x.shape == (512, length, 2) and y.shape == (512,)
    values, marker = x[..., 0], x[..., 1]
    assert set(values.unique().tolist()) == {-1.0, 1.0}
    assert torch.all(marker.sum(1) == 2)
    pos = marker.nonzero()[:, 1].view(512, 2)
    # First mark in the first 10% of the sequence, second in the next 40%.
    assert torch.all(pos[:, 0] < 0.1 * length)
    assert torch.all((pos[:, 1] >= 0.1 * length) & (pos[:, 1] < 0.5 * length))
    a = values.gather(1, pos[:, :1]).squeeze(1)
    b = values.gather(1, pos[:, 1:]).squeeze(1)
    expected = torch.where(a != b, 1.0, -1.0)  # XOR: +1 when the signs differ
    assert torch.equal(y, expected)
    # Balanced classes and reproducible for a given seed.
    assert abs(float(y.mean())) < 0.15
    x2, y2 = make_batch(512, length, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_rnn_loop_matches_torch_rnn():
    gen = torch.Generator().manual_seed(1)
    model = XorRNN(2, 30, generator=gen)
    ref = nn.RNN(2, 30, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(model.w_x.T)
        ref.weight_hh_l0.copy_(model.w_h.T)
        ref.bias_ih_l0.copy_(model.b)
        ref.bias_hh_l0.zero_()
    x, _ = make_batch(8, 20, gen)
    h_last = ref(x)[1][0]
    expected = (h_last @ model.w_o).squeeze(-1) + model.b_o
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    # W_h starts orthogonal, as in the paper's script.
    torch.testing.assert_close(model.w_h @ model.w_h.T, torch.eye(30), atol=1e-5, rtol=0)


def test_logistic_loss_closed_form():
    f = torch.tensor([0.0, 2.0, -1.0])
    y = torch.tensor([1.0, -1.0, -1.0])
    expected = torch.log1p(torch.exp(-y * f)).mean()
    torch.testing.assert_close(logistic_loss(f, y), expected)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="length"):
        make_batch(4, 5, torch.Generator())
    with pytest.raises(ValueError, match="optimizers"):
        XorConfig(optimizers=("lbfgs",))
    with pytest.raises(ValueError, match="x must have shape"):
        XorRNN()(torch.zeros(4, 10))


def test_psgd_lra_solves_short_delayed_xor_within_cap():
    torch.set_num_threads(1)
    cfg = XorConfig(max_iters=1500, workers=1)
    rec = run_one(cfg, "psgd_lra", 10, seed=0)
    assert rec["solved"], rec["final_running_loss"]
    assert rec["iterations"] < 1500 and rec["final_running_loss"] < 0.1
    rows = summarize([rec, dict(rec, seed=1, solved=False, iterations=1500)])
    assert rows[0]["success_rate"] == 0.5 and rows[0]["median_iters_solved"] == rec["iterations"]


def test_cli_writes_json_and_figure(tmp_path):
    # A capped run that cannot solve L=30 in 30 iterations: recorded as a failure, files written.
    rows = main(["--lengths", "30", "--seeds", "1", "--max-iters", "30", "--optimizers", "adam",
                 "--workers", "1", "--out", str(tmp_path)])
    assert rows[0]["success_rate"] == 0.0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["runs"][0]["iterations"] == 30 and not data["runs"][0]["solved"] and data["complete"]
    assert (tmp_path / "loss_curves.png").stat().st_size > 0
    # --summarize merges saved studies (one folder per optimizer, say) back into one table.
    other = tmp_path / "sgd"
    main(["--lengths", "30", "--seeds", "1", "--max-iters", "20", "--optimizers", "sgd",
          "--workers", "1", "--out", str(other)])
    merged = main(["--summarize", str(tmp_path), str(other / "results.json")])
    got = [(r["optimizer"], r["runs"], r["success_rate"]) for r in merged]
    assert got == [("adam", 1, 0.0), ("sgd", 1, 0.0)]
    # --first-seed adds seeds to a study: adam seed 3 here, merged with seed 0 above.
    more = tmp_path / "more"
    main(["--lengths", "30", "--seeds", "1", "--first-seed", "3", "--max-iters", "20", "--optimizers", "adam",
          "--workers", "1", "--out", str(more)])
    assert [r["seed"] for r in json.loads((more / "results.json").read_text())["runs"]] == [3]
    merged = main(["--summarize", str(tmp_path), str(more)])
    assert [(r["optimizer"], r["runs"]) for r in merged] == [("adam", 2)]
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])


def test_summarize_names_a_missing_or_foreign_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--summarize", str(tmp_path / "nowhere")])
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(SystemExit):
        main(["--summarize", str(tmp_path / "other.json")])
    assert "is not a delayed_xor results.json" in capsys.readouterr().err


def test_study_reports_every_finished_run_in_order():
    cfg = XorConfig(lengths=(10,), seeds=(0, 1), optimizers=("adam", "sgd"), max_iters=3, workers=1)
    seen: list[list[tuple[str, int]]] = []
    records = run_study(cfg, on_result=lambda done: seen.append([(r["optimizer"], r["seed"]) for r in done]))
    order = [("adam", 0), ("adam", 1), ("sgd", 0), ("sgd", 1)]
    assert [(r["optimizer"], r["seed"]) for r in records] == order
    assert seen == [order[: k + 1] for k in range(4)]
