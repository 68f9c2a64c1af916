"""PSGD preconditioners ``P = QᵀQ`` fitted on a Lie group from curvature pairs ``(v, h)``.

Every family here shares one fitting skeleton (Li 2015/2018; Pooladzandi & Li 2024). Given a batch of pairs
``v, h`` of shape ``(n, *shape)`` — ``h ≈ H v`` a Hessian-vector product, or ``h = g`` a gradient for
whitening — one :meth:`~Preconditioner.update` takes a normalised descent step on the criterion

    c(P) = E[hᵀ P h + vᵀ P⁻¹ v],    P = QᵀQ,

whose minimiser satisfies ``P E[hhᵀ] P = E[vvᵀ]``; with ``v ~ N(0, I)`` and ``h = Hv + ε`` this is
``P = (H² + E[εεᵀ])^(-1/2)``, well defined for indefinite ``H`` too. With ``a = Qh`` and ``b = Q⁻ᵀv`` the
gradient of ``c`` on the group (perturbation ``Q ← (I + E)Q``) is ``∇ = E[aaᵀ] − E[bbᵀ]``, projected onto
the family's Lie algebra (upper-triangular, diagonal, X-shaped, ...). The step is

    Q ← (I − μ ∇ / ‖E[aaᵀ] + E[bbᵀ]‖) Q,

normalised by (a cheap bound of) the criterion's second-order term, so ``μ`` in 0.01–0.1 needs no tuning.

Usage (e.g. the PSGD-preconditioned Langevin sampler, pairs from ``n_chains`` chains)::

    pre = DensePreconditioner(latent_dim)        # or DiagPreconditioner(latent_dim), LRAPreconditioner(...)
    pre.update(v, h)                             # v, h: (n_chains, latent_dim), h = H v
    step = pre.precondition(grad)                # P·grad, grad: (..., latent_dim)
    noise = pre.apply_qt(torch.randn_like(z))    # Qᵀξ has covariance QᵀQ = P

``init_scale=None`` sets ``Q = (E‖v‖² / E‖h‖²)^(1/4)·I`` from the first batch (``Q = I`` until then; zero
``h`` keeps ``Q = I``). ``dtype`` is the storage dtype of ``Q``; half types are stored but computed in
float32. Written here rather than imported because no maintained library provides these Lie-group fits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

__all__ = [
    "Preconditioner",
    "DensePreconditioner",
    "DiagPreconditioner",
    "LRAPreconditioner",
    "XMatPreconditioner",
    "KronPreconditioner",
]

_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Widest of the given dtypes, with half types promoted to float32 (solves need single precision)."""
    out = torch.float32 if dtypes[0] in _HALF else dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, torch.float32 if d in _HALF else d)
    return out


def _mean_rows(x: torch.Tensor) -> torch.Tensor:
    """Mean over the pairs (rows); the optimizers' single pair needs no reduction (~5 µs per call)."""
    return x[0] if x.shape[0] == 1 else x.mean(0)


def _sq_norm(x: torch.Tensor) -> torch.Tensor:
    """``Σ x²`` as one kernel (a dot product of the flattened tensor with itself)."""
    flat = x.reshape(-1)
    return torch.dot(flat, flat)


def _to_float(x: torch.Tensor) -> float:
    return float(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _host_scalars(x: torch.Tensor) -> bool:
    """Whether a fit on ``x``'s device should do its scalar arithmetic in Python numbers: on CPU a sync is
    free and a scalar kernel is not; on GPU every sync stalls the stream."""
    return x.device.type == "cpu"


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖₂ without squaring tiny or huge entries out of range (scaled by max |x|)."""
    if x.device.type == "cpu":  # plain norm when it is safely in range (a sync costs nothing on CPU)
        n = torch.linalg.vector_norm(x)
        if 1e-15 <= float(n) <= 1e15:  # squares neither overflowed nor lost a relevant tiny entry
            return n
    m = x.abs().amax()
    m_safe = torch.where(m > 0, m, torch.ones_like(m))
    return m * torch.linalg.vector_norm(x / m_safe)


def psd_norm_lower_bound(S: torch.Tensor) -> torch.Tensor:
    """Cheap lower bound of the spectral norm of a symmetric PSD matrix ``S``: ``‖S x‖`` for ``x`` the unit
    column of largest norm (one power-iteration step from the best column; within a small factor of λ_max).
    Sync-free: no data-dependent Python branches, so it stays cheap on GPU."""
    j = torch.argmax((S * S).sum(0)).view(1)
    x = S.index_select(1, j).squeeze(1)
    x = x / (torch.linalg.vector_norm(x) + _tiny(S.dtype))
    return torch.linalg.vector_norm(S @ x)


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele et al. 2014): a well-mixed 64-bit hash of an integer."""
    z = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _small_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of a small, well-conditioned square matrix. On CPU through NumPy's LAPACK call: for
    10 × 10 it takes ~9 µs against torch's ~14 µs dispatch."""
    if m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64):
        try:
            return torch.from_numpy(np.linalg.inv(m.numpy()))
        except np.linalg.LinAlgError:  # exactly singular: same (non-raising) result as on GPU
            pass
    return torch.linalg.inv_ex(m)[0]


