"""Sequence networks over STFT frames: 1-D convolutions along time, optional (Bi)GRU over latent sequences.

Spectra are ``(B, F, T)`` (frequency bins as channels, frames along time); latents are ``(B, latent_dim, T)``,
one latent vector per frame. These give the dissertation's ch. 6 rows: ``Conv1dFrameEncoder/Decoder``
("Gamma Conv1d"), with ``temporal="gru"`` ("Conv1d+GRU") or ``temporal="bigru"`` ("Conv1d+BiGRU"); the
single-frame "FC" row is :class:`~genlib.nn.MLPEncoder` with :class:`~genlib.nn.LogPowerFeatures`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genlib.nn.config import Configurable
from genlib.nn.features import LogPowerFeatures
from genlib.nn.mlp import _check_dim, _check_hidden, make_activation

__all__ = ["GRULatent", "Conv1dFrameEncoder", "Conv1dFrameDecoder"]

_TEMPORAL = (None, "gru", "bigru")


def _check_sequence(x: torch.Tensor, name: str, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, T) ({what}), got {tuple(x.shape)}")


def _conv_stack(c_in: int, hidden: tuple[int, ...], kernel_size: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Conv1d(c_in, h, kernel_size, padding=kernel_size // 2), make_activation(activation)]
        c_in = h
    return nn.Sequential(*layers)


def _check_kernel(kernel_size: int) -> int:
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"kernel_size must be a positive odd int ('same' padding), got {kernel_size!r}")
    return kernel_size


def _temporal(temporal: str | None, c_in: int, gru_hidden: int) -> GRULatent | None:
    if temporal not in _TEMPORAL:
        raise ValueError(f"temporal must be one of {_TEMPORAL}, got {temporal!r}")
    if temporal is None:
        return None
    return GRULatent(c_in, gru_hidden, bidirectional=temporal == "bigru")


class GRULatent(Configurable, nn.Module):
    """A (Bi)GRU over a sequence in channel-first layout: ``(B, in_channels, T) -> (B, out_channels, T)``.

    ``out_channels = hidden_size`` (or ``2 * hidden_size`` when ``bidirectional``). A unidirectional GRU is
    causal (frame t sees frames <= t); the bidirectional one sees the whole utterance.
    """

    def __init__(
        self, in_channels: int, hidden_size: int = 128, bidirectional: bool = False, num_layers: int = 1
    ):
        super().__init__()
        self.in_channels = _check_dim(in_channels, "in_channels")
        _check_dim(hidden_size, "hidden_size")
        _check_dim(num_layers, "num_layers")
        self.out_channels = hidden_size * (2 if bidirectional else 1)
        self.gru = nn.GRU(in_channels, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, "x", self.in_channels, "channels first")
        out, _ = self.gru(x.transpose(1, 2))
        return out.transpose(1, 2)


class Conv1dFrameEncoder(Configurable, nn.Module):
    """Per-frame Gaussian posterior for spectrogram sequences.

    ``x`` (complex ``(B, n_freq, T)``, or real magnitudes) -> log-power features (``+ cos/sin`` phase when
    ``with_phase``) -> 1-D convolutions over time (``hidden`` channels, odd ``kernel_size``, 'same' padding)
    -> optional GRU / BiGRU (``temporal``) -> 1x1 convolution -> ``(mu, logvar)``, each
    ``(B, latent_dim, T)``.
    """

    def __init__(
        self,
        n_freq: int,
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        kernel_size: int = 3,
        with_phase: bool = False,
        eps: float = 1e-8,
        temporal: str | None = None,
        gru_hidden: int = 128,
        activation: str = "relu",
    ):
        super().__init__()
        self.n_freq = _check_dim(n_freq, "n_freq")
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        hidden = _check_hidden(hidden)
        _check_kernel(kernel_size)
        self.features = LogPowerFeatures(with_phase=with_phase, eps=eps)
        c = self.features.multiplier * n_freq
        self.conv = _conv_stack(c, hidden, kernel_size, activation)
        c = hidden[-1] if hidden else c
        self.temporal = _temporal(temporal, c, gru_hidden)
        c = self.temporal.out_channels if self.temporal is not None else c
        self.head = nn.Conv1d(c, 2 * self.latent_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_sequence(x, "x", self.n_freq, "spectra: frequency bins by frames")
        h = self.conv(self.features(x))
        if self.temporal is not None:
            h = self.temporal(h)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar


class Conv1dFrameDecoder(Configurable, nn.Module):
    """Decoder for spectrogram sequences: ``z (B, latent_dim, T) -> raw (B, n_params, n_freq, T)``.

    Optional GRU / BiGRU over the latent sequence first (``temporal``), then 1-D convolutions over time and
    a 1x1 convolution to ``n_params * n_freq`` channels. Likelihood-agnostic: no output non-linearity.
    """

    def __init__(
        self,
        latent_dim: int,
        n_freq: int,
        n_params: int = 1,
        hidden: Sequence[int] = (256, 256),
        kernel_size: int = 3,
        temporal: str | None = None,
        gru_hidden: int = 128,
        activation: str = "relu",
    ):
        super().__init__()
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        self.n_freq = _check_dim(n_freq, "n_freq")
        self.n_params = _check_dim(n_params, "n_params")
        hidden = _check_hidden(hidden)
        _check_kernel(kernel_size)
        self.temporal = _temporal(temporal, latent_dim, gru_hidden)
        c = self.temporal.out_channels if self.temporal is not None else latent_dim
        self.conv = _conv_stack(c, hidden, kernel_size, activation)
        c = hidden[-1] if hidden else c
        self.head = nn.Conv1d(c, self.n_params * self.n_freq, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_sequence(z, "z", self.latent_dim, "latent sequence")
        h = self.temporal(z) if self.temporal is not None else z
        out = self.head(self.conv(h))
        return out.view(z.shape[0], self.n_params, self.n_freq, z.shape[-1])
