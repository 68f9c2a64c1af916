"""``VAE.classify`` / ``VAE.class_logits``: the latent classifier F(mu(x)) as a public method."""

import pytest
import torch

from genlib.likelihoods import Bernoulli
from genlib.models import VAE
from genlib.nn import MLPDecoder, MLPEncoder
from genlib.priors import LatentEBMPrior
from genlib.train import latent_accuracy


def _vae(prior=None) -> VAE:
    torch.manual_seed(0)
    enc = MLPEncoder((1, 8, 8), 4, hidden=(32,))
    dec = MLPDecoder(4, (1, 8, 8), hidden=(32,))
    return VAE(enc, dec, Bernoulli(), prior=prior)


def test_classify_is_the_softmax_of_the_latent_classifier_at_the_posterior_mean():
    vae = _vae(LatentEBMPrior(4, n_classes=3, hidden=(16,))).eval()
    x = torch.rand(10, 1, 8, 8)
    mu, _ = vae.encode(x)
    expected = vae.prior.logits(mu)
    torch.testing.assert_close(vae.class_logits(x), expected)
    probs = vae.classify(x)
    assert probs.shape == (10, 3)
    torch.testing.assert_close(probs, expected.softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(10))


def test_classify_agrees_with_latent_accuracy():
    vae = _vae(LatentEBMPrior(4, n_classes=3, hidden=(16,))).eval()
    x = torch.rand(30, 1, 8, 8)
    with torch.no_grad():
        pred = vae.classify(x).argmax(-1)
    y = torch.arange(30) % 3
    assert latent_accuracy(vae, x, y) == pytest.approx((pred == y).float().mean().item())


def test_class_logits_are_differentiable_in_the_encoder():
    vae = _vae(LatentEBMPrior(4, n_classes=3, hidden=(16,)))
    vae.class_logits(torch.rand(5, 1, 8, 8))[:, 0].sum().backward()
    grads = [p.grad for p in vae.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_classify_without_a_latent_classifier_names_the_prior():
    with pytest.raises(ValueError, match="StandardNormal"):
        _vae().classify(torch.rand(2, 1, 8, 8))
