"""Langevin samplers for unnormalised (e.g. latent EBM) densities, with per-run diagnostics.

- :func:`langevin` / :class:`LangevinSampler`: unadjusted Langevin, or MALA with ``mala=True``
- :class:`PreconditionedLangevin`: the same with a PSGD preconditioner fitted to the energy's curvature
  (Hessian-vector products, :func:`energy_hvp`), refitted during warm-up, then frozen
- :class:`LangevinDiagnostics`: energy, gradient-norm and displacement traces, MALA acceptance
- :func:`gaussian_moment_error`: whitened mean / covariance error against a known Gaussian's moments
"""

from genlib.sampling.diagnostics import LangevinDiagnostics, gaussian_moment_error
from genlib.sampling.langevin import LangevinSampler, LogProbFn, langevin, log_prob_and_grad
from genlib.sampling.preconditioned import PreconditionedLangevin, energy_hvp

__all__ = [
    "LangevinDiagnostics",
    "LangevinSampler",
    "LogProbFn",
    "PreconditionedLangevin",
    "energy_hvp",
    "gaussian_moment_error",
    "langevin",
    "log_prob_and_grad",
]
