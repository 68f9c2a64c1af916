"""Downstream classifiers for the augmentation experiments: an MLP for small or flat inputs (8x8 digits)
and a small CNN for 28x28 / 32x32 images. Both record their constructor arguments (genlib.nn.Configurable)
and expose ``features(x)``, the penultimate representation (for coreset selection / last-layer gradients)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from genlib.nn.config import Configurable
from genlib.nn.mlp import make_activation

__all__ = ["MLPClassifier", "SmallConvNet"]


def _check_dim(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_shape(shape: Sequence[int] | int, name: str) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"{name} must be a positive int or a non-empty tuple of them, got {shape!r}")
    return shape


def _check_dropout(p: float) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {p!r}")
    return float(p)


class MLPClassifier(Configurable, nn.Module):
    """Flatten ``(B, *input_shape)`` -> [Linear, activation, dropout] per hidden width -> Linear logits.

    For 8x8 digits use ``MLPClassifier((1, 8, 8))``; ``forward`` returns logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] | int,
        num_classes: int = 10,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.input_shape = _check_shape(input_shape, "input_shape")
        self.num_classes = _check_dim(num_classes, "num_classes")
        hidden = tuple(_check_dim(h, "every entry of hidden") for h in hidden)
        dropout = _check_dropout(dropout)
        dims = (math.prod(self.input_shape), *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(dims[-1], self.num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.input_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.input_shape))}), got {got}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(B, hidden[-1])`` (the flattened input when ``hidden`` is empty)."""
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallConvNet(Configurable, nn.Module):
    """A compact CNN for 28x28 / 32x32 images: two [conv-BN-ReLU x2, max-pool] stages of ``width`` and
    ``2 * width`` channels, a ``4 * width`` conv, global average pooling, dropout and a linear head.

    ``forward(x)`` with ``x`` of shape ``(B, in_channels, H, W)`` (``H, W >= 8``) returns logits
    ``(B, num_classes)``. BatchNorm statistics see every example of a batch, whatever its loss weight.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.in_channels = _check_dim(in_channels, "in_channels")
        self.num_classes = _check_dim(num_classes, "num_classes")
        w = _check_dim(width, "width")
        dropout = _check_dropout(dropout)

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(self.in_channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(4 * w, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features ``(B, 4 * width)``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {got}")
        if min(x.shape[-2:]) < 8:
            raise ValueError(f"x must be at least 8x8 (two 2x poolings), got {tuple(x.shape[-2:])}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))
