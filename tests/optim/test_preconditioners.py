"""Oracle tests: each preconditioner family fitted on pairs with known curvature reaches the closed form.

With E[vvᵀ] = I/m and h = H v + ε, the PSGD criterion E[hᵀPh + vᵀP⁻¹v] is minimised by
P* = (H² + E[εεᵀ]·m)^(-1/2). Deterministic pair batches make the expectations exact, so the tolerances
are tight: a flipped sign, a missing transpose or P = Q instead of QᵀQ all land far from P*.
"""

from __future__ import annotations

import math

import pytest
import torch

from genlib.optim import (
    DensePreconditioner,
    DiagPreconditioner,
    KronPreconditioner,
    LRAPreconditioner,
    XMatPreconditioner,
    psd_norm_lower_bound,
)

DT = torch.float64


def inv_sqrtm(S: torch.Tensor) -> torch.Tensor:
    w, U = torch.linalg.eigh(S)
    return U @ torch.diag(w.rsqrt()) @ U.mT


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(A - B) / torch.linalg.matrix_norm(B))


def sym_with_spectrum(eigs: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=DT))
    return U @ torch.diag(eigs) @ U.mT


def randomize(pre, seed: int = 0):
    """Start from a random point of the family's group, so no symmetry hides a wrong update rule."""
    g = torch.Generator().manual_seed(seed)
    st = pre.state_dict()
    for k, t in st["tensors"].items():
        if k == "invQ":
            continue
        r = 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype)
        if t.ndim == 2 and t.shape[0] == t.shape[1]:  # a (triangular or full) Q factor: I + R
            r = r if k == "Q" and "invQ" in st["tensors"] else torch.triu(r)
            st["tensors"][k] = torch.eye(t.shape[0], dtype=t.dtype) + r
        elif k == "b":  # X-matrix anti-diagonal (centre entry stays 0)
            st["tensors"][k] = r * torch.tensor(
                [0.0 if (t.numel() % 2 and i == t.numel() // 2) else 1.0 for i in range(t.numel())],
                dtype=t.dtype,
            )
        elif k in ("a", "d", "q"):
            st["tensors"][k] = 1.0 + r.abs()
    if "invQ" in st["tensors"]:
        st["tensors"]["invQ"] = torch.linalg.inv(st["tensors"]["Q"])
    pre.load_state_dict(st)
    return pre


def fit(pre, v, h, steps):
    for _ in range(steps):
        pre.update(v, h)
    return pre


def indefinite_h(d: int, seed: int = 0) -> torch.Tensor:
    # |eigenvalues| log-spaced over [0.1, 10] (condition number 100), alternating signs: indefinite.
    eigs = torch.logspace(-1, 1, d, dtype=DT) * torch.tensor([1.0, -1.0] * d, dtype=DT)[:d]
    return sym_with_spectrum(eigs, seed)


@pytest.mark.parametrize(("triangular", "definite"), [(False, False), (True, False), (False, True)])
def test_dense_reaches_inverse_sqrt_of_h2_plus_noise(triangular, definite):
    d = 8
    H = sym_with_spectrum(torch.logspace(-1, 1, d, dtype=DT), 2) if definite else indefinite_h(d)
    E = 0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=DT)
    # v = [I; I] and h = [H + ε; H − ε] (rows): E[vvᵀ] = I/d, E[hhᵀ] = (H² + EEᵀ)/d, cross terms cancel.
    v = torch.cat([torch.eye(d, dtype=DT)] * 2)
    h = torch.cat([H + E.mT, H - E.mT])
    pre = fit(randomize(DensePreconditioner(d, triangular=triangular, dtype=DT, init_scale=1.0)), v, h, 2500)
    target = inv_sqrtm(H @ H + E @ E.mT)
    assert rel_err(pre.to_dense(), target) < 1e-2
    if not triangular:  # the Woodbury-carried inverse stays the inverse
        assert torch.allclose(pre.Q @ pre.invQ, torch.eye(d, dtype=DT), atol=1e-8)
    else:
        assert torch.equal(pre.Q, torch.triu(pre.Q))


def test_dense_stochastic_pairs_approach_optimum():
    d = 6
    H = indefinite_h(d, seed=3)
    g = torch.Generator().manual_seed(0)
    pre = DensePreconditioner(d, dtype=DT, lr=0.05)
    sigma = 0.2
    for _ in range(1500):
        v = torch.randn(32, d, generator=g, dtype=DT)
        pre.update(v, v @ H + sigma * torch.randn(32, d, generator=g, dtype=DT))
    target = inv_sqrtm(H @ H + sigma**2 * torch.eye(d, dtype=DT))
    assert rel_err(pre.to_dense(), target) < 0.1


@pytest.mark.parametrize("storage", [DT, torch.float32])
def test_dense_single_pair_updates_approach_optimum_and_keep_the_inverse(storage):
    # One pair per update (what the optimizers pass) takes the in-place rank-2 / Woodbury path, which uses
    # bQ = v and Q⁻¹a = h instead of recomputing them: a wrong identity breaks both the fit and Q·Q⁻¹ = I.
    d = 6
    H = indefinite_h(d, seed=4)
    g = torch.Generator().manual_seed(1)
    pre = randomize(DensePreconditioner(d, dtype=storage, lr=0.04, init_scale=1.0), seed=2)
    sigma = 0.2
    target = inv_sqrtm(H @ H + sigma**2 * torch.eye(d, dtype=DT))
    assert rel_err(pre.to_dense().to(DT), target) > 0.5
    for _ in range(2000):  # last Q⁻¹ refresh at 1792: the final 208 updates are Woodbury-only
        v = torch.randn(1, d, generator=g, dtype=DT)
        pre.update(v, v @ H + sigma * torch.randn(1, d, generator=g, dtype=DT))
    assert rel_err(pre.to_dense().to(DT), target) < 0.1
    tol = 1e-9 if storage == DT else 1e-4
    assert torch.allclose(pre.Q @ pre.invQ, torch.eye(d, dtype=storage), atol=tol)


@pytest.mark.parametrize("lipschitz", [False, True])
def test_diag_reaches_elementwise_closed_form(lipschitz):
    g = torch.Generator().manual_seed(0)
    shape = (3, 5)
    v = torch.randn(64, *shape, generator=g, dtype=DT)
    scale = torch.logspace(-0.5, 0.5, 15, dtype=DT).reshape(shape)
    h = v * scale + 0.1 * torch.randn(64, *shape, generator=g, dtype=DT)
    pre = fit(DiagPreconditioner(shape, dtype=DT, lipschitz=lipschitz), v, h, 2000)
    target = ((v * v).mean(0) / (h * h).mean(0)).sqrt()
    assert torch.allclose(pre.q.square(), target, rtol=1e-6)
    assert torch.allclose(pre.precondition(h[:2]), target * h[:2], rtol=1e-6)


def test_diag_elementwise_step_is_faster_on_a_diagonal_hessian_with_a_wide_spread():
    # Appendix A.1.4: per-entry step sizes on the diagonal group. With curvatures from 1e-3 to 1e3 the
    # globally normalised step moves the flat entries by ~mu * 1e-6 per fit; per-entry steps reach the
    # same fixed point, P = |H|^-1, in a couple of hundred fits.
    g = torch.Generator().manual_seed(0)
    curv = torch.logspace(-3, 3, 12, dtype=DT)
    v = torch.randn(32, 12, generator=g, dtype=DT)
    h = v * curv
    target = ((v * v).mean(0) / (h * h).mean(0)).sqrt()
    fast = fit(DiagPreconditioner(12, dtype=DT, elementwise_step=True), v, h, 200)
    slow = fit(DiagPreconditioner(12, dtype=DT), v, h, 200)
    assert torch.allclose(fast.q.square(), target, rtol=1e-8)
    assert float(((slow.q.square() - target).abs() / target).max()) > 0.5
    # also the globally normalised fit gets there, slowly, on a narrow spread (the same fixed point)
    narrow = v * torch.linspace(1.0, 2.0, 12, dtype=DT)
    both = [fit(DiagPreconditioner(12, dtype=DT, elementwise_step=e), v, narrow, 300) for e in (False, True)]
    torch.testing.assert_close(both[0].q, both[1].q, rtol=1e-8, atol=0)
    with pytest.raises(ValueError, match="elementwise_step"):
        DiagPreconditioner(3, elementwise_step=1)


def test_lra_diagonal_factor_takes_the_same_elementwise_steps():
    # LRA's d is appendix A.1.4's diagonal factor B: at rank 0 its fit is the diagonal one, step rule included
    g = torch.Generator().manual_seed(1)
    v = torch.randn(16, 8, generator=g, dtype=DT)
    h = v * torch.logspace(-2, 2, 8, dtype=DT)
    for e in (False, True):
        lra = fit(LRAPreconditioner(8, 0, dtype=DT, elementwise_step=e), v, h, 50)
        diag = fit(DiagPreconditioner(8, dtype=DT, elementwise_step=e), v, h, 50)
        torch.testing.assert_close(lra.d, diag.q, rtol=1e-10, atol=0)
    # with a low-rank part too, the per-entry steps get far closer on a diagonal Hessian spanning 1e4
    target = torch.diag(((v * v).mean(0) / (h * h).mean(0)).sqrt())
    err = [rel_err(fit(LRAPreconditioner(8, 2, dtype=DT, elementwise_step=e), v, h, 2000).to_dense(), target)
           for e in (False, True)]
    assert err[1] < 0.3 < 0.9 < err[0]
    with pytest.raises(ValueError, match="elementwise_step"):
        LRAPreconditioner(8, 2, elementwise_step="yes")


@pytest.mark.parametrize("d", [6, 7])
def test_xmat_reaches_optimum_on_x_shaped_curvature(d):
    g = torch.Generator().manual_seed(d)
    a = torch.rand(d, generator=g, dtype=DT) + 0.5
    b = 0.4 * torch.rand(d, generator=g, dtype=DT)
    X = torch.diag(a) + torch.fliplr(torch.diag(b))
    X = X + X.mT  # symmetric, X-shaped
    v = torch.eye(d, dtype=DT)
    pre = fit(randomize(XMatPreconditioner(d, dtype=DT, init_scale=1.0)), v, v @ X, 1500)
    assert rel_err(pre.to_dense(), inv_sqrtm(X @ X)) < 1e-4
    if d % 2:
        assert pre.b[d // 2] == 0


def test_lra_reaches_optimum_on_scaled_identity_plus_low_rank():
    d, r = 12, 2
    g = torch.Generator().manual_seed(0)
    W, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=DT))
    H = 2.0 * torch.eye(d, dtype=DT) + W @ torch.diag(torch.tensor([15.0, -1.2], dtype=DT)) @ W.mT
    v = torch.eye(d, dtype=DT)
    target = inv_sqrtm(H @ H)
    lra = {
        rank: fit(LRAPreconditioner(d, rank, dtype=DT), v, v @ H, steps)
        for rank, steps in ((0, 300), (r, 2500))
    }
    err = {rank: rel_err(pre.to_dense(), target) for rank, pre in lra.items()}
    assert err[r] < 0.02
    assert err[0] > 0.3  # a diagonal cannot represent the low-rank part: the structure is what helps


