"""The classification chain end to end on synthetic Fashion-MNIST, stage by stage in a temporary
repository root: one epoch of the ReLU LeNet is clearly above chance, every declared output is written,
the MLflow run has the figures, and the registered model answers the same through the pyfunc and
through the safe loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import d2lflow
from tasks.classification.data import load_split
from tasks.classification.stages import STAGES
from tasks.params import load_params, set_params
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_one_epoch_on_synthetic_data_beats_chance_and_registers_a_loadable_model(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    set_params(root / "params.yaml", ["classification.train.variant=relu", "classification.train.epochs=1",
                                      "mlflow.system_metrics=false"])  # the default synthetic set: 6000 + 1000
    params = load_params(root / "params.yaml")
    summaries = {stage: STAGES[stage](params) for stage in ("acquire", "preprocess", "train", "evaluate")}

    assert summaries["preprocess"] == {"train": 5400, "val": 600, "test": 1000}
    assert summaries["train"]["epochs"] == 1 and summaries["train"]["train_images"] == 5400
    metrics = json.loads((root / "artifacts/classification/evaluate/metrics.json").read_text())
    assert metrics == summaries["evaluate"]
    assert metrics["test_images"] == 1000 and metrics["accuracy"] > 0.25  # chance is 0.1 (measured: 0.38)
    per_class = json.loads((root / "artifacts/classification/evaluate/per_class_accuracy.json").read_text())
    assert sum(per_class["per_class_images"].values()) == 1000
    rows = (root / "artifacts/classification/evaluate/confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1001
    hits = sum(a == p for a, p in (row.split(",") for row in rows[1:]))
    assert hits / 1000 == pytest.approx(metrics["accuracy"])
    for name in ("confusion.png", "misclassified.png"):
        assert (root / "artifacts/classification/evaluate" / name).stat().st_size > 5_000
    validation = (root / "artifacts/classification/train/validation.csv").read_text().splitlines()
    assert validation[0] == "epoch,val_loss,val_accuracy" and len(validation) == 2

    registered = STAGES["register"](params)
    assert (registered["name"], registered["version"], registered["alias"]) == ("lenet-fashion-mnist", 1, "champion")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(registered["run_id"], "evaluation")}
    assert {"evaluation/confusion.png", "evaluation/misclassified.png", "evaluation/confusion.csv"} <= artifacts
    assert client.get_run(registered["run_id"]).data.params["classification.train.variant"] == "relu"

    images = load_split(root / "artifacts/classification/preprocess", "test")[0][:8]
    pyfunc = mlflow.pyfunc.load_model("models:/lenet-fashion-mnist@champion").predict(images)
    loaded = d2lflow.load("lenet-fashion-mnist@champion", tracking_uri=uri)
    assert loaded.pipeline == "classification"
    safe = loaded.predict(images)
    np.testing.assert_array_equal(safe["class"], pyfunc["class"])
    np.testing.assert_allclose(safe["probabilities"], pyfunc["probabilities"], rtol=1e-6)
    assert safe["probabilities"].shape == (8, 10)

    again = STAGES["register"](params)
    assert again["outcome"] == "unchanged" and again["version"] == 1
