"""Scheduled retraining against a real Prefect server: `prefect server start` on 127.0.0.1 with its own
PREFECT_HOME, `python -m flows.serve --interval 5 word2vec` in a repository copy, and runs the server's
scheduler created: the first completes, registers the model, pushes to the DVC remote and leaves the
markdown artifact; the next (after it, never alongside) finds nothing changed and registers nothing.
Then prefect.yaml deploys onto the same server. (Prefect's temporary server never fires schedules.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import BIN, copy_repo, run
from tests.servers import free_port, stop_group, wait_for_health

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TINY = ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=2"]


def tail(path: Path, lines: int = 80) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def test_served_deployment_retrains_on_its_schedule_and_registers_a_model(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        DeploymentFilter,
        DeploymentFilterId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = copy_repo(tmp_path / "repo", TINY)
    remote = tmp_path / "dvc-remote"
    run(root, str(BIN / "dvc"), "remote", "add", "--local", "-d", "store", str(remote))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PYTHONPATH": str(root)}
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = serving = None
    try:
        with server_log.open("w") as out:
            server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                       str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        wait_for_health(f"{api}/health", server, server_log)
        with serve_log.open("w") as out:
            serving = subprocess.Popen([sys.executable, "-m", "flows.serve", "--interval", "5", "word2vec"],
                                       cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 360
            completed: list = []
            while len(completed) < 2:  # the first run trains and registers, the next finds nothing changed
                logs = f"serve:\n{tail(serve_log)}\nserver:\n{tail(server_log, 30)}"
                assert serving.poll() is None, f"flows.serve exited with {serving.returncode}:\n{logs}"
                assert time.monotonic() < deadline, f"{len(completed)} scheduled runs completed in 6 minutes:\n{logs}"
                time.sleep(2)
                deployments = [d for d in client.read_deployments() if d.name == "retrain-word2vec"]
                if not deployments:
                    continue
                deployment = deployments[0]
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                    any_=[deployment.id])))
                broken = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
                assert not broken, f"run {broken[0].name} ended {broken[0].state.name}:\n{logs}"
                completed = sorted((r for r in runs if r.state and r.state.is_completed()), key=lambda r: r.start_time)
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=["retrain-word2vec"])))
            stop_group(serving)
            # prefect.yaml, the work-pool alternative to serve, deploys onto the same server
            prefect = str(BIN / "prefect")
            subprocess.run([prefect, "work-pool", "create", "d2lflow", "--type", "process"], cwd=root, env=env,
                           check=True, capture_output=True, timeout=120)
            deployed = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=root, env=env,
                                      capture_output=True, text=True, timeout=180)
            assert deployed.returncode == 0, f"prefect deploy failed:\n{deployed.stdout}\n{deployed.stderr}"
            from_yaml = client.read_deployment_by_name("d2lflow-retrain/retrain-word2vec")
    finally:
        stop_group(serving)
        stop_group(server)
    for process in (serving, server):
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)

    first, second = completed[:2]
    assert first.auto_scheduled and second.auto_scheduled, "runs come from the server's scheduler"
    assert first.parameters == {"pipelines": ["word2vec"], "root": str(root)}
    assert second.start_time >= first.end_time, "two runs of the deployment never overlap"
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert deployment.schedules[0].schedule.interval.total_seconds() == 5

    assert (from_yaml.schedules[0].schedule.cron, from_yaml.schedules[0].schedule.timezone) == ("0 3 * * *", "UTC")
    assert from_yaml.global_concurrency_limit.limit == 1 and from_yaml.work_pool_name == "d2lflow"
    assert from_yaml.entrypoint == "flows/retrain.py:retrain_flow"
    assert from_yaml.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(root)}}]

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlflow.db'}")
    champion = MlflowClient().get_model_version_by_alias("word2vec", "champion")
    assert str(champion.version) == "1"
    assert len(MlflowClient().search_model_versions("name='word2vec'")) == 1, "an unchanged run registers nothing"
    registered = yaml.safe_load((root / "artifacts/word2vec/register/registered.json").read_text())
    assert registered["run_id"] == champion.run_id and registered["alias"] == "champion"

    texts = {a.flow_run_id: a.data for a in artifacts}
    text = texts[first.id]
    assert "**word2vec**: this run registered version 1 as `champion`." in text
    assert "**word2vec**: data, params and code are unchanged since the last run" in texts[second.id]
    assert "- DVC: pushed to DVC remote `store`" in text
    assert f"| heldout_loss | {registered['primary_metric_value']} |" in text

    model_md5 = next(out["md5"] for out in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
                     ["word2vec_train"]["outs"] if out["path"] == "artifacts/word2vec/train/model.pt")
    assert (remote / "files" / "md5" / model_md5[:2] / model_md5[2:]).is_file(), "dvc push sent the model"