def _add_outer_(m: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``m += xᵀ y`` in place for ``x`` of shape ``(k, p)`` and ``y`` of shape ``(k, q)``. On CPU, for a wide
    ``m`` (a dense Q) a few rank-1 updates beat one thin GEMM (``addmm_`` with k = 2 is ~4× slower than two
    ``addr_`` at 1930 × 1930), while for a tall, narrow ``m`` (LRA's n × rank factors) ``addmm_`` is ~3×
    faster than ``addr_``."""
    if m.device.type == "cpu" and x.shape[0] <= 16 and m.shape[1] >= 256:
        for xi, yi in zip(x, y):
            m.addr_(xi, yi)
        return m
    return m.addmm_(x.mT, y)


def _sq_norms_through(
    xa: torch.Tensor, xb: torch.Tensor, f: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(‖xa fᵀ‖², ‖xb fᵀ‖²)`` (Frobenius) for ``xa, xb`` of shape ``(n, r)`` and ``f`` of shape
    ``(dim, r)``. With few rows the two thin products are cheaper (4·n·dim·r flops) than the Gram route
    ``x (fᵀf) xᵀ`` (2·dim·r² flops for ``fᵀf``); with many rows the Gram route is."""
    n, r = xa.shape
    if 2 * n < r:
        y = torch.cat([xa, xb]) @ f.mT
        return _sq_norm(y[:n]), _sq_norm(y[n:])
    gram = f.mT @ f
    return ((xa @ gram) * xa).sum(), ((xb @ gram) * xb).sum()


def _apply_along(x: torch.Tensor, m: torch.Tensor, dim: int) -> torch.Tensor:
    """``y[..., i, ...] = Σ_k x[..., k, ...] m[k, i]`` along ``dim`` (x's slices are row vectors times m)."""
    nd = x.ndim
    dim = dim % nd
    if dim == nd - 1:
        return x @ m
    if dim == nd - 2:
        return m.mT @ x
    return torch.movedim(torch.movedim(x, dim, -1) @ m, -1, dim)


def _scale_along(x: torch.Tensor, q: torch.Tensor, dim: int) -> torch.Tensor:
    """Multiply ``x`` by the vector ``q`` along ``dim``."""
    dim = dim % x.ndim
    return x * q.reshape(q.shape + (1,) * (x.ndim - 1 - dim))


class Preconditioner(ABC):
    """Base class: a preconditioner ``P = QᵀQ`` over tensors of one ``shape``.

    Args:
        shape: shape of one vector the preconditioner acts on (``(dim,)`` for vector families).
        lr: step size ``μ`` of the normalised Lie-group fit (0.01–0.1; default 0.1).
        init_scale: ``Q = init_scale·I`` at start; ``None`` sets it from the first pair batch.
        dtype: storage dtype of ``Q`` (float32 default; bfloat16/float16 stored, computed in float32).
        device: device of ``Q`` (default CPU; the optimizers pass each parameter's device).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        lr: float = 0.1,
        init_scale: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(shape, int):
            shape = (shape,)
        shape = tuple(shape)
        if not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
        lr_f = float(lr) if isinstance(lr, (int, float)) else float("nan")
        if not (math.isfinite(lr_f) and lr_f > 0):
            raise ValueError(f"lr (preconditioner step size μ) must be finite and > 0, got {lr!r}")
        if init_scale is not None:
            s = float(init_scale)
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"init_scale must be None or finite and > 0, got {init_scale!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
        self.shape: tuple[int, ...] = shape
        self.numel: int = math.prod(shape)
        self.lr = lr_f
        self.init_scale = init_scale
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.initialized = init_scale is not None
        self.num_updates = 0
        #: Expected fits per :meth:`precondition` call, a hint for families that cache products of Q (Kron's
        #: factor products pay off only when several calls share one fit). The optimizers set it to their
        #: update probability; 1.0 (a fit per call, as in the Langevin sampler) by default.
        self.refit_rate = 1.0
        self._cd_cache: dict[torch.dtype, torch.dtype] = {}  # input dtype → compute dtype

    # ---- family-specific pieces -------------------------------------------------------------------------
    @abstractmethod
    def _tensors(self) -> dict[str, torch.Tensor]:
        """The state tensors defining Q (updated in place)."""

    @abstractmethod
    def _rescale(self, c: torch.Tensor) -> None:
        """Q ← c·Q (c a positive scalar tensor)."""

    @abstractmethod
    def _fit(self, v: torch.Tensor, h: torch.Tensor, lr: torch.Tensor | float) -> None:
        """One Lie-group step of size ``lr`` from pairs ``(n, *shape)`` in the compute dtype, whose norms
        are in a safe float range (the step does not depend on their common scale). ``lr`` is a scalar
        tensor on GPU (sync-free; 0 for an all-zero pair) and a float on CPU, where a fit may turn its
        scalars into Python numbers (see :meth:`_update_cpu`)."""

    @abstractmethod
    def _precondition(self, g: torch.Tensor) -> torch.Tensor:
        """P·g for g of shape ``(..., *shape)`` in the compute dtype."""

    @abstractmethod
    def _apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        """Qᵀ·x for x of shape ``(..., *shape)`` in the compute dtype."""

    def _invalidate(self) -> None:  # noqa: B027 - optional hook, most families cache nothing
        """Drop caches derived from Q (after an update or a load)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_cd_cache", {})  # objects pickled before these existed
        self.__dict__.setdefault("refit_rate", 1.0)

    # ---- public API -------------------------------------------------------------------------------------
    def _check_batch(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if tuple(x.shape) == self.shape:
            return x.unsqueeze(0)
        if x.ndim == len(self.shape) + 1 and tuple(x.shape[1:]) == self.shape and x.shape[0] >= 1:
            return x
        raise ValueError(f"{name} must have shape (n, *{self.shape}) or {self.shape}, got {tuple(x.shape)}")

    def _reshape_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.no_grad()
    def update(self, v: torch.Tensor, h: torch.Tensor) -> None:
        """One fitting step of Q from a batch of curvature pairs.

        Args:
            v: probe vectors, shape ``(n, *shape)`` (or ``shape`` for a single pair); ``v ~ N(0, I)``.
            h: matching curvature, same shape: ``h = H v`` (Newton type) or ``h = g`` (whitening).
        """
        v = self._check_batch(v, "v")
        h = self._check_batch(h, "h")
        if v.shape != h.shape:
            raise ValueError(f"v and h must have the same shape, got {tuple(v.shape)} and {tuple(h.shape)}")
        if not bool(torch.isfinite(v).all() & torch.isfinite(h).all()):
            raise ValueError("v or h contains NaN or Inf: refusing to fit the preconditioner on it")
        self._update(v, h)

    def _update(self, v: torch.Tensor, h: torch.Tensor) -> None:
        """:meth:`update` without validation (the optimizers check their pairs once for all tensors)."""
        v = self._reshape_batch(v)
        h = self._reshape_batch(h)
        cd = self._cd_cache.get(v.dtype)
        if cd is None:
            cd = self._cd_cache[v.dtype] = _compute_dtype(self.dtype, v.dtype)
        if v.dtype != cd or h.dtype != cd or v.device != self.device or h.device != self.device:
            v = v.to(device=self.device, dtype=cd)
            h = h.to(device=self.device, dtype=cd)
        if _host_scalars(v):  # same arithmetic on Python floats: ~15 small tensor ops less per refit
            self._update_cpu(v, h)
            return
        # Square roots of under/overflow-safe norms: ‖v‖ and ‖h‖ may be anywhere in the float range.
        vv, hh = _safe_norm(v).sqrt(), _safe_norm(h).sqrt()
        ok = (vv > 0) & (hh > 0)
        one = torch.ones_like(vv)
        vv, hh = torch.where(ok, vv, one), torch.where(ok, hh, one)
        if not self.initialized:
            # Q = (‖v‖/‖h‖)^(1/2)·I; an all-zero h (or v) carries no scale: keep Q until real data comes.
            self._rescale(vv / hh)
            self.initialized = bool(ok)
        # The normalised step is invariant to a common scale of (v, h): bring the pair to ‖v‖‖h‖ = 1 so
        # tiny finite-difference or huge gradient pairs cannot under/overflow the fit. An all-zero pair
        # gets a zero step (sync-free), else repeated refits on it would grow Q without bound.
        s = 1.0 / (vv * hh)
        self._fit(v * s, h * s, ok.to(v.dtype) * self.lr)
        self.num_updates += 1
        self._invalidate()

    def _update_cpu(self, v: torch.Tensor, h: torch.Tensor) -> None:
        """:meth:`_update`'s normalisation with the norms as Python floats (a sync is free on CPU)."""
        nv, nh = float(_safe_norm(v)), float(_safe_norm(h))
        if nv > 0 and nh > 0:  # an all-zero pair carries nothing: no step (nor would Q ever stop growing)
            if not self.initialized:
                self._rescale(torch.tensor(math.sqrt(nv) / math.sqrt(nh)))
                self.initialized = True
            if not 1e-6 <= nv * nh <= 1e6:  # the fit is invariant to the pair's scale: only rescale
                s = 1.0 / (math.sqrt(nv) * math.sqrt(nh))  # where squares could under/overflow
                v, h = v * s, h * s
            self._fit(v, h, self.lr)
        self.num_updates += 1
        self._invalidate()

    @torch.no_grad()
    def precondition(self, g: torch.Tensor) -> torch.Tensor:
        """Return ``P·g`` for ``g`` of shape ``(..., *shape)`` (same dtype and device as ``g``)."""
        self._check_trailing(g, "g")
        return self._precondition_unchecked(g)

    def _precondition_unchecked(self, g: torch.Tensor) -> torch.Tensor:
        """:meth:`precondition` without validation, for callers that checked ``g``'s shape once up front
        (the optimizers, whose gradients have the parameters' shapes). Casts only when ``g``'s dtype is not
        the compute dtype. Call under ``torch.no_grad()``."""
        cd = self._cd_cache.get(g.dtype)
        if cd is None:
            cd = self._cd_cache[g.dtype] = _compute_dtype(self.dtype, g.dtype)
        if cd == g.dtype:
            return self._precondition(g)
        return self._precondition(g.to(cd)).to(g.dtype)

    @torch.no_grad()
    def apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``Qᵀ·x`` for ``x`` of shape ``(..., *shape)``; ``Qᵀξ`` has covariance P for white ``ξ``."""
        self._check_trailing(x, "x")
        cd = _compute_dtype(self.dtype, x.dtype)
        return self._apply_qt(x.to(cd)).to(x.dtype)

    def _check_trailing(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor of shape (..., *{self.shape})")
        k = len(self.shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k :]) != self.shape:
            raise ValueError(f"{name} must have shape (..., *{self.shape}), got {tuple(x.shape)}")

    def to_dense(self) -> torch.Tensor:
        """The full matrix ``P`` of size ``(numel, numel)`` (for tests and small problems only)."""
        eye = torch.eye(self.numel, dtype=_compute_dtype(self.dtype), device=self.device)
        return self.precondition(eye.reshape((self.numel, *self.shape))).reshape(self.numel, self.numel)

    def state_dict(self) -> dict[str, Any]:
        """Tensors defining Q plus the fit counters; restore with :meth:`load_state_dict`."""
        return {
            "family": type(self).__name__,
            "shape": self.shape,
            "initialized": self.initialized,
            "num_updates": self.num_updates,
            "tensors": {k: t.detach().clone() for k, t in self._tensors().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (tensors are copied in place onto this object's device/dtype)."""
        if state.get("family") != type(self).__name__ or tuple(state.get("shape", ())) != self.shape:
            raise ValueError(
                f"state is for {state.get('family')} of shape {state.get('shape')}, "
                f"expected {type(self).__name__} of shape {self.shape}"
            )
        mine = self._tensors()
        theirs = state["tensors"]
        if set(mine) != set(theirs):
            raise ValueError(f"state tensors {sorted(theirs)} do not match expected {sorted(mine)}")
        for k, t in mine.items():
            if tuple(theirs[k].shape) != tuple(t.shape):
                raise ValueError(
                    f"state tensor {k!r} has shape {tuple(theirs[k].shape)}, expected {tuple(t.shape)}"
                )
            t.copy_(theirs[k])
        self.initialized = bool(state["initialized"])
        self.num_updates = int(state["num_updates"])
        self._invalidate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, lr={self.lr}, dtype={self.dtype})"


class DensePreconditioner(Preconditioner):
    """Dense ``Q`` (``dim × dim``) for small ``dim`` (≲ a few thousand; memory d²).

    ``triangular=False`` (default): ``Q`` on the general linear group, with ``Q⁻¹`` carried along by a
    Woodbury update so a refit costs O(n·d²) for ``n`` pairs (``Q⁻¹`` is recomputed from ``Q`` every
    256 fits to stop round-off drift); it fits noticeably faster than the triangular group. With few pairs
    (``2n < d``, the optimizers' case) both are updated in place by ``2n`` rank-1 updates each, using
    ``(Q⁻ᵀv)ᵀQ = vᵀ`` and ``Q⁻¹(Qh) = h``: a single-pair refit is two matrix-vector products and two rank-1
    updates on each of ``Q`` and ``Q⁻¹``, with no temporary of size d².
    ``triangular=True``: upper-triangular ``Q`` (the Cholesky-factor group, Li 2015) using triangular
    solves; fit O(n·d² + d³).
    """

    _REFRESH = 256

    def __init__(self, dim: int, *, triangular: bool = False, **kwargs: Any) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        super().__init__((dim,), **kwargs)
        self.triangular = bool(triangular)
        scale = 1.0 if self.init_scale is None else float(self.init_scale)
        self.Q = scale * torch.eye(dim, dtype=self.dtype, device=self.device)
        self.invQ = None if self.triangular else torch.eye(dim, dtype=self.dtype, device=self.device) / scale

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"Q": self.Q} if self.triangular else {"Q": self.Q, "invQ": self.invQ}

    def _rescale(self, c: torch.Tensor) -> None:
        self.Q.mul_(c.to(self.Q.dtype))
        if self.invQ is not None:
            self.invQ.div_(c.to(self.invQ.dtype))

    def _fit(self, v: torch.Tensor, h: torch.Tensor, lr: torch.Tensor | float) -> None:
        # Q and Q⁻¹ are updated in place (``.to`` is a no-op when storage and compute dtypes agree): every
        # d × d temporary is a pass over memory, and with few pairs the fit is memory-bound.
        dt = v.dtype
        tiny = _tiny(dt)
        Q = self.Q.to(dt)
        n, d = v.shape
        a = h @ Q.mT  # rows (Q h)ᵀ
        if self.triangular:
            b = torch.linalg.solve_triangular(Q, v, upper=True, left=False)  # rows vᵀQ⁻¹ = (Q⁻ᵀv)ᵀ
            aa, bb = a.mT @ a, b.mT @ b
            mu = lr / (psd_norm_lower_bound((aa + bb) / n) + tiny)
            Q.sub_(torch.triu((aa - bb) * (mu / n)) @ Q)
            if Q is not self.Q:
                self.Q.copy_(Q)
            return
        iQ = self.invQ.to(dt)
        b = v @ iQ
        # ∇ = (aᵀa − bᵀb)/n = Wᵀ Z / n with Z = [a; b], W = [a; −b]. Work in whichever of the 2n × 2n and
        # d × d spaces is smaller: many pairs (a sampler's chains) must not build a huge Gram matrix.
        refresh = (self.num_updates + 1) % self._REFRESH == 0
        if 2 * n < d:
            Z = torch.cat([a, b], 0)
            gram = Z @ Z.mT / n  # same nonzero spectrum as (aᵀa + bᵀb)/n
            c = (lr / (psd_norm_lower_bound(gram) + tiny)) / n
            # Z Q = [aQ; v] and Q⁻¹Wᵀ = [hᵀ, −Q⁻¹bᵀ] because b = vQ⁻¹ and a = hQᵀ: one pass over each of Q
            # and Q⁻¹ instead of two (round-off drift of Q⁻¹ is reset every _REFRESH fits).
            ZQ = torch.cat([a @ Q, v], 0)
            if not refresh:
                # Q⁻¹(I − c WᵀZ)⁻¹ = Q⁻¹ + c (Q⁻¹Wᵀ)(I − c Z Wᵀ)⁻¹ Z   (Woodbury, a 2n × 2n solve).
                cW = c * torch.cat([a, -b], 0)
                K = torch.eye(2 * n, dtype=dt, device=v.device) - Z @ cW.mT
                iQWt = torch.cat([c * h, -c * (b @ iQ.mT)], 0)  # rows of c·Q⁻¹Wᵀ
                _add_outer_(iQ, iQWt, torch.linalg.solve(K, Z))
            # Q ← (I − c WᵀZ) Q as 2n rank-1 updates in place: no d × d temporary.
            _add_outer_(Q, torch.cat([-c * a, c * b], 0), ZQ)
        else:
            aa, bb = a.mT @ a, b.mT @ b
            c = (lr / (psd_norm_lower_bound((aa + bb) / n) + tiny)) / n
            WtZ = (aa - bb) * c
            if not refresh:
                step = torch.eye(d, dtype=dt, device=v.device) - WtZ
                iQ.copy_(torch.linalg.solve(step, iQ, left=False))
            Q.sub_(WtZ @ Q)
        if refresh:
            iQ.copy_(torch.linalg.inv(Q))  # drop the round-off drift of the Woodbury updates
        if Q is not self.Q:
            self.Q.copy_(Q)
        if iQ is not self.invQ:
            self.invQ.copy_(iQ)

    def _precondition(self, g: torch.Tensor) -> torch.Tensor:
        Q = self.Q.to(g.dtype)
        return (g @ Q.mT) @ Q

    def _apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.Q.to(x.dtype)


class DiagPreconditioner(Preconditioner):
    """Diagonal (Jacobi) ``Q = diag(q)`` over any tensor ``shape``. The fit converges to
    ``P = sqrt(E[v⊙v] / E[h⊙h])`` element-wise.

    Args (besides :class:`Preconditioner`'s):
        elementwise_step: ``False`` (default): one step size for all entries, normalised by
            ``max E[(qh)² + (v/q)²]`` (the group's spectral-norm rule). ``True``: each entry ``i`` its own,
            ``μ / E[(q_i h_i)² + (v_i/q_i)²]`` (dissertation appendix A.1.4: the diagonal group is a direct
            sum of one-dimensional ones). Faster when entries' curvatures differ by orders of magnitude
            (the globally normalised step moves the flat entries by ``μ·small/large`` only); the same
            fixed point either way.
    """

    def __init__(
        self, shape: tuple[int, ...] | int, *, elementwise_step: bool = False, **kwargs: Any
    ) -> None:
        if not isinstance(elementwise_step, bool):
            raise ValueError(f"elementwise_step must be True or False, got {elementwise_step!r}")
        super().__init__(shape if not isinstance(shape, int) else (shape,), **kwargs)
        self.elementwise_step = elementwise_step
        scale = 1.0 if self.init_scale is None else float(self.init_scale)
        self.q = torch.full(self.shape, scale, dtype=self.dtype, device=self.device)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"q": self.q}

    def _rescale(self, c: torch.Tensor) -> None:
        self.q.mul_(c.to(self.q.dtype))

    def _fit(self, v: torch.Tensor, h: torch.Tensor, lr: torch.Tensor | float) -> None:
        # In-place on fresh temporaries: every full-size temporary is a pass over memory (and on CPU a
        # fresh allocation), which is what a diagonal fit costs.
        q = self.q.to(v.dtype)
        a2 = (h * q).square_()
        b2 = (v / q).square_()
        a2, b2 = (a2[0], b2[0]) if v.shape[0] == 1 else (a2.mean(0), b2.mean(0))
        norm = a2 + b2
        # per entry: |E[(qh)²] − E[(v/q)²]| / norm_i <= 1, so every entry's step stays below μ < 1 as well
        mu = lr / (norm.add_(_tiny(v.dtype)) if self.elementwise_step else norm.amax() + _tiny(v.dtype))
        step = a2.sub_(b2).mul_(q).mul_(mu)  # μ (E[(qh)²] − E[(v/q)²]) ⊙ q
        if q is self.q:
            self.q.sub_(step)
        else:
            self.q.copy_(q - step)

    def _invalidate(self) -> None:
        self._q2 = None

    def _precondition(self, g: torch.Tensor) -> torch.Tensor:
        q2 = getattr(self, "_q2", None)
        if q2 is None:  # P = q², cached until Q changes
            q2 = self._q2 = self.q.to(_compute_dtype(self.dtype)).square()
        return q2.to(g.dtype) * g

    def _apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        return self.q.to(x.dtype) * x


