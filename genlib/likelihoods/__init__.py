"""Decoder likelihoods ``p(x | z)``: map a decoder's raw outputs to a ``torch.distributions`` object.

A decoder outputs ``raw`` of shape ``(B, n_params, *data_shape)``; a likelihood turns it into an element-wise
distribution (``batch_shape == (B, *data_shape)``):

    >>> lik = GammaVonMises()                  # n_params == 4
    >>> dist = lik(raw)                        # PolarVonMises over each STFT bin
    >>> lik.log_prob(x, raw)                   # (B, F, T), sum for the ELBO's reconstruction term
    >>> dist.magnitude_mean, dist.phase_concentration   # for re-synthesis and precision maps

Likelihoods: :class:`Gaussian` (fixed, learned or decoder sigma), :class:`Bernoulli` (binary or grey-scale
images) and, for speech spectra (complex STFT bins; magnitude-only models also take magnitudes),
:class:`Gamma`, :class:`ItakuraSaito`, :class:`LogNormalVonMises`, :class:`GammaVonMises`,
:class:`ComplexNormal`, :class:`ComplexLaplace`. Their distributions, with the derivation of each density,
live in :mod:`genlib.likelihoods.distributions`.

Every distribution here is also a pyro distribution (``.to_event``, ``.expand``, ``.mask``): a decoder
likelihood is the observation site of a pyro model, ``pyro.sample("x", lik(raw).to_event(3), obs=x)`` inside
``pyro.plate`` (``vae.decode(z)`` likewise), so a genlib VAE trains under pyro's SVI as a model / guide pair.

Adding your own likelihood takes a few lines: subclass :class:`Likelihood`, set ``n_params`` and return any
``torch.distributions.Distribution`` from ``distribution(raw)`` (a ``pyro.distributions`` one to use it in
pyro); map unconstrained channels to constrained parameters with :func:`positive` (or softplus, sigmoid,
...). ``lik(raw)`` validates ``raw`` first (its values only while validation is on: ``validate_args=``,
:func:`genlib.set_validate_args`), and constructor arguments are recorded for checkpoints automatically:

    >>> class Poisson(Likelihood):
    ...     n_params = 1
    ...     def distribution(self, raw):
    ...         return torch.distributions.Poisson(positive(raw[:, 0]))

    >>> class StudentT(Likelihood):
    ...     n_params = 2
    ...     def __init__(self, df: float = 4.0):
    ...         super().__init__()
    ...         self.df = df
    ...     def distribution(self, raw):
    ...         return torch.distributions.StudentT(self.df, raw[:, 0], positive(raw[:, 1], 1e-3))
"""

from genlib.likelihoods.base import Likelihood, positive
from genlib.likelihoods.basic import Bernoulli, Gaussian
from genlib.likelihoods.distributions import (
    CircularComplexLaplace,
    CircularComplexNormal,
    GammaMagnitude,
    ItakuraSaitoMagnitude,
    PolarVonMises,
    StableVonMises,
    UnitIntervalBernoulli,
)
from genlib.likelihoods.spectral import (
    ComplexLaplace,
    ComplexNormal,
    Gamma,
    GammaVonMises,
    ItakuraSaito,
    LogNormalVonMises,
)

__all__ = [
    "Likelihood",
    "positive",
    "Gaussian",
    "Bernoulli",
    "Gamma",
    "ItakuraSaito",
    "LogNormalVonMises",
    "GammaVonMises",
    "ComplexNormal",
    "ComplexLaplace",
    "UnitIntervalBernoulli",
    "StableVonMises",
    "GammaMagnitude",
    "ItakuraSaitoMagnitude",
    "PolarVonMises",
    "CircularComplexNormal",
    "CircularComplexLaplace",
]
