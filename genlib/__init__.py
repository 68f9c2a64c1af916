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
"""

__version__ = "0.1.0"
