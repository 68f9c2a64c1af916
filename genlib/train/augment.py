"""Synthetic augmentation from a latent-EBM VAE (dissertation Algorithm 2, steps 7-8).

A trained :class:`~genlib.models.VAE` with a :class:`~genlib.priors.LatentEBMPrior` can draw unlimited
labelled data, but naive augmentation hurts: many draws are ambiguous or off-class. The pipeline::

    y (L per class) -> z ~ p(z|y)   short-run Langevin (plain or PSGD-preconditioned)   generate_labelled
                    -> sample_logits = F(z)           the latent classifier at the draw (eq. 5.14)
                    -> x~ = mean of p(x|z)
                    -> z^ = mu(x~), logits = F(z^)   the latent classifier on the re-encoded sample
    logits, y       -> EntropyFilter (h2 / h1 of F(z) or F(z^); keep a fraction or a threshold;
                       optionally the argmax must agree with y)
                    -> coreset: Craig / AdaCore / Random on softmax - onehot(y),    select_synthetic
                       per class, 10 % of the filtered draws
                    -> (x~, y, weights): weights = coreset cluster sizes

:func:`pseudo_label` does the same filtering for unlabelled *real* data (labels = argmax). The semi-
supervised trainer re-runs this every ``reselect_every`` iterations from ``start_iter`` on and adds the
weighted cross-entropy of the selection to its loss; ``recipes/sample_synthetic.py`` writes a selection to a
:mod:`genlib.data.synthetic` file for any downstream classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from genlib.models.vae import VAE
from genlib.priors.ebm import LatentEBMPrior
from genlib.select import AdaCore, Craig, EntropyFilter, PseudoLabeler, RandomSelector
from genlib.select.entropy import confidence_scores
from genlib.utils import check_int, check_positive

__all__ = [
    "AugmentConfig",
    "Generated",
    "Selection",
    "generate_labelled",
    "latent_logits",
    "select_synthetic",
    "pseudo_label",
    "augment_config_from",
]

Coreset = Literal["craig", "adacore", "random"]
EntropyOn = Literal["sample", "decoded"]


def _fraction(value: Any, name: str) -> float:
    v = check_positive(value, name)
    if v > 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return v


@dataclass
class AugmentConfig:
    """What to draw, how to filter and select it, and how the trainer uses it.

    Attributes:
        samples_per_class: ``L``, class-conditional draws per class at each (re)selection.
        entropy: confidence score of :class:`~genlib.select.EntropyFilter` (``"h2"`` entropy, ``"h1"``
            logsumexp), or ``None`` for no filter (the "naive" augmentation of Table 5.1).
        entropy_on: which logits the filter scores: ``"sample"``, ``F(z)`` at the Langevin draw (eq. 5.14,
            the paper's), or ``"decoded"``, ``F(mu(x~))`` on the re-encoded image (also catches draws the
            decoder renders as another class).
        entropy_keep: keep this fraction of the draws, the most confident (or give ``entropy_threshold``);
            ``1.0`` keeps every draw unless ``require_agreement`` drops some.
        entropy_per_class: apply ``entropy_keep`` within each class (every class keeps its most confident
            share, so none vanishes from the selection) instead of over all draws.
        entropy_threshold: keep draws with ``h2 <= threshold`` (``h1 >= threshold``) instead (the paper:
            ``h2 < 1e-6``).
        require_agreement: also drop draws whose scored logits' argmax disagrees with the class they were
            drawn for (a filter step only: ignored when ``entropy`` is ``None``; not in the paper).
        coreset: ``"craig"``, ``"adacore"``, ``"random"``, or ``None`` to keep every filtered draw.
        coreset_fraction: share of the filtered draws the coreset keeps (per class).
        pseudo_label_threshold: when set, unlabelled real data whose latent-classifier entropy (h2, nats)
            is at most this join the selection with their argmax label (weight 1): "PL" in Table 5.1.
        loss_weight: coefficient of the selection's weighted cross-entropy, relative to the labelled one.
        start_iter: ``T_a``, the trainer's first selection happens after this many iterations.
        reselect_every: ``R``, the trainer draws and selects anew every ``R`` iterations after that.
        batch_size: synthetic examples per training iteration.
    """

    samples_per_class: int = 100
    entropy: Literal["h2", "h1"] | None = "h2"
    entropy_on: EntropyOn = "decoded"
    entropy_keep: float | None = 0.5
    entropy_per_class: bool = False
    entropy_threshold: float | None = None
    require_agreement: bool = False
    coreset: Coreset | None = "craig"
    coreset_fraction: float = 0.1
    pseudo_label_threshold: float | None = None
    loss_weight: float = 0.1
    start_iter: int = 0
    reselect_every: int = 1000
    batch_size: int = 100

    def __post_init__(self) -> None:
        check_int(self.samples_per_class, "samples_per_class")
        if self.entropy not in ("h2", "h1", None):
            raise ValueError(f"entropy must be 'h2', 'h1' or None, got {self.entropy!r}")
        if self.entropy_on not in ("sample", "decoded"):
            raise ValueError(f"entropy_on must be 'sample' or 'decoded', got {self.entropy_on!r}")
        if self.entropy is not None and (self.entropy_keep is None) == (self.entropy_threshold is None):
            raise ValueError("give exactly one of entropy_keep (in (0, 1]) or entropy_threshold")
        if self.entropy_keep is not None:
            _fraction(self.entropy_keep, "entropy_keep")
        if self.coreset not in ("craig", "adacore", "random", None):
            raise ValueError(f"coreset must be 'craig', 'adacore', 'random' or None, got {self.coreset!r}")
        _fraction(self.coreset_fraction, "coreset_fraction")
        if self.pseudo_label_threshold is not None:
            check_positive(self.pseudo_label_threshold, "pseudo_label_threshold")
        check_positive(self.loss_weight, "loss_weight", allow_zero=True)
        check_int(self.start_iter, "start_iter", 0)
        check_int(self.reselect_every, "reselect_every")
        check_int(self.batch_size, "batch_size")

    def describe(self) -> str:
        """A short name of the variant, e.g. ``"H&CRAIG&PL"`` (``"naive"`` without filter or coreset)."""
        parts = []
        if self.entropy is not None:
            parts.append("H" if self.entropy == "h2" else "H1")
        if self.coreset is not None:
            parts.append({"craig": "CRAIG", "adacore": "AdaCore", "random": "Random"}[self.coreset])
        if self.pseudo_label_threshold is not None:
            parts.append("PL")
        return "&".join(parts) or "naive"


@dataclass
class Generated:
    """Class-conditional draws: images ``x`` (the decoder's mean), intended classes ``y``, latents ``z``,
    the latent classifier's ``logits`` on the re-encoded images (``F(mu(x))``) and at the draws themselves
    (``sample_logits`` = ``F(z)``)."""

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    logits: torch.Tensor
    sample_logits: torch.Tensor


@dataclass
class Selection:
    """The kept examples ``x``, labels ``y``, loss ``weights``, and where they came from.

    ``indices`` index the :class:`Generated` draws (pseudo-labelled real examples are appended after them
    and not indexed); ``entropy`` is each kept example's h2 entropy in nats; ``counts`` how many examples
    survived each stage (``generated``, ``filtered``, ``selected``, ``pseudo_labeled``).
    """

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor
    entropy: torch.Tensor
    counts: dict[str, int]


def _ebm_vae(vae: Any) -> VAE:
    if not isinstance(vae, VAE) or not isinstance(vae.prior, LatentEBMPrior):
        got = type(vae.prior).__name__ if isinstance(vae, VAE) else type(vae).__name__
        raise ValueError(f"vae must be a genlib VAE with a LatentEBMPrior, got {got}")
    return vae


@torch.no_grad()
def latent_logits(
    vae: VAE,
    x: torch.Tensor,
    batch_size: int = 1000,
    *,
    n_samples: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The latent classifier's logits ``(N, K)`` on the CPU (eval mode, restored).

    ``n_samples = 0``: ``F(mu(x))``, the classifier at the posterior mean. ``n_samples = S > 0``: eq. 5.8,
    ``log E_q(z|x) softmax F(z)`` estimated from ``S`` reparameterised draws (log-probabilities, usable as
    logits); ``generator`` makes the draws reproducible (default: a fixed seed, so evaluating twice gives
    the same answer and the global RNG is left alone).
    """
    vae = _ebm_vae(vae)
    check_int(n_samples, "n_samples", 0)
    device = next(vae.parameters()).device
    if n_samples and generator is None:
        generator = torch.Generator().manual_seed(0)
    was_training = vae.training
    vae.eval()
    out = []
    try:
        for s in range(0, x.shape[0], batch_size):
            mu, logvar = vae.encode(x[s : s + batch_size].to(device))
            if not n_samples:
                out.append(vae.prior.logits(mu).cpu())
                continue
            eps = torch.randn((n_samples, *mu.shape), generator=generator, dtype=mu.dtype).to(device)
            z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, d)
            log_p = vae.prior.logits(z.flatten(0, 1)).log_softmax(-1).unflatten(0, (n_samples, -1))
            out.append((log_p.logsumexp(0) - math.log(n_samples)).cpu())
    finally:
        vae.train(was_training)
    return torch.cat(out) if out else torch.empty(0, vae.prior.n_classes)


