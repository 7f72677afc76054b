"""Segmentation data: preprocess (filter, bad samples, store, stats), aligned VOC crops, the Dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tasks.atomic import read_json
from tasks.errors import DataError
from tasks.params import SegmentationPreprocessParams, SyntheticVocParams
from tasks.segmentation.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataset,
    center_box,
    crop_box,
    load_split,
    normalize,
    preprocess,
    voc_crop,
)
from tasks.synthetic.voc import write_synthetic_voc
from tasks.voc import VOID, voc_palette

CROP = (64, 96)
CFG = SegmentationPreprocessParams(crop_size=CROP)


def coded_pair(h: int, w: int, tag: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image whose pixels encode their own (row, col) (channel 2 = tag) and the label those
    coordinates imply: (7·row + col) mod 21, or 255 where (row + col) mod 13 == 0."""
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([rows, cols, np.full_like(rows, tag)], axis=-1).astype(np.uint8)
    return image, expected_label(rows, cols)


def expected_label(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.where((rows + cols) % 13 == 0, VOID, (7 * rows + cols) % 21).astype(np.uint8)


def make_voc(root: Path, splits: dict[str, list[tuple[str, int, int]]]) -> Path:
    """A VOCdevkit with coded images of the given (id, height, width). The .jpg files hold PNG data
    (PIL decodes by content), so pixel values survive exactly and alignment can be checked exactly."""
    voc = root / "VOCdevkit" / "VOC2012"
    for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / name).mkdir(parents=True, exist_ok=True)
    tag = 0
    for split, items in splits.items():
        for image_id, h, w in items:
            tag += 1
            image, label = coded_pair(h, w, tag)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", format="PNG")
            png = Image.fromarray(label)
            png.putpalette(voc_palette())
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i, _, _ in items))
    return root / "VOCdevkit"


