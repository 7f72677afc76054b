"""VAE and DCGAN training (d2l 20.1-20.2): plain epoch functions run in the kit's loop (tasks/kit.py), with a
checkpoint every epoch.

Every random draw of an epoch (the shuffle, the VAE's ε, the GAN's z) comes from one generator seeded by
(seed, model, epoch), so a run resumed from its last checkpoint replays exactly the batches and noise the
interrupted one would have drawn, and its weights equal the uninterrupted run's on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.generative import VAE, Discriminator, Generator, reparameterize, vae_loss
from tasks import distributed, kit
from tasks.errors import D2lflowError
from tasks.params import DcganTrainParams, VaeTrainParams

log = logging.getLogger(__name__)

STREAMS = {"vae": 1, "dcgan": 2}  # the SeedSequence word that separates the two models' random streams


def epoch_generator(seed: int, model: str, epoch: int) -> torch.Generator:
    """The one generator an epoch of `model` draws from (a pure function of seed, model and epoch)."""
    state = np.random.SeedSequence([seed, STREAMS[model], epoch]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def vae_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) → float (N, 1, 28, 28) in [0, 1] (the book's ToTensor scale)."""
    return torch.from_numpy(images).float().div(255.0).unsqueeze(1)


def gan_images(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 (N, 28, 28) → float (N, 1, S, S) in [-1, 1]; size 32 pads 2 black pixels on every side."""
    x = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)
    pad = (image_size - x.shape[-1]) // 2
    return F.pad(x, (pad, pad, pad, pad), value=-1.0) if pad else x


def gan_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output (N, 1, S, S) in [-1, 1] → uint8 (N, 28, 28), centre-cropped when S is 32."""
    crop = (x.shape[-1] - 28) // 2
    x = x[:, 0, crop:crop + 28, crop:crop + 28]
    return torch.round((x.clamp(-1, 1) + 1.0) * 127.5).to(torch.uint8).cpu().numpy()


def unit_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images (N, 1, 28, 28) in [0, 1] → uint8 (N, 28, 28)."""
    return torch.round(x[:, 0].clamp(0, 1) * 255.0).to(torch.uint8).cpu().numpy()


def _check_finite(value: torch.Tensor, epoch: int, what: str, key: str) -> None:
    if not torch.isfinite(value):
        raise D2lflowError(f"epoch {epoch + 1}: the {what} is not finite ({float(value)}); lower {key}")


def vae_epoch(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, batch_size: int,
              generator: torch.Generator, epoch: int = 0) -> dict[str, float]:
    """One epoch of negative-ELBO minimisation; returns the per-image means of its loss terms (nats)."""
    model.train()
    totals = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        batch = x[order[start:start + batch_size]]
        mu, logvar = model.encode(batch)
        eps = torch.randn(mu.shape, generator=generator).to(batch.device)  # drawn on the CPU: any device replays it
        loss = vae_loss(batch, model.decode(reparameterize(mu, logvar, eps)), mu, logvar)
        _check_finite(loss.total, epoch, "VAE loss", "generative.train_vae.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        for key, value in zip(totals, loss):
            totals[key] += float(value.detach()) * len(batch)
    return {key: value / len(x) for key, value in totals.items()}


def dcgan_epoch(G: Generator, D: Discriminator, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                x: torch.Tensor, batch_size: int, generator: torch.Generator, epoch: int = 0) -> dict[str, float]:
    """One epoch of the book's minimax game (20.1 `update_D` / `update_G`, non-saturating G loss, both
    as BCE with logits): D steps on a real and a fake batch, then G on the same z. Returns the mean D and
    G losses and D's accuracy on real and on fake images (the GAN's diagnostics: oscillating or
    uninformative losses, D winning outright)."""
    G.train()
    D.train()
    sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real_accuracy": 0.0, "d_fake_accuracy": 0.0}
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        real = x[order[start:start + batch_size]]
        n = len(real)
        z = torch.randn((n, G.latent_dim), generator=generator).to(real.device)
        ones, zeros = torch.ones(n, device=real.device), torch.zeros(n, device=real.device)
        fake = G(z)
        real_logits, fake_logits = D(real), D(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, ones)
                  + F.binary_cross_entropy_with_logits(fake_logits, zeros)) / 2
        _check_finite(loss_d, epoch, "discriminator loss", "generative.train_dcgan.lr")
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
        _check_finite(loss_g, epoch, "generator loss", "generative.train_dcgan.lr")
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        sums["loss_d"] += float(loss_d.detach()) * n
        sums["loss_g"] += float(loss_g.detach()) * n
        sums["d_real_accuracy"] += float((real_logits.detach() > 0).sum())
        sums["d_fake_accuracy"] += float((fake_logits.detach() < 0).sum())
    return {key: value / len(x) for key, value in sums.items()}


def _job(name: str, checkpoint: Path, run_fingerprint: str, state: dict | None, run_id: str,
         on_epoch: Callable[[dict], None] | None, device: torch.device) -> kit.TrainJob:
    return kit.TrainJob("generative", None, None, distributed.Context(device), checkpoint, run_fingerprint, state,
                        run_id=run_id, on_epoch=on_epoch, stage=f"train_{name}")


def train_vae(model: VAE, x: torch.Tensor, cfg: VaeTrainParams, seed: int, checkpoint: Path, run_fingerprint: str,
              state: dict | None = None, run_id: str = "",
              on_epoch: Callable[[dict], None] | None = None) -> kit.FitResult:
    """Adam on the negative ELBO for `cfg.epochs` in the kit's loop (kit.epoch_loop: resume from `state`, a
    checkpoint for this fingerprint, and a checkpoint every epoch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def one_epoch(epoch: int) -> dict:
        return {**vae_epoch(model, optimizer, x, cfg.batch_size, epoch_generator(seed, "vae", epoch), epoch),
                "examples": len(x)}

    return kit.epoch_loop(_job("vae", checkpoint, run_fingerprint, state, run_id, on_epoch, x.device), model,
                          optimizer, cfg.epochs, one_epoch, unit="images/s", show=("reconstruction", "kl"))


def train_dcgan(G: Generator, D: Discriminator, x: torch.Tensor, cfg: DcganTrainParams, seed: int, checkpoint: Path,
                run_fingerprint: str, state: dict | None = None, run_id: str = "",
                on_epoch: Callable[[dict], None] | None = None) -> kit.FitResult:
    """The book's DCGAN training (Adam, lr and β1 from params) for `cfg.epochs` in the kit's loop, resuming G,
    D and both optimizers from `state`."""
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=betas)

    def one_epoch(epoch: int) -> dict:
        return {**dcgan_epoch(G, D, opt_g, opt_d, x, cfg.batch_size, epoch_generator(seed, "dcgan", epoch), epoch),
                "examples": len(x)}

    return kit.epoch_loop(_job("dcgan", checkpoint, run_fingerprint, state, run_id, on_epoch, x.device),
                          {"generator": G, "discriminator": D}, {"optimizer_g": opt_g, "optimizer_d": opt_d},
                          cfg.epochs, one_epoch, unit="images/s", loss="loss_d",
                          show=("loss_g", "d_real_accuracy", "d_fake_accuracy"))
