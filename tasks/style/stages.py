"""The style stages as the CLI, DVC and Prefect run them: a content and a style image → the book's
image optimisation (d2l 14.12) and a feed-forward style network → losses against two baselines →
the network registered in MLflow as `style-<name>`."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from models.style import TransformNet, denormalize
from tasks import kit, tracking
from tasks.acquire import Staging
from tasks.atomic import atomic_path, read_json, write_json, write_text
from tasks.errors import D2lflowError
from tasks.params import Params
from tasks.progress import EpochProgress
from tasks.runtime import figure_png, seed_everything, select_device
from tasks.style import data as style_data
from tasks.style import images as style_images
from tasks.style import transfer as st

log = logging.getLogger(__name__)

PIPELINE = "style"
LOSSES = ("content_loss", "style_loss", "tv_loss", "total_loss")


def acquire(params: Params, staging: Staging | None = None) -> dict[str, Any]:
    """Content and style images plus the feed-forward content set into `style.data.dir`."""
    return style_data.acquire(params, staging)


def _paths(params: Params) -> dict[str, Path]:
    cfg = params.style
    pre, train_dir, eval_dir = (params.path(d) for d in (cfg.preprocess.out_dir, cfg.train.out_dir,
                                                         cfg.evaluate.out_dir))
    return {"images": pre / "images.npz", "content_set": pre / "content_set.npz", "stats": pre / "stats.json",
            "result": train_dir / "result.png", "history": train_dir / "history.csv",
            "ff_weights": train_dir / "feedforward.pt", "ff_history": train_dir / "feedforward_history.csv",
            "train_metrics": train_dir / "metrics.json", "run": train_dir / "run.json",
            "metrics": eval_dir / "metrics.json", "losses": eval_dir / "losses.csv",
            "figure": eval_dir / "side_by_side.png", "heldout_figure": eval_dir / "feedforward.png"}


def preprocess(params: Params) -> dict[str, Any]:
    """The book's resize of both images to `image_shape` (uint8, normalised when used), and the content set
    resized to `content_set_shape`, its last `heldout_images` images held out."""
    cfg = params.style.preprocess
    data_dir = params.path(params.style.data.dir)
    manifest = style_images.read_manifest(data_dir)
    content = st.resize(style_images.read_rgb(data_dir / manifest["content"]), cfg.image_shape)
    style = st.resize(style_images.read_rgb(data_dir / manifest["style"]), cfg.image_shape)
    files = style_images.content_set_files(data_dir)
    if len(files) <= cfg.heldout_images:
        raise D2lflowError(f"{data_dir / 'content_set'}: {len(files)} content-set images, but "
                           f"style.preprocess.heldout_images is {cfg.heldout_images}; at least one must remain "
                           "to train on: lower heldout_images or give more images")
    images = np.stack([st.resize(style_images.read_rgb(f), cfg.content_set_shape) for f in files])
    split = len(files) - cfg.heldout_images
    out = _paths(params)
    for path, arrays in ((out["images"], {"content": content, "style": style}),
                         (out["content_set"], {"train": images[:split], "heldout": images[split:]})):
        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            np.savez(handle, **arrays)
    stats = {"image_shape": list(cfg.image_shape), "content_set_shape": list(cfg.content_set_shape),
             "train_images": split, "heldout_images": cfg.heldout_images, "style_name": manifest["style_name"],
             "source": manifest.get("source"), "content_set_source": manifest.get("content_set_source")}
    write_json(out["stats"], stats)
    return stats


def _load_images(params: Params) -> dict[str, np.ndarray]:
    out = _paths(params)
    with np.load(out["images"]) as images, np.load(out["content_set"]) as content_set:
        return {"content": images["content"], "style": images["style"], "train": content_set["train"],
                "heldout": content_set["heldout"]}


def _features_note(features: str) -> None:
    if features == "random":
        log.warning("%s", st.RANDOM_FEATURES_NOTE)


def _csv(rows: list[dict[str, float]], keys: tuple[str, ...]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(keys)
    for row in rows:
        writer.writerow([row[k] if isinstance(row[k], int) else f"{row[k]:.8g}" for k in keys])
    return text.getvalue()


def _prepare(job: kit.TrainJob) -> dict[str, Any]:
    params, cfg, device = job.params, job.params.style.train, job.device
    _features_note(cfg.features)
    trunk = st.build_trunk(cfg.features, params.seed).to(device)
    images = _load_images(params)
    content, style = st.to_tensor(images["content"]).to(device), st.to_tensor(images["style"]).to(device)
    return {"trunk": trunk, "images": images, "content": content, "style": style,
            "target": st.targets(trunk, content, style)}


def _fit(job: kit.TrainJob) -> kit.FitResult:
    """The book's optimisation of the synthesized image (per-epoch losses as MLflow metrics, the image
    every `log_image_every` epochs), then the feed-forward network on the content set. Neither resumes:
    the image optimisation is minutes, and the network's steps are few."""
    params, cfg, device, data = job.params, job.params.style.train, job.device, job.data
    mlflow.set_tags({f"{tracking.TAG}style.features": cfg.features,
                     f"{tracking.TAG}style.style_name": read_json(_paths(params)["stats"])["style_name"]})
    if cfg.features == "random":
        mlflow.set_tag(f"{tracking.TAG}style.features_note", st.RANDOM_FEATURES_NOTE)
    started = time.perf_counter()
    progress = EpochProgress(f"{PIPELINE}_train", cfg.epochs, 0)

    def on_epoch(epoch: int, record: dict[str, float], x: torch.Tensor) -> None:
        job.on_epoch(record)
        if epoch % max(cfg.epochs // 10, 1) == 0 or epoch == cfg.epochs:  # a tenth of the epochs each
            progress.epoch(epoch, record["total_loss"], record["iterations_per_s"], "it/s",
                           style_loss=record["style_loss"])
        if epoch % cfg.log_image_every == 0 or epoch == cfg.epochs:
            mlflow.log_image(st.to_uint8(denormalize(x))[0], f"synthesis/epoch_{epoch:04d}.png")

    data["result"], history = st.synthesize(data["trunk"], data["content"], data["target"], cfg, on_epoch=on_epoch)
    data["optimise_seconds"] = time.perf_counter() - started

    ff = cfg.feedforward
    torch.manual_seed(params.seed)
    net = TransformNet(ff.base, ff.n_residual).to(device)
    started = time.perf_counter()

    def on_step(step: int, record: dict[str, float]) -> None:
        tracking.log_metrics({f"feedforward_train_{k}": record[k] for k in LOSSES}, step=step)

    data["ff_history"] = st.train_transform_net(net, data["trunk"], st.to_tensor(data["images"]["train"]).to(device),
                                                data["style"], ff, cfg.weights, params.seed, on_step=on_step)
    data["ff_seconds"] = time.perf_counter() - started
    log.info("style feed-forward network: %d steps in %.1f s, total loss %.4g → %.4g", ff.steps, data["ff_seconds"],
             data["ff_history"][0]["total_loss"], data["ff_history"][-1]["total_loss"])
    return kit.FitResult(net, history, models={"feedforward": net})


def _summary(job: kit.TrainJob, result: kit.FitResult) -> dict[str, Any]:
    history, data = result.history, job.data
    return {"final_total_loss": history[-1]["total_loss"], "final_style_loss": history[-1]["style_loss"],
            "first_style_loss": history[0]["style_loss"], "epochs": len(history),
            "iterations_per_s": len(history) / data["optimise_seconds"], "optimise_seconds": data["optimise_seconds"],
            "feedforward_final_total_loss": data["ff_history"][-1]["total_loss"],
            "feedforward_train_seconds": data["ff_seconds"], "train_images": len(data["images"]["train"])}


def _write_outputs(job: kit.TrainJob, result: kit.FitResult) -> list[Path]:
    """result.png (the synthesized image, also in the run) and the feed-forward network's loss history."""
    from PIL import Image

    out = _paths(job.params)
    with atomic_path(out["result"]) as tmp:
        Image.fromarray(st.to_uint8(job.data["result"])[0]).save(tmp, format="PNG")
    mlflow.log_artifact(str(out["result"]), "synthesis")
    write_text(out["ff_history"], _csv(job.data["ff_history"], ("step", *LOSSES)))
    return [out["ff_history"]]


TRAIN = kit.TrainSpec(
    pipeline=PIPELINE, distributed=False, validation=False,
    data_dir=lambda params: params.path(params.style.data.dir),
    fingerprint_config=lambda params: (params.style.train.model_dump(exclude={"out_dir", "log_image_every"}),
                                       params.style.preprocess.model_dump(exclude={"out_dir"})),
    code=(st, TransformNet),
    prepare=_prepare, fit=_fit, summary=_summary,
    epoch_metrics=lambda record: {k: record[k] for k in (*LOSSES, "iterations_per_s")},
    logged_per_epoch=("iterations_per_s",),
    history={"epoch": "", **{k: ".8g" for k in LOSSES}, "iterations_per_s": ".8g"},
    weights=lambda result: result.models,
    outputs=_write_outputs,
)


def train(params: Params) -> dict[str, Any]:
    """The style image's optimisation and the feed-forward network, through the kit (tasks/kit.py: the
    tracking preflight, the MLflow run and lineage, the weights, history and metrics written atomically)."""
    return kit.train(TRAIN, params)


def load_net(params: Params, device: torch.device) -> TransformNet:
    ff = params.style.train.feedforward
    net = TransformNet(ff.base, ff.n_residual)
    net.load_state_dict(torch.load(_paths(params)["ff_weights"], map_location="cpu", weights_only=True))
    return net.to(device).eval()


def side_by_side(panels: list[tuple[str, np.ndarray]], rows: int = 1) -> bytes:
    """Images in a grid with titles (content | style | result, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = -(-len(panels) // rows)
    h, w = panels[0][1].shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows * h / w + 0.4), squeeze=False)
    for ax, (title, image) in zip(axes.flat, panels):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    return figure_png(fig)


def evaluate(params: Params) -> dict[str, Any]:
    """Losses of the result and of two baselines (the content image; the content image colour-matched to
    the style), the side-by-side figure; the feed-forward network on the held-out content images against
    per-image optimisation of each, with ms per image for both."""
    cfg = params.style
    out = _paths(params)
    device = select_device(params.device)
    seed_everything(params.seed)
    _features_note(cfg.train.features)
    trunk = st.build_trunk(cfg.train.features, params.seed).to(device)
    images = _load_images(params)
    content, style = st.to_tensor(images["content"]).to(device), st.to_tensor(images["style"]).to(device)
    result_uint8 = style_images.read_rgb(out["result"])
    result = st.to_tensor(result_uint8).to(device)
    matched = st.color_match(content, style)
    target = st.targets(trunk, content, style)
    weights = cfg.train.weights
    rows = {"result": st.image_losses(trunk, result, target, weights),
            "content_image": st.image_losses(trunk, content, target, weights),
            "color_matched": st.image_losses(trunk, matched, target, weights)}

    net = load_net(params, device)
    heldout = st.to_tensor(images["heldout"]).to(device)
    ff_rows, opt_rows, ff_ms, opt_ms, examples = [], [], [], [], []
    with torch.inference_mode():
        net(heldout[:1])  # warm-up: the first call allocates
    for i in range(len(heldout)):
        image = heldout[i: i + 1]
        image_target = st.targets(trunk, image, st.style_at(style, image.shape[-2:]))
        started = time.perf_counter()
        with torch.inference_mode():
            stylised = net(image)
        ff_ms.append((time.perf_counter() - started) * 1000)
        stylised = st.to_tensor(st.to_uint8(stylised)).to(device)  # as the registered model delivers it
        ff_rows.append(st.image_losses(trunk, stylised, image_target, weights))
        started = time.perf_counter()
        optimised, _ = st.synthesize(trunk, image, image_target, cfg.train, epochs=cfg.evaluate.optimise_epochs)
        opt_ms.append((time.perf_counter() - started) * 1000)
        opt_rows.append(st.image_losses(trunk, st.to_tensor(st.to_uint8(optimised)).to(device), image_target, weights))
        if i < 3:
            examples += [(f"held-out {i}", images["heldout"][i]), ("feed-forward", st.to_uint8(stylised)[0]),
                         (f"optimised ({cfg.evaluate.optimise_epochs} epochs)", st.to_uint8(optimised)[0])]
    rows["feedforward"] = {k: float(np.mean([r[k] for r in ff_rows])) for k in LOSSES}
    rows["heldout_optimised"] = {k: float(np.mean([r[k] for r in opt_rows])) for k in LOSSES}

    metrics: dict[str, Any] = {f"{name}_{k}": v for name, losses in rows.items() for k, v in losses.items()}
    metrics.update({"feedforward_ms_per_image": float(np.median(ff_ms)),
                    "optimisation_ms_per_image": float(np.median(opt_ms)),
                    "heldout_images": len(heldout),
                    "style_loss_vs_color_matched": rows["result"]["style_loss"] / max(
                        rows["color_matched"]["style_loss"], 1e-30),
                    "features_random": cfg.train.features == "random"})
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", *LOSSES])
    for name, losses in rows.items():
        writer.writerow([name, *(f"{losses[k]:.8g}" for k in LOSSES)])
    write_text(out["losses"], table.getvalue())
    with atomic_path(out["figure"]) as tmp:
        tmp.write_bytes(side_by_side([("content", images["content"]), ("style", images["style"]),
                                      ("result", result_uint8), ("colour-matched baseline", st.to_uint8(matched)[0])]))
    with atomic_path(out["heldout_figure"]) as tmp:
        tmp.write_bytes(side_by_side(examples, rows=len(examples) // 3))
    write_json(out["metrics"], metrics)
    with tracking.reopened_run(PIPELINE, params, out["run"]):
        tracking.log_metrics(metrics)
        for key in ("losses", "figure", "heldout_figure"):
            mlflow.log_artifact(str(out[key]), "evaluation")
    log.info("style losses (weighted):\n%s", table.getvalue().rstrip())
    return metrics


def model_name(params: Params) -> str:
    """`style.register.model_name` with `{style}` replaced by the style image's name (style-autumn-oak, ...)."""
    name = read_json(_paths(params)["stats"])["style_name"]
    return params.style.register.model_name.replace("{style}", name)


def register(params: Params) -> dict[str, Any]:
    """Log the feed-forward network (pyfunc: uint8 images (N,H,W,3) or (H,W,3) → stylised uint8 of the same
    shape) and register it as `style-<name>`."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from tasks.style.serving import StyleTransformer

    cfg = params.style
    out = _paths(params)
    metrics = read_json(out["metrics"])
    config = params.path(cfg.register.out_dir) / "serving.json"
    ff = cfg.train.feedforward
    write_json(config, {"base": ff.base, "n_residual": ff.n_residual, "features": cfg.train.features,
                        "style_name": read_json(out["stats"])["style_name"]})
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]))
    example = _load_images(params)["heldout"][:1, :32, :48].copy()
    register_cfg = cfg.register.model_copy(update={"model_name": model_name(params)})
    return tracking.log_and_register(PIPELINE, params, register_cfg, out["run"], metrics, StyleTransformer(),
                                     {"weights": str(out["ff_weights"]), "config": str(config)}, signature, example)


STAGES = {"acquire": acquire, "preprocess": preprocess, "train": train, "evaluate": evaluate, "register": register}
