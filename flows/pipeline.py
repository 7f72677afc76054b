"""The end-to-end Prefect flow: acquire (with retries) → one Prefect task per DVC stage → summary.

The flow drives `dvc repro --single-item STAGE` for each stage of the pipeline in dvc.yaml order,
instead of re-implementing the DAG, so a flow run and a manual `dvc repro` write the same dvc.lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.acquire import dvc_add
from tasks.atomic import read_json
from tasks.cli import acquire_all, quiet_environment
from tasks.errors import D2lflowError
from tasks.params import load_params


def stage_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment DVC stage commands run in: this interpreter's `python` first on PATH, plus
    `extra` variables (e.g. a reproduction's own MLflow store)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def dvc_stages(root: Path, pipeline: str) -> list[str]:
    """The DVC stages of a pipeline, in dvc.yaml order (which is their dependency order)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    found = [name for name in spec.get("stages", {}) if name.startswith(f"{pipeline}_")]
    if not found:
        raise D2lflowError(f"{root / 'dvc.yaml'} has no stages for pipeline {pipeline!r}")
    return found


def run_dvc(root: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run a DVC command (in `env`, default `stage_environment()`); a failure raises with DVC's own
    output (the last 60 lines)."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=dict(env or stage_environment()),
                          capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-60:])
        raise D2lflowError(f"`dvc {' '.join(args)}` failed (exit {done.returncode}) in {root}:\n{tail}")
    return output


@task(name="acquire", retries=3, retry_delay_seconds=[5, 30, 120])
def acquire_task(root: str) -> dict[str, Any]:
    """Acquire the raw data of every pipeline (downloads are retried: the mirror may be flaky) and
    version data/ with DVC."""
    summary = acquire_all(load_params(Path(root) / "params.yaml"))
    dvc_add(Path(root), "data")
    for pipeline, acquired in summary.items():
        get_run_logger().info("acquired %s data from %s", pipeline, acquired.get("source"))
    return summary


@task(name="dvc-stage")
def dvc_stage_task(stage: str, root: str) -> str:
    """One DVC stage: `dvc repro --single-item STAGE` (skipped by DVC when nothing it depends on changed)."""
    logger = get_run_logger()
    output = run_dvc(Path(root), "repro", "--single-item", stage)
    for line in output.splitlines()[-20:]:
        logger.info("%s", line)
    return output


def summary_markdown(pipeline: str, root: Path) -> tuple[str, dict[str, Any]]:
    """A markdown summary: evaluation and train metrics and the registration decision."""
    params = load_params(root / "params.yaml")
    section = getattr(params, pipeline)
    metrics = read_json(params.path(section.evaluate.out_dir) / "metrics.json")
    train_metrics = read_json(params.path(section.train.out_dir) / "metrics.json")
    registered = read_json(params.path(section.register.out_dir) / "registered.json")
    rows = [f"| {key} | {value} |" for key, value in sorted({**train_metrics, **metrics}.items())]
    text = "\n".join([
        f"# {pipeline}: model `{registered['name']}` version {registered['version']} → `{registered['alias']}`",
        "",
        f"Primary metric `{registered['primary_metric']}` = {registered['primary_metric_value']}"
        f" (previous champion: {registered['previous_champion_value']}); MLflow run `{registered['run_id']}`.",
        "",
        "| metric | value |",
        "|---|---|",
        *rows,
    ])
    return text, {"metrics": metrics, "train": train_metrics, "registered": registered}


@flow(name="d2lflow-pipeline")
def pipeline_flow(pipeline: str = "word2vec", root: str = ".", acquire: bool = True) -> dict[str, Any]:
    """Acquire → every DVC stage of `pipeline` → a markdown artifact with the metrics and the model version."""
    quiet_environment()
    repo = Path(root).resolve()
    if acquire:
        acquire_task(str(repo))
    for stage in dvc_stages(repo, pipeline):
        dvc_stage_task.with_options(name=f"dvc repro {stage}")(stage, str(repo))
    text, summary = summary_markdown(pipeline, repo)
    create_markdown_artifact(markdown=text, key=f"{pipeline}-summary", description=f"{pipeline} run summary")
    get_run_logger().info("%s", text.splitlines()[0])
    return summary


if __name__ == "__main__":
    pipeline_flow(sys.argv[1] if len(sys.argv) > 1 else "word2vec")
