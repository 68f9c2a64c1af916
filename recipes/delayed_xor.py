"""Delayed XOR with a vanilla tanh RNN or an LSTM: PSGD-LRA vs Adam vs SGD (Pooladzandi & Li 2024, Table 3.8).

Problem. Each input sequence has length ``L`` and two channels: a random ±1 value and a marker. Exactly two
positions are marked (marker = 1): the first uniformly in the first 10% of the sequence, the second in the
next 40%. The target is the XOR of the two marked values (+1 when they differ, −1 when equal), read from the
RNN's output after the last step, with the logistic loss ``softplus(−y·f(x))``. A fresh batch of 128 is
drawn every iteration. The RNN is ``h_t = tanh(x_t W_x + h_{t−1} W_h + b)`` with 30 hidden units, ``f = h_L
W_o + b_o``, ``W_h`` a random orthogonal matrix at start (as in the paper's script). ``--archs lstm`` (or
``rnn lstm``) adds Table 3.8's LSTM column: 30 cells, gates from ``[x_t, h_{t-1}]``, forget-gate bias 1.

Settings. The defaults are genlib's: PSGD-LRA at lr 0.01 with preconditioner step 0.1, the preconditioned
step clipped to norm 1, no momentum; Adam 1e-3 and SGD 0.05 with momentum 0.9, their gradients clipped to
norm 1. ``--paper-settings`` is appendix B.1.5 as the paper ran it: both PSGD step sizes 0.01, clipping 1,
no momentum (SGD's too). ``--psgd-lr`` / ``--precond-lr`` / ``--sgd-momentum`` set them one by one.

Solved. A run is solved at the first iteration where the mean logistic loss of the last 10 fresh batches is
below 0.1 (a running mean, so one lucky batch does not count); it fails when ``max_iters`` pass first.

Modes: default (lengths 32 and 55, 3 seeds, 20k-iteration cap); ``--quick`` (~1 min CPU smoke: length 16, one
seed); ``--full`` (10 seeds at 32/55/64/112 with the paper's 100k cap: GPU / overnight); ``--rank-study``
(PSGD-LRA with rank 0/1/2/5/10; combines with ``--quick`` or ``--full``, e.g. ``--full --rank-study
--paper-settings`` is figure B.6 as run in the paper). Seeds run in parallel processes, one torch thread
each (``--workers``), or over processes and GPUs under torchrun (below).
Writes ``results.json`` (atomically, after every finished run, marked ``"complete": false`` until the study
ends) and ``loss_curves.png`` under ``--out``; ``--summarize DIR...`` merges saved studies
(e.g. one invocation per optimizer or length) into one table plus one line per run.

Continuing a study. Rerunning with an ``--out`` that already holds a ``results.json`` (say, after the study
was killed) continues that study: the runs already saved there are kept and skipped, and only the missing
ones run and are appended. Settings that only add runs (more ``--seeds`` / ``--first-seed``, more
``--lengths``, ``--optimizers`` or ``--archs``, other PSGD ranks) extend the study; the saved ``config`` then
lists the union. Settings that change what a run means (``max_iters``, ``batch_size``, ``hidden``, the solved
criterion, learning rates, momentum, gradient clip, ``curve_every``) must match the saved ones: otherwise
the rerun is refused with the changed settings named (saved, now); use another ``--out`` for them.
``--workers`` and ``--device`` may change freely.

Spreading a study over processes or GPUs: start it with torchrun, e.g. ``torchrun --nproc-per-node 8 -m
recipes.delayed_xor --full`` (or ``-m genlib.recipes.delayed_xor``). Run ``i`` of the missing runs (in the
study's fixed order) goes to process ``i mod N``, which runs its share one at a time (``--workers`` is not
used) on ``cuda:LOCAL_RANK`` with ``--device cuda`` (the default when GPUs are visible; processes share a
GPU when there are more of them than GPUs), else on the CPU with one torch thread. A run seeds its own
generators, so its result does not depend on which process ran it. Each process saves its finished runs
atomically to ``results.rank<R>.part.json`` under ``--out``; process 0 refreshes ``results.json`` from them
after each of its own runs, gathers every run at the end, writes ``results.json`` and ``loss_curves.png``,
prints the table and removes the part files. A later start (torchrun or not) first merges the part files a
killed study left, so no finished run is lost (on several nodes, put ``--out`` on a shared filesystem).

    python -m recipes.delayed_xor --quick
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genlib.cli_args import device as device_arg
from genlib.cli_args import float_in, int_at_least, positive_float, run_recipe
from genlib.optim import LRA
from genlib.train.checkpoint import SettingsMismatchError
from genlib.train.distributed import finish_distributed
from genlib.utils import atomic_write_text, default_device

OPTIMIZERS = ("psgd_lra", "adam", "sgd")
ARCHS = ("rnn", "lstm")
# Appendix B.1.5: "both step sizes for parameter and preconditioner updating are fixed at 0.01. The gradient
# clipping threshold is set to 1. No momentum is used."
PAPER_SETTINGS = dict(psgd_lr=0.01, psgd_preconditioner_lr=0.01, grad_clip=1.0, sgd_momentum=0.0)
# The settings that change what a run means: a saved study continues only when all of them match. The
# others either choose which runs make up the study (lengths, seeds, optimizers, ranks) or do not touch
# results (workers, device, out).
RUN_SETTINGS = ("max_iters", "batch_size", "hidden", "solved_loss", "solved_window", "psgd_lr",
                "psgd_preconditioner_lr", "adam_lr", "sgd_lr", "sgd_momentum", "grad_clip", "curve_every")
STUDY_SETTINGS = ("lengths", "seeds", "optimizers", "archs", "ranks")
# Under torchrun each process saves its finished runs here (``R`` its rank) until process 0 merges them.
PART_GLOB = "results.rank*.part.json"
# How long a process waits for the others (at the start for process 0's merge, at the end for the slowest
# process's last run): a bound on a study's length, not a network timeout.
STUDY_TIMEOUT = timedelta(days=30)


@dataclass
class XorConfig:
    """Configuration of a delayed-XOR study (every run = one optimizer × architecture × length × seed
    [× rank])."""

    lengths: tuple[int, ...] = (32, 55)
    seeds: tuple[int, ...] = (0, 1, 2)
    optimizers: tuple[str, ...] = OPTIMIZERS
    archs: tuple[str, ...] = ("rnn",)
    ranks: tuple[int, ...] = (10,)  # PSGD-LRA ranks; the rank study sets (0, 1, 2, 5, 10)
    max_iters: int = 20_000
    batch_size: int = 128
    hidden: int = 30
    solved_loss: float = 0.1
    solved_window: int = 10
    psgd_lr: float = 0.01
    psgd_preconditioner_lr: float = 0.1
    adam_lr: float = 1e-3
    sgd_lr: float = 0.05
    sgd_momentum: float = 0.9
    grad_clip: float = 1.0
    curve_every: int = 10  # keep every n-th loss in the saved curve
    workers: int = 2
    device: str = "auto"
    out: str = "runs/delayed_xor"

    def __post_init__(self) -> None:
        if not self.lengths or any(int(n) < 10 for n in self.lengths):
            raise ValueError(f"lengths must be non-empty ints >= 10 (two marked regions), got {self.lengths}")
        bad = [o for o in self.optimizers if o not in OPTIMIZERS]
        if bad:
            raise ValueError(f"optimizers must be among {OPTIMIZERS}, got {bad}")
        bad = [a for a in self.archs if a not in ARCHS]
        if not self.archs or bad:
            raise ValueError(f"archs must be a non-empty subset of {ARCHS}, got {self.archs}")
        if any(int(r) < 0 for r in self.ranks):
            raise ValueError(f"ranks must be ints >= 0, got {self.ranks}")
        for name in ("max_iters", "batch_size", "hidden", "solved_window", "workers", "curve_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        for name in ("psgd_lr", "psgd_preconditioner_lr", "adam_lr", "sgd_lr", "grad_clip"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.sgd_momentum) < 1.0:
            raise ValueError(f"sgd_momentum must be in [0, 1), got {self.sgd_momentum!r}")


def make_batch(
    batch_size: int, length: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh delayed-XOR batch: ``x`` of shape ``(B, L, 2)`` (value ±1, marker {0, 1}) and ``y`` of shape
    ``(B,)`` in {−1, +1}: +1 when the two marked values differ (XOR), −1 when they are equal."""
    if length < 10:
        raise ValueError(f"length must be >= 10 so both marked regions are non-empty, got {length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    values = torch.randint(0, 2, (batch_size, length), generator=generator).float() * 2 - 1
    # First mark uniform in [0, 0.1 L), second uniform in [0.1 L, 0.5 L): floors as in the paper's script.
    u = torch.rand(batch_size, 2, generator=generator)
    i1 = (u[:, 0] * 0.1 * length).floor().long()
    i2 = (u[:, 1] * 0.4 * length + 0.1 * length).floor().long()
    marker = torch.zeros(batch_size, length)
    rows = torch.arange(batch_size)
    marker[rows, i1] = 1.0
    marker[rows, i2] = 1.0
    y = torch.where(values[rows, i1] == values[rows, i2], -1.0, 1.0)
    x = torch.stack([values, marker], dim=-1)
    return x.to(device), y.to(device)


class XorRNN(nn.Module):
    """Vanilla tanh RNN, batch-first input ``(B, L, n_in)`` → one logit per sequence ``(B,)``.

    The recurrence is a hand loop of ``addmm`` + ``tanh`` rather than ``nn.RNN``: it needs double backward
    (exact HVPs), which cuDNN's fused RNN does not give, and on CPU the loop is faster (``--bench-rnn``: L=32,
    one thread, fwd+bwd 9.8 vs 15.5 ms, fwd+HVP 38 vs 45 ms).
    The input projection of all steps is one matmul before the loop."""

    def __init__(self, n_in: int = 2, hidden: int = 30, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        self.w_x = nn.Parameter(0.1 * torch.randn(n_in, hidden, generator=generator))
        q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=generator))
        self.w_h = nn.Parameter(q)
        self.b = nn.Parameter(torch.zeros(hidden))
        self.w_o = nn.Parameter(0.1 * torch.randn(hidden, 1, generator=generator))
        self.b_o = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.w_x.shape[0]:
            raise ValueError(f"x must have shape (B, L, {self.w_x.shape[0]}), got {tuple(x.shape)}")
        u = (x @ self.w_x + self.b).unbind(1)  # L tensors (B, H)
        h = torch.tanh(u[0])  # h_0 = 0
        for u_t in u[1:]:
            h = torch.tanh(torch.addmm(u_t, h, self.w_h))
        return (h @ self.w_o).squeeze(-1) + self.b_o


