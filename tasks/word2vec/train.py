"""word2vec training (d2l 15.4): skip-gram, masked sigmoid BCE, Adam; checkpoint every epoch, resume.

Each epoch's examples are shuffled and flattened once with NumPy (no padding: the book pads every
batch to its longest example, over half of it zeros), so a batch is a slice: no Python collate, no
DataLoader. The loss is the book's: per example the mean BCE over its real entries, summed over the
batch. Each epoch's shuffle (and, optionally, its resampling of contexts and negatives) has its own
seed, so a run resumed from a checkpoint ends with exactly the weights of an uninterrupted one.

Under DDP (tasks/distributed.py) every rank walks the same shuffled order and takes its share of
each global batch of `batch_size` centers; DDP averages the gradients over the ranks, and the loss
(a sum over the batch) is scaled by the world size, so each step is the single-process step up to
float summation order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from models.skipgram import PairLogits, SkipGram
from tasks import distributed, kit
from tasks.errors import D2lflowError
from tasks.params import Word2vecPreprocessParams, Word2vecTrainParams
from tasks.word2vec.preprocess import Corpus, Samples, make_samples, split_rng
from tasks.word2vec.row_adam import RowAdam, sgns_adam_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entries:
    """Examples flattened without padding: per center its contexts, then its negatives. Built once
    per draw of examples; a batch is `select(rows)`, a gather of ~B*26 entries (shuffling the whole
    table every epoch instead costs ~2 s on PTB, 30% of an epoch)."""

    offsets: torch.Tensor  # (N+1,) int64: where each center's entries start
    centers: torch.Tensor  # (n,) center id of each entry
    words: torch.Tensor  # (n,) context or noise word id
    labels: torch.Tensor  # (n,) 1.0 for contexts, 0.0 for negatives
    weights: torch.Tensor  # (n,) 1 / entries of its center: summing gives the per-example mean

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def select(self, rows: torch.Tensor) -> Entries:
        """The entries of the centers `rows`, in that order."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        index = torch.repeat_interleave(starts - offsets[:-1], lengths) + torch.arange(
            int(offsets[-1]), device=rows.device)
        pick = functools.partial(torch.index_select, dim=0, index=index)  # ~3x faster than t[index] here
        return Entries(offsets, pick(self.centers), pick(self.words), pick(self.labels), pick(self.weights))

    def to(self, device: torch.device) -> Entries:
        return Entries(*(t.to(device) for t in (self.offsets, self.centers, self.words, self.labels, self.weights)))


def flatten_examples(samples: Samples, order: np.ndarray) -> Entries:
    """The examples of `samples` in `order`, as flat arrays (vectorised segment gather)."""
    n_ctx = np.diff(samples.ctx_offsets)[order]
    n_neg = np.diff(samples.neg_offsets)[order]
    lengths = n_ctx + n_neg
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    row = np.repeat(np.arange(len(order)), lengths)
    k = np.arange(offsets[-1]) - offsets[row]
    is_ctx = k < n_ctx[row]
    words = np.empty(offsets[-1], dtype=np.int64)
    words[is_ctx] = samples.contexts[(samples.ctx_offsets[order][row] + k)[is_ctx]]
    words[~is_ctx] = samples.negatives[(samples.neg_offsets[order][row] + k - n_ctx[row])[~is_ctx]]
    return Entries(
        offsets=torch.from_numpy(offsets),
        centers=torch.from_numpy(samples.centers[order][row].astype(np.int64)),
        words=torch.from_numpy(words),
        labels=torch.from_numpy(is_ctx.astype(np.float32)),
        weights=torch.from_numpy((1.0 / lengths[row]).astype(np.float32)),
    )


