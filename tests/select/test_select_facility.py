"""Facility location: greedy picks and objective against explicit n x n references."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from genlib.select import (
    facility_location,
    facility_location_objective,
    max_distance_bound,
    pairwise_distances,
)


@pytest.fixture(autouse=True, params=["compiled", "torch"])
def engine(request, monkeypatch):
    """Every test here runs on both CPU engines: the compiled (numba) loop and the batched torch one."""
    monkeypatch.setitem(facility_location.__kwdefaults__, "engine", request.param)
    return request.param


def _dist(x: torch.Tensor, metric: str) -> torch.Tensor:
    return torch.from_numpy(
        cdist(x.numpy(), x.numpy(), "euclidean" if metric == "euclidean" else "sqeuclidean")
    )


def _brute_greedy(x, k, metric="euclidean", C=None):
    """Textbook greedy on the explicit similarity matrix; ties to the lowest index."""
    D = _dist(x, metric)
    C = float(D.max()) if C is None else C
    S = (C - D).clamp(min=0)
    cover = torch.zeros(len(x), dtype=torch.float64)
    picks, gains = [], []
    for _ in range(k):
        g = (S - cover).clamp(min=0).sum(1)
        g[picks] = -1.0
        j = int(g.argmax())
        picks.append(j)
        gains.append(float(g[j]))
        cover = torch.maximum(cover, S[j])
    return picks, gains, float(cover.sum())


def _assert_greedy(x, picks, metric="euclidean", C=None, rel=1e-9):
    """Every pick is an argmax of the true marginal gain given the picks before it (ties are common:
    two points that only cover each other have equal gains, and round-off decides between them)."""
    D = _dist(x, metric)
    C = float(D.max()) if C is None else C
    S = (C - D).clamp(min=0)
    cover = torch.zeros(len(x), dtype=torch.float64)
    assert len(set(picks)) == len(picks)
    for j in picks:
        g = (S - cover).clamp(min=0).sum(1)
        assert float(g[j]) >= float(g.max()) * (1 - rel) - 1e-12
        cover = torch.maximum(cover, S[j])


def _objective(x, picks, metric="euclidean", C=None):
    D = _dist(x, metric)
    C = float(D.max()) if C is None else C
    return float((C - D[:, picks]).clamp(min=0).max(1).values.sum())


def _assert_exact_greedy(x, k, metric, **kwargs):
    """facility_location picks, gains and objective equal the textbook greedy's (inputs without ties)."""
    picks, gains, obj = _brute_greedy(x, k, metric)
    res = facility_location(x, k, metric=metric, **kwargs)
    assert res.indices.tolist() == picks
    torch.testing.assert_close(res.gains[1:], torch.tensor(gains[1:], dtype=torch.float64))
    dmax = float(_dist(x, metric).max())
    assert res.objective == pytest.approx(obj + len(x) * (res.C - dmax), rel=1e-10)