class XorLSTM(nn.Module):
    """LSTM, batch-first input ``(B, L, n_in)`` → one logit per sequence ``(B,)`` from the last hidden state.

    Gates ``[i, f, g, o] = x_t W_x + h_{t−1} W_h + b``, ``c_t = σ(f)·c_{t−1} + σ(i)·tanh(g)``,
    ``h_t = σ(o)·tanh(c_t)``. The forget gate's bias starts at 1 (keep the cell by default, the usual
    choice for long lags); ``W_h`` starts as four random orthogonal blocks. A hand loop like
    :class:`XorRNN`, for the same reason (exact HVPs need double backward)."""

    def __init__(self, n_in: int = 2, hidden: int = 30, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        self.w_x = nn.Parameter(0.1 * torch.randn(n_in, 4 * hidden, generator=generator))
        blocks = [torch.linalg.qr(torch.randn(hidden, hidden, generator=generator))[0] for _ in range(4)]
        self.w_h = nn.Parameter(torch.cat(blocks, dim=1))
        b = torch.zeros(4 * hidden)
        b[hidden : 2 * hidden] = 1.0
        self.b = nn.Parameter(b)
        self.w_o = nn.Parameter(0.1 * torch.randn(hidden, 1, generator=generator))
        self.b_o = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.w_x.shape[0]:
            raise ValueError(f"x must have shape (B, L, {self.w_x.shape[0]}), got {tuple(x.shape)}")
        u = (x @ self.w_x + self.b).unbind(1)  # L tensors (B, 4H)
        n = self.hidden
        h = c = None
        for u_t in u:
            z = u_t if h is None else torch.addmm(u_t, h, self.w_h)
            ifo = torch.sigmoid(z[:, : 2 * n]), torch.sigmoid(z[:, 3 * n :])
            i, f = ifo[0][:, :n], ifo[0][:, n:]
            g = torch.tanh(z[:, 2 * n : 3 * n])
            c = i * g if c is None else f * c + i * g  # h_0 = c_0 = 0
            h = ifo[1] * torch.tanh(c)
        return (h @ self.w_o).squeeze(-1) + self.b_o


def make_model(arch: str, hidden: int, generator: torch.Generator | None = None) -> nn.Module:
    """The delayed-XOR network: ``"rnn"`` (:class:`XorRNN`) or ``"lstm"`` (:class:`XorLSTM`), 2 inputs."""
    if arch == "rnn":
        return XorRNN(2, hidden, generator=generator)
    if arch == "lstm":
        return XorLSTM(2, hidden, generator=generator)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def logistic_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of ``log(1 + exp(−y·f))`` for labels in {−1, +1}."""
    return F.softplus(-y * logits).mean()


def _make_optimizer(name: str, params: list[nn.Parameter], cfg: XorConfig, rank: int, seed: int):
    if name == "psgd_lra":
        return LRA(
            params,
            lr=cfg.psgd_lr,
            rank=rank,
            preconditioner_lr=cfg.psgd_preconditioner_lr,
            curvature="hvp",
            grad_clip_max_norm=cfg.grad_clip,
            seed=seed,
            check_finite=False,
            sync_closure_grads=False,  # one run per process: nothing to average even under torchrun
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.adam_lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.sgd_lr, momentum=cfg.sgd_momentum)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def run_one(
    cfg: XorConfig, optimizer: str, length: int, seed: int, rank: int = 10, arch: str = "rnn"
) -> dict:
    """Train one network until solved or ``cfg.max_iters``; returns a JSON-able record of the run."""
    torch.set_num_threads(1)
    device = default_device() if cfg.device == "auto" else torch.device(cfg.device)
    gen = torch.Generator().manual_seed(seed)
    model = make_model(arch, cfg.hidden, generator=gen).to(device)
    params = list(model.parameters())
    opt = _make_optimizer(optimizer, params, cfg, rank, seed)
    window: list[float] = []
    curve: list[float] = []
    solved_at: int | None = None
    t0 = time.perf_counter()
    for it in range(1, cfg.max_iters + 1):
        x, y = make_batch(cfg.batch_size, length, gen, device)
        if optimizer == "psgd_lra":
            loss = opt.step(lambda x=x, y=y: logistic_loss(model(x), y))
        else:
            opt.zero_grad(set_to_none=True)
            loss = logistic_loss(model(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            break
        window.append(lv)
        if len(window) > cfg.solved_window:
            window.pop(0)
        if it % cfg.curve_every == 0:
            curve.append(lv)
        if len(window) == cfg.solved_window and sum(window) / len(window) < cfg.solved_loss:
            solved_at = it
            break
    return dict(
        optimizer=optimizer,
        arch=arch,
        length=length,
        seed=seed,
        rank=rank if optimizer == "psgd_lra" else None,
        solved=solved_at is not None,
        iterations=solved_at if solved_at is not None else it,
        final_running_loss=sum(window) / max(len(window), 1),
        seconds=time.perf_counter() - t0,
        curve=curve,
    )


def _run_star(args: tuple) -> dict:
    return run_one(*args)


def run_key(record: dict) -> tuple:
    """What identifies a run within a study: ``(optimizer, arch, length, seed, rank)``, rank ``None`` for
    optimizers other than PSGD-LRA."""
    rank = record["rank"] if record["optimizer"] == "psgd_lra" else None
    rank = None if rank is None else int(rank)
    return record["optimizer"], record["arch"], int(record["length"]), int(record["seed"]), rank


def missing_runs(cfg: XorConfig, done: list[dict] | None = None) -> list[tuple]:
    """The runs of ``cfg`` not in ``done``, in the study's fixed order, as the arguments of :func:`run_one`
    after ``cfg``: ``(optimizer, length, seed, rank, arch)`` (rank 10, unused, for Adam and SGD)."""
    finished = {run_key(r) for r in done or []}
    runs = []
    for opt in cfg.optimizers:
        for arch in cfg.archs:
            for rank in cfg.ranks if opt == "psgd_lra" else (None,):
                for length in cfg.lengths:
                    for seed in cfg.seeds:
                        if (opt, arch, length, seed, rank) not in finished:
                            runs.append((opt, length, seed, 10 if rank is None else rank, arch))
    return runs


def run_study(
    cfg: XorConfig, on_result: Callable[[list[dict]], None] | None = None, done: list[dict] | None = None
) -> list[dict]:
    """All runs of ``cfg`` (``cfg.workers`` processes), in a fixed order. ``on_result(records_so_far)`` is
    called after each finished run (in order), e.g. to save partial results of a long study.

    ``done``: runs finished earlier (e.g. loaded by :func:`load_saved_study`); they are not run again, lead
    the returned list and are part of every ``records_so_far``."""
    records: list[dict] = list(done or [])
    tasks = [(cfg, *run) for run in missing_runs(cfg, records)]
    if not tasks:
        return records

    def collect(results) -> list[dict]:
        for r in results:
            records.append(r)
            if on_result is not None:
                on_result(list(records))
        return records

    if cfg.workers == 1:
        return collect(_run_star(t) for t in tasks)
    with mp.get_context("spawn").Pool(cfg.workers) as pool:
        return collect(pool.imap(_run_star, tasks, chunksize=1))


def summarize(records: list[dict]) -> list[dict]:
    """Success rate and median iterations of the solved runs per (optimizer, rank, architecture, length)."""
    def rank_of(r: dict) -> int:
        return -1 if r["rank"] is None else r["rank"]

    keys = sorted({(r["optimizer"], rank_of(r), r["arch"], r["length"]) for r in records})
    rows = []
    for opt, rank, arch, length in keys:
        rs = [
            r
            for r in records
            if r["optimizer"] == opt and rank_of(r) == rank and r["arch"] == arch and r["length"] == length
        ]
        its = sorted(r["iterations"] for r in rs if r["solved"])
        rows.append(
            dict(
                optimizer=opt if rank < 0 else f"{opt}(r={rank})",
                arch=arch,
                length=length,
                runs=len(rs),
                success_rate=sum(r["solved"] for r in rs) / len(rs),
                median_iters_solved=its[len(its) // 2] if its else None,
                mean_seconds=sum(r["seconds"] for r in rs) / len(rs),
            )
        )
    return rows


def format_table(rows: list[dict], max_iters: int) -> str:
    lines = [f"{'optimizer':<18}{'arch':>6}{'length':>8}{'runs':>6}{'success':>9}{'med. iters':>12}"
             f"{'s/run':>8}"]
    for r in rows:
        med = "-" if r["median_iters_solved"] is None else str(r["median_iters_solved"])
        lines.append(
            f"{r['optimizer']:<18}{r['arch']:>6}{r['length']:>8}{r['runs']:>6}{r['success_rate']:>9.2f}{med:>12}"
            f"{r['mean_seconds']:>8.1f}"
        )
    lines.append(f"(solved: running mean of the last 10 batch losses < 0.1 within {max_iters} iterations)")
    return "\n".join(lines)


def _union(saved: list, now: tuple) -> tuple:
    """The saved values, then the new ones not among them (order kept, so the saved study reads the same)."""
    return tuple(saved) + tuple(v for v in now if v not in saved)


def load_saved_study(cfg: XorConfig) -> tuple[list[dict], XorConfig]:
    """The runs already saved in ``cfg.out/results.json`` and the config that continues that study.

    Returns ``([], cfg)`` when there is no saved study. The continuing config is ``cfg`` with lengths,
    seeds, optimizers and ranks widened to include the saved ones, so ``results.json`` keeps describing
    every run it holds. Raises ``ValueError`` when the file is not a delayed_xor study or when a setting in
    :data:`RUN_SETTINGS` differs, naming each such setting with its saved and new value.
    """
    path = Path(cfg.out) / "results.json"
    if not path.exists():
        return [], cfg
    try:
        data = json.loads(path.read_text())
        saved, runs = data["config"], data["runs"]
        keys = [run_key(r) for r in runs]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--out {cfg.out}: {path} is not a readable delayed_xor results.json ({err!r}); "
                         "move it away or choose another --out") from None
    _check_run_settings(saved, cfg, "holds a study")
    if len(set(keys)) != len(keys):
        raise ValueError(f"--out {cfg.out}: {path} lists a run twice; it was not written by this recipe")
    return list(runs), _widened(cfg, saved)


def _check_run_settings(saved: dict, cfg: XorConfig, what: str) -> None:
    """Raise :class:`SettingsMismatchError` naming each setting of :data:`RUN_SETTINGS` where ``saved``
    differs from ``cfg``."""
    now = asdict(cfg)
    changed = [f"{k} (saved {saved.get(k, 'not recorded')!r}, now {now[k]!r})"
               for k in RUN_SETTINGS if saved.get(k) != now[k]]
    if changed:
        raise SettingsMismatchError(f"--out {cfg.out} {what} with other settings: {'; '.join(changed)}. "
                                    "Rerun with the saved settings to continue it, or choose another --out")


def _widened(cfg: XorConfig, saved: dict) -> XorConfig:
    """``cfg`` with the study settings (lengths, seeds, ...) widened to include the ``saved`` ones."""
    widened = {k: _union(list(saved.get(k, ())), getattr(cfg, k)) for k in STUDY_SETTINGS}
    return XorConfig(**{**asdict(cfg), **widened})


def _read_part(path: Path) -> tuple[dict, list[dict]]:
    """The config and runs of one process's part file (see :data:`PART_GLOB`)."""
    try:
        data = json.loads(path.read_text())
        saved, runs = data["config"], data["runs"]
        for r in runs:
            run_key(r)  # every run names its optimizer, arch, length, seed and rank
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--out: {path} is not a readable delayed_xor part file ({err!r}); move it away "
                         "or choose another --out") from None
    return saved, list(runs)


def merge_part_files(cfg: XorConfig) -> int:
    """Fold the part files a torchrun study left in ``cfg.out`` (killed before process 0 merged them) into
    ``results.json``, then remove them; returns the number of runs added.

    Raises ``ValueError`` like :func:`load_saved_study` when ``results.json`` or a part file holds a study
    with other run settings than ``cfg`` (nothing is written or removed then)."""
    parts = sorted(Path(cfg.out).glob(PART_GLOB))
    if not parts:
        return 0
    records, study = load_saved_study(cfg)
    seen = {run_key(r) for r in records}
    added = 0
    for path in parts:
        saved, runs = _read_part(path)
        _check_run_settings(saved, cfg, f"holds a part file {path.name}")
        study = _widened(study, saved)
        for r in runs:
            if run_key(r) not in seen:
                seen.add(run_key(r))
                records.append(r)
                added += 1
    write_results(records, study, complete=False)  # before the parts go: a kill here loses nothing
    for path in parts:
        path.unlink()
    return added


def write_results(records: list[dict], cfg: XorConfig, complete: bool) -> Path:
    """``results.json`` under ``cfg.out``, written atomically: a study stopped mid-write keeps the last."""
    payload = dict(config=asdict(cfg), summary=summarize(records), runs=records, complete=complete)
    return atomic_write_text(Path(cfg.out) / "results.json", json.dumps(payload, indent=1))


def save(records: list[dict], cfg: XorConfig) -> Path:
    out = write_results(records, cfg, complete=True).parent
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in records})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 3.5), squeeze=False)
    names = sorted({(r["optimizer"], r["rank"], r["arch"]) for r in records}, key=str)
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for ax, length in zip(axes[0], lengths):
        labelled = set()  # one legend entry per optimizer (a continued study need not share a first seed)
        for r in records:
            if r["length"] == length and r["curve"]:
                n = (r["optimizer"], r["rank"], r["arch"])
                label = r["optimizer"] if r["rank"] is None else f"{r['optimizer']} r={r['rank']}"
                label = f"{label} {r['arch'].upper()}"
                xs = [cfg.curve_every * (i + 1) for i in range(len(r["curve"]))]
                ax.semilogy(xs, r["curve"], color=colors[n], alpha=0.7, lw=0.8,
                            label=None if n in labelled else label)
                labelled.add(n)
        ax.axhline(cfg.solved_loss, color="k", ls=":", lw=0.8)
        ax.set(title=f"delayed XOR, L={length}", xlabel="iteration", ylabel="logistic loss")
        if labelled:  # runs stopped before their first saved loss leave nothing to label
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    return out


def format_runs(records: list[dict]) -> str:
    """One line per run: optimizer, architecture, length, seed, solved, iterations, final running loss,
    seconds."""
    lines = [f"{'optimizer':<18}{'arch':>6}{'length':>8}{'seed':>6}{'solved':>8}{'iters':>8}{'loss':>8}"
             f"{'s':>8}"]
    order = lambda r: (r["length"], r["optimizer"], r["arch"], r["rank"] or 0, r["seed"])  # noqa: E731
    for r in sorted(records, key=order):
        name = r["optimizer"] if r["rank"] is None else f"{r['optimizer']}(r={r['rank']})"
        lines.append(
            f"{name:<18}{r['arch']:>6}{r['length']:>8}{r['seed']:>6}{str(r['solved']):>8}{r['iterations']:>8}"
            f"{r['final_running_loss']:>8.3f}{r['seconds']:>8.1f}"
        )
    return "\n".join(lines)


def summarize_files(paths: list[str]) -> tuple[list[dict], list[dict], int]:
    """Merge the runs of several ``results.json`` files (or folders holding one), e.g. a study split into
    one invocation per optimizer; returns ``(records, summary rows, largest iteration cap)``."""
    records: list[dict] = []
    cap = 0
    for p in paths:
        f = Path(p)
        f = f / "results.json" if f.is_dir() else f
        if not f.is_file():
            raise FileNotFoundError(f"--summarize: {f} does not exist (expected results.json or its folder)")
        try:
            data = json.loads(f.read_text())
            runs, max_iters = data["runs"], int(data["config"]["max_iters"])
            keys = [run_key(r) for r in runs]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--summarize: {f} is not a delayed_xor results.json with an arch per run "
                             f"({err!r})") from None
        del keys
        records.extend(runs)
        cap = max(cap, max_iters)
    if not records:
        raise ValueError(f"no runs found in {paths}")
    return records, summarize(records), cap


def bench_rnn(length: int = 32, batch: int = 128, hidden: int = 30, reps: int = 20) -> dict[str, float]:
    """Milliseconds per forward+backward and per forward+HVP (double backward) of the hand loop vs
    ``nn.RNN`` on the current device, one thread."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = make_batch(batch, length, gen)
    ours = XorRNN(2, hidden, generator=gen)
    rnn, head = nn.RNN(2, hidden, batch_first=True), nn.Linear(hidden, 1)

    def f_ours():
        return logistic_loss(ours(x), y)

    def f_rnn():
        return logistic_loss(head(rnn(x)[1][0]).squeeze(-1), y)

    out = {}
    for name, f, ps in (("loop", f_ours, list(ours.parameters())),
                        ("nn.RNN", f_rnn, list(rnn.parameters()) + list(head.parameters()))):
        for mode in ("grad", "hvp"):
            ts = []
            for _ in range(reps + 3):
                t = time.perf_counter()
                gs = torch.autograd.grad(f(), ps, create_graph=mode == "hvp")
                if mode == "hvp":
                    torch.autograd.grad(gs, ps, [torch.randn_like(p) for p in ps])
                ts.append(time.perf_counter() - t)
            out[f"{name} {mode}"] = 1e3 * sorted(ts[3:])[reps // 2]
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line (:func:`main`); :func:`config_from_args` turns its namespace into a study."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --quick / --full pick the scale, --rank-study the runs, --paper-settings the optimizer settings:
    # they combine; --bench-rnn and --summarize run nothing else.
    scale = ap.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true",
                       help="~1 min CPU smoke: L=16, 1 seed, 3k-iteration cap")
    scale.add_argument("--full", action="store_true",
                       help="paper scale: 10 seeds, L=32/55/64/112, 100k cap; the optimizer settings stay "
                            "genlib's unless --paper-settings is given too (combines with --rank-study)")
    ap.add_argument("--rank-study", action="store_true", help="PSGD-LRA only, ranks 0/1/2/5/10")
    ap.add_argument("--paper-settings", action="store_true",
                    help="appendix B.1.5: PSGD lr and preconditioner lr 0.01, clipping 1, no momentum")
    ap.add_argument("--bench-rnn", action="store_true", help="time the RNN loop vs nn.RNN and exit")
    ap.add_argument("--summarize", nargs="+", metavar="RESULTS",
                    help="merge saved results.json files (or their folders), print the tables and exit")
    ap.add_argument("--archs", nargs="+", choices=ARCHS,
                    help="networks (default rnn; Table 3.8 has rnn and lstm columns)")
    ap.add_argument("--psgd-lr", type=positive_float,
                    help=f"PSGD-LRA parameter step size (default {XorConfig.psgd_lr}; paper 0.01)")
    ap.add_argument("--precond-lr", type=positive_float,
                    help=f"PSGD-LRA preconditioner step size (default {XorConfig.psgd_preconditioner_lr}; "
                         "paper 0.01)")
    ap.add_argument("--sgd-momentum", type=float_in(0.0, 1.0, low_inclusive=True, high_inclusive=False),
                    help=f"SGD momentum in [0, 1) (default {XorConfig.sgd_momentum}; paper settings 0)")
    ap.add_argument("--grad-clip", type=positive_float,
                    help=f"gradient clipping norm (default {XorConfig.grad_clip}; paper 1)")
    ap.add_argument("--lengths", type=int_at_least(10), nargs="+",
                    help="override the sequence lengths (>= 10)")
    ap.add_argument("--seeds", type=int_at_least(1),
                    help="number of seeds (first-seed .. first-seed + n - 1)")
    ap.add_argument("--first-seed", type=int_at_least(0), default=0,
                    help="first seed (add seeds to an earlier study, then --summarize both)")
    ap.add_argument("--max-iters", type=int_at_least(1), help="iteration cap per run")
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, help="subset of optimizers")
    ap.add_argument("--workers", type=int_at_least(1), default=2,
                    help="parallel processes (one torch thread each); not used under torchrun, where "
                         "each process runs its share of the runs one at a time")
    ap.add_argument("--device", type=device_arg, default="auto",
                    help="auto (cuda when visible, else cpu), cpu, cuda or cuda:N")
    ap.add_argument("--out", default="runs/delayed_xor",
                    help="folder for results.json + loss_curves.png; a saved study there is continued")
    return ap


def config_from_args(a: argparse.Namespace) -> XorConfig:
    """The study a parsed command line asks for: the scale (``--quick`` / ``--full``), then
    ``--rank-study``, then ``--paper-settings``, then each explicit flag over all of them."""
    kw: dict = dict(workers=a.workers, device=a.device, out=a.out)
    if a.quick:
        kw.update(lengths=(16,), seeds=(0,), max_iters=3000)
    elif a.full:
        kw.update(lengths=(32, 55, 64, 112), seeds=tuple(range(10)), max_iters=100_000)
    if a.rank_study:
        kw.update(optimizers=("psgd_lra",), ranks=(0, 1, 2, 5, 10))
    if a.paper_settings:
        kw.update(PAPER_SETTINGS)
    for flag, key in (("psgd_lr", "psgd_lr"), ("precond_lr", "psgd_preconditioner_lr"),
                      ("sgd_momentum", "sgd_momentum"), ("grad_clip", "grad_clip")):
        if getattr(a, flag) is not None:  # an explicit flag overrides the preset
            kw[key] = getattr(a, flag)
    if a.archs:
        kw["archs"] = tuple(dict.fromkeys(a.archs))
    if a.lengths:
        kw["lengths"] = tuple(a.lengths)
    if a.seeds or a.first_seed:
        n = a.seeds or len(kw.get("seeds", XorConfig.seeds))
        kw["seeds"] = tuple(range(a.first_seed, a.first_seed + n))
    if a.max_iters is not None:
        kw["max_iters"] = a.max_iters
    if a.optimizers:
        kw["optimizers"] = tuple(a.optimizers)
    return XorConfig(**kw)


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) a study, summarize saved ones, or time the RNN; returns the exit status."""
    ap = build_parser()
    a = ap.parse_args(argv)
    alone = [f for f, on in (("--bench-rnn", a.bench_rnn), ("--summarize", a.summarize)) if on]
    others = [f for f, on in (("--quick", a.quick), ("--full", a.full), ("--rank-study", a.rank_study),
                              ("--paper-settings", a.paper_settings)) if on]
    if alone and (len(alone) > 1 or others):
        ap.error(f"{alone[0]} runs no study: it does not combine with {', '.join((alone + others)[1:])}")
    if a.summarize:
        try:
            records, rows, cap = summarize_files(a.summarize)
        except (OSError, ValueError) as err:
            ap.error(str(err))
        print(format_table(rows, cap))
        print(format_runs(records))
        return 0
    if a.bench_rnn:
        for k, v in bench_rnn().items():
            print(f"{k:<14}{v:8.2f} ms")
        return 0
    cfg = config_from_args(a)
    env = torchrun_env()
    if env is not None:
        return _main_distributed(ap, cfg, *env)
    try:
        merge_part_files(cfg)
        done, study = load_saved_study(cfg)
    except ValueError as err:
        ap.error(str(err))
    if done:
        print(f"continuing the study in {cfg.out}: {len(done)} saved run(s) kept, not run again")

    def save_partial(records: list[dict]) -> None:  # a long study keeps what it has if it is stopped
        write_results(records, study, complete=False)

    records = run_study(cfg, on_result=save_partial, done=done)
    print(format_table(summarize(records), cfg.max_iters))
    print(f"saved to {save(records, study)}")
    return 0


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` from the environment torchrun sets, or ``None`` for a plain start
    (or a torchrun start of a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str, local_rank: int) -> str:
    """A torchrun process's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` (modulo the visible GPUs);
    ``cpu`` and an explicit ``cuda:N`` stay."""
    if device == "cuda":
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


def _main_distributed(ap: argparse.ArgumentParser, cfg: XorConfig, rank: int, world: int,
                      local_rank: int) -> int:
    """The study under torchrun: process ``rank`` of ``world`` runs every ``world``-th missing run; process 0
    merges, saves and prints (module docstring, "Spreading a study")."""
    if not dist.is_available():
        ap.error("started by torchrun, but this torch build has no torch.distributed")
    torch.set_num_threads(1)
    device = rank_device(cfg.device, local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    # The processes exchange only a few Python objects (CPU, gloo); nccl is registered for CUDA tensors.
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                            timeout=STUDY_TIMEOUT)
    try:
        start: list = [None, [], None]  # error, runs done, study config: process 0 reads --out, once
        if rank == 0:
            try:
                merge_part_files(cfg)
                done, study = load_saved_study(cfg)
                start = [None, done, asdict(study)]
            except ValueError as err:
                start = [str(err), [], None]
        dist.broadcast_object_list(start, src=0)
        error, done, study_dict = start
        if error is not None:
            finish_distributed()
            if rank == 0:
                ap.error(error)
            return 2
        study = XorConfig(**study_dict)
        todo = missing_runs(cfg, done)
        if rank == 0:
            if done:
                print(f"continuing the study in {cfg.out}: {len(done)} saved run(s) kept, not run again")
            print(f"torchrun: {len(todo)} missing run(s) over {world} processes ({device} on process 0)",
                  flush=True)
        run_cfg = replace(cfg, device=device)
        out = Path(cfg.out)
        own: list[dict] = []
        for run in todo[rank::world]:
            own.append(run_one(run_cfg, *run))
            part = dict(config=asdict(study), rank=rank, runs=own)
            atomic_write_text(out / f"results.rank{rank}.part.json", json.dumps(part, indent=1))
            if rank == 0:  # results.json keeps up with every process's saved runs, as without torchrun
                write_results(_with_parts(done + own, out), study, complete=False)
        gathered: list | None = [None] * world if rank == 0 else None
        dist.gather_object(own, gathered, dst=0)
        if rank != 0:  # leaves only with process 0: a gloo process leaving early can abort (SIGABRT)
            finish_distributed()
            return 0
        order = {run: i for i, run in enumerate(todo)}
        new = [r for rs in gathered for r in rs]
        new.sort(key=lambda r: order[(r["optimizer"], r["length"], r["seed"],
                                      10 if r["rank"] is None else r["rank"], r["arch"])])
        records = done + new  # the order of a single-process study
        print(format_table(summarize(records), cfg.max_iters))
        print(f"saved to {save(records, study)}")
        for path in out.glob(PART_GLOB):
            path.unlink()
        finish_distributed()
        return 0
    finally:  # after an exception: no barrier, which would wait for processes that never reach it
        if dist.is_initialized():
            dist.destroy_process_group()


def _with_parts(records: list[dict], out: Path) -> list[dict]:
    """``records`` and the runs of the part files in ``out`` not among them (a part being replaced reads
    as its old or new version: they are written atomically)."""
    records = list(records)
    seen = {run_key(r) for r in records}
    for path in sorted(out.glob(PART_GLOB)):
        try:
            runs = _read_part(path)[1]
        except ValueError:
            continue
        for r in runs:
            if run_key(r) not in seen:
                seen.add(run_key(r))
                records.append(r)
    return records


if __name__ == "__main__":
    raise SystemExit(run_recipe(main))
