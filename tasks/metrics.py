"""Metrics shared by the pipelines, pure NumPy/torch: the project's one IoU function, box IoU for
detection, and the confusion-matrix scores of semantic segmentation (pixel accuracy, mean IoU)."""

from __future__ import annotations

import numpy as np
import torch


def iou(intersection, union) -> np.ndarray:
    """Elementwise intersection / union as float64; NaN where union == 0 (IoU undefined, not 0)."""
    intersection = np.asarray(intersection, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.full(np.broadcast(intersection, union).shape, np.nan)
    np.divide(intersection, union, out=out, where=union != 0)
    return out


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise IoU of boxes (N, 4) and (M, 4) in xyxy pixel coordinates (area = (x2-x1)(y2-y1),
    the continuous convention) → (N, M); NaN for pairs whose union has zero area."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0)
    area_b = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    sides = (bottom_right - top_left).clip(min=0)
    intersection = sides[..., 0] * sides[..., 1]
    union = area_a[:, None] + area_b[None, :] - intersection
    return iou(intersection, union)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(C, C) int64 counts, rows = truth, columns = prediction, pixels labelled `ignore_index` left
    out; any shape, on the inputs' device. A truth value outside [0, C) raises ValueError."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    bad = (target < 0) | (target >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"target holds class {int(target[bad][0])}, outside [0, {num_classes}) and not the "
                         f"ignore index {ignore_index}")
    bad = (pred < 0) | (pred >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"prediction holds class {int(pred[bad][0])}, outside [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _round(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 6)


def segmentation_scores(confusion, class_names: list[str] | None = None) -> dict:
    """Scores of a (C, C) confusion matrix (rows truth, columns prediction) as JSON-ready floats.

    mean_iou averages over classes present in the truth or the predictions (IoU = TP / (TP+FP+FN));
    classes absent from both get IoU None and are listed in `absent_classes`; mean_class_accuracy
    averages recall over classes present in the truth. Scores of an empty matrix are None."""
    confusion = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {confusion.shape}")
    num_classes = confusion.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-class confusion matrix")
    tp = np.diag(confusion)
    truth = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    total = confusion.sum()
    class_iou = iou(tp, truth + predicted - tp)
    present = ~np.isnan(class_iou)
    in_truth = truth > 0
    names = list(class_names) if class_names is not None else list(range(num_classes))
    return {
        "pixel_accuracy": _round(tp.sum() / total) if total > 0 else None,
        "mean_iou": _round(class_iou[present].mean()) if present.any() else None,
        "per_class_iou": [_round(v) for v in class_iou],
        "absent_classes": [names[i] for i in np.flatnonzero(~present)],
        "mean_class_accuracy": _round((tp[in_truth] / truth[in_truth]).mean()) if in_truth.any() else None,
        "frequency_weighted_iou": (_round((truth[present] * class_iou[present]).sum() / total)
                                   if total > 0 else None),
    }


def chance_warning(accuracy: float, images: int, classes: int) -> str | None:
    """A sentence when `accuracy` on `images` is not clearly above guessing among `classes` (within three
    binomial standard deviations of 1/classes), else None: a model at chance must not pass silently."""
    chance = 1.0 / classes
    margin = 3.0 * (chance * (1.0 - chance) / max(images, 1)) ** 0.5
    if accuracy > chance + margin:
        return None
    return (f"test accuracy {accuracy:.3f} on {images} images is at chance (1/{classes} = {chance:.3f}, "
            f"±{margin:.3f}): the model did not learn. The book's sigmoid LeNet needs about 1,000 SGD steps to "
            "leave its plateau (the full 60k images give 4,690 in 10 epochs); train on the full data "
            "(classification.data.source: download), or set classification.train.variant: relu")
