"""Langevin samplers for unnormalised densities: unadjusted (ULA) and Metropolis-adjusted (MALA).

One step, for a target ``p(z)`` at temperature ``T`` (the chain targets ``p(z)^(1/T)``) and step size ``s``::

    z' = z + s * P grad log p(z) + sqrt(2 T s) * Q^T eps,    eps ~ N(0, I),   P = Q^T Q

``P = I`` here; :class:`~genlib.sampling.PreconditionedLangevin` supplies a fitted ``P``. Without adjustment
the chain is biased by O(s) (the bias vanishes as s -> 0); with ``mala=True`` every chain accepts ``z'`` with
probability ``min(1, p(z')^(1/T) q(z | z') / (p(z)^(1/T) q(z' | z)))`` where ``q(. | z) = N(z + s P grad,
2 T s P)``, which makes the target exactly invariant for any step size (for a fixed ``P``).

Each step costs one evaluation of ``log_prob_fn`` and its gradient (the proposal's are reused when accepted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from genlib.sampling.diagnostics import LangevinDiagnostics
from genlib.utils import check_int, check_positive, check_tensor, resolve_validate_args

__all__ = ["Callback", "LogProbFn", "PreconditionerLike", "langevin", "LangevinSampler", "log_prob_and_grad"]

LogProbFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of chain states ``(B, *event)`` to their (unnormalised) log densities ``(B,)``."""
Callback = Callable[[int, torch.Tensor], None]
"""``callback(t, z_t)``: called after step ``t`` (1-based) with the chain states."""


class PreconditionerLike(Protocol):
    """What the step needs from a preconditioner ``P = Q^T Q`` (``genlib.optim.preconditioners`` objects)."""

    def precondition(self, g: torch.Tensor) -> torch.Tensor: ...  # P g, batched over leading dims

    def apply_qt(self, x: torch.Tensor) -> torch.Tensor: ...  # Q^T x, batched over leading dims


class _Identity:
    """P = Q = I: plain Langevin."""

    def precondition(self, g: torch.Tensor) -> torch.Tensor:
        return g

    def apply_qt(self, x: torch.Tensor) -> torch.Tensor:
        return x



