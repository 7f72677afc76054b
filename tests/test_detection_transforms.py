"""Box-aware transforms: properties checked over hundreds of seeded random samples (boxes stay inside
the image and non-empty, flip is an involution, resize is invertible, crop shifts exactly and keeps
labels aligned), and pixel markers drawn at box corners that must stay enclosed after flip and crop."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.detection.transforms import MIN_SIDE, TrainTransform, apply, crop, hflip, random_crop_box, resize

TRIALS = 300


def _sample(rng: np.random.Generator, max_boxes: int = 8):
    height, width = (int(v) for v in rng.integers(8, 80, size=2))
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    n = int(rng.integers(0, max_boxes + 1))
    x = np.sort(rng.uniform(0, width, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, size=(n, 2)), axis=1)
    x[:, 1] = np.maximum(x[:, 1], np.minimum(x[:, 0] + 0.5, width))
    y[:, 1] = np.maximum(y[:, 1], np.minimum(y[:, 0] + 0.5, height))
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)
    labels = rng.integers(1, 21, size=n).astype(np.int64)
    difficult = rng.random(n) < 0.3
    return image, boxes, labels, difficult


def _assert_valid(boxes: np.ndarray, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()


def test_flip_keeps_boxes_inside_and_twice_is_identity() -> None:
    rng = np.random.default_rng(0)
    for _ in range(TRIALS):
        image, boxes, _, _ = _sample(rng)
        flipped_image, flipped = hflip(image, boxes)
        _assert_valid(flipped, flipped_image)
        assert np.array_equal(flipped_image, image[:, ::-1])
        back_image, back = hflip(flipped_image, flipped)
        assert np.array_equal(back_image, image)
        np.testing.assert_allclose(back, boxes, atol=1e-4)


def test_flip_matches_formula() -> None:
    image = np.zeros((10, 100, 3), dtype=np.uint8)
    _, flipped = hflip(image, np.array([[10, 2, 30, 8]], dtype=np.float32))
    assert flipped.tolist() == [[70, 2, 90, 8]]


def test_resize_scales_boxes_and_resizing_back_restores_them() -> None:
    rng = np.random.default_rng(1)
    for _ in range(TRIALS):
        image, boxes, _, _ = _sample(rng)
        height, width = image.shape[:2]
        scale = float(rng.uniform(0.3, 3.0))
        resized_image, resized = resize(image, boxes, scale)
        new_h, new_w = resized_image.shape[:2]
        assert (new_h, new_w) == (round(height * scale), round(width * scale))
        _assert_valid(resized, resized_image)
        np.testing.assert_allclose(resized, boxes * np.array([new_w / width, new_h / height] * 2), rtol=1e-5,
                                   atol=1e-4)
        back_image, back = resize(resized_image, resized, (height, width))
        assert back_image.shape == image.shape
        np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_resize_to_exact_size_and_of_constant_image_is_constant() -> None:
    image = np.full((30, 40, 3), 77, dtype=np.uint8)
    resized_image, resized = resize(image, np.array([[0, 0, 40, 30]], dtype=np.float32), (60, 20))
    assert resized_image.shape == (60, 20, 3) and (resized_image == 77).all()
    assert resized.tolist() == [[0, 0, 20, 60]]


def test_crop_shifts_by_offset_then_clips_and_keeps_labels_aligned() -> None:
    rng = np.random.default_rng(2)
    for _ in range(TRIALS):
        image, boxes, labels, difficult = _sample(rng)
        height, width = image.shape[:2]
        top, left, crop_h, crop_w = random_crop_box(height, width, int(rng.integers(1, height + 5)),
                                                    int(rng.integers(1, width + 5)), rng)
        min_visible = float(rng.choice([0.0, 0.3, 0.7, 1.0]))
        out_image, out, out_labels, out_difficult = crop(image, boxes, labels, difficult, top, left, crop_h, crop_w,
                                                         min_visible=min_visible)
        assert np.array_equal(out_image, image[top:top + crop_h, left:left + crop_w])
        _assert_valid(out, out_image)
        # recompute the rule independently: shift, clip, then keep by visible fraction
        shifted = boxes.astype(np.float64) - [left, top, left, top]
        clipped = np.clip(shifted, 0, [crop_w, crop_h, crop_w, crop_h])
        sides = clipped[:, 2:] - clipped[:, :2]
        wide = boxes.astype(np.float64)
        area = (wide[:, 2] - wide[:, 0]) * (wide[:, 3] - wide[:, 1])
        outside = ((shifted[:, 2] <= 0) | (shifted[:, 0] >= crop_w) | (shifted[:, 3] <= 0)
                   | (shifted[:, 1] >= crop_h))
        keep = (sides >= MIN_SIDE).all(axis=1) & (sides.prod(axis=1) >= min_visible * area)
        assert not (keep & outside).any()
        assert len(out) == keep.sum()
        np.testing.assert_allclose(out, clipped[keep], atol=1e-4)
        assert np.array_equal(out_labels, labels[keep]) and np.array_equal(out_difficult, difficult[keep])
        # boxes entirely inside the crop move by exactly (-left, -top)
        inside = (shifted[:, :2] >= 0).all(axis=1) & (shifted[:, 2] <= crop_w) & (shifted[:, 3] <= crop_h)
        inside_kept = inside[keep]
        np.testing.assert_allclose(out[inside_kept], shifted[keep][inside_kept], atol=1e-4)


def test_crop_drops_outside_and_mostly_hidden_boxes() -> None:
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 30, 30],    # inside
                      [60, 60, 90, 90],    # fully outside
                      [40, 10, 60, 30],    # half visible (crop ends at x=50)
                      [45, 10, 65, 30],    # a quarter visible
                      [50, 10, 70, 30]],   # touches the crop edge only
                     dtype=np.float32)
    labels = np.array([1, 2, 3, 4, 5], dtype=np.int64)
    difficult = np.array([False, True, True, False, True])
    _, out, out_labels, out_difficult = crop(image, boxes, labels, difficult, 0, 0, 50, 50)
    assert out.tolist() == [[10, 10, 30, 30], [40, 10, 50, 30]]
    assert out_labels.tolist() == [1, 3] and out_difficult.tolist() == [False, True]
    _, out, out_labels, _ = crop(image, boxes, labels, difficult, 0, 0, 50, 50, min_visible=0.0)
    assert out_labels.tolist() == [1, 3, 4]


def test_crop_outside_the_image_is_refused() -> None:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    empty = np.zeros((0, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        crop(image, empty, np.zeros(0, np.int64), np.zeros(0, bool), 5, 0, 16, 10)


def test_random_crop_box_stays_inside_and_clamps_to_small_images() -> None:
    rng = np.random.default_rng(3)
    for _ in range(TRIALS):
        height, width = (int(v) for v in rng.integers(1, 60, size=2))
        top, left, crop_h, crop_w = random_crop_box(height, width, int(rng.integers(1, 80)), int(rng.integers(1, 80)),
                                                    rng)
        assert 0 <= top and top + crop_h <= height and 0 <= left and left + crop_w <= width
    assert random_crop_box(10, 20, 50, 50, rng) == (0, 0, 10, 20)


def _draw_markers(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Marker value 1 + i at the four corner pixels of integer box i (pixels x1..x2-1, y1..y2-1)."""
    marked = np.zeros(image.shape[:2], dtype=np.int32)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        for y, x in [(y1, x1), (y1, x2 - 1), (y2 - 1, x1), (y2 - 1, x2 - 1)]:
            marked[y, x] = i + 1
    return marked