def test_lra_single_pair_updates_reach_optimum():
    # One pair per update with rank 4 takes the thin-product path for the U/V step norms (2n < rank).
    d, r = 12, 2
    g = torch.Generator().manual_seed(0)
    W, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=DT))
    H = 2.0 * torch.eye(d, dtype=DT) + W @ torch.diag(torch.tensor([15.0, -1.2], dtype=DT)) @ W.mT
    pre = LRAPreconditioner(d, 4, dtype=DT, lr=0.1)
    for _ in range(2000):
        v = torch.randn(1, d, generator=g, dtype=DT)
        pre.update(v, v @ H)
    assert rel_err(pre.to_dense(), inv_sqrtm(H @ H)) < 0.03


@pytest.mark.parametrize("n", [1, 2, 8])
def test_lra_step_norms_match_their_definition(n):
    from genlib.optim.preconditioners import _sq_norms_through

    g = torch.Generator().manual_seed(n)
    xa, xb = torch.randn(n, 6, generator=g, dtype=DT), torch.randn(n, 6, generator=g, dtype=DT)
    f = torch.randn(40, 6, generator=g, dtype=DT)
    na2, nb2 = _sq_norms_through(xa, xb, f)  # n = 1, 2: thin products; n = 8: the Gram route
    assert torch.allclose(na2, (xa @ f.mT).square().sum()) and torch.allclose(nb2, (xb @ f.mT).square().sum())


