"""A synthetic Pascal VOC2012: a small `VOCdevkit/VOC2012` tree in the real format, with learnable content.

Each object is a large filled ellipse or rectangle in a fixed saturated colour per class (plus mild
noise) on a smooth low-saturation background, so a short from-scratch FCN run can learn it. Labels
are palette PNGs like VOC's, with a 3-pixel 255 "void" ring inside every object boundary; later
objects occlude earlier ones. `Annotations/*.xml` give each object's visible extent (for detection).
A fraction of images is smaller than the usual size, so the crop filter has something to drop.
"""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from tasks.atomic import atomic_path
from tasks.params import SyntheticVocParams
from tasks.voc import VOC_CLASSES, VOC_XML_NAMES, VOID, voc_palette

RING = 3  # width of the void ring, in pixels, inside each object's boundary
ZERO_OBJECT_FRACTION = 0.08
DIFFICULT_FRACTION = 0.1
NOISE_SIGMA = 6.0


def class_colours() -> np.ndarray:
    """(21, 3) uint8: one saturated colour per class 1..20 (hues 18° apart, alternating brightness).

    Row 0 (background) is unused; background pixels are low-saturation greys (see `_background`).
    """
    colours = np.zeros((len(VOC_CLASSES), 3), dtype=np.uint8)
    for c in range(1, len(VOC_CLASSES)):
        value = 0.95 if c % 2 else 0.6
        colours[c] = np.round(np.array(colorsys.hsv_to_rgb((c - 1) / 20, 0.9, value)) * 255)
    return colours


@dataclass(frozen=True)
class SyntheticObject:
    cls: int  # 1..20
    box: tuple[int, int, int, int]  # visible extent, 1-based inclusive: xmin, ymin, xmax, ymax
    difficult: bool


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth gradient of a random grey with a slight tint (channel spread ≤ ~40): float32 (h, w, 3)."""
    base = rng.uniform(70, 170)
    tint = rng.uniform(-15, 15, size=3)
    slope = rng.uniform(-50, 50, size=2)  # change across the whole height / width
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None, None]
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :, None]
    return (base + tint + slope[0] * ys + slope[1] * xs).astype(np.float32)


def _shape_mask(bh: int, bw: int, ellipse: bool) -> np.ndarray:
    """A filled ellipse inscribed in, or the whole of, a bh × bw box (bool)."""
    if not ellipse:
        return np.ones((bh, bw), dtype=bool)
    ys = (np.arange(bh) + 0.5 - bh / 2) / (bh / 2)
    xs = (np.arange(bw) + 0.5 - bw / 2) / (bw / 2)
    return ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0


def render(h: int, w: int, n_objects: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                            list[SyntheticObject]]:
    """One image (uint8 h×w×3), its label (uint8 h×w, 255 rings) and its visible objects."""
    colours = class_colours().astype(np.float32)
    image = _background(h, w, rng)
    label = np.zeros((h, w), dtype=np.uint8)
    owner = np.full((h, w), -1, dtype=np.int16)  # which object a pixel shows (last drawn wins)
    drawn: list[tuple[int, bool]] = []
    for k in range(n_objects):
        cls = int(rng.integers(1, len(VOC_CLASSES)))
        bh = int(round(h * rng.uniform(0.25, 0.6)))
        bw = int(round(w * rng.uniform(0.25, 0.6)))
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        mask = _shape_mask(bh, bw, ellipse=bool(rng.random() < 0.5))
        ring = mask & ~ndimage.binary_erosion(mask, iterations=RING, border_value=0)
        window = (slice(top, top + bh), slice(left, left + bw))
        image[window][mask] = colours[cls]
        label[window][mask] = cls
        label[window][ring] = VOID
        owner[window][mask] = k
        drawn.append((cls, bool(rng.random() < DIFFICULT_FRACTION)))
    image += rng.normal(0.0, NOISE_SIGMA, size=image.shape).astype(np.float32)
    objects = []
    for k, (cls, difficult) in enumerate(drawn):
        rows, cols = np.nonzero(owner == k)
        if len(rows):  # fully occluded objects are not annotated
            box = (int(cols.min()) + 1, int(rows.min()) + 1, int(cols.max()) + 1, int(rows.max()) + 1)
            objects.append(SyntheticObject(cls, box, difficult))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, objects


def annotation_xml(image_id: str, h: int, w: int, objects: list[SyntheticObject]) -> bytes:
    """A VOC `Annotations/{id}.xml` document."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "d2lflow synthetic VOC"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = VOC_XML_NAMES[obj.cls - 1]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _plan_split(n: int, cfg: SyntheticVocParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per image: is it small, and how many objects (a few zero-object images once there are ≥ 5)."""
    n_small = min(n, max(1, round(cfg.small_fraction * n))) if cfg.small_fraction > 0 else 0
    small = np.zeros(n, dtype=bool)
    small[rng.choice(n, size=n_small, replace=False)] = True
    counts = rng.integers(1, cfg.max_objects + 1, size=n)
    n_zero = max(1, round(ZERO_OBJECT_FRACTION * n)) if n >= 5 else 0
    counts[rng.choice(n, size=n_zero, replace=False)] = 0
    return small, counts


def write_synthetic_voc(target: Path, cfg: SyntheticVocParams) -> Path:
    """Write `target/VOC2012/...` (target = the VOCdevkit folder), deterministic in `cfg.seed`, atomically."""
    rng = np.random.default_rng(cfg.seed)
    height, width = cfg.image_size
    palette = voc_palette()
    next_id = 1
    with atomic_path(Path(target)) as tmp:
        root = tmp / "VOC2012"
        folders = {name: root / name for name in ("JPEGImages", "SegmentationClass", "Annotations",
                                                  "ImageSets/Segmentation", "ImageSets/Main")}
        for folder in folders.values():
            folder.mkdir(parents=True)
        for split, n in (("train", cfg.train_images), ("val", cfg.val_images)):
            small, counts = _plan_split(n, cfg, rng)
            ids = []
            for is_small, n_objects in zip(small, counts):
                image_id = f"2012_{next_id:06d}"
                next_id += 1
                if is_small:
                    h, w = (int(round(side * rng.uniform(0.6, 0.85))) for side in (height, width))
                else:
                    h, w = int(rng.integers(height, height + 41)), int(rng.integers(width, width + 41))
                image, label, objects = render(h, w, int(n_objects), rng)
                Image.fromarray(image).save(folders["JPEGImages"] / f"{image_id}.jpg", quality=95)
                png = Image.fromarray(label)
                png.putpalette(palette)
                png.save(folders["SegmentationClass"] / f"{image_id}.png")
                (folders["Annotations"] / f"{image_id}.xml").write_bytes(annotation_xml(image_id, h, w, objects))
                ids.append(image_id)
            listing = "".join(f"{i}\n" for i in ids)
            for task in ("Segmentation", "Main"):
                (folders[f"ImageSets/{task}"] / f"{split}.txt").write_text(listing)
    return Path(target)
