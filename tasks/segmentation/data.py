"""Segmentation data (d2l 14.9): VOC → a compact decoded store, VOC cropping, and the torch Dataset.

Preprocessing decodes every JPEG/PNG once and stores a split as flat uint8 arrays (images, labels)
plus their shapes, loaded as read-only memmaps, so epochs neither re-decode nor hold the set in
memory. Images smaller than the crop are dropped, as in the book. Crops are random per
(seed, epoch, item) in training, so they do not depend on DataLoader workers or shuffling order,
and centred otherwise. One rectangle is always applied to an image and its label together.

Training loads crops as uint8 (`SegmentationDataset(..., normalise=False)`): a crop's rows are read
from the store with one positioned read (`os.preadv`, not through the memmap: pages of a mapped
file count in the process's RSS, which would then grow with the store), batches are collated as
uint8 (a quarter of float32's bytes to copy, pin and transfer), and `device_batch` converts and
normalises a whole batch where it will be used. On the CPU the result is bit for bit the
per-image `normalize` of the float dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from tasks.atomic import atomic_path, to_json
from tasks.errors import DataError
from tasks.params import SegmentationPreprocessParams
from tasks.voc import VOC_CLASSES, VOID, BadSampleError, read_ids, read_image, read_label_with_unknown, voc_root

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _FlatWriter:
    """Stream uint8 chunks into a 1-D `.npy` without holding them in memory (raw file, then header + copy)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path.with_suffix(".raw")
        self.file = self.raw.open("wb")
        self.size = 0

    def write(self, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=np.uint8)
        self.file.write(data.tobytes())
        self.size += data.size

    def abort(self) -> None:
        self.file.close()
        self.raw.unlink(missing_ok=True)

    def close(self) -> None:
        self.file.close()
        with self.path.open("wb") as out, self.raw.open("rb") as raw:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (self.size,)}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, length=1 << 24)
        self.raw.unlink()


def _preprocess_split(root: Path, split: str, crop: tuple[int, int], on_bad: str, folder: Path) -> dict[str, Any]:
    """Decode, check and filter one split into `folder`; returns its stats."""
    ids = read_ids(root, "Segmentation", split)
    crop_h, crop_w = crop
    kept: list[str] = []
    shapes: list[tuple[int, int]] = []
    dropped: list[str] = []
    bad: list[dict[str, str]] = []
    counts = np.zeros(256, dtype=np.int64)
    unknown_total = 0
    folder.mkdir()
    images, labels = _FlatWriter(folder / "images.npy"), _FlatWriter(folder / "labels.npy")
    try:
        for image_id in ids:
            jpg = root / "JPEGImages" / f"{image_id}.jpg"
            png = root / "SegmentationClass" / f"{image_id}.png"
            try:
                image = read_image(jpg)
                label, unknown = read_label_with_unknown(png)
                if label.shape != image.shape[:2]:
                    raise BadSampleError(png, f"label is {label.shape[0]}x{label.shape[1]} (HxW) but its image is "
                                         f"{image.shape[0]}x{image.shape[1]}",
                                         "fix or remove the pair, or set on_bad_sample: skip")
            except BadSampleError as exc:
                if on_bad != "skip":
                    raise
                bad.append({"id": image_id, "file": exc.path.relative_to(root).as_posix(), "reason": exc.reason})
                continue
            h, w = label.shape
            if h < crop_h or w < crop_w:
                dropped.append(image_id)
                continue
            images.write(image)
            labels.write(label)
            kept.append(image_id)
            shapes.append((h, w))
            counts += np.bincount(label.reshape(-1), minlength=256)
            unknown_total += unknown
    except BaseException:
        images.abort()
        labels.abort()
        raise
    images.close()
    labels.close()
    if not kept:
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        raise DataError(f"{listing}: no image of the {len(ids)} listed is "
                        f"usable ({len(dropped)} smaller than the crop {crop_h}x{crop_w}, {len(bad)} bad); "
                        "lower segmentation.preprocess.crop_size or fix the data")
    np.save(folder / "shapes.npy", np.array(shapes, dtype=np.int32).reshape(-1, 2))
    (folder / "ids.json").write_text(to_json(kept))
    return {"listed": len(ids), "kept": len(kept), "dropped_small": len(dropped), "dropped_small_ids": dropped,
            "skipped_bad": len(bad), "bad_samples": bad,
            "class_pixels": counts[: len(VOC_CLASSES)].tolist(), "void_pixels": int(counts[VOID]),
            "unknown_colour_pixels": unknown_total}


