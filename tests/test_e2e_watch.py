"""What a person sees while `python -m flows.cli run word2vec` runs on a terminal (a pseudo-terminal here,
read as it arrives): the epoch lines arrive during training, not at its end, and the whole run stays
short and clean. With Prefect, the task logs keep each record's level and the summary artifact links to
the MLflow run and lists the `-S` overrides."""

from __future__ import annotations

import csv
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from tests.conftest import copy_repo

pytestmark = pytest.mark.slow

# Small batches make each epoch a measurable stretch of time, 6 epochs make the spread visible.
OVERRIDES = ["word2vec.train.epochs=6", "word2vec.train.batch_size=64"]
EPOCH = re.compile(r"word2vec_train epoch (\d+)/6 loss=\S+ .* center words/s elapsed \S+ ETA \S+$")
BAR_FRAME = re.compile(r"\d+/\d+ \[[^\]]*(it/s|s/it)\]")
JSON_FRAGMENT = re.compile(r'^\s*("[\w.]+": |[{}\[\]],?$)')


def watch(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
          ) -> tuple[int, list[tuple[float, str]]]:
    """Run `command` on a pseudo-terminal; every output line with the time it arrived."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                               start_new_session=True)
    os.close(slave)
    lines: list[tuple[float, str]] = []
    pending = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            arrived = time.monotonic()
            *complete, pending = (pending + chunk).split(b"\n")
            lines += [(arrived, line.decode(errors="replace").rstrip("\r")) for line in complete]
        else:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{' '.join(command)} ran past {timeout} s:\n" + "\n".join(text for _, text in lines))
    finally:
        os.close(master)
    if pending.strip():
        lines.append((time.monotonic(), pending.decode(errors="replace").rstrip("\r")))
    return process.wait(timeout=60), lines


@pytest.mark.parametrize("prefect", [True, False], ids=["prefect", "no-prefect"])
def test_epoch_lines_arrive_during_training_and_the_run_prints_few_clean_lines(tmp_path: Path, prefect: bool) -> None:
    root = copy_repo(tmp_path / "repo")
    command = [sys.executable, "-m", "flows.cli", "run", "word2vec", *(f"-S{item}" for item in OVERRIDES)]
    env = dict(os.environ)
    if prefect:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=120)
    else:
        command.append("--no-prefect")
        harness = nullcontext()
    with harness:
        if prefect:
            env["PREFECT_API_URL"] = PREFECT_API_URL.value()
        code, lines = watch(command, root, env)
        transcript = "\n".join(text for _, text in lines)
        assert code == 0, transcript
        if prefect:
            with get_client(sync_client=True) as client:
                logs = [log for offset in range(0, 1000, 200) for log in client.read_logs(limit=200, offset=offset)]
                artifacts = [a for a in client.read_artifacts() if a.key == "word2vec-summary"]

    # Live progress: the epoch lines come one by one while the stage trains. The stage's own clock says how
    # long epochs 2..6 took; output held back until the stage ended would bunch them up in a moment.
    epochs = [(arrived, int(match[1])) for arrived, text in lines if (match := EPOCH.search(text))]
    assert [k for _, k in epochs] == [1, 2, 3, 4, 5, 6], transcript
    with (root / "artifacts/word2vec/train/history.csv").open() as handle:
        trained = sum(float(row["seconds"]) for row in list(csv.DictReader(handle))[1:])
    assert epochs[-1][0] - epochs[0][0] >= 0.5 * trained > 0, (epochs, trained)
    texts = [text for _, text in lines]
    stage_start = next(i for i, text in enumerate(texts) if text.endswith("stage word2vec_train: running"))
    mlflow_line = next(i for i, text in enumerate(texts) if "MLflow run: http://127.0.0.1:5000/#/experiments/" in text)
    first_epoch = next(i for i, text in enumerate(texts) if EPOCH.search(text))
    assert stage_start < mlflow_line < first_epoch
    assert "mlflow ui --backend-store-uri sqlite:///" in texts[mlflow_line]

    # Clean output: few lines, no blank ones, no repeated bar frames, no DVC hints but one at the end.
    assert len(lines) <= 40, f"{len(lines)} lines:\n{transcript}"
    assert all(text.strip() for text in texts), transcript
    frames = [BAR_FRAME.search(text) and text for text in texts if BAR_FRAME.search(text)]
    assert len(frames) == len(set(frames)), transcript
    for chatter in ("To track the changes with git", "autostage", "dvc push", "Dictionary", "Downloading artifacts"):
        assert chatter not in transcript
    hints = [text for text in texts if "git add" in text]
    assert len(hints) == 1 and hints[0].endswith("to version this run: git add dvc.lock params.yaml && git commit")
    assert texts.index(hints[0]) >= len(texts) - 4, "said at the end"
    assert not any(JSON_FRAGMENT.search(text.split(": ", 1)[-1]) for text in texts), "no JSON cut into lines"

    if prefect:
        task_logs = [log for log in logs if log.task_run_id is not None]
        assert [log.level for log in task_logs if EPOCH.search(log.message)] == [20] * 6
        assert not [log.message for log in task_logs if re.search(r"\b(WARNING|ERROR)\b", log.message[:40])], \
            "a record relayed with its level inside its message"
        assert not [log.message for log in task_logs if JSON_FRAGMENT.search(log.message)]
        url = next(log.message for log in task_logs if log.message.startswith("MLflow run: "))
        run_id = url.split("/runs/")[1][:32]
        assert len(artifacts) == 1
        summary = artifacts[0].data
        link = f"http://127.0.0.1:5000/#/experiments/1/runs/{run_id}?workflowType=machine_learning"
        assert f"[MLflow run]({link})" in summary
        assert "Overrides (`-S`): `word2vec.train.epochs=6`, `word2vec.train.batch_size=64`" in summary
