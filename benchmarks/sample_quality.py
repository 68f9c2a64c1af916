"""Class-conditional sample quality of the latent-EBM VAE, judged by a classifier the generator never saw.

The setting is ``svhn_semisup --quick`` (MNIST-4k: 100 labels, 1900 more training images whose labels the
generator never sees, 1000 held out). Per seed a :class:`~genlib.metrics.images.ReferenceClassifier` (the
judge) is trained on the labelled and unlabelled images *with their true labels*; it never trains the
generator. Draws (``--per-class`` per class) are scored by label agreement (overall, worst class) and by the
Fréchet distance in the judge's features to the 1000 held-out images, beside the VAE's reconstructions of
1000 real training images and those real images themselves (real vs real); and by the latent Fréchet
distance of the draws to the aggregate posterior of the held-out images, which shows draws that left the
encoder's latent region (such draws can score a *lower* image FD than the reconstructions).

Four tables, every variant on the same seeds, splits and chain seeds, with wall-clock:

1. **training**: the recipe's model under other training settings (length, negative-chain start of
   Algorithm 2 step 2, EBM capacity, optimizer), each drawn with the generation sampler under test;
2. **sampler**: one trained model, Langevin steps x step size x temperature x class guidance ``w`` (target
   ``p(z) p(y|z)^w``), PSGD-preconditioned Langevin, chains started at ``q(z|x)`` of real images; draw
   seconds beside each row (compare at equal wall-clock);
3. **filter**: the entropy filter variants (none, keep half by the re-encoded image / by ``F(z)``, the
   paper's threshold ``H(z) < 1e-6``, agreement with the drawn class);
4. **classifier**: the latent classifier ``F(mu(x))`` vs eq. 5.8's ``E_q softmax F(z)``, and the pseudo-labels
   each entropy threshold keeps (count, share right).

    python -m benchmarks.sample_quality                    # 2 seeds, every table (CPU: ~40 min)
    python -m benchmarks.sample_quality --seeds 0 --tables sampler filter

Trained models are cached in ``--out`` (rerunning skips them); results go to ``--out/results.json`` and a
markdown report ``--out/report.md`` for ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from genlib.metrics.images import ReferenceClassifier, train_reference_classifier
from genlib.models import VAE
from genlib.sampling import LangevinSampler, PreconditionedLangevin
from genlib.train import SemiSupervisedTrainer, evaluate_generation, latent_accuracy
from genlib.train.augment import latent_logits
from genlib.utils import atomic_write_text, seed_everything
from recipes.svhn_semisup import OPTIMIZERS, Config, build, load_data

# name -> (SemiSupervisedConfig overrides, recipe Config overrides, optimizer)
NOISE = {"negative_init": "noise"}
PERSISTENT = {"negative_init": "persistent"}
TRAINING = {
    "750 it (before)": ({"n_iters": 750, **NOISE}, {}, "adam"),
    "1500 it": ({"n_iters": 1500, **NOISE}, {}, "adam"),
    "2000 it": (NOISE, {}, "adam"),
    "3000 it": ({"n_iters": 3000, **NOISE}, {}, "adam"),
    "2000 it, chains from q(z|x) (paper)": ({"negative_init": "posterior"}, {}, "adam"),
    "2000 it, persistent chains (default)": ({"negative_init": "persistent"}, {}, "adam"),
    "3000 it, persistent chains": ({"n_iters": 3000, "negative_init": "persistent"}, {}, "adam"),
    "2000 it, persistent, no score penalty": ({**PERSISTENT, "score_penalty": 0.0}, {}, "adam"),
    "2000 it, persistent, score penalty 0.3": ({**PERSISTENT, "score_penalty": 0.3}, {}, "adam"),
    "2000 it, EBM 256x256": (NOISE, {"ebm_hidden": (256, 256)}, "adam"),
    "2000 it, psgd-kron": (NOISE, {}, "psgd-kron"),
}
# the sampler / filter / classifier tables use the recipe's default model
DEFAULT_MODEL = "2000 it, persistent chains (default)"


def samplers(cfg: Config) -> dict[str, tuple[object, float]]:
    """Generation samplers compared in the sampler table, with the guidance ``w`` of their target
    ``p(z) p(y|z)^w`` (the recipe's default first)."""
    t = cfg.train
    w = cfg.generation_guidance
    out: dict[str, tuple[object, float]] = {
        f"default: ULA {cfg.generation_steps} x {cfg.generation_step_size}, T={cfg.generation_temperature}, "
        f"w={w:g}": (LangevinSampler(cfg.generation_steps, cfg.generation_step_size,
                                     cfg.generation_temperature), w),
        f"ULA {t.langevin_steps} x {t.langevin_step_size}, T=1, w=1 (the training chains; before)":
            (LangevinSampler(t.langevin_steps, t.langevin_step_size, 1.0), 1.0),
        "ULA 200 x 0.08, T=1, w=1 (the paper's p(z|y))": (LangevinSampler(200, 0.08, 1.0), 1.0),
        "ULA 200 x 0.08, T=0.5, w=1": (LangevinSampler(200, 0.08, 0.5), 1.0),
        "ULA 200 x 0.08, T=0.25, w=1 (previous default)": (LangevinSampler(200, 0.08, 0.25), 1.0),
    }
    for g in (30.0, 100.0, 300.0, 1000.0, 3000.0):
        out[f"ULA 200 x 0.02, T=1, w={g:g}"] = (LangevinSampler(200, 0.02, 1.0), g)
    for n in (60, 100):
        out[f"ULA {n} x 0.02, T=1, w=300"] = (LangevinSampler(n, 0.02, 1.0), 300.0)
    for step in (0.04, 0.08):
        out[f"ULA 200 x {step}, T=1, w=300"] = (LangevinSampler(200, step, 1.0), 300.0)
    for n in (20, 60, 100, 200):
        out[f"PSGD dense {n} steps (+20 fit), T=1, w=300"] = (PreconditionedLangevin(
            "dense", n_steps=n, step_size=0.3, temperature=1.0, warmup_steps=10, fit_steps=10), 300.0)
    return out


def split_unlabeled(data, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the unlabelled images the judge trains on (1900) and of the second real set (the rest,
    1000); the split's unlabelled part is ordered by class, so both are drawn at random."""
    perm = torch.randperm(data.x_unlabeled.shape[0], generator=torch.Generator().manual_seed(seed))
    return perm[:1900], perm[1900:2900]


def judge_for(seed: int, data, out: Path, epochs: int) -> tuple[ReferenceClassifier, float]:
    path = out / f"judge_s{seed}.pt"
    judge_idx, _ = split_unlabeled(data, seed)
    x = torch.cat([data.x_labeled, data.x_unlabeled[judge_idx]])
    y = torch.cat([data.y_labeled, data.y_unlabeled[judge_idx]])
    judge = (ReferenceClassifier.load(path) if path.is_file()
             else train_reference_classifier(x, y, 10, epochs=epochs, seed=seed, device="cpu"))
    judge.save(path)
    acc = float((judge.predict(data.x_test) == data.y_test).float().mean())
    return judge, acc


def train_model(name: str, seed: int, data, out: Path) -> tuple[VAE, float]:
    stem = "".join(c if c.isalnum() else "_" for c in name)
    path = out / f"model_{stem}_s{seed}.pt"
    times = out / "train_seconds.json"
    seconds = json.loads(times.read_text()) if times.is_file() else {}
    if path.is_file():
        return VAE.load(path), seconds.get(path.name, float("nan"))
    over, model_over, opt = TRAINING[name]
    cfg = replace(Config.quick(), **model_over)
    cfg.train = replace(cfg.train, seed=seed, progress=False, eval_every=0, **over)
    seed_everything(seed)
    vae, _ = build(cfg, tuple(data.x_labeled.shape[1:]))
    t0 = time.perf_counter()
    trainer = SemiSupervisedTrainer(vae, cfg.train, optimizer=OPTIMIZERS[opt], device="cpu")
    trainer.fit(data.x_unlabeled, data.x_labeled, data.y_labeled)
    seconds[path.name] = time.perf_counter() - t0
    vae.save(path)
    atomic_write_text(times, json.dumps(seconds, indent=1))
    return vae, seconds[path.name]


def score(report) -> dict:
    u = report.unfiltered
    per = [v for v in u.per_class_agreement if v is not None]
    row = {"agreement": u.agreement, "worst_class": min(per), "fd": u.fd_samples,
           "fd_recon": u.fd_reconstructions, "fd_real": u.fd_real_real, "seconds_draw": report.seconds_draw,
           "self_agreement": report.self_agreement, "latent_fd": report.latent_fd,
           "latent_fd_real": report.latent_fd_real}
    if report.filtered is not None:
        row.update(filtered_agreement=report.filtered.agreement, kept=report.kept,
                   filtered_fd=report.filtered.fd_samples)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--tables", nargs="+", default=["training", "sampler", "filter", "classifier"],
                   choices=("training", "sampler", "filter", "classifier"))
    p.add_argument("--training", nargs="+", default=list(TRAINING), choices=list(TRAINING), metavar="NAME")
    p.add_argument("--samplers", nargs="+", default=None, metavar="NAME",
                   help="only these rows of the sampler table (default: all)")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--judge-epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable timings)")
    p.add_argument("--out", default="runs/bench_sample_quality")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="only write the report of these result folders together (e.g. one per seed)")
    args = p.parse_args(argv)
    if args.merge:
        merged: dict = {}
        for folder in args.merge:
            _merge(merged, json.loads((Path(folder) / "results.json").read_text()))
        report = markdown(merged, sorted(int(k) for k in merged["judge_accuracy"]))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out) / "report.md", report)
        atomic_write_text(Path(args.out) / "results.json", json.dumps(merged, indent=1))
        print(report)
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results: dict = json.loads(res_path.read_text()) if res_path.is_file() else {}
    cfg = Config.quick()
    default_filter = cfg.augment

    def save() -> None:
        atomic_write_text(res_path, json.dumps(results, indent=1))

    for seed in args.seeds:
        data = load_data(cfg, None, seed)
        judge, judge_acc = judge_for(seed, data, out, args.judge_epochs)
        results.setdefault("judge_accuracy", {})[str(seed)] = judge_acc
        print(f"seed {seed}: judge accuracy on held-out digits {judge_acc:.4f}", flush=True)
        real_other = data.x_unlabeled[split_unlabeled(data, seed)[1]]
        gen_sampler, gen_guidance = next(iter(samplers(cfg).values()))
        draw = functools.partial(_draw, judge=judge, x_real=data.x_test, x_real_other=real_other,
                                 seed=seed, per_class=args.per_class, filter_config=default_filter)

        if "training" in args.tables:
            for name in args.training:
                vae, secs = train_model(name, seed, data, out)
                rows = {}
                train_chains = LangevinSampler(cfg.train.langevin_steps, cfg.train.langevin_step_size, 1.0)
                for label, sampler, w in (("default sampler", gen_sampler, gen_guidance),
                                          ("training chains, T=1", train_chains, 1.0)):
                    report, _, _ = draw(vae, sampler, guidance=w)
                    rows[label] = score(report)
                rows["latent_accuracy"] = latent_accuracy(vae, data.x_test, data.y_test)
                rows["train_seconds"] = secs
                results.setdefault("training", {}).setdefault(name, {})[str(seed)] = rows
                d = rows["default sampler"]
                print(f"  {name:38s} latent {rows['latent_accuracy']:.3f} agree {d['agreement']:.3f} "
                      f"worst {d['worst_class']:.2f} fd {d['fd']:.1f} (recon {d['fd_recon']:.1f}) "
                      f"filtered {d['filtered_agreement']:.3f} train {secs:.0f}s", flush=True)
                save()
        vae, _ = train_model(DEFAULT_MODEL, seed, data, out)
        if "sampler" in args.tables:
            for name, (sampler, w) in samplers(cfg).items():
                if args.samplers is not None and name not in args.samplers:
                    continue
                report, _, _ = draw(vae, sampler, guidance=w)
                results.setdefault("sampler", {}).setdefault(name, {})[str(seed)] = score(report)
                r = score(report)
                print(f"  {name:48s} agree {r['agreement']:.3f} worst {r['worst_class']:.2f} "
                      f"fd {r['fd']:.1f} latent fd {r['latent_fd']:.2f} draw {r['seconds_draw']:.2f}s",
                      flush=True)
            if args.samplers is None:  # chains started at q(z|x) of random real images instead of N(0, I)
                g = torch.Generator().manual_seed(2000 + seed)
                idx = torch.randint(data.x_unlabeled.shape[0], (10 * args.per_class,), generator=g)
                with torch.no_grad():
                    mu, logvar = vae.encode(data.x_unlabeled[idx])
                z0 = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g)
                name = "default, chains from q(z|x) of real images"
                report, _, _ = draw(vae, _FromStart(gen_sampler, z0), guidance=gen_guidance)
                results["sampler"].setdefault(name, {})[str(seed)] = score(report)
            save()
        if "filter" in args.tables:
            base = replace(default_filter, coreset=None)
            variants = {
                "none": None,
                "keep 0.5 by F(mu(x~)) (before: + agreement)": replace(base, entropy_on="decoded",
                                                                        require_agreement=True),
                "keep 0.5 by F(mu(x~))": replace(base, entropy_on="decoded"),
                "keep 0.5 by F(z)": replace(base, entropy_on="sample"),
                "H(F(z)) < 1e-6 (paper)": replace(base, entropy_on="sample", entropy_keep=None,
                                                  entropy_threshold=1e-6),
                "H(F(mu(x~))) < 0.01": replace(base, entropy_on="decoded", entropy_keep=None,
                                               entropy_threshold=0.01),
            }
            for name, fc in variants.items():
                report, _, _ = draw(vae, gen_sampler, guidance=gen_guidance, filter_config=fc)
                r = score(report)
                r["default"] = fc is not None and fc == replace(default_filter, coreset=None)
                results.setdefault("filter", {}).setdefault(name, {})[str(seed)] = r
                print(f"  filter {name:44s} kept {r.get('kept', 10 * args.per_class)} agree "
                      f"{r.get('filtered_agreement', r['agreement']):.3f}", flush=True)
            save()
        if "classifier" in args.tables:
            rows = {"F(mu(x))": latent_accuracy(vae, data.x_test, data.y_test)}
            for s in (1, 10, 50):
                rows[f"E_q softmax F(z), {s} draws (eq. 5.8)"] = latent_accuracy(
                    vae, data.x_test, data.y_test, n_samples=s)
            logits = latent_logits(vae, data.x_unlabeled)
            h = torch.distributions.Categorical(logits=logits).entropy()
            right = logits.argmax(1) == data.y_unlabeled
            for t in (1e-6, 1e-3, 1e-2, 0.1):
                keep = h <= t
                rows[f"pseudo-labels H <= {t:g}: kept"] = int(keep.sum())
                rows[f"pseudo-labels H <= {t:g}: right"] = (float(right[keep].float().mean()) if keep.any()
                                                            else None)
            results.setdefault("classifier", {})[str(seed)] = rows
            print("  " + json.dumps(rows), flush=True)
            save()

    report = markdown(results, args.seeds)
    atomic_write_text(out / "report.md", report)
    print(report)
    return 0


