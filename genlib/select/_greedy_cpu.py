"""Compiled CPU engine for :func:`genlib.select.facility_location` (numba, already installed with librosa).

Written by hand because the work that makes exact greedy fast is per-candidate pruning, which a batched
matrix product cannot express and which eager torch pays ~50 ns per element for:

- **Blocks of nearby points.** The points are sorted by k-means cell and split into blocks of
  ``BLOCK`` consecutive points, stored coordinate-major, so a candidate's gain over a block is one fused,
  vectorised loop (distances by ``|x|^2 + |y|^2 - 2 x.y``, clipped improvements, their sum).
- **Dead blocks.** A block that contributes nothing to a candidate's gain (every point in it is already
  covered at least as well) contributes nothing for the rest of the run, since coverage only improves.
  Each candidate keeps the list of its live blocks, and every evaluation drops the dead ones: after a few
  dozen picks a candidate still needs only ~10-20 % of the points.
- **Lazy greedy with a binary heap** (Minoux 1978), ties to the lowest original index, so the picks are
  those of the plain greedy.

Memory is the lists, 2 bytes per candidate and block (``n^2 / 16`` bytes, 156 MB at n = 50k) up to a
budget (1 GiB by default, ~130k points); beyond it each list holds fewer blocks (at least ``MIN_LIST``)
and candidates with more live blocks are evaluated in full, so memory stays O(n). Plus O(n d).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

Tensor = torch.Tensor

BLOCK = 32  # points per block: the unit of pruning and of the vector loop (32 fills the vector unit)
MIN_LIST = 256  # live-block list length kept however large n is (memory then 512 bytes per point)
CELL_SIZE = 64  # points per k-means cell: blocks are halves of cells, so they stay compact
_KMEANS_ITERS = 4  # Lloyd steps; the cells only steer pruning, never the result

# No "afn"/"arcp": sqrt and division stay exact, so every evaluation of a distance gives the same bits
_FLAGS = {"reassoc", "contract", "nsz"}
_jit = numba.njit(cache=True, fastmath=_FLAGS, nogil=True)

LAZY, NAIVE, STOCHASTIC = 0, 1, 2


@_jit
def _before(hv, hp, orig, a, b):
    """Heap order: larger bound first, then lower original index."""
    return hv[a] > hv[b] or (hv[a] == hv[b] and orig[hp[a]] < orig[hp[b]])


@_jit
def _sift_down(hv, hp, orig, i, size):
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        best = left
        if left + 1 < size and _before(hv, hp, orig, left + 1, left):
            best = left + 1
        if not _before(hv, hp, orig, best, i):
            return
        hv[i], hv[best] = hv[best], hv[i]
        hp[i], hp[best] = hp[best], hp[i]
        i = best


@_jit
def heapify(hv, hp, orig):
    size = hv.shape[0]
    for i in range(size // 2 - 1, -1, -1):
        _sift_down(hv, hp, orig, i, size)


@_jit
def _distance(blk, lane, q, qn, zero, tag, euclidean):
    """Distance (in the metric) from the query ``p`` to point ``lane`` of a block, by
    ``|x_i - x_p|^2 = |x_i|^2 + |x_p|^2 - 2 x_i . x_p`` (``q = -2 x_p``, ``qn = |x_p|^2``)."""
    dim = len(tag)  # a compile-time constant (see CpuGreedy): the coordinate loop unrolls
    d = blk[dim, lane] + qn
    for k in range(dim):
        d += blk[k, lane] * q[k]
    d = max(d, zero)  # round-off of the expansion
    return math.sqrt(d) if len(euclidean) else d


@_jit
def block_gain(xb, cover, b, q, qn, zero, tag, euclidean):
    """``sum_i max(0, cover_i - d(i, p))`` over the points of block ``b``. A fixed trip count lets LLVM
    turn the loop (with :func:`_distance` inlined) into whole vectors, with no scalar tail."""
    blk = xb[b]
    cov = cover[b * BLOCK : (b + 1) * BLOCK]
    s = zero
    for lane in range(BLOCK):
        s += max(cov[lane] - _distance(blk, lane, q, qn, zero, tag, euclidean), zero)
    return s


@_jit
def home_gain(xb, cover, b, q, qn, own, zero, tag, euclidean):
    """:func:`block_gain` for the block holding ``p`` itself (lane ``own``), whose distance to
    itself is set to exactly 0 (a separate function: the per-lane test would slow every block)."""
    blk = xb[b]
    cov = cover[b * BLOCK : (b + 1) * BLOCK]
    s = zero
    for lane in range(BLOCK):
        d = zero if lane == own else _distance(blk, lane, q, qn, zero, tag, euclidean)
        s += max(cov[lane] - d, zero)
    return s


@_jit
def gain(xb, qt, cover, p, live, nlive, zero, stats, tag, euclidean):
    """Marginal gain of the point at sorted position ``p``, summed over its live blocks
    ``live[p, :nlive[p]]``; blocks found to contribute nothing are dropped from the list for good. A
    list rather than a mask: no unpredictable branch per block. ``nlive[p] < 0``: no list (never
    evaluated, or more live blocks than a list holds), every block is evaluated and a list is made
    when the live ones fit."""
    dim = len(tag)  # a compile-time constant (see CpuGreedy): the coordinate loop unrolls
    q, qn = qt[p, :dim], qt[p, dim]
    home = p // BLOCK
    blocks = live[p]
    cap = blocks.shape[0]
    count = nlive[p]
    everything = count < 0
    if everything:
        count = xb.shape[0]
    total = 0.0
    kept = 0
    for r in range(count):
        b = r if everything else np.int64(blocks[r])
        if b == home:
            s = home_gain(xb, cover, b, q, qn, p - b * BLOCK, zero, tag, euclidean)
        else:
            s = block_gain(xb, cover, b, q, qn, zero, tag, euclidean)
        total += s
        if kept < cap:
            blocks[kept] = b
        kept += s > 0
    nlive[p] = kept if kept <= cap else -1
    stats[0] += 1
    stats[1] += count * BLOCK
    return total


@_jit
def dense_gains(xb, qt, cover, cand, bounds, live, nlive, zero, stats, tag, euclidean):
    """Gains of all candidates ``cand`` at once over all blocks (a step that must evaluate every
    candidate), in tiles of candidates x blocks that stay in cache; rebuilds their live-block lists."""
    dim = len(tag)  # a compile-time constant (see CpuGreedy): the coordinate loop unrolls
    cap = live.shape[1]
    tile = 128
    for t in range(cand.shape[0]):
        bounds[cand[t]] = 0.0
        nlive[cand[t]] = 0
    for t0 in range(0, cand.shape[0], tile):
        t1 = min(t0 + tile, cand.shape[0])
        for b in range(xb.shape[0]):
            for t in range(t0, t1):
                p = cand[t]
                if p // BLOCK == b:
                    s = home_gain(xb, cover, b, qt[p, :dim], qt[p, dim], p - b * BLOCK, zero, tag, euclidean)
                else:
                    s = block_gain(xb, cover, b, qt[p, :dim], qt[p, dim], zero, tag, euclidean)
                bounds[p] += s
                if nlive[p] < cap:
                    live[p, nlive[p]] = b
                nlive[p] += s > 0
    for t in range(cand.shape[0]):
        if nlive[cand[t]] > cap:
            nlive[cand[t]] = -1  # too many live blocks to list: evaluate all of them next time
    stats[0] += cand.shape[0]
    stats[1] += xb.shape[0] * BLOCK * cand.shape[0]


@_jit
def select(xb, qt, cover, nearest, assign, stamp, p, step, scratch, tag, euclidean):
    """Add the point at sorted position ``p`` (the ``step``-th pick) to the selection (one pass
    over the points, distances by direct differences, so covers are as exact as the inputs).

    A candidate ``k`` drew gain from a point ``i`` whose cover the pick improves only if
    ``e_ik < c_i`` (``e`` Euclidean distance, ``c_i`` the old cover in Euclidean units); since
    ``e_ik >= e_pk - e_pi``, every candidate with ``e_pk >= max_i (c_i + e_pi)`` keeps its gain, so
    its exact gain from this step stays exact for the next one.
    """
    dim = len(tag)
    xp = qt[p, :dim] * -0.5  # exact: a power of two
    reach = 0.0
    for b in range(xb.shape[0]):
        for lane in range(BLOCK):
            i = b * BLOCK + lane
            d = xp[0] * 0  # direct differences here: exactly 0 between duplicates
            for k in range(dim):
                diff = xb[b, k, lane] - xp[k]
                d += diff * diff
            e = math.sqrt(d)  # Euclidean distance, whatever the metric
            if len(euclidean):
                d = e
            scratch[i] = e
            if d < nearest[i]:  # strict: ties stay with the earlier pick
                nearest[i] = d
                assign[i] = step
            if d < cover[i]:
                old = cover[i] if len(euclidean) else math.sqrt(cover[i])
                reach = max(reach, old + e)
                cover[i] = d
    reach = reach * (1 + 1e-4) + 1e-6  # round-off margin: a wider reach only costs re-evaluations
    for i in range(scratch.shape[0]):
        if stamp[i] == step and scratch[i] >= reach:
            stamp[i] = step + 1


@_jit
def greedy_steps(
    xb, qt, orig, cover, nearest, assign, bounds, stamp, live, nlive, heap_v, heap_p, heap_size,
    remaining, n_remaining, mode, sample_size, dense_step, zero, tag, euclidean, first, stop, picks, gains,
    stats,
):  # fmt: skip
    """Run greedy picks ``first .. stop - 1``; every array argument is state kept between calls.

    ``bounds[p]`` is the last evaluated gain of position ``p`` (an upper bound once stale) and
    ``stamp[p]`` the pick at which it was evaluated. Lazy mode keeps the candidates in the heap
    ``heap_v / heap_p`` (size ``heap_size[0]``); naive and stochastic modes use
    ``remaining[:n_remaining[0]]``.
    """
    scratch = np.empty(cover.shape[0])
    for step in range(first, stop):
        if mode == LAZY:
            size = heap_size[0]
            if step == dense_step:
                cand = heap_p[:size].copy()
                dense_gains(xb, qt, cover, cand, bounds, live, nlive, zero, stats, tag, euclidean)
                for t in range(size):
                    heap_v[t] = bounds[heap_p[t]]
                    stamp[heap_p[t]] = step
                heapify(heap_v[:size], heap_p[:size], orig)
            while stamp[heap_p[0]] != step:
                p = heap_p[0]
                bounds[p] = gain(xb, qt, cover, p, live, nlive, zero, stats, tag, euclidean)
                heap_v[0] = bounds[p]
                stamp[p] = step
                _sift_down(heap_v, heap_p, orig, 0, size)
            best = heap_p[0]
            size -= 1
            heap_v[0], heap_p[0] = heap_v[size], heap_p[size]
            _sift_down(heap_v, heap_p, orig, 0, size)
            heap_size[0] = size
        else:
            r = n_remaining[0]
            count = r
            if mode == STOCHASTIC and sample_size < r:
                count = sample_size
                for t in range(count):  # partial Fisher-Yates: a uniform sample without replacement
                    u = t + np.random.randint(r - t)  # noqa: NPY002 (numba's own generator)
                    remaining[t], remaining[u] = remaining[u], remaining[t]
            cand = remaining[:count]
            if mode == NAIVE:
                for p in cand:
                    bounds[p] = gain(xb, qt, cover, p, live, nlive, zero, stats, tag, euclidean)
                    stamp[p] = step
            # lazily within the candidates: by bound, until no stale bound can beat the best exact gain
            # (an equal bound may still hide a tie with a lower index, so it is evaluated too)
            order = np.argsort(-bounds[cand], kind="mergesort")
            best = -1
            for t in order:
                p = cand[t]
                if best >= 0 and bounds[p] < bounds[best]:
                    break
                if stamp[p] != step:
                    bounds[p] = gain(xb, qt, cover, p, live, nlive, zero, stats, tag, euclidean)
                    stamp[p] = step
                if (
                    best < 0
                    or bounds[p] > bounds[best]
                    or (bounds[p] == bounds[best] and orig[p] < orig[best])
                ):
                    best = p
            for t in range(r):  # drop the pick from the remaining candidates
                if remaining[t] == best:
                    remaining[t] = remaining[r - 1]
                    break
            n_remaining[0] = r - 1
        picks[step] = orig[best]
        gains[step] = bounds[best]
        select(xb, qt, cover, nearest, assign, stamp, best, step, scratch, tag, euclidean)


@_jit
def _seed(seed):
    np.random.seed(seed)  # noqa: NPY002 (seeds numba's generator, not NumPy's)


def spatial_order(x: Tensor, cell_size: int = CELL_SIZE) -> Tensor:
    """A permutation of the rows of ``x`` that keeps nearby points together: sorted by k-means cell (a
    few Lloyd steps from evenly strided rows, deterministic), and within a cell along the data's main
    axis, so that consecutive blocks of ``BLOCK`` points are compact."""
    n = x.shape[0]
    k = max(1, -(-n // cell_size))
    centers = x[torch.linspace(0, n - 1, k).round().long()].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(_KMEANS_ITERS):
        # nearest centre by |c|^2 - 2 x.c (|x|^2 is the same for every centre): one matrix product
        labels = torch.addmm((centers * centers).sum(1), x, centers.T, alpha=-2).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        moved = counts > 0
        centers[moved] = sums[moved] / counts[moved, None].to(x.dtype)
    axis = torch.linalg.eigh(x.T.double() @ x.double()).eigenvectors[:, -1].to(x.dtype)
    by_axis = torch.argsort(x @ axis)
    return by_axis[torch.argsort(labels[by_axis], stable=True)]


class CpuGreedy:
    """State of one greedy run on the CPU engine; ``run(first, stop)`` makes picks ``first .. stop - 1``.

    ``x`` is ``(n, d)`` float32/float64 on the CPU, ``C`` the coverage cap (in the metric's units),
    ``first_bounds`` initial gains (exact where ``first_exact``), ``seed`` the stochastic mode's seed,
    ``list_bytes`` the memory for the live-block lists (beyond it they are shortened, see ``gain``).
    """

    def __init__(
        self,
        x: Tensor,
        budget: int,
        C: float,
        euclidean: bool,
        mode: int,
        first_bounds: Tensor,
        first_exact: bool,
        sample_size: int,
        seed: int,
        list_bytes: int = 1 << 30,
    ):
        n, dim = x.shape
        padded = -(-n // BLOCK) * BLOCK
        dtype = x.numpy().dtype
        self.orig = spatial_order(x).numpy()
        # positions n .. padded - 1 are padding: cover 0, so they never add to a gain. Block b holds
        # the coordinates of its points row by row, then their squared norms: one contiguous piece.
        xs = np.zeros((dim + 1, padded), dtype=dtype)
        xs[:dim, :n] = x.numpy()[self.orig].T
        xs[dim] = (xs[:dim].astype(np.float64) ** 2).sum(0)
        self.xb = np.ascontiguousarray(xs.reshape(dim + 1, padded // BLOCK, BLOCK).transpose(1, 0, 2))
        self.qt = np.ascontiguousarray(xs[:, :n].T)  # per point: -2 x_p and |x_p|^2, the query side
        self.qt[:, :dim] *= -2
        self.cover = np.full(padded, C, dtype=dtype)
        self.cover[n:] = 0
        self.C = float(self.cover[0]) if n else C
        self.nearest = np.full(padded, np.inf, dtype=dtype)
        self.assign = np.zeros(padded, dtype=np.int64)
        blocks = padded // BLOCK
        # Each candidate's live blocks, up to ``cap`` of them: all blocks while the lists fit in
        # ``list_bytes``, else fewer (a candidate with more live blocks is evaluated in full), so memory
        # stays O(n * cap). Pages are only touched once a candidate is evaluated.
        item = 2 if blocks <= 1 << 16 else 4
        cap = max(1, min(blocks, max(MIN_LIST, list_bytes // max(n * item, 1))))
        self.live = np.empty((n, cap), dtype=np.uint16 if item == 2 else np.uint32)
        self.nlive = np.full(n, -1, dtype=np.int64)
        self.stats = np.zeros(2, dtype=np.int64)  # gain evaluations, point distances computed
        self.bounds = first_bounds.double().numpy()[self.orig].copy()
        self.stamp = np.full(padded, 0 if first_exact else -1, dtype=np.int64)
        self.heap_v = self.bounds.copy()
        self.heap_p = np.arange(n, dtype=np.int64)
        if mode == LAZY:
            heapify(self.heap_v, self.heap_p, self.orig)
        self.heap_size = np.array([n], dtype=np.int64)
        self.remaining = np.arange(n, dtype=np.int64)
        self.n_remaining = np.array([n], dtype=np.int64)
        self.picks = np.zeros(budget, dtype=np.int64)
        self.gains = np.zeros(budget, dtype=np.float64)
        self.mode, self.sample_size = mode, sample_size
        # the step that evaluates every candidate anyway (bounds of +inf, or the n C - ... bounds of the
        # empty set after the first pick), done block by block for all candidates at once (lazy mode)
        self.dense_step = 0 if np.isinf(self.bounds).all() else 1
        # The dimension and the metric travel as tuple lengths, which are part of the argument types:
        # numba compiles (and caches) one version per dimension and metric, with the coordinate loop
        # unrolled and the metric's branch folded away.
        self.tag, self.euclidean = (0,) * dim, (0,) if euclidean else ()
        self.zero = dtype.type(0)
        if mode == STOCHASTIC:
            _seed(seed)

    def run(self, first: int, stop: int) -> None:
        greedy_steps(
            self.xb, self.qt, self.orig, self.cover, self.nearest, self.assign, self.bounds,
            self.stamp, self.live, self.nlive, self.heap_v, self.heap_p, self.heap_size, self.remaining,
            self.n_remaining, self.mode, self.sample_size, self.dense_step, self.zero, self.tag,
            self.euclidean, first, stop,
            self.picks, self.gains, self.stats,
        )  # fmt: skip

    def assignment(self) -> np.ndarray:
        out = np.empty(self.orig.shape[0], dtype=np.int64)
        out[self.orig] = self.assign[: self.orig.shape[0]]
        return out

    def objective(self) -> float:
        n = self.orig.shape[0]
        return float(n * self.C - self.cover[:n].astype(np.float64).sum())
