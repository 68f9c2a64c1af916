"""Semi-supervised classification with a latent EBM prior (Pang & Wu 2021; dissertation Algorithm 2).

Full run (the paper's SVHN setting: WRN-28-2 inference net, DCGAN generator, 3-layer EBM MLP, batch 100,
T_LD = 60 Langevin steps, 1000 balanced labels; the SVHN ``.mat`` files are read from ``--data-dir``)::

    python -m recipes.svhn_semisup --data-dir /path/to/svhn
    torchrun --nproc-per-node 4 -m recipes.svhn_semisup --data-dir /path/to/svhn --precision bf16

(under ``torchrun`` every process trains its share of each global batch of 100 with DDP, rank 0 writes the
checkpoints and, after training, evaluates and reports alone; ``--precision``, ``--compile``,
``--compile-optimizers`` and ``--num-workers`` are the training engine's, :class:`genlib.train.Engine`).

``--include-extra`` (full SVHN only) adds SVHN's 531,131 ``extra`` images to the unlabelled set, streamed
from disk rather than held as a 6.5 GB float tensor: the first run converts ``train_32x32.mat`` and
``extra_32x32.mat`` into uint8 ``.npy`` caches beside them (``genlib.data.svhn_dataset``; ~1.8 GB, written
once, by rank 0 under ``torchrun``), and every run reads its unlabelled batches from those memory maps
through the DataLoader (``--num-workers`` workers, pinned memory on CUDA)::

    python -m recipes.svhn_semisup --data-dir /path/to/svhn --include-extra --num-workers 4

Quick run (a few CPU minutes: MNIST-4k from the shared data folder, 100 balanced labels, the rest
unlabelled, 1000 held out; MLP nets)::

    python -m recipes.svhn_semisup --quick

Prints the latent classifier's test accuracy (``argmax softmax F(mu(x))``) next to a supervised-only
classifier trained on the same labels, and writes to ``--out``: ``results.json``, ``metrics.jsonl/csv``,
``samples.png`` (class-conditional draws, Langevin on p(z|y) with the prior's generation settings, decoded;
unfiltered, first 12 per class) and ``samples_by_entropy.png`` (sorted by the latent classifier's entropy),
``reference_classifier.pt`` (the judge: a small CNN trained on the split's real labels, which the generator
never sees; its label agreement with the draws and Fréchet distance are printed and in ``results.json``
under ``sample_quality``), ``loss_curves.png``,
``vae.pt`` (the trained model, for ``genlib sample``) and ``checkpoints/`` (re-running the same command
resumes; a rerun in the same ``--out`` with other settings is refused, naming them). ``--augment`` switches
on Algorithm 2's steps 7-8 (entropy filter + CRAIG coreset of the model's own class-conditional samples from
iteration T_a on).

Ablation (the dissertation's Table 5.1 analogue)::

    python -m recipes.svhn_semisup --quick --ablation

trains each seed's model to T_a once, then continues it to the end under every augmentation variant
(baseline = no augmentation, naive = all draws, H = entropy filter, H&CRAIG, H&AdaCore, H&Random,
H&CRAIG&PL = plus pseudo-labels) for each L, and prints the latent classifier's test accuracy as mean ± std
over seeds (``ablation.json``, ``ablation.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist

from genlib.cli_args import (
    DATA_DIR_HELP,
    add_engine_arguments,
    engine_options,
    find_data_folder,
    int_at_least,
    positive_float,
    run_recipe,
)
from genlib.cli_args import device as device_arg
from genlib.data.images import (
    SemiSupervisedData,
    default_data_root,
    load_mnist_npz,
    load_svhn_semi_supervised,
    semi_supervised_split,
)
from genlib.data.synthetic import WeightedTensorDataset, combine_real_and_synthetic
from genlib.likelihoods import Bernoulli, Gaussian
from genlib.models import VAE
from genlib.nn import DCGANDecoder, MLPDecoder, MLPEncoder, WideResNetEncoder
from genlib.optim import LRA, ExponentialDecaySchedule, Kron
from genlib.priors import LatentEBMPrior
from genlib.train import (
    AugmentConfig,
    MetricsLogger,
    MLPClassifier,
    SemiSupervisedConfig,
    SemiSupervisedTrainer,
    SmallConvNet,
    evaluate_accuracy,
    get_rng_state,
    judge_generation,
    predict_logits,
    save_generation_grids,
    set_rng_state,
    train_classifier,
)
from genlib.train.checkpoint import check_settings_file
from genlib.train.distributed import finish_distributed, init_distributed
from genlib.utils import atomic_write_text, json_dumps, seed_everything, write_json
from genlib.viz import save_loss_curves


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
    # Algorithm 2 steps 7-8 (--augment / --ablation): from T_a on, L draws per class every R iterations,
    # entropy filter keeps half, the coreset 10 % of that, loss coefficient 0.1.
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(samples_per_class=1000, start_iter=40000, reselect_every=2000)
    )
    # Generation (samples.png, genlib sample, augmentation draws): the prior's sampler and guidance. Guided
    # draws p(z) p(y|z)^w at T = 1 keep the prior's spread and leave the class boundaries; the small step
    # keeps the strongly guided chains inside the encoder's latent region (benchmarks/sample_quality.py).
    # The paper's choice: guidance 1, T = 1, the training chains' steps.
    generation_steps: int = 200
    generation_step_size: float = 0.02
    generation_temperature: float = 1.0
    generation_guidance: float = 300.0
    quality_per_class: int = 100  # draws per class judged by the reference classifier
    judge_epochs: int = 8  # the reference classifier's training (genlib.metrics.images)
    ablation_ls: tuple[int, ...] = (500, 1000, 2000)
    ablation_seeds: tuple[int, ...] = (0, 1, 2)
    # nats of entropy, for the "PL" variant: the paper's 1e-6 keeps no MNIST-4k image at the quick budget,
    # 0.01 keeps ~1250 of 2900 at 99.7-99.9 % right (benchmarks/sample_quality.py)
    pseudo_label_threshold: float = 0.01
    downstream_share: float = 0.25  # the selection's total loss weight relative to the real labels
    downstream_epochs: int = 100

    @classmethod
    def quick(cls) -> Config:
        # EBM learning rate: 3e-5 leaves F (and so the latent classifier) untrained at this budget (0.74
        # accuracy vs 0.84 at 1e-3); the score penalty keeps 1e-3 stable (measured, see benchmarks/README).
        return cls(
            dataset="mnist4k", n_labeled=100, latent_dim=16, ebm_hidden=(128, 128), baseline_epochs=100,
            train=SemiSupervisedConfig(
                n_iters=2000, batch_size=100, lr=1e-3, ebm_lr=1e-3, score_penalty=0.1, langevin_steps=20,
                langevin_step_size=0.08, negative_init="persistent", class_weight=5.0, grad_clip=10.0,
                eval_every=250, checkpoint_every=500,
            ),
            augment=AugmentConfig(samples_per_class=100, start_iter=1000, reselect_every=250),
            ablation_ls=(100, 300),
            ablation_seeds=(0, 1),
            downstream_epochs=50,
        )


# Optimizer of both parameter groups (encoder/decoder at train.lr, EBM at train.ebm_lr). "psgd-kron" runs
# PSGD's gradient-whitening mode (backward() + step()) in the inverse-free QEQ coordinates with one diagonal
# factor per matrix and diagonal factors on dims above 128, refitting on fewer steps after the first ~100:
# the best PSGD at equal time on this model in benchmarks/README.md. The "-hvp" ones are the papers' Newton
# type, which the trainer steps with a closure. Their lr is a fraction of a Newton step, not an Adam rate:
# 50x the config's (0.05 at --quick; x10 trained far slower in 200-iteration probes). Preconditioners are
# refitted every step at first, then on ~10 % of steps, so most steps cost no curvature fit (and, for the
# Newton types, no Hessian-vector product).
_NEWTON_LR = 50.0


def _refit(decay_steps: int = 500) -> ExponentialDecaySchedule:
    return ExponentialDecaySchedule(start=1.0, end=0.1, decay_steps=decay_steps)


OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "psgd-kron": lambda params, lr: Kron(params, lr=lr, momentum=0.9, coords="QEQ", max_size=128,
                                         memory_save_mode="one_diag", update_probability=_refit(100)),
    "psgd-kron-hvp": lambda params, lr: Kron(params, lr=_NEWTON_LR * lr, curvature="hvp",
                                             update_probability=_refit()),
    "psgd-lra-hvp": lambda params, lr: LRA(params, lr=_NEWTON_LR * lr, curvature="hvp",
                                           update_probability=_refit()),
}


def run_settings(cfg: Config, args: argparse.Namespace, seed: int) -> dict:
    """What a checkpoint depends on besides the trainer's own config (which the trainer adds): data, split,
    model sizes, optimizer. A rerun in the same ``--out`` that changes any of them is refused by name."""
    data_dir = None if args.data_dir is None else str(Path(args.data_dir).resolve())
    model = {k: getattr(cfg, k) for k in ("latent_dim", "ebm_hidden", "enc_hidden", "sigma")}
    extra = {"include_extra": True} if getattr(args, "include_extra", False) else {}
    return {"dataset": cfg.dataset, "data_dir": data_dir, "n_labeled": cfg.n_labeled, "n_test": cfg.n_test,
            "seed": seed, "optimizer": args.optimizer, "model": model, **extra}


def ablation_settings(cfg: Config, args: argparse.Namespace) -> dict:
    """What the ablation's saved records depend on: everything but the seeds and Ls (records are keyed by
    them, so a rerun may add some), the single run's knobs and the cadences."""
    train = {k: v for k, v in asdict(cfg.train).items()
             if k not in ("seed", "augment", "progress", "eval_every", "checkpoint_every")}
    rest = {k: v for k, v in asdict(cfg).items()
            if k not in ("train", "ablation_seeds", "ablation_ls", "baseline_epochs")}
    data_dir = None if args.data_dir is None else str(Path(args.data_dir).resolve())
    return {"data_dir": data_dir, "optimizer": args.optimizer, "train": train, **rest}


