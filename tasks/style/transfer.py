"""Neural style transfer (d2l 14.12) as plain functions: the book's preprocessing, the VGG-19 trunk
(random or ImageNet features), the losses of an image, the book's optimisation of the synthesized
image, the colour-matched baseline, and the training of a Johnson et al. (2016) feed-forward network
with the same perceptual loss. Images are uint8 (H, W, 3) arrays at the edges, [0, 1] tensors inside."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from models.style import TransformNet, compute_loss, denormalize, extract_features, gram, normalize, vgg19_trunk
from models.weights import build_with_weights
from tasks.params import StyleFeedForwardParams, StyleLossWeights, StyleTrainParams

log = logging.getLogger(__name__)

RANDOM_FEATURES_NOTE = ("features: random: the VGG-19 trunk is randomly initialised (seeded), not ImageNet-trained; "
                        "style transfer from random CNN features is a known, weaker result than the book's. "
                        "Set `style.train.features: imagenet` for the book's method")


def build_trunk(features: str, seed: int) -> nn.Sequential:
    """VGG-19 `features[0..28]`, frozen: ImageNet weights through torchvision's weights API, or a random
    init drawn from `seed` alone (every stage rebuilds the same trunk) without moving the global RNG."""
    if features == "imagenet":
        weights = torchvision.models.VGG19_Weights.IMAGENET1K_V1
        vgg = build_with_weights(lambda: torchvision.models.vgg19(weights=weights), weights, "ImageNet VGG-19",
                                 "style.train.features: random")
        return vgg19_trunk(vgg.features)
    if features != "random":
        raise ValueError(f"features must be 'random' or 'imagenet', found {features!r}")
    from torchvision.models.vgg import cfgs, make_layers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # torchvision's VGG-19 `features` with VGG's own conv init, without building (and initialising) the
        # 120M-parameter classifier that the trunk never uses
        features = make_layers(cfgs["E"], batch_norm=False)
        for module in features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        return vgg19_trunk(features)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The book's `transforms.Resize(image_shape)` on the PIL image (bilinear, antialiased): uint8 (h, w, 3)."""
    return np.asarray(TF.resize(Image.fromarray(image), list(shape)), dtype=np.uint8)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) → float (N, 3, H, W) in [0, 1] (the book's ToTensor)."""
    array = np.asarray(images, dtype=np.uint8)
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(np.array(array, copy=True)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[0, 1] (N, 3, H, W) → uint8 (N, H, W, 3), rounded."""
    return (x.detach().clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def color_match(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The content image with each RGB channel's mean and std set to the style image's (clamped to [0, 1])."""
    c_mean, c_std = content.mean(dim=(2, 3), keepdim=True), content.std(dim=(2, 3), keepdim=True)
    s_mean, s_std = style.mean(dim=(2, 3), keepdim=True), style.std(dim=(2, 3), keepdim=True)
    return ((content - c_mean) / c_std.clamp_min(1e-6) * s_std + s_mean).clamp(0, 1)


def style_at(style: torch.Tensor, shape: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The [0, 1] style image resized (bilinear, antialiased) to the size of the images it styles."""
    return TF.resize(style, list(shape), antialias=True)


@dataclass
class Targets:
    """What the losses compare with: the content image's content features and the style's Gram matrices."""

    contents: list[torch.Tensor]
    style_grams: list[torch.Tensor]


@torch.no_grad()
def targets(trunk: nn.Sequential, content: torch.Tensor, style: torch.Tensor) -> Targets:
    """Content features of `content` and Gram matrices of `style` ([0, 1] images, normalised here)."""
    contents, _ = extract_features(trunk, normalize(content))
    _, styles = extract_features(trunk, normalize(style))
    return Targets(contents, [gram(y) for y in styles])


def _weighted(x: torch.Tensor, trunk: nn.Sequential, target: Targets, weights: StyleLossWeights):
    contents, styles = extract_features(trunk, x)
    return compute_loss(x, contents, styles, target.contents, target.style_grams,
                        weights.content, weights.style, weights.tv)


@torch.no_grad()
def image_losses(trunk: nn.Sequential, image: torch.Tensor, target: Targets,
                 weights: StyleLossWeights) -> dict[str, float]:
    """The book's weighted content, style (summed over layers), TV and total loss of a [0, 1] image."""
    return _floats(_weighted(normalize(image), trunk, target, weights))


def _floats(losses) -> dict[str, float]:
    """The weighted terms as floats: content and style summed over their layers."""
    return {"content_loss": float(sum(losses.content).detach()), "style_loss": float(sum(losses.style).detach()),
            "tv_loss": float(losses.tv.detach()), "total_loss": float(losses.total.detach())}


def synthesize(trunk: nn.Sequential, content: torch.Tensor, target: Targets, cfg: StyleTrainParams,
               epochs: int | None = None,
               on_epoch: Callable[[int, dict[str, float], torch.Tensor], None] | None = None
               ) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """The book's `train`: the synthesized image (initialised to the normalised content image) is the only
    parameter, Adam(lr), StepLR(lr_decay_epoch, lr_decay). Returns the [0, 1] result and per-epoch losses
    (the weighted terms of that epoch's forward pass); `on_epoch(epoch, losses, image)` after each."""
    x = nn.Parameter(normalize(content).clone())
    optimizer = torch.optim.Adam([x], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_decay_epoch, cfg.lr_decay)
    history = []
    for epoch in range(1, (epochs or cfg.epochs) + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        losses = _weighted(x, trunk, target, cfg.weights)
        if not torch.isfinite(losses.total):
            raise FloatingPointError(f"the style-transfer loss is {losses.total.item()} at epoch {epoch}; "
                                     "lower style.train.lr")
        losses.total.backward()
        optimizer.step()
        scheduler.step()
        record = {"epoch": epoch, **_floats(losses), "iterations_per_s": 1.0 / max(time.perf_counter() - started, 1e-9)}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record, x.detach())
    return denormalize(x.detach()), history


def train_transform_net(net: TransformNet, trunk: nn.Sequential, images: torch.Tensor, style: torch.Tensor,
                        cfg: StyleFeedForwardParams, weights: StyleLossWeights, seed: int,
                        on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Johnson et al.: minimise the perceptual loss of net(batch) (content: the batch itself; style: the
    style image's Gram matrices at the content images' size) with Adam over random batches of `images`
    ([0, 1], (N, 3, H, W), all one size). Returns the losses of the logged steps."""
    _, styles = extract_features(trunk, normalize(style_at(style, images.shape[-2:])))
    style_grams = [gram(y).detach() for y in styles]
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    net.train()
    order = torch.randperm(len(images), generator=generator)
    cursor = 0
    for step in range(1, cfg.steps + 1):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        batch = images[order[cursor: cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        with torch.no_grad():
            contents, _ = extract_features(trunk, normalize(batch))
        optimizer.zero_grad()
        out = normalize(net(batch))
        losses = _weighted(out, trunk, Targets(contents, style_grams), weights)
        if not torch.isfinite(losses.total):
            raise FloatingPointError(f"the feed-forward network's loss is {losses.total.item()} at step {step}; "
                                     "lower style.train.feedforward.lr")
        losses.total.backward()
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, **_floats(losses)}
            history.append(record)
            if on_step is not None:
                on_step(step, record)
    net.eval()
    return history


@torch.inference_mode()
def stylise(net: TransformNet, images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) → the network's stylised uint8 (N, H, W, 3)."""
    net.eval()
    return to_uint8(net(to_tensor(images)))
