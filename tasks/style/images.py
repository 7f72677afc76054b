"""Reading the installed style data (see tasks/style/data.py for its layout): the manifest, the images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.atomic import read_json
from tasks.errors import DataError

MANIFEST = "style.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3); an unreadable or non-image file is a DataError naming it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({error}); give a JPEG or PNG file") from None


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing; acquire the style data first (`d2lflow acquire` or "
                        "`python -m tasks style acquire`)")
    manifest = read_json(path)
    for key in ("content", "style", "content_set", "style_name"):
        if key not in manifest:
            raise DataError(f"{path}: no '{key}' entry; acquire the style data again")
    return manifest


def content_set_files(data_dir: Path) -> list[Path]:
    folder = data_dir / "content_set"
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    return files
