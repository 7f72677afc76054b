"""`d2lflow`: the user's entry point.

  d2lflow run word2vec [-S key=value ...] [--no-prefect]   acquire + every stage, ends with a registered model
  d2lflow acquire                                          every pipeline's raw data, then `dvc add data`
  d2lflow plots [PIPELINE] [--out DIR]                     dvc.yaml's plots as a page that renders offline
  d2lflow sweep word2vec -S key=v1,v2 [-S ...] [--jobs N]  a grid through DVC's experiment queue, ranked
  d2lflow exp show word2vec                                `dvc exp show` with only that pipeline's columns
  d2lflow new NAME                                         scaffold a pipeline on the kit (tasks/kit.py)

`-S` edits params.yaml in place (validated first), like `dvc exp run -S`, so what ran is what the
commit records. It is applied only once this run holds the repository lock (a run started while another
is in progress waits for it, up to `dvc.lock_timeout_seconds`, then refuses), and the lock is held until
the summary is read, so the params a model was trained with are the ones params.yaml and dvc.lock show.
Errors print one message naming what was wrong and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from tasks.cli import PIPELINES, acquire_and_version, quiet_environment, setup_logging
from tasks.dvc_repo import repo_lock
from tasks.errors import D2lflowError, filesystem_error
from tasks.params import load_params, set_params


def _prefect_defaults(root: Path) -> None:
    """Prefect's temporary server, with room to start on a slow laptop; a user's settings win."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


def _add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    """`d2lflow sweep PIPELINE -S key=v1,v2 --jobs N` and `d2lflow exp show PIPELINE` (flows/sweep.py)."""
    from flows.sweep import add_commands

    add_commands(sub, PIPELINES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="d2lflow", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="acquire data, run every DVC stage, register the model")
    run.add_argument("pipeline", choices=PIPELINES)
    run.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="set a value in params.yaml first, e.g. -S word2vec.data.source=d2l")
    run.add_argument("--no-prefect", action="store_true", help="run `dvc repro` directly instead of the Prefect flow")
    run.add_argument("--skip-acquire", action="store_true", help="use data/ as it is (e.g. after `dvc pull`)")
    run.add_argument("--json", action="store_true", help="print the metrics and the registration as JSON at the end")
    acquire = sub.add_parser("acquire", help="acquire the raw data of every pipeline and version it (dvc add data)")
    plots = sub.add_parser("plots", help="dvc.yaml's plots as a page that renders offline (SVG inline)")
    plots.add_argument("pipeline", nargs="?", choices=PIPELINES, help="only this pipeline's plots (default: all)")
    plots.add_argument("--out", help="output folder (default: artifacts/plots/PIPELINE, or artifacts/plots/all)")
    new = sub.add_parser("new", help="scaffold a pipeline on the kit that runs on synthetic data (tasks/scaffold.py)")
    new.add_argument("name", help="the pipeline's name: a lower-case Python identifier")
    for command in (run, acquire, plots, new):
        command.add_argument("--root", default=".", help="repository root (default: current directory)")
    _add_sweep_commands(sub)
    args = parser.parse_args(argv)

    quiet_environment()
    setup_logging()
    root = Path(args.root).resolve()
    try:
        if args.command in ("sweep", "exp"):
            from flows.sweep import run_command

            return run_command(args, root)
        if args.command == "new":
            from tasks.scaffold import new as scaffold

            summary = scaffold(root, args.name)
        elif args.command == "acquire":
            summary = acquire_and_version(root)
        elif args.command == "plots":
            from tasks.plots import write_page

            out = Path(args.out).resolve() if args.out else root / "artifacts" / "plots" / (args.pipeline or "all")
            summary = write_page(root, out, args.pipeline)
        else:
            load_params(root / "params.yaml")  # a bad params file fails before anything runs
            purpose = f"d2lflow run {args.pipeline}{' --no-prefect' if args.no_prefect else ''}"
            with repo_lock(root, purpose):  # reentrant: the flow and each `dvc repro` take it again
                if args.overrides:
                    set_params(root / "params.yaml", args.overrides)
                from flows.pipeline import check_tracking

                check_tracking(root)  # a tracking server that does not answer fails here, even if every stage is cached
                if args.no_prefect:
                    summary = _run_without_prefect(args.pipeline, root, not args.skip_acquire, args.overrides)
                else:
                    _prefect_defaults(root)
                    from flows.pipeline import pipeline_flow

                    summary = pipeline_flow(args.pipeline, str(root), acquire=not args.skip_acquire,
                                            overrides=args.overrides)
    except (D2lflowError, OSError) as caught:  # a refused write (read-only, full disk) is the user's too
        error = caught if isinstance(caught, D2lflowError) else filesystem_error(caught)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command != "run" or args.json:  # a run has logged its summary already
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


def _run_without_prefect(pipeline: str, root: Path, acquire: bool, overrides: list[str]) -> dict:
    from flows.pipeline import dvc_stages, log_report, repro_stage, summary_markdown

    logger = logging.getLogger("d2lflow")
    with repo_lock(root, f"d2lflow run {pipeline} --no-prefect"):
        if acquire:
            acquire_and_version(root)
        for stage in dvc_stages(root, pipeline):
            repro_stage(root, stage, logger)
        text, summary = summary_markdown(pipeline, root, overrides)  # under the lock: this run's outputs
    log_report(pipeline, root, text, summary, logger)
    return summary


if __name__ == "__main__":
    sys.exit(main())
