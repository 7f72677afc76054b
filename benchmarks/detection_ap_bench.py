"""COCO box mAP: d2lflow's vectorised `coco_map` vs pycocotools, faster-coco-eval and torchmetrics,
on the same synthetic detections, in one run.

    python benchmarks/detection_ap_bench.py                 # 500 images, 20 classes x 5,000 detections
    python benchmarks/detection_ap_bench.py --repeats 5

Writes benchmarks/results/detection_ap.json. Each evaluator is timed end to end from the same
arrays (conversion to its input format included), median of --repeats runs, and its mAP, mAP@.5
and mAP@.75 are compared with ours (max abs difference). Coordinates are multiples of 0.5 and
scores float32 values, so torchmetrics' float32 tensors hold exactly the same data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from tasks.detection.ap import (  # noqa: E402
    COCO_IOU_THRESHOLDS,
    COCO_RECALL_THRESHOLDS,
    Detections,
    GroundTruth,
    coco_map,
    pycocotools_stats,
    to_coco,
    voc_ap,
)

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(n_images: int, n_classes: int, per_class: int, seed: int) -> tuple[Detections, GroundTruth]:
    """Ground truth ~Poisson(1.5) boxes per (image, class); per class `per_class` detections, 60 %
    jittered copies of that class's boxes (so many true positives at every IoU), 40 % random boxes
    on random images. Image ids are 1..n_images."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.5, (n_images, n_classes))
    gt_image = np.repeat(np.repeat(np.arange(1, n_images + 1), n_classes), counts.ravel())
    gt_label = np.repeat(np.tile(np.arange(n_classes), n_images), counts.ravel())
    xy = rng.integers(0, 1000, (len(gt_image), 2)) / 2
    gt_box = np.column_stack([xy, xy + rng.integers(20, 400, (len(gt_image), 2)) / 2])
    image, label, box = [], [], []
    for c in range(n_classes):
        mine = np.flatnonzero(gt_label == c)
        n_copy = int(per_class * 0.6)
        source = rng.choice(mine, n_copy)
        jitter = rng.integers(-24, 25, (n_copy, 4)) / 2
        copied = gt_box[source] + jitter
        copied[:, 2:] = np.maximum(copied[:, 2:], copied[:, :2] + 1)
        n_random = per_class - n_copy
        xy = rng.integers(0, 1000, (n_random, 2)) / 2
        random_box = np.column_stack([xy, xy + rng.integers(20, 400, (n_random, 2)) / 2])
        image.append(np.r_[gt_image[source], rng.integers(1, n_images + 1, n_random)])
        label.append(np.full(per_class, c))
        box.append(np.r_[copied, random_box])
    image, label, box = np.concatenate(image), np.concatenate(label), np.concatenate(box)
    scores = rng.random(len(image)).astype(np.float32).astype(np.float64)
    order = rng.permutation(len(image))
    return (Detections(image[order], label[order], box[order], scores[order]),
            GroundTruth(gt_image, gt_label, gt_box))


def run_ours(dets: Detections, gts: GroundTruth) -> tuple[float, float, float]:
    result = coco_map(dets, gts)
    return result["map"], result["map_50"], result["map_75"]


def run_pycocotools(dets: Detections, gts: GroundTruth) -> tuple[float, float, float]:
    return tuple(float(v) for v in pycocotools_stats(dets, gts)[:3])