class LRAPreconditioner(Preconditioner):
    """Low-rank approximation ``Q = (I + UVᵀ)·diag(d)`` with ``U, V`` of shape ``(dim, rank)``.

    ``d`` takes a (right-multiplicative) diagonal step at every update: one step size normalised by the
    largest entry, or with ``elementwise_step=True`` one per entry (appendix A.1.4's rule for this diagonal
    factor ``B``). ``U`` or ``V``, picked by a fair coin per update as in Li's reference, moves along the
    group gradient projected onto its factor, so ``Q`` stays in the group and ``(I + VᵀU)`` stays small to
    invert (rank × rank). (Strict alternation
    ended measurably higher when whitening gradients: benchmarks/README.md.) ``rank=0`` is the diagonal
    preconditioner. ``U, V`` start small and random from ``seed``, and the coin is a hash of ``seed`` and
    the update count, so runs are reproducible, resume exactly and agree on every DDP rank.

    ``M = I + UᵀV`` (rank × rank, needed by every fit) is carried along by exact rank × rank updates
    instead of a pass over both factors per fit, and recomputed from ``U, V`` every 16 fits (and every fit
    for half-precision storage) so round-off cannot drift; it is part of the state, so a resumed run
    continues bit for bit.
    """

    def __init__(
        self, dim: int, rank: int = 10, *, seed: int = 0, elementwise_step: bool = False, **kwargs: Any
    ) -> None:
        if not isinstance(elementwise_step, bool):
            raise ValueError(f"elementwise_step must be True or False, got {elementwise_step!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        if rank >= dim:
            raise ValueError(f"rank must be < dim ({dim}), got {rank}; use DensePreconditioner instead")
        super().__init__((dim,), **kwargs)
        self.rank = rank
        self.elementwise_step = elementwise_step
        gen = torch.Generator().manual_seed(int(seed))
        # Small random factors: UVᵀ ≈ 0 so Q ≈ scale·I, but nonzero or neither factor would ever move.
        std = 1.0 / math.sqrt(dim * (rank + 10))
        self.U = (torch.randn(dim, rank, generator=gen) * std).to(self.dtype).to(self.device)
        self.V = (torch.randn(dim, rank, generator=gen) * std).to(self.dtype).to(self.device)
        scale = 1.0 if self.init_scale is None else float(self.init_scale)
        self.d = torch.full((dim,), scale, dtype=self.dtype, device=self.device)
        self.M = self._fresh_M()
        self._pick_key = _splitmix64(int(seed))

    def _moves_u(self) -> bool:
        """This update's coin: U (True) or V. A hash of (seed, update count): no generator state to keep."""
        return _splitmix64(self._pick_key + self.num_updates) >> 63 == 0

    def _fresh_M(self) -> torch.Tensor:
        """``I + UᵀV`` from the stored factors, in the compute dtype."""
        cd = _compute_dtype(self.dtype)
        eye = torch.eye(self.rank, dtype=cd, device=self.device)
        return torch.addmm(eye, self.U.to(cd).mT, self.V.to(cd))

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"U": self.U, "V": self.V, "d": self.d, "M": self.M}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tensors = state.get("tensors", {})
        if "M" in tensors or not {"U", "V", "d"} <= set(tensors):
            super().load_state_dict(state)
            return
        # Saved before M was part of the state: load the rest, then rebuild M from U and V.
        super().load_state_dict({**state, "tensors": {**tensors, "M": self.M}})
        self.M.copy_(self._fresh_M())

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "M" not in self.__dict__:  # pickled before M was kept
            self.M = self._fresh_M()
        self.__dict__.setdefault("_pick_key", _splitmix64(0))

    def _rescale(self, c: torch.Tensor) -> None:
        self.d.mul_(c.to(self.d.dtype))

    def _fit(self, v: torch.Tensor, h: torch.Tensor, lr: torch.Tensor | float) -> None:
        # Written to touch the (dim × rank) factors as few times as possible: every product with U or V
        # is a pass over memory, everything rank × rank or n × rank is free.
        dt = v.dtype
        tiny = _tiny(dt)
        U, V, d = self.U.to(dt), self.V.to(dt), self.d.to(dt)
        r = self.rank
        # On CPU (lr a float, see _update_cpu) the step sizes are Python numbers: a sync is free there and
        # each scalar tensor op costs a kernel launch. On GPU they stay tensors (sync-free).
        num = _to_float if isinstance(lr, float) else _identity
        sqrt = math.sqrt if isinstance(lr, float) else torch.sqrt
        # a = Q h and P h (rows). (Stacking two rows into one product saves nothing with MKL: measured.)
        x = d * h
        a = torch.addmm(x, x @ V, U.mT)
        aU = a @ U
        Ph = torch.addmm(a, aU, V.mT).mul_(d)
        # b = Q⁻ᵀ v = (I + VUᵀ)⁻¹ (v/d) and P⁻¹v = d⁻¹ (I + UVᵀ)⁻¹ b, by Woodbury with M = I + UᵀV (r × r).
        z = v / d
        if r > 0:
            M = self.M if self.M.dtype == dt else self.M.to(dt)
            # M = I + UᵀV stays near I, so an explicit r × r inverse is accurate, and cheaper than a
            # factorisation plus two solves (no per-call singularity check either)
            Minv = _small_inverse(M)
            b = torch.addmm(z, (z @ U) @ Minv.mT, V.mT, alpha=-1.0)
            bV = b @ V
            invPv = torch.addmm(b, bV @ Minv, U.mT, alpha=-1.0).div_(d)
        else:
            b, invPv = z, z / d
        # d: right-multiplicative diagonal step, Q ← Q·diag(1 − μ∇_d).
        t1, t2 = Ph.mul_(h), invPv.mul_(v)
        grad_d = _mean_rows(t1 - t2)
        norm_d = _mean_rows(t1.abs_().add_(t2.abs_()))
        if self.elementwise_step:  # appendix A.1.4: one step size per diagonal entry
            self.d.copy_(d - (lr / (norm_d + tiny)) * grad_d * d)
        else:
            mu_d = lr / (num(norm_d.max()) + tiny)
            if d is self.d and isinstance(mu_d, float):
                self.d.addcmul_(grad_d, d, value=-mu_d)  # in place: d ← d − μ ∇_d ⊙ d
            else:
                self.d.copy_(d - mu_d * grad_d * d)
        if r == 0:
            return
        # ∇ = (aᵀa − bᵀb)/n = Zᵀ S Z / n, S = diag(1, −1), is never formed; 1/n cancels in μ/‖·‖.
        Z = torch.cat([a, b])
        an2, bn2 = num(_sq_norm(a)), num(_sq_norm(b))
        if self._moves_u():
            # E = −μ ∇VVᵀ  ⇔  U ← U − μ (∇V)(I + VᵀU)  with (I + VᵀU) = Mᵀ.
            aV = a @ V
            na2, nb2 = map(num, _sq_norms_through(aV, bV, V))  # ‖aVVᵀ‖², ‖bVVᵀ‖²
            norm = sqrt(an2 * na2) + sqrt(bn2 * nb2)
            C = torch.cat([aV, -bV]) @ M.mT * (lr / (norm + tiny))
            # U − ZᵀC: in place when U is the stored tensor (a thin k = 2n product, rank-1 updates on CPU).
            U_new = _add_outer_(U, Z, -C) if U is self.U else torch.addmm(U, Z.mT, C, alpha=-1.0)
            V_new = V
            # (U − ZᵀC)ᵀV = UᵀV − Cᵀ(ZV) with ZV = [aV; bV]
            M_new = torch.addmm(M, C.mT, torch.cat([aV, bV]), alpha=-1.0)
        else:
            # E = −μ UUᵀ∇  ⇔  V ← V − μ (I + VUᵀ)(∇U) = V (I − μ Uᵀ∇U) − μ ∇U.
            bU = b @ U
            na2, nb2 = map(num, _sq_norms_through(aU, bU, U))  # ‖aUUᵀ‖², ‖bUUᵀ‖²
            norm = sqrt(an2 * na2) + sqrt(bn2 * nb2)
            D = torch.cat([aU, -bU]) * (lr / (norm + tiny))  # μ ∇U = Zᵀ D
            # μ Uᵀ∇U = Yᵀ D with Y = Z U = [aU; bU], so V − V(YᵀD) − ZᵀD = V − (V Yᵀ + Zᵀ) D: one thin
            # product and one in-place k = 2n update (forming V (I − R) took ~3x longer on CPU)
            Y = torch.cat([aU, bU])
            W = torch.addmm(Z, Y, V.mT)  # (V Yᵀ + Zᵀ)ᵀ: row-major output, ~3x faster
            V_new = V.addmm_(W.mT, D, alpha=-1.0)
            U_new = U
            # Uᵀ(V − WᵀD) = UᵀV − (Yᵀ + UᵀV Yᵀ) D = M − M YᵀD, since Z U = Y
            M_new = torch.addmm(M, M, Y.mT @ D, alpha=-1.0)
        if self.num_updates % 16 == 15:
            # Balance ‖U‖ and ‖V‖ (UVᵀ unchanged) now and then so neither drifts towards under/overflow.
            rho = torch.sqrt(
                (torch.linalg.vector_norm(U_new) + tiny) / (torch.linalg.vector_norm(V_new) + tiny)
            )
            U_new, V_new = U_new / rho, V_new * rho
        if U_new is not self.U:
            self.U.copy_(U_new)
        if V_new is not self.V:
            self.V.copy_(V_new)
        if self.num_updates % 16 == 15 or self.U.dtype != dt:  # drop round-off (half storage: every fit)
            self.M.copy_(self._fresh_M())
        else:
            self.M.copy_(M_new)

    def _precondition(self, g: torch.Tensor) -> torch.Tensor:
        dt = g.dtype
        U, V, d = (
            (self.U, self.V, self.d) if self.d.dtype == dt else (self.U.to(dt), self.V.to(dt), self.d.to(dt))
        )
        x = d * g
        if x.dim() == 1:  # the optimizers' case: fused matrix-vector products, 6 kernels instead of 8
            y = torch.addmv(x, U, V.mT @ x)
            return torch.addmv(y, V, U.mT @ y).mul_(d)
        y = x + (x @ V) @ U.mT
        return d * (y + (y @ U) @ V.mT)

    def _apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        U, V, d = self.U.to(dt), self.V.to(dt), self.d.to(dt)
        return d * (x + (x @ U) @ V.mT)


