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

The six classes are the decoders of the dissertation's Table 6.1 (chapter 6); each docstring names its row and
equation and, where the printed equation and the text disagree (eq. 6.9-6.10, eq. 6.11), which reading is
implemented.
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

_MIN_SHAPE = 1e-6  # floor on a decoder-estimated shape alpha

__all__ = ["Gamma", "ItakuraSaito", "LogNormalVonMises", "GammaVonMises", "ComplexNormal", "ComplexLaplace"]


class _Spectral(Likelihood):
    def __init__(self, floor: float = 1e-6, validate_args: bool | None = None):
        super().__init__(validate_args)
        self.floor = check_positive(floor, "floor")

    def _pos(self, raw: Tensor) -> Tensor:
        return positive(raw, self.floor)

    def extra_repr(self) -> str:
        return f"n_params={self.n_params}, floor={self.floor:g}"


class Gamma(_Spectral):
    """Magnitude model ``|x| ~ Gamma(alpha, beta)`` with both parameters from the decoder (the Gamma-VAE).

    Table 6.1's "Gamma" row: the magnitude part of eq. 6.5, i.e. the Gamma-von Mises decoder at ``kappa = 0``
    (section 6.4.3, "Gamma Distribution"). *Reading eq. 6.9-6.10.* As printed they set ``alpha = 1`` on
    ``r = x_r^2 + x_i^2``, the power: ``2 beta exp(-beta r)`` is an exponential on the power, i.e.
    ``CN(0, 1 / beta)`` = :class:`ItakuraSaito` with ``concentration=1``. The text around them (shape
    ``alpha``, rate ``beta``, ``alpha / beta = |x_hat|``, "a special case of the Gamma von Mises") describes a
    Gamma on the *magnitude* with both parameters learned; that is this class, and the model behind Table
    6.2's "Gamma" rows (``recipes/vctk_resynthesis.py``).

    Channels: ``alpha = floor + positive(raw[:, 0])`` (shape), ``beta = floor + positive(raw[:, 1])`` (rate).
    Returns :class:`~genlib.likelihoods.distributions.GammaMagnitude`, a density over ``|x|``; ``mean`` /
    ``magnitude_mean`` is ``alpha / beta``; ``magnitude_precision`` is ``alpha`` (for precision maps).
    """

    n_params = 2

    def distribution(self, raw: Tensor) -> GammaMagnitude:
        return GammaMagnitude(self._pos(raw[:, 0]), self._pos(raw[:, 1]), validate_args=self.validating)


class ItakuraSaito(_Spectral):
    """The IS-VAE baseline (Table 6.1's "Itakura-Saito", eq. 6.11-6.12): the power ``P = |x|^2`` is Gamma.

    Two variants, chosen by ``concentration``:

    - a float ``alpha`` (default 1): fixed shape, ``P ~ Gamma(alpha, rate = alpha / v)``, one channel
      ``v = floor + positive(raw[:, 0])``, the model variance (mean power). ``alpha = 1`` is the exponential
      on power, i.e. the circular complex Gaussian ``CN(0, v)`` on the bin, whose negative log-likelihood is
      the Itakura-Saito divergence ``d_IS(|x|^2 | v)`` up to constants -- the IS-NMF / IS-VAE model.
    - ``"decoder"``: the dissertation's eq. 6.11-6.12 as written, shape estimated by the network and rate
      ``1 / y``: ``P ~ Gamma(alpha, rate = 1 / y)`` with ``y = floor + positive(raw[:, 0])`` (power units) and
      ``alpha = 1e-6 + positive(raw[:, 1])`` (two channels). Its mean power is ``alpha * y``; at ``alpha = 1``
      it is the fixed-shape model with ``v = y``, which is the only point where the two agree.

    *Reading eq. 6.11.* ``p = (|x| / |y|)^alpha |x|^-2 exp(-|x| / |y|) / Gamma(alpha)`` is a Gamma in
    ``|x|`` with shape ``alpha`` and rate ``1 / |y|`` times ``1 / |x|`` (the polar Jacobian, without its
    ``1 / 2 pi``).
    Read with ``|x|`` the magnitude it would be the :class:`Gamma` decoder again; its name, its negative
    log-likelihood eq. 6.12 (``alpha = 1``: ``|x| / |y| - log(|x| / |y|)``, the IS divergence) and the IS-VAE
    literature put ``|x|`` for the power, which is the reading implemented here: as a function of the
    parameters eq. 6.12 is then exactly the negative log of ``Gamma(P; alpha, 1 / y)`` (its ``2 log |x|``
    differs from the Gamma's ``log P`` by a term free of the parameters).

    Returns :class:`~genlib.likelihoods.distributions.ItakuraSaitoMagnitude`, a density over the *magnitude*
    ``|x|`` (the ``2|x|`` Jacobian of ``P = |x|^2`` included), so its log-likelihoods compare with
    :class:`Gamma`'s; ``magnitude_precision`` depends on ``alpha`` only (a constant map for a fixed shape).

    Args:
        concentration: the fixed shape ``alpha > 0``, or ``"decoder"`` for the learned shape.
        floor: lower bound on ``v`` (or ``y``) in power units.
        validate_args: check tensor values (see :class:`~genlib.likelihoods.Likelihood`).
    """

    def __init__(
        self, concentration: float | str = 1.0, floor: float = 1e-12, validate_args: bool | None = None
    ):
        super().__init__(floor, validate_args)
        if isinstance(concentration, str):
            if concentration != "decoder":
                raise ValueError(
                    f"concentration must be a positive float or 'decoder', got {concentration!r}"
                )
            self.concentration: float | str = concentration
        else:
            self.concentration = check_positive(concentration, "concentration")
        self.n_params = 2 if self.learned_shape else 1

    @property
    def learned_shape(self) -> bool:
        """Whether the decoder estimates the shape ``alpha`` (``concentration="decoder"``)."""
        return self.concentration == "decoder"

    def distribution(self, raw: Tensor) -> ItakuraSaitoMagnitude:
        check = self.validating
        if self.learned_shape:
            alpha = positive(raw[:, 1], _MIN_SHAPE)
            return ItakuraSaitoMagnitude(alpha * self._pos(raw[:, 0]), alpha, validate_args=check)
        return ItakuraSaitoMagnitude(self._pos(raw[:, 0]), self.concentration, validate_args=check)

    def extra_repr(self) -> str:
        shape = self.concentration if self.learned_shape else f"{self.concentration:g}"
        return f"concentration={shape}, {super().extra_repr()}"


