"""dvc.yaml is the one DAG: DVC must accept it as written, every params key a stage declares must exist
in params.yaml (else `dvc repro` fails late, or a changed knob silently re-runs nothing), and every
source file a stage depends on must exist. Fast: no stage runs."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tasks.params import flatten, load_params
from tests.conftest import BIN, REPO

SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = SPEC["stages"]


def test_dvc_accepts_the_dag_and_every_pipeline_has_its_four_stages() -> None:
    done = subprocess.run([str(BIN / "dvc"), "stage", "list", "--name-only"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split()
    for pipeline in ("word2vec", "segmentation", "detection"):
        assert [s for s in listed if s.startswith(f"{pipeline}_")] == [
            f"{pipeline}_{stage}" for stage in ("preprocess", "train", "evaluate", "register")]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_declared_params_and_source_deps_exist(stage: str) -> None:
    params = load_params(REPO / "params.yaml").model_dump()
    keys = set(flatten(params))
    for key in STAGES[stage].get("params", []):
        assert key in keys or any(k.startswith(f"{key}.") for k in keys), f"{stage}: no params key {key}"
    for dep in STAGES[stage].get("deps", []):
        if dep.endswith(".py"):
            assert (REPO / dep).is_file(), f"{stage}: dependency {dep} does not exist"
    pipeline, _, step = stage.partition("_")
    assert STAGES[stage]["cmd"] == f"python -m tasks {pipeline} {step}"
