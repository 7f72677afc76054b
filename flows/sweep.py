"""`d2lflow sweep PIPELINE -S key=v1,v2 ... --jobs N` and `d2lflow exp show PIPELINE`.

A sweep is a grid (the cartesian product of the comma lists) run through DVC's experiment queue:
every grid point is validated against params.yaml first (a bad value fails before anything is queued),
then queued as `dvc exp run --queue -n TRIAL -S ... PIPELINE_register` and run by `dvc queue start -j N`.
Each trial is a DVC experiment (its own commit) and, through the always-running register stage, its
own MLflow run and registered version, with the champion alias moved by the usual rule (champion only
if it beats the current champion) under the registry lock. Applied trial by trial, that rule leaves the
alias on the best trial when it beats the previous champion, else on the previous champion; the sweep
checks this and says which. Once the queue is done, the sweep tags every trial's run with
`d2lflow.sweep` (its id) and `d2lflow.sweep_trial`, and prints a ranked table. (The tag is set from
here, not passed in the environment of `dvc queue start`: DVC's queue worker inherits that environment,
but a worker an earlier `dvc queue start` left running could run the trials with its own; and a param
would change the stages' params hash.)
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import re
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.dvc_repo import repo_lock, run_dvc
from tasks.errors import D2lflowError, ParamsError
from tasks.params import load_params, set_params

SWEEP_TAG = "d2lflow.sweep"
TRIAL_TAG = "d2lflow.sweep_trial"
EXP_NAME_TAG = "d2lflow.dvc_exp_name"
POLL_SECONDS = 3.0
DONE_STATES = ("Success", "Failed")
SHOW_COLUMNS = ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")


# ----------------------------------------------------------------------------- the grid

def split_values(text: str) -> list[str]:
    """`0.001,0.002` -> ['0.001', '0.002']; a YAML list or mapping (`[a,b]`, `{...}`) is one value."""
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        return [text]
    return [value.strip() for value in text.split(",")]


def parse_grid(overrides: list[str], pipeline: str) -> dict[str, list[str]]:
    """`-S` arguments as {key: [values]} (in the order given); every key must be in `pipeline`'s section."""
    grid: dict[str, list[str]] = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(f"-S {override!r}: expected KEY=VALUE[,VALUE...], e.g. {pipeline}.train.lr=0.001,0.002")
        if not key.startswith(f"{pipeline}."):
            raise ParamsError(f"-S {key}: a sweep of {pipeline} sets only keys under '{pipeline}.' (found {key!r}); "
                              f"use e.g. -S {pipeline}.train.lr=0.001,0.002")
        if key in grid:
            raise ParamsError(f"-S {key}: given twice; list its values once, comma separated")
        values = split_values(text)
        if any(value == "" for value in values):
            raise ParamsError(f"-S {key}={text}: an empty value in the list; write KEY=V1,V2 without empty items")
        if len(set(values)) != len(values):
            raise ParamsError(f"-S {key}={text}: a value is repeated; list each value once")
        grid[key] = values
    if not grid:
        raise ParamsError(f"no -S given: name at least one key to sweep, e.g. -S {pipeline}.train.lr=0.001,0.002")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """The cartesian product, first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def _one_line(error: ParamsError, override: str) -> str:
    problems = [line.strip()[2:] for line in str(error).splitlines() if line.strip().startswith("- ")]
    return f"-S {override}: {'; '.join(problems) if problems else str(error).splitlines()[0]}"


def validate_grid(params_file: Path, grid: dict[str, list[str]]) -> None:
    """Every value of every key, then every grid point, applied to a copy of params.yaml and validated
    by tasks.params; the first bad one raises a one-line ParamsError naming the key and value."""
    with tempfile.TemporaryDirectory(prefix="d2lflow-sweep-") as scratch:
        copy = Path(scratch) / "params.yaml"
        for key, values in grid.items():
            for value in values:
                shutil.copyfile(params_file, copy)
                try:
                    set_params(copy, [f"{key}={value}"])
                except ParamsError as error:
                    raise ParamsError(_one_line(error, f"{key}={value}")) from None
        for point in grid_points(grid):
            shutil.copyfile(params_file, copy)
            overrides = [f"{key}={value}" for key, value in point.items()]
            try:
                set_params(copy, overrides)
            except ParamsError as error:
                raise ParamsError(_one_line(error, " -S ".join(overrides))) from None


def _name_part(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip("._-")
    return cleaned or "x"


def trial_names(sweep_id: str, grid: dict[str, list[str]]) -> list[str]:
    """`sw3f2a-lr0.002` per grid point: the sweep id and, per swept key (its last part, or the whole
    key when two swept keys end alike), its value; a git ref name DVC accepts."""
    keys = list(grid)
    last = [key.rsplit(".", 1)[-1] for key in keys]
    short = {key: (tail if last.count(tail) == 1 else key.replace(".", "_")) for key, tail in zip(keys, last)}
    names = []
    for point in grid_points(grid):
        name = "-".join([sweep_id, *(f"{_name_part(short[key])}{_name_part(value)}" for key, value in point.items())])
        if name.endswith(".lock"):
            name = name[: -len(".lock")] + "_lock"
        while name in names:
            name += "_"
        names.append(name)
    return names


def new_sweep_id() -> str:
    return f"sw{secrets.token_hex(2)}"


# ----------------------------------------------------------------------------- running it

def queue_status(root: Path) -> dict[str, str]:
    """{experiment name: state} from `dvc queue status` (Queued, Running, Success, Failed)."""
    states = {}
    for line in run_dvc(root, "queue", "status", lock=False).splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in ("Queued", "Running", "Success", "Failed"):
            states[words[1]] = words[-1]
    return states


def wait_for(root: Path, names: list[str], timeout: float) -> dict[str, str]:
    """The final state of each trial once none is queued or running; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        states = queue_status(root)
        mine = {name: states.get(name, "missing") for name in names}
        if all(state in DONE_STATES for state in mine.values()):
            return mine
        if time.monotonic() > deadline:
            pending = ", ".join(f"{name} ({state})" for name, state in mine.items() if state not in DONE_STATES)
            raise D2lflowError(f"{root}: the sweep's trials did not finish within {timeout:g} s (--timeout): "
                               f"{pending}; see `dvc queue status` and `dvc queue logs NAME`, stop them with "
                               "`dvc queue kill NAME`, or wait with a larger --timeout")
        time.sleep(POLL_SECONDS)


