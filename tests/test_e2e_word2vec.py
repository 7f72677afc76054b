"""The word2vec chain end to end on synthetic data: `dvc repro`, `dvc exp run`, the Prefect flow,
and a training stage killed mid-run. Each works in a temporary git copy of the repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from tasks import lineage
from tasks.params import load_params
from tasks.synthetic.ptb import planted_groups
from tests.conftest import BIN, Snapshot, copy_repo, git, isolate, run

pytestmark = pytest.mark.slow
DVC = str(BIN / "dvc")
D2LFLOW = str(BIN / "d2lflow")


def client_for(root: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlflow.db'}")
    return MlflowClient()


def read(root: Path, relative: str) -> dict:
    return json.loads((root / relative).read_text())


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """A repository copy after `d2lflow acquire` and `dvc repro word2vec_register` on the default params,
    saved once: each test that starts from it gets these files back (one reproduction, not one per test)."""
    with pytest.MonkeyPatch.context() as monkeypatch:  # set up before conftest's per-test isolation
        isolate(monkeypatch, tmp_path_factory.mktemp("env"))
        root = copy_repo(tmp_path_factory.mktemp("reproduced") / "repo")
        run(root, D2LFLOW, "acquire")
        run(root, DVC, "repro", "word2vec_register")
        return Snapshot(root)


def test_dvc_repro_trains_evaluates_and_registers_with_lineage(reproduced: Snapshot, tmp_path: Path) -> None:
    root = reproduced.restore()
    # acquire wrote data/ and repro only reads it: an unchanged data.dvc now means acquire's data matched it
    assert git(root, "status", "--porcelain", "data.dvc") == "", "synthetic data must match the committed data.dvc"

    metrics = read(root, "artifacts/word2vec/evaluate/metrics.json")
    train = read(root, "artifacts/word2vec/train/metrics.json")
    assert train["epochs"] == 5 and train["resumed_from_epoch"] == 0
    assert 0.1 < metrics["heldout_loss"] < 0.5  # an untrained model scores ln 2 = 0.693
    assert metrics["wordsim353_total"] == 353 and metrics["analogy_total"] == 19544
    neighbours = read(root, "artifacts/word2vec/evaluate/neighbours.json")
    chip_group = set(planted_groups(load_params(root / "params.yaml").word2vec.data.synthetic)[0])
    assert sum(word in chip_group for word, _ in neighbours["chip"]) >= 2

    registered = read(root, "artifacts/word2vec/register/registered.json")
    assert (registered["name"], registered["version"], registered["alias"]) == ("word2vec", 1, "champion")
    client = client_for(root)
    run_data = client.get_run(registered["run_id"]).data
    tags = run_data.tags
    assert tags["d2lflow.git_commit"] == git(root, "rev-parse", "HEAD").strip()
    assert tags["d2lflow.git_dirty"] == "false"
    assert tags["d2lflow.data_dvc_md5"] == lineage.data_hash(root) != "unknown"
    locked = lineage.stage_hashes(root, "word2vec_")
    for stage in ("word2vec_preprocess", "word2vec_train", "word2vec_evaluate"):
        assert tags[f"d2lflow.dvc_lock.{stage}"] == locked[stage]
    assert tags["d2lflow.seed"] == "0" and tags["d2lflow.device"] == "cpu"
    assert tags["d2lflow.version.torch"] == metadata.version("torch")
    assert run_data.params["word2vec.train.lr"] == "0.002"
    assert run_data.metrics["heldout_loss"] == pytest.approx(metrics["heldout_loss"])
    history = client.get_metric_history(registered["run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert client.get_run(registered["run_id"]).inputs.dataset_inputs[0].dataset.digest == lineage.data_hash(root)[:36]

    model = mlflow.pyfunc.load_model("models:/word2vec@champion")
    vectors = model.predict(pd.DataFrame({"word": ["chip", "no-such-word"]}))
    weights = torch.load(root / "artifacts/word2vec/train/model.pt", weights_only=True)["embed_v.weight"]
    vocab = read(root, "artifacts/word2vec/preprocess/vocab.json")["idx_to_token"]
    assert torch.equal(torch.from_numpy(vectors[0]), weights[vocab.index("chip")])
    assert torch.equal(torch.from_numpy(vectors[1]), weights[0])  # unknown words are <unk>

    registered_bytes = (root / "artifacts/word2vec/register/registered.json").read_bytes()
    again = run(root, DVC, "repro", "word2vec_register")
    for stage in ("word2vec_preprocess", "word2vec_train", "word2vec_evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout + again.stderr
    # register always runs (it checks the configured registry) and finds the same version: nothing new
    assert read(root, "artifacts/word2vec/register/outcome.json")["message"] == \
        "unchanged: word2vec version 1 is still champion"
    assert (root / "artifacts/word2vec/register/registered.json").read_bytes() == registered_bytes
    assert len(client.search_model_versions("name = 'word2vec'")) == 1
    shown = json.loads(run(root, DVC, "metrics", "show", "--json").stdout)
    assert json.dumps(shown).count("heldout_loss") >= 1
    run(root, DVC, "params", "diff")
    run(root, DVC, "plots", "show", "artifacts/word2vec/train/history.csv", "--out", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file()


def test_dvc_exp_run_with_a_changed_param_registers_a_new_version(reproduced: Snapshot) -> None:
    root = reproduced.restore()
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "baseline reproduction")
    run(root, DVC, "exp", "run", "word2vec_register", "-n", "fast-lr", "-S", "word2vec.train.lr=0.02")

    params_diff = run(root, DVC, "params", "diff", "--json").stdout
    lr = json.loads(params_diff)["params.yaml"]["word2vec.train.lr"]
    assert (lr["old"], lr["new"]) == (0.002, 0.02)
    exps = run(root, DVC, "exp", "show", "--json").stdout
    assert "fast-lr" in exps
    registered = read(root, "artifacts/word2vec/register/registered.json")
    assert registered["version"] == 2
    client = client_for(root)
    run_info = client.get_run(registered["run_id"])
    assert run_info.data.params["word2vec.train.lr"] == "0.02"
    assert run_info.data.tags["d2lflow.dvc_exp_name"] == "fast-lr"
    assert run_info.info.run_name.endswith("-fast-lr")
    champion = client.get_model_version_by_alias("word2vec", "champion")
    latest = read(root, "artifacts/word2vec/evaluate/metrics.json")["heldout_loss"]
    expected_alias = "champion" if latest < registered["previous_champion_value"] else "challenger"
    assert registered["alias"] == expected_alias
    assert str(champion.version) == ("2" if expected_alias == "champion" else "1")


def test_prefect_flow_runs_every_stage_and_keeps_the_better_model_champion(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline_flow
    from tasks.params import set_params

    root = copy_repo(tmp_path / "repo", ["word2vec.train.epochs=3"])
    with prefect_test_harness(server_startup_timeout=120):
        first = pipeline_flow("word2vec", str(root))
        set_params(root / "params.yaml", ["word2vec.train.epochs=1"])  # a worse model
        second = pipeline_flow("word2vec", str(root))
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts()
    assert first["registered"]["alias"] == "champion" and first["registered"]["version"] == 1
    assert second["registered"]["version"] == 2
    assert second["metrics"]["heldout_loss"] > first["metrics"]["heldout_loss"]
    assert second["registered"]["alias"] == "challenger"
    assert str(client_for(root).get_model_version_by_alias("word2vec", "champion").version) == "1"
    summaries = [a for a in artifacts if a.key == "word2vec-summary"]
    assert len(summaries) == 2 and "challenger" in " ".join(a.data for a in summaries)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {"word2vec_preprocess", "word2vec_train", "word2vec_evaluate", "word2vec_register"} <= set(lock)
    assert lock["word2vec_train"]["params"]["params.yaml"]["word2vec.train"]["epochs"] == 1


def test_killed_training_stage_resumes_from_its_checkpoint_with_identical_weights(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo", ["word2vec.train.epochs=10"])
    run(root, D2LFLOW, "acquire")
    run(root, DVC, "repro", "word2vec_preprocess")
    checkpoint = root / "checkpoints/word2vec/last.pt"
    stage = subprocess.Popen([DVC, "repro", "word2vec_train"], cwd=root, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and stage.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(stage.pid, signal.SIGKILL)
    stage.wait()
    assert checkpoint.exists(), "the stage ended before writing its first checkpoint"
    assert not (root / "artifacts/word2vec/train/model.pt").exists(), "a killed stage must not leave a model"

    run(root, DVC, "repro", "word2vec_train")
    resumed = read(root, "artifacts/word2vec/train/metrics.json")
    assert 1 <= resumed["resumed_from_epoch"] < 10 and resumed["epochs"] == 10
    resumed_weights = torch.load(root / "artifacts/word2vec/train/model.pt", weights_only=True)

    for leftover in (root / "checkpoints").rglob("*.pt"):
        leftover.unlink()
    run(root, "python", "-m", "tasks", "word2vec", "train")
    fresh = read(root, "artifacts/word2vec/train/metrics.json")
    assert fresh["resumed_from_epoch"] == 0
    fresh_weights = torch.load(root / "artifacts/word2vec/train/model.pt", weights_only=True)
    assert all(torch.equal(resumed_weights[k], fresh_weights[k]) for k in fresh_weights)
    assert fresh["final_epoch_loss"] == resumed["final_epoch_loss"]
