"""Data past one machine: `dvc push` to a remote, `dvc pull` in a fresh git clone gives the same
data and stage outputs, and the clone's pipeline is up to date: only the register stage runs (it registers in the
clone's own store)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, copy_repo, git, run

pytestmark = pytest.mark.slow
DVC = str(BIN / "dvc")
D2LFLOW = str(BIN / "d2lflow")
TINY = ["word2vec.data.synthetic.sentences=3000", "word2vec.train.epochs=2"]
STAGES = ("word2vec_preprocess", "word2vec_train", "word2vec_evaluate", "word2vec_register")
UP_TO_DATE = "Data and pipelines are up to date."


def tree(root: Path, relative: str) -> dict[str, bytes]:
    """Every file under `root/relative` (or that one file) by its path relative to `root`."""
    top = root / relative
    files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return {str(path.relative_to(root)): path.read_bytes() for path in files}


def test_dvc_pull_in_a_clone_restores_data_and_outputs_and_repro_has_nothing_to_do(tmp_path: Path) -> None:
    origin = copy_repo(tmp_path / "origin", TINY)
    run(origin, D2LFLOW, "acquire")
    run(origin, DVC, "repro", "word2vec_register")
    remote = tmp_path / "remote"
    run(origin, DVC, "remote", "add", "-d", "store", str(remote))
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "word2vec reproduced; default DVC remote")
    pushed = run(origin, DVC, "push", "word2vec_register", "--with-deps")
    assert "pushed" in pushed.stdout + pushed.stderr
    assert any(remote.rglob("*.dir")), "the remote must hold the directory manifests"

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    outs = [out["path"] for stage in STAGES for out in lock[stage]["outs"]]
    assert not any((clone / path).exists() for path in ["data", *outs]), "a clone starts without data or outputs"
    run(clone, DVC, "pull", "word2vec_register", "--with-deps")

    for path in ["data", *outs]:
        assert tree(clone, path) == tree(origin, path), path
    for stage in STAGES:
        for out in lock[stage]["outs"]:
            if not out["md5"].endswith(".dir"):
                assert hashlib.md5((clone / out["path"]).read_bytes()).hexdigest() == out["md5"], out["path"]
    data_md5 = yaml.safe_load((clone / "data.dvc").read_text())["outs"][0]["md5"]
    assert data_md5 == yaml.safe_load((origin / "data.dvc").read_text())["outs"][0]["md5"]

    status = run(clone, DVC, "status", "word2vec_evaluate", "--with-deps")
    assert UP_TO_DATE in status.stdout, status.stdout
    cloud = run(clone, DVC, "status", "--cloud", "word2vec_register", "--with-deps")
    assert "in sync" in cloud.stdout, cloud.stdout
    # register always runs: it registers in the store configured now, here the clone's own new store
    repro = run(clone, DVC, "repro", "word2vec_register")
    assert [line for line in (repro.stdout + repro.stderr).splitlines() if "Running stage" in line] == \
        ["Running stage 'word2vec_register':"]
    changed = git(clone, "status", "--porcelain").split()
    assert changed in ([], ["M", "dvc.lock"]), changed
    after = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    assert {name: entry for name, entry in after.items() if name != "word2vec_register"} == \
        {name: entry for name, entry in lock.items() if name != "word2vec_register"}
