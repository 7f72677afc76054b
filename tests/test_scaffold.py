"""`d2lflow new NAME` (tasks/scaffold.py): the scaffolded pipeline runs end to end on its synthetic data
through `python -m tasks NAME STAGE` and registers a model; a taken or invalid name is one `error:` line
and changes nothing; a scaffold that fails its final check leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repo, run

EDITED = ("tasks/params.py", "params.yaml", "dvc.yaml")


def _new(root: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "new", name, "--root", str(root)], cwd=root,
                          capture_output=True, text=True, timeout=300)


def _snapshot(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text() for name in EDITED}


@pytest.mark.slow
def test_a_scaffolded_pipeline_runs_every_stage_and_registers_a_model(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo")
    done = _new(root, "demo")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["created"] == ["tasks/demo/__init__.py", "tasks/demo/serving.py", "tasks/demo/stages.py",
                                  "tasks/demo/synthetic.py", "tests/test_demo.py"]
    assert summary["edited"] == sorted(EDITED)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert [s for s in stages if s.startswith("demo_")] == [f"demo_{s}" for s in
                                                             ("preprocess", "train", "evaluate", "register")]
    assert "tasks/kit.py" in stages["demo_train"]["deps"] and "tasks/demo/stages.py" in stages["demo_train"]["deps"]
    for stage in ("acquire", "preprocess", "train", "evaluate"):
        run(root, sys.executable, "-m", "tasks", "demo", stage)
    metrics = json.loads((root / "artifacts/demo/evaluate/metrics.json").read_text())
    assert metrics["accuracy"] > 0.5  # three classes: chance is 1/3
    history = (root / "artifacts/demo/train/history.csv").read_text().splitlines()
    assert history[0] == "epoch,loss,examples_per_s,seconds" and len(history) == 6
    registered = json.loads(run(root, sys.executable, "-m", "tasks", "demo", "register").stdout)
    assert (registered["name"], registered["version"], registered["outcome"]) == ("demo", 1, "registered")
    assert registered["primary_metric"] == "accuracy"
    assert registered["primary_metric_value"] == pytest.approx(metrics["accuracy"])
    # the pipeline is in every CLI's choices without another edit
    assert "demo" in run(root, sys.executable, "-m", "tasks", "--help").stdout


@pytest.mark.parametrize("name, found", [("word2vec", "exists already"), ("Bad-Name", "is not valid"),
                                         ("class", "is not valid"), ("kit", "exists already")])
def test_a_taken_or_invalid_name_is_one_error_line_and_changes_nothing(tmp_path: Path, name: str,
                                                                       found: str) -> None:
    root = copy_repo(tmp_path / "repo")
    before = _snapshot(root)
    done = _new(root, name)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and found in done.stderr and len(done.stderr.splitlines()) == 1
    assert _snapshot(root) == before
    assert not (root / "tests" / f"test_{name}.py").exists()


def test_a_scaffold_whose_final_check_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo")
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("seed: 0", "seed: zero", 1))
    before = _snapshot(root)
    done = _new(root, "demo")
    assert done.returncode == 2 and done.stderr.startswith("error: the scaffolded params do not load")
    assert _snapshot(root) == before
    assert not (root / "tasks" / "demo").exists() and not (root / "tests" / "test_demo.py").exists()
