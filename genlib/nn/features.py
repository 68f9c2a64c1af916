"""Feature transforms applied inside encoders before the first layer (STFT spectra -> real features)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genlib.nn.config import Configurable

__all__ = ["LogPowerFeatures"]


class LogPowerFeatures(Configurable, nn.Module):
    """Log-power ``log(|x|^2 + eps)`` of a spectrum, optionally followed by the phase as ``cos, sin``.

    Input: complex spectra (or real magnitudes) of shape ``(B, F, *rest)`` (single frames ``(B, F)`` or
    sequences ``(B, F, T)``). Output: real ``(B, k*F, *rest)`` with ``k = 3`` when ``with_phase`` (features
    stacked as ``[log-power, cos phase, sin phase]`` along dim 1) and ``k = 1`` otherwise. Phase is encoded as
    cos/sin rather than an angle so the features are continuous across the ±π wrap.
    """

    def __init__(self, with_phase: bool = False, eps: float = 1e-8):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.with_phase = bool(with_phase)
        self.eps = float(eps)

    @property
    def multiplier(self) -> int:
        """Output features per input frequency bin."""
        return 3 if self.with_phase else 1

    def output_shape(self, in_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one example's features given one example's input shape ``(F, *rest)``."""
        in_shape = tuple(in_shape)
        return (self.multiplier * in_shape[0], *in_shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise ValueError(
                f"x must be a spectrum tensor of shape (B, F, ...), got {getattr(x, 'shape', x)!r}"
            )
        if not x.is_complex() and bool((x < 0).any()):
            raise ValueError(
                "x is real with negative entries: pass complex spectra or non-negative magnitudes"
            )
        power = x.real.square() + x.imag.square() if x.is_complex() else x.square()
        feats = [torch.log(power + self.eps)]
        if self.with_phase:
            angle = torch.angle(x) if x.is_complex() else torch.zeros_like(power)
            feats += [torch.cos(angle), torch.sin(angle)]
        return torch.cat(feats, dim=1)
