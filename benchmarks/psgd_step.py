"""genlib.optim PSGD families vs SGD, Adam and psgd_torch (v0.6.1) on MNIST-4k, from one run.

Models: an MLP (784-128-10), a small CNN (conv5-8, pool, conv5-16, pool, linear) and, for the dense
preconditioner (memory ``dim²``), a tiny MLP on 7×7 average-pooled digits (49-32-10, 1.9k parameters).
Data: ``../shared/data/digits/mnist_4k.npz``, a fixed list of batches of 128 cycled in the same order for
every optimizer, every model started from the same initial weights.

Each genlib family is paired with psgd_torch's matching preconditioner (Kron↔Kron, LRA↔LRA, XMat↔XMat,
Diag↔LRA with rank 0 (= ``diag(d)``), Dense↔Newton) at the same lr, momentum, preconditioner lr, curvature
(exact Hessian-vector products, psgd_torch's "Newton" type) and update probability. The refit coin flips are
drawn once (from ``--seed``) and shared: every PSGD optimizer refits on exactly the same steps (genlib through
an ``update_probability`` schedule of 0/1, psgd_torch by setting ``preconditioner_update_probability`` to 0/1
before each step), so a step-time ratio is not skewed by one side drawing more refits (each costs an extra
double backward) in a short run.

``--curvature whiten`` times gradient whitening instead (pairs ``(v, g)``, no second derivatives): both take
the gradients themselves inside ``step(closure)`` (the closure returns the loss without ``backward()``;
genlib also accepts torch's ``loss.backward(); opt.step()``, which adds ``zero_grad`` and the ``.grad``
accumulation, ~5 % of the tiny model's step), psgd_torch with ``preconditioner_type="whitening"``; Dense has
no whitening counterpart there and is left out.

Timing: one torch thread; ``--warmup`` steps untimed, then the timed steps in blocks of 10, the optimizers
taking turns block by block (so load changes on a shared machine hit all alike); the reported step time is
the median over blocks of the block mean (a block mixes refit and plain steps as the update probability
does). Loss: the mean cross-entropy on all 4000 digits after the run. Ratios: step time /
SGD's, step time / psgd_torch's, and loss − psgd_torch's loss.

``--probe-seeds K`` compares losses instead of times: a single run's loss depends on its random probes ``v``
(and psgd_torch's random starting LRA factors) by about as much as the two libraries differ, so each PSGD pair
is trained K times per side with K different random streams (genlib's ``seed=k``, psgd_torch's global
generator seeded ``10_000 + k``), same weights, batches and refit steps, and the mean losses are compared
with the standard error of their difference.

    python -m benchmarks.psgd_step [--steps 200] [--update-probability 0.1] [--models mlp cnn tiny]
    python -m benchmarks.psgd_step --probe-seeds 20 --models tiny   # loss: mean over 20 random streams
    python -m benchmarks.psgd_step --dense-fit     # one dense refit only, genlib vs psgd_torch
    python -m benchmarks.psgd_step --curvature whiten --compile   # + genlib's steps compiled (ours+c:*)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import genlib.optim as gopt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "digits" / "mnist_4k.npz"


def load_mnist(path: Path = DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4000 digits as ``(4000, 1, 28, 28)`` floats in [0, 1] and int64 labels."""
    if not path.is_file():
        raise FileNotFoundError(f"MNIST-4k not found at {path} (expected ../shared/data/digits/mnist_4k.npz)")
    d = np.load(path)
    return torch.from_numpy(d["images"]).float().div(255).unsqueeze(1), torch.from_numpy(d["labels"]).long()


def make_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 10))
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 5), nn.Tanh(), nn.MaxPool2d(2),  # 24 → 12
            nn.Conv2d(8, 16, 5), nn.Tanh(), nn.MaxPool2d(2),  # 8 → 4
            nn.Flatten(), nn.Linear(256, 10),
        )
    if name == "tiny":
        return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, 32), nn.Tanh(), nn.Linear(32, 10))
    raise ValueError(f"model must be one of mlp, cnn, tiny; got {name!r}")


class SharedCoins:
    """The refit decision of every step, drawn once: ``coins[step]`` is 1.0 (refit) or 0.0. Used as genlib's
    ``update_probability`` schedule (called with genlib's step count) and to set psgd_torch's probability."""

    def __init__(self, n: int, p: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed + 12345)
        self.coins = (torch.rand(n, generator=g) < p).double().tolist()
        self._table = torch.tensor(self.coins, dtype=torch.float64)

    def __call__(self, step: int | torch.Tensor) -> float | torch.Tensor:
        if isinstance(step, torch.Tensor):  # a compiled genlib step calls it with its step count tensor
            return self._table.index_select(0, step.long().reshape(1)).squeeze(0)
        return self.coins[step]


