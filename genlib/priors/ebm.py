"""Latent-space energy-based prior with symbol-vector coupling.

Pang et al. (2020), "Learning Latent Space Energy-Based Prior Model", tilt a standard normal by a learned
score; Pang & Wu (2021), "Latent Space Energy-Based Model of Symbol-Vector Coupling", give the score one
output per class (symbol) ``y``, so one network is both a prior over ``z`` and a classifier of ``z``::

    p(y, z) = exp(F(z)[y]) N(z; 0, I) / Z            F: R^d -> R^K, an MLP
    p(z)    = exp(logsumexp_y F(z)[y]) N(z; 0, I) / Z
    p(y|z)  = softmax(F(z))[y]

Class-conditional draws can be *guided* (Dhariwal & Nichol 2021's classifier guidance, with the prior's own
classifier): ``p_w(z|y) ∝ p(z) p(y|z)^w``. ``w = 1`` is ``p(z|y)`` exactly; as ``w`` grows the target tends to
``p(z)`` restricted to the region where ``y`` is the most probable class, so draws stay as spread as the
marginal prior but leave the class boundaries. The paper's own sharpening, a temperature ``T < 1`` (eq. 5.19),
also shrinks the Gaussian factor and so the draws' diversity.

**Sign convention** (one, everywhere in genlib): the *energy* is minus the log of the unnormalised density,
so lower energy means more probable and Langevin moves *down* the energy::

    E(z)    = -logsumexp_y F(z)[y] + ||z||^2 / 2
    E(z, y) = -F(z)[y] + ||z||^2 / 2
    log_prob(z[, y]) = -E(z[, y])      (unnormalised: the true log density is this - d/2 log 2 pi - log Z)

``Z`` is intractable, so :meth:`LatentEBMPrior.log_prob` and :meth:`LatentEBMPrior.kl` are exact only up to
that constant; it cancels in Langevin sampling and in the maximum-likelihood gradient of :meth:`ebm_loss`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from genlib.nn.mlp import MLP
from genlib.priors.base import Prior
from genlib.sampling import LangevinDiagnostics, LangevinSampler
from genlib.utils import check_positive, resolve_validate_args

__all__ = ["LatentEBMPrior"]


class LatentEBMPrior(Prior):
    """Latent EBM prior ``p(y, z) ∝ exp(F(z)[y]) N(z; 0, I)`` with an MLP score ``F`` (see module docstring).

    Args:
        latent_dim: size of ``z``.
        n_classes: number of symbols ``K`` (``1`` gives the unconditional prior of Pang et al. 2020).
        hidden: hidden widths of ``F`` (the papers use a 3-layer MLP with 200 units).
        activation: ``"gelu"`` (default) or ``"leaky_relu"``, as in the papers, or any name of
            :data:`genlib.nn.ACTIVATIONS`.
        n_steps, step_size, temperature: the default sampler's settings, a
            :class:`~genlib.sampling.LangevinSampler`. It is what :meth:`sample` (and so generation) uses;
            a temperature ``T < 1`` targets ``p(z|y)^(1/T)`` (dissertation eq. 5.19). Pang et al. (2020)
            and the dissertation use 60 steps of 0.08 (= 0.4²/2) at ``T = 1``.
        guidance: ``w > 0``, the class-guidance scale of conditional draws (module docstring): :meth:`sample`
            with ``y`` targets ``p(z) p(y|z)^w``; ``1`` is the paper's ``p(z|y)``. The defaults (``w = 300``,
            200 steps of 0.02, ``T = 1``) were measured in ``benchmarks/sample_quality.py``: the strongly
            guided chains need the small step to stay inside the encoder's latent region.
        validate_args: check label values (``y`` within ``[0, n_classes)``) in :meth:`energy`,
            :meth:`log_prob`, :meth:`guided_log_prob` and :meth:`classification_loss`; ``None`` (default)
            follows :func:`genlib.set_validate_args`. Shape and dtype checks always run. Off, these
            methods read no tensor values on the host, so they compile without graph breaks (inside
            :meth:`sample`, too: the range check is then not repeated at every Langevin step).

    Attributes:
        score: the MLP ``F`` (``latent_dim -> n_classes``).
        sampler: the default sampler of :meth:`sample`; assign e.g. a
            :class:`~genlib.sampling.PreconditionedLangevin` to change it for every later call.

    Methods take ``z`` of shape ``(B, latent_dim)`` and class labels ``y`` as an int or a ``(B,)`` int tensor.
    """

    def __init__(
        self,
        latent_dim: int,
        n_classes: int,
        hidden: Sequence[int] = (200, 200),
        activation: str = "gelu",
        n_steps: int = 200,
        step_size: float = 0.02,
        temperature: float = 1.0,
        guidance: float = 300.0,
        validate_args: bool | None = None,
    ):
        super().__init__(latent_dim)
        resolve_validate_args(validate_args)  # reject a non-bool early, naming the argument
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes <= 0:
            raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
        self.n_classes = n_classes
        self.score = MLP(latent_dim, n_classes, hidden, activation)
        self.sampler = LangevinSampler(n_steps=n_steps, step_size=check_positive(step_size, "step_size"),
                                       temperature=check_positive(temperature, "temperature"))
        self.guidance = guidance
        self.validate_args = validate_args

    @property
    def guidance(self) -> float:
        """The class-guidance scale ``w`` of conditional draws; assigning checks it (finite, > 0)."""
        return self._guidance

    @guidance.setter
    def guidance(self, value: float) -> None:
        self._guidance = check_positive(value, "guidance")

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(guidance=self.guidance, validate_args=self.validate_args)  # the live values
        return config

    @property
    def validating(self) -> bool:
        """Whether label values are checked now (this prior's ``validate_args``, else the global switch)."""
        return resolve_validate_args(self.validate_args)

    # ------------------------------------------------------------------ checks
    def _z(self, z: torch.Tensor, name: str = "z") -> torch.Tensor:
        self._check_latent(z, name)
        if z.ndim != 2:
            raise ValueError(f"{name} must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        return z

    def _y(
        self, y: int | torch.Tensor, batch: int, device: torch.device, check: bool | None = None
    ) -> torch.Tensor:
        """``y`` as a ``(batch,)`` int64 tensor. A tensor's values are range-checked when ``check`` (default:
        :attr:`validating`), which costs a host sync; an int is always checked (it costs nothing)."""
        if isinstance(y, int) and not isinstance(y, bool):
            if not 0 <= y < self.n_classes:
                raise ValueError(f"y must lie in [0, {self.n_classes - 1}], got {y}")
            return torch.full((batch,), y, dtype=torch.long, device=device)
        int_dtypes = (torch.int64, torch.int32)
        if not isinstance(y, torch.Tensor) or y.dtype not in int_dtypes or y.shape != (batch,):
            got = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else repr(y)
            raise ValueError(f"y must be an int or an int64 tensor of shape ({batch},), got {got}")
        if check is None:
            check = self.validating
        if check and y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(
                f"y must lie in [0, {self.n_classes - 1}], got values in [{int(y.min())}, {int(y.max())}]"
            )
        return y.to(device=device, dtype=torch.long)

    # ------------------------------------------------------------------ densities
    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """``F(z)``, ``(B, n_classes)``: the coupling scores, also the latent classifier's logits."""
        return self.score(self._z(z))

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """``p(y|z) = softmax F(z)``, ``(B, n_classes)``."""
        return self.logits(z).softmax(-1)

    def energy(self, z: torch.Tensor, y: int | torch.Tensor | None = None) -> torch.Tensor:
        """Energy ``(B,)``: ``E(z) = -logsumexp F(z) + ||z||²/2``, or ``E(z, y) = -F(z)[y] + ||z||²/2``.

        Lower energy = more probable; ``log_prob = -energy``.
        """
        return self._energy(z, y, check=None)

    def _energy(self, z: torch.Tensor, y: int | torch.Tensor | None, check: bool | None) -> torch.Tensor:
        f = self.logits(z)
        if y is None:
            score = f.logsumexp(-1)
        else:
            score = f.gather(1, self._y(y, z.shape[0], z.device, check)[:, None])[:, 0]
        return 0.5 * z.square().sum(1) - score

    def log_prob(self, z: torch.Tensor, y: int | torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised ``log p(z)`` (or joint ``log p(y, z)`` given ``y``) ``= -energy``, ``(B,)``.

        Differs from the normalised log density by the constant ``-(latent_dim/2) log 2π - log Z``.
        """
        return -self._energy(z, y, check=None)

    def _joint_log_prob_checked_y(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob` for a ``y`` :meth:`sample` has already checked: no range check at every step."""
        return -self._energy(z, y, check=False)

    def guided_log_prob(self, z: torch.Tensor, y: int | torch.Tensor, guidance: float) -> torch.Tensor:
        """Unnormalised ``log p(z) + w log p(y|z)``, ``(B,)``: the target of guided class-conditional draws.

        ``= logsumexp F(z) - ||z||²/2 + w (F(z)[y] - logsumexp F(z))``; at ``w = 1`` it is :meth:`log_prob`
        ``(z, y)``.
        """
        return self._guided_log_prob(z, y, check_positive(guidance, "guidance"), check=None)

    def _guided_log_prob(
        self, z: torch.Tensor, y: int | torch.Tensor, guidance: float, check: bool | None
    ) -> torch.Tensor:
        f = self.logits(z)
        lse = f.logsumexp(-1)
        f_y = f.gather(1, self._y(y, z.shape[0], z.device, check)[:, None])[:, 0]
        return lse - 0.5 * z.square().sum(1) + guidance * (f_y - lse)

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        y: int | torch.Tensor | None = None,
        sampler: object | None = None,
        z0: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_diagnostics: bool = False,
        guidance: float | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, LangevinDiagnostics]:
        """``n`` approximate draws of ``z ~ p(z)``, or of ``z ~ p(z|y)`` when ``y`` is given.

        Args:
            n: number of chains.
            y: class for every chain (int) or per chain (``(n,)`` tensor); ``None`` samples the marginal.
            sampler: anything with ``run(log_prob_fn, z0, generator=None) -> (z, diagnostics)``
                (:class:`~genlib.sampling.LangevinSampler`, :class:`~genlib.sampling.PreconditionedLangevin`);
                default: this prior's :attr:`sampler`.
            z0: initial states ``(n, latent_dim)``; default ``N(0, I)`` (the EBM's base distribution).
            generator: random source for the initial states and the sampler.
            return_diagnostics: also return the run's :class:`~genlib.sampling.LangevinDiagnostics`.
            guidance: class-guidance scale ``w`` of conditional draws (target ``p(z) p(y|z)^w``); default
                :attr:`guidance`. Ignored without ``y``.

        Returns detached samples ``(n, latent_dim)`` (and the diagnostics if asked).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        p = next(self.parameters())
        if z0 is None:
            if generator is not None and generator.device.type != p.device.type:
                z0 = torch.randn(n, self.latent_dim, generator=generator, dtype=p.dtype).to(p.device)
            else:
                z0 = torch.randn(n, self.latent_dim, generator=generator, dtype=p.dtype, device=p.device)
        elif self._z(z0, "z0").shape[0] != n:
            raise ValueError(f"z0 must have shape ({n}, {self.latent_dim}), got {tuple(z0.shape)}")
        w = self.guidance if guidance is None else check_positive(guidance, "guidance")
        sampler = self.sampler if sampler is None else sampler
        if not callable(getattr(sampler, "run", None)):
            raise ValueError(f"sampler must have a run(log_prob_fn, z0, generator) method, got {sampler!r}")
        if y is None:
            target = self.log_prob
        else:
            y = self._y(y, n, p.device)
            # y is checked once here; the targets skip the check at every step (a host sync each).
            target = functools.partial(self._joint_log_prob_checked_y, y=y) if w == 1 else functools.partial(
                self._guided_log_prob, y=y, guidance=w, check=False)
        z, diag = sampler.run(target, z0, generator=generator)
        return (z, diag) if return_diagnostics else z

    # ------------------------------------------------------------------ training terms
    def kl(
        self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, *, score_grad: bool = True
    ) -> torch.Tensor:
        """Per-example ``KL(q(z|x) || p(z)) - log Z = KL(q || N(0, I)) - logsumexp F(z)``, ``(B,)``.

        ``KL(q || p) = E_q[log q - log N(z; 0, I) - logsumexp F(z)] + log Z``: the Gaussian part is
        analytic, the score part is the one-sample estimate at the reparameterised ``z``, and ``log Z`` (which
        does not depend on the encoder) is dropped. Gradients flow to the encoder through ``mu``, ``logvar``,
        ``z`` and, with ``score_grad`` (default), to ``F``; ``F`` is trained with :meth:`ebm_loss`, so a
        trainer that sums both terms into one loss passes ``score_grad=False`` (``F`` with detached
        parameters).
        """
        self._z(mu, "mu")
        if logvar.shape != mu.shape or z.shape != mu.shape:
            raise ValueError(
                "mu, logvar and z must share a shape, got "
                f"{tuple(mu.shape)}, {tuple(logvar.shape)}, {tuple(z.shape)}"
            )
        kl_normal = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)
        if score_grad:
            scores = self.logits(z)
        else:
            detached = {k: v.detach() for k, v in self.score.named_parameters()}
            scores = torch.func.functional_call(self.score, detached, (self._z(z),))
        return kl_normal - scores.logsumexp(-1)

    def ebm_loss(
        self, z_posterior: torch.Tensor, z_prior_samples: torch.Tensor, score_penalty: float = 0.0
    ) -> torch.Tensor:
        """Scalar loss whose gradient in ``F``'s parameters is minus the maximum-likelihood gradient.

        ``loss = -mean logsumexp F(z+) + mean logsumexp F(z-)`` with ``z+ ~ q(z|x)`` (posterior samples) and
        ``z- ~ p(z)`` (e.g. :meth:`sample`), both detached, so ``-grad loss = E_q[grad logsumexp F(z+)] -
        E_p[grad logsumexp F(z-)]``, the gradient of the data log-likelihood w.r.t. ``F`` (the ``log Z`` term
        contributes ``-E_p[...]``). Only ``F`` receives gradients.

        ``score_penalty = a > 0`` adds ``a * mean(logsumexp F(z±)²)`` (Du & Mordatch 2019): it keeps ``F``
        from growing without bound where short-run Langevin chains never reach, at the cost of a small bias.
        """
        check_positive(score_penalty, "score_penalty", allow_zero=True)
        pos = self.logits(self._z(z_posterior, "z_posterior").detach()).logsumexp(-1)
        neg = self.logits(self._z(z_prior_samples, "z_prior_samples").detach()).logsumexp(-1)
        loss = neg.mean() - pos.mean()
        if score_penalty:
            loss = loss + score_penalty * (pos.square().mean() + neg.square().mean())
        return loss

    def classification_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``p(y|z) = softmax F(z)`` against labels ``y`` ``(B,)`` (labelled data).

        ``z`` is not detached: the encoder can learn from labels through it; detach it yourself if not wanted.
        """
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be an int64 tensor of shape ({z.shape[0]},), got {type(y).__name__}")
        return F.cross_entropy(self.logits(z), self._y(y, z.shape[0], z.device))

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, n_classes={self.n_classes}, guidance={self.guidance:g}"

