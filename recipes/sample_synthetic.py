"""Sample a synthetic labelled dataset from a trained latent-EBM VAE: draw, entropy-filter, coreset-select.

From a checkpoint written by ``recipes.svhn_semisup`` (or any ``VAE.save`` file whose prior is a
``LatentEBMPrior``): draw ``L`` class-conditional samples per class by short-run Langevin on ``p(z|y)``
(plain, or PSGD-preconditioned with ``--sampler psgd``), decode them, score them with the latent classifier
on the re-encoded image, keep the confident ones (entropy filter), pick a CRAIG / AdaCore / random coreset,
and write

- ``synthetic.pt``: a :mod:`genlib.data.synthetic` file (``x``, ``y``, ``weights``, ``meta``) that
  ``genlib.data.SyntheticDataset`` loads for any downstream classifier,
- ``samples_by_entropy.png``: per class, draws ordered from most to least confident (entropy under each),
- ``selected.png``: the selected samples, ``summary.json``: counts per stage, settings, timings.

    python -m recipes.sample_synthetic --checkpoint runs/svhn_semisup/vae.pt --samples-per-class 1000
    python -m recipes.sample_synthetic --quick    # trains a small MNIST-4k model first (a few CPU minutes)
    genlib sample --help
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from genlib.cli_args import device as device_arg
from genlib.cli_args import float_in, int_at_least, positive_float, run_recipe
from genlib.data.synthetic import save_synthetic_dataset
from genlib.metrics.images import ReferenceClassifier, label_agreement
from genlib.models import VAE
from genlib.priors import LatentEBMPrior
from genlib.sampling import LangevinSampler, PreconditionedLangevin
from genlib.select.entropy import confidence_scores
from genlib.train.augment import AugmentConfig, generate_labelled, select_synthetic
from genlib.train.quality import save_generation_grids
from genlib.utils import default_device, seed_everything, write_json
from genlib.viz import save_image_grid


@dataclass
class Config:
    checkpoint: str | None = None  # a VAE.save file with a LatentEBMPrior
    samples_per_class: int = 1000  # L
    sampler: str = "langevin"  # or "psgd" (PSGD-preconditioned Langevin)
    # None: the checkpoint's generation settings (its prior's sampler), the same draws generate_labelled makes
    langevin_steps: int | None = None
    temperature: float | None = None
    guidance: float | None = None  # class-guidance scale w: draws target p(z) p(y|z)^w
    reference_classifier: str | None = None  # a ReferenceClassifier file (default: beside the checkpoint)
    entropy_keep: float = 0.5  # keep the most confident half of the draws
    coreset: str = "craig"  # "craig", "adacore", "random" or "none"
    coreset_fraction: float = 0.1
    seed: int = 0
    out: str = "runs/sample_synthetic"
    device: str | None = None


def make_sampler(cfg: Config, prior: LatentEBMPrior) -> LangevinSampler | PreconditionedLangevin:
    """The prior's own sampler; ``--langevin-steps``, ``--temperature`` and ``--sampler`` override it."""
    own = prior.sampler
    steps = own.n_steps if cfg.langevin_steps is None else cfg.langevin_steps
    temperature = own.temperature if cfg.temperature is None else cfg.temperature
    if cfg.sampler == "langevin":
        return LangevinSampler(n_steps=steps, step_size=own.step_size, temperature=temperature)
    if cfg.sampler == "psgd":
        # whitened units: a step of ~0.3 suits any conditioning (benchmarks/langevin.py)
        return PreconditionedLangevin("dense", n_steps=steps, step_size=0.3, temperature=temperature)
    raise ValueError(f"sampler must be 'langevin' or 'psgd', got {cfg.sampler!r}")


