"""The end-to-end Prefect flow: acquire (with retries) → one Prefect task per DVC stage → summary.

The flow drives `dvc repro --single-item STAGE` for each stage of the pipeline in dvc.yaml order,
instead of re-implementing the DAG, so a flow run and a manual `dvc repro` write the same dvc.lock.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.atomic import read_json
from tasks.cli import acquire_and_version, quiet_environment
from tasks.dvc_repo import repo_lock, run_dvc, stage_environment
from tasks.errors import D2lflowError, DownloadError
from tasks.params import load_params
from tasks.progress import run_url, ui_command
from tasks.relay import StageOutput

__all__ = ["check_tracking", "commit_hint", "dvc_stages", "log_report", "pipeline_flow", "repro_stage", "run_dvc",
           "run_link", "run_stages", "stage_environment", "summary_markdown"]

VERSIONED = ("dvc.lock", "params.yaml", "*.dvc", ".gitignore")  # what a run may change that git should record


def dvc_stages(root: Path, pipeline: str) -> list[str]:
    """The DVC stages of a pipeline, in dvc.yaml order (which is their dependency order)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    found = [name for name in spec.get("stages", {}) if name.startswith(f"{pipeline}_")]
    if not found:
        raise D2lflowError(f"{root / 'dvc.yaml'} has no stages for pipeline {pipeline!r}")
    return found


def worth_retrying(task, task_run, state) -> bool:
    """Prefect's retry condition for acquisition: a download that failed may work on a retry (a flaky
    mirror); a user's mistake (a bad archive, a missing local_path, bad params) will not, so it fails at once."""
    error = state.data if isinstance(state.data, BaseException) else None
    return isinstance(error, DownloadError) or not isinstance(error, D2lflowError)


@task(name="acquire", retries=3, retry_delay_seconds=[5, 30, 120], retry_condition_fn=worth_retrying)
def acquire_task(root: str) -> dict[str, Any]:
    """Acquire the raw data of every pipeline (downloads are retried: the mirror may be flaky) and
    version data/ with DVC."""
    summary = acquire_and_version(Path(root))
    for pipeline, acquired in summary.items():
        get_run_logger().info("acquired %s data from %s", pipeline, acquired.get("source"))
    return summary


def repro_stage(root: Path, stage: str, logger: logging.Logger | logging.LoggerAdapter) -> str:
    """`dvc repro --single-item STAGE`, its output relayed to `logger` as it arrives (tasks.relay: records
    keep their level, progress bars become periodic lines, DVC's git hints go to DEBUG)."""
    relay = StageOutput(logger)
    try:
        return run_dvc(root, "repro", "--single-item", stage, on_output=relay)
    finally:
        relay.flush()


@task(name="dvc-stage")
def dvc_stage_task(stage: str, root: str) -> str:
    """One DVC stage: `dvc repro --single-item STAGE` (skipped by DVC when nothing it depends on changed),
    its progress in the task's logs while it runs."""
    return repro_stage(Path(root), stage, get_run_logger())


def check_tracking(repo: Path) -> None:
    """The MLflow tracking server must answer before any stage runs, also when DVC would skip them all."""
    from tasks.tracking import check_tracking_server

    check_tracking_server(load_params(repo / "params.yaml"))


def run_stages(repo: Path, pipeline: str) -> None:
    """Every DVC stage of `pipeline`, each as its own Prefect task, in dvc.yaml order."""
    for stage in dvc_stages(repo, pipeline):
        dvc_stage_task.with_options(name=f"dvc repro {stage}")(stage, str(repo))


def run_link(pipeline: str, root: Path, run_id: str) -> tuple[str, str | None]:
    """The run's page in MLflow and, for a store that is no server, the `mlflow ui` command serving it
    there (tasks.progress); the experiment comes from the train stage's run.json."""
    from tasks import kit, tracking

    params = load_params(root / "params.yaml")
    uri = tracking.tracking_uri(params)
    for model in kit.trained_models(params, pipeline):
        run_file = model.train_dir / "run.json"
        recorded = read_json(run_file) if run_file.is_file() else {}
        if recorded.get("run_id") == run_id:
            return run_url(uri, recorded["experiment_id"], run_id), ui_command(uri)
    # the register stage started its own run (the store lacked the train stage's), or no run.json
    from mlflow import MlflowClient

    experiment = MlflowClient(uri).get_run(run_id).info.experiment_id
    return run_url(uri, experiment, run_id), ui_command(uri)


def _registration_lines(label: str, registered: dict[str, Any], outcome: dict[str, Any]) -> list[str]:
    name = f"**{label}**: " if label else ""
    if outcome["status"] == "unchanged":
        return [f"{name}Nothing was registered: version {registered['version']} (MLflow run "
                f"`{registered['run_id']}`) holds these weights in {outcome['registry']}."]
    return [f"{name}Primary metric `{registered['primary_metric']}` = {registered['primary_metric_value']} "
            f"(previous champion: {registered['previous_champion_value']}); MLflow run `{registered['run_id']}`."]


