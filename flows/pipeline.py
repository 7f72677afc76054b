"""The end-to-end Prefect flow: acquire (with retries) → one Prefect task per DVC stage → summary.

The flow drives `dvc repro --single-item STAGE` for each stage of the pipeline in dvc.yaml order,
instead of re-implementing the DAG, so a flow run and a manual `dvc repro` write the same dvc.lock.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.atomic import read_json
from tasks.cli import acquire_and_version, quiet_environment
from tasks.dvc_repo import repo_lock, run_dvc, stage_environment
from tasks.errors import D2lflowError
from tasks.params import load_params

__all__ = ["check_tracking", "dvc_stages", "pipeline_flow", "run_dvc", "run_stages", "stage_environment",
           "summary_markdown"]


def dvc_stages(root: Path, pipeline: str) -> list[str]:
    """The DVC stages of a pipeline, in dvc.yaml order (which is their dependency order)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    found = [name for name in spec.get("stages", {}) if name.startswith(f"{pipeline}_")]
    if not found:
        raise D2lflowError(f"{root / 'dvc.yaml'} has no stages for pipeline {pipeline!r}")
    return found


@task(name="acquire", retries=3, retry_delay_seconds=[5, 30, 120])
def acquire_task(root: str) -> dict[str, Any]:
    """Acquire the raw data of every pipeline (downloads are retried: the mirror may be flaky) and
    version data/ with DVC."""
    summary = acquire_and_version(Path(root))
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


def check_tracking(repo: Path) -> None:
    """The MLflow tracking server must answer before any stage runs, also when DVC would skip them all."""
    from tasks.tracking import check_tracking_server

    check_tracking_server(load_params(repo / "params.yaml"))


def run_stages(repo: Path, pipeline: str) -> None:
    """Every DVC stage of `pipeline`, each as its own Prefect task, in dvc.yaml order."""
    for stage in dvc_stages(repo, pipeline):
        dvc_stage_task.with_options(name=f"dvc repro {stage}")(stage, str(repo))


def summary_markdown(pipeline: str, root: Path) -> tuple[str, dict[str, Any]]:
    """A markdown summary: evaluation and train metrics and what this run's register stage did
    (outcome.json: registered a version, completed an interrupted one, or found it unchanged)."""
    params = load_params(root / "params.yaml")
    section = getattr(params, pipeline)
    metrics = read_json(params.path(section.evaluate.out_dir) / "metrics.json")
    train_metrics = read_json(params.path(section.train.out_dir) / "metrics.json")
    registered = read_json(params.path(section.register.out_dir) / "registered.json")
    outcome = read_json(params.path(section.register.out_dir) / "outcome.json")
    rows = [f"| {key} | {value} |" for key, value in sorted({**train_metrics, **metrics}.items())]
    headline = f"# {pipeline}: {outcome['message']}"
    if outcome["status"] == "unchanged":
        detail = (f"Nothing was registered: version {registered['version']} (MLflow run `{registered['run_id']}`) "
                  f"holds these weights in {outcome['registry']}.")
    else:
        detail = (f"Primary metric `{registered['primary_metric']}` = {registered['primary_metric_value']} (previous "
                  f"champion: {registered['previous_champion_value']}); MLflow run `{registered['run_id']}`.")
    text = "\n".join([headline, "", detail, "", "| metric | value |", "|---|---|", *rows])
    return text, {"metrics": metrics, "train": train_metrics, "registered": registered, "registration": outcome}


@flow(name="d2lflow-pipeline")
def pipeline_flow(pipeline: str = "word2vec", root: str = ".", acquire: bool = True) -> dict[str, Any]:
    """Acquire → every DVC stage of `pipeline` → a markdown artifact with the metrics and the model version."""
    quiet_environment()
    repo = Path(root).resolve()
    check_tracking(repo)
    with repo_lock(repo, f"d2lflow run {pipeline}"):
        if acquire:
            acquire_task(str(repo))
        run_stages(repo, pipeline)
        text, summary = summary_markdown(pipeline, repo)  # under the lock: this run's outputs
    create_markdown_artifact(markdown=text, key=f"{pipeline}-summary", description=f"{pipeline} run summary")
    get_run_logger().info("%s", text.splitlines()[0])
    return summary


if __name__ == "__main__":
    pipeline_flow(sys.argv[1] if len(sys.argv) > 1 else "word2vec")