SIZES = {
    "train": [("t_exact", 64, 96), ("t_short", 63, 200), ("t_narrow", 100, 95), ("t_big", 120, 130),
              ("t_tiny", 10, 10), ("t_wide", 70, 150)],
    "val": [("v_big", 90, 110), ("v_narrow", 200, 80), ("v_exact", 64, 96)],
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("seg")
    data = make_voc(base, SIZES)
    summary = preprocess(data, base / "pre", CFG)
    return data, base / "pre", summary


# ----------------------------------------------------------------------------- preprocess

def test_filter_drops_exactly_the_images_smaller_than_the_crop(stored: tuple[Path, Path, dict]) -> None:
    _, out, summary = stored
    assert summary == {"train": {"listed": 6, "kept": 3, "dropped_small": 3, "skipped_bad": 0},
                       "val": {"listed": 3, "kept": 2, "dropped_small": 1, "skipped_bad": 0}}
    stats = read_json(out / "stats.json")
    assert stats["train"]["dropped_small_ids"] == ["t_short", "t_narrow", "t_tiny"]
    assert stats["val"]["dropped_small_ids"] == ["v_narrow"]
    train, val = load_split(out / "train"), load_split(out / "val")
    assert train.ids == ["t_exact", "t_big", "t_wide"] and val.ids == ["v_big", "v_exact"]
    assert train.shapes.tolist() == [[64, 96], [120, 130], [70, 150]] and train.shapes.dtype == np.int32
    assert train.images.size == 3 * (64 * 96 + 120 * 130 + 70 * 150) and train.labels.size == train.images.size // 3


def test_store_round_trips_images_and_labels_with_void(stored: tuple[Path, Path, dict]) -> None:
    _, out, _ = stored
    split = load_split(out / "train")
    assert isinstance(split.images, np.memmap) and not split.images.flags.writeable and len(split) == 3
    for i, (h, w) in enumerate(split.shapes.tolist()):
        image, label = coded_pair(h, w)
        np.testing.assert_array_equal(split.image(i)[..., :2], image[..., :2])
        np.testing.assert_array_equal(split.label(i), label)
        assert split.image(i).shape == (h, w, 3) and (split.label(i) == VOID).any()
    assert split.image(1)[0, 0, 2] == 4  # t_big was the 4th image written: the store keeps the right pixels


def test_stats_count_classes_and_void(stored: tuple[Path, Path, dict]) -> None:
    _, out, _ = stored
    stats = read_json(out / "stats.json")
    for split_name, split_stats in stats.items():
        split = load_split(out / split_name)
        labels = np.concatenate([split.label(i).reshape(-1) for i in range(len(split))])
        assert split_stats["class_pixels"] == np.bincount(labels, minlength=256)[:21].tolist()
        assert split_stats["void_pixels"] == int((labels == VOID).sum()) > 0
        assert split_stats["unknown_colour_pixels"] == 0 and split_stats["bad_samples"] == []
        assert sum(split_stats["class_pixels"]) + split_stats["void_pixels"] == labels.size


def test_preprocess_is_byte_identical(stored: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, out, _ = stored
    preprocess(data, tmp_path / "again", CFG)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["stats.json", "train/ids.json", "train/images.npy", "train/labels.npy", "train/shapes.npy",
                     "val/ids.json", "val/images.npy", "val/labels.npy", "val/shapes.npy"]
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


BAD_SPLITS = {"train": [("ok1", 80, 100), ("corrupt", 80, 100), ("mismatch", 80, 100), ("nojpg", 80, 100),
                        ("nopng", 80, 100), ("ok2", 70, 120)],
              "val": [("ok3", 64, 96)]}


def _break(data: Path, bad_id: str) -> None:
    """Damage sample `bad_id` the way its name says."""
    voc = data / "VOC2012"
    if bad_id == "corrupt":
        (voc / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF garbage" * 3)
    elif bad_id == "mismatch":
        label = voc / "SegmentationClass" / "mismatch.png"
        Image.open(label).crop((0, 0, 90, 80)).save(label)
    elif bad_id == "nojpg":
        (voc / "JPEGImages" / "nojpg.jpg").unlink()
    else:
        (voc / "SegmentationClass" / "nopng.png").unlink()


@pytest.mark.parametrize(("bad_id", "file", "message"), [
    ("corrupt", "corrupt.jpg", "cannot decode"), ("mismatch", "mismatch.png", "label is 80x90"),
    ("nojpg", "nojpg.jpg", "not found"), ("nopng", "nopng.png", "not found")])
def test_bad_sample_is_an_error_naming_the_file(tmp_path: Path, bad_id: str, file: str, message: str) -> None:
    data = make_voc(tmp_path, {"train": [("ok1", 80, 100), (bad_id, 80, 100)], "val": [("ok3", 64, 96)]})
    _break(data, bad_id)
    with pytest.raises(DataError, match=message) as info:
        preprocess(data, tmp_path / "pre", CFG)
    assert file in str(info.value)
    assert not (tmp_path / "pre").exists() and list(tmp_path.glob(".pre*")) == []  # nothing half-written


def test_bad_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    data = make_voc(tmp_path, BAD_SPLITS)
    for bad_id in ("corrupt", "mismatch", "nojpg", "nopng"):
        _break(data, bad_id)
    skip = SegmentationPreprocessParams(crop_size=CROP, on_bad_sample="skip")
    summary = preprocess(data, tmp_path / "pre", skip)
    assert summary["train"] == {"listed": 6, "kept": 2, "dropped_small": 0, "skipped_bad": 4}
    bad = read_json(tmp_path / "pre" / "stats.json")["train"]["bad_samples"]
    assert [(b["id"], b["file"]) for b in bad] == [
        ("corrupt", "JPEGImages/corrupt.jpg"), ("mismatch", "SegmentationClass/mismatch.png"),
        ("nojpg", "JPEGImages/nojpg.jpg"), ("nopng", "SegmentationClass/nopng.png")]
    reasons = [b["reason"] for b in bad]
    assert reasons[0].startswith("cannot decode") and str(tmp_path) not in reasons[0]
    assert reasons[1] == "label is 80x90 (HxW) but its image is 80x100"
    assert reasons[2:] == ["file not found", "file not found"]
    assert load_split(tmp_path / "pre" / "train").ids == ["ok1", "ok2"]


def test_preprocess_errors_when_nothing_survives(tmp_path: Path) -> None:
    data = make_voc(tmp_path, {"train": [("a", 80, 100)], "val": [("b", 40, 40)]})
    with pytest.raises(DataError, match="val.txt.*smaller than the crop"):
        preprocess(data, tmp_path / "pre", CFG)


# ----------------------------------------------------------------------------- crops

def test_crop_box_is_uniform_and_center_box_rounds_like_torchvision() -> None:
    boxes = {crop_box(5, 6, 3, 4, np.random.default_rng(s)) for s in range(200)}
    assert boxes == {(t, left) for t in range(3) for left in range(3)}
    assert crop_box(64, 96, 64, 96, np.random.default_rng(0)) == (0, 0)
    with pytest.raises(ValueError, match="larger"):
        crop_box(63, 96, 64, 96, np.random.default_rng(0))
    assert center_box(101, 100, 50, 50) == (26, 25)  # round(25.5) = 26, as torchvision's int(round(...))
    assert center_box(64, 97, 64, 96) == (0, 0)  # round(0.5) = 0
    assert center_box(100, 150, 64, 96) == (18, 27)


def test_crop_keeps_image_and_label_aligned() -> None:
    image, label = coded_pair(150, 211)
    for seed in range(20):
        top, left = crop_box(150, 211, 64, 96, np.random.default_rng(seed))
        img, lab = voc_crop(image, label, top, left, 64, 96)
        assert img.shape == (64, 96, 3) and lab.shape == (64, 96)
        assert img[0, 0, 0] == top and img[0, 0, 1] == left
        np.testing.assert_array_equal(lab, expected_label(img[..., 0].astype(int), img[..., 1].astype(int)))
    with pytest.raises(ValueError):
        voc_crop(image, label[:, :-1], 0, 0, 64, 96)


def test_normalize_values() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 1] = (255, 128, 0)
    x = normalize(image)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 0, 0], -mean / std)
    torch.testing.assert_close(x[:, 0, 1], (torch.tensor([1.0, 128 / 255, 0.0]) - mean) / std)