@dataclass
class Trial:
    name: str
    values: dict[str, str]
    state: str
    run_id: str | None = None
    metric: float | None = None
    version: int | None = None
    aliases: list[str] = field(default_factory=list)


def collect(root: Path, pipeline: str, sweep_id: str, names: list[str], points: list[dict[str, str]],
            states: dict[str, str]) -> tuple[list[Trial], Any]:
    """Each trial's MLflow run (found by its DVC experiment name), tagged with the sweep id, its primary
    metric, registered version and aliases. Returns the trials and the pipeline's register params."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.tracking import configure

    params = load_params(root / "params.yaml")
    cfg = getattr(params, pipeline).register
    configure(params)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(pipeline)
    trials = []
    for name, point in zip(names, points):
        trial = Trial(name, point, states[name])
        found = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], f"tags.`{EXP_NAME_TAG}` = '{name}'", order_by=["attributes.start_time DESC"])
        if found:
            run = found[0]
            trial.run_id = run.info.run_id
            client.set_tag(trial.run_id, SWEEP_TAG, sweep_id)
            client.set_tag(trial.run_id, TRIAL_TAG, name)
            trial.metric = run.data.metrics.get(cfg.primary_metric)
            try:
                versions = client.search_model_versions(f"run_id = '{trial.run_id}'")
            except MlflowException:
                versions = []
            versions = [v for v in versions if v.name == cfg.model_name]
            if versions:
                version = client.get_model_version(cfg.model_name, min(int(v.version) for v in versions))
                trial.version, trial.aliases = int(version.version), sorted(version.aliases or [])
        if trial.state == "Success" and (trial.metric is None or trial.version is None):
            trial.state = "Failed"  # finished in DVC, but no registered model: not a result to rank
        trials.append(trial)
    return trials, cfg


def rank(trials: list[Trial], greater_is_better: bool) -> list[Trial]:
    """Successful trials best first by the primary metric, then the failed ones in grid order."""
    done = [t for t in trials if t.state == "Success"]
    done.sort(key=lambda t: -t.metric if greater_is_better else t.metric)
    return done + [t for t in trials if t.state != "Success"]


def table(trials: list[Trial], metric: str) -> str:
    header = ["rank", "trial", "params", metric, "mlflow run", "version", "aliases"]
    rows = [header]
    for place, trial in enumerate(trials, 1):
        ok = trial.state == "Success"
        rows.append([str(place) if ok else "-", trial.name, " ".join(f"{k}={v}" for k, v in trial.values.items()),
                     f"{trial.metric:.6g}" if ok else "FAILED", trial.run_id or "-",
                     str(trial.version) if trial.version is not None else "-", ",".join(trial.aliases) or "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def verdict(trials: list[Trial], cfg: Any) -> str:
    """What the champion alias says after the sweep, checked against the best trial."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    best = trials[0]
    try:
        champion = MlflowClient().get_model_version_by_alias(cfg.model_name, "champion")
    except MlflowException:
        champion = None
    if champion is not None and int(champion.version) == best.version:
        return (f"promoted: {best.name} ({cfg.model_name} version {best.version}, {cfg.primary_metric}="
                f"{best.metric:.6g}) is champion; `dvc exp apply {best.name}` brings its params and outputs "
                "into the workspace")
    current = "no champion" if champion is None else f"champion is version {champion.version}"
    value = None if champion is None else champion.tags.get("d2lflow.primary_metric_value")
    shown = f" ({cfg.primary_metric}={float(value):.6g})" if value else ""
    return (f"not promoted: the best trial {best.name} (version {best.version}, {cfg.primary_metric}="
            f"{best.metric:.6g}) does not beat the champion; {current}{shown}")


