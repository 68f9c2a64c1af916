"""PSGD optimizers: ``torch.optim.Optimizer`` families on one update skeleton.

One step of :class:`PSGD` is

    grads, pairs = curvature(closure, refit)          # a curvature source: whiten / hvp / finite_diff
    for each param group:
        if refit: fit the group's preconditioners on the pairs (probes v, curvature h)
        u = grads
        for transform in (momentum, precondition, trust_region, clip_norm):  u = transform(u)
        θ ← θ·(1 − lr·weight_decay) − lr·u

and the families only choose the preconditioner (:mod:`genlib.optim.preconditioners`):

========  ==================================================  =========================================
family    preconditioner                                      acts on
========  ==================================================  =========================================
Kron      Kronecker product of per-dim triangular/diag Q_i    each tensor (affine family for matrices)
Diag      diagonal (Jacobi)                                   each tensor
LRA       (I + UVᵀ)·diag(d), rank ``rank``                    flattened concatenation of a param group
XMat      diagonal + anti-diagonal                            flattened concatenation of a param group
Dense     full Q (or upper-triangular)                        flattened concatenation of a param group
========  ==================================================  =========================================

Curvature sources (``curvature=``):

- ``"whiten"`` (default): pairs ``(v, g)`` with ``g`` this step's raw gradient, so ``P ≈ E[ggᵀ]^(-1/2)``
  whitens the gradients; ``loss.backward(); opt.step()`` as with any torch optimizer (or ``step(closure)``
  with a closure that returns the loss without ``backward()``). Default ``lr = 1e-3``.
- ``"hvp"``: Newton type from exact Hessian-vector products: ``opt.step(closure)``, the closure returning the
  loss **without** ``backward()``. Default ``lr = 1e-2``.
- ``"finite_diff"``: Newton type from ``h = g(θ + v) − g(θ)`` for a tiny ``v``; the closure is re-run with
  the torch CPU/CUDA RNG states restored (same dropout masks), θ restored exactly afterwards.

Trust region: in whitening mode each tensor's preconditioned step is scaled to an RMS of at most
``max_update_rms`` (default 1.1, as kron_torch), so a too-large ``lr`` degrades the run instead of sending it
to NaN; Newton types default to no trust region (their step is a fraction of a Newton step).
``max_update_abs`` (off by default) also clamps every entry of it, and ``grad_clip_max_norm`` clips the norm
of a group's step.

State: everything is tensors in ``opt.state[p]`` — momentum buffers, and each preconditioner's tensors
under the tensor it preconditions (flattened families: the group's first tensor). The optimizer's step count
is ``state[first param]["step"]``. ``opt.state_dict()`` is the standard torch format and loads with
``torch.load(weights_only=True)``. Refit coins and probe vectors are a hash of ``(seed, step)``
(:func:`stream_seed`), so a resumed run repeats the uninterrupted one bit for bit and all DDP ranks agree.

Compiling: with checks off (``check_finite=False``) a whitening step compiles as one graph, refitting on
the same steps as eagerly, in one of two ways chosen per family by measurement (:attr:`PSGD.refit_in_op`;
benchmarks/README.md, "Eager against compiled"): Kron, Diag and XMat trace their fits behind a tensor coin
under ``torch.cond`` (pure fits: :meth:`~genlib.optim.preconditioners.Preconditioner.fitted`; fused, but
the state passes through new tensors every step); LRA and Dense, whose state is large, refit inside one
opaque custom op that flips the coin on the host and runs the eager fits in place.

Distributed: ``"whiten"`` with a DDP-wrapped model is DDP-safe as it stands. When the optimizer
differentiates a closure itself (``"hvp"``, ``"finite_diff"``, whitening closures without ``backward()``),
it all-reduces (averages) gradients and HVPs whenever ``torch.distributed`` is initialised
(``sync_closure_grads=True``); run the closure on the unwrapped module.

Example::

    opt = Kron(model.parameters(), lr=1e-3)                        # gradient whitening
    loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()

    opt = Kron(model.parameters(), lr=0.05, curvature="hvp",
               update_probability=ExponentialDecaySchedule(1.0, 0.1, 500))
    opt.step(lambda: loss_fn(model(x), y))                         # closure without backward()
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # typing_extensions comes with torch
    from typing_extensions import Unpack

import torch
import torch.distributed as dist

from genlib.utils import hash_seed, resolve_validate_args

from .preconditioners import (
    _ODD,
    DensePreconditioner,
    DiagPreconditioner,
    KronPreconditioner,
    LRAPreconditioner,
    Preconditioner,
    XMatPreconditioner,
    _as,
    _i64,
    _mix,
    _safe_norm,
    _splitmix64,
    _srl,
    _wrapping_mul,
    move_state,
)

__all__ = ["PSGD", "Kron", "Diag", "LRA", "XMat", "Dense", "CURVATURES", "Params", "PSGDOptions"]

Probability = float | Callable[[Any], Any]  # p, or step → p (an int eagerly, a 0-dim tensor when compiled)
Tensors = list[torch.Tensor]
#: What every optimizer takes as ``params``: tensors, or param-group dicts as for ``torch.optim``.
Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class PSGDOptions(TypedDict, total=False):
    """The keyword options every PSGD family accepts (its ``**kwargs``), documented on :class:`PSGD`."""

    preconditioner_lr: float
    momentum: float
    weight_decay: float
    curvature: str
    update_probability: Probability
    grad_clip_max_norm: float | None
    max_update_rms: float | None
    max_update_abs: float | None
    init_scale: float | None
    preconditioner_dtype: torch.dtype | None
    lipschitz: bool | None
    seed: int
    sync_closure_grads: bool
    check_finite: bool | None


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit key for one named random stream of an optimizer seeded ``seed`` (hashing keeps streams of
    nearby seeds apart)."""
    return hash_seed(f"{seed}/{stream}")


