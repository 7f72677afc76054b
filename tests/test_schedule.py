"""Scheduled retraining without a server: the schedule: params, prefect.yaml agreeing with them, the
served deployment's schedule and concurrency limit, serve's refusals, and `dvc push` only with a remote."""

from __future__ import annotations

import importlib
import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml

from flows import serve
from flows.retrain import push_if_remote
from tasks.dvc_repo import run_dvc
from tasks.errors import D2lflowError, ParamsError
from tasks.params import load_params, parse_params
from tests.conftest import REPO


def test_prefect_yaml_deployment_matches_the_schedule_in_params() -> None:
    from prefect.schedules import Cron

    schedule = load_params(REPO / "params.yaml").schedule
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert [d["name"] for d in deployments] == [serve.deployment_name(schedule.pipelines)]
    (deployment,) = deployments
    assert deployment["schedules"] == [{"cron": schedule.cron, "timezone": schedule.timezone}]
    Cron(schedule.cron, timezone=schedule.timezone)  # Prefect accepts it
    assert deployment["parameters"]["pipelines"] == schedule.pipelines
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    path, name = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    assert flow.name == "d2lflow-retrain"


@pytest.mark.parametrize(("value", "message"), [
    ({"cron": "61 * * * *"}, "'schedule.cron': Value error, not a valid cron expression: Bad minute"),
    ({"cron": "0 3 * *"}, "'schedule.cron': Value error, expected five cron fields"),
    ({"timezone": "Mars/Olympus"}, "'schedule.timezone': Value error, not an IANA time zone name"),
    ({"data": "download"}, "'schedule.data': Input should be 'acquire' or 'pull'"),
    ({"pipelines": []}, "'schedule.pipelines': List should have at least 1 item"),
])
def test_a_bad_schedule_is_an_error_naming_the_key(value: dict, message: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params({"schedule": value})
    assert message in str(info.value)


def test_served_deployment_has_the_params_cron_and_concurrency_limit_one() -> None:
    deployment = serve.build_deployment(REPO, ["word2vec"])
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * *", "UTC")
    assert deployment.concurrency_limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert deployment.parameters == {"pipelines": ["word2vec"], "root": str(REPO)}
    assert deployment.name == "retrain-word2vec"

    every_minute = serve.build_deployment(REPO, ["word2vec"], interval=60)
    assert every_minute.schedules[0].schedule.interval.total_seconds() == 60
    weekly = serve.build_deployment(REPO, ["word2vec"], cron="0 4 * * sun")
    assert weekly.schedules[0].schedule.cron == "0 4 * * sun"


def test_serve_rejects_a_bad_cron_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(["--root", str(REPO), "--cron", "0 25 * * *"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --cron '0 25 * * *': not a valid cron expression: Bad hour")
    assert len(error.splitlines()) == 1


def test_serve_refuses_prefects_temporary_server(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert serve.main(["--root", str(REPO), "--interval", "60", "word2vec"]) == 2
    error = capsys.readouterr().err
    assert "error: PREFECT_API_URL is not set" in error and "prefect server start" in error


def test_serve_refuses_a_server_that_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        assert serve.main(["--root", str(REPO), "word2vec"]) == 2
    assert f"the Prefect server at PREFECT_API_URL=http://127.0.0.1:{port}/api does not answer" in \
        capsys.readouterr().err
    assert time.monotonic() - started < 60


def test_push_only_to_a_default_remote(dvc_repo: Path, tmp_path: Path) -> None:
    assert push_if_remote(dvc_repo).startswith("not pushed: no DVC remote configured")
    store = tmp_path / "store"
    run_dvc(dvc_repo, "remote", "add", "store", str(store))
    assert push_if_remote(dvc_repo).startswith("not pushed: DVC remotes store are configured but none is the default")
    assert not store.exists()

    run_dvc(dvc_repo, "remote", "default", "store")
    run_dvc(dvc_repo, "add", "numbers.txt")
    assert push_if_remote(dvc_repo) == "pushed to DVC remote `store`"
    md5 = yaml.safe_load((dvc_repo / "numbers.txt.dvc").read_text())["outs"][0]["md5"]
    assert (store / "files" / "md5" / md5[:2] / md5[2:]).read_text() == "1 2 3\n"


def test_pull_without_a_default_remote_names_the_setting(dvc_repo: Path) -> None:
    from flows.retrain import pull_task

    with pytest.raises(D2lflowError) as info:
        pull_task.fn(str(dvc_repo))
    assert "schedule.data is 'pull' but no default DVC remote is configured" in str(info.value)


def test_pull_restores_data_from_the_default_remote(dvc_repo: Path, tmp_path: Path) -> None:
    from prefect.logging import disable_run_logger

    from flows.retrain import pull_task

    run_dvc(dvc_repo, "remote", "add", "-d", "store", str(tmp_path / "store"))
    run_dvc(dvc_repo, "add", "numbers.txt")
    run_dvc(dvc_repo, "push")
    (dvc_repo / "numbers.txt").unlink()
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    with disable_run_logger():
        assert pull_task.fn(str(dvc_repo)) == "pulled from DVC remote `store`"
    assert (dvc_repo / "numbers.txt").read_text() == "1 2 3\n"
