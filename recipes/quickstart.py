"""Quickstart: the whole generative-augmentation pipeline, on data that needs no download.

1. Semi-supervised VAE with a latent EBM prior (symbol-vector coupling) from a few labels + unlabelled data.
2. Class-conditional sampling: short-run Langevin on p(z|y), decoded.
3. Entropy filter on the latent classifier p(y|z), then a CRAIG coreset (10 % of what passed).
4. A downstream classifier trained on the real labels alone, on real + every draw ("naive"), and on real +
   the filtered coreset, each tested on held-out real images.

Default data: scikit-learn's bundled 8x8 digits (1797 images; 50 labels, 400 held out). ``--data-dir`` points
it at a folder with ``mnist_4k.npz`` (or ``digits/mnist_4k.npz``, e.g. ``../shared/data``) or SVHN's
``train_32x32.mat`` / ``test_32x32.mat``. Writes to ``--out``: ``results.json``, ``synthetic.pt`` (the
selected dataset, loadable with ``genlib.data.SyntheticDataset``), ``samples.png``,
``samples_by_entropy.png``, ``selected.png``, ``loss_curves.png`` and ``checkpoints/`` (re-running resumes;
a rerun in the same ``--out`` with other settings, e.g. another ``--seed``, is refused, naming them).

    python -m recipes.quickstart            # about 2 minutes on a 2-core CPU
    python -m recipes.quickstart --quick    # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from genlib.cli_args import (
    DATA_DIR_HELP,
    add_engine_arguments,
    engine_options,
    find_data_folder,
    int_at_least,
    run_recipe,
)
from genlib.cli_args import device as device_arg
from genlib.data import load_digits_sklearn, load_mnist_npz
from genlib.data.images import SemiSupervisedData, load_svhn_semi_supervised, semi_supervised_split
from genlib.data.synthetic import WeightedTensorDataset, combine_real_and_synthetic, save_synthetic_dataset
from genlib.likelihoods import Bernoulli, Gaussian
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.train import (
    AugmentConfig,
    MLPClassifier,
    SemiSupervisedConfig,
    SemiSupervisedTrainer,
    evaluate_accuracy,
    generate_labelled,
    judge_generation,
    select_synthetic,
    train_classifier,
)
from genlib.utils import default_device, seed_everything, write_json
from genlib.viz import save_entropy_grid, save_image_grid, save_loss_curves


@dataclass
class Config:
    data_dir: str | None = None  # None: scikit-learn's digits
    n_labeled: int = 50
    n_test: int = 400
    latent_dim: int = 16
    hidden: tuple[int, ...] = (256, 256)
    ebm_hidden: tuple[int, ...] = (128, 128)
    train: SemiSupervisedConfig = field(
        default_factory=lambda: SemiSupervisedConfig(
            n_iters=1500, batch_size=100, lr=1e-3, ebm_lr=1e-3, score_penalty=0.1, langevin_steps=20,
            class_weight=5.0, eval_every=250, checkpoint_every=500,
        )
    )
    # guided draws p(z) p(y|z)^w, small steps: svhn_semisup's generation settings
    generation_steps: int = 200
    generation_step_size: float = 0.02
    generation_temperature: float = 1.0
    generation_guidance: float = 300.0
    judge_epochs: int = 8  # the reference classifier that scores the draws
    samples_per_class: int = 200  # L
    entropy_keep: float = 0.5
    coreset_fraction: float = 0.1
    synthetic_share: float = 0.25  # the synthetic part's total loss weight, relative to the real labels
    classifier_epochs: int = 150
    seed: int = 0
    out: str = "runs/quickstart"
    device: str = field(default_factory=lambda: str(default_device()))

    def quick(self) -> Config:
        self.train.n_iters, self.train.eval_every = 500, 250
        self.samples_per_class, self.classifier_epochs = 100, 100
        return self


def load_data(cfg: Config) -> tuple[torch.Tensor, ...]:
    """``(x_labeled, y_labeled, x_unlabeled, x_test, y_test)``, images in [0, 1]."""
    d = load_split(cfg)
    return d.x_labeled, d.y_labeled, d.x_unlabeled, d.x_test, d.y_test


def load_split(cfg: Config) -> SemiSupervisedData:
    """The semi-supervised split, with the unlabelled part's true labels (only the judge sees them)."""
    if cfg.data_dir is not None:
        root = Path(cfg.data_dir)
        if (root / "train_32x32.mat").is_file():
            d = load_svhn_semi_supervised(root, n_labeled=cfg.n_labeled, seed=cfg.seed)
            return replace(d, x_test=d.x_test[: cfg.n_test], y_test=d.y_test[: cfg.n_test])
        candidates = (root / "mnist_4k.npz", root / "digits" / "mnist_4k.npz")
        npz = next((p for p in candidates if p.is_file()), None)
        if npz is None:
            raise FileNotFoundError(f"--data-dir {root} holds neither mnist_4k.npz (or digits/mnist_4k.npz) "
                                    "nor SVHN's train_32x32.mat")
        x, y = load_mnist_npz(npz)
    else:
        x, y = load_digits_sklearn()
    split = semi_supervised_split(y, n_labeled=cfg.n_labeled, n_test=cfg.n_test, seed=cfg.seed,
                                  num_classes=10)
    return SemiSupervisedData(x[split.labeled], y[split.labeled], x[split.unlabeled], y[split.unlabeled],
                              x[split.test], y[split.test])


