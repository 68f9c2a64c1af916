"""Semi-supervised classification with a latent EBM prior (Pang & Wu 2021; dissertation Algorithm 2).

Full run (the paper's SVHN setting: WRN-28-2 inference net, DCGAN generator, 3-layer EBM MLP, batch 100,
T_LD = 60 Langevin steps, 1000 balanced labels; the SVHN ``.mat`` files are read from ``--data-dir``)::

    python -m recipes.svhn_semisup --data-dir /path/to/svhn

Quick run (a few CPU minutes: MNIST-4k from the shared data folder, 100 balanced labels, the rest
unlabelled, 1000 held out; MLP nets)::

    python -m recipes.svhn_semisup --quick

Prints the latent classifier's test accuracy (``argmax softmax F(mu(x))``) next to a supervised-only
classifier trained on the same labels, and writes to ``--out``: ``results.json``, ``metrics.jsonl/csv``,
``samples.png`` (class-conditional prior samples, Langevin on p(z|y), decoded), ``loss_curves.png`` and
``checkpoints/`` (re-running the same command resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from genlib.data.images import (
    default_data_root,
    load_mnist_npz,
    load_svhn_semi_supervised,
    semi_supervised_split,
)
from genlib.likelihoods import Bernoulli, Gaussian
from genlib.models import VAE
from genlib.nn import DCGANDecoder, MLPDecoder, MLPEncoder, WideResNetEncoder
from genlib.priors import LatentEBMPrior
from genlib.train import (
    MetricsLogger,
    MLPClassifier,
    SemiSupervisedConfig,
    SemiSupervisedTrainer,
    SmallConvNet,
    evaluate_accuracy,
    train_classifier,
)
from genlib.utils import default_device, seed_everything
from genlib.viz import save_image_grid, save_loss_curves


@dataclass
class Config:
    """Everything the run depends on; ``quick()`` gives the CPU-minutes variant."""

    dataset: str = "svhn"  # "svhn" (--data-dir) or "mnist4k" (shared data folder)
    n_labeled: int = 1000
    n_test: int = 1000  # held-out split for mnist4k (SVHN uses its official test set)
    latent_dim: int = 100
    ebm_hidden: tuple[int, ...] = (200, 200)  # 3 linear layers
    enc_hidden: tuple[int, ...] = (256,)  # MLP nets (quick)
    sigma: float = 0.3  # Gaussian likelihood for SVHN
    baseline_epochs: int = 200
    train: SemiSupervisedConfig = field(
        default_factory=lambda: SemiSupervisedConfig(
            n_iters=60000, batch_size=100, lr=3e-4, ebm_lr=3e-5, langevin_steps=60, langevin_step_size=0.08,
            grad_clip=10.0,
            eval_every=2000, checkpoint_every=2000,
        )
    )

    @classmethod
    def quick(cls) -> Config:
        return cls(
            dataset="mnist4k", n_labeled=100, latent_dim=16, ebm_hidden=(128, 128), baseline_epochs=100,
            train=SemiSupervisedConfig(
                n_iters=750, batch_size=100, lr=1e-3, ebm_lr=3e-5, langevin_steps=20,
                langevin_step_size=0.08, class_weight=5.0, grad_clip=10.0, eval_every=125,
                checkpoint_every=250,
            ),
        )


def load_data(cfg: Config, data_dir: str | None, seed: int) -> tuple[torch.Tensor, ...]:
    """``(x_labeled, y_labeled, x_unlabeled, x_test, y_test)``, images in [0, 1]."""
    if cfg.dataset == "svhn":
        if data_dir is None:
            raise ValueError("--data-dir must name the folder holding train_32x32.mat / test_32x32.mat")
        d = load_svhn_semi_supervised(data_dir, n_labeled=cfg.n_labeled, seed=seed)
        return d.x_labeled, d.y_labeled, d.x_unlabeled, d.x_test, d.y_test
    path = Path(data_dir) / "mnist_4k.npz" if data_dir is not None else None
    x, y = load_mnist_npz(path)
    split = semi_supervised_split(y, n_labeled=cfg.n_labeled, n_test=cfg.n_test, seed=seed, num_classes=10)
    return x[split.labeled], y[split.labeled], x[split.unlabeled], x[split.test], y[split.test]


def build(cfg: Config, image_shape: tuple[int, ...]) -> tuple[VAE, torch.nn.Module]:
    """The VAE with the latent EBM prior, and the supervised-only baseline classifier."""
    prior = LatentEBMPrior(cfg.latent_dim, 10, hidden=cfg.ebm_hidden, activation="gelu",
                           n_steps=cfg.train.langevin_steps, step_size=cfg.train.langevin_step_size)
    if cfg.dataset == "svhn":
        c, h, _ = image_shape
        enc = WideResNetEncoder(c, cfg.latent_dim, depth=28, widen_factor=2, image_size=h)
        dec = DCGANDecoder(cfg.latent_dim, c, image_size=h)
        return VAE(enc, dec, Gaussian(cfg.sigma), prior), SmallConvNet(in_channels=c, num_classes=10)
    enc = MLPEncoder(image_shape, cfg.latent_dim, hidden=cfg.enc_hidden)
    dec = MLPDecoder(cfg.latent_dim, image_shape, hidden=cfg.enc_hidden)
    return VAE(enc, dec, Bernoulli(), prior), MLPClassifier(image_shape, 10, hidden=cfg.enc_hidden)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MNIST-4k, MLP nets, a few CPU minutes")
    p.add_argument("--data-dir", default=None, help="SVHN .mat folder (full) / mnist_4k.npz folder (quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/svhn_semisup")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--iters", type=int, default=None, help="override the number of training iterations")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    cfg = Config.quick() if args.quick else Config()
    if args.iters is not None:
        cfg.train.n_iters = args.iters
    cfg.train.seed = args.seed
    cfg.train.progress = not args.no_progress
    SemiSupervisedConfig(**asdict(cfg.train))  # re-validate the overrides
    device = torch.device(args.device) if args.device else default_device()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)

    x_l, y_l, x_u, x_t, y_t = load_data(cfg, args.data_dir, args.seed)
    print(f"data: {len(x_l)} labelled, {len(x_u)} unlabelled, {len(x_t)} test, images {tuple(x_l.shape[1:])}"
          f" (data root {args.data_dir or default_data_root()})")
    vae, baseline = build(cfg, tuple(x_l.shape[1:]))

    t0 = time.perf_counter()
    logger = MetricsLogger(out, resume=True)
    trainer = SemiSupervisedTrainer(vae, cfg.train, device=device, checkpoint_dir=out / "checkpoints",
                                    logger=logger)
    history = trainer.fit(x_u, x_l, y_l, eval_data=(x_t, y_t))
    acc_latent = trainer.accuracy(x_t, y_t)
    seconds = time.perf_counter() - t0

    # Supervised-only reference: the same labels, no unlabelled data.
    baseline, _ = train_classifier(baseline, (x_l, y_l), epochs=cfg.baseline_epochs, batch_size=100,
                                   device=device, seed=args.seed, progress=False)
    acc_sup = evaluate_accuracy(baseline, (x_t, y_t), device=device)

    # Class-conditional samples: Langevin on p(z|y) from N(0, I), decoded to the likelihood's mean.
    vae.eval()
    per_class = 6
    y_s = torch.arange(10, device=device).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(args.seed)
    z = vae.prior.sample(len(y_s), y=y_s, generator=g)
    with torch.no_grad():
        images = vae.decode(z).mean.clamp(0, 1).cpu()
    save_image_grid(images, out / "samples.png", nrow=per_class * 2, labels=y_s.tolist(),
                    title="class-conditional samples p(x|z), z ~ p(z|y)")
    save_loss_curves({k: history[k] for k in ("iter", "loss", "ebm_loss", "class_loss")},
                     out / "loss_curves.png")

    results = {
        "latent_classifier_accuracy": acc_latent,
        "supervised_only_accuracy": acc_sup,
        "n_labeled": len(x_l),
        "n_unlabeled": len(x_u),
        "n_test": len(x_t),
        "train_seconds": seconds,
        "eval_iter": history["eval_iter"],
        "eval_accuracy": history["eval_accuracy"],
        "device": str(device),
        "config": asdict(cfg),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"test accuracy: latent EBM classifier {acc_latent:.4f} | supervised-only {acc_sup:.4f} "
          f"({len(x_l)} labels; {seconds:.0f} s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