def load_data(
    cfg: Config, data_dir: str | None, seed: int, include_extra: bool = False
) -> SemiSupervisedData:
    """Labelled / unlabelled / test images in [0, 1] (``y_unlabeled`` only for diagnostics).

    With ``include_extra`` (SVHN only) ``x_unlabeled`` is a ``Dataset`` streaming the unlabelled part of
    ``train`` and all of ``extra`` from uint8 caches written beside the ``.mat`` files on first use."""
    if cfg.dataset == "svhn":
        if data_dir is None:
            raise ValueError("--data-dir must name the folder holding train_32x32.mat / test_32x32.mat")
        return load_svhn_semi_supervised(data_dir, n_labeled=cfg.n_labeled, seed=seed,
                                         include_extra=include_extra)
    if include_extra:
        raise ValueError(f"include_extra needs the SVHN dataset, not {cfg.dataset!r}")
    path = Path(data_dir) / "mnist_4k.npz" if data_dir is not None else None
    x, y = load_mnist_npz(path)
    split = semi_supervised_split(y, n_labeled=cfg.n_labeled, n_test=cfg.n_test, seed=seed, num_classes=10)
    return SemiSupervisedData(x[split.labeled], y[split.labeled], x[split.unlabeled], y[split.unlabeled],
                              x[split.test], y[split.test])


