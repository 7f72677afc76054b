"""The same pipeline code against an MLflow tracking server backed by PostgreSQL, with the artifacts
in the server's own artifact root: runs, lineage, the registry and the model all go through it."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from tasks import lineage
from tests.conftest import BIN, copy_repo, git, run
from tests.servers import MlflowServer, Postgres

pytestmark = [pytest.mark.slow, pytest.mark.integration]
D2LFLOW = str(BIN / "d2lflow")
TINY = ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=2"]


def read(root: Path, relative: str) -> dict:
    return json.loads((root / relative).read_text())


def test_pipeline_on_a_postgresql_tracking_server_registers_a_model_loadable_by_alias(
        tmp_path: Path, postgres_tracking_server: tuple[Postgres, MlflowServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    postgres, server = postgres_tracking_server
    root = copy_repo(tmp_path / "repo", TINY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    run(root, D2LFLOW, "run", "word2vec", "--no-prefect")

    registered = read(root, "artifacts/word2vec/register/registered.json")
    assert (registered["name"], registered["version"], registered["alias"]) == ("word2vec", 1, "champion")
    run_id = registered["run_id"]
    mlflow.set_tracking_uri(server.url)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("word2vec")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"

    found = client.get_run(run_id)
    assert found.info.experiment_id == experiment.experiment_id
    tags, params, metrics = found.data.tags, found.data.params, found.data.metrics
    assert tags["d2lflow.git_commit"] == git(root, "rev-parse", "HEAD").strip()
    assert tags["d2lflow.data_dvc_md5"] == lineage.data_hash(root) != "unknown"
    locked = lineage.stage_hashes(root, "word2vec_")
    for stage in ("word2vec_preprocess", "word2vec_train", "word2vec_evaluate"):
        assert tags[f"d2lflow.dvc_lock.{stage}"] == locked[stage]
    assert tags["d2lflow.device"] == "cpu" and tags["d2lflow.seed"] == "0"
    assert params["word2vec.train.epochs"] == "2" and params["word2vec.data.synthetic.sentences"] == "3000"
    evaluation = read(root, "artifacts/word2vec/evaluate/metrics.json")
    assert metrics["heldout_loss"] == pytest.approx(evaluation["heldout_loss"])
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert found.inputs.dataset_inputs[0].dataset.digest == lineage.data_hash(root)[:36]

    champion = client.get_model_version_by_alias("word2vec", "champion")
    assert (champion.version, champion.run_id) == ("1", run_id)
    model = mlflow.pyfunc.load_model("models:/word2vec@champion")
    vectors = model.predict(pd.DataFrame({"word": ["chip", "market"]}))
    weights = torch.load(root / "artifacts/word2vec/train/model.pt", weights_only=True)["embed_v.weight"]
    vocab = read(root, "artifacts/word2vec/preprocess/vocab.json")["idx_to_token"]
    assert torch.equal(torch.from_numpy(vectors[0]), weights[vocab.index("chip")])
    assert torch.equal(torch.from_numpy(vectors[1]), weights[vocab.index("market")])

    # Artifacts live in the server's artifact root; nothing of MLflow's is written into the repository.
    run_artifacts = server.artifacts / experiment.experiment_id / run_id / "artifacts"
    assert (run_artifacts / "lineage/params.yaml").read_bytes() == (root / "params.yaml").read_bytes()
    assert len(list((server.artifacts / experiment.experiment_id / "models").glob("*/artifacts/MLmodel"))) == 1
    assert not [name for name in ("mlflow.db", "mlartifacts", "mlruns") if (root / name).exists()]

    # The rows are in PostgreSQL itself.
    assert postgres.query("SELECT name FROM experiments WHERE experiment_id = %s",
                          int(experiment.experiment_id)) == [("word2vec",)]
    assert postgres.query("SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    assert postgres.query("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train_loss' ORDER BY step",
                          run_id) == [(1,), (2,)]
    assert postgres.query("SELECT name, version, run_id FROM model_versions") == [("word2vec", 1, run_id)]
    assert postgres.query("SELECT alias, version FROM registered_model_aliases") == [("champion", 1)]

    # A second, shorter training: the champion rule reads the first version back through the server.
    run(root, D2LFLOW, "run", "word2vec", "--no-prefect", "--skip-acquire", "-S", "word2vec.train.epochs=1")
    second = read(root, "artifacts/word2vec/register/registered.json")
    assert second["version"] == 2 and second["run_id"] != run_id
    assert second["previous_champion_value"] == pytest.approx(evaluation["heldout_loss"])
    expected = "champion" if second["primary_metric_value"] < evaluation["heldout_loss"] else "challenger"
    assert second["alias"] == expected
    aliases = dict(postgres.query("SELECT alias, version FROM registered_model_aliases"))
    assert aliases[expected] == 2 and aliases["champion"] == (2 if expected == "champion" else 1)
