"""Stages started together on a fresh SQLite store (`dvc queue start -j 2`) must not race on its schema."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

WORKER = """
import sys, time
from pathlib import Path
from tasks import tracking
from tasks.params import load_params
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
params = load_params(sys.argv[1])
tracking.configure(params)
print(tracking.experiment_id("word2vec", params))
"""


def test_processes_starting_together_on_a_fresh_sqlite_store_all_succeed(tmp_path: Path) -> None:
    for attempt in range(3):  # the unguarded race failed in about one of two attempts here
        root = tmp_path / f"repo{attempt}"
        root.mkdir()
        (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
        go = root / "go"
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(root / "params.yaml"), str(go)], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        time.sleep(3)  # all four have imported mlflow and wait for the signal
        go.touch()
        results = [(w.wait(timeout=300), *w.communicate()) for w in workers]
        failed = [err for code, _, err in results if code != 0]
        assert not failed, failed[0][-2000:]
        assert len({out.strip() for _, out, _ in results}) == 1  # one experiment, the same id everywhere