def _decode(x: torch.Tensor) -> np.ndarray:
    """Undo `normalize`: float (3, h, w) → uint8 (h, w, 3)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return torch.round((x * std + mean) * 255).permute(1, 2, 0).numpy().astype(np.uint8)


def test_dataset_crops_are_aligned_and_keep_void(stored: tuple[Path, Path, dict]) -> None:
    _, out, _ = stored
    for train in (True, False):
        dataset = SegmentationDataset(out / "train", CROP, seed=3, train=train)
        assert len(dataset) == 3
        for epoch in range(3):
            dataset.set_epoch(epoch)
            for i in range(len(dataset)):
                x, y = dataset[i]
                assert x.shape == (3, 64, 96) and x.dtype == torch.float32
                assert y.shape == (64, 96) and y.dtype == torch.int64
                pixels = _decode(x)
                rows, cols = pixels[..., 0].astype(int), pixels[..., 1].astype(int)
                assert (rows[0, 0], cols[0, 0]) == dataset.box(i)
                np.testing.assert_array_equal(y.numpy(), expected_label(rows, cols))
                assert (y == VOID).any() and int(y.max()) == VOID
    val = SegmentationDataset(out / "train", CROP, seed=3, train=False)
    assert [val.box(i) for i in range(3)] == [(0, 0), (28, 17), (3, 27)]


def test_dataset_crops_differ_by_epoch_and_repeat_for_the_same_seed(stored: tuple[Path, Path, dict]) -> None:
    _, out, _ = stored
    a = SegmentationDataset(out / "train", CROP, seed=11, train=True)
    b = SegmentationDataset(out / "train", CROP, seed=11, train=True)
    boxes = {}
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        boxes[epoch] = [a.box(i) for i in range(3)]
        for i in range(3):
            xa, ya = a[i]
            xb, yb = b[i]
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert boxes[0][0] == (0, 0)  # the exact-size image has one possible crop
    assert len({tuple(boxes[e][1:]) for e in boxes}) == 4  # every epoch crops the larger images differently
    b.set_epoch(0)
    assert b.box(1) == boxes[0][1] and b.box(2) == boxes[0][2]
    other = SegmentationDataset(out / "train", CROP, seed=12, train=True)
    assert [other.box(i) for i in range(3)] != boxes[0]
    expected = np.random.default_rng(np.random.SeedSequence([11, 2, 1]))
    assert boxes[2][1] == crop_box(120, 130, *CROP, expected)


def test_dataset_is_independent_of_workers_and_pickles_without_data(stored: tuple[Path, Path, dict]) -> None:
    _, out, _ = stored
    dataset = SegmentationDataset(out / "train", CROP, seed=5, train=True)
    dataset.set_epoch(1)
    assert len(pickle.dumps(dataset)) < 2000
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[2][0], dataset[2][0])
    direct = torch.stack([dataset[i][1] for i in range(3)])
    # spawn: workers get the pickled dataset only (and no threads inherited from earlier tests in
    # this process, e.g. the Prefect test harness, which a fork would copy mid-flight)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, multiprocessing_context="spawn")
    parallel = torch.cat([y for _, y in loader])
    assert torch.equal(direct, parallel)


def test_dataset_rejects_a_crop_larger_than_the_stored_images(stored: tuple[Path, Path, dict]) -> None:
    _, out, _ = stored
    with pytest.raises(DataError, match="smaller than the crop"):
        SegmentationDataset(out / "train", (96, 96), seed=0, train=True)
    with pytest.raises(DataError, match="preprocess"):
        load_split(out / "nowhere")


def test_synthetic_voc_through_preprocess_and_dataset(tmp_path: Path) -> None:
    cfg = SyntheticVocParams(train_images=8, val_images=5, image_size=(96, 144), small_fraction=0.25, seed=1)
    data = write_synthetic_voc(tmp_path / "VOCdevkit", cfg)
    summary = preprocess(data, tmp_path / "pre", SegmentationPreprocessParams(crop_size=(64, 128)))
    assert summary["train"] == {"listed": 8, "kept": 6, "dropped_small": 2, "skipped_bad": 0}
    assert summary["val"] == {"listed": 5, "kept": 4, "dropped_small": 1, "skipped_bad": 0}
    stats = read_json(tmp_path / "pre" / "stats.json")
    assert stats["train"]["void_pixels"] > 0 and stats["train"]["unknown_colour_pixels"] == 0
    _, y = SegmentationDataset(tmp_path / "pre" / "train", (64, 128), seed=0, train=True)[0]
    assert set(torch.unique(y).tolist()) <= set(range(21)) | {VOID}
