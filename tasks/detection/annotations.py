"""Pascal VOC `Annotations/*.xml` → one box table (pandas), validated.

XML is parsed with defusedxml: entity declarations (billion laughs, external entities) are refused,
never expanded. Boxes become 0-based continuous xyxy (torchvision's convention): VOC's 1-based
inclusive pixel indices (xmin, ymin, xmax, ymax) map to (xmin - 1, ymin - 1, xmax, ymax).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import pandas as pd
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import parse

from tasks.voc import VOC_XML_NAMES, BadSampleError, image_size, read_ids, voc_root

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "width", "height", "label", "name", "xmin", "ymin", "xmax", "ymax", "difficult"]
_HINT = "fix or remove the file, or set detection.preprocess.on_bad_sample: skip"


def _text(node: Element, tag: str, path: Path) -> str:
    found = node.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise BadSampleError(path, f"missing <{tag}>", _HINT)
    return found.text.strip()


def _number(node: Element, tag: str, path: Path) -> float:
    text = _text(node, tag, path)
    try:
        value = float(text)
    except ValueError:
        raise BadSampleError(path, f"<{tag}> is not a number: {text!r}", _HINT) from None
    if not math.isfinite(value):
        raise BadSampleError(path, f"<{tag}> is not a finite number: {text!r}", _HINT)
    return value


def parse_annotation(path: Path, image_id: str) -> list[dict]:
    """The objects of one annotation file as table rows; a malformed file, an entity declaration,
    an unknown class or a box outside its image raises BadSampleError naming the file."""
    if not path.is_file():
        raise BadSampleError(path, "annotation file not found", _HINT)
    try:
        root = parse(path).getroot()
    except DefusedXmlException as error:
        raise BadSampleError(path, f"refused: the XML declares entities or a DTD ({type(error).__name__})",
                             _HINT) from None
    except ParseError as error:
        raise BadSampleError(path, f"malformed XML ({error})", _HINT) from None
    size = root.find("size")
    if size is None:
        raise BadSampleError(path, "missing <size>", _HINT)
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    if width <= 0 or height <= 0:
        raise BadSampleError(path, f"image size {width}x{height} is not positive", _HINT)
    rows = []
    for obj in root.iter("object"):
        name = _text(obj, "name", path).lower()
        if name not in VOC_XML_NAMES:
            raise BadSampleError(path, f"unknown class name {name!r}", _HINT)
        box = obj.find("bndbox")
        if box is None:
            raise BadSampleError(path, f"object {name!r} has no <bndbox>", _HINT)
        xmin, ymin, xmax, ymax = (_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height):
            raise BadSampleError(path, f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) of {name!r} is empty or "
                                       f"outside the {width}x{height} image", _HINT)
        difficult = obj.find("difficult")
        rows.append({"image_id": image_id, "width": width, "height": height,
                     "label": VOC_XML_NAMES.index(name) + 1, "name": name,
                     "xmin": xmin - 1, "ymin": ymin - 1, "xmax": xmax, "ymax": ymax,
                     "difficult": bool(difficult is not None and (difficult.text or "0").strip() == "1")})
    return rows


def read_split(data_dir: Path, split: str, on_bad_sample: str) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(boxes, images, bad samples) for `ImageSets/Main/{split}.txt`. `images` lists every kept image
    (also those without objects) with its size; bad files raise unless `on_bad_sample == "skip"`.
    Each JPEG is decoded once here (at 1/8 scale) and its size compared with the XML's `<size>`, so a
    missing, truncated or mis-annotated image is found before training, never by the DataLoader."""
    root = voc_root(data_dir)
    rows, images, bad = [], [], []
    for image_id in read_ids(root, "Main", split):
        path = root / "Annotations" / f"{image_id}.xml"
        try:
            objects = parse_annotation(path, image_id)
            width, height = _size(path, objects)
            jpg = root / "JPEGImages" / f"{image_id}.jpg"
            found = image_size(jpg, _HINT)
            if found != (width, height):
                raise BadSampleError(path, f"<size> says {width}x{height} (WxH) but {jpg} is {found[0]}x{found[1]}",
                                     _HINT)
        except BadSampleError as error:
            if on_bad_sample != "skip":
                raise
            bad.append({"id": image_id, "file": str(error.path), "reason": error.reason})
            continue
        rows.extend(objects)
        images.append({"image_id": image_id, "width": width, "height": height})
    boxes = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"width": "int32", "height": "int32", "label": "int16", "difficult": "bool",
         "xmin": "float32", "ymin": "float32", "xmax": "float32", "ymax": "float32"})
    return boxes, pd.DataFrame(images, columns=["image_id", "width", "height"]), bad


def _size(path: Path, objects: list[dict]) -> tuple[int, int]:
    if objects:
        return objects[0]["width"], objects[0]["height"]
    size = parse(path).getroot().find("size")
    return int(_number(size, "width", path)), int(_number(size, "height", path))
