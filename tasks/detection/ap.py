"""Average precision of object detections, vectorised NumPy, in one place: Pascal VOC AP (2007
11-point and 2010+ all-point, difficult objects ignored) and COCO mAP@[.5:.95] (pycocotools'
`evaluateImg` + `accumulate`, reproduced to 1e-6, tie-breaks included).

Conventions (they move AP, so they are fixed here):
- Boxes are xyxy in continuous pixel coordinates, area = (x2-x1)(y2-y1), IoU from
  `tasks.metrics.box_iou` (the project's one IoU). `to_coco` writes a box as COCO xywh
  (x1, y1, x2-x1, y2-y1) with area w*h: the area and IoU pycocotools computes from it are ours.
- A detection matches when IoU >= threshold (the VOC devkit uses a strict `>`; they differ only
  for an IoU exactly equal to the threshold). pycocotools' `min(t, 1-1e-10)` is kept for COCO.
- Score ties: VOC orders a class's detections by score, descending, ties in input order (a stable
  sort). COCO does what pycocotools does: per (image, class) `argsort(-score, kind="mergesort")`
  (ties in input order), keep the first `max_dets`, then per class a mergesort of the detections
  concatenated by ascending image id, so ties go to the lower image id, then to input order.
- Matching, VOC (devkit): each detection takes its best-IoU ground truth among *all* of its
  image's boxes of its class (first on IoU ties); a difficult one → ignored (neither TP nor FP),
  already taken → FP (duplicate), else TP. Difficult boxes are not positives.
- Matching, COCO (pycocotools): the best-IoU ground truth not yet taken (crowd boxes can be taken
  again), regular boxes before ignored (crowd) ones, the *last* on IoU ties; a detection matched to
  a crowd box is ignored; a crowd box's overlap is intersection / detection area. Crowd boxes are
  not positives; `difficult` plays no part in COCO evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.metrics import box_iou, iou

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # pycocotools' iouThrs (not arange: see its comment)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs
# The devkit port's np.arange(0, 1.1, 0.1) (py-faster-rcnn voc_eval.py): its 0.30000000000000004,
# 0.6000000000000001 and 0.7000000000000001 are not reached by a recall of exactly 0.3, 0.6, 0.7.
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)
AREA_ALL = (0.0, 1e10)  # pycocotools' area range "all": boxes outside it are ignored, as there
METHODS = ("voc07", "voc10", "coco")
_BLOCK_WASTE = 4096  # IoU entries computed for nothing that cost about one extra box_iou call


def _int_array(name: str, values, n: int | None) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"{name} must be a 1-D integer array, got dtype {array.dtype} and shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries, expected {n} (one per box)")
    return array.astype(np.int64)


def _box_array(name: str, values) -> np.ndarray:
    boxes = np.asarray(values, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) in xyxy, got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name} holds non-finite coordinates (row {np.flatnonzero(~np.isfinite(boxes).all(1))[0]})")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        row = np.flatnonzero(bad)[0]
        raise ValueError(f"{name} row {row} is {boxes[row].tolist()}: x2 < x1 or y2 < y1; boxes must be "
                         f"xyxy (convert xywh with x2 = x + w, y2 = y + h)")
    return boxes


def _flags(name: str, values, n: int) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=bool)
    flags = np.asarray(values)
    if flags.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per box), got {flags.shape}")
    return flags.astype(bool)


@dataclass(frozen=True)
class Detections:
    """D detections: image id, class label, xyxy box and score of each (row order = input order,
    the tie-break). Any array-likes; stored as int64 / float64 NumPy arrays."""

    image_ids: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        boxes = _box_array("detection boxes", self.boxes)
        n = len(boxes)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if scores.shape != (n,):
            raise ValueError(f"detection scores have {scores.size} entries, expected {n} (one per box)")
        if not np.isfinite(scores).all():
            row = np.flatnonzero(~np.isfinite(scores))[0]
            raise ValueError(f"detection scores hold a non-finite value ({scores[row]} in row {row})")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "image_ids", _int_array("detection image_ids", self.image_ids, n))
        object.__setattr__(self, "labels", _int_array("detection labels", self.labels, n))

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class GroundTruth:
    """G ground-truth boxes: image id, class label, xyxy box; `difficult` (VOC) and `iscrowd`
    (COCO) flags default to all False."""

    image_ids: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray | None = None
    iscrowd: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = _box_array("ground-truth boxes", self.boxes)
        n = len(boxes)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "image_ids", _int_array("ground-truth image_ids", self.image_ids, n))
        object.__setattr__(self, "labels", _int_array("ground-truth labels", self.labels, n))
        object.__setattr__(self, "difficult", _flags("ground-truth difficult", self.difficult, n))
        object.__setattr__(self, "iscrowd", _flags("ground-truth iscrowd", self.iscrowd, n))

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class Matches:
    """Result of `match`, per IoU threshold t and detection d (input order).

    gt_index[t, d]: the ground truth d is matched to, -1 if none (a VOC duplicate has none);
    ignored[t, d]: neither TP nor FP (matched to a difficult / crowd box); iou[t, d]: IoU (crowd:
    intersection / detection area) with that ground truth, NaN if none; evaluated[d]: False for a
    detection beyond `max_dets` in its (image, class), which takes no part at all."""

    thresholds: np.ndarray
    gt_index: np.ndarray
    ignored: np.ndarray
    iou: np.ndarray
    evaluated: np.ndarray

    @property
    def tp(self) -> np.ndarray:
        return (self.gt_index >= 0) & ~self.ignored

    @property
    def fp(self) -> np.ndarray:
        return self.evaluated & (self.gt_index < 0) & ~self.ignored


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _group_codes(dets: Detections, gts: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """One int64 code per (image, class), image-major, shared by detections and ground truths."""
    _, image = np.unique(np.concatenate([dets.image_ids, gts.image_ids]), return_inverse=True)
    _, label = np.unique(np.concatenate([dets.labels, gts.labels]), return_inverse=True)
    code = image.astype(np.int64) * (int(label.max(initial=0)) + 1) + label
    return code[:len(dets)], code[len(dets):]


def _pairs(det_rows: np.ndarray, det_code: np.ndarray, gt_rows: np.ndarray, gt_code: np.ndarray,
           det_boxes: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair of the same (image, class), detection-major.

    `det_rows` / `gt_rows` are row indices sorted by code (ground truths in their matching order
    within a code). Returns (position in det_rows, position in gt_rows, IoU) per pair. IoUs come
    from `box_iou` on blocks of consecutive groups, merged while the cross-group entries computed
    for nothing stay under _BLOCK_WASTE (one call per (image, class) would be mostly overhead)."""
    d_code, g_code = det_code[det_rows], gt_code[gt_rows]
    lo = np.searchsorted(g_code, d_code, side="left")
    count = np.searchsorted(g_code, d_code, side="right") - lo
    n_pairs = int(count.sum())
    p_det = np.repeat(np.arange(len(det_rows)), count)
    p_gt = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(n_pairs)
    p_iou = np.empty(n_pairs)
    if n_pairs == 0:
        return p_det, p_gt, p_iou
    # groups (runs of equal code among the detections that have ground truths)
    rows = np.flatnonzero(count > 0)  # a group's detections are contiguous and all have its boxes
    first = np.flatnonzero(np.r_[True, d_code[rows][1:] != d_code[rows][:-1]])
    starts = rows[first]
    d_lo = starts.tolist()
    d_hi = (starts + np.diff(np.r_[first, len(rows)])).tolist()
    g_lo = lo[starts].tolist()
    g_hi = (lo[starts] + count[starts]).tolist()
    pair_lo = (np.cumsum(count) - count)[starts].tolist()
    det_sorted = det_boxes[det_rows]
    gt_sorted = gt_boxes[gt_rows]
    block = 0
    n_groups = len(d_lo)
    while block < n_groups:
        end, useful = block + 1, (d_hi[block] - d_lo[block]) * (g_hi[block] - g_lo[block])
        while end < n_groups:
            grown = useful + (d_hi[end] - d_lo[end]) * (g_hi[end] - g_lo[end])
            if (d_hi[end] - d_lo[block]) * (g_hi[end] - g_lo[block]) - grown > _BLOCK_WASTE:
                break
            end, useful = end + 1, grown
        a, b, c = d_lo[block], d_hi[end - 1], g_lo[block]
        p0, p1 = pair_lo[block], (pair_lo[end] if end < n_groups else n_pairs)
        matrix = box_iou(det_sorted[a:b], gt_sorted[c:g_hi[end - 1]])
        p_iou[p0:p1] = matrix[p_det[p0:p1] - a, p_gt[p0:p1] - c]
        block = end
    np.nan_to_num(p_iou, copy=False, nan=0.0)  # two zero-area boxes: no overlap (pycocotools: 0)
    return p_det, p_gt, p_iou


