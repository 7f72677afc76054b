"""The training run every pipeline opens (tasks.tracking.training_run): lineage tags, params with their
full keys, the run id for later stages, and system metrics sampled while training runs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tasks import tracking
from tasks.atomic import read_json
from tasks.params import load_params
from tests.conftest import REPO


def test_training_run_records_lineage_params_and_samples_system_metrics(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # a root outside git: commit 'unknown'
    params = load_params(tmp_path / "params.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracking.training_run("word2vec", params, "cpu", tmp_path / "run.json", world_size=1) as run:
        run_id = run.info.run_id
        # A run as long as the sampler needs (not a race against it): wait, bounded, for its first values.
        deadline = time.monotonic() + 60
        while not any(key.startswith("system/") for key in client.get_run(run_id).data.metrics):
            assert time.monotonic() < deadline, "no system metric was logged within 60 s"
            time.sleep(0.2)
    data = client.get_run(run_id).data
    assert any(key.startswith("system/cpu") for key in data.metrics)
    assert data.tags["d2lflow.pipeline"] == "word2vec" and data.tags["d2lflow.device"] == "cpu"
    assert data.tags["d2lflow.git_commit"] == "unknown" and data.tags["d2lflow.git_dirty"] == "true"
    assert data.tags["d2lflow.world_size"] == "1" and data.tags["d2lflow.seed"] == str(params.seed)
    assert data.tags["d2lflow.torch_threads"] == str(torch.get_num_threads())  # CPU bits depend on it
    assert data.params["word2vec.train.lr"] == str(params.word2vec.train.lr)
    assert read_json(tmp_path / "run.json")["run_id"] == run_id
    assert client.get_experiment(run.info.experiment_id).name == "word2vec"
