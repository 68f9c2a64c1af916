"""Iterations/s of the paper-scale workloads at fp32 / bf16 / compiled; each paper run's projected wall-clock.

One prepared script for one GPU (under 5 minutes with the default ``--budget-seconds 240``; no dataset
needed: synthetic tensors of the real shapes). Each workload runs its real trainer's step on
:class:`genlib.train.Engine` with the recipe's full configuration:

- ``svhn``: ``recipes.svhn_semisup``'s full config and model (WRN-28-2 inference net, DCGAN generator,
  3-layer EBM MLP, latent 100, batch 100 unlabelled + 100 labelled 3x32x32 images, T_LD = 60 Langevin steps
  from noise, Adam, grad clip 10), timed through :meth:`SemiSupervisedTrainer.step` (which, like ``fit``
  with its per-iteration record, reads the metrics back every step).
- ``vctk``: ``recipes.vctk_resynthesis``'s ``gamma-fc`` row at its full config (FC 513 -> 512 -> 512 -> 32,
  Gamma magnitude, PSGD-LRA rank 10, batch 128 complex STFT frames of 513 bins), :meth:`Engine.step`.
- ``xor-psgd`` / ``xor-adam``: ``recipes.delayed_xor``'s tanh RNN (30 units, hand loop) at length 55,
  batch 128, a fresh batch per step drawn as the recipe draws it (CPU generator, copied over), the loss read
  back every step (the recipe's solved check); PSGD-LRA with exact Hessian-vector products (step(closure))
  or Adam with gradient clipping 1.

Modes: ``fp32``; ``bf16`` (autocast; parameters and optimizer state stay fp32); ``compile``
(``torch.compile`` of the model-and-loss through the engine's ``compile`` option, fp32); optionally
``bf16+compile`` and ``fp16``. Each (workload, mode) cell builds a fresh model, runs warm-up steps (the
compile happens there: its seconds are reported), then times steps between ``torch.cuda.synchronize()`` calls
until its share of the budget or ``--max-steps`` is used. A mode that fails is reported in the table, not
raised. What the compiled mode does not cover: the SVHN step's Langevin chains (the trainer's ``prepare``,
outside the compiled loss) and the PSGD closure step (the engine gives closure optimizers the uncompiled
loss), so ``compile`` there measures how much of the step it reaches.

Projections (``iterations / it/s``, training only: no evaluation, checkpoints or augmentation draws):

- SVHN: the dissertation's Algorithm 2 schedule, 1.2M iterations (augmentation from T_a = 600k; its
  reselection draws are not counted), and the recipe's full config, 60k iterations (T_a = 40k).
- VCTK: 300 epochs (the recipe's full config) of every 10th frame, batch 128. Frames estimated: VCTK 0.92
  holds ~44 h of speech over 110 speakers (~400 utterances each); at 16 kHz, hop 128 that is
  44 * 3600 * 125 = 19.8M frames, 1.98M at every 10th: 15.5k steps per epoch, 4.64M steps for the whole
  corpus; the paper's protocol (train on 10 % of the speakers, ``--train-speaker-fraction 0.1``) is a tenth
  of that, 464k steps. (The shared 4-speaker excerpt averages 7.1 s = 893 frames per utterance: its first
  utterances are the long elicitation paragraphs, so it is not used for the estimate.)
- Delayed XOR: the ``--full`` grid, 10 seeds x lengths 32 / 55 / 64 / 112 x up to 100k iterations per
  optimizer, one run at a time on one GPU; a step's cost is taken as proportional to the length (the hand
  loop), i.e. 10 * 100k * (32 + 55 + 64 + 112) / 55 = 4.78M length-55 steps per optimizer (an upper bound:
  solved runs stop early; SGD costs what Adam does). Runs spread over processes (torchrun) divide it while
  the GPU is not saturated.

    python benchmarks/gpu_throughput.py --out runs/gpu_throughput            # on a GPU, < 5 minutes
    OMP_NUM_THREADS=1 python benchmarks/gpu_throughput.py --device cpu --quick   # CPU check of the script

Writes ``gpu_throughput.json`` and ``gpu_throughput.md`` (the tables it prints) under ``--out``; paste the
markdown into benchmarks/README.md with the date and the GPU whenever it is run on one.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes package of this checkout

WORKLOADS = ("svhn", "vctk", "xor-psgd", "xor-adam")
MODES = ("fp32", "bf16", "compile", "bf16+compile", "fp16")
DEFAULT_MODES = ("fp32", "bf16", "compile")

XOR_LENGTH, XOR_BATCH = 55, 128
XOR_LENGTHS, XOR_SEEDS, XOR_MAX_ITERS = (32, 55, 64, 112), 10, 100_000
VCTK_HOURS, VCTK_EVERY, VCTK_EPOCHS, VCTK_BATCH = 44.0, 10, 300, 128
VCTK_FRAMES = int(VCTK_HOURS * 3600 * 16000 / 128 / VCTK_EVERY)  # every 10th STFT frame, hop 128 at 16 kHz
VCTK_STEPS_FULL = VCTK_EPOCHS * math.ceil(VCTK_FRAMES / VCTK_BATCH)
VCTK_STEPS_PAPER = VCTK_EPOCHS * math.ceil(VCTK_FRAMES / 10 / VCTK_BATCH)
XOR_STEPS = XOR_SEEDS * XOR_MAX_ITERS * sum(XOR_LENGTHS) / XOR_LENGTH

# (workload, run, iterations in units of the measured step)
PROJECTIONS = [
    ("svhn", "SVHN Algorithm 2, dissertation schedule: 1.2M iterations", 1_200_000),
    ("svhn", "SVHN, recipe full config: 60k iterations", 60_000),
    ("vctk", f"VCTK gamma-fc, whole corpus (~{VCTK_FRAMES / 1e6:.2f}M frames at every 10th), "
             f"300 epochs = {VCTK_STEPS_FULL / 1e6:.2f}M steps", VCTK_STEPS_FULL),
    ("vctk", f"VCTK gamma-fc, paper protocol (10 % of speakers), 300 epochs = {VCTK_STEPS_PAPER / 1e3:.0f}k "
             "steps", VCTK_STEPS_PAPER),
    ("xor-psgd", "delayed XOR --full, PSGD-LRA: 10 seeds x L 32/55/64/112 x <= 100k it", XOR_STEPS),
    ("xor-adam", "delayed XOR --full, Adam (SGD alike): 10 seeds x L 32/55/64/112 x <= 100k it", XOR_STEPS),
]


# ------------------------------------------------------------------------------------------- workloads
def _precision_compile(mode: str, backend: str) -> tuple[str, bool | str]:
    precision = "bf16" if "bf16" in mode else "fp16" if mode == "fp16" else "fp32"
    return precision, (backend if "compile" in mode else False)


def make_svhn(device: torch.device, precision: str, compile: bool | str) -> Callable[[int], None]:
    from genlib.train import SemiSupervisedTrainer
    from recipes.svhn_semisup import Config, build

    cfg = Config()  # the full (paper) setting
    torch.manual_seed(0)
    vae, _ = build(cfg, (3, 32, 32))
    train = replace(cfg.train, progress=False, precision=precision, compile=compile, eval_every=0)
    trainer = SemiSupervisedTrainer(vae, train, device=device)
    g = torch.Generator().manual_seed(0)
    b = train.batch_size

    def images() -> torch.Tensor:
        return torch.rand(b, 3, 32, 32, generator=g).to(device)

    pool = [(images(), images(), torch.randint(10, (b,), generator=g).to(device)) for _ in range(4)]

    def step(i: int) -> None:
        x_u, x_l, y_l = pool[i % len(pool)]
        trainer.step(x_u, x_l, y_l)  # reads the metrics back, as fit's per-iteration record does

    return step


def make_vctk(device: torch.device, precision: str, compile: bool | str) -> Callable[[int], None]:
    from genlib.train import Engine
    from recipes.vctk_resynthesis import ROWS, Config, build_vae, make_optimizer

    # the full config (PSGD-LRA, FC 512 x 512); folders named so that no data root is looked up
    cfg = Config(data_dir="unused", librispeech_dir="unused", device=str(device), precision=precision,
                 compile=bool(compile))
    torch.manual_seed(0)
    vae = build_vae(cfg, ROWS["gamma-fc"], 513)
    opt = make_optimizer(cfg, vae.parameters())

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        loss = vae.elbo(batch["frames"]).loss
        return loss, {"loss": loss}

    engine = Engine(vae, opt, loss_fn, device=device, precision=precision, compile=compile,
                    grad_clip=cfg.grad_clip, unit="epoch", progress=False)
    g = torch.Generator().manual_seed(0)

    def frames() -> torch.Tensor:  # complex STFT frames with speech-like magnitudes (log-normal spread)
        mag = torch.exp(torch.randn(cfg.batch_size, 513, generator=g) * 1.5 - 2.0)
        phase = torch.rand(cfg.batch_size, 513, generator=g) * 2 * math.pi
        return torch.polar(mag, phase).to(device)

    pool = [frames() for _ in range(4)]

    def step(i: int) -> None:
        engine.step({"frames": pool[i % len(pool)]})  # fit reads the record back once per epoch

    return step


def make_xor(optimizer: str) -> Callable[[torch.device, str, bool | str], Callable[[int], None]]:
    def make(device: torch.device, precision: str, compile: bool | str) -> Callable[[int], None]:
        from genlib.train import Engine
        from recipes.delayed_xor import XorConfig, _make_optimizer, logistic_loss, make_batch, make_model

        cfg = XorConfig(lengths=(XOR_LENGTH,), max_iters=XOR_MAX_ITERS)
        gen = torch.Generator().manual_seed(0)
        model = make_model("rnn", cfg.hidden, generator=gen)
        opt = _make_optimizer(optimizer, list(model.parameters()), cfg, 10, 0)

        def loss_fn(batch: tuple) -> tuple[torch.Tensor, dict]:
            loss = logistic_loss(model(batch[0]), batch[1])
            return loss, {"loss": loss}

        # PSGD-LRA clips its own (preconditioned) step; Adam's gradients are clipped to norm 1
        engine = Engine(model, opt, loss_fn, device=device, precision=precision, compile=compile,
                        grad_clip=None if optimizer == "psgd_lra" else cfg.grad_clip, progress=False)

        def step(i: int) -> None:
            x, y = make_batch(cfg.batch_size, XOR_LENGTH, gen, device)  # a fresh batch, as run_one draws it
            rec = engine.step((x, y))
            float(rec["objective"])  # run_one reads the loss every step (the solved check)

        return step

    return make


BUILDERS = {"svhn": make_svhn, "vctk": make_vctk, "xor-psgd": make_xor("psgd_lra"),
            "xor-adam": make_xor("adam")}


# ------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_cell(workload: str, mode: str, device: torch.device, backend: str, warmup: int, max_steps: int,
             min_steps: int, share: float) -> dict:
    """Build the workload fresh, warm up (compiling), then time steps for what is left of the cell's
    ``share`` of seconds (at least a quarter of it, at least ``min_steps``, at most ``max_steps``)."""
    precision, compile = _precision_compile(mode, backend)
    rec: dict = {"workload": workload, "mode": mode, "precision": precision,
                 "compile": compile if compile else None}
    t_start = time.perf_counter()
    try:
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = BUILDERS[workload](device, precision, compile)
        sync(device)
        t0 = time.perf_counter()
        for i in range(warmup):
            step(i)
        sync(device)
        rec["warmup_steps"], rec["warmup_s"] = warmup, time.perf_counter() - t0
        seconds = max(share - (time.perf_counter() - t_start), share / 4)
        n, t0 = 0, time.perf_counter()
        while n < max_steps and (n < min_steps or time.perf_counter() - t0 < seconds):
            step(warmup + n)
            n += 1
        sync(device)
        dt = time.perf_counter() - t0
        rec.update(steps=n, seconds=dt, it_per_s=n / dt, ms_per_it=1e3 * dt / n)
        if device.type == "cuda":
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as e:  # report the mode's failure in the table, go on with the others
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        rec["error"] = msg[:300]
        rec["traceback"] = traceback.format_exc()[-4000:]
    rec["cell_s"] = time.perf_counter() - t_start
    return rec


# ------------------------------------------------------------------------------------------- report
def fmt_duration(s: float) -> str:
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def markdown(records: list[dict], modes: list[str], info: dict) -> str:
    lines = [f"{info['device_name']} (`{info['device']}`), torch {info['torch']}, compile backend "
             f"`{info['backend']}`, budget {info['budget_s']:.0f} s{' (--quick)' if info['quick'] else ''}, "
             f"total {info['total_s']:.0f} s, {info['date']}", "",
             "| workload | mode | it/s | ms/it | steps timed | warm-up s (compile) | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            error = r["error"].replace("|", "/")
            lines.append(f"| {r['workload']} | {r['mode']} | failed: {error} | | | | |")
            continue
        mem = f"{r['peak_mem_gib']:.2f}" if "peak_mem_gib" in r else "-"
        lines.append(f"| {r['workload']} | {r['mode']} | {r['it_per_s']:.2f} | {r['ms_per_it']:.1f} | "
                     f"{r['steps']} | {r['warmup_s']:.1f} | {mem} |")
    lines += ["", "Projected wall-clock of the paper-scale runs (iterations / measured it/s; training steps "
              "only):", "",
              "| run | iterations | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    by = {(r["workload"], r["mode"]): r for r in records}
    for workload, what, iters in PROJECTIONS:
        cells = []
        for m in modes:
            r = by.get((workload, m))
            cells.append("-" if r is None else "failed" if "error" in r
                         else fmt_duration(iters / r["it_per_s"]))
        lines.append(f"| {what} | {iters / 1e6:.2f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--budget-seconds", type=float, default=240.0,
                   help="total time for every cell, warm-ups and compiles included (default 240)")
    p.add_argument("--quick", action="store_true",
                   help="tiny step counts (1 warm-up, 2 timed): checks the script on a CPU in ~1-2 minutes")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES))
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; 'eager' with --quick on a CPU: dynamo's "
                        "capture without code generation)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per cell (default 5; --quick 1)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="timed steps at most (default 2000; --quick 2)")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_throughput.json / .md")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    backend = args.compile_backend or ("eager" if args.quick and device.type == "cpu" else "inductor")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    max_steps = args.max_steps if args.max_steps is not None else (2 if args.quick else 2000)
    min_steps = min(max_steps, 2 if args.quick else 10)
    info = {"device": str(device), "backend": backend, "budget_s": args.budget_seconds, "quick": args.quick,
            "torch": torch.__version__, "python": platform.python_version(),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or "cpu"),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "threads": torch.get_num_threads(), "warmup": warmup, "max_steps": max_steps,
            "xor_steps_projected": XOR_STEPS, "vctk_frames_estimated": VCTK_FRAMES,
            "vctk_steps_full": VCTK_STEPS_FULL, "vctk_steps_paper": VCTK_STEPS_PAPER}
    if device.type == "cuda":
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32

    # eager cells first, on half the budget when compiled modes follow: a slow compile then eats only the
    # compiled cells' half (compiling counts against the budget and may overrun it)
    cells = [(w, m) for m in args.modes if "compile" not in m for w in args.workloads]
    n_eager = len(cells)
    cells += [(w, m) for m in args.modes if "compile" in m for w in args.workloads]
    eager_share = args.budget_seconds * (0.5 if len(cells) > n_eager else 1.0) / max(n_eager, 1)
    t_all = time.perf_counter()
    records = []
    for k, (w, m) in enumerate(cells):
        left = args.budget_seconds - (time.perf_counter() - t_all)
        share = max(left / (len(cells) - k), 0.0)
        if k < n_eager:
            share = min(share, eager_share)
        rec = run_cell(w, m, device, backend, warmup, max_steps, min_steps, share)
        records.append(rec)
        status = rec.get("error") or (f"{rec['it_per_s']:.2f} it/s ({rec['steps']} steps, warm-up "
                                      f"{rec['warmup_s']:.1f} s)")
        print(f"[{time.perf_counter() - t_all:6.0f} s] {w:<9} {m:<13} {status}", flush=True)
    info["total_s"] = time.perf_counter() - t_all
    md = markdown(records, args.modes, info)
    print("\n" + md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"info": info, "records": records}
        (args.out / "gpu_throughput.json").write_text(json.dumps(payload, indent=1))
        (args.out / "gpu_throughput.md").write_text(md + "\n")
        print(f"\nwrote {args.out / 'gpu_throughput.json'} and gpu_throughput.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
