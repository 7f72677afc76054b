"""What a word2vec run leaves for the MLflow UI and the plots page, from a real `dvc repro` on synthetic
data: validation per epoch, history and figures as artifacts, counts as tags, the model under its name."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import BIN, copy_repo, git, run

pytestmark = pytest.mark.slow
DVC = str(BIN / "dvc")
D2LFLOW = str(BIN / "d2lflow")


def test_a_word2vec_run_has_validation_curves_figures_and_its_models_name(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo", ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=3"])
    run(root, D2LFLOW, "acquire")
    run(root, DVC, "repro", "word2vec_register")
    registered = json.loads((root / "artifacts/word2vec/register/registered.json").read_text())
    heldout = json.loads((root / "artifacts/word2vec/evaluate/metrics.json").read_text())["heldout_loss"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    run_id = registered["run_id"]
    recorded = client.get_run(run_id)

    val = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in val] == [1, 2, 3]
    assert val[-1].value == pytest.approx(heldout, abs=1e-6)  # the last epoch's model is the evaluated one
    assert val[0].value > val[-1].value
    validation = (root / "artifacts/word2vec/train/validation.csv").read_text().splitlines()
    assert validation[0] == "epoch,val_loss" and len(validation) == 4

    # counts are tags; the charts hold scores
    assert "analogy_total" not in recorded.data.metrics and recorded.data.tags["analogy_total"] == "19544"
    assert "epochs" not in recorded.data.metrics and recorded.data.tags["epochs"] == "3"
    assert "vocab_size" not in recorded.data.metrics and "analogy_accuracy" in recorded.data.metrics
    assert recorded.info.run_name == f"word2vec-{git(root, 'rev-parse', 'HEAD').strip()[:8]}"
    experiment = client.get_experiment(recorded.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    artifacts = {a.path for folder in ("history", "plots") for a in client.list_artifacts(run_id, folder)}
    assert artifacts == {"history/history.csv", "history/validation.csv", "plots/word2vec_train_history.png",
                         "plots/word2vec_validation.png"}
    local = Path(client.download_artifacts(run_id, "plots", str(tmp_path / "down")))
    rgb = np.asarray(Image.open(io.BytesIO((local / "word2vec_validation.png").read_bytes())).convert("RGB"))
    assert (rgb.min(axis=2) < 200).sum() > 500  # a drawn figure, not a blank one

    logged = client.search_logged_models(experiment_ids=[recorded.info.experiment_id])
    assert [m.name for m in logged if m.source_run_id == run_id] == ["word2vec"]  # not "model"

    run(root, D2LFLOW, "plots", "word2vec")
    page = (root / "artifacts/plots/word2vec/index.html").read_text()
    assert page.count("<svg") == 2 and "<script" not in page


def test_fcn_and_detection_validate_during_training_every_eval_every_epochs(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo", [
        "segmentation.data.synthetic.train_images=12", "segmentation.data.synthetic.val_images=4",
        "segmentation.train.epochs=2", "detection.train.epochs=3", "detection.train.eval_every=2",
        "detection.train.warmup_iters=2"])
    run(root, D2LFLOW, "acquire")
    run(root, DVC, "repro", "segmentation_train", "detection_train")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    runs = {p: json.loads((root / f"artifacts/{p}/train/run.json").read_text())["run_id"]
            for p in ("segmentation", "detection")}

    for key in ("val_mean_iou", "val_pixel_accuracy"):
        values = client.get_metric_history(runs["segmentation"], key)
        assert [m.step for m in values] == [1, 2] and all(0 <= m.value <= 1 for m in values)
    assert (root / "artifacts/segmentation/train/validation.csv").read_text().splitlines()[0] == (
        "epoch,val_mean_iou,val_pixel_accuracy")
    # every 2nd epoch and the last one; an epoch not validated is absent, never a zero
    assert [m.step for m in client.get_metric_history(runs["detection"], "val_map_50")] == [2, 3]
    rows = (root / "artifacts/detection/train/validation.csv").read_text().splitlines()
    assert rows[0] == "epoch,val_map_50" and [r.split(",")[0] for r in rows[1:]] == ["2", "3"]
    for pipeline, figures in (("segmentation", {"segmentation_train_history.png", "segmentation_validation.png"}),
                              ("detection", {"detection_losses.png", "detection_train_history.png",
                                             "detection_validation.png"})):
        logged = {Path(a.path).name for a in client.list_artifacts(runs[pipeline], "plots")}
        assert logged == figures
