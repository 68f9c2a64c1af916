"""genlib: generative modeling with VAEs, pluggable likelihoods, latent energy-based priors and PSGD.

Sub-packages (each importable on its own; none imports "upward"):

- :mod:`genlib.optim`        PSGD optimizers (Kron, LRA, XMat, Diag, Dense), one fitting core
- :mod:`genlib.likelihoods`  decoder likelihoods (Gaussian, Bernoulli, Gamma, Itakura-Saito, von Mises, ...)
- :mod:`genlib.nn`           encoders / decoders (MLP, conv, 1-D conv over STFT frames, GRU/BiGRU)
- :mod:`genlib.priors`       standard normal and latent energy-based priors
- :mod:`genlib.sampling`     Langevin samplers (plain, MALA, PSGD-preconditioned)
- :mod:`genlib.models`       the VAE
- :mod:`genlib.select`       entropy filter and coreset selectors (CRAIG, AdaCore, random, pseudo-labels)
- :mod:`genlib.train`        semi-supervised trainer, checkpoints
- :mod:`genlib.data`         dataset loaders (digits, SVHN, speech) and STFT features
- :mod:`genlib.metrics`      speech and distribution metrics (PESQ, STOI, LSD, FAD)
- :mod:`genlib.viz`          figures: image grids, spectrograms, loss curves, precision maps

Validation of tensor values on hot paths (ELBO, likelihoods, EBM energy, Langevin steps) is on by default;
``genlib.set_validate_args(False)`` or ``with genlib.validate_args(False):`` turns it off for speed and
graph-break-free ``torch.compile`` (each such class also takes ``validate_args=`` for itself).
"""

__version__ = "0.1.0"

# The validation switch lives in genlib.utils (it needs torch); it is re-exported lazily so that importing
# genlib alone (e.g. the CLI's argument parsing) stays free of torch.
_FROM_UTILS = ("set_validate_args", "validation_enabled", "validate_args")
__all__ = ["__version__", *_FROM_UTILS]


def __getattr__(name: str):
    if name in _FROM_UTILS:
        from genlib import utils

        return getattr(utils, name)
    raise AttributeError(f"module 'genlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FROM_UTILS))
