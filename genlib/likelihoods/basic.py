"""Likelihoods for real-valued data and images: :class:`Gaussian` and :class:`Bernoulli`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlib.likelihoods.base import Likelihood, positive
from genlib.likelihoods.distributions import StableNormal, UnitIntervalBernoulli
from genlib.utils import check_positive

__all__ = ["Gaussian", "Bernoulli"]


class Gaussian(Likelihood):
    """``x ~ Normal(mu, sigma)`` element-wise, ``mu = raw[:, 0]``; three ways to get ``sigma``.

    Args:
        sigma: a positive float (fixed ``sigma``; ``n_params = 1``); ``"learned"`` (a learned log-sigma
            ``nn.Parameter`` shared across the batch; ``n_params = 1``); or ``"decoder"`` (``sigma`` from a
            second decoder channel, ``raw[:, 1]``; ``n_params = 2``).
        sigma_shape: shape of the learned parameter: ``()`` (one scalar, the default), the data shape
            (per-element) or anything that broadcasts to it, e.g. ``(C, 1, 1)`` for per-channel.
        init_sigma: initial value of a learned ``sigma``.
        min_sigma: floor on learned / decoder ``sigma`` (a learned per-pixel ``sigma`` on a constant pixel
            would otherwise shrink to 0 and the likelihood diverge).
        validate_args: check tensor values (see :class:`~genlib.likelihoods.Likelihood`); ``None`` follows
            :func:`genlib.set_validate_args`.

    Learned and decoder ``sigma`` are ``min_sigma + positive(s)`` with ``s`` the parameter or channel
    (``positive`` is ``exp`` with an overflow-safe linear tail). The distribution is a
    ``torch.distributions.Normal`` (:class:`~genlib.likelihoods.distributions.StableNormal`, which squares
    ``(x - mu) / sigma`` so large residuals under a large ``sigma`` stay finite); ``mean`` is ``mu``.
    """

    def __init__(
        self,
        sigma: float | str = 1.0,
        *,
        sigma_shape: tuple[int, ...] = (),
        init_sigma: float = 1.0,
        min_sigma: float = 1e-3,
        validate_args: bool | None = None,
    ):
        super().__init__(validate_args)
        self.min_sigma = check_positive(min_sigma, "min_sigma", allow_zero=True)
        self.log_sigma: nn.Parameter | None = None
        if isinstance(sigma, str):
            if sigma not in ("learned", "decoder"):
                raise ValueError(f"sigma must be a positive float, 'learned' or 'decoder', got {sigma!r}")
            self.mode = sigma
        else:
            self.mode = "fixed"
            self.fixed_sigma = check_positive(sigma, "sigma")
        if self.mode == "learned":
            init = check_positive(init_sigma, "init_sigma")
            if init <= self.min_sigma:
                raise ValueError(f"init_sigma must exceed min_sigma={self.min_sigma}, got {init_sigma!r}")
            try:
                shape = tuple(int(s) for s in sigma_shape)
            except TypeError:
                raise ValueError(f"sigma_shape must be a tuple of ints, got {sigma_shape!r}") from None
            # positive(s) = exp(s) below 20: start at exactly init_sigma.
            self.log_sigma = nn.Parameter(torch.full(shape, math.log(init - self.min_sigma)))
        self.n_params = 2 if self.mode == "decoder" else 1

    @property
    def sigma(self) -> Tensor:
        """The current learned ``sigma`` (shape ``sigma_shape``); only for ``sigma="learned"``."""
        if self.log_sigma is None:
            raise RuntimeError(f"sigma is a tensor only for sigma='learned' (this Gaussian is {self.mode!r})")
        return self.min_sigma + positive(self.log_sigma)

    def distribution(self, raw: Tensor) -> StableNormal:
        loc, check = raw[:, 0], self.validating
        if self.mode == "fixed":
            return StableNormal(loc, torch.full_like(loc, self.fixed_sigma), validate_args=check)
        if self.mode == "decoder":
            return StableNormal(loc, self.min_sigma + positive(raw[:, 1]), validate_args=check)
        data_shape = tuple(loc.shape[1:])
        try:
            fits = torch.broadcast_shapes(self.log_sigma.shape, data_shape) == data_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"learned sigma of shape {tuple(self.log_sigma.shape)} does not broadcast to the data shape "
                f"{data_shape}; set sigma_shape to () or a shape that broadcasts to it"
            )
        return StableNormal(loc, self.sigma.expand_as(loc), validate_args=check)

    def extra_repr(self) -> str:
        s = f"sigma={self.fixed_sigma}" if self.mode == "fixed" else f"sigma={self.mode!r}"
        return f"{s}, n_params={self.n_params}"


class Bernoulli(Likelihood):
    """Bernoulli with logits ``raw[:, 0]``, for binary or grey-scale ``[0, 1]`` images.

    ``log_prob(x) = x log p + (1 - x) log(1 - p)`` (minus the binary cross-entropy), which accepts continuous
    targets in ``[0, 1]`` (see :class:`~genlib.likelihoods.distributions.UnitIntervalBernoulli`). ``mean`` is
    ``p = sigmoid(raw)``; ``sample()`` draws binary images.
    """

    n_params = 1

    def distribution(self, raw: Tensor) -> UnitIntervalBernoulli:
        return UnitIntervalBernoulli(logits=raw[:, 0], validate_args=self.validating)
