"""Variational autoencoder with pluggable encoder, decoder, likelihood and prior (Kingma & Welling, 2014)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributions import Distribution

from genlib.nn.config import Configurable, from_spec, to_spec
from genlib.priors.base import Prior, StandardNormal, gaussian_log_prob
from genlib.utils import atomic_save, check_positive, check_tensor, load_checkpoint, resolve_validate_args

__all__ = ["ELBOTerms", "VAE"]

_FORMAT = "genlib.models.VAE/1"


class ELBOTerms(NamedTuple):
    """Per-example ELBO terms; ``loss`` is what to minimise."""

    reconstruction: torch.Tensor  # (B,) E_q log p(x|z), one reparameterised sample
    kl: torch.Tensor  # (B,) KL(q(z|x) || p(z)) as given by the prior
    elbo: torch.Tensor  # (B,) reconstruction - beta * kl
    loss: torch.Tensor  # () -mean(elbo)


def _sum_event(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _get_latent_dim(module: nn.Module) -> int | None:
    dim = getattr(module, "latent_dim", None)
    return dim if isinstance(dim, int) else None


class VAE(Configurable, nn.Module):
    """``x -> encoder -> q(z|x) = N(mu, diag exp(logvar)) -> z -> decoder -> raw -> likelihood -> p(x|z)``.

    Args:
        encoder: ``encoder(x) -> (mu, logvar)``, each ``(B, latent_dim)`` or ``(B, latent_dim, T)``.
        decoder: ``decoder(z) -> raw`` of shape ``(B, likelihood.n_params, *data_shape)``.
        likelihood: a :class:`genlib.likelihoods.Likelihood` (``n_params``, ``log_prob(x, raw)`` element-wise,
            ``likelihood(raw)`` a ``torch.distributions.Distribution``).
        prior: a :class:`~genlib.priors.Prior`; ``None`` means :class:`~genlib.priors.StandardNormal`.
        beta: weight of the KL term (beta-VAE); 1 gives the ELBO. May be changed during training (annealing).
        validate_args: check the values of ``x`` (NaN / Inf) in :meth:`elbo` and :meth:`encode`; ``None``
            (default) follows :func:`genlib.set_validate_args`. Shape and dtype checks always run. The
            likelihood and prior have their own setting: to compile the ELBO without graph breaks, switch
            all off at once with ``genlib.set_validate_args(False)``.

    All terms are summed over every non-batch dim (data elements, latent units and frames), so the ELBO is a
    per-example log-likelihood bound in nats. Inference helpers (:meth:`reconstruct`, :meth:`sample`,
    :meth:`log_likelihood`) run without gradients; call ``.eval()`` first for networks with batch norm.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        prior: Prior | None = None,
        beta: float = 1.0,
        validate_args: bool | None = None,
    ):
        super().__init__()
        resolve_validate_args(validate_args)  # reject a non-bool early, naming the argument
        for name, m in (("encoder", encoder), ("decoder", decoder), ("likelihood", likelihood)):
            if not isinstance(m, nn.Module):
                raise ValueError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
        lik_params = getattr(likelihood, "n_params", None)
        if not isinstance(lik_params, int):
            raise ValueError("likelihood must define an int n_params (raw decoder channels per data element)")
        dec_params = getattr(decoder, "n_params", None)
        if dec_params is not None and dec_params != lik_params:
            raise ValueError(
                f"decoder.n_params ({dec_params}) must equal likelihood.n_params ({lik_params}) of "
                f"{type(likelihood).__name__}: build the decoder with n_params={lik_params}"
            )
        dims = {n: _get_latent_dim(m) for n, m in (("encoder", encoder), ("decoder", decoder))}
        if prior is None:
            latent_dim = dims["encoder"] or dims["decoder"]
            if latent_dim is None:
                raise ValueError(
                    "prior=None needs encoder.latent_dim or decoder.latent_dim to build StandardNormal"
                )
            prior = StandardNormal(latent_dim)
        elif not isinstance(prior, nn.Module) or not hasattr(prior, "kl"):
            raise ValueError(f"prior must be a genlib.priors.Prior, got {type(prior).__name__}")
        dims["prior"] = _get_latent_dim(prior)
        known = {n: d for n, d in dims.items() if d is not None}
        if len(set(known.values())) > 1:
            raise ValueError(f"latent_dim differs between parts: {known}")
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.prior = prior
        self.latent_dim = next(iter(known.values()), None)
        self.beta = check_positive(beta, "beta", allow_zero=True)
        self.validate_args = validate_args

    @property
    def validating(self) -> bool:
        """Whether this VAE checks the values of ``x`` now (its ``validate_args``, else the global switch)."""
        return resolve_validate_args(self.validate_args)

    # -- model -------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)`` of q(z|x)."""
        check_tensor(x, "x", finite=self.validating)
        out = self.encoder(x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and out[0].shape == out[1].shape):
            raise RuntimeError("encoder must return a pair (mu, logvar) of tensors with the same shape")
        if out[0].shape[0] != x.shape[0]:
            raise RuntimeError(f"encoder changed the batch size: {x.shape[0]} -> {out[0].shape[0]}")
        return out[0], out[1]

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z) as a ``torch.distributions.Distribution`` (element-wise ``log_prob``)."""
        return self.likelihood(self.decoder(z))

    def _log_px_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return _sum_event(self.likelihood.log_prob(x, self.decoder(z)))

    def _check_batch(self, x: torch.Tensor) -> None:
        """Clear errors for an empty batch and for data whose precision differs from the model's."""
        if not isinstance(x, torch.Tensor):
            return  # encode's check_tensor names the problem
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"x must hold at least one example (shape (B, ...)), got {tuple(x.shape)}")
        if x.is_floating_point() or x.is_complex():
            x_dtype = x.real.dtype  # complex64 STFT frames pair with a float32 model
            model_dtypes = sorted({str(p.dtype) for p in self.parameters() if p.is_floating_point()})
            if model_dtypes and str(x_dtype) not in model_dtypes:
                raise ValueError(
                    f"x has dtype {x.dtype} but the model's parameters are {', '.join(model_dtypes)}: cast x "
                    f"(x.to({model_dtypes[0]})) or the whole model (model.to({x_dtype}))"
                )

    def elbo(self, x: torch.Tensor) -> ELBOTerms:
        """One-sample reparameterised ELBO terms per example; minimise ``.loss``.

        Raises ``ValueError`` for an empty batch (the mean loss would be NaN), when ``x``'s precision
        differs from the model's (a float64 batch needs a float64 model, ``model.double()``) and, while
        validation is on (``validate_args``), when ``x`` or the decoder's output holds NaN / Inf.
        """
        self._check_batch(x)
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = self._log_px_z(x, z)
        kl = self.prior.kl(mu, logvar, z)
        elbo = rec - self.beta * kl
        return ELBOTerms(rec, kl, elbo, -elbo.mean())

    forward = elbo

    # -- inference ---------------------------------------------------------------------------------------
    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The latent classifier's logits at the posterior mean, ``F(mu(x))``, shape ``(B, n_classes)``.

        Needs a prior with a latent classifier (:class:`~genlib.priors.LatentEBMPrior`); differentiable (wrap
        in ``torch.no_grad()`` and call ``.eval()`` first for inference with batch-norm encoders).
        """
        logits = getattr(self.prior, "logits", None)
        if not callable(logits):
            raise ValueError(
                f"classify needs a prior with a latent classifier (prior.logits(z), e.g. LatentEBMPrior); "
                f"this VAE's prior is {type(self.prior).__name__}"
            )
        self._check_batch(x)
        mu, _ = self.encode(x)
        return logits(mu)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``softmax F(mu(x))``, shape ``(B, n_classes)``; ``.argmax(-1)`` gives labels.

        The same as ``vae.prior.classify(vae.encode(x)[0])``; see :meth:`class_logits` for the logits and
        :func:`genlib.train.latent_accuracy` for the accuracy on a labelled set.
        """
        return self.class_logits(x).softmax(-1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = mu(x)) (the decoded posterior mean)."""
        mu, _ = self.encode(x)
        return self.decode(mu).mean

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, **prior_kwargs: Any) -> torch.Tensor:
        """Decode ``n`` prior draws: the mean of p(x|z) (``mean=True``) or a draw from it.

        ``prior_kwargs`` go to ``prior.sample`` (e.g. ``length=T`` for sequence latents, ``y=`` for a
        class-conditional prior).
        """
        z = self.prior.sample(n, **prior_kwargs)
        dist = self.decode(z)
        return dist.mean if mean else dist.sample()

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, n_importance: int = 1000, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) per example, ``(B,)`` (Burda et al. 2016).

        ``log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x)``, ``z_k ~ q(z|x)``: a lower bound in expectation that
        rises to log p(x) as ``K = n_importance`` grows (K = 1 is the ELBO with beta = 1). The K samples are
        processed ``chunk_size`` at a time (default: about 8192 decoded examples per chunk) and combined with
        a running logsumexp, so memory does not grow with K. With an unnormalised prior (latent EBM) the
        estimate is off by that prior's constant log-normaliser.
        """
        if isinstance(n_importance, bool) or not isinstance(n_importance, int) or n_importance <= 0:
            raise ValueError(f"n_importance must be a positive int, got {n_importance!r}")
        mu, logvar = self.encode(x)
        b = x.shape[0]
        if chunk_size is None:
            chunk_size = max(1, 8192 // b)
        elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        std = torch.exp(0.5 * logvar)
        total = torch.full((b,), -math.inf, device=mu.device, dtype=mu.dtype)
        for start in range(0, n_importance, chunk_size):
            k = min(chunk_size, n_importance - start)
            z = (mu + std * torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype)).flatten(0, 1)
            xk = x.expand(k, *x.shape).flatten(0, 1)
            log_q = gaussian_log_prob(
                z, mu.expand(k, *mu.shape).flatten(0, 1), logvar.expand(k, *mu.shape).flatten(0, 1)
            )
            log_w = self._log_px_z(xk, z) + self.prior.log_prob(z) - log_q
            total = torch.logaddexp(total, torch.logsumexp(log_w.view(k, b), dim=0))
        return total - math.log(n_importance)

    # -- persistence -------------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        # the live values (beta may have been annealed, validate_args switched)
        config.update(prior=self.prior, beta=self.beta, validate_args=self.validate_args)
        return config

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write the architecture (constructor configs of every part) and weights, atomically.

        ``extra`` (e.g. ``epoch=...``, metrics) is stored alongside and readable with
        ``genlib.utils.load_checkpoint(path)["extra"]``.
        """
        ckpt = {
            "format": _FORMAT,
            "spec": to_spec(self),
            "state_dict": self.state_dict(),
            "training": self.training,
            "extra": extra,
        }
        return atomic_save(ckpt, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VAE:
        """Rebuild a model written by :meth:`save` (no architecture arguments needed) on ``map_location``."""
        ckpt = load_checkpoint(path, map_location=map_location)
        if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a genlib VAE checkpoint (expected format {_FORMAT!r})")
        model = from_spec(ckpt["spec"])
        if not isinstance(model, cls):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        model.load_state_dict(ckpt["state_dict"])
        return model.to(map_location).train(ckpt["training"])
