"""Fashion-MNIST from data/ to tensors: preprocess decodes the four IDX files into uint8 arrays and holds
out a seeded validation split; `FashionMnist` is the Dataset training and evaluation read.

The tensors are the book's `ToTensor()` scale: float32 pixels / 255, shape (1, 28, 28), no normalisation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.atomic import atomic_path, write_json
from tasks.classification.idx import CLASS_NAMES, NUM_CLASSES, read_pair, split_paths
from tasks.errors import DataError
from tasks.params import ClassificationPreprocessParams

log = logging.getLogger(__name__)

OUT_SPLITS = ("train", "val", "test")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of `n` examples: a seeded permutation, the first round(n * val_fraction)
    held out; each part sorted, so the arrays keep the file's order."""
    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return {name: int(count) for name, count in zip(CLASS_NAMES, counts)}


def preprocess(data_dir: Path, out_dir: Path, cfg: ClassificationPreprocessParams, seed: int) -> dict[str, Any]:
    """Decode both splits (every malformed file is a DataError naming it), hold out `val_fraction` of the
    training file by `seed`, and write train/val/test `.npz` (uint8 images N×28×28, int64 labels) and
    stats.json into `out_dir` (replaced as a whole)."""
    train_x, train_y = read_pair(*split_paths(data_dir, "train"))
    test_x, test_y = read_pair(*split_paths(data_dir, "t10k"))
    train_idx, val_idx = split_indices(len(train_x), cfg.val_fraction, seed)
    if len(train_idx) == 0:
        raise DataError(f"{data_dir}: {len(train_x)} training images leave none for training with "
                        f"classification.preprocess.val_fraction={cfg.val_fraction}; lower it")
    arrays = {"train": (train_x[train_idx], train_y[train_idx]), "val": (train_x[val_idx], train_y[val_idx]),
              "test": (test_x, test_y)}
    stats: dict[str, Any] = {"seed": seed, "val_fraction": cfg.val_fraction, "classes": list(CLASS_NAMES)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for split, (images, labels) in arrays.items():
            np.savez(tmp / f"{split}.npz", images=images, labels=labels.astype(np.int64))
            stats[split] = {"images": int(len(images)), "class_counts": _class_counts(labels)}
        write_json(tmp / "stats.json", stats)
    log.info("preprocess: %d train, %d val, %d test images", len(train_idx), len(val_idx), len(test_x))
    return {split: stats[split]["images"] for split in OUT_SPLITS}


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N×28×28, int64 labels N) of one preprocessed split."""
    path = Path(folder) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the classification preprocess stage first (dvc repro)")
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"]


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28) in [0, 1]: the book's `ToTensor()`."""
    images = torch.as_tensor(images)
    return images.unsqueeze(1).float().div_(255.0)


class FashionMnist(Dataset):
    """One preprocessed split, held in memory as uint8; items are (float32 1×28×28, int64 label)."""

    def __init__(self, folder: Path, split: str) -> None:
        images, labels = load_split(folder, split)
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].unsqueeze(0).float().div_(255.0), self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch with one gather (the DataLoader calls this instead of N `__getitem__`s)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return to_tensor(self.images[index]), self.labels[index]


def keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataLoader's collate_fn: `__getitems__` already returns the stacked batch."""
    return batch