def optimizers(
    args: argparse.Namespace, model: str, coins: SharedCoins, probe_seed: int = 0
) -> dict[str, Callable[[list[nn.Parameter]], object]]:
    """name → factory. Names ``ours:<family>`` / ``ref:<family>`` for the PSGD pairs. ``probe_seed`` seeds
    genlib's random streams (psgd_torch draws from torch's global generator: the caller seeds it)."""
    lr, mom, plr = args.lr, args.momentum, args.preconditioner_lr
    whiten = args.curvature == "whiten"
    common = dict(lr=lr, momentum=mom, preconditioner_lr=plr, curvature=args.curvature,
                  update_probability=coins, check_finite=False, seed=probe_seed,
                  max_update_rms=math.inf)  # psgd_torch has no trust region: like for like
    ref = dict(lr_params=lr, momentum=mom, lr_preconditioner=plr, preconditioner_update_probability=0.0,
               exact_hessian_vector_product=True, preconditioner_type="whitening" if whiten else "Newton")
    import psgd_torch as pt  # benchmark-only reference, never imported by genlib

    out: dict[str, Callable] = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=args.sgd_lr, momentum=0.9),
        "adam": lambda ps: torch.optim.Adam(ps, lr=args.adam_lr),
        "ours:kron": lambda ps: gopt.Kron(ps, max_size=math.inf, max_skew=10.0, **common),
        "ref:kron": lambda ps: pt.Kron(
            ps, preconditioner_max_size=math.inf, preconditioner_max_skew=10.0, **ref
        ),
        "ours:lra": lambda ps: gopt.LRA(ps, rank=10, **common),
        "ref:lra": lambda ps: pt.LRA(ps, rank_of_approximation=10, **ref),
        "ours:xmat": lambda ps: gopt.XMat(ps, **common),
        "ref:xmat": lambda ps: pt.XMat(ps, **ref),
        "ours:diag": lambda ps: gopt.Diag(ps, **common),
        "ref:diag": lambda ps: pt.LRA(ps, rank_of_approximation=0, **ref),
        # The same diagonal preconditioner with psgd_torch's step rule (one normaliser per group; genlib's
        # Diag normalises each tensor's step on its own), compared with ref:diag too.
        "ours:lra0": lambda ps: gopt.LRA(ps, rank=0, **common),
    }
    if args.compile:  # genlib's step compiled (one graph, refits under torch.cond); backward() outside it
        for fam in ("kron", "lra", "xmat", "diag"):
            out[f"ours+c:{fam}"] = lambda ps, make=out[f"ours:{fam}"]: _compiled(make(ps))
    if model == "tiny" and not whiten:  # dim² memory: only the tiny model (Newton only in psgd_torch)
        out["ours:dense"] = lambda ps: gopt.Dense(ps, **common)
        out["ref:dense"] = lambda ps: pt.Newton(ps, **ref)
    return out


def _compiled(opt):
    # one cache entry per optimizer (and one more once momentum exists) of the same code: above the limit of 8
    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 4096
    opt.compiled_step = torch.compile(opt.step, fullgraph=True)
    return opt


REFERENCE = {"ours:lra0": "ref:diag"}  # genlib optimizers compared with another family's reference


def run_all(
    model_name: str, factories: dict[str, Callable], batches: list, x_all, y_all, args, coins: SharedCoins
) -> dict:
    """Train one model copy per optimizer in lock-step, block of 10 steps by block (round robin), so load
    changes on a shared machine hit every optimizer alike; returns name → {ms, loss}."""
    runs = {}
    for name, factory in factories.items():
        model = make_model(model_name, args.seed)  # same initial weights for all
        runs[name] = (model, factory(list(model.parameters())), [])

    def steps(name: str, start: int, n: int) -> None:
        model, opt, _ = runs[name]
        train_steps(name, model, opt, batches, coins, start, n)

    for name in runs:
        steps(name, 0, args.warmup)
    for b in range(args.steps // 10):
        for name, (_, _, blocks) in runs.items():
            t = time.perf_counter()
            steps(name, args.warmup + 10 * b, 10)
            blocks.append((time.perf_counter() - t) / 10)
    out = {}
    for name, (model, _, blocks) in runs.items():
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x_all), y_all))
        out[name] = dict(ms=1e3 * statistics.median(blocks), loss=loss)
    return out


