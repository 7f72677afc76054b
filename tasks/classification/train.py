"""LeNet training (d2l 7.6): cross-entropy averaged over each batch, plain SGD, a checkpoint every epoch
and resume. `train_epoch` and `eval_epoch` are the per-epoch functions; `train` runs them in the kit's loop.

Each epoch's shuffle is seeded by (seed, epoch), so a resumed run replays exactly the batches the
interrupted one would have seen. Under DDP (tasks/distributed.py) every rank draws the same shuffled
global batches and loads its share; the loss of a rank is its sum over the global batch size, so with
the gradients averaged and scaled by the world size a step is the single-process step (up to float
summation order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tasks import distributed, kit
from tasks.classification.data import keep_batch
from tasks.errors import D2lflowError
from tasks.params import ClassificationTrainParams

log = logging.getLogger(__name__)


def epoch_loader(dataset: Dataset, cfg: ClassificationTrainParams, seed: int, epoch: int,
                 ctx: distributed.Context) -> DataLoader:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 11, epoch]).generate_state(1)[0]))
    return distributed.shuffled_loader(dataset, cfg.batch_size, generator, ctx, num_workers=cfg.num_workers,
                                       collate_fn=keep_batch)


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                ctx: distributed.Context | None = None, forward: nn.Module | None = None,
                epoch: int = 1, progress: bool = False) -> dict:
    """One pass over `loader` (batches of (float images, int64 labels)): the book's step, the mean
    cross-entropy of the (global) batch, SGD. Returns loss (mean per example), accuracy, images, seconds."""
    ctx = ctx or distributed.Context(device)
    forward = forward or model
    model.train()
    start = time.perf_counter()
    loss_sum, correct, examples = 0.0, 0, 0
    for images, labels in tqdm(loader, desc=f"epoch {epoch}", leave=False, mininterval=5.0,
                               disable=not (progress and ctx.is_main)):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        global_size = distributed.all_sum([len(labels)], ctx)[0]
        logits = forward(images)
        total = F.cross_entropy(logits, labels, reduction="sum")
        if not torch.isfinite(total):
            raise D2lflowError(f"epoch {epoch}: the loss is not finite ({float(total)}); lower "
                               "classification.train.lr")
        optimizer.zero_grad(set_to_none=True)
        distributed.global_sum(total / global_size, ctx).backward()
        optimizer.step()
        loss_sum += float(total.detach())
        correct += int((logits.detach().argmax(dim=1) == labels).sum())
        examples += len(labels)
    loss_sum, correct, examples = distributed.all_sum([loss_sum, correct, examples], ctx)
    seconds = time.perf_counter() - start
    examples = int(examples)
    return {"loss": loss_sum / max(examples, 1), "accuracy": correct / max(examples, 1), "images": examples,
            "seconds": seconds, "images_per_s": examples / seconds if seconds > 0 else 0.0}


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, 10) float32 on the CPU, labels (N,)) over a loader, in its order."""
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        logits.append(model(images.to(device)).float().cpu())
        labels.append(targets)
    if not logits:
        return torch.zeros((0, 10)), torch.zeros((0,), dtype=torch.int64)
    return torch.cat(logits), torch.cat(labels)


def eval_epoch(model: nn.Module, loader, device: torch.device) -> dict:
    """Mean cross-entropy and accuracy over a loader (no gradients, eval mode)."""
    logits, labels = predict(model, loader, device)
    if len(labels) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "images": 0}
    return {"loss": float(F.cross_entropy(logits, labels)),
            "accuracy": float((logits.argmax(dim=1) == labels).float().mean()), "images": len(labels)}


def eval_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=keep_batch)


def train(model: nn.Module, dataset: Dataset, cfg: ClassificationTrainParams, seed: int, device: torch.device,
          checkpoint, run_fingerprint: str, state: dict | None = None, run_id: str = "",
          on_epoch: Callable[[dict], None] | None = None, ctx: distributed.Context | None = None,
          validate: Callable[[nn.Module, int], dict] | None = None) -> kit.FitResult:
    """Train for `cfg.epochs` through the kit's loop (`kit.epoch_loop`: resume from `state`, a checkpoint
    for the same fingerprint, a checkpoint every epoch, `validate(model, epoch)` on forked RNG state)."""
    ctx = ctx or distributed.Context(device)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    forward = distributed.wrap(model, ctx)

    def one_epoch(epoch: int) -> dict:
        scores = train_epoch(model, epoch_loader(dataset, cfg, seed, epoch, ctx), optimizer, device, ctx, forward,
                             epoch + 1, progress=True)
        return {"loss": scores["loss"], "train_accuracy": scores["accuracy"], "examples": scores["images"]}

    job = kit.TrainJob("classification", None, cfg, ctx, checkpoint, run_fingerprint, state, run_id=run_id,
                       on_epoch=on_epoch)
    return kit.epoch_loop(job, model, optimizer, cfg.epochs, one_epoch, validate, unit="images/s",
                          show=("train_accuracy", "val_accuracy"))