def _merge(into: dict, other: dict) -> None:
    """Nested-dict union (results of disjoint seeds)."""
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _draw(vae, sampler, *, guidance, judge, x_real, x_real_other, seed, per_class, filter_config):
    """Draws of ``vae`` with ``sampler`` at class guidance ``guidance`` (chain seed fixed per seed), judged;
    ``(report, generated, selection)``."""
    g = torch.Generator().manual_seed(1000 + seed)
    saved, vae.prior.guidance = vae.prior.guidance, guidance
    try:
        return evaluate_generation(vae, judge, x_real, samples_per_class=per_class, sampler=sampler,
                                   generator=g, x_real_other=x_real_other, x_to_reconstruct=x_real_other,
                                   filter_config=filter_config)
    finally:
        vae.prior.guidance = saved


class _FromStart:
    """A sampler that starts its chains at fixed states instead of the ones it is given."""

    def __init__(self, sampler, z0: torch.Tensor):
        self.sampler, self.z0, self.used = sampler, z0, 0

    def run(self, log_prob_fn, z0, generator=None):
        start = self.z0[self.used : self.used + z0.shape[0]].to(z0)
        self.used += z0.shape[0]
        return self.sampler.run(log_prob_fn, start, generator=generator)


def _mean(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3g} ± {sd:.2g}" if sd else f"{statistics.mean(xs):.3g}"