# local coordinates × Lipschitz steps
KRON_FITS = [(c, lip) for lip in (False, True) for c in KronPreconditioner.COORDS]


def randomize_kron(pre: KronPreconditioner, seed: int = 0) -> KronPreconditioner:
    """:func:`randomize`, with QUAD's matrix factors made symmetric (its group: SPD matrices)."""
    randomize(pre, seed)
    if pre.coords == "QUAD":
        for f in pre.factors:
            if f.ndim == 2:
                f.copy_((f + f.mT) / 2)
    return pre


@pytest.mark.parametrize(("coords", "lipschitz"), KRON_FITS)
def test_kron_reaches_kronecker_optimum_on_matrix_parameter(coords, lipschitz):
    m, n = 4, 5
    H1 = sym_with_spectrum(torch.tensor([1.0, -2.0, 4.0, 0.5], dtype=DT), 0)
    H2 = sym_with_spectrum(torch.logspace(0, 1, n, dtype=DT), 1)
    v = torch.eye(m * n, dtype=DT).reshape(m * n, m, n)
    h = H1 @ v @ H2  # H = H1 ⊗ H2 acting on the matrix parameter
    pre = KronPreconditioner((m, n), dtype=DT, init_scale=1.0, coords=coords, lipschitz=lipschitz)
    pre = fit(randomize_kron(pre), v, h, 1500)
    Hk = torch.kron(H1, H2)
    assert rel_err(pre.to_dense(), inv_sqrtm(Hk @ Hk)) < 1e-3
    assert [f.ndim for f in pre.factors] == [2, 2]