def _blobs(n, d, centers, seed):
    g = torch.Generator().manual_seed(seed)
    c = 6 * torch.randn(centers, d, generator=g, dtype=torch.float64)
    return c[torch.randint(0, centers, (n,), generator=g)] + torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("greedy", ["lazy", "naive"])
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_matches_brute_force(metric, greedy, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(150, 4, generator=g, dtype=torch.float64)
    picks, gains, obj = _brute_greedy(x, 25, metric)
    # a small chunk size runs the multi-block path; C is irrelevant to the picks when >= max distance
    res = facility_location(x, 25, greedy=greedy, metric=metric, chunk_size=7)
    _assert_greedy(x, res.indices.tolist(), metric)
    # the gain sequence of exact greedy is the same whichever of two tied points comes first
    torch.testing.assert_close(res.gains[1:], torch.tensor(gains[1:], dtype=torch.float64))
    # the objective carries the default C (an upper bound on the max distance): shift by n * (C - max d)
    dmax = float(_dist(x, metric).max())
    assert res.objective == pytest.approx(obj + len(x) * (res.C - dmax), rel=1e-10)
    assert bool((res.gains[1:] <= res.gains[:-1] + 1e-9).all())  # diminishing returns


def test_lazy_matches_brute_force_on_clustered_data_and_truncated_C():
    # Clustered data exercises the "far candidates keep exact gains" shortcut; a small C clips sim at 0.
    x = _blobs(300, 3, 6, seed=3)
    _, _, obj = _brute_greedy(x, 30, "euclidean", C=4.0)
    res = facility_location(x, 30, C=4.0, chunk_size=16)
    _assert_greedy(x, res.indices.tolist(), C=4.0)
    assert res.objective == pytest.approx(obj, rel=1e-10)
    _assert_greedy(x, facility_location(x, 30).indices.tolist())


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_exact_gain_updates_in_low_dimension(metric):
    # In 2-D most picks change few points and the pruned exact updates (decrease) do most of the work.
    x = torch.rand(800, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, gains, obj = _brute_greedy(x, 80, metric)
    res = facility_location(x, 80, metric=metric)
    _assert_greedy(x, res.indices.tolist(), metric)
    torch.testing.assert_close(res.gains[1:], torch.tensor(gains[1:], dtype=torch.float64))
    dmax = float(_dist(x, metric).max())
    assert res.objective == pytest.approx(obj + 800 * (res.C - dmax), rel=1e-10)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_lazy_bookkeeping_matches_brute_force_in_10d(metric, monkeypatch, engine):
    # torch engine: tiny blocks and chunks: exact updates of only a few tracked gains (the rest go
    # stale), the decrease split over many candidate blocks and row prefixes, and a stale queue that
    # runs out and is widened. Compiled engine: 13 point blocks, most of them pruned by the last picks.
    import genlib.select.facility as fl

    monkeypatch.setattr(fl, "_TRACKED_FRACTION", 0.02)
    monkeypatch.setattr(fl, "_DECREASE_BLOCK", 40)
    monkeypatch.setattr(fl, "_INCREMENTAL_FRACTION", 0.9)
    x = torch.randn(400, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _assert_exact_greedy(x, 40, metric, chunk_size=3)  # no ties among these


def test_objective_function_matches_explicit_matrix():
    x = torch.randn(80, 3, dtype=torch.float64)
    for metric in ("euclidean", "sqeuclidean"):
        C = max_distance_bound(x, metric)
        assert C >= float(_dist(x, metric).max())
        idx = torch.randperm(80)[:9]
        got = facility_location_objective(x, idx, metric=metric, C=C, chunk_size=5)
        assert got == pytest.approx(_objective(x, idx.tolist(), metric, C), rel=1e-10)


def test_greedy_within_1_minus_1_over_e_of_exhaustive_optimum():
    for seed in range(4):
        x = torch.randn(11, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        C = float(_dist(x, "euclidean").max())
        res = facility_location(x, 3, C=C)
        best = max(_objective(x, list(s), C=C) for s in itertools.combinations(range(11), 3))
        assert res.objective <= best + 1e-9
        assert res.objective >= (1 - 1 / math.e) * best


def test_stochastic_greedy_close_to_lazy():
    x = torch.randn(2000, 6, generator=torch.Generator().manual_seed(0))
    lazy = facility_location(x, 40)
    stoch = facility_location(x, 40, greedy="stochastic", generator=torch.Generator().manual_seed(1))
    assert len(set(stoch.indices.tolist())) == 40
    assert stoch.objective >= 0.99 * lazy.objective
    again = facility_location(x, 40, greedy="stochastic", generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.indices, stoch.indices)


def test_weights_are_cluster_sizes_summing_to_n():
    x = _blobs(400, 5, 4, seed=1)
    res = facility_location(x, 12)
    assert float(res.weights.sum()) == 400
    nearest = _dist(x, "euclidean")[:, res.indices].argmin(1)  # ties to the earlier pick, as documented
    assert torch.equal(res.assignment, nearest)
    assert torch.equal(res.weights, torch.bincount(nearest, minlength=12).double())
    assert bool((res.weights >= 1).all())  # each medoid covers at least itself


def test_float32_path_agrees_with_float64():
    x = torch.randn(3000, 10, generator=torch.Generator().manual_seed(0))
    r32 = facility_location(x, 50)
    r64 = facility_location(x.double(), 50)
    assert r32.objective == pytest.approx(r64.objective, rel=1e-5)
    assert len(set(r32.indices.tolist()) & set(r64.indices.tolist())) >= 45


def test_chunked_distances_equal_unchunked():
    x = torch.randn(53, 7, dtype=torch.float64)
    y = torch.randn(11, 7, dtype=torch.float64)
    for metric in ("euclidean", "sqeuclidean"):
        ref = cdist(x.numpy(), y.numpy(), metric)
        one = pairwise_distances(x, y, metric=metric)
        chunked = pairwise_distances(x, y, metric=metric, chunk_size=4)
        np.testing.assert_allclose(one.numpy(), ref, rtol=1e-9, atol=1e-9)
        assert torch.equal(one, chunked)
    assert float(pairwise_distances(x).diagonal().abs().max()) == 0.0
    # the greedy gives the same picks for any chunk size
    base = facility_location(x, 10, chunk_size=1)
    for chunk in (3, 64):
        other = facility_location(x, 10, chunk_size=chunk)
        _assert_greedy(x, other.indices.tolist())
        assert other.objective == pytest.approx(base.objective, rel=1e-12)


def test_accepts_numpy_and_duplicates():
    x = np.repeat(np.random.default_rng(0).normal(size=(5, 2)), 3, axis=0)  # 5 distinct points, 3 copies each
    res = facility_location(x, 7)
    assert res.indices.dtype == torch.long
    assert float(res.weights.sum()) == 15
    assert len({tuple(x[i]) for i in res.indices[:5].tolist()}) == 5  # every distinct point before any copy
    assert float(res.gains[5:].abs().max()) < 1e-6  # copies add nothing (up to round-off of the distances)
    assert res.weights[:5].tolist() == [3.0] * 5  # ties go to the earlier pick


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget": 0}, "budget"),
        ({"budget": 11}, "budget"),
        ({"budget": 2.0}, "budget"),
        ({"budget": 2, "greedy": "fast"}, "greedy"),
        ({"budget": 2, "metric": "cosine"}, "metric"),
        ({"budget": 2, "chunk_size": 0}, "chunk_size"),
        ({"budget": 2, "C": -1.0}, "C"),
        ({"budget": 2, "greedy": "stochastic", "epsilon": 1.5}, "epsilon"),
        ({"budget": 2, "engine": "numba"}, "engine"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        facility_location(torch.randn(10, 2), **kwargs)


def test_bad_points():
    with pytest.raises(ValueError, match="NaN"):
        facility_location(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="dims"):
        facility_location(torch.randn(10), 1)
    with pytest.raises(ValueError, match="indices"):
        facility_location_objective(torch.randn(5, 2), torch.tensor([5]))


def test_matches_apricot_when_installed():
    apricot = pytest.importorskip("apricot")
    x = np.random.default_rng(0).normal(size=(200, 5))
    ref = apricot.FacilityLocationSelection(20, metric="euclidean", optimizer="naive").fit(x)
    # apricot's "euclidean" is the squared distance with C = its maximum
    ours = facility_location(x, 20, metric="sqeuclidean")
    assert ours.indices.tolist() == [int(i) for i in ref.ranking]  # no ties among these picks
    # the first gain is n C - sum of distances and C differs (apricot: the max; ours: an upper bound)
    torch.testing.assert_close(ours.gains[1:], torch.from_numpy(ref.gains[1:]), rtol=1e-9, atol=0)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_block_pruning_matches_brute_force_over_many_picks(metric):
    # 2000 clustered points in 10-D, 120 picks: by the end most of a candidate's 63 point blocks are
    # pruned (they add nothing and never will), so a wrong pruning rule would change picks or gains.
    _assert_exact_greedy(_blobs(2000, 10, 12, seed=7), 120, metric)


def test_engines_agree_in_float32():
    # The compiled engine's distances (norm expansion per block, direct differences for the covers) and
    # the torch engine's (one matmul) differ by round-off; on untied data they pick the same points.
    x = torch.randn(3000, 10, generator=torch.Generator().manual_seed(2))
    for metric in ("euclidean", "sqeuclidean"):
        a = facility_location(x, 60, metric=metric, engine="compiled")
        b = facility_location(x, 60, metric=metric, engine="torch")
        assert a.indices.tolist() == b.indices.tolist()
        torch.testing.assert_close(a.gains, b.gains, rtol=1e-4, atol=0)
        assert a.objective == pytest.approx(b.objective, rel=1e-6)
        assert torch.equal(a.assignment, b.assignment)


def test_compiled_engine_needs_cpu_input():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(ValueError, match="engine='compiled'"):
        facility_location(torch.randn(10, 2, device="cuda"), 2, engine="compiled")


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_compiled_engine_with_short_live_block_lists(metric, monkeypatch, engine):
    # Beyond its memory budget the compiled engine keeps at most a few live blocks per candidate and
    # evaluates the others in full; with lists of 2 of 13 blocks most evaluations take that path.
    if engine != "compiled":
        pytest.skip("compiled engine only")
    import genlib.select._greedy_cpu as cpu

    monkeypatch.setattr(cpu, "MIN_LIST", 2)
    real = cpu.CpuGreedy

    def short_lists(*args, **kwargs):
        return real(*args, **kwargs, list_bytes=1)

    monkeypatch.setattr(cpu, "CpuGreedy", short_lists)
    _assert_exact_greedy(_blobs(400, 10, 5, seed=9), 40, metric)
