"""PSGD: preconditioned SGD with Lie-group preconditioners (Li 2015/2018/2024; Pooladzandi & Li 2024).

- :mod:`genlib.optim.preconditioners`: ``P = QᵀQ`` objects over one tensor shape (Dense, Diag, LRA, XMat,
  Kron) sharing one fitting skeleton (``update(v, h)``, ``precondition(g)``, ``apply_qt(x)``), their state a
  dict of tensors; Kron and Diag also fit in Li 2024's ``dQ = Q·E`` coordinates / with Lipschitz steps.
- :mod:`genlib.optim.optimizers`: ``torch.optim.Optimizer`` families on one update skeleton: a curvature
  source (gradient whitening, exact HVPs, finite differences), then chained transforms (momentum,
  preconditioning, trust region, norm clip) and decoupled weight decay; all state in ``opt.state[p]``.
- :mod:`genlib.optim.schedules`: picklable refit-probability schedules.
"""

from .optimizers import CURVATURES, LRA, PSGD, Dense, Diag, Kron, XMat
from .preconditioners import (
    DensePreconditioner,
    DiagPreconditioner,
    KronPreconditioner,
    LRAPreconditioner,
    Preconditioner,
    XMatPreconditioner,
    psd_norm_lower_bound,
)
from .schedules import ExponentialDecaySchedule

__all__ = [
    "PSGD",
    "Kron",
    "Diag",
    "LRA",
    "XMat",
    "Dense",
    "CURVATURES",
    "Preconditioner",
    "DensePreconditioner",
    "DiagPreconditioner",
    "LRAPreconditioner",
    "XMatPreconditioner",
    "KronPreconditioner",
    "psd_norm_lower_bound",
    "ExponentialDecaySchedule",
]