class XMatPreconditioner(Preconditioner):
    """X-shaped ``Q = diag(a) + adiag(b)`` (diagonal plus anti-diagonal). X-matrices form a group that
    splits into 2 × 2 blocks on index pairs ``(i, dim−1−i)``, so solves are element-wise; O(dim) memory.
    For odd ``dim`` the centre entry belongs to the diagonal (``b`` is held at 0 there)."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        super().__init__((dim,), **kwargs)
        scale = 1.0 if self.init_scale is None else float(self.init_scale)
        self.a = torch.full((dim,), scale, dtype=self.dtype, device=self.device)
        self.b = torch.zeros(dim, dtype=self.dtype, device=self.device)
        mask = torch.ones(dim, dtype=self.dtype, device=self.device)
        if dim % 2 == 1:
            mask[dim // 2] = 0
        self._mask = mask

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"a": self.a, "b": self.b}

    def _rescale(self, c: torch.Tensor) -> None:
        self.a.mul_(c.to(self.a.dtype))
        self.b.mul_(c.to(self.b.dtype))

    def _fit(self, v: torch.Tensor, h: torch.Tensor, lr: torch.Tensor | float) -> None:
        # Written with in-place ops on fresh temporaries (each full-size temporary is a pass over memory).
        a, b = self.a.to(v.dtype), self.b.to(v.dtype)
        af, bf = a.flip(0), b.flip(0)
        A = torch.addcmul(a * h, b, h.flip(-1))  # Q h
        B = torch.addcmul(af * v, bf, v.flip(-1), value=-1.0).div_(torch.addcmul(a * af, b, bf, value=-1.0))
        # B = Q⁻ᵀ v: 2 × 2 block solves
        one = v.shape[0] == 1
        AA, BB = A * A, B * B
        scale = (AA[0] + BB[0] if one else (AA + BB).mean(0)).amax()
        inplace = isinstance(lr, float) and self.a.dtype == v.dtype  # CPU (see _update_cpu)
        mu = lr / ((float(scale) if inplace else scale) + _tiny(v.dtype))
        grad_a = AA.sub_(BB)
        grad_b = torch.addcmul(A * A.flip(-1), B, B.flip(-1), value=-1.0)
        grad_a, grad_b = (grad_a[0], grad_b[0]) if one else (grad_a.mean(0), grad_b.mean(0))
        if self.numel % 2 == 1:
            grad_b.mul_(self._mask.to(v.dtype))
        # (I − μ X(∇a, ∇b)) Q in closed form for X-matrix products.
        delta_a = torch.addcmul(grad_a * a, grad_b, bf)
        delta_b = torch.addcmul(grad_a * b, grad_b, af)
        if inplace:  # μ is a number: the steps go in place
            self.a.add_(delta_a, alpha=-mu)
            self.b.add_(delta_b, alpha=-mu)
        else:
            self.a.copy_(a - delta_a.mul_(mu))
            self.b.copy_(b - delta_b.mul_(mu))

    def _invalidate(self) -> None:
        self._coef = None

    def _precondition(self, g: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_coef", None) is None:
            # QᵀQ is X-shaped too: P g = c1 ⊙ g + c2 ⊙ flip(g), cached until Q changes.
            a, b = self.a.to(_compute_dtype(self.dtype)), self.b.to(_compute_dtype(self.dtype))
            ab = a * b
            self._coef = (a * a + (b * b).flip(0), ab + ab.flip(0))
        c1, c2 = self._coef
        return torch.addcmul(c1.to(g.dtype) * g, c2.to(g.dtype), g.flip(-1))

    def _apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a.to(x.dtype), self.b.to(x.dtype)
        return a * x + b.flip(0) * x.flip(-1)


class KronPreconditioner(Preconditioner):
    """Kronecker-factored ``Q = Q₁ ⊗ Q₂ ⊗ …`` with one factor per tensor dim (vectors: one factor,
    matrices: the affine/Kronecker family ``Q₁ ⊗ Q₂``, higher-order tensors: one per dim; scalars: a
    single scale). A factor is upper-triangular, or diagonal when its size is 1, exceeds ``max_size``, or
    exceeds ``max_skew`` times the product of the other dims (the vocabulary dim of an embedding; and, with
    the default ``max_skew=10``, vectors longer than 10 such as biases, as in Li's reference). Pass
    ``max_skew=float("inf")`` for a triangular factor on every dim up to ``max_size``. Factor scales are
    rebalanced after each fit (``Q`` unchanged) to keep them in range.

    Args:
        shape: tensor shape.
        max_size: largest dim that gets a triangular factor (default 2048).
        max_skew: a dim larger than ``max_skew × (numel / dim)`` gets a diagonal factor (default 10).
    """

    def __init__(
        self,
        shape: tuple[int, ...] | int,
        *,
        max_size: float = 2048,
        max_skew: float = 10.0,
        **kwargs: Any,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        for name, val in (("max_size", max_size), ("max_skew", max_skew)):
            if not isinstance(val, (int, float)) or not val >= 0:
                raise ValueError(f"{name} must be a number >= 0 (inf allowed), got {val!r}")
        super().__init__(shape, **kwargs)
        self._ishape = shape if shape else (1,)  # scalars are handled as shape (1,)
        self.max_size, self.max_skew = max_size, max_skew
        k = len(self._ishape)
        scale = (1.0 if self.init_scale is None else float(self.init_scale)) ** (1.0 / k)
        self.factors: list[torch.Tensor] = []
        for s in self._ishape:
            rest = self.numel // s
            diag = s == 1 or s > max_size or s > max_skew * rest
            f = torch.full((s,), scale) if diag else scale * torch.eye(s)
            self.factors.append(f.to(dtype=self.dtype, device=self.device))
        self._cache_below = self._cache_thresholds()
        self._P: list[torch.Tensor | None] | None = None

    def _cache_thresholds(self) -> list[float]:
        """Per factor, the largest refit rate at which caching ``P_k = Q_kᵀQ_k`` pays: forming it costs d³,
        and it saves one d²·rest product per call until the next fit, so it pays when d ≤ rest × (calls
        per fit). Diagonal factors: never (-1)."""
        return [(self.numel // f.shape[0]) / f.shape[0] if f.ndim == 2 else -1.0 for f in self.factors]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_cache_below" not in self.__dict__:  # pickled before the rate-dependent cache
            self._cache_below = self._cache_thresholds()

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"Q{i}": f for i, f in enumerate(self.factors)}

    def _invalidate(self) -> None:
        self._P = None

    def _rescale(self, c: torch.Tensor) -> None:
        ck = c ** (1.0 / len(self.factors))
        for f in self.factors:
            f.mul_(ck.to(f.dtype))

    def _reshape_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self._ishape)

    def _fit(self, v: torch.Tensor, h: torch.Tensor, lr: torch.Tensor | float) -> None:
        dt = v.dtype
        tiny = _tiny(dt)
        n, k = v.shape[0], len(self.factors)
        Qs = [f.to(dt) for f in self.factors]
        A, B = h, v
        for i, q in enumerate(Qs):
            dim = i + 1
            if q.ndim == 1:
                A, B = _scale_along(A, q, dim), _scale_along(B, 1.0 / q, dim)
            else:
                A = _apply_along(A, q.mT, dim)  # Q_i along dim i
                Bm = torch.movedim(B, dim, -1)
                B = torch.movedim(torch.linalg.solve_triangular(q, Bm, upper=True, left=False), -1, dim)
        new = []
        for i, q in enumerate(Qs):
            dim = i + 1
            Ai = torch.movedim(A, dim, 0).reshape(q.shape[0], -1)
            Bi = torch.movedim(B, dim, 0).reshape(q.shape[0], -1)
            if q.ndim == 1:
                t1, t2 = Ai.square().sum(1) / n, Bi.square().sum(1) / n
                mu = lr / ((t1 + t2).max() + tiny)
                new.append(q - mu * (t1 - t2) * q)
            else:
                t1, t2 = Ai @ Ai.mT / n, Bi @ Bi.mT / n
                mu = lr / (psd_norm_lower_bound(t1 + t2) + tiny)
                new.append(q - mu * (torch.triu(t1 - t2) @ q))
        if k > 1:
            # Balance factor magnitudes to their geometric mean; the Kronecker product is unchanged.
            norms = torch.stack([q.abs().max() for q in new]) + tiny
            gmean = torch.exp(torch.log(norms).mean())
            new = [q * (gmean / norms[i]) for i, q in enumerate(new)]
        for f, q in zip(self.factors, new):
            f.copy_(q)

    def _factor_P(self, i: int, dt: torch.dtype) -> torch.Tensor | None:
        if self.refit_rate > self._cache_below[i]:
            return None
        if self._P is None:
            self._P = [None] * len(self.factors)
        if self._P[i] is None:
            q = self.factors[i].to(_compute_dtype(self.dtype))
            self._P[i] = (q.mT @ q).to(self.dtype)
        return self._P[i].to(dt)

    def _precondition(self, g: torch.Tensor) -> torch.Tensor:
        dt = g.dtype
        lead = g.shape[: g.ndim - len(self.shape)]
        x = g.reshape(*lead, *self._ishape)
        off = len(lead)
        for i, f in enumerate(self.factors):
            q = f.to(dt)
            if q.ndim == 1:
                x = _scale_along(x, q.square(), off + i)
                continue
            P = self._factor_P(i, dt)
            if P is not None:
                x = _apply_along(x, P, off + i)
            else:
                x = _apply_along(_apply_along(x, q.mT, off + i), q, off + i)
        return x.reshape(g.shape)

    def _apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.ndim - len(self.shape)]
        y = x.reshape(*lead, *self._ishape)
        off = len(lead)
        for i, f in enumerate(self.factors):
            q = f.to(x.dtype)
            y = _scale_along(y, q, off + i) if q.ndim == 1 else _apply_along(y, q, off + i)
        return y.reshape(x.shape)

    def __repr__(self) -> str:
        kinds = ["diag" if f.ndim == 1 else "tri" for f in self.factors]
        return f"KronPreconditioner(shape={self.shape}, factors={kinds}, lr={self.lr}, dtype={self.dtype})"