def _pct(values: list[float | None]) -> str:
    xs = [100 * v for v in values if v is not None]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def markdown(results: dict, seeds: list[int]) -> str:
    s = [str(x) for x in seeds]
    lines = [f"Seeds {seeds}; judge accuracy on held-out digits: "
             + ", ".join(f"{100 * results['judge_accuracy'][k]:.1f} %" for k in s if k in
                         results.get("judge_accuracy", {}))]
    if "training" in results:
        lines += ["", "| training | latent acc. % | agreement % | worst class % | FD draws | FD recon. | "
                  "FD real | latent FD | filtered agreement % | agreement %, training chains T=1 | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, by_seed in results["training"].items():
            rows = [by_seed[k] for k in s if k in by_seed]
            if not rows:
                continue
            d = [r["default sampler"] for r in rows]
            t1 = [r["training chains, T=1"] for r in rows]
            lines.append(
                f"| {name} | {_pct([r['latent_accuracy'] for r in rows])} | "
                f"{_pct([x['agreement'] for x in d])} | {_pct([x['worst_class'] for x in d])} | "
                f"{_mean([x['fd'] for x in d])} | "
                f"{_mean([x['fd_recon'] for x in d])} | {_mean([x['fd_real'] for x in d])} | "
                f"{_mean([x.get('latent_fd') for x in d])} | "
                f"{_pct([x.get('filtered_agreement') for x in d])} | "
                f"{_pct([x['agreement'] for x in t1])} | "
                f"{_mean([r['train_seconds'] for r in rows])} |")
    if "sampler" in results:
        lines += ["", "| sampler (default model) | agreement % | worst class % | FD draws | FD recon. | "
                  "latent FD | latent FD real | self-agreement % | draw s (1000 chains) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, by_seed in results["sampler"].items():
            rows = [by_seed[k] for k in s if k in by_seed]
            if rows:
                lines.append(f"| {name} | {_pct([r['agreement'] for r in rows])} | "
                             f"{_pct([r['worst_class'] for r in rows])} | {_mean([r['fd'] for r in rows])} | "
                             f"{_mean([r['fd_recon'] for r in rows])} | "
                             f"{_mean([r.get('latent_fd') for r in rows])} | "
                             f"{_mean([r.get('latent_fd_real') for r in rows])} | "
                             f"{_pct([r['self_agreement'] for r in rows])} | "
                             f"{_mean([r['seconds_draw'] for r in rows])} |")
    if "filter" in results:
        lines += ["", "| entropy filter (default model, default sampler) | kept of 1000 | agreement % | FD |",
                  "|---|---|---|---|"]
        for name, by_seed in results["filter"].items():
            rows = [by_seed[k] for k in s if k in by_seed]
            if rows:
                lines.append(f"| {name} | {_mean([r.get('kept', 1000) for r in rows])} | "
                             f"{_pct([r.get('filtered_agreement', r['agreement']) for r in rows])} | "
                             f"{_mean([r.get('filtered_fd', r['fd']) for r in rows])} |")
    if "classifier" in results:
        keys = list(next(iter(results["classifier"].values())))
        lines += ["", "| latent classifier / pseudo-labels (default model) | " + " | ".join(
            f"seed {k}" for k in s if k in results["classifier"]) + " |",
            "|---|" + "---|" * len([k for k in s if k in results["classifier"]])]
        for key in keys:
            vals = [results["classifier"][k][key] for k in s if k in results["classifier"]]
            cells = ["-" if v is None else f"{v}" if isinstance(v, int) else f"{100 * v:.1f} %" for v in vals]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