def summary_markdown(pipeline: str, root: Path, overrides: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """A markdown summary: evaluation and train metrics, what this run's register stage did for each model
    (outcome.json: registered a version, completed an interrupted one, or found it unchanged), the
    MLflow runs and the `-S` overrides the run was started with. `registered`/`registration` are the
    (first) model's; `models` lists every model's (generative registers two)."""
    from tasks import kit

    params = load_params(root / "params.yaml")
    section = getattr(params, pipeline)
    metrics = read_json(params.path(section.evaluate.out_dir) / "metrics.json")
    models, train_metrics, details, links = [], {}, [], []
    for model in kit.trained_models(params, pipeline):
        out = params.path(model.register.out_dir)
        registered, outcome = read_json(out / "registered.json"), read_json(out / "outcome.json")
        models.append({"model": model.register.model_name, "registered": registered, "registration": outcome})
        prefix = f"{model.label}_" if model.label else ""
        train_metrics.update({prefix + k: v for k, v in read_json(model.train_dir / "metrics.json").items()})
        details += _registration_lines(model.label, registered, outcome) + [""]
        links += [(f"{model.label}: " if model.label else "") + _markdown_link(
            *run_link(pipeline, root, registered["run_id"])), ""]
    rows = [f"| {key} | {value} |" for key, value in sorted({**train_metrics, **metrics}.items())]
    headline = f"# {pipeline}: " + "; ".join(m["registration"]["message"] for m in models)
    text = "\n".join([
        headline, "", *details, *links,
        "Overrides (`-S`): " + (", ".join(f"`{item}`" for item in overrides) if overrides else "none"), "",
        "| metric | value |", "|---|---|", *rows,
    ])
    return text, {"metrics": metrics, "train": train_metrics, "registered": models[0]["registered"],
                  "registration": models[0]["registration"], "models": models}


def _markdown_link(url: str, command: str | None) -> str:
    return f"[MLflow run]({url})" + (f" (once `{command}` runs)" if command else "")


def commit_hint(root: Path) -> str | None:
    """What to commit after a run: the versioned files it changed (dvc.lock, params.yaml, data.dvc, ...),
    as one `git add` line; None outside git or when nothing changed."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *VERSIONED], cwd=root,
                          capture_output=True, text=True)
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0 or top.returncode != 0:
        return None
    changed = [Path(top.stdout.strip(), line[3:].strip('"')) for line in done.stdout.splitlines() if line[3:]]
    if not changed:
        return None
    names = " ".join(sorted(str(path.relative_to(root.resolve())) if path.is_relative_to(root.resolve())
                            else str(path) for path in changed))
    return f"to version this run: git add {names} && git commit"


def log_report(pipeline: str, root: Path, text: str, summary: dict[str, Any],
               logger: logging.Logger | logging.LoggerAdapter) -> None:
    """The end of a run on the console: the registration, the metrics, the MLflow run, what to commit."""
    logger.info("%s", text.splitlines()[0].lstrip("# ").replace("`", ""))
    logger.info("metrics: %s", ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                                         for key, value in sorted(summary["metrics"].items())))
    for model in summary["models"]:
        url, command = run_link(pipeline, root, model["registered"]["run_id"])
        label = f" ({model['model']})" if len(summary["models"]) > 1 else ""
        logger.info("MLflow run%s: %s%s", label, url, f" (once `{command}` runs)" if command else "")
    if hint := commit_hint(root):
        logger.info("%s", hint)


@flow(name="d2lflow-pipeline")
def pipeline_flow(pipeline: str = "word2vec", root: str = ".", acquire: bool = True,
                  overrides: list[str] | None = None) -> dict[str, Any]:
    """Acquire → every DVC stage of `pipeline` → a markdown artifact with the metrics and the model version.
    `overrides`: the `-S` values the run was started with (listed in the artifact)."""
    quiet_environment()
    repo = Path(root).resolve()
    check_tracking(repo)
    with repo_lock(repo, f"d2lflow run {pipeline}"):
        if acquire:
            acquire_task(str(repo))
        run_stages(repo, pipeline)
        text, summary = summary_markdown(pipeline, repo, overrides)  # under the lock: this run's outputs
    create_markdown_artifact(markdown=text, key=f"{pipeline}-summary", description=f"{pipeline} run summary")
    log_report(pipeline, repo, text, summary, get_run_logger())
    return summary


if __name__ == "__main__":
    pipeline_flow(sys.argv[1] if len(sys.argv) > 1 else "word2vec")
