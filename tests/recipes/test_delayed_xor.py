"""Delayed-XOR recipe: the data generator's contract, the RNN's recurrence, and a tiny PSGD-LRA run."""

import json
from dataclasses import asdict

import pytest
import torch
from torch import nn

from recipes.delayed_xor import (
    PAPER_SETTINGS,
    XorConfig,
    XorLSTM,
    XorRNN,
    build_parser,
    config_from_args,
    load_saved_study,
    logistic_loss,
    main,
    make_batch,
    merge_part_files,
    missing_runs,
    rank_device,
    run_one,
    run_study,
    summarize,
    summarize_files,
    torchrun_env,
    write_results,
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


def _load_into_torch(ref: nn.RNNBase, model: nn.Module) -> None:
    """Copy ``model``'s weights into the equivalent one-layer ``torch.nn`` recurrent module."""
    with torch.no_grad():
        ref.weight_ih_l0.copy_(model.w_x.T)
        ref.weight_hh_l0.copy_(model.w_h.T)
        ref.bias_ih_l0.copy_(model.b)
        ref.bias_hh_l0.zero_()


def test_rnn_loop_matches_torch_rnn():
    gen = torch.Generator().manual_seed(1)
    model = XorRNN(2, 30, generator=gen)
    ref = nn.RNN(2, 30, batch_first=True)
    _load_into_torch(ref, model)
    x, _ = make_batch(8, 20, gen)
    h_last = ref(x)[1][0]
    expected = (h_last @ model.w_o).squeeze(-1) + model.b_o
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    # W_h starts orthogonal, as in the paper's script.
    torch.testing.assert_close(model.w_h @ model.w_h.T, torch.eye(30), atol=1e-5, rtol=0)


def test_lstm_loop_matches_torch_lstm():
    gen = torch.Generator().manual_seed(2)
    model = XorLSTM(2, 30, generator=gen)
    ref = nn.LSTM(2, 30, batch_first=True)  # same gate order (i, f, g, o)
    _load_into_torch(ref, model)
    x, _ = make_batch(8, 20, gen)
    h_last = ref(x)[1][0][0]
    torch.testing.assert_close(model(x), (h_last @ model.w_o).squeeze(-1) + model.b_o, rtol=1e-5, atol=1e-6)
    b = model.b.detach()
    assert torch.equal(b[30:60], torch.ones(30)) and float(b[:30].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.zeros(4, 10))


def _cfg(*argv: str) -> XorConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_presets_combine_and_explicit_flags_win():
    cfg = _cfg("--full", "--rank-study", "--paper-settings")
    assert cfg.seeds == tuple(range(10)) and cfg.lengths == (32, 55, 64, 112) and cfg.max_iters == 100_000
    assert cfg.optimizers == ("psgd_lra",) and cfg.ranks == (0, 1, 2, 5, 10)
    got = (cfg.psgd_lr, cfg.psgd_preconditioner_lr, cfg.grad_clip, cfg.sgd_momentum)
    assert got == (0.01, 0.01, 1.0, 0.0)
    assert PAPER_SETTINGS["psgd_preconditioner_lr"] == 0.01
    default = _cfg()
    assert default.psgd_preconditioner_lr == 0.1 and default.archs == ("rnn",)  # genlib's default differs
    cfg = _cfg("--quick", "--rank-study", "--paper-settings", "--precond-lr", "0.05",
               "--archs", "rnn", "lstm")
    assert cfg.lengths == (16,) and cfg.ranks == (0, 1, 2, 5, 10) and cfg.psgd_lr == 0.01
    assert cfg.psgd_preconditioner_lr == 0.05 and cfg.archs == ("rnn", "lstm")
    assert _cfg("--psgd-lr", "0.02", "--sgd-momentum", "0").psgd_lr == 0.02


def test_paper_settings_reach_the_optimizers():
    from recipes.delayed_xor import _make_optimizer

    params = list(XorRNN(2, 4).parameters())
    cfg = _cfg("--paper-settings")
    lra = _make_optimizer("psgd_lra", params, cfg, 10, 0).param_groups[0]
    got = (lra["lr"], lra["preconditioner_lr"], lra["momentum"], lra["grad_clip_max_norm"])
    assert got == (0.01, 0.01, 0.0, 1.0)
    assert _make_optimizer("sgd", params, cfg, 10, 0).param_groups[0]["momentum"] == 0.0
    assert _make_optimizer("psgd_lra", params, _cfg(), 10, 0).param_groups[0]["preconditioner_lr"] == 0.1


def test_run_records_its_architecture_and_an_lstm_study_is_its_own_column(tmp_path):
    cfg = XorConfig(lengths=(10,), seeds=(0,), optimizers=("psgd_lra", "adam"), archs=("rnn", "lstm"),
                    max_iters=3, workers=1, out=str(tmp_path))
    records = run_study(cfg)
    assert [(r["optimizer"], r["arch"]) for r in records] == [
        ("psgd_lra", "rnn"), ("psgd_lra", "lstm"), ("adam", "rnn"), ("adam", "lstm")]
    rows = summarize(records)
    assert {(r["optimizer"], r["arch"]) for r in rows} == {
        ("psgd_lra(r=10)", "rnn"), ("psgd_lra(r=10)", "lstm"), ("adam", "rnn"), ("adam", "lstm")}
    write_results(records[:2], cfg, complete=False)
    done, study = load_saved_study(cfg)
    assert len(done) == 2 and len(run_study(study, done=done)) == 4  # the LSTM runs are not re-run


def test_bad_config_values_name_the_setting():
    with pytest.raises(ValueError, match="archs"):
        XorConfig(archs=("gru",))
    with pytest.raises(ValueError, match="psgd_preconditioner_lr"):
        XorConfig(psgd_preconditioner_lr=0.0)
    with pytest.raises(ValueError, match="sgd_momentum"):
        XorConfig(sgd_momentum=1.0)


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


TINY = ["--lengths", "10", "--max-iters", "5", "--optimizers", "adam", "--workers", "1"]


def _runs(out) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def test_cli_writes_json_and_figure(tmp_path, capsys):
    # A capped run that cannot solve L=30 in 30 iterations: recorded as a failure, files written.
    assert main(["--lengths", "30", "--seeds", "1", "--max-iters", "30", "--optimizers", "adam",
                 "--workers", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"][0]["success_rate"] == 0.0
    assert data["runs"][0]["iterations"] == 30 and not data["runs"][0]["solved"] and data["complete"]
    assert (tmp_path / "loss_curves.png").stat().st_size > 0
    # --summarize merges saved studies (one folder per optimizer, say) back into one table.
    other = tmp_path / "sgd"
    main(["--lengths", "30", "--seeds", "1", "--max-iters", "20", "--optimizers", "sgd",
          "--workers", "1", "--out", str(other)])
    records, merged, cap = summarize_files([str(tmp_path), str(other / "results.json")])
    got = [(r["optimizer"], r["runs"], r["success_rate"]) for r in merged]
    assert got == [("adam", 1, 0.0), ("sgd", 1, 0.0)] and cap == 30
    capsys.readouterr()
    assert main(["--summarize", str(tmp_path), str(other)]) == 0  # an exit status, not the rows
    assert "sgd" in capsys.readouterr().out
    # --first-seed adds seeds to a study: adam seed 3 here, merged with seed 0 above.
    more = tmp_path / "more"
    main(["--lengths", "30", "--seeds", "1", "--first-seed", "3", "--max-iters", "20", "--optimizers", "adam",
          "--workers", "1", "--out", str(more)])
    assert [r["seed"] for r in _runs(more)] == [3]
    _, merged, _ = summarize_files([str(tmp_path), str(more)])
    assert [(r["optimizer"], r["runs"]) for r in merged] == [("adam", 2)]
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])


def test_killed_study_continues_keeping_the_saved_runs(tmp_path, capsys):
    out = tmp_path / "study"
    # A study of 3 seeds killed after its first run: results.json holds 1 run, marked incomplete. The
    # saved run carries a marker value that a re-run would not reproduce.
    main([*TINY, "--seeds", "1", "--out", str(out)])
    data = json.loads((out / "results.json").read_text())
    data["runs"][0]["seconds"] = 1234.5
    data["complete"] = False
    (out / "results.json").write_text(json.dumps(data))
    assert main([*TINY, "--seeds", "3", "--out", str(out)]) == 0
    assert "1 saved run(s) kept" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert [(r["seed"], r["seconds"] == 1234.5) for r in data["runs"]] == [(0, True), (1, False), (2, False)]
    assert data["complete"] and data["config"]["seeds"] == [0, 1, 2]
    # Adding runs (another optimizer) continues the study: nothing saved is lost or re-run.
    main([*TINY[:-4], "--optimizers", "sgd", "--workers", "1", "--seeds", "1", "--out", str(out)])
    runs = _runs(out)
    assert [(r["optimizer"], r["seed"]) for r in runs] == [("adam", 0), ("adam", 1), ("adam", 2), ("sgd", 0)]
    assert runs[0]["seconds"] == 1234.5
    assert json.loads((out / "results.json").read_text())["config"]["optimizers"] == ["adam", "sgd"]
    # The same command again runs nothing and keeps every run.
    main([*TINY, "--seeds", "3", "--out", str(out)])
    assert _runs(out) == runs


def test_rerun_with_settings_that_change_a_run_is_refused(tmp_path, capsys):
    main([*TINY, "--seeds", "1", "--out", str(tmp_path)])
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--seeds", "1", "--max-iters", "7", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "max_iters (saved 5, now 7)" in err and "Traceback" not in err
    assert (tmp_path / "results.json").read_text() == before


def test_foreign_results_file_in_out_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"something": "else"}')
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--seeds", "1", "--out", str(tmp_path)])
    assert info.value.code == 2 and "not a readable delayed_xor results.json" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == '{"something": "else"}'


