"""Segmentation and box metrics against hand-computed examples: IoU = TP / (TP + FP + FN) per class,
void pixels (255) never counted, absent classes out of the mean."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tasks.metrics import box_iou, confusion_matrix, iou, segmentation_scores

# 10 labelled pixels, 3 classes. truth 0: predicted 0,0,0,1; truth 1: 0,1,1,2; truth 2: 2,2.
TARGET = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
PRED = torch.tensor([0, 0, 0, 1, 0, 1, 1, 2, 2, 2])
CONFUSION = [[3, 1, 0],
             [1, 2, 1],
             [0, 0, 2]]
# TP = [3, 2, 2], truth totals [4, 4, 2], predicted totals [4, 3, 3]
IOUS = [3 / 5, 2 / 5, 2 / 3]


def test_confusion_matrix_rows_truth_columns_prediction() -> None:
    confusion = confusion_matrix(PRED, TARGET, num_classes=3)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == CONFUSION


def test_confusion_matrix_accepts_image_batches() -> None:
    confusion = confusion_matrix(PRED.reshape(2, 1, 5), TARGET.reshape(2, 1, 5), num_classes=3)
    assert confusion.tolist() == CONFUSION


def test_scores_of_hand_computed_three_class_example() -> None:
    scores = segmentation_scores(np.array(CONFUSION), class_names=["background", "cat", "dog"])
    assert scores["pixel_accuracy"] == pytest.approx(7 / 10)
    assert scores["per_class_iou"] == pytest.approx(IOUS, abs=1e-6)
    assert scores["mean_iou"] == pytest.approx(5 / 9, abs=1e-6)
    assert scores["mean_class_accuracy"] == pytest.approx((3 / 4 + 2 / 4 + 2 / 2) / 3)
    assert scores["frequency_weighted_iou"] == pytest.approx((4 * 3 / 5 + 4 * 2 / 5 + 2 * 2 / 3) / 10, abs=1e-6)
    assert scores["absent_classes"] == []
    json.dumps(scores)
    assert all(type(v) is float for v in scores["per_class_iou"])


def test_absent_class_is_reported_and_left_out_of_the_mean() -> None:
    confusion = np.zeros((4, 4), dtype=np.int64)
    confusion[:3, :3] = CONFUSION
    scores = segmentation_scores(confusion, class_names=["background", "cat", "dog", "horse"])
    assert scores["per_class_iou"][3] is None
    assert scores["absent_classes"] == ["horse"]
    assert scores["mean_iou"] == pytest.approx(5 / 9, abs=1e-6)
    assert scores["mean_class_accuracy"] == pytest.approx(0.75)
    assert segmentation_scores(confusion)["absent_classes"] == [3]


def test_class_only_predicted_counts_with_iou_zero() -> None:
    confusion = np.zeros((4, 4), dtype=np.int64)
    confusion[:3, :3] = CONFUSION
    confusion[0, 3] = 1  # one background pixel predicted as class 3, which is nowhere in the truth
    scores = segmentation_scores(confusion)
    assert scores["per_class_iou"][3] == 0.0
    assert scores["per_class_iou"][0] == pytest.approx(3 / 6, abs=1e-6)
    assert scores["mean_iou"] == pytest.approx((3 / 6 + 2 / 5 + 2 / 3 + 0) / 4, abs=1e-6)
    assert scores["mean_class_accuracy"] == pytest.approx((3 / 5 + 2 / 4 + 2 / 2) / 3)
    assert scores["absent_classes"] == []


def test_all_void_image_has_no_scores() -> None:
    target = torch.full((4, 6), 255)
    confusion = confusion_matrix(torch.zeros(4, 6, dtype=torch.long), target, num_classes=3)
    assert confusion.sum() == 0
    scores = segmentation_scores(confusion.numpy())
    assert scores["pixel_accuracy"] is None
    assert scores["mean_iou"] is None
    assert scores["mean_class_accuracy"] is None
    assert scores["frequency_weighted_iou"] is None
    assert scores["absent_classes"] == [0, 1, 2]
    json.dumps(scores)


def test_void_pixels_are_never_counted_even_when_predicted_wrong() -> None:
    target = torch.cat([TARGET, torch.tensor([255, 255, 255])])
    pred = torch.cat([PRED, torch.tensor([2, 1, 0])])
    assert confusion_matrix(pred, target, num_classes=3).tolist() == CONFUSION


def test_perfect_prediction_scores_one() -> None:
    target = torch.tensor([[0, 1, 2], [2, 1, 255]])
    scores = segmentation_scores(confusion_matrix(target.clone().clamp(max=2), target, num_classes=3).numpy())
    for key in ["pixel_accuracy", "mean_iou", "mean_class_accuracy", "frequency_weighted_iou"]:
        assert scores[key] == 1.0
    assert scores["per_class_iou"] == [1.0, 1.0, 1.0]


def test_all_background_predictor_on_known_label() -> None:
    # 10 background, 4 aeroplane, 2 void pixels; predict background everywhere
    target = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 255, 255]])
    confusion = confusion_matrix(torch.zeros_like(target), target, num_classes=2)
    assert confusion.tolist() == [[10, 0], [4, 0]]
    scores = segmentation_scores(confusion.numpy())
    assert scores["pixel_accuracy"] == pytest.approx(10 / 14, abs=1e-6)
    assert scores["per_class_iou"] == pytest.approx([10 / 14, 0.0], abs=1e-6)
    assert scores["mean_iou"] == pytest.approx(5 / 14, abs=1e-6)
    assert scores["mean_class_accuracy"] == pytest.approx(0.5)
    assert scores["frequency_weighted_iou"] == pytest.approx(10 / 14 * 10 / 14, abs=1e-6)


def test_target_outside_classes_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"class 7\b.*\[0, 3\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_matrix_on_cuda() -> None:
    confusion = confusion_matrix(PRED.cuda(), TARGET.cuda(), num_classes=3)
    assert confusion.device.type == "cuda"
    assert confusion.cpu().tolist() == CONFUSION


def test_iou_is_nan_where_union_is_zero() -> None:
    result = iou([1, 0, 3], [2, 0, 3])
    assert result.dtype == np.float64
    assert result[0] == 0.5 and math.isnan(result[1]) and result[2] == 1.0


def test_box_iou_on_hand_examples() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [1, 1, 1, 1]])
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [2, 2, 3, 3], [1, 1, 1, 1]])
    result = box_iou(a, b)
    assert result.shape == (3, 4)
    assert result[0, 0] == 1.0  # identical
    assert result[0, 1] == pytest.approx(1 / 3)  # half of each box overlaps: 2 / (4 + 4 - 2)
    assert result[0, 2] == 0.0  # disjoint
    assert result[1, 2] == 0.0
    assert result[1, 0] == pytest.approx(1 / 4)  # contained
    assert math.isnan(result[2, 3])  # two zero-area boxes: union 0
    assert result[2, 0] == 0.0
