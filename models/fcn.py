"""Fully convolutional network (d2l 14.10–14.11): a ResNet-18 trunk, a 1x1 convolution to class
scores and a stride-32 transposed convolution, initialised as bilinear upsampling, back to pixels."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from models.weights import build_with_weights


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The book's bilinear-interpolation kernel, shape (in, out, k, k), on the channel diagonal
    weight[i, i] (channels are upsampled independently); k=4 with stride 2, padding 1 doubles H and W."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = (torch.arange(kernel_size).reshape(-1, 1), torch.arange(kernel_size).reshape(1, -1))
    filt = (1 - torch.abs(og[0] - center) / factor) * (1 - torch.abs(og[1] - center) / factor)
    weight = torch.zeros((in_channels, out_channels, kernel_size, kernel_size))
    diagonal = torch.arange(min(in_channels, out_channels))
    weight[diagonal, diagonal, :, :] = filt
    return weight


def resnet18_trunk(weights: str) -> nn.Sequential:
    """ResNet-18 without avgpool and fc: (N, 3, H, W) → (N, 512, H/32, W/32).

    weights: "imagenet" (torchvision's IMAGENET1K_V1, from the torch hub cache or downloaded) or
    "none" (random init). Unobtainable ImageNet weights raise D2lflowError; never a silent fallback."""
    if weights == "none":
        net = torchvision.models.resnet18(weights=None)
    elif weights == "imagenet":
        imagenet = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        net = build_with_weights(lambda: torchvision.models.resnet18(weights=imagenet), imagenet,
                                 "ImageNet ResNet-18", "segmentation.train.backbone_weights: none")
    else:
        raise ValueError(f"backbone weights must be 'imagenet' or 'none', got {weights!r}")
    return nn.Sequential(*list(net.children())[:-2])


def build_fcn(num_classes: int = 21, backbone_weights: str = "none") -> nn.Sequential:
    """The book's FCN with its module names: trunk children "0".."7", then `final_conv` (512 → classes,
    1x1) and `transpose_conv` (k=64, padding=16, stride=32, bilinear init): output H, W = input H, W
    for inputs whose sides are multiples of 32."""
    net = resnet18_trunk(backbone_weights)
    net.add_module("final_conv", nn.Conv2d(512, num_classes, kernel_size=1))
    net.add_module("transpose_conv",
                   nn.ConvTranspose2d(num_classes, num_classes, kernel_size=64, padding=16, stride=32))
    with torch.no_grad():
        net.transpose_conv.weight.copy_(bilinear_kernel(num_classes, num_classes, 64))
    return net
