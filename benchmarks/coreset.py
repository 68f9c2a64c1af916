"""genlib's facility location (the engine of Craig / AdaCore) vs apricot's FacilityLocationSelection.

Same random points (standard normal, float64 from one seed; genlib runs on a float32 copy), same budget,
apricot with ``metric="euclidean"`` and its default lazy greedy. apricot's "euclidean" similarity is
``max(D^2) - D^2`` over squared distances, so genlib's matching run uses ``metric="sqeuclidean"``: both
then maximise the same objective and the selections can be compared pick by pick. genlib's own CRAIG
default (plain Euclidean), its stochastic greedy (squared distances) and the exact greedy on the batched
torch engine (``engine="torch"``, what runs on GPU; squared distances) are timed too.

Each run happens in a fresh subprocess, pinned to one thread (``OMP/MKL/NUMBA_NUM_THREADS=1``) so both
libraries get one core. Peak memory is the run's ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` high-water
mark minus the same process's mark just before the run (data already in memory): the extra resident memory
the selection needed. "cpu s" is the run's process CPU time (``time.process_time``), steadier than the wall
clock on a machine shared with other jobs, and "cpu vs" its ratio. "same picks" is the length of the common
prefix of the two greedy orders, and "cost" is the k-medoids cost ``sum_i min_{j in S} |x_i - x_j|^2``
(lower is better) relative to apricot's.
apricot compiles its numba gain kernel in every ``fit`` (eagerly, uncached); that fixed cost is measured on
a 20-point fit and a second speed-up column leaves it out.

    python -m benchmarks.coreset [--sizes 5000 20000 50000] [--dim 10] [--fraction 0.01] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
METHODS = ("apricot", "genlib-sqeuclidean", "genlib-euclidean", "genlib-stochastic", "genlib-torch-engine")


def make_points(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


def apricot_bytes(n: int) -> int:
    # a dense float64 n x n distance matrix, turned into similarities by an out-of-place max - D
    return 2 * 8 * n * n


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def worker(method: str, n: int, dim: int, budget: int, seed: int, device: str, repeats: int = 1) -> dict:
    """Timed selections in this (fresh) process; returns the picks, the best of ``repeats`` times in
    seconds and the peak memory."""
    x = make_points(n, dim, seed)
    if method == "apricot":
        from apricot import FacilityLocationSelection

        FacilityLocationSelection(2, metric="euclidean", optimizer="lazy").fit(x[:20])  # warm-up
        # apricot compiles its numba gain kernel eagerly in every fit (explicit signature, cache=False):
        # a 20-point fit measures that fixed cost, reported apart
        start = time.perf_counter()
        FacilityLocationSelection(2, metric="euclidean", optimizer="lazy").fit(x[:20])
        overhead = time.perf_counter() - start
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = cpu = math.inf
        sel = None
        for _ in range(repeats):
            sel = None  # free the previous fit's matrices first
            start, start_cpu = time.perf_counter(), time.process_time()
            sel = FacilityLocationSelection(budget, metric="euclidean", optimizer="lazy").fit(x)
            seconds = min(seconds, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - start_cpu)
        picks = [int(i) for i in sel.ranking]
    else:
        import torch

        from genlib.select import facility_location

        xt = torch.from_numpy(x).float().to(device)
        metric = "euclidean" if method == "genlib-euclidean" else "sqeuclidean"
        greedy = "stochastic" if method == "genlib-stochastic" else "lazy"
        engine = "torch" if method == "genlib-torch-engine" else "auto"
        # warm-up: CUDA context, or loading the compiled CPU kernels (numba caches them on disk; the
        # first run after an install compiles them, ~5 s once)
        facility_location(xt[:40], 2, metric=metric, greedy=greedy, engine=engine)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = cpu = math.inf
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            res = facility_location(
                xt,
                budget,
                metric=metric,
                greedy=greedy,
                engine=engine,
                generator=torch.Generator().manual_seed(0),
            )
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = min(seconds, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - start_cpu)
        picks = res.indices.tolist()
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # ru_maxrss is in KiB
    out = {"picks": picks, "seconds": seconds, "cpu": cpu, "peak_mb": peak_mb}
    if method == "apricot":
        out["overhead"] = overhead
    if method != "apricot" and device.startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_worker(method: str, n: int, args: argparse.Namespace, budget: int) -> dict:
    env = dict(os.environ, **{v: str(args.threads) for v in THREAD_VARS})
    cmd = [sys.executable, "-m", "benchmarks.coreset", "--worker", method, str(n), str(budget)]
    cmd += ["--dim", str(args.dim), "--seed", str(args.seed), "--device", args.device]
    cmd += ["--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} at n={n} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def medoid_cost(x: np.ndarray, picks: list[int]) -> float:
    """sum_i min_{j in picks} |x_i - x_j|^2, in float64, a block of rows at a time."""
    centers = x[picks]
    total = 0.0
    for start in range(0, len(x), 4096):
        block = x[start : start + 4096]
        d2 = (block**2).sum(1)[:, None] + (centers**2).sum(1)[None, :] - 2 * block @ centers.T
        total += float(np.maximum(d2, 0).min(1).sum())
    return total


def common_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


WIDTHS = (6, 5, 20, 8, 9, 10, 11, 7, 9, 11, 9)


def row(*cells) -> str:
    """Right-aligned table row (the method column left-aligned); a long last cell runs on."""
    out = []
    for i, (cell, w) in enumerate(zip(cells, WIDTHS)):
        out.append(f"{cell!s:<{w}}" if i == 2 or i == len(cells) - 1 and i < 3 else f"{cell!s:>{w}}")
    return " ".join(out) if len(cells) == len(WIDTHS) else " ".join(out[:-1] + [str(cells[-1])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.01, help="budget k = round(fraction * n)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="time each run this often, report the fastest")
    p.add_argument("--device", default="cpu", help="genlib's device (apricot is CPU-only)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--apricot-max-gb", type=float, default=8.0, help="skip apricot above this estimate")
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "BUDGET"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        method, n, budget = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(method, n, args.dim, budget, args.seed, args.device, args.repeats)))
        return

    print(f"facility location, d={args.dim}, k = round({args.fraction} n), {args.threads} thread(s)")
    print(
        f"genlib on {args.device}; best of {args.repeats} run(s); peak MB = extra resident memory of the run"
    )
    columns = ("n", "k", "method", "time s", "peak MB", "vs apricot", "w/o its JIT", "cpu s", "cpu vs")
    header = row(*columns, "same picks", "cost")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        budget = max(1, round(args.fraction * n))
        x = make_points(n, args.dim, args.seed)
        results: dict[str, dict] = {}
        for method in args.methods:
            if method == "apricot":
                need = apricot_bytes(n)
                limit = min(args.apricot_max_gb * 2**30, 0.8 * available_bytes())
                if need > limit:
                    reason = f"skipped: its dense n x n float64 matrices need ~{need / 2**30:.0f} GiB"
                    print(row(n, budget, "apricot", reason + f" (limit {limit / 2**30:.0f} GiB)"))
                    continue
            results[method] = r = run_worker(method, n, args, budget)
            r["cost"] = medoid_cost(x, r["picks"])
        ref = results.get("apricot")
        for method, r in results.items():
            speed = f"{ref['seconds'] / r['seconds']:.1f}x" if ref else "-"
            cpu_speed = f"{ref['cpu'] / r['cpu']:.1f}x" if ref else "-"
            nojit = f"{(ref['seconds'] - ref['overhead']) / r['seconds']:.1f}x" if ref else "-"
            if method == "apricot":
                nojit = "-"
            same = f"{common_prefix(ref['picks'], r['picks'])}/{budget}" if ref else "-"
            cost = f"{r['cost'] / ref['cost']:.5f}" if ref else f"{r['cost']:.4g}"
            mem = f"{r['peak_mb']:.0f}" + (f" (+{r['gpu_peak_mb']:.0f} GPU)" if "gpu_peak_mb" in r else "")
            cells = (f"{r['seconds']:.2f}", mem, speed, nojit, f"{r['cpu']:.2f}", cpu_speed, same, cost)
            print(row(n, budget, method, *cells))
        if ref:
            print(f"{'':>13}(apricot's per-fit numba compile: {ref['overhead']:.2f} s of its time)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
