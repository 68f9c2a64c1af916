"""Distributions behind the likelihoods, in the style of ``torch.distributions``.

Every class here is element-wise (``event_shape == ()``), validates its parameters in ``__init__`` (through
``arg_constraints``) and its values in ``log_prob``, and is built on ``torch.distributions`` where that has
the density (Gamma, LogNormal, Normal, Bernoulli, VonMises).

Every class is also a pyro distribution (``pyro.distributions.TorchDistributionMixin``): ``.to_event(n)``,
``.expand(batch_shape)`` (returning the same class, its helpers such as ``magnitude_mean`` intact),
``.mask``, and use as ``pyro.sample("x", lik(raw).to_event(3), obs=x)`` inside ``pyro.plate``, so a genlib
decoder likelihood serves as the observation model of a pyro program (SVI, MCMC).

The spectral ones model one STFT bin ``x = x_r + i x_i``; each class docstring derives its density,
normaliser and Jacobian.

Conventions for spectral data:

- *magnitude* densities (:class:`GammaMagnitude`, :class:`ItakuraSaitoMagnitude`) are densities over
  ``r = |x|`` on ``[0, inf)``; they accept complex bins (read as ``|x|``) or real non-negative magnitudes.
  :meth:`MagnitudeMixin.plane_log_prob` turns one into a density over the complex plane with a uniform phase,
  ``p(r) / (2 pi r)``, which puts it on the same measure as the complex models below.
- *complex* densities (:class:`PolarVonMises`, :class:`CircularComplexNormal`,
  :class:`CircularComplexLaplace`) are densities over the complex plane w.r.t. area ``dx_r dx_i``; they need
  complex input.
- A magnitude of exactly 0 is read as the smallest normal float of its dtype: continuous magnitude densities
  give exact zeros probability zero (and an infinite log-density), and real STFTs hold exact zeros only in
  digital silence, where this keeps the loss and its gradients finite.

Numerics: squares are taken after dividing by the scale and products of powers are summed in log space, so
every result the dtype can represent comes out finite and accurate to its precision (e.g. a float32
Itakura-Saito score at ``|x| = 1e-30`` or ``1e20``). Where the true value itself overflows the dtype, the
result is clamped: ``log_prob`` at ``-finfo.max`` (gradient zero there) and ``magnitude_mean`` /
``variance`` of a polar model at ``finfo.max``.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.torch_distribution import TorchDistribution, TorchDistributionMixin
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Gamma, LogNormal, Normal, VonMises, constraints
from torch.distributions.utils import broadcast_all, lazy_property

__all__ = [
    "complex_plane",
    "magnitude",
    "UnitIntervalBernoulli",
    "StableVonMises",
    "StableNormal",
    "MagnitudeMixin",
    "GammaMagnitude",
    "ItakuraSaitoMagnitude",
    "PolarVonMises",
    "CircularComplexNormal",
    "CircularComplexLaplace",
    "log_i0",
    "mean_resultant_length",
]

_LOG_2PI = math.log(2 * math.pi)
_LOG_PI = math.log(math.pi)
_EMPTY = torch.Size()


# -- constraints -------------------------------------------------------------------------------------------
class _ComplexPlane(constraints.Constraint):
    """Finite complex numbers."""

    def check(self, value: Tensor) -> Tensor:
        if not value.is_complex():
            return torch.zeros_like(value, dtype=torch.bool)
        return torch.isfinite(value)


class _Magnitude(constraints.Constraint):
    """Complex numbers (read as their modulus) or real non-negative magnitudes."""

    def check(self, value: Tensor) -> Tensor:
        if value.is_complex():
            return torch.isfinite(value)
        return torch.isfinite(value) & (value >= 0)


complex_plane = _ComplexPlane()
magnitude = _Magnitude()


def _check_spectral_value(value: object, owner: str, *, complex_only: bool) -> None:
    """Clear ``ValueError`` for values a spectral density cannot score (always run: it costs no sync)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{owner}.log_prob: x must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        return
    if complex_only:
        raise ValueError(
            f"{owner} is a density over the complex plane: x must be a complex tensor of STFT bins "
            f"(e.g. torch.cfloat), got real dtype {value.dtype}; magnitude-only models (GammaMagnitude, "
            f"ItakuraSaitoMagnitude) take real magnitudes"
        )
    if not value.is_floating_point():
        raise ValueError(
            f"{owner}.log_prob: x must be complex STFT bins or real non-negative magnitudes, "
            f"got dtype {value.dtype}"
        )


