"""Pascal VOC2012 facts and readers, shared by the segmentation and detection pipelines.

Labels are read exactly: VOC's `SegmentationClass` PNGs are palette images whose pixel values are
the class indices (255 = the "void" border), so no RGB round trip is needed. RGB labels (some
re-encoded copies of the dataset) fall back to the book's colormap lookup, vectorised.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor",
)
# The 20 object names as they are spelled in VOC's Annotations/*.xml (index i ↔ VOC_CLASSES[i + 1]).
VOC_XML_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_COLORMAP: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
    (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128),
)
VOID = 255
VOID_RGB: tuple[int, int, int] = (224, 224, 192)
MASK_HINT = "fix or remove the mask, or set segmentation.preprocess.on_bad_sample: skip"
_UNKNOWN = 254  # marker in the RGB lookup table; never a class index, never VOID


class BadSampleError(DataError):
    """An image or label file that is missing or cannot be decoded; `reason` is short and path-free."""

    def __init__(self, path: Path, reason: str, hint: str) -> None:
        super().__init__(f"{path}: {reason}; {hint}")
        self.path = Path(path)
        self.reason = reason


def voc_palette() -> list[int]:
    """The standard 256-colour VOC palette (bit-interleaved index → RGB), flat: 768 ints."""
    index = np.arange(256)
    rgb = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return rgb.reshape(-1).tolist()


def voc_root(data_dir: Path) -> Path:
    """The `VOC2012` folder: `data_dir` itself, or under it (`VOCdevkit/VOC2012`, or one level deeper)."""
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / "VOC2012", data_dir / "VOCdevkit" / "VOC2012"):
        if candidate.name == "VOC2012" and candidate.is_dir():
            return candidate
    raise DataError(f"{data_dir}: no VOC2012 folder found (expected {data_dir}/VOC2012/ or the folder itself); "
                    "run the acquire step (`d2lflow acquire`) first")


def read_ids(root: Path, task: str, split: str) -> list[str]:
    """Image ids listed in `ImageSets/{task}/{split}.txt`, in file order."""
    path = Path(root) / "ImageSets" / task / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{path}: file not found; is {root} a complete VOC2012 tree?")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image (PIL decodes lazily, so `load()` must be inside the try)."""
    path = Path(path)
    if not path.is_file():
        raise BadSampleError(path, "file not found", "restore it or remove its id from the ImageSets list")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        detail = str(exc).replace(str(path), path.name)
        raise BadSampleError(path, f"cannot decode image ({type(exc).__name__}: {detail})",
                             "re-acquire the dataset or set on_bad_sample: skip") from exc
    return img


def image_size(path: Path, hint: str) -> tuple[int, int]:
    """(width, height) of an image after decoding all of it, cheaply: JPEGs are decoded at 1/8 scale
    (PIL's draft mode still reads every byte, so a truncated or corrupt file is found). A missing or
    undecodable file raises BadSampleError with `hint`."""
    path = Path(path)
    if not path.is_file():
        raise BadSampleError(path, "file not found", hint)
    try:
        with Image.open(path) as img:
            size = img.size
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        detail = str(exc).replace(str(path), path.name)
        raise BadSampleError(path, f"cannot decode image ({type(exc).__name__}: {detail})", hint) from exc
    return int(size[0]), int(size[1])


@lru_cache(maxsize=1)
def _rgb_to_label_table() -> np.ndarray:
    """2^24 lookup table: packed RGB → class index; VOID_RGB → 255; anything else → _UNKNOWN."""
    table = np.full(1 << 24, _UNKNOWN, dtype=np.uint8)
    for index, (r, g, b) in enumerate(VOC_COLORMAP):
        table[(r << 16) | (g << 8) | b] = index
    r, g, b = VOID_RGB
    table[(r << 16) | (g << 8) | b] = VOID
    return table


def rgb_to_label(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The book's `voc_label_indices`, vectorised: (H, W, 3) colours → (indices, unknown-colour count).

    VOID_RGB → 255; an unknown colour → 0 (background), as the book does, and is counted.
    """
    rgb = np.asarray(rgb, dtype=np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    label = _rgb_to_label_table()[packed]
    unknown = label == _UNKNOWN
    label[unknown] = 0
    return label, int(unknown.sum())


def read_label_with_unknown(path: Path) -> tuple[np.ndarray, int]:
    """A segmentation label as uint8 (H, W) class indices, and how many pixels had an unknown value.

    Palette ("P") and greyscale ("L") PNGs hold the indices directly: a value that is neither a class
    (0..20) nor 255 is a damaged mask (BadSampleError), never silently background. Other modes go
    through the colormap (`rgb_to_label`), where unknown colours become 0 and are counted, as the book does.
    """
    img = _open(path)
    if img.mode in ("P", "L"):
        label = np.array(img, dtype=np.uint8)
        unknown = (label >= len(VOC_CLASSES)) & (label != VOID)
        if unknown.any():
            values = np.unique(label[unknown])
            row, col = (int(i) for i in np.argwhere(unknown)[0])
            shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
            raise BadSampleError(path, f"palette index {shown} in {int(unknown.sum())} pixels (first at row {row}, "
                                       f"column {col}) is neither a class (0..{len(VOC_CLASSES) - 1}) nor void "
                                       f"({VOID})", MASK_HINT)
        return label, 0
    return rgb_to_label(np.asarray(img.convert("RGB")))


def read_label(path: Path) -> np.ndarray:
    """A segmentation label as uint8 (H, W) class indices, 255 = void (see `read_label_with_unknown`)."""
    return read_label_with_unknown(path)[0]


def read_image(path: Path) -> np.ndarray:
    """An image as uint8 (H, W, 3) RGB; a missing or undecodable file raises DataError naming it."""
    return np.array(_open(path).convert("RGB"), dtype=np.uint8)
