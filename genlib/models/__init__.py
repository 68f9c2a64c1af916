"""Generative models: the :class:`VAE` (encoder + decoder + likelihood + prior) and its :class:`ELBOTerms`."""

from genlib.models.vae import VAE, ELBOTerms

__all__ = ["ELBOTerms", "VAE"]
