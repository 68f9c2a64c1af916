"""PSGD preconditioners ``P = QᵀQ`` fitted on a Lie group from curvature pairs ``(v, h)``.

Every family shares one fitting skeleton (Li 2015/2018; Pooladzandi & Li 2024; Li 2024, arXiv 2402.11858).
Given pairs ``v, h`` of shape ``(n, *shape)`` — ``h ≈ H v`` a Hessian-vector product, or ``h = g`` a
gradient for whitening — :meth:`~Preconditioner.update` takes one normalised descent step on

    c(P) = E[hᵀ P h + vᵀ P⁻¹ v],    P = QᵀQ,

whose minimiser is ``P = (H² + E[εεᵀ])^(-1/2)`` for ``v ~ N(0, I)``, ``h = Hv + ε`` (indefinite ``H`` too).
The step moves ``Q`` along the family's Lie algebra in one of two local coordinates:

- ``"EQ"`` (Li 2015/2018, every family): ``Q ← (I − μ∇)Q`` with ``∇ = E[aaᵀ − bbᵀ]``, ``a = Qh``,
  ``b = Q⁻ᵀv``;
- ``"QE"`` (Li 2024, Kron): ``Q ← Q(I − μ∇)`` with ``∇ = E[Ph hᵀ − v (P⁻¹v)ᵀ]``;
- ``"QEQ"`` (Li's current psgd_torch, Kron): ``Q ← Q(I − μ∇)`` with ``∇ = E[Ph (Ph)ᵀ − vvᵀ]``, ``Q`` a full
  matrix;
- ``"QUAD"`` (same source, Kron): ``Q ← sym((I − μ∇/2) Q (I − μ∇/2))`` with the same ``∇``, which keeps ``Q``
  symmetric positive definite.

The last two need no inverse of ``Q`` (no triangular solves), and because ``v`` enters only through
``E[vvᵀ]``, whitening fits may integrate ``v ~ N(0, I)`` out (``update(None, g)``) instead of sampling it.

``μ = lr / ℓ`` where ``ℓ`` bounds the criterion's second-order term along the step (so ``lr`` in 0.01–0.1
needs no tuning), or, with ``lipschitz=True`` (Li 2024), ``μ = lr / L`` for the running estimate
``L ← max(β L + (1 − β) ℓ, ℓ)`` (β = 0.9), which keeps steps from jumping when one pair is unusually flat.

All state is tensors in :attr:`Preconditioner.state` (a dict the optimizers share with ``opt.state[p]``).
A fit is a pure function of that state (:meth:`~Preconditioner.fitted`, new tensors out, nothing written,
no host synchronisation) that :meth:`~Preconditioner.commit` copies in place, so the same code runs on CPU
and GPU, and a compiled optimizer can put its refits under ``torch.cond``.

Usage (e.g. the PSGD-preconditioned Langevin sampler, pairs from ``n_chains`` chains)::

    pre = DensePreconditioner(latent_dim)        # or DiagPreconditioner(latent_dim), LRAPreconditioner(...)
    pre.update(v, h)                             # v, h: (n_chains, latent_dim), h = H v
    step = pre.precondition(grad)                # P·grad, grad: (..., latent_dim)
    noise = pre.apply_qt(torch.randn_like(z))    # Qᵀξ has covariance QᵀQ = P

``init_scale=None`` sets ``Q = (E‖v‖² / E‖h‖²)^(1/4)·I`` from the first nonzero batch. ``dtype`` is the
storage dtype of ``Q``; half types are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "Preconditioner",
    "DensePreconditioner",
    "DiagPreconditioner",
    "LRAPreconditioner",
    "XMatPreconditioner",
    "KronPreconditioner",
    "psd_norm_lower_bound",
]

_HALF = (torch.float16, torch.bfloat16)
_BETA_L = 0.9  # Lipschitz-estimate EMA (Li 2024's betaL)
HOST_COUNTERS = ("fits", "step")  # CPU counters (as torch keeps "step"): read without a device sync


def move_state(state: dict[str, Any], device: torch.device) -> None:
    """Move a state dict's tensors to ``device`` in place, but the host counters."""
    for k, t in state.items():
        if isinstance(t, torch.Tensor) and k not in HOST_COUNTERS:
            state[k] = t.to(device)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Widest of ``dtypes``, half types promoted to float32 (the fits need single precision)."""
    out = torch.float32 if dtypes[0] in _HALF else dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, torch.float32 if d in _HALF else d)
    return out


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, without a conversion call when it already is."""
    return x if x.dtype == dtype else x.to(dtype)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖₂ scaled by max |x|, so tiny or huge entries cannot under/overflow when squared."""
    m = x.abs().amax()
    return m * torch.linalg.vector_norm(x / torch.where(m > 0, m, torch.ones_like(m)))


def psd_norm_lower_bound(S: torch.Tensor) -> torch.Tensor:
    """Cheap lower bound of the spectral norm of a symmetric PSD ``S``: ``‖S x‖`` for ``x`` its unit column of
    largest norm (within a factor √d of λ_max). Sync-free."""
    j = torch.argmax((S * S).sum(0)).view(1)
    x = S.index_select(1, j).squeeze(1)
    return torch.linalg.vector_norm(S @ (x / (torch.linalg.vector_norm(x) + _tiny(S.dtype))))


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele et al. 2014): a well-mixed 64-bit hash of an integer."""
    z = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _i64(c: int) -> int:
    """An unsigned 64-bit int as the int64 with the same bits."""
    c &= 0xFFFFFFFFFFFFFFFF
    return c - 2**64 if c >= 2**63 else c


_ODD, _MIX1, _MIX2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)
# The same multipliers as tensors, for compiled code: inductor writes an int multiplier into its C++ as a
# literal, and a wrapping product of a loop index by a literal is signed overflow, undefined behaviour in C++
# (it corrupted the heap on the CPU); a tensor operand is opaque to the C++ compiler.
_AS_TENSOR = {c: torch.tensor(c, dtype=torch.int64) for c in (_ODD, _MIX1, _MIX2)}