def _crowd_overlap(det_boxes: np.ndarray, crowd_boxes: np.ndarray) -> np.ndarray:
    """pycocotools' overlap of a detection with a crowd region, pair by pair: intersection over the
    detection's area (the `iou` function with the detection's area as denominator), 0 when empty.
    Not an IoU, so not box_iou; deriving it from box_iou would move values at exact thresholds."""
    sides = (np.minimum(det_boxes[:, 2:], crowd_boxes[:, 2:]) - np.maximum(det_boxes[:, :2], crowd_boxes[:, :2]))
    intersection = sides.clip(min=0).prod(axis=1)
    return np.nan_to_num(iou(intersection, _areas(det_boxes)), nan=0.0)


def _thresholds(iou_thresholds) -> np.ndarray:
    thresholds = np.atleast_1d(np.asarray(iou_thresholds, dtype=np.float64))
    if thresholds.ndim != 1 or len(thresholds) == 0 or not ((thresholds > 0) & (thresholds <= 1)).all():
        raise ValueError(f"IoU thresholds must be numbers in (0, 1], got {iou_thresholds!r}")
    return thresholds


def match(dets: Detections, gts: GroundTruth, iou_thresholds: float | Sequence[float] = 0.5,
          rule: str = "voc", max_dets: int | None = None) -> Matches:
    """Greedy matching of detections to ground truths of the same image and class, at each IoU
    threshold, by the VOC devkit's rule or pycocotools' (see the module docstring).
    `max_dets` keeps the first max_dets detections of each (image, class) in score order (COCO
    evaluates 100); None keeps all."""
    if rule not in ("voc", "coco"):
        raise ValueError(f"matching rule must be 'voc' or 'coco', got {rule!r}")
    if max_dets is not None and max_dets < 1:
        raise ValueError(f"max_dets must be a positive number of detections or None, got {max_dets}")
    thresholds = _thresholds(iou_thresholds)
    n_t, n_d = len(thresholds), len(dets)
    gt_index = np.full((n_t, n_d), -1, dtype=np.int64)
    ignored = np.zeros((n_t, n_d), dtype=bool)
    iou = np.full((n_t, n_d), np.nan)
    det_code, gt_code = _group_codes(dets, gts)
    # detections by (image, class), score descending, ties in input order (a stable sort)
    det_rows = np.lexsort((np.arange(n_d), -dets.scores, det_code))
    starts = np.r_[0, np.flatnonzero(np.diff(det_code[det_rows])) + 1] if n_d else np.zeros(0, np.int64)
    rank = np.arange(n_d) - np.repeat(starts, np.diff(np.r_[starts, n_d]))
    evaluated = np.ones(n_d, dtype=bool)
    if max_dets is not None:
        evaluated[det_rows[rank >= max_dets]] = False
        det_rows, rank = det_rows[rank < max_dets], rank[rank < max_dets]
    gt_area = _areas(gts.boxes)
    if rule == "voc":
        gt_ignore = gts.difficult
        gt_rows = np.lexsort((np.arange(len(gts)), gt_code))
    else:
        gt_ignore = gts.iscrowd | (gt_area < AREA_ALL[0]) | (gt_area > AREA_ALL[1])
        gt_rows = np.lexsort((np.arange(len(gts)), gt_ignore, gt_code))  # ignored last, as pycocotools
    p_det, p_gt, p_iou = _pairs(det_rows, det_code, gt_rows, gt_code, dets.boxes, gts.boxes)
    if rule == "coco" and gts.iscrowd.any():
        crowd = gts.iscrowd[gt_rows[p_gt]]
        p_iou[crowd] = _crowd_overlap(dets.boxes[det_rows[p_det[crowd]]], gts.boxes[gt_rows[p_gt[crowd]]])
    if len(p_det):
        if rule == "voc":
            _match_voc(thresholds, p_det, p_gt, p_iou, det_rows, gt_rows, gt_ignore, gt_index, ignored, iou)
        else:
            _match_coco(thresholds, p_det, p_gt, p_iou, rank, det_rows, gt_rows, gts.iscrowd, gt_ignore,
                        gt_index, ignored, iou)
    if rule == "coco":  # unmatched detections outside the area range are ignored (never, for "all")
        det_area = _areas(dets.boxes)
        outside = (det_area < AREA_ALL[0]) | (det_area > AREA_ALL[1])
        ignored |= (gt_index < 0) & outside[None, :] & evaluated[None, :]
    return Matches(thresholds, gt_index, ignored, iou, evaluated)