@pytest.mark.parametrize(("coords", "lipschitz"), KRON_FITS)
def test_kron_third_order_tensor_with_diagonal_fallback(coords, lipschitz):
    shape = (2, 3, 12)  # 12 > max_skew * 6: the last dim gets a diagonal factor
    H1 = sym_with_spectrum(torch.tensor([1.0, 3.0], dtype=DT), 0)
    H2 = sym_with_spectrum(torch.tensor([1.0, -2.0, 0.5], dtype=DT), 1)
    D3 = torch.logspace(-0.5, 0.5, 12, dtype=DT)
    pre = KronPreconditioner(shape, max_skew=1.5, dtype=DT, coords=coords, lipschitz=lipschitz)
    assert [f.ndim for f in pre.factors] == [2, 2, 1]
    v = torch.eye(72, dtype=DT).reshape(72, *shape)
    h = torch.einsum("ia,jb,nabk,k->nijk", H1, H2, v, D3)
    fit(pre, v, h, 600)
    Hk = torch.kron(torch.kron(H1, H2), torch.diag(D3))
    assert rel_err(pre.to_dense(), inv_sqrtm(Hk @ Hk)) < 1e-4


def test_kron_quad_keeps_q_symmetric_positive_definite_on_noisy_pairs():
    # Single noisy pairs of an indefinite H: QEQ's Q drifts off symmetry, QUAD's stays SPD by construction.
    m = 5
    H = sym_with_spectrum(torch.tensor([3.0, -1.0, 0.2, 8.0, -0.5], dtype=DT), 2)
    g = torch.Generator().manual_seed(4)
    pre = {c: KronPreconditioner((m, 3), dtype=DT, coords=c) for c in ("QUAD", "QEQ")}
    for _ in range(400):
        v = torch.randn(1, m, 3, generator=g, dtype=DT)
        h = H @ v + 0.3 * torch.randn(1, m, 3, generator=g, dtype=DT)
        for p in pre.values():
            p.update(v, h)
    q = pre["QUAD"].factors[0]
    assert torch.equal(q, q.mT) and float(torch.linalg.eigvalsh(q).min()) > 0
    q = pre["QEQ"].factors[0]
    assert float((q - q.mT).abs().max()) > 1e-6


