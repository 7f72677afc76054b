"""The classification stages as the CLI, DVC and Prefect run them (Fashion-MNIST → LeNet → MLflow)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from models.lenet import build_lenet
from tasks import kit, tracking
from tasks.acquire import Staging
from tasks.atomic import atomic_path, write_json, write_text
from tasks.classification import train as tr
from tasks.classification.data import FashionMnist, load_split
from tasks.classification.data import preprocess as preprocess_idx
from tasks.classification.idx import CLASS_NAMES, NUM_CLASSES
from tasks.classification.metrics import classification_scores
from tasks.classification.source import stage as stage_data
from tasks.metrics import chance_warning, confusion_matrix
from tasks.params import Params
from tasks.runtime import figure_png, select_device
from tasks.synthetic.fashion_mnist import write_synthetic_fashion_mnist

log = logging.getLogger(__name__)

PIPELINE = "classification"


def acquire(params: Params, staging: Staging | None = None) -> dict[str, Any]:
    """The four Fashion-MNIST `.gz` files into `classification.data.dir` from the published mirror
    (MD5-checked), a local folder or the generator; both splits must decode before data/ changes."""
    cfg = params.classification.data
    synthetic = cfg.synthetic

    def generate(path: Path) -> Path:
        return write_synthetic_fashion_mnist(path, synthetic.train_images, synthetic.test_images, synthetic.seed,
                                             synthetic.noise)

    own = staging is None
    staging = Staging(params.root()) if own else staging
    try:
        target = stage_data(params, staging, generate)
        if own:
            staging.commit()
    finally:
        if own:
            staging.close()
    return {"dir": str(target), "source": cfg.source}


def preprocess(params: Params) -> dict[str, Any]:
    cfg = params.classification
    return preprocess_idx(params.path(cfg.data.dir), params.path(cfg.preprocess.out_dir), cfg.preprocess, params.seed)


def _outputs(params: Params) -> dict[str, Path]:
    train_dir = params.path(params.classification.train.out_dir)
    eval_dir = params.path(params.classification.evaluate.out_dir)
    return {"model": train_dir / "model.pt", "history": train_dir / "history.csv",
            "train_metrics": train_dir / "metrics.json", "run": train_dir / "run.json",
            "validation": train_dir / "validation.csv",
            "metrics": eval_dir / "metrics.json", "per_class": eval_dir / "per_class_accuracy.json",
            "confusion": eval_dir / "confusion.csv", "confusion_figure": eval_dir / "confusion.png",
            "misclassified": eval_dir / "misclassified.png"}


def _prepare(job: kit.TrainJob) -> dict[str, Any]:
    pre_dir = job.params.path(job.cfg.preprocess.out_dir)
    return {"dataset": FashionMnist(pre_dir, "train"),
            "val": tr.eval_loader(FashionMnist(pre_dir, "val"), job.cfg.train.eval_batch_size),
            "model": build_lenet(job.cfg.train.variant, NUM_CLASSES)}


def _fit(job: kit.TrainJob) -> kit.FitResult:
    val_loader = job.data["val"]

    def validate(model: torch.nn.Module, epoch: int) -> dict:
        """Validation loss and accuracy after every epoch (empty val split: none)."""
        if len(val_loader.dataset) == 0:
            return {}
        scores = tr.eval_epoch(model, val_loader, job.device)
        return {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
    return tr.train(job.data["model"], job.data["dataset"], job.cfg.train, job.params.seed, job.device,
                    job.checkpoint, job.fingerprint, state=job.state, run_id=job.run_id, on_epoch=job.on_epoch,
                    ctx=job.ctx, validate=validate)


def _summary(job: kit.TrainJob, result: kit.FitResult) -> dict[str, Any]:
    history = result.history
    metrics = {"final_epoch_loss": history[-1]["loss"], "train_accuracy": history[-1]["train_accuracy"],
               "images_per_s": sum(h["examples_per_s"] for h in history) / len(history),
               "epochs": len(history), "resumed_from_epoch": result.resumed_from_epoch,
               "train_images": len(job.data["dataset"])}
    if "val_accuracy" in history[-1]:
        metrics["val_accuracy"] = history[-1]["val_accuracy"]
    return metrics


TRAIN = kit.TrainSpec(
    pipeline=PIPELINE,
    data_dir=lambda params: params.path(params.classification.data.dir),
    fingerprint_config=lambda params: (
        params.classification.train.model_dump(exclude={"out_dir", "checkpoint_dir", "num_workers",
                                                        "eval_batch_size"}),
        params.classification.preprocess.model_dump(exclude={"out_dir"})),
    code=(tr, build_lenet, kit.epoch_loop),  # the loop itself lives in the kit
    prepare=_prepare,
    fit=_fit,
    summary=_summary,
    epoch_metrics=lambda record: {"train_loss": record["loss"], "train_accuracy": record["train_accuracy"],
                                  "images_per_s": record["examples_per_s"], "epoch_seconds": record["seconds"],
                                  **{k: v for k, v in record.items() if k.startswith("val_")}},
    logged_per_epoch=("images_per_s", "train_accuracy", "val_accuracy"),
    history={"epoch": "", "loss": ".6f", "train_accuracy": ".6f", "examples_per_s": ".1f", "seconds": ".3f"},
)


def train(params: Params) -> dict[str, Any]:
    """Train LeNet through the kit (tasks/kit.py: resume from a matching checkpoint, DDP under torchrun,
    the MLflow run, weights, history and train metrics written by rank 0)."""
    return kit.train(TRAIN, params)


def load_model(params: Params, device: torch.device) -> torch.nn.Module:
    model = build_lenet(params.classification.train.variant, NUM_CLASSES)
    model.load_state_dict(torch.load(_outputs(params)["model"], map_location="cpu", weights_only=True))
    return model.to(device).eval()


def confusion_figure(confusion: np.ndarray) -> bytes:
    """The confusion matrix as a heat map with the counts written in (rows truth, columns prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(NUM_CLASSES), CLASS_NAMES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(NUM_CLASSES), CLASS_NAMES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = confusion.max() / 2 if confusion.size else 0
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if confusion[i, j] > threshold else "black")
    ax.set_title(f"LeNet on Fashion-MNIST test: accuracy {np.trace(confusion) / max(confusion.sum(), 1):.3f}")
    return figure_png(fig)


