"""FCN training (d2l 14.11): per-pixel cross-entropy ignoring the 255 void label, SGD with weight
decay; optional mixed precision on CUDA; a checkpoint every epoch and resume.

Each epoch's shuffle and crops are seeded by (seed, epoch), so a resumed run replays exactly the
batches the interrupted one would have seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from tasks.errors import D2lflowError
from tasks.params import SegmentationTrainParams
from tasks.runtime import restore, save_checkpoint
from tasks.segmentation.data import SegmentationDataset
from tasks.voc import VOID

log = logging.getLogger(__name__)


def pixel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example, the mean cross-entropy over its non-void pixels (the book's per-example mean,
    with 255 ignored instead of being read as background); an all-void example contributes 0."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=VOID, reduction="none")
    valid = (labels != VOID).flatten(1).sum(dim=1)
    return loss.flatten(1).sum(dim=1) / valid.clamp(min=1)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0


def _loader(dataset: SegmentationDataset, cfg: SegmentationTrainParams, seed: int, epoch: int,
            device: torch.device) -> DataLoader:
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 5, epoch]).generate_state(1)[0]))
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                      num_workers=cfg.num_workers, pin_memory=cfg.pin_memory and device.type == "cuda",
                      drop_last=False)


def train(model: nn.Module, dataset: SegmentationDataset, cfg: SegmentationTrainParams, seed: int,
          device: torch.device, checkpoint, run_fingerprint: str, state: dict | None = None, run_id: str = "",
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train for `cfg.epochs`, resuming from `state` (a checkpoint for the same fingerprint) when given."""
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    use_amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not use_amp:
        log.info("segmentation.train.amp applies to CUDA only; training in float32 on %s", device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    result = TrainResult(model)
    if state is not None:
        result.history, result.resumed_from_epoch = restore(state, model=model, optimizer=optimizer, scaler=scaler)
        log.info("resuming from %s after epoch %d", checkpoint, result.resumed_from_epoch)

    for epoch in range(result.resumed_from_epoch, cfg.epochs):
        start = time.perf_counter()
        model.train()
        loss_sum, examples, correct, labelled = 0.0, 0, 0, 0
        batches = tqdm(_loader(dataset, cfg, seed, epoch, device), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       leave=False, mininterval=5.0)
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(images)
            loss = pixel_loss(logits, labels)
            total = loss.sum()
            if not torch.isfinite(total):
                raise D2lflowError(f"epoch {epoch + 1}: the loss is not finite ({float(total)}); "
                                   "lower segmentation.train.lr (or turn off amp)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                valid = labels != VOID
                correct += int((logits.argmax(dim=1) == labels)[valid].sum())
                labelled += int(valid.sum())
            loss_sum += float(total.detach())
            examples += len(images)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "loss": loss_sum / examples,
                  "train_pixel_accuracy": correct / max(labelled, 1),
                  "images_per_s": examples / seconds, "seconds": seconds}
        result.history.append(record)
        log.info("epoch %d: loss %.4f, train pixel accuracy %.3f, %.2f images/s", epoch + 1, record["loss"],
                 record["train_pixel_accuracy"], record["images_per_s"])
        save_checkpoint(checkpoint, {"epoch": epoch + 1, "model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                     "history": result.history, "fingerprint": run_fingerprint, "run_id": run_id})
        if on_epoch is not None:
            on_epoch(record)
    return result