def _wrapping_mul(z: torch.Tensor, c: int) -> torch.Tensor:
    """``z · c`` in wrapping int64 arithmetic, ``c`` one of the hash multipliers."""
    return z * (_AS_TENSOR[c].to(z.device) if torch.compiler.is_compiling() else c)


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function without its increment, in int64 tensor arithmetic (wrapping):
    ``_mix(x + _ODD)`` has the bits of ``_splitmix64(x)``."""
    z = _wrapping_mul(z ^ _srl(z, 30), _MIX1)
    z = _wrapping_mul(z ^ _srl(z, 27), _MIX2)
    return z ^ _srl(z, 31)


def _select(pred: bool | torch.Tensor, if_true: Callable[[], tuple], if_false: Callable[[], tuple]) -> tuple:
    """One of two cheap branches: by a host ``bool`` eagerly; for a tensor ``pred`` (while compiling) both
    run and ``torch.where`` keeps one, so the graph does not break."""
    if isinstance(pred, bool):
        return if_true() if pred else if_false()
    return tuple(torch.where(pred.to(a.device), a, b) for a, b in zip(if_true(), if_false()))


def _sq_norms_through(xa: torch.Tensor, xb: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(‖xa fᵀ‖², ‖xb fᵀ‖²)`` for ``xa, xb`` ``(n, r)`` and ``f`` ``(dim, r)``: thin products for few rows,
    the Gram route ``x (fᵀf) xᵀ`` for many."""
    n, r = xa.shape
    if 2 * n < r:
        y = torch.cat([xa, xb]) @ f.mT
        return y[:n].square().sum(), y[n:].square().sum()
    gram = f.mT @ f
    return ((xa @ gram) * xa).sum(), ((xb @ gram) * xb).sum()


def _apply_along(x: torch.Tensor, m: torch.Tensor, dim: int) -> torch.Tensor:
    """``y[..., i, ...] = Σ_k x[..., k, ...] m[k, i]`` along ``dim``."""
    return torch.movedim(torch.movedim(x, dim, -1) @ m, -1, dim)


def _scale_along(x: torch.Tensor, q: torch.Tensor, dim: int) -> torch.Tensor:
    return x * q.reshape(q.shape + (1,) * (x.ndim - 1 - dim % x.ndim))


