"""Segmentation prediction: the book's centre-crop protocol and full-image prediction by tiling
(d2l 14.11 exercise): crops whose sides are multiples of 32, logits averaged where tiles overlap."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

STRIDE = 32  # the FCN's output stride: a crop side that is not a multiple of it does not map back to pixels


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Starts of tiles of size `tile` covering [0, length), neighbours sharing at least `overlap` of a
    tile, spread evenly from 0 to length - tile; [0] when length <= tile."""
    if tile < 1 or length < 1:
        raise ValueError(f"length and tile must be positive, got length={length}, tile={tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    max_step = max(1, tile - math.ceil(overlap * tile - 1e-9))
    span = length - tile
    gaps = math.ceil(span / max_step)
    return [round(i * span / gaps) for i in range(gaps + 1)]


def _check_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
        raise ValueError(f"{what} sides must be positive multiples of {STRIDE}, got {height}x{width}")
    return height, width


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _run(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch)
    if logits.shape[0] != batch.shape[0] or logits.shape[2:] != batch.shape[2:]:
        raise ValueError(f"the model maps input {tuple(batch.shape)} to {tuple(logits.shape)}; "
                         "tiled prediction needs logits of the input's height and width")
    return logits.float()


def predict_tiled(model: nn.Module, image: torch.Tensor, tile: tuple[int, int], overlap: float,
                  batch_size: int = 4) -> torch.Tensor:
    """Logits (C, H, W) on the CPU for a whole normalised image (3, H, W): the model (in the mode the
    caller set, normally eval) runs on overlapping tiles on its own device and overlaps are averaged.
    An image smaller than the tile is padded with 0 (the mean colour after normalisation) and the
    logits cropped back."""
    tile_h, tile_w = _check_size(tile, "tile")
    if image.ndim != 3:
        raise ValueError(f"image must be (channels, H, W), got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    _, height, width = image.shape
    device = _device(model)
    padded = F.pad(image, (0, max(0, tile_w - width), 0, max(0, tile_h - height))).to(device)
    full_h, full_w = padded.shape[1:]
    lefts = tile_starts(full_w, tile_w, overlap)
    boxes = [(top, left) for top in tile_starts(full_h, tile_h, overlap) for left in lefts]
    total = None
    count = torch.zeros((full_h, full_w), device=device)
    with torch.inference_mode():
        for first in range(0, len(boxes), batch_size):
            chunk = boxes[first:first + batch_size]
            batch = torch.stack([padded[:, t:t + tile_h, left:left + tile_w] for t, left in chunk])
            logits = _run(model, batch)
            if total is None:
                total = torch.zeros((logits.shape[1], full_h, full_w), device=device)
            for (t, left), tile_logits in zip(chunk, logits):
                total[:, t:t + tile_h, left:left + tile_w] += tile_logits
                count[t:t + tile_h, left:left + tile_w] += 1
    return (total / count)[:, :height, :width].cpu()


def predict_center_crop(model: nn.Module, image: torch.Tensor, crop: tuple[int, int]
                        ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The book's protocol: logits (C, crop_h, crop_w) on the CPU for the centred crop of a normalised
    image (3, H, W), and the crop's (top, left). Images smaller than the crop raise ValueError (the
    book drops them)."""
    crop_h, crop_w = _check_size(crop, "crop")
    _, height, width = image.shape
    if height < crop_h or width < crop_w:
        raise ValueError(f"image {height}x{width} is smaller than the crop {crop_h}x{crop_w}")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    batch = image[None, :, top:top + crop_h, left:left + crop_w].to(_device(model))
    with torch.inference_mode():
        logits = _run(model, batch)[0]
    return logits.cpu(), (top, left)
