"""Our AP against the lecture example, the VOC devkit rule written as plain loops, and pycocotools
(plus faster-coco-eval) on random crowded detection sets with ties, crowds and empty images."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest

from tasks.detection.ap import (
    Detections,
    GroundTruth,
    average_precision,
    coco_map,
    match,
    pycocotools_stats,
    to_coco,
    voc_ap,
)

# ---------------------------------------------------------------------------------------------
# random detection sets


def random_set(seed: int, n_images: int = 40, n_classes: int = 6, crowd: float = 0.0,
               difficult: float = 0.0) -> tuple[Detections, GroundTruth]:
    """Crowded images (GT boxes jittered around a few centres, some exact duplicates), images with
    detections but no GT, images with GT but no detections, scores on a coarse grid (ties), some
    detections of classes that have no GT, one (image, class) with 150 detections (maxDets).
    Coordinates are multiples of 0.5: exact in float64, so IoUs equal to a threshold do occur."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n_images) * 7 + 3  # non-contiguous, unsorted image ids
    gt_img, gt_lab, gt_box = [], [], []
    for image in ids[: int(n_images * 0.8)]:  # the last 20 % of images have no GT
        for _ in range(rng.integers(1, 4)):  # clusters of overlapping boxes
            label = rng.integers(0, n_classes)
            centre = rng.integers(40, 360, 2)
            for _ in range(rng.integers(1, 7)):
                half = rng.integers(8, 60, 2)
                jitter = rng.integers(-12, 13, 2)
                gt_img.append(image)
                gt_lab.append(label)
                gt_box.append(np.r_[centre + jitter - half, centre + jitter + half] / 2)
        if rng.random() < 0.2 and gt_box:  # an exact duplicate box
            gt_img.append(gt_img[-1])
            gt_lab.append(gt_lab[-1])
            gt_box.append(gt_box[-1].copy())
    gt_img, gt_lab, gt_box = np.array(gt_img), np.array(gt_lab), np.array(gt_box)
    n_gt = len(gt_img)
    gts = GroundTruth(gt_img, gt_lab, gt_box, difficult=rng.random(n_gt) < difficult,
                      iscrowd=rng.random(n_gt) < crowd)
    # detections: jittered copies of GT boxes (several per box), dropped for some GT-only images
    no_dets = set(ids[: int(n_images * 0.1)].tolist())
    source = np.repeat(np.arange(n_gt), rng.integers(0, 4, n_gt))
    source = source[[gt_img[s] not in no_dets for s in source]]
    n_d = len(source)
    box = gt_box[source] + rng.integers(-16, 17, (n_d, 4)) / 2
    box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 0.5)
    label = np.where(rng.random(n_d) < 0.9, gt_lab[source], rng.integers(0, n_classes + 2, n_d))
    image = gt_img[source]
    # background detections, also on images without any GT and of classes absent from the GT
    n_bg = n_d // 3
    bg_image = rng.choice(np.setdiff1d(ids, list(no_dets)), n_bg)
    xy = rng.integers(0, 700, (n_bg, 2)) / 2
    bg_box = np.column_stack([xy, xy + rng.integers(4, 200, (n_bg, 2)) / 2])
    bg_label = rng.integers(0, n_classes + 2, n_bg)
    # one crowded (image, class) with more than maxDets=100 detections
    busy_image, busy_label = gt_img[0], gt_lab[0]
    xy = gt_box[0, :2] + rng.integers(-20, 21, (150, 2)) / 2
    busy_box = np.column_stack([xy, xy + (gt_box[0, 2:] - gt_box[0, :2])])
    image = np.r_[image, bg_image, np.full(150, busy_image)]
    label = np.r_[label, bg_label, np.full(150, busy_label)]
    box = np.r_[box, bg_box, busy_box]
    scores = rng.integers(0, 25, len(image)) / 24  # many ties
    order = rng.permutation(len(image))
    return Detections(image[order], label[order], box[order], scores[order]), gts


def faster_coco_eval_stats(dets: Detections, gts: GroundTruth) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    dataset, results = to_coco(dets, gts)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(dataset))
        evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "bbox", print_function=lambda *a: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


# ---------------------------------------------------------------------------------------------
# the VOC devkit rule, as plain loops (the reference our vectorised code must equal)


