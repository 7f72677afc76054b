"""`python -m flows.serve [--cron EXPR | --interval SECONDS] [PIPELINE ...]`: scheduled retraining.

Creates (or updates) the deployment `d2lflow-retrain/retrain-<pipelines>` on the Prefect server at
PREFECT_API_URL, with the cron schedule of params.yaml (`schedule.cron`, `schedule.timezone`) or the one
given, and runs its flow runs in this process until stopped (Ctrl-C pauses the schedule). The deployment's
concurrency limit is 1 (a run due while one is running waits for it: Prefect's ENQUEUE strategy), and
every run holds the repository lock, so runs started by hand or by another server wait too.

Prefect's temporary server never fires schedules: start one first with `prefect server start` and set
PREFECT_API_URL (e.g. `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tasks.cli import PIPELINES, quiet_environment, setup_logging
from tasks.errors import D2lflowError
from tasks.params import ScheduleParams, load_params

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment


def deployment_name(pipelines: list[str]) -> str:
    return f"retrain-{'-'.join(pipelines)}"


def checked_api_url() -> str:
    """The Prefect server's API URL; refuses Prefect's temporary server and an unreachable one."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise D2lflowError("PREFECT_API_URL is not set, and Prefect's temporary server never runs schedules: start "
                           "a server (`prefect server start`) and set PREFECT_API_URL, e.g. "
                           "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`")
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise D2lflowError(f"the Prefect server at PREFECT_API_URL={url} does not answer ({error}); start it with "
                           "`prefect server start` or fix PREFECT_API_URL")
    return url


def build_deployment(root: Path, pipelines: list[str], cron: str | None = None,
                     interval: float | None = None) -> RunnerDeployment:
    """The retraining deployment: the given interval, else the given cron, else params' schedule.cron, in
    params' schedule.timezone; concurrency limit 1 (ENQUEUE); parameters pinning the repository root."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron, Interval

    from flows.retrain import retrain_flow

    schedule = load_params(root / "params.yaml").schedule
    if cron is not None:
        try:
            schedule = ScheduleParams.model_validate({**schedule.model_dump(), "cron": cron})
        except ValidationError as error:
            raise D2lflowError(f"--cron {cron!r}: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    try:
        when = (Interval(interval, timezone=schedule.timezone) if interval is not None
                else Cron(schedule.cron, timezone=schedule.timezone))
    except ValueError as error:
        key = "--cron" if cron is not None else f"{root / 'params.yaml'}: schedule.cron"
        raise D2lflowError(f"{key} {schedule.cron!r} is not accepted by Prefect: {error}") from None
    return retrain_flow.to_deployment(
        name=deployment_name(pipelines),
        schedule=when,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        parameters={"pipelines": pipelines, "root": str(root)},  # data: schedule.data, read at each run
        description=f"Scheduled retraining of {', '.join(pipelines)} in {root}",
        tags=["d2lflow", *pipelines],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipelines", nargs="*", metavar="PIPELINE",
                        help=f"{', '.join(PIPELINES)} (default: schedule.pipelines in params.yaml)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--cron", help="cron expression (default: schedule.cron), read in schedule.timezone")
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS instead of a cron")
    parser.add_argument("--root", default=".", help="repository root (default: current directory)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.pipelines) - set(PIPELINES)):
        parser.error(f"unknown pipeline {', '.join(unknown)}; choose from {', '.join(PIPELINES)}")
    if args.interval is not None and args.interval <= 0:
        parser.error("--interval must be a positive number of seconds")
    quiet_environment()
    setup_logging()
    root = Path(args.root).resolve()
    try:
        pipelines = args.pipelines or list(load_params(root / "params.yaml").schedule.pipelines)
        deployment = build_deployment(root, pipelines, cron=args.cron, interval=args.interval)
        checked_api_url()
        from prefect import serve

        serve(deployment, limit=1)
    except D2lflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
