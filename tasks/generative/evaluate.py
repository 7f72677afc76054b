"""How good the samples are: the VAE's held-out ELBO, and for every sampler (the two models and the
baselines) the Fréchet distance and precision/recall on the trained LeNet's 84-d features (`fid_lenet`, a
domain feature extractor, not the Inception FID), the classifier's class histogram of the samples against
uniform, and, when torch-fidelity's InceptionV3 weights are present, the Inception FID through torchmetrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.generative import VAE, vae_loss
from tasks.generative.train import vae_images
from tasks.sample_quality import class_coverage, frechet_distance, precision_recall

log = logging.getLogger(__name__)

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID InceptionV3 (in torch's hub cache)
Sampler = Callable[[int, torch.Generator], np.ndarray]  # (n, generator) → uint8 images (n, 28, 28)


@torch.inference_mode()
def classifier_outputs(net: nn.Sequential, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The LeNet's penultimate (84-d) features and predicted classes of uint8 images (N, 28, 28), fed as the
    classification pipeline trains it (pixels / 255)."""
    net.eval()
    features, labels = [], []
    for start in range(0, len(images), batch_size):
        hidden = net[:-1](vae_images(images[start:start + batch_size]))
        features.append(hidden.double().numpy())
        labels.append(net[-1](hidden).argmax(dim=1).numpy())
    return np.concatenate(features), np.concatenate(labels)


def sample_in_batches(sampler: Sampler, n: int, batch_size: int, generator: torch.Generator) -> np.ndarray:
    return np.concatenate([sampler(min(batch_size, n - start), generator) for start in range(0, n, batch_size)])


def sample_scores(real_features: np.ndarray, features: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """fid_lenet, precision and recall against the real features; the class histogram's distance from uniform."""
    pr = precision_recall(real_features, features, k)
    coverage = class_coverage(labels, 10)
    return {"fid_lenet": frechet_distance(real_features, features), "precision": pr.precision, "recall": pr.recall,
            "class_tv_from_uniform": coverage.tv_distance, "class_kl_from_uniform": coverage.kl_from_uniform,
            "classes_seen": coverage.classes_seen,
            **{f"class_fraction_{c}": float(p) for c, p in enumerate(coverage.histogram)}}


@torch.inference_mode()
def vae_heldout(model: VAE, images: np.ndarray, batch_size: int, generator: torch.Generator) -> dict[str, float]:
    """The negative ELBO (one ε per image) and its two terms in nats per image, and the mean squared error
    per pixel of the reconstruction from μ (decoder mean, [0, 1] scale), on held-out images."""
    model.eval()
    sums = {"neg_elbo": 0.0, "reconstruction_nll": 0.0, "kl": 0.0, "reconstruction_mse": 0.0}
    for start in range(0, len(images), batch_size):
        x = vae_images(images[start:start + batch_size])
        loss = vae_loss(x, *model(x, generator=generator))
        mu, _ = model.encode(x)
        for key, value in zip(("neg_elbo", "reconstruction_nll", "kl"), loss):
            sums[key] += float(value) * len(x)
        sums["reconstruction_mse"] += float((torch.sigmoid(model.decode(mu)) - x).square().mean()) * len(x)
    return {key: value / len(images) for key, value in sums.items()}


def inception_weights() -> Path:
    """Where torch-fidelity looks for its InceptionV3 weights (torch's hub cache, `TORCH_HOME`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_unavailable() -> str | None:
    """Why the Inception FID cannot be computed here (no library, no weights: it is never downloaded by a
    stage), or None when it can."""
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import FrechetInceptionDistance  # noqa: F401
    except ImportError as error:
        return f"torchmetrics / torch-fidelity are not installed ({error}); pip install 'd2lflow[inception]'"
    if not inception_weights().is_file():
        return (f"the InceptionV3 weights {inception_weights()} are not present (stages never download them); "
                "put torch-fidelity's file there to get the Inception FID")
    return None


def inception_fid(real: np.ndarray, fake: np.ndarray, batch_size: int) -> float:
    """torchmetrics' FID (2048-d InceptionV3 pool features) of uint8 grey images, repeated to 3 channels."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).unsqueeze(1).repeat(1, 3, 1, 1)
            metric.update(batch, real=is_real)
    return float(metric.compute())


def grid(images: np.ndarray, columns: int) -> np.ndarray:
    """uint8 images (N, H, W) tiled into one uint8 picture, 2-pixel grey gutters."""
    n, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2), 128, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = image
    return canvas


def panels_figure(panels: list[tuple[str, np.ndarray]], columns: int) -> bytes:
    """One titled image grid per panel, side by side (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.runtime import figure_png

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels):
        ax.imshow(grid(images, columns), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return figure_png(fig, dpi=100)


def interpolation_figure(rows: list[tuple[str, np.ndarray]]) -> bytes:
    """One row of interpolated images per model (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.runtime import figure_png

    fig, axes = plt.subplots(len(rows), 1, figsize=(1.0 * rows[0][1].shape[0], 1.4 * len(rows)), squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], rows):
        ax.imshow(grid(images, len(images)), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return figure_png(fig, dpi=100)


def lerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points on the segment a → b (both ends included), stacked on a new first axis."""
    t = torch.linspace(0.0, 1.0, steps).reshape(-1, *([1] * a.dim()))
    return (1 - t) * a + t * b
