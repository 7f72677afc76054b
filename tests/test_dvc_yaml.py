"""dvc.yaml is the one DAG: DVC must accept it as written, every params key a stage declares must exist
in params.yaml (else `dvc repro` fails late, or a changed knob silently re-runs nothing), and every
source file a stage depends on must exist. Fast: no stage runs."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

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
    for pipeline in ("word2vec", "segmentation", "detection", "classification", "style"):
        assert [s for s in listed if s.startswith(f"{pipeline}_")] == [
            f"{pipeline}_{stage}" for stage in ("preprocess", "train", "evaluate", "register")]
    # generative reads classification's preprocess output (no preprocess of its own) and trains two models
    assert [s for s in listed if s.startswith("generative_")] == [
        f"generative_{stage}" for stage in ("train_vae", "train_dcgan", "evaluate", "register")]


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


# ----------------------------------------------------------------------------- code deps

def _module_file(name: str) -> Path | None:
    """The project file of module `name` (tasks.* / models.*), or None for anything else."""
    if name.split(".")[0] not in ("tasks", "models"):
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1])


def _imported(node: ast.AST, package: str) -> dict[str, str]:
    """{bound name: module it names} for the import statements under `node` (a name bound by
    `from tasks.x import f` names tasks.x.f when that is a module, else tasks.x)."""
    bound: dict[str, str] = {}
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            for alias in item.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - item.level + 1] + [base])
            for alias in item.names:
                full = f"{base}.{alias.name}"
                bound[alias.asname or alias.name] = full if _module_file(full) else base
    return bound


def _closure(modules: set[str]) -> set[str]:
    """The project files of `modules` and of every project module they import (at any level)."""
    files: set[str] = set()
    todo = list(modules)
    while todo:
        path = _module_file(todo.pop())
        if path is None or str(path.relative_to(REPO)) in files:
            continue
        files.add(str(path.relative_to(REPO)))
        todo += _imported(ast.parse(path.read_text()), _package(path)).values()
    return {f for f in files if not f.endswith("__init__.py") or (REPO / f).read_text().strip()}


def stage_code(pipeline: str, step: str) -> set[str]:
    """The project files a stage runs: tasks/PIPELINE/stages.py, and, from the stage's function and the
    module's own helpers it calls, every project module they use, with everything those import."""
    path = REPO / "tasks" / pipeline / "stages.py"
    tree = ast.parse(path.read_text())
    bound = _imported(tree, _package(path))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    functions |= {target.id: node for node in tree.body if isinstance(node, ast.Assign)  # TRAIN = kit.TrainSpec(...)
                  for target in node.targets if isinstance(target, ast.Name)}
    used, todo, visited = set(), [step], set()
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Name):
                if node.id in functions:
                    todo.append(node.id)
                elif node.id in bound:
                    used.add(bound[node.id])
        used |= set(_imported(functions[name], _package(path)).values())
    return _closure(used) | {str(path.relative_to(REPO))}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_depends_on_all_the_project_code_it_runs(stage: str) -> None:
    """A change to any code a stage runs re-runs it (train stages once missed tasks/PIPELINE/stages.py),
    and no pipeline depends on another pipeline's code."""
    pipeline, _, step = stage.partition("_")
    deps = STAGES[stage].get("deps", [])
    code = stage_code(pipeline, step)
    missing = sorted(f for f in code if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert missing == [], f"{stage}: add to its deps in dvc.yaml: {missing}"
    pipelines = ("word2vec", "segmentation", "detection", "classification", "style", "generative")
    others = [d for d in deps if any(d.startswith(f"tasks/{p}/") for p in pipelines if p != pipeline)]
    assert others == [], f"{stage} depends on another pipeline's code: {others}"
