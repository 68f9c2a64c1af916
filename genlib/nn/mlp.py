"""Fully connected encoder / decoder for flat or image data of any fixed shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from genlib.nn.config import Configurable

__all__ = ["ACTIVATIONS", "make_activation", "MLP", "MLPEncoder", "MLPDecoder"]

# Activations by name: names (not classes) keep saved configs plain data.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from its name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def _check_dim(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if len(shape) == 0 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {shape!r}")
    return shape


def _check_hidden(hidden: Sequence[int], name: str = "hidden") -> tuple[int, ...]:
    hidden = tuple(hidden)
    for h in hidden:
        _check_dim(h, f"every entry of {name}")
    return hidden


def _check_input(x: torch.Tensor, name: str, shape: tuple[int, ...], *, allow_complex: bool) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != shape or x.ndim != len(shape) + 1:
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    if x.is_complex() and not allow_complex:
        raise ValueError(f"{name} is complex; pass a feature transform such as features=LogPowerFeatures()")
    if not (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{name} must be a floating-point or complex tensor, got dtype {x.dtype}")


class MLP(Configurable, nn.Module):
    """Linear layers with an activation between them (none after the last): in_dim -> hidden -> out_dim."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden: Sequence[int] = (512, 512), activation: str = "relu"
    ):
        super().__init__()
        dims = (_check_dim(in_dim, "in_dim"), *_check_hidden(hidden), _check_dim(out_dim, "out_dim"))
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPEncoder(Configurable, nn.Module):
    """Gaussian posterior q(z|x) = N(mu, diag exp(logvar)) from a fully connected network.

    Args:
        in_shape: shape of one example, e.g. ``(1, 28, 28)`` for images or ``(F,)`` for spectral frames.
        latent_dim: size of z.
        hidden: widths of the hidden layers.
        activation: name from :data:`ACTIVATIONS`.
        features: optional transform applied first (e.g. :class:`~genlib.nn.LogPowerFeatures` for complex
            STFT frames); it must provide ``output_shape(in_shape)``.

    ``forward(x)`` with ``x`` of shape ``(B, *in_shape)`` returns ``(mu, logvar)``, each ``(B, latent_dim)``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (512, 512),
        activation: str = "relu",
        features: nn.Module | None = None,
    ):
        super().__init__()
        self.in_shape = _check_shape(in_shape, "in_shape")
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        self.features = features
        feat_shape = self.in_shape if features is None else tuple(features.output_shape(self.in_shape))
        self.net = MLP(math.prod(feat_shape), 2 * self.latent_dim, hidden, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(x, "x", self.in_shape, allow_complex=self.features is not None)
        if self.features is not None:
            x = self.features(x)
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class MLPDecoder(Configurable, nn.Module):
    """Fully connected decoder: ``z (B, latent_dim) -> raw (B, n_params, *out_shape)`` for any likelihood.

    ``n_params`` is the number of raw channels per data element the likelihood expects
    (``likelihood.n_params``); the decoder applies no output non-linearity.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        n_params: int = 1,
        hidden: Sequence[int] = (512, 512),
        activation: str = "relu",
    ):
        super().__init__()
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        self.out_shape = _check_shape(out_shape, "out_shape")
        self.n_params = _check_dim(n_params, "n_params")
        self.net = MLP(self.latent_dim, self.n_params * math.prod(self.out_shape), hidden, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_input(z, "z", (self.latent_dim,), allow_complex=False)
        return self.net(z).view(z.shape[0], self.n_params, *self.out_shape)
