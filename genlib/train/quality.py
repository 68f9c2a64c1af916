"""Class-conditional draws of a latent-EBM VAE, judged by a classifier the generator did not train.

The model's own latent classifier scores its draws far above what an independent judge sees (it shaped
them), so every image recipe reports :func:`evaluate_generation`: draw ``L`` per class from ``p(z|y)``,
decode, and score them with a :class:`~genlib.metrics.images.ReferenceClassifier` (label agreement overall
and per class, Fréchet distance in its features beside the VAE's reconstructions and a second real set),
unfiltered and after the entropy filter of an :class:`~genlib.train.augment.AugmentConfig`.

The judge's Fréchet distance alone can be gamed: latents far outside the region the encoder uses decode to
sharp, prototypical digits that sit closer to real ones in the judge's features than the VAE's own blurry
reconstructions. So the report also gives the Fréchet distance *in latent space* between the draws and the
aggregate posterior ``q(z) = mean_x q(z|x)`` of the real images, the distribution the EBM prior is trained to
match (beside the same distance for a second real set): draws that leave that region show up there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from genlib.metrics.fad import frechet_distance, gaussian_fit
from genlib.metrics.images import (
    ReferenceClassifier,
    SampleQuality,
    sample_quality,
    train_reference_classifier,
)
from genlib.models.vae import VAE
from genlib.select.entropy import confidence_scores
from genlib.train.augment import AugmentConfig, Generated, Selection, generate_labelled, select_synthetic
from genlib.utils import check_int

__all__ = [
    "GenerationReport",
    "aggregate_posterior_samples",
    "evaluate_generation",
    "latent_frechet_distance",
    "reconstruct_images",
    "fit_reference_classifier",
    "judge_generation",
    "save_generation_grids",
]


@dataclass
class GenerationReport:
    """Scores of one batch of class-conditional draws.

    ``unfiltered``: every draw; ``filtered``: the draws the entropy filter kept (``None`` without a filter);
    ``kept``: how many it kept; ``self_agreement``: the model's own latent classifier on its draws (overstates
    quality: shown for contrast); ``seconds_draw``: wall-clock of the Langevin chains and decoding;
    ``latent_fd``: Fréchet distance between the draws' latents and ``z ~ q(z|x)`` of the real images (module
    docstring), ``latent_fd_real``: the same for the second real set (``None`` without one).
    """

    unfiltered: SampleQuality
    filtered: SampleQuality | None
    kept: int
    self_agreement: float
    seconds_draw: float
    latent_fd: float
    latent_fd_real: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready data."""
        return {
            "unfiltered": self.unfiltered.to_dict(),
            "filtered": None if self.filtered is None else self.filtered.to_dict(),
            "kept": self.kept,
            "self_agreement": self.self_agreement,
            "seconds_draw": self.seconds_draw,
            "latent_fd": self.latent_fd,
            "latent_fd_real": self.latent_fd_real,
        }

    def format(self) -> str:
        """Human-readable lines for a recipe's output."""
        lines = ["class-conditional draws, judged by the reference classifier:", "unfiltered " +
                 self.unfiltered.format().replace("\n", "\n  ")]
        if self.filtered is not None:
            lines.append(f"after the entropy filter ({self.kept} kept) " +
                         self.filtered.format().replace("\n", "\n  "))
        real = "" if self.latent_fd_real is None else f" (second real set: {self.latent_fd_real:.2f})"
        lines.append(f"latent Fréchet distance of the draws to q(z) of real images {self.latent_fd:.2f}"
                     f"{real}")
        lines.append(f"(the model's own latent classifier agrees with {100 * self.self_agreement:.1f}% of "
                     f"the unfiltered draws; draws took {self.seconds_draw:.1f} s)")
        return "\n".join(lines)