def batchify(examples: list[tuple[int, list[int], list[int]]]):
    """d2l's `batchify`: (center, contexts, negatives) triples → padded (centers (B,1),
    contexts_negatives (B,L), masks (B,L), labels (B,L)); the form `SkipGram.forward` takes."""
    width = max(len(c) + len(n) for _, c, n in examples)
    centers = torch.tensor([[c] for c, _, _ in examples])
    words = torch.tensor([c + n + [0] * (width - len(c) - len(n)) for _, c, n in examples])
    masks = torch.tensor([[1.0] * (len(c) + len(n)) + [0.0] * (width - len(c) - len(n)) for _, c, n in examples])
    labels = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for _, c, _ in examples])
    return centers, words, masks, labels


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of one epoch: depends only on (seed, epoch), so resuming replays it exactly."""
    return np.random.default_rng(np.random.SeedSequence([seed, 3, epoch])).permutation(n)


def ragged_loss(model: SkipGram, part: Entries) -> torch.Tensor:
    """Sum over the centers of `part` of their masked mean BCE (the book's per-example loss)."""
    return pair_loss(model.pair_logits(part.centers, part.words), part)


def pair_loss(logits: torch.Tensor, part: Entries) -> torch.Tensor:
    """`ragged_loss` from the logits of `part`'s pairs (however they were computed)."""
    bce = F.binary_cross_entropy_with_logits(logits, part.labels, reduction="none")
    return (bce * part.weights).sum()


def make_optimizer(model: SkipGram, cfg: Word2vecTrainParams, device: torch.device) -> torch.optim.Optimizer:
    """The book's dense Adam (`adam`), or `sparse_adam`: the same dense Adam computed on the rows a
    batch touches (tasks/word2vec/row_adam.py: `RowAdam`, trained by `sgns_adam_step`: closed-form gradient).
    A row a batch skips is brought up to date (its missed zero-gradient steps in closed form) when a
    batch next touches it and at `flush()`, which the epoch loop calls before anything reads the weights."""
    if cfg.optimizer == "sparse_adam":
        return RowAdam(list(model.parameters()), lr=cfg.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type in ("cpu", "cuda"))


TrainResult = kit.FitResult  # what `train` returns: .model, .history, .resumed_from_epoch


def train(samples: Samples, corpus: Corpus, counts: np.ndarray, vocab_size: int, cfg: Word2vecTrainParams,
          pre_cfg: Word2vecPreprocessParams, seed: int, device: torch.device, checkpoint: Path,
          run_fingerprint: str, state: dict | None = None, run_id: str = "",
          on_epoch: Callable[[dict], None] | None = None, ctx: distributed.Context | None = None,
          validate: Callable[[torch.nn.Module, int], dict] | None = None) -> kit.FitResult:
    """Train for `cfg.epochs` through the kit's loop (`kit.epoch_loop`), resuming from `state` (a
    checkpoint loaded by `load_checkpoint` for the same `run_fingerprint`) when given; a checkpoint is
    written to `checkpoint` after every epoch. `ctx` (default: one process on `device`): under DDP only
    rank 0 writes the checkpoint, and every rank returns the same history (losses summed over the ranks).

    `samples` is the preprocess stage's draw (used for every epoch, as the book does, unless
    `cfg.resample_every_epoch`, where epoch e > 0 draws anew from `corpus` with its own seed).
    """
    ctx = ctx or distributed.Context(device)
    sparse = cfg.optimizer == "sparse_adam"
    if sparse and ctx.distributed:
        raise D2lflowError("word2vec.train.optimizer=sparse_adam trains in one process only (DDP averages dense "
                           f"gradients; {ctx.world_size} processes were asked for): set word2vec.train.optimizer "
                           "to adam, or distributed.nproc_per_node and nnodes to 1")
    torch.manual_seed(seed)
    model = SkipGram(vocab_size, cfg.embed_size).to(device)
    optimizer = make_optimizer(model, cfg, device)
    # DDP hooks the wrapped module's forward: the ragged form goes through PairLogits.forward.
    pair_logits = distributed.wrap(PairLogits(model), ctx) if ctx.distributed else model.pair_logits
    entries = None

    def one_epoch(epoch: int) -> dict:
        nonlocal entries
        drawn = samples
        if cfg.resample_every_epoch and epoch > 0:
            _, drawn = make_samples(corpus, counts, pre_cfg, split_rng(seed, "train", epoch))
            entries = None
        if entries is None:
            entries = flatten_examples(drawn, np.arange(len(drawn))).to(device)
        order = torch.from_numpy(epoch_order(len(entries), seed, epoch)).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        progress = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                        leave=False, mininterval=2.0, disable=not ctx.is_main)
        for first in progress:
            rows = order[first:first + cfg.batch_size]
            part = entries.select(rows[distributed.shard(len(rows), ctx)] if ctx.distributed else rows)
            if sparse:  # closed-form gradient, dense Adam computed on the touched rows
                loss = sgns_adam_step(optimizer, model.embed_v.weight, model.embed_u.weight, part.offsets,
                                      part.centers, part.words, part.labels, part.weights)
            else:
                loss = pair_loss(pair_logits(part.centers, part.words), part)
                optimizer.zero_grad(set_to_none=True)
                distributed.global_sum(loss, ctx).backward()
                optimizer.step()
            loss_sum += loss.detach()
        if sparse:  # the rows no batch touched since: up to date before validation and the checkpoint
            optimizer.flush()
        examples = len(entries)
        loss_sum, = distributed.all_sum([float(loss_sum)], ctx)
        if not np.isfinite(loss_sum):
            raise D2lflowError(f"epoch {epoch + 1}: the loss is not finite ({loss_sum}); lower word2vec.train.lr")
        # the epoch's steps are done: the kit validates and checkpoints after this returns
        return {"loss": loss_sum / examples, "examples": examples}

    job = kit.TrainJob("word2vec", None, cfg, ctx, checkpoint, run_fingerprint, state, run_id=run_id,
                       on_epoch=on_epoch)  # held-out scores: `validate` ({} on epochs it skips), on every rank
    return kit.epoch_loop(job, model, optimizer, cfg.epochs, one_epoch, validate, unit="center words/s",
                          rate="center_words_per_s")
