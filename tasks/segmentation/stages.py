"""The segmentation stages as the CLI, DVC and Prefect run them (Pascal VOC2012 → FCN → MLflow)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch.utils.data import DataLoader

from models.fcn import build_fcn
from tasks import kit, tracking
from tasks.acquire import Staging, check_voc_lists
from tasks.acquire import acquire as acquire_data
from tasks.atomic import atomic_path, write_json, write_text
from tasks.metrics import confusion_matrix, segmentation_scores
from tasks.params import Params
from tasks.runtime import figure_png, select_device
from tasks.segmentation import train as tr
from tasks.segmentation.data import SegmentationDataset, load_split, normalize
from tasks.segmentation.data import preprocess as preprocess_voc
from tasks.segmentation.predict import predict_tiled
from tasks.synthetic.voc import write_synthetic_voc
from tasks.voc import VOC_CLASSES, VOC_COLORMAP, VOID, VOID_RGB

log = logging.getLogger(__name__)

PIPELINE = "segmentation"
MARKER = "VOC2012/ImageSets/Segmentation/train.txt"


def acquire(params: Params, staging: Staging | None = None) -> dict[str, Any]:
    """VOCdevkit into `segmentation.data.dir` from the book's mirror, a local tree/tar, or the generator;
    every id of ImageSets/Segmentation/{train,val}.txt must have its JPEG and mask before data/ changes."""
    cfg = params.segmentation.data
    target = acquire_data(cfg, params, MARKER, lambda path: write_synthetic_voc(path, cfg.synthetic),
                          check=check_voc_segmentation, staging=staging)
    return {"dir": str(target), "source": cfg.source}


def check_voc_segmentation(tree: Path) -> None:
    check_voc_lists(tree, "Segmentation", ("JPEGImages/{}.jpg", "SegmentationClass/{}.png"))


def preprocess(params: Params) -> dict[str, Any]:
    cfg = params.segmentation
    return preprocess_voc(params.path(cfg.data.dir), params.path(cfg.preprocess.out_dir), cfg.preprocess)


def _outputs(params: Params) -> dict[str, Path]:
    trained = kit.train_outputs(params, PIPELINE)
    eval_dir = params.path(params.segmentation.evaluate.out_dir)
    return {**trained, "train_metrics": trained["metrics"],
            "metrics": eval_dir / "metrics.json", "per_class": eval_dir / "per_class_iou.json",
            "confusion": eval_dir / "confusion.csv", "figure": eval_dir / "predictions.png"}


def _prepare(job: kit.TrainJob) -> dict[str, Any]:
    cfg = job.cfg
    dataset = SegmentationDataset(job.params.path(cfg.preprocess.out_dir) / "train", tuple(cfg.preprocess.crop_size),
                                  job.params.seed, train=True)
    tr.check_distributed(cfg.train, len(dataset), job.ctx)  # before anything is logged
    return {"dataset": dataset, "model": build_fcn(len(VOC_CLASSES), cfg.train.backbone_weights)}


def _fit(job: kit.TrainJob) -> tr.TrainResult:
    cfg, device = job.cfg, job.device
    pre_dir = job.params.path(cfg.preprocess.out_dir)

    def validate(model: torch.nn.Module, epoch: int) -> dict:
        """Center-crop mIoU and pixel accuracy on val (the evaluate stage's first mode), every
        `eval_every` epochs and after the last."""
        if epoch % cfg.train.eval_every and epoch != cfg.train.epochs:
            return {}
        model.eval()
        _, scores, _ = evaluate_split(model, pre_dir / "val", tuple(cfg.preprocess.crop_size), ["center_crop"],
                                      cfg.evaluate.tile_overlap, cfg.evaluate.batch_size, device)
        return {"val_mean_iou": scores["center_crop"]["mean_iou"],
                "val_pixel_accuracy": scores["center_crop"]["pixel_accuracy"]}
    return tr.train(job.data["model"], job.data["dataset"], cfg.train, job.params.seed, device, job.checkpoint,
                    job.fingerprint, state=job.state, run_id=job.run_id, on_epoch=job.on_epoch, ctx=job.ctx,
                    validate=validate)


def _summary(job: kit.TrainJob, result: tr.TrainResult) -> dict[str, Any]:
    history = result.history
    return {"final_epoch_loss": history[-1]["loss"], "train_pixel_accuracy": history[-1]["train_pixel_accuracy"],
            "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
            "epochs": len(history), "resumed_from_epoch": result.resumed_from_epoch,
            "train_images": len(job.data["dataset"])}


TRAIN = kit.TrainSpec(
    pipeline=PIPELINE,
    data_dir=lambda params: params.path(params.segmentation.data.dir),
    fingerprint_config=lambda params: (
        params.segmentation.train.model_dump(exclude={"out_dir", "checkpoint_dir", "num_workers", "pin_memory",
                                                      "eval_every"}),
        params.segmentation.preprocess.model_dump(exclude={"out_dir"})),
    code=(tr, build_fcn, kit.epoch_loop),  # the loop itself lives in the kit
    prepare=_prepare,
    fit=_fit,
    summary=_summary,
    epoch_metrics=lambda record: {"train_loss": record["loss"], "train_pixel_accuracy": record["train_pixel_accuracy"],
                                  "images_per_s": record["images_per_s"],
                                  **{k: v for k, v in record.items() if k.startswith("val_")}},
    logged_per_epoch=("images_per_s", "train_pixel_accuracy"),
    history={"epoch": "", "loss": ".6f", "train_pixel_accuracy": ".6f", "images_per_s": ".3f"},
    skipped_samples=True,
)


def train(params: Params) -> dict[str, Any]:
    """Train the FCN (resuming from a matching checkpoint); write weights, history and train metrics.
    With `distributed.*` asking for several processes it runs under torchrun; rank 0 alone logs to
    MLflow and writes outputs and checkpoints (tasks/kit.py)."""
    return kit.train(TRAIN, params)


def load_model(params: Params, device: torch.device) -> torch.nn.Module:
    model = build_fcn(len(VOC_CLASSES), "none")
    model.load_state_dict(torch.load(_outputs(params)["model"], map_location="cpu", weights_only=True))
    return model.to(device).eval()


def colorize(label: np.ndarray) -> np.ndarray:
    """Class indices → VOC colours (the book's `label2image`), void in its own colour."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(VOC_COLORMAP)] = VOC_COLORMAP
    palette[VOID] = VOID_RGB
    return palette[label]


@torch.inference_mode()
def evaluate_split(model: torch.nn.Module, folder: Path, crop: tuple[int, int], modes: list[str], overlap: float,
                   batch_size: int, device: torch.device, keep: int = 0) -> tuple[dict, dict, list]:
    """Accumulate one confusion matrix per mode (and for the constant all-background predictor on
    the centre crops); returns (confusions, scores, up to `keep` (image, prediction, truth) triples:
    full images when `tiled` is a mode, else the centre crops)."""
    classes = len(VOC_CLASSES)
    confusions: dict[str, torch.Tensor] = {}
    examples: list = []
    if "center_crop" in modes:
        dataset = SegmentationDataset(folder, crop, seed=0, train=False)
        center = torch.zeros(classes, classes, dtype=torch.int64)
        background = torch.zeros_like(center)
        crop_examples = 0 if "tiled" in modes else keep
        seen = 0
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            predictions = model(images.to(device)).argmax(dim=1).cpu()
            center += confusion_matrix(predictions, labels, classes, VOID)
            background += confusion_matrix(torch.zeros_like(labels), labels, classes, VOID)
            for prediction, label in zip(predictions, labels):
                if len(examples) < crop_examples:
                    top, left = dataset.box(seen)
                    image = dataset.split.image(seen)[top: top + crop[0], left: left + crop[1]]
                    examples.append((np.asarray(image), prediction.numpy().astype(np.uint8),
                                     label.numpy().astype(np.uint8)))
                seen += 1
        confusions["center_crop"], confusions["background"] = center, background
    if "tiled" in modes:
        split = load_split(folder)
        tiled = torch.zeros(classes, classes, dtype=torch.int64)
        for i in range(len(split)):
            image, label = split.image(i), np.asarray(split.label(i))
            prediction = predict_tiled(model, normalize(image), crop, overlap, batch_size).argmax(dim=0)
            tiled += confusion_matrix(prediction, torch.from_numpy(label.astype(np.int64)), classes, VOID)
            if len(examples) < keep:
                examples.append((np.asarray(image), prediction.numpy().astype(np.uint8), label))
        confusions["tiled"] = tiled
    scores = {mode: segmentation_scores(c.numpy(), list(VOC_CLASSES)) for mode, c in confusions.items()}
    return confusions, scores, examples


def predictions_figure(examples: list) -> bytes:
    """image | prediction | ground truth, one row per example (a figure saying so when there are none,
    `figure_images: 0`: dvc.yaml declares the file, so it is always written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not examples:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no example images (segmentation.evaluate.figure_images: 0)", ha="center", va="center",
                fontsize=8)
        ax.axis("off")
        return figure_png(fig)
    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 2.6 * len(examples)), squeeze=False)
    for row, (image, prediction, truth) in zip(axes, examples):
        for ax, picture, title in zip(row, (image, colorize(prediction), colorize(truth)),
                                      ("image", "prediction", "ground truth")):
            ax.imshow(picture)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    return figure_png(fig)


def evaluate(params: Params) -> dict[str, Any]:
    """Pixel accuracy, mean IoU, per-class IoU and confusion matrix on val, centre-crop (the book's
    protocol) and tiled full-image prediction; a figure of a few predictions."""
    cfg = params.segmentation
    device = select_device(params.device)
    model = load_model(params, device)
    crop = tuple(cfg.preprocess.crop_size)
    keep = cfg.evaluate.figure_images
    confusions, scores, examples = evaluate_split(model, params.path(cfg.preprocess.out_dir) / "val", crop,
                                                  cfg.evaluate.modes, cfg.evaluate.tile_overlap,
                                                  cfg.evaluate.batch_size, device, keep)
    metrics: dict[str, Any] = {}
    for mode, prefix in (("center_crop", ""), ("tiled", "tiled_"), ("background", "background_")):
        if mode in scores:
            for key in ("pixel_accuracy", "mean_iou", "mean_class_accuracy", "frequency_weighted_iou"):
                metrics[prefix + key] = scores[mode][key]
    metrics["val_images"] = len(load_split(params.path(cfg.preprocess.out_dir) / "val"))
    primary_mode = cfg.evaluate.modes[0]
    if primary_mode != "center_crop":  # `mean_iou` is always the first configured mode's
        metrics["pixel_accuracy"], metrics["mean_iou"] = metrics["tiled_pixel_accuracy"], metrics["tiled_mean_iou"]
    per_class = {mode: {"per_class_iou": dict(zip(VOC_CLASSES, s["per_class_iou"])),
                        "absent_classes": s["absent_classes"]} for mode, s in scores.items() if mode != "background"}
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["actual", "predicted", "pixels"])
    matrix = confusions[primary_mode].numpy()
    for i, j in zip(*np.nonzero(matrix)):
        writer.writerow([VOC_CLASSES[i], VOC_CLASSES[j], int(matrix[i, j])])
    out = _outputs(params)
    write_text(out["confusion"], rows.getvalue())
    write_json(out["per_class"], per_class)
    with atomic_path(out["figure"]) as tmp:  # declared in dvc.yaml: written for every `modes`
        tmp.write_bytes(predictions_figure(examples))
    write_json(out["metrics"], metrics)
    with tracking.reopened_run(PIPELINE, params, out["run"]):
        tracking.log_metrics(metrics)
        mlflow.log_dict(per_class, "evaluation/per_class_iou.json")
        mlflow.log_artifact(str(out["confusion"]), "evaluation")
        mlflow.log_artifact(str(out["figure"]), "evaluation")
    return metrics


def register(params: Params) -> dict[str, Any]:
    """Log the FCN (pyfunc: uint8 images (N,H,W,3) → class maps (N,H,W)) and register it."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from tasks.segmentation.serving import FcnSegmenter

    cfg = params.segmentation
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))]))
    example = load_split(params.path(cfg.preprocess.out_dir) / "val").image(0)[None, :64, :96].copy()
    return kit.register(params, PIPELINE, FcnSegmenter(), signature, example,
                        serving={"num_classes": len(VOC_CLASSES), "tile": list(cfg.preprocess.crop_size),
                                 "overlap": cfg.evaluate.tile_overlap, "classes": list(VOC_CLASSES)})


STAGES = {"acquire": acquire, "preprocess": preprocess, "train": train, "evaluate": evaluate, "register": register}
