"""AdaCore: Hutchinson Hessian diagonals, averaging, and the effect of preconditioning."""

import pytest
import torch
import torch.nn.functional as F

from genlib.select import (
    AdaCore,
    Craig,
    cross_entropy_gradient,
    cross_entropy_hessian_diagonal,
    hutchinson_diagonal,
    last_layer_loss,
    logit_gradients,
)


def _data(n=300, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, k, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)


def _two_groups(n=60):
    logits = torch.tensor([[1.0, 0.0]], dtype=torch.float64).repeat(n, 1)
    spread = torch.linspace(1.0, 3.0, n // 2, dtype=torch.float64)
    emb = torch.zeros(n, 2, dtype=torch.float64)
    emb[: n // 2, 0] = spread
    emb[n // 2 :, 1] = spread / 10
    return logits, torch.zeros(n, dtype=torch.long), emb


def test_closed_form_is_the_autograd_hessian_diagonal():
    logits, labels = _data(6)
    emb = torch.randn(6, 3, dtype=torch.float64)
    for i in range(6):
        z, y, phi = logits[i], labels[i : i + 1], emb[i]
        h = torch.func.hessian(lambda z_, y=y: F.cross_entropy(z_[None], y))(z)
        torch.testing.assert_close(cross_entropy_hessian_diagonal(z[None])[0], h.diagonal())
        w0 = torch.zeros(5, 3, dtype=torch.float64)
        hw = torch.func.hessian(lambda w, z=z, y=y, phi=phi: F.cross_entropy((z + w @ phi)[None], y))(w0)
        expected = hw.reshape(15, 15).diagonal().reshape(5, 3)
        torch.testing.assert_close(cross_entropy_hessian_diagonal(z[None], phi[None])[0], expected)


def test_closed_form_gradient_is_autograd_and_keeps_the_label_entry_of_confident_rows():
    logits, labels = _data(20)
    emb = torch.randn(20, 3, dtype=torch.float64)
    for phi, shape in ((None, (20, 5)), (emb, (20, 5, 3))):
        auto = torch.func.grad(lambda d, phi=phi: last_layer_loss(logits, labels, phi)(d).sum())(
            torch.zeros(shape, dtype=torch.float64))
        torch.testing.assert_close(cross_entropy_gradient(logits, labels, phi), auto)
    # a 45-nat gap: p_y - 1 rounds to 0 in float64, -(sum of the other p) does not
    g = cross_entropy_gradient(torch.tensor([[45.0, 0.0]], dtype=torch.float64), torch.tensor([0]))
    tail = torch.exp(torch.tensor(-45.0, dtype=torch.float64))
    torch.testing.assert_close(g, torch.tensor([[-1.0, 1.0]], dtype=torch.float64) * tail, rtol=1e-12, atol=0)


@pytest.mark.parametrize("with_embeddings", [False, True])
def test_hutchinson_matches_p_times_1_minus_p(with_embeddings):
    n_probes = 400
    logits, labels = _data(100, 4)
    emb = torch.randn(100, 3, dtype=torch.float64) if with_embeddings else None
    shape = (100, 4) if emb is None else (100, 4, 3)
    est = hutchinson_diagonal(
        last_layer_loss(logits, labels, emb),
        torch.zeros(shape, dtype=torch.float64),
        n_probes,
        generator=torch.Generator().manual_seed(0),
    )
    exact = cross_entropy_hessian_diagonal(logits, emb)
    # Var[z_k (Hz)_k] = sum_{l != k} H_kl^2 for Rademacher z: the Monte-Carlo error is known per entry.
    p = torch.softmax(logits, 1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    if emb is not None:
        H = torch.einsum("nkl,nf,ng->nkflg", H, emb, emb).reshape(100, 12, 12)
    off = (H**2).sum(2) - H.diagonal(dim1=1, dim2=2) ** 2
    sigma = (off / n_probes).sqrt().reshape(exact.shape)
    err = est - exact
    assert bool((err.abs() <= 6 * sigma + 1e-12).all())
    z = err[sigma > 0] / sigma[sigma > 0]
    assert abs(float(z.mean())) < 0.2 and 0.7 < float(z.std()) < 1.3  # unbiased, with the predicted spread


def test_first_fit_is_gradient_over_hessian_and_averages_follow_adam():
    logits, labels = _data(40)
    ada = AdaCore(0.2, hessian="exact", beta1=0.5, beta2=0.75, max_step=1e6).fit(logits, labels)
    g1, h1 = logit_gradients(logits, labels), cross_entropy_hessian_diagonal(logits)
    torch.testing.assert_close(ada.features_, g1 / h1.abs())
    logits2 = logits + torch.randn_like(logits)
    ada.fit(logits2, labels)
    g2, h2 = logit_gradients(logits2, labels), cross_entropy_hessian_diagonal(logits2)
    m = (0.5 * 0.5 * g1 + 0.5 * g2) / (1 - 0.25)
    v = (0.75 * 0.25 * h1**2 + 0.25 * h2**2) / (1 - 0.75**2)
    torch.testing.assert_close(ada.features_, m / v.sqrt())
    assert ada.step_ == 2
    ada.fit(logits[:10], labels[:10])  # new examples: the averages restart
    assert ada.step_ == 1


def test_confident_draws_keep_the_newton_step_and_wrong_labels_are_clipped():
    # Eq. 4.9 at the logits: g_k / H_kk = 1 / (1 - p_k) off the label, -1 / p_y on it. Confident draws
    # (p_k down to e^-40, where an absolute eps of 1e-8 would have turned 1 into ~0) keep it; a
    # confidently wrong label (p_y = e^-40) is clipped to -max_step.
    gaps = torch.tensor([5.0, 20.0, 40.0])
    logits = torch.stack([torch.tensor([g, 0.0, 0.0]) for g in gaps])  # float32 on purpose
    labels = torch.zeros(3, dtype=torch.long)
    f = AdaCore(budget=3, hessian="exact", per_class=False).fit(logits, labels).features_
    assert f.dtype == torch.float32
    p = torch.softmax(logits.double(), 1)
    expected = torch.cat([-1 / p[:, :1], 1 / (1 - p[:, 1:])], 1).float()
    torch.testing.assert_close(f, expected)
    assert bool((f[:, 1:] > 0.99).all())
    wrong = AdaCore(budget=1, hessian="exact", max_step=50.0).fit(logits[2:], torch.tensor([1]))
    assert float(wrong.features_[0, 1]) == -50.0 and float(wrong.features_[0, 0]) == 50.0


def test_zero_curvature_gives_the_clip_bound_not_nan():
    ada = AdaCore(budget=1, hessian="exact", max_step=7.0)
    ada.fit(torch.tensor([[800.0, 0.0]]), torch.tensor([0]))  # p_1 underflows even in float64: g = H = 0
    assert torch.equal(ada.features_, torch.tensor([[0.0, 0.0]]))
    ada = AdaCore(budget=1, hessian="exact", max_step=7.0)
    ada.fit(torch.tensor([[800.0, 0.0]]), torch.tensor([1]))  # wrong label: g = (1, -1), H = 0
    assert torch.equal(ada.features_, torch.tensor([[7.0, -7.0]]))


def test_power_zero_is_craig():
    logits, labels = _data(200)
    a = AdaCore(0.1, power=0.0, hessian="exact").fit_select(logits, labels)
    b = Craig(0.1).fit_select(logits, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_preconditioning_moves_picks_to_the_flat_group():
    # One class, equal logits. Group A has large embeddings (high curvature p(1-p) phi^2), group B small
    # ones. In gradient space B is a tight clump near 0, so CRAIG spends its budget on A; dividing by the
    # Hessian scales each group's spread by 1/phi, so AdaCore must move its picks to B.
    n = 60
    logits, labels, emb = _two_groups(n)  # group A: rows < 30, embeddings 10x those of group B
    craig_idx, _ = Craig(budget=6, features="gradients").fit_select(
        torch.func.grad(lambda d: last_layer_loss(logits, labels, emb)(d).sum())(
            torch.zeros(n, 2, 2, dtype=torch.float64)
        ).reshape(n, -1),
        labels,
    )
    ada_idx, ada_w = AdaCore(budget=6, hessian="exact").fit_select(logits, labels, emb)
    in_b = lambda idx: int((idx >= n // 2).sum())  # noqa: E731
    assert in_b(craig_idx) <= 1
    assert in_b(ada_idx) >= 5
    assert float(ada_w.sum()) == n


@pytest.mark.parametrize("preconditioner", ["psgd", "psgd-dense"])
def test_psgd_preconditioner_moves_picks_to_the_flat_group(preconditioner):
    # One P shared by all examples: it scales the coordinate only group B uses by ~1/curvature there, so
    # B's gradients spread out and take picks from A (CRAIG takes 1 of 6 from B, see above).
    logits, labels, emb = _two_groups()
    ada = AdaCore(budget=6, preconditioner=preconditioner, psgd_steps=50, seed=0)
    idx, w = ada.fit_select(logits, labels, emb)
    assert int((idx >= 30).sum()) >= 3
    assert float(w.sum()) == 60
    # features are P applied to the (bias-corrected, first-fit) gradient
    g = ada.gradients_.reshape(60, -1)
    expected = ada.preconditioner_.precondition(g if preconditioner == "psgd-dense" else ada.gradients_)
    torch.testing.assert_close(ada.features_, expected.reshape(60, -1))


def test_psgd_diag_converges_to_inverse_rms_curvature():
    # The diagonal PSGD fixed point is P_k = sqrt(E[z_k^2] / E[(Hz)_k^2]) = 1 / sqrt(mean_i sum_l H_i,kl^2)
    # for Rademacher z: check it after repeated fits (the preconditioner keeps fitting across calls).
    logits, labels = _data(500, 4)
    ada = AdaCore(0.1, preconditioner="psgd", psgd_steps=50, psgd_batch=500, n_hutchinson=4, seed=0)
    for _ in range(10):
        ada.fit(logits, labels)
    p = torch.softmax(logits, 1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    target = 1 / (H**2).sum(2).mean(0).sqrt()
    ratio = ada.preconditioner_.q.square() / target
    assert bool(((ratio - 1).abs() < 0.05).all()), ratio


def test_psgd_accepts_a_preconditioner_of_the_right_shape():
    from genlib.optim.preconditioners import DiagPreconditioner

    logits, labels = _data(50, 3)
    pre = DiagPreconditioner(3, lr=0.05, dtype=torch.float64)
    ada = AdaCore(0.2, preconditioner=pre, psgd_steps=3).fit(logits, labels)
    assert ada.preconditioner_ is pre and pre.num_updates == 3
    with pytest.raises(ValueError, match="preconditioner has shape"):
        AdaCore(0.2, preconditioner=DiagPreconditioner(4)).fit(logits, labels)


def test_hutchinson_adacore_runs_per_class_and_is_seeded():
    logits, labels = _data(200)
    a = AdaCore(0.1, seed=1).fit_select(logits, labels)
    b = AdaCore(0.1, seed=1).fit_select(logits, labels)
    assert torch.equal(a[0], b[0])
    for c in range(5):
        assert float(a[1][labels[a[0]] == c].sum()) == int((labels == c).sum())


def test_bad_input():
    logits, labels = _data(20)
    with pytest.raises(ValueError, match="embeddings must have 20 rows"):
        AdaCore(0.5).fit(logits, labels, torch.randn(19, 3))
    with pytest.raises(ValueError, match="labels are required"):
        AdaCore(0.5).fit(logits)
    with pytest.raises(ValueError, match="beta2"):
        AdaCore(0.5, beta2=1.0)
    with pytest.raises(ValueError, match="hessian"):
        AdaCore(0.5, hessian="gauss-newton")
    with pytest.raises(ValueError, match="n_hutchinson"):
        AdaCore(0.5, n_hutchinson=0)
    with pytest.raises(ValueError, match="power"):
        AdaCore(0.5, power=-1)
    with pytest.raises(ValueError, match="max_step"):
        AdaCore(0.5, max_step=0.5)
    with pytest.raises(ValueError, match="max_step"):
        AdaCore(0.5, max_step=float("inf"))
    with pytest.raises(ValueError, match="preconditioner must be"):
        AdaCore(0.5, preconditioner="kron")
    with pytest.raises(ValueError, match="psgd_steps"):
        AdaCore(0.5, preconditioner="psgd", psgd_steps=0)
    with pytest.raises(ValueError, match="n_samples"):
        hutchinson_diagonal(lambda p: p.sum(1), torch.zeros(3, 2), 0)
