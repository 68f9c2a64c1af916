"""Synthetic augmentation (Algorithm 2 steps 7-8): draws, filter + coreset, pseudo-labels, the trainer."""

import math

import pytest
import torch

from genlib.likelihoods import Gaussian
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.select.entropy import confidence_scores
from genlib.train import SemiSupervisedConfig, SemiSupervisedTrainer
from genlib.train.augment import (
    AugmentConfig,
    Generated,
    generate_labelled,
    latent_logits,
    pseudo_label,
    select_synthetic,
)


def _vae(seed: int = 0, latent: int = 2, dim: int = 8, k: int = 4) -> VAE:
    torch.manual_seed(seed)
    enc = MLPEncoder((dim,), latent, hidden=(32,))
    dec = MLPDecoder(latent, (dim,), hidden=(32,))
    return VAE(enc, dec, Gaussian(0.5), LatentEBMPrior(latent, k, hidden=(32, 32), n_steps=30))


def _generated(n_per_class: int = 40, k: int = 3, seed: int = 0) -> Generated:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n_per_class)
    logits = torch.randn(y.numel(), k, generator=g) * 2.0
    logits[torch.arange(y.numel()), y] += 1.0  # mostly agreeing with the drawn class
    x = torch.randn(y.numel(), 5, generator=g)
    sample_logits = torch.randn(y.numel(), k, generator=g) * 3.0
    return Generated(x=x, y=y, z=torch.randn(y.numel(), 2, generator=g), logits=logits,
                     sample_logits=sample_logits)


def test_entropy_filter_keeps_the_most_confident_agreeing_draws():
    gen = _generated()
    cfg = AugmentConfig(40, entropy_keep=0.5, coreset=None, require_agreement=True)
    sel = select_synthetic(gen, cfg)
    h = confidence_scores(gen.logits, "h2")
    agree = gen.logits.argmax(1) == gen.y
    n_keep = round(0.5 * gen.y.numel())
    # brute force: the n_keep lowest-entropy rows among those that agree with their drawn class
    ranked = [i for i in torch.argsort(h, stable=True).tolist() if agree[i]][:n_keep]
    assert sel.indices.tolist() == sorted(ranked)
    assert torch.equal(sel.x, gen.x[sel.indices]) and torch.equal(sel.y, gen.y[sel.indices])
    assert torch.all(sel.weights == 1)
    n = len(ranked)
    assert sel.counts == {"generated": 120, "filtered": n, "selected": n, "pseudo_labeled": 0}
    assert torch.allclose(sel.entropy, h[sel.indices])


def test_entropy_on_sample_scores_the_langevin_draw_and_keep_one_is_no_filter():
    gen = _generated()
    # eq. 5.14: threshold on the entropy of F(z) at the draw, not of the re-encoded image
    h = confidence_scores(gen.sample_logits, "h2")
    t = float(h.median())
    sel = select_synthetic(gen, AugmentConfig(40, entropy_on="sample", entropy_keep=None, entropy_threshold=t,
                                              coreset=None))
    assert sel.indices.tolist() == torch.nonzero(h <= t).squeeze(1).tolist()
    assert torch.allclose(sel.entropy, h[sel.indices])
    # keeping the whole fraction without the agreement rule keeps every draw
    everything = select_synthetic(gen, AugmentConfig(40, entropy_keep=1.0, coreset=None))
    assert everything.indices.tolist() == list(range(120))
    agreeing = select_synthetic(
        gen, AugmentConfig(40, entropy_keep=1.0, coreset=None, require_agreement=True))
    assert agreeing.indices.tolist() == torch.nonzero(gen.logits.argmax(1) == gen.y).squeeze(1).tolist()
    with pytest.raises(ValueError, match="entropy_on"):
        AugmentConfig(entropy_on="image")
    # per class: each class keeps its own most confident half
    h_dec = confidence_scores(gen.logits, "h2")
    per = select_synthetic(gen, AugmentConfig(40, entropy_keep=0.5, entropy_per_class=True, coreset=None))
    expected = []
    for k in range(3):
        rows = torch.nonzero(gen.y == k).squeeze(1)
        expected += rows[torch.argsort(h_dec[rows], stable=True)[:20]].tolist()
    assert per.indices.tolist() == sorted(expected)


