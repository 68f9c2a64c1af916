"""CPU throughput of genlib's trainers before / after a change (one process, one torch thread).

Measures training iterations per second of three trainers as the recipes drive them, on one CPU thread:

- ``semisup``: :class:`~genlib.train.SemiSupervisedTrainer` with ``recipes.svhn_semisup``'s ``--quick`` model
  and config (MLP encoder / decoder, latent EBM prior, 20 persistent Langevin steps, batch 100) on the
  shared MNIST-4k digits (1x28x28; random [0, 1] images when the file is absent);
- ``classifier``: :func:`~genlib.train.train_classifier` of the recipe's MLP baseline on 2900 images, batch
  100 (29 steps per epoch); ``classifier-1step``: the same on the recipe's 100 labels (one step per epoch,
  what the ``--quick`` baseline does for 100 epochs: the per-epoch overhead shows);
- ``vae``: ``recipes.vae_optimizers.train`` with Adam (8x8 sklearn digits, batch 128).

Each measurement is a fresh subprocess with ``PYTHONPATH`` and cwd set to the checkout under test, so one
invocation compares two checkouts (e.g. a worktree of the commit before a change and one of ``HEAD``). The
checkouts are measured interleaved (before, after, after, before, ...: each repeat swaps the order) because a
shared machine's speed drifts. Two tables: iterations per second of process CPU time (``time.process_time``
of the one-threaded process: what it spends itself, far less sensitive to other processes' load than the
wall clock) and per wall-clock second; each gives the median it/s of each checkout, the ratio of the medians,
the range of the per-repeat (paired) ratios and the noise (half the relative min-max spread of "before").
Each subprocess first trains a warm-up run, then times ``--iters`` iterations of the trainer's own loop.

    git worktree add /tmp/wt_before 8c3e650 && git worktree add /tmp/wt_after HEAD
    OMP_NUM_THREADS=1 python benchmarks/engine_cpu.py --repo /tmp/wt_before --repo /tmp/wt_after \\
        --repeats 5 --out runs/engine_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = ("semisup", "classifier", "classifier-1step", "vae")
# iterations timed per workload (after a warm-up): ~3-8 s each on one thread of a shared CPU
DEFAULT_ITERS = {"semisup": 150, "classifier": 600, "classifier-1step": 300, "vae": 600}


# ------------------------------------------------------------------------------------------- worker side
class _Clock:
    """``with _Clock() as c: ...`` leaves ``c == [wall seconds, process CPU seconds]`` of the block."""

    def __enter__(self) -> list[float]:
        self._start = (time.perf_counter(), time.process_time())
        self._out: list[float] = []
        return self._out

    def __exit__(self, *exc) -> bool:
        self._out += [time.perf_counter() - self._start[0], time.process_time() - self._start[1]]
        return False


class _TimeShim:
    """Stands in for a recipe's ``time`` module: ``perf_counter`` as usual, recording the process time."""

    def __init__(self):
        self.cpu: list[float] = []

    def perf_counter(self) -> float:
        self.cpu.append(time.process_time())
        return time.perf_counter()

    def __getattr__(self, name):
        return getattr(time, name)


