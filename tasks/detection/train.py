"""Faster R-CNN training in the manner of torchvision's `references/detection/engine.py`: SGD with a
linear warm-up in the first epoch, optional AMP and gradient clipping, the four losses logged
separately, a non-finite loss stops the stage with the loss dict; a checkpoint every epoch.

Under DDP (tasks/distributed.py) every rank draws the same shuffled global batches of `batch_size`
images and loads only its share; torchvision's losses are means over the share's sampled anchors and
RoIs, and DDP averages the gradients over the ranks, so with equal shares a step is the single-process
step up to float summation order (from-scratch backbones keep per-rank BatchNorm statistics)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tasks import accel, distributed, kit
from tasks.detection.data import DetectionDataset, collate
from tasks.errors import D2lflowError
from tasks.params import DetectionTrainParams

log = logging.getLogger(__name__)
LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


TrainResult = kit.FitResult  # what `train` returns: .model, .history, .resumed_from_epoch


def epoch_loader(dataset: DetectionDataset, cfg: DetectionTrainParams, seed: int, epoch: int,
                 ctx: distributed.Context) -> DataLoader:
    """The epoch's shuffled batches (this rank's shares under DDP), seeded by (seed, epoch) so a resumed
    run replays exactly the batches the interrupted one would have seen."""
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 7, epoch]).generate_state(1)[0]))
    return distributed.shuffled_loader(dataset, cfg.batch_size, generator, ctx, num_workers=cfg.num_workers,
                                       collate_fn=collate)


def train(model: nn.Module, dataset: DetectionDataset, cfg: DetectionTrainParams, seed: int, device: torch.device,
          checkpoint, run_fingerprint: str, state: dict | None = None, run_id: str = "",
          on_epoch: Callable[[dict], None] | None = None, ctx: distributed.Context | None = None,
          validate: Callable[[nn.Module, int], dict] | None = None) -> kit.FitResult:
    """Train for `cfg.epochs` through the kit's loop (`kit.epoch_loop`), resuming from `state` (a checkpoint
    for the same fingerprint, its GradScaler under "scaler") when given.
    `ctx` (default: one process on `device`): under DDP only rank 0 writes the checkpoint, and every
    rank returns the same history (means over the ranks)."""
    ctx = ctx or distributed.Context(device)
    accel.prepare(model, device, cfg.channels_last)  # channels_last weights: cuDNN then runs NHWC convs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp = accel.precision(cfg.amp, device, "detection.train.amp")
    scaler = torch.amp.GradScaler("cuda", enabled=amp.scaler)
    forward = accel.compiled(distributed.wrap(model, ctx), cfg.torch_compile)

    def one_epoch(epoch: int) -> dict:
        loader = epoch_loader(dataset, cfg, seed, epoch, ctx)
        warmup = None
        if epoch == 0 and cfg.warmup_iters > 0:
            iters = min(cfg.warmup_iters, len(loader))
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=iters)
        sums = dict.fromkeys(LOSSES, 0.0)
        steps, images_seen = 0, 0
        for images, targets in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=5.0,
                                    disable=not ctx.is_main):
            images = [image.to(device) for image in images]
            targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
            with torch.autocast(device_type=device.type, dtype=amp.dtype, enabled=amp.autocast):
                losses = forward(images, targets)
            total = sum(losses.values())
            values = {name: float(value.detach()) for name, value in losses.items()}
            if not math.isfinite(sum(values.values())):
                raise D2lflowError(f"epoch {epoch + 1}, step {steps + 1}: the loss is not finite: {values}; "
                                   "lower detection.train.lr or raise warmup_iters")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            if warmup is not None and steps < warmup.total_iters:
                warmup.step()
            for name in LOSSES:
                sums[name] += values[name]
            steps += 1
            images_seen += len(images)
        *totals, steps, images_seen = distributed.all_sum([*(sums[name] for name in LOSSES), steps, images_seen], ctx)
        sums = dict(zip(LOSSES, totals))
        return {**{name: sums[name] / steps for name in LOSSES}, "loss": sum(sums.values()) / steps,
                "examples": images_seen}

    job = kit.TrainJob("detection", None, cfg, ctx, checkpoint, run_fingerprint, state, run_id=run_id,
                       on_epoch=on_epoch)  # held-out scores: `validate` ({} on epochs it skips), on every rank
    return kit.epoch_loop(job, model, optimizer, cfg.epochs, one_epoch, validate, unit="images/s", show=LOSSES,
                          rate="images_per_s", seconds=False, extra={"scaler": scaler})
