"""The one line a run ends with about git: the versioned files it changed, nothing else."""

from __future__ import annotations

from pathlib import Path

from flows.pipeline import commit_hint
from tests.conftest import git


def test_the_hint_names_only_the_changed_versioned_files(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.lock", "params.yaml", "notes.txt"):
        (root / name).write_text("v1\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    assert commit_hint(root) is None, "nothing changed"
    (root / "dvc.lock").write_text("v2\n")
    (root / "notes.txt").write_text("v2\n")  # not the run's to version
    (root / "data.dvc").write_text("outs: []\n")
    assert commit_hint(root) == "to version this run: git add data.dvc dvc.lock && git commit"


def test_no_hint_outside_git(tmp_path: Path) -> None:
    (tmp_path / "dvc.lock").write_text("v1\n")
    assert commit_hint(tmp_path) is None
