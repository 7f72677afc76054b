"""Pascal VOC facts and readers (tasks/voc.py) and the synthetic VOC generator (tasks/synthetic/voc.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tasks.errors import DataError
from tasks.params import SyntheticVocParams
from tasks.synthetic.voc import class_colours, write_synthetic_voc
from tasks.voc import (
    VOC_CLASSES,
    VOC_COLORMAP,
    VOC_XML_NAMES,
    VOID,
    VOID_RGB,
    BadSampleError,
    read_ids,
    read_image,
    read_label,
    read_label_with_unknown,
    rgb_to_label,
    voc_palette,
    voc_root,
)

PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


# ----------------------------------------------------------------------------- facts

def test_classes_and_colormap() -> None:
    assert len(VOC_CLASSES) == len(VOC_COLORMAP) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[1] == "aeroplane" and VOC_CLASSES[15] == "person"
    assert VOC_CLASSES[20] == "tv/monitor" and VOC_COLORMAP[20] == (0, 64, 128)
    assert len(set(VOC_COLORMAP)) == 21 and VOID == 255
    assert VOC_XML_NAMES[15] == "pottedplant" and VOC_XML_NAMES[19] == "tvmonitor" and len(VOC_XML_NAMES) == 20


def test_palette_matches_colormap_and_void() -> None:
    palette = voc_palette()
    assert len(palette) == 768 and all(isinstance(v, int) and 0 <= v <= 255 for v in palette)
    for i, rgb in enumerate(VOC_COLORMAP):
        assert tuple(PALETTE[i]) == rgb
    assert tuple(PALETTE[255]) == VOID_RGB == (224, 224, 192)
    assert tuple(PALETTE[21]) == (128, 64, 128)  # the standard palette goes on past the classes


# ----------------------------------------------------------------------------- readers

def _label_with_void() -> np.ndarray:
    rng = np.random.default_rng(3)
    label = rng.integers(0, 21, size=(23, 31)).astype(np.uint8)
    label[5, :] = VOID
    label[:, 7] = VOID
    return label


def _save_palette_png(label: np.ndarray, path: Path) -> Path:
    img = Image.fromarray(label)
    img.putpalette(voc_palette())
    img.save(path)
    return path


def test_palette_label_read_exactly(tmp_path: Path) -> None:
    label = _label_with_void()
    path = _save_palette_png(label, tmp_path / "a.png")
    assert Image.open(path).mode == "P"
    got, unknown = read_label_with_unknown(path)
    assert got.dtype == np.uint8 and got.shape == (23, 31) and unknown == 0
    np.testing.assert_array_equal(got, label)
    assert (got == VOID).sum() == 31 + 23 - 1


def test_rgb_label_maps_back_to_the_same_indices(tmp_path: Path) -> None:
    label = _label_with_void()
    Image.fromarray(PALETTE[label]).save(tmp_path / "rgb.png")
    assert Image.open(tmp_path / "rgb.png").mode == "RGB"
    got, unknown = read_label_with_unknown(tmp_path / "rgb.png")
    np.testing.assert_array_equal(got, label)
    assert unknown == 0
    np.testing.assert_array_equal(read_label(tmp_path / "rgb.png"), label)


def test_unknown_colours_become_background_and_are_counted(tmp_path: Path) -> None:
    label = _label_with_void()
    rgb = PALETTE[label].copy()
    rgb[0, :4] = (1, 2, 3)
    rgb[10, 10] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    got, unknown = read_label_with_unknown(tmp_path / "odd.png")
    assert unknown == 5
    expected = label.copy()
    expected[0, :4] = 0
    expected[10, 10] = 0
    np.testing.assert_array_equal(got, expected)
    # the in-memory mapping agrees; a palette index outside 0..20 that is not 255 is a damaged mask, not background
    np.testing.assert_array_equal(rgb_to_label(rgb)[0], expected)
    odd_index = label.copy()
    odd_index[2, 2:5] = 30
    with pytest.raises(BadSampleError, match=r"p.png: palette index 30 in 3 pixels \(first at row 2, column 2\)"):
        read_label_with_unknown(_save_palette_png(odd_index, tmp_path / "p.png"))


def test_read_image_rgb_and_errors(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    got = read_image(tmp_path / "x.png")
    assert got.dtype == np.uint8 and got.shape == (9, 13, 3)
    np.testing.assert_array_equal(got, pixels)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.jpg")
    assert read_image(tmp_path / "grey.jpg").shape == (9, 13, 3)

    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match="bad.jpg.*cannot decode"):
        read_image(tmp_path / "bad.jpg")
    full = tmp_path / "full.jpg"
    Image.fromarray(pixels).resize((130, 90)).save(full, quality=95)
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[:400])  # header fine, data truncated: fails on load()
    with pytest.raises(DataError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="missing.png.*not found"):
        read_label(tmp_path / "missing.png")


def test_voc_root_and_read_ids(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n\n")
    assert voc_root(tmp_path / "VOCdevkit") == root
    assert voc_root(root) == root
    assert voc_root(tmp_path) == root
    assert read_ids(root, "Segmentation", "train") == ["2007_000032", "2007_000039"]
    with pytest.raises(DataError, match="val.txt"):
        read_ids(root, "Segmentation", "val")
    with pytest.raises(DataError, match="VOC2012"):
        voc_root(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- synthetic generator

SYNTH = SyntheticVocParams(train_images=14, val_images=6, image_size=(96, 144), small_fraction=0.2,
                           max_objects=3, seed=7)
CROP = (64, 128)  # ≥ 0.85 × image_size on the width, so every "small" image is narrower than the crop


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_voc(tmp_path_factory.mktemp("synth") / "VOCdevkit", SYNTH)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_is_deterministic(synthetic: Path, tmp_path: Path) -> None:
    again = write_synthetic_voc(tmp_path / "VOCdevkit", SYNTH)
    assert again == tmp_path / "VOCdevkit"
    assert _tree(synthetic) == _tree(again)
    other = write_synthetic_voc(tmp_path / "other", SYNTH.model_copy(update={"seed": 8}))
    assert _tree(other) != _tree(synthetic)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_synthetic_layout_and_sizes(synthetic: Path) -> None:
    root = synthetic / "VOC2012"
    train = read_ids(root, "Segmentation", "train")
    val = read_ids(root, "Segmentation", "val")
    assert len(train) == 14 and len(val) == 6 and not set(train) & set(val)
    assert train[0] == "2012_000001" and val[-1] == "2012_000020"
    assert read_ids(root, "Main", "train") == train and read_ids(root, "Main", "val") == val
    small = {"train": 0, "val": 0}
    for split, ids in (("train", train), ("val", val)):
        for image_id in ids:
            jpg = Image.open(root / "JPEGImages" / f"{image_id}.jpg")
            png = Image.open(root / "SegmentationClass" / f"{image_id}.png")
            assert jpg.format == "JPEG" and jpg.mode == "RGB"
            assert png.format == "PNG" and png.mode == "P" and png.getpalette()[: 3 * 256] == voc_palette()
            assert png.size == jpg.size
            w, h = jpg.size
            if h < CROP[0] or w < CROP[1]:
                small[split] += 1
                assert 0.6 * 96 - 1 <= h <= 0.85 * 96 + 1 and 0.6 * 144 - 1 <= w <= 0.85 * 144 + 1
            else:
                assert 96 <= h <= 136 and 144 <= w <= 184
            assert (root / "Annotations" / f"{image_id}.xml").is_file()
    assert small == {"train": round(0.2 * 14), "val": 1}


def _objects(xml_path: Path) -> tuple[tuple[int, int], list[dict]]:
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    hw = (int(size.findtext("height")), int(size.findtext("width")))
    assert size.findtext("depth") == "3" and root.findtext("filename") == xml_path.stem + ".jpg"
    objects = []
    for node in root.iter("object"):
        box = node.find("bndbox")
        objects.append({"name": node.findtext("name"), "pose": node.findtext("pose"),
                        "truncated": node.findtext("truncated"), "difficult": int(node.findtext("difficult")),
                        "box": tuple(int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))})
    return hw, objects


def _overlaps(a: tuple, b: tuple) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def test_synthetic_labels_rings_and_boxes(synthetic: Path) -> None:
    root = synthetic / "VOC2012"
    ids = read_ids(root, "Segmentation", "train") + read_ids(root, "Segmentation", "val")
    colours = class_colours().astype(int)
    n_objects, isolated_checked = [], 0
    for image_id in ids:
        label = read_label(root / "SegmentationClass" / f"{image_id}.png")
        image = read_image(root / "JPEGImages" / f"{image_id}.jpg").astype(int)
        (h, w), objects = _objects(root / "Annotations" / f"{image_id}.xml")
        assert label.shape == (h, w) and image.shape == (h, w, 3)
        n_objects.append(len(objects))
        assert set(np.unique(label)) <= set(range(21)) | {VOID}
        if not objects:
            assert (label == 0).all()
            continue
        # void rings: every class pixel is ≥ 3 pixels away from background, so rings exist around objects
        objects_mask = (label > 0) & (label < 21)
        assert (label == VOID).any()
        assert not (ndimage.binary_dilation(objects_mask, iterations=2) & (label == 0)).any()
        covered = np.zeros((h, w), dtype=bool)
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["box"]
            assert 1 <= xmin <= xmax <= w and 1 <= ymin <= ymax <= h
            assert obj["name"] in VOC_XML_NAMES and obj["pose"] == "Unspecified" and obj["truncated"] == "0"
            covered[ymin - 1: ymax, xmin - 1: xmax] = True
            cls = VOC_XML_NAMES.index(obj["name"]) + 1
            others = [o["box"] for o in objects if o is not obj]
            if not any(_overlaps(obj["box"], b) for b in others):
                isolated_checked += 1
                inside = label[ymin - 1: ymax, xmin - 1: xmax]
                rows, cols = np.nonzero(inside != 0)
                assert (rows.min(), cols.min(), rows.max(), cols.max()) == (0, 0, ymax - ymin, xmax - xmin)
                assert (inside == cls).any() and set(np.unique(inside)) <= {0, cls, VOID}
                # the class colour is what the object shows (mean over its interior, after JPEG)
                mean = image[ymin - 1: ymax, xmin - 1: xmax][inside == cls].mean(axis=0)
                assert np.abs(mean - colours[cls]).max() < 12
        assert not ((label != 0) & ~covered).any()  # every labelled pixel lies in some object's box
    assert 0 in n_objects and 1 in n_objects and max(n_objects) >= 2
    assert isolated_checked >= 5


def test_synthetic_class_colours_are_distinct_and_saturated() -> None:
    colours = class_colours()[1:].astype(int)
    distances = np.abs(colours[:, None] - colours[None, :]).sum(-1)[~np.eye(20, dtype=bool)]
    assert distances.min() >= 60
    assert (colours.max(1) - colours.min(1)).min() >= 120  # backgrounds spread ≤ ~40 over channels
