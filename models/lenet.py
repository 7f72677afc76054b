"""LeNet-5 as d2l 7.6 writes it, and the cross-correlation of 7.2.

`build_lenet("sigmoid")` is the book's network (sigmoid, average pooling); `"relu"` is the book's
exercise variant (ReLU, max pooling), which trains faster and better. Input (N, 1, 28, 28) in the
book's scale (pixels / 255), output (N, 10) logits.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Variant = Literal["sigmoid", "relu"]


def corr2d(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The book's 2-D cross-correlation of one (h, w) input with one (kh, kw) kernel ("valid" size)."""
    h, w = k.shape
    y = torch.zeros((x.shape[0] - h + 1, x.shape[1] - w + 1), dtype=torch.result_type(x, k))
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] = (x[i:i + h, j:j + w] * k).sum()
    return y


def init_xavier(module: nn.Module) -> None:
    """The book's `init_cnn`: Xavier-uniform weights for every Linear and Conv2d (biases as PyTorch sets them)."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


def build_lenet(variant: Variant = "sigmoid", num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """LeNet: conv 6@5×5 pad 2, act, pool 2/2, conv 16@5×5, act, pool 2/2, flatten, 120, act, 84, act,
    num_classes; Xavier init. Draws its initial weights from torch's global generator (seed it first)."""
    if variant == "sigmoid":
        act, pool = nn.Sigmoid, nn.AvgPool2d
    elif variant == "relu":
        act, pool = nn.ReLU, nn.MaxPool2d
    else:
        raise ValueError(f"LeNet variant must be 'sigmoid' or 'relu', got {variant!r}")
    net = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), act(), pool(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), act(), pool(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, num_classes),
    )
    net.apply(init_xavier)
    return net


def layer_shapes(net: nn.Sequential, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """The book's `layer_summary`: (layer class name, output shape) after each layer of `net`."""
    shapes = []
    with torch.no_grad():
        for layer in net:
            x = layer(x)
            shapes.append((type(layer).__name__, tuple(x.shape)))
    return shapes
