"""Train and evaluate a classifier on real, synthetic or mixed data with per-example loss weights.

The objective is the weighted cross-entropy ``sum_i w_i CE_i / sum_i w_i`` over the training set. Each
mini-batch estimates it without bias as ``sum_b w_b CE_b / (B * mean(w))`` with ``mean(w)`` the training
set's mean weight (a constant), rather than the common per-batch ``sum_b w_b CE_b / sum_b w_b``: that one
would cancel a synthetic-data loss coefficient in any batch made of synthetic examples only. With full
batches, a zero-weight example contributes exactly nothing and weight 2 equals a duplicated example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from genlib.data.synthetic import WeightedConcatDataset
from genlib.train.batches import StepBatches, step_loader
from genlib.train.checkpoint import Checkpointer
from genlib.train.engine import Engine
from genlib.train.logger import MetricsLogger
from genlib.utils import check_positive, default_device, seed_everything

__all__ = [
    "weighted_cross_entropy",
    "train_classifier",
    "evaluate_accuracy",
    "predict_logits",
]

Data = Dataset | tuple[torch.Tensor, ...]
OptimizerFactory = Callable[..., torch.optim.Optimizer]
Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None, mean_weight: float = 1.0
) -> torch.Tensor:
    """``sum_b w_b CE(logits_b, y_b) / (B * mean_weight)``: an unbiased mini-batch estimate of the
    dataset-level weighted mean when ``mean_weight`` is the dataset's mean weight (plain mean CE when
    ``weights`` is ``None`` and ``mean_weight`` is 1)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        return ce.sum() / (ce.numel() * mean_weight)
    return (weights.to(ce.dtype) * ce).sum() / (ce.numel() * mean_weight)


# ---------------------------------------------------------------------------------------------- data