def _match_voc(thresholds, p_det, p_gt, p_iou, det_rows, gt_rows, gt_ignore, gt_index, ignored, iou) -> None:
    """Devkit rule, no loop over detections: the best ground truth of a detection does not depend
    on earlier matches, and of the detections whose best is the same box the first in score order
    (the first in det_rows: same image, same class) is the TP, the others are duplicates (FP)."""
    seg = np.r_[0, np.flatnonzero(np.diff(p_det)) + 1]
    best = np.maximum.reduceat(p_iou, seg)
    positions = np.arange(len(p_iou))
    at_best = np.where(p_iou == np.repeat(best, np.diff(np.r_[seg, len(p_iou)])), positions, len(p_iou))
    first = np.minimum.reduceat(at_best, seg)  # first ground truth on IoU ties, as max() in the devkit
    det = p_det[seg]
    best_gt = gt_rows[p_gt[first]]
    hard = gt_ignore[best_gt]
    for t, threshold in enumerate(thresholds):
        hit = best >= threshold
        rows = det_rows[det[hit & hard]]
        gt_index[t, rows], ignored[t, rows], iou[t, rows] = best_gt[hit & hard], True, best[hit & hard]
        candidates = np.flatnonzero(hit & ~hard)
        _, first_claim = np.unique(best_gt[candidates], return_index=True)
        won = candidates[first_claim]
        gt_index[t, det_rows[det[won]]] = best_gt[won]
        iou[t, det_rows[det[won]]] = best[won]


