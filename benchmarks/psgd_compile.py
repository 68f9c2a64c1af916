"""Eager against compiled PSGD steps on one wide tensor, per family: plain steps and refit steps (one thread).

The evidence for each family's :attr:`~genlib.optim.PSGD.refit_in_op`, i.e. how a compiled whitening step
(``torch.compile(opt.step)``, the training engine's ``compile_optimizers``) refits:

- ``cond``: the fits are traced, under ``torch.cond`` on a tensor coin (at probability 1 without one, the
  coin being a constant). Fused fits, but
  ``torch.cond`` may neither mutate nor alias its inputs, so on every step, refit or not, the
  preconditioner's state comes out as new tensors and is copied back; and choices inside a fit made on its
  fit count (LRA's U-or-V coin, Dense's periodic re-inversion) are tensors, so both sides run.
- ``op``: one opaque custom op that flips the coin on the host and runs the eager fits, writing the state in
  place: a plain step costs a call; a refit costs an eager fit.

Each family steps one parameter (``--rows × --cols``; Dense a vector of ``--dense-dim``) on a fixed cycle of
pre-drawn gradients (no model: the step alone). Refit probability 0 times plain steps, 1 a refit every step.
Eager, cond and op optimizers take turns in blocks of ``--block`` steps after ``--warmup`` untimed ones; the
table gives the mean process CPU time per step.

    OMP_NUM_THREADS=1 python -m benchmarks.psgd_compile [--rows 1360 --cols 1000] [--blocks 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import genlib
from genlib.optim import LRA, Dense, Diag, Kron, XMat
from genlib.utils import atomic_write_text

FAMILIES = {
    "kron-qeq1d": lambda ps, p: Kron(ps, coords="QEQ", memory_save_mode="one_diag", update_probability=p),
    "kron": lambda ps, p: Kron(ps, update_probability=p),
    "lra": lambda ps, p: LRA(ps, rank=10, update_probability=p),
    "diag": lambda ps, p: Diag(ps, update_probability=p),
    "xmat": lambda ps, p: XMat(ps, update_probability=p),
    "dense": lambda ps, p: Dense(ps, update_probability=p),
}
MODES = ("eager", "cond", "op")


def time_family(fam: str, shape: tuple[int, ...], prob: float, args) -> dict[str, float]:
    """Mean ms per step of each mode, the modes taking turns block by block."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=gen) for _ in range(4)]
    runs = {}
    for mode in MODES:
        p = torch.nn.Parameter(torch.zeros(shape))
        opt = FAMILIES[fam]([p], prob)
        opt.refit_in_op = mode == "op"  # per instance: the family's default is what the table decides
        step = opt.step if mode == "eager" else torch.compile(opt.step, fullgraph=True)
        runs[mode] = {"p": p, "step": step, "n": 0, "ms": []}

    def steps(run: dict, n: int) -> None:
        for _ in range(n):
            run["p"].grad = grads[run["n"] % 4]
            run["step"]()
            run["n"] += 1

    for run in runs.values():
        steps(run, args.warmup)
    for _ in range(args.blocks):
        for run in runs.values():
            t = time.process_time()
            steps(run, args.block)
            run["ms"].append((time.process_time() - t) / args.block * 1e3)
    return {mode: statistics.fmean(run["ms"]) for mode, run in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1360)
    ap.add_argument("--cols", type=int, default=1000)
    ap.add_argument("--dense-dim", type=int, default=2000, help="Dense's parameter: a vector this long")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="write results.json and table.md here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    genlib.set_validate_args(False)  # the NaN check is a host read: a graph break when compiled
    torch._dynamo.config.recompile_limit = 64
    rows = []
    for fam in args.families:
        shape = (args.dense_dim,) if fam == "dense" else (args.rows, args.cols)
        row = {"family": fam, "shape": list(shape)}
        for prob, kind in ((0.0, "plain"), (1.0, "refit")):
            for mode, ms in time_family(fam, shape, prob, args).items():
                row[f"{kind}_{mode}_ms"] = ms
        rows.append(row)
        print(fam, {k: round(v, 2) for k, v in row.items() if k.endswith("_ms")}, flush=True)
    head = " | ".join(f"{kind} step: {mode}" for kind in ("plain", "refit") for mode in MODES)
    table = [f"| family | shape | {head} |", "|---|---|" + "---|" * 2 * len(MODES)]
    for r in rows:
        cells = " | ".join(f"{r[f'{kind}_{mode}_ms']:.2f}" for kind in ("plain", "refit") for mode in MODES)
        table.append(f"| {r['family']} | {' × '.join(map(str, r['shape']))} | {cells} |")
    print("\n".join(table))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "blocks": args.blocks, "block": args.block, "unit": "ms per step"}
        atomic_write_text(args.out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
        atomic_write_text(args.out / "table.md", "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
