"""One VAE trained by Adam and by PSGD side by side, on data that needs no download.

A Bernoulli MLP VAE on scikit-learn's bundled 8×8 digits (or MNIST-4k with ``--data-dir``), trained for the
same number of steps by Adam and by PSGD-Kron (gradient-whitening curvature, so a plain
``loss.backward(); opt.step()``; ``--optimizers`` chooses among these, ``psgd-lra`` and ``psgd-kron-hvp``,
which steps with a closure), all on :class:`genlib.train.Engine` (``--precision``, ``--compile``,
``--compile-optimizers``, ``torchrun``). Prints held-out ELBO and importance-weighted log p(x) per optimizer
and saves a sample grid and loss curves next to ``results.json``.

    python -m recipes.vae_optimizers            # ~1 minute on a CPU
    python -m recipes.vae_optimizers --help
    torchrun --nproc-per-node 2 -m recipes.vae_optimizers   # DDP: each process trains on half of each batch
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
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
from genlib.likelihoods import Bernoulli
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.optim import LRA, ExponentialDecaySchedule, Kron
from genlib.train.batches import StepBatches, step_loader
from genlib.train.distributed import finish_distributed, init_distributed
from genlib.train.engine import Engine
from genlib.utils import default_device, seed_everything, write_json
from genlib.viz import save_image_grid, save_loss_curves


@dataclass
class Config:
    data_dir: str | None = None  # the data root or the folder holding mnist_4k.npz; None = sklearn's digits
    latent_dim: int = 8
    hidden: tuple[int, ...] = (256, 256)
    steps: int = 400
    batch_size: int = 128
    n_test: int = 297
    seed: int = 0
    optimizers: tuple[str, ...] = ("adam", "psgd-kron")  # "psgd-lra", "psgd-kron-hvp" also available
    out: str = "runs/vae_optimizers"
    device: str = field(default_factory=lambda: str(default_device()))
    precision: str = "fp32"
    compile: bool = False
    compile_optimizers: bool = False
    num_workers: int = 0


# PSGD refits its preconditioner every step at first, then on ~10% of steps (the papers' schedule): the
# non-refit steps cost little more than SGD.
def _refit() -> ExponentialDecaySchedule:
    return ExponentialDecaySchedule(start=1.0, end=0.1, decay_steps=100)


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    # inverse-free QEQ coordinates, one diagonal factor per matrix: ahead of tuned Adam at equal CPU time on
    # this VAE (benchmarks/README.md, "Optimizers at equal CPU time, third run")
    "psgd-kron": lambda params: Kron(params, lr=1e-3, momentum=0.9, coords="QEQ", memory_save_mode="one_diag",
                                     update_probability=_refit()),
    "psgd-lra": lambda params: LRA(params, lr=1e-3, momentum=0.9, rank=10, update_probability=_refit()),
    # the papers' Newton type: exact Hessian-vector products, stepped with a closure; lr is a fraction of a
    # Newton step (PSGD's default for "hvp")
    "psgd-kron-hvp": lambda params: Kron(params, lr=1e-2, curvature="hvp", update_probability=_refit()),
}


def load_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) float images in [0, 1], split reproducibly by ``cfg.seed``."""
    if cfg.data_dir is None:
        images, _ = load_digits_sklearn()
    else:
        folder = find_data_folder(cfg.data_dir, "mnist_4k.npz", subdirs=("digits",))
        if folder is None:
            raise FileNotFoundError(f"--data-dir {cfg.data_dir} holds no mnist_4k.npz (looked in it and in "
                                    "its digits/ folder)")
        images, _ = load_mnist_npz(folder / "mnist_4k.npz")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    images = images[perm]
    return images[cfg.n_test :], images[: cfg.n_test]


def build_vae(cfg: Config, image_shape: tuple[int, ...]) -> VAE:
    likelihood = Bernoulli()
    encoder = MLPEncoder(image_shape, cfg.latent_dim, hidden=cfg.hidden)
    decoder = MLPDecoder(cfg.latent_dim, image_shape, n_params=likelihood.n_params, hidden=cfg.hidden[::-1])
    return VAE(encoder, decoder, likelihood)