def prepare_store(root: Path, pipeline: str) -> None:
    """Before any trial starts: a tracking server must answer, and the store and the pipeline's
    experiment exist. Trials starting together on a fresh SQLite store would each create its schema,
    and all but one fail with `table ... already exists`."""
    from tasks.tracking import check_tracking_server, configure, experiment_id

    params = load_params(root / "params.yaml")
    check_tracking_server(params)
    configure(params)
    experiment_id(pipeline, params)


def sweep(root: Path, pipeline: str, overrides: list[str], jobs: int, timeout: float,
          sweep_id: str | None = None, out=None) -> int:
    from flows.pipeline import dvc_stages

    out = out or sys.stdout

    if jobs < 1:
        raise D2lflowError(f"--jobs {jobs}: expected at least 1 worker")
    params_file = root / "params.yaml"
    load_params(params_file)
    grid = parse_grid(overrides, pipeline)
    sweep_id = sweep_id or new_sweep_id()
    names, points = trial_names(sweep_id, grid), grid_points(grid)
    target = dvc_stages(root, pipeline)[-1]  # the register stage: every trial ends registered
    with repo_lock(root, f"d2lflow sweep {pipeline} {sweep_id}"):
        validate_grid(params_file, grid)  # under the lock: the params.yaml each trial starts from
        prepare_store(root, pipeline)
        for name, point in zip(names, points):
            sets = [arg for key, value in point.items() for arg in ("-S", f"{key}={value}")]
            run_dvc(root, "exp", "run", "--queue", "-n", name, *sets, target)
        print(f"sweep {sweep_id}: queued {len(names)} trials of {pipeline}: {', '.join(names)}", file=sys.stderr)
        run_dvc(root, "queue", "start", "-j", str(jobs))
    states = wait_for(root, names, timeout)
    trials, cfg = collect(root, pipeline, sweep_id, names, points, states)
    ranked = rank(trials, cfg.greater_is_better)
    print(f"sweep {sweep_id} ({pipeline}, {'higher' if cfg.greater_is_better else 'lower'} "
          f"{cfg.primary_metric} is better; MLflow runs tagged {SWEEP_TAG}={sweep_id})", file=out)
    print(table(ranked, cfg.primary_metric), file=out)
    failed = [t.name for t in ranked if t.state != "Success"]
    if len(failed) == len(ranked):
        raise D2lflowError(f"sweep {sweep_id}: every trial failed ({', '.join(failed)}); see `dvc queue logs NAME`")
    print(verdict(ranked, cfg), file=out)
    if failed:
        print(f"failed: {', '.join(failed)} (see `dvc queue logs NAME`)", file=out)
    return 0


# ----------------------------------------------------------------------------- exp show

def pipeline_columns(root: Path, pipeline: str) -> list[str]:
    """The `dvc exp show` column names of `pipeline` in this repository (see `columns_of`)."""
    if not (root / "dvc.yaml").is_file():
        raise D2lflowError(f"{root / 'dvc.yaml'} not found: run from the repository root or pass --root")
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    shown = json.loads(run_dvc(root, "exp", "show", "--json", "-f", lock=False) or "[]")
    return columns_of(spec, shown, pipeline)


