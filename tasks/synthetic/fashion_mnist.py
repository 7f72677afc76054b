"""A synthetic Fashion-MNIST: the four official IDX `.gz` files, 28×28 grey, 10 garment classes.

Each class is a silhouette drawn from primitives (tops: torso + sleeves; trousers: two legs;
dress: a flared trapezoid; footwear: a sole with straps, a low upper or a shaft; bag: a box with
a handle). Position, scale, rotation, proportions, brightness, texture and noise are random, and
the classes come in overlapping families (t-shirt/pullover/coat/shirt differ by sleeve length,
an opening or a collar; sandal/sneaker/ankle boot by the upper), so a linear model learns a lot of
it but not all. Deterministic: equal arguments give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tasks.atomic import atomic_path
from tasks.classification.idx import IMAGE_SIDE, NUM_CLASSES, SPLITS, write_idx_gz

Mask = np.ndarray
Rng = np.random.Generator


def _soft(signed_distance: np.ndarray, pixel: float) -> Mask:
    """Anti-aliased coverage from a signed distance (positive inside), one pixel wide."""
    return np.clip(0.5 + signed_distance / pixel, 0.0, 1.0)


class _Canvas:
    """A randomly placed, scaled and rotated coordinate frame: u right, v down, [-1, 1] ≈ the image."""

    def __init__(self, rng: Rng) -> None:
        scale = rng.uniform(0.8, 1.1)
        angle = np.deg2rad(rng.uniform(-12.0, 12.0))
        shift = rng.uniform(-0.12, 0.12, size=2)
        grid = (np.arange(IMAGE_SIDE) + 0.5) / IMAGE_SIDE * 2.0 - 1.0
        y, x = np.meshgrid(grid, grid, indexing="ij")
        x, y = x - shift[0], y - shift[1]
        cos, sin = np.cos(angle), np.sin(angle)
        self.u = (cos * x + sin * y) / scale
        self.v = (-sin * x + cos * y) / scale
        self.pixel = 2.0 / IMAGE_SIDE / scale

    def box(self, cu: float, cv: float, hu: float, hv: float) -> Mask:
        return _soft(np.minimum(hu - np.abs(self.u - cu), hv - np.abs(self.v - cv)), self.pixel)

    def trapezoid(self, cu: float, top: float, bottom: float, top_half: float, bottom_half: float) -> Mask:
        t = np.clip((self.v - top) / (bottom - top), 0.0, 1.0)
        half = top_half + t * (bottom_half - top_half)
        inside_v = np.minimum(self.v - top, bottom - self.v)
        return _soft(np.minimum(half - np.abs(self.u - cu), inside_v), self.pixel)

    def segment(self, a: tuple[float, float], b: tuple[float, float], width: float) -> Mask:
        """A capsule of `width` around the segment a–b."""
        au, av = a
        du, dv = b[0] - au, b[1] - av
        t = np.clip(((self.u - au) * du + (self.v - av) * dv) / (du * du + dv * dv), 0.0, 1.0)
        dist = np.hypot(self.u - (au + t * du), self.v - (av + t * dv))
        return _soft(width / 2 - dist, self.pixel)

    def ring(self, cu: float, cv: float, radius: float, width: float) -> Mask:
        """The upper half of a ring (a handle)."""
        dist = np.abs(np.hypot(self.u - cu, self.v - cv) - radius)
        return _soft(width / 2 - dist, self.pixel) * (self.v <= cv)


def _top(c: _Canvas, rng: Rng, sleeve: float, length: float) -> Mask:
    """A torso with two sleeves of relative length `sleeve` hanging from the shoulders."""
    half_w, top = rng.uniform(0.32, 0.45), rng.uniform(-0.85, -0.7)
    bottom = top + length
    torso = c.trapezoid(0.0, top, bottom, half_w, half_w * rng.uniform(0.9, 1.1))
    width = rng.uniform(0.18, 0.28)
    drop, spread = rng.uniform(0.5, 1.0), rng.uniform(0.25, 0.45)
    arms = np.zeros_like(torso)
    for side in (-1.0, 1.0):
        shoulder = (side * (half_w - width / 2), top + width / 2)
        hand = (shoulder[0] + side * spread * sleeve, shoulder[1] + drop * sleeve * 1.4)
        arms = np.maximum(arms, c.segment(shoulder, hand, width))
    return np.maximum(torso, arms)


def _tshirt(c: _Canvas, rng: Rng) -> Mask:
    return _top(c, rng, sleeve=rng.uniform(0.2, 0.45), length=rng.uniform(1.3, 1.6))


def _pullover(c: _Canvas, rng: Rng) -> Mask:
    return _top(c, rng, sleeve=rng.uniform(0.75, 1.05), length=rng.uniform(1.3, 1.6))


def _coat(c: _Canvas, rng: Rng) -> Mask:
    mask = _top(c, rng, sleeve=rng.uniform(0.8, 1.1), length=rng.uniform(1.45, 1.7))
    opening = c.box(rng.uniform(-0.03, 0.03), 0.1, rng.uniform(0.015, 0.04), 0.9)
    return mask * (1.0 - rng.uniform(0.3, 0.7) * opening)


def _shirt(c: _Canvas, rng: Rng) -> Mask:
    mask = _top(c, rng, sleeve=rng.uniform(0.3, 1.05), length=rng.uniform(1.3, 1.6))
    collar = c.trapezoid(0.0, -0.85, -0.5, 0.14, 0.0)
    buttons = c.box(0.0, 0.1, 0.02, 0.6) * (np.sin(c.v * rng.uniform(14, 20)) > 0.3)
    return mask * (1.0 - 0.6 * collar) * (1.0 - rng.uniform(0.0, 0.5) * buttons)


def _trouser(c: _Canvas, rng: Rng) -> Mask:
    waist, half_w = rng.uniform(-0.9, -0.75), rng.uniform(0.22, 0.35)
    gap, leg = rng.uniform(0.02, 0.08), rng.uniform(1.5, 1.75)
    mask = c.box(0.0, waist + 0.1, half_w, 0.1)
    for side in (-1.0, 1.0):
        inner, outer = side * gap, side * half_w
        mask = np.maximum(mask, c.box((inner + outer) / 2, waist + leg / 2, abs(outer - inner) / 2, leg / 2))
    return mask


def _dress(c: _Canvas, rng: Rng) -> Mask:
    top = rng.uniform(-0.9, -0.75)
    mask = c.trapezoid(0.0, top, top + rng.uniform(1.5, 1.75), rng.uniform(0.15, 0.28), rng.uniform(0.45, 0.7))
    if rng.random() < 0.4:
        mask = np.maximum(mask, _top(c, rng, sleeve=rng.uniform(0.0, 0.3), length=0.5) * (c.v < top + 0.5))
    return mask


def _sole(c: _Canvas, rng: Rng) -> tuple[Mask, float, float, float]:
    """A shoe's sole; returns it with its top edge, toe and heel positions."""
    sole_v, half_len = rng.uniform(0.35, 0.55), rng.uniform(0.7, 0.9)
    thick = rng.uniform(0.06, 0.12)
    return c.box(0.0, sole_v, half_len, thick), sole_v - thick, half_len, -half_len


