"""Encoders and decoders that take shapes, not datasets.

Contracts (see DESIGN.md): an encoder maps ``x`` to a Gaussian posterior ``(mu, logvar)``, each
``(B, latent_dim)`` (or ``(B, latent_dim, T)`` for per-frame sequence models); a decoder maps ``z`` to raw
likelihood parameters ``(B, n_params, *data_shape)``, where ``n_params`` is the likelihood's. Every network
records its constructor arguments (:class:`~genlib.nn.config.Configurable`) so a saved model rebuilds itself.

- :class:`MLPEncoder`, :class:`MLPDecoder`: fully connected, any data shape
- :class:`WideResNetEncoder`, :class:`DCGANDecoder`: images (28x28 and 32x32)
- :class:`Conv1dFrameEncoder`, :class:`Conv1dFrameDecoder`, :class:`GRULatent`: STFT frame sequences
- :class:`LogPowerFeatures`: complex spectra -> log-power (+ phase) features, usable before any encoder
"""

from genlib.nn.audio import Conv1dFrameDecoder, Conv1dFrameEncoder, GRULatent
from genlib.nn.config import Configurable, from_spec, get_config, to_spec
from genlib.nn.conv import DCGANDecoder, WideResNetEncoder
from genlib.nn.features import LogPowerFeatures
from genlib.nn.mlp import ACTIVATIONS, MLP, MLPDecoder, MLPEncoder, make_activation

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "Configurable",
    "Conv1dFrameDecoder",
    "Conv1dFrameEncoder",
    "DCGANDecoder",
    "GRULatent",
    "LogPowerFeatures",
    "MLPDecoder",
    "MLPEncoder",
    "WideResNetEncoder",
    "from_spec",
    "get_config",
    "make_activation",
    "to_spec",
]
