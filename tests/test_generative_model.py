"""VAE, DCGAN and the pixel-Gaussian baseline (models/generative.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from models.generative import (
    VAE,
    Discriminator,
    Generator,
    PixelGaussian,
    kl_standard_normal,
    reparameterize,
    vae_loss,
)


def test_reparameterisation_gradient_reaches_mu_and_logvar() -> None:
    mu = torch.tensor([[0.5, -1.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(4.0)]], requires_grad=True)
    eps = torch.tensor([[2.0, -0.5]])
    z = reparameterize(mu, logvar, eps)
    assert torch.allclose(z, torch.tensor([[0.5 + 2.0, -1.0 - 0.5 * 2.0]]))
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones(1, 2))
    # dz/dlogvar = ½ σ ε: ½·1·2 = 1 and ½·2·(−0.5) = −0.5.
    assert torch.allclose(logvar.grad, torch.tensor([[1.0, -0.5]]))


def test_reparameterisation_draws_from_the_generator() -> None:
    mu, logvar = torch.zeros(4000, 2), torch.full((4000, 2), math.log(9.0))
    a = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1))
    b = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.std().item() == pytest.approx(3.0, rel=0.05)


def test_kl_matches_the_closed_form_on_known_values() -> None:
    mu = torch.tensor([[0.0], [1.0], [0.0], [2.0]])
    logvar = torch.log(torch.tensor([[1.0], [1.0], [4.0], [0.25]]))
    kl = kl_standard_normal(mu, logvar)
    expected = [0.0, 0.5, 0.5 * (4 - 1 - math.log(4)), 0.5 * (0.25 + 4 - 1 - math.log(0.25))]
    assert kl.tolist() == pytest.approx(expected, abs=1e-6)
    reference = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl, reference, atol=1e-6)
    # Summed over latent dimensions: two independent dimensions add.
    assert kl_standard_normal(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(0.5 + 2.0)


def test_vae_loss_is_bernoulli_nll_plus_kl_per_image() -> None:
    x = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    logits = torch.zeros_like(x)  # p = ½ everywhere: −log ½ per pixel, two pixels per image
    mu, logvar = torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1)
    loss = vae_loss(x, logits, mu, logvar)
    assert loss.reconstruction.item() == pytest.approx(2 * math.log(2))
    assert loss.kl.item() == pytest.approx(0.25)
    assert loss.total.item() == pytest.approx(2 * math.log(2) + 0.25)


def test_vae_shapes_and_gradients_flow_into_the_encoder() -> None:
    torch.manual_seed(0)
    vae = VAE(latent_dim=8, base=8)
    x = torch.rand(3, 1, 28, 28)
    logits, mu, logvar = vae(x, generator=torch.Generator().manual_seed(0))
    assert logits.shape == (3, 1, 28, 28) and mu.shape == logvar.shape == (3, 8)
    vae_loss(x, logits, mu, logvar).total.backward()
    assert vae.encoder[0].weight.grad.abs().sum() > 0 and vae.decoder[0].weight.grad.abs().sum() > 0
    samples = vae.sample(5, torch.Generator().manual_seed(2))
    assert samples.shape == (5, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    assert torch.equal(samples, vae.sample(5, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("size", [28, 32])
def test_dcgan_shapes_and_architecture_rules(size: int) -> None:
    torch.manual_seed(0)
    g, d = Generator(image_size=size, base=8), Discriminator(image_size=size, base=8)
    images = g(torch.randn(4, 100))
    assert images.shape == (4, 1, size, size) and images.abs().max() <= 1
    assert g(torch.randn(2, 100, 1, 1)).shape == (2, 1, size, size)
    assert d(images).shape == (4,)
    for net in (g, d):
        kinds = {type(m) for m in net.modules()}
        assert nn.BatchNorm2d in kinds and not kinds & {nn.Linear, nn.MaxPool2d, nn.AvgPool2d}
    assert isinstance(g.net[-1], nn.Tanh) and sum(isinstance(m, nn.ReLU) for m in g.modules()) == 3
    slopes = [m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.2, 0.2, 0.2]
    assert g.net[0].weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_dcgan_rejects_other_sizes() -> None:
    with pytest.raises(ValueError, match="28 or 32, got 64"):
        Generator(image_size=64)
    with pytest.raises(ValueError, match="28 or 32, got 30"):
        Discriminator(image_size=30)


def test_pixel_gaussian_fits_and_samples_reproducibly() -> None:
    images = torch.tensor([[[0.0, 1.0]], [[0.5, 1.0]]])
    fit = PixelGaussian.fit(images)
    assert fit.mean.tolist() == [[0.25, 1.0]] and fit.std.tolist() == [[0.25, 0.0]]
    a = fit.sample(3, torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 2) and torch.equal(a[:, 0, 1], torch.ones(3))
    assert torch.equal(a, fit.sample(3, torch.Generator().manual_seed(0)))
