"""The segmentation chain end to end on synthetic VOC: the Prefect flow runs every DVC stage, the
model beats the constant all-background predictor, registers and loads back by alias; afterwards
`dvc repro` retrains nothing (the flow and DVC agree on dvc.lock) and registers nothing new."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tasks.params import load_params
from tasks.segmentation.data import load_split
from tests.conftest import BIN, REPO, copy_repo, run

pytestmark = pytest.mark.slow


def read(root: Path, relative: str) -> dict:
    return json.loads((root / relative).read_text())


def test_prefect_flow_trains_an_fcn_that_beats_all_background_and_registers_it(tmp_path: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline_flow

    # Validation only after the last epoch (not after each of 20): it runs under a forked RNG and in eval mode,
    # so the trained weights and every figure below are the same; validation every N epochs has its own test
    # (test_e2e_ui). Saves 19 passes over the val images.
    epochs = load_params(REPO / "params.yaml").segmentation.train.epochs
    root = copy_repo(tmp_path / "repo", [f"segmentation.train.eval_every={epochs}"])
    with prefect_test_harness(server_startup_timeout=120):
        summary = pipeline_flow("segmentation", str(root))

    metrics = summary["metrics"]
    stats = read(root, "artifacts/segmentation/preprocess/stats.json")
    assert stats["train"]["dropped_small"] >= 1 and stats["train"]["kept"] == summary["train"]["train_images"]
    # Measured on the default synthetic data (2 cores): see the closing note / README.
    assert metrics["mean_iou"] > metrics["background_mean_iou"] + 0.15
    assert metrics["pixel_accuracy"] > metrics["background_pixel_accuracy"] + 0.05
    assert metrics["tiled_mean_iou"] > metrics["background_mean_iou"] + 0.15
    per_class = read(root, "artifacts/segmentation/evaluate/per_class_iou.json")["center_crop"]
    assert per_class["per_class_iou"]["background"] is not None
    assert all((per_class["per_class_iou"][name] is None) == (name in per_class["absent_classes"])
               for name in per_class["per_class_iou"])
    confusion = (root / "artifacts/segmentation/evaluate/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted,pixels" and len(confusion) > 2
    assert (root / "artifacts/segmentation/evaluate/predictions.png").stat().st_size > 10_000

    registered = summary["registered"]
    assert (registered["name"], registered["version"], registered["alias"]) == ("fcn-voc", 1, "champion")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    run_info = client.get_run(registered["run_id"])
    assert run_info.data.tags["d2lflow.pipeline"] == "segmentation"
    assert run_info.data.params["segmentation.train.backbone_weights"] == "none"
    assert [m.step for m in client.get_metric_history(registered["run_id"], "train_loss")] == list(
        range(1, summary["train"]["epochs"] + 1))
    artifacts = {a.path for a in client.list_artifacts(registered["run_id"], "evaluation")}
    assert "evaluation/predictions.png" in artifacts

    model = mlflow.pyfunc.load_model("models:/fcn-voc@champion")
    image = load_split(root / "artifacts/segmentation/preprocess/val").image(0)
    predicted = model.predict(np.asarray(image)[None])
    assert predicted.shape == (1, *image.shape[:2]) and predicted.dtype == np.int64
    assert 0 <= predicted.min() and predicted.max() <= 20

    again = run(root, str(BIN / "dvc"), "repro", "segmentation_register")
    for stage in ("segmentation_preprocess", "segmentation_train", "segmentation_evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout + again.stderr
    # register always runs (it checks the configured registry) and finds the same version: nothing new
    outcome = json.loads((root / "artifacts/segmentation/register/outcome.json").read_text())
    assert outcome["message"] == "unchanged: fcn-voc version 1 is still champion"