def _validate_spectral_values(value: Tensor, owner: str, *, complex_only: bool) -> None:
    """The data-dependent checks (NaN / negative magnitudes): run only when ``validate_args`` is on."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{owner}.log_prob: x contains NaN or Inf")
    if not complex_only and not value.is_complex() and bool((value < 0).any()):
        raise ValueError(
            f"{owner}.log_prob: x must hold non-negative magnitudes |x| (or complex STFT bins), "
            f"found negative values (min {value.min().item():.3g})"
        )


def _modulus(value: Tensor) -> Tensor:
    """``|x|`` for complex input, ``x`` for real magnitudes; floored at the dtype's smallest normal number."""
    r = value.abs() if value.is_complex() else value
    return r.clamp_min(torch.finfo(r.dtype).tiny)


def _floor_log_prob(log_p: Tensor) -> Tensor:
    """``log_p`` clamped at ``-finfo.max``: only values whose true value overflows the dtype are changed."""
    return log_p.clamp_min(torch.finfo(log_p.dtype).min)


def _exp_clamped(log_x: Tensor) -> Tensor:
    """``exp(log_x)``, clamped at ``finfo.max`` where the true value overflows the dtype."""
    return torch.exp(log_x).clamp_max(torch.finfo(log_x.dtype).max)


def _log_expm1(y: Tensor) -> Tensor:
    """``log(exp(y) - 1)`` for ``y > 0`` without overflow: ``y + log(-expm1(-y))``."""
    return y + torch.log(-torch.expm1(-y))


