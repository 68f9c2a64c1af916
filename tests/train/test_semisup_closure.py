"""SemiSupervisedTrainer with Newton-type PSGD (curvature "hvp" / "finite_diff"): step(closure) trains the
model, fits every preconditioner, sees one draw of the noise and negatives per step, clips the step, resumes
exactly."""

import functools
import math

import pytest
import torch

from genlib.optim import LRA, Kron
from genlib.train import AugmentConfig, SemiSupervisedTrainer, latent_accuracy
from tests.train.test_semisup import _blobs, _cfg, _vae


def _data():
    x_u, _ = _blobs(100, seed=1)
    x_l, y_l = _blobs(2, seed=2)  # 2 labels per class
    x_t, y_t = _blobs(50, seed=3)
    return x_u, x_l, y_l, x_t, y_t


def _fitted_counts(trainer: SemiSupervisedTrainer) -> list[int]:
    return [pc.num_updates for opt in (trainer.opt_model, trainer.opt_ebm)
            for pcs in opt.preconditioners for pc in pcs]


@pytest.mark.parametrize(
    ("factory", "lr"),
    [
        (functools.partial(Kron, curvature="hvp"), 0.05),
        (functools.partial(LRA, curvature="finite_diff", rank=4), 0.03),
    ],
    ids=["kron-hvp", "lra-finite_diff"],
)
def test_newton_psgd_trains_the_latent_classifier(factory, lr):
    x_u, x_l, y_l, x_t, y_t = _data()
    vae = _vae()
    before = latent_accuracy(vae, x_t, y_t)
    trainer = SemiSupervisedTrainer(vae, _cfg(lr=lr, ebm_lr=lr), optimizer=factory, device="cpu")
    hist = trainer.fit(x_u, x_l, y_l)
    after = latent_accuracy(vae, x_t, y_t)
    assert after > 0.85 > before + 0.2  # chance is 0.25
    assert sum(hist["loss"][-20:]) < sum(hist["loss"][:20])  # -ELBO went down
    counts = _fitted_counts(trainer)
    assert counts and min(counts) > 0, counts  # every preconditioner was fitted from curvature pairs
    for k in ("loss", "reconstruction", "kl", "ebm_loss", "class_loss"):
        assert len(hist[k]) == 150 and all(v == v for v in hist[k]), k  # recorded, finite


class _TwiceKron(Kron):
    """Kron in "hvp" mode that evaluates the closure twice before stepping and keeps both losses."""

    seen: list[tuple[float, float]]

    def step(self, closure=None):
        first, second = closure().item(), closure().item()
        self.__dict__.setdefault("seen", []).append((first, second))
        return super().step(closure)


@pytest.mark.parametrize("negative_init", ["noise", "posterior", "persistent"])
def test_repeated_closure_calls_see_the_same_noise_and_negatives(negative_init):
    # The negatives, the posterior noise (and the persistent chains' restarts) are drawn once per step:
    # drawn inside the closure, a second evaluation would see other ones and a different loss.
    x_u, x_l, y_l, _, _ = _data()
    cfg = _cfg(n_iters=3, lr=0.05, ebm_lr=0.05, negative_init=negative_init, persistent_chains=50)
    trainer = SemiSupervisedTrainer(_vae(), cfg, optimizer=functools.partial(_TwiceKron, curvature="hvp"),
                                    device="cpu")
    hist = trainer.fit(x_u, x_l, y_l)
    for opt in (trainer.opt_model, trainer.opt_ebm):
        assert len(opt.seen) == 3
        for first, second in opt.seen:
            assert first == second
    # one loss for both parameter sets: -ELBO + F's ML loss + the weighted label loss, evaluated first
    # (by the encoder/decoder's optimizer) at the parameters the step starts from; F's optimizer steps
    # next, at the encoder/decoder it has just moved
    for it in range(3):
        ce = cfg.class_weight * hist["class_loss"][it]
        total = hist["loss"][it] + hist["ebm_loss"][it] + ce
        assert trainer.opt_model.seen[it][0] == pytest.approx(total, rel=1e-5)
        assert trainer.opt_ebm.seen[it][0] != pytest.approx(total, rel=1e-7)
    # and the step moved on: iterations see new batches, so the losses differ between iterations
    assert len({v for v, _ in trainer.opt_model.seen}) == 3


