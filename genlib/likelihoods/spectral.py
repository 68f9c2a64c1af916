"""Likelihoods for speech spectra: one STFT bin ``x = x_r + i x_i`` per element, bins independent given z.

Data are complex tensors ``(B, F)`` or ``(B, F, T)``; the magnitude-only models (:class:`Gamma`,
:class:`ItakuraSaito`) also take real non-negative magnitudes. Positive parameters are
``floor + positive(raw)`` (``exp`` with an overflow-safe linear tail): spectra span orders of magnitude, which
a log-scale parametrisation reaches with raw values of order 10. ``floor`` is in magnitude units
(``ItakuraSaito``'s in power units). Densities, normalisers and Jacobians are derived in
:mod:`genlib.likelihoods.distributions`.

What to re-synthesise from: ``dist.magnitude_mean`` (``E|x|``) for every magnitude or polar model, combined
with a phase (``dist.resynthesize(phase)``; polar models default to their von Mises location).
``dist.mean`` is the mean of the modelled variable: ``E|x|`` for magnitude models, the complex ``E[x]``
for the others.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Gamma as TorchGamma
from torch.distributions import LogNormal

from genlib.likelihoods.base import Likelihood, positive
from genlib.likelihoods.distributions import (
    CircularComplexLaplace,
    CircularComplexNormal,
    GammaMagnitude,
    ItakuraSaitoMagnitude,
    PolarVonMises,
)
from genlib.utils import check_positive

__all__ = ["Gamma", "ItakuraSaito", "LogNormalVonMises", "GammaVonMises", "ComplexNormal", "ComplexLaplace"]


class _Spectral(Likelihood):
    def __init__(self, floor: float = 1e-6):
        super().__init__()
        self.floor = check_positive(floor, "floor")

    def _pos(self, raw: Tensor) -> Tensor:
        return positive(raw, self.floor)

    def extra_repr(self) -> str:
        return f"n_params={self.n_params}, floor={self.floor:g}"


class Gamma(_Spectral):
    """Magnitude model ``|x| ~ Gamma(alpha, beta)`` with both parameters from the decoder (the Gamma-VAE).

    Channels: ``alpha = floor + positive(raw[:, 0])`` (shape), ``beta = floor + positive(raw[:, 1])`` (rate).
    Returns :class:`~genlib.likelihoods.distributions.GammaMagnitude`, a density over ``|x|``; ``mean`` /
    ``magnitude_mean`` is ``alpha / beta``; ``magnitude_precision`` is ``alpha`` (for precision maps).
    """

    n_params = 2

    def distribution(self, raw: Tensor) -> GammaMagnitude:
        return GammaMagnitude(self._pos(raw[:, 0]), self._pos(raw[:, 1]))


class ItakuraSaito(_Spectral):
    """The IS-VAE baseline: power ``|x|^2 ~ Gamma(alpha, alpha / v)``, fixed shape ``alpha``, learned ``v``.

    ``alpha = 1`` (default) is the exponential on power, i.e. the circular complex Gaussian ``CN(0, v)`` on
    the bin, whose negative log-likelihood is the Itakura-Saito divergence ``d_IS(|x|^2 | v)`` up to
    constants.
    Channel: ``v = floor + positive(raw[:, 0])``, the model variance (mean power). Returns
    :class:`~genlib.likelihoods.distributions.ItakuraSaitoMagnitude`, a density over the *magnitude* ``|x|``
    (the ``2|x|`` Jacobian of ``P = |x|^2`` included), so its log-likelihoods compare with :class:`Gamma`'s.

    Args:
        concentration: the fixed shape ``alpha > 0``.
        floor: lower bound on ``v`` in power units.
    """

    n_params = 1

    def __init__(self, concentration: float = 1.0, floor: float = 1e-12):
        super().__init__(floor)
        self.concentration = check_positive(concentration, "concentration")

    def distribution(self, raw: Tensor) -> ItakuraSaitoMagnitude:
        return ItakuraSaitoMagnitude(self._pos(raw[:, 0]), self.concentration)

    def extra_repr(self) -> str:
        return f"concentration={self.concentration:g}, {super().extra_repr()}"


class LogNormalVonMises(_Spectral):
    """Polar model: ``|x| ~ LogNormal(m, s)``, ``angle(x) ~ VonMises(mu, kappa)``; density
    ``p(|x|) p(angle) / |x|``.

    Channels: ``m = raw[:, 0]`` (mean of ``log|x|``), ``s = floor + positive(raw[:, 1])``,
    ``mu = raw[:, 2]`` (radians), ``kappa = positive(raw[:, 3])`` (``>= 0``). Returns
    :class:`~genlib.likelihoods.distributions.PolarVonMises`: ``magnitude_mean = exp(m + s^2 / 2)``,
    ``phase_loc``, ``phase_concentration``, ``magnitude_precision = 1 / (exp(s^2) - 1)``; ``mean`` is the
    complex ``E[x]``. These are evaluated in log space, so they are exact wherever the dtype holds them;
    ``magnitude_mean`` (hence :meth:`resynthesize`), ``mean`` and ``variance`` are clamped at ``finfo.max``
    where the true value overflows (float32: ``m + s^2 / 2 > 88.7``, e.g. ``m = 0`` with ``raw[:, 1] > 2.6``).
    """

    n_params = 4

    def distribution(self, raw: Tensor) -> PolarVonMises:
        magnitude = LogNormal(raw[:, 0], self._pos(raw[:, 1]))
        return PolarVonMises(magnitude, raw[:, 2], positive(raw[:, 3]))


class GammaVonMises(_Spectral):
    """Polar model: ``|x| ~ Gamma(alpha, beta)``, ``angle(x) ~ VonMises(mu, kappa)``; density
    ``p(|x|) p(angle) / |x|``.

    Channels: ``alpha``, ``beta`` as in :class:`Gamma`, ``mu = raw[:, 2]`` (radians),
    ``kappa = positive(raw[:, 3])`` (``>= 0``; ``kappa -> 0`` is :class:`Gamma` with a uniform phase). Returns
    :class:`~genlib.likelihoods.distributions.PolarVonMises`: ``magnitude_mean = alpha / beta``,
    ``magnitude_precision = alpha``, ``phase_loc``, ``phase_concentration``; ``mean`` is the complex ``E[x]``.
    """

    n_params = 4

    def distribution(self, raw: Tensor) -> PolarVonMises:
        magnitude = TorchGamma(self._pos(raw[:, 0]), self._pos(raw[:, 1]))
        return PolarVonMises(magnitude, raw[:, 2], positive(raw[:, 3]))


class ComplexNormal(_Spectral):
    """Circular complex Gaussian ``CN(mu, sigma^2)``: ``p(x) = exp(-|x - mu|^2 / sigma^2) / (pi sigma^2)``.

    Channels: ``mu = raw[:, 0] + i raw[:, 1]``, ``sigma = floor + positive(raw[:, 2])``. Returns
    :class:`~genlib.likelihoods.distributions.CircularComplexNormal`; ``mean`` is ``mu``.
    """

    n_params = 3

    def distribution(self, raw: Tensor) -> CircularComplexNormal:
        return CircularComplexNormal(_complex_loc(raw), self._pos(raw[:, 2]))


class ComplexLaplace(_Spectral):
    """Circular complex Laplace: ``p(x) = exp(-|x - mu| / b) / (2 pi b^2)``.

    Channels: ``mu = raw[:, 0] + i raw[:, 1]``, ``b = floor + positive(raw[:, 2])``. Returns
    :class:`~genlib.likelihoods.distributions.CircularComplexLaplace`; ``mean`` is ``mu``.
    """

    n_params = 3

    def distribution(self, raw: Tensor) -> CircularComplexLaplace:
        return CircularComplexLaplace(_complex_loc(raw), self._pos(raw[:, 2]))


def _complex_loc(raw: Tensor) -> Tensor:
    return torch.complex(raw[:, 0], raw[:, 1])
