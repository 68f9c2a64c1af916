"""Semi-supervised learning with a latent EBM prior (symbol-vector coupling; dissertation Algorithm 2, 1-6).

One iteration of :class:`SemiSupervisedTrainer` (Pang & Wu, 2021)::

    x_u ~ unlabelled batch, (x_l, y_l) ~ labelled batch
    z+  ~ q(z|x_u)                                   reparameterised posterior samples
    z-  = short-run Langevin on p(z)                 T_LD steps (genlib.sampling), chains started at
                                                     N(0, I), at q(z|x_u) (Algorithm 2 step 2) or
                                                     persistent (config.negative_init)
    encoder / decoder:  minimise -ELBO(x_u)          reconstruction + KL(q || N(0, I)) - E_q logsumexp F(z)
    EBM score F:        minimise prior.ebm_loss(z+, z-)   (the maximum-likelihood gradient of the prior)
    both:               minimise w * CE(softmax F(z_l), y_l),  z_l ~ q(z|x_l)

``F`` gets no gradient from the ELBO's ``-logsumexp F(z)`` term: its learning signal is the EBM's
maximum-likelihood gradient plus the labels, as in the paper. The latent classifier is
``argmax softmax F(mu(x))``, or with ``classifier_samples = S`` the paper's eq. 5.8,
``argmax E_q(z|x) softmax F(z)`` from ``S`` posterior draws.

With ``config.augment`` (an :class:`~genlib.train.augment.AugmentConfig`; Algorithm 2, steps 7-8), after
``start_iter`` iterations and every ``reselect_every`` after that the trainer draws ``L`` samples per class
from its own prior, entropy-filters them, keeps a coreset (:func:`~genlib.train.augment.select_synthetic`)
and from then on adds ``class_weight * loss_weight *`` their weighted cross-entropy through ``p(y|z)``,
``z ~ q(z|x~)``, to every iteration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from genlib.models.vae import VAE
from genlib.priors.ebm import LatentEBMPrior
from genlib.sampling import LangevinSampler
from genlib.select import PseudoLabeler
from genlib.train.augment import (
    AugmentConfig,
    Selection,
    augment_config_from,
    generate_labelled,
    latent_logits,
    pseudo_label,
    select_synthetic,
)
from genlib.train.batches import StepBatches, _take, step_loader
from genlib.train.checkpoint import Checkpointer, normalize_settings
from genlib.train.classify import weighted_cross_entropy
from genlib.train.engine import PRECISIONS, Engine, needs_closure
from genlib.train.logger import MetricsLogger
from genlib.utils import check_int, check_positive, check_tensor, default_device, derive_seed

__all__ = ["SemiSupervisedConfig", "SemiSupervisedTrainer", "latent_accuracy"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
Images = torch.Tensor | Dataset  # unlabelled images: a tensor, or a map-style dataset streaming them


class _Chunks(Dataset):
    """Consecutive chunks of ``size`` examples of a dataset, each read in one call (a DataLoader over it
    reads a dataset in order with workers and pinned memory)."""

    def __init__(self, source: Dataset, size: int):
        self.source, self.size, self.n = source, size, len(source)

    def __len__(self) -> int:
        return -(-self.n // self.size)

    def __getitem__(self, i: int) -> Any:
        return _take(self.source, torch.arange(i * self.size, min((i + 1) * self.size, self.n)))


@dataclass
class SemiSupervisedConfig:
    """Hyper-parameters of :class:`SemiSupervisedTrainer` (defaults: the SVHN setting of Pang & Wu 2021).

    Attributes:
        n_iters: training iterations (one unlabelled + one labelled batch each).
        batch_size: unlabelled batch size.
        labeled_batch_size: labelled batch size (default ``batch_size``; capped at the number of labels).
        lr: learning rate of the encoder, decoder and likelihood parameters.
        ebm_lr: learning rate of the EBM score ``F``.
        langevin_steps: ``T_LD``, short-run Langevin steps for the prior samples ``z-``.
        langevin_step_size: Langevin step size (``s²/2`` in the paper's notation; 0.08 for ``s = 0.4``).
        negative_init: where the prior chains ``z-`` start: ``"noise"`` (``N(0, I)``, the short-run choice
            of Pang et al. 2020), ``"posterior"`` (a draw of ``q(z|x_u)`` for each unlabelled example,
            Algorithm 2 step 2), or ``"persistent"`` (a buffer of ``persistent_chains`` chains continued
            across iterations, ``persistent_reset`` of each batch restarted from ``N(0, I)``).
        persistent_chains: size of the persistent buffer.
        persistent_reset: share of each batch of persistent chains restarted from noise.
        classifier_samples: ``0``: the latent classifier is ``F(mu(x))``; ``S > 0``: eq. 5.8's
            ``E_q softmax F(z)`` from ``S`` posterior draws (evaluation only; training uses one draw).
        class_weight: weight of the labelled cross-entropy.
        score_penalty: ``a * mean(logsumexp F(z±)²)`` added to the EBM loss
            (:meth:`~genlib.priors.LatentEBMPrior.ebm_loss`); lets ``F`` train at higher rates without
            running away where the short-run chains do not go.
        grad_clip: clip each group's gradient norm to this (``None``: no clipping); keeps the EBM from
            running away when the encoder chases regions where ``F`` is large. With a closure optimizer
            (PSGD ``"hvp"`` / ``"finite_diff"``) it bounds the norm of the preconditioned step instead (PSGD's
            ``grad_clip_max_norm``, unless the optimizer sets its own).
        eval_every: evaluate the latent classifier every this many iterations (0: only at the end).
        checkpoint_every: checkpoint every this many iterations (used when a checkpoint folder is given).
        seed: seeds the batch sampling / Langevin generator.
        progress: show a tqdm bar.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; see :class:`~genlib.train.Engine`).
        compile: ``torch.compile`` the loss (genlib's value checks off inside it).
        compile_optimizers: ``torch.compile`` the optimizers' steps too (:class:`~genlib.train.Engine`).
        num_workers: DataLoader workers preparing batches (0: in the training process).
        augment: synthetic augmentation (Algorithm 2, steps 7-8), an
            :class:`~genlib.train.augment.AugmentConfig` (or a dict of its fields); ``None``: off.
    """

    n_iters: int = 20000
    batch_size: int = 100
    labeled_batch_size: int | None = None
    lr: float = 3e-4
    ebm_lr: float = 3e-5  # higher rates let F run away from what short-run Langevin can follow
    langevin_steps: int = 60
    langevin_step_size: float = 0.08
    negative_init: Literal["noise", "posterior", "persistent"] = "noise"
    persistent_chains: int = 10000
    persistent_reset: float = 0.05
    classifier_samples: int = 0
    class_weight: float = 1.0
    score_penalty: float = 0.0
    grad_clip: float | None = 10.0
    eval_every: int = 1000
    checkpoint_every: int = 1000
    seed: int = 0
    progress: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    compile_optimizers: bool = False
    num_workers: int = 0
    augment: AugmentConfig | None = None

    def __post_init__(self) -> None:
        self.augment = augment_config_from(self.augment)
        check_int(self.n_iters, "n_iters", 0)
        check_int(self.batch_size, "batch_size")
        if self.labeled_batch_size is not None:
            check_int(self.labeled_batch_size, "labeled_batch_size")
        check_positive(self.lr, "lr", allow_zero=True)
        check_positive(self.ebm_lr, "ebm_lr", allow_zero=True)
        check_int(self.langevin_steps, "langevin_steps", 0)
        check_positive(self.langevin_step_size, "langevin_step_size")
        if self.negative_init not in ("noise", "posterior", "persistent"):
            raise ValueError(
                f"negative_init must be 'noise', 'posterior' or 'persistent', got {self.negative_init!r}"
            )
        check_int(self.persistent_chains, "persistent_chains")
        check_positive(self.persistent_reset, "persistent_reset", allow_zero=True)
        if self.persistent_reset > 1:
            raise ValueError(f"persistent_reset must lie in [0, 1], got {self.persistent_reset!r}")
        check_int(self.classifier_samples, "classifier_samples", 0)
        check_positive(self.class_weight, "class_weight", allow_zero=True)
        check_positive(self.score_penalty, "score_penalty", allow_zero=True)
        if self.grad_clip is not None:
            check_positive(self.grad_clip, "grad_clip")
        check_int(self.eval_every, "eval_every", 0)
        check_int(self.checkpoint_every, "checkpoint_every")
        check_int(self.seed, "seed", 0)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_int(self.num_workers, "num_workers", 0)


@torch.no_grad()
def latent_accuracy(
    vae: VAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500, *, n_samples: int = 0
) -> float:
    """Accuracy of the latent classifier on ``(x, y)`` (eval mode, restored): ``argmax F(mu(x))``, or with
    ``n_samples = S > 0`` eq. 5.8's ``argmax E_q(z|x) softmax F(z)`` (see
    :func:`~genlib.train.augment.latent_logits`)."""
    if not isinstance(vae.prior, LatentEBMPrior):
        raise ValueError(f"vae.prior must be a LatentEBMPrior, got {type(vae.prior).__name__}")
    check_tensor(x, "x", floating=True)
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"y must be a tensor of shape ({x.shape[0]},), got {getattr(y, 'shape', y)!r}")
    pred = latent_logits(vae, x, batch_size, n_samples=n_samples).argmax(-1)
    correct = int((pred == y.cpu()).sum())
    return correct / max(x.shape[0], 1)


class SemiSupervisedTrainer:
    """Train a :class:`~genlib.models.VAE` whose prior is a :class:`~genlib.priors.LatentEBMPrior` from a few
    labels and many unlabelled examples (see the module docstring for one iteration).

    Args:
        vae: the model; ``vae.prior`` must be a ``LatentEBMPrior`` (its ``n_classes`` = number of labels).
        config: a :class:`SemiSupervisedConfig`.
        optimizer: factory ``optimizer(params, lr=...)`` used for both parameter groups (encoder/decoder
            with ``config.lr``, the EBM with ``config.ebm_lr``), e.g. ``torch.optim.Adam`` (default) or a
            ``genlib.optim`` class in any curvature mode: ``"whiten"`` steps after ``backward()``, the
            Newton-type ``"hvp"`` / ``"finite_diff"`` get ``step(closure)`` over the current batch, the
            encoder/decoder's first, then F's (see :class:`~genlib.train.Engine`; there ``config.grad_clip``
            is PSGD's ``grad_clip_max_norm``, a bound on the preconditioned step, in groups that leave it
            unset).
        sampler: the Langevin sampler of the training chains ``z-``; default
            ``LangevinSampler(config.langevin_steps, config.langevin_step_size)``. The class-conditional
            draws of augmentation use the prior's own sampler (``vae.prior.sampler``: generation settings).
        device: default :func:`genlib.utils.default_device`.
        checkpoint_dir: folder for atomic checkpoints every ``config.checkpoint_every`` iterations; when it
            holds one, :meth:`fit` resumes from it (models, optimizers, RNGs, history), so an
            interrupted run repeated with the same arguments ends as if uninterrupted. A checkpoint of other
            settings (the config except ``n_iters``, ``eval_every``, ``checkpoint_every`` and ``progress``;
            the optimizer class; ``settings``) or past ``config.n_iters`` is refused, naming what differs.
        logger: a :class:`~genlib.train.MetricsLogger` receiving each evaluation record (rewound to the
            resumed iteration, so rows of an interrupted run are not logged twice).
        settings: what else the run depends on, recorded in and checked against the checkpoints: data
            (folder, split), model architecture, optimizer name and options (see
            :class:`~genlib.train.Checkpointer`).

    ``history`` (returned by :meth:`fit`) has per-iteration lists ``iter``, ``loss`` (-ELBO),
    ``reconstruction``, ``kl``, ``ebm_loss``, ``class_loss``, ``aug_loss`` (NaN before augmentation starts),
    per-evaluation lists ``eval_iter``, ``eval_accuracy``, and per-selection ``select_iter``, ``n_selected``.

    Every random draw of an iteration comes from a generator seeded by (``config.seed``, iteration, rank),
    so a resumed run repeats the uninterrupted one's draws. Under ``torchrun`` each rank trains on its
    share of every global batch (``batch_size`` is the global size) with DDP.
    """

    def __init__(
        self,
        vae: VAE,
        config: SemiSupervisedConfig | None = None,
        *,
        optimizer: OptimizerFactory | None = None,
        sampler: Any | None = None,
        device: torch.device | str | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        logger: MetricsLogger | None = None,
        settings: dict[str, Any] | None = None,
    ):
        if not isinstance(vae, VAE):
            raise ValueError(f"vae must be a genlib.models.VAE, got {type(vae).__name__}")
        if not isinstance(vae.prior, LatentEBMPrior):
            raise ValueError(
                f"vae.prior must be a genlib.priors.LatentEBMPrior, got {type(vae.prior).__name__}"
            )
        config = SemiSupervisedConfig() if config is None else config
        if not isinstance(config, SemiSupervisedConfig):
            raise ValueError(f"config must be a SemiSupervisedConfig, got {type(config).__name__}")
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.vae = vae.to(self.device)
        self.prior: LatentEBMPrior = vae.prior
        self.sampler = (
            LangevinSampler(n_steps=config.langevin_steps, step_size=config.langevin_step_size)
            if sampler is None
            else sampler
        )
        if not callable(getattr(self.sampler, "run", None)):
            raise ValueError(f"sampler must have a run(log_prob_fn, z0, generator) method, got {sampler!r}")
        factory = torch.optim.Adam if optimizer is None else optimizer
        ebm_ids = {id(p) for p in self.prior.parameters()}
        model_params = [p for p in vae.parameters() if id(p) not in ebm_ids]
        self.opt_model = factory(model_params, lr=config.lr)
        self.opt_ebm = factory(list(self.prior.parameters()), lr=config.ebm_lr)
        if needs_closure(self.opt_model) != needs_closure(self.opt_ebm):
            raise ValueError(
                "optimizer built one optimizer that needs step(closure) and one that does not; the factory "
                "must give both parameter groups the same curvature mode"
            )
        if settings is not None and not isinstance(settings, dict):
            raise ValueError(f"settings must be a dict of name -> value, got {type(settings).__name__}")
        self._run_settings = dict(settings or {})
        self.engine = Engine(
            vae, [self.opt_model, self.opt_ebm], self._loss, prepare=self._prepare, device=self.device,
            precision=config.precision, compile=config.compile, compile_optimizers=config.compile_optimizers,
            grad_clip=config.grad_clip,
            checkpoint_dir=checkpoint_dir, checkpoint_every=config.checkpoint_every, keep=2,
            settings=self._settings(), logger=logger, unit="iter", progress=config.progress, desc="semi-sup",
            divergence_hint="lower lr / ebm_lr or langevin_step_size",
        )
        self.logger = logger
        self._chains: torch.Tensor | None = None  # persistent prior chains (negative_init="persistent")
        self.selection: Selection | None = None  # the current synthetic (+ pseudo-labelled) training set

    @property
    def iteration(self) -> int:
        """Iterations done; :meth:`fit` continues from here."""
        return self.engine.units_done

    @property
    def history(self) -> dict[str, list[float]]:
        return self.engine.history

    @property
    def checkpointer(self) -> Checkpointer | None:
        """The run's :class:`~genlib.train.Checkpointer` (``None``: none); set ``None`` on a copy that must
        not write into the original's folder (e.g. an ablation branch)."""
        return self.engine.checkpointer

    @checkpointer.setter
    def checkpointer(self, value: Checkpointer | None) -> None:
        self.engine.checkpointer = value

    # ------------------------------------------------------------------ one iteration
    def _generator(self, stream: str) -> torch.Generator:
        """This step's generator of ``stream``: a function of (seed, step, rank) only, so a resumed run
        draws what the uninterrupted one did."""
        key = derive_seed(self.config.seed, stream, self.engine.steps_done, self.engine.ctx.rank)
        return torch.Generator().manual_seed(key)

    def _prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The iteration's random, gradient-free work, drawn once: posterior noise, the prior chains ``z-``
        and the synthetic batch (closure optimizers evaluate the loss more than once)."""
        prior, cfg = self.prior, self.config
        x_u, (x_l, y_l) = batch["u"], batch["l"]
        g = self._generator("iteration")

        def noise(n: int) -> torch.Tensor:
            return torch.randn(n, prior.latent_dim, generator=g).to(self.device)

        eps_u, eps_l = noise(x_u.shape[0]), noise(x_l.shape[0])
        z0 = self._negative_start(x_u, eps_u, g)
        z_neg = prior.sample(x_u.shape[0], sampler=self.sampler, generator=g, z0=z0).detach()
        if cfg.negative_init == "persistent":
            self._chains[self._chain_idx] = z_neg.to(self._chains)
        aug = self._augmentation_batch(g)
        eps_a = None if aug is None else noise(len(aug[0]))
        return {"x_u": x_u, "x_l": x_l, "y_l": y_l, "eps_u": eps_u, "eps_l": eps_l, "z_neg": z_neg,
                "aug": aug, "eps_a": eps_a}

    def _loss(self, p: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``-ELBO(x_u) + ebm_loss + w·CE(x_l) (+ w·loss_weight·CE(synthetic))`` for one backward() (or
        closure): the ELBO's ``-logsumexp F`` term is evaluated with ``F`` detached (``F`` learns from
        ``ebm_loss`` and the labels), and ``ebm_loss`` sees detached posterior samples, so each parameter
        set gets exactly its gradient of Algorithm 2."""
        vae, prior, cfg = self.vae, self.prior, self.config

        def posterior(x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
            mu, logvar = vae.encode(x)
            return mu + torch.exp(0.5 * logvar) * eps, mu, logvar

        z_pos, mu, logvar = posterior(p["x_u"], p["eps_u"])
        rec = vae._log_px_z(p["x_u"], z_pos)
        kl = prior.kl(mu, logvar, z_pos, score_grad=False)
        loss = -(rec - vae.beta * kl).mean()
        ebm_loss = prior.ebm_loss(z_pos.detach(), p["z_neg"], score_penalty=cfg.score_penalty)
        class_loss = prior.classification_loss(posterior(p["x_l"], p["eps_l"])[0], p["y_l"])
        total = loss + ebm_loss + cfg.class_weight * class_loss
        metrics = {"loss": loss, "reconstruction": rec.mean(), "kl": kl.mean(), "ebm_loss": ebm_loss,
                   "class_loss": class_loss}
        if p["aug"] is not None:
            x_a, y_a, w_a, mean_w = p["aug"]
            z_a = posterior(x_a, p["eps_a"])[0]
            aug_loss = weighted_cross_entropy(prior.logits(z_a), y_a, w_a, mean_weight=mean_w)
            total = total + cfg.class_weight * cfg.augment.loss_weight * aug_loss
            metrics["aug_loss"] = aug_loss
        return total, metrics

    def step(self, x_u: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor) -> dict[str, float]:
        """One update of every parameter from unlabelled ``x_u`` and labelled ``(x_l, y_l)`` batches
        (outside :meth:`fit`, e.g. to probe one update); returns the metrics."""
        self.engine.grad_clip = self.config.grad_clip
        rec = self.engine.step({"u": x_u, "l": (x_l, y_l)})
        return {k: float(v) for k, v in rec.items() if k != "objective"}

    def _augmentation_batch(
        self, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None:
        """``(x, y, weights, mean weight)``: a batch of the current selection (``None``: no augmentation)."""
        sel = self.selection
        if self.config.augment is None or sel is None or sel.y.numel() == 0:
            return None
        idx = torch.randint(sel.y.numel(), (self.config.augment.batch_size,), generator=g)
        x, y, w = (t[idx].to(self.device) for t in (sel.x, sel.y, sel.weights))
        return x, y, w, float(sel.weights.mean())

    def _negative_start(
        self, x_u: torch.Tensor, eps: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor | None:
        """Initial states of the prior chains (``None``: the prior's own ``N(0, I)``)."""
        cfg = self.config
        if cfg.negative_init == "noise":
            return None
        if cfg.negative_init == "posterior":
            with torch.no_grad():
                mu, logvar = self.vae.encode(x_u)
            return mu + torch.exp(0.5 * logvar) * torch.randn(eps.shape, generator=g).to(eps)
        n, d = eps.shape
        if self._chains is None:
            start = torch.Generator().manual_seed(derive_seed(cfg.seed, "chains"))
            self._chains = torch.randn(cfg.persistent_chains, d, generator=start)
        self._chain_idx = torch.randint(cfg.persistent_chains, (n,), generator=g)
        z0 = self._chains[self._chain_idx].clone()
        reset = torch.rand(n, generator=g) < cfg.persistent_reset
        z0[reset] = torch.randn(int(reset.sum()), d, generator=g)
        return z0.to(device=eps.device, dtype=eps.dtype)

    # ------------------------------------------------------------------ steps 7-8: augmentation
    def reselect(self, x_unlabeled: Images | None = None) -> Selection:
        """Draw, filter and select a new synthetic training set with the current model (and pseudo-label
        ``x_unlabeled`` when ``augment.pseudo_label_threshold`` is set); stores it in ``selection``.

        ``x_unlabeled`` is a tensor or a map-style ``Dataset`` (scored chunk by chunk through a
        ``DataLoader`` with ``config.num_workers``); the pseudo-labelled images join the selection in memory.
        """
        aug = self.config.augment
        if aug is None:
            raise RuntimeError("reselect() needs config.augment (an AugmentConfig)")
        # the prior's own sampler: the generation settings (e.g. a lower temperature)
        generated = generate_labelled(self.vae, aug.samples_per_class, generator=self._generator("reselect"))
        sel = select_synthetic(generated, aug, seed=self.config.seed + self.iteration)
        if aug.pseudo_label_threshold is not None and x_unlabeled is not None:
            if isinstance(x_unlabeled, torch.Tensor):
                idx, labels, entropy = pseudo_label(self.vae, x_unlabeled, aug.pseudo_label_threshold)
                x_pl = x_unlabeled[idx]
            else:
                idx, labels, entropy = self._pseudo_label_dataset(x_unlabeled, aug.pseudo_label_threshold)
                x_pl = _take(x_unlabeled, idx) if idx.numel() else sel.x[:0]
            sel = Selection(
                x=torch.cat([sel.x, x_pl.to(sel.x)]),
                y=torch.cat([sel.y, labels]),
                weights=torch.cat([sel.weights, torch.ones(idx.numel())]),
                indices=sel.indices,
                entropy=torch.cat([sel.entropy, entropy]),
                counts={**sel.counts, "pseudo_labeled": idx.numel()},
            )
        self.selection = sel
        self.history.setdefault("select_iter", []).append(self.iteration)
        self.history.setdefault("n_selected", []).append(sel.y.numel())
        return sel

    def _pseudo_label_dataset(
        self, dataset: Dataset, threshold: float, chunk: int = 1000
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`~genlib.train.augment.pseudo_label` over a dataset read in chunks through a DataLoader:
        the same ``(indices, labels, entropy)`` as over the tensor of its examples."""
        loader = DataLoader(_Chunks(dataset, chunk), batch_size=None, num_workers=self.config.num_workers,
                            pin_memory=self.device.type == "cuda")
        logits = torch.cat([latent_logits(self.vae, x, chunk) for x in loader])
        labeler = PseudoLabeler(threshold=threshold)
        idx, labels, _ = labeler.fit_select(logits)
        return idx, labels, labeler.scores_[idx]
    def _due_for_selection(self) -> bool:
        aug = self.config.augment
        if aug is None or self.iteration < aug.start_iter:
            return False
        return (self.iteration - aug.start_iter) % aug.reselect_every == 0 or self.selection is None

    # ------------------------------------------------------------------ loop
    def _extra(self) -> dict[str, Any]:
        sel = None if self.selection is None else asdict(self.selection)
        return {"config": asdict(self.config), "selection": sel, "chains": self._chains}

    def _restore(self, extra: dict[str, Any]) -> None:
        sel = extra.get("selection")
        self.selection = None if sel is None else Selection(**sel)
        self._chains = extra.get("chains")

    def _settings(self) -> dict[str, Any]:
        """What a checkpoint must match to be continued (not the iteration target, cadences, progress)."""
        skip = {"n_iters", "eval_every", "checkpoint_every", "progress", "compile", "compile_optimizers",
                "num_workers"}
        train = {k: v for k, v in asdict(self.config).items() if k not in skip}
        return {"train": train, "optimizer_class": type(self.opt_model).__name__, **self._run_settings}

    def _check_data(self, x_unlabeled: Images, x_labeled: torch.Tensor, y_labeled: torch.Tensor) -> None:
        check_tensor(x_labeled, "x_labeled", floating=True)
        if isinstance(x_unlabeled, torch.Tensor):
            check_tensor(x_unlabeled, "x_unlabeled", floating=True)
            n_unlabeled, shape = x_unlabeled.shape[0], tuple(x_unlabeled.shape[1:])
        elif isinstance(x_unlabeled, Dataset) and hasattr(x_unlabeled, "__len__"):
            n_unlabeled = len(x_unlabeled)
            if n_unlabeled:  # one example stands for all: its shape and dtype (reading more would stream)
                first = x_unlabeled[0]
                check_tensor(first, "x_unlabeled[0]", floating=True)
                shape = tuple(first.shape)
        else:
            raise ValueError(f"x_unlabeled must be a tensor or a map-style Dataset of tensors, got "
                             f"{type(x_unlabeled).__name__}")
        if n_unlabeled == 0 or x_labeled.shape[0] == 0:
            raise ValueError("x_unlabeled and x_labeled must each hold at least one example")
        if tuple(x_labeled.shape[1:]) != shape:
            raise ValueError(
                f"x_labeled examples must have the shape of x_unlabeled ones {shape}, "
                f"got {tuple(x_labeled.shape[1:])}"
            )
        if (not isinstance(y_labeled, torch.Tensor) or y_labeled.shape != (x_labeled.shape[0],)
                or y_labeled.is_floating_point()):
            raise ValueError(
                f"y_labeled must be an int tensor of shape ({x_labeled.shape[0]},), "
                f"got {getattr(y_labeled, 'dtype', type(y_labeled).__name__)} "
                f"{tuple(getattr(y_labeled, 'shape', ()))}"
            )
        k = self.prior.n_classes
        if int(y_labeled.min()) < 0 or int(y_labeled.max()) >= k:
            raise ValueError(f"y_labeled must lie in [0, {k - 1}] (prior.n_classes = {k})")

    def fit(
        self,
        x_unlabeled: Images,
        x_labeled: torch.Tensor,
        y_labeled: torch.Tensor,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, list[float]]:
        """Train until ``config.n_iters`` iterations are done; returns the history.

        Continues from :attr:`iteration` (so a second ``fit`` after raising ``config.n_iters`` trains on,
        e.g. with augmentation switched on) or, when ``checkpoint_dir`` holds a checkpoint, from it.
        Data tensors stay where they are (e.g. CPU); batches are moved to the device. ``x_unlabeled`` may
        also be a map-style ``Dataset`` of float examples (e.g. :class:`genlib.data.MemmapImages`: SVHN
        ``extra`` streamed from disk), read by :class:`~genlib.train.StepBatches` through a ``DataLoader``
        (``config.num_workers`` workers, pinned memory on CUDA): the same seed draws the same indices, so it
        trains exactly as the tensor of its examples would. ``eval_data = (x, y)`` is a held-out labelled
        split for the latent classifier's accuracy.
        """
        cfg = self.config
        self._check_data(x_unlabeled, x_labeled, y_labeled)
        if eval_data is not None:
            if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
                raise ValueError("eval_data must be a pair (x, y) of tensors")
            check_tensor(eval_data[0], "eval_data[0]", floating=True)
        engine = self.engine
        engine.grad_clip = cfg.grad_clip  # the config may change between fits
        engine.progress = cfg.progress
        if engine.checkpointer is not None:
            engine.checkpointer.every = cfg.checkpoint_every
            engine.checkpointer.settings = normalize_settings(self._settings())
        batches = self.step_batches(x_unlabeled, x_labeled, y_labeled)

        def evaluate() -> dict[str, float]:
            x, y = eval_data
            return {"eval_accuracy": latent_accuracy(self.vae, x, y, n_samples=cfg.classifier_samples)}

        def before(iteration: int) -> None:
            if self._due_for_selection():
                self.reselect(x_unlabeled)

        return engine.fit(
            lambda start, stop: step_loader(batches, start, stop, num_workers=cfg.num_workers,
                                            pin_memory=self.device.type == "cuda"),
            cfg.n_iters, evaluate=None if eval_data is None else evaluate, eval_every=cfg.eval_every,
            before_unit=before, extra_state=self._extra, on_resume=self._restore,
        )

    def step_batches(
        self, x_unlabeled: Images, x_labeled: torch.Tensor, y_labeled: torch.Tensor
    ) -> StepBatches:
        """The iterations' batches, as :meth:`fit` draws them: ``{"u": x_u, "l": (x_l, y_l)}`` at each step
        (``batch_size`` / ``labeled_batch_size``, capped at the data), this rank's share."""
        cfg = self.config
        sizes = {"u": min(cfg.batch_size, len(x_unlabeled)),
                 "l": min(cfg.labeled_batch_size or cfg.batch_size, x_labeled.shape[0])}
        return StepBatches({"u": x_unlabeled, "l": (x_labeled, y_labeled)}, sizes, seed=cfg.seed,
                           **self.engine.shard)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Latent-classifier accuracy ``argmax softmax F(mu(x))`` on ``(x, y)``."""
        return latent_accuracy(self.vae, x, y, n_samples=self.config.classifier_samples)