def columns_of(spec: dict, shown: list[dict], pipeline: str) -> list[str]:
    """`pipeline`'s params (`PIPELINE.*`) and the metrics of the metric files its stages declare in
    dvc.yaml (`spec`), out of `dvc exp show --json` (`shown`), named as DVC names its columns: a
    metric by its key, or `path:key` when the key is in several metric files."""
    files = {str(entry if isinstance(entry, str) else next(iter(entry)))
             for name, stage in (spec.get("stages") or {}).items() if name.startswith(f"{pipeline}_")
             for entry in (stage.get("metrics") or [])}
    metric_names: dict[str, set[str]] = {}
    param_names: set[str] = set()

    def visit(entry: dict) -> None:
        data = entry.get("data") or {}
        for path, found in (data.get("metrics") or {}).items():
            if isinstance(found.get("data"), dict):
                metric_names.setdefault(path, set()).update(_flat_keys(found["data"]))
        for found in (data.get("params") or {}).values():
            if isinstance(found.get("data"), dict):
                param_names.update(_flat_keys(found["data"]))
        for group in entry.get("experiments") or []:
            for rev in group.get("revs") or []:
                visit(rev)

    for entry in shown:
        visit(entry)
    count: dict[str, int] = {}
    for names in metric_names.values():
        for name in names:
            count[name] = count.get(name, 0) + 1
    metrics = [name if count[name] == 1 else f"{path}:{name}"
               for path in sorted(metric_names) if path in files for name in sorted(metric_names[path])]
    return metrics + sorted(name for name in param_names if name.startswith(f"{pipeline}."))


def _flat_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        keys += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def exp_show(root: Path, pipeline: str, extra: list[str]) -> str:
    """`dvc exp show` with only `pipeline`'s params and metrics (and the experiment columns); `extra`:
    more `dvc exp show` options."""
    columns = [*SHOW_COLUMNS, *pipeline_columns(root, pipeline)]
    if "--only-changed" in extra:  # DVC keeps every --keep column, changed or not: intersect with its own choice
        extra = [arg for arg in extra if arg != "--only-changed"]
        scope = [arg for arg in extra if arg in ("--all-commits", "--hide-queued", "--hide-failed")]
        shown = run_dvc(root, "exp", "show", "--no-pager", "--only-changed", "--csv", *scope, lock=False)
        changed = set(next(csv.reader(io.StringIO(shown)), []))
        columns = [column for column in columns if column in SHOW_COLUMNS or column in changed]
    keep = "^(" + "|".join(re.escape(column) for column in columns) + ")$"
    return run_dvc(root, "exp", "show", "--no-pager", "--drop", ".*", "--keep", keep, *extra, lock=False)


# ----------------------------------------------------------------------------- the CLI

def add_commands(sub: argparse._SubParsersAction, pipelines: tuple[str, ...] | list[str]) -> list:
    """The `sweep` and `exp` subcommands of `d2lflow` (flows/cli.py); returns their parsers."""
    grid = sub.add_parser("sweep", help="run a grid of -S values through DVC's experiment queue, rank the trials")
    grid.add_argument("pipeline", choices=pipelines)
    grid.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=V1,V2",
                      help="a key and its comma-separated values, e.g. -S word2vec.train.lr=0.001,0.002")
    grid.add_argument("--jobs", "-j", type=int, default=1, help="trials run at once (dvc queue start -j)")
    grid.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for every trial (default 4 h)")
    exp = sub.add_parser("exp", help="DVC experiments of one pipeline")
    exp_sub = exp.add_subparsers(dest="exp_command", required=True)
    show = exp_sub.add_parser("show", help="`dvc exp show` with only that pipeline's params and metrics")
    show.add_argument("pipeline", choices=pipelines)
    for flag, helptext in (("--md", "Markdown table"), ("--csv", "CSV"), ("--only-changed", "only columns that differ"),
                           ("--all-commits", "experiments of every commit (-A)"), ("--hide-queued", "no queued rows"),
                           ("--hide-failed", "no failed rows")):
        show.add_argument(flag, action="store_true", help=f"`dvc exp show {flag}`: {helptext}")
    show.add_argument("--sort-by", metavar="METRIC_OR_PARAM", help="`dvc exp show --sort-by`")
    show.add_argument("--sort-order", choices=("asc", "desc"), help="`dvc exp show --sort-order`")
    for command in (grid, show):
        command.add_argument("--root", default=".", help="repository root (default: current directory)")
    return [grid, show]


def run_command(args: argparse.Namespace, root: Path) -> int:
    if args.command == "sweep":
        return sweep(root, args.pipeline, args.overrides, args.jobs, args.timeout)
    extra = [f"--{name.replace('_', '-')}" for name in ("md", "csv", "only_changed", "all_commits", "hide_queued",
                                                         "hide_failed") if getattr(args, name)]
    for name in ("sort_by", "sort_order"):
        if getattr(args, name):
            extra += [f"--{name.replace('_', '-')}", getattr(args, name)]
    print(exp_show(root, args.pipeline, extra))
    return 0