@pytest.mark.parametrize("coords", ["QEQ", "QUAD"])
def test_kron_whitening_with_probes_integrated_out_reaches_inverse_root_covariance(coords):
    # Gradients g ~ N(0, C1 ⊗ C2) and no probes (v=None): P → C^(-1/2), as with sampled probes (EQ). A wrong
    # E[v_k v_kᵀ] (e.g. numel·I instead of numel/d_k·I) misses by a scale factor far outside the tolerance.
    m, n = 4, 5
    g = torch.Generator().manual_seed(3)
    C1 = sym_with_spectrum(torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=DT), 5)
    C2 = sym_with_spectrum(torch.logspace(-1, 1, n, dtype=DT), 6)
    L1, L2 = torch.linalg.cholesky(C1), torch.linalg.cholesky(C2)
    target = inv_sqrtm(torch.kron(C1, C2))
    pre = {c: KronPreconditioner((m, n), dtype=DT, coords=c, lr=0.02) for c in (coords, "EQ")}
    for _ in range(4000):
        grad = L1 @ torch.randn(m, n, generator=g, dtype=DT) @ L2.mT
        pre[coords].update(None, grad)
        pre["EQ"].update(torch.randn(m, n, generator=g, dtype=DT), grad)
    assert rel_err(pre[coords].to_dense(), target) < 0.12
    assert rel_err(pre["EQ"].to_dense(), target) < 0.12
    with pytest.raises(ValueError, match="v=None"):
        pre["EQ"].update(None, grad)


def test_kron_max_size_and_scalar_shapes():
    pre = KronPreconditioner((3, 50), max_size=10)
    assert [f.ndim for f in pre.factors] == [2, 1]
    assert [f.ndim for f in KronPreconditioner((512,)).factors] == [1]  # 512 > max_skew · 1
    assert [f.ndim for f in KronPreconditioner((512,), max_skew=math.inf).factors] == [2]
    # wide layers: dims above max_size (default 1024) get a cheap diagonal factor, and heavyball's memory-save
    # modes make the largest dim (one_diag) or every dim (all_diag) diagonal
    assert KronPreconditioner((1026, 512)).kinds == ["diag", "tri"]
    assert KronPreconditioner((300, 512), memory_save_mode="one_diag").kinds == ["tri", "diag"]
    assert KronPreconditioner((300, 512), memory_save_mode="all_diag").kinds == ["diag", "diag"]
    assert KronPreconditioner((40,), memory_save_mode="one_diag", max_skew=math.inf).kinds == ["tri"]
    with pytest.raises(ValueError, match="memory_save_mode"):
        KronPreconditioner((3, 4), memory_save_mode="some_diag")
    s = KronPreconditioner(())
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=g, dtype=torch.float32)
    for _ in range(300):
        s.update(v, 4.0 * v)
    assert math.isclose(float(s.precondition(torch.tensor(1.0))), 0.25, rel_tol=1e-3)


FAMILIES = [
    lambda dt: DensePreconditioner(6, dtype=dt),
    lambda dt: DensePreconditioner(6, triangular=True, dtype=dt),
    lambda dt: DiagPreconditioner(6, dtype=dt),
    lambda dt: LRAPreconditioner(6, 2, dtype=dt),
    lambda dt: XMatPreconditioner(6, dtype=dt),
    lambda dt: KronPreconditioner((2, 3), dtype=dt),
]


