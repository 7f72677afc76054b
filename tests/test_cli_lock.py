"""`d2lflow run -S` touches params.yaml only once it holds the repository lock: while another run
holds it, a new run waits, and after `dvc.lock_timeout_seconds` refuses with params.yaml untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tasks.dvc_repo import repo_lock
from tests.conftest import copy_repo


def test_a_run_waiting_for_the_lock_leaves_params_yaml_alone_and_refuses_after_the_timeout(tmp_path: Path):
    root = copy_repo(tmp_path / "repo", ["dvc.lock_timeout_seconds=2"])
    before = (root / "params.yaml").read_text()
    with repo_lock(root, "a run in progress"):
        done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "word2vec", "--no-prefect", "--skip-acquire",
                               "-S", "word2vec.train.lr=0.005"], cwd=root, capture_output=True, text=True, timeout=120)
        assert (root / "params.yaml").read_text() == before
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {root.resolve()}: the repository is locked by another d2lflow run (pid "), last
    assert "a run in progress" in last
