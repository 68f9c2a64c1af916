"""evaluate_generation's latent check: the Fréchet distance to the aggregate posterior catches draws that
leave the latent region the encoder uses (which the judge's image-feature distance can reward)."""

import json

import pytest
import torch

from genlib.likelihoods import Gaussian
from genlib.metrics.images import train_reference_classifier
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.sampling import LangevinSampler
from genlib.train.quality import (
    aggregate_posterior_samples,
    evaluate_generation,
    latent_frechet_distance,
    save_generation_grids,
)


def test_latent_frechet_distance_is_the_squared_shift_between_equal_covariances():
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([1.0, -2.0, 0.5])
    assert latent_frechet_distance(z, z) == pytest.approx(0.0, abs=1e-6)
    assert latent_frechet_distance(z, z + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)


def test_aggregate_posterior_samples_draw_from_each_images_posterior():
    torch.manual_seed(0)
    vae = VAE(MLPEncoder((1, 4, 4), 2, hidden=(8,)), MLPDecoder(2, (1, 4, 4), hidden=(8,)), Gaussian(0.5))
    x = torch.rand(1, 1, 4, 4).repeat(4000, 1, 1, 1)
    z = aggregate_posterior_samples(vae, x, generator=torch.Generator().manual_seed(1))
    mu, logvar = vae.encode(x[:1])
    torch.testing.assert_close(z.mean(0), mu[0].detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(z.var(0), logvar[0].exp().detach(), atol=0.05, rtol=0.1)


class _Shifted:
    """A sampler that runs ``inner`` and moves every chain by ``shift``: draws outside the latent region."""

    def __init__(self, inner, shift: float):
        self.inner, self.shift = inner, shift

    def run(self, log_prob_fn, z0, generator=None):
        z, diag = self.inner.run(log_prob_fn, z0, generator=generator)
        return z + self.shift, diag


@pytest.mark.filterwarnings("ignore:.*fewer than the classifier's feature_dim:RuntimeWarning")
def test_report_flags_draws_outside_the_aggregate_posterior():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    vae = VAE(MLPEncoder(shape, 2, hidden=(16,)), MLPDecoder(2, shape, hidden=(16,)), Gaussian(0.5),
              LatentEBMPrior(2, 3, hidden=(8,), n_steps=20))
    x = torch.rand(300, *shape)
    y = torch.arange(3).repeat(100)
    judge = train_reference_classifier(x, y, 3, epochs=1, width=4, seed=0, device="cpu")
    sampler = LangevinSampler(20, 0.05)
    kw = dict(samples_per_class=40, x_real_other=x[150:], x_to_reconstruct=x[150:])
    near, _, _ = evaluate_generation(vae, judge, x[:150], sampler=sampler, **kw,
                                     generator=torch.Generator().manual_seed(2))
    far, _, _ = evaluate_generation(vae, judge, x[:150], sampler=_Shifted(sampler, 20.0), **kw,
                                    generator=torch.Generator().manual_seed(2))
    assert far.latent_fd > near.latent_fd + 2 * 20.0**2 * 0.9  # both coordinates moved by 20
    assert near.latent_fd_real is not None and near.latent_fd_real >= 0
    data = json.loads(json.dumps(near.to_dict(), allow_nan=False))
    assert data["latent_fd"] == pytest.approx(near.latent_fd)
    assert "latent Fréchet distance" in near.format()


def test_save_generation_grids_rejects_what_is_not_a_batch_of_draws(tmp_path):
    with pytest.raises(ValueError, match="generated must be a genlib.train.Generated"):
        save_generation_grids(torch.rand(4, 1, 8, 8), tmp_path)


@pytest.mark.filterwarnings("ignore:.*fewer than the classifier's feature_dim:RuntimeWarning")
def test_judge_generation_fits_saves_and_reports(tmp_path):
    from genlib.metrics.images import ReferenceClassifier
    from genlib.train.quality import judge_generation

    torch.manual_seed(0)
    shape = (1, 8, 8)
    vae = VAE(MLPEncoder(shape, 2, hidden=(16,)), MLPDecoder(2, shape, hidden=(16,)), Gaussian(0.5),
              LatentEBMPrior(2, 3, hidden=(8,), n_steps=10))
    x, y = torch.rand(300, *shape), torch.arange(3).repeat(100)
    y_known = y.clone()
    y_known[:30] = -1  # unknown labels are not the judge's
    report, generated, judge = judge_generation(vae, x, y_known, x[:60], tmp_path, samples_per_class=20,
                                                epochs=1, generator=torch.Generator().manual_seed(0))
    saved = ReferenceClassifier.load(tmp_path / "reference_classifier.pt")
    torch.testing.assert_close(saved.predict(x[:10]), judge.predict(x[:10]))
    assert generated.y.shape == (60,) and report.unfiltered.n_samples == 60
    assert report.unfiltered.n_reference == 60 and report.unfiltered.fd_real_real is not None
    assert report.latent_fd_real is not None  # the held-out known images are the second real set