def devkit_voc_ap(dets: Detections, gts: GroundTruth, label: int, threshold: float, use_07: bool) -> float | None:
    records: dict[int, list[dict]] = {}
    n_pos = 0
    for image, lab, box, hard in zip(gts.image_ids, gts.labels, gts.boxes, gts.difficult):
        if lab == label:
            records.setdefault(int(image), []).append({"box": box, "difficult": bool(hard), "taken": False})
            n_pos += not hard
    if n_pos == 0:
        return None
    mine = [i for i in range(len(dets)) if dets.labels[i] == label]
    mine = sorted(mine, key=lambda i: -dets.scores[i])  # Python's sort is stable: ties in input order
    tp, fp = [0.0] * len(mine), [0.0] * len(mine)
    for k, i in enumerate(mine):
        d = dets.boxes[i]
        best, best_j = -np.inf, -1
        objects = records.get(int(dets.image_ids[i]), [])
        for j, obj in enumerate(objects):
            g = obj["box"]
            iw = max(min(d[2], g[2]) - max(d[0], g[0]), 0.0)
            ih = max(min(d[3], g[3]) - max(d[1], g[1]), 0.0)
            inter = iw * ih
            union = (d[2] - d[0]) * (d[3] - d[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            overlap = inter / union if union > 0 else 0.0
            if overlap > best:
                best, best_j = overlap, j
        if best >= threshold:
            if objects[best_j]["difficult"]:
                continue  # neither TP nor FP
            if not objects[best_j]["taken"]:
                tp[k] = 1.0
                objects[best_j]["taken"] = True
            else:
                fp[k] = 1.0
        else:
            fp[k] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / n_pos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


# ---------------------------------------------------------------------------------------------
# the lecture example: 3 GT, detections TP, TP, FP, FP, TP in score order


def lecture_example() -> tuple[Detections, GroundTruth]:
    gt_boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], dtype=float)
    det_boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [60, 60, 70, 70], [80, 80, 90, 90], [40, 0, 50, 10]],
                         dtype=float)
    return (Detections(np.zeros(5, int), np.ones(5, int), det_boxes, [0.9, 0.8, 0.7, 0.6, 0.5]),
            GroundTruth(np.zeros(3, int), np.ones(3, int), gt_boxes))