def _unfold(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mode-``dim`` unfolding: ``(size of dim, everything else)``."""
    return torch.movedim(x, dim, 0).reshape(x.shape[dim], -1)


class Preconditioner:
    """Base class: ``P = QᵀQ`` over tensors of one ``shape``.

    Args:
        shape: shape of one vector the preconditioner acts on (``(dim,)`` for vector families).
        lr: step size ``μ`` of the normalised fit (0.01–0.1).
        init_scale: ``Q = init_scale·I`` at start; ``None`` sets it from the first nonzero pair batch.
        dtype: storage dtype of ``Q`` (half types are computed in float32).
        device: device of ``Q`` (default CPU).
        lipschitz: normalise the step by a running Lipschitz estimate (Li 2024) instead of this fit's bound.
    """

    def __init__(
        self,
        shape: tuple[int, ...] | int,
        *,
        lr: float = 0.1,
        init_scale: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        lipschitz: bool = False,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
        lr_f = float(lr) if isinstance(lr, (int, float)) else float("nan")
        if not (math.isfinite(lr_f) and lr_f > 0):
            raise ValueError(f"lr (preconditioner step size μ) must be finite and > 0, got {lr!r}")
        if init_scale is not None and not (math.isfinite(float(init_scale)) and float(init_scale) > 0):
            raise ValueError(f"init_scale must be None or finite and > 0, got {init_scale!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
        if not isinstance(lipschitz, bool):
            raise ValueError(f"lipschitz must be True or False, got {lipschitz!r}")
        self.shape, self.numel = shape, math.prod(shape)
        self.lr, self.init_scale, self.dtype, self.lipschitz = lr_f, init_scale, dtype, lipschitz
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cdtype = _compute_dtype(dtype)
        scale = 1.0 if init_scale is None else float(init_scale)
        self.state: dict[str, torch.Tensor] = self._init_tensors(scale)
        self.keys = tuple(self.state)  # the tensors defining Q (and its Lipschitz estimates)
        self.state["initialized"] = torch.tensor(init_scale is not None, device=self.device)
        self.state["fits"] = torch.zeros((), dtype=torch.int64)  # host counter: drives LRA's U/V coin
        self._derived: dict[Any, torch.Tensor] = {}  # products of Q valid until it changes: not state
        self._scale_known = init_scale is not None  # host mirror of a True "initialized": skips a rescale

    # ---- family pieces
    def _init_tensors(self, scale: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _scaled(self, st: dict[str, torch.Tensor], c: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of ``c·Q`` (``c`` a positive scalar tensor) from the state ``st``."""
        raise NotImplementedError

    #: Whether the fit can take ``v = None``: probes ``v ~ N(0, I)`` integrated out (whitening pairs).
    integrates_probes: bool = False

    def _fit(self, st: dict[str, torch.Tensor], v: torch.Tensor, h: torch.Tensor,
             lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of ``st`` that one Lie-group step changes, new: from pairs ``(n, *shape)`` in the
        compute dtype, scaled so ‖v‖‖h‖ = 1; ``lr`` a scalar tensor (0 for an all-zero pair). With
        :attr:`integrates_probes`, ``v`` may be a 0-dim tensor ``σ²``: probes ``v ~ N(0, σ²I)`` integrated
        out. Pure: reads ``st``, writes nothing."""
        raise NotImplementedError

    def _precondition(self, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _t(self, key: str, dt: torch.dtype) -> torch.Tensor:
        return _as(self.state[key], dt)

    @staticmethod
    def _fit_count(st: dict[str, torch.Tensor]) -> int | torch.Tensor:
        """Fits so far: a host int eagerly (a CPU counter, no sync); the tensor while compiling, where a
        choice made on it goes through :func:`_select`."""
        return st["fits"] if torch.compiler.is_compiling() else int(st["fits"])

    def _derive(self, key: Any, make: Any) -> torch.Tensor:
        """``make()``, cached until Q next changes (a fit, a load, a rebind); afresh while compiling."""
        if torch.compiler.is_compiling():
            return make()
        out = self._derived.get(key)
        if out is None:
            out = self._derived[key] = make()
        return out

    def _mu(self, st: dict[str, torch.Tensor], out: dict[str, torch.Tensor], key: str, ell: torch.Tensor,
            lr: torch.Tensor) -> torch.Tensor:
        """Step size ``lr/ℓ``, or ``lr/L`` with ``L`` the running Lipschitz estimate ``st[key]`` (its new
        value goes to ``out[key]``)."""
        if not self.lipschitz:
            return lr / (ell + _tiny(ell.dtype))
        L = st[key]
        new = torch.maximum(_BETA_L * L.to(ell.dtype) + (1 - _BETA_L) * ell, ell)
        new = torch.where(lr > 0, new, L.to(ell.dtype))  # an all-zero pair leaves the estimate alone
        out[key] = new
        return lr / (new + _tiny(ell.dtype))

    def __getattr__(self, name: str) -> torch.Tensor:
        # the tensors defining Q read as attributes (``pre.Q``, ``pre.q``, ``pre.U``, ...)
        if name in self.__dict__.get("keys", ()):
            return self.__dict__["state"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- public API
    @property
    def initialized(self) -> bool:
        return bool(self.state["initialized"])

    @property
    def num_updates(self) -> int:
        return int(self.state["fits"])

    def bind(self, state: dict[str, Any]) -> None:
        """Keep this preconditioner's tensors in ``state`` (an optimizer's ``state[p]``): entries it already
        holds (from a checkpoint) are adopted in this object's dtypes and devices, missing ones added."""
        for k, t in self.state.items():
            if k in state:
                state[k] = state[k].to(dtype=t.dtype, device=t.device)
            else:
                state[k] = t
        self.state = state
        self._derived.clear()
        self._scale_known = False  # re-read at the next commit

    def to(self, device: torch.device | str) -> Preconditioner:
        """Move Q to ``device``: every tensor of the bound state but the host counters."""
        self.device = torch.device(device)
        move_state(self.state, self.device)
        self._derived.clear()
        return self

    def _check_batch(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor")
        if tuple(x.shape) == self.shape:
            return x.unsqueeze(0)
        if x.ndim == len(self.shape) + 1 and tuple(x.shape[1:]) == self.shape:
            return x
        raise ValueError(f"{name} must have shape (n, *{self.shape}) or {self.shape}, got {tuple(x.shape)}")

    def _check_trailing(self, x: torch.Tensor, name: str) -> None:
        k = len(self.shape)
        ok = isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim >= k
        if not ok or tuple(x.shape[x.ndim - k :]) != self.shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape (..., *{self.shape}), got {got}")

    @torch.no_grad()
    def update(self, v: torch.Tensor | None, h: torch.Tensor) -> None:
        """One fitting step of Q from pairs ``v, h`` of shape ``(n, *shape)`` (or ``shape``): ``v ~ N(0, I)``,
        ``h = H v`` (Newton type) or ``h = g`` (whitening; ``v = None`` integrates the probes out where the
        family can, :attr:`integrates_probes`)."""
        if v is None and not self.integrates_probes:
            raise ValueError(f"v=None (probes integrated out) needs a family that supports it, not {self!r}; "
                             "pass probes v ~ N(0, I) shaped like h")
        v = None if v is None else self._check_batch(v, "v")
        h = self._check_batch(h, "h")
        if v is not None and v.shape != h.shape:
            raise ValueError(f"v and h must have the same shape, got {tuple(v.shape)} and {tuple(h.shape)}")
        if not bool(torch.isfinite(h).all()) or (v is not None and not bool(torch.isfinite(v).all())):
            raise ValueError("v or h contains NaN or Inf: refusing to fit the preconditioner on it")
        self.fit(v, h)

    #: The state entries a fit writes: the tensors defining Q (:attr:`keys`), then these two.
    BOOKKEEPING = ("initialized", "fits")

    @torch.no_grad()
    def fit(self, v: torch.Tensor | None, h: torch.Tensor) -> None:
        """:meth:`update` without validation or host synchronisation (``v, h``: ``(n, *shape)``)."""
        self.commit(self.fitted(self.state, v, h))

    def commit(self, new: dict[str, torch.Tensor], into: dict[str, torch.Tensor] | None = None) -> None:
        """Copy ``new`` tensors (from :meth:`fitted`) in place into the state (or ``into``, a stand-in for
        it)."""
        into = self.state if into is None else into
        for k, t in new.items():
            into[k].copy_(t)
        self._derived.clear()
        if not (torch.compiler.is_compiling() or self._scale_known):  # one sync per fit until it is set
            self._scale_known = bool(into["initialized"])

    def fitted(self, st: dict[str, torch.Tensor], v: torch.Tensor | None,
               h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state entries after one fit on the pairs ``v, h`` (``(n, *shape)``) from the state ``st``, as
        new tensors; ``st`` is only read (so the fit can run under ``torch.cond``)."""
        cd = _compute_dtype(self.dtype, h.dtype)
        h = h.to(device=self.device, dtype=cd)
        # Square roots of safe norms: ‖v‖ and ‖h‖ may sit anywhere in the float range.
        hh = _safe_norm(h).sqrt()
        if v is None:  # E‖v‖² = n·numel for unit probes
            v = vv = torch.tensor(float(h.numel()) ** 0.25, dtype=cd, device=self.device)
        else:
            v = v.to(device=self.device, dtype=cd)
            vv = _safe_norm(v).sqrt()
        ok = (vv > 0) & (hh > 0)  # an all-zero pair carries nothing: zero step, no initial scale
        vv, hh = torch.where(ok, vv, 1.0), torch.where(ok, hh, 1.0)
        init = st["initialized"]
        # Q's starting scale from the first nonzero pair; known set (eagerly): c = 1, nothing to scale
        skip = not torch.compiler.is_compiling() and self._scale_known
        new = {} if skip else self._scaled(st, torch.where(init | ~ok, torch.ones_like(vv), vv / hh))
        s = 1.0 / (vv * hh)  # the normalised step does not depend on the pair's common scale
        new.update(self._fit({**st, **new}, s * s if v.ndim == 0 else v * s, h * s, ok.to(cd) * self.lr))
        new["initialized"], new["fits"] = init | ok, st["fits"] + 1
        return new

    @torch.no_grad()
    def precondition(self, g: torch.Tensor) -> torch.Tensor:
        """``P·g`` for ``g`` of shape ``(..., *shape)`` (same dtype and device as ``g``)."""
        self._check_trailing(g, "g")
        cd = _compute_dtype(self.dtype, g.dtype)
        return self._precondition(g.to(cd)).to(g.dtype)

    @torch.no_grad()
    def apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        """``Qᵀ·x`` for ``x`` of shape ``(..., *shape)``; ``Qᵀξ`` has covariance P for white ``ξ``."""
        self._check_trailing(x, "x")
        return self._apply_qt(x.to(_compute_dtype(self.dtype, x.dtype))).to(x.dtype)

    def to_dense(self) -> torch.Tensor:
        """The full matrix ``P`` (``numel × numel``; tests and small problems only)."""
        eye = torch.eye(self.numel, dtype=self.cdtype, device=self.device)
        return self.precondition(eye.reshape((self.numel, *self.shape))).reshape(self.numel, self.numel)

    def state_dict(self) -> dict[str, Any]:
        """Copies of the tensors defining Q, plus ``initialized`` and ``num_updates``."""
        return {
            "family": type(self).__name__,
            "shape": self.shape,
            "initialized": self.initialized,
            "num_updates": self.num_updates,
            "tensors": {k: self.state[k].detach().clone() for k in self.keys},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (copied in place, in this object's dtype and device)."""
        if state.get("family") != type(self).__name__ or tuple(state.get("shape", ())) != self.shape:
            raise ValueError(
                f"state is for {state.get('family')} of shape {state.get('shape')}, "
                f"expected {type(self).__name__} of shape {self.shape}"
            )
        theirs = state["tensors"]
        if set(theirs) != set(self.keys):
            raise ValueError(f"state tensors {sorted(theirs)} do not match expected {sorted(self.keys)}")
        for k in self.keys:
            if tuple(theirs[k].shape) != tuple(self.state[k].shape):
                raise ValueError(f"state tensor {k!r} has shape {tuple(theirs[k].shape)}, expected "
                                 f"{tuple(self.state[k].shape)}")
            self.state[k].copy_(theirs[k])
        self.state["initialized"].fill_(bool(state["initialized"]))
        self.state["fits"].fill_(int(state["num_updates"]))
        self._derived.clear()
        self._scale_known = bool(state["initialized"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, lr={self.lr}, dtype={self.dtype})"


class DensePreconditioner(Preconditioner):
    """Dense ``Q`` (``dim × dim``; memory d²).

    ``triangular=False`` (default): ``Q`` on the general linear group with ``Q⁻¹`` carried by Woodbury
    updates (recomputed from ``Q`` every 256 fits against round-off drift), so a fit from ``n`` pairs costs
    O(n·d²); it fits noticeably faster than the triangular group. ``triangular=True``: upper-triangular
    ``Q`` (Li 2015) with triangular solves, O(n·d² + d³).
    """

    _REFRESH = 256

    def __init__(self, dim: int, *, triangular: bool = False, **kwargs: Any) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.triangular = bool(triangular)
        super().__init__((dim,), **kwargs)

    def _init_tensors(self, scale):
        eye = torch.eye(self.shape[0], dtype=self.dtype, device=self.device)
        return {"Q": scale * eye} if self.triangular else {"Q": scale * eye, "invQ": eye / scale}

    def _scaled(self, st, c):
        c = c.to(self.dtype)
        return {"Q": st["Q"] * c} if self.triangular else {"Q": st["Q"] * c, "invQ": st["invQ"] / c}

    def _fit(self, st, v, h, lr):
        dt = v.dtype
        Q = _as(st["Q"], dt)
        n, d = v.shape
        a = h @ Q.mT  # rows (Qh)ᵀ
        if self.triangular:
            b = torch.linalg.solve_triangular(Q, v, upper=True, left=False)  # rows (Q⁻ᵀv)ᵀ
            aa, bb = a.mT @ a / n, b.mT @ b / n
            mu = lr / (psd_norm_lower_bound(aa + bb) + _tiny(dt))
            return {"Q": Q - torch.triu((aa - bb) * mu) @ Q}
        iQ = _as(st["invQ"], dt)
        b = v @ iQ
        refresh = (self._fit_count(st) + 1) % self._REFRESH == 0
        # ∇ = Wᵀ Z / n with Z = [a; b], W = [a; −b]: work in the smaller of the 2n × 2n and d × d spaces.
        if 2 * n < d:
            Z = torch.cat([a, b])
            c = lr / (psd_norm_lower_bound(Z @ Z.mT / n) + _tiny(dt)) / n
            W = torch.cat([a, -b])
            # Z Q = [aQ; v] since b = vQ⁻¹; Q⁻¹Wᵀ = [hᵀ, −Q⁻¹bᵀ] since a = hQᵀ.
            Q_new = Q - (c * W).mT @ torch.cat([a @ Q, v])

            def woodbury():  # Q⁻¹(I − c WᵀZ)⁻¹ = Q⁻¹ + c (Q⁻¹Wᵀ)(I − c Z Wᵀ)⁻¹ Z
                K = torch.eye(2 * n, dtype=dt, device=v.device) - c * Z @ W.mT
                iQWt = torch.cat([h, -(b @ iQ.mT)])
                return (iQ + (c * iQWt).mT @ torch.linalg.solve(K, Z),)
        else:
            aa, bb = a.mT @ a / n, b.mT @ b / n
            WtZ = (aa - bb) * (lr / (psd_norm_lower_bound(aa + bb) + _tiny(dt)))
            Q_new = Q - WtZ @ Q

            def woodbury():
                return (torch.linalg.solve(torch.eye(d, dtype=dt, device=v.device) - WtZ, iQ, left=False),)
        (iQ,) = _select(refresh, lambda: (torch.linalg.inv(Q_new),), woodbury)
        return {"Q": Q_new, "invQ": iQ}

    def _precondition(self, g):
        Q = self._t("Q", g.dtype)
        return (g @ Q.mT) @ Q

    def _apply_qt(self, x):
        return x @ self._t("Q", x.dtype)


class DiagPreconditioner(Preconditioner):
    """Diagonal (Jacobi) ``Q = diag(q)`` over any ``shape``; converges to ``P = sqrt(E[v⊙v] / E[h⊙h])``.

    ``elementwise_step=True`` gives every entry its own step ``μ / E[(q_i h_i)² + (v_i/q_i)²]`` (dissertation
    appendix A.1.4: the diagonal group is a direct sum of one-dimensional ones) instead of one step
    normalised by the largest entry; faster when curvatures differ by orders of magnitude, same fixed point.
    (For a diagonal Q the local coordinates ``EQ`` and ``QE`` coincide.)
    """

    def __init__(self, shape: tuple[int, ...] | int, *, elementwise_step: bool = False,
                 **kwargs: Any) -> None:
        if not isinstance(elementwise_step, bool):
            raise ValueError(f"elementwise_step must be True or False, got {elementwise_step!r}")
        self.elementwise_step = elementwise_step
        super().__init__(shape, **kwargs)

    def _init_tensors(self, scale):
        out = {"q": torch.full(self.shape, scale, dtype=self.dtype, device=self.device)}
        if self.lipschitz:
            shape = self.shape if self.elementwise_step else ()
            out["L"] = torch.zeros(shape, dtype=self.cdtype, device=self.device)
        return out

    def _scaled(self, st, c):
        return {"q": st["q"] * c.to(self.dtype)}

    def _fit(self, st, v, h, lr):
        q, out = _as(st["q"], v.dtype), {}
        a2, b2 = (h * q).square().mean(0), (v / q).square().mean(0)
        # |a2 − b2| ≤ a2 + b2 = ℓ: every entry's relative step stays below μ < 1
        mu = self._mu(st, out, "L", a2 + b2 if self.elementwise_step else (a2 + b2).amax(), lr)
        out["q"] = q - mu * (a2 - b2) * q
        return out

    def _precondition(self, g):
        return self._derive(("q2", g.dtype), lambda: self._t("q", g.dtype).square()) * g

    def _apply_qt(self, x):
        return self._t("q", x.dtype) * x


class LRAPreconditioner(Preconditioner):
    """Low-rank approximation ``Q = (I + UVᵀ)·diag(d)``, ``U, V`` of shape ``(dim, rank)``.

    ``d`` takes a right-multiplicative diagonal step every fit (one step size, or one per entry with
    ``elementwise_step=True``, appendix A.1.4). ``U`` or ``V``, picked by a fair coin hashed from
    ``(seed, fit count)`` (reproducible, identical on every DDP rank), moves along the group gradient
    projected onto its factor, so ``M = I + UᵀV`` (rank × rank) is all that is ever inverted. ``M`` is
    carried by exact rank × rank updates and recomputed from ``U, V`` every 16 fits. ``rank=0`` is the
    diagonal preconditioner. ``U, V`` start small and random from ``seed``.
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
        self.rank, self.elementwise_step, self.seed = rank, elementwise_step, int(seed)
        super().__init__((dim,), **kwargs)
        self._pick_key = _splitmix64(self.seed)
        self._pick_base = _i64(self._pick_key + _ODD)  # int64, not traced (see PSGD._coin_base)

    def _moves_u(self, fits: int | torch.Tensor) -> bool | torch.Tensor:
        """The fair coin of fit number ``fits``: a host bool for an int, the same value as a tensor for a
        tensor."""
        if isinstance(fits, int):
            return _splitmix64(self._pick_key + fits) >> 63 == 0
        return _mix(fits + self._pick_base) >= 0  # top bit clear

    def _init_tensors(self, scale):
        dim, r = self.shape[0], self.rank
        gen = torch.Generator().manual_seed(self.seed)
        std = 1.0 / math.sqrt(dim * (r + 10))  # UVᵀ ≈ 0, but nonzero or neither factor would ever move
        U = (torch.randn(dim, r, generator=gen) * std).to(self.dtype).to(self.device)
        V = (torch.randn(dim, r, generator=gen) * std).to(self.dtype).to(self.device)
        M = torch.eye(r, dtype=self.cdtype, device=self.device) + U.to(self.cdtype).mT @ V.to(self.cdtype)
        d = torch.full((dim,), scale, dtype=self.dtype, device=self.device)
        return {"U": U, "V": V, "d": d, "M": M}

    def _scaled(self, st, c):
        return {"d": st["d"] * c.to(self.dtype)}

    def _fit(self, st, v, h, lr):
        # Touches the (dim × rank) factors as few times as possible; rank × rank work is free.
        dt = v.dtype
        tiny = _tiny(dt)
        U, V, d, M = (_as(st[k], dt) for k in ("U", "V", "d", "M"))
        k = self._fit_count(st)
        x = d * h
        a = x + (x @ V) @ U.mT  # Q h (rows)
        aU = a @ U
        Ph = (a + aU @ V.mT) * d
        z = v / d  # b = Q⁻ᵀv = (I + VUᵀ)⁻¹ z and P⁻¹v by Woodbury with M = I + UᵀV
        if self.rank > 0:
            Minv = torch.linalg.inv_ex(M)[0]  # M stays near I: an explicit small inverse is accurate
            b = z - ((z @ U) @ Minv.mT) @ V.mT
            bV = b @ V
            invPv = (b - (bV @ Minv) @ U.mT) / d
        else:
            b, invPv = z, z / d
        t1, t2 = (Ph * h).mean(0), (invPv * v).mean(0)  # d: Q ← Q·diag(1 − μ∇_d)
        ell = (Ph * h).abs().mean(0) + (invPv * v).abs().mean(0)
        mu = lr / (ell + tiny) if self.elementwise_step else lr / (ell.amax() + tiny)
        out = {"d": d - mu * (t1 - t2) * d}
        if self.rank == 0:
            return out
        Z = torch.cat([a, b])  # ∇ = (aᵀa − bᵀb)/n = Zᵀ S Z / n, S = diag(1, −1); 1/n cancels in μ/ℓ
        an2, bn2 = a.square().sum(), b.square().sum()

        def move_u():  # U ← U − μ (∇V)(I + VᵀU)
            aV = a @ V
            na2, nb2 = _sq_norms_through(aV, bV, V)
            C = torch.cat([aV, -bV]) @ M.mT * (lr / ((an2 * na2).sqrt() + (bn2 * nb2).sqrt() + tiny))
            return U - Z.mT @ C, V, M - C.mT @ torch.cat([aV, bV])

        def move_v():  # V ← V − μ (I + VUᵀ)(∇U)
            bU = b @ U
            na2, nb2 = _sq_norms_through(aU, bU, U)
            D = torch.cat([aU, -bU]) * (lr / ((an2 * na2).sqrt() + (bn2 * nb2).sqrt() + tiny))
            Y = torch.cat([aU, bU])
            return U, V - (Z.mT + V @ Y.mT) @ D, M - M @ (Y.mT @ D)

        U, V, M = _select(self._moves_u(k), move_u, move_v)
        renew = k % 16 == 15  # balance ‖U‖, ‖V‖ (UVᵀ unchanged) and drop M's round-off

        def balanced():
            rho = ((torch.linalg.vector_norm(U) + tiny) / (torch.linalg.vector_norm(V) + tiny)).sqrt()
            return U / rho, V * rho

        U, V = _select(renew, balanced, lambda: (U, V))
        # M from the factors as stored (rounded to the storage dtype)
        Us, Vs = (_as(_as(x, self.dtype), self.cdtype) for x in (U, V))
        M = _select(True if self.dtype != dt else renew,
                    lambda: (torch.eye(self.rank, dtype=self.cdtype, device=self.device) + Us.mT @ Vs,),
                    lambda: (M,))[0]
        return {**out, "U": U, "V": V, "M": M}

    def _precondition(self, g):
        U, V, d = (self._t(k, g.dtype) for k in ("U", "V", "d"))
        x = d * g
        y = x + (x @ V) @ U.mT
        return d * (y + (y @ U) @ V.mT)

    def _apply_qt(self, x):
        U, V, d = (self._t(k, x.dtype) for k in ("U", "V", "d"))
        return d * (x + (x @ U) @ V.mT)


class XMatPreconditioner(Preconditioner):
    """X-shaped ``Q = diag(a) + adiag(b)`` (diagonal plus anti-diagonal): a group splitting into 2 × 2 blocks
    on index pairs ``(i, dim−1−i)``, so solves are element-wise; O(dim) memory. For odd ``dim`` the centre
    entry belongs to the diagonal (``b`` is 0 there)."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        super().__init__((dim,), **kwargs)
        self._mask = torch.ones(dim, device=self.device)
        if dim % 2:
            self._mask[dim // 2] = 0

    def to(self, device: torch.device | str) -> XMatPreconditioner:
        super().to(device)
        self._mask = self._mask.to(self.device)
        return self

    def _init_tensors(self, scale):
        dim = self.shape[0]
        return {
            "a": torch.full((dim,), scale, dtype=self.dtype, device=self.device),
            "b": torch.zeros(dim, dtype=self.dtype, device=self.device),
        }

    def _scaled(self, st, c):
        return {"a": st["a"] * c.to(self.dtype), "b": st["b"] * c.to(self.dtype)}

    def _fit(self, st, v, h, lr):
        a, b = _as(st["a"], v.dtype), _as(st["b"], v.dtype)
        af, bf = a.flip(0), b.flip(0)
        A = a * h + b * h.flip(-1)  # Q h
        B = (af * v - bf * v.flip(-1)) / (a * af - b * bf)  # Q⁻ᵀ v by 2 × 2 block solves
        mu = lr / ((A * A + B * B).mean(0).amax() + _tiny(v.dtype))
        grad_a = (A * A - B * B).mean(0)
        grad_b = (A * A.flip(-1) - B * B.flip(-1)).mean(0) * self._mask.to(v.dtype)
        # (I − μ X(∇a, ∇b)) Q in closed form for X-matrix products
        return {"a": a - mu * (grad_a * a + grad_b * bf), "b": b - mu * (grad_a * b + grad_b * af)}

    def _coefficients(self, dt: torch.dtype) -> torch.Tensor:
        a, b = self._t("a", dt), self._t("b", dt)
        ab = a * b  # QᵀQ is X-shaped too: P g = c1 ⊙ g + c2 ⊙ flip(g)
        return torch.stack([a * a + (b * b).flip(0), ab + ab.flip(0)])

    def _precondition(self, g):
        c = self._derive(("c", g.dtype), lambda: self._coefficients(g.dtype))
        return c[0] * g + c[1] * g.flip(-1)

    def _apply_qt(self, x):
        a, b = self._t("a", x.dtype), self._t("b", x.dtype)
        return a * x + b.flip(0) * x.flip(-1)


def kron_factor_kinds(
    shape: tuple[int, ...],
    max_size: float = 1024,
    max_skew: float = 10.0,
    memory_save_mode: str | None = None,
) -> list[str]:
    """Per dim of ``shape``, ``"tri"`` (a triangular factor) or ``"diag"``. A dim is diagonal when it is 1,
    larger than ``max_size``, or larger than ``max_skew`` × the product of the other dims (an embedding's
    vocabulary; with ``max_skew=10`` vectors longer than 10 such as biases). ``memory_save_mode``
    (heavyball's): ``"one_diag"`` also makes the largest dim of a tensor with several dims diagonal,
    ``"all_diag"`` every dim."""
    if memory_save_mode not in (None, "one_diag", "all_diag"):
        raise ValueError(f"memory_save_mode must be None, 'one_diag' or 'all_diag', got {memory_save_mode!r}")
    shape = shape or (1,)
    numel = math.prod(shape)
    kinds = ["diag" if s == 1 or s > max_size or s > max_skew * (numel // s) else "tri" for s in shape]
    if memory_save_mode == "all_diag":
        kinds = ["diag"] * len(shape)
    elif memory_save_mode == "one_diag" and len(shape) > 1:
        kinds[max(range(len(shape)), key=lambda i: shape[i])] = "diag"
    return kinds


class KronPreconditioner(Preconditioner):
    """Kronecker-factored ``Q = Q₁ ⊗ Q₂ ⊗ …``, one factor per tensor dim (scalars: one scale). Each factor is
    a matrix (upper-triangular in the ``"EQ"``/``"QE"`` coordinates, full for ``"QEQ"``, symmetric positive
    definite for ``"QUAD"``) or diagonal (:func:`kron_factor_kinds`: wide dims above ``max_size`` and
    ``memory_save_mode`` give cheap diagonal factors). Factor scales are rebalanced after each fit. A matrix
    factor no wider than the rest of its tensor (``d² ≤ numel``, listed in :attr:`products`) also keeps
    ``P_i = Q_iᵀQ_i`` in the state: a d × d matrix more, one product per step fewer.

    Args:
        shape: tensor shape.
        max_size: largest dim with a triangular factor (default 1024).
        max_skew: a dim larger than ``max_skew × (numel / dim)`` gets a diagonal factor (default 10).
        memory_save_mode: ``None``, ``"one_diag"`` or ``"all_diag"`` (see :func:`kron_factor_kinds`).
        coords: local coordinates of the fit (module docstring): ``"EQ"`` (``dQ = E·Q``, Li 2018), ``"QE"``
            (``dQ = Q·E``, Li 2024), ``"QEQ"`` or ``"QUAD"`` (no inverses; whitening probes integrated out).
    """

    COORDS = ("EQ", "QE", "QEQ", "QUAD")

    def __init__(
        self,
        shape: tuple[int, ...] | int,
        *,
        max_size: float = 1024,
        max_skew: float = 10.0,
        memory_save_mode: str | None = None,
        coords: str = "EQ",
        **kwargs: Any,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        for name, val in (("max_size", max_size), ("max_skew", max_skew)):
            if not isinstance(val, (int, float)) or not val >= 0:
                raise ValueError(f"{name} must be a number >= 0 (inf allowed), got {val!r}")
        if coords not in self.COORDS:
            raise ValueError(f"coords must be one of {self.COORDS}, got {coords!r}")
        self._ishape = shape or (1,)  # scalars are handled as shape (1,)
        self.kinds = kron_factor_kinds(self._ishape, max_size, max_skew, memory_save_mode)
        self.coords = coords
        self.integrates_probes = coords in ("QEQ", "QUAD")
        numel = math.prod(self._ishape)
        # A matrix factor of dim d ≤ rest = numel/d also keeps its product P_i = Q_iᵀQ_i in the state: one
        # d²·rest product per step instead of two, for d³ per fit (≤ one d²·rest product). Its state key per
        # dim, or None: strings stay constants when dynamo recompiles for another tensor (ints turn symbolic).
        self._pkeys = [f"P{i}" if kind == "tri" and d * d <= numel else None
                       for i, (d, kind) in enumerate(zip(self._ishape, self.kinds))]
        super().__init__(shape, **kwargs)
        self._refresh_products()

    def _init_tensors(self, scale):
        s = scale ** (1.0 / len(self.kinds))
        out = {}
        for i, (d, kind) in enumerate(zip(self._ishape, self.kinds)):
            f = torch.full((d,), s) if kind == "diag" else s * torch.eye(d)
            out[f"Q{i}"] = f.to(dtype=self.dtype, device=self.device)
        for i, key in enumerate(self._pkeys):
            if key:
                out[key] = torch.empty_like(out[f"Q{i}"])  # filled by _refresh_products
        if self.lipschitz:
            for i in range(len(self.kinds)):
                out[f"L{i}"] = torch.zeros((), dtype=self.cdtype, device=self.device)
        return out

    @property
    def products(self) -> list[int]:
        """The dims whose factor keeps ``P_i = Q_iᵀQ_i`` in the state."""
        return [i for i, key in enumerate(self._pkeys) if key]

    @property
    def factors(self) -> list[torch.Tensor]:
        return [self.state[f"Q{i}"] for i in range(len(self.kinds))]

    def _scaled(self, st, c):
        ck = (c ** (1.0 / len(self.kinds))).to(self.dtype)
        return {**{f"Q{i}": st[f"Q{i}"] * ck for i in range(len(self.kinds))},
                **{key: st[key] * (ck * ck) for key in self._pkeys if key}}

    def _product(self, q: torch.Tensor) -> torch.Tensor:
        """``QᵀQ`` of a factor as stored (rounded to the storage dtype), so a reload recomputes the same."""
        q = _as(_as(q, self.dtype), self.cdtype)
        return (q.mT @ q).to(self.dtype)

    def _refresh_products(self) -> None:
        for i, key in enumerate(self._pkeys):
            if key:
                self.state[key].copy_(self._product(self.state[f"Q{i}"]))

    def bind(self, state: dict[str, Any]) -> None:
        super().bind(state)
        self._refresh_products()  # from the factors, whatever the source held

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._refresh_products()

    def _solve_t(self, x: torch.Tensor, q: torch.Tensor, dim: int, transpose: bool) -> torch.Tensor:
        """Along ``dim``: ``x Q⁻¹`` (rows times Q⁻¹, i.e. Q⁻ᵀ applied), or ``x Q⁻ᵀ`` with ``transpose``."""
        if q.ndim == 1:
            return _scale_along(x, 1.0 / q, dim)
        xm = torch.movedim(x, dim, -1)
        qq = q.mT if transpose else q
        return torch.movedim(torch.linalg.solve_triangular(qq, xm, upper=not transpose, left=False), -1, dim)

    def _fit(self, st, v, h, lr):
        dt, n = h.dtype, h.shape[0]
        h = h.reshape(n, *self._ishape)
        v = v if v.ndim == 0 else v.reshape(n, *self._ishape)
        Qs = [_as(st[f"Q{i}"], dt) for i in range(len(self.kinds))]
        new, out = [], {}
        if self.coords == "EQ":  # ∇_k = E[A_k A_kᵀ − B_k B_kᵀ], A = Qh, B = Q⁻ᵀv
            A, B = h, v
            for i, q in enumerate(Qs):
                A = _scale_along(A, q, i + 1) if q.ndim == 1 else _apply_along(A, q.mT, i + 1)
                B = self._solve_t(B, q, i + 1, transpose=False)
            for i, q in enumerate(Qs):
                Ai, Bi = _unfold(A, i + 1), _unfold(B, i + 1)
                if q.ndim == 1:
                    t1, t2 = Ai.square().sum(1) / n, Bi.square().sum(1) / n
                    new.append(q - self._mu(st, out, f"L{i}", (t1 + t2).amax(), lr) * (t1 - t2) * q)
                else:
                    t1, t2 = Ai @ Ai.mT / n, Bi @ Bi.mT / n
                    mu = self._mu(st, out, f"L{i}", psd_norm_lower_bound(t1 + t2), lr)
                    new.append(q - mu * torch.triu(t1 - t2) @ q)
        elif self.coords in ("QEQ", "QUAD"):  # ∇_k = E[(Ph)_k (Ph)_kᵀ − v_k v_kᵀ] (mode-k unfoldings)
            Ph = h
            for i, q in enumerate(Qs):
                if q.ndim == 1:
                    Ph = _scale_along(Ph, q * q, i + 1)
                else:
                    key = self._pkeys[i]
                    Ph = _apply_along(Ph, _as(st[key], dt) if key else q.mT @ q, i + 1)
            quad = self.coords == "QUAD"
            for i, q in enumerate(Qs):
                diag = q.ndim == 1
                # mode-k second moments (their diagonals for a diagonal factor) and their norms
                gram = (lambda Y: Y.square().sum(1) / n) if diag else (lambda Y: Y @ Y.mT / n)  # noqa: E731
                top = torch.amax if diag else psd_norm_lower_bound
                t1 = gram(_unfold(Ph, i + 1))
                if v.ndim == 0:  # probes integrated out: E[v_k v_kᵀ] = σ²·(numel/d)·I
                    t2 = v * (self.numel // q.shape[0])
                    ell = top(t1) + t2
                    t2 = t2 if diag else t2 * torch.eye(q.shape[0], dtype=dt, device=q.device)
                else:
                    t2 = gram(_unfold(v, i + 1))
                    ell = top(t1) + top(t2)
                mu = self._mu(st, out, f"L{i}", ell, lr)
                if diag:
                    gain = 1 - (mu / 2 if quad else mu) * (t1 - t2)
                    new.append(q * gain * gain if quad else q * gain)
                elif quad:  # (I − μ∇/2) Q (I − μ∇/2), symmetrised against round-off
                    E = (mu / 2) * (t1 - t2)
                    p = q - E @ q
                    p = p - p @ E
                    new.append((p + p.mT) / 2)
                else:
                    new.append(q - mu * q @ (t1 - t2))
        else:  # QE: ∇_k = E[(Ph)_k h_kᵀ − v_k (P⁻¹v)_kᵀ] (mode-k unfoldings), Q_k ← Q_k (I − μ∇_k)
            Ph, Pv = h, v
            for i, q in enumerate(Qs):
                if q.ndim == 1:
                    Ph, Pv = _scale_along(Ph, q * q, i + 1), _scale_along(Pv, 1.0 / (q * q), i + 1)
                else:
                    Ph = _apply_along(_apply_along(Ph, q.mT, i + 1), q, i + 1)
                    Pv = self._solve_t(self._solve_t(Pv, q, i + 1, transpose=False), q, i + 1, transpose=True)
            for i, q in enumerate(Qs):
                X, Hk, Vk, Yk = (_unfold(t, i + 1) for t in (Ph, h, v, Pv))
                if q.ndim == 1:
                    t1, t2 = (X * Hk).sum(1) / n, (Vk * Yk).sum(1) / n
                    mu = self._mu(st, out, f"L{i}", (t1.abs() + t2.abs()).amax(), lr)
                    new.append(q - mu * (t1 - t2) * q)
                else:
                    t1, t2 = X @ Hk.mT / n, Vk @ Yk.mT / n
                    ell = torch.linalg.matrix_norm(t1) + torch.linalg.matrix_norm(t2)
                    new.append(q - self._mu(st, out, f"L{i}", ell, lr) * q @ torch.triu(t1 - t2))
        if len(new) > 1:  # balance factor magnitudes to their geometric mean; Q itself is unchanged
            norms = torch.stack([q.abs().amax() for q in new]) + _tiny(dt)
            gmean = torch.exp(torch.log(norms).mean())
            new = [q * (gmean / norms[i]) for i, q in enumerate(new)]
        out.update({key: self._product(new[i]) for i, key in enumerate(self._pkeys) if key})
        return {**out, **{f"Q{i}": q for i, q in enumerate(new)}}

    def _precondition(self, g):
        lead = g.shape[: g.ndim - len(self.shape)]
        x, off = g.reshape(*lead, *self._ishape), len(lead)
        for i, f in enumerate(self.factors):
            q = f.to(g.dtype)
            if q.ndim == 1:
                x = _scale_along(x, q * q, off + i)
            elif self._pkeys[i]:
                x = _apply_along(x, self._t(self._pkeys[i], g.dtype), off + i)
            else:
                x = _apply_along(_apply_along(x, q.mT, off + i), q, off + i)
        return x.reshape(g.shape)

    def _apply_qt(self, x):
        lead = x.shape[: x.ndim - len(self.shape)]
        y, off = x.reshape(*lead, *self._ishape), len(lead)
        for i, f in enumerate(self.factors):
            q = f.to(x.dtype)
            y = _scale_along(y, q, off + i) if q.ndim == 1 else _apply_along(y, q, off + i)
        return y.reshape(x.shape)

    def __repr__(self) -> str:
        return f"KronPreconditioner(shape={self.shape}, factors={self.kinds}, coords={self.coords!r})"