def _match_coco(thresholds, p_det, p_gt, p_iou, rank, det_rows, gt_rows, gt_crowd, gt_ignore,
                gt_index, ignored, iou) -> None:
    """pycocotools' evaluateImg loop, run for all (image, class) groups and thresholds at once, one
    score rank at a time (at most max_dets steps): rank r's detection of every group picks among
    the boxes its group's earlier ranks left free."""
    n_t = len(thresholds)
    effective = np.minimum(thresholds, 1 - 1e-10)[:, None]
    order = np.argsort(rank[p_det], kind="stable")  # pairs by rank, detection-major within a rank
    p_det, p_gt, p_iou = p_det[order], p_gt[order], p_iou[order]
    p_rank = rank[p_det]
    bounds = np.r_[0, np.flatnonzero(np.diff(p_rank)) + 1, len(p_rank)]
    crowd = gt_crowd[gt_rows]
    ignore = gt_ignore[gt_rows]
    taken = np.zeros((n_t, len(gt_rows)), dtype=bool)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        det, gt, overlap = p_det[lo:hi], p_gt[lo:hi], p_iou[lo:hi]
        seg = np.r_[0, np.flatnonzero(np.diff(det)) + 1]
        seg_of = np.repeat(np.arange(len(seg)), np.diff(np.r_[seg, len(det)]))
        positions = np.arange(len(det))
        free = (~taken[:, gt] | crowd[gt]) & (overlap >= effective)  # (T, pairs)
        chosen = np.full((n_t, len(seg)), -1)
        for stage in (~ignore[gt], ignore[gt]):  # regular boxes first, then ignored ones
            candidate = free & stage & (chosen[:, seg_of] < 0)
            value = np.where(candidate, overlap, -1.0)
            best = np.maximum.reduceat(value, seg, axis=1)
            last = np.where(candidate & (value == best[:, seg_of]), positions, -1)
            chosen = np.where(chosen < 0, np.maximum.reduceat(last, seg, axis=1), chosen)
        t, s = np.nonzero(chosen >= 0)
        pair = chosen[t, s]
        taken[t, gt[pair]] = True
        rows = det_rows[det[pair]]
        gt_index[t, rows] = gt_rows[gt[pair]]
        ignored[t, rows] = ignore[gt[pair]]
        iou[t, rows] = overlap[pair]


