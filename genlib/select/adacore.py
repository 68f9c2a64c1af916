"""AdaCore: coresets on curvature-preconditioned gradients (Pooladzandi, Davini & Mirzasoleiman, ICML 2022).

CRAIG covers the gradients ``g_i``; AdaCore covers the Newton-like directions ``H_i^{-1} g_i`` so that the
coreset also matches the loss curvature, which makes it robust on ill-conditioned problems. As in the
paper, ``H_i`` is the diagonal of the per-example Hessian of the cross-entropy loss with respect to the
last layer (the logits, or the last linear layer's weight when the penultimate-layer ``embeddings`` are
given), estimated with Hutchinson's method, ``diag(H) = E[z * Hz]`` for Rademacher ``z``, and both
gradient and Hessian are smoothed across calls to :meth:`AdaCore.fit` the way Adam / AdaHessian smooth
them across steps:

    m = beta1 m + (1 - beta1) g,      v = beta2 v + (1 - beta2) diag(H)^2,       (eq. 4.6, 4.8)
    features = clip(m_hat / v_hat^(power / 2), -max_step, max_step),  with Adam's bias corrections.

On the first fit that is ``g / |diag H|^power``, clipped. The averages are per example: call ``fit`` with
the same examples in the same order (a change of shape restarts them, as does :meth:`AdaCore.reset`).

Why a clip and not Adam's ``+ eps``. For the cross-entropy at the logits ``g_k / H_kk`` is ``1 / (1 - p_k)``
for ``k != y`` and ``-1 / p_y`` for the label: bounded wherever the draw is right, although ``g`` and ``H``
vanish together as ``p_k -> 0``. An absolute ``eps`` (1e-8, as genlib had) replaced that ratio by
``p_k / (p_k + eps)``: past a logit gap of ~18 nats (draws filtered at the paper's ``H < 1e-6``, confident
real data) a step function of the gap around ``eps`` instead of the paper's ~1. The clip leaves the paper's
``H^-1 g`` (eq. 4.9) unchanged wherever it is below ``max_step`` and bounds it where the curvature vanishes
faster than the gradient (a confidently wrong label, a Hutchinson estimate near 0), the trust region PSGD
uses for the same reason. Gradients and Hessians are taken in float64, ``1 - p`` without cancellation, so
the ratio keeps its limit until ``p_k`` underflows to 0 at a ~745-nat logit gap (then ``0 / 0`` gives 0).

``preconditioner="psgd"`` (or ``"psgd-dense"``, or any :class:`genlib.optim.preconditioners.Preconditioner`)
replaces the per-example diagonal by one PSGD preconditioner ``P`` shared by all examples, fitted on the
Hessian-vector pairs ``(z, H_i z)`` of the examples (``P -> E[H^2]^(-1/2)``, well defined where ``H`` is
singular or noisy): features are ``P m_hat``. ``P`` keeps fitting across calls, which replaces the second
moment average.
The selection itself is :class:`~genlib.select.craig.Craig`'s facility location on these features.
AdaCore's code was never released; this is written from the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from genlib.optim.preconditioners import DensePreconditioner, DiagPreconditioner, Preconditioner
from genlib.select._common import as_tensor, check_labels
from genlib.select.craig import Craig
from genlib.select.facility import Greedy, Metric
from genlib.utils import check_positive

Tensor = torch.Tensor

__all__ = [
    "AdaCore",
    "hutchinson_diagonal",
    "cross_entropy_gradient",
    "cross_entropy_hessian_diagonal",
    "last_layer_loss",
]


def _rademacher(shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
    z = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (2 * z - 1).to(device=like.device, dtype=like.dtype)


def hutchinson_diagonal(
    loss_fn: Callable[[Tensor], Tensor],
    params: Tensor,
    n_samples: int = 10,
    *,
    generator: torch.Generator | None = None,
    return_pairs: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Hutchinson estimate of per-example Hessian diagonals, ``diag(H_i) ~ mean_s z_s * (H_i z_s)``.

    Args:
        loss_fn: maps ``params`` ``(n, *shape)`` to per-example losses ``(n,)``; loss ``i`` may depend on
            ``params[i]`` only, so the Hessian of the summed loss is block diagonal and one Hessian-vector
            product (forward-over-reverse, :func:`torch.func.jvp` of :func:`torch.func.grad`) gives all
            ``n`` per-example products at once.
        params: point ``(n, *shape)`` at which to take the Hessians.
        n_samples: number of Rademacher probes ``z``.
        generator: CPU generator for the probes.
        return_pairs: also return the probes and products ``(z, Hz)``, each ``(n_samples, n, *shape)``,
            the curvature pairs a PSGD preconditioner fits on.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    params = as_tensor(params, "params")
    grad_fn = torch.func.grad(lambda p: loss_fn(p).sum())
    acc = torch.zeros_like(params)
    zs, hzs = [], []
    for _ in range(n_samples):
        z = _rademacher(params.shape, generator, params)
        _, hz = torch.func.jvp(grad_fn, (params,), (z,))
        acc += z * hz
        if return_pairs:
            zs.append(z)
            hzs.append(hz)
    diag = acc / n_samples
    if return_pairs:
        return diag, torch.stack(zs), torch.stack(hzs)
    return diag


def last_layer_loss(
    logits: Tensor, labels: Tensor, embeddings: Tensor | None = None
) -> Callable[[Tensor], Tensor]:
    """Per-example cross-entropy as a function of a per-example perturbation of the last layer.

    Without ``embeddings`` the perturbation ``delta`` ``(n, K)`` is added to the logits; with
    ``embeddings`` ``phi`` ``(n, F)`` it is a perturbation ``(n, K, F)`` of the last linear layer's weight,
    ``logits + delta @ phi``. At ``delta = 0`` gradients and Hessians are those of the trained model (the
    weight itself is not needed: the loss is linear-in-weight up to the softmax).
    """

    def loss(delta: Tensor) -> Tensor:
        z = logits + (delta if embeddings is None else torch.einsum("nkf,nf->nk", delta, embeddings))
        return F.cross_entropy(z, labels, reduction="none")

    return loss


def _softmax_and_complement(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``p = softmax(logits)`` and ``1 - p`` without cancellation: at the largest class ``1 - p`` is the
    sum of the other classes' probabilities (each accurate), so a confident row keeps ``1 - p_max > 0``
    instead of rounding to 0 once the logit gap passes ~37 nats (float64)."""
    p = torch.softmax(logits, dim=1)
    top = logits.argmax(1, keepdim=True)
    rest = p.scatter(1, top, 0.0).sum(1, keepdim=True)
    return p, (1 - p).scatter(1, top, rest)