@pytest.mark.parametrize("make", FAMILIES)
def test_apply_qt_is_consistent_with_precondition_and_state_roundtrip(make):
    pre = make(DT)
    g = torch.Generator().manual_seed(0)
    shape = pre.shape
    H = sym_with_spectrum(torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0, -0.7], dtype=DT), 0)
    for _ in range(20):
        v = torch.randn(4, 6, generator=g, dtype=DT)
        pre.update(v.reshape(4, *shape), (v @ H).reshape(4, *shape))
    P = pre.to_dense()
    R = pre.apply_qt(torch.eye(6, dtype=DT).reshape(6, *shape)).reshape(6, 6)  # rows of Q
    assert torch.allclose(R.mT @ R, P, atol=1e-12)  # P = QᵀQ
    assert torch.allclose(P, P.mT, atol=1e-12) and bool((torch.linalg.eigvalsh(P) > 0).all())
    x = torch.randn(3, 5, *shape, generator=g, dtype=DT)  # arbitrary leading batch dims
    assert torch.allclose(pre.precondition(x).reshape(15, 6), x.reshape(15, 6) @ P, atol=1e-12)
    other = make(DT)
    other.load_state_dict(pre.state_dict())
    assert torch.equal(other.precondition(x), pre.precondition(x))
    assert other.num_updates == 20 and other.initialized


def test_zero_curvature_never_produces_nan_and_keeps_identity():
    for pre in (f(torch.float32) for f in FAMILIES):
        v = torch.randn(3, *pre.shape)
        pre.update(v, torch.zeros_like(v))
        P = pre.to_dense()
        assert torch.isfinite(P).all()
        assert not pre.initialized  # no information yet: the scale is set by the first nonzero pair
        pre.update(v, 1e-30 * torch.ones_like(v))  # tiny but nonzero curvature: huge yet finite scale
        assert torch.isfinite(pre.to_dense()).all() and pre.initialized


def test_init_scale_from_first_pair():
    pre = DensePreconditioner(4, lr=1e-12)  # fit step negligible: Q is just the initial scale
    v = torch.ones(2, 4)
    pre.update(v, 16.0 * v)  # (E‖v‖²/E‖h‖²)^(1/4) = 1/4 → Q = I/4, P = I/16
    assert torch.allclose(pre.to_dense(), torch.eye(4) / 16, rtol=1e-5)
    fixed = DensePreconditioner(4, init_scale=3.0)
    assert torch.allclose(fixed.to_dense(), 9 * torch.eye(4))


@pytest.mark.parametrize("family", ["dense", "kron"])
def test_bfloat16_storage_fits_to_its_rounding_floor(family):
    H1 = sym_with_spectrum(torch.tensor([2.0, -0.5], dtype=DT), 0)
    H2 = sym_with_spectrum(torch.tensor([1.0, 3.0, -1.5], dtype=DT), 1)
    H = torch.kron(H1, H2).float()  # Kronecker-structured so both families can represent the optimum
    target = inv_sqrtm(torch.kron(H1, H2) @ torch.kron(H1, H2)).float()
    pre = (
        DensePreconditioner(6, dtype=torch.bfloat16)
        if family == "dense"
        else KronPreconditioner((2, 3), dtype=torch.bfloat16)
    )
    assert all(t.dtype == torch.bfloat16 for t in pre.state_dict()["tensors"].values())
    v = torch.eye(6)
    pre.update(v.reshape(6, *pre.shape), (v @ H).reshape(6, *pre.shape))
    start = rel_err(pre.to_dense(), target)
    for _ in range(300):
        pre.update(v.reshape(6, *pre.shape), (v @ H).reshape(6, *pre.shape))
    out = pre.precondition(torch.randn(6, *pre.shape))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # bfloat16 keeps ~3 significant digits, so steps below that are rounded away: a floor of ~10 %.
    assert start > 0.4 and rel_err(pre.to_dense(), target) < 0.15