def _per_chain(x: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dim: (B, ...) -> (B,)."""
    return x.flatten(1).sum(1)


def _randn_like(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device.type != z.device.type:
        return torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    return torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)


def _rand(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device.type != like.device.type:
        return torch.rand(n, generator=generator, dtype=like.dtype).to(like.device)
    return torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)


def _checked_log_prob(log_prob_fn: LogProbFn, z: torch.Tensor) -> torch.Tensor:
    """``log_prob_fn(z)``, which must be one value per chain: shape ``(z.shape[0],)``."""
    lp = log_prob_fn(z)
    if not isinstance(lp, torch.Tensor) or lp.shape != (z.shape[0],):
        got = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
        raise ValueError(
            f"log_prob_fn must map z of shape {tuple(z.shape)} to shape ({z.shape[0]},), got {got}"
        )
    return lp


def log_prob_and_grad(log_prob_fn: LogProbFn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(z), grad_z log p(z))`` for a batch of chains, both detached.

    Only ``z``'s gradient is taken (``torch.autograd.grad``), so parameters inside ``log_prob_fn`` (an EBM's
    weights) never accumulate ``.grad`` from sampling. Inside ``torch.compile`` the gradient comes from
    ``torch.func.grad`` instead (the same value), which dynamo traces without a graph break.
    """
    if torch.compiler.is_compiling():
        return _log_prob_and_grad_func(log_prob_fn, z)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = _checked_log_prob(log_prob_fn, z)
        (grad,) = torch.autograd.grad(lp.sum(), z, allow_unused=True)
    if grad is None:  # log p does not depend on z: a flat target
        grad = torch.zeros_like(z)
    return lp.detach(), grad.detach()


def _log_prob_and_grad_func(log_prob_fn: LogProbFn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`log_prob_and_grad` via ``torch.func``: ``autograd.grad`` and ``requires_grad_`` break graphs."""

    def total(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lp = _checked_log_prob(log_prob_fn, z)
        return lp.sum(), lp

    with torch.enable_grad():
        grad, lp = torch.func.grad(total, has_aux=True)(z.detach())
    return lp.detach(), grad.detach()


@dataclass
class _State:
    z: torch.Tensor
    log_prob: torch.Tensor
    grad: torch.Tensor
    drift: torch.Tensor  # P grad


def _state(log_prob_fn: LogProbFn, z: torch.Tensor, precond: PreconditionerLike) -> _State:
    lp, g = log_prob_and_grad(log_prob_fn, z)
    return _State(z.detach(), lp, g, precond.precondition(g))


def _step(
    log_prob_fn: LogProbFn,
    cur: _State,
    precond: PreconditionerLike,
    step_size: float,
    temperature: float,
    mala: bool,
    generator: torch.Generator | None,
    t: int,
    validate_args: bool,
) -> tuple[_State, torch.Tensor | None]:
    """One (optionally Metropolis-adjusted) step; returns the new state and the per-chain acceptance prob.

    With ``validate_args``, an unadjusted step checks that the new log-prob and gradient are finite (a host
    sync per step); MALA rejects non-finite proposals instead, so it needs no check.
    """
    s, temp = step_size, temperature
    noise = precond.apply_qt(_randn_like(cur.z, generator))
    z_new = cur.z + s * cur.drift + math.sqrt(2 * temp * s) * noise
    lp_new, g_new = log_prob_and_grad(log_prob_fn, z_new)
    new = _State(z_new, lp_new, g_new, precond.precondition(g_new))
    if not mala:
        if validate_args and not (bool(torch.isfinite(lp_new).all()) and bool(torch.isfinite(g_new).all())):
            raise RuntimeError(
                f"Langevin diverged at step {t + 1}: non-finite log-prob or gradient; reduce step_size "
                f"(now {s:g}) or use mala=True"
            )
        return new, None
    # log q(z|z') - log q(z'|z) for q(.|z) = N(z + s P g, 2 T s P). Expanding both quadratic forms, the
    # P^-1 terms cancel, leaving -(1/2T) <dz, g + g'> - (s/4T) (g'^T P g' - g^T P g): only P g is needed.
    dz = z_new - cur.z
    log_q_ratio = -_per_chain(dz * (cur.grad + new.grad)) / (2 * temp) - (s / (4 * temp)) * (
        _per_chain(new.grad * new.drift) - _per_chain(cur.grad * cur.drift)
    )
    log_alpha = (lp_new - cur.log_prob) / temp + log_q_ratio
    finite = torch.isfinite(log_alpha) & torch.isfinite(new.grad).flatten(1).all(1)
    log_alpha = torch.where(finite, log_alpha, torch.full_like(log_alpha, -math.inf))  # reject blow-ups
    accept = torch.log(_rand(log_alpha.shape[0], log_alpha, generator)) < log_alpha
    keep = accept.view(-1, *([1] * (cur.z.dim() - 1)))
    out = _State(
        torch.where(keep, new.z, cur.z),
        torch.where(accept, new.log_prob, cur.log_prob),
        torch.where(keep, new.grad, cur.grad),
        torch.where(keep, new.drift, cur.drift),
    )
    return out, log_alpha.clamp(max=0.0).exp()


class _Trace:
    """Accumulates per-step means on the device; one transfer at the end.

    With ``max_norm`` it also keeps, on the device, the first step at which some chain's norm exceeded it or
    went non-finite, so that :meth:`check_blowup` costs one sync per run rather than one per step.
    """

    def __init__(self, z0: torch.Tensor, max_norm: float | None = None):
        self.z0 = z0
        self.energy: list[torch.Tensor] = []
        self.grad_norm: list[torch.Tensor] = []
        self.displacement: list[torch.Tensor] = []
        self.acceptance: list[torch.Tensor] = []
        self.max_norm = max_norm
        self.first_blowup = torch.full((), -1, dtype=torch.long, device=z0.device)

    def record(self, st: _State, accept_prob: torch.Tensor | None = None) -> None:
        self.energy.append(-st.log_prob.mean())
        self.grad_norm.append(st.grad.flatten(1).norm(dim=1).mean())
        self.displacement.append((st.z - self.z0).flatten(1).norm(dim=1).mean())
        if accept_prob is not None:
            self.acceptance.append(accept_prob.mean())
        if self.max_norm is not None:
            # `not <=` also flags NaN; torch.where keeps the first offending step without a host sync.
            out = ~(st.z.flatten(1).norm(dim=1) <= self.max_norm).all()
            step = len(self.energy) - 1
            self.first_blowup = torch.where(out & (self.first_blowup < 0), step, self.first_blowup)

    def check_blowup(self, step_size: float) -> None:
        """``RuntimeError`` if a chain left ``|z| <= max_norm`` (or became non-finite) during the run."""
        if self.max_norm is None:
            return
        t = int(self.first_blowup)
        if t >= 0:
            where = "in z0" if t == 0 else f"at step {t} of {len(self.energy) - 1}"
            raise RuntimeError(
                f"Langevin chains blew up {where}: a chain's norm exceeded max_norm={self.max_norm:g} or "
                f"became non-finite with step_size={step_size:g}; use a smaller step_size (or mala=True), "
                f"or raise max_norm if states this large are expected (validate_args=False skips the check)"
            )

    def finish(
        self, step_size: float, temperature: float, mala: bool, n_warmup: int = 0
    ) -> LangevinDiagnostics:
        def stack(xs: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(xs).detach().float().cpu() if xs else torch.zeros(0)

        return LangevinDiagnostics(
            energy=stack(self.energy),
            grad_norm=stack(self.grad_norm),
            displacement=stack(self.displacement),
            acceptance=stack(self.acceptance) if mala else None,
            step_size=step_size,
            temperature=temperature,
            n_warmup=n_warmup,
        )


def _check_z0(z0: torch.Tensor, validate_args: bool) -> torch.Tensor:
    check_tensor(z0, "z0", floating=True, finite=validate_args)
    if z0.ndim < 2 or z0.shape[0] == 0:
        raise ValueError(f"z0 must have shape (n_chains, *event) with n_chains >= 1, got {tuple(z0.shape)}")
    return z0.detach()


def _check_start(st: _State) -> None:
    """``ValueError`` unless the log-prob and its gradient at the chains' initial states are finite."""
    if not (bool(torch.isfinite(st.log_prob).all()) and bool(torch.isfinite(st.grad).all())):
        raise ValueError("log_prob_fn is not finite at z0 (log-prob or its gradient is NaN/Inf)")


def langevin(
    log_prob_fn: LogProbFn,
    z0: torch.Tensor,
    n_steps: int = 60,
    step_size: float = 0.08,
    temperature: float = 1.0,
    mala: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    validate_args: bool | None = None,
    max_norm: float = 1e6,
) -> tuple[torch.Tensor, LangevinDiagnostics]:
    """Run ``z0.shape[0]`` independent Langevin chains on ``log_prob_fn`` and return ``(z, diagnostics)``.

    Args:
        log_prob_fn: ``(B, *event) -> (B,)`` unnormalised log density (differentiable in its input).
        z0: initial states ``(B, *event)``, e.g. ``torch.randn`` for N(0, I) or posterior samples of q(z|x).
        n_steps: number of steps.
        step_size: ``s`` in ``z + s grad log p + sqrt(2 T s) eps``. The default 0.08 equals ``0.4**2 / 2``,
            the prior step of Pang et al. (2020) written in their ``z + (delta^2/2) grad + delta eps`` form.
        temperature: ``T``; the chains target ``p^(1/T)`` (``T < 1`` sharpens).
        mala: Metropolis-adjust every step (per-chain accept/reject), making ``p^(1/T)`` exactly invariant.
        generator: random source for the noise (and the accept/reject uniforms).
        callback: called as ``callback(t, z_t)`` after every step ``t = 1..n_steps`` (e.g. to track moments).
        validate_args: check the chains' values: ``z0`` and the log-prob and gradient there are finite, every
            unadjusted step's log-prob and gradient are finite (one host sync per step), and, once at the
            end of the run, no chain's norm ``||z_i||`` exceeded ``max_norm`` or became non-finite at any
            step (a chain can run away to 1e11 with finite values; kept on the device until then). ``None``
            (default) follows :func:`genlib.set_validate_args`; ``False`` skips them all, so a run reads no
            tensor value on the host and compiles without graph breaks.
        max_norm: the bound on each chain's Euclidean norm used by ``validate_args``.

    Returns:
        The final states (detached, ``z0``'s shape) and a :class:`LangevinDiagnostics`.

    Raises:
        RuntimeError: an unadjusted chain produced a non-finite log-prob or gradient (step too large), or
            (with ``validate_args``) a chain blew up past ``max_norm``; the message names the step and step
            size.
        ValueError: (with ``validate_args``) ``z0``, or the log-prob or its gradient at ``z0``, is not finite.
    """
    validate_args = resolve_validate_args(validate_args, "validate_args")
    z0 = _check_z0(z0, validate_args)
    check_int(n_steps, "n_steps", 0)
    step_size = check_positive(step_size, "step_size")
    temperature = check_positive(temperature, "temperature")
    max_norm = check_positive(max_norm, "max_norm")
    precond = _Identity()
    st = _state(log_prob_fn, z0, precond)
    if validate_args:
        _check_start(st)
    trace = _Trace(z0, max_norm if validate_args else None)
    trace.record(st)
    for t in range(n_steps):
        st, acc = _step(log_prob_fn, st, precond, step_size, temperature, mala, generator, t, validate_args)
        trace.record(st, acc)
        if callback is not None:
            callback(t + 1, st.z)
    trace.check_blowup(step_size)
    return st.z, trace.finish(step_size, temperature, mala)


@dataclass
class LangevinSampler:
    """Plain / Metropolis-adjusted Langevin with fixed settings: ``z, diag = sampler.run(log_prob_fn, z0)``.

    See :func:`langevin` for the arguments. Samplers are interchangeable wherever genlib takes a ``sampler``
    (e.g. :meth:`genlib.priors.LatentEBMPrior.sample`).
    """

    n_steps: int = 60
    step_size: float = 0.08
    temperature: float = 1.0
    mala: bool = False
    validate_args: bool | None = None
    max_norm: float = 1e6

    def __post_init__(self) -> None:
        resolve_validate_args(self.validate_args, "validate_args")
        check_int(self.n_steps, "n_steps", 0)
        check_positive(self.step_size, "step_size")
        check_positive(self.temperature, "temperature")
        check_positive(self.max_norm, "max_norm")

    def run(
        self,
        log_prob_fn: LogProbFn,
        z0: torch.Tensor,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> tuple[torch.Tensor, LangevinDiagnostics]:
        """Run the chains from ``z0``; returns ``(z, diagnostics)``."""
        return langevin(
            log_prob_fn,
            z0,
            self.n_steps,
            self.step_size,
            self.temperature,
            self.mala,
            generator=generator,
            callback=callback,
            validate_args=self.validate_args,
            max_norm=self.max_norm,
        )
