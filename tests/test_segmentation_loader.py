"""The FCN training loader: uint8 crops read from the store, normalised per batch on the device. On
the CPU its batches are bit for bit those of the per-image float path (the path before it), for
every seed, epoch and worker count; and the FCN trains on them exactly as it did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.fcn import build_fcn
from tasks import distributed
from tasks.errors import DataError
from tasks.params import SegmentationPreprocessParams, SegmentationTrainParams, SyntheticVocParams
from tasks.segmentation.data import (
    SegmentationDataset,
    collate_crops,
    device_batch,
    load_split,
    preprocess,
    voc_crop,
)
from tasks.segmentation.train import epoch_loader, pixel_loss, train
from tasks.synthetic.voc import write_synthetic_voc

CPU = torch.device("cpu")
CROP = (64, 96)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    data = write_synthetic_voc(root / "VOCdevkit", SyntheticVocParams(train_images=11, val_images=2,
                                                                      image_size=(90, 130), small_fraction=0.0,
                                                                      seed=4))
    preprocess(data, root / "pre", SegmentationPreprocessParams(crop_size=CROP))
    return root / "pre" / "train"


def _batches(dataset, seed: int, epoch: int, workers: int, batch_size: int = 4):
    cfg = SegmentationTrainParams(batch_size=batch_size, num_workers=workers)
    options = {"multiprocessing_context": "spawn"} if workers else {}
    loader = epoch_loader(dataset, cfg, seed, epoch, CPU, distributed.Context(CPU))
    if options:  # spawn: workers get the pickled dataset only (no threads of earlier tests forked)
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=batch_size, shuffle=True,
                                             generator=loader.generator, num_workers=workers,
                                             collate_fn=collate_crops, **options)
    return list(loader)


@pytest.mark.parametrize(("seed", "workers"), [(0, 0), (7, 0), (3, 2)])
def test_uint8_batches_normalised_on_the_device_equal_the_float_path_bit_for_bit(store: Path, seed: int,
                                                                                  workers: int):
    floats = SegmentationDataset(store, CROP, seed=seed, train=True)
    crops = floats.uint8()
    for epoch in range(2):
        before = _batches(floats, seed, epoch, 0)  # today's path: per-image normalise, float batches
        after = _batches(crops, seed, epoch, workers)
        assert len(before) == len(after) == 3
        for (x0, y0), (raw, labels) in zip(before, after, strict=True):
            assert raw.dtype == torch.uint8 and raw.shape[1:] == (*CROP, 3) and labels.dtype == torch.uint8
            x1, y1 = device_batch(raw, labels, CPU)
            assert x1.dtype == x0.dtype and y1.dtype == y0.dtype == torch.int64
            assert x1.is_contiguous() and x1.stride() == x0.stride()
            assert torch.equal(x1, x0) and torch.equal(y1, y0)


def test_uint8_crops_are_the_stored_rectangles_and_follow_the_epoch(store: Path):
    crops = SegmentationDataset(store, CROP, seed=5, train=True).uint8()
    split = load_split(store)
    seen = set()
    for epoch in range(3):
        crops.set_epoch(epoch)
        for i in range(len(crops)):
            image, label = crops[i]
            top, left = crops.box(i)
            batch = crops.__getitems__([i, 0])
            assert torch.equal(batch.images[0], image) and torch.equal(batch.labels[0], label)
            seen.add((i, top, left))
            expected = voc_crop(split.image(i), split.label(i), top, left, *CROP)
            assert np.array_equal(image.numpy(), expected[0]) and np.array_equal(label.numpy(), expected[1])
    assert len(seen) > len(crops)  # the boxes moved between epochs


def test_channels_last_keeps_the_values_and_gives_nhwc_memory(store: Path):
    raw, labels = next(iter(_batches(SegmentationDataset(store, CROP, seed=0, train=True).uint8(), 0, 0, 0)))
    plain, _ = device_batch(raw, labels, CPU)
    nhwc, _ = device_batch(raw, labels, CPU, channels_last=True)
    assert torch.equal(plain, nhwc) and nhwc.is_contiguous(memory_format=torch.channels_last)


def test_a_truncated_store_is_a_data_error_naming_the_file(store: Path, tmp_path: Path):
    folder = tmp_path / "train"
    folder.mkdir()
    for f in store.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    crops = SegmentationDataset(folder, CROP, seed=0, train=True).uint8()
    last = len(crops) - 1
    start = int(crops.split.images.offset) + 3 * int(crops.split.offsets[last])
    with (folder / "images.npy").open("r+b") as handle:  # the store's size is checked on open, not later
        handle.truncate(start + 10)  # the last image is cut after 10 bytes
    with pytest.raises(DataError, match=r"images\.npy: ends before image"):
        crops[last]


def test_fcn_training_on_the_new_loader_gives_the_weights_of_the_float_path(store: Path, tmp_path: Path):
    cfg = SegmentationTrainParams(lr=0.01, momentum=0.9, epochs=2, batch_size=4)
    dataset = SegmentationDataset(store, CROP, seed=0, train=True)
    torch.manual_seed(0)
    result = train(build_fcn(21, "none"), dataset, cfg, 0, CPU, tmp_path / "a.pt", "fp")

    torch.manual_seed(0)  # the loop before the change: float batches from the per-image path
    model = build_fcn(21, "none")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    for epoch in range(cfg.epochs):
        model.train()
        for images, labels in epoch_loader(dataset, cfg, 0, epoch, CPU, distributed.Context(CPU)):
            optimizer.zero_grad(set_to_none=True)
            pixel_loss(model(images), labels).sum().backward()
            optimizer.step()
    a, b = result.model.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
