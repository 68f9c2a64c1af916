"""Facility location: the submodular objective behind CRAIG and AdaCore, maximised greedily in chunks.

For points ``x_1..x_n`` and a selected set ``S`` the objective is

    F(S) = sum_i max_{j in S} sim(i, j),    sim(i, j) = max(0, C - d(x_i, x_j)),

with ``d`` the Euclidean (or squared Euclidean) distance and ``C`` a constant. When ``C`` is at least the
largest distance, ``sim >= 0`` without the clip and ``F(S) = n C - sum_i min_{j in S} d(x_i, x_j)``: the
greedy selection then does not depend on ``C`` (every marginal gain is ``C``-free once ``S`` is non-empty,
and the first pick is the 1-medoid). A smaller ``C`` gives a truncated, still monotone submodular objective.

Greedy maximisation reaches ``F(S) >= (1 - 1/e) F(S*)`` (Nemhauser et al. 1978). Three variants:

- ``"lazy"``: exact greedy (Minoux 1978). Marginal gains only shrink as ``S`` grows, so stale gains are
  upper bounds; each step re-evaluates the candidates with the largest bounds, a batch at a time, until
  the best one is fresh (ties: lowest index among the fresh maxima). Two additions cut the work:
  the first gains come from the distances to the mean (exact for squared distances, a bound otherwise),
  and once a pick changes the coverage of few points (the ``m`` points it now covers best), the highest
  exact gains (an eighth of the candidates) are updated exactly from those points alone, ``O(m)`` each,
  so they stay exact instead of going stale; the others keep their old gain as a bound. Exact ties (two
  points that only cover each other) may then fall either way.
- ``"naive"``: plain greedy, every remaining gain re-evaluated at every step (the reference the lazy
  variant must reproduce; ``O(n^2 k)``).
- ``"stochastic"``: stochastic greedy (Mirzasoleiman et al. 2015). Each step draws
  ``ceil(n / k * log(1 / epsilon))`` random candidates and takes the best of them (lazily, with the same
  bounds); ``E[F(S)] >= (1 - 1/e - epsilon) F(S*)`` at ``O(n log(1/epsilon))`` gain evaluations in all.

Distances are never stored as an ``n x n`` matrix. Two engines compute the gains:

- ``"torch"`` (GPU, and CPU above 24 dimensions): a batch of ``b <= chunk_size`` candidates is one
  ``(b, n)`` matrix product against the current coverage vector, so memory is ``O(n * chunk_size)``.
- ``"compiled"`` (CPU, up to 24 dimensions; :mod:`genlib.select._greedy_cpu`): a numba loop over blocks of
  32 nearby points that drops, per candidate, the blocks that can no longer add to its gain; 2-5x faster
  than the torch engine on one core. Its per-candidate lists of live blocks take ``n^2 / 16`` bytes
  (156 MB at 50k) up to 1 GiB (~130k points); beyond that the lists are shortened, O(n) memory.

Written by hand because no maintained library does chunked, GPU-capable lazy greedy (apricot is
NumPy/numba over a dense ``n x n`` similarity matrix).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from genlib.select._common import as_tensor
from genlib.utils import check_positive

Tensor = torch.Tensor
Metric = Literal["euclidean", "sqeuclidean"]
Greedy = Literal["lazy", "stochastic", "naive"]
Engine = Literal["auto", "compiled", "torch"]

__all__ = [
    "FacilityLocationResult",
    "facility_location",
    "facility_location_objective",
    "pairwise_distances",
    "max_distance_bound",
]

_INCREMENTAL_FRACTION = 0.25  # see facility_location: when to update gains exactly rather than re-evaluate
_TRACKED_FRACTION = 0.125  # see facility_location: share of exact gains kept exact through a pick
_DECREASE_BLOCK = 1 << 18  # entries per block in _Coverage.decrease: fits in a CPU core's L2 cache
_COMPILED_MAX_DIM = 24  # "auto" engine on CPU: compiled up to here (at 32-D both take the same time)
_FIRST_BATCH = 16  # candidates re-evaluated first in a lazy step; doubles while the top bound stays stale


def _check_metric(metric: str) -> str:
    if metric not in ("euclidean", "sqeuclidean"):
        raise ValueError(f"metric must be 'euclidean' or 'sqeuclidean', got {metric!r}")
    return metric


def _check_greedy(greedy: str) -> str:
    if greedy not in ("lazy", "stochastic", "naive"):
        raise ValueError(f"greedy must be 'lazy', 'stochastic' or 'naive', got {greedy!r}")
    return greedy


def _check_chunk(chunk_size: Any, n: int = 0, device: torch.device | None = None) -> int:
    """A positive int, or ``None`` for the default: 64 rows on CPU (blocks that stay in cache; measured
    fastest), on GPU as many as keep a block under 2^27 entries (512 MiB in float32), 64 to 2048."""
    if chunk_size is None:
        if device is None or device.type == "cpu":
            return 64
        return int(min(2048, max(64, 2**27 // max(n, 1))))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


class _Points:
    """Centred points with their squared norms packed so one matmul gives squared distances.

    ``[x, |x|^2, 1] @ [-2 x, 1, |y|^2]^T = |x - y|^2``; centring first (distances are translation
    invariant) keeps the cancellation error of that expansion small.
    """

    def __init__(self, x: Tensor, metric: str):
        x = x - x.mean(0)
        sq = (x * x).sum(1, keepdim=True)
        one = torch.ones_like(sq)
        self.left = torch.cat([x, sq, one], 1)
        # kept (n, d + 2), used transposed: faster in MKL's sgemm than a contiguous (d + 2, n) copy
        self.right = torch.cat([-2 * x, one, sq], 1)
        self.metric = metric
        self.n = x.shape[0]

    def squared_distances(self, rows: Tensor) -> Tensor:
        """``(len(rows), n)`` squared distances from the points ``rows`` to every point."""
        return self.raw_squared(rows).clamp_(min=0)

    def raw_squared(self, rows: Tensor, cols: Tensor | None = None) -> Tensor:
        """Squared distances from ``rows`` to ``cols`` (sorted; default all points) by one matmul, with
        the self-distances set to exactly zero (the expansion leaves a round-off residue there, which a
        square root would blow up)."""
        if cols is None:
            d = self.left[rows] @ self.right.T
            d[torch.arange(rows.numel(), device=d.device), rows] = 0
            return d
        d = self.left[rows] @ self.right[cols].T
        pos = torch.searchsorted(cols, rows).clamp_(max=max(cols.numel() - 1, 0))
        hit = torch.nonzero(cols[pos] == rows).squeeze(1)
        d[hit, pos[hit]] = 0
        return d

    def distances(self, rows: Tensor) -> Tensor:
        """``(len(rows), n)`` distances (in the chosen metric) from the points ``rows`` to every point."""
        d = self.squared_distances(rows)
        return d.sqrt_() if self.metric == "euclidean" else d


def pairwise_distances(
    x: Tensor, y: Tensor | None = None, *, metric: Metric = "euclidean", chunk_size: int | None = None
) -> Tensor:
    """Dense ``(n, m)`` distance matrix, computed ``chunk_size`` rows at a time (small inputs and tests only;
    the greedy never builds it)."""
    x = as_tensor(x, "x", ndim=2)
    y = x if y is None else as_tensor(y, "y", ndim=2)
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"x and y must have the same number of columns, got {x.shape[1]} and {y.shape[1]}")
    metric = _check_metric(metric)
    pts = _Points(x if y is x else torch.cat([x, y]), metric)
    offset = 0 if y is x else x.shape[0]
    chunk = x.shape[0] if chunk_size is None else _check_chunk(chunk_size)
    rows = torch.arange(x.shape[0], device=x.device)
    out = [pts.distances(r)[:, offset:] for r in rows.split(max(chunk, 1))]
    return torch.cat(out) if out else x.new_zeros(0, y.shape[0])


def max_distance_bound(x: Tensor, metric: Metric = "euclidean") -> float:
    """An upper bound on the largest pairwise distance in O(n): ``2 max_i |x_i - mean|`` (triangle
    inequality), squared for ``"sqeuclidean"``."""
    x = as_tensor(x, "x", ndim=2).detach()  # a number, not part of any graph
    if x.shape[0] == 0:
        return 0.0
    r = 2.0 * float((x - x.mean(0)).norm(dim=1).max())
    r = r * (1 + 1e-6) + 1e-12  # round-off margin, so the bound holds for the float distances too
    return r * r if _check_metric(metric) == "sqeuclidean" else r


@dataclass
class FacilityLocationResult:
    """Outcome of :func:`facility_location`.

    Attributes:
        indices: ``(k,)`` LongTensor, the selected rows in greedy order.
        weights: ``(k,)`` float tensor, the size of each selected element's cluster (points whose nearest
            selected element it is; ties go to the earlier pick); sums to ``n``.
        gains: ``(k,)`` marginal gain of each pick, non-increasing for lazy greedy.
        objective: ``F(S)``.
        assignment: ``(n,)`` LongTensor, position in ``indices`` of each point's nearest selected element.
        C: the constant used in ``sim = max(0, C - d)``.
    """

    indices: Tensor
    weights: Tensor
    gains: Tensor
    objective: float
    assignment: Tensor
    C: float


class _Coverage:
    """Greedy state: per-point coverage ``min(C, d(i, S))`` and nearest selected element.

    For the Euclidean metric the squared coverage is the primary copy and ``cover = sqrt(cover_sq)``:
    then ``sqrt(min(d^2, cover_sq))`` equals ``cover`` bit for bit where the clamp bites, and far points add
    exactly zero to a gain.
    """

    def __init__(self, pts: _Points, C: float, chunk_size: int, dtype: torch.dtype, device: torch.device):
        self.pts, self.chunk = pts, chunk_size
        self.euclidean = pts.metric == "euclidean"
        cap = C * C if self.euclidean else C
        self.cap = torch.full((pts.n,), cap, dtype=dtype, device=device)  # cover^2 (euclidean) or cover
        self.cover = self.cap.sqrt() if self.euclidean else self.cap
        self.C = float(self.cover[0]) if pts.n else C
        self.nearest = torch.full((pts.n,), math.inf, dtype=dtype, device=device)
        self.assign = torch.zeros(pts.n, dtype=torch.long, device=device)
        self._zero = torch.zeros((), dtype=dtype, device=device)
        if not self.euclidean:  # the points' right factors with -cover folded into the constant column
            self.shifted = pts.right.clone()
            self.shifted[:, -1] -= self.cap

    def gains(self, rows: Tensor) -> Tensor:
        """Marginal gains ``sum_i max(0, cover_i - d(i, k))`` of the candidates ``rows``, in float64.

        One ``(b, n)`` block per chunk, in place. Squared distances: the matmul against ``shifted`` (the
        points with ``-cover`` folded into their constant column) gives ``d - cover`` directly, so a gain
        is minus the sum of its negative part: two passes over the block. Euclidean: ``min(d, cover) -
        cover`` summed. (Pruning points by the triangle inequality skips almost nothing beyond two or
        three dimensions, and the gathers cost more than they save.)
        """
        out = []
        for r in rows.split(self.chunk):
            if self.euclidean:
                d = self.pts.raw_squared(r)
                torch.clamp(d, min=self._zero, max=self.cap, out=d).sqrt_()
                d.sub_(self.cover)
            else:
                d = self.pts.left[r] @ self.shifted.T
                d[torch.arange(r.numel(), device=d.device), r] = -self.cap[r]  # exact d(k, k) = 0
                d.clamp_(max=0)
            out.append(d.sum(1).neg_())
        return torch.cat(out).double()

    def add(self, j: int, position: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Select ``j``. Returns the points whose coverage improved (``d_ij < cover_i``), their old and new
        ``cap`` values, and the squared distances from ``j`` to every point."""
        d2 = self.pts.squared_distances(torch.tensor([j], device=self.cap.device))[0]
        d = d2.sqrt() if self.euclidean else d2
        closer = d < self.nearest
        self.assign[closer] = position
        self.nearest = torch.minimum(self.nearest, d)
        rows = torch.nonzero(d2 < self.cap).squeeze(1)
        old, new = self.cap[rows], d2[rows]
        self.cap = self.cap.index_put((rows,), new)
        self.cover = self.cap.sqrt() if self.euclidean else self.cap
        if not self.euclidean:
            self.shifted[rows, -1] = self.pts.right[rows, -1] - new
        return rows, old, new, d2

    def decrease(self, rows: Tensor, old: Tensor, new: Tensor, dist: Tensor, cand: Tensor) -> Tensor:
        """Exact drop of the gains of the candidates ``cand`` caused by the coverage change of ``rows``.

        Point ``i``'s term ``max(0, c_i - d_ik)`` becomes ``max(0, c'_i - d_ik)`` with ``c'_i < c_i``; the
        difference is ``c_i - clamp(d_ik, c'_i, c_i)``, zero unless ``d_ik < c_i``. With ``e`` Euclidean
        distances and ``j`` the new pick, ``e_ik >= e_jk - e_ij`` (``dist`` holds ``e_j``), so candidate
        ``k`` only needs the rows with ``c_i + e_ij > e_jk``: candidates go in order of ``e_jk``, rows in
        order of that reach, and each block of candidates meets a prefix of the rows. One ``(b, m)`` block
        at a time, with ``-c_i`` folded into the matmul (``d_ik - c_i``, clipped to ``[c'_i - c_i, 0]``),
        rows summed in float64. Caps are squared covers for the Euclidean metric, so ``c`` is ``sqrt(cap)``.
        """
        out = torch.zeros(cand.numel(), dtype=torch.float64, device=cand.device)
        # margin for round-off in the matmul distances; a wider reach only costs work
        reach = (old.sqrt() + dist[rows]) * (1 + 1e-4) + 1e-6
        order = torch.argsort(reach, descending=True)
        rows, old, new, reach = rows[order], old[order], new[order], reach[order]
        pts = self.pts
        shifted = torch.cat([pts.right[rows, :-1], (pts.right[rows, -1] - old)[:, None]], 1)
        low = new - old  # clip d - c at c' - c (squared caps for the Euclidean metric)
        root = old.sqrt() if self.euclidean else None
        slot = torch.full((pts.n,), -1, dtype=torch.long, device=rows.device)
        slot[rows] = torch.arange(rows.numel(), device=rows.device)  # self-distance positions
        by_dist = torch.argsort(dist[cand])
        near = dist[cand][by_dist]
        # how many rows (a prefix) can reach each candidate, and blocks of ~2^18 entries (cache-sized)
        need = torch.searchsorted(-reach, -near.contiguous(), right=False)
        todo = int(torch.count_nonzero(need))
        start = 0
        while start < todo:
            m = int(need[start])
            b = max(1, min(todo - start, _DECREASE_BLOCK // max(m, 1)))
            pos = by_dist[start : start + b]
            k = cand[pos]
            d = pts.left[k] @ shifted[:m].T  # d_ik - c_i
            p = slot[k]
            hit = torch.nonzero((p >= 0) & (p < m)).squeeze(1)
            d[hit, p[hit]] = -old[p[hit]]  # exact d(k, k) = 0
            d.clamp_(max=0)
            torch.maximum(d, low[:m], out=d)
            if self.euclidean:  # sqrt(clamp(d^2, c'^2, c^2)) - c
                d.add_(old[:m]).sqrt_().sub_(root[:m])
            out[pos] = d.sum(1).double()
            start += b
        return out.neg_()

    def affected(self, rows: Tensor, old: Tensor, d2: Tensor) -> Tensor:
        """Mask of candidates whose gain may have changed (when it is not updated exactly).

        Candidate ``k`` drew gain from a changed point ``i`` only if ``d_ik < c_i``; by the triangle
        inequality ``d_ik >= d_jk - d_ij``, so every candidate with ``d_jk >= max_i (c_i + d_ij)`` keeps its
        exact gain. Squared distances break the triangle inequality; their square roots (of ``d2``) do not.
        """
        if rows.numel() == 0:
            return torch.zeros(self.pts.n, dtype=torch.bool, device=d2.device)
        dist = d2.sqrt()
        reach = float((old.sqrt() + dist[rows]).max())  # old is cover^2 (euclidean) or squared cover
        # margin for round-off in the matmul distances; a wider radius only costs re-evaluations
        return dist < reach * (1 + 1e-4) + 1e-6

    def objective(self) -> float:
        return float(self.pts.n * self.C - self.cover.double().sum())


def _first_gains(r2: Tensor, C: float, euclidean: bool, unclipped: bool) -> tuple[Tensor, Tensor]:
    """Gains (or upper bounds on them) for the empty set, from the squared distances ``r2`` of the points
    to their mean, in O(n d); also which of them are exact.

    Without clipping (``C`` >= every distance) the first gain of ``j`` is ``n C - sum_i d(i, j)``. For
    squared distances ``sum_i |x_i - x_j|^2 = sum_i |x_i - mean|^2 + n |x_j - mean|^2`` exactly; for
    distances, convexity gives ``sum_i |x_i - x_j| >= n |x_j - mean|``, an upper bound on the gain that
    lets the lazy loop skip the points far from the mean.
    """
    n, dtype, device = r2.shape[0], torch.float64, r2.device  # running gains are kept in float64
    if not unclipped:
        return torch.full((n,), math.inf, dtype=dtype, device=device), torch.zeros(
            n, dtype=torch.bool, device=device
        )
    r2 = r2.double()
    if euclidean:
        g = n * C - n * r2.sqrt()
        g += 1e-5 * n * C  # round-off margin: a bound must not fall below the float gain
        return g, torch.zeros(n, dtype=torch.bool, device=device)
    g = n * C - (r2.sum() + n * r2)
    return g, torch.ones(n, dtype=torch.bool, device=device)


def facility_location(
    x: Tensor,
    budget: int,
    *,
    greedy: Greedy = "lazy",
    metric: Metric = "euclidean",
    C: float | None = None,
    chunk_size: int | None = None,
    epsilon: float = 0.01,
    generator: torch.Generator | None = None,
    progress: bool = False,
    engine: Engine = "auto",
) -> FacilityLocationResult:
    """Select ``budget`` rows of ``x`` maximising the facility-location objective greedily.

    Args:
        x: ``(n, d)`` float tensor (CPU or CUDA) or NumPy array.
        budget: number of rows to select, ``1 <= budget <= n``.
        greedy: ``"lazy"`` (exact greedy), ``"naive"`` (the same picks, no bounds: slow) or ``"stochastic"``.
        metric: ``"euclidean"`` or ``"sqeuclidean"`` (the latter is what apricot calls "euclidean").
        C: similarity offset; default :func:`max_distance_bound` (>= every distance, so nothing is clipped).
        chunk_size: candidates per ``(chunk_size, n)`` distance block; memory is ``O(n * chunk_size)``.
            ``None``: 64 on CPU, up to 2048 on GPU (see ``_check_chunk``).
        epsilon: stochastic greedy's accuracy; each step samples ``ceil(n / budget * log(1 / epsilon))``.
        generator: CPU generator for the stochastic samples.
        progress: show a tqdm progress bar over the picks.
        engine: ``"auto"`` (the compiled loop of :mod:`genlib.select._greedy_cpu` on CPU for up to 24
            dimensions, batched torch matrix products otherwise and on GPU),
            ``"compiled"`` (CPU only; meant for low dimensions, where its pruning pays: 2-5x faster
            than ``"torch"`` at 2-10-D, even at 32-D, much slower beyond) or ``"torch"`` (any
            device). Both give the greedy picks; they may differ between exactly tied candidates, by
            round-off.
    """
    x = as_tensor(x, "x", ndim=2).detach()  # selection is not differentiable
    n = x.shape[0]
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= n:
        raise ValueError(f"budget must be an int in [1, n={n}], got {budget!r}")
    _check_greedy(greedy)
    metric = _check_metric(metric)
    chunk_size = _check_chunk(chunk_size, n, x.device)
    bound = max_distance_bound(x, metric)
    C = bound if C is None else check_positive(C, "C")
    if greedy == "stochastic" and not 0.0 < float(epsilon) < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half precision cannot hold sums over n points

    if engine not in ("auto", "compiled", "torch"):
        raise ValueError(f"engine must be 'auto', 'compiled' or 'torch', got {engine!r}")
    if engine == "compiled" and x.device.type != "cpu":
        raise ValueError(f"engine='compiled' runs on the CPU only, got x on {x.device}")

    sample_size = n if greedy != "stochastic" else math.ceil(n / budget * math.log(1.0 / float(epsilon)))
    if engine == "compiled" or (
        engine == "auto" and x.device.type == "cpu" and x.shape[1] <= _COMPILED_MAX_DIM
    ):
        x = x - x.mean(0)  # translation invariant; centring keeps the float32 differences small
        # Stale gains are upper bounds (submodularity); +inf = never evaluated.
        bounds, fresh = _first_gains((x * x).sum(1), C, metric == "euclidean", bound <= C)
        return _compiled_greedy(x, budget, greedy, metric, C, bounds, fresh, sample_size, generator, progress)

    device = x.device
    cov = _Coverage(_Points(x, metric), C, chunk_size, x.dtype, device)
    # Stale gains are upper bounds (submodularity); +inf = never evaluated, -inf = selected.
    bounds, fresh = _first_gains(cov.pts.left[:, -2], cov.C, cov.euclidean, bound <= C)
    # Update gains exactly (cost: changed points x n) when fewer points changed than a step would
    # otherwise re-evaluate; the first picks change most points, and re-evaluation is then as cheap.
    incremental_max = int(_INCREMENTAL_FRACTION * min(n, sample_size))
    tracked = max(chunk_size, int(_TRACKED_FRACTION * min(n, sample_size)))
    picked: list[int] = []
    gains: list[float] = []
    for step in tqdm(range(budget), desc="facility location", disable=not progress):
        if greedy == "naive":
            remaining = torch.nonzero(bounds > -math.inf).squeeze(1)
            bounds[remaining] = cov.gains(remaining)
            fresh[remaining] = True
        cand = None
        if sample_size < n - step:
            remaining = torch.nonzero(bounds > -math.inf).squeeze(1)
            perm = torch.randperm(remaining.numel(), generator=generator)[:sample_size]
            cand = remaining[perm.to(device)]
        # Stale bounds do not move within a step, so their order is taken once (a top slice, widened
        # if used up) and walked in batches until the best exact gain beats the next bound: O(batch)
        # per batch instead of O(n) argmax / topk passes.
        pool = torch.arange(n, device=device) if cand is None else cand
        exact = bounds[pool].masked_fill(~fresh[pool], -math.inf)
        best = float(exact.max()) if exact.numel() else -math.inf
        batch, width, queue, at = _FIRST_BATCH, 4 * chunk_size, None, 0
        while True:
            if queue is None or at == queue.numel():
                stale = bounds[pool].masked_fill(fresh[pool], -math.inf)
                top_bounds, top = stale.topk(min(width, stale.numel()))
                queue = pool[top[top_bounds > -math.inf]]  # drop picked / fresh ones
                negated = bounds[queue].neg().tolist()  # ascending, for bisect
                at, width = 0, 2 * width
                if queue.numel() == 0:
                    break
            # ">=": a stale bound equal to the best exact gain may hide a tie with a lower index
            end = min(bisect.bisect_right(negated, -best, at), at + batch)
            if end == at:
                break
            top = queue[at:end]
            at = end
            g = cov.gains(top)
            bounds[top] = g
            fresh[top] = True
            best = max(best, float(g.max()))
            batch = min(2 * batch, chunk_size)
        view = bounds if cand is None else bounds[cand]
        j = int(view.argmax()) if cand is None else int(cand[view.argmax()])
        picked.append(j)
        gains.append(float(bounds[j]))
        bounds[j] = -math.inf
        rows, old, new, d = cov.add(j, step)
        affected = cov.affected(rows, old, d)
        if greedy != "naive" and 0 < rows.numel() <= incremental_max:
            # The highest exact gains stay exact (cost: changed points x tracked); tracking all of them
            # costs more than the re-evaluations it saves, since most never come near the top again.
            keep = fresh & affected & (bounds > -math.inf)
            if int(keep.sum()) > tracked:
                keep &= bounds >= bounds.masked_fill(~keep, -math.inf).topk(tracked).values[-1]
            cols = torch.nonzero(keep).squeeze(1)
            bounds[cols] -= cov.decrease(rows, old, new, d.sqrt(), cols)
            affected &= ~keep
        fresh &= ~affected  # gains the pick may have lowered and that were not updated go stale

    indices = torch.tensor(picked, dtype=torch.long, device=device)
    weights = torch.bincount(cov.assign, minlength=budget).to(x.dtype)
    return FacilityLocationResult(
        indices=indices,
        weights=weights,
        gains=torch.tensor(gains, dtype=x.dtype, device=device),
        objective=cov.objective(),
        assignment=cov.assign,
        C=C,
    )


def _compiled_greedy(
    x: Tensor,
    budget: int,
    greedy: str,
    metric: str,
    C: float,
    bounds: Tensor,
    fresh: Tensor,
    sample_size: int,
    generator: torch.Generator | None,
    progress: bool,
) -> FacilityLocationResult:
    """:func:`facility_location` on the compiled CPU engine (see :mod:`genlib.select._greedy_cpu`), for
    centred points ``x``."""
    from genlib.select import _greedy_cpu as engine

    mode = {"lazy": engine.LAZY, "naive": engine.NAIVE, "stochastic": engine.STOCHASTIC}[greedy]
    seed = int(torch.randint(2**62, (), generator=generator)) if greedy == "stochastic" else 0
    run = engine.CpuGreedy(
        x,
        budget,
        C,
        metric == "euclidean",
        mode,
        bounds,
        bool(fresh.all()),
        sample_size,
        seed,
    )
    # picks in blocks, so the progress bar moves and the compiled loop runs uninterrupted in between
    block = max(1, budget // 50) if progress else budget
    with tqdm(total=budget, desc="facility location", disable=not progress) as bar:
        for first in range(0, budget, block):
            stop = min(budget, first + block)
            run.run(first, stop)
            bar.update(stop - first)
    assignment = torch.from_numpy(run.assignment())
    return FacilityLocationResult(
        indices=torch.from_numpy(run.picks.copy()),
        weights=torch.bincount(assignment, minlength=budget).to(x.dtype),
        gains=torch.from_numpy(run.gains).to(x.dtype),
        objective=run.objective(),
        assignment=assignment,
        C=C,
    )


def facility_location_objective(
    x: Tensor,
    indices: Tensor,
    *,
    metric: Metric = "euclidean",
    C: float | None = None,
    chunk_size: int | None = None,
) -> float:
    """``F(S) = sum_i max(0, C - min_{j in S} d(x_i, x_j))`` for the rows ``indices``, in chunks."""
    x = as_tensor(x, "x", ndim=2).detach()  # selection is not differentiable
    metric = _check_metric(metric)
    if isinstance(indices, Tensor):
        indices = indices.to(device=x.device, dtype=torch.long).reshape(-1)
    else:
        indices = torch.as_tensor(indices, dtype=torch.long, device=x.device).reshape(-1)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= x.shape[0]):
        raise ValueError(
            f"indices must lie in [0, {x.shape[0]}), got range [{indices.min()}, {indices.max()}]"
        )
    C = max_distance_bound(x, metric) if C is None else check_positive(C, "C")
    cov = _Coverage(_Points(x, metric), C, _check_chunk(chunk_size, x.shape[0], x.device), x.dtype, x.device)
    for pos, j in enumerate(indices.tolist()):
        cov.add(j, pos)
    return cov.objective()