def preprocess(data_dir: Path, out_dir: Path, cfg: SegmentationPreprocessParams) -> dict[str, Any]:
    """VOC2012 train/val → `out_dir/{train,val}/` stores and `out_dir/stats.json` (atomically, byte-stable).

    Bad samples (missing or undecodable files, label size ≠ image size) raise DataError, or are
    skipped and listed in the stats with `on_bad_sample: skip`. Returns the per-split counts.
    """
    root = voc_root(data_dir)
    crop = (int(cfg.crop_size[0]), int(cfg.crop_size[1]))
    stats: dict[str, Any] = {}
    with atomic_path(Path(out_dir)) as tmp:
        tmp.mkdir()
        for split in SPLITS:
            stats[split] = _preprocess_split(root, split, crop, cfg.on_bad_sample, tmp / split)
        (tmp / "stats.json").write_text(to_json(stats))
    log.info("preprocessed %s (crop %dx%d): %s", root, *crop, "; ".join(
        f"{split} kept {s['kept']}/{s['listed']} ({s['dropped_small']} smaller than the crop, "
        f"{s['skipped_bad']} bad skipped)" for split, s in stats.items()))
    return {split: {key: s[key] for key in ("listed", "kept", "dropped_small", "skipped_bad")}
            for split, s in stats.items()}


