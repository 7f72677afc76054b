"""Runs inside DVC's experiment executors log to the user's own MLflow store, and a finished run is
never reopened by a later training that resumes its checkpoint. Fast: no stage runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tasks import tracking
from tasks.params import load_params, set_params
from tests.conftest import REPO


@pytest.fixture
def executor(tmp_path: Path) -> Path:
    """A copy of the repository's params as DVC's temporary executor has it (relative store URIs)."""
    folder = tmp_path / "executor"
    folder.mkdir()
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    return folder


@pytest.mark.parametrize(("tracking_uri", "artifact_root"), [("sqlite:///mlflow.db", "mlartifacts"),
                                                             ("sqlite:///stores/runs.db", "stores/art")])
def test_an_experiment_executor_logs_to_the_store_of_the_users_repository(
        executor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str, artifact_root: str):
    user = tmp_path / "user-repo"
    (user / "stores").mkdir(parents=True)
    set_params(executor / "params.yaml", [f"mlflow.tracking_uri={tracking_uri}",
                                          f"mlflow.artifact_root={artifact_root}", "mlflow.system_metrics=false"])
    monkeypatch.setenv("DVC_ROOT", str(user))  # what DVC sets for the stages of `dvc exp run --temp/--queue`
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lr")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    params = load_params(executor / "params.yaml")
    db = user / tracking_uri.removeprefix("sqlite:///")
    assert tracking.configure(params) == f"sqlite:///{db.resolve()}"
    with tracking.training_run("word2vec", params, "cpu", executor / "run.json") as run:
        pass
    shutil.rmtree(executor)  # DVC deletes the executor's folder
    found = MlflowClient(f"sqlite:///{db}").get_run(run.info.run_id)
    assert found.info.run_name.endswith("-brisk-lr")
    assert found.data.tags["d2lflow.dvc_exp_name"] == "brisk-lr"
    assert found.data.tags["d2lflow.dvc_exp_baseline"] == "a" * 40
    assert found.info.artifact_uri.startswith((user / artifact_root / "word2vec").resolve().as_uri())


def test_outside_an_experiment_relative_stores_resolve_against_the_params_file(executor: Path,
                                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DVC_ROOT", "/")  # `dvc repro` names the repository it runs in; no experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert tracking.configure(load_params(executor / "params.yaml")) == f"sqlite:///{(executor / 'other.db').resolve()}"


def test_store_uris_with_a_scheme_stay_as_they_are(executor: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DVC_ROOT", str(executor.parent))
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lr")
    for uri in ("http://127.0.0.1:5000", "postgresql://u@127.0.0.1/db", "databricks", f"sqlite:///{executor}/a.db"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert tracking.configure(load_params(executor / "params.yaml")) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")  # a file store folder, relative
    assert tracking.configure(load_params(executor / "params.yaml")) == str(executor.parent.resolve() / "mlruns")


def test_a_checkpoint_of_a_finished_run_gets_a_new_run_and_an_interrupted_one_continues(executor: Path):
    set_params(executor / "params.yaml", ["mlflow.system_metrics=false"])
    params = load_params(executor / "params.yaml")
    with tracking.training_run("word2vec", params, "cpu", executor / "run.json") as first:
        pass  # trained to the end: FINISHED
    with tracking.training_run("word2vec", params, "cpu", executor / "run.json",
                               resume_run_id=first.info.run_id) as again:
        pass
    assert again.info.run_id != first.info.run_id
    client = MlflowClient()
    assert client.get_run(again.info.run_id).data.tags["d2lflow.resumed_checkpoint_of_run"] == first.info.run_id

    interrupted = client.create_run(first.info.experiment_id)  # a run whose training was killed: RUNNING
    with tracking.training_run("word2vec", params, "cpu", executor / "run.json",
                               resume_run_id=interrupted.info.run_id) as resumed:
        pass
    assert resumed.info.run_id == interrupted.info.run_id
    assert mlflow.get_run(resumed.info.run_id).info.status == "FINISHED"
