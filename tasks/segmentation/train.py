"""FCN training (d2l 14.11): per-pixel cross-entropy ignoring the 255 void label, SGD with weight
decay; optional bf16/fp16 mixed precision, channels_last and torch.compile on CUDA (tasks/accel.py);
a checkpoint every epoch and resume. Batches are loaded as uint8 crops and converted and normalised
on the training device (tasks/segmentation/data.py `device_batch`).

Each epoch's shuffle and crops are seeded by (seed, epoch), so a resumed run replays exactly the
batches the interrupted one would have seen.

Under DDP (tasks/distributed.py) every rank draws the same shuffled global batches of `batch_size`
images and loads only its share; gradients are averaged over the ranks and the loss (a sum over the
batch) is scaled by the world size, so a step is the single-process step up to float summation
order, except for BatchNorm, whose batch statistics are per rank unless `sync_batchnorm` (CUDA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from tasks import accel, distributed, kit
from tasks.errors import D2lflowError
from tasks.params import SegmentationTrainParams
from tasks.segmentation.data import SegmentationDataset, collate_crops, device_batch
from tasks.voc import VOID

log = logging.getLogger(__name__)


def pixel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example, the mean cross-entropy over its non-void pixels (the book's per-example mean,
    with 255 ignored instead of being read as background); an all-void example contributes 0."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=VOID, reduction="none")
    valid = (labels != VOID).flatten(1).sum(dim=1)
    return loss.flatten(1).sum(dim=1) / valid.clamp(min=1)


TrainResult = kit.FitResult  # what `train` returns: .model, .history, .resumed_from_epoch


def check_distributed(cfg: SegmentationTrainParams, images: int, ctx: distributed.Context) -> None:
    """What DDP needs, checked before anything is logged: every rank gets at least one image of every
    global batch (an empty share cannot run BatchNorm), and SyncBatchNorm only on CUDA."""
    if not ctx.distributed:
        return
    last = images % cfg.batch_size or cfg.batch_size
    if min(cfg.batch_size, last, images) < ctx.world_size:
        raise D2lflowError(f"{ctx.world_size} processes share each batch of segmentation.train.batch_size="
                           f"{cfg.batch_size} images, but with {images} training images a batch has only "
                           f"{min(last, cfg.batch_size, images)}; choose a batch_size whose last batch (images % "
                           f"batch_size) is 0 or at least {ctx.world_size}, or fewer processes (distributed.*)")
    if cfg.sync_batchnorm and ctx.device.type != "cuda":
        raise D2lflowError("segmentation.train.sync_batchnorm needs CUDA (torch's SyncBatchNorm); training on "
                           f"{ctx.device}: set it to false (each rank then normalises over its own share)")


def epoch_loader(dataset: SegmentationDataset, cfg: SegmentationTrainParams, seed: int, epoch: int,
                 device: torch.device, ctx: distributed.Context) -> DataLoader:
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 5, epoch]).generate_state(1)[0]))
    return distributed.shuffled_loader(dataset, cfg.batch_size, generator, ctx, num_workers=cfg.num_workers,
                                       pin_memory=cfg.pin_memory and device.type == "cuda", collate_fn=collate_crops)


def train(model: nn.Module, dataset: SegmentationDataset, cfg: SegmentationTrainParams, seed: int,
          device: torch.device, checkpoint, run_fingerprint: str, state: dict | None = None, run_id: str = "",
          on_epoch: Callable[[dict], None] | None = None, ctx: distributed.Context | None = None,
          validate: Callable[[nn.Module, int], dict] | None = None) -> kit.FitResult:
    """Train for `cfg.epochs` through the kit's loop (`kit.epoch_loop`), resuming from `state` (a checkpoint
    for the same fingerprint, its GradScaler under "scaler") when given.
    `ctx` (default: one process on `device`): under DDP only rank 0 writes the checkpoint, every rank
    returns the same history (sums over the ranks), and `result.model` is the unwrapped module."""
    ctx = ctx or distributed.Context(device)
    check_distributed(cfg, len(dataset), ctx)
    if ctx.distributed and cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = accel.use_channels_last(cfg.channels_last, device)
    accel.prepare(model, device, cfg.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    amp = accel.precision(cfg.amp, device, "segmentation.train.amp")
    scaler = torch.amp.GradScaler("cuda", enabled=amp.scaler)
    forward = accel.compiled(distributed.wrap(model, ctx), cfg.torch_compile)
    crops = dataset.uint8()  # the same crops as uint8: `device_batch` converts them where they train

    def one_epoch(epoch: int) -> dict:
        loss_sum, examples, correct, labelled = 0.0, 0, 0, 0
        batches = tqdm(epoch_loader(crops, cfg, seed, epoch, device, ctx), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       leave=False, mininterval=5.0, disable=not ctx.is_main)
        for images, labels in batches:
            images, labels = device_batch(images, labels, device, channels_last)
            with torch.autocast(device_type=device.type, dtype=amp.dtype, enabled=amp.autocast):
                logits = forward(images)
            loss = pixel_loss(logits, labels)
            total = loss.sum()
            if not torch.isfinite(total):
                raise D2lflowError(f"epoch {epoch + 1}: the loss is not finite ({float(total)}); "
                                   "lower segmentation.train.lr (or turn off amp)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(distributed.global_sum(total, ctx)).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                valid = labels != VOID
                correct += int((logits.argmax(dim=1) == labels)[valid].sum())
                labelled += int(valid.sum())
            loss_sum += float(total.detach())
            examples += len(images)
        loss_sum, examples, correct, labelled = distributed.all_sum([loss_sum, examples, correct, labelled], ctx)
        examples = int(examples)
        return {"loss": loss_sum / examples, "train_pixel_accuracy": correct / max(labelled, 1), "examples": examples}

    job = kit.TrainJob("segmentation", None, cfg, ctx, checkpoint, run_fingerprint, state, run_id=run_id,
                       on_epoch=on_epoch)  # held-out scores: `validate` ({} on epochs it skips), on every rank
    return kit.epoch_loop(job, model, optimizer, cfg.epochs, one_epoch, validate, unit="images/s",
                          show=("train_pixel_accuracy",), rate="images_per_s", extra={"scaler": scaler})
