"""Lineage that cannot lie: every registered model was trained with exactly the params its MLflow run,
its `lineage/params.yaml` and dvc.lock record, even when runs overlap or come from DVC's experiment
executors. Tiny synthetic word2vec data and two epochs keep each run to seconds."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import copy_repo, git, run

pytestmark = pytest.mark.slow
TINY = ["word2vec.data.synthetic.sentences=2000", "word2vec.train.epochs=2"]
CLI = [sys.executable, "-m", "flows.cli"]


def client_for(root: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlflow.db'}")
    return MlflowClient()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def registered_weights_md5(version: int, dst: Path) -> str:
    """md5 of the weights file (model.pt) inside the registered model version's artifacts."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/word2vec/{version}", dst_path=str(dst)))
    found = sorted(local.rglob("model.pt"))
    assert len(found) == 1, f"expected one model.pt in the registered model, found {found}"
    return md5(found[0])


def recorded_lr(client: MlflowClient, run_id: str, dst: Path) -> tuple[str, float]:
    """The lr the run's params record and the one in its lineage/params.yaml artifact."""
    params_file = Path(client.download_artifacts(run_id, "lineage/params.yaml", str(dst)))
    snapshot = yaml.safe_load(params_file.read_text())
    return client.get_run(run_id).data.params["word2vec.train.lr"], snapshot["word2vec"]["train"]["lr"]


def clean_weights_md5(root: Path, lr: str) -> str:
    """A clean reproduction with `lr` committed in params.yaml: the md5 of the model it trains."""
    copy_repo(root, [*TINY, f"word2vec.train.lr={lr}"])
    run(root, *CLI, "acquire")
    run(root, sys.executable, "-m", "dvc", "repro", "word2vec_train")
    return md5(root / "artifacts/word2vec/train/model.pt")


def test_two_runs_started_3_s_apart_each_register_the_model_of_their_own_params(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo", TINY)
    run(root, *CLI, "acquire")
    processes = {}
    for lr in ("0.003", "0.005"):
        with (tmp_path / f"run-{lr}.out").open("w") as out, (tmp_path / f"run-{lr}.err").open("w") as err:
            processes[lr] = subprocess.Popen(
                [*CLI, "run", "word2vec", "--no-prefect", "--skip-acquire", "--json", "-S", f"word2vec.train.lr={lr}"],
                cwd=root, stdout=out, stderr=err, text=True)
        if lr == "0.003":
            time.sleep(3)
    for lr, process in processes.items():
        assert process.wait(timeout=600) == 0, (tmp_path / f"run-{lr}.err").read_text()[-4000:]
    summaries = {lr: json.loads((tmp_path / f"run-{lr}.out").read_text())["registered"] for lr in processes}
    assert sorted(s["version"] for s in summaries.values()) == [1, 2]
    # what the repository holds at the end is the last run's: its params and the dvc.lock it wrote
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["word2vec_train"]
    assert lock["params"]["params.yaml"]["word2vec.train"]["lr"] == 0.005
    locked_model = next(o["md5"] for o in lock["outs"] if o["path"] == "artifacts/word2vec/train/model.pt")
    assert locked_model == md5(root / "artifacts/word2vec/train/model.pt")

    with ThreadPoolExecutor(2) as pool:  # the two clean runs side by side
        clean = dict(zip(summaries, pool.map(lambda lr: clean_weights_md5(tmp_path / f"clean-{lr}", lr), summaries)))
    client = client_for(root)
    for lr, summary in summaries.items():
        assert registered_weights_md5(summary["version"], tmp_path / f"model-{lr}") == clean[lr], lr
        assert recorded_lr(client, summary["run_id"], tmp_path / f"lineage-{lr}") == (lr, float(lr))
    assert clean["0.003"] != clean["0.005"]
    assert locked_model == clean["0.005"]


def _wait_for_queue(root: Path, names: list[str], timeout: float = 600) -> str:
    """`dvc queue status` once none of `names` is queued or running any more."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(root, sys.executable, "-m", "dvc", "queue", "status").stdout
        rows = [line for line in status.splitlines() if any(name in line.split() for name in names)]
        if len(rows) == len(names) and not any(word in line for line in rows for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"the queue did not finish:\n{status}"
        time.sleep(2)


def _start_queue(root: Path, log: Path) -> None:
    """`dvc queue start -j 2`, its output to a file, not a pipe: the celery workers it detaches inherit the
    descriptors, and one that hangs in its own shutdown after its task succeeded (seen once in CI: "monitor:
    shutting down due to empty queue" while the task ran, then no "done") would keep a pipe open, and
    `subprocess.run(capture_output=True)` would wait for it. A terminal user is not held that way."""
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], cwd=root, stdout=out,
                              stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, log.read_text()


def _stop_workers(root: Path) -> None:
    """End the queue's celery workers still alive (their pid files), so none outlives the test."""
    for pid_file in (root / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def test_dvc_experiments_of_every_kind_log_to_the_users_store_and_reproduce(tmp_path: Path) -> None:
    """`dvc exp run --temp` and `--queue` with `dvc queue start -j 2` run their stages in temporary
    copies DVC deletes: each run still lands in the repository's own mlflow.db and mlartifacts, is named
    after its experiment, and `flows.reproduce RUN_ID` rebuilds it from the experiment's commit."""
    dvc = (sys.executable, "-m", "dvc")
    root = copy_repo(tmp_path / "repo", TINY)
    run(root, *CLI, "acquire")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tiny data")
    experiments = {"tmp-exp": "0.004", "queued-a": "0.006", "queued-b": "0.007"}
    run(root, *dvc, "exp", "run", "--temp", "-n", "tmp-exp", "-S", "word2vec.train.lr=0.004", "word2vec_register")
    for name in ("queued-a", "queued-b"):
        run(root, *dvc, "exp", "run", "--queue", "-n", name, "-S", f"word2vec.train.lr={experiments[name]}",
            "word2vec_register")
    try:
        _start_queue(root, tmp_path / "queue-start.log")
        status = _wait_for_queue(root, ["queued-a", "queued-b"])
    finally:
        _stop_workers(root)
    assert status.count("Success") >= 2, status

    client = client_for(root)
    experiment = client.get_experiment_by_name("word2vec")
    assert experiment.artifact_location == (root / "mlartifacts" / "word2vec").resolve().as_uri()
    for name, lr in experiments.items():
        (found,) = client.search_runs([experiment.experiment_id], f"tags.`d2lflow.dvc_exp_name` = '{name}'")
        assert found.info.run_name.endswith(f"-{name}") and found.info.status == "FINISHED"
        assert recorded_lr(client, found.info.run_id, tmp_path / f"lineage-{name}") == (lr, float(lr))
        (version,) = client.search_model_versions(f"run_id = '{found.info.run_id}'")
        assert version.name == "word2vec"
    assert len(client.search_model_versions("name = 'word2vec'")) == 3

    (queued,) = client.search_runs([experiment.experiment_id], "tags.`d2lflow.dvc_exp_name` = 'queued-b'")
    done = subprocess.run([sys.executable, "-m", "flows.reproduce", queued.info.run_id], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RESULT: REPRODUCED" in done.stdout