def _tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(x, y, weights or None) when ``data`` is tensor-backed, else None (iterate it with a DataLoader)."""
    if isinstance(data, tuple):
        if len(data) not in (2, 3) or not all(isinstance(t, torch.Tensor) for t in data):
            raise ValueError("data as a tuple must be (x, y) or (x, y, weights) tensors")
        return data[0], data[1], (data[2] if len(data) == 3 else None)
    if isinstance(data, WeightedConcatDataset):
        return data.as_tensors()
    if isinstance(data, TensorDataset) and len(data.tensors) in (2, 3):
        t = data.tensors
        return t[0], t[1], (t[2] if len(t) == 3 else None)
    if isinstance(data, Dataset):
        return None
    raise ValueError(
        f"data must be a torch Dataset yielding (x, y) or (x, y, weight), or a tuple of tensors, "
        f"got {type(data).__name__}"
    )


def _check_xy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, name: str) -> None:
    n = x.shape[0]
    if y.shape != (n,) or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} labels must be integers of shape ({n},), got {y.dtype} {tuple(y.shape)}")
    if n == 0:
        raise ValueError(f"{name} is empty")
    if int(y.min()) < 0:
        raise ValueError(f"{name} labels must be >= 0 (drop unlabelled examples), got min {int(y.min())}")
    if w is not None:
        if w.shape != (n,):
            raise ValueError(f"{name} weights must have shape ({n},), got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or float(w.min()) < 0:
            raise ValueError(f"{name} weights must be finite and >= 0")


class _WithWeights(Dataset):
    """Attach a weight vector to a dataset yielding (x, y)."""

    def __init__(self, base: Dataset, weights: torch.Tensor):
        self.base, self.weights = base, weights

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, Any, torch.Tensor]:
        x, y = self.base[i][:2]
        return x, y, self.weights[i]


def _in_order(data: Data, batch_size: int) -> Iterator[Batch]:
    """``data``'s ``(x, y, weights or None)`` batches in order (evaluation: tensors sliced, datasets through a
    DataLoader)."""
    t = _tensors(data)
    if t is not None:
        x, y, w = t
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size], (None if w is None else w[i : i + batch_size])
        return
    for batch in DataLoader(data, batch_size=batch_size):
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError("the dataset must yield (x, y) or (x, y, weight)")
        yield batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: Data | torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits ``(N, K)`` on the CPU of ``model`` in eval mode over images ``x``, ``(x, y)`` or a dataset."""
    if isinstance(data, torch.Tensor):
        data = (data, torch.zeros(len(data), dtype=torch.long))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(xb.to(device)).float().cpu() for xb, _, _ in _in_order(data, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, data: Data, batch_size: int = 1024, device: torch.device | str | None = None
) -> float:
    """Top-1 accuracy of ``model`` (in eval mode; its mode is restored) on ``(x, y)`` / a labelled dataset."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for xb, yb, _ in _in_order(data, batch_size):
            if int(yb.min()) < 0:
                raise ValueError("evaluation labels must be >= 0 (got -1: unlabelled examples)")
            pred = model(xb.to(device)).argmax(dim=1).cpu()
            correct += int((pred == yb.cpu()).sum())
            total += len(yb)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation data is empty")
    return correct / total


# ---------------------------------------------------------------------------------------------- training


def train_classifier(
    model: nn.Module,
    train_data: Data,
    *,
    weights: torch.Tensor | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    optimizer: OptimizerFactory | None = None,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    eval_data: Data | None = None,
    progress: bool = True,
    logger: MetricsLogger | None = None,
    checkpointer: Checkpointer | None = None,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train ``model`` with per-example weighted cross-entropy; returns ``(model, history)``.

    Args:
        model: maps a batch ``(B, ...)`` to logits ``(B, K)``; moved to ``device``.
        train_data: a tuple ``(x, y)`` / ``(x, y, weights)`` of tensors, or a Dataset yielding ``(x, y)`` or
            ``(x, y, weight)`` (e.g. :class:`~genlib.data.WeightedConcatDataset` of real and synthetic
            data). Tensor-backed data is sliced batch-wise, anything else goes through a DataLoader.
        weights: per-example weights ``(N,)`` (>= 0) for data that does not carry its own.
        epochs, lr, batch_size: the usual.
        optimizer: a factory called as ``optimizer(model.parameters(), lr=lr)``, e.g. ``torch.optim.SGD``,
            ``functools.partial(torch.optim.AdamW, weight_decay=5e-4)`` or a ``genlib.optim`` class
            (default Adam). Optimizers that differentiate a closure themselves (``needs_closure = True``, or
            PSGD with ``curvature`` "hvp"/"finite_diff") get ``step(closure)`` with a closure returning the
            loss; all others get ``loss.backward(); step()``.
        device: default :func:`genlib.utils.default_device`.
        seed: seeds the global RNGs (dropout) and the batch shuffling; ``None`` leaves the RNGs alone.
        eval_data: labelled data whose accuracy is recorded after every epoch.
        progress: show a tqdm bar.
        logger: receives one record per epoch.
        checkpointer: resumes from its newest checkpoint when there is one, and saves every
            ``checkpointer.every`` epochs and after the last (model, optimizer, RNGs and history), so an
            interrupted call repeated with the same arguments ends as if uninterrupted.

    Training runs on :class:`~genlib.train.Engine` (one shuffled pass per epoch through a DataLoader; under
    ``torchrun`` each rank trains on its share of every batch with DDP).

    ``history`` has per-epoch lists ``epoch``, ``train_loss`` (mean weighted objective over the epoch's
    batches), ``seconds`` (since the start of this call) and, with ``eval_data``, ``eval_epoch`` and
    ``eval_accuracy``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    lr = check_positive(lr, "lr")
    if isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            "optimizer must be a factory such as torch.optim.SGD or functools.partial(torch.optim.SGD, "
            "momentum=0.9), not an optimizer instance (it is built on the model's parameters here)"
        )
    if optimizer is not None and not callable(optimizer):
        raise ValueError(f"optimizer must be callable (params, lr=...) -> Optimizer, got {optimizer!r}")

    t = _tensors(train_data)
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise ValueError(f"weights must be a tensor of shape (N,), got {type(weights).__name__}")
        if t is not None and t[2] is not None:
            raise ValueError("train_data already carries weights; do not pass weights= as well")
        weights = weights.float()
    if t is not None:
        x, y, w = t
        w = weights if weights is not None else w
        _check_xy(x, y, w, "train_data")
        all_w = w
    else:
        n = len(train_data)
        if weights is not None and weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
        # a generic dataset's weights need one pass to find the normaliser
        all_w = weights if weights is not None else _weights_of_dataset(train_data)
    mean_weight = 1.0 if all_w is None else float(all_w.float().mean())
    if all_w is not None and (not math.isfinite(mean_weight) or float(all_w.min()) < 0):
        raise ValueError("train_data weights must be finite and >= 0")
    if mean_weight <= 0:
        raise ValueError("all training weights are zero: nothing to learn from")

    device = torch.device(device) if device is not None else default_device()
    if seed is not None:
        seed_everything(seed)
    # seed=None: the shuffling order comes from the (unseeded) global RNG too
    shuffle_seed = seed if seed is not None else int(torch.randint(2**62, ()))
    opt = (optimizer or torch.optim.Adam)(model.parameters(), lr=lr)
    if t is not None:
        source: Any = (x, y) if w is None else (x, y, w)
    else:
        source = train_data if weights is None else _WithWeights(train_data, weights)
    batches = StepBatches({"data": source}, batch_size, seed=shuffle_seed, order="epochs")

    def loss_fn(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xb, yb, *rest = batch["data"]
        loss = weighted_cross_entropy(model(xb), yb, rest[0] if rest else None, mean_weight)
        return loss, {"train_loss": loss}

    def evaluate() -> dict[str, float]:
        return {"eval_accuracy": evaluate_accuracy(model, eval_data, device=device)}

    engine = Engine(model, opt, loss_fn, device=device, checkpointer=checkpointer, logger=logger,
                    unit="epoch", steps_per_unit=batches.steps_per_epoch(), progress=progress,
                    desc="train", divergence_hint="lower lr")
    history = engine.fit(lambda start, stop: step_loader(batches, start, stop), epochs, total_name="epochs",
                         evaluate=None if eval_data is None else evaluate, eval_every=1)
    return model, history


def _weights_of_dataset(data: Dataset) -> torch.Tensor | None:
    """Per-example weights of a generic dataset (None when it yields (x, y) only)."""
    out: list[float] = []
    for i in range(len(data)):
        item = data[i]
        if len(item) != 3:
            return None
        out.append(float(item[2]))
    return torch.tensor(out)