def test_psd_norm_lower_bound_brackets_largest_eigenvalue():
    g = torch.Generator().manual_seed(0)
    for d in (1, 3, 20):
        for _ in range(20):
            A = torch.randn(d, 2 * d, generator=g, dtype=DT)
            S = A @ A.mT
            lam = float(torch.linalg.eigvalsh(S)[-1])
            bound = float(psd_norm_lower_bound(S))
            assert lam / math.sqrt(d) - 1e-9 <= bound <= lam * (1 + 1e-12)
    assert float(psd_norm_lower_bound(torch.zeros(3, 3))) == 0.0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        LRAPreconditioner(5, -1)
    with pytest.raises(ValueError, match="rank"):
        LRAPreconditioner(5, 5)
    with pytest.raises(ValueError, match="lr"):
        DensePreconditioner(3, lr=0.0)
    with pytest.raises(ValueError, match="init_scale"):
        DiagPreconditioner(3, init_scale=-1.0)
    with pytest.raises(ValueError, match="dim"):
        XMatPreconditioner(0)
    with pytest.raises(ValueError, match="dtype"):
        DensePreconditioner(3, dtype=torch.int32)
    pre = KronPreconditioner((2, 3))
    with pytest.raises(ValueError, match=r"v must have shape \(n, \*\(2, 3\)\)"):
        pre.update(torch.randn(4, 3, 2), torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="same shape"):
        pre.update(torch.randn(4, 2, 3), torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="NaN"):
        pre.update(torch.randn(2, 3), torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match=r"g must have shape \(\.\.\., \*\(2, 3\)\)"):
        pre.precondition(torch.randn(3, 2))
    with pytest.raises(ValueError, match="expected KronPreconditioner"):
        pre.load_state_dict(DiagPreconditioner((2, 3)).state_dict())


def test_dense_with_many_pairs_per_update_reaches_the_inverse_absolute_hessian():
    # 2n >= d takes the d × d fitting path (a Langevin sampler passes one pair per chain).
    gen = torch.Generator().manual_seed(3)
    d = 12
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    H = A @ A.mT / d + 0.1 * torch.eye(d, dtype=torch.float64)
    evals, U = torch.linalg.eigh(H)
    target = U @ torch.diag(evals.abs().reciprocal()) @ U.mT
    P = DensePreconditioner(d, dtype=torch.float64)
    for _ in range(800):
        v = torch.randn(500, d, generator=gen, dtype=torch.float64)
        P.update(v, v @ H)
    err = torch.linalg.norm(P.to_dense() - target) / torch.linalg.norm(target)
    assert err < 1e-2


@pytest.mark.parametrize("make", FAMILIES)
def test_precondition_follows_every_update(make):
    # Preconditioning between fits must always use the current Q (compared with a copy rebuilt from the
    # state).
    pre = make(DT)
    g = torch.Generator().manual_seed(5)
    H = sym_with_spectrum(torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0, -0.7], dtype=DT), 1)
    x = torch.randn(3, *pre.shape, generator=g, dtype=DT)
    before = pre.precondition(x)
    for _ in range(3):
        v = torch.randn(4, 6, generator=g, dtype=DT)
        pre.update(v.reshape(4, *pre.shape), (v @ H).reshape(4, *pre.shape))
        fresh = make(DT)
        fresh.load_state_dict(pre.state_dict())
        assert torch.equal(pre.precondition(x), fresh.precondition(x))
    assert not torch.allclose(pre.precondition(x), before)


@pytest.mark.parametrize("n", [1, 3])
def test_lra_carried_m_equals_i_plus_ut_v(n):
    # M = I + UᵀV is updated by rank × rank formulas between its refreshes (every 16 fits): after any
    # number of fits it must equal the product formed from the stored factors, U steps and V steps alike.
    pre = LRAPreconditioner(30, 5, dtype=DT, lr=0.2)
    g = torch.Generator().manual_seed(3)
    H = torch.diag(torch.linspace(0.2, 4.0, 30, dtype=DT))
    eye = torch.eye(5, dtype=DT)
    for _ in range(21):  # stops 5 fits past a refresh, so the last ones are carried updates
        v = torch.randn(n, 30, generator=g, dtype=DT)
        pre.update(v, v @ H)
        torch.testing.assert_close(pre.M, eye + pre.U.mT @ pre.V, rtol=0, atol=1e-12)
    assert not torch.allclose(pre.M, eye, atol=1e-3)  # the factors did move


