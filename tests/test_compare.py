"""flows.compare on two runs of a temporary MLflow store: params that differ, metric deltas,
lineage tags that differ, and a clear error for a run that does not exist."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.compare import compare, differing, main, metric_rows


def test_differing_lists_changed_and_one_sided_keys() -> None:
    a = {"lr": "0.002", "seed": "0", "only_a": "1"}
    b = {"lr": "0.02", "seed": "0", "only_b": "2"}
    assert differing(a, b) == [("lr", "0.002", "0.02"), ("only_a", "1", None), ("only_b", None, "2")]
    assert ("seed", "0", "0") in differing(a, b, show_all=True)


def test_metric_rows_give_b_minus_a_and_leave_out_system_metrics() -> None:
    rows = metric_rows({"loss": 0.5, "acc": 0.25, "system/cpu_utilization_percentage": 90.0},
                       {"loss": 0.25, "new": 1.0, "system/cpu_utilization_percentage": 10.0})
    assert rows == [("acc", 0.25, None, None), ("loss", 0.5, 0.25, -0.25), ("new", None, 1.0, None)]


def _run(client: MlflowClient, experiment: str, params: dict, metrics: dict, tags: dict) -> str:
    run = client.create_run(experiment, tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_compare_two_runs_by_id_and_by_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("word2vec", artifact_location=(tmp_path / "art").as_uri())
    lineage = {"d2lflow.git_commit": "a" * 40, "d2lflow.data_dvc_md5": "d1.dir", "d2lflow.seed": "0"}
    first = _run(client, experiment, {"word2vec.train.lr": "0.002", "seed": "0"}, {"heldout_loss": 0.5},
                 lineage)
    second = _run(client, experiment, {"word2vec.train.lr": "0.02", "seed": "0"},
                  {"heldout_loss": 0.375, "system/cpu_utilization_percentage": 50.0},
                  {**lineage, "d2lflow.git_commit": "b" * 40})
    client.create_registered_model("word2vec")
    version = client.create_model_version("word2vec", (tmp_path / "art").as_uri(), run_id=first)
    client.set_registered_model_alias("word2vec", "champion", version.version)

    text = compare(client.get_run(first), client.get_run(second))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["word2vec.train.lr"] == ["0.002", "0.02"] and "seed" not in rows
    assert "param (1 equal, not shown)" in text
    assert rows["heldout_loss"] == ["0.5", "0.375", "-0.125"] and "system/" not in text
    assert rows["git_commit"] == ["a" * 40, "b" * 40] and "data_dvc_md5" not in rows

    assert main(["word2vec@champion", second, "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == text
    assert main(["word2vec@champion", "word2vec@nope", "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: model 'word2vec' alias 'nope' not found in " + uri) and error.count("\n") == 1
