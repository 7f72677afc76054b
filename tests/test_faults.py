"""Environment faults: a full disk while a checkpoint is written, an MLflow tracking server that does not
answer (found before training, within seconds, also when every stage is cached)."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tasks import cli, runtime
from tasks.errors import D2lflowError
from tasks.params import load_params
from tasks.tracking import check_tracking_server

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- full disk


def test_a_full_disk_while_a_checkpoint_is_written_names_it_and_keeps_the_previous_one(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    runtime.save_checkpoint(checkpoint, {"epoch": 1, "fingerprint": "f", "weights": torch.ones(4)})
    before = checkpoint.read_bytes()
    real_save = torch.save

    def full_disk(obj, target, *args, **kwargs):  # the first bytes fit, then the disk is full
        if isinstance(target, (str, Path)):
            with open(target, "wb") as handle:
                handle.write(b"PK\x03\x04")
        else:
            target.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(D2lflowError) as caught:
        runtime.save_checkpoint(checkpoint, {"epoch": 2, "fingerprint": "f", "weights": torch.zeros(4)})
    message = str(caught.value)
    assert message.startswith(f"{checkpoint}: cannot write the checkpoint: the disk is full (ENOSPC)")
    assert "the previous one is intact" in message
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.read_bytes() == before
    assert runtime.load_checkpoint(checkpoint, "f")["epoch"] == 1
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.pt"]  # no temporary left behind


def test_torch_save_through_a_file_keeps_the_os_error(tmp_path: Path) -> None:
    """Why `save_torch` writes through a Python file: /dev/full is a real full disk."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(OSError) as caught, open("/dev/full", "wb") as handle:
        torch.save({"weights": torch.zeros(100_000)}, handle)
    assert caught.value.errno == errno.ENOSPC


# ----------------------------------------------------------------------------- tracking server


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def refusing_uri() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connections are refused


def _server(status: int) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def answering_server() -> Iterator[str]:
    yield from _server(200)


@pytest.fixture
def failing_server() -> Iterator[str]:
    yield from _server(503)


def test_a_tracking_server_that_never_answers_is_an_error_naming_the_uri(silent_server: str,
                                                                         monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    with pytest.raises(D2lflowError, match=f"MLflow tracking server {silent_server} \\(MLFLOW_TRACKING_URI\\): "
                                           "no answer within 0.5 s"):
        check_tracking_server(load_params(REPO / "params.yaml"), timeout=0.5)


def test_a_tracking_server_that_refuses_is_an_error_naming_the_uri(refusing_uri: str, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refusing_uri)
    with pytest.raises(D2lflowError, match=f"{refusing_uri} .*cannot connect"):
        check_tracking_server(load_params(REPO / "params.yaml"))


def test_a_tracking_uri_from_params_is_named_with_its_key(refusing_uri: str, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("sqlite:///mlflow.db", refusing_uri))
    with pytest.raises(D2lflowError, match=f"{refusing_uri} \\(mlflow.tracking_uri in {params}\\)"):
        check_tracking_server(load_params(params))


def test_an_answering_server_passes_and_a_503_does_not(answering_server: str, failing_server: str,
                                                       monkeypatch) -> None:
    params = load_params(REPO / "params.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", answering_server)
    assert check_tracking_server(params) == answering_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", failing_server)
    with pytest.raises(D2lflowError, match="answers HTTP 503"):
        check_tracking_server(params)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert check_tracking_server(params).startswith("sqlite:///")  # a local store is not probed


def test_the_password_of_a_tracking_uri_is_never_printed(refusing_uri: str, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refusing_uri.replace("http://", "http://me:s3cret@"))
    with pytest.raises(D2lflowError) as caught:
        check_tracking_server(load_params(REPO / "params.yaml"))
    assert "s3cret" not in str(caught.value) and refusing_uri in str(caught.value)


@pytest.mark.parametrize("pipeline", ["word2vec", "segmentation", "detection"])
def test_a_train_stage_checks_the_server_before_it_reads_anything(pipeline: str, refusing_uri: str, tmp_path: Path,
                                                                  monkeypatch, capsys) -> None:
    params = tmp_path / "params.yaml"  # no data, no preprocessed arrays: the check comes first
    params.write_text((REPO / "params.yaml").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refusing_uri)
    assert cli.main([pipeline, "train", "--params", str(params)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"MLflow tracking server {refusing_uri}" in errors[0]
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("mode", [["--no-prefect"], []])
def test_the_flow_checks_the_server_before_any_stage(mode: list[str], refusing_uri: str, tmp_path: Path,
                                                     monkeypatch, capsys) -> None:
    from flows import cli as flows_cli

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)  # the run takes the repository lock first (then applies -S)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refusing_uri)
    assert flows_cli.main(["run", "word2vec", *mode, "--root", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"MLflow tracking server {refusing_uri}" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dvc", "params.yaml"]  # nothing acquired, nothing run


@pytest.mark.slow
def test_a_cached_pipeline_still_fails_fast_on_a_dead_tracking_server(tmp_path: Path, refusing_uri: str) -> None:
    """Every stage cached used to mean exit 0 without a word; now both kinds of run stop before the stages."""
    import os
    import subprocess
    import sys

    from tests.conftest import copy_repo, run

    root = copy_repo(tmp_path / "repo", ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=1"])
    run(root, sys.executable, "-m", "flows.cli", "run", "word2vec", "--no-prefect")
    # every stage cached (register always runs: it checks the configured registry)
    assert "up to date" in run(root, sys.executable, "-m", "dvc", "status", "word2vec_evaluate").stdout
    env = {**os.environ, "MLFLOW_TRACKING_URI": refusing_uri}
    for mode in (["--no-prefect"], []):
        done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "word2vec", *mode], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2, done.stderr
        assert len(errors) == 1 and f"MLflow tracking server {refusing_uri}" in errors[0]


def test_acquisition_retries_a_failed_download_but_not_a_users_mistake() -> None:
    from prefect.states import Failed

    from flows.pipeline import acquire_task, worth_retrying
    from tasks.errors import DataError, DownloadError

    assert acquire_task.retry_condition_fn is worth_retrying
    assert worth_retrying(None, None, Failed(data=DownloadError("could not download ...: HTTP 503")))
    assert worth_retrying(None, None, Failed(data=ConnectionResetError("reset by peer")))
    assert not worth_retrying(None, None, Failed(data=DataError("ptb.zip: no 'ptb.train.txt' found inside")))