def test_augmentation_loss_enters_the_closure():
    x_u, x_l, y_l, _, _ = _data()

    def run(loss_weight: float) -> tuple[SemiSupervisedTrainer, dict]:
        aug = AugmentConfig(20, start_iter=5, reselect_every=5, batch_size=16, loss_weight=loss_weight)
        cfg = _cfg(n_iters=10, batch_size=32, langevin_steps=5, lr=0.05, ebm_lr=0.05, augment=aug)
        trainer = SemiSupervisedTrainer(_vae(), cfg, optimizer=functools.partial(_TwiceKron, curvature="hvp"),
                                        device="cpu")
        return trainer, trainer.fit(x_u, x_l, y_l)

    trainer, hist = run(1.0)
    assert all(math.isnan(v) for v in hist["aug_loss"][:5])
    assert all(math.isfinite(v) and v > 0 for v in hist["aug_loss"][5:])
    for opt in (trainer.opt_model, trainer.opt_ebm):  # the synthetic batch is drawn once per step too
        assert all(first == second for first, second in opt.seen)
    # the loss holds the weighted synthetic cross-entropy
    cw = trainer.config.class_weight
    for it in range(5, 10):
        ce, aug = hist["class_loss"][it], hist["aug_loss"][it]
        total = hist["loss"][it] + hist["ebm_loss"][it] + cw * (ce + aug)
        assert trainer.opt_model.seen[it][0] == pytest.approx(total, rel=1e-5)
    # and its weight moves the parameters
    other, _ = run(0.0)
    assert not torch.equal(trainer.vae.prior.score.net[0].weight, other.vae.prior.score.net[0].weight)


def test_grad_clip_bounds_the_preconditioned_step():
    x_u, x_l, y_l, _, _ = _data()
    vae = _vae()
    clip, lr = 1e-3, 1.0
    trainer = SemiSupervisedTrainer(vae, _cfg(lr=lr, ebm_lr=lr, grad_clip=clip),
                                    optimizer=functools.partial(Kron, curvature="hvp"), device="cpu")
    for opt in (trainer.opt_model, trainer.opt_ebm):
        before = [p.detach().clone() for p in opt.param_groups[0]["params"]]
        trainer.step(x_u[:64], x_l, y_l)
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(opt.param_groups[0]["params"], before)])
        assert 0 < float(moved.norm()) <= lr * clip * (1 + 1e-4)
        assert opt.param_groups[0]["grad_clip_max_norm"] == clip
    # it follows the config, also into the param groups a checkpoint restored
    for opt in (trainer.opt_model, trainer.opt_ebm):
        opt.load_state_dict(opt.state_dict())
    trainer.config.grad_clip = 2e-3
    trainer.step(x_u[:64], x_l, y_l)
    for opt in (trainer.opt_model, trainer.opt_ebm):
        assert opt.param_groups[0]["grad_clip_max_norm"] == 2e-3
    # an optimizer's own trust region wins; grad_clip=None leaves PSGD unclipped
    own = SemiSupervisedTrainer(_vae(), _cfg(grad_clip=5.0), device="cpu",
                                optimizer=functools.partial(Kron, curvature="hvp", grad_clip_max_norm=0.5))
    own.step(x_u[:64], x_l, y_l)
    assert own.opt_model.param_groups[0]["grad_clip_max_norm"] == 0.5
    free = SemiSupervisedTrainer(_vae(), _cfg(grad_clip=None), device="cpu",
                                 optimizer=functools.partial(Kron, curvature="hvp"))
    free.step(x_u[:64], x_l, y_l)
    assert free.opt_model.param_groups[0]["grad_clip_max_norm"] is None


def test_resume_equals_uninterrupted_with_a_closure_optimizer(tmp_path):
    x_u, _ = _blobs(30, seed=1)
    x_l, y_l = _blobs(1, seed=2)
    # refit on a coin flip: the optimizer's generators must be restored too
    opt = functools.partial(Kron, curvature="hvp", update_probability=0.5)
    small = dict(checkpoint_every=3, batch_size=16, langevin_steps=3, lr=0.05, ebm_lr=0.05,
                 negative_init="persistent", persistent_chains=20)

    full = _vae(seed=5)
    SemiSupervisedTrainer(full, _cfg(n_iters=6, **small), optimizer=opt, device="cpu",
                          checkpoint_dir=tmp_path / "a").fit(x_u, x_l, y_l)
    part = _vae(seed=5)
    SemiSupervisedTrainer(part, _cfg(n_iters=3, **small), optimizer=opt, device="cpu",
                          checkpoint_dir=tmp_path / "b").fit(x_u, x_l, y_l)
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    resumed = _vae(seed=9)  # different init: resume must overwrite it
    trainer = SemiSupervisedTrainer(resumed, _cfg(n_iters=6, **small), optimizer=opt, device="cpu",
                                    checkpoint_dir=tmp_path / "b")
    assert trainer.fit(x_u, x_l, y_l)["iter"] == [1, 2, 3, 4, 5, 6]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_factory_mixing_closure_and_gradient_modes_is_refused():
    cfg = _cfg()

    def mixed(params, lr):  # Newton-type for the encoder/decoder only
        return Kron(params, lr=lr, curvature="hvp" if lr == cfg.lr else "whiten")

    with pytest.raises(ValueError, match="same curvature mode"):
        SemiSupervisedTrainer(_vae(), _cfg(ebm_lr=cfg.lr / 10), optimizer=mixed, device="cpu")