def _digits():
    """MNIST-4k (shared data folder) as (x in [0, 1] of shape (N, 1, 28, 28), y); random images if absent."""
    import torch

    root = Path(os.environ.get("GENLIB_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "digits" / "mnist_4k.npz"
    if path.is_file():
        from genlib.data.images import load_mnist_npz

        x, y = load_mnist_npz(path)
        return x.float(), y.long(), str(path)
    g = torch.Generator().manual_seed(0)
    return torch.rand(4000, 1, 28, 28, generator=g), torch.randint(10, (4000,), generator=g), "synthetic"


def _semisup(n: int) -> tuple[float, dict]:
    import torch

    from genlib.train import SemiSupervisedConfig, SemiSupervisedTrainer
    from recipes.svhn_semisup import Config, build

    cfg = Config.quick()
    x, y, src = _digits()
    x_l, y_l, x_u = x[:100], y[:100], x[100:3000]
    torch.manual_seed(0)
    vae, _ = build(cfg, tuple(x.shape[1:]))
    train = {k: getattr(cfg.train, k) for k in (
        "batch_size", "lr", "ebm_lr", "score_penalty", "langevin_steps", "langevin_step_size",
        "negative_init", "class_weight", "grad_clip")}
    warm = 20
    tc = SemiSupervisedConfig(n_iters=warm, eval_every=0, progress=False, **train)
    trainer = SemiSupervisedTrainer(vae, tc, device="cpu")
    trainer.fit(x_u, x_l, y_l)  # warm-up
    trainer.config.n_iters = warm + n
    with _Clock() as clock:
        trainer.fit(x_u, x_l, y_l)  # continues from the warm-up's iteration
    return clock, {"data": src}


def _classifier(n: int, n_train: int) -> tuple[float, dict]:
    import torch

    from genlib.train import train_classifier
    from recipes.svhn_semisup import Config, make_classifier

    cfg = Config.quick()
    x, y, src = _digits()
    x, y = x[:n_train], y[:n_train]
    steps_per_epoch = -(-n_train // 100)
    epochs = max(1, n // steps_per_epoch)
    torch.manual_seed(0)
    train_classifier(make_classifier(cfg, tuple(x.shape[1:])), (x, y), epochs=2, batch_size=100,
                     device="cpu", seed=0, progress=False)  # warm-up
    model = make_classifier(cfg, tuple(x.shape[1:]))
    with _Clock() as clock:
        train_classifier(model, (x, y), epochs=epochs, batch_size=100, device="cpu", seed=0, progress=False)
    return clock, {"data": src, "epochs": epochs, "iters": epochs * steps_per_epoch}


def _vae(n: int) -> tuple[float, dict]:
    import contextlib
    import io

    import recipes.vae_optimizers as recipe

    cfg = recipe.Config(steps=50, optimizers=("adam",), device="cpu")
    train_x, test_x = recipe.load_data(cfg)
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        recipe.train(cfg, "adam", train_x, test_x)  # warm-up
        cfg.steps = n
        # train() times its loop with time.perf_counter() (then evaluates): its two calls give the wall
        # seconds it reports, and the shim records the process time at each
        recipe.time = shim = _TimeShim()
        try:
            _, res = recipe.train(cfg, "adam", train_x, test_x)
        finally:
            recipe.time = time
    return (res["seconds"], shim.cpu[1] - shim.cpu[0]), {"data": "sklearn digits 8x8"}


def worker(name: str, n: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import genlib

    if name == "semisup":
        seconds, info = _semisup(n)
    elif name == "classifier":
        seconds, info = _classifier(n, 2900)
    elif name == "classifier-1step":
        seconds, info = _classifier(n, 100)
    elif name == "vae":
        seconds, info = _vae(n)
    else:
        raise ValueError(f"unknown workload {name!r}")
    iters = info.pop("iters", n)
    wall, cpu = seconds
    return {"workload": name, "iters": iters, "seconds": wall, "cpu_seconds": cpu, "it_per_s": iters / wall,
            "cpu_it_per_s": iters / cpu,
            "genlib": genlib.__file__, "threads": torch.get_num_threads(), **info}


# ------------------------------------------------------------------------------------------- driver side
def measure(repo: Path, name: str, n: int, python: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("GENLIB_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--iters", str(n)]
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} in {repo} failed:\n{out.stderr[-3000:]}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    if not rec["genlib"].startswith(str(repo)):
        raise RuntimeError(f"{name}: imported genlib from {rec['genlib']}, not from {repo}")
    return rec


def commit_of(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, check=True).stdout.strip()[:80]
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "?"


def table(results: dict, repos: list[Path], workloads: list[str], key: str) -> str:
    before, after = (str(r) for r in repos[:2])
    lines = ["| workload | before it/s (median, min-max) | after it/s (median, min-max) | after / before "
             "(medians) | paired ratios min-max | repeats | noise (+-) |",
             "|---|---|---|---|---|---|---|"]
    for w in workloads:
        b = [r[key] for r in results[w][before]]
        a = [r[key] for r in results[w][after]]
        paired = [x / y for x, y in zip(a, b)]
        mb, ma = statistics.median(b), statistics.median(a)
        noise = (max(b) - min(b)) / (2 * mb)
        lines.append(f"| {w} | {mb:.1f} ({min(b):.1f}-{max(b):.1f}) | "
                     f"{ma:.1f} ({min(a):.1f}-{max(a):.1f}) | {ma / mb:.3f} | "
                     f"{min(paired):.3f}-{max(paired):.3f} | {len(b)} | {100 * noise:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", action="append", type=Path, default=None,
                   help="a checkout to import genlib / recipes from (give two: before, then after; "
                        "default: this checkout alone)")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: per workload)")
    p.add_argument("--out", type=Path, default=None, help="folder for engine_cpu.json / engine_cpu.md")
    p.add_argument("--worker", choices=WORKLOADS, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.iters or DEFAULT_ITERS[args.worker])))
        return 0

    repos = [r.resolve() for r in (args.repo or [Path(__file__).resolve().parents[1]])]
    if len(repos) == 1:
        repos = repos * 2  # one checkout against itself: the noise floor
    results: dict = {w: {str(r): [] for r in repos} for w in args.workloads}
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        for w in args.workloads:
            order = repos[:2] if rep % 2 == 0 else repos[1::-1]
            for repo in order:
                rec = measure(repo, w, args.iters or DEFAULT_ITERS[w], sys.executable)
                results[w][str(repo)].append(rec)
                print(f"[{time.perf_counter() - t0:6.0f} s] repeat {rep + 1}/{args.repeats} {w:<16} "
                      f"{repo}: {rec['cpu_it_per_s']:.1f} it/s of CPU time, {rec['it_per_s']:.1f} wall",
                      flush=True)
    md = ("Iterations per second of process CPU time (insensitive to other processes' load):\n\n"
          + table(results, repos, args.workloads, "cpu_it_per_s")
          + "\n\nIterations per wall-clock second:\n\n" + table(results, repos, args.workloads, "it_per_s"))
    header = f"before = `{repos[0]}` ({commit_of(repos[0])}), after = `{repos[1]}` ({commit_of(repos[1])})"
    print("\n" + header + "\n\n" + md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "engine_cpu.json").write_text(json.dumps(
            {"repos": [str(r) for r in repos], "commits": [commit_of(r) for r in repos], "results": results},
            indent=1))
        (args.out / "engine_cpu.md").write_text(header + "\n\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
