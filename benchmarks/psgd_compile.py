"""Eager against compiled PSGD steps on one wide tensor, per family and refit probability (one CPU thread).

Which families gain from ``torch.compile(opt.step)`` (the training engine's ``compile_optimizers``) and which
lose: a compiled step with a refit probability below 1 runs its fits under ``torch.cond``, which cannot
mutate or alias its inputs, so on every step (refit or not) the preconditioner's state comes out as new
tensors and is copied back. That costs nothing for Kron's and Diag's small factors and a few passes over
memory for LRA's ``dim × rank`` factors. A probability of 1 takes the host path (no ``torch.cond``).

The default probabilities 0 and 1 time plain steps and refit-every-step steps; from the two the table
derives the refit probability above which the compiled step is the faster (a few dozen steps at a
probability in between would time a handful of refits, too few to average).

Each family steps a ``--rows × --cols`` parameter on a fixed cycle of pre-drawn gradients (whitening, no
model: the step alone is timed). Eager and compiled optimizers take turns in blocks of ``--block`` steps
after ``--warmup`` untimed steps; the table gives the mean per-step process CPU time over all timed steps.
Both run the same seed for the same number of steps, so they refit on the same steps (a median over blocks
would mostly miss the refits of a small probability).

    OMP_NUM_THREADS=1 python -m benchmarks.psgd_compile [--rows 1360 --cols 1000] [--blocks 7] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import genlib
from genlib.optim import LRA, Diag, Kron, XMat
from genlib.utils import atomic_write_text

FAMILIES = {
    "kron-qeq1d": lambda ps, p: Kron(ps, coords="QEQ", memory_save_mode="one_diag", update_probability=p),
    "kron": lambda ps, p: Kron(ps, update_probability=p),
    "lra": lambda ps, p: LRA(ps, rank=10, update_probability=p),
    "diag": lambda ps, p: Diag(ps, update_probability=p),
    "xmat": lambda ps, p: XMat(ps, update_probability=p),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1360)
    ap.add_argument("--cols", type=int, default=1000)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--probabilities", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="write results.json and table.md here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    genlib.set_validate_args(False)  # the NaN check is a host read: a graph break when compiled
    torch._dynamo.config.recompile_limit = 64
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(args.rows, args.cols, generator=gen) for _ in range(4)]
    rows = []
    for fam in args.families:
        for prob in args.probabilities:
            runs = {}
            for mode in ("eager", "compiled"):
                p = torch.nn.Parameter(torch.zeros(args.rows, args.cols))
                opt = FAMILIES[fam]([p], prob)
                step = torch.compile(opt.step, fullgraph=True) if mode == "compiled" else opt.step
                runs[mode] = [p, step, 0, []]
            for run in runs.values():
                for _ in range(args.warmup):
                    run[0].grad = grads[run[2] % 4]
                    run[1]()
                    run[2] += 1
            for _ in range(args.blocks):
                for run in runs.values():
                    t = time.process_time()
                    for _ in range(args.block):
                        run[0].grad = grads[run[2] % 4]
                        run[1]()
                        run[2] += 1
                    run[3].append((time.process_time() - t) / args.block * 1e3)
            eager, compiled = (statistics.fmean(runs[m][3]) for m in ("eager", "compiled"))
            rows.append({"family": fam, "update_probability": prob, "eager_ms": eager,
                         "compiled_ms": compiled, "ratio": compiled / eager})
            print(f"{fam:11s} p={prob:<4} eager {eager:7.2f} ms  compiled {compiled:7.2f} ms  "
                  f"({compiled / eager:.2f}x)", flush=True)
    by = {(r["family"], r["update_probability"]): r for r in rows}
    for fam in args.families:  # eager e0 + p·(e1 − e0) against compiled c0 + p·(c1 − c0)
        if (fam, 0.0) in by and (fam, 1.0) in by:
            (e0, c0), (e1, c1) = ((by[fam, q]["eager_ms"], by[fam, q]["compiled_ms"]) for q in (0.0, 1.0))
            gain = (e1 - e0) - (c1 - c0)  # what compiling saves per refit
            by[fam, 0.0]["break_even"] = (c0 - e0) / gain if gain > 0 else None
    table = ["| family | refit probability | eager ms / step | compiled ms / step | compiled / eager | "
             "compiled faster above refit probability |", "|---|---|---|---|---|---|"]
    for r in rows:
        b = r.get("break_even", "")
        if b != "":
            b = "never" if b is None else ("always" if b <= 0 else f"{b:.3f}")
        table.append(f"| {r['family']} | {r['update_probability']} | {r['eager_ms']:.2f} | "
                     f"{r['compiled_ms']:.2f} | {r['ratio']:.2f} | {b} |")
    print("\n".join(table))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "shape": [args.rows, args.cols], "blocks": args.blocks,
                "block": args.block}
        atomic_write_text(args.out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
        atomic_write_text(args.out / "table.md", "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