def _check_number(value: Any, name: str, lo: float, hi: float, *, lo_open=False, hi_open=False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bad = math.isnan(x) or x < lo or x > hi or (lo_open and x == lo) or (hi_open and x == hi)
    if bad or (math.isinf(x) and hi != math.inf):
        raise ValueError(
            f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {value!r}"
        )
    return x


def _check_probability(p: Any, name: str = "update_probability") -> Probability:
    return p if callable(p) else _check_number(p, name, 0.0, 1.0)


def _hash_normal(key: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Standard normals shaped like ``like`` from the SplitMix64 stream at ``key``: each 64-bit hash gives two
    24-bit uniforms, and Box-Muller turns them into two normals (cos and sin)."""
    n = like.numel()
    i = torch.arange((n + 1) // 2, device=like.device, dtype=torch.int64)
    z = _mix(key.to(like.device) + _wrapping_mul(i + 1, _ODD))
    u1 = (_srl(z, 40).float() + 0.5) / 2.0**24
    u2 = ((z >> 16) & 0xFFFFFF).float() / 2.0**24
    r, t = torch.sqrt(-2.0 * torch.log(u1)), (2 * math.pi) * u2
    return torch.cat([r * torch.cos(t), r * torch.sin(t)])[:n].view(like.shape).to(like.dtype)


def _split_like(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in like]), like)]


def _flat(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


# ---- curvature sources: (opt, params, closure, refit) -> (closure output, grads, probes v, curvature h)
def _whiten(opt: PSGD, params, closure, refit):
    out = None
    if closure is not None:
        with torch.enable_grad():
            out = closure()
    grads = [p.grad for p in params]
    if closure is not None and all(g is None for g in grads):  # the closure only returned the loss
        with torch.enable_grad():
            grads = opt._all_reduce(opt._grad(_loss_of(out), params))
    if any(g is not None and g.is_sparse for g in grads):
        raise RuntimeError("sparse gradients are not supported by PSGD")
    return out, grads, None, None  # step() pairs the gradients with probes on refit steps


def _hvp(opt: PSGD, params, closure, refit):
    with torch.enable_grad():
        out = closure()
        g = opt._grad(_loss_of(out), params, create_graph=refit)
        if not refit:
            return out, opt._all_reduce(g), None, None
        vs = opt._probes(params)
        live = [k for k, gk in enumerate(g) if gk.requires_grad]  # a linear loss has H = 0
        hs = [torch.zeros_like(p) for p in params]
        if live:
            hs = torch.autograd.grad([g[k] for k in live], params, [vs[k] for k in live], allow_unused=True,
                                     materialize_grads=True)
    return out, opt._all_reduce([x.detach() for x in g]), vs, opt._all_reduce(list(hs))


def _finite_diff(opt: PSGD, params, closure, refit):
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)
    with torch.enable_grad():
        out = closure()
        grads = opt._grad(_loss_of(out), params)
    if not refit:
        return out, opt._all_reduce(grads), None, None
    eps = max(torch.finfo(p.dtype).eps for p in params)
    rms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.float()).cpu() for p in params]))
    delta = math.sqrt(eps) * (1.0 + rms / math.sqrt(sum(p.numel() for p in params)))
    saved = [p.detach().clone() for p in params]
    for p, v in zip(params, opt._probes(params)):
        p.add_(v * delta.to(p.device, p.dtype))
    vs = [(p - s) / delta.to(p.device, p.dtype) for p, s in zip(params, saved)]  # the perturbation applied
    torch.set_rng_state(rng[0])  # same dropout masks as the first evaluation
    if rng[1] is not None:
        torch.cuda.set_rng_state_all(rng[1])
    try:
        with torch.enable_grad():
            g_plus = opt._grad(_loss_of(closure()), params)
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    hs = [(gp - g) / delta.to(g.device, g.dtype) for gp, g in zip(g_plus, grads)]
    return out, opt._all_reduce(grads), vs, opt._all_reduce(hs)


CURVATURE_SOURCES: dict[str, Callable] = {"whiten": _whiten, "hvp": _hvp, "finite_diff": _finite_diff}
CURVATURES = tuple(CURVATURE_SOURCES)

_LIVE: weakref.WeakValueDictionary[int, PSGD] = weakref.WeakValueDictionary()  # optimizers by _key


@torch.library.custom_op("genlib::psgd_refit", mutates_args=("state",))
def _refit_op(state: list[torch.Tensor], grads: list[torch.Tensor], live: list[int], step: torch.Tensor,
              key: int) -> None:
    """A compiled whitening step's refit as one opaque op (:attr:`PSGD.refit_in_op`): it flips the coin on
    the host and runs the eager fits, writing ``state`` in place; no ``torch.cond``, no graph break."""
    _LIVE[key]._refit_in_op(state, grads, live, step)


@_refit_op.register_fake
def _(state, grads, live, step, key) -> None:
    return None


def _loss_of(out: Any) -> torch.Tensor:
    loss = (
        out if isinstance(out, torch.Tensor) else (out[0] if isinstance(out, (tuple, list)) and out else None)
    )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise RuntimeError(
            "closure must return the scalar loss tensor (or a tuple whose first item is the "
            f"loss), got {type(out).__name__}"
        )
    if not loss.requires_grad:
        raise RuntimeError(
            "closure returned a loss that does not require grad: it must build the graph from "
            "the parameters (not under torch.no_grad) and must not call backward() itself"
        )
    return loss.reshape(())


# ---- chained transforms: (optimizer, group, params, updates) -> updates
def ema_momentum(opt: PSGD, group: dict, ps: Tensors, us: Tensors) -> Tensors:
    """``m ← β m + (1 − β) g`` (an EMA: no rescaled step) in ``state[p]["momentum_buffer"]``."""
    beta = group["momentum"]
    if beta == 0:
        return us
    bufs = []
    for p, u in zip(ps, us):
        st = opt.state[p]
        if "momentum_buffer" not in st:
            st["momentum_buffer"] = torch.zeros_like(u)  # zeros, not u: the same arithmetic every step
        bufs.append(st["momentum_buffer"])
    torch._foreach_lerp_(bufs, us, 1.0 - beta)
    return bufs


def precondition(opt: PSGD, group: dict, ps: Tensors, us: Tensors) -> Tensors:
    """``P·u`` with the group's preconditioners (one on the flattened group, or one per tensor)."""
    pcs = opt._preconds[group["_index"]]
    if opt.flatten:
        allp = group["params"]
        full = dict(zip(map(id, ps), us))
        x = _flat([full.get(id(p), torch.zeros_like(p)) for p in allp])  # frozen tensors: zeros
        y = _as(pcs[0]._precondition(_as(x, pcs[0].cdtype)), x.dtype)
        out = dict(zip(map(id, allp), _split_like(y, allp)))
        return [out[id(p)] for p in ps]
    by_id = {id(p): pc for p, pc in zip(group["params"], pcs)}
    return [_as(by_id[id(p)]._precondition(_as(u, by_id[id(p)].cdtype)), u.dtype) for p, u in zip(ps, us)]


def trust_region(opt: PSGD, group: dict, ps: Tensors, us: Tensors) -> Tensors:
    """Scale each tensor's step to an RMS of at most ``max_update_rms``, then clamp its entries to
    ``±max_update_abs`` (sync-free)."""
    c, a = group["max_update_rms"], group["max_update_abs"]
    if c is not None and c != math.inf:  # fused over the tensors: a few kernels however many there are
        scale = torch._foreach_norm(us)
        torch._foreach_add_(scale, 1e-30)
        torch._foreach_reciprocal_(scale)
        torch._foreach_mul_(scale, [c * math.sqrt(u.numel()) for u in us])
        torch._foreach_clamp_max_(scale, 1.0)
        us = torch._foreach_mul(us, scale)
    if a is not None:
        us = torch._foreach_clamp_min(torch._foreach_clamp_max(us, a), -a)
    return us


def clip_norm(opt: PSGD, group: dict, ps: Tensors, us: Tensors) -> Tensors:
    """Scale the group's step to a norm of at most ``grad_clip_max_norm`` (sync-free)."""
    c = group["grad_clip_max_norm"]
    if c is None:
        return us
    norm = torch.linalg.vector_norm(torch.stack([n.to(us[0].device) for n in torch._foreach_norm(us)]))
    return torch._foreach_mul(us, torch.clamp(c / (norm + torch.finfo(norm.dtype).tiny), max=1.0))


class PSGD(torch.optim.Optimizer):
    """Base PSGD optimizer; use a family (:class:`Kron`, :class:`Diag`, :class:`LRA`, :class:`XMat`,
    :class:`Dense`). Module docstring: the step, curvature sources, state and DDP.

    Args:
        params: parameters or param-group dicts (groups may override every per-group option below).
        lr: step size (per group); ``None`` → 1e-3 for ``"whiten"``, 1e-2 otherwise. A 0-dim tensor, as
            for torch's optimizers, lets an LR scheduler change it without recompiling a compiled step.
        preconditioner_lr: normalised step ``μ`` of the preconditioner fit (per group; 0.01–0.1).
        momentum: EMA factor ``β`` in [0, 1) of the gradient that is preconditioned (per group).
        weight_decay: decoupled weight decay, ``θ ← θ (1 − lr·wd)`` (per group).
        curvature: ``"whiten"``, ``"hvp"`` or ``"finite_diff"``.
        update_probability: refit probability, a float in [0, 1] or a picklable ``step → p`` schedule
            (e.g. :class:`~genlib.optim.ExponentialDecaySchedule`; called with an int eagerly, with a 0-dim
            tensor under ``torch.compile``). The first step always refits while
            ``init_scale=None``, to set Q's scale from data.
        grad_clip_max_norm: clip the norm of a group's preconditioned step; ``None``: off (per group).
        max_update_rms: trust region, the largest RMS of a tensor's preconditioned step; ``None`` → 1.1 for
            ``"whiten"``, off (``inf``) otherwise (per group).
        max_update_abs: clamp every entry of a tensor's preconditioned step to ``±max_update_abs`` after
            the RMS bound; ``None``: off (per group). 1.0 keeps Kron-QEQ finite on the Gamma speech VAE at
            lr 1e-3 (benchmarks/README.md, "third run").
        init_scale: ``Q = init_scale·I`` at start; ``None`` sets it from the first curvature pair (per group).
        preconditioner_dtype: storage dtype of Q (per group); ``None`` → the parameters' dtype.
        lipschitz: normalise the fit by a running Lipschitz estimate (Li 2024; Kron and Diag); ``None`` →
            the family's default (per group).
        seed: key of the refit coins and probe vectors (and LRA's initial factors).
        sync_closure_grads: all-reduce gradients and HVPs the optimizer computes itself under DDP.
        check_finite: raise ``RuntimeError`` naming the parameter whose gradient holds NaN/Inf (one device
            sync per step, and a graph break under ``torch.compile``); ``None`` (default) follows genlib's
            switch for hot-path checks (:func:`genlib.set_validate_args` / ``genlib.validate_args(False)``).
    """

    #: True: one preconditioner over a group's flattened concatenation; False: one per tensor.
    flatten: ClassVar[bool] = False
    #: Per-tensor families: True sets every tensor's initial scale from the whole group's first pairs.
    group_init: bool = False
    #: Compiled whitening steps refit through an opaque op (eager fits, state written in place) instead of
    #: ``torch.cond`` (traced fits, state passed through new tensors every step): for large state.
    refit_in_op: ClassVar[bool] = False
    #: The update skeleton's chain, applied in order to the gradients of a group.
    transforms: ClassVar[tuple[Callable, ...]] = (ema_momentum, precondition, trust_region, clip_norm)
    _default_lipschitz: ClassVar[bool] = False

    def __init__(
        self,
        params: Params,
        lr: float | None = None,
        *,
        preconditioner_lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        curvature: str = "whiten",
        update_probability: Probability = 1.0,
        grad_clip_max_norm: float | None = None,
        max_update_rms: float | None = None,
        max_update_abs: float | None = None,
        init_scale: float | None = None,
        preconditioner_dtype: torch.dtype | None = None,
        lipschitz: bool | None = None,
        seed: int = 0,
        sync_closure_grads: bool = True,
        check_finite: bool | None = None,
        **family_defaults: Any,
    ) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._curvature = curvature
        self._update_probability = _check_probability(update_probability)
        self.seed, self.sync_closure_grads = seed, bool(sync_closure_grads)
        resolve_validate_args(check_finite, "check_finite")  # refuses anything but True / False / None
        self.check_finite = check_finite
        self.group_init = type(self).group_init
        self._preconds: list[list[Preconditioner]] = []
        self._coin_key, self._probe_key = stream_seed(seed, "coins"), stream_seed(seed, "probes")
        # the tensor coin's increment as int64, computed here: traced, the masking would see a symbolic int
        # (dynamo makes an int attribute that differs between optimizers dynamic) and 64-bit constants
        self._coin_base = _i64(self._coin_key + _ODD)
        whiten = curvature == "whiten"  # whitening steps get a trust region by default (module docstring)
        defaults = dict(
            lr=(1e-3 if whiten else 1e-2) if lr is None else lr, preconditioner_lr=preconditioner_lr,
            momentum=momentum, weight_decay=weight_decay, grad_clip_max_norm=grad_clip_max_norm,
            max_update_rms=(1.1 if whiten else math.inf) if max_update_rms is None else max_update_rms,
            max_update_abs=max_update_abs,
            init_scale=init_scale, preconditioner_dtype=preconditioner_dtype,
            lipschitz=self._default_lipschitz if lipschitz is None else lipschitz, **family_defaults,
        )
        self._validate_group(defaults, "")
        super().__init__(params, defaults)
        self._register()
        self._anchor = next(p for g in self.param_groups for p in g["params"])  # holds the step count
        self.state[self._anchor]["step"] = torch.tensor(0.0)

    # ---- configuration
    @property
    def curvature(self) -> str:
        return self._curvature

    @curvature.setter
    def curvature(self, value: str) -> None:
        if value not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {value!r}")
        self._curvature = value

    @property
    def needs_closure(self) -> bool:
        """Whether ``step`` needs a closure that returns the loss without ``backward()``."""
        return self._curvature != "whiten"

    @property
    def update_probability(self) -> Probability:
        return self._update_probability

    @update_probability.setter
    def update_probability(self, value: Probability) -> None:
        self._update_probability = _check_probability(value)

    @property
    def preconditioners(self) -> list[list[Preconditioner]]:
        """Per param group, the preconditioners (one for flattened families, else one per tensor)."""
        return self._preconds

    def _validate_group(self, g: dict[str, Any], where: str) -> None:
        lr = g["lr"]
        if isinstance(lr, torch.Tensor) and (lr.ndim != 0 or not lr.is_floating_point()):
            raise ValueError(f"{where}lr as a tensor must be 0-dim and floating-point (it scales each step), "
                             f"got shape {tuple(lr.shape)} and dtype {lr.dtype}")
        _check_number(lr, f"{where}lr", 0.0, math.inf)
        _check_number(g["preconditioner_lr"], f"{where}preconditioner_lr", 0.0, math.inf, lo_open=True)
        _check_number(g["momentum"], f"{where}momentum", 0.0, 1.0, hi_open=True)
        _check_number(g["weight_decay"], f"{where}weight_decay", 0.0, math.inf)
        for key in ("grad_clip_max_norm", "max_update_rms", "max_update_abs", "init_scale"):
            if g[key] is not None:
                _check_number(g[key], f"{where}{key}", 0.0, math.inf, lo_open=True)
        for key in ("lipschitz", "elementwise_step"):
            if key in g and not isinstance(g[key], bool):
                raise ValueError(f"{where}{key} must be True or False, got {g[key]!r}")
        dt = g["preconditioner_dtype"]
        if dt is not None and not (isinstance(dt, torch.dtype) and dt.is_floating_point):
            raise ValueError(
                f"{where}preconditioner_dtype must be None or a floating torch.dtype, got {dt!r}"
            )
        self._validate_family(g, where)

    def _validate_family(self, g: dict[str, Any], where: str) -> None:
        """Family-specific per-group checks (override)."""

    def _make_preconditioner(
        self, shape: tuple[int, ...], group: dict[str, Any], dtype: torch.dtype, device: torch.device, gi: int
    ) -> Preconditioner:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated; its preconditioners are built here, their tensors in ``self.state``)."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        gi = len(self.param_groups)
        for i, p in enumerate(params):
            where = f"param_groups[{gi}]['params'][{i}]"
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"{where} must be a torch.Tensor, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(
                    f"{where} (shape {tuple(p.shape)}) is not a leaf tensor: optimize the tensor "
                    "you created (e.g. nn.Parameter), not a result of an operation on it"
                )
            if not p.is_floating_point() or p.is_sparse:
                raise ValueError(f"{where} must be a dense real floating tensor, got {p.dtype} {p.layout}")
        super().add_param_group({**param_group, "params": params})
        group = self.param_groups[-1]
        self._validate_group(group, f"param_groups[{gi}] ")
        group["_index"] = gi
        self._preconds.append(self._build_group(group, gi))

    def _build_group(self, group: dict[str, Any], gi: int) -> list[Preconditioner]:
        params = group["params"]
        if not params:
            return []
        if self.flatten:
            if len({p.device for p in params}) > 1:
                raise ValueError(
                    f"param_groups[{gi}] spans several devices: {type(self).__name__} "
                    "preconditions the flattened group, so give each device its own group"
                )
            dtype = group["preconditioner_dtype"] or params[0].dtype
            dim = sum(p.numel() for p in params)
            pcs, anchors = [self._make_preconditioner((dim,), group, dtype, params[0].device, gi)], params[:1]
        else:
            pcs = [self._make_preconditioner(tuple(p.shape), group, group["preconditioner_dtype"] or p.dtype,
                                             p.device, gi) for p in params]
            anchors = params
        for p, pc in zip(anchors, pcs):
            pc.bind(self.state[p])
        return pcs

    def _follow_parameters(self) -> None:
        """Move the state to the parameters' devices where they moved after this optimizer was built
        (``model.to(device)`` keeps the Parameter objects; torch's optimizers create their state at the first
        step, PSGD's preconditioners exist from the start). A static check: nothing is traced while the
        devices agree; the move itself runs eagerly (one graph break, at most once)."""
        if any(pc.device != p.device for p, pc in self._anchored()):
            self._move_state()

    def _anchored(self) -> Iterator[tuple[torch.Tensor, Preconditioner]]:
        """(parameter, preconditioner) pairs: each preconditioner with the tensor that holds its state."""
        for group, pcs in zip(self.param_groups, self._preconds):
            yield from zip(group["params"][:1] if self.flatten else group["params"], pcs)

    @torch.compiler.disable
    def _move_state(self) -> None:
        anchored = {id(p): pc for p, pc in self._anchored()}  # a preconditioner moves its bound state[p]
        for p in (p for g in self.param_groups for p in g["params"]):
            if id(p) in anchored:
                anchored[id(p)].to(p.device)
            else:
                move_state(self.state[p], p.device)

    # ---- randomness: pure functions of (seed, step)
    def _step_count(self) -> torch.Tensor:
        return self.state[self._anchor]["step"]

    def _coin(self, step: int | torch.Tensor) -> float | torch.Tensor:
        """A uniform in [0, 1) hashed from (seed, step): 53 bits of SplitMix64, so the host value (an int
        ``step``) and the tensor one (a tensor ``step``, while compiling) are the same double."""
        if isinstance(step, int):
            return (_splitmix64(self._coin_key + step) >> 11) * 2.0**-53
        return _srl(_mix(step.long() + self._coin_base), 11).double() * 2.0**-53

    def _probes(self, params: list[torch.Tensor], step: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``v ~ N(0, I)`` shaped like each parameter: a counter-based hash of (seed, step, index) computed
        on the parameters' devices (no generator state; the same draws on CPU and GPU; compiles)."""
        step = self._step_count() if step is None else step
        key = _mix(step.long() + self._probe_key)  # one stream per step, far from the others
        out = []
        for p in params:  # a stream per tensor too
            out.append(_hash_normal(key, p))
            key = _mix(key)
        return out

    # ---- helpers of the curvature sources
    def _grad(self, loss: torch.Tensor, params: list[torch.Tensor], **kw: Any) -> list[torch.Tensor]:
        try:
            return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True, **kw))
        except RuntimeError as err:
            raise RuntimeError(
                f"{err}\nHint: with curvature={self._curvature!r} the closure must return the loss "
                "without calling backward(); the optimizer differentiates it itself."
            ) from err

    def _all_reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Average over ranks when the optimizer differentiated the loss itself (DDP does not see it)."""
        if not (self.sync_closure_grads and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return tensors
        flat = _flat(tensors)
        dist.all_reduce(flat)
        return _split_like(flat / dist.get_world_size(), tensors)

    def _check_finite(self, params: list[torch.Tensor], xs: list[torch.Tensor | None], what: str) -> None:
        present = [(k, x) for k, x in enumerate(xs) if x is not None]
        if not present:
            return
        norms = torch._foreach_norm([x for _, x in present])
        bad = ~torch.isfinite(torch.stack([n.to(norms[0].device) for n in norms]).cpu())
        if bool(bad.any()):  # one sync; the message is worth it only when something is wrong
            k, x = present[int(bad.nonzero()[0, 0])]
            where = [(gi, pi) for gi, g in enumerate(self.param_groups) for pi, q in enumerate(g["params"])]
            flat_id = next(
                i for i, (gi, pi) in enumerate(where) if self.param_groups[gi]["params"][pi] is params[k]
            )
            gi, pi = where[flat_id]
            raise RuntimeError(
                f"{what} of parameter {flat_id} (param_groups[{gi}]['params'][{pi}], shape "
                f"{tuple(x.shape)}) contains NaN or Inf"
            )

    # ---- the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One PSGD step; returns what the closure returned (``None`` without one). ``"whiten"``: uses
        ``p.grad`` (a closure may call ``backward()``, or just return the loss, which is then differentiated
        here). ``"hvp"``/``"finite_diff"``: ``closure`` is required and must not call ``backward()``."""
        if self.needs_closure and closure is None:
            raise RuntimeError(
                f"curvature={self._curvature!r} needs step(closure): a function that re-evaluates "
                "the model on the batch and returns the loss without calling backward()"
            )
        self._follow_parameters()
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        refit = self._refit_now()
        if isinstance(refit, torch.Tensor) and self._curvature != "whiten":
            refit = bool(refit)  # a closure's second differentiation cannot run under torch.cond: one break
        out, grads, vs, hs = (None, [], None, None)
        if params:
            out, grads, vs, hs = CURVATURE_SOURCES[self._curvature](self, params, closure, refit)
            if resolve_validate_args(self.check_finite):
                self._check_finite(params, grads, "gradient")
                if hs is not None:
                    self._check_finite(params, hs, "Hessian-vector product")
        elif closure is not None:
            with torch.enable_grad():
                out = closure()
        if params and self.refit_in_op and self._curvature == "whiten" and torch.compiler.is_compiling():
            live = [k for k, g in enumerate(grads) if g is not None]
            _refit_op([pc.state[k] for pc, k in self._written()], [grads[k] for k in live], live,
                      self._step_count(), self._key)
        elif isinstance(refit, torch.Tensor) and params:
            self._refit_under_cond(refit, params, grads)
        elif refit and params:
            for pc, new in self._fits(params, vs, grads if hs is None else hs, lambda pc: pc.state):
                pc.commit(new)
        by_id = {id(p): k for k, p in enumerate(params)}
        for group in self.param_groups:
            ks = [by_id.get(id(p)) for p in group["params"]]
            live = [(p, k) for p, k in zip(group["params"], ks) if k is not None and grads[k] is not None]
            if live:
                self._update_group(group, [p for p, _ in live], [grads[k] for _, k in live])
        self._step_count().add_(1)
        return out

    def _refit_now(self) -> bool | torch.Tensor:
        """The refit coin, a hash of (seed, step) below the refit probability: a host bool eagerly (the step
        count is a CPU tensor, as in torch's optimizers: no device sync), a bool tensor while compiling (the
        fits then run under ``torch.cond``). The first step always refits while a scale is still to be set
        from data (``init_scale=None``)."""
        p = self._update_probability
        if not callable(p) and p >= 1.0:
            return True
        if torch.compiler.is_compiling():
            step, first = self._step_count(), any(g["init_scale"] is None for g in self.param_groups)
            return (self._coin(step) < (p(step) if callable(p) else p)) | ((step == 0) & first)
        return self._host_coin(int(self._step_count()))

    def _host_coin(self, step: int) -> bool:
        p = self._update_probability
        if callable(p):
            p = _check_number(float(p(step)), f"update_probability({step}) (schedule output)", 0.0, 1.0)
        first = any(g["init_scale"] is None for g in self.param_groups)
        return self._coin(step) < p or (step == 0 and first)

    def _update_group(self, group: dict[str, Any], ps: list[torch.Tensor], us: list[torch.Tensor]) -> None:
        """The skeleton shared by all families: the chained transforms, then decoupled decay and the step."""
        for transform in self.transforms:
            us = transform(self, group, ps, us)
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):  # an alpha would read it on the host (a graph break when compiled)
            lr = lr.to(ps[0].device)
            us = torch._foreach_mul(us, lr)
        if group["weight_decay"] != 0:
            torch._foreach_mul_(ps, 1.0 - lr * group["weight_decay"])
        torch._foreach_add_(ps, us, alpha=-1.0 if isinstance(lr, torch.Tensor) else -lr)

    def _written(self) -> list[tuple[Preconditioner, str]]:
        """(preconditioner, key) of every state entry a fit writes, in one fixed order: the tensors the
        refit op mutates and ``torch.cond`` passes through."""
        return [(pc, k) for g in self._preconds for pc in g for k in pc.keys + pc.BOOKKEEPING]

    @staticmethod
    def _scatter(live: list[int], gs: Sequence[torch.Tensor], n: int) -> list[torch.Tensor | None]:
        """The gradients of ``n`` parameters from those of the ``live`` ones (None elsewhere)."""
        hs: list[torch.Tensor | None] = [None] * n
        for k, g in zip(live, gs):
            hs[k] = g
        return hs

    def _refit_in_op(self, state: Tensors, grads: Tensors, live: list[int], step: torch.Tensor) -> None:
        """The refit op's body: the host coin of ``step``, then the eager fits of the whitening pairs, written
        into ``state`` (the tensors of :meth:`_written`, or the compiler's stand-ins for them)."""
        if not self._host_coin(int(step)):
            return
        into = {pc: dict(pc.state) for g in self._preconds for pc in g}
        for (pc, k), t in zip(self._written(), state):
            into[pc][k] = t
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        hs = self._scatter(live, grads, len(params))
        for pc, new in self._fits(params, None, hs, into.__getitem__, step):
            pc.commit(new, into[pc])

    def _refit_under_cond(self, refit: torch.Tensor, params: Tensors,
                          grads: list[torch.Tensor | None]) -> None:
        """A whitening step's fits behind a tensor coin: ``torch.cond`` runs them or keeps the state."""
        pcs = [pc for g in self._preconds for pc in g]
        keys = self._written()
        live = [k for k, g in enumerate(grads) if g is not None]

        def fit(*gs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            hs = self._scatter(live, gs, len(params))
            # fits read clones: a view of live state inside a branch would alias the branch's inputs
            states: dict[Preconditioner, dict[str, torch.Tensor]] = {pc: {} for pc in pcs}
            for pc, k in keys:
                states[pc][k] = pc.state[k].clone()
            new = dict(self._fits(params, None, hs, states.__getitem__))
            new = {pc: {**states[pc], **new.get(pc, {})} for pc in pcs}
            return tuple(new[pc][k].to(pc.state[k].dtype).contiguous() for pc, k in keys)  # keep's layout

        def keep(*gs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(pc.state[k].clone() for pc, k in keys)

        out = torch.cond(refit, fit, keep, tuple(grads[k] for k in live))
        for pc in pcs:
            pc.commit({k: t for (q, k), t in zip(keys, out) if q is pc})

    def _fits(
        self, params: Tensors, vs: list[torch.Tensor | None] | None, hs: list[torch.Tensor | None],
        state_of: Callable[[Preconditioner], dict[str, torch.Tensor]], step: torch.Tensor | None = None,
    ) -> list[tuple[Preconditioner, dict[str, torch.Tensor]]]:
        """Each preconditioner's new state after one fit on this step's pairs ``(vs, hs)``, read from
        ``state_of(pc)`` and written nowhere. ``vs=None``: whitening pairs ``(v, g)``, the probes drawn here
        (``v = None`` where the family integrates them out). Flattened groups: zeros for absent tensors."""
        if vs is None:
            integrated = set() if self.flatten else {
                id(p) for g, pcs in zip(self.param_groups, self._preconds) for p, pc in zip(g["params"], pcs)
                if pc.integrates_probes}
            drawn = [p for p, h in zip(params, hs) if h is not None and id(p) not in integrated]
            by_p = dict(zip(map(id, drawn), self._probes(drawn, step)))
            vs = [by_p.get(id(p)) for p in params]
        pair = {id(p): (v, h) for p, v, h in zip(params, vs, hs) if h is not None}
        out = []
        for group, pcs in zip(self.param_groups, self._preconds):
            if self.flatten:
                if any(id(p) in pair for p in group["params"]):
                    vh = [pair.get(id(p), (torch.zeros_like(p),) * 2) for p in group["params"]]
                    v, h = (_flat([x[i] for x in vh]).unsqueeze(0) for i in (0, 1))
                    out.append((pcs[0], pcs[0].fitted(state_of(pcs[0]), v, h)))
                continue
            fits = [(pc, *pair[id(p)]) for p, pc in zip(group["params"], pcs) if id(p) in pair]
            states = [state_of(pc) for pc, _, _ in fits]
            # the fit counters live on the CPU: spotting first fits eagerly needs no device sync
            if self.group_init and fits and (torch.compiler.is_compiling() or
                                             any(pc.num_updates == 0 for pc, _, _ in fits)):
                states = self._group_scaled(fits, states)
            out += [(pc, pc.fitted(st, None if v is None else v.unsqueeze(0), h.unsqueeze(0)))
                    for (pc, v, h), st in zip(fits, states)]
        return out

    @staticmethod
    def _group_scaled(fits: list[tuple[Preconditioner, torch.Tensor | None, torch.Tensor]],
                      states: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """The states with every first-fit ``Q`` started at one scale ``(‖v‖/‖h‖)^(1/2)`` over the group's
        concatenated pairs, as LRA(rank=0) takes (sync-free: a ``torch.where`` on each one's flag)."""
        dev = fits[0][2].device
        fresh = [(st["fits"] == 0).to(dev) & ~st["initialized"].to(dev) for st in states]

        def norm(f: torch.Tensor, x: torch.Tensor | None, numel: int) -> torch.Tensor:
            n = torch.tensor(math.sqrt(numel), device=dev) if x is None else _safe_norm(x.float()).to(dev)
            return torch.where(f, n, 0.0)

        nv = _safe_norm(torch.stack([norm(f, v, h.numel()) for f, (_, v, h) in zip(fresh, fits)]))
        nh = _safe_norm(torch.stack([norm(f, h, 0) for f, (_, _, h) in zip(fresh, fits)]))
        scale = nv.sqrt() / nh.sqrt()
        out = []
        for (pc, _, _), st, f in zip(fits, states, fresh):
            go = (f & (nv > 0) & (nh > 0)).to(pc.device)
            c = torch.where(go, scale.to(pc.device), 1.0)
            out.append({**st, **pc._scaled(st, c), "initialized": st["initialized"] | go})
        return out

    # ---- checkpoints
    def __getstate__(self) -> dict[str, Any]:
        # torch pickles only defaults/state/param_groups; PSGD's own fields too
        keep = ("_curvature", "_update_probability", "seed", "sync_closure_grads", "check_finite",
                "group_init", "_preconds", "_coin_key", "_coin_base", "_probe_key", "_anchor")
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in keep}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._register()  # a copy is another optimizer to the refit op

    def _register(self) -> None:
        self._key = id(self)
        _LIVE[self._key] = self

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (torch's format); continuing repeats the uninterrupted run."""
        # torch casts every state tensor to its parameter's dtype: keep the preconditioners' exact tensors
        saved = {pid: dict(st) for pid, st in state_dict["state"].items()}
        if "step" not in saved.get(0, {}):
            raise ValueError(
                "state_dict has no step count in its first parameter's state: it was not saved by "
                "a genlib PSGD optimizer (genlib.optim.psgd)"
            )
        super().load_state_dict(state_dict)
        ids = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        for gi, (group, pcs) in enumerate(zip(self.param_groups, self._preconds)):
            group["_index"] = gi
            anchors = group["params"][:1] if self.flatten else group["params"]
            for p, pc in zip(anchors, pcs):
                st = self.state[p]
                st.update({k: t.clone() for k, t in saved.get(ids[id(p)], {}).items() if k in pc.state})
                pc.bind(st)


class Kron(PSGD):
    """PSGD with a Kronecker-factored preconditioner per tensor (:class:`KronPreconditioner`).

    Args (besides :class:`PSGD`'s):
        max_size: largest dim with a triangular factor; wider dims get a diagonal factor (default 1024: a
            dense factor on a wide layer costs more per step than the rest of the update).
        max_skew: a dim larger than ``max_skew`` × (product of the other dims) gets a diagonal factor.
        memory_save_mode: ``None``, ``"one_diag"`` (largest dim of each matrix diagonal) or ``"all_diag"``.
        coords: local coordinates of the fit, ``"EQ"`` (``dQ = E·Q``), ``"QE"`` (``dQ = Q·E``, Li 2024),
            ``"QEQ"`` or ``"QUAD"`` (no inverses of Q; whitening integrates its probes out)
            (:class:`~genlib.optim.KronPreconditioner`). ``"QEQ"`` with ``memory_save_mode="one_diag"`` is
            the fastest PSGD on minibatch VAEs (benchmarks/README.md); ``"EQ"`` stays the default, ahead on
            Newton types and deterministic full-batch problems.
        group_init: start every tensor's ``Q`` at one scale from the whole group's first pairs.
    """

    def __init__(
        self,
        params: Params,
        lr: float | None = None,
        *,
        max_size: float = 1024,
        max_skew: float = 10.0,
        memory_save_mode: str | None = None,
        coords: str = "EQ",
        group_init: bool = False,
        **kwargs: Unpack[PSGDOptions],
    ) -> None:
        super().__init__(
            params,
            lr,
            max_size=max_size,
            max_skew=max_skew,
            memory_save_mode=memory_save_mode,
            coords=coords,
            **kwargs,
        )
        self.group_init = bool(group_init)

    def _validate_family(self, g, where):
        _check_number(g["max_size"], f"{where}max_size", 0.0, math.inf)
        _check_number(g["max_skew"], f"{where}max_skew", 0.0, math.inf)
        if g["coords"] not in KronPreconditioner.COORDS:
            raise ValueError(f"{where}coords must be one of {KronPreconditioner.COORDS}, got {g['coords']!r}")

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        return KronPreconditioner(
            shape,
            max_size=group["max_size"],
            max_skew=group["max_skew"],
            memory_save_mode=group["memory_save_mode"],
            coords=group["coords"],
            lr=group["preconditioner_lr"],
            init_scale=group["init_scale"],
            lipschitz=group["lipschitz"],
            dtype=dtype,
            device=device,
        )


class Diag(PSGD):
    """PSGD with a diagonal (Jacobi) preconditioner per tensor (:class:`DiagPreconditioner`).

    Each tensor's diagonal is fitted with its own step normalisation, but with ``init_scale=None`` all
    tensors of a group start from one scale over the group's first pairs (``group_init=True``), as
    ``LRA(rank=0)`` does: per-tensor starting scales lag badly behind fast-shrinking curvature with sparse
    refits (benchmarks/README.md, "PSGD"). ``elementwise_step=True``: one step size per entry (appendix
    A.1.4; also per param group).
    """

    def __init__(
        self,
        params: Params,
        lr: float | None = None,
        *,
        group_init: bool = True,
        elementwise_step: bool = False,
        **kwargs: Unpack[PSGDOptions],
    ) -> None:
        super().__init__(params, lr, elementwise_step=elementwise_step, **kwargs)
        self.group_init = bool(group_init)

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        return DiagPreconditioner(
            shape,
            lr=group["preconditioner_lr"],
            init_scale=group["init_scale"],
            elementwise_step=group["elementwise_step"],
            lipschitz=group["lipschitz"],
            dtype=dtype,
            device=device,
        )


class LRA(PSGD):
    """PSGD with ``(I + UVᵀ)·diag(d)`` over each param group's flattened concatenation
    (:class:`LRAPreconditioner`).

    Args (besides :class:`PSGD`'s):
        rank: rank of ``UVᵀ`` (>= 0; 0 is diagonal); capped at ``dim − 1`` for small groups.
        elementwise_step: one step size per entry of the diagonal factor (appendix A.1.4).

    Compiled, its refits run eagerly inside one opaque op (:attr:`PSGD.refit_in_op`): under ``torch.cond``
    its ``dim × rank`` factors would pass through new tensors on every step, refit or not
    (benchmarks/README.md, "Eager against compiled").
    """

    flatten = True
    refit_in_op = True

    def __init__(
        self,
        params: Params,
        lr: float | None = None,
        *,
        rank: int = 10,
        elementwise_step: bool = False,
        **kwargs: Unpack[PSGDOptions],
    ) -> None:
        super().__init__(params, lr, rank=rank, elementwise_step=elementwise_step, **kwargs)

    def _validate_family(self, g, where):
        r = g["rank"]
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"{where}rank must be an int >= 0, got {r!r}")

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        return LRAPreconditioner(
            shape[0],
            min(group["rank"], shape[0] - 1),
            seed=stream_seed(self.seed, f"lra_init/{gi}"),
            lr=group["preconditioner_lr"],
            init_scale=group["init_scale"],
            dtype=dtype,
            device=device,
            elementwise_step=group["elementwise_step"],
        )


class XMat(PSGD):
    """PSGD with an X-shaped (diagonal + anti-diagonal) preconditioner over each param group's flattened
    concatenation (:class:`XMatPreconditioner`)."""

    flatten = True

    def __init__(self, params: Params, lr: float | None = None, **kwargs: Unpack[PSGDOptions]) -> None:
        super().__init__(params, lr, **kwargs)

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        return XMatPreconditioner(
            shape[0],
            lr=group["preconditioner_lr"],
            init_scale=group["init_scale"],
            dtype=dtype,
            device=device,
        )


class Dense(PSGD):
    """PSGD with a dense preconditioner over each param group's flattened concatenation
    (:class:`DensePreconditioner`); memory ``dim²``.

    Args (besides :class:`PSGD`'s):
        triangular: upper-triangular ``Q``, or a full invertible ``Q`` (default; fits faster).

    Compiled, its refits run eagerly inside one opaque op (:attr:`PSGD.refit_in_op`), as LRA's.
    """

    flatten = True
    refit_in_op = True

    def __init__(
        self,
        params: Params,
        lr: float | None = None,
        *,
        triangular: bool = False,
        **kwargs: Unpack[PSGDOptions],
    ) -> None:
        super().__init__(params, lr, triangular=bool(triangular), **kwargs)

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        return DensePreconditioner(
            shape[0],
            triangular=group["triangular"],
            lr=group["preconditioner_lr"],
            init_scale=group["init_scale"],
            dtype=dtype,
            device=device,
        )
