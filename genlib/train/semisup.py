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

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from genlib.models.vae import VAE
from genlib.priors.ebm import LatentEBMPrior
from genlib.sampling import LangevinSampler
from genlib.train.augment import (
    AugmentConfig,
    Selection,
    augment_config_from,
    generate_labelled,
    latent_logits,
    pseudo_label,
    select_synthetic,
)
from genlib.train.checkpoint import Checkpointer, normalize_settings
from genlib.train.classify import needs_closure, weighted_cross_entropy
from genlib.train.logger import MetricsLogger
from genlib.utils import check_int, check_positive, check_tensor, default_device

__all__ = ["SemiSupervisedConfig", "SemiSupervisedTrainer", "latent_accuracy"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]



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
            Newton-type ``"hvp"`` / ``"finite_diff"`` get ``step(closure)`` over the current batch (see
            :meth:`_closure_step`; there ``config.grad_clip`` is PSGD's ``grad_clip_max_norm``, a bound on
            the preconditioned step, in groups that leave it unset).
        sampler: the Langevin sampler of the training chains ``z-``; default
            ``LangevinSampler(config.langevin_steps, config.langevin_step_size)``. The class-conditional
            draws of augmentation use the prior's own sampler (``vae.prior.sampler``: generation settings).
        device: default :func:`genlib.utils.default_device`.
        checkpoint_dir: folder for atomic checkpoints every ``config.checkpoint_every`` iterations; when it
            holds one, :meth:`fit` resumes from it (models, optimizers, generator, RNGs, history), so an
            interrupted run repeated with the same arguments ends as if uninterrupted. A checkpoint of other
            settings (the config except ``n_iters``, ``eval_every``, ``checkpoint_every`` and ``progress``;
            the optimizer class; ``settings``) or past ``config.n_iters`` is refused, naming what differs.
        logger: a :class:`~genlib.train.MetricsLogger` receiving each evaluation record (rewound to the
            resumed iteration, so rows of an interrupted run are not logged twice).
        settings: what else the run depends on, recorded in and checked against the checkpoints: data
            (folder, split), model architecture, optimizer name and options (see
            :class:`~genlib.train.Checkpointer`).

    ``history`` (returned by :meth:`fit`) has per-iteration lists ``iter``, ``loss`` (-ELBO),
    ``reconstruction``, ``kl``, ``ebm_loss``, ``class_loss``, and per-evaluation lists ``eval_iter``,
    ``eval_accuracy``.
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
        self._closure = needs_closure(self.opt_model)
        if needs_closure(self.opt_ebm) != self._closure:
            raise ValueError(
                "optimizer built one optimizer that needs step(closure) and one that does not; the factory "
                "must give both parameter groups the same curvature mode"
            )
        # Closure mode: config.grad_clip becomes PSGD's trust region on the preconditioned step in the groups
        # whose grad_clip_max_norm was left unset (the optimizer takes the gradients itself, so we cannot clip
        # them; and a Newton step P·g with P ≈ |H|⁻¹ does not grow with the gradient's scale anyway).
        # (optimizer, group index), not the group dicts: load_state_dict replaces those on a resume
        self._clip_groups = [
            (opt, i) for opt in (self.opt_model, self.opt_ebm) for i, g in enumerate(opt.param_groups)
            if self._closure and g.get("grad_clip_max_norm", 0.0) is None
        ]
        self.generator = torch.Generator().manual_seed(config.seed)
        if settings is not None and not isinstance(settings, dict):
            raise ValueError(f"settings must be a dict of name -> value, got {type(settings).__name__}")
        self._run_settings = dict(settings or {})
        self.checkpointer = (
            Checkpointer(checkpoint_dir, every=config.checkpoint_every, keep=2, settings=self._settings())
            if checkpoint_dir is not None
            else None
        )
        self.logger = logger
        self.iteration = 0  # iterations done; fit() continues from here
        self._chains: torch.Tensor | None = None  # persistent prior chains (negative_init="persistent")
        self._chain_idx: torch.Tensor | None = None
        self.selection: Selection | None = None  # the current synthetic (+ pseudo-labelled) training set
        self.history: dict[str, list[float]] = {
            k: []
            for k in ("iter", "loss", "reconstruction", "kl", "ebm_loss", "class_loss", "aug_loss",
                      "eval_iter", "eval_accuracy", "select_iter", "n_selected")
        }

    # ------------------------------------------------------------------ one iteration
    def step(self, x_u: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor) -> dict[str, float]:
        """One update of every parameter from unlabelled ``x_u`` and labelled ``(x_l, y_l)`` batches.

        Optimizers that differentiate a closure themselves (PSGD with ``curvature="hvp"`` or
        ``"finite_diff"``, see :func:`~genlib.train.classify.needs_closure`) are stepped with
        ``step(closure)`` (:meth:`_closure_step`); all others with ``backward()`` then ``step()``."""
        vae, prior, cfg = self.vae, self.prior, self.config
        x_u, x_l, y_l = x_u.to(self.device), x_l.to(self.device), y_l.to(self.device)
        vae.train()
        if self._closure:
            return self._closure_step(x_u, x_l, y_l)
        self.opt_model.zero_grad(set_to_none=True)
        self.opt_ebm.zero_grad(set_to_none=True)

        # Encoder/decoder: -ELBO with the EBM prior's KL. F's gradient from this term is discarded below.
        mu, logvar = vae.encode(x_u)
        z_pos = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = vae._log_px_z(x_u, z_pos)
        kl = prior.kl(mu, logvar, z_pos)
        loss = -(rec - vae.beta * kl).mean()
        loss.backward()
        for p in prior.parameters():
            p.grad = None

        # EBM: positive samples from q (detached), negative from short-run Langevin from N(0, I).
        z_neg = prior.sample(x_u.shape[0], sampler=self.sampler, generator=self.generator,
                             z0=self._negative_start(mu, logvar))
        if cfg.negative_init == "persistent":
            self._chains[self._chain_idx] = z_neg.detach().to(self._chains)
        ebm_loss = prior.ebm_loss(z_pos.detach(), z_neg, score_penalty=cfg.score_penalty)
        # Labels: cross-entropy of p(y|z) at posterior samples of labelled x; trains encoder and F.
        mu_l, logvar_l = vae.encode(x_l)
        z_l = mu_l + torch.exp(0.5 * logvar_l) * torch.randn_like(mu_l)
        class_loss = prior.classification_loss(z_l, y_l)
        total = ebm_loss + cfg.class_weight * class_loss
        aug_loss = self._augmentation_loss()
        if aug_loss is not None:
            total = total + cfg.class_weight * cfg.augment.loss_weight * aug_loss
        total.backward()

        for name, value in (("loss", loss), ("ebm_loss", ebm_loss), ("class_loss", class_loss)):
            if not torch.isfinite(value):
                raise RuntimeError(f"{name} became {value.item()}: lower lr / ebm_lr or langevin_step_size")
        if cfg.grad_clip is not None:
            for opt in (self.opt_model, self.opt_ebm):
                torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], cfg.grad_clip)
        self.opt_model.step()
        self.opt_ebm.step()
        return {
            "loss": loss.item(),
            "reconstruction": rec.mean().item(),
            "kl": kl.mean().item(),
            "ebm_loss": ebm_loss.item(),
            "class_loss": class_loss.item(),
            "aug_loss": float("nan") if aug_loss is None else aug_loss.item(),
        }

    def _closure_step(self, x_u: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor) -> dict[str, float]:
        """:meth:`step` for optimizers that take ``step(closure)`` (closures return the loss, no backward).

        PSGD evaluates a closure more than once per step ("finite_diff" re-runs it at ``θ + δv`` and reads
        the change of the gradient as curvature), so each closure must be a deterministic function of the
        parameters: the posterior noise, the Langevin negatives ``z-`` and the augmentation batch are drawn
        once here, outside the closures. Two closures, as in the plain path: the encoder/decoder minimise
        ``-ELBO + w·CE`` (F's parameters are not theirs, so the ELBO's ``-logsumexp F`` term gives F no
        gradient); F minimises ``ebm_loss + w·CE`` at latents encoded before the step (detached), so it does
        not see the encoder's update and both updates start from the same parameters, as with backward().
        The encoder/decoder step first, while F is still the F their loss was drawn for.
        """
        vae, prior, cfg = self.vae, self.prior, self.config
        for opt, i in self._clip_groups:  # the config may change between fits
            opt.param_groups[i]["grad_clip_max_norm"] = cfg.grad_clip
        with torch.no_grad():
            mu, logvar = vae.encode(x_u)
        eps_u = torch.randn_like(mu)
        z_neg = prior.sample(x_u.shape[0], sampler=self.sampler, generator=self.generator,
                             z0=self._negative_start(mu, logvar))
        if cfg.negative_init == "persistent":
            self._chains[self._chain_idx] = z_neg.detach().to(self._chains)

        def noise(n: int) -> torch.Tensor:
            return torch.randn(n, mu.shape[1], dtype=mu.dtype, device=mu.device)

        eps_l = noise(x_l.shape[0])
        aug = self._augmentation_batch()
        eps_a = None if aug is None else noise(len(aug[0]))

        def posterior(x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            m, lv = vae.encode(x)
            return m + torch.exp(0.5 * lv) * eps, m, lv

        def aug_loss_at(z: torch.Tensor) -> torch.Tensor:
            _, y, w, mean_w = aug
            return weighted_cross_entropy(prior.logits(z), y, w, mean_weight=mean_w)

        with torch.no_grad():  # F's latents, at the encoder before its update
            z_pos_f = mu + torch.exp(0.5 * logvar) * eps_u
            z_l_f = posterior(x_l, eps_l)[0]
            z_a_f = None if aug is None else posterior(aug[0], eps_a)[0]
        w_aug = cfg.class_weight * (cfg.augment.loss_weight if aug is not None else 0.0)
        record: dict[str, float] = {}

        def model_closure() -> torch.Tensor:
            z_pos, m, lv = posterior(x_u, eps_u)
            rec = vae._log_px_z(x_u, z_pos)
            kl = prior.kl(m, lv, z_pos)
            loss = -(rec - vae.beta * kl).mean()
            class_loss = prior.classification_loss(posterior(x_l, eps_l)[0], y_l)
            total = loss + cfg.class_weight * class_loss
            aug_loss = None if aug is None else aug_loss_at(posterior(aug[0], eps_a)[0])
            if aug_loss is not None:
                total = total + w_aug * aug_loss
            if not record:  # the first evaluation, at the parameters the step starts from
                record.update(loss=loss.item(), reconstruction=rec.mean().item(), kl=kl.mean().item(),
                              class_loss=class_loss.item(),
                              aug_loss=float("nan") if aug_loss is None else aug_loss.item())
                for name in ("loss", "class_loss"):
                    if not math.isfinite(record[name]):
                        raise RuntimeError(
                            f"{name} became {record[name]}: lower lr / ebm_lr or langevin_step_size")
            return total

        def ebm_closure() -> torch.Tensor:
            ebm_loss = prior.ebm_loss(z_pos_f, z_neg, score_penalty=cfg.score_penalty)
            total = ebm_loss + cfg.class_weight * prior.classification_loss(z_l_f, y_l)
            if aug is not None:
                total = total + w_aug * aug_loss_at(z_a_f)
            if "ebm_loss" not in record:
                record["ebm_loss"] = ebm_loss.item()
                if not torch.isfinite(ebm_loss):
                    raise RuntimeError(
                        f"ebm_loss became {record['ebm_loss']}: lower lr / ebm_lr or langevin_step_size")
            return total

        self.opt_model.zero_grad(set_to_none=True)
        self.opt_ebm.zero_grad(set_to_none=True)
        self.opt_model.step(model_closure)
        self.opt_ebm.step(ebm_closure)
        return {k: record[k] for k in ("loss", "reconstruction", "kl", "ebm_loss", "class_loss", "aug_loss")}

    def _augmentation_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None:
        """``(x, y, weights, mean weight)``: a batch of the current selection (``None``: no augmentation)."""
        sel = self.selection
        if self.config.augment is None or sel is None or sel.y.numel() == 0:
            return None
        idx = torch.randint(sel.y.numel(), (self.config.augment.batch_size,), generator=self.generator)
        x, y, w = (t[idx].to(self.device) for t in (sel.x, sel.y, sel.weights))
        return x, y, w, float(sel.weights.mean())

    def _negative_start(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor | None:
        """Initial states of the prior chains (``None``: the prior's own ``N(0, I)``)."""
        cfg = self.config
        if cfg.negative_init == "noise":
            return None
        if cfg.negative_init == "posterior":
            eps = torch.randn(mu.shape, generator=self.generator, dtype=mu.dtype).to(mu.device)
            return (mu + torch.exp(0.5 * logvar) * eps).detach()
        n, d = mu.shape
        if self._chains is None:
            self._chains = torch.randn(cfg.persistent_chains, d, generator=self.generator)
        self._chain_idx = torch.randint(cfg.persistent_chains, (n,), generator=self.generator)
        z0 = self._chains[self._chain_idx].clone()
        reset = torch.rand(n, generator=self.generator) < cfg.persistent_reset
        z0[reset] = torch.randn(int(reset.sum()), d, generator=self.generator)
        return z0.to(device=mu.device, dtype=mu.dtype)

    # ------------------------------------------------------------------ steps 7-8: augmentation
    def _augmentation_loss(self) -> torch.Tensor | None:
        """Weighted cross-entropy of ``p(y|z)``, ``z ~ q(z|x)``, on a batch of the current selection."""
        batch = self._augmentation_batch()
        if batch is None:
            return None
        x, y, w, mean_w = batch
        mu, logvar = self.vae.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return weighted_cross_entropy(self.prior.logits(z), y, w, mean_weight=mean_w)

    def reselect(self, x_unlabeled: torch.Tensor | None = None) -> Selection:
        """Draw, filter and select a new synthetic training set with the current model (and pseudo-label
        ``x_unlabeled`` when ``augment.pseudo_label_threshold`` is set); stores it in ``selection``."""
        aug = self.config.augment
        if aug is None:
            raise RuntimeError("reselect() needs config.augment (an AugmentConfig)")
        # the prior's own sampler: the generation settings (e.g. a lower temperature)
        generated = generate_labelled(self.vae, aug.samples_per_class, generator=self.generator)
        sel = select_synthetic(generated, aug, seed=self.config.seed + self.iteration)
        if aug.pseudo_label_threshold is not None and x_unlabeled is not None:
            idx, labels, entropy = pseudo_label(self.vae, x_unlabeled, aug.pseudo_label_threshold)
            sel = Selection(
                x=torch.cat([sel.x, x_unlabeled[idx].to(sel.x)]),
                y=torch.cat([sel.y, labels]),
                weights=torch.cat([sel.weights, torch.ones(idx.numel())]),
                indices=sel.indices,
                entropy=torch.cat([sel.entropy, entropy]),
                counts={**sel.counts, "pseudo_labeled": idx.numel()},
            )
        self.selection = sel
        self.history["select_iter"].append(self.iteration)
        self.history["n_selected"].append(sel.y.numel())
        return sel

    def _due_for_selection(self) -> bool:
        aug = self.config.augment
        if aug is None or self.iteration < aug.start_iter:
            return False
        return (self.iteration - aug.start_iter) % aug.reselect_every == 0 or self.selection is None

    # ------------------------------------------------------------------ loop
    def _state(self) -> dict[str, Any]:
        return {"vae": self.vae, "opt_model": self.opt_model, "opt_ebm": self.opt_ebm,
                "generator": self.generator}

    def _extra(self) -> dict[str, Any]:
        sel = None if self.selection is None else asdict(self.selection)
        return {"history": self.history, "config": asdict(self.config), "selection": sel,
                "chains": self._chains}

    def _settings(self) -> dict[str, Any]:
        """What a checkpoint must match to be continued (not the iteration target, cadences, progress)."""
        skip = {"n_iters", "eval_every", "checkpoint_every", "progress"}
        train = {k: v for k, v in asdict(self.config).items() if k not in skip}
        return {"train": train, "optimizer_class": type(self.opt_model).__name__, **self._run_settings}

    def _check_data(
        self, x_unlabeled: torch.Tensor, x_labeled: torch.Tensor, y_labeled: torch.Tensor
    ) -> None:
        check_tensor(x_unlabeled, "x_unlabeled", floating=True)
        check_tensor(x_labeled, "x_labeled", floating=True)
        if x_unlabeled.shape[0] == 0 or x_labeled.shape[0] == 0:
            raise ValueError("x_unlabeled and x_labeled must each hold at least one example")
        if x_labeled.shape[1:] != x_unlabeled.shape[1:]:
            raise ValueError(
                f"x_labeled examples must have the shape of x_unlabeled ones {tuple(x_unlabeled.shape[1:])}, "
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
        x_unlabeled: torch.Tensor,
        x_labeled: torch.Tensor,
        y_labeled: torch.Tensor,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, list[float]]:
        """Train until ``config.n_iters`` iterations are done; returns the history.

        Continues from :attr:`iteration` (so a second ``fit`` after raising ``config.n_iters`` trains on,
        e.g. with augmentation switched on) or, when ``checkpoint_dir`` holds a checkpoint, from it.
        Data tensors stay where they are (e.g. CPU); batches are moved to the device. ``eval_data = (x, y)``
        is a held-out labelled split for the latent classifier's accuracy.
        """
        cfg = self.config
        self._check_data(x_unlabeled, x_labeled, y_labeled)
        if eval_data is not None:
            if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
                raise ValueError("eval_data must be a pair (x, y) of tensors")
            check_tensor(eval_data[0], "eval_data[0]", floating=True)
        if self.checkpointer is not None:
            self.checkpointer.settings = normalize_settings(self._settings())  # config may change per fit
            # a trainer that has trained already holds newer state than any checkpoint it wrote
            resumed = None if self.iteration else self.checkpointer.resume(
                max_step=cfg.n_iters, max_step_name="n_iters", **self._state())
            if resumed is not None and resumed.step > self.iteration:
                self.iteration = resumed.step
                self.history = {k: list(v) for k, v in resumed.extra["history"].items()}
                sel = resumed.extra.get("selection")
                self.selection = None if sel is None else Selection(**sel)
                self._chains = resumed.extra.get("chains")
            if self.logger is not None:
                self.logger.rewind(self.iteration, key="iter")
        start = self.iteration
        n_u, n_l = x_unlabeled.shape[0], x_labeled.shape[0]
        b_u = min(cfg.batch_size, n_u)
        b_l = min(cfg.labeled_batch_size or cfg.batch_size, n_l)
        bar = tqdm(range(start, cfg.n_iters), disable=not cfg.progress, desc="semi-sup", initial=start,
                   total=cfg.n_iters)
        t0 = time.perf_counter()
        for it in bar:
            if self._due_for_selection():
                self.reselect(x_unlabeled)
            iu = torch.randint(n_u, (b_u,), generator=self.generator)
            il = torch.randint(n_l, (b_l,), generator=self.generator)
            rec = self.step(x_unlabeled[iu], x_labeled[il], y_labeled[il])
            self.iteration = it + 1
            self.history["iter"].append(it + 1)
            for k, v in rec.items():
                self.history[k].append(v)
            last = it + 1 == cfg.n_iters
            if eval_data is not None and (last or (cfg.eval_every and (it + 1) % cfg.eval_every == 0)):
                acc = latent_accuracy(self.vae, eval_data[0], eval_data[1], n_samples=cfg.classifier_samples)
                self.history["eval_iter"].append(it + 1)
                self.history["eval_accuracy"].append(acc)
                bar.set_postfix(loss=f"{rec['loss']:.1f}", acc=f"{acc:.3f}")
                if self.logger is not None:
                    self.logger.log(iter=it + 1, eval_accuracy=acc, seconds=time.perf_counter() - t0, **rec)
            if self.checkpointer is not None:
                self.checkpointer.maybe_save(it + 1, force=last, extra=self._extra(), **self._state())
        return self.history

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Latent-classifier accuracy ``argmax softmax F(mu(x))`` on ``(x, y)``."""
        return latent_accuracy(self.vae, x, y, n_samples=self.config.classifier_samples)
