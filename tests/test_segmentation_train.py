"""FCN training: the void label never contributes to the loss, and a resumed run ends with exactly
the weights of an uninterrupted one."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from models.fcn import build_fcn
from tasks.params import SegmentationPreprocessParams, SegmentationTrainParams, SyntheticVocParams
from tasks.runtime import load_checkpoint
from tasks.segmentation.data import SegmentationDataset, preprocess
from tasks.segmentation.train import pixel_loss, train
from tasks.synthetic.voc import write_synthetic_voc
from tasks.voc import VOID

CROP = (64, 64)


def test_void_pixels_never_contribute_to_the_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 21, 8, 8)
    labels = torch.randint(0, 21, (2, 8, 8))
    labels[0, :4] = VOID
    labels[1] = VOID  # an all-void example
    changed = logits.clone()
    changed[0, :, :4] += 100 * torch.randn(21, 4, 8)  # anything at the void pixels
    changed[1] = torch.randn(21, 8, 8) * 100
    assert torch.equal(pixel_loss(logits, labels), pixel_loss(changed, labels))
    assert pixel_loss(logits, labels)[1] == 0
    valid = labels[0] != VOID  # example 0: the mean cross-entropy over its labelled pixels only
    expected = torch.nn.functional.cross_entropy(logits[0].permute(1, 2, 0)[valid], labels[0][valid])
    assert pixel_loss(logits, labels)[0] == pytest.approx(float(expected), rel=1e-6)


def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    data = write_synthetic_voc(tmp_path / "VOCdevkit", SyntheticVocParams(train_images=6, val_images=2,
                                                                           image_size=(72, 80), seed=2))
    preprocess(data, tmp_path / "pre", SegmentationPreprocessParams(crop_size=CROP))
    dataset = SegmentationDataset(tmp_path / "pre" / "train", CROP, seed=0, train=True)
    cfg = SegmentationTrainParams(lr=0.01, momentum=0.9, epochs=3, batch_size=4)
    cpu = torch.device("cpu")

    torch.manual_seed(0)
    whole = train(build_fcn(21, "none"), dataset, cfg, 0, cpu, tmp_path / "a.pt", "fp")
    torch.manual_seed(0)
    train(build_fcn(21, "none"), dataset, cfg.model_copy(update={"epochs": 1}), 0, cpu, tmp_path / "b.pt", "fp")
    state = load_checkpoint(tmp_path / "b.pt", "fp")
    assert state is not None and state["epoch"] == 1
    assert sorted(state) == ["epoch", "fingerprint", "history", "model", "optimizer", "run_id", "scaler"]
    torch.manual_seed(123)  # the resumed model's own init must not matter
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        resumed = train(build_fcn(21, "none"), dataset, cfg, 0, cpu, tmp_path / "b.pt", "fp", state=state)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.progress"]
    line = (r"segmentation_train epoch ([23])/3 loss=\d+\.\d{4} train_pixel_accuracy=\S+ \S+ images/s "
            r"elapsed \S+ ETA \S+")
    assert [re.fullmatch(line, m)[1] if re.fullmatch(line, m) else m for m in lines] == ["2", "3"]
    assert resumed.resumed_from_epoch == 1 and len(resumed.history) == 3
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    assert all(sorted(h) == ["epoch", "images_per_s", "loss", "seconds", "train_pixel_accuracy"] for h in whole.history)
    assert load_checkpoint(tmp_path / "b.pt", "other params") is None
