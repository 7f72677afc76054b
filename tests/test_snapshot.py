"""tests.conftest.Snapshot: the files a module-scoped fixture saved come back for each test, and an MLflow
client this process already opened on the SQLite store reads the saved store, not a deleted file."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import Snapshot


def test_restore_brings_back_the_saved_files_and_an_open_clients_store(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "kept.txt").write_text("saved")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("before")
    snapshot = Snapshot(root)

    MlflowClient(uri).create_experiment("after")  # a test changes the store and the files
    (root / "sub" / "kept.txt").write_text("changed")
    (root / "new.txt").write_text("new")
    assert snapshot.restore() == root

    assert (root / "sub" / "kept.txt").read_text() == "saved" and not (root / "new.txt").exists()
    assert {e.name for e in MlflowClient(uri).search_experiments()} == {"Default", "before"}
    MlflowClient(uri).create_experiment("again")  # the restored store is writable
    snapshot.restore()
    assert {e.name for e in MlflowClient(uri).search_experiments()} == {"Default", "before"}
