"""genlib's Bernoulli MLP VAE vs the same model trained with pyro SVI (Trace_ELBO), from one run.

Same networks (genlib's MLPEncoder / MLPDecoder, identical initial weights), same data order, optimizer
(Adam), learning rate, batch size and number of epochs, on the 4000 real MNIST digits of
``../shared/data/digits/mnist_4k.npz`` (statically binarised at 0.5). Reported: training throughput, the
last epoch's mean training ELBO as each library estimates it, and the final ELBO of both trained models
under ONE estimator (genlib's analytic-KL ELBO, averaged over draws) so the numbers are comparable.
Speed is reported as a ratio (ours / pyro), ELBOs as a difference in nats (> 0: genlib's is higher).

    python -m benchmarks.vae_vs_pyro [--epochs 5] [--batch-size 128] [--lr 1e-3] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as pdist
import torch
from pyro.infer import SVI, Trace_ELBO

from genlib.likelihoods import Bernoulli
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.utils import default_device, seed_everything

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "digits" / "mnist_4k.npz"


def load_digits(path: Path, device: torch.device) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"MNIST subset not found: {path} (expected mnist_4k.npz, key 'images')")
    images = np.load(path)["images"]
    return (torch.from_numpy(images).float().div(255) > 0.5).float().flatten(1).to(device)


def make_nets(args: argparse.Namespace, device: torch.device) -> tuple[MLPEncoder, MLPDecoder]:
    hidden = tuple(args.hidden)
    enc = MLPEncoder((784,), args.latent_dim, hidden, activation=args.activation)
    dec = MLPDecoder(args.latent_dim, (784,), 1, hidden, activation=args.activation)
    return enc.to(device), dec.to(device)


def batches(n: int, batch_size: int, epoch: int, seed: int, device: torch.device):
    # The same shuffles for both libraries.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).to(device)
    return perm.split(batch_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_genlib(vae: VAE, x: torch.Tensor, args, device, epochs: int | None = None) -> tuple[float, float]:
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    sync(device)
    start = time.perf_counter()
    for epoch in range(args.epochs if epochs is None else epochs):
        total = torch.zeros((), device=device)
        for idx in batches(len(x), args.batch_size, epoch, args.seed, device):
            terms = vae.elbo(x[idx])
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            opt.step()
            total += terms.elbo.detach().sum()
    sync(device)
    return time.perf_counter() - start, total.item() / len(x)


def train_pyro(
    enc: MLPEncoder, dec: MLPDecoder, x: torch.Tensor, args, device, epochs=None
) -> tuple[float, float]:
    latent = args.latent_dim

    def model(xb):
        pyro.module("decoder", dec)
        with pyro.plate("data", xb.shape[0]):
            loc = torch.zeros(xb.shape[0], latent, device=xb.device)
            z = pyro.sample("z", pdist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("x", pdist.Bernoulli(logits=dec(z)[:, 0]).to_event(1), obs=xb)

    def guide(xb):
        pyro.module("encoder", enc)
        mu, logvar = enc(xb)
        with pyro.plate("data", xb.shape[0]):
            pyro.sample("z", pdist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), loss=Trace_ELBO())
    sync(device)
    start = time.perf_counter()
    for epoch in range(args.epochs if epochs is None else epochs):
        total = 0.0
        for idx in batches(len(x), args.batch_size, epoch, args.seed, device):
            total += svi.step(x[idx])  # returns the batch's summed negative ELBO as a float
    sync(device)
    return time.perf_counter() - start, -total / len(x)


@torch.no_grad()
def final_elbo(vae: VAE, x: torch.Tensor, draws: int = 10) -> float:
    torch.manual_seed(1234)
    return float(np.mean([vae.elbo(x).elbo.mean().item() for _ in range(draws)]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, nargs="+", default=[400])
    p.add_argument("--activation", default="softplus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "latent_dim"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    device = torch.device(args.device) if args.device else default_device()
    x = load_digits(args.data, device)

    seed_everything(args.seed)
    enc, dec = make_nets(args, device)
    init = (enc.state_dict(), dec.state_dict())
    ours = VAE(enc, dec, Bernoulli()).to(device)
    enc_p, dec_p = make_nets(args, device)
    enc_p.load_state_dict(init[0])  # identical starting weights
    dec_p.load_state_dict(init[1])

    # One untimed epoch each on throw-away copies: kernel / allocator / cuBLAS start-up is paid by neither.
    warm = copy.deepcopy(ours)
    train_genlib(warm, x, args, device, epochs=1)
    train_pyro(copy.deepcopy(enc_p), copy.deepcopy(dec_p), x, args, device, epochs=1)
    del warm

    seed_everything(args.seed + 1)
    t_ours, train_ours = train_genlib(ours, x, args, device)
    seed_everything(args.seed + 1)
    t_pyro, train_pyro_elbo = train_pyro(enc_p, dec_p, x, args, device)
    theirs = VAE(enc_p, dec_p, Bernoulli()).to(device)
    ours.eval(), theirs.eval()
    eval_ours, eval_pyro = final_elbo(ours, x), final_elbo(theirs, x)

    n = len(x) * args.epochs
    # Speed rows compare by ratio; ELBO rows (negative nats) by difference: > 0 means genlib's is higher.
    rows = [
        ("examples / s (train)", n / t_ours, n / t_pyro, f"x{n / t_ours / (n / t_pyro):.3f}"),
        ("train time (s)", t_ours, t_pyro, f"x{t_ours / t_pyro:.3f}"),
        (
            "last-epoch train ELBO (own estimator)",
            train_ours,
            train_pyro_elbo,
            f"{train_ours - train_pyro_elbo:+.2f}",
        ),
        ("final ELBO (same estimator, nats)", eval_ours, eval_pyro, f"{eval_ours - eval_pyro:+.2f}"),
    ]
    print(
        f"VAE vs pyro SVI: {len(x)} binarised MNIST digits, {args.epochs} epochs, batch {args.batch_size}, "
        f"Adam lr {args.lr}, MLP 784-{'-'.join(map(str, args.hidden))}-{args.latent_dim} {args.activation}, "
        f"device {device}, torch threads {torch.get_num_threads()}"
    )
    print(f"| {'metric':<40} | {'genlib':>10} | {'pyro':>10} | {'ours vs pyro':>12} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 14}|")
    for name, a, b, cmp in rows:
        print(f"| {name:<40} | {a:>10.2f} | {b:>10.2f} | {cmp:>12} |")


if __name__ == "__main__":
    main()