def _at_recall(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Best precision at recall >= t for each t (0 where recall never reaches t): recall does not
    decrease, so it is the precision envelope at the first index with recall >= t."""
    if len(precision) == 0:
        return np.zeros(len(thresholds))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, thresholds, side="left")
    return np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)


def average_precision(tp_cumsum, fp_cumsum, n_pos: int, method: str = "voc10") -> float:
    """AP of one class from cumulative TP and FP counts after each detection in score order.

    voc07: mean over recall thresholds 0, 0.1, ..., 1 (VOC07_RECALL_THRESHOLDS) of the best
    precision at recall >= t (0 if none); voc10: area under the precision envelope, the devkit's
    VOCap; coco: pycocotools' 101-point interpolation (precision tp / (tp + fp + spacing(1)),
    envelope, searchsorted left)."""
    if method not in METHODS:
        raise ValueError(f"AP method must be one of {METHODS}, got {method!r}")
    if n_pos <= 0:
        raise ValueError(f"AP needs at least one positive ground truth, got n_pos={n_pos}")
    tp = np.asarray(tp_cumsum, dtype=np.float64)
    fp = np.asarray(fp_cumsum, dtype=np.float64)
    recall = tp / n_pos
    if method == "coco":
        # pycocotools: precision at the first detection reaching each recall threshold, 0 past the last
        precision = tp / (tp + fp + np.spacing(1))
        return float(_at_recall(precision, recall, COCO_RECALL_THRESHOLDS).mean())
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if method == "voc07":
        return float(_at_recall(precision, recall, VOC07_RECALL_THRESHOLDS).sum() / 11)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[step + 1] - mrec[step]) * mpre[step + 1]).sum())


def _classes(dets: Detections, gts: GroundTruth, labels: Sequence[int] | None) -> np.ndarray:
    present = np.union1d(dets.labels, gts.labels)
    return present if labels is None else np.union1d(present, np.asarray(labels, dtype=np.int64))


def _cumulative(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each class segment start (flags (T, N), starts sorted)."""
    total = np.cumsum(flags, axis=-1)
    if total.shape[-1] == 0:
        return total
    before = np.concatenate([np.zeros(total.shape[:-1] + (1,), total.dtype), total[..., :-1]], axis=-1)
    lengths = np.diff(np.r_[starts, total.shape[-1]])
    return total - np.repeat(before[..., starts], lengths, axis=-1)


def voc_ap(dets: Detections, gts: GroundTruth, iou_threshold: float = 0.5, method: str = "voc10",
           labels: Sequence[int] | None = None) -> dict:
    """Pascal VOC AP per class and its mean, with the PR curve of each class.

    per_class[label] is None for a class with no non-difficult ground truth, and `map` averages the
    others (None if there are none); `labels` adds classes to report that the data may lack.
    precision/recall hold each class's curve after every non-ignored detection in score order;
    mean_iou_of_matches is the mean IoU of the true positives (None without any)."""
    if method not in ("voc07", "voc10"):
        raise ValueError(f"VOC AP method must be 'voc07' (11-point) or 'voc10' (all-point), got {method!r}")
    matches = match(dets, gts, iou_threshold, rule="voc")
    classes = _classes(dets, gts, labels)
    kept = np.flatnonzero(~matches.ignored[0])
    order = kept[np.lexsort((kept, -dets.scores[kept], dets.labels[kept]))]
    label_sorted = dets.labels[order]
    starts = np.searchsorted(label_sorted, classes, side="left")
    ends = np.searchsorted(label_sorted, classes, side="right")
    nonempty = starts < ends
    tp_cum = _cumulative(matches.tp[0, order], starts[nonempty])
    # every kept detection is a TP or an FP: FPs so far = detections so far - TPs so far
    fp_cum = np.arange(1, len(order) + 1) - np.repeat(starts[nonempty], (ends - starts)[nonempty]) - tp_cum
    n_pos = {int(c): int(n) for c, n in zip(*np.unique(gts.labels[~gts.difficult], return_counts=True))}
    per_class, precision, recall = {}, {}, {}
    for label, lo, hi in zip(classes.tolist(), starts, ends):
        positives = n_pos.get(label, 0)
        tps, fps = tp_cum[lo:hi], fp_cum[lo:hi]
        precision[label] = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
        recall[label] = tps / positives if positives else np.full(hi - lo, np.nan)
        per_class[label] = average_precision(tps, fps, positives, method) if positives else None
    scored = [ap for ap in per_class.values() if ap is not None]
    matched = matches.iou[0][matches.tp[0]]
    return {
        "map": float(np.mean(scored)) if scored else None,
        "per_class": per_class,
        "n_positives": {label: n_pos.get(label, 0) for label in classes.tolist()},
        "mean_iou_of_matches": float(matched.mean()) if len(matched) else None,
        "precision": precision,
        "recall": recall,
        "iou_threshold": float(iou_threshold),
        "method": method,
    }