def test_lecture_example_all_point_ap_is_0_8667():
    dets, gts = lecture_example()
    result = voc_ap(dets, gts, method="voc10")
    # precision 1, 1, 2/3, 1/2, 3/5 at recall 1/3, 2/3, 2/3, 2/3, 1 → 1/3 + 1/3 + 1/3 * 3/5
    assert round(result["per_class"][1], 4) == 0.8667
    assert result["per_class"][1] == pytest.approx(1 / 3 + 1 / 3 + 0.6 / 3, abs=1e-12)
    assert result["map"] == result["per_class"][1]
    np.testing.assert_allclose(result["precision"][1], [1, 1, 2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(result["recall"][1], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    assert result["mean_iou_of_matches"] == 1.0
    assert average_precision([1, 2, 2, 2, 3], [0, 0, 1, 2, 2], 3, "voc10") == pytest.approx(13 / 15, abs=1e-12)


def test_lecture_example_11_point_ap():
    dets, gts = lecture_example()
    # recall >= t for t in 0..0.6 is reached with precision 1; t in 0.7..1 only at recall 1, precision 3/5
    expected = (7 * 1.0 + 4 * 0.6) / 11  # 0.854545...
    assert voc_ap(dets, gts, method="voc07")["per_class"][1] == pytest.approx(expected, abs=1e-12)
    assert average_precision([1, 2, 2, 2, 3], [0, 0, 1, 2, 2], 3, "voc07") == pytest.approx(expected, abs=1e-12)


def test_lecture_example_coco_101_point_matches_pycocotools():
    dets, gts = lecture_example()
    # recall thresholds 0..0.33 and 0.34..0.66 at precision 1, 0.67..1 at 3/5
    expected = (67 + 34 * 0.6) / 101
    assert average_precision([1, 2, 2, 2, 3], [0, 0, 1, 2, 2], 3, "coco") == pytest.approx(expected, abs=1e-12)
    result = coco_map(dets, gts)  # exact boxes: the same at every IoU threshold
    assert result["map"] == pytest.approx(expected, abs=1e-12)
    assert result["map"] == pytest.approx(pycocotools_stats(dets, gts)[0], abs=1e-12)


def test_voc07_thresholds_are_the_devkit_ports():
    # recall exactly 0.3 does not reach np.arange's t = 0.30000000000000004: 3 thresholds, not 4
    assert average_precision([1, 2, 3], [0, 0, 0], 10, "voc07") == pytest.approx(3 / 11, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# COCO: equal to pycocotools (and faster-coco-eval) on random sets


@pytest.mark.parametrize("seed, crowd", [(0, 0.0), (1, 0.0), (2, 0.08), (3, 0.25)])
def test_coco_map_equals_pycocotools(seed, crowd):
    dets, gts = random_set(seed, crowd=crowd)
    ours = coco_map(dets, gts)
    stats = pycocotools_stats(dets, gts)
    assert abs(ours["map"] - stats[0]) < 1e-6
    assert abs(ours["map_50"] - stats[1]) < 1e-6
    assert abs(ours["map_75"] - stats[2]) < 1e-6
    assert 0.05 < ours["map"] < 0.95  # a set that tests something
    fast = faster_coco_eval_stats(dets, gts)
    np.testing.assert_allclose(fast[:3], stats[:3], atol=1e-6)


def test_coco_map_scenario_coverage():
    """The random sets hold what the comparison is meant to exercise."""
    dets, gts = random_set(0, crowd=0.08)
    gt_images, det_images = set(gts.image_ids.tolist()), set(dets.image_ids.tolist())
    assert det_images - gt_images and gt_images - det_images  # empty images both ways
    assert set(dets.labels.tolist()) - set(gts.labels.tolist())  # classes absent from GT
    assert len(np.unique(dets.scores)) < len(dets) / 10  # ties
    assert np.unique(np.c_[dets.image_ids, dets.labels], axis=0, return_counts=True)[1].max() > 100
    assert gts.iscrowd.any()
    matches = match(dets, gts, [0.5], rule="coco", max_dets=100)
    assert (~matches.evaluated).sum() > 0 and matches.ignored.any()


def test_coco_per_class_is_mean_over_thresholds_and_none_without_gt():
    dets, gts = random_set(1)
    result = coco_map(dets, gts)
    scored = [v for v in result["per_class"].values() if v is not None]
    absent = [k for k, v in result["per_class"].items() if v is None]
    assert absent == sorted(set(dets.labels.tolist()) - set(gts.labels.tolist()))
    assert np.mean(scored) == pytest.approx(result["map"], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# VOC: equal to the devkit loops on random sets with difficult objects


@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("method", ["voc10", "voc07"])
def test_voc_ap_equals_devkit_loops(seed, method):
    dets, gts = random_set(seed, n_images=25, difficult=0.15)
    for threshold in (0.5, 0.75):
        result = voc_ap(dets, gts, iou_threshold=threshold, method=method)
        for label, ap in result["per_class"].items():
            expected = devkit_voc_ap(dets, gts, label, threshold, use_07=method == "voc07")
            if expected is None:
                assert ap is None
            else:
                assert ap == pytest.approx(expected, abs=1e-9), (label, threshold)
        scored = [ap for ap in result["per_class"].values() if ap is not None]
        assert result["map"] == pytest.approx(np.mean(scored), abs=1e-12)


def test_voc_matching_ignores_difficult_and_marks_duplicates():
    gt_boxes = [[0, 0, 10, 10], [20, 0, 30, 10]]
    gts = GroundTruth([0, 0], [1, 1], gt_boxes, difficult=[False, True])
    det_boxes = [[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10], [20, 0, 30, 9]]
    dets = Detections([0] * 4, [1] * 4, det_boxes, [0.9, 0.8, 0.7, 0.6])
    matches = match(dets, gts, 0.5, rule="voc")
    assert matches.tp[0].tolist() == [True, False, False, False]
    assert matches.fp[0].tolist() == [False, True, False, False]  # duplicate of a taken box
    assert matches.ignored[0].tolist() == [False, False, True, True]  # on the difficult box
    result = voc_ap(dets, gts)
    assert result["per_class"][1] == 1.0  # TP, FP at recall 1: the envelope keeps precision 1
    assert result["n_positives"] == {1: 1}
    assert result["mean_iou_of_matches"] == 1.0


def test_voc_ties_in_score_follow_input_order():
    gts = GroundTruth([0], [1], [[0, 0, 10, 10]])
    dets = Detections([0, 0], [1, 1], [[0, 0, 10, 8], [0, 0, 10, 10]], [0.5, 0.5])
    matches = match(dets, gts, 0.5, rule="voc")
    assert matches.tp[0].tolist() == [True, False]  # the first row wins the tie, not the better box
    assert matches.iou[0, 0] == pytest.approx(0.8)


def test_iou_ties_go_to_the_last_box_in_coco_and_the_first_in_voc():
    # det 0 overlaps boxes A and B equally (IoU 9/11), det 1 overlaps only A (2/3; B 3/7)
    gts = GroundTruth([0, 0], [1, 1], [[0, 0, 10, 10], [2, 0, 12, 10]])
    dets = Detections([0, 0], [1, 1], [[1, 0, 11, 10], [-2, 0, 8, 10]], [0.9, 0.8])
    coco = match(dets, gts, 0.5, rule="coco")
    assert coco.gt_index[0].tolist() == [1, 0]  # pycocotools: the last box on a tie, then A is free
    voc = match(dets, gts, 0.5, rule="voc")
    assert voc.gt_index[0].tolist() == [0, -1]  # devkit: the first box; det 1's best (A) is taken
    assert coco_map(dets, gts)["map_50"] == pycocotools_stats(dets, gts)[1] == 1.0


def test_iou_equal_to_the_threshold_matches():
    gts = GroundTruth([0], [1], [[0, 0, 10, 10]])
    dets = Detections([0], [1], [[0, 0, 10, 5]], [0.9])  # IoU exactly 0.5
    assert match(dets, gts, 0.5, rule="voc").tp.tolist() == [[True]]
    assert match(dets, gts, 0.5, rule="coco").tp.tolist() == [[True]]
    assert voc_ap(dets, gts)["map"] == 1.0
    ours, stats = coco_map(dets, gts), pycocotools_stats(dets, gts)
    assert ours["map_50"] == stats[1] == pytest.approx(1.0)  # 1 / (1 + spacing(1)), as pycocotools
    assert ours["map_75"] == stats[2] == 0.0


# ---------------------------------------------------------------------------------------------
# edge cases


def test_class_without_gt_is_none_and_left_out_of_the_mean():
    dets, gts = lecture_example()
    stray = Detections(np.r_[dets.image_ids, 0], np.r_[dets.labels, 7], np.r_[dets.boxes, [[0, 0, 5, 5]]],
                       np.r_[dets.scores, 0.99])
    for result in (voc_ap(stray, gts), coco_map(stray, gts)):
        assert result["per_class"][7] is None
        assert result["map"] == pytest.approx(result["per_class"][1], abs=1e-12)
    assert voc_ap(dets, gts, labels=[1, 2])["per_class"][2] is None


def test_no_detections_at_all_give_ap_zero():
    _, gts = lecture_example()
    none = Detections(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 4)), np.zeros(0))
    assert voc_ap(none, gts)["per_class"] == {1: 0.0}
    assert voc_ap(none, gts, method="voc07")["map"] == 0.0
    assert voc_ap(none, gts)["mean_iou_of_matches"] is None
    result = coco_map(none, gts)
    assert (result["map"], result["map_50"], result["map_75"]) == (0.0, 0.0, 0.0)


def test_difficult_only_class_is_none():
    gts = GroundTruth([0, 0], [1, 2], [[0, 0, 10, 10], [20, 0, 30, 10]], difficult=[False, True])
    dets = Detections([0, 0], [1, 2], [[0, 0, 10, 10], [20, 0, 30, 10]], [0.9, 0.8])
    result = voc_ap(dets, gts)
    assert result["per_class"] == {1: 1.0, 2: None}
    assert result["map"] == 1.0
    assert voc_ap(dets, GroundTruth([0], [1], [[0, 0, 10, 10]], difficult=[True]))["map"] is None


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="x2 < x1"):
        GroundTruth([0], [1], [[10, 0, 0, 10]])
    with pytest.raises(ValueError, match="detection scores have 1 entries, expected 2"):
        Detections([0, 0], [1, 1], [[0, 0, 1, 1], [0, 0, 1, 1]], [0.5])
    with pytest.raises(ValueError, match="image_ids must be a 1-D integer array"):
        Detections([0.5], [1], [[0, 0, 1, 1]], [0.5])
    with pytest.raises(ValueError, match="AP method"):
        average_precision([1], [0], 1, "voc12")