@dataclass(frozen=True)
class StoredSplit:
    """A preprocessed split: flat read-only memmaps plus per-image shapes; `image(i)`/`label(i)` are views."""

    folder: Path
    ids: list[str]
    shapes: np.ndarray  # int32 (N, 2): height, width
    offsets: np.ndarray  # int64 (N + 1,): pixel offset of each image in the flat arrays
    images: np.ndarray  # uint8, flat H·W·3 per image
    labels: np.ndarray  # uint8, flat H·W per image

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        return self.images[3 * self.offsets[i]: 3 * self.offsets[i + 1]].reshape(h, w, 3)

    def label(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        return self.labels[self.offsets[i]: self.offsets[i + 1]].reshape(h, w)


class CropReader:
    """Crops of a stored split read with positioned reads of the .npy files (one per image and one
    per label: the crop's full-width rows), never through a memory map. Opened lazily in each
    process (DataLoader workers included) and never pickled."""

    def __init__(self, split: StoredSplit) -> None:
        self.split = split
        self.starts: dict[str, int] = {}
        self.fds: dict[str, int] = {}
        self.buffers: dict[str, np.ndarray | None] = {}
        for name, array in (("images", split.images), ("labels", split.labels)):
            self.starts[name] = int(array.offset)  # the .npy header's length: where the pixels begin
            self.fds[name] = os.open(split.folder / f"{name}.npy", os.O_RDONLY)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def _rows(self, name: str, channels: int, i: int, top: int, rows: int) -> np.ndarray:
        """Rows top..top+rows of item i, full width, read into this reader's reused buffer (a view of
        it: valid until the next read of `name`; a fresh buffer each time would page-fault every page)."""
        width = int(self.split.shapes[i][1])
        size = rows * width * channels
        if self.buffers.get(name) is None or self.buffers[name].size < size:
            self.buffers[name] = np.empty(size, dtype=np.uint8)
        out = self.buffers[name][:size]
        offset = self.starts[name] + channels * (int(self.split.offsets[i]) + top * width)
        view, done = memoryview(out), 0
        while done < size:
            got = os.preadv(self.fds[name], [view[done:]], offset + done)
            if got <= 0:
                raise DataError(f"{self.split.folder / (name + '.npy')}: ends before image {i}'s pixels "
                                "(a truncated store?); re-run the preprocess stage")
            done += got
        return out.reshape(rows, width, channels)

    def crop_into(self, i: int, top: int, left: int, image: np.ndarray, label: np.ndarray) -> None:
        """Item i's crop at (top, left) into `image` (h, w, 3) and `label` (h, w), uint8, of the crop's size."""
        crop_h, crop_w = label.shape
        h, w = (int(s) for s in self.split.shapes[i])
        if top < 0 or left < 0 or top + crop_h > h or left + crop_w > w:
            raise ValueError(f"crop at ({top}, {left}) of {crop_h}x{crop_w} leaves the image {(h, w)}")
        columns = slice(left, left + crop_w)
        image[...] = self._rows("images", 3, i, top, crop_h)[:, columns]
        label[...] = self._rows("labels", 1, i, top, crop_h)[:, columns, 0]


class CropBatch(NamedTuple):
    """A batch of uint8 crops as `SegmentationDataset.__getitems__` builds it: (N, h, w, 3), (N, h, w)."""

    images: torch.Tensor
    labels: torch.Tensor


def collate_crops(batch: Any) -> Any:
    """The DataLoader collate_fn of the uint8 loader: a CropBatch is already the batch (no stacking
    copy); anything else goes through torch's default_collate."""
    if isinstance(batch, CropBatch):
        return [batch.images, batch.labels]
    return default_collate(batch)


def load_split(folder: Path) -> StoredSplit:
    """Open a split written by `preprocess` (memory-mapped, read-only)."""
    folder = Path(folder)
    files = [folder / name for name in ("images.npy", "labels.npy", "shapes.npy", "ids.json")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder}: {', '.join(missing)} missing; run the preprocess stage "
                        "(`d2lflow stage segmentation preprocess` or `dvc repro`) first")
    shapes = np.load(files[2]).astype(np.int32).reshape(-1, 2)
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0].astype(np.int64) * shapes[:, 1])])
    images, labels = (np.load(f, mmap_mode="r") for f in files[:2])
    ids = json.loads(files[3].read_text())
    if len(ids) != len(shapes) or labels.size != offsets[-1] or images.size != 3 * offsets[-1]:
        raise DataError(f"{folder}: ids, shapes and arrays disagree (a partial or mixed store?); "
                        "re-run the preprocess stage")
    return StoredSplit(folder, ids, shapes, offsets, images, labels)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB → float32 (3, H, W): /255, then ImageNet mean and std per channel."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.permute(2, 0, 1).contiguous()


def device_batch(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch (N, H, W, 3) images and (N, H, W) labels → on `device`: float32 (N, 3, H, W)
    normalised as `normalize` does each image (same ops, same order: bit-identical on the CPU), and
    int64 labels. NCHW-contiguous unless `channels_last` (then the NHWC memory of the upload itself)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous(memory_format=layout)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    # The per-element ops of `normalize`, in its order (u8 -> f32, / 255, - mean, / std): the same bits,
    # after a uint8 transpose instead of a float one, in place, with no 3-wide innermost broadcast.
    x = x.float().div_(255.0).sub_(mean).div_(std)
    return x, labels.to(device, non_blocking=True).long()


def crop_box(height: int, width: int, crop_h: int, crop_w: int, rng: np.random.Generator) -> tuple[int, int]:
    """A uniformly random (top, left) of a crop_h × crop_w window (torchvision `RandomCrop.get_params`)."""
    if height < crop_h or width < crop_w:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the image {height}x{width}")
    return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))


def center_box(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """(top, left) of the centred window, rounded as torchvision `center_crop` does."""
    if height < crop_h or width < crop_w:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the image {height}x{width}")
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))


