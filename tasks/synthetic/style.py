"""Synthetic style-transfer images: a smooth content scene (sky, sun, rolling hills: low frequencies
only) and a strongly textured style (warm, high-frequency oriented strokes), so that the style's Gram
statistics differ clearly from the content's and a transfer visibly moves the content towards them."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def content_scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): a blue sky gradient, a soft sun and two rolling green hills, gently shaded."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    sky_top, sky_low = np.array([40, 90, 200], np.float32), np.array([190, 215, 240], np.float32)
    image = sky_top + (sky_low - sky_top) * ys[..., None] + np.zeros((h, w, 3), np.float32)
    cy, cx, radius = rng.uniform(0.15, 0.3), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.12)
    sun = np.clip(1.2 - np.hypot(ys - cy, (xs - cx) * w / h) / radius, 0.0, 1.0)[..., None]
    image = image * (1 - sun) + np.array([255, 235, 150], np.float32) * sun
    for level, colour, phase in ((0.55, (70, 140, 60), rng.uniform(0, 6)), (0.7, (40, 100, 40), rng.uniform(0, 6))):
        horizon = level + 0.08 * np.sin(2 * np.pi * 1.3 * xs + phase) + 0.04 * np.sin(2 * np.pi * 0.6 * xs + 2 * phase)
        ground = np.clip((ys - horizon) * h / 3.0, 0.0, 1.0)[..., None]  # a 3-pixel soft edge
        shade = (1.0 - 0.35 * (ys - level))[..., None]
        image = image * (1 - ground) + np.array(colour, np.float32) * shade * ground
    return np.clip(np.rint(ndimage.gaussian_filter(image, sigma=(1.0, 1.0, 0))), 0, 255).astype(np.uint8)


def textured_style(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): short oriented strokes in autumn colours over fine noise (high frequencies at
    several orientations, strong colour contrast)."""
    rng = np.random.default_rng(seed + 1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w), np.float32)
    for _ in range(6):
        theta, period = rng.uniform(0, np.pi), rng.uniform(4.0, 9.0)
        along = xs * np.cos(theta) + ys * np.sin(theta)
        field += np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
    patches = ndimage.zoom(rng.uniform(0, 1, (max(h // 24, 2), max(w // 24, 2))), (h / max(h // 24, 2),
                                                                               w / max(w // 24, 2)), order=0)
    field = field / 6 + 0.8 * (patches[:h, :w] - 0.5) + rng.normal(0, 0.25, (h, w))
    palette = np.array([[120, 20, 10], [200, 60, 20], [240, 140, 30], [250, 210, 80], [90, 50, 20],
                        [30, 20, 15]], np.float32)
    levels = np.digitize(field, np.quantile(field, np.linspace(0, 1, len(palette) + 1)[1:-1]))
    return palette[levels].astype(np.uint8)
