"""Optimizers at equal wall-clock (and equal steps): Adam / AdamW vs genlib's PSGD on the recipes' own models.

Tasks (``--tasks``):

    vae       the recipes/vae_optimizers.py VAE (Bernoulli MLP, latent 8, hidden 256-256) on MNIST-4k;
              metric: held-out ELBO (and IWAE log p(x), ``--iwae-samples`` importance samples), higher wins
    semisup   the svhn_semisup ``--quick`` model and config (latent-EBM prior, MNIST-4k, 100 labels) trained
              by SemiSupervisedTrainer; metric: latent classifier test accuracy, higher wins
    speech    the Gamma FC speech VAE of recipes/vctk_resynthesis.py (row gamma-fc; ``--speech-row is-fc``:
              the Itakura-Saito one) on the shared VCTK speakers (train p225-p227, test p228, as its
              ``--quick``); metric: held-out ELBO per frame
    xor       delayed XOR, tanh RNN, length ``--xor-length`` (recipes/delayed_xor.py); metric: solved (running
              mean of the last 10 fresh-batch losses < 0.1) and the seconds / iterations it took

Optimizers (``--optimizers``): ``adam``, ``adamw``, ``psgd-kron`` and ``psgd-lra`` (gradient whitening,
momentum 0.9, the recipes' refit schedule ExponentialDecaySchedule(1 -> 0.1)), ``psgd-kron-qeq`` (the same
Kron fitted in the inverse-free ``coords="QEQ"``, whitening probes integrated out) and ``psgd-kron-qeq1d``
(that, with the largest dim of each matrix on a diagonal factor, ``memory_save_mode="one_diag"``),
``psgd-kron-qeq1d-cap`` (that, with every entry of a tensor's step clamped to ±1, ``max_update_abs=1``),
``psgd-kron-hvp`` (Newton
type: exact Hessian-vector products through ``step(closure)``), and when importable ``heavyball-kron``
(``heavyball.PSGDKron``) and ``kron-torch`` (``kron_torch.Kron``), both at their own defaults except lr, run
eagerly (their internal ``torch.compile`` is switched off unless ``--compile``). ``psgd-lra-hvp`` (the
delayed-XOR recipe's optimizer) may be added by name.

Protocol. Every run trains for ``--seconds`` of wall-clock (one torch thread; evaluation time and the first
step, which holds lazy state set-up and any compilation, are not counted; ``--clock cpu`` budgets this
process's CPU time instead, which on one thread is the wall-clock of an unloaded machine: use it when other
jobs share the cores, as their load otherwise changes how many steps a run gets; both are recorded) and
records (seconds, step, train loss) every 10 steps, plus the held-out metric at fixed fractions of the
budget (``--time-marks``) and at fixed steps (5, 10, 25, 50, 100, 200, ...), so one run gives both the
equal-time and the equal-steps comparison.
Learning rates: a grid per optimizer family (``--lrs``; defaults: three values around each recipe's default
for that task), tuned on seed 0 by the final held-out metric; then ``--seeds`` more seeds run at the best lr.
The data split is fixed (seed 0); the seed moves the initial weights, the batches and the optimizers' own
randomness. Table columns: best lr; the metric at the end of the budget (equal wall-clock, mean +- sd over
seeds); the metric at the largest step mark every optimizer of the task reached at its best lr (equal steps);
seconds per step relative to Adam.

    python -m benchmarks.optimizers --quick                 # ~2 minutes: vae + xor, tiny budgets
    python -m benchmarks.optimizers --tasks vae --seconds 30 --seeds 2
    python -m benchmarks.optimizers --tasks xor --seconds 60 --lrs adam=1e-3,3e-3 hvp=1e-2
    python -m benchmarks.optimizers --tasks vae --compile   # torch.compile the model's loss
    python -m benchmarks.optimizers --tasks vae --compile --compile-step --warmup-steps 3   # and every step

``--compile-step`` compiles each optimizer's ``step`` too (Engine's ``compile_optimizers``: torch's Adam as
torch compiles it, genlib's PSGD as one graph with its refits under ``torch.cond``); the steps before
``--warmup-steps`` (first compile, recompiles once lazy state exists; for speech at least an epoch and a
step, as its short last batch compiles a graph of its own) are off the clock for every optimizer.

Writes ``--out``/results.json (atomically, after every run) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from genlib.cli_args import device as device_arg
from genlib.cli_args import int_at_least
from genlib.optim import LRA, ExponentialDecaySchedule, Kron
from genlib.train.batches import StepBatches
from genlib.train.engine import Engine
from genlib.utils import seed_everything, write_json

TASKS = ("vae", "semisup", "speech", "xor")
BUILTIN = ("adam", "adamw", "psgd-kron", "psgd-kron-qeq", "psgd-kron-qeq1d", "psgd-kron-qeq1d-cap",
           "psgd-lra", "psgd-kron-hvp")
EXTERNAL = ("heavyball-kron", "kron-torch")
EXTRA = ("psgd-lra-hvp",)
# optimizer -> lr family (the --lrs keys; an optimizer's own name overrides its family)
FAMILY = {"adam": "adam", "adamw": "adam", "psgd-kron": "psgd", "psgd-kron-qeq": "psgd",
          "psgd-kron-qeq1d": "psgd", "psgd-kron-qeq1d-cap": "psgd", "psgd-lra": "psgd",
          "heavyball-kron": "psgd", "kron-torch": "psgd", "psgd-kron-hvp": "hvp", "psgd-lra-hvp": "hvp"}
# default lr grids per task and family: three values around each recipe's default
GRIDS = {
    "vae": {"adam": (3e-4, 1e-3, 3e-3), "psgd": (3e-4, 1e-3, 3e-3), "hvp": (3e-3, 1e-2, 3e-2)},
    # svhn_semisup --quick: lr 1e-3 for Adam and PSGD-Kron; its Newton types run at 50x the config's lr
    "semisup": {"adam": (3e-4, 1e-3, 3e-3), "psgd": (3e-4, 1e-3, 3e-3), "hvp": (1.5e-2, 5e-2, 1.5e-1)},
    # vctk_resynthesis: Adam 1e-3, PSGD-LRA 1e-4 (1e-3 diverged on VCTK frames), psgd-lra-hvp 1e-2
    "speech": {"adam": (3e-4, 1e-3, 3e-3), "psgd": (3e-5, 1e-4, 3e-4), "hvp": (3e-3, 1e-2, 3e-2)},
    # delayed_xor: Adam 1e-3, PSGD-LRA (hvp) 1e-2; every gradient / PSGD step clipped to norm 1
    "xor": {"adam": (3e-4, 1e-3, 3e-3), "psgd": (3e-4, 1e-3, 3e-3), "hvp": (3e-3, 1e-2, 3e-2)},
}
HIGHER_IS_BETTER = {"vae": True, "semisup": True, "speech": True, "xor": False}
METRIC = {"vae": "test_elbo", "semisup": "test_accuracy", "speech": "test_elbo_per_frame", "xor": "loss10"}
REFIT_DECAY = {"vae": 100, "semisup": 500, "speech": 200, "xor": 100}  # each recipe's refit schedule
STEP_MARKS = (5, 10, 25) + tuple(50 * 2**k for k in range(20))
LOG_EVERY = 10


# ----------------------------------------------------------------------------------------- optimizers
def external_available() -> dict[str, str]:
    """External PSGD packages: name -> "" when importable, else the reason it is skipped."""
    out = {}
    for name, module in (("heavyball-kron", "heavyball"), ("kron-torch", "kron_torch")):
        try:
            __import__(module)
            out[name] = ""
        except Exception as e:  # noqa: BLE001 - any import failure means: skip it, say why
            out[name] = f"{type(e).__name__}: {e}"
    return out


def make_optimizer(name: str, params, lr: float, task: str, seed: int, refit_decay: int | None = None,
                   kron_max_size: int = 1024) -> torch.optim.Optimizer:
    """``name`` on ``params``; PSGD refits on the task's recipe schedule (``refit_decay`` steps from
    probability 1 to 0.1 when given) and Kron's factors above ``kron_max_size`` are diagonal."""
    params = list(params)

    def refit() -> ExponentialDecaySchedule:
        return ExponentialDecaySchedule(start=1.0, end=0.1, decay_steps=refit_decay or REFIT_DECAY[task])

    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)  # weight decay 0.01 (torch's default)
    if name == "psgd-kron":
        return Kron(params, lr=lr, momentum=0.9, update_probability=refit(), seed=seed,
                    max_size=kron_max_size)
    if name.startswith("psgd-kron-qeq"):
        return Kron(params, lr=lr, momentum=0.9, update_probability=refit(), seed=seed, coords="QEQ",
                    max_size=kron_max_size,
                    memory_save_mode=None if name == "psgd-kron-qeq" else "one_diag",
                    max_update_abs=1.0 if name.endswith("-cap") else None)
    if name == "psgd-lra":
        return LRA(params, lr=lr, momentum=0.9, rank=10, update_probability=refit(), seed=seed)
    if name == "psgd-kron-hvp":
        return Kron(params, lr=lr, curvature="hvp", update_probability=refit(), seed=seed,
                    max_size=kron_max_size)
    if name == "psgd-lra-hvp":
        return LRA(params, lr=lr, rank=10, curvature="hvp", update_probability=refit(), seed=seed)
    if name == "heavyball-kron":
        import heavyball

        return heavyball.PSGDKron(params, lr=lr)
    if name == "kron-torch":
        import kron_torch

        return kron_torch.Kron(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


# ---------------------------------------------------------------------------------------------- tasks
class Run:
    """One task instance for one seed: an engine, ``batch(step)``, ``evaluate(final) -> {metric: value}``."""

    engine: Engine
    batch: Callable[[int], Any]
    evaluate: Callable[[bool], dict[str, float]]
    after_step: Callable[[int, float], bool] | None = None  # (step, loss) -> stop now (xor: solved)
    # steps off the clock at least: a task whose batches change shape compiles once per shape
    min_warmup_steps: int = 0


_CACHE: dict[str, Any] = {}


def _data_root() -> Path:
    from genlib.data import default_data_root

    return Path(default_data_root())


def _compile_step(opt_name: str, args) -> bool:
    """``--compile-step`` for genlib's and torch's optimizers. heavyball and kron-torch keep their own
    compilation: their steps set Python attributes, which dynamo refuses when tracing a whole step."""
    return args.compile_step and opt_name not in EXTERNAL


def _elbo_run(vae, opt: torch.optim.Optimizer, batches: StepBatches, args, compile_step: bool) -> Run:
    """A run minimising ``-ELBO`` of the batches' ``"x"`` (the vae and speech tasks)."""

    def loss_fn(batch):
        loss = vae.elbo(batch["x"]).loss
        return loss, {"loss": loss}

    run = Run()
    run.engine = Engine(vae, opt, loss_fn, device=args.device, compile=args.compile,
                        compile_optimizers=compile_step, progress=False)
    run.batch = lambda step: batches[step]
    return run


def build_vae_task(opt_name: str, lr: float, seed: int, args) -> Run:
    from recipes import vae_optimizers as rv

    cfg = rv.Config(data_dir=str(_data_root()), seed=0, device="cpu")
    if "vae" not in _CACHE:
        _CACHE["vae"] = rv.load_data(cfg)  # split by seed 0 for every run
    train_x, test_x = _CACHE["vae"]
    test_x = test_x.to(args.device)
    seed_everything(seed)
    vae = rv.build_vae(cfg, tuple(train_x.shape[1:]))
    opt = make_optimizer(opt_name, vae.parameters(), lr, "vae", seed, args.refit_decay, args.kron_max_size)

    run = _elbo_run(vae, opt, StepBatches({"x": train_x}, cfg.batch_size, seed=seed), args,
                    _compile_step(opt_name, args))

    def evaluate(final: bool) -> dict[str, float]:
        vae.eval()
        cuda = [args.device] if args.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            torch.manual_seed(1234)  # the same noise for every run and mark
            out = {"test_elbo": vae.elbo(test_x).elbo.mean().item()}
            out["test_log_px"] = vae.log_likelihood(test_x, n_importance=args.iwae_samples).mean().item()
        vae.train()
        return out

    run.evaluate = evaluate
    return run


def build_semisup_task(opt_name: str, lr: float, seed: int, args) -> Run:
    from genlib.train import SemiSupervisedTrainer, latent_accuracy
    from recipes import svhn_semisup as rs

    cfg = rs.Config.quick()
    if "semisup" not in _CACHE:
        _CACHE["semisup"] = rs.load_data(cfg, None, 0)  # MNIST-4k from the data root, seed-0 split
    data = _CACHE["semisup"]
    seed_everything(seed)
    vae, _ = rs.build(cfg, tuple(data.x_labeled.shape[1:]))
    ratio = cfg.train.ebm_lr / cfg.train.lr
    tcfg = replace(cfg.train, seed=seed, lr=lr, ebm_lr=lr * ratio, eval_every=0, progress=False,
                   compile=args.compile, compile_optimizers=_compile_step(opt_name, args), augment=None)

    def factory(params, lr):
        return make_optimizer(opt_name, params, lr, "semisup", seed, args.refit_decay, args.kron_max_size)

    trainer = SemiSupervisedTrainer(vae, tcfg, optimizer=factory, device=args.device)
    batches = trainer.step_batches(data.x_unlabeled, data.x_labeled, data.y_labeled)
    run = Run()
    run.engine = trainer.engine
    run.batch = lambda step: batches[step]
    run.evaluate = lambda final: {"test_accuracy": latent_accuracy(vae, data.x_test, data.y_test,
                                                                   n_samples=tcfg.classifier_samples)}
    return run


def build_speech_task(opt_name: str, lr: float, seed: int, args) -> Run:
    from genlib.data.speech import SpeechFrames, load_audio
    from genlib.data.stft import stft
    from recipes import vctk_resynthesis as rvc

    cfg = rvc.Config(n_test_utterances=rvc.QUICK["n_test_utterances"], seed=0, device="cpu")
    row = rvc.ROWS[args.speech_row]
    if "speech" not in _CACHE:
        train_utts, test_utts = rvc.load_corpus(cfg)
        specs = [stft(load_audio(u.path)) for u in rvc.test_utterances(cfg, test_utts)]
        frames = SpeechFrames([load_audio(u.path) for u in train_utts], every=cfg.every).data
        _CACHE["speech"] = frames, specs
    frames, specs = _CACHE["speech"]
    seed_everything(seed)
    vae = rvc.build_vae(cfg, row, specs[0].shape[0])
    opt = make_optimizer(opt_name, vae.parameters(), lr, "speech", seed, args.refit_decay, args.kron_max_size)

    batches = StepBatches({"x": frames}, cfg.batch_size, seed=seed, order="epochs")
    run = _elbo_run(vae, opt, batches, args, _compile_step(opt_name, args))
    run.min_warmup_steps = batches.steps_per_epoch() + 1  # the epoch's last batch is smaller

    def evaluate(final: bool) -> dict[str, float]:
        vae.eval()
        out = {"test_elbo_per_frame": rvc.elbo_per_frame(vae, row, specs)}
        vae.train()
        return out

    run.evaluate = evaluate
    return run


def build_xor_task(opt_name: str, lr: float, seed: int, args) -> Run:
    from recipes import delayed_xor as rx

    xcfg = rx.XorConfig()
    gen = torch.Generator().manual_seed(seed)
    model = rx.make_model("rnn", xcfg.hidden, generator=gen)
    opt = make_optimizer(opt_name, model.parameters(), lr, "xor", seed, args.refit_decay, args.kron_max_size)

    def loss_fn(batch):
        x, y = batch
        loss = rx.logistic_loss(model(x), y)
        return loss, {"loss": loss}

    run = Run()
    # the recipe's clipping: gradients to norm 1 (Adam, whitening PSGD), PSGD's closure step to norm 1
    run.engine = Engine(model, opt, loss_fn, device=args.device, compile=args.compile,
                        grad_clip=xcfg.grad_clip, compile_optimizers=_compile_step(opt_name, args),
                        progress=False)
    run.batch = lambda step: rx.make_batch(xcfg.batch_size, args.xor_length, gen)
    window: list[float] = []
    state: dict[str, float] = {}

    def after_step(step: int, loss: float) -> bool:
        window.append(loss)
        del window[: -xcfg.solved_window]
        if len(window) == xcfg.solved_window and sum(window) / len(window) < xcfg.solved_loss:
            state["solved"] = step
            return True
        return False

    def evaluate(final: bool) -> dict[str, float]:  # fresh batches are held-out: the running loss
        return {"loss10": sum(window) / len(window) if window else math.nan}

    run.after_step, run.evaluate = after_step, evaluate
    run.state = state  # type: ignore[attr-defined]
    return run


BUILDERS = {"vae": build_vae_task, "semisup": build_semisup_task, "speech": build_speech_task,
            "xor": build_xor_task}


# -------------------------------------------------------------------------------------------- one run
def train_one(task: str, opt_name: str, lr: float, seed: int, args) -> dict:
    """Train for ``args.seconds`` on ``args.clock`` (evaluations and the first ``args.warmup_steps`` steps,
    or the task's ``min_warmup_steps`` where more, not counted)."""
    torch.set_num_threads(1)
    t_build = time.perf_counter()
    run = BUILDERS[task](opt_name, lr, seed, args)
    build_s = time.perf_counter() - t_build
    warmup = max(args.warmup_steps, run.min_warmup_steps)
    rec: dict[str, Any] = {"task": task, "optimizer": opt_name, "lr": lr, "seed": seed,
                           "budget_s": args.seconds, "curve": [], "time_marks": [], "step_marks": [],
                           "diverged": False}
    time_marks = [f * args.seconds for f in args.time_marks]
    step_marks = list(STEP_MARKS)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    elapsed, wall, step, eval_s = 0.0, 0.0, 0, 0.0
    first_step_s = 0.0
    loss_v = math.nan
    stop = False

    def evaluate(final: bool) -> dict[str, float] | None:
        nonlocal eval_s
        t = time.perf_counter()
        try:
            scores = run.evaluate(final)
        except (ValueError, RuntimeError) as e:  # e.g. the likelihood refuses non-finite decoder outputs
            rec["diverged"], rec["error"] = True, f"evaluation: {type(e).__name__}: {str(e)[:200]}"
            scores = None
        eval_s += time.perf_counter() - t
        return scores

    def mark(kind: str, value: float) -> bool:
        scores = evaluate(False)
        if scores is not None:
            rec[kind].append({"mark": value, "seconds": elapsed, "wall_seconds": wall, "step": step,
                              **scores})
        return scores is None

    while elapsed < args.seconds and not stop and (args.max_steps is None or step < args.max_steps):
        t, tw = clock(), time.perf_counter()
        try:
            out = run.engine.step(run.batch(step))
            loss_v = float(out["loss"])
        except (ValueError, RuntimeError) as e:  # non-finite outputs / PSGD's checks / unsupported params
            rec["diverged"], rec["error"] = True, f"{type(e).__name__}: {str(e)[:200]}"
            break
        dt, dtw = clock() - t, time.perf_counter() - tw
        if step < warmup:
            first_step_s += dtw  # lazy state, compilation (recompiles once state exists): not on the clock
        else:
            elapsed += dt
            wall += dtw
        step += 1
        if not math.isfinite(loss_v):
            rec["diverged"], rec["error"] = True, "non-finite training loss"
            break
        if run.after_step is not None:
            stop = run.after_step(step, loss_v)
            if stop:
                rec["solved_step"], rec["solved_seconds"] = step, elapsed
        if step % LOG_EVERY == 0:
            rec["curve"].append((round(elapsed, 4), round(wall, 4), step, loss_v))
        if step_marks and step >= step_marks[0] and mark("step_marks", step_marks.pop(0)):
            break
        while time_marks and elapsed >= time_marks[0] and time_marks[0] < args.seconds:
            if mark("time_marks", time_marks.pop(0) / args.seconds):
                break
        if rec["diverged"]:
            break
    final = {} if rec["diverged"] else (evaluate(True) or {})
    rec.update(steps=step, seconds=elapsed, wall_seconds=wall, clock=args.clock, first_step_s=first_step_s,
               build_s=build_s, eval_s=eval_s,
               s_per_step=elapsed / (step - warmup) if step > warmup else math.nan, warmup_steps=warmup,
               final=final, final_loss=loss_v)
    if task == "xor":
        rec["solved"] = "solved_step" in rec
    return rec


def score(rec: dict) -> float:
    """Larger is better: the final held-out metric (xor: solved sooner, else lower running loss)."""
    if rec["diverged"] or not rec["final"]:
        return -math.inf
    if rec["task"] == "xor":
        if rec.get("solved"):
            return 1e6 - rec["solved_seconds"]
        v = rec["final"]["loss10"]
        return -v if math.isfinite(v) else -math.inf
    v = rec["final"][METRIC[rec["task"]]]
    return v if math.isfinite(v) else -math.inf


# ---------------------------------------------------------------------------------------------- table
def _ms(xs: list[float], prec: int) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{prec}f}"
    return f"{statistics.mean(xs):.{prec}f} ± {statistics.stdev(xs):.{prec}f}"