@torch.no_grad()
def reconstruct_images(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Mean of ``p(x|z = mu(x))`` clamped to [0, 1], on the CPU (eval mode, restored)."""
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    try:
        out = [vae.decode(vae.encode(x[s : s + batch_size].to(device))[0]).mean.clamp(0, 1).cpu()
               for s in range(0, x.shape[0], batch_size)]
    finally:
        vae.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def aggregate_posterior_samples(
    vae: VAE, x: torch.Tensor, generator: torch.Generator | None = None, batch_size: int = 500
) -> torch.Tensor:
    """One ``z ~ q(z|x)`` per image, on the CPU: draws from the aggregate posterior ``q(z)`` (eval mode)."""
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    try:
        out = []
        for s in range(0, x.shape[0], batch_size):
            mu, logvar = (t.cpu() for t in vae.encode(x[s : s + batch_size].to(device)))
            out.append(mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, dtype=mu.dtype))
    finally:
        vae.train(was_training)
    return torch.cat(out)


def latent_frechet_distance(z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of latents ``(N, d)``, ``N >= 2`` each."""
    return frechet_distance(*gaussian_fit(z_a), *gaussian_fit(z_b))


def evaluate_generation(
    vae: VAE,
    classifier: ReferenceClassifier,
    x_real: torch.Tensor,
    *,
    samples_per_class: int = 100,
    sampler: Any | None = None,
    generator: torch.Generator | None = None,
    x_real_other: torch.Tensor | None = None,
    x_to_reconstruct: torch.Tensor | None = None,
    filter_config: AugmentConfig | None = None,
) -> tuple[GenerationReport, Generated, Selection | None]:
    """Draw ``samples_per_class`` per class and judge them with ``classifier``.

    Args:
        vae: a VAE with a :class:`~genlib.priors.LatentEBMPrior`.
        classifier: the judge, trained on real labelled images (:func:`~genlib.metrics.images.
            train_reference_classifier`), never by the generator.
        x_real: held-out real images, the reference set of the Fréchet distances.
        samples_per_class: ``L``.
        sampler: the Langevin sampler (default: the prior's own, its generation settings).
        generator: random source of the chains.
        x_real_other: a second real set, disjoint from ``x_real``: the real-vs-real reference distance.
        x_to_reconstruct: real images (not ``x_real``) whose reconstructions give the decoder's reference
            distance.
        filter_config: its entropy filter is applied to the draws (its coreset is not: a coreset is a
            weighted subset for training, not a quality filter); ``None`` scores the draws unfiltered only.

    Returns ``(report, generated, selection)``; images are clamped to [0, 1] before scoring.
    """
    check_int(samples_per_class, "samples_per_class")
    t0 = time.perf_counter()
    generated = generate_labelled(vae, samples_per_class, sampler=sampler, generator=generator)
    seconds = time.perf_counter() - t0
    x = generated.x.clamp(0, 1)
    recon = None if x_to_reconstruct is None else reconstruct_images(vae, x_to_reconstruct)
    unfiltered = sample_quality(classifier, x, generated.y, x_real, x_reconstructions=recon,
                                x_real_other=x_real_other)
    filtered, selection, kept = None, None, x.shape[0]
    if filter_config is not None and filter_config.entropy is not None:
        selection = select_synthetic(generated, replace(filter_config, coreset=None))
        kept = selection.y.numel()
        if kept >= 2:
            filtered = sample_quality(classifier, x[selection.indices], selection.y, x_real,
                                      x_reconstructions=recon, x_real_other=x_real_other)
    self_agreement = float((generated.logits.argmax(1) == generated.y).float().mean())
    g = torch.Generator().manual_seed(0)  # the same posterior draws for every model variant
    z_real = aggregate_posterior_samples(vae, x_real, generator=g)
    latent_fd = latent_frechet_distance(generated.z.cpu(), z_real)
    latent_fd_real = None
    if x_real_other is not None:
        z_other = aggregate_posterior_samples(vae, x_real_other, generator=g)
        latent_fd_real = latent_frechet_distance(z_other, z_real)
    report = GenerationReport(unfiltered, filtered, kept, self_agreement, seconds, latent_fd, latent_fd_real)
    return report, generated, selection


def fit_reference_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_other: int = 1000,
    epochs: int = 8,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[ReferenceClassifier, torch.Tensor]:
    """Train the judge on labelled real images, holding out a random second real set.

    ``(x, y)`` are the real images whose labels are known (labels ``< 0``, unknown, are skipped). Up to
    ``n_other`` of them (at most a third) are held out at random, the real-vs-real and reconstruction
    reference of :func:`evaluate_generation`; returns ``(classifier, held_out_indices)`` (into ``x``).
    """
    check_int(n_other, "n_other", 0)
    known = torch.nonzero(y >= 0).squeeze(1)
    perm = known[torch.randperm(known.numel(), generator=torch.Generator().manual_seed(seed))]
    n_out = min(n_other, known.numel() // 3)
    other, train = perm[:n_out], perm[n_out:]
    max_shift = max(1, min(x.shape[-2:]) // 14)  # ±1 px on 8x8 digits, ±2 on 28x28 / 32x32
    judge = train_reference_classifier(x[train], y[train], int(y.max()) + 1, epochs=epochs, seed=seed,
                                       device=device, max_shift=max_shift)
    return judge, other


def judge_generation(
    vae: VAE,
    x_known: torch.Tensor,
    y_known: torch.Tensor,
    x_real: torch.Tensor,
    folder: str | os.PathLike,
    *,
    samples_per_class: int = 100,
    n_reference: int | None = None,
    epochs: int = 8,
    seed: int = 0,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
    filter_config: AugmentConfig | None = None,
) -> tuple[GenerationReport, Generated, ReferenceClassifier]:
    """What an image recipe reports: fit the judge on the real images whose labels are known, save it as
    ``folder/reference_classifier.pt``, and judge ``samples_per_class`` draws per class against ``x_real``.

    ``n_reference`` known images (default ``len(x_real)``) are held out of the judge's training as the second
    real set and the images whose reconstructions are the decoder's reference
    (:func:`fit_reference_classifier`, :func:`evaluate_generation`). Returns ``(report, generated, judge)``.
    """
    n_other = x_real.shape[0] if n_reference is None else n_reference
    judge, other = fit_reference_classifier(x_known, y_known, n_other=n_other, epochs=epochs, seed=seed,
                                            device=device)
    judge.save(Path(folder) / "reference_classifier.pt")
    report, generated, _ = evaluate_generation(
        vae, judge, x_real, samples_per_class=samples_per_class, generator=generator,
        x_real_other=x_known[other], x_to_reconstruct=x_known[other], filter_config=filter_config)
    return report, generated, judge


def save_generation_grids(
    generated: Generated, folder: str | os.PathLike, per_class: int = 12, prefix: str = "samples"
) -> tuple[Path, Path]:
    """``{prefix}.png``: the first ``per_class`` draws of each class as drawn (unfiltered, unsorted), and
    ``{prefix}_by_entropy.png``: per class from most to least confident (latent classifier's entropy)."""
    from genlib.viz import save_entropy_grid, save_image_grid

    if not isinstance(generated, Generated):
        raise ValueError(f"generated must be a genlib.train.Generated (from generate_labelled), got "
                         f"{type(generated).__name__}")
    check_int(per_class, "per_class")
    folder = Path(folder)
    rows = torch.cat([torch.nonzero(generated.y == k).squeeze(1)[:per_class] for k in generated.y.unique()])
    plain = save_image_grid(generated.x[rows].clamp(0, 1), folder / f"{prefix}.png", nrow=per_class,
                            labels=generated.y[rows].tolist(),
                            title="class-conditional draws, unfiltered; label = class drawn for")
    entropy = confidence_scores(generated.logits, "h2")
    sorted_ = save_entropy_grid(generated.x.clamp(0, 1), generated.y, entropy,
                                folder / f"{prefix}_by_entropy.png")
    return plain, sorted_
