"""Picklable schedules for the preconditioner refit probability (step → p in [0, 1]).

Classes rather than lambdas so optimizers holding them can be pickled and checkpointed.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ExponentialDecaySchedule"]


class ExponentialDecaySchedule:
    """Refit probability decaying geometrically from ``start`` to ``end`` over ``decay_steps``, then flat.

    ``p(t) = start · (end/start)^(min(t, decay_steps)/decay_steps)`` for step ``t >= 0`` (``p(0) = start``,
    ``p(decay_steps) = end``). Early steps refit often while Q is far from its fit; later ones rarely, which
    keeps most steps at the cost of preconditioning alone.

    >>> ExponentialDecaySchedule(1.0, 0.1, 100)(100)
    0.1
    """

    def __init__(self, start: float = 1.0, end: float = 0.1, decay_steps: int = 1000) -> None:
        for name, val in (("start", start), ("end", end)):
            if not isinstance(val, (int, float)) or not 0.0 < float(val) <= 1.0:
                raise ValueError(f"{name} must be a probability in (0, 1], got {val!r}")
        if not isinstance(decay_steps, int) or decay_steps < 1:
            raise ValueError(f"decay_steps must be a positive int, got {decay_steps!r}")
        self.start, self.end, self.decay_steps = float(start), float(end), decay_steps

    def __call__(self, step: int | torch.Tensor) -> float | torch.Tensor:
        """``p(step)``: a float for an int step, a float64 tensor for a tensor one (compiled optimizers)."""
        if isinstance(step, torch.Tensor):
            frac = step.double().clamp(0, self.decay_steps) / self.decay_steps
            return self.start * torch.exp(frac * math.log(self.end / self.start))
        frac = min(max(step, 0), self.decay_steps) / self.decay_steps
        if frac >= 1.0:
            return self.end
        return self.start * math.exp(frac * math.log(self.end / self.start))

    def __repr__(self) -> str:
        return f"ExponentialDecaySchedule(start={self.start}, end={self.end}, decay_steps={self.decay_steps})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExponentialDecaySchedule) and (
            (self.start, self.end, self.decay_steps) == (other.start, other.end, other.decay_steps)
        )

    def __hash__(self) -> int:
        return hash((self.start, self.end, self.decay_steps))
