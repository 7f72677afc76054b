"""Detection data: the Parquet box tables, the Dataset's targets and augmentation, and the train loop's
refusal of a non-finite loss."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.detection import build_detector
from tasks.detection.annotations import read_split
from tasks.detection.data import DetectionDataset, preprocess
from tasks.detection.train import LOSSES, train
from tasks.detection.transforms import TrainTransform
from tasks.errors import D2lflowError
from tasks.params import DetectionPreprocessParams, DetectionTrainParams, SyntheticVocParams
from tasks.synthetic.voc import write_synthetic_voc


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("det")
    data = write_synthetic_voc(root / "VOCdevkit", SyntheticVocParams(train_images=10, val_images=4,
                                                                      image_size=(96, 128), seed=1))
    out = root / "pre"
    stats = preprocess(DetectionPreprocessParams(), data, out)
    return data, out, stats


def test_preprocess_writes_one_box_table_per_split_with_class_counts(voc) -> None:
    data, out, stats = voc
    boxes = pd.read_parquet(out / "train" / "boxes.parquet")
    images = pd.read_parquet(out / "train" / "images.parquet")
    expected, expected_images, _ = read_split(data, "train", "error")
    pd.testing.assert_frame_equal(boxes, expected)
    assert list(images["image_id"]) == list(expected_images["image_id"]) and len(images) == 10
    assert stats["train"]["objects"] == len(boxes) == sum(stats["train"]["class_counts"].values())
    assert stats["train"]["images_without_objects"] == 10 - boxes["image_id"].nunique() >= 1
    assert list(boxes.columns) == ["image_id", "width", "height", "label", "name", "xmin", "ymin", "xmax", "ymax",
                                   "difficult"]


def test_dataset_targets_match_the_table_and_flips_move_boxes(voc) -> None:
    data, out, _ = voc
    boxes = pd.read_parquet(out / "train" / "boxes.parquet")
    plain = DetectionDataset(out / "train", data)
    flipped = DetectionDataset(out / "train", data, TrainTransform(flip_prob=1.0), seed=0)
    for i, image_id in enumerate(plain.ids):
        image, target = plain[i]
        rows = boxes[boxes.image_id == image_id]
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert target["boxes"].shape == (len(rows), 4)
        assert np.allclose(target["boxes"].numpy(), rows[["xmin", "ymin", "xmax", "ymax"]].to_numpy())
        assert target["labels"].tolist() == rows["label"].tolist()
        flipped_image, flipped_target = flipped[i]
        width = image.shape[2]
        assert torch.equal(flipped_image, image.flip(2))
        assert np.allclose(flipped_target["boxes"][:, [2, 0]].numpy(), width - target["boxes"][:, [0, 2]].numpy())


def test_a_non_finite_loss_stops_training_with_the_loss_dict(voc, tmp_path: Path) -> None:
    data, out, _ = voc
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_detector("mobilenet_v3_large_320_fpn", 21, "none", 16, 96, 128)
        cfg = DetectionTrainParams(lr=1e12, warmup_iters=0, clip_grad_norm=None, epochs=1, batch_size=2)
        with pytest.raises(D2lflowError, match="loss is not finite: {'loss_classifier'") as caught:
            train(model, DetectionDataset(out / "train", data), cfg, 0, torch.device("cpu"), tmp_path / "c.pt", "fp")
    finally:
        torch.set_num_threads(threads)
    assert "detection.train.lr" in str(caught.value)
    assert not (tmp_path / "c.pt").exists()


def test_validating_during_training_does_not_change_the_trained_weights(voc, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Faster R-CNN's samplers draw from torch's global generator; a validation that draws too (a
    DataLoader iterator takes its base seed from it) must leave that stream alone."""
    data, out, _ = voc
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = DetectionTrainParams(epochs=2, batch_size=2, min_size=96, max_size=128, rpn_pre_nms_top_n_train=50,
                               rpn_post_nms_top_n_train=50, box_batch_size_per_image=16)
    calls = []

    def validate(model, epoch: int) -> dict:
        calls.append(epoch)
        torch.rand(7)
        iter(torch.utils.data.DataLoader(range(4)))  # what a validation loader does to the global generator
        return {"val_probe": float(epoch)}

    try:
        weights = []
        for hook, name in ((None, "plain"), (validate, "validated")):
            torch.manual_seed(0)
            model = build_detector("mobilenet_v3_large_320_fpn", 21, "none", 16, 96, 128)
            with caplog.at_level(logging.INFO, logger="tasks.progress"):
                result = train(model, DetectionDataset(out / "train", data), cfg, 0, torch.device("cpu"),
                               tmp_path / f"{name}.pt", "fp", validate=hook)
            weights.append(result.model.state_dict())
    finally:
        torch.set_num_threads(threads)
    assert calls == [1, 2] and [h["val_probe"] for h in result.history] == [1.0, 2.0]
    # the per-epoch MLflow metrics are the record's keys: the four losses, loss and images/s (no seconds)
    assert all(sorted(h) == sorted(["epoch", *LOSSES, "loss", "images_per_s", "val_probe"]) for h in result.history)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.progress"]
    line = (r"detection_train epoch ([12])/2 loss=\S+ loss_classifier=\S+ loss_box_reg=\S+ loss_objectness=\S+ "
            r"loss_rpn_box_reg=\S+ \S+ images/s elapsed \S+ ETA \S+")
    assert [re.fullmatch(line, m)[1] if re.fullmatch(line, m) else m for m in lines] == ["1", "2"] * 2
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