def load_model(path: str, device: torch.device) -> VAE:
    vae = VAE.load(path, map_location=device)
    if not isinstance(vae.prior, LatentEBMPrior):
        raise ValueError(
            f"--checkpoint {path} holds a VAE with a {type(vae.prior).__name__} prior; class-conditional "
            "sampling needs a LatentEBMPrior (train one with recipes.svhn_semisup)"
        )
    return vae.to(device).eval()


def quick_checkpoint(out: Path, seed: int) -> str:
    """Train the semi-supervised recipe's quick config briefly and return its saved model."""
    from . import svhn_semisup  # recipes.svhn_semisup from the repo, genlib.recipes.svhn_semisup installed

    run = out / "quick_model"
    svhn_semisup.main(["--quick", "--iters", "300", "--seed", str(seed), "--out", str(run), "--no-progress"])
    return str(run / "vae.pt")


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    p.add_argument("--checkpoint", default=None, help="VAE.save file with a LatentEBMPrior")
    # Numeric flags are checked here, so a bad value is an error naming the flag, not a sampler field.
    p.add_argument("--samples-per-class", type=int_at_least(1), default=Config.samples_per_class,
                   help="L, draws per class (>= 1)")
    p.add_argument("--sampler", choices=("langevin", "psgd"), default=Config.sampler)
    p.add_argument("--langevin-steps", type=int_at_least(0), default=None,
                   help="Langevin steps per draw (>= 0; default: the checkpoint's generation setting)")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help="chain temperature T > 0, targets p(z|y)^(1/T) (default: the checkpoint's setting)")
    p.add_argument("--guidance", type=positive_float, default=None,
                   help="class-guidance scale w > 0: draws target p(z) p(y|z)^w, 1 = p(z|y) (default: the "
                        "checkpoint's setting)")
    p.add_argument("--reference-classifier", default=None,
                   help="a genlib ReferenceClassifier file that judges the draws (default: "
                        "reference_classifier.pt beside --checkpoint, when present)")
    p.add_argument("--entropy-keep", type=float_in(0, 1), default=Config.entropy_keep,
                   help="fraction of the draws the entropy filter keeps, in (0, 1]")
    p.add_argument("--coreset", choices=("craig", "adacore", "random", "none"), default=Config.coreset)
    p.add_argument("--coreset-fraction", type=float_in(0, 1), default=Config.coreset_fraction,
                   help="share of the filtered draws the coreset keeps, in (0, 1]")
    p.add_argument("--seed", type=int_at_least(0), default=Config.seed)
    p.add_argument("--out", default=Config.out)
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--quick", action="store_true",
                   help="no --checkpoint needed: train a small MNIST-4k model first; L = 100")
    args = p.parse_args(argv)
    if args.checkpoint is None and not args.quick:
        p.error("--checkpoint is required (or --quick to train a small model first)")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint {args.checkpoint} is not a file")
    if args.samples_per_class < 1:
        p.error(f"--samples-per-class must be a positive integer, got {args.samples_per_class}")
    cfg = Config(checkpoint=args.checkpoint, samples_per_class=args.samples_per_class, sampler=args.sampler,
                 langevin_steps=args.langevin_steps, temperature=args.temperature, guidance=args.guidance,
                 reference_classifier=args.reference_classifier, entropy_keep=args.entropy_keep,
                 coreset=args.coreset,
                 coreset_fraction=args.coreset_fraction, seed=args.seed, out=args.out, device=args.device)
    if args.quick and args.samples_per_class == Config.samples_per_class:
        cfg.samples_per_class = 100
    augment = AugmentConfig(cfg.samples_per_class, entropy_keep=cfg.entropy_keep,
                            coreset=None if cfg.coreset == "none" else cfg.coreset,
                            coreset_fraction=cfg.coreset_fraction)  # validates the fractions
    device = torch.device(cfg.device) if cfg.device else default_device()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.checkpoint is None:
        cfg.checkpoint = quick_checkpoint(out, cfg.seed)

    vae = load_model(cfg.checkpoint, device)
    k = vae.prior.n_classes
    if cfg.guidance is not None:
        vae.prior.guidance = cfg.guidance
    sampler = make_sampler(cfg, vae.prior)
    print(f"model {cfg.checkpoint}: {k} classes, latent {vae.prior.latent_dim}; device {device}; drawing "
          f"{cfg.samples_per_class} per class with {cfg.sampler} Langevin ({sampler.n_steps} steps, "
          f"T = {sampler.temperature}, guidance w = {vae.prior.guidance:g})")
    t0 = time.perf_counter()
    generated = generate_labelled(vae, cfg.samples_per_class, sampler=sampler,
                                  generator=torch.Generator(device=device).manual_seed(cfg.seed))
    t_draw = time.perf_counter() - t0
    selection = select_synthetic(generated, augment, seed=cfg.seed)
    t_select = time.perf_counter() - t0 - t_draw

    entropy = confidence_scores(generated.logits, "h2")
    agree = float((generated.logits.argmax(1) == generated.y).float().mean())
    meta = {
        "source_checkpoint": str(cfg.checkpoint),
        "config": asdict(cfg),
        "augment": asdict(augment),
        "counts": selection.counts,
        "entropy": selection.entropy,
        "generated_index": selection.indices,
    }
    path = save_synthetic_dataset(out / "synthetic.pt", selection.x, selection.y, selection.weights, meta)
    save_generation_grids(generated, out)  # samples.png (unfiltered), samples_by_entropy.png
    # by class, the most confident first
    shown = torch.argsort(selection.y * 1e3 + selection.entropy, stable=True)[:100]
    save_image_grid(selection.x[shown], out / "selected.png", nrow=10, labels=selection.y[shown].tolist(),
                    title=f"selected ({augment.describe()}), label = class drawn for")
    summary = {
        "counts": selection.counts,
        "latent_classifier_agreement": agree,
        "mean_entropy_generated": float(entropy.mean()),
        "mean_entropy_selected": float(selection.entropy.mean()) if selection.y.numel() else None,
        "weights_sum": float(selection.weights.sum()),
        "seconds_draw": t_draw,
        "seconds_select": t_select,
        "config": asdict(cfg),
        "augment": asdict(augment),
    }
    judge_path = (Path(cfg.reference_classifier) if cfg.reference_classifier
                  else Path(cfg.checkpoint).with_name("reference_classifier.pt"))
    if judge_path.is_file():  # the independent judge: agreement of the draws, before and after the filter
        judge = ReferenceClassifier.load(judge_path)
        x = generated.x.clamp(0, 1)
        unfiltered = label_agreement(judge, x, generated.y)
        kept = select_synthetic(generated, replace(augment, coreset=None)).indices
        filtered = label_agreement(judge, x[kept], generated.y[kept])
        summary["reference_classifier"] = str(judge_path)
        summary["reference_agreement"] = {"unfiltered": unfiltered, "entropy_filtered": filtered}
        print(f"reference classifier {judge_path} agrees with the drawn class on {unfiltered['overall']:.1%} "
              f"of the draws ({filtered['overall']:.1%} after the entropy filter); worst class "
              f"{min(v for v in unfiltered['per_class'] if v is not None):.1%}")
    elif cfg.reference_classifier:
        raise FileNotFoundError(f"--reference-classifier {judge_path} is not a file")
    write_json(out / "summary.json", summary)
    c = selection.counts
    print(f"generated {c['generated']} -> entropy filter {c['filtered']} -> {augment.describe()} "
          f"{c['selected']} (weights sum {summary['weights_sum']:.0f}); latent classifier agrees with the "
          f"drawn class on {agree:.1%}; mean entropy {summary['mean_entropy_generated']:.3f} -> "
          f"{summary['mean_entropy_selected']:.3f} nats")
    print(f"draw {t_draw:.1f} s, select {t_select:.1f} s -> {path}, samples.png, samples_by_entropy.png, "
          "selected.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_recipe(main))
