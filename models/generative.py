"""Generative models for 28×28 grey images: a convolutional VAE, a DCGAN pair, and the per-pixel
Gaussian baseline both must beat.

VAE images are in [0, 1] (a Bernoulli decoder: it returns logits); DCGAN images are in [-1, 1]
(the generator ends in Tanh, the discriminator returns logits for BCEWithLogitsLoss, as the book's 20.2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

DCGAN_LATENT = 100  # the book's (20.2) latent size
LEAKY_SLOPE = 0.2   # the book's LeakyReLU slope in the discriminator


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ·ε with σ = exp(log σ² / 2), ε ~ N(0, I) (drawn from `generator` unless given): differentiable
    in μ and log σ²."""
    if eps is None:
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per sample (summed over the latent dimensions): −½ Σ (1 + log σ² − μ² − σ²)."""
    return -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp(), dim=-1)


class VaeLoss(NamedTuple):
    """Per-image means in nats: total = reconstruction + kl is the negative ELBO."""
    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def vae_loss(x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> VaeLoss:
    """Bernoulli reconstruction NLL (summed over pixels) plus the KL term, each averaged over the batch."""
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
    kl = kl_standard_normal(mu, logvar).mean()
    return VaeLoss(reconstruction + kl, reconstruction, kl)


class VAE(nn.Module):
    """Conv encoder (28 → 14 → 7) to (μ, log σ²), reparameterised z, transposed-conv decoder back to
    28×28 Bernoulli logits. latent_dim and base width are the caller's params (defaults 16 and 32)."""

    def __init__(self, latent_dim: int = 16, base: int = 32) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, base, 4, 2, 1), nn.ReLU(), nn.Conv2d(base, 2 * base, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.to_stats = nn.Linear(2 * base * 7 * 7, 2 * latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2 * base * 7 * 7), nn.ReLU(), nn.Unflatten(1, (2 * base, 7, 7)),
            nn.ConvTranspose2d(2 * base, base, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(base, 1, 4, 2, 1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z | x) for images x of shape (N, 1, 28, 28) in [0, 1]."""
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits (N, 1, 28, 28) of p(x | z)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, generator=generator)), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images in [0, 1] (decoder means) from z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn((n, self.latent_dim), generator=generator, device=device)
        return torch.sigmoid(self.decode(z))


def _check_size(image_size: int) -> None:
    if image_size not in (28, 32):
        raise ValueError(f"DCGAN image size must be 28 or 32, got {image_size}")


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _g_block(cin: int, cout: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _d_block(cin: int, cout: int, kernel: int, stride: int, padding: int, norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.LeakyReLU(LEAKY_SLOPE)]


class Generator(nn.Module):
    """DCGAN generator: z (N, latent) → images (N, channels, S, S) in [-1, 1], S = 28 or 32. Transposed
    convolutions only (28: 1→3→7→14→28; 32: 1→4→8→16→32), BatchNorm + ReLU, Tanh at the output."""

    def __init__(self, latent_dim: int = DCGAN_LATENT, image_size: int = 28, channels: int = 1,
                 base: int = 64) -> None:
        super().__init__()
        _check_size(image_size)
        self.latent_dim = latent_dim
        first, second = ((3, (3, 2, 0)) if image_size == 28 else (4, (4, 2, 1)))
        self.net = nn.Sequential(
            *_g_block(latent_dim, 4 * base, first, 1, 0), *_g_block(4 * base, 2 * base, *second),
            *_g_block(2 * base, base, 4, 2, 1),
            nn.ConvTranspose2d(base, channels, 4, 2, 1, bias=False), nn.Tanh())
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """DCGAN discriminator: images (N, channels, S, S) in [-1, 1] → (N,) real-vs-fake logits. Strided
    convolutions only (28: 28→14→7→3→1; 32: 32→16→8→4→1), BatchNorm after all but the input layer
    (the DCGAN paper's rule), LeakyReLU 0.2."""

    def __init__(self, image_size: int = 28, channels: int = 1, base: int = 64) -> None:
        super().__init__()
        _check_size(image_size)
        third, last = ((3, 2, 0), 3) if image_size == 28 else ((4, 2, 1), 4)
        self.net = nn.Sequential(
            *_d_block(channels, base, 4, 2, 1, norm=False), *_d_block(base, 2 * base, 4, 2, 1),
            *_d_block(2 * base, 4 * base, *third), nn.Conv2d(4 * base, 1, last, 1, 0, bias=False))
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class PixelGaussian(NamedTuple):
    """The baseline sampler: every pixel an independent Gaussian fitted to the training images."""
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, images: torch.Tensor) -> PixelGaussian:
        """Per-pixel mean and (population) std of images (N, ...)."""
        return cls(images.mean(0), images.std(0, correction=0))

    def sample(self, n: int, generator: torch.Generator | None = None, low: float = 0.0,
               high: float = 1.0) -> torch.Tensor:
        """n images, clipped to the pixel range [low, high] of the fitted data."""
        eps = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        return (self.mean + self.std * eps).clamp(low, high)
