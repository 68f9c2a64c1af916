"""PSGD optimizers: ``torch.optim.Optimizer`` families on one shared step.

:class:`PSGD` does the work — curvature pairs, refit of the preconditioner with probability ``p``,
momentum, preconditioning, step clipping, decoupled weight decay, update — and the families only choose a
preconditioner factory (:mod:`genlib.optim.preconditioners`):

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
  whitens the gradients (the momentum, if any, is then preconditioned by it); use it like any torch
  optimizer: ``loss.backward(); opt.step()``. Default ``lr = 1e-3``.
- ``"hvp"``: Newton type with exact Hessian-vector products. Call ``opt.step(closure)`` where the
  closure returns the loss **without** calling ``backward()``; the optimizer takes gradients with
  ``create_graph=True`` and one HVP with ``v ~ N(0, I)`` on refit steps. Default ``lr = 1e-2``.
- ``"finite_diff"``: Newton type from first derivatives only: ``h = g(θ + v) − g(θ)`` for a tiny ``v``
  (``√eps·(1 + rms θ)``); the closure (no ``backward()``) is re-run on the same batch with the torch CPU and
  CUDA RNG states restored, so dropout masks match; θ is restored exactly afterwards.

With ``P ≈ |H|⁻¹`` (Newton types) ``lr`` is a fraction of a Newton step; ``momentum`` is an EMA of the
gradient (``m ← β m + (1 − β) g``, not heavy-ball) so it does not rescale the step: default 0 (the papers'
plain PSGD), 0.9 is a good choice for noisy whitening runs.

Cost: a step without a refit (probability ``1 − update_probability``) only draws the coin, checks the
gradients are finite (one device sync; ``check_finite=False`` skips it), preconditions and updates; refits
add the curvature pair (one HVP, or a second closure call for ``"finite_diff"``) and one fit of Q.

Reproducibility: the refit coin flips, every ``v`` and LRA's starting factors (per param group) come from
the optimizer's own generators, one stream each, seeded by hashing ``seed`` with the stream's name
(:func:`stream_seed`), so no stream of one seed replays another's. They, the step count and every
preconditioner are in :meth:`PSGD.state_dict`, so resuming from a checkpoint reproduces the uninterrupted
run bit for bit (on the same device). (Runs before 2026-11-26 seeded the streams ``seed``, ``seed + 1`` and
``seed + group``: the same ``seed`` now gives other draws.)

Distributed (DDP): all ranks keep identical Q because the coin flips and ``v`` come from identically
seeded generators and every pair is identical across ranks:

- ``"whiten"`` is DDP-safe with a DDP-wrapped model (DDP all-reduces ``.grad`` in ``backward()``), and
  with ``step(closure)`` whose closure returns the loss of the unwrapped module without ``backward()``
  (the optimizer differentiates it and all-reduces the gradients itself, as below).
- ``"hvp"`` and ``"finite_diff"`` are DDP-safe when the closure runs the **unwrapped** module
  (``ddp_model.module``): their gradients come from ``torch.autograd.grad``, which DDP does not reduce, so
  the optimizer all-reduces (averages) the gradients and HVPs itself whenever ``torch.distributed`` is
  initialised (``sync_closure_grads=True``, the default).

Example::

    opt = Kron(model.parameters(), lr=1e-3)                        # gradient whitening
    loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()

    opt = Kron(model.parameters(), lr=0.05, curvature="hvp",
               update_probability=ExponentialDecaySchedule(1.0, 0.1, 500))
    opt.step(lambda: loss_fn(model(x), y))                         # closure without backward()
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # typing_extensions comes with torch
    from typing_extensions import Unpack

import torch
import torch.distributed as dist
import torch.optim.optimizer as _optim_mod

from .preconditioners import (
    DensePreconditioner,
    DiagPreconditioner,
    KronPreconditioner,
    LRAPreconditioner,
    Preconditioner,
    XMatPreconditioner,
    _safe_norm,
)

__all__ = ["PSGD", "Kron", "Diag", "LRA", "XMat", "Dense", "CURVATURES", "Params", "PSGDOptions"]

CURVATURES = ("whiten", "hvp", "finite_diff")

Probability = float | Callable[[int], float]

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
    init_scale: float | None
    preconditioner_dtype: torch.dtype | None
    seed: int
    sync_closure_grads: bool
    check_finite: bool


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of an optimizer seeded ``seed``. Hashing keeps the streams
    apart: with ``seed + k`` offsets, seed 0's probes would replay seed 1's coin flips."""
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


_COIN_BATCH = 256  # coin flips drawn per call: one draw costs as much as 256 (same values, same order)


def _check_number(
    value: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bad = not math.isfinite(x) and not (hi == math.inf and x == math.inf and not hi_open)
    bad = bad or x < lo or x > hi or (lo_open and x == lo) or (hi_open and x == hi)
    if bad:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return x


def _check_probability(p: Any, name: str = "update_probability") -> Probability:
    if callable(p):
        return p
    return _check_number(p, name, 0.0, 1.0)


def _pick(xs: list[torch.Tensor] | None, ks: list[int | None]) -> list[torch.Tensor | None] | None:
    return None if xs is None else [None if k is None else xs[k] for k in ks]


def _zeros_for_unused(
    grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Zeros for the parameters a loss does not use. (``autograd.grad``'s ``materialize_grads=True`` does
    the same but costs ~20 µs per call even when every parameter is used.)"""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _by_device(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    return list(groups.values())


def _init_group_scale(pairs: list[tuple[Preconditioner, torch.Tensor, torch.Tensor]]) -> None:
    """Set every uninitialised ``Q_i = s·I`` with one ``s = (‖v‖/‖h‖)^(1/2)`` over the concatenation of the
    group's pairs, the scale a flattened family takes from the same pairs. An all-zero ``h`` carries no
    scale: the preconditioners are left to initialise themselves at a later refit."""
    dev = pairs[0][1].device

    def norm(xs: list[torch.Tensor]) -> torch.Tensor:
        return _safe_norm(torch.stack([_safe_norm(x).to(device=dev, dtype=torch.float32) for x in xs]))

    nv, nh = norm([v for _, v, _ in pairs]), norm([h for _, _, h in pairs])
    if not bool((nv > 0) & (nh > 0)):
        return
    s = nv.sqrt() / nh.sqrt()  # square roots first: the norms may sit anywhere in the float range
    for pc, _, _ in pairs:
        pc._rescale(s.to(pc.device))
        pc.initialized = True


class PSGD(torch.optim.Optimizer):
    """Base PSGD optimizer; use a family (:class:`Kron`, :class:`Diag`, :class:`LRA`, :class:`XMat`,
    :class:`Dense`). Module docstring: curvature modes, momentum, reproducibility and DDP.

    Args:
        params: parameters or param-group dicts (groups may override every per-group option below).
        lr: step size (per group); ``None`` → 1e-3 for ``"whiten"``, 1e-2 otherwise.
        preconditioner_lr: normalised step ``μ`` of the preconditioner fit (per group; 0.01–0.1).
        momentum: EMA factor ``β`` in [0, 1) of the gradient that is preconditioned (per group).
        weight_decay: decoupled weight decay, ``θ ← θ (1 − lr·wd)`` (per group).
        curvature: ``"whiten"``, ``"hvp"`` or ``"finite_diff"``.
        update_probability: refit probability, a float in [0, 1] or a picklable ``step → p`` schedule
            (e.g. :class:`~genlib.optim.ExponentialDecaySchedule`). Non-refit steps only precondition and
            update. The first step always refits when ``init_scale=None``, to set Q's scale from data.
        grad_clip_max_norm: trust region: scale the preconditioned step so its norm (per group) is at most
            this; ``None`` disables it (per group).
        init_scale: ``Q = init_scale·I`` at start; ``None`` sets it from the first curvature pair (per group).
        preconditioner_dtype: storage dtype of Q (per group); ``None`` → the parameters' dtype. bfloat16 is
            stored and computed in float32.
        seed: seed of the optimizer's generators (coin flips, ``v``, LRA's initial factors).
        sync_closure_grads: in ``"hvp"``/``"finite_diff"`` mode, all-reduce (average) gradients and HVPs
            over ranks when ``torch.distributed`` is initialised.
        check_finite: raise ``RuntimeError`` naming the parameter when a gradient holds NaN/Inf (one device
            sync per step; turn off for the last bit of speed).
    """

    #: True: one preconditioner over a group's flattened concatenation; False: one per tensor.
    flatten: ClassVar[bool] = False
    #: Per-tensor families: True sets every tensor's initial scale from the whole group's first pairs.
    group_init: bool = False

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
        init_scale: float | None = None,
        preconditioner_dtype: torch.dtype | None = None,
        seed: int = 0,
        sync_closure_grads: bool = True,
        check_finite: bool = True,
        **family_defaults: Any,
    ) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if lr is None:
            lr = 1e-3 if curvature == "whiten" else 1e-2
        self._curvature = curvature
        self._update_probability = _check_probability(update_probability)
        self.seed = seed
        self.sync_closure_grads = bool(sync_closure_grads)
        self.check_finite = bool(check_finite)
        self.group_init = type(self).group_init  # Diag / Kron take it as a keyword
        self._preconds: list[list[Preconditioner]] = []
        self._flat_momenta: dict[int, torch.Tensor] = {}  # flattened groups: momentum as one tensor
        self._step_count_psgd = 0
        self._coin_gen = torch.Generator().manual_seed(stream_seed(seed, "coins"))
        self._coins: list[float] = []  # drawn but unused coin flips (reversed: the next one is last)
        self._gens: dict[str, torch.Generator] = {}
        defaults = dict(
            lr=lr,
            preconditioner_lr=preconditioner_lr,
            momentum=momentum,
            weight_decay=weight_decay,
            grad_clip_max_norm=grad_clip_max_norm,
            init_scale=init_scale,
            preconditioner_dtype=preconditioner_dtype,
            **family_defaults,
        )
        self._validate_group(defaults, "")
        super().__init__(params, defaults)

    # ---- configuration -----------------------------------------------------------------------------------
    @property
    def curvature(self) -> str:
        return self._curvature

    @curvature.setter
    def curvature(self, value: str) -> None:
        if value not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {value!r}")
        self._curvature = value

    @property
    def update_probability(self) -> Probability:
        return self._update_probability

    @update_probability.setter
    def update_probability(self, value: Probability) -> None:
        self._update_probability = _check_probability(value)

    def _validate_group(self, g: dict[str, Any], where: str) -> None:
        _check_number(g["lr"], f"{where}lr", 0.0, math.inf)
        _check_number(g["preconditioner_lr"], f"{where}preconditioner_lr", 0.0, math.inf, lo_open=True)
        _check_number(g["momentum"], f"{where}momentum", 0.0, 1.0, hi_open=True)
        _check_number(g["weight_decay"], f"{where}weight_decay", 0.0, math.inf)
        if g["grad_clip_max_norm"] is not None:
            _check_number(g["grad_clip_max_norm"], f"{where}grad_clip_max_norm", 0.0, math.inf, lo_open=True)
        if g["init_scale"] is not None:
            _check_number(g["init_scale"], f"{where}init_scale", 0.0, math.inf, lo_open=True)
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
        """Add a group (validated; its preconditioners are built here)."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        param_group = {**param_group, "params": params}
        gi = len(self.param_groups)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise ValueError(
                    f"param_groups[{gi}]['params'][{i}] must be a torch.Tensor, got {type(p).__name__}"
                )
            if not p.is_leaf:
                raise ValueError(
                    f"param_groups[{gi}]['params'][{i}] (shape {tuple(p.shape)}) is not a leaf tensor: "
                    "optimize the tensor you created (e.g. nn.Parameter), not a result of an operation on it"
                )
            if not p.is_floating_point():
                raise ValueError(
                    f"param_groups[{gi}]['params'][{i}] must be a real floating tensor, got {p.dtype}"
                )
            if p.is_sparse:
                raise ValueError(f"param_groups[{gi}]['params'][{i}] is sparse: PSGD needs dense tensors")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group, f"param_groups[{gi}] ")
        self._preconds.append(self._build_group(group, gi))

    def _build_group(self, group: dict[str, Any], gi: int) -> list[Preconditioner]:
        params = group["params"]
        if not params:
            return []
        if self.flatten:
            devices = {p.device for p in params}
            if len(devices) > 1:
                raise ValueError(
                    f"param_groups[{gi}] spans devices {sorted(map(str, devices))}: {type(self).__name__} "
                    "preconditions the flattened group, so put each device's parameters in its own group"
                )
            dtype = group["preconditioner_dtype"] or params[0].dtype
            dim = sum(p.numel() for p in params)
            return [self._make_preconditioner((dim,), group, dtype, params[0].device, gi)]
        return [
            self._make_preconditioner(
                tuple(p.shape), group, group["preconditioner_dtype"] or p.dtype, p.device, gi
            )
            for p in params
        ]

    # ---- generators -------------------------------------------------------------------------------------
    def _gen_key(self, device: torch.device) -> str:
        return device.type if device.type == "cpu" else str(device)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = self._gen_key(device)
        gen = self._gens.get(key)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(stream_seed(self.seed, "probes"))
            self._gens[key] = gen
        return gen

    def _next_coin(self) -> float:
        coins = self.__dict__.setdefault("_coins", [])  # absent in optimizers pickled before it
        if not coins:
            coins.extend(reversed(torch.rand(_COIN_BATCH, generator=self._coin_gen).tolist()))
        return coins.pop()

    def _probes(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """``v ~ N(0, I)`` shaped like each parameter: one draw for all of them when they share a device and
        dtype (views into it; a draw per tensor costs ~10 µs each on small models)."""
        if len({(p.device, p.dtype) for p in params}) != 1:
            return [self._randn_like(p) for p in params]
        flat = torch.randn(
            sum(p.numel() for p in params),
            generator=self._generator(params[0].device),
            dtype=params[0].dtype,
            device=params[0].device,
        )
        return [c.view_as(p) for c, p in zip(flat.split([p.numel() for p in params]), params)]

    def _randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self._generator(x.device), dtype=x.dtype, device=x.device)

    # ---- the step ---------------------------------------------------------------------------------------
    def _refit_probability(self, step: int) -> float:
        p = self._update_probability
        if callable(p):
            value = p(step)
            return _check_number(value, f"update_probability({step}) (schedule output)", 0.0, 1.0)
        return float(p)

    @staticmethod
    def _loss_of(out: Any) -> torch.Tensor:
        loss = (
            out
            if isinstance(out, torch.Tensor)
            else (out[0] if isinstance(out, (tuple, list)) and out else None)
        )
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise RuntimeError(
                "closure must return the scalar loss tensor (or a tuple whose first item is the loss), "
                f"got {type(out).__name__}"
            )
        if not loss.requires_grad:
            raise RuntimeError(
                "closure returned a loss that does not require grad: it must build the graph from the "
                "parameters (not under torch.no_grad) and must not call backward() itself"
            )
        return loss if loss.ndim == 0 else loss.reshape(())  # a reshape is one more node to differentiate

    def _grad(self, loss: torch.Tensor, params: list[torch.Tensor], **kw: Any) -> list[torch.Tensor]:
        try:
            return _zeros_for_unused(torch.autograd.grad(loss, params, allow_unused=True, **kw), params)
        except RuntimeError as err:
            raise RuntimeError(
                f"{err}\nHint: with curvature={self._curvature!r} the closure must return the loss without "
                "calling backward(); the optimizer differentiates it itself."
            ) from err

    def _distributed(self) -> bool:
        return (
            self.sync_closure_grads
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )

    @staticmethod
    def _all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        return [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    @staticmethod
    def _rng_states() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )
        return torch.get_rng_state(), cuda

    @staticmethod
    def _set_rng_states(states: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state_all(states[1])

    def _check_finite(
        self, tensors: list[torch.Tensor | None], index: list[tuple[int, int]], what: str
    ) -> None:
        present = [(t, ij) for t, ij in zip(tensors, index) if t is not None]
        if not present:
            return
        norms = torch._foreach_norm([t for t, _ in present], math.inf)
        if all(bool(torch.isfinite(torch.stack(ns)).all()) for ns in _by_device(norms)):
            return
        flat_ids = {ij: k for k, ij in enumerate(index)}
        for (t, ij), n in zip(present, norms):
            if not bool(torch.isfinite(n)):
                gi, pi = ij
                raise RuntimeError(
                    f"{what} of parameter {flat_ids[ij]} (param_groups[{gi}]['params'][{pi}], shape "
                    f"{tuple(t.shape)}) contains NaN or Inf"
                )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One PSGD step. ``"whiten"``: uses ``p.grad`` (``closure``, if given, is called under
        ``enable_grad`` and may call ``backward()`` as for torch optimizers; if it leaves every ``.grad``
        empty, the loss it returns is differentiated here, which skips ``zero_grad`` and the ``.grad``
        accumulation). ``"hvp"``/``"finite_diff"``: ``closure`` is required and must return the loss
        without calling ``backward()``.
        Returns what the closure returned (``None`` without a closure).

        Step pre/post hooks (``register_step_pre_hook`` etc., also the global ones) and the profiler range
        ``Optimizer.step#<family>.step`` work as for torch optimizers, but torch's wrapper that provides
        them (~0.1 ms per call, a large share of a small model's step) runs only while a hook is
        registered or a profiler is active."""
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _optim_mod._global_optimizer_pre_hooks
            or _optim_mod._global_optimizer_post_hooks
            or torch.autograd.profiler._is_profiler_enabled
        ):
            return self._step_with_hooks(closure)
        return self._step(closure)

    step.hooked = True  # type: ignore[attr-defined]  # tells torch not to wrap it again

    @torch.no_grad()
    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        """:meth:`step` itself, without torch's hook/profiler wrapper."""
        curv = self._curvature
        if curv != "whiten" and closure is None:
            raise RuntimeError(
                f"curvature={curv!r} needs step(closure): a function that re-evaluates the model on the "
                "batch and returns the loss without calling backward()"
            )
        index = [
            (gi, pi)
            for gi, g in enumerate(self.param_groups)
            for pi, p in enumerate(g["params"])
            if p.requires_grad
        ]
        params = [self.param_groups[gi]["params"][pi] for gi, pi in index]
        p_refit = self._refit_probability(self._step_count_psgd)
        coin = self._next_coin()
        # The first step always refits when a scale is still to be set from data (init_scale=None); later a
        # tensor that had no gradient then is initialised at its first regular refit.
        pending = self._step_count_psgd == 0 and any(
            not pc.initialized for pcs in self._preconds for pc in pcs
        )
        refit = coin < p_refit or pending
        if p_refit != self.__dict__.get("_hinted_rate"):  # tell cache-keeping preconditioners (Kron)
            for pcs in self._preconds:
                for pc in pcs:
                    pc.refit_rate = p_refit
            self._hinted_rate = p_refit
        if not params:  # everything frozen: nothing to do but evaluate the closure
            if closure is not None:
                with torch.enable_grad():
                    out = closure()
            self._step_count_psgd += 1
            return out if closure is not None else None

        out: Any = None
        vs: list[torch.Tensor] | None = None
        hs: list[torch.Tensor] | None = None
        differentiated = False  # gradients computed here (not by backward()), to all-reduce under DDP
        if curv == "whiten":
            if closure is not None:
                with torch.enable_grad():
                    out = closure()
            grads: list[torch.Tensor | None] = [p.grad for p in params]
            if closure is not None and all(g is None for g in grads):
                # the closure returned the loss without backward(): differentiate it here, as in "hvp"
                # mode (no .grad accumulation, nothing to zero)
                with torch.enable_grad():
                    grads = self._grad(self._loss_of(out), params)
                differentiated = True
            if any(g is not None and g.is_sparse for g in grads):
                raise RuntimeError("sparse gradients are not supported by PSGD")
        elif curv == "hvp":
            with torch.enable_grad():
                out = closure()
                loss = self._loss_of(out)
                if refit:
                    g_graph = self._grad(loss, params, create_graph=True)
                    vs = self._probes(params)
                    live = [k for k, g in enumerate(g_graph) if g.requires_grad]
                    if live:
                        hs = _zeros_for_unused(
                            torch.autograd.grad(
                                [g_graph[k] for k in live], params, [vs[k] for k in live], allow_unused=True
                            ),
                            params,
                        )
                    else:  # gradient independent of θ (linear loss): H = 0
                        hs = [torch.zeros_like(p) for p in params]
                    grads = [g.detach() for g in g_graph]
                    del g_graph
                else:
                    grads = self._grad(loss, params)
        else:  # finite_diff
            rng = self._rng_states()
            with torch.enable_grad():
                out = closure()
                grads = self._grad(self._loss_of(out), params)
            if refit:
                eps = max(torch.finfo(p.dtype).eps for p in params)
                sq = sum(
                    float(torch.stack(ns).double().square().sum())
                    for ns in _by_device(torch._foreach_norm(params))
                )
                rms = math.sqrt(sq / sum(p.numel() for p in params))  # one sync per device
                delta = math.sqrt(eps) * (1.0 + rms)
                saved = [p.detach().clone() for p in params]
                torch._foreach_add_(params, self._probes(params), alpha=delta)
                vs = [(p - s) / delta for p, s in zip(params, saved)]  # the perturbation actually applied
                self._set_rng_states(rng)  # same dropout masks etc. as the first evaluation
                try:
                    with torch.enable_grad():
                        g_plus = self._grad(self._loss_of(closure()), params)
                finally:
                    for p, s in zip(params, saved):
                        p.copy_(s)
                hs = [(gp - g) / delta for gp, g in zip(g_plus, grads)]
        if (curv != "whiten" or differentiated) and self._distributed():
            grads = self._all_reduce_mean(grads)
            if hs is not None:
                hs = self._all_reduce_mean(hs)
        if self.check_finite:
            self._check_finite(grads, index, "gradient")
            if hs is not None:
                self._check_finite(hs, index, "Hessian-vector product")

        by_param = {ij: k for k, ij in enumerate(index)}
        for gi, group in enumerate(self.param_groups):
            # Per group, lists over ALL its tensors (frozen ones: None), so flattened layouts stay fixed.
            ks = [by_param.get((gi, pi)) for pi in range(len(group["params"]))]
            if all(k is None for k in ks):
                continue
            gs = [None if k is None else grads[k] for k in ks]
            if refit:
                self._refit(gi, group["params"], gs, _pick(vs, ks), _pick(hs, ks))
            self._apply(group, gi, gs)
        self._step_count_psgd += 1
        return out

    def _step_with_hooks(self, closure: Callable[[], Any] | None = None) -> Any:
        return _hooked_step(self, closure)

    def _refit(
        self,
        gi: int,
        ps: list[torch.Tensor],
        gs: list[torch.Tensor | None],
        vs: list[torch.Tensor | None] | None,
        hs: list[torch.Tensor | None] | None,
    ) -> None:
        """One preconditioner fit per tensor (or one on the flattened group) from this step's pairs."""
        pcs = self._preconds[gi]
        if self.flatten:

            def flat(xs: list[torch.Tensor | None]) -> torch.Tensor:
                base = xs[0]._base if xs[0] is not None else None
                if base is not None and base.numel() == sum(p.numel() for p in ps) and all(
                    x is not None and x._base is base for x in xs
                ):  # the probes' single draw split into views (see _probes): already this layout
                    return base
                return torch.cat(
                    [(x if x is not None else torch.zeros_like(p)).reshape(-1) for p, x in zip(ps, xs)]
                )

            if hs is None:  # whitening: (v, g) pairs
                h = flat(gs)
                v = self._randn_like(h)
            else:
                v, h = flat(vs), flat(hs)
            pcs[0]._update(v.unsqueeze(0), h.unsqueeze(0))
            return
        pairs = []
        for i, pc in enumerate(pcs):
            if gs[i] is None:
                continue
            if hs is None:
                h = gs[i]
                v = self._randn_like(h)
            else:
                v, h = vs[i], hs[i]
            pairs.append((pc, v, h))
        if self.group_init:
            fresh = [(pc, v, h) for pc, v, h in pairs if not pc.initialized]
            if fresh:
                _init_group_scale(fresh)
        for pc, v, h in pairs:
            pc._update(v.unsqueeze(0), h.unsqueeze(0))

    def _flat_momentum(
        self, gi: int, params: list[torch.Tensor], gs: list[torch.Tensor], beta: float
    ) -> torch.Tensor | None:
        """Momentum of a flattened group (every tensor has a gradient) kept as one flat tensor, updated by one
        op instead of one per tensor plus a concatenation. The per-tensor ``momentum_buffer`` states are
        views of it, so ``state_dict()`` holds the usual buffers; after ``load_state_dict`` (or a copy) they
        are gathered into a new flat tensor once. ``None`` (use per-tensor buffers) when the tensors differ
        in dtype or device, or only some of them have a buffer yet."""
        if len({(p.dtype, p.device) for p in params}) != 1:
            return None
        states = [self.state[p] for p in params]
        bufs = [st.get("momentum_buffer") for st in states]
        flats = self.__dict__.setdefault("_flat_momenta", {})  # absent in optimizers pickled before it
        flat = flats.get(gi)
        if flat is not None and all(b is not None and b._base is flat for b in bufs):
            torch._foreach_lerp_(bufs, gs, 1.0 - beta)  # β·m + (1 − β)·g into the views: one fused op
            return flat
        if all(b is None for b in bufs):  # first step
            flat = (1.0 - beta) * torch.cat([x.reshape(-1) for x in gs])
        elif any(b is None for b in bufs):
            return None
        else:  # buffers from a checkpoint or a copy: gather them into one tensor, then relink
            flat = torch.cat([b.reshape(-1) for b in bufs])
            flat.lerp_(torch.cat([x.reshape(-1) for x in gs]), 1.0 - beta)  # β·m + (1 − β)·g, one kernel
        flats[gi] = flat
        for p, st, view in zip(params, states, flat.split([p.numel() for p in params])):
            st["momentum_buffer"] = view.view_as(p)
        return flat

    def _apply(self, group: dict[str, Any], gi: int, gs: list[torch.Tensor | None]) -> None:
        """Momentum, preconditioning, clipping, weight decay and the update for one group."""
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        pcs = self._preconds[gi]
        live = [i for i, g in enumerate(gs) if g is not None]  # tensors without a gradient are not updated
        ps = [group["params"][i] for i in live]
        ms = [gs[i] for i in live]
        flat_m = None
        if beta > 0 and self.flatten and len(live) == len(group["params"]):
            flat_m = self._flat_momentum(gi, group["params"], ms, beta)
        if beta > 0 and flat_m is None:
            bufs, old, new = [], [], []
            for p, g in zip(ps, ms):
                st = self.state[p]
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = (1.0 - beta) * g
                else:
                    old.append(buf)
                    new.append(g)
                bufs.append(buf)
            if old:  # β·m + (1 − β)·g: one fused op for all tensors
                torch._foreach_lerp_(old, new, 1.0 - beta)
            ms = bufs
        # Gradients have their parameters' shapes (checked when the group was built), so the hot path calls
        # the preconditioners without re-validating every step.
        if self.flatten:
            allp = group["params"]
            if flat_m is not None:
                x = flat_m
            elif len(live) == len(allp):
                x = torch.cat([m.reshape(-1) for m in ms])
            else:
                full = dict(zip(live, ms))
                x = torch.cat([(full[i] if i in full else torch.zeros_like(p)).reshape(-1)
                               for i, p in enumerate(allp)])
            chunks = pcs[0]._precondition_unchecked(x).split([p.numel() for p in allp])
            pre = [chunks[i].view_as(allp[i]) for i in live]
        else:
            pre = [pcs[i]._precondition_unchecked(m) for i, m in zip(live, ms)]
        clip = group["grad_clip_max_norm"]
        if clip is not None:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(pre)))
            scale = torch.clamp(clip / (norm + torch.finfo(norm.dtype).tiny), max=1.0)
            pre = torch._foreach_mul(pre, scale)
        if wd != 0:
            torch._foreach_mul_(ps, 1.0 - lr * wd)
        torch._foreach_add_(ps, pre, alpha=-lr)

    # ---- checkpoints ------------------------------------------------------------------------------------
    _PICKLED = (
        "_curvature",
        "_update_probability",
        "seed",
        "sync_closure_grads",
        "check_finite",
        "group_init",
        "_preconds",
        "_step_count_psgd",
        "_coin_gen",
        "_coins",
        "_gens",
        "_flat_momenta",
    )

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups; keep PSGD's own fields too.
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._PICKLED if k in self.__dict__})
        return state

    @property
    def preconditioners(self) -> list[list[Preconditioner]]:
        """Per param group, the preconditioners (one for flattened families, else one per tensor)."""
        return self._preconds

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (momentum buffers, param groups) plus a ``"psgd"`` entry: step count,
        generator states and every preconditioner."""
        sd = super().state_dict()
        sd["psgd"] = {
            "step": self._step_count_psgd,
            "coin_generator": self._coin_gen.get_state(),
            "coins": list(self.__dict__.get("_coins", [])),
            "generators": {k: g.get_state() for k, g in self._gens.items()},
            "preconditioners": [[pc.state_dict() for pc in pcs] for pcs in self._preconds],
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; continuing reproduces the uninterrupted run bit for bit."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("psgd", None)
        if extra is None:
            raise ValueError("state_dict has no 'psgd' entry: it was not saved by a genlib PSGD optimizer")
        saved = extra["preconditioners"]
        if [len(s) for s in saved] != [len(p) for p in self._preconds]:
            raise ValueError(
                f"state_dict holds preconditioners per group {[len(s) for s in saved]}, this optimizer has "
                f"{[len(p) for p in self._preconds]}: build it on the same parameters and family"
            )
        super().load_state_dict(state_dict)
        for pcs, states in zip(self._preconds, saved):
            for pc, st in zip(pcs, states):
                pc.load_state_dict(st)
        self._step_count_psgd = int(extra["step"])
        self._coin_gen.set_state(extra["coin_generator"])
        self._coins = list(extra.get("coins", []))  # checkpoints from before the coin batches: none pending
        for key, st in extra["generators"].items():
            device = torch.device(key)
            if device.type == "cuda" and not torch.cuda.is_available():
                continue  # a CUDA checkpoint resumed on CPU: the CPU generator keeps its own stream
            self._generator(device).set_state(st)


# torch's own wrapper (profiler range "Optimizer.step#<family>.step", pre/post step hooks) around the step.
_hooked_step = torch.optim.Optimizer.profile_hook_step(PSGD._step)


class Kron(PSGD):
    """PSGD with a Kronecker-factored preconditioner per tensor (:class:`KronPreconditioner`).

    Args (besides :class:`PSGD`'s):
        max_size: largest tensor dim that gets a triangular factor (bigger ones get a diagonal factor).
        max_skew: a dim larger than ``max_skew`` × (product of the other dims) gets a diagonal factor; with
            the default 10, vectors longer than 10 (biases) are preconditioned diagonally. ``inf``: never.
        group_init: with ``init_scale=None``, start every tensor's ``Q`` at one scale from the whole group's
            first pairs (as :class:`Diag` does) instead of each tensor's own (default, as Li's reference).
    """

    def __init__(
        self,
        params: Params,
        lr: float | None = None,
        *,
        max_size: float = 2048,
        max_skew: float = 10.0,
        group_init: bool = False,
        **kwargs: Unpack[PSGDOptions],
    ) -> None:
        super().__init__(params, lr, max_size=max_size, max_skew=max_skew, **kwargs)
        self.group_init = bool(group_init)

    def _validate_family(self, g, where):
        _check_number(g["max_size"], f"{where}max_size", 0.0, math.inf)
        _check_number(g["max_skew"], f"{where}max_skew", 0.0, math.inf)

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        return KronPreconditioner(
            shape,
            max_size=group["max_size"],
            max_skew=group["max_skew"],
            lr=group["preconditioner_lr"],
            init_scale=group["init_scale"],
            dtype=dtype,
            device=device,
        )


class Diag(PSGD):
    """PSGD with a diagonal (Jacobi) preconditioner per tensor (:class:`DiagPreconditioner`).

    Each tensor's diagonal is fitted on its own (its own step normalisation), but with ``init_scale=None``
    all tensors of a group start from one scale ``(‖v‖/‖h‖)^(1/2)`` over the group's first pairs, as the
    flattened diagonal (``LRA(rank=0)``, psgd_torch's rank-0 LRA) does. Per-tensor starting scales fit each
    tensor's curvature at step 0, which shrinks fast early in training (e.g. a softmax layer's as its
    predictions sharpen); with sparse refits (``update_probability`` 0.1) the fit then lags for many steps
    and the run ends at a clearly higher loss (benchmarks/README.md, "PSGD"). ``group_init=False`` restores
    per-tensor starting scales.

    ``elementwise_step=True`` gives every diagonal entry its own step size (dissertation appendix A.1.4;
    :class:`DiagPreconditioner`); a param group may set it too.

    The per-tensor step normalisation (Li's Jacobi PSGD) lets every tensor's largest entry move by the
    full ``preconditioner_lr``; ``LRA(rank=0)`` is the same diagonal preconditioner with one normaliser
    for the whole group. Neither is better everywhere (benchmarks/README.md): per-tensor ended clearly
    lower on the MLP with a refit every step (0.227 vs 0.245), one normaliser on the tiny MLP with
    refits on 10 % of steps (by 0.006-0.011); on the MLP and CNN at 10 % they tie.
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

    def _validate_family(self, g, where):
        _check_elementwise_step(g, where)

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        return DiagPreconditioner(
            shape, lr=group["preconditioner_lr"], init_scale=group["init_scale"], dtype=dtype, device=device,
            elementwise_step=group["elementwise_step"],
        )


class LRA(PSGD):
    """PSGD with a low-rank-approximation preconditioner ``(I + UVᵀ)·diag(d)`` over each param group's
    flattened concatenation (:class:`LRAPreconditioner`).

    Args (besides :class:`PSGD`'s):
        rank: rank of ``UVᵀ`` (>= 0; 0 is diagonal); capped at ``dim − 1`` for groups with few entries.
        elementwise_step: one step size per entry of the diagonal factor (dissertation appendix A.1.4)
            instead of one for the whole diagonal; see :class:`LRAPreconditioner`.
    """

    flatten = True

    def __init__(
        self,
        params: Params,
        lr: float | None = None,
        *,
        rank: int = 10,
        elementwise_step: bool = False,
        **kwargs: Unpack[PSGDOptions],
    ) -> None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        super().__init__(params, lr, rank=rank, elementwise_step=elementwise_step, **kwargs)

    def _validate_family(self, g, where):
        r = g["rank"]
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"{where}rank must be an int >= 0, got {r!r}")
        _check_elementwise_step(g, where)

    def _make_preconditioner(self, shape, group, dtype, device, gi):
        dim = shape[0]
        return LRAPreconditioner(
            dim,
            min(group["rank"], dim - 1),
            seed=stream_seed(self.seed, f"lra_init/{gi}"),
            lr=group["preconditioner_lr"],
            init_scale=group["init_scale"],
            dtype=dtype,
            device=device,
            elementwise_step=group["elementwise_step"],
        )


def _check_elementwise_step(g: dict[str, Any], where: str) -> None:
    if not isinstance(g["elementwise_step"], bool):
        raise ValueError(f"{where}elementwise_step must be True or False, got {g['elementwise_step']!r}")


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
    (:class:`DensePreconditioner`); for small models (memory ``dim²``).

    Args (besides :class:`PSGD`'s):
        triangular: upper-triangular ``Q``, or a full invertible ``Q`` (default; fits faster).
    """

    flatten = True

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