def test_lra_moves_u_or_v_by_a_fair_reproducible_coin():
    # Each fit moves exactly one factor, chosen by a coin hashed from (seed, update count): about half U,
    # not strictly alternating, the same for the same seed and different for another.
    def picks(seed: int) -> list[str]:
        pre = LRAPreconditioner(20, 3, dtype=DT, seed=seed)
        g = torch.Generator().manual_seed(0)
        out = []
        for k in range(60):
            v = torch.randn(20, generator=g, dtype=DT)
            U, V = pre.U.clone(), pre.V.clone()
            pre.update(v, 2 * v + 0.1 * v.roll(1))
            if k % 16 == 15:  # the balancing fit rescales both factors
                continue
            moved = (not torch.equal(U, pre.U), not torch.equal(V, pre.V))
            assert moved in ((True, False), (False, True))
            out.append("U" if moved[0] else "V")
        return out

    a = picks(0)
    assert 0.3 < a.count("U") / len(a) < 0.7
    assert any(x == y for x, y in zip(a, a[1:]))  # not strict alternation
    assert picks(0) == a and picks(1) != a


def dense_p(pre) -> torch.Tensor:
    """QᵀQ built from the stored tensors, independently of ``precondition`` (Diag, XMat)."""
    if isinstance(pre, DiagPreconditioner):
        return torch.diag(pre.state["q"].reshape(-1).square())
    a, b = pre.state["a"], pre.state["b"]
    Q = torch.diag(a) + torch.diag(b).flip(1)  # Q[j, d−1−j] = b[j]
    return Q.mT @ Q


@pytest.mark.parametrize("make", [lambda: DiagPreconditioner((3, 4), dtype=DT),
                                  lambda: XMatPreconditioner(7, dtype=DT)])
def test_cached_products_are_dropped_when_q_changes(make):
    # Diag caches q², XMat its two coefficient vectors: a fit, a load and a rebind must each drop them.
    pre = randomize(make(), seed=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *pre.shape, generator=g, dtype=DT)
    fresh = lambda: (x.reshape(2, -1) @ dense_p(pre)).reshape(x.shape)  # noqa: E731
    torch.testing.assert_close(pre.precondition(x), fresh())
    assert pre._derived
    pre.update(torch.randn(*pre.shape, generator=g, dtype=DT), torch.randn(*pre.shape, generator=g, dtype=DT))
    assert not pre._derived
    torch.testing.assert_close(pre.precondition(x), fresh())
    other = randomize(make(), seed=4)
    pre.load_state_dict(other.state_dict())
    torch.testing.assert_close(pre.precondition(x), fresh())
    pre.bind({k: t.clone() * 2 for k, t in pre.state.items() if k in pre.keys})
    torch.testing.assert_close(pre.precondition(x), fresh())


def test_kron_keeps_the_product_of_each_narrow_factor_in_its_state():
    # A 40 × 8 matrix: the 8-dim factor (8² ≤ 320) keeps P1 = Q1ᵀQ1 as state, so a step applies one product
    # instead of two; the 40-dim one (40² > 320) does not. P1 follows Q1 through a fit (the first one also
    # sets Q's scale), a load and a rebind, whatever P1 the source held, and P·g is unchanged by it.
    pre = KronPreconditioner((40, 8), max_skew=math.inf, dtype=DT)
    assert pre.products == [1] and "P1" in pre.state and "P0" not in pre.state

    def check():
        q0, q1 = pre.factors
        torch.testing.assert_close(pre.state["P1"], q1.mT @ q1, rtol=1e-14, atol=0)
        x = torch.randn(5, 40, 8, generator=torch.Generator().manual_seed(9), dtype=DT)
        want = torch.einsum("ij,njk,kl->nil", q0.mT @ q0, x, q1.mT @ q1)
        torch.testing.assert_close(pre.precondition(x), want, rtol=1e-12, atol=1e-12)

    check()
    g = torch.Generator().manual_seed(2)
    v = torch.randn(3, 40, 8, generator=g, dtype=DT)
    pre.update(v, 7.0 * (v * torch.linspace(0.5, 2.0, 8, dtype=DT) + 0.1 * v.flip(1)))
    assert not torch.equal(pre.state["P1"], torch.eye(8, dtype=DT))
    check()
    randomize(pre, seed=5)  # loads random factors and a random P1
    check()
    pre.bind({k: (t * 3 if k == "Q1" else torch.zeros_like(t)) if k in ("Q1", "P1") else t.clone()
              for k, t in pre.state.items()})
    check()