def _assert_markers_enclosed(marked: np.ndarray, boxes: np.ndarray, ids: np.ndarray) -> None:
    for box, marker in zip(boxes, ids):
        ys, xs = np.nonzero(marked == marker)
        assert len(xs) > 0
        # pixel (y, x) covers [x, x+1) x [y, y+1): it must lie inside the box
        assert (xs >= box[0]).all() and (xs + 1 <= box[2]).all(), (box, xs)
        assert (ys >= box[1]).all() and (ys + 1 <= box[3]).all(), (box, ys)


def _disjoint_integer_boxes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Boxes on a grid of cells so that their corner markers never overwrite each other."""
    boxes = []
    for row in range(0, height - 10, 12):
        for col in range(0, width - 10, 12):
            x1, y1 = col + int(rng.integers(0, 3)), row + int(rng.integers(0, 3))
            boxes.append([x1, y1, x1 + int(rng.integers(2, 9)), y1 + int(rng.integers(2, 9))])
    return np.array(boxes, dtype=np.float32)


def test_flipped_boxes_enclose_flipped_corner_markers() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(24, 70, size=2))
        boxes = _disjoint_integer_boxes(rng, height, width)
        marked = _draw_markers(np.zeros((height, width)), boxes)
        flipped_marks, flipped = hflip(marked, boxes)
        _assert_markers_enclosed(flipped_marks, flipped, np.arange(1, len(boxes) + 1))


def test_cropped_boxes_enclose_cropped_corner_markers() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(24, 70, size=2))
        boxes = _disjoint_integer_boxes(rng, height, width)
        ids = np.arange(1, len(boxes) + 1)
        marked = _draw_markers(np.zeros((height, width)), boxes)
        top, left, crop_h, crop_w = random_crop_box(height, width, height // 2 + 5, width // 2 + 5, rng)
        crop_marks, out, out_ids, _ = crop(marked, boxes, ids, np.zeros(len(ids), bool), top, left, crop_h, crop_w,
                                           min_visible=0.0)
        _assert_markers_enclosed(crop_marks, out, out_ids)
        # every marker still in view belongs to a kept box
        assert set(np.unique(crop_marks)) - {0} <= set(out_ids.tolist())


def test_apply_composes_crop_flip_resize_and_is_reproducible() -> None:
    config = TrainTransform(flip_prob=0.5, crop_size=(40, 50), min_size=64)
    rng = np.random.default_rng(6)
    flips = 0
    for _ in range(100):
        image, boxes, labels, difficult = _sample(rng)
        seed = int(rng.integers(1 << 30))
        out = apply(image, boxes, labels, difficult, config, np.random.default_rng(seed))
        again = apply(image, boxes, labels, difficult, config, np.random.default_rng(seed))
        for a, b in zip(out, again):
            assert np.array_equal(a, b)
        out_image, out_boxes, out_labels, out_difficult = out
        assert min(out_image.shape[:2]) == 64
        _assert_valid(out_boxes, out_image)
        assert len(out_boxes) == len(out_labels) == len(out_difficult)
        assert out_labels.dtype == np.int64 and out_difficult.dtype == bool
        # the same draws by hand: crop position, then the flip draw
        draws = np.random.default_rng(seed)
        top, left, crop_h, crop_w = random_crop_box(*image.shape[:2], 40, 50, draws)
        ref_image, ref_boxes, _, _ = crop(image, boxes, labels, difficult, top, left, crop_h, crop_w)
        if draws.random() < 0.5:
            flips += 1
            ref_image, ref_boxes = hflip(ref_image, ref_boxes)
        ref_image, ref_boxes = resize(ref_image, ref_boxes, 64 / min(ref_image.shape[:2]))
        assert np.array_equal(out_image, ref_image) and np.array_equal(out_boxes, ref_boxes)
    assert 20 < flips < 80


def test_apply_without_augmentation_returns_the_sample_unchanged() -> None:
    image, boxes, labels, difficult = _sample(np.random.default_rng(7))
    out_image, out_boxes, out_labels, out_difficult = apply(image, boxes, labels, difficult,
                                                            TrainTransform(flip_prob=0.0), np.random.default_rng(0))
    assert np.array_equal(out_image, image) and np.array_equal(out_boxes, boxes)
    assert np.array_equal(out_labels, labels) and np.array_equal(out_difficult, difficult)
