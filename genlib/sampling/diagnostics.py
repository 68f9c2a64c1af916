"""What every Langevin run reports, and a moment-error metric for checking samplers against known targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlib.utils import check_tensor

__all__ = ["LangevinDiagnostics", "gaussian_moment_error"]


@dataclass
class LangevinDiagnostics:
    """Per-step traces of one Langevin run, averaged over chains (CPU tensors).

    Index ``t`` is the state after ``t`` steps (``t = 0`` is the initial state), so the traces have
    ``n_warmup + n_steps + 1`` entries.

    Attributes:
        energy: mean energy ``-log p(z_t)`` (of the ``log_prob_fn`` given: unnormalised, temperature not
            applied).
        grad_norm: mean ``||grad log p(z_t)||``.
        displacement: mean ``||z_t - z_0||`` (how far chains travelled from their start).
        acceptance: per-step mean Metropolis acceptance probability, ``(n_steps,)``; ``None`` without MALA.
        step_size, temperature: the settings of the run.
        n_warmup: leading steps spent fitting a preconditioner (0 for plain Langevin); acceptance covers
            only the steps after them.
    """

    energy: torch.Tensor
    grad_norm: torch.Tensor
    displacement: torch.Tensor
    acceptance: torch.Tensor | None
    step_size: float
    temperature: float
    n_warmup: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Mean Metropolis acceptance probability over all MALA steps, or ``None`` without MALA."""
        if self.acceptance is None or self.acceptance.numel() == 0:
            return None
        return float(self.acceptance.mean())

    @property
    def n_steps(self) -> int:
        """Total number of steps taken (warm-up included)."""
        return self.energy.numel() - 1


def gaussian_moment_error(z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """Distance of the sample moments of ``z`` ``(n, d)`` from a target ``mean`` ``(d,)``, ``cov`` ``(d, d)``.

    Returns ``(mean_error, cov_error)``, both measured in the target's own metric so every direction counts
    equally however ill-conditioned the target is: ``mean_error = ||L^-1 (m_hat - mean)||`` and
    ``cov_error = ||L^-1 C_hat L^-T - I||_F / sqrt(d)`` with ``cov = L L^T``. With ``n`` exact samples both
    are of order ``sqrt(d / n)``.
    """
    check_tensor(z, "z", ndim=2, floating=True)
    d = z.shape[1]
    check_tensor(mean, "mean", ndim=1, floating=True)
    check_tensor(cov, "cov", ndim=2, floating=True)
    if mean.shape != (d,) or cov.shape != (d, d):
        raise ValueError(
            f"mean must have shape ({d},) and cov ({d}, {d}) to match z {tuple(z.shape)}, got "
            f"{tuple(mean.shape)} and {tuple(cov.shape)}"
        )
    if z.shape[0] < 2:
        raise ValueError(f"z needs at least 2 samples to estimate a covariance, got shape {tuple(z.shape)}")
    z, mean, cov = z.double(), mean.to(z.device).double(), cov.to(z.device).double()
    chol = torch.linalg.cholesky(cov)
    w = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False).T  # whitened samples
    m_hat = w.mean(0)
    c_hat = torch.cov(w.T).reshape(d, d)
    eye = torch.eye(d, dtype=w.dtype, device=w.device)
    return float(m_hat.norm()), float((c_hat - eye).norm() / d**0.5)
