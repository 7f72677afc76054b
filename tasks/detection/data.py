"""Detection data: the preprocess stage (VOC XML → Parquet box tables + class counts) and the
training Dataset (image + target dict, with box-aware augmentation seeded per (seed, epoch, index))."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from tasks.atomic import atomic_path, to_json
from tasks.detection.annotations import read_split
from tasks.detection.transforms import TrainTransform, apply
from tasks.errors import DataError
from tasks.params import DetectionPreprocessParams
from tasks.voc import read_image, voc_root

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


def preprocess(cfg: DetectionPreprocessParams, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Per split `boxes.parquet` (one row per object) and `images.parquet` (every image, also those
    without objects); `stats.json` with object counts per class, difficult counts and bad samples."""
    stats: dict[str, Any] = {}
    with atomic_path(out_dir) as tmp:
        for split in SPLITS:
            boxes, images, bad = read_split(data_dir, split, cfg.on_bad_sample)
            if images.empty:
                raise DataError(f"{data_dir}: no usable images in ImageSets/Main/{split}.txt")
            (tmp / split).mkdir(parents=True)
            boxes.to_parquet(tmp / split / "boxes.parquet", index=False)
            images.to_parquet(tmp / split / "images.parquet", index=False)
            counts = boxes.groupby("name").size()
            stats[split] = {
                "images": len(images), "objects": len(boxes), "difficult": int(boxes["difficult"].sum()),
                "images_without_objects": int((~images["image_id"].isin(boxes["image_id"])).sum()),
                "class_counts": {name: int(counts.get(name, 0)) for name in sorted(counts.index)},
                "skipped_bad": len(bad), "bad_samples": bad,
            }
        (tmp / "stats.json").write_text(to_json(stats))
    log.info("detection preprocess: %s", {s: (v["images"], v["objects"]) for s, v in stats.items()})
    return {split: {k: v for k, v in values.items() if k != "bad_samples"} for split, values in stats.items()}


def load_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(folder / "boxes.parquet"), pd.read_parquet(folder / "images.parquet")


class DetectionDataset(Dataset):
    """(image float32 (3,H,W) in [0,1], target {boxes, labels, difficult, image_id}); torchvision's
    detectors normalise and resize internally. With `transform`, augmentation is drawn from
    a generator seeded by (seed, epoch, index), whatever the DataLoader workers."""

    def __init__(self, folder: Path, data_dir: Path, transform: TrainTransform | None = None, seed: int = 0) -> None:
        boxes, images = load_tables(folder)
        self.root = voc_root(data_dir)
        self.ids = images["image_id"].tolist()
        grouped = {key: group for key, group in boxes.groupby("image_id")}
        empty = boxes.iloc[:0]
        self.objects = [grouped.get(i, empty) for i in self.ids]
        self.transform, self.seed, self.epoch = transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = read_image(self.root / "JPEGImages" / f"{self.ids[i]}.jpg")
        objects = self.objects[i]
        boxes = np.array(objects[["xmin", "ymin", "xmax", "ymax"]], dtype=np.float32).reshape(-1, 4)
        labels = np.array(objects["label"], dtype=np.int64)
        difficult = np.array(objects["difficult"], dtype=bool)
        if self.transform is not None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
            image, boxes, labels, difficult = apply(image, boxes, labels, difficult, self.transform, rng)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        return tensor, {"boxes": torch.from_numpy(boxes).reshape(-1, 4), "labels": torch.from_numpy(labels),
                        "difficult": torch.from_numpy(difficult), "image_id": torch.tensor(i)}


def collate(batch: list) -> tuple[list, list]:
    """Detection batches are lists: images differ in size and so do the numbers of boxes."""
    return [image for image, _ in batch], [target for _, target in batch]

