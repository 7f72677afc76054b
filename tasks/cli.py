"""`python -m tasks PIPELINE STAGE`: the thin shell dvc.yaml calls. User errors print one clear
message and exit 2; they never end in a bare traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, get_args

from tasks.errors import D2lflowError, filesystem_error
from tasks.params import DEFAULT_PARAMS, Params, Pipeline, load_params

PIPELINES: tuple[str, ...] = get_args(Pipeline)


def stages(pipeline: str) -> dict[str, Callable[[Params], dict[str, Any]]]:
    """The stage functions of a pipeline, in order (acquire first)."""
    return importlib.import_module(f"tasks.{pipeline}.stages").STAGES


def acquire_all(params: Params) -> dict[str, Any]:
    """Acquire the data of every pipeline, each from its configured source: data.dvc versions all of
    data/, so it must not depend on which pipeline happened to run first. Every new tree is staged and
    checked first; data/ changes only once all of them are (all or nothing)."""
    from tasks.acquire import Staging

    staging = Staging(params.root())
    try:
        summary = {pipeline: stages(pipeline)["acquire"](params, staging) for pipeline in PIPELINES}
        staging.commit()
    finally:
        staging.close()
    return summary


def acquire_and_version(root: Path) -> dict[str, Any]:
    """Acquire every pipeline's data and version it (`dvc add data`) under the repository lock, so no
    DVC stage of another run reads data/ while it is being replaced."""
    from tasks.acquire import dvc_add
    from tasks.dvc_repo import repo_lock

    with repo_lock(root, "acquiring data/") if (root / ".dvc").is_dir() else nullcontext():
        summary = acquire_all(load_params(root / "params.yaml"))
        dvc_add(root, "data")
    return summary


def quiet_environment() -> None:
    """Offline, telemetry-free defaults for the libraries we drive, and MLflow without its INFO chatter and
    download bars (its warnings stay); a user's own setting wins. Stage subprocesses inherit them."""
    for key, value in {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GIT_PYTHON_REFRESH": "quiet",
                       "MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)


NOISY_LOGGERS = ("alembic", "mlflow", "urllib3", "httpx", "gensim", "smart_open", "matplotlib", "PIL", "filelock")


def setup_logging() -> None:
    """Our records at INFO on stderr ("%(asctime)s %(levelname)s name: message": tasks.relay parses it back);
    third-party libraries at WARNING."""
    from tasks.distributed import rank_label

    rank = f"[{rank_label()}] " if rank_label() else ""  # torchrun interleaves the ranks' logs
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {rank}%(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__)
    parser.add_argument("pipeline", choices=PIPELINES)
    parser.add_argument("stage", help="acquire, preprocess, train, evaluate or register")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    quiet_environment()
    setup_logging()
    try:
        available = stages(args.pipeline)
        if args.stage not in available:
            raise D2lflowError(f"unknown stage {args.stage!r} for {args.pipeline}; choose from {', '.join(available)}")
        summary = available[args.stage](load_params(args.params))
    except (D2lflowError, OSError) as caught:  # a refused write (read-only, full disk) is the user's too
        error = caught if isinstance(caught, D2lflowError) else filesystem_error(caught)
        if error is None:
            raise
        from tasks.distributed import rank_label

        print(f"error: {rank_label() + ': ' if rank_label() else ''}{error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0