class LogNormalVonMises(_Spectral):
    """Polar model: ``|x| ~ LogNormal(m, s)``, ``angle(x) ~ VonMises(mu, kappa)``; density
    ``p(|x|) p(angle) / |x|`` (Table 6.1's "Log Normal von Mises" row, with the Jacobian of eq. 6.4).

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
        check = self.validating
        magnitude = LogNormal(raw[:, 0], self._pos(raw[:, 1]), validate_args=check)
        return PolarVonMises(magnitude, raw[:, 2], positive(raw[:, 3]), validate_args=check)


class GammaVonMises(_Spectral):
    """Polar model: ``|x| ~ Gamma(alpha, beta)``, ``angle(x) ~ VonMises(mu, kappa)``; density
    ``p(|x|) p(angle) / |x|`` (Table 6.1's "Gamma von Mises" row, eq. 6.4-6.8).

    Channels: ``alpha``, ``beta`` as in :class:`Gamma`, ``mu = raw[:, 2]`` (radians),
    ``kappa = positive(raw[:, 3])`` (``>= 0``; ``kappa -> 0`` is :class:`Gamma` with a uniform phase). Returns
    :class:`~genlib.likelihoods.distributions.PolarVonMises`: ``magnitude_mean = alpha / beta``,
    ``magnitude_precision = alpha``, ``phase_loc``, ``phase_concentration``; ``mean`` is the complex ``E[x]``.
    """

    n_params = 4

    def distribution(self, raw: Tensor) -> PolarVonMises:
        check = self.validating
        magnitude = TorchGamma(self._pos(raw[:, 0]), self._pos(raw[:, 1]), validate_args=check)
        return PolarVonMises(magnitude, raw[:, 2], positive(raw[:, 3]), validate_args=check)


class ComplexNormal(_Spectral):
    """Circular complex Gaussian ``CN(mu, sigma^2)``: ``p(x) = exp(-|x - mu|^2 / sigma^2) / (pi sigma^2)``.

    Table 6.1's "Complex Normal" row, eq. 6.2. Table 6.2 omits it because ``mu -> 0`` on speech (section
    6.5): ``mu = 0`` is the exponential on power (:class:`ItakuraSaito` with ``concentration=1``), so all the
    information moves into ``sigma``; ``recipes/vctk_resynthesis.py --rows cn-fc`` runs it to show this.

    Channels: ``mu = raw[:, 0] + i raw[:, 1]``, ``sigma = floor + positive(raw[:, 2])``. Returns
    :class:`~genlib.likelihoods.distributions.CircularComplexNormal`; ``mean`` is ``mu``.
    """

    n_params = 3

    def distribution(self, raw: Tensor) -> CircularComplexNormal:
        return CircularComplexNormal(_complex_loc(raw), self._pos(raw[:, 2]), validate_args=self.validating)


class ComplexLaplace(_Spectral):
    """Circular complex Laplace: ``p(x) = exp(-|x - mu| / b) / (2 pi b^2)`` (Table 6.1's "Complex Laplace"
    row, eq. 6.3; at ``mu = 0``, ``|x| ~ Gamma(2, 1 / b)``).

    Channels: ``mu = raw[:, 0] + i raw[:, 1]``, ``b = floor + positive(raw[:, 2])``. Returns
    :class:`~genlib.likelihoods.distributions.CircularComplexLaplace`; ``mean`` is ``mu``.
    """

    n_params = 3

    def distribution(self, raw: Tensor) -> CircularComplexLaplace:
        return CircularComplexLaplace(_complex_loc(raw), self._pos(raw[:, 2]), validate_args=self.validating)


def _complex_loc(raw: Tensor) -> Tensor:
    return torch.complex(raw[:, 0], raw[:, 1])