def build_vae(cfg: Config, image_shape: tuple[int, ...]) -> VAE:
    # grey digits: Bernoulli likelihood on intensities; colour (SVHN): a Gaussian with fixed sigma
    likelihood = Bernoulli() if image_shape[0] == 1 else Gaussian(0.3)
    prior = LatentEBMPrior(cfg.latent_dim, 10, hidden=cfg.ebm_hidden, n_steps=cfg.generation_steps,
                           step_size=cfg.generation_step_size, temperature=cfg.generation_temperature,
                           guidance=cfg.generation_guidance)
    enc = MLPEncoder(image_shape, cfg.latent_dim, hidden=cfg.hidden)
    dec = MLPDecoder(cfg.latent_dim, image_shape, n_params=likelihood.n_params, hidden=cfg.hidden[::-1])
    return VAE(enc, dec, likelihood, prior)


def training_settings(cfg: Config) -> dict:
    """What the semi-supervised checkpoint depends on besides ``cfg.train`` (which the trainer adds): a
    rerun in the same ``--out`` that changes any of these is refused instead of reusing the old model."""
    data_dir = None if cfg.data_dir is None else str(Path(cfg.data_dir).resolve())
    return {"data_dir": data_dir, "n_labeled": cfg.n_labeled, "n_test": cfg.n_test, "seed": cfg.seed,
            "latent_dim": cfg.latent_dim, "hidden": cfg.hidden, "ebm_hidden": cfg.ebm_hidden}