def generate_labelled(
    vae: VAE,
    samples_per_class: int,
    *,
    sampler: Any | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
) -> Generated:
    """Draw ``samples_per_class`` examples of every class: ``z ~ p(z|y)``, ``x~`` = mean of ``p(x|z)``.

    Args:
        vae: a VAE whose prior is a :class:`~genlib.priors.LatentEBMPrior`.
        samples_per_class: ``L``.
        sampler: the Langevin sampler (default the prior's own, e.g. a
            :class:`~genlib.sampling.PreconditionedLangevin` assigned to ``vae.prior.sampler``).
        generator: random source of the chains (reproducible draws).
        batch_size: chains run together.

    Returns a :class:`Generated` on the CPU, classes in increasing order, ``L`` rows each.
    """
    vae = _ebm_vae(vae)
    check_int(samples_per_class, "samples_per_class")
    check_int(batch_size, "batch_size")
    prior = vae.prior
    device = next(vae.parameters()).device
    y = torch.arange(prior.n_classes).repeat_interleave(samples_per_class)
    was_training = vae.training
    vae.eval()
    xs, zs = [], []
    try:
        for s in range(0, y.numel(), batch_size):
            yb = y[s : s + batch_size].to(device)
            z = prior.sample(yb.numel(), y=yb, sampler=sampler, generator=generator)
            with torch.no_grad():
                xs.append(vae.decode(z).mean.cpu())
            zs.append(z.cpu())
    finally:
        vae.train(was_training)
    x, z = torch.cat(xs), torch.cat(zs)
    with torch.no_grad():
        sample_logits = torch.cat([prior.logits(z[s : s + batch_size].to(device)).cpu()
                                   for s in range(0, z.shape[0], batch_size)])
    return Generated(x=x, y=y, z=z, logits=latent_logits(vae, x, batch_size), sample_logits=sample_logits)


