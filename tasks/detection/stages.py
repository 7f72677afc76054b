"""The detection stages as the CLI, DVC and Prefect run them (VOC2012 boxes → Faster R-CNN → MLflow)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch.utils.data import DataLoader

from models.detection import build_detector, build_from_config
from tasks import kit, tracking
from tasks.acquire import Staging, check_voc_lists
from tasks.atomic import atomic_path, write_json
from tasks.detection import train as tr
from tasks.detection.ap import Detections, GroundTruth, coco_map, voc_ap
from tasks.detection.data import DetectionDataset, collate
from tasks.detection.data import preprocess as preprocess_boxes
from tasks.detection.transforms import TrainTransform
from tasks.errors import DataError
from tasks.params import Params
from tasks.runtime import figure_png, select_device
from tasks.voc import VOC_CLASSES

log = logging.getLogger(__name__)
PIPELINE = "detection"


def acquire(params: Params, staging: Staging | None = None) -> dict[str, Any]:
    """Nothing of its own: the VOC tree (Annotations, ImageSets/Main) comes with the segmentation data.
    It checks that tree (as staged, when acquired together): every id of ImageSets/Main/{train,val}.txt
    has its JPEG and annotation."""
    data_dir = params.path(params.detection.preprocess.data_dir)
    if staging is None:
        check_voc_detection(data_dir)
    else:
        staging.defer(lambda: _check_staged(staging.view(data_dir), data_dir))
    return {"dir": str(data_dir), "source": "the segmentation VOC tree"}


def check_voc_detection(tree: Path) -> None:
    check_voc_lists(tree, "Main", ("JPEGImages/{}.jpg", "Annotations/{}.xml"))


def _check_staged(tree: Path, data_dir: Path) -> None:
    try:
        check_voc_detection(tree)
    except DataError as error:
        reason = str(error).replace(f"{tree}{os.sep}", "").replace(str(tree), ".")
        raise DataError(f"the VOC tree acquired for {data_dir} is refused for detection ({data_dir} is left as "
                        f"it was): {reason}") from error


def preprocess(params: Params) -> dict[str, Any]:
    cfg = params.detection.preprocess
    return preprocess_boxes(cfg, params.path(cfg.data_dir), params.path(cfg.out_dir))


def _outputs(params: Params) -> dict[str, Path]:
    trained = kit.train_outputs(params, PIPELINE)
    eval_dir = params.path(params.detection.evaluate.out_dir)
    return {**trained, "train_metrics": trained["metrics"],
            "metrics": eval_dir / "metrics.json", "per_class": eval_dir / "per_class_ap.json",
            "pr": eval_dir / "pr_curves", "figure": eval_dir / "predictions.png"}


def _model(params: Params, weights: str) -> torch.nn.Module:
    return build_from_config(params.detection.train.model_dump(), len(VOC_CLASSES), weights)


def _prepare(job: kit.TrainJob) -> dict[str, Any]:
    cfg, params = job.cfg, job.params
    pre_dir = params.path(cfg.preprocess.out_dir)
    transform = TrainTransform(flip_prob=cfg.train.flip_prob,
                               crop_size=tuple(cfg.train.crop_size) if cfg.train.crop_size else None)
    dataset = DetectionDataset(pre_dir / "train", params.path(cfg.preprocess.data_dir), transform, params.seed)
    return {"dataset": dataset, "model": _model(params, cfg.train.weights)}


def _fit(job: kit.TrainJob) -> tr.TrainResult:
    cfg, params, device = job.cfg, job.params, job.device
    val_set = DetectionDataset(params.path(cfg.preprocess.out_dir) / "val", params.path(cfg.preprocess.data_dir))

    def validate(model: torch.nn.Module, epoch: int) -> dict:
        """VOC mAP@0.5 on val with the evaluate stage's thresholds, every `eval_every` epochs and
        after the last (the thresholds act only on predictions, never on the training losses)."""
        if epoch % cfg.train.eval_every and epoch != cfg.train.epochs:
            return {}
        heads = model.roi_heads
        heads.score_thresh, heads.nms_thresh = cfg.evaluate.score_thresh, cfg.evaluate.nms_thresh
        heads.detections_per_img = cfg.evaluate.detections_per_image
        model.eval()
        dets, gts, _ = predict(model, val_set, device, cfg.evaluate.batch_size)
        return {"val_map_50": voc_ap(dets, gts, 0.5, "voc10", list(range(1, len(VOC_CLASSES))))["map"]}
    return tr.train(job.data["model"], job.data["dataset"], cfg.train, params.seed, device, job.checkpoint,
                    job.fingerprint, state=job.state, run_id=job.run_id, on_epoch=job.on_epoch, ctx=job.ctx,
                    validate=validate)


def _summary(job: kit.TrainJob, result: tr.TrainResult) -> dict[str, Any]:
    history = result.history
    return {"final_epoch_loss": history[-1]["loss"], **{k: history[-1][k] for k in tr.LOSSES},
            "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
            "epochs": len(history), "resumed_from_epoch": result.resumed_from_epoch,
            "train_images": len(job.data["dataset"])}


TRAIN = kit.TrainSpec(
    pipeline=PIPELINE,
    data_dir=lambda params: params.path(params.detection.preprocess.data_dir),
    fingerprint_config=lambda params: (
        params.detection.train.model_dump(exclude={"out_dir", "checkpoint_dir", "num_workers", "eval_every"}),),
    code=(tr, build_detector, kit.epoch_loop),  # the loop itself lives in the kit
    prepare=_prepare,
    fit=_fit,
    summary=_summary,
    logged_per_epoch=("images_per_s", *tr.LOSSES),
    history={"epoch": "", "loss": ".6f", **{k: ".6f" for k in tr.LOSSES}, "images_per_s": ".6f"},
    skipped_samples=True,
)


def train(params: Params) -> dict[str, Any]:
    """Train Faster R-CNN (resuming from a matching checkpoint); write weights, history, train metrics.
    With `distributed.*` asking for several processes it runs under torchrun; rank 0 alone logs to
    MLflow and writes outputs and checkpoints (tasks/kit.py)."""
    return kit.train(TRAIN, params)


def load_model(params: Params, device: torch.device) -> torch.nn.Module:
    """The trained detector with the evaluation thresholds from params."""
    cfg = params.detection.evaluate
    model = _model(params, "none")
    model.load_state_dict(torch.load(_outputs(params)["model"], map_location="cpu", weights_only=True))
    model.roi_heads.score_thresh = cfg.score_thresh
    model.roi_heads.nms_thresh = cfg.nms_thresh
    model.roi_heads.detections_per_img = cfg.detections_per_image
    return model.to(device).eval()


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: DetectionDataset, device: torch.device,
            batch_size: int = 1) -> tuple[Detections, GroundTruth, list]:
    """Predictions and ground truth of a split as AP inputs, plus per image (image, predicted, true)."""
    det_rows: list[tuple] = []
    gt_rows: list[tuple] = []
    per_image = []
    for images, targets in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        outputs = model([image.to(device) for image in images])
        for image, output, target in zip(images, outputs, targets):
            index = int(target["image_id"])
            boxes, labels, scores = (output[k].cpu().numpy() for k in ("boxes", "labels", "scores"))
            det_rows += [(index, int(lab), box, float(s)) for box, lab, s in zip(boxes, labels, scores)]
            gt_rows += [(index, int(lab), box.numpy(), bool(d))
                        for box, lab, d in zip(target["boxes"], target["labels"], target["difficult"])]
            per_image.append((image, (boxes, labels, scores), target))
    dets = Detections(np.array([r[0] for r in det_rows], dtype=np.int64), np.array([r[1] for r in det_rows], np.int64),
                      np.array([r[2] for r in det_rows]).reshape(-1, 4), np.array([r[3] for r in det_rows]))
    gts = GroundTruth(np.array([r[0] for r in gt_rows], dtype=np.int64), np.array([r[1] for r in gt_rows], np.int64),
                      np.array([r[2] for r in gt_rows]).reshape(-1, 4), np.array([r[3] for r in gt_rows], bool))
    return dets, gts, per_image


def predictions_figure(per_image: list, score_thresh: float, count: int) -> bytes:
    """A few val images: true boxes (dashed white) and predicted boxes above `score_thresh` (coloured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    shown = per_image[:count]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.4), squeeze=False)
    for ax, (image, (boxes, labels, scores), target) in zip(axes[0], shown):
        ax.imshow(image.permute(1, 2, 0).numpy())
        for box in target["boxes"].numpy():
            ax.add_patch(patches.Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec="white", ls="--", lw=1.5))
        for box, label, score in zip(boxes, labels, scores):
            if score >= score_thresh:
                ax.add_patch(patches.Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec="red", lw=1.5))
                ax.text(box[0], box[1], f"{VOC_CLASSES[label]} {score:.2f}", color="red", fontsize=7)
        ax.axis("off")
    return figure_png(fig)


