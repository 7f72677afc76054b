"""Box-aware training transforms: pure, vectorised functions on one sample.

A sample is (image uint8 (H, W, C) or (H, W), boxes float32 (N, 4), labels int64 (N,), difficult bool (N,)),
boxes in 0-based continuous xyxy (see `annotations.py`): a box lies inside a W x H image when
0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H. Box arithmetic runs in float64 and is returned as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# A box side below this (pixels) covers no pixel and is too thin for float32 to flip or shift
# faithfully: crop drops such slivers so that every box it returns stays non-empty downstream.
MIN_SIDE = 1e-2


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    return boxes


def resize(image: np.ndarray, boxes: np.ndarray,
           scale_or_size: float | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize (PIL bilinear) by a factor, or to an exact (height, width); boxes scale by the
    realised ratios new_W / W and new_H / H, so resizing back to (H, W) restores them."""
    height, width = image.shape[:2]
    if isinstance(scale_or_size, tuple | list):
        new_h, new_w = (int(v) for v in scale_or_size)
    else:
        new_h, new_w = round(height * scale_or_size), round(width * scale_or_size)
    if new_h < 1 or new_w < 1:
        raise ValueError(f"resize {scale_or_size!r} turns a {height}x{width} image into {new_h}x{new_w}")
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    ratios = np.array([new_w / width, new_h / height, new_w / width, new_h / height])
    limits = np.array([new_w, new_h, new_w, new_h], dtype=np.float64)
    scaled = np.clip(_as_boxes(boxes) * ratios, 0.0, limits)  # clip only absorbs rounding
    return resized, scaled.astype(np.float32)


def crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
         top: int, left: int, height: int, width: int, min_visible: float = 0.3,
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut image[top:top+height, left:left+width]; boxes move by (-left, -top) and are clipped to the crop.

    A box is kept when its clipped sides are at least MIN_SIDE and its clipped area is at least
    `min_visible` of its original area (default 0.3: with less than a third of the object in view the
    target says little about what the crop shows; 0 keeps every box that overlaps). Labels and
    difficult flags are filtered with their boxes. The crop may leave no box at all."""
    img_h, img_w = image.shape[:2]
    if not (0 <= top and 0 <= left and height >= 1 and width >= 1 and top + height <= img_h
            and left + width <= img_w):
        raise ValueError(f"crop (top={top}, left={left}, height={height}, width={width}) "
                         f"does not fit in the {img_h}x{img_w} image")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    boxes = _as_boxes(boxes)
    shifted = boxes - np.array([left, top, left, top], dtype=np.float64)
    clipped = np.clip(shifted, 0.0, np.array([width, height, width, height], dtype=np.float64))
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = clipped.astype(np.float32)
    sides = clipped[:, 2:].astype(np.float64) - clipped[:, :2]  # as returned, so the check is on the output
    keep = (sides >= MIN_SIDE).all(axis=1) & (visible >= min_visible * area)
    cropped = image[top:top + height, left:left + width].copy()
    return cropped, clipped[keep], np.asarray(labels)[keep], np.asarray(difficult)[keep]


def random_crop_box(height: int, width: int, crop_h: int, crop_w: int,
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of a uniformly placed crop, ready for `crop(..., *box)`; a crop side
    larger than the image is reduced to the image's side (a small image is kept whole on that axis)."""
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return top, left, crop_h, crop_w


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x1' = W - x2, x2' = W - x1 (y unchanged)."""
    width = image.shape[1]
    boxes = _as_boxes(boxes)
    flipped = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    return image[:, ::-1].copy(), flipped.astype(np.float32)


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation: flip probability, random crop (height, width) or None, the shorter image
    side after resizing or None (no resize), and crop's `min_visible`."""

    flip_prob: float = 0.5
    crop_size: tuple[int, int] | None = None
    min_size: int | None = None
    min_visible: float = 0.3


def apply(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
          config: TrainTransform, rng: np.random.Generator,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random crop, then horizontal flip, then resize, drawing from `rng` in that order (crop position,
    then one flip draw). Crop first so that crop sizes are in the original image's pixels, as in the
    segmentation pipeline; resize last so that the output's shorter side is exactly `min_size`."""
    boxes = _as_boxes(boxes).astype(np.float32)
    labels, difficult = np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool)
    if config.crop_size is not None:
        box = random_crop_box(*image.shape[:2], *config.crop_size, rng)
        image, boxes, labels, difficult = crop(image, boxes, labels, difficult, *box, min_visible=config.min_visible)
    if rng.random() < config.flip_prob:
        image, boxes = hflip(image, boxes)
    if config.min_size is not None:
        image, boxes = resize(image, boxes, config.min_size / min(image.shape[:2]))
    return image, boxes, labels, difficult
