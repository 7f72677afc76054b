"""One DVC writer at a time: d2lflow's repository lock (contention between real processes) and
run_dvc waiting for DVC's own lock, held for real through DVC's Python API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dvc.lock import make_lock

from tasks.dvc_repo import DVC_LOCK_FILE, LOCK_FILE, RepoBusyError, repo_lock, run_dvc
from tasks.errors import D2lflowError
from tests.conftest import REPO

HOLDER = """
import sys
from pathlib import Path
from tasks.dvc_repo import repo_lock
with repo_lock(Path(sys.argv[1]), "test holder", timeout=0):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder(dvc_repo: Path):
    """Another process holding the repository lock until its stdin gets a line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(dvc_repo)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_second_holder_times_out_naming_the_lock_file_and_its_holder(dvc_repo: Path, holder) -> None:
    started = time.monotonic()
    with pytest.raises(RepoBusyError) as info, repo_lock(dvc_repo, "second", timeout=1.0):
        pytest.fail("the lock was acquired while another process held it")
    waited = time.monotonic() - started
    message = str(info.value)
    assert 1.0 <= waited < 10
    assert str(dvc_repo.resolve() / LOCK_FILE) in message
    assert f"pid {holder.pid}" in message and "test holder" in message
    assert "dvc.lock_timeout_seconds" in message and "Wait for that run to finish" in message


def test_waiting_holder_gets_the_lock_when_the_first_releases(dvc_repo: Path, holder) -> None:
    threading.Timer(1.5, lambda: (holder.stdin.write("\n"), holder.stdin.flush())).start()
    started = time.monotonic()
    with repo_lock(dvc_repo, "second", timeout=60):
        waited = time.monotonic() - started
        assert (dvc_repo / f"{LOCK_FILE}.holder").read_text().count('"purpose": "second"') == 1
    assert 1.4 <= waited < 30
    assert holder.wait(timeout=30) == 0
    assert not (dvc_repo / f"{LOCK_FILE}.holder").exists()


def test_a_killed_holder_leaves_no_stale_lock(dvc_repo: Path, holder) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with repo_lock(dvc_repo, "after the crash", timeout=0):
        pass


def test_lock_is_reentrant_within_a_process(dvc_repo: Path) -> None:
    with repo_lock(dvc_repo, "outer", timeout=0):
        with repo_lock(dvc_repo, "inner", timeout=0):
            assert '"purpose": "outer"' in (dvc_repo / f"{LOCK_FILE}.holder").read_text()
        assert (dvc_repo / f"{LOCK_FILE}.holder").exists()  # still held by the outer block
    assert not (dvc_repo / f"{LOCK_FILE}.holder").exists()


def test_run_dvc_waits_for_our_lock_then_fails_clearly(dvc_repo: Path, holder) -> None:
    with pytest.raises(RepoBusyError, match="locked by another d2lflow run"):
        run_dvc(dvc_repo, "add", "numbers.txt", timeout=0.5)
    assert not (dvc_repo / "numbers.txt.dvc").exists()


def test_run_dvc_retries_while_dvc_is_locked_then_names_the_other_process(dvc_repo: Path) -> None:
    dvc_lock = make_lock(str(dvc_repo / DVC_LOCK_FILE), tmp_dir=str(dvc_repo / ".dvc/tmp"))
    dvc_lock.lock()  # what a manual `dvc repro` holds while it runs
    try:
        with pytest.raises(RepoBusyError) as info:
            run_dvc(dvc_repo, "add", "numbers.txt", timeout=2)
    finally:
        dvc_lock.unlock()
    message = str(info.value)
    assert f"another DVC process is running in {dvc_repo.resolve()} (held by pid {os.getpid()})" in message
    assert str(dvc_repo.resolve() / DVC_LOCK_FILE) in message and "dvc.lock_timeout_seconds" in message
    assert not (dvc_repo / "numbers.txt.dvc").exists()
    assert not (dvc_repo / f"{LOCK_FILE}.holder").exists(), "our lock is released after the failure"


def test_run_dvc_succeeds_once_the_other_dvc_process_is_done(dvc_repo: Path) -> None:
    dvc_lock = make_lock(str(dvc_repo / DVC_LOCK_FILE), tmp_dir=str(dvc_repo / ".dvc/tmp"))
    dvc_lock.lock()
    release = threading.Timer(5.0, dvc_lock.unlock)
    release.start()
    started = time.monotonic()
    try:
        run_dvc(dvc_repo, "add", "numbers.txt", timeout=120)
    finally:
        release.join()
    assert time.monotonic() - started >= 5.0
    assert "md5:" in (dvc_repo / "numbers.txt.dvc").read_text()


def test_run_dvc_reports_other_failures_at_once_with_dvcs_output(dvc_repo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(D2lflowError) as info:
        run_dvc(dvc_repo, "add", "no-such-file.txt", timeout=60)
    assert not isinstance(info.value, RepoBusyError)
    assert "`dvc add no-such-file.txt` failed" in str(info.value) and "no-such-file.txt" in str(info.value)
    assert time.monotonic() - started < 30


def test_lock_outside_a_dvc_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(D2lflowError, match="not a DVC repository"), repo_lock(tmp_path, "x", timeout=0):
        pass
    assert not (tmp_path / ".dvc").exists()


def test_a_second_retraining_waits_for_the_running_one_then_fails_naming_it(dvc_repo: Path, holder) -> None:
    from prefect.logging import disable_run_logger

    from flows.retrain import retrain_flow

    (dvc_repo / "params.yaml").write_text("dvc:\n  lock_timeout_seconds: 1\n")
    started = time.monotonic()
    with disable_run_logger(), pytest.raises(RepoBusyError) as info:
        retrain_flow.fn(["word2vec"], str(dvc_repo), "acquire")
    assert time.monotonic() - started >= 1
    assert f"pid {holder.pid}" in str(info.value) and "test holder" in str(info.value)
    assert not (dvc_repo / "data").exists(), "nothing was acquired while the other run held the repository"
