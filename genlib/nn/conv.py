"""Convolutional image networks: a Wide ResNet encoder and a DCGAN-style deconvolutional decoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from genlib.nn.config import Configurable
from genlib.nn.mlp import _check_dim, _check_input, make_activation

__all__ = ["WideResNetEncoder", "DCGANDecoder"]


class _WideBlock(nn.Module):
    """Pre-activation residual block (Zagoruyko & Komodakis 2016): BN-act-conv3x3, BN-act-dropout-conv3x3."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float, activation: str):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        # A 1x1 projection only where the residual changes width or resolution.
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if (c_in != c_out or stride != 1) else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        y = self.conv2(self.drop(self.act2(self.bn2(self.conv1(o)))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNetEncoder(Configurable, nn.Module):
    """Wide ResNet-``depth``-``widen_factor`` encoder giving a Gaussian posterior (mu, logvar).

    Three groups of ``(depth - 4) / 6`` pre-activation blocks with widths ``16k, 32k, 64k`` at strides
    1, 2, 2, then BN-act, global average pooling and a linear head to ``2 * latent_dim``. WRN-28-2 is the
    default (the semi-supervised-learning standard for 32x32 images); ``depth=10`` gives one block per
    group for quick runs. Global pooling makes any ``image_size`` work (28x28 MNIST, 32x32 SVHN/CIFAR);
    ``image_size`` is kept to validate inputs.

    ``forward(x)`` with ``x`` of shape ``(B, in_channels, image_size, image_size)`` returns
    ``(mu, logvar)``, each ``(B, latent_dim)``; :meth:`embed` gives the pooled ``(B, feature_dim)`` features.
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        depth: int = 28,
        widen_factor: int = 2,
        image_size: int = 32,
        dropout: float = 0.0,
        activation: str = "relu",
    ):
        super().__init__()
        self.in_channels = _check_dim(in_channels, "in_channels")
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth!r}")
        _check_dim(widen_factor, "widen_factor")
        self.image_size = _check_dim(image_size, "image_size")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)]
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                c_in = widths[g] if i == 0 else widths[g + 1]
                layers.append(_WideBlock(c_in, widths[g + 1], stride if i == 0 else 1, dropout, activation))
        layers += [
            nn.BatchNorm2d(widths[-1]),
            make_activation(activation),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        self.body = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
        self.head = nn.Linear(self.feature_dim, 2 * self.latent_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` before the Gaussian head."""
        _check_input(x, "x", (self.in_channels, self.image_size, self.image_size), allow_complex=False)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.embed(x)).chunk(2, dim=-1)
        return mu, logvar


class DCGANDecoder(Configurable, nn.Module):
    """DCGAN generator (Radford et al. 2016) as a likelihood-agnostic decoder.

    ``z (B, latent_dim)`` -> ConvTranspose 4x4 (1 -> 4x4) -> [ConvTranspose stride 2, BN, ReLU] x (m - 1)
    -> ConvTranspose stride 2 to ``n_params * out_channels`` channels, where ``4 * 2**m`` is the smallest such
    size >= ``image_size`` (m = 3 for 32x32: four layers). Other sizes (28x28 MNIST) are centre-cropped
    from the next power-of-two canvas, which keeps the layer arithmetic of the standard architecture.
    Output: raw parameters ``(B, n_params, out_channels, image_size, image_size)``; no output non-linearity.
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        n_params: int = 1,
        image_size: int = 32,
        base_channels: int = 64,
    ):
        super().__init__()
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        self.out_channels = _check_dim(out_channels, "out_channels")
        self.n_params = _check_dim(n_params, "n_params")
        self.image_size = _check_dim(image_size, "image_size")
        _check_dim(base_channels, "base_channels")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        n_up = math.ceil(math.log2(image_size / 4))
        self.canvas = 4 * 2**n_up
        ch = base_channels * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
        ]
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(),
            ]
            ch //= 2
        layers.append(nn.ConvTranspose2d(ch, n_params * out_channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_input(z, "z", (self.latent_dim,), allow_complex=False)
        out = self.net(z[:, :, None, None])
        off = (self.canvas - self.image_size) // 2
        out = out[:, :, off : off + self.image_size, off : off + self.image_size]
        return out.reshape(z.shape[0], self.n_params, self.out_channels, self.image_size, self.image_size)