class StableNormal(Normal, TorchDistributionMixin):
    """``torch.distributions.Normal`` whose ``log_prob`` squares ``(x - mu) / sigma``, not ``x - mu``.

    ``Normal`` divides ``(x - mu)^2`` by ``2 sigma^2``, so in float32 it returns ``-inf`` once
    ``|x - mu| > 1.8e19`` even when ``sigma`` is large enough for the log-density to be an ordinary number.
    Where ``((x - mu) / sigma)^2`` itself overflows, ``log_prob`` is clamped at ``-finfo.max``.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        return _floor_log_prob(-0.5 * z.square() - torch.log(self.scale) - 0.5 * _LOG_2PI)


# -- von Mises helpers -------------------------------------------------------------------------------------
def log_i0(kappa: Tensor) -> Tensor:
    """``log I_0(kappa)`` for ``kappa >= 0``, exact and with finite gradients for every ``kappa``.

    Uses the exponentially scaled Bessel function, ``log I_0(k) = k + log i0e(k)``; torch's ``VonMises``
    uses a two-branch polynomial whose unused branch overflows and turns gradients into NaN for very small or
    very large ``k``.
    """
    return kappa + torch.log(torch.special.i0e(kappa))


def mean_resultant_length(kappa: Tensor) -> Tensor:
    """``A(kappa) = E[cos(theta - mu)] = I_1(kappa) / I_0(kappa)`` for a von Mises angle (0 at kappa = 0)."""
    return torch.special.i1e(kappa) / torch.special.i0e(kappa)


class StableVonMises(VonMises, TorchDistributionMixin):
    """``torch.distributions.VonMises`` with an exact, gradient-safe normaliser and ``concentration >= 0``.

    Density on the circle: ``p(theta) = exp(kappa cos(theta - mu)) / (2 pi I_0(kappa))``; ``kappa = 0`` is the
    uniform phase. Sampling is torch's (Best & Fisher 1979); ``kappa`` is floored at ``1e-6`` there only
    (the sampler divides by it), which differs from uniform by less than ``1e-6`` in density.
    """

    arg_constraints = {"loc": constraints.real, "concentration": constraints.nonnegative}

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.concentration * torch.cos(value - self.loc) - _LOG_2PI - log_i0(self.concentration)

    @lazy_property
    def _concentration(self) -> Tensor:
        return self.concentration.to(torch.double).clamp_min(1e-6)

    @property
    def variance(self) -> Tensor:
        """Circular variance ``1 - A(kappa)``."""
        return 1 - mean_resultant_length(self.concentration)


# -- images ------------------------------------------------------------------------------------------------
class UnitIntervalBernoulli(Bernoulli, TorchDistributionMixin):
    """Bernoulli whose ``log_prob`` also scores continuous targets in ``[0, 1]`` (grey-scale images).

    ``log p(x) = x log p + (1 - x) log(1 - p)``, i.e. minus the binary cross-entropy, evaluated stably from
    logits. For ``x`` in ``{0, 1}`` this is the Bernoulli pmf; for ``0 < x < 1`` it is the usual
    (unnormalised) VAE reconstruction term; ``torch.distributions.ContinuousBernoulli`` is its normalised
    counterpart. ``sample()`` draws binary images; ``mean`` is ``p``.
    """

    support = constraints.unit_interval


# -- magnitude densities -----------------------------------------------------------------------------------
class MagnitudeMixin:
    """Shared behaviour of densities over a magnitude ``r = |x|``: input handling and re-synthesis helpers."""

    support = magnitude

    def _validate_sample(self, value: Tensor) -> None:
        _validate_spectral_values(value, type(self).__name__, complex_only=False)
        super()._validate_sample(value)  # type: ignore[misc]  # shape broadcasting

    def _magnitude_of(self, value: Tensor) -> Tensor:
        _check_spectral_value(value, type(self).__name__, complex_only=False)
        if self._validate_args:  # type: ignore[attr-defined]
            self._validate_sample(value)
        return _modulus(value)

    def plane_log_prob(self, value: Tensor) -> Tensor:
        """Log-density over the complex plane with a uniform, independent phase: ``log p(r) - log(2 pi r)``.

        In polar coordinates ``dx_r dx_i = r dr dtheta``, so ``p(x) = p(r) (1 / 2 pi) / r``. Use it to compare
        a magnitude model with :class:`PolarVonMises` or the circular complex models on one measure.
        """
        log_p = self.log_prob(value)  # validates value
        return log_p - _LOG_2PI - torch.log(_modulus(value))

    @property
    def magnitude_mean(self) -> Tensor:
        """``E[|x|]``, the magnitude to re-synthesise from (same as ``mean``)."""
        return self.mean  # type: ignore[attr-defined]

    @property
    def magnitude_precision(self) -> Tensor:
        """``E[r]^2 / Var[r]``, the inverse squared coefficient of variation (scale-free)."""
        return self.mean.square() / self.variance  # type: ignore[attr-defined]

    def resynthesize(self, phase: Tensor) -> Tensor:
        """Complex bins ``E[|x|] exp(i phase)``, the phase from elsewhere (ground truth, Griffin-Lim)."""
        mag = self.magnitude_mean
        return torch.polar(mag, torch.as_tensor(phase, dtype=mag.dtype, device=mag.device).expand_as(mag))


class GammaMagnitude(MagnitudeMixin, Gamma, TorchDistributionMixin):
    """Gamma density over the magnitude ``r = |x|``: ``beta^alpha r^(alpha-1) exp(-beta r) / Gamma(alpha)``.

    The dissertation's eq. 6.5 magnitude density (Table 6.1's "Gamma" row, read as in the text; see
    :class:`genlib.likelihoods.Gamma` for eq. 6.9-6.10).

    Args:
        concentration: shape ``alpha > 0``.
        rate: rate ``beta > 0`` (``1 / scale``).

    The normaliser is the Gamma function's definition, ``int_0^inf r^(alpha-1) e^(-beta r) dr =
    Gamma(alpha) / beta^alpha``. Accepts complex bins (scored at ``|x|``) or real non-negative magnitudes;
    this is a density over magnitude, not over the plane (see :meth:`plane_log_prob`).

    ``mean`` is the magnitude mean ``alpha / beta``; ``magnitude_precision`` is ``alpha``
    (``= mean^2 / variance``); ``sample()`` / ``rsample()`` draw magnitudes (torch's reparameterised Gamma).
    """

    def log_prob(self, value: Tensor) -> Tensor:
        return _floor_log_prob(super().log_prob(self._magnitude_of(value)))

    @property
    def magnitude_precision(self) -> Tensor:
        return self.concentration


class ItakuraSaitoMagnitude(MagnitudeMixin, TorchDistribution):
    """The IS-VAE observation model as a density over the magnitude ``r = |x|`` (Table 6.1's "Itakura-Saito").

    The power ``P = |x|^2`` is Gamma with shape ``alpha`` and mean ``v`` (the model's variance, the decoder's
    output): ``P ~ Gamma(alpha, rate = alpha / v)``. ``alpha`` is a fixed number or, for eq. 6.11-6.12's
    shape estimated by the network (rate ``1 / y``, so ``v = alpha y``), a tensor like ``v``. With
    ``alpha = 1`` this is the exponential on the power, which is exactly what a circular complex Gaussian
    ``x ~ CN(0, v)`` implies (its modulus is Rayleigh, its power exponential): the IS-NMF / IS-VAE model
    (Fevotte et al. 2009; Bando et al. 2018).

    *Jacobian.* We score magnitudes, so with ``P = r^2``, ``dP/dr = 2 r``:
    ``log p(r) = log Gamma(r^2; alpha, alpha / v) + log 2 + log r``.

    *Itakura-Saito.* As a function of ``v``,
    ``-log p(r) = alpha (P / v - log(P / v) - 1) + const(P, alpha) = alpha * d_IS(P | v) + const``, so
    maximising the likelihood minimises the IS divergence between the observed power and the model variance,
    with its minimum at ``v = |x|^2``.

    Args:
        power: ``v = E[|x|^2] > 0``, the mean power (variance of the complex bin).
        concentration: the shape ``alpha > 0`` (default 1), a number or a tensor broadcastable with ``power``.

    ``mean`` is the magnitude mean ``E[r] = sqrt(v / alpha) Gamma(alpha + 1/2) / Gamma(alpha)``
    (``sqrt(pi v) / 2`` at ``alpha = 1``); ``sqrt(v)`` is the RMS magnitude. ``rsample()`` draws magnitudes.

    *Evaluation.* With ``t = r / sqrt(v)`` the density is
    ``log p(r) = alpha log alpha - lgamma(alpha) + log 2 + (2 alpha - 1) log t - log(v) / 2 - alpha t^2``:
    ``r^2`` is never formed (it over- or underflows float32 for ``r > 1.8e19`` or ``r < 1.1e-19``), so
    the score is exact wherever it is representable; where ``alpha t^2`` overflows it is clamped at
    ``-finfo.max``.
    """

    arg_constraints = {"power": constraints.positive, "concentration": constraints.positive}
    has_rsample = True

    def __init__(self, power: Tensor, concentration: Tensor | float = 1.0, validate_args: bool | None = None):
        self.power, self.concentration = broadcast_all(power, concentration)
        super().__init__(self.power.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance=None) -> ItakuraSaitoMagnitude:
        new = self._get_checked_instance(ItakuraSaitoMagnitude, _instance)
        batch_shape = torch.Size(batch_shape)
        new.power, new.concentration = self.power.expand(batch_shape), self.concentration.expand(batch_shape)
        super(ItakuraSaitoMagnitude, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def _power_dist(self) -> Gamma:
        return Gamma(self.concentration, self.concentration / self.power, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        r = self._magnitude_of(value)
        a, v = self.concentration, self.power
        log_v = torch.log(v)
        log_t = torch.log(r) - 0.5 * log_v  # not log(r / sqrt(v)): the ratio may underflow
        t = r / torch.sqrt(v)
        log_p = (
            torch.xlogy(a, a) - torch.lgamma(a) + math.log(2.0) + (2 * a - 1) * log_t - 0.5 * log_v
            - a * t.square()
        )
        return _floor_log_prob(log_p)

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        return self._power_dist.rsample(sample_shape).sqrt()

    @property
    def mean(self) -> Tensor:
        a = self.concentration
        return torch.sqrt(self.power / a) * torch.exp(torch.lgamma(a + 0.5) - torch.lgamma(a))

    @property
    def variance(self) -> Tensor:
        return self.power - self.mean.square()

    @property
    def magnitude_precision(self) -> Tensor:
        # E[r]^2 / Var[r] depends on alpha only: g / (1 - g) with g = Gamma(a + 1/2)^2 / (a Gamma(a)^2).
        a = self.concentration
        g = torch.exp(2 * (torch.lgamma(a + 0.5) - torch.lgamma(a))) / a
        return (g / (1 - g)).expand(self.batch_shape)


# -- complex-plane densities -------------------------------------------------------------------------------
class _ComplexDensity(TorchDistribution):
    support = complex_plane

    def _validate_sample(self, value: Tensor) -> None:
        _validate_spectral_values(value, type(self).__name__, complex_only=True)
        super()._validate_sample(value)

    def _check(self, value: Tensor) -> None:
        _check_spectral_value(value, type(self).__name__, complex_only=True)
        if self._validate_args:
            self._validate_sample(value)


class PolarVonMises(_ComplexDensity):
    """Magnitude and phase modelled separately: ``r = |x| ~ p_R``, ``theta = angle(x) ~ VonMises(mu, kappa)``.

    *Density over the plane.* The map ``(r, theta) -> x = r e^(i theta)`` has ``dx_r dx_i = r dr dtheta``, so
    ``p(x) = p_R(|x|) p_VM(angle x) / |x|``; it integrates to 1 because ``p_R`` and ``p_VM`` do.

    Args:
        magnitude: a distribution over ``(0, inf)`` for ``r`` (``torch.distributions.Gamma`` for the
            Gamma-von Mises model, ``LogNormal`` for the log-normal one, or any other with ``mean`` and
            ``variance``), batch-broadcastable with ``loc``.
        loc: the phase location ``mu`` (radians, any real; read modulo ``2 pi``).
        concentration: the phase concentration ``kappa >= 0`` (0 is a uniform phase).

    ``mean`` is the complex mean ``E[x] = E[r] E[e^(i theta)] = E[r] A(kappa) e^(i mu)`` with
    ``A = I_1 / I_0``; it shrinks towards 0 as the phase gets uncertain, so re-synthesis uses
    ``magnitude_mean`` (``E[r]``) with a phase instead: :meth:`resynthesize` (the model's ``mu`` by default,
    or a given one). ``phase_loc`` / ``phase_concentration`` and ``magnitude_precision``
    (``E[r]^2 / Var r``) feed precision maps; ``variance`` is ``E|x - E x|^2``. ``sample()`` draws complex
    bins (no ``rsample``: the von Mises sampler is a rejection sampler).
    """

    arg_constraints = {"loc": constraints.real, "concentration": constraints.nonnegative}
    has_rsample = False

    def __init__(
        self,
        magnitude: Distribution,
        loc: Tensor | float,
        concentration: Tensor | float,
        validate_args: bool | None = None,
    ):
        if not isinstance(magnitude, Distribution):
            raise ValueError(
                f"magnitude must be a torch Distribution over (0, inf), got {type(magnitude).__name__}"
            )
        if magnitude.support not in (constraints.positive, constraints.nonnegative) or magnitude.event_shape:
            raise ValueError(
                f"magnitude must be a scalar distribution over (0, inf) (support positive/nonnegative), got "
                f"{type(magnitude).__name__} with support {magnitude.support} and event_shape "
                f"{tuple(magnitude.event_shape)}"
            )
        self.loc, self.concentration = broadcast_all(loc, concentration)
        try:
            batch_shape = torch.broadcast_shapes(magnitude.batch_shape, self.loc.shape)
        except RuntimeError:
            raise ValueError(
                f"magnitude batch_shape {tuple(magnitude.batch_shape)} does not broadcast with phase "
                f"parameters of shape {tuple(self.loc.shape)}"
            ) from None
        self.magnitude = magnitude
        super().__init__(batch_shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance=None) -> PolarVonMises:
        new = self._get_checked_instance(PolarVonMises, _instance)
        batch_shape = torch.Size(batch_shape)
        new.magnitude = self.magnitude.expand(batch_shape)
        new.loc, new.concentration = self.loc.expand(batch_shape), self.concentration.expand(batch_shape)
        super(PolarVonMises, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def phase(self) -> StableVonMises:
        return StableVonMises(self.loc, self.concentration, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        self._check(value)
        r = _modulus(value)
        return self.magnitude.log_prob(r) + self.phase.log_prob(torch.angle(value)) - torch.log(r)

    def sample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            r = self.magnitude.sample(sample_shape).expand(shape)
            theta = self.phase.sample(sample_shape).expand(shape)
            return torch.polar(r, theta.to(r.dtype))

    def _log_moments(self) -> tuple[Tensor, Tensor]:
        """``(log E[r], log Var[r])``, in closed form for log-normal and Gamma magnitudes.

        A log-normal's ``E[r] = exp(m + s^2 / 2)`` and ``Var[r] = (exp(s^2) - 1) exp(2m + s^2)`` overflow
        float32 from ``s ~ 9`` even where the quantities derived from them (``E[x]``, the precision) are
        representable, so they are combined in log space.
        """
        d = self.magnitude
        if isinstance(d, LogNormal):
            s2 = d.scale.square()
            return d.loc + 0.5 * s2, _log_expm1(s2) + 2 * d.loc + s2
        if isinstance(d, Gamma):
            log_a, log_b = torch.log(d.concentration), torch.log(d.rate)
            return log_a - log_b, log_a - 2 * log_b
        return torch.log(d.mean), torch.log(d.variance)

    @property
    def magnitude_mean(self) -> Tensor:
        """``E[|x|]`` (clamped at ``finfo.max`` where the true value overflows the dtype)."""
        if isinstance(self.magnitude, (LogNormal, Gamma)):
            return _exp_clamped(self._log_moments()[0]).expand(self.batch_shape)
        return self.magnitude.mean.expand(self.batch_shape)

    @property
    def magnitude_precision(self) -> Tensor:
        """``E[r]^2 / Var[r]``: ``alpha`` for a Gamma magnitude, ``1 / (exp(s^2) - 1)`` for a log-normal."""
        d = self.magnitude
        if isinstance(d, Gamma):
            return d.concentration.expand(self.batch_shape)
        if isinstance(d, LogNormal):
            return torch.expm1(d.scale.square()).reciprocal().expand(self.batch_shape)
        log_mean, log_var = self._log_moments()
        return torch.exp(2 * log_mean - log_var).expand(self.batch_shape)

    @property
    def phase_loc(self) -> Tensor:
        """``mu``, wrapped to ``(-pi, pi]``."""
        return torch.angle(torch.polar(torch.ones_like(self.loc), self.loc)).expand(self.batch_shape)

    @property
    def phase_concentration(self) -> Tensor:
        """``kappa`` (the von Mises precision)."""
        return self.concentration.expand(self.batch_shape)

    @property
    def mean(self) -> Tensor:
        """The complex ``E[x] = E[r] A(kappa) e^(i mu)`` (modulus clamped at ``finfo.max`` on overflow)."""
        log_mean, _ = self._log_moments()
        a = mean_resultant_length(self.concentration)
        # Log space, since E[r] may overflow where E[r] A does not; A = 0 (kappa = 0) is kept out of the log
        # so that no inf meets a zero gradient.
        pos = a > 0
        modulus = torch.where(pos, _exp_clamped(log_mean + torch.log(torch.where(pos, a, 1.0))), 0.0)
        modulus = modulus.expand(self.batch_shape)
        return torch.polar(modulus, self.loc.expand(self.batch_shape).to(modulus.dtype))

    @property
    def variance(self) -> Tensor:
        """``E|x - E x|^2 = Var[r] + E[r]^2 (1 - A^2)`` (clamped at ``finfo.max`` on overflow)."""
        log_mean, log_var = self._log_moments()
        spread = 1 - mean_resultant_length(self.concentration).square()
        pos = spread > 0  # 0 once A(kappa) rounds to 1: keep log(0) out of the graph (NaN gradients)
        log_phase = torch.where(pos, 2 * log_mean + torch.log(torch.where(pos, spread, 1.0)), -math.inf)
        return _exp_clamped(torch.logaddexp(log_var, log_phase)).expand(self.batch_shape)

    def resynthesize(self, phase: Tensor | None = None) -> Tensor:
        """``E[|x|] exp(i phase)``, with the model's phase location ``mu`` when ``phase`` is None."""
        mag = self.magnitude_mean
        phase = self.loc if phase is None else torch.as_tensor(phase, dtype=mag.dtype, device=mag.device)
        return torch.polar(mag, phase.expand_as(mag).to(mag.dtype))


def _broadcast_complex(loc: Tensor | complex, scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """A complex ``loc`` (a real one read as ``loc + 0i``) and a real ``scale`` of matching precision."""
    loc = torch.as_tensor(loc)
    if not loc.is_complex():
        real = loc.to(torch.promote_types(loc.dtype, torch.get_default_dtype()))
        loc = torch.complex(real, torch.zeros_like(real))
    scale = torch.as_tensor(scale, dtype=loc.real.dtype, device=loc.device)
    loc, scale = torch.broadcast_tensors(loc, scale)
    return loc, scale


class _LocScaleComplexDensity(_ComplexDensity):
    """A complex density with a complex location ``loc`` and a real ``scale > 0``, broadcast together."""

    def __init__(self, loc: Tensor | complex, scale: Tensor | float, validate_args: bool | None = None):
        self.loc, self.scale = _broadcast_complex(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance=None) -> _LocScaleComplexDensity:
        cls = type(self)
        new = self._get_checked_instance(cls, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        _ComplexDensity.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


class CircularComplexNormal(_LocScaleComplexDensity):
    """Circular complex Gaussian ``CN(mu, sigma^2)``: ``exp(-|x - mu|^2 / sigma^2) / (pi sigma^2)``.

    Equivalently the real and imaginary parts are independent ``N(Re mu, sigma^2/2)`` and
    ``N(Im mu, sigma^2/2)``, whose product is the density above (that is how it is evaluated); the normaliser
    follows from ``int exp(-r^2 / sigma^2) r dr dtheta = pi sigma^2``.

    Args:
        loc: complex mean ``mu`` (a real tensor is read as ``mu + 0i``).
        scale: ``sigma > 0``, with ``sigma^2 = E|x - mu|^2``.

    ``mean`` is ``mu`` (complex); ``variance`` is ``sigma^2``; ``rsample()`` is reparameterised.
    """

    arg_constraints = {"loc": complex_plane, "scale": constraints.positive}
    has_rsample = True

    def _parts(self) -> Normal:
        return Normal(torch.zeros_like(self.scale), self.scale / math.sqrt(2.0), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        """``-|x - mu|^2 / sigma^2 - log(pi sigma^2)``, dividing by ``sigma`` before squaring (no overflow
        while the result is representable; clamped at ``-finfo.max`` where it is not)."""
        self._check(value)
        d = value - self.loc
        zr, zi = d.real / self.scale, d.imag / self.scale
        return _floor_log_prob(-(zr.square() + zi.square()) - _LOG_PI - 2 * torch.log(self.scale))

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        shape = self._extended_shape(sample_shape)
        parts = self._parts()
        return self.loc + torch.complex(parts.rsample(sample_shape), parts.rsample(sample_shape)).expand(
            shape
        )

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale.square()


class CircularComplexLaplace(_LocScaleComplexDensity):
    """Circularly-symmetric complex Laplace: ``p(x) = exp(-|x - mu| / b) / (2 pi b^2)``.

    *Normaliser.* In polar coordinates about ``mu``,
    ``int_0^(2 pi) int_0^inf exp(-r / b) r dr dtheta = 2 pi * b^2 Gamma(2) = 2 pi b^2``.
    So ``|x - mu| ~ Gamma(2, rate 1/b)`` with a uniform, independent angle (that is how ``rsample`` draws).
    This is not the product of two real Laplace densities (that one is not circular).

    Args:
        loc: complex location ``mu`` (a real tensor is read as ``mu + 0i``).
        scale: ``b > 0``; ``E|x - mu| = 2 b`` and ``E|x - mu|^2 = 6 b^2``.

    ``mean`` is ``mu`` (complex); ``variance`` is ``6 b^2``; ``rsample()`` is reparameterised.
    """

    arg_constraints = {"loc": complex_plane, "scale": constraints.positive}
    has_rsample = True

    def log_prob(self, value: Tensor) -> Tensor:
        self._check(value)
        return -(value - self.loc).abs() / self.scale - _LOG_2PI - 2 * torch.log(self.scale)

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        shape = self._extended_shape(sample_shape)
        radius = Gamma(torch.full_like(self.scale, 2.0), 1 / self.scale, validate_args=False).rsample(
            sample_shape
        )
        theta = 2 * math.pi * torch.rand(shape, dtype=self.scale.dtype, device=self.scale.device)
        return self.loc + torch.polar(radius.expand(shape), theta)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return 6 * self.scale.square()
