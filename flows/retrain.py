"""Retraining, the flow a schedule runs: data (acquire, or `dvc pull`) → every DVC stage of each pipeline
(the register stage makes the new model champion only if it beats the current one) → `dvc push` when a
DVC remote is configured → a markdown artifact with the metrics and the alias decision.

The whole run holds the repository lock (tasks/dvc_repo.py), so a second run, scheduled or by hand,
waits for it instead of interleaving its stages with this one's. `python -m flows.retrain [PIPELINE ...]`
runs it once now; `python -m flows.serve` runs it on the schedule in params.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.pipeline import acquire_task, check_tracking, run_stages, summary_markdown
from tasks.cli import PIPELINES, quiet_environment, setup_logging
from tasks.dvc_repo import default_remote, remotes, repo_lock, run_dvc
from tasks.errors import D2lflowError
from tasks.params import Pipeline, load_params

DataMode = Literal["acquire", "pull"]


def push_if_remote(repo: Path) -> str:
    """`dvc push` to the default DVC remote; without one nothing is pushed and the reason is returned."""
    remote = default_remote(repo)
    if remote is None:
        configured = remotes(repo)
        if configured:
            return (f"not pushed: DVC remotes {', '.join(configured)} are configured but none is the default "
                    "(set one with `dvc remote default NAME`)")
        return "not pushed: no DVC remote configured (add one with `dvc remote add -d NAME URL`)"
    run_dvc(repo, "push")
    return f"pushed to DVC remote `{remote}`"


@task(name="dvc pull", retries=2, retry_delay_seconds=[10, 60])
def pull_task(root: str) -> str:
    """Restore data/ (and any stage outputs the remote has) from the default DVC remote."""
    repo = Path(root)
    remote = default_remote(repo)
    if remote is None:
        raise D2lflowError(f"{repo}: schedule.data is 'pull' but no default DVC remote is configured; add one "
                           "(`dvc remote add -d NAME URL`) or set schedule.data: acquire in params.yaml")
    get_run_logger().info("%s", run_dvc(repo, "pull") or f"dvc pull from {remote}: nothing to do")
    return f"pulled from DVC remote `{remote}`"


@task(name="dvc push", retries=2, retry_delay_seconds=[10, 60])
def push_task(root: str) -> str:
    """Push the new data and outputs, so another machine can `dvc pull` what this run trained on."""
    outcome = push_if_remote(Path(root))
    get_run_logger().info("%s", outcome)
    return outcome


def _registration(repo: Path, pipeline: str) -> list[dict[str, Any] | None]:
    """Each model's registered.json (None where there is none yet)."""
    from tasks.kit import trained_models

    params = load_params(repo / "params.yaml")
    paths = [params.path(model.register.out_dir) / "registered.json" for model in trained_models(params, pipeline)]
    return [json.loads(path.read_text()) if path.is_file() else None for path in paths]


def retrain_markdown(data: str, pushed: str, pipelines: dict[str, dict[str, Any]]) -> str:
    """The artifact: what data the run used, what it pushed, and per pipeline its summary_markdown
    (metrics table, model version and alias) with whether this run registered it."""
    lines = ["# Retraining", "", f"- data: {data}", f"- DVC: {pushed}", ""]
    for name, result in pipelines.items():
        models = result["summary"].get("models") or [{"model": name, "registered": result["summary"]["registered"]}]
        for model, now in zip(models, result.get("registered_models") or [result["registered_now"]] * len(models)):
            registered = model["registered"]
            label = name if len(models) == 1 else f"{name} ({model['model']})"
            if now:
                lines.append(f"**{label}**: this run registered version {registered['version']} as "
                             f"`{registered['alias']}`.")
            else:
                lines.append(f"**{label}**: data, params and code are unchanged since the last run (every DVC "
                             f"stage was up to date); no new version, the last one is {registered['version']} "
                             f"(`{registered['alias']}` when registered).")
        lines += ["", "#" + result["markdown"], ""]
    return "\n".join(lines)


@flow(name="d2lflow-retrain")
def retrain_flow(pipelines: list[Pipeline] | None = None, root: str = ".",
                 data: DataMode | None = None) -> dict[str, Any]:
    """Retrain `pipelines` (default: schedule.pipelines) in the repository at `root`, data from
    `data` (default: schedule.data); returns per pipeline its summary and whether it registered a version."""
    quiet_environment()
    repo = Path(root).resolve()
    schedule = load_params(repo / "params.yaml").schedule
    chosen = list(pipelines or schedule.pipelines)
    mode = data or schedule.data
    logger = get_run_logger()
    check_tracking(repo)
    with repo_lock(repo, f"retraining {', '.join(chosen)} (Prefect flow run {flow_run.id})"):
        before = {name: _registration(repo, name) for name in chosen}
        if mode == "pull":
            data_outcome = pull_task(str(repo))
        else:
            acquire_task(str(repo))
            data_outcome = "acquired from each pipeline's data.source"
        results: dict[str, dict[str, Any]] = {}
        for name in chosen:
            run_stages(repo, name)
            markdown, summary = summary_markdown(name, repo)
            now = [model["registered"] != previous for model, previous in zip(summary["models"], before[name])]
            results[name] = {"registered_now": any(now), "registered_models": now, "summary": summary,
                             "markdown": markdown}
            logger.info("%s: %s", name, markdown.splitlines()[0].lstrip("# "))
        pushed = push_task(str(repo))
    text = retrain_markdown(data_outcome, pushed, results)
    create_markdown_artifact(markdown=text, key=f"retrain-{'-'.join(chosen)}",
                             description=f"retraining of {', '.join(chosen)}")
    return {"data": data_outcome, "push": pushed,
            "pipelines": {name: {k: v for k, v in r.items() if k != "markdown"} for name, r in results.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description="Retrain now (once).")
    parser.add_argument("pipelines", nargs="*", metavar="PIPELINE",
                        help=f"{', '.join(PIPELINES)} (default: schedule.pipelines in params.yaml)")
    parser.add_argument("--data", choices=["acquire", "pull"], help="default: schedule.data in params.yaml")
    parser.add_argument("--root", default=".", help="repository root (default: current directory)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.pipelines) - set(PIPELINES)):
        parser.error(f"unknown pipeline {', '.join(unknown)}; choose from {', '.join(PIPELINES)}")
    quiet_environment()
    setup_logging()
    try:
        summary = retrain_flow(args.pipelines or None, str(Path(args.root).resolve()), args.data)
    except D2lflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