def train(cfg: Config, name: str, train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[VAE, dict]:
    seed_everything(cfg.seed)  # same initial weights and batches for every optimizer
    vae = build_vae(cfg, tuple(train_x.shape[1:]))
    opt = OPTIMIZERS[name](vae.parameters())

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        # closure optimizers ("hvp") re-evaluate it; "finite_diff" restores the RNG, so the noise repeats
        loss = vae.elbo(batch["x"]).loss
        return loss, {"train_loss": loss}

    engine = Engine(vae, opt, loss_fn, device=torch.device(cfg.device), precision=cfg.precision,
                    compile=cfg.compile, compile_optimizers=cfg.compile_optimizers, desc=name)
    batches = StepBatches({"x": train_x}, cfg.batch_size, seed=cfg.seed, **engine.shard)
    start = time.perf_counter()
    history = engine.fit(lambda a, b: step_loader(batches, a, b, num_workers=cfg.num_workers), cfg.steps,
                         total_name="--steps", log_every=20)
    seconds = time.perf_counter() - start
    vae.eval()
    test_x = test_x.to(engine.device)
    with torch.no_grad():
        test_elbo = vae.elbo(test_x).elbo.mean().item()
    test_logpx = vae.log_likelihood(test_x, n_importance=200).mean().item()
    curve = {"step": history["iter"], "train_loss": history["train_loss"]}
    return vae, {"history": curve, "test_elbo": test_elbo, "test_log_px": test_logpx, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument(
        "--data-dir", default=None, help="mnist_4k.npz (default: sklearn digits): " + DATA_DIR_HELP
    )
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--seed", type=int_at_least(0), default=Config.seed)
    parser.add_argument("--out", default=Config.out)
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--optimizers", nargs="+", choices=tuple(OPTIMIZERS), default=list(Config.optimizers),
                        help=f"trained one after the other on the same weights and batches (default: "
                        f"{' '.join(Config.optimizers)})")
    parser.add_argument("--quick", action="store_true", help="smoke config: 100 steps")
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    if len(set(args.optimizers)) < len(args.optimizers):
        parser.error(f"--optimizers names each optimizer once, got {' '.join(args.optimizers)}")
    engine = engine_options(parser, args, args.optimizers)
    if args.steps <= 0:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    steps = 100 if args.quick else args.steps
    if args.data_dir is not None and find_data_folder(args.data_dir, "mnist_4k.npz", ("digits",)) is None:
        parser.error(f"--data-dir {args.data_dir} holds no mnist_4k.npz (looked in it and its digits/)")
    cfg = Config(data_dir=args.data_dir, steps=steps, seed=args.seed, optimizers=tuple(args.optimizers),
                 out=args.out, **engine)
    ctx, device = init_distributed(args.device)  # under torchrun: one process per GPU / CPU share
    cfg.device = str(device)
    out = Path(cfg.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)

    train_x, test_x = load_data(cfg)
    shape = tuple(train_x.shape[1:])
    print(
        f"data: {len(train_x)} train / {len(test_x)} test images of shape {shape}; "
        f"device {cfg.device}; {cfg.steps} steps of batch {cfg.batch_size}"
    )
    results, curves = {}, {}
    for name in cfg.optimizers:
        vae, res = train(cfg, name, train_x, test_x)
        results[name] = res  # with its loss curve ("history"), which assets/make_figures.py draws
        curves[f"{name} train loss"] = res["history"]["train_loss"]
        curves.setdefault("step", res["history"]["step"])
        if ctx.is_main:
            samples = vae.sample(64).cpu()
            save_image_grid(samples, out / f"samples_{name}.png", nrow=8, title=f"VAE samples ({name})")
    if not finish_distributed():  # rank 0 alone reports
        return 0

    print(f"\n{'optimizer':<12}{'test ELBO':>12}{'test log p(x)':>16}{'seconds':>10}")
    for name, r in results.items():
        print(f"{name:<12}{r['test_elbo']:>12.2f}{r['test_log_px']:>16.2f}{r['seconds']:>10.1f}")
    save_loss_curves(curves, out / "loss_curves.png")
    write_json(out / "results.json", {"config": asdict(cfg), "results": results})
    print(f"\nsaved {out / 'results.json'}, loss_curves.png and samples_*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_recipe(main))