def coco_map(dets: Detections, gts: GroundTruth, max_dets: int = 100, labels: Sequence[int] | None = None) -> dict:
    """COCO box mAP as pycocotools' COCOeval: `map` = stats[0] (AP over IoU 0.50:0.05:0.95, area
    "all", max_dets per image and class), map_50 = stats[1], map_75 = stats[2]; per_class holds
    each class's AP averaged over the thresholds, None for a class without non-crowd ground truth
    (pycocotools reports -1 where we report None)."""
    matches = match(dets, gts, COCO_IOU_THRESHOLDS, rule="coco", max_dets=max_dets)
    classes = _classes(dets, gts, labels)
    kept = np.flatnonzero(matches.evaluated)
    # pycocotools: per class, a mergesort on score of detections concatenated by ascending image id
    order = kept[np.lexsort((kept, dets.image_ids[kept], -dets.scores[kept], dets.labels[kept]))]
    label_sorted = dets.labels[order]
    starts = np.searchsorted(label_sorted, classes, side="left")
    ends = np.searchsorted(label_sorted, classes, side="right")
    nonempty = starts < ends
    tp_cum = _cumulative(matches.tp[:, order], starts[nonempty])
    fp_cum = _cumulative(matches.fp[:, order], starts[nonempty])
    gt_area = _areas(gts.boxes)
    positive = ~gts.iscrowd & (gt_area >= AREA_ALL[0]) & (gt_area <= AREA_ALL[1])
    n_pos = {int(c): int(n) for c, n in zip(*np.unique(gts.labels[positive], return_counts=True))}
    n_t = len(COCO_IOU_THRESHOLDS)
    per_threshold = {}  # label -> (T,) AP
    for label, lo, hi in zip(classes.tolist(), starts, ends):
        if n_pos.get(label, 0):
            per_threshold[label] = np.array([average_precision(tp_cum[t, lo:hi], fp_cum[t, lo:hi], n_pos[label],
                                                               "coco") for t in range(n_t)])
    table = np.array(list(per_threshold.values())).reshape(-1, n_t)  # (classes with positives, T)
    i50, i75 = (int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - t))) for t in (0.5, 0.75))
    return {
        "map": float(table.mean()) if len(table) else None,
        "map_50": float(table[:, i50].mean()) if len(table) else None,
        "map_75": float(table[:, i75].mean()) if len(table) else None,
        "per_class": {label: float(per_threshold[label].mean()) if label in per_threshold else None
                      for label in classes.tolist()},
        "n_positives": {label: n_pos.get(label, 0) for label in classes.tolist()},
        "iou_thresholds": COCO_IOU_THRESHOLDS.tolist(),
        "max_dets": max_dets,
    }


def to_coco(dets: Detections, gts: GroundTruth) -> tuple[dict, list[dict]]:
    """(ground-truth dataset, detection results) in pycocotools' formats, for cross-checks.

    Boxes become xywh = (x1, y1, x2-x1, y2-y1), ground-truth area w*h (what loadRes gives the
    detections); annotation ids start at 1 (pycocotools reads id 0 as "unmatched"); images and
    categories are the union of both sides' ids. pycocotools' loadRes cannot take an empty result
    list, and it modifies the dicts it gets: build fresh ones for each evaluator."""
    def xywh(boxes: np.ndarray) -> np.ndarray:
        return np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])

    gt_boxes = xywh(gts.boxes)
    dataset = {
        "images": [{"id": i} for i in np.union1d(dets.image_ids, gts.image_ids).tolist()],
        "categories": [{"id": c} for c in np.union1d(dets.labels, gts.labels).tolist()],
        "annotations": [
            {"id": k + 1, "image_id": image, "category_id": label, "bbox": box, "area": box[2] * box[3],
             "iscrowd": int(crowd)}
            for k, (image, label, box, crowd) in enumerate(zip(gts.image_ids.tolist(), gts.labels.tolist(),
                                                               gt_boxes.tolist(), gts.iscrowd.tolist()))
        ],
    }
    results = [{"image_id": image, "category_id": label, "bbox": box, "score": score}
               for image, label, box, score in zip(dets.image_ids.tolist(), dets.labels.tolist(),
                                                   xywh(dets.boxes).tolist(), dets.scores.tolist())]
    return dataset, results


def pycocotools_stats(dets: Detections, gts: GroundTruth) -> np.ndarray:
    """pycocotools' `COCOeval.stats` (bbox) on the same data: the reference our `coco_map` is tested
    and benchmarked against. pycocotools is a dev dependency (`pip install -e ".[dev]"`)."""
    import contextlib
    import io

    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("pycocotools is not installed; `pip install -e '.[dev]'` brings it") from None
    dataset, results = to_coco(dets, gts)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats
