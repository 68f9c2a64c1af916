"""PSGD-preconditioned Langevin: fit ``P = Q^T Q`` to the energy's curvature, then sample with it.

Step (``s`` step size, ``T`` temperature)::

    z' = z + s * P grad log p(z) + sqrt(2 T s) * Q^T eps,    eps ~ N(0, I)

so the noise covariance is ``2 T s Q^T Q = 2 T s P``. ``P`` is fitted by PSGD (Li 2015/2018; Pooladzandi &
Li) from curvature pairs ``(v, H v)``: ``v ~ N(0, I)`` and ``H v`` the Hessian-vector product of the energy
``-log p`` at the current chain states (``torch.autograd`` double backward), one pair per chain. On a Gaussian
target PSGD's fixed point is ``P = H^-1``, the covariance (in general ``|H|^-1``, positive definite even
where the energy is not convex), and the step is then isotropic in whitened
coordinates: the condition number no longer limits the step size, so far fewer steps reach equilibrium.

What is preserved, and when it is exact:

- With a **fixed** ``P`` (position-independent), the continuous-time dynamics
  ``dz = P grad log p dt + sqrt(2 T) Q^T dW`` keep ``p^(1/T)`` stationary (the Fokker-Planck flux vanishes for
  any constant symmetric positive-definite ``P``); the discretisation bias is O(s) and vanishes as s -> 0;
  with ``mala=True`` the Metropolis correction (proposal ``N(z + s P grad, 2 T s P)``) makes it exact at
  any s.
- **Refitting** ``P`` while sampling makes the chain adaptive: ``P`` depends on the chain's past, so the
  target is no longer exactly invariant. Hence :class:`PreconditionedLangevin` fits ``P`` during a warm-up
  phase only, then freezes it for the ``n_steps`` sampling steps, where MALA may be switched on.

The preconditioner objects and their fitting rule are :mod:`genlib.optim.preconditioners`' (shared with the
PSGD optimizers); this module only supplies them curvature pairs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from genlib.optim.preconditioners import DensePreconditioner, DiagPreconditioner, LRAPreconditioner
from genlib.sampling.diagnostics import LangevinDiagnostics
from genlib.sampling.langevin import (
    Callback,
    LogProbFn,
    _check_start,
    _check_z0,
    _randn_like,
    _state,
    _step,
    _Trace,
)
from genlib.utils import check_int, check_positive, resolve_validate_args

__all__ = ["PreconditionedLangevin", "energy_hvp"]

_FAMILIES = ("dense", "diag", "lra")


def energy_hvp(log_prob_fn: LogProbFn, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-chain Hessian-vector products of the energy ``-log p`` at ``z``: ``(H_i v_i)_i``, ``z``'s shape.

    Chains are independent, so the Hessian of ``sum_i log p(z_i)`` is block-diagonal and one double backward
    gives every chain's product at once.
    """
    if v.shape != z.shape:
        raise ValueError(f"v must have z's shape {tuple(z.shape)}, got {tuple(v.shape)}")
    if torch.compiler.is_compiling():  # autograd.grad and requires_grad_ break graphs; torch.func traces
        def grad_log_prob(x: torch.Tensor) -> torch.Tensor:
            return torch.func.grad(lambda y: log_prob_fn(y).sum())(x)

        with torch.enable_grad():
            _, hv = torch.func.jvp(grad_log_prob, (z.detach(),), (v,))
        return -hv.detach()
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(log_prob_fn(z).sum(), z, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:  # log p at most linear in z: zero curvature
            return torch.zeros_like(z)
        (hv,) = torch.autograd.grad(g, z, grad_outputs=v, allow_unused=True)
    return torch.zeros_like(z) if hv is None else -hv.detach()


class PreconditionedLangevin:
    """Langevin / MALA preconditioned by a PSGD-fitted ``P = Q^T Q``: ``z, diag = sampler.run(log_prob, z0)``.

    A run: (1) ``fit_steps`` preconditioner updates at ``z0`` (no moves), so the first moves already use a
    sensible ``P``; (2) ``warmup_steps`` unadjusted steps, each after ``updates_per_step`` updates at the
    current states (adaptive); (3) ``n_steps`` steps with ``P`` frozen, Metropolis-adjusted if ``mala``.
    The fitted preconditioner is kept in :attr:`preconditioner` and reused (and refined) by later runs, e.g.
    the repeated prior sampling of EBM training; :meth:`reset` forgets it. Pass ``warmup_steps=0,
    fit_steps=0`` to sample with a previously fitted ``P`` exactly frozen.

    Args:
        preconditioner: ``"dense"`` (upper-triangular ``Q``, best up to a few hundred dims), ``"lra"``
            (low-rank plus diagonal, ``rank`` from ``preconditioner_kwargs``, default 4), ``"diag"``, or a
            ready object from :mod:`genlib.optim.preconditioners` (built for the chains' event shape).
        n_steps: sampling steps with ``P`` frozen.
        step_size: ``s``; in whitened units, so values around 0.1-1 suit any conditioning.
        temperature: ``T``; the chains target ``p^(1/T)``.
        mala: Metropolis-adjust the frozen-``P`` steps (exact invariance of ``p^(1/T)``).
        warmup_steps: adaptive steps (refitting ``P``) before the frozen phase.
        fit_steps: preconditioner updates at ``z0`` before the first move.
        updates_per_step: preconditioner updates per warm-up step (one fresh ``v`` per chain each).
        preconditioner_lr: PSGD's fitting step ``μ``. Higher than an optimizer's usual 0.1 because every
            update averages one pair per chain (low noise) and, with PSGD's normalised step, the flat
            directions of an ill-conditioned energy are fitted at a rate of roughly ``μ`` per update.
        preconditioner_kwargs: other constructor arguments of the preconditioner (e.g. ``rank`` for LRA).
        validate_args: check the chains' values as :func:`~genlib.sampling.langevin` does: finite ``z0`` and
            log-prob / gradient there, finite unadjusted steps (a sync per step), and at the end of each run
            a ``RuntimeError`` (naming the step and step size) if a chain's norm exceeded ``max_norm`` or
            became non-finite. ``None`` (default) follows :func:`genlib.set_validate_args`; ``False`` skips
            them all.
        max_norm: the bound on each chain's Euclidean norm used by ``validate_args``.
    """

    def __init__(
        self,
        preconditioner: str | Any = "dense",
        n_steps: int = 60,
        step_size: float = 0.5,
        temperature: float = 1.0,
        mala: bool = False,
        warmup_steps: int = 20,
        fit_steps: int = 20,
        updates_per_step: int = 1,
        preconditioner_lr: float = 0.5,
        preconditioner_kwargs: dict[str, Any] | None = None,
        validate_args: bool | None = None,
        max_norm: float = 1e6,
    ):
        if isinstance(preconditioner, str):
            if preconditioner not in _FAMILIES:
                raise ValueError(
                    f"preconditioner must be one of {_FAMILIES} or an object, got {preconditioner!r}"
                )
            self.family, self.preconditioner = preconditioner, None
        else:
            for method in ("update", "precondition", "apply_qt"):
                if not callable(getattr(preconditioner, method, None)):
                    raise ValueError(
                        f"preconditioner must be a name in {_FAMILIES} or have update/precondition/apply_qt "
                        f"methods (genlib.optim.preconditioners), got {type(preconditioner).__name__}"
                    )
            self.family, self.preconditioner = None, preconditioner
        self.n_steps = check_int(n_steps, "n_steps", 0)
        self.step_size = check_positive(step_size, "step_size")
        self.temperature = check_positive(temperature, "temperature")
        self.mala = bool(mala)
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", 0)
        self.fit_steps = check_int(fit_steps, "fit_steps", 0)
        self.updates_per_step = check_int(updates_per_step, "updates_per_step", 1)
        self.preconditioner_lr = check_positive(preconditioner_lr, "preconditioner_lr")
        self.preconditioner_kwargs = dict(preconditioner_kwargs or {})
        resolve_validate_args(validate_args, "validate_args")  # reject a non-bool early
        self.validate_args = validate_args
        self.max_norm = check_positive(max_norm, "max_norm")

    def reset(self) -> None:
        """Forget a preconditioner built from a family name (the next run fits a fresh one)."""
        if self.family is not None:
            self.preconditioner = None

    def _build(self, z: torch.Tensor) -> Any:
        event = tuple(z.shape[1:])
        dim = math.prod(event)
        kw = {"device": z.device, "dtype": z.dtype, "lr": self.preconditioner_lr}
        kw.update(self.preconditioner_kwargs)
        if self.family == "diag":
            return DiagPreconditioner(event, **kw)
        if len(event) != 1:
            raise ValueError(
                f"the {self.family!r} preconditioner needs flat chains (B, dim), got {tuple(z.shape)}"
            )
        if self.family == "lra":
            return LRAPreconditioner(dim, kw.pop("rank", 4), **kw)
        # Triangular Q by default: the sampler's tests and benchmarks/langevin.py were measured with it
        # (both forms fit in O(n d^2) for n chains >> d).
        kw.setdefault("triangular", True)
        return DensePreconditioner(dim, **kw)

    def fit(
        self,
        log_prob_fn: LogProbFn,
        z: torch.Tensor,
        n_updates: int = 1,
        generator: torch.Generator | None = None,
    ) -> Any:
        """``n_updates`` PSGD updates of ``P`` from pairs ``(v, H v)`` at the states ``z`` ``(B, *event)``."""
        validate_args = resolve_validate_args(self.validate_args, "validate_args")
        z = _check_z0(z, validate_args)
        check_int(n_updates, "n_updates", 0)
        if self.preconditioner is None:
            self.preconditioner = self._build(z)
        pc = self.preconditioner
        for _ in range(n_updates):
            v = _randn_like(z, generator)
            h = energy_hvp(log_prob_fn, z, v)
            if validate_args:
                pc.update(v, h)
            else:  # no finiteness check: a host sync, and a graph break under torch.compile
                pc.fit(v, h)
        return pc

    def run(
        self,
        log_prob_fn: LogProbFn,
        z0: torch.Tensor,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> tuple[torch.Tensor, LangevinDiagnostics]:
        """Fit, warm up, then sample from ``z0`` ``(B, *event)``; returns ``(z, diagnostics)``.

        ``diagnostics.n_warmup`` marks the adaptive steps; ``acceptance`` covers the frozen steps only.
        ``callback(t, z_t)`` is called after every step, warm-up steps included (``t`` counts both).
        """
        validate_args = resolve_validate_args(self.validate_args, "validate_args")
        z0 = _check_z0(z0, validate_args)
        precond = self.fit(log_prob_fn, z0, self.fit_steps, generator)
        s, temp = self.step_size, self.temperature
        st = _state(log_prob_fn, z0, precond)
        if validate_args:
            _check_start(st)
        trace = _Trace(z0, self.max_norm if validate_args else None)
        trace.record(st)
        for t in range(self.warmup_steps):
            self.fit(log_prob_fn, st.z, self.updates_per_step, generator)
            st.drift = precond.precondition(st.grad)  # P changed
            st, _ = _step(log_prob_fn, st, precond, s, temp, False, generator, t, validate_args)
            trace.record(st)
            if callback is not None:
                callback(t + 1, st.z)
        st.drift = precond.precondition(st.grad)
        for t in range(self.warmup_steps, self.warmup_steps + self.n_steps):
            st, acc = _step(log_prob_fn, st, precond, s, temp, self.mala, generator, t, validate_args)
            trace.record(st, acc)
            if callback is not None:
                callback(t + 1, st.z)
        trace.check_blowup(s)
        return st.z, trace.finish(s, temp, self.mala, n_warmup=self.warmup_steps)

    def __repr__(self) -> str:
        name = self.family or type(self.preconditioner).__name__
        return (
            f"PreconditionedLangevin({name!r}, n_steps={self.n_steps}, step_size={self.step_size}, "
            f"temperature={self.temperature}, mala={self.mala}, warmup_steps={self.warmup_steps}, "
            f"fit_steps={self.fit_steps})"
        )