def test_load_saved_study_names_every_changed_setting(tmp_path):
    cfg = XorConfig(lengths=(10,), seeds=(0,), optimizers=("adam",), max_iters=5, workers=1,
                    out=str(tmp_path))
    write_results([], cfg, complete=False)
    changed = XorConfig(**{**asdict(cfg), "adam_lr": 0.1, "batch_size": 64, "workers": 2, "device": "cpu"})
    named = r"batch_size \(saved 128, now 64\).*adam_lr \(saved 0.001, now 0.1\)"
    with pytest.raises(ValueError, match=named):
        load_saved_study(changed)
    more = XorConfig(**{**asdict(cfg), "lengths": (12,), "seeds": (0, 1), "workers": 2})
    runs, study = load_saved_study(more)
    assert runs == [] and study.lengths == (10, 12) and study.seeds == (0, 1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-iters", "0"], "argument --max-iters: must be an integer >= 1, got '0'"),
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--workers", "0"], "argument --workers: must be an integer >= 1"),
        (["--lengths", "5"], "argument --lengths: must be an integer >= 10"),
        (["--summarize", "x", "--full"], "--summarize runs no study: it does not combine with --full"),
        (["--bench-rnn", "--paper-settings"], "--bench-rnn runs no study"),
        (["--quick", "--full"], "not allowed with argument"),
        (["--precond-lr", "0"], "argument --precond-lr: must be a finite number > 0"),
        (["--sgd-momentum", "1"], "argument --sgd-momentum: must be a number in [0.0, 1.0)"),
        (["--archs", "gru"], "argument --archs: invalid choice"),
    ],
)
def test_bad_flags_are_one_line_argparse_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_device_cuda_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--device", "cuda", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "--device cuda requested but no CUDA GPU is visible" in capsys.readouterr().err


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