def run_faster_coco_eval(dets: Detections, gts: GroundTruth) -> tuple[float, float, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    dataset, results = to_coco(dets, gts)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(dataset)
        evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "bbox", print_function=lambda *a: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return tuple(float(v) for v in evaluator.stats[:3])


def torchmetrics_runner(**options):
    def run(dets: Detections, gts: GroundTruth) -> tuple[float, float, float]:
        import torch
        from torchmetrics.detection import MeanAveragePrecision

        preds, targets = [], []
        for image in np.union1d(dets.image_ids, gts.image_ids):
            d, g = dets.image_ids == image, gts.image_ids == image
            preds.append({"boxes": torch.as_tensor(dets.boxes[d], dtype=torch.float32),
                          "scores": torch.as_tensor(dets.scores[d], dtype=torch.float32),
                          "labels": torch.as_tensor(dets.labels[d])})
            targets.append({"boxes": torch.as_tensor(gts.boxes[g], dtype=torch.float32),
                            "labels": torch.as_tensor(gts.labels[g])})
        metric = MeanAveragePrecision(iou_type="bbox", **options)
        metric.warn_on_many_detections = False  # > 100 per image is the point; maxDets is per image and class
        with contextlib.redirect_stdout(io.StringIO()):
            metric.update(preds, targets)
            result = metric.compute()
        return float(result["map"]), float(result["map_50"]), float(result["map_75"])
    return run


def torchmetrics_supports_faster_coco_eval() -> bool:
    try:
        from torchmetrics.detection import MeanAveragePrecision

        MeanAveragePrecision(iou_type="bbox", backend="faster_coco_eval")
    except (ValueError, ModuleNotFoundError, TypeError):
        return False
    return True


def timed(run, dets: Detections, gts: GroundTruth, repeats: int) -> tuple[list[float], tuple[float, float, float]]:
    seconds, values = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        values = run(dets, gts)
        seconds.append(time.perf_counter() - start)
    return seconds, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=5000, help="detections per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "detection_ap.json")
    args = parser.parse_args()

    dets, gts = synthetic(args.images, args.classes, args.per_class, args.seed)
    evaluators = {
        "d2lflow.coco_map": run_ours,
        "pycocotools": run_pycocotools,
        "faster_coco_eval": run_faster_coco_eval,
        "torchmetrics (pycocotools backend)": torchmetrics_runner(),
        # the same with pycocotools' float64 thresholds: isolates the float32-threshold difference
        "torchmetrics (pycocotools backend, float64 thresholds)": torchmetrics_runner(
            iou_thresholds=COCO_IOU_THRESHOLDS.tolist(), rec_thresholds=COCO_RECALL_THRESHOLDS.tolist()),
    }
    if torchmetrics_supports_faster_coco_eval():
        evaluators["torchmetrics (faster_coco_eval backend)"] = torchmetrics_runner(backend="faster_coco_eval")
    results = {}
    for name, run in evaluators.items():
        seconds, values = timed(run, dets, gts, args.repeats)
        results[name] = {"seconds_median": statistics.median(seconds), "seconds": seconds,
                         "map": values[0], "map_50": values[1], "map_75": values[2]}
        print(f"{name:58s} {statistics.median(seconds):7.3f} s  map {values[0]:.6f}", file=sys.stderr)
    ours = results["d2lflow.coco_map"]
    reference = results["pycocotools"]
    for entry in results.values():
        entry["max_abs_diff_vs_ours"] = max(abs(entry[k] - ours[k]) for k in ("map", "map_50", "map_75"))
        entry["speedup_vs_pycocotools"] = reference["seconds_median"] / entry["seconds_median"]
    voc_seconds, voc = timed(lambda d, g: voc_ap(d, g)["map"], dets, gts, args.repeats)
    to_coco_seconds, _ = timed(lambda d, g: to_coco(d, g), dets, gts, args.repeats)
    report = {
        "machine": machine(),
        "data": {"images": args.images, "classes": args.classes, "detections": len(dets),
                 "ground_truth": len(gts), "seed": args.seed, "repeats": args.repeats},
        "coco_map": results,
        "summary": {
            # torchmetrics returns float32 values: ~1e-8 apart even with float64 thresholds
            "max_abs_diff_vs_ours": {name: entry["max_abs_diff_vs_ours"] for name, entry in results.items()},
            "seconds_median": {name: round(entry["seconds_median"], 4) for name, entry in results.items()},
            "speedup_vs_pycocotools": {name: round(entry["speedup_vs_pycocotools"], 2)
                                       for name, entry in results.items()},
            "to_coco_seconds_median (inside the pycocotools / faster_coco_eval times)":
                round(statistics.median(to_coco_seconds), 4),
            "voc_ap_voc10_seconds_median": round(statistics.median(voc_seconds), 4),
            "voc_ap_voc10_map": voc,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