def cross_entropy_gradient(logits: Tensor, labels: Tensor, embeddings: Tensor | None = None) -> Tensor:
    """Per-example gradient of the cross-entropy: ``p - onehot(y)`` w.r.t. the logits ``(n, K)``, or
    ``(p - onehot(y))_k phi_f`` w.r.t. the last layer's weight ``(n, K, F)`` given ``embeddings`` ``phi``.
    The label's entry ``p_y - 1`` is taken as ``-(1 - p_y)`` without cancellation (see
    :func:`cross_entropy_hessian_diagonal`), so its ratio to the Hessian stays ``-1 / p_y``."""
    logits = as_tensor(logits, "logits", ndim=2)
    labels = check_labels(labels, logits.shape[0], num_classes=logits.shape[1]).to(logits.device)
    p, q = _softmax_and_complement(logits)
    rows = labels[:, None]
    g = p.scatter(1, rows, -q.gather(1, rows))
    if embeddings is None:
        return g
    return g[:, :, None] * embeddings[:, None, :]


def cross_entropy_hessian_diagonal(logits: Tensor, embeddings: Tensor | None = None) -> Tensor:
    """Closed-form Hessian diagonal of the cross-entropy: ``p (1 - p)`` w.r.t. the logits ``(n, K)``, or
    ``p_k (1 - p_k) phi_f^2`` w.r.t. the last layer's weight ``(n, K, F)`` given ``embeddings`` ``phi``.
    ``1 - p`` of the most likely class is the sum of the others' probabilities, not a rounded difference."""
    p, q = _softmax_and_complement(as_tensor(logits, "logits", ndim=2))
    h = p * q
    if embeddings is None:
        return h
    return h[:, :, None] * embeddings.square()[:, None, :]


class AdaCore(Craig):
    """Facility-location coreset over Hessian-preconditioned, exponentially averaged gradients.

    Args:
        fraction, budget, per_class, greedy, metric, chunk_size, epsilon, seed: as :class:`Craig`.
        hessian: ``"hutchinson"`` (the paper's estimator; ``n_hutchinson`` probes) or ``"exact"`` (the
            closed form :func:`cross_entropy_hessian_diagonal`, cheaper and noise-free for this loss).
        n_hutchinson: Rademacher probes per fit.
        beta1, beta2: averaging rates of gradient and squared Hessian diagonal across fits, in [0, 1).
        power: Hessian power ``k`` in ``g / |H|^k``; 1 is Newton-like (the paper), 0 is plain CRAIG.
        max_step: every feature (a per-coordinate Newton step) is clipped to ``[-max_step, max_step]``;
            the paper has no bound (the limit ``max_step -> inf``). Must be >= 1, so ``power=0`` is
            CRAIG exactly (``|p - y| <= 1``).
        preconditioner: ``"diag"`` (the averaged Hessian diagonal, as in the paper), ``"psgd"`` (a diagonal
            PSGD preconditioner over the per-example parameter shape), ``"psgd-dense"`` (a dense one over the
            flattened shape; ``K * F`` squared memory), or a ready
            :class:`~genlib.optim.preconditioners.Preconditioner` of that shape (e.g. another ``lr``).
        psgd_steps: PSGD fitting steps per ``fit``.
        psgd_batch: examples whose Hessian-vector pairs feed each PSGD fit (a random subset; each gives
            ``n_hutchinson`` pairs).

    ``fit(logits, labels, embeddings=None)``; ``select()`` as :class:`Craig`. After ``fit``,
    ``gradients_`` and ``hessian_diag_`` hold this call's per-example estimates (``hessian_diag_`` is
    ``None`` with a PSGD preconditioner, fitted in ``preconditioner_``) and ``features_`` the
    preconditioned, averaged features that are covered.
    """

    def __init__(
        self,
        fraction: float | None = None,
        *,
        budget: int | None = None,
        per_class: bool = True,
        greedy: Greedy = "lazy",
        metric: Metric = "euclidean",
        chunk_size: int | None = None,
        epsilon: float = 0.01,
        seed: int | None = None,
        hessian: Literal["hutchinson", "exact"] = "hutchinson",
        n_hutchinson: int = 10,
        beta1: float = 0.9,
        beta2: float = 0.999,
        power: float = 1.0,
        max_step: float = 100.0,
        preconditioner: Literal["diag", "psgd", "psgd-dense"] | Preconditioner = "diag",
        psgd_steps: int = 50,
        psgd_batch: int = 1024,
    ):
        super().__init__(
            fraction,
            budget=budget,
            per_class=per_class,
            greedy=greedy,
            features="logits",
            metric=metric,
            chunk_size=chunk_size,
            epsilon=epsilon,
            seed=seed,
        )
        if hessian not in ("hutchinson", "exact"):
            raise ValueError(f"hessian must be 'hutchinson' or 'exact', got {hessian!r}")
        if isinstance(n_hutchinson, bool) or not isinstance(n_hutchinson, int) or n_hutchinson < 1:
            raise ValueError(f"n_hutchinson must be a positive int, got {n_hutchinson!r}")
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(beta) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta!r}")
        if not isinstance(preconditioner, Preconditioner) and preconditioner not in (
            "diag",
            "psgd",
            "psgd-dense",
        ):
            raise ValueError(
                "preconditioner must be 'diag', 'psgd', 'psgd-dense' or a genlib.optim Preconditioner, "
                f"got {preconditioner!r}"
            )
        for name, val in (("psgd_steps", psgd_steps), ("psgd_batch", psgd_batch)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.psgd_steps, self.psgd_batch = psgd_steps, psgd_batch
        self.hessian = hessian
        self.n_hutchinson = n_hutchinson
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.power = check_positive(power, "power", allow_zero=True)
        number = isinstance(max_step, (int, float)) and not isinstance(max_step, bool)
        ms = float(max_step) if number else math.nan
        if not (math.isfinite(ms) and ms >= 1.0):
            raise ValueError(f"max_step must be a finite number >= 1, got {max_step!r}")
        self.max_step = ms
        self.preconditioner = preconditioner
        self._generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.reset()

    def reset(self) -> None:
        """Forget the running averages and a PSGD preconditioner built here (the next fit starts afresh;
        a preconditioner passed in by the caller is kept)."""
        self._m: Tensor | None = None
        self._v: Tensor | None = None
        self.step_ = 0
        given = isinstance(self.preconditioner, Preconditioner)
        self.preconditioner_: Preconditioner | None = self.preconditioner if given else None

    def fit(self, logits: Any, labels: Any = None, embeddings: Any = None) -> AdaCore:
        """Estimate per-example gradients and Hessian diagonals, update the averages, precondition.

        Args:
            logits: ``(n, K)`` logits of the current model.
            labels: ``(n,)`` integer classes in ``[0, K)``.
            embeddings: optional ``(n, F)`` penultimate-layer features; then gradients and Hessians are
                taken w.r.t. the last linear layer's weight (``K * F`` numbers per example; append a
                column of ones to ``embeddings`` to include the bias).
        """
        logits = as_tensor(logits, "logits", ndim=2)
        n = logits.shape[0]
        if labels is None:
            raise ValueError("labels are required: AdaCore differentiates the cross-entropy loss")
        labels = check_labels(labels, n, num_classes=logits.shape[1]).to(logits.device)
        if embeddings is not None:
            embeddings = as_tensor(embeddings, "embeddings", ndim=2).to(logits)
            if embeddings.shape[0] != n:
                raise ValueError(f"embeddings must have {n} rows to match logits, got {embeddings.shape[0]}")
        out_dtype = logits.dtype
        # float64: p_k underflows only past a ~700-nat logit gap (float32: ~100), see the module docstring
        logits = logits.detach().double()
        if embeddings is not None:
            embeddings = embeddings.double()

        shape = (n, logits.shape[1]) if embeddings is None else (n, logits.shape[1], embeddings.shape[1])
        loss = last_layer_loss(logits, labels, embeddings)
        delta = logits.new_zeros(shape)
        grad = cross_entropy_gradient(logits, labels, embeddings)  # closed form: no p_y - 1 cancellation
        psgd = self.preconditioner != "diag"
        if psgd:
            h = None
        elif self.hessian == "exact":
            h = cross_entropy_hessian_diagonal(logits, embeddings)
        else:
            h = hutchinson_diagonal(loss, delta, self.n_hutchinson, generator=self._generator)

        if self._m is None or self._m.shape != grad.shape or self._m.device != grad.device:
            self.reset()
            self._m, self._v = torch.zeros_like(grad), torch.zeros_like(grad)
        self.step_ += 1
        self._m.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        m_hat = self._m / (1 - self.beta1**self.step_)
        if psgd:
            features = self._fit_psgd(logits, labels, embeddings, m_hat)
        else:
            self._v.mul_(self.beta2).addcmul_(h, h, value=1 - self.beta2)
            v_hat = self._v / (1 - self.beta2**self.step_)
            den = v_hat.pow(self.power / 2)
            # m / den, clipped; where the curvature is exactly 0 the step is the clip bound (0 if m is 0)
            step = torch.where(den > 0, m_hat / den.clamp_min(torch.finfo(den.dtype).tiny),
                               m_hat.sign() * self.max_step)
            features = step.clamp_(-self.max_step, self.max_step)

        self.gradients_ = grad.to(out_dtype)
        self.hessian_diag_ = None if h is None else h.to(out_dtype)
        self.labels_ = labels
        self.features_ = features.reshape(n, -1).to(out_dtype)
        return self

    def _fit_psgd(self, logits: Tensor, labels: Tensor, embeddings: Tensor | None, m_hat: Tensor) -> Tensor:
        """Fit the shared PSGD preconditioner on Hessian-vector pairs of a subset; return ``P m_hat``."""
        n, shape = m_hat.shape[0], tuple(m_hat.shape[1:])
        dim = m_hat[0].numel()
        pre = self.preconditioner_
        if pre is None:
            kw = {"dtype": logits.dtype, "device": logits.device}
            dense = self.preconditioner == "psgd-dense"
            pre = DensePreconditioner(dim, **kw) if dense else DiagPreconditioner(shape, **kw)
            self.preconditioner_ = pre
        if pre.shape not in (shape, (dim,)):
            raise ValueError(
                f"preconditioner has shape {pre.shape}; expected {shape} or ({dim},) per example"
            )
        flat = pre.shape != shape

        sub = torch.randperm(n, generator=self._generator)[: self.psgd_batch].to(logits.device)
        emb = None if embeddings is None else embeddings[sub]
        _, z, hz = hutchinson_diagonal(
            last_layer_loss(logits[sub], labels[sub], emb),
            m_hat.new_zeros((sub.numel(), *shape)),
            self.n_hutchinson,
            generator=self._generator,
            return_pairs=True,
        )
        z, hz = z.reshape(-1, *pre.shape), hz.reshape(-1, *pre.shape)
        for _ in range(self.psgd_steps):
            pre.update(z, hz)
        out = pre.precondition(m_hat.reshape(n, dim) if flat else m_hat)
        return out.reshape(m_hat.shape)

    def fit_select(self, logits: Any, labels: Any = None, embeddings: Any = None) -> tuple[Tensor, Tensor]:
        """``fit(logits, labels, embeddings).select()``."""
        return self.fit(logits, labels, embeddings).select()