def test_study_skips_the_runs_already_done():
    cfg = XorConfig(lengths=(10,), seeds=(0, 1), optimizers=("adam",), max_iters=3, workers=1)
    old = dict(optimizer="adam", arch="rnn", length=10, seed=0, rank=None, solved=False, iterations=3,
               final_running_loss=0.7, seconds=99.0, curve=[])
    seen: list[int] = []
    records = run_study(cfg, on_result=lambda done: seen.append(len(done)), done=[old])
    assert records[0] is old and [r["seed"] for r in records] == [0, 1]
    assert seen == [2]  # one new run; the saved one leads every records_so_far


def test_part_files_of_a_killed_torchrun_study_are_merged_by_a_plain_rerun(tmp_path, capsys):
    # A two-process study killed after each process saved one run to its part file, before any merge.
    main([*TINY, "--seeds", "3", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "results.json").unlink()
    for rank, run in enumerate(data["runs"][:2]):
        part = dict(config=data["config"], rank=rank, runs=[dict(run, seconds=1000.0 + rank)])
        (tmp_path / f"results.rank{rank}.part.json").write_text(json.dumps(part))
    other = XorConfig(**{**data["config"], "max_iters": 7})
    with pytest.raises(ValueError, match=r"part file results.rank0.part.json with other settings: max_iters"):
        merge_part_files(other)
    assert len(list(tmp_path.glob("results.rank*"))) == 2  # refused: nothing removed
    capsys.readouterr()
    assert main([*TINY, "--seeds", "3", "--out", str(tmp_path)]) == 0
    assert "2 saved run(s) kept" in capsys.readouterr().out
    assert [(r["seed"], r["seconds"]) for r in _runs(tmp_path)][:2] == [(0, 1000.0), (1, 1001.0)]
    assert len(_runs(tmp_path)) == 3 and not list(tmp_path.glob("results.rank*"))


def test_torchrun_environment_rank_devices_and_the_order_of_missing_runs(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() is None  # a plain start
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # torchrun with one process runs the study as without it
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == (5, 4, 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [rank_device("cuda", r) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert rank_device("cpu", 1) == "cpu" and rank_device("cuda:1", 0) == "cuda:1"
    cfg = XorConfig(lengths=(10,), seeds=(0, 1), optimizers=("psgd_lra", "adam"), ranks=(0, 10))
    done = [dict(optimizer="psgd_lra", arch="rnn", length=10, seed=1, rank=0)]
    assert missing_runs(cfg, done) == [("psgd_lra", 10, 0, 0, "rnn"), ("psgd_lra", 10, 0, 10, "rnn"),
                                       ("psgd_lra", 10, 1, 10, "rnn"), ("adam", 10, 0, 10, "rnn"),
                                       ("adam", 10, 1, 10, "rnn")]
