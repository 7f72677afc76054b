"""Neural style transfer (d2l 14.12): VGG-19 features, the content, style (Gram) and TV losses, and a
Johnson et al. (2016) image-transformation network that applies a style in one forward pass.

Images enter the VGG trunk normalised with the ImageNet mean and std (`normalize`); the
transformation network maps [0, 1] RGB images to [0, 1] RGB images of the same size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)
CONTENT_LAYERS: tuple[int, ...] = (25,)
STYLE_LAYERS: tuple[int, ...] = (0, 5, 10, 19, 28)
# The book's loss weights: total = 1 · content + 1e4 · Σ style + 10 · TV.
CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = 1.0, 1e4, 10.0


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (N, 3, H, W) → the ImageNet-normalised input the VGG trunk expects (the book's preprocess)."""
    mean = torch.tensor(RGB_MEAN, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(RGB_STD, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize`, clamped to [0, 1] (the book's postprocess)."""
    mean = torch.tensor(RGB_MEAN, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(RGB_STD, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


def gram(x: torch.Tensor) -> torch.Tensor:
    """Per-image Gram matrix of (N, c, h, w) features: (N, c, c) = X Xᵀ / (c · h · w), X = (c, h·w)."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def content_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the content features (a constant target: no gradient flows into y)."""
    return torch.square(y_hat - y.detach()).mean()


def style_loss(y_hat: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the Gram matrix of `y_hat` and the style's precomputed Gram matrix."""
    return torch.square(gram(y_hat) - gram_y.detach()).mean()


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation: half the sum of the mean absolute vertical and horizontal neighbour differences."""
    return 0.5 * (torch.abs(x[:, :, 1:, :] - x[:, :, :-1, :]).mean() +
                  torch.abs(x[:, :, :, 1:] - x[:, :, :, :-1]).mean())


class StyleLosses(NamedTuple):
    """Weighted loss terms, one per content / style layer, and their sum."""
    content: list[torch.Tensor]
    style: list[torch.Tensor]
    tv: torch.Tensor
    total: torch.Tensor


def compute_loss(x: torch.Tensor, contents_y_hat: Sequence[torch.Tensor], styles_y_hat: Sequence[torch.Tensor],
                 contents_y: Sequence[torch.Tensor], styles_y_gram: Sequence[torch.Tensor],
                 content_weight: float = CONTENT_WEIGHT, style_weight: float = STYLE_WEIGHT,
                 tv_weight: float = TV_WEIGHT) -> StyleLosses:
    """The book's `compute_loss`: x is the synthesized (normalised) image, the rest its and the targets' features."""
    contents = [content_loss(a, b) * content_weight for a, b in zip(contents_y_hat, contents_y, strict=True)]
    styles = [style_loss(a, b) * style_weight for a, b in zip(styles_y_hat, styles_y_gram, strict=True)]
    tv = tv_loss(x) * tv_weight
    return StyleLosses(contents, styles, tv, sum(styles + contents + [tv]))


def vgg19_trunk(features: nn.Sequential | None = None,
                layers: Sequence[int] = CONTENT_LAYERS + STYLE_LAYERS) -> nn.Sequential:
    """`features[0 .. max(layers)]` of VGG-19, frozen, in eval mode, ReLUs made out-of-place.

    features: a prebuilt `torchvision.models.vgg19(...).features` (pretrained weights are the
    caller's business); None builds a randomly initialised one."""
    if features is None:
        features = torchvision.models.vgg19(weights=None).features
    last = max(layers)
    if last >= len(features):
        raise ValueError(f"layer {last} requested but the VGG features have {len(features)} layers")
    trunk = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in list(features)[:last + 1]])
    trunk.requires_grad_(False)
    return trunk.eval()


def extract_features(trunk: nn.Sequential, x: torch.Tensor, content_layers: Sequence[int] = CONTENT_LAYERS,
                     style_layers: Sequence[int] = STYLE_LAYERS) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(content features, style features) of normalised images x at the given trunk indices.

    As in the book, where torchvision's in-place ReLU overwrites the stored conv output, a layer
    followed by a ReLU inside the trunk contributes its post-ReLU activation (layer 28, the trunk's
    last, contributes the raw conv output)."""
    wanted = set(content_layers) | set(style_layers)
    taken: dict[int, torch.Tensor] = {}
    pending: int | None = None
    for i, layer in enumerate(trunk):
        x = layer(x)
        if pending is not None and isinstance(layer, nn.ReLU):
            taken[pending] = x
        pending = None
        if i in wanted:
            taken[i] = x
            pending = i
    missing = wanted - taken.keys()
    if missing:
        raise ValueError(f"layers {sorted(missing)} are beyond the trunk's {len(trunk)} layers")
    return [taken[i] for i in content_layers], [taken[i] for i in style_layers]


class _ConvBlock(nn.Sequential):
    """Reflection padding, convolution, optional instance norm and ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, norm: bool = True, relu: bool = True):
        layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
        if norm:
            layers.append(nn.InstanceNorm2d(cout, affine=True))
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvBlock(channels, channels, 3), _ConvBlock(channels, channels, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TransformNet(nn.Module):
    """Johnson et al. (2016): 9×9 conv, two stride-2 convs, residual blocks, two nearest-upsample + conv
    stages, 9×9 conv to RGB, instance norm throughout. Defaults are the paper's widths (32, 64, 128) and
    5 residual blocks. Maps (N, 3, H, W) in [0, 1] to (N, 3, H, W) in [0, 1] for any H, W ≥ 5, odd included:
    each upsampling returns to the exact size its encoder stage had."""

    def __init__(self, base: int = 32, n_residual: int = 5) -> None:
        super().__init__()
        self.stem = _ConvBlock(3, base, 9)
        self.down1 = _ConvBlock(base, 2 * base, 3, stride=2)
        self.down2 = _ConvBlock(2 * base, 4 * base, 3, stride=2)
        self.residual = nn.Sequential(*[_Residual(4 * base) for _ in range(n_residual)])
        self.up1 = _ConvBlock(4 * base, 2 * base, 3)
        self.up2 = _ConvBlock(2 * base, base, 3)
        self.head = _ConvBlock(base, 3, 9, norm=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        y = self.residual(self.down2(s1))
        y = self.up1(F.interpolate(y, size=s1.shape[-2:], mode="nearest"))
        y = self.up2(F.interpolate(y, size=s0.shape[-2:], mode="nearest"))
        return torch.sigmoid(self.head(y))
