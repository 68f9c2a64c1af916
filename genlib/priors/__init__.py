"""Latent priors p(z) for the VAE: the :class:`Prior` interface, :class:`StandardNormal`
and the latent energy-based :class:`LatentEBMPrior`."""

from genlib.priors.base import Prior, StandardNormal
from genlib.priors.ebm import LatentEBMPrior

__all__ = ["LatentEBMPrior", "Prior", "StandardNormal"]