def misclassified_figure(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                         keep: int) -> bytes:
    """Up to `keep` misclassified test images, each titled `true → predicted (p)` (the book's
    `show_images` of wrong predictions); a figure saying so when there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(predicted != labels)[:keep]
    if len(wrong) == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no misclassified test image" if keep else "no images (figure_images: 0)",
                ha="center", va="center", fontsize=8)
        ax.axis("off")
        return figure_png(fig)
    columns = min(8, len(wrong))
    rows = -(-len(wrong) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong):
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{CLASS_NAMES[labels[index]]}\n→ {CLASS_NAMES[predicted[index]]} "
                     f"({probabilities[index, predicted[index]]:.2f})", fontsize=7)
    return figure_png(fig)


def evaluate(params: Params) -> dict[str, Any]:
    """Test accuracy (primary), per-class accuracy and the confusion matrix (a DVC plot and an MLflow
    figure), validation accuracy, and a figure of misclassified test images."""
    cfg = params.classification
    device = select_device(params.device)
    model = load_model(params, device)
    pre_dir = params.path(cfg.preprocess.out_dir)
    logits, labels = tr.predict(model, tr.eval_loader(FashionMnist(pre_dir, "test"), cfg.evaluate.batch_size), device)
    probabilities = torch.softmax(logits, dim=1).numpy()
    predicted = logits.argmax(dim=1)
    confusion = confusion_matrix(predicted, labels, NUM_CLASSES).numpy()
    scores = classification_scores(confusion, CLASS_NAMES)
    metrics: dict[str, Any] = {"accuracy": scores["accuracy"], "mean_class_accuracy": scores["mean_class_accuracy"],
                               "test_images": scores["images"]}
    val = FashionMnist(pre_dir, "val")
    if len(val):
        val_scores = tr.eval_epoch(model, tr.eval_loader(val, cfg.evaluate.batch_size), device)
        metrics.update({"val_accuracy": val_scores["accuracy"], "val_loss": val_scores["loss"]})
    metrics["val_images"] = len(val)
    per_class = {"per_class_accuracy": scores["per_class_accuracy"], "per_class_images": scores["per_class_images"]}
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["actual", "predicted"])  # one row per test image: DVC's `confusion` template counts them
    for truth, guess in zip(labels.tolist(), predicted.tolist()):
        writer.writerow([CLASS_NAMES[truth], CLASS_NAMES[guess]])
    out = _outputs(params)
    write_text(out["confusion"], rows.getvalue())
    write_json(out["per_class"], per_class)
    with atomic_path(out["confusion_figure"]) as tmp:
        tmp.write_bytes(confusion_figure(confusion))
    images, _ = load_split(pre_dir, "test")
    with atomic_path(out["misclassified"]) as tmp:
        tmp.write_bytes(misclassified_figure(images, labels.numpy(), predicted.numpy(), probabilities,
                                             cfg.evaluate.figure_images))
    write_json(out["metrics"], metrics)
    warning = chance_warning(metrics["accuracy"], metrics["test_images"], NUM_CLASSES)
    if warning:
        log.warning("%s", warning)
    with tracking.reopened_run(PIPELINE, params, out["run"]):
        tracking.log_metrics(metrics)
        if warning:
            mlflow.set_tag(f"{tracking.TAG}warning", warning)
        mlflow.log_dict(per_class, "evaluation/per_class_accuracy.json")
        mlflow.log_dict({"classes": list(CLASS_NAMES), "matrix": confusion.tolist()}, "evaluation/confusion.json")
        for key in ("confusion", "confusion_figure", "misclassified"):
            mlflow.log_artifact(str(out[key]), "evaluation")
    return metrics


def register(params: Params) -> dict[str, Any]:
    """Log LeNet (pyfunc: uint8 images (N, 28, 28) → class and probabilities) and register it."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from tasks.classification.serving import LenetClassifier

    cfg = params.classification
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 28, 28))]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,), "class"),
                        TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES), "probabilities")]))
    example = load_split(params.path(cfg.preprocess.out_dir), "test")[0][:2].copy()
    return kit.register(params, PIPELINE, LenetClassifier(), signature, example,
                        serving={"variant": cfg.train.variant, "classes": list(CLASS_NAMES)})


STAGES = {"acquire": acquire, "preprocess": preprocess, "train": train, "evaluate": evaluate, "register": register}