def train_steps(name: str, model: nn.Module, opt, batches: list, coins: SharedCoins, start: int, n: int):
    """``n`` steps of one optimizer from step ``start`` (psgd_torch told the shared refit decision)."""
    for i in range(start, start + n):
        x, y = batches[i % len(batches)]
        if name in ("sgd", "adam") or name.startswith("ours+c:"):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            getattr(opt, "compiled_step", opt.step)()
            continue
        if name.startswith("ref:"):
            opt.preconditioner_update_probability = coins(i)  # the same refit steps as genlib's
        opt.step(lambda x=x, y=y: F.cross_entropy(model(x), y))


def probe_seed_losses(model_name: str, batches: list, x_all, y_all, args, coins: SharedCoins) -> dict:
    """Family → (genlib losses, psgd_torch losses), one per random stream, after warm-up + steps."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    steps = args.warmup + args.steps
    for k in range(args.probe_seeds):
        facs = optimizers(args, model_name, coins, probe_seed=k)
        for name, factory in facs.items():
            if ":" not in name or (args.only and name not in args.only):
                continue
            model = make_model(model_name, args.seed)
            torch.manual_seed(10_000 + k)  # psgd_torch's probes and starting factors
            train_steps(name, model, factory(list(model.parameters())), batches, coins, 0, steps)
            with torch.no_grad():
                loss = float(F.cross_entropy(model(x_all), y_all))
            side, fam = name.split(":")
            if side == "ours":
                out.setdefault(fam, ([], []))[0].append(loss)
            else:  # a reference run counts for every genlib optimizer compared with it
                for ours in [f"ours:{fam}"] + [o for o, r in REFERENCE.items() if r == name]:
                    out.setdefault(ours.split(":")[1], ([], []))[1].append(loss)
    return out


def dense_fit(d: int = 1930, blocks: int = 12, per_block: int = 4, seed: int = 0) -> dict[str, float]:
    """Milliseconds per dense preconditioner refit from one pair (the optimizers' case) at the tiny model's
    size: genlib's ``DensePreconditioner`` fit vs psgd_torch's ``update_precond_newton_math_`` (Q and Q⁻¹
    kept, as ``Newton`` does by default), interleaved block by block; median of block means."""
    import psgd_torch.psgd as ptp  # benchmark-only reference

    from genlib.optim import DensePreconditioner

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g) / math.sqrt(d)
    hess = a @ a.mT
    pairs = [(v, v @ hess) for v in (torch.randn(1, d, generator=g) for _ in range(8))]
    ours = DensePreconditioner(d, init_scale=1.0)
    q, inv_q = torch.eye(d), torch.eye(d)
    k = [0]

    def nxt():
        k[0] += 1
        return pairs[k[0] % len(pairs)]

    fits = {
        "genlib": lambda: ours.fit(*nxt()),
        "psgd_torch": lambda: (lambda v, h: ptp.update_precond_newton_math_(
            q, inv_q, v.mT, h.mT, 0.1, "2nd", 1.2e-38))(*nxt()),
    }
    times: dict[str, list[float]] = {n: [] for n in fits}
    for _ in range(blocks):
        for name, f in fits.items():
            t = time.perf_counter()
            for _ in range(per_block):
                f()
            times[name].append((time.perf_counter() - t) / per_block)
    return {n: 1e3 * statistics.median(ts) for n, ts in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn", "tiny"], choices=["mlp", "cnn", "tiny"])
    ap.add_argument("--steps", type=int, default=200, help="timed steps (loss is measured after them)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--update-probability", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.02, help="PSGD lr (both libraries)")
    ap.add_argument("--preconditioner-lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--sgd-lr", type=float, default=0.05)
    ap.add_argument("--adam-lr", type=float, default=1e-3)
    ap.add_argument("--only", nargs="+", help="subset of optimizer names (e.g. sgd ours:kron ref:kron)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curvature", choices=["hvp", "whiten"], default="hvp",
                    help="hvp: exact Hessian-vector products (psgd_torch 'Newton'); whiten: gradient "
                    "whitening, plain backward() + step() (psgd_torch 'whitening', which takes gradients "
                    "in its step from the closure)")
    ap.add_argument("--probe-seeds", type=int, default=0, metavar="K",
                    help="compare losses (no timing) as means over K random streams per side")
    ap.add_argument("--compile", action="store_true",
                    help="with --curvature whiten: also time genlib's families with torch.compile'd steps "
                         "(rows ours+c:<family>; backward() outside the step)")
    ap.add_argument("--dense-fit", action="store_true",
                    help="only time one dense refit (d = 1930, one pair): genlib vs psgd_torch, then exit")
    args = ap.parse_args(argv)
    if args.dense_fit:
        torch.set_num_threads(1)
        r = dense_fit(seed=args.seed)
        print(f"dense refit, d = 1930, one pair: genlib {r['genlib']:.1f} ms, "
              f"psgd_torch {r['psgd_torch']:.1f} ms, ratio {r['genlib'] / r['psgd_torch']:.2f}")
        return r
    if args.steps < 10 or args.warmup < 0 or not 0 <= args.update_probability <= 1:
        raise ValueError("need --steps >= 10, --warmup >= 0 and --update-probability in [0, 1]")
    if args.compile and args.curvature != "whiten":
        raise ValueError("--compile needs --curvature whiten (an hvp step differentiates its closure twice)")
    if args.probe_seeds == 1 or args.probe_seeds < 0:
        raise ValueError(f"--probe-seeds must be 0 (timing run) or >= 2, got {args.probe_seeds}")
    torch.set_num_threads(1)  # one thread: comparable, and what this shared CPU allows
    x_all, y_all = load_mnist()
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(x_all), generator=g)
    batches = [(x_all[perm[i : i + args.batch_size]], y_all[perm[i : i + args.batch_size]])
               for i in range(0, len(x_all) - args.batch_size + 1, args.batch_size)]
    print(f"torch {torch.__version__}, 1 thread, {args.steps} timed steps after {args.warmup} warm-up, "
          f"update probability {args.update_probability}, curvature {args.curvature}")
    results: dict = {}
    coins = SharedCoins(args.warmup + args.steps, args.update_probability, args.seed)
    n_refits = int(sum(coins.coins[args.warmup :]))
    print(f"shared refit schedule: {n_refits} refits in the {args.steps} timed steps")
    if args.probe_seeds:
        for m in args.models:
            res = probe_seed_losses(m, batches, x_all, y_all, args, coins)
            results[m] = res
            print(f"\n[{m}] loss after {args.warmup + args.steps} steps, mean over {args.probe_seeds} random "
                  "streams per side (± standard error)")
            print(f"{'family':<8}{'genlib':>16}{'psgd_torch':>16}{'difference':>18}")
            k = args.probe_seeds
            for fam, (ours, ref) in res.items():
                if not ours or not ref:
                    continue
                mo, mr = statistics.fmean(ours), statistics.fmean(ref)
                so, sr = statistics.stdev(ours) / math.sqrt(k), statistics.stdev(ref) / math.sqrt(k)
                se = math.hypot(so, sr)
                print(f"{fam:<8}{mo:>9.4f} ± {so:.4f}{mr:>9.4f} ± {sr:.4f}{mo - mr:>+11.4f} ± {se:.4f}")
        return results
    for m in args.models:
        n_params = sum(p.numel() for p in make_model(m).parameters())
        wanted = lambda k: not args.only or k in args.only or k == "sgd"  # noqa: E731
        facs = {k: f for k, f in optimizers(args, m, coins).items() if wanted(k)}
        res = run_all(m, facs, batches, x_all, y_all, args, coins)
        results[m] = res
        sgd = res["sgd"]["ms"]
        print(f"\n[{m}] {n_params} parameters; SGD {sgd:.2f} ms/step")
        print(f"{'optimizer':<14}{'ms/step':>9}{'/SGD':>7}{'/ref':>7}{'loss':>9}{'-ref':>8}")
        for name, r in res.items():
            refname = "ref:" + REFERENCE.get(name, name).split(":")[1] if name.startswith("ours") else None
            rr = res.get(refname) if refname else None
            ratio = f"{r['ms'] / rr['ms']:>7.2f}" if rr else f"{'':>7}"
            dloss = f"{r['loss'] - rr['loss']:>+8.3f}" if rr else f"{'':>8}"
            print(f"{name:<14}{r['ms']:>9.2f}{r['ms'] / sgd:>7.2f}{ratio}{r['loss']:>9.4f}{dloss}")
    return results


if __name__ == "__main__":
    main()
