"""The :class:`Likelihood` base class and the positive-parameter map shared by every likelihood."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from genlib.nn.config import Configurable
from genlib.utils import check_tensor, resolve_validate_args

__all__ = ["Likelihood", "positive"]

_LINEAR_ABOVE = 20.0  # exp(20) ~ 4.9e8: past this, continue linearly instead of overflowing


def positive(raw: Tensor, floor: float = 0.0) -> Tensor:
    """``floor + exp(raw)``, continued linearly (same value and slope) above ``raw = 20``.

    ``exp`` suits scale-like parameters spanning orders of magnitude (spectra); the linear tail keeps huge raw
    values and their gradients finite (``exp`` alone overflows to ``inf`` at ``raw ~ 89`` in float32), and the
    floor keeps the result strictly positive where ``exp`` underflows.
    """
    e = torch.exp(
        raw.clamp(max=_LINEAR_ABOVE)
    )  # clamp first: torch.where would still back-prop an inf branch
    return floor + torch.where(raw > _LINEAR_ABOVE, e * (1 + raw - _LINEAR_ABOVE), e)


class Likelihood(Configurable, nn.Module):
    """Base of decoder likelihoods ``p(x | raw)``: raw decoder outputs -> a ``torch.distributions`` object.

    ``raw`` has shape ``(B, n_params, *data_shape)``: ``n_params`` unconstrained channels per data element.
    ``lik(raw)`` validates it and returns :meth:`distribution`'s element-wise distribution (``batch_shape ==
    (B, *data_shape)``). Subclasses set ``n_params`` (class or instance attribute) and implement
    :meth:`distribution`; being ``nn.Module`` s they may hold learned parameters, and being
    :class:`~genlib.nn.config.Configurable` their constructor arguments are recorded for checkpoints.

    genlib's likelihoods return pyro distributions (``TorchDistributionMixin``: ``.to_event``, ``.expand``),
    usable as ``pyro.sample("x", lik(raw).to_event(k), obs=x)``; a subclass returning a plain
    ``torch.distributions`` object works everywhere in genlib, and in pyro once it returns the
    ``pyro.distributions`` class of the same name instead.

    Args:
        validate_args: check tensor values (NaN / Inf in ``raw`` and ``x``, and the distribution's own
            parameter and support checks); ``None`` (default) follows :func:`genlib.set_validate_args`.
            Shape and dtype checks always run. Subclasses with their own ``__init__`` take it and pass it on.
    """

    n_params: int = 1

    def __init__(self, validate_args: bool | None = None) -> None:
        super().__init__()
        resolve_validate_args(validate_args)  # reject a non-bool early, naming the argument
        self.validate_args = validate_args

    @property
    def validating(self) -> bool:
        """Whether this likelihood checks tensor values now (its ``validate_args``, else the global one)."""
        return resolve_validate_args(getattr(self, "validate_args", None))

    def distribution(self, raw: Tensor) -> Distribution:
        """The element-wise distribution for a validated ``raw`` of shape ``(B, n_params, *data_shape)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement distribution(raw)")

    def check_raw(self, raw: Tensor) -> Tensor:
        """``ValueError`` unless ``raw`` is a real tensor of shape ``(B, n_params, *data_shape)``, finite when
        :attr:`validating`."""
        check_tensor(raw, "raw", floating=True, finite=self.validating)
        if raw.is_complex():
            raise ValueError(f"raw must be a real tensor of decoder outputs, got complex dtype {raw.dtype}")
        if raw.ndim < 2 or raw.shape[1] != self.n_params:
            raise ValueError(
                f"raw must have shape (B, n_params={self.n_params}, *data_shape) for {type(self).__name__}, "
                f"got {tuple(raw.shape)}; build the decoder with n_params={self.n_params}"
            )
        return raw

    def forward(self, raw: Tensor) -> Distribution:
        return self.distribution(self.check_raw(raw))

    def log_prob(self, x: Tensor, raw: Tensor) -> Tensor:
        """Element-wise ``log p(x | raw)``, shape ``(B, *data_shape)`` (sum it for a per-example value)."""
        dist = self(raw)
        check_tensor(x, "x", finite=self.validating)
        if x.shape != dist.batch_shape:
            raise ValueError(
                f"x must have shape (B, *data_shape) = {tuple(dist.batch_shape)} to match raw "
                f"{tuple(raw.shape)}, got {tuple(x.shape)}"
            )
        return dist.log_prob(x)

    def mean(self, raw: Tensor) -> Tensor:
        """``E[x | raw]`` (see each likelihood for what its mean is, e.g. magnitude vs complex mean)."""
        return self(raw).mean

    def sample(self, raw: Tensor) -> Tensor:
        """One draw of ``x ~ p(x | raw)``, shape ``(B, *data_shape)``."""
        return self(raw).sample()

    def extra_repr(self) -> str:
        return f"n_params={self.n_params}"