def make_classifier(cfg: Config, image_shape: tuple[int, ...]) -> torch.nn.Module:
    """The supervised-only baseline's architecture (also the ablation's downstream classifier)."""
    if cfg.dataset == "svhn":
        return SmallConvNet(in_channels=image_shape[0], num_classes=10)
    return MLPClassifier(image_shape, 10, hidden=cfg.enc_hidden)


def build(cfg: Config, image_shape: tuple[int, ...]) -> tuple[VAE, torch.nn.Module]:
    """The VAE with the latent EBM prior, and the supervised-only baseline classifier."""
    prior = LatentEBMPrior(cfg.latent_dim, 10, hidden=cfg.ebm_hidden, activation="gelu",
                           n_steps=cfg.generation_steps, step_size=cfg.generation_step_size,
                           temperature=cfg.generation_temperature, guidance=cfg.generation_guidance)
    if cfg.dataset == "svhn":
        c, h, _ = image_shape
        enc = WideResNetEncoder(c, cfg.latent_dim, depth=28, widen_factor=2, image_size=h)
        dec = DCGANDecoder(cfg.latent_dim, c, image_size=h)
        return VAE(enc, dec, Gaussian(cfg.sigma), prior), make_classifier(cfg, image_shape)
    enc = MLPEncoder(image_shape, cfg.latent_dim, hidden=cfg.enc_hidden)
    dec = MLPDecoder(cfg.latent_dim, image_shape, hidden=cfg.enc_hidden)
    return VAE(enc, dec, Bernoulli(), prior), make_classifier(cfg, image_shape)