def downstream_accuracy(cfg: Config, train_data, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    """A fresh MLP classifier trained on ``train_data`` (same seed and budget for every variant)."""
    model = MLPClassifier(tuple(x_test.shape[1:]), 10, hidden=cfg.hidden, dropout=0.2)
    model, _ = train_classifier(model, train_data, epochs=cfg.classifier_epochs, batch_size=64,
                                device=cfg.device, seed=cfg.seed, progress=False)
    return evaluate_accuracy(model, (x_test, y_test), device=cfg.device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help="mnist_4k.npz or SVHN train/test_32x32.mat (default: sklearn digits): "
                   + DATA_DIR_HELP)
    p.add_argument("--n-labeled", type=int, default=Config.n_labeled, help="balanced: a multiple of 10")
    p.add_argument("--seed", type=int_at_least(0), default=Config.seed)
    p.add_argument("--out", default=Config.out)
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="smoke config: 500 iterations, L = 100")
    p.add_argument("--iters", type=int, default=None, help="override the semi-supervised iterations")
    p.add_argument("--classifier-epochs", type=int, default=None, help="override the downstream epochs")
    p.add_argument("--no-progress", action="store_true")
    add_engine_arguments(p)
    args = p.parse_args(argv)
    engine = engine_options(p, args, ["adam"])
    if args.n_labeled <= 0 or args.n_labeled % 10:
        p.error(f"--n-labeled must be a positive multiple of 10 (balanced classes), got {args.n_labeled}")
    if args.data_dir is not None:  # the data root or the folder holding the files; load_data wants the latter
        folder = (find_data_folder(args.data_dir, "train_32x32.mat", subdirs=("svhn",))
                  or find_data_folder(args.data_dir, "mnist_4k.npz", subdirs=("digits",)))
        if folder is None:
            p.error(f"--data-dir {args.data_dir} holds neither mnist_4k.npz nor SVHN's train_32x32.mat "
                    "(looked in it and in its digits/ and svhn/ folders)")
        args.data_dir = str(folder)
    cfg = Config(data_dir=args.data_dir, n_labeled=args.n_labeled, seed=args.seed, out=args.out)
    if args.quick:
        cfg.quick()
    if args.iters is not None:
        if args.iters < 1:
            p.error(f"--iters must be a positive integer, got {args.iters}")
        cfg.train.n_iters = args.iters
    if args.classifier_epochs is not None:
        if args.classifier_epochs < 1:
            p.error(f"--classifier-epochs must be a positive integer, got {args.classifier_epochs}")
        cfg.classifier_epochs = args.classifier_epochs
    if args.device:
        cfg.device = args.device
    cfg.train.seed, cfg.train.progress = cfg.seed, not args.no_progress
    cfg.train = replace(cfg.train, **engine)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()

    # 1. semi-supervised latent-EBM VAE
    data = load_split(cfg)
    x_l, y_l, x_u, x_t, y_t = data.x_labeled, data.y_labeled, data.x_unlabeled, data.x_test, data.y_test
    print(f"data: {len(x_l)} labelled, {len(x_u)} unlabelled, {len(x_t)} test images of shape "
          f"{tuple(x_l.shape[1:])}; device {cfg.device}")
    vae = build_vae(cfg, tuple(x_l.shape[1:]))
    trainer = SemiSupervisedTrainer(vae, cfg.train, device=cfg.device, checkpoint_dir=out / "checkpoints",
                                    settings=training_settings(cfg))
    history = trainer.fit(x_u, x_l, y_l, eval_data=(x_t, y_t))
    latent_acc = trainer.accuracy(x_t, y_t)
    vae.save(out / "vae.pt")
    print(f"1. latent classifier test accuracy {latent_acc:.4f}")

    # 2. class-conditional draws, 3. entropy filter + CRAIG coreset
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    generated = generate_labelled(vae, cfg.samples_per_class, generator=generator)
    naive = select_synthetic(generated, AugmentConfig(cfg.samples_per_class, entropy=None, coreset=None))
    # the filter keeps each class's most confident half: every class stays in the downstream training set
    augment = AugmentConfig(cfg.samples_per_class, entropy_keep=cfg.entropy_keep, entropy_per_class=True,
                            coreset="craig", coreset_fraction=cfg.coreset_fraction)
    chosen = select_synthetic(generated, augment, seed=cfg.seed)
    # the draws judged by a reference classifier trained on the real labels (the generator never saw them)
    report, _, _ = judge_generation(
        vae, torch.cat([x_l, x_u]), torch.cat([y_l, data.y_unlabeled]), x_t, out,
        samples_per_class=cfg.samples_per_class, epochs=cfg.judge_epochs, seed=cfg.seed, device=cfg.device,
        generator=torch.Generator(device=cfg.device).manual_seed(cfg.seed), filter_config=augment)
    print(report.format())
    print(f"2-3. drew {chosen.counts['generated']}, entropy filter kept {chosen.counts['filtered']}, "
          f"CRAIG kept {chosen.counts['selected']} (weights sum {float(chosen.weights.sum()):.0f})")
    save_synthetic_dataset(out / "synthetic.pt", chosen.x, chosen.y, chosen.weights,
                           meta={"source_checkpoint": str(out / "vae.pt"), "counts": chosen.counts})

    # 4. downstream classifier: real labels only vs real + synthetic
    real = (x_l, y_l)
    variants = {
        "real labels only": real,
        "+ naive synthetic (all draws)": combine_real_and_synthetic(
            real, WeightedTensorDataset(naive.x, naive.y, naive.weights), share=cfg.synthetic_share),
        f"+ {augment.describe()} synthetic": combine_real_and_synthetic(
            real, WeightedTensorDataset(chosen.x, chosen.y, chosen.weights), share=cfg.synthetic_share),
    }
    accuracy = {name: downstream_accuracy(cfg, data, x_t, y_t) for name, data in variants.items()}
    seconds = time.perf_counter() - t0

    first8 = torch.cat([torch.nonzero(generated.y == k).squeeze(1)[:8] for k in range(10)])
    save_image_grid(generated.x[first8], out / "samples.png", nrow=8, labels=generated.y[first8].tolist(),
                    title="class-conditional samples, z ~ p(z|y) by Langevin")
    # "naive" keeps every draw in order, so its entropies are those of all the draws
    save_entropy_grid(generated.x, generated.y, naive.entropy, out / "samples_by_entropy.png")
    save_image_grid(chosen.x[:100], out / "selected.png", nrow=10, labels=chosen.y[:100].tolist(),
                    title="selected synthetic samples (entropy filter + CRAIG)")
    save_loss_curves({k: history[k] for k in ("iter", "loss", "ebm_loss", "class_loss")},
                     out / "loss_curves.png")
    results = {
        "latent_classifier_accuracy": latent_acc,
        "downstream_accuracy": accuracy,
        "selection_counts": chosen.counts,
        "sample_quality": report.to_dict(),
        "seconds": seconds,
        "config": asdict(cfg),
    }
    write_json(out / "results.json", results)

    print(f"\n4. downstream MLP classifier, test accuracy ({len(x_t)} held-out real images):")
    for name, acc in accuracy.items():
        print(f"   {name:<34}{acc:.4f}")
    print(f"\n{seconds:.0f} s; results.json, synthetic.pt and figures in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_recipe(main))
