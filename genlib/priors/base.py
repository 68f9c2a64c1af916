"""Latent priors p(z): the base interface the VAE uses and the standard normal."""

from __future__ import annotations

import math

import torch
from torch import nn

from genlib.nn.config import Configurable

__all__ = ["Prior", "StandardNormal", "gaussian_log_prob"]

_LOG_2PI = math.log(2 * math.pi)


def _sum_event(x: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dim: (B, ...) -> (B,)."""
    return x.flatten(1).sum(1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) summed over non-batch dims, ``(B,)``.

    Written out (rather than ``Normal(mu, std).log_prob``) so it takes ``logvar`` directly without an
    ``exp`` / ``log`` round trip, which loses precision for very confident posteriors.
    """
    return -0.5 * _sum_event(_LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar))


class Prior(Configurable, nn.Module):
    """Base class of latent priors.

    Subclasses set ``latent_dim`` and implement ``log_prob(z) -> (B,)`` (summed over all non-batch dims of
    ``z``, which is ``(B, latent_dim)`` or ``(B, latent_dim, T)``; state in the docstring whether it is
    normalised) and ``sample(n, ...)``. The default :meth:`kl` is the single-sample Monte Carlo estimate
    ``log q(z|x) - log p(z)`` at the reparameterised ``z``; override it where an analytic form exists.
    """

    latent_dim: int

    def __init__(self, latent_dim: int):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        self.latent_dim = latent_dim

    def _check_latent(self, z: torch.Tensor, name: str = "z") -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim < 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(
                f"{name} must have shape (B, {self.latent_dim}) or (B, {self.latent_dim}, T), got {shape}"
            )
        if not z.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) per example, ``(B,)``."""
        raise NotImplementedError

    def sample(self, n: int, **kwargs) -> torch.Tensor:
        """``n`` draws from the prior, ``(n, latent_dim, ...)``."""
        raise NotImplementedError

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-example KL(q(z|x) || p(z)), ``(B,)``; here the one-sample estimate log q(z|x) - log p(z)."""
        self._check_latent(mu, "mu")
        if logvar.shape != mu.shape or z.shape != mu.shape:
            raise ValueError(
                "mu, logvar and z must share a shape, got "
                f"{tuple(mu.shape)}, {tuple(logvar.shape)}, {tuple(z.shape)}"
            )
        return gaussian_log_prob(z, mu, logvar) - self.log_prob(z)


class StandardNormal(Prior):
    """p(z) = N(0, I) (normalised), over ``(latent_dim,)`` or ``(latent_dim, T)`` latents, with analytic KL.

    ``sample(n, length=None)`` returns ``(n, latent_dim)``, or ``(n, latent_dim, length)`` for sequences.
    """

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # A buffer only to follow the module's device and dtype in sample().
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        self._check_latent(z)
        return -0.5 * _sum_event(z.square() + _LOG_2PI)

    def sample(
        self, n: int, length: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        shape = (n, self.latent_dim)
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
                raise ValueError(f"length must be a positive int or None, got {length!r}")
            shape += (length,)
        a = self._anchor
        if generator is not None and generator.device.type != a.device.type:
            return torch.randn(shape, generator=generator, dtype=a.dtype).to(a.device)
        return torch.randn(shape, generator=generator, device=a.device, dtype=a.dtype)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Analytic KL(N(mu, exp(logvar)) || N(0, I)) = ½ Σ (mu² + e^logvar − 1 − logvar); ``z`` is unused."""
        self._check_latent(mu, "mu")
        if logvar.shape != mu.shape:
            raise ValueError(f"logvar must have mu's shape {tuple(mu.shape)}, got {tuple(logvar.shape)}")
        return 0.5 * _sum_event(mu.square() + torch.exp(logvar) - 1.0 - logvar)