def voc_crop(image: np.ndarray, label: np.ndarray, top: int, left: int, crop_h: int,
             crop_w: int) -> tuple[np.ndarray, np.ndarray]:
    """The same rectangle of an image (H, W, C) and its label (H, W)."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    if top < 0 or left < 0 or top + crop_h > label.shape[0] or left + crop_w > label.shape[1]:
        raise ValueError(f"crop at ({top}, {left}) of {crop_h}x{crop_w} leaves the image {label.shape}")
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    return image[window], label[window]


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; inside a DataLoader worker one created in shared memory (as
    default_collate allocates its output: `share_memory_()` on a private tensor would allocate and
    copy the batch twice, a third of a worker's time per batch)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class SegmentationDataset(Dataset):
    """(normalised image float32 3×h×w, label int64 h×w with 255 = void) crops of a preprocessed split;
    with normalise=False (training's loader) uint8 (h×w×3, h×w) crops for `device_batch` instead.

    train=True: a random crop drawn from SeedSequence([seed, epoch, i]); train=False: the centre crop.
    The store is opened lazily per process and never pickled, so workers share the page cache.
    """

    def __init__(self, folder: Path, crop_size: tuple[int, int], seed: int, train: bool,
                 normalise: bool = True) -> None:
        self.folder = Path(folder)
        self.crop_h, self.crop_w = (int(s) for s in crop_size)
        self.seed, self.train, self.epoch = int(seed), bool(train), 0
        self.normalise = bool(normalise)
        self._split: StoredSplit | None = load_split(self.folder)
        self._reader: CropReader | None = None
        shapes = self._split.shapes
        small = (shapes[:, 0] < self.crop_h) | (shapes[:, 1] < self.crop_w)
        if small.any():
            raise DataError(f"{self.folder}: {int(small.sum())} images are smaller than the crop "
                            f"{self.crop_h}x{self.crop_w}; use the crop_size the data was preprocessed with")
        self._len = len(self._split)

    @property
    def split(self) -> StoredSplit:
        if self._split is None:
            self._split = load_split(self.folder)
        return self._split

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_split": None, "_reader": None}

    def __del__(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._reader.close()

    def uint8(self) -> SegmentationDataset:
        """The same crops (same seed, epoch and boxes) as uint8, for `device_batch`."""
        clone = SegmentationDataset.__new__(SegmentationDataset)
        clone.__dict__.update({**self.__dict__, "_reader": None, "normalise": False})
        return clone

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._len

    def box(self, i: int) -> tuple[int, int]:
        """(top, left) of item i's crop in the current epoch."""
        h, w = (int(s) for s in self.split.shapes[i])
        if not self.train:
            return center_box(h, w, self.crop_h, self.crop_w)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(i)]))
        return crop_box(h, w, self.crop_h, self.crop_w, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        top, left = self.box(i)
        if self.normalise:
            image, label = voc_crop(self.split.image(i), self.split.label(i), top, left, self.crop_h, self.crop_w)
            return normalize(image), torch.from_numpy(label.astype(np.int64))
        if self._reader is None:
            self._reader = CropReader(self.split)
        image = np.empty((self.crop_h, self.crop_w, 3), dtype=np.uint8)
        label = np.empty((self.crop_h, self.crop_w), dtype=np.uint8)
        self._reader.crop_into(i, top, left, image, label)
        return torch.from_numpy(image), torch.from_numpy(label)

    def __getitems__(self, indices: list[int]) -> CropBatch | list[tuple[torch.Tensor, torch.Tensor]]:
        """A DataLoader batch at once. uint8: each crop read straight into its slot of one batch
        tensor (created in shared memory inside a worker, as default_collate does); collate with
        `collate_crops`. Float: the items, for default_collate."""
        if self.normalise:
            return [self[i] for i in indices]
        if self._reader is None:
            self._reader = CropReader(self.split)
        images = _batch_tensor((len(indices), self.crop_h, self.crop_w, 3))
        labels = _batch_tensor((len(indices), self.crop_h, self.crop_w))
        image_slots, label_slots = images.numpy(), labels.numpy()
        for slot, i in enumerate(indices):
            top, left = self.box(i)
            self._reader.crop_into(i, top, left, image_slots[slot], label_slots[slot])
        return CropBatch(images, labels)
