"""Training batches as a dataset indexed by step, read through a ``torch.utils.data.DataLoader``.

``StepBatches(sources, batch_size, seed=...)[t]`` is step ``t``'s batch of every source, a pure function of
``(seed, t)``: the DataLoader over ``range(start, stop)`` resumes at any step with no sampler state to save,
its workers prefetch and pin batches, and every world size sees the same *global* batch (rank ``r`` of
``W`` keeps positions ``r, r + W, ...``), so a run on two processes trains on what one process would.

Sources are tensors (indexed directly: one gather per batch), tuples of equally long tensors, or any
map-style ``Dataset`` (read example by example, or with its ``__getitems__`` when it has one), so data that
does not fit in memory streams from disk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from genlib.utils import check_int, derive_seed

__all__ = ["StepBatches", "step_loader"]

Source = torch.Tensor | tuple[torch.Tensor, ...] | Dataset


def _length(source: Source, name: str) -> int:
    if isinstance(source, torch.Tensor):
        return source.shape[0]
    if isinstance(source, tuple):
        if not source or not all(isinstance(t, torch.Tensor) for t in source):
            raise ValueError(f"source {name!r} as a tuple must hold tensors")
        n = source[0].shape[0]
        if any(t.shape[0] != n for t in source):
            raise ValueError(f"source {name!r}: its tensors must have the same length, got "
                             f"{[t.shape[0] for t in source]}")
        return n
    if isinstance(source, Dataset) and hasattr(source, "__len__"):
        return len(source)
    raise ValueError(f"source {name!r} must be a tensor, a tuple of tensors or a map-style Dataset, "
                     f"got {type(source).__name__}")


def _take(source: Source, idx: torch.Tensor) -> Any:
    if isinstance(source, torch.Tensor):
        return source[idx.to(source.device)]
    if isinstance(source, tuple):
        return tuple(t[idx.to(t.device)] for t in source)
    items = idx.tolist()
    getitems = getattr(source, "__getitems__", None)
    batch = getitems(items) if getitems is not None else [source[i] for i in items]
    return default_collate(batch) if isinstance(batch, list) else batch


class StepBatches(Dataset):
    """Step ``t``'s batch of each source (see the module docstring).

    Args:
        sources: ``{name: source}``; item ``t`` is ``{name: batch}`` (a tensor, a tuple, or what the
            dataset's examples collate to).
        batch_size: the global batch size, one for all sources or ``{name: size}`` (capped at the
            source's length).
        seed: the run's seed; each source and step draws from its own stream of it.
        order: ``"random"``: each step draws its batch uniformly with replacement (iterations over a
            stream of random batches); ``"epochs"``: a fresh permutation per epoch, cut into consecutive
            batches (the last one smaller unless ``drop_last``).
        rank, world_size: this process's share of each global batch.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        batch_size: int | Mapping[str, int],
        *,
        seed: int = 0,
        order: Literal["random", "epochs"] = "random",
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not isinstance(sources, Mapping) or not sources:
            raise ValueError("sources must be a non-empty dict of name -> tensor / tuple / Dataset")
        if order not in ("random", "epochs"):
            raise ValueError(f"order must be 'random' or 'epochs', got {order!r}")
        check_int(seed, "seed", 0)
        check_int(world_size, "world_size")
        if not (isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank must be an int in [0, {world_size - 1}], got {rank!r}")
        self.sources = dict(sources)
        self.lengths = {k: _length(s, k) for k, s in self.sources.items()}
        for k, n in self.lengths.items():
            if n == 0:
                raise ValueError(f"source {k!r} is empty")
        sizes = batch_size if isinstance(batch_size, Mapping) else dict.fromkeys(self.sources, batch_size)
        if set(sizes) != set(self.sources):
            raise ValueError(f"batch_size must name every source {sorted(self.sources)}, got {sorted(sizes)}")
        self.batch_sizes = {
            k: min(check_int(b, f"batch_size[{k!r}]"), self.lengths[k]) for k, b in sizes.items()
        }
        for k, b in self.batch_sizes.items():
            if b < world_size:
                raise ValueError(f"batch_size of {k!r} ({b}) must be at least world_size ({world_size})")
        self.seed, self.order, self.drop_last = seed, order, drop_last
        self.rank, self.world_size = rank, world_size
        self._perm: dict[str, tuple[int, torch.Tensor]] = {}  # per source: (epoch, its permutation)

    def steps_per_epoch(self, name: str | None = None) -> int:
        """Batches in one pass over source ``name`` (default: the first)."""
        name = next(iter(self.sources)) if name is None else name
        n, b = self.lengths[name], self.batch_sizes[name]
        return n // b if self.drop_last else math.ceil(n / b)

    def __len__(self) -> int:  # indexed by step: any step is valid
        return 2**62

    def indices(self, name: str, step: int) -> torch.Tensor:
        """The global batch of ``name`` at ``step`` (every rank's share)."""
        n, b = self.lengths[name], self.batch_sizes[name]
        if self.order == "random":
            g = torch.Generator().manual_seed(derive_seed(self.seed, name, step))
            return torch.randint(n, (b,), generator=g)
        epoch, j = divmod(step, self.steps_per_epoch(name))
        cached = self._perm.get(name)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, name, "epoch", epoch))
            cached = self._perm[name] = (epoch, torch.randperm(n, generator=g))
        return cached[1][j * b : (j + 1) * b]

    def __getitem__(self, step: int) -> dict[str, Any]:
        out = {}
        for name, source in self.sources.items():
            idx = self.indices(name, int(step))[self.rank :: self.world_size]
            out[name] = _take(source, idx)
        return out


def step_loader(
    batches: StepBatches, start: int, stop: int, *, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over steps ``start .. stop - 1`` of ``batches`` (``num_workers`` prefetch them)."""
    # its own generator: starting an iterator would otherwise draw the workers' base seed from the global
    # RNG, and a resumed run would then draw differently from the uninterrupted one
    return DataLoader(batches, sampler=range(start, stop), batch_size=None, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(start))