def _sandal(c: _Canvas, rng: Rng) -> Mask:
    sole, top, toe, heel = _sole(c, rng)
    mask, width = sole, rng.uniform(0.06, 0.1)
    for k in range(int(rng.integers(2, 5))):
        u = heel + (k + 0.5) / 4 * (toe - heel) + rng.uniform(-0.08, 0.08)
        mask = np.maximum(mask, c.segment((u - 0.15, top), (u + 0.1, top - rng.uniform(0.2, 0.45)), width))
    return mask


def _sneaker(c: _Canvas, rng: Rng) -> Mask:
    sole, top, toe, heel = _sole(c, rng)
    height = rng.uniform(0.25, 0.45)
    upper = c.trapezoid(-0.05, top - height, top, abs(heel) * 0.55, abs(heel) * 0.95)
    laces = c.box(0.1, top - height * 0.6, 0.25, 0.05) * (np.sin(c.u * 30) > 0)
    return np.maximum(sole, upper * (1.0 - rng.uniform(0.0, 0.4) * laces))


def _ankle_boot(c: _Canvas, rng: Rng) -> Mask:
    sole, top, toe, heel = _sole(c, rng)
    height = rng.uniform(0.25, 0.4)
    upper = c.trapezoid(-0.05, top - height, top, abs(heel) * 0.6, abs(heel) * 0.95)
    shaft_w = rng.uniform(0.25, 0.4)
    shaft = c.box(heel + shaft_w, top - height - rng.uniform(0.2, 0.45) / 2, shaft_w, rng.uniform(0.3, 0.5))
    return np.maximum(sole, np.maximum(upper, shaft * (c.v < top)))


def _bag(c: _Canvas, rng: Rng) -> Mask:
    half_w, half_h = rng.uniform(0.55, 0.85), rng.uniform(0.4, 0.6)
    cv = rng.uniform(0.05, 0.3)
    mask = c.box(0.0, cv, half_w, half_h)
    if rng.random() < 0.75:
        mask = np.maximum(mask, c.ring(0.0, cv - half_h, rng.uniform(0.2, 0.45), rng.uniform(0.06, 0.12)))
    return mask


DRAW: tuple[Callable[[_Canvas, Rng], Mask], ...] = (
    _tshirt, _trouser, _pullover, _dress, _coat, _sandal, _shirt, _sneaker, _bag, _ankle_boot)


def render(label: int, rng: Rng, noise: float) -> np.ndarray:
    """One 28×28 uint8 image of class `label`: a textured silhouette plus Gaussian pixel noise."""
    canvas = _Canvas(rng)
    mask = DRAW[label](canvas, rng)
    brightness = rng.uniform(0.35, 1.0)
    texture = 1.0 - rng.uniform(0.0, 0.35) * (np.sin(canvas.v * rng.uniform(8, 30) + rng.uniform(0, 6.3)) > 0)
    image = mask * brightness * texture + rng.normal(0.0, noise, mask.shape) * (mask > 0.02)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def make_split(n: int, rng: Rng, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """n images with balanced, shuffled labels."""
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.uint8)
    images = np.stack([render(int(y), rng, noise) for y in labels]) if n else np.zeros((0, 28, 28), np.uint8)
    return images, labels


def write_synthetic_fashion_mnist(target: Path, n_train: int = 6000, n_test: int = 1000, seed: int = 0,
                                  noise: float = 0.1) -> Path:
    """Write the four official-name IDX `.gz` files into `target` (replaced atomically as a folder).

    Defaults: a tenth of the real dataset's 60k/10k, for quick offline runs; noise is the std of the
    Gaussian pixel noise on the [0, 1] scale."""
    rng = np.random.default_rng(seed)
    with atomic_path(Path(target)) as tmp:
        tmp.mkdir()
        for split, n in (("train", n_train), ("t10k", n_test)):
            images, labels = make_split(n, rng, noise)
            images_stem, labels_stem = SPLITS[split]
            write_idx_gz(tmp / f"{images_stem}.gz", images)
            write_idx_gz(tmp / f"{labels_stem}.gz", labels)
    return Path(target)