def _coreset(name: Coreset, fraction: float, seed: int) -> Craig | AdaCore | RandomSelector:
    if name == "craig":
        return Craig(fraction)
    if name == "adacore":
        # fresh draws every selection: no running averages across them; exact Hessian diagonal of the CE
        return AdaCore(fraction, hessian="exact")
    return RandomSelector(fraction, seed=seed)


def select_synthetic(generated: Generated, config: AugmentConfig, *, seed: int = 0) -> Selection:
    """Entropy-filter and coreset-select generated draws as ``config`` says (see the module docstring).

    Coreset weights are cluster sizes (they sum to each class's number of filtered draws); without a
    coreset every kept draw has weight 1.
    """
    if not isinstance(config, AugmentConfig):
        raise ValueError(f"config must be an AugmentConfig, got {type(config).__name__}")
    # The coreset works on the training gradient's logits, those of the re-encoded draw (F(mu(x~))).
    logits, y = generated.logits, generated.y
    scored = generated.sample_logits if config.entropy_on == "sample" else logits
    n = y.numel()
    counts = {"generated": n}
    keep = torch.arange(n)
    if config.entropy is not None:
        filt = EntropyFilter(config.entropy, threshold=config.entropy_threshold,
                             keep_fraction=config.entropy_keep, require_agreement=config.require_agreement)
        if config.entropy_per_class and config.entropy_keep is not None:
            rows = [torch.nonzero(y == k).squeeze(1) for k in y.unique()]
            keep = torch.sort(torch.cat([r[filt.fit_select(scored[r], y[r])[0]] for r in rows])).values
        else:
            keep, _ = filt.fit_select(scored, y)
    counts["filtered"] = keep.numel()
    weights = torch.ones(keep.numel())
    if config.coreset is not None and keep.numel() > 0:
        selector = _coreset(config.coreset, config.coreset_fraction, seed)
        rows, weights = selector.fit_select(logits[keep], y[keep])
        keep = keep[rows.cpu()]
        weights = weights.cpu().float()
    counts["selected"] = keep.numel()
    counts["pseudo_labeled"] = 0
    return Selection(
        x=generated.x[keep], y=y[keep], weights=weights, indices=keep,
        entropy=confidence_scores(scored[keep], "h2"), counts=counts,
    )


def pseudo_label(
    vae: VAE, x_unlabeled: torch.Tensor, threshold: float, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unlabelled real examples whose latent-classifier entropy is ``<= threshold`` nats:
    ``(indices, labels, entropy)`` (labels = argmax of ``F(mu(x))``)."""
    check_positive(threshold, "threshold")
    logits = latent_logits(vae, x_unlabeled, batch_size)
    labeler = PseudoLabeler(threshold=threshold)  # scores h2 entropy: reuse it for the kept rows
    idx, labels, _ = labeler.fit_select(logits)
    return idx, labels, labeler.scores_[idx]


def augment_config_from(value: AugmentConfig | dict[str, Any] | None) -> AugmentConfig | None:
    """Accept an :class:`AugmentConfig`, its ``asdict`` form (configs read back from checkpoints), or None."""
    if value is None or isinstance(value, AugmentConfig):
        return value
    if isinstance(value, dict):
        return AugmentConfig(**value)
    raise ValueError(f"augment must be an AugmentConfig, a dict of its fields or None, got {value!r}")