def test_latent_logits_expectation_under_q():
    vae = _vae()
    x = torch.randn(7, 8)
    plain = latent_logits(vae, x)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        assert torch.allclose(plain, vae.prior.logits(mu), atol=1e-6)
        g = torch.Generator().manual_seed(3)
        eps = torch.randn((5, *mu.shape), generator=g)
        std = (0.5 * logvar).exp()
        probs = torch.stack([vae.prior.logits(mu + std * e).softmax(-1) for e in eps]).mean(0)
    # eq. 5.8: log of the average softmax over posterior draws, reproducible through the generator
    est = latent_logits(vae, x, n_samples=5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(est.exp(), probs, atol=1e-5)
    assert torch.equal(latent_logits(vae, x, n_samples=5), latent_logits(vae, x, n_samples=5))
    with pytest.raises(ValueError, match="n_samples"):
        latent_logits(vae, x, n_samples=-1)


def test_naive_keeps_everything_and_craig_weights_sum_to_class_sizes():
    gen = _generated()
    naive = select_synthetic(gen, AugmentConfig(40, entropy=None, coreset=None))
    assert naive.indices.tolist() == list(range(120)) and naive.counts["selected"] == 120

    for coreset in ("craig", "adacore", "random"):
        cfg = AugmentConfig(40, entropy_keep=0.5, coreset=coreset, coreset_fraction=0.1)
        sel = select_synthetic(gen, cfg)
        filtered = select_synthetic(gen, AugmentConfig(40, entropy_keep=0.5, coreset=None))
        assert set(sel.indices.tolist()) <= set(filtered.indices.tolist()), coreset
        for k in range(3):
            in_class = int((filtered.y == k).sum())
            mask = sel.y == k
            # per-class budget: 10 % of the class's filtered draws (at least one); weights = cluster sizes
            assert int(mask.sum()) == max(1, round(0.1 * in_class)), (coreset, k)
            assert math.isclose(float(sel.weights[mask].sum()), in_class, rel_tol=1e-6), (coreset, k)


def test_generate_labelled_draws_from_each_class_region():
    vae = _vae()
    prior = vae.prior
    with torch.no_grad():  # F(z)[y] = 6 <u_y, z>: class y's mass sits in direction u_y
        for p in prior.score.parameters():
            p.zero_()
        last = prior.score.net[-1]
        angles = torch.arange(4) * (math.pi / 2)
        u = torch.stack([angles.cos(), angles.sin()], 1)
        first = prior.score.net[0]
        first.weight[:2] = torch.eye(2)
        first.weight[2:4] = -torch.eye(2)
        # hidden = relu-like gelu(z) and gelu(-z): a linear readout of them recovers z up to gelu's curvature
        last.weight.zero_()
        mid = prior.score.net[2]
        mid.weight.zero_()
        mid.weight[:4, :4] = torch.eye(4)
        last.weight[:, :2] = 6 * u
        last.weight[:, 2:4] = -6 * u
    gen = generate_labelled(vae, 50, generator=torch.Generator().manual_seed(0))
    assert gen.x.shape == (200, 8) and gen.y.tolist() == sum(([k] * 50 for k in range(4)), [])
    # the chains of class y land where F(z)[y] is the largest score
    hit = (prior.logits(gen.z).argmax(1) == gen.y).float().mean()
    assert hit > 0.9, float(hit)
    with torch.no_grad():
        assert torch.allclose(gen.x, vae.decode(gen.z).mean, atol=1e-6)
    assert torch.allclose(gen.logits, latent_logits(vae, gen.x), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(gen.sample_logits, prior.logits(gen.z), atol=1e-6)


def test_pseudo_label_keeps_low_entropy_rows_with_argmax_labels():
    vae = _vae(seed=1)
    x = torch.randn(64, 8)
    logits = latent_logits(vae, x)
    h = confidence_scores(logits, "h2")
    threshold = float(h.median())
    idx, labels, entropy = pseudo_label(vae, x, threshold)
    assert idx.tolist() == torch.nonzero(h <= threshold).squeeze(1).tolist()
    assert torch.equal(labels, logits[idx].argmax(1)) and torch.all(entropy <= threshold)


def _blobs(n_per_class: int, seed: int, k: int = 4, dim: int = 8):
    centres = 3.0 * torch.eye(k, dim)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n_per_class)
    return centres[y] + 0.3 * torch.randn(y.numel(), dim, generator=g), y


def _cfg(**kw) -> SemiSupervisedConfig:
    aug = AugmentConfig(20, start_iter=10, reselect_every=10, batch_size=16, pseudo_label_threshold=0.5)
    base = dict(n_iters=30, batch_size=32, lr=3e-3, ebm_lr=3e-3, langevin_steps=5, eval_every=0,
                checkpoint_every=15, progress=False, augment=aug)
    base.update(kw)
    return SemiSupervisedConfig(**base)


def test_trainer_reselects_on_schedule_and_trains_on_the_selection():
    x_u, _ = _blobs(30, seed=1)
    x_l, y_l = _blobs(2, seed=2)
    trainer = SemiSupervisedTrainer(_vae(), _cfg(), device="cpu")
    hist = trainer.fit(x_u, x_l, y_l)
    assert hist["select_iter"] == [10, 20]
    aug = hist["aug_loss"]
    assert all(math.isnan(v) for v in aug[:10]) and all(math.isfinite(v) and v > 0 for v in aug[10:])
    sel = trainer.selection
    assert sel.y.numel() == hist["n_selected"][-1] == sel.counts["selected"] + sel.counts["pseudo_labeled"]
    # with no loss weight the selection must not change any parameter: compare against loss_weight 0
    a = SemiSupervisedTrainer(_vae(), _cfg(), device="cpu")
    b = SemiSupervisedTrainer(_vae(), _cfg(augment=AugmentConfig(20, start_iter=10, reselect_every=10,
                                                                 batch_size=16, loss_weight=0.0)),
                              device="cpu")
    a.fit(x_u, x_l, y_l)
    b.fit(x_u, x_l, y_l)
    assert not torch.equal(a.vae.prior.score.net[0].weight, b.vae.prior.score.net[0].weight)


def test_continue_fit_and_resume_with_augmentation(tmp_path):
    x_u, _ = _blobs(30, seed=1)
    x_l, y_l = _blobs(2, seed=2)
    full = SemiSupervisedTrainer(_vae(seed=3), _cfg(), device="cpu", checkpoint_dir=tmp_path / "a")
    full.fit(x_u, x_l, y_l)

    part = SemiSupervisedTrainer(_vae(seed=3), _cfg(n_iters=15), device="cpu", checkpoint_dir=tmp_path / "b")
    part.fit(x_u, x_l, y_l)
    torch.manual_seed(7)  # resume restores the global RNG
    resumed = SemiSupervisedTrainer(_vae(seed=4), _cfg(), device="cpu", checkpoint_dir=tmp_path / "b")
    hist = resumed.fit(x_u, x_l, y_l)
    assert hist["iter"] == list(range(1, 31)) and hist["select_iter"] == [10, 20]
    for (name, p), q in zip(full.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(p, q), name
    assert torch.equal(full.selection.x, resumed.selection.x)

    # fit() continues from `iteration`: 15 more iterations after raising n_iters, without a checkpoint
    cont = SemiSupervisedTrainer(_vae(seed=3), _cfg(n_iters=15), device="cpu")
    cont.fit(x_u, x_l, y_l)
    cont.config.n_iters = 30
    assert cont.fit(x_u, x_l, y_l)["iter"] == list(range(1, 31)) and cont.iteration == 30


def test_bad_augment_config():
    with pytest.raises(ValueError, match="entropy_keep"):
        AugmentConfig(entropy_keep=1.5)
    with pytest.raises(ValueError, match="coreset_fraction"):
        AugmentConfig(coreset_fraction=0.0)
    with pytest.raises(ValueError, match="coreset"):
        AugmentConfig(coreset="kmeans")
    with pytest.raises(ValueError, match="samples_per_class"):
        AugmentConfig(samples_per_class=0)
    with pytest.raises(ValueError, match="exactly one"):
        AugmentConfig(entropy_keep=None)
    assert AugmentConfig().describe() == "H&CRAIG"
    assert AugmentConfig(entropy=None, coreset=None).describe() == "naive"
    assert AugmentConfig(coreset="adacore", pseudo_label_threshold=0.1).describe() == "H&AdaCore&PL"
    # configs read back from checkpoints come as dicts
    assert SemiSupervisedConfig(augment={"samples_per_class": 7}).augment == AugmentConfig(7)
    with pytest.raises(ValueError, match="LatentEBMPrior"):
        generate_labelled(VAE(MLPEncoder((4,), 2), MLPDecoder(2, (4,)), Gaussian(1.0)), 3)
