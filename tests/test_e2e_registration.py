"""The word2vec register stage as a real process: killed (SIGKILL) at each step and run again, two
registrations at once, another MLflow store, and a run in which nothing changed. One short training
(1 epoch, synthetic PTB) is shared by the module; each test registers into its own fresh store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import BIN, copy_repo, run

pytestmark = pytest.mark.slow
DVC = str(BIN / "dvc")
D2LFLOW = str(BIN / "d2lflow")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository copy whose word2vec chain ran up to evaluate (the register stage not yet)."""
    root = copy_repo(tmp_path_factory.mktemp("registration") / "repo",
                     ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=1"])
    # Module-scoped: set up before conftest's per-test isolation, so this environment is its own.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "DVC_"))},
           "D2LFLOW_CACHE": str(root.parent / "cache"), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true"}
    for command in ([D2LFLOW, "acquire"], [DVC, "repro", "word2vec_evaluate"]):
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
    return root


def _env(store: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", **extra}


def register(root: Path, store: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasks", "word2vec", "register"], cwd=root, env=_env(store, **extra),
                          capture_output=True, text=True, timeout=600)


def client(store: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    return MlflowClient(f"sqlite:///{store}", f"sqlite:///{store}")


@pytest.mark.parametrize("point", ["after_model_logged", "after_version_created", "before_alias"])
def test_a_registration_killed_at_any_step_is_completed_by_the_next_run(trained: Path, tmp_path: Path,
                                                                        point: str) -> None:
    store = tmp_path / "store.db"
    killed = register(trained, store, D2LFLOW_TEST_KILL_AT=point)
    assert killed.returncode == -9, killed.stderr
    store_client = client(store)
    running = store_client.search_runs(["1"], "attributes.status = 'RUNNING'")
    assert len(running) == 1, "the killed process left its run open"
    versions_before = store_client.search_model_versions("name = 'word2vec'")
    assert len(versions_before) == (0 if point == "after_model_logged" else 1)

    done = register(trained, store)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    versions = store_client.search_model_versions("name = 'word2vec'")
    assert [int(v.version) for v in versions] == [1] == [result["version"]]  # no duplicate
    assert int(store_client.get_model_version_by_alias("word2vec", "champion").version) == 1
    assert result["outcome"] == ("registered" if point == "after_model_logged" else "resumed")
    killed_run = store_client.get_run(running[0].info.run_id)
    assert killed_run.data.tags["d2lflow.killed"].startswith("process ")  # marked KILLED, then reopened
    assert killed_run.info.status == "FINISHED" and versions[0].run_id == killed_run.info.run_id
    assert not store_client.search_runs(["1"], "attributes.status = 'RUNNING'")
    logged = store_client.search_logged_models(experiment_ids=["1"])
    assert len(logged) == 1, "the model a killed attempt logged is reused, not logged again"

    again = json.loads(register(trained, store).stdout)
    assert (again["outcome"], again["message"]) == ("unchanged", "unchanged: word2vec version 1 is still champion")


def test_two_registrations_at_once_decide_champion_one_after_the_other(trained: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(trained, other, symlinks=True)
    weights = other / "artifacts/word2vec/train/model.pt"
    state = torch.load(weights, weights_only=True)
    state["embed_v.weight"] *= 1.5
    torch.save(state, weights)
    metrics_file = other / "artifacts/word2vec/evaluate/metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "heldout_loss": metrics["heldout_loss"] - 0.01}))  # better
    (other / "artifacts/word2vec/train/run.json").write_text(json.dumps({"run_id": "0" * 32, "experiment_id": "1"}))

    store, gate = tmp_path / "store.db", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-m", "tasks", "word2vec", "register"], cwd=trained, text=True,
                             env=_env(store, D2LFLOW_TEST_PAUSE_AT=f"before_alias:{gate}"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        deadline = time.monotonic() + 300
        while not Path(f"{gate}.reached").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first registration did not pause"
            time.sleep(0.05)
        log = tmp_path / "second.log"
        with open(log, "w") as handle:
            second = subprocess.Popen([sys.executable, "-m", "tasks", "word2vec", "register"], cwd=other, text=True,
                                      env=_env(store), stdout=subprocess.PIPE, stderr=handle)
        while "waiting for the registry lock" not in log.read_text():
            assert second.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert len(client(store).search_model_versions("name = 'word2vec'")) == 1  # the second waits its turn
    finally:
        gate.touch()
    out_first, err_first = first.communicate(timeout=300)
    out_second, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err_first + log.read_text()
    a, b = json.loads(out_first), json.loads(out_second)
    assert (a["version"], a["alias"], a["previous_champion_version"]) == (1, "champion", None)
    assert (b["version"], b["alias"], b["previous_champion_version"]) == (2, "champion", 1)
    assert int(client(store).get_model_version_by_alias("word2vec", "champion").version) == 2


def test_another_store_gets_the_model_and_an_unchanged_run_registers_nothing(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "clone"
    shutil.copytree(trained, root, symlinks=True)
    first = run(root, D2LFLOW, "run", "word2vec", "--no-prefect", "--skip-acquire", "--json")
    assert json.loads(first.stdout)["registration"]["status"] == "registered"
    unchanged = run(root, D2LFLOW, "run", "word2vec", "--no-prefect", "--skip-acquire", "--json")
    summary = json.loads(unchanged.stdout)
    assert summary["registration"]["message"] == "unchanged: word2vec version 1 is still champion"
    assert len(client(root / "mlflow.db").search_model_versions("name = 'word2vec'")) == 1

    store = tmp_path / "new-store.db"
    moved = subprocess.run([D2LFLOW, "run", "word2vec", "--no-prefect", "--skip-acquire", "--json"], cwd=root,
                           env=_env(store), capture_output=True, text=True, timeout=600)
    assert moved.returncode == 0, moved.stderr
    assert "stage word2vec_train: unchanged, skipped" in moved.stderr  # the cached outputs are used
    summary = json.loads(moved.stdout)
    assert summary["registration"]["status"] == "registered"
    assert summary["registered"]["registry"] == f"sqlite:///{store}"
    new = client(store)
    version = new.get_model_version_by_alias("word2vec", "champion")
    assert int(version.version) == summary["registered"]["version"] == 1
    assert version.tags["d2lflow.trained_in_run"] == json.loads(
        (root / "artifacts/word2vec/train/run.json").read_text())["run_id"]
