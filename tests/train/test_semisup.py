"""SemiSupervisedTrainer: learns a latent classifier from few labels, EBM sign, exact resume, input checks."""

import pytest
import torch

from genlib.likelihoods import Gaussian
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.train import SemiSupervisedConfig, SemiSupervisedTrainer, latent_accuracy


def _blobs(n_per_class: int, seed: int, k: int = 4, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` well separated Gaussian clusters in R^dim (fixed centres, sampling seed varies)."""
    centres = 3.0 * torch.eye(k, dim)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n_per_class)
    x = centres[y] + 0.3 * torch.randn(y.numel(), dim, generator=g)
    return x, y


def _vae(seed: int = 0, latent: int = 2, dim: int = 8, k: int = 4) -> VAE:
    torch.manual_seed(seed)
    enc = MLPEncoder((dim,), latent, hidden=(32,))
    dec = MLPDecoder(latent, (dim,), hidden=(32,))
    prior = LatentEBMPrior(latent, k, hidden=(32, 32))
    return VAE(enc, dec, Gaussian(0.5), prior)


def _cfg(**kw) -> SemiSupervisedConfig:
    base = dict(n_iters=150, batch_size=64, lr=3e-3, ebm_lr=3e-3, langevin_steps=10, eval_every=0,
                checkpoint_every=50, progress=False)
    base.update(kw)
    return SemiSupervisedConfig(**base)


def test_latent_classifier_learns_from_few_labels():
    x_u, _ = _blobs(100, seed=1)
    x_l, y_l = _blobs(2, seed=2)  # 2 labels per class
    x_t, y_t = _blobs(50, seed=3)
    vae = _vae()
    before = latent_accuracy(vae, x_t, y_t)
    hist = SemiSupervisedTrainer(vae, _cfg(), device="cpu").fit(x_u, x_l, y_l, eval_data=(x_t, y_t))
    after = latent_accuracy(vae, x_t, y_t)
    assert hist["eval_iter"] == [150] and hist["eval_accuracy"][-1] == after
    assert after > 0.85 > before + 0.2  # chance is 0.25
    # training improved the ELBO: mean -ELBO of the last 20 iterations below the first 20
    assert sum(hist["loss"][-20:]) < sum(hist["loss"][:20])


def test_ebm_step_raises_posterior_score_relative_to_prior_samples():
    # Encoder frozen (lr = 0) and no labels' pull: the EBM update alone must move logsumexp F up at
    # posterior samples and down at the Langevin samples it was contrasted with (ML gradient sign).
    x_u, _ = _blobs(50, seed=1)
    x_l, y_l = _blobs(1, seed=2)
    vae = _vae(seed=3)
    trainer = SemiSupervisedTrainer(vae, _cfg(lr=0.0, ebm_lr=1e-2, class_weight=0.0), device="cpu")
    prior = vae.prior
    with torch.no_grad():
        z_pos = vae.encode(x_u)[0] + 2.0  # shift so q and p differ clearly
    trainer.vae.encoder.net.net[-1].bias.data[:2] += 2.0  # mu(x) -> mu(x) + 2 for the trainer too
    z_neg = prior.sample(x_u.shape[0], sampler=trainer.sampler, generator=torch.Generator().manual_seed(0))

    def gap() -> float:
        with torch.no_grad():
            return float(prior.logits(z_pos).logsumexp(-1).mean() - prior.logits(z_neg).logsumexp(-1).mean())

    g0 = gap()
    for _ in range(5):
        trainer.step(x_u, x_l, y_l)
    assert gap() > g0 + 0.1


def test_resume_equals_uninterrupted(tmp_path):
    x_u, _ = _blobs(30, seed=1)
    x_l, y_l = _blobs(1, seed=2)
    cfg = _cfg(n_iters=6, checkpoint_every=3, batch_size=16, langevin_steps=3)

    full = _vae(seed=5)
    SemiSupervisedTrainer(full, cfg, device="cpu", checkpoint_dir=tmp_path / "a").fit(x_u, x_l, y_l)

    part = _vae(seed=5)
    SemiSupervisedTrainer(part, _cfg(n_iters=3, checkpoint_every=3, batch_size=16, langevin_steps=3),
                          device="cpu", checkpoint_dir=tmp_path / "b").fit(x_u, x_l, y_l)
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    resumed = _vae(seed=9)  # different init: resume must overwrite it
    hist = SemiSupervisedTrainer(resumed, cfg, device="cpu", checkpoint_dir=tmp_path / "b").fit(x_u, x_l, y_l)

    assert hist["iter"] == [1, 2, 3, 4, 5, 6]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_inputs():
    vae = _vae()
    with pytest.raises(ValueError, match="n_iters"):
        SemiSupervisedConfig(n_iters=-1)
    with pytest.raises(ValueError, match="langevin_step_size"):
        SemiSupervisedConfig(langevin_step_size=0.0)
    no_ebm = VAE(MLPEncoder((8,), 2, hidden=(8,)), MLPDecoder(2, (8,), hidden=(8,)), Gaussian(1.0))
    with pytest.raises(ValueError, match="LatentEBMPrior"):
        SemiSupervisedTrainer(no_ebm, _cfg(), device="cpu")
    trainer = SemiSupervisedTrainer(vae, _cfg(n_iters=1), device="cpu")
    x = torch.randn(10, 8)
    with pytest.raises(ValueError, match="y_labeled"):
        trainer.fit(x, x[:4], torch.tensor([0, 1, 2, 4]))  # 4 >= n_classes
    with pytest.raises(ValueError, match="y_labeled"):
        trainer.fit(x, x[:4], torch.zeros(4))  # float labels
    with pytest.raises(ValueError, match="x_labeled"):
        trainer.fit(x, torch.randn(4, 7), torch.zeros(4, dtype=torch.long))


def test_trains_with_a_psgd_optimizer():
    import functools

    from genlib.optim import Kron

    x_u, _ = _blobs(100, seed=1)
    x_l, y_l = _blobs(2, seed=2)
    x_t, y_t = _blobs(50, seed=3)
    vae = _vae()
    psgd = functools.partial(Kron, momentum=0.9)  # gradient-whitening curvature: step() after backward
    SemiSupervisedTrainer(vae, _cfg(), optimizer=psgd, device="cpu").fit(x_u, x_l, y_l)
    assert latent_accuracy(vae, x_t, y_t) > 0.85  # chance 0.25
    # closure modes ("hvp", "finite_diff"): tests/train/test_semisup_closure.py