def ablation_variants(cfg: Config, samples_per_class: int) -> dict[str, AugmentConfig | None]:
    """Table 5.1's rows for one L: each an AugmentConfig (None = the un-augmented baseline)."""
    base = replace(cfg.augment, samples_per_class=samples_per_class)
    return {
        "baseline": None,
        "naive": replace(base, entropy=None, coreset=None),
        "H": replace(base, coreset=None),
        "H&CRAIG": base,
        "H&AdaCore": replace(base, coreset="adacore"),
        "H&Random": replace(base, coreset="random"),
        "H&CRAIG&PL": replace(base, pseudo_label_threshold=cfg.pseudo_label_threshold),
    }


def downstream_accuracy(cfg: Config, train_data, x_test: torch.Tensor, y_test: torch.Tensor,
                        device: torch.device, seed: int) -> float:
    """A fresh supervised classifier (the baseline's architecture) trained on ``train_data``, tested."""
    model = make_classifier(cfg, tuple(x_test.shape[1:]))
    model, _ = train_classifier(model, train_data, epochs=cfg.downstream_epochs, batch_size=100,
                                device=device, seed=seed, progress=False)
    return evaluate_accuracy(model, (x_test, y_test), device=device)


def run_ablation(cfg: Config, args: argparse.Namespace, device: torch.device, out: Path) -> dict:
    """Per seed: train to T_a once, then continue to ``n_iters`` under every variant and L.

    Three numbers per branch: the latent classifier's test accuracy; a downstream classifier's test accuracy
    when trained on the real labels plus the branch's last selection (``downstream_share`` of the loss; the
    baseline's is real labels only); and, as a diagnostic, the share of the selection's labels that an
    oracle (a classifier trained on the unlabelled split's true labels, never used for training) agrees with.
    """
    t_a = cfg.augment.start_iter
    if not 0 < t_a < cfg.train.n_iters:
        raise ValueError(f"augment.start_iter (T_a = {t_a}) must lie in (0, n_iters = {cfg.train.n_iters})")
    # One record per (seed, L, variant), saved atomically after each branch: a re-run skips finished ones.
    progress_path = out / "ablation_progress.json"
    # the records hold only for the settings they were made with: a rerun with others is refused by name
    check_settings_file(out / "ablation_settings.json", ablation_settings(cfg, args), guards=progress_path)
    done: dict[str, dict] = json.loads(progress_path.read_text()) if progress_path.is_file() else {}

    for seed in cfg.ablation_seeds:
        todo = [(L, name) for L in cfg.ablation_ls for name in ablation_variants(cfg, L)
                if f"{seed}/{L}/{name}" not in done]
        if not todo:
            continue
        seed_everything(seed)
        data = load_data(cfg, args.data_dir, seed)
        x_l, y_l, x_u, x_t, y_t = data.x_labeled, data.y_labeled, data.x_unlabeled, data.x_test, data.y_test
        known = data.y_unlabeled >= 0
        oracle, _ = train_classifier(make_classifier(cfg, tuple(x_l.shape[1:])),
                                     (x_u[known], data.y_unlabeled[known]), epochs=30, device=device,
                                     seed=seed, progress=False)
        print(f"seed {seed}: oracle classifier (diagnostic) test accuracy "
              f"{evaluate_accuracy(oracle, (x_t, y_t), device=device):.4f}")
        vae, _ = build(cfg, tuple(x_l.shape[1:]))
        base_cfg = replace(cfg.train, n_iters=t_a, seed=seed, eval_every=0, augment=None)
        trainer = SemiSupervisedTrainer(vae, base_cfg, optimizer=OPTIMIZERS[args.optimizer], device=device,
                                        checkpoint_dir=out / "checkpoints" / f"seed{seed}_base",
                                        settings=run_settings(cfg, args, seed))
        trainer.fit(x_u, x_l, y_l)
        print(f"seed {seed}: T_a = {t_a} iterations, latent classifier {trainer.accuracy(x_t, y_t):.4f}")
        rng = get_rng_state()  # every branch starts from the same random state, whatever ran before it
        for L, name in todo:
            aug = ablation_variants(cfg, L)[name]
            base_key = f"{seed}/{cfg.ablation_ls[0]}/baseline"
            if aug is None and base_key in done:  # the baseline does not depend on L
                done[f"{seed}/{L}/{name}"] = done[base_key]
                continue
            set_rng_state(rng)
            branch = copy.deepcopy(trainer)
            branch.checkpointer = None
            branch.config = replace(trainer.config, n_iters=cfg.train.n_iters, augment=aug)
            branch.fit(x_u, x_l, y_l)
            rec = {"latent": branch.accuracy(x_t, y_t)}
            sel, note = branch.selection, ""
            if sel is None:
                rec["downstream"] = downstream_accuracy(cfg, (x_l, y_l), x_t, y_t, device, seed)
            else:
                mixed = combine_real_and_synthetic(
                    (x_l, y_l), WeightedTensorDataset(sel.x, sel.y, sel.weights), share=cfg.downstream_share)
                rec["downstream"] = downstream_accuracy(cfg, mixed, x_t, y_t, device, seed)
                pred = predict_logits(oracle, sel.x, device=device).argmax(1)
                rec["labels_right"] = float((sel.weights * (pred == sel.y)).sum() / sel.weights.sum())
                note = f"  labels right {rec['labels_right']:.3f}  {sel.counts}"
            print(f"  L={L:<5} {name:<11} latent {rec['latent']:.4f}  "
                  f"downstream {rec['downstream']:.4f}{note}")
            done[f"{seed}/{L}/{name}"] = rec
            atomic_write_text(progress_path, json_dumps(done, indent=1))

    Table = dict[str, dict[int, list[float]]]  # variant -> L -> one value per seed
    tables: dict[str, Table] = {"latent": {}, "downstream": {}, "labels_right": {}}
    for seed in cfg.ablation_seeds:
        for L in cfg.ablation_ls:
            for name in ablation_variants(cfg, L):
                for k, v in done[f"{seed}/{L}/{name}"].items():
                    tables[k].setdefault(name, {}).setdefault(L, []).append(v)
    # Seeds differ in their labelled split, which moves every variant together: paired differences to the
    # same seed's baseline show the effect of augmentation with far less spread.
    for k in ("latent", "downstream"):
        base = tables[k]["baseline"]
        tables[f"{k}_gain"] = {name: {L: [a - b for a, b in zip(row[L], base[L])] for L in row}
                               for name, row in tables[k].items() if name != "baseline"}

    def markdown(table: Table, signed: bool) -> str:
        def cell(xs: list[float]) -> str:
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            return f"{100 * statistics.mean(xs):{'+' if signed else ''}.1f} ± {100 * sd:.1f}"

        lines = ["| variant | " + " | ".join(f"L = {L}" for L in cfg.ablation_ls) + " |",
                 "|" + "---|" * (len(cfg.ablation_ls) + 1)]
        lines += [f"| {name} | " + " | ".join(cell(row[L]) for L in cfg.ablation_ls) + " |"
                  for name, row in table.items()]
        return "\n".join(lines)

    titles = {
        "latent": "latent classifier test accuracy (%)",
        "latent_gain": "latent classifier: gain over the same seed's baseline (points)",
        "downstream": "downstream classifier test accuracy (%), real labels + selection weighing "
                      f"{cfg.downstream_share} x the real labels",
        "downstream_gain": "downstream classifier: gain over the same seed's baseline (points)",
        "labels_right": "selection's labels the oracle agrees with (%, weighted; diagnostic)",
    }
    report = "\n\n".join(f"{titles[k]}, mean ± std over seeds {list(cfg.ablation_seeds)}, T_a = {t_a}, "
                          f"{cfg.train.n_iters} iterations:\n\n{markdown(tables[k], k.endswith('gain'))}"
                          for k in titles)
    print("\n" + report)
    (out / "ablation.md").write_text(report + "\n")
    result = {k: {name: {str(L): v for L, v in row.items()} for name, row in t.items()}
              for k, t in tables.items()}
    result["config"] = asdict(cfg)
    write_json(out / "ablation.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MNIST-4k, MLP nets, a few CPU minutes")
    p.add_argument("--data-dir", default=None,
                   help="SVHN train/test_32x32.mat (full) or mnist_4k.npz (quick): " + DATA_DIR_HELP)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--out", default="runs/svhn_semisup")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--iters", type=int, default=None,
                   help="override the number of training iterations (0: evaluate the untrained model)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="the encoder/decoder lr (default: the config's); the EBM's keeps its ratio to it")
    p.add_argument("--augment", action="store_true",
                   help="Algorithm 2 steps 7-8: train on entropy-filtered CRAIG coresets of own samples")
    p.add_argument("--ablation", action="store_true", help="the Table 5.1 analogue (see above)")
    p.add_argument("--include-extra", action="store_true",
                   help="full SVHN only: stream the 531,131 'extra' images from disk as more unlabelled data")
    p.add_argument("--seeds", type=int_at_least(0), nargs="+", default=None, help="ablation seeds")
    p.add_argument("--ls", type=int, nargs="+", default=None, help="ablation samples per class L")
    p.add_argument("--t-a", type=int, default=None, help="iteration T_a of the first augmentation")
    add_engine_arguments(p)
    args = p.parse_args(argv)
    engine = engine_options(p, args, [args.optimizer])
    if args.include_extra and args.quick:
        p.error("--include-extra adds SVHN's extra split: it needs the full SVHN config, not --quick")
    if args.include_extra and args.ablation:
        p.error("--include-extra is for the single run; the ablation trains on the train split only")
    cfg = Config.quick() if args.quick else Config()
    if args.iters is not None:
        if args.iters < 0:
            p.error(f"--iters must be >= 0, got {args.iters}")
        cfg.train.n_iters = args.iters
    if args.lr is not None:
        cfg.train.ebm_lr *= args.lr / cfg.train.lr
        cfg.train.lr = args.lr
    cfg.train.seed = args.seed
    cfg.train.progress = not args.no_progress and not args.ablation
    cfg.train = replace(cfg.train, **engine)
    if args.seeds:
        cfg.ablation_seeds = tuple(args.seeds)
    if args.ls:
        if min(args.ls) < 1:
            p.error(f"--ls must be positive integers, got {args.ls}")
        cfg.ablation_ls = tuple(args.ls)
    if args.t_a is not None:
        if not 0 <= args.t_a < cfg.train.n_iters:
            p.error(f"--t-a must lie in [0, {cfg.train.n_iters}) (the number of iterations), got {args.t_a}")
        cfg.augment.start_iter = args.t_a
    if args.augment:
        cfg.train.augment = cfg.augment
    SemiSupervisedConfig(**asdict(cfg.train))  # re-validate the overrides
    if args.data_dir is not None:  # the data root or the folder holding the files; load_data wants the latter
        wanted, sub = ("train_32x32.mat", "svhn") if cfg.dataset == "svhn" else ("mnist_4k.npz", "digits")
        folder = find_data_folder(args.data_dir, wanted, subdirs=(sub,))
        if folder is None:
            p.error(f"--data-dir {args.data_dir} holds no {wanted} (looked in it and in its {sub}/ folder)")
        args.data_dir = str(folder)
    ctx, device = init_distributed(args.device)  # under torchrun: DDP, one process per GPU / CPU share
    if args.ablation and ctx.distributed:
        p.error("--ablation runs in one process (its branches are many short runs); drop torchrun")
    out = Path(args.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    if args.ablation:
        run_ablation(cfg, args, device, out)
        return 0

    # include_extra only when set: stand-ins for load_data (tests) may take just (cfg, data_dir, seed)
    first_run_writes = args.include_extra and ctx.distributed  # rank 0 writes the uint8 caches, then the rest
    if first_run_writes and not ctx.is_main:
        dist.barrier()
    data = load_data(cfg, args.data_dir, args.seed, **({"include_extra": True} if args.include_extra else {}))
    if first_run_writes and ctx.is_main:
        dist.barrier()
    x_l, y_l, x_u, x_t, y_t = data.x_labeled, data.y_labeled, data.x_unlabeled, data.x_test, data.y_test
    print(f"data: {len(x_l)} labelled, {len(x_u)} unlabelled, {len(x_t)} test, images {tuple(x_l.shape[1:])}"
          f" (data root {args.data_dir or default_data_root()})")
    vae, baseline = build(cfg, tuple(x_l.shape[1:]))

    t0 = time.perf_counter()
    logger = MetricsLogger(out, resume=True) if ctx.is_main else None
    trainer = SemiSupervisedTrainer(vae, cfg.train, optimizer=OPTIMIZERS[args.optimizer], device=device,
                                    checkpoint_dir=out / "checkpoints",
                                    logger=logger, settings=run_settings(cfg, args, args.seed))
    history = trainer.fit(x_u, x_l, y_l, eval_data=(x_t, y_t))
    seconds = time.perf_counter() - t0
    if not finish_distributed():  # rank 0 alone evaluates and reports
        return 0
    acc_latent = trainer.accuracy(x_t, y_t)

    # Supervised-only reference: the same labels, no unlabelled data.
    baseline, _ = train_classifier(baseline, (x_l, y_l), epochs=cfg.baseline_epochs, batch_size=100,
                                   device=device, seed=args.seed, progress=False)
    acc_sup = evaluate_accuracy(baseline, (x_t, y_t), device=device)

    # Class-conditional draws (the prior's generation sampler), judged by a reference classifier trained on
    # the real labels the split knows, which the generator never saw.
    if isinstance(x_u, torch.Tensor):
        x_known, y_known = torch.cat([x_l, x_u]), torch.cat([y_l, data.y_unlabeled])
    else:  # streamed (--include-extra): the judge trains on the train split's images, as without extra
        x_train_u = x_u.parts[0].tensor()
        x_known, y_known = torch.cat([x_l, x_train_u]), torch.cat([y_l, data.y_unlabeled[: len(x_train_u)]])
    report, generated, judge = judge_generation(
        vae, x_known, y_known, x_t[: cfg.quality_per_class * 10], out,
        samples_per_class=cfg.quality_per_class, epochs=cfg.judge_epochs, seed=args.seed, device=device,
        generator=torch.Generator().manual_seed(args.seed), filter_config=cfg.augment)
    acc_judge = float((judge.predict(x_t) == y_t.cpu()).float().mean())
    save_generation_grids(generated, out)
    if history.get("iter"):  # --iters 0 trains nothing: no curves to draw
        save_loss_curves({k: history[k] for k in ("iter", "loss", "ebm_loss", "class_loss")},
                         out / "loss_curves.png")
    vae.save(out / "vae.pt")

    results = {
        "latent_classifier_accuracy": acc_latent,
        "supervised_only_accuracy": acc_sup,
        "n_labeled": len(x_l),
        "n_unlabeled": len(x_u),
        "n_test": len(x_t),
        "train_seconds": seconds,
        "eval_iter": history.get("eval_iter", []),
        "eval_accuracy": history.get("eval_accuracy", []),
        "device": str(device),
        "selection_counts": None if trainer.selection is None else trainer.selection.counts,
        "reference_classifier_accuracy": acc_judge,
        "sample_quality": report.to_dict(),
        "config": asdict(cfg),
    }
    write_json(out / "results.json", results)
    print(report.format())
    print(f"reference classifier (judge) test accuracy {acc_judge:.4f}")
    print(f"test accuracy: latent EBM classifier {acc_latent:.4f} | supervised-only {acc_sup:.4f} "
          f"({len(x_l)} labels; {seconds:.0f} s) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_recipe(main))
