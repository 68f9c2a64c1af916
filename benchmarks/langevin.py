"""Plain vs PSGD-preconditioned Langevin: steps and seconds until the chains' moments reach the target's.

Targets (all with chains started from N(0, I), a fixed seed, one thread):

- ``gauss10``: N(m, S) in 10 dims, S's eigenvalues log-spaced in [1, 100] (condition number 100) along random
  axes, |m| ~ 3 sqrt(10); exact moments known.
- ``gauss32``: the same in 32 dims with condition number 1000.
- ``ebm``: a small :class:`~genlib.priors.LatentEBMPrior` (2-D latent, 3 classes, MLP 64-64) trained for a few
  hundred steps on 2-D class-conditional data with elongated class blobs; the target is the class-0
  conditional p(z | y=0). Its reference moments come from a long MALA run (plain, small step).

Error: whitened mean and covariance errors (:func:`genlib.sampling.gaussian_moment_error`, every direction
counts equally); a run "reaches" the target at the first step where both fall below ``--threshold``. For each
sampler (ULA, MALA; plain and preconditioned with a dense PSGD ``P``) the step size is the best of a grid (the
fewest steps; a step size whose ULA bias stays above the threshold never reaches it, one that diverges is
"unstable"; a smaller step only runs for as many steps as the best larger one took). Preconditioned steps
include the adaptive warm-up steps; the preconditioner fits at ``z0`` before the first move (``fit`` HVPs)
are reported as HVP evaluations. Seconds time a fresh run of exactly
the steps needed (no error tracking; best of 3), fits and HVPs included, so they are the comparable cost.

    python -m benchmarks.langevin [--chains 2000] [--threshold 0.15] [--cases gauss10 gauss32 ebm]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402
from torch.distributions import MultivariateNormal  # noqa: E402

from genlib.priors import LatentEBMPrior  # noqa: E402
from genlib.sampling import (  # noqa: E402
    LangevinSampler,
    PreconditionedLangevin,
    langevin,
)

PLAIN_STEPS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 1.5, 2.0)  # absolute units
PRECOND_STEPS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2)  # whitened units


class Target:
    def __init__(self, name: str, log_prob: Callable, mean: torch.Tensor, cov: torch.Tensor, max_steps: int):
        self.name, self.log_prob, self.mean, self.cov, self.max_steps = name, log_prob, mean, cov, max_steps
        self.dim = mean.numel()
        self.chol = torch.linalg.cholesky(cov.double())

    def errors(self, z: torch.Tensor) -> tuple[float, float]:
        w = torch.linalg.solve_triangular(self.chol, (z.double() - self.mean.double()).T, upper=False).T
        c = torch.cov(w.T) - torch.eye(self.dim, dtype=w.dtype)
        return float(w.mean(0).norm()), float(c.norm() / self.dim**0.5)


def rotated_gaussian(name: str, d: int, kappa: float, seed: int, max_steps: int) -> Target:
    g = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    cov = (rot * torch.logspace(0, math.log10(kappa), d, dtype=torch.float64)) @ rot.T
    mean = 3 * torch.randn(d, generator=g, dtype=torch.float64)
    dist = MultivariateNormal(mean.float(), cov.float())
    return Target(name, dist.log_prob, mean, cov, max_steps)


def trained_ebm(seed: int, max_steps: int, chains: int) -> Target:
    """A 2-D latent EBM trained briefly on elongated class blobs; target p(z | y=0), reference: long MALA."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 1.5], [-2.0, -1.0], [2.0, -1.0]])
    # Each class is a thin blob (std 1.2 along its own axis, 0.12 across): an ill-conditioned energy.
    angles = torch.tensor([0.3, 1.4, -0.9])
    cos, sin = angles.cos(), angles.sin()
    axes = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (class, axis, xy)
    scales = torch.tensor([1.2, 0.12])

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (n,), generator=g)
        eps = torch.randn(n, 2, generator=g) * scales
        return centres[y] + torch.einsum("nk,nkd->nd", eps, axes[y]), y

    prior = LatentEBMPrior(2, 3, hidden=(64, 64), n_steps=40, step_size=0.02)
    opt = torch.optim.Adam(prior.parameters(), lr=2e-3)
    sampler = LangevinSampler(n_steps=40, step_size=0.02)
    for _ in range(300):
        z_pos, y = data(256)
        z_neg = prior.sample(256, sampler=sampler, generator=g)
        loss = prior.ebm_loss(z_pos, z_neg) + prior.classification_loss(z_pos, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.requires_grad_(False)

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        return prior.log_prob(z, 0)

    # Reference: a long plain MALA run with a small step from the same N(0, I) start.
    z, diag = langevin(log_prob, torch.randn(4 * chains, 2, generator=g), 6000, 0.003, mala=True, generator=g)
    ref = z.double()
    eig = torch.linalg.eigvalsh(torch.cov(ref.T)).tolist()
    print(f"[ebm] reference: MALA 6000 steps x {4 * chains} chains, acceptance {diag.acceptance_rate:.2f}, "
          f"covariance eigenvalues {eig[0]:.3g}, {eig[1]:.3g}")
    return Target("ebm", log_prob, ref.mean(0), torch.cov(ref.T), max_steps)


class _Reached(Exception):
    """Raised from the callback to stop a run once the threshold is met."""


def steps_to_threshold(run: Callable, target: Target, threshold: float) -> int | str:
    """First step at which both errors are below ``threshold``; ``"never"`` or ``"unstable"`` otherwise."""

    def callback(t: int, z: torch.Tensor) -> None:
        m, c = target.errors(z)
        if m < threshold and c < threshold:
            raise _Reached(t)

    try:
        run(callback)
    except _Reached as hit:
        return int(hit.args[0])
    except RuntimeError:
        return "unstable"
    return "never"


def bench_case(target: Target, chains: int, threshold: float, seed: int, warmup: int, fit: int) -> list[dict]:
    rows = []
    z0 = torch.randn(chains, target.dim, generator=torch.Generator().manual_seed(seed))
    for precond in (False, True):
        for mala in (False, True):
            name = ("precond " if precond else "plain ") + ("MALA" if mala else "ULA")

            def make(n_steps: int, s: float, precond=precond, mala=mala):
                if precond:
                    w = min(warmup, n_steps)
                    return PreconditionedLangevin(
                        "dense", n_steps=n_steps - w, step_size=s, mala=mala, warmup_steps=w, fit_steps=fit
                    )
                return LangevinSampler(n_steps=n_steps, step_size=s, mala=mala)

            # Largest step first; each later (smaller) step only runs as long as the best so far, since it
            # can only win by reaching the threshold sooner.
            best: tuple[int, float] | None = None
            for s in sorted(PRECOND_STEPS if precond else PLAIN_STEPS, reverse=True):
                budget = target.max_steps if best is None else best[0] - 1
                steps = steps_to_threshold(
                    lambda cb, s=s, budget=budget: make(budget, s).run(
                        target.log_prob, z0, torch.Generator().manual_seed(seed + 1), callback=cb
                    ),
                    target,
                    threshold,
                )
                shown = "not sooner" if steps == "never" and best is not None else steps
                print(f"[{target.name}] {name:13} step {s:<5g} -> {shown}", flush=True)
                if isinstance(steps, int):
                    best = (steps, s)
            if best is None:
                rows.append({"case": target.name, "sampler": name, "steps": None})
                continue
            seconds = math.inf
            for _ in range(3):  # best of 3: the machine is shared
                sampler = make(*best)  # fresh: a preconditioned sampler fits from scratch every time
                start = time.perf_counter()
                z, diag = sampler.run(target.log_prob, z0, torch.Generator().manual_seed(seed + 1))
                seconds = min(seconds, time.perf_counter() - start)
            rows.append({
                "case": target.name,
                "sampler": name,
                "steps": best[0],
                "step_size": best[1],
                "hvps": fit + min(warmup, best[0]) if precond else 0,
                "seconds": seconds,
                "accept": diag.acceptance_rate,
                "final_err": target.errors(z),
            })
    return rows


def main(argv: list[str] | None = None) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--chains", type=int, default=2000)
    parser.add_argument("--threshold", type=float, default=0.15)
    parser.add_argument("--warmup", type=int, default=10, help="adaptive warm-up steps (preconditioned)")
    parser.add_argument("--fit", type=int, default=30, help="preconditioner fits at z0 (preconditioned)")
    parser.add_argument("--cases", nargs="+", default=["gauss10", "gauss32", "ebm"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    builders = {
        "gauss10": lambda: rotated_gaussian("gauss10", 10, 100.0, args.seed, 2000),
        "gauss32": lambda: rotated_gaussian("gauss32", 32, 1000.0, args.seed, 8000),
        "ebm": lambda: trained_ebm(args.seed, 3000, args.chains),
    }
    rows: list[dict] = []
    for case in args.cases:
        rows += bench_case(builders[case](), args.chains, args.threshold, args.seed, args.warmup, args.fit)
    print(
        f"\nchains={args.chains}, threshold={args.threshold} (whitened mean and covariance error), "
        f"warm-up={args.warmup} steps, fit={args.fit} HVPs at z0, torch threads=1\n"
    )
    head = (
        f"{'case':8} {'sampler':13} {'step':>6} {'steps':>6} {'HVPs':>5} {'seconds':>8} "
        f"{'accept':>6} {'steps ratio':>11} {'time ratio':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["steps"] is None:
            print(f"{r['case']:8} {r['sampler']:13} {'':>6} {'never':>6}")
            continue
        # ratios: the plain sampler of the same kind (ULA / MALA) over this one; > 1 means this is faster
        kind = r["sampler"].split()[-1]
        ref = next(
            (q for q in rows if q["case"] == r["case"] and q["sampler"] == f"plain {kind}" and q["steps"]),
            None,
        )
        ratio = f"{ref['steps'] / r['steps']:.1f}" if ref else "-"
        speed = f"{ref['seconds'] / r['seconds']:.1f}" if ref else "-"
        acc = "-" if r["accept"] is None else f"{r['accept']:.2f}"
        print(
            f"{r['case']:8} {r['sampler']:13} {r['step_size']:>6g} {r['steps']:>6d} {r['hvps']:>5d} "
            f"{r['seconds']:>8.2f} {acc:>6} {ratio:>11} {speed:>10}"
        )


if __name__ == "__main__":
    main()