def evaluate(params: Params) -> dict[str, Any]:
    """VOC AP at IoU 0.5 (all-point and 11-point; difficult objects neither TP nor FP), COCO mAP@[.5:.95],
    per-class AP, mean IoU of true-positive matches; PR curves as DVC plots; a figure to MLflow."""
    cfg = params.detection
    device = select_device(params.device)
    model = load_model(params, device)
    dataset = DetectionDataset(params.path(cfg.preprocess.out_dir) / "val", params.path(cfg.preprocess.data_dir))
    dets, gts, per_image = predict(model, dataset, device, cfg.evaluate.batch_size)
    labels = list(range(1, len(VOC_CLASSES)))
    voc10 = voc_ap(dets, gts, 0.5, "voc10", labels)
    voc07 = voc_ap(dets, gts, 0.5, "voc07", labels)
    coco = coco_map(dets, gts, cfg.evaluate.detections_per_image, labels)
    metrics = {"map_50": voc10["map"], "map_50_voc07": voc07["map"], "coco_map": coco["map"],
               "coco_map_50": coco["map_50"], "coco_map_75": coco["map_75"],
               "mean_iou_of_matches": voc10["mean_iou_of_matches"], "val_images": len(dataset),
               "detections": len(dets.scores)}
    metrics = {k: round(float(v), 6) if isinstance(v, (float, np.floating)) else v for k, v in metrics.items()}
    out = _outputs(params)
    per_class = {VOC_CLASSES[c]: {"ap_50": voc10["per_class"][c], "ap_50_voc07": voc07["per_class"][c],
                                  "coco_ap": coco["per_class"][c]} for c in labels}
    with atomic_path(out["pr"]) as tmp:
        tmp.mkdir()
        for c in labels:
            if voc10["per_class"][c] is not None:
                rows = zip(voc10["recall"][c], voc10["precision"][c])
                (tmp / f"{VOC_CLASSES[c].replace('/', '_')}.csv").write_text(
                    "recall,precision\n" + "".join(f"{r:.6f},{p:.6f}\n" for r, p in rows))
    with atomic_path(out["figure"]) as tmp:
        tmp.write_bytes(predictions_figure(per_image, cfg.evaluate.figure_score_thresh, cfg.evaluate.figure_images))
    write_json(out["per_class"], per_class)
    write_json(out["metrics"], metrics)
    with tracking.reopened_run(PIPELINE, params, out["run"]):
        tracking.log_metrics(metrics)
        mlflow.log_dict(per_class, "evaluation/per_class_ap.json")
        mlflow.log_artifact(str(out["figure"]), "evaluation")
    return metrics


def register(params: Params) -> dict[str, Any]:
    """Log the detector (pyfunc: uint8 images (N,H,W,3) → one row per box) and register it."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from tasks.detection.serving import COLUMNS, FasterRcnnDetector

    cfg = params.detection
    types = {"image": "long", "label": "long", "name": "string"}
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([ColSpec(types.get(c, "double"), c) for c in COLUMNS]))
    image = dataset_image(params)
    return kit.register(params, PIPELINE, FasterRcnnDetector(), signature, image[None],
                        serving={"train": cfg.train.model_dump(mode="json"),
                                 "evaluate": cfg.evaluate.model_dump(mode="json"), "classes": list(VOC_CLASSES)})


def dataset_image(params: Params) -> np.ndarray:
    cfg = params.detection.preprocess
    dataset = DetectionDataset(params.path(cfg.out_dir) / "val", params.path(cfg.data_dir))
    return (dataset[0][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


STAGES = {"acquire": acquire, "preprocess": preprocess, "train": train, "evaluate": evaluate, "register": register}