def summarize(records: list[dict], best: dict[tuple[str, str], float]) -> list[dict]:
    rows = []
    for task in TASKS:
        opts = [o for (t, o) in best if t == task]
        if not opts:
            continue
        finals = {o: [r for r in records
                      if r["task"] == task and r["optimizer"] == o and r["lr"] == best[task, o]]
                  for o in opts}
        # equal steps: the largest step mark every optimizer's best-lr runs all reached
        common = min((max((m["mark"] for m in r["step_marks"]), default=0) for rs in finals.values()
                      for r in rs if not r["diverged"]), default=0)
        adam_cost = statistics.mean([r["s_per_step"] for r in finals.get("adam", [])] or [math.nan])
        key = METRIC[task]
        prec = 3 if task in ("semisup", "xor") else 2
        for o in opts:
            rs = finals[o]
            ok = [r for r in rs if not r["diverged"]]
            errors = {r.get("error", "") for r in rs if r["diverged"] and r["steps"] == 0}
            row = {"task": task, "optimizer": o, "best_lr": best[task, o], "seeds": [r["seed"] for r in rs],
                   "diverged": len(rs) - len(ok), "steps": [r["steps"] for r in rs],
                   "s_per_step": statistics.mean([r["s_per_step"] for r in rs]),
                   "rel_cost": statistics.mean([r["s_per_step"] for r in rs]) / adam_cost,
                   "failed": "; ".join(sorted(errors))[:70]}  # errors at the first step: not divergence
            row["equal_time"] = [r["final"].get(key, math.nan) for r in ok]
            at_common = [next((m.get(key) for m in r["step_marks"] if m["mark"] == common), math.nan)
                         for r in ok]
            row["equal_steps_at"], row["equal_steps"] = common, at_common
            if task == "vae":
                row["equal_time_log_px"] = [r["final"]["test_log_px"] for r in ok]
            if task == "xor":
                solved = [r for r in rs if r.get("solved")]
                row["solved"] = f"{len(solved)}/{len(rs)}"
                row["solved_seconds"] = [r["solved_seconds"] for r in solved]
                row["solved_steps"] = [r["solved_step"] for r in solved]
                row["cells"] = (
                    f"{row['solved']} solved; s to solve {_ms(row['solved_seconds'], 1)}; "
                    f"final loss10 {_ms(row['equal_time'], 3)}",
                    f"iterations to solve {_ms(row['solved_steps'], 0)}",
                )
            else:
                extra = f" (IWAE {_ms(row['equal_time_log_px'], 2)})" if task == "vae" else ""
                row["cells"] = (_ms(row["equal_time"], prec) + extra,
                                f"{_ms(row['equal_steps'], prec)} @ {common}")
            rows.append(row)
    return rows


def markdown(rows: list[dict], args) -> str:
    what = "equal wall-clock" if args.clock == "wall" else "equal CPU time"
    lines = [f"| task | optimizer | best lr | at {args.seconds:g} s ({what}) | equal steps | "
             "steps in budget | s/step vs Adam |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
        if r.get("failed"):
            div = f" (failed: {r['failed']})"
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['best_lr']:g} | {r['cells'][0]}{div} | "
                     f"{r['cells'][1]} | {_ms([float(s) for s in r['steps']], 0)} | {r['rel_cost']:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main
def parse_lrs(items: list[str]) -> dict[str, tuple[float, ...]]:
    out = {}
    for item in items:
        key, _, vals = item.partition("=")
        if not vals:
            raise argparse.ArgumentTypeError(f"--lrs takes FAMILY=v1,v2,... (adam, psgd, hvp or an optimizer "
                                             f"name), got {item!r}")
        out[key] = tuple(float(v) for v in vals.split(","))
    return out


def lr_grid(task: str, opt: str, override: dict[str, tuple[float, ...]], quick: bool) -> tuple[float, ...]:
    fam = FAMILY[opt]
    grid = override.get(opt) or override.get(fam) or GRIDS[task][fam]
    return tuple(grid[:2]) if quick and len(grid) == 3 and not (override.get(opt) or override.get(fam)) \
        else tuple(grid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=["vae", "xor"])
    ap.add_argument("--optimizers", nargs="+", choices=BUILTIN + EXTERNAL + EXTRA,
                    default=list(BUILTIN + EXTERNAL))
    ap.add_argument("--seconds", type=float, default=30.0, help="wall-clock budget per run (default 30)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="budget clock: wall (default) or cpu, this process's CPU time (one thread: the wall "
                         "time of an unloaded machine; use it when other jobs share the cores)")
    ap.add_argument("--max-steps", type=int, default=None, help="also stop at this many steps")
    ap.add_argument("--seeds", type=int, default=2, help="more seeds (1, 2, ...) at the best lr (default 2)")
    ap.add_argument("--lrs", nargs="+", default=[], metavar="FAMILY=v1,v2",
                    help="lr grids: adam / psgd / hvp or an optimizer name, e.g. adam=1e-3,3e-3 hvp=1e-2")
    ap.add_argument("--time-marks", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                    help="fractions of --seconds at which to evaluate")
    ap.add_argument("--iwae-samples", type=int, default=50, help="importance samples of the vae's log p(x)")
    ap.add_argument("--xor-length", type=int, default=32)
    ap.add_argument("--speech-row", choices=("gamma-fc", "is-fc"), default="gamma-fc",
                    help="the speech task's vctk_resynthesis row (default gamma-fc)")
    ap.add_argument("--refit-decay", type=int_at_least(1), default=None, metavar="STEPS",
                    help="PSGD's refit probability decays from 1 to 0.1 over STEPS (default: each task's "
                         f"recipe schedule, {REFIT_DECAY})")
    ap.add_argument("--kron-max-size", type=int_at_least(1), default=1024,
                    help="Kron's factors of dims above this are diagonal (default 1024)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's loss (genlib Engine)")
    ap.add_argument("--compile-step", action="store_true",
                    help="torch.compile the optimizers' steps too (genlib and torch optimizers; Engine's "
                         "compile_optimizers); heavyball and kron-torch keep their own compilation")
    ap.add_argument("--warmup-steps", type=int, default=1,
                    help="first steps not on the clock (compilation; 3 with --compile-step; speech takes "
                         "at least an epoch and one step: its last batch is smaller, a second graph)")
    ap.add_argument("--quick", action="store_true", help="~2 minutes: vae + xor, 2.5 s runs, 2 lrs, 1 seed")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu (default: the CPU tables' protocol), cuda or cuda:N: the same table on a GPU "
                         "(wall clock; each step reads its loss, so the GPU's work is on the clock)")
    ap.add_argument("--out", default="runs/bench_optimizers")
    ap.add_argument("--more-seeds", type=int, nargs="+", default=None, metavar="SEED",
                    help="continue the study saved in --out: run these seeds at its tuned lrs and budget "
                         "(the optimizers it tuned), then table all its runs")
    args = ap.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and args.clock == "cpu":
        ap.error("--clock cpu counts this process's CPU time, not the GPU's: use --clock wall with "
                 "--device cuda")
    try:
        lrs = parse_lrs(args.lrs)
    except (argparse.ArgumentTypeError, ValueError) as e:
        ap.error(str(e))
    if args.quick:
        args.tasks = [t for t in args.tasks if t in ("vae", "xor")] or ["vae", "xor"]
        args.seconds, args.seeds = 2.5, 0
        args.iwae_samples = min(args.iwae_samples, 10)
    torch.set_num_threads(1)
    import torch._dynamo as dynamo

    if not (args.compile or args.compile_step):  # externals compile their internals by default: eager here
        dynamo.config.disable = True
    # every run builds new modules and optimizers, each a new entry in the cache of the same code: past the
    # default limit of 8 torch.compile would fall back to eager without a word
    dynamo.config.recompile_limit = dynamo.config.accumulated_recompile_limit = 4096
    avail = external_available()
    optimizers = []
    for o in args.optimizers:
        if o in EXTERNAL and avail.get(o):
            print(f"note: skipping {o}: not importable ({avail[o]}); pip install heavyball kron-torch")
            continue
        optimizers.append(o)
    if "heavyball-kron" in optimizers:
        import heavyball

        heavyball.utils.compile_mode = None if not args.compile else heavyball.utils.compile_mode
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv[1:] if argv is None else argv, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "compile": args.compile,
            "compile_step": args.compile_step, "device": str(args.device),
            "device_name": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
            "optimizers": optimizers, "skipped": {k: v for k, v in avail.items() if v}}
    records: list[dict] = []
    best: dict[tuple[str, str], float] = {}
    if args.more_seeds:  # continue the study saved in --out: its runs, its tuned lrs, its budget
        saved = json.loads((out / "results.json").read_text())
        records = saved["runs"]
        for r in records:  # strict JSON saved NaN as null
            r["s_per_step"] = math.nan if r["s_per_step"] is None else r["s_per_step"]
        best = {tuple(k.split("/")): v for k, v in saved["best_lr"].items()}  # type: ignore[misc]
        args.seconds, args.clock = saved["args"]["seconds"], saved["args"].get("clock", "wall")
        meta["more_seeds"] = saved["meta"].get("more_seeds", []) + [args.more_seeds]

    def save() -> None:
        rows = summarize(records, best) if best else []
        write_json(out / "results.json", {
            "meta": meta, "args": vars(args), "best_lr": {f"{t}/{o}": v for (t, o), v in best.items()},
            "summary": [{k: v for k, v in r.items() if k != "cells"} for r in rows], "runs": records})

    def one(task: str, o: str, lr: float, seed: int) -> dict:
        rec = train_one(task, o, lr, seed, args)
        records.append(rec)
        fin = ", ".join(f"{k} {v:.4g}" for k, v in rec["final"].items())
        solved = (f", solved at step {rec['solved_step']} ({rec['solved_seconds']:.1f} s)"
                  if rec.get("solved") else "")
        print(f"  {task:<8}{o:<16}lr {lr:<8g}seed {seed}: {rec['steps']:>6} steps in {rec['seconds']:.1f} s "
              f"({1e3 * rec['s_per_step']:.1f} ms/step, first {rec['first_step_s']:.1f} s)"
              f"{' DIVERGED ' + rec.get('error', '') if rec['diverged'] else ''}: {fin}{solved}", flush=True)
        save()
        return rec

    t0 = time.perf_counter()
    for task in args.tasks:
        if args.more_seeds:
            done = {(r["task"], r["optimizer"], r["seed"]) for r in records}
            for (t, o), lr in best.items():
                for seed in args.more_seeds:
                    if t == task and (t, o, seed) not in done:
                        one(task, o, lr, seed)
            continue
        print(f"[{task}] tuning on seed 0, {args.seconds:g} s per run", flush=True)
        for o in optimizers:
            tuned = [one(task, o, lr, 0) for lr in lr_grid(task, o, lrs, args.quick)]
            best[task, o] = max(tuned, key=score)["lr"]
        if args.seeds > 0:
            print(f"[{task}] seeds 1..{args.seeds} at the best lr", flush=True)
            for o in optimizers:
                for seed in range(1, args.seeds + 1):
                    one(task, o, best[task, o], seed)
    save()
    rows = summarize(records, best)
    print(f"\n{len(records)} runs in {time.perf_counter() - t0:.0f} s; {meta['device_name']}, one torch "
          f"thread; {args.clock} clock; "
          f"{'compiled' if args.compile else 'eager'} loss, {'compiled' if args.compile_step else 'eager'} "
          f"optimizer steps{' (heavyball, kron-torch: their own)' if args.compile_step else ''}")
    print(markdown(rows, args))
    print(f"\nsaved {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
