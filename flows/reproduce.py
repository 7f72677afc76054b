"""Rebuild a registered model from its commit and check it against what was recorded.

  python -m flows.reproduce word2vec@champion          # a registered model by alias (or pipeline@alias)
  python -m flows.reproduce fcn-voc@3                  # ... by version
  python -m flows.reproduce 0123abcd...                # an MLflow run id
  python -m flows.reproduce --rev v1.0 --pipeline word2vec   # what a commit pins, against its dvc.lock

The run's lineage tags name its commit and data hash. That commit is checked out into a temporary
git worktree, the data version is restored (your DVC cache, the DVC remote, else re-acquired with
that commit's code and verified against the hash), and `dvc repro` rebuilds the pipeline up to
evaluation there, logging to a throwaway MLflow store (your registry is never touched). A table
compares recorded and reproduced metrics (tolerances from params `reproduce`) and output md5s.
Exit 0: everything matches; 1: something differs; 2: cannot reproduce (the error says why).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from flows.pipeline import dvc_stages
from tasks import lineage, tracking
from tasks.cli import PIPELINES, quiet_environment, setup_logging
from tasks.dvc_repo import remotes, run_dvc, stage_environment
from tasks.errors import D2lflowError
from tasks.params import Params, ReproduceParams, ToleranceParams, flatten, load_params

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[0-9a-f]{32}")
# `d2lflow acquire` of the worktree's own code (flows.cli has no `__main__` block in older commits).
ACQUIRE = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
TAG = tracking.TAG


# ----------------------------------------------------------------------------- resolving a run

@dataclass(frozen=True)
class Spec:
    """A parsed SPEC: a registered model (`name`) by alias or version, or an MLflow run id."""

    kind: str  # "alias" | "version" | "run"
    name: str  # model (or pipeline) name; the run id for kind "run"
    ref: str = ""  # alias or version number


def parse_spec(text: str) -> Spec:
    """`MODEL@ALIAS`, `MODEL@VERSION` (digits) or a 32-hex MLflow run id."""
    name, at, ref = text.partition("@")
    if at:
        if not name or not ref:
            raise D2lflowError(f"{text!r}: expected MODEL@ALIAS or MODEL@VERSION, e.g. word2vec@champion")
        return Spec("version" if ref.isdigit() else "alias", name, ref)
    if RUN_ID.fullmatch(text):
        return Spec("run", text)
    raise D2lflowError(f"{text!r} is neither MODEL@ALIAS, MODEL@VERSION (e.g. word2vec@champion, fcn-voc@3) "
                       "nor an MLflow run id (32 hex characters)")


def model_name(name: str, params: Params) -> str:
    """A pipeline name stands for its registered model (`segmentation` → `fcn-voc`)."""
    if name not in PIPELINES:
        return name
    names = [register.model_name for register in tracking.register_sections(params, name)]
    if len(names) > 1:
        raise D2lflowError(f"pipeline {name} registers {len(names)} models ({', '.join(names)}); name one, e.g. "
                           f"{names[0]}@champion")
    return names[0]


def resolve_run(text: str, params: Params) -> Run:
    """The MLflow run behind SPEC, from the tracking store params (or MLFLOW_TRACKING_URI) point at."""
    spec = parse_spec(text)
    uri = tracking.configure(params)
    client = MlflowClient()
    try:
        if spec.kind == "run":
            return client.get_run(spec.name)
        name = model_name(spec.name, params)
        version = (client.get_model_version_by_alias(name, spec.ref) if spec.kind == "alias"
                   else client.get_model_version(name, spec.ref))
    except MlflowException as error:
        what = f"run {spec.name}" if spec.kind == "run" else f"model {model_name(spec.name, params)!r} {spec.kind} " \
                                                             f"{spec.ref!r}"
        raise D2lflowError(f"{what} not found in {uri} ({error.message.splitlines()[0]}); list the models with "
                           "`mlflow ui` or check MLFLOW_TRACKING_URI / params mlflow.tracking_uri") from None
    if not version.run_id:
        raise D2lflowError(f"model {version.name} version {version.version} has no MLflow run to reproduce")
    return client.get_run(version.run_id)


# ----------------------------------------------------------------------------- what to reproduce

@dataclass
class Target:
    """What a reproduction rebuilds and what it is compared against."""

    label: str
    pipeline: str
    commit: str
    data_md5: str
    recorded_metrics: dict[str, float] = field(default_factory=dict)
    recorded_params: dict[str, str] | None = None
    recorded_outs: dict[str, str] = field(default_factory=dict)  # out path -> md5
    outs_source: str = ""
    device: str = ""
    threads: str = ""  # torch's intra-op threads in training: CPU results depend on the count


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def commit_exists(root: Path, commit: str) -> bool:
    return _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def experiment_commit(root: Path, run_id: str, tags: dict[str, str]) -> str | None:
    """The commit of the DVC experiment a run was trained in (`dvc exp run`, `--temp`, `--queue`):
    its ref refs/exps/BA/SELINE.../NAME, from the experiment's name and baseline the run recorded.
    None for a run outside an experiment."""
    name, baseline = tags.get(f"{TAG}dvc_exp_name"), tags.get(f"{TAG}dvc_exp_baseline")
    if not name or not baseline:
        return None
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if found.returncode != 0:
        raise D2lflowError(f"run {run_id} was trained in DVC experiment {name!r} on {baseline[:8]}, but {root} has no "
                           f"experiment ref {ref}; `dvc exp pull REMOTE {name}` it, or run from the repository that "
                           "ran the experiment (`dvc exp list` shows what it has)")
    return found.stdout.strip()


def target_from_run(run: Run, root: Path, label: str) -> Target:
    """Check the run's lineage tags (a clean, known commit in this repository, a data hash) and
    collect its metrics, params and output md5s. Refuses with what to do instead."""
    tags = run.data.tags
    run_id = run.info.run_id
    pipeline = tags.get(f"{TAG}pipeline")
    commit = tags.get(f"{TAG}git_commit", lineage.UNKNOWN)
    data_md5 = tags.get(f"{TAG}data_dvc_md5", lineage.UNKNOWN)
    if not pipeline:
        raise D2lflowError(f"run {run_id} has no tag {TAG}pipeline: it was not logged by a d2lflow stage")
    if commit == lineage.UNKNOWN:
        raise D2lflowError(f"run {run_id} was trained outside a git checkout (commit 'unknown'); it cannot be "
                           "rebuilt from a commit. Train from a git clone, or use --rev GITREV --pipeline P")
    experiment = experiment_commit(root, run_id, tags)
    if experiment:  # DVC committed the experiment's whole workspace (its params included) after its stages ran
        commit = experiment
    elif tags.get(f"{TAG}git_dirty", "true") != "false":
        files = tags.get(f"{TAG}git_dirty_files", "unknown files")
        raise D2lflowError(f"run {run_id} was trained from uncommitted changes on top of {commit[:8]} ({files}); "
                           "that code is not in any commit. Commit the changes and train again, or reproduce "
                           "what a commit pins with --rev GITREV --pipeline P")
    if not commit_exists(root, commit):
        raise D2lflowError(f"run {run_id}: commit {commit} is not in the git repository at {root}; "
                           "`git fetch` the branch that has it, or run from the clone that trained the model")
    if data_md5 == lineage.UNKNOWN:
        raise D2lflowError(f"run {run_id} records no data hash (no data.dvc when it ran); its data cannot be restored")
    recorded_outs = {key[len(tracking.OUT_MD5):]: value for key, value in tags.items()
                     if key.startswith(tracking.OUT_MD5)}
    return Target(label=f"{label} (run {run_id}, commit {commit[:8]})", pipeline=pipeline, commit=commit,
                  data_md5=data_md5, recorded_metrics=tracking.recorded_numbers(run),
                  recorded_params=dict(run.data.params),
                  recorded_outs=recorded_outs, outs_source="run tags" if recorded_outs else "",
                  device=tags.get(f"{TAG}device", ""), threads=tags.get(f"{TAG}torch_threads", ""))


def target_from_rev(root: Path, rev: str, pipeline: str) -> Target:
    """What commit `rev` pins for `pipeline`: its data.dvc hash and its dvc.lock output md5s."""
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode != 0:
        raise D2lflowError(f"--rev {rev!r} is not a commit of the git repository at {root}")
    commit = found.stdout.strip()
    data = _git(root, "show", f"{commit}:data.dvc")
    if data.returncode != 0:
        raise D2lflowError(f"commit {commit[:8]} has no data.dvc: its data version is unknown")
    outs = (yaml.safe_load(data.stdout) or {}).get("outs") or [{}]
    lock = _git(root, "show", f"{commit}:dvc.lock")
    stages = lineage.parse_lock(lock.stdout) if lock.returncode == 0 else {}
    recorded = {path: md5 for entry in lineage.locked_outs(stages, f"{pipeline}_").values()
                for path, md5 in entry.items()}
    return Target(label=f"{pipeline} at {rev} (commit {commit[:8]})", pipeline=pipeline, commit=commit,
                  data_md5=str(outs[0].get("md5", lineage.UNKNOWN)), recorded_outs=recorded,
                  outs_source=f"dvc.lock at {commit[:8]}" if recorded else "")


# ----------------------------------------------------------------------------- the worktree

@contextmanager
def temporary_worktree(root: Path, commit: str, keep: bool = False) -> Iterator[Path]:
    """`git worktree add --detach` of `commit` in a temporary folder, removed afterwards (also on
    failure) unless `keep`."""
    parent = Path(tempfile.mkdtemp(prefix="d2lflow-reproduce-"))
    path = parent / "worktree"
    added = _git(root, "worktree", "add", "--detach", str(path), commit)
    if added.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        raise D2lflowError(f"`git worktree add {path} {commit[:8]}` failed in {root}: {added.stderr.strip()}")
    try:
        yield path
    finally:
        if keep:
            log.info("kept the worktree at %s (remove it with `git worktree remove --force %s`)", path, path)
        else:
            _git(root, "worktree", "remove", "--force", str(path))
            shutil.rmtree(parent, ignore_errors=True)
            _git(root, "worktree", "prune")


def worktree_variables(worktree: Path) -> dict[str, str]:
    """Stage commands in the worktree import its code and log to a throwaway MLflow store inside it."""
    store = f"sqlite:///{worktree / 'mlflow.db'}"
    return {"MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store, "PYTHONPATH": str(worktree)}


def worktree_dvc(worktree: Path, *args: str) -> str:
    """A DVC command in the worktree. No repository lock: the worktree is this process's alone."""
    return run_dvc(worktree, *args, lock=False, env=worktree_variables(worktree))


def succeeds(worktree: Path, *args: str) -> bool:
    try:
        worktree_dvc(worktree, *args)
    except D2lflowError:
        return False
    return True


def pin_data(worktree: Path, md5: str) -> None:
    """Point the worktree's data.dvc at the recorded data version (the commit's data.dvc may be older:
    it does not make a run dirty)."""
    if lineage.data_hash(worktree) != md5:
        (worktree / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": "data"}]}))


def user_cache(root: Path) -> Path:
    """The DVC cache directory of the user's repository."""
    try:
        return Path(run_dvc(root, "cache", "dir", lock=False).splitlines()[-1].strip())
    except (D2lflowError, IndexError):
        return root / ".dvc" / "cache"


def data_in_sync(worktree: Path) -> bool:
    """data/ exists and hashes to what data.dvc pins (`dvc checkout` exits 0 even when the cache
    lacks the version: it only warns)."""
    if not (worktree / "data").is_dir():
        return False
    try:
        return json.loads(worktree_dvc(worktree, "status", "--json", "data.dvc") or "{}") == {}
    except (D2lflowError, ValueError):
        return False


def restore_data(worktree: Path, root: Path, md5: str) -> str:
    """Install the data version `md5` in the worktree: from the user's DVC cache, the commit's DVC
    remote, else re-acquired with the commit's own code and verified. Returns how; refuses when none
    gives exactly `md5`."""
    pin_data(worktree, md5)
    tried = []
    cache = user_cache(root)
    worktree_dvc(worktree, "cache", "dir", "--local", str(cache))
    if succeeds(worktree, "checkout", "data.dvc") and data_in_sync(worktree):
        return f"DVC cache {cache}"
    tried.append(f"the DVC cache {cache} does not have it")
    if remotes(worktree):
        try:
            worktree_dvc(worktree, "pull", "data.dvc")
        except D2lflowError as error:
            tried.append(f"`dvc pull` failed ({str(error).splitlines()[-1]})")
        else:
            if data_in_sync(worktree):
                return "DVC remote"
            tried.append("`dvc pull` did not restore it")
    else:
        tried.append("no DVC remote is configured")
    shutil.rmtree(worktree / "data", ignore_errors=True)  # nothing half-restored mixes into the acquired data
    done = subprocess.run([sys.executable, "-c", ACQUIRE, "acquire"], cwd=worktree,
                          env=stage_environment(worktree_variables(worktree)), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise D2lflowError(f"cannot restore data {md5}: {'; '.join(tried)}; re-acquiring with the commit's code "
                           f"failed:\n{tail}")
    acquired = lineage.data_hash(worktree) if data_in_sync(worktree) else "no data/ matching its data.dvc"
    if acquired != md5:
        raise D2lflowError(f"cannot restore data {md5}: {'; '.join(tried)}; re-acquiring from the sources in the "
                           f"commit's params.yaml gave data {acquired}, not the recorded {md5}. Restore the data "
                           "version into your DVC cache (or configure the remote that has it) and run again")
    return "re-acquired from the commit's sources (hash verified)"


# ----------------------------------------------------------------------------- comparing

@dataclass(frozen=True)
class Row:
    name: str
    recorded: Any
    reproduced: Any
    status: str  # OK | FAIL | speed | not recorded | not compared
    diff: float | None = None
    tolerance: float | None = None

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def tolerance_for(cfg: ReproduceParams, *devices: str) -> ToleranceParams:
    """CUDA's looser tolerance when either run trained on a GPU, else the CPU's."""
    return cfg.cuda if any(d.startswith("cuda") for d in devices) else cfg.cpu


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_metrics(recorded: dict[str, float], reproduced: dict[str, Any], tol: ToleranceParams,
                    speed: list[str]) -> list[Row]:
    """Each reproduced numeric metric against the recorded one: OK within atol + rtol*|recorded|;
    speed metrics (fnmatch `speed`) are listed but never compared."""
    rows = []
    for name in sorted(reproduced):
        value = reproduced[name]
        if not is_number(value):
            continue
        old = recorded.get(name)
        if any(fnmatch.fnmatch(name, pattern) for pattern in speed):
            rows.append(Row(name, old, value, "speed"))
        elif old is None:
            rows.append(Row(name, None, value, "not recorded"))
        else:
            diff = abs(float(value) - float(old))
            allowed = tol.atol + tol.rtol * abs(float(old))
            same = diff <= allowed or (math.isnan(float(value)) and math.isnan(float(old)))
            rows.append(Row(name, old, value, "OK" if same else "FAIL", diff, allowed))
    return rows


def compare_outputs(recorded: dict[str, str], reproduced: dict[str, str], volatile: list[str],
                    reported: set[str]) -> list[Row]:
    """Reproduced output md5s against the recorded ones. Metrics/plots files (`reported`: their
    numbers are in the metrics table, timings make their bytes differ) and `volatile` outputs are
    listed but not compared."""
    rows = []
    for path in sorted(reproduced):
        old = recorded.get(path)
        if path in reported or any(fnmatch.fnmatch(path, pattern) for pattern in volatile):
            rows.append(Row(path, old, reproduced[path], "not compared"))
        elif old is None:
            rows.append(Row(path, None, reproduced[path], "not recorded"))
        else:
            rows.append(Row(path, old, reproduced[path], "OK" if old == reproduced[path] else "FAIL"))
    return rows


def compare_params(recorded: dict[str, str], current: dict[str, Any]) -> list[Row]:
    """The worktree's params against the run's (as MLflow stores them: strings); only differences."""
    return [Row(key, recorded.get(key), str(value), "FAIL") for key, value in sorted(current.items())
            if recorded.get(key) != str(value)]


def cell(value: Any) -> str:
    """A table cell: '-' for a missing value, floats to 10 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def table(title: str, rows: list[Row], headers: tuple[str, str] = ("recorded", "reproduced"),
          numeric: bool = True) -> str:
    """A plain-text table: name, recorded, reproduced, (|diff|, tolerance when `numeric`), status."""
    lines = [[title, *headers, *(["|diff|", "tolerance"] if numeric else []), "status"]]
    for row in rows:
        numbers = ["-" if row.diff is None else f"{row.diff:.3g}",
                   "-" if row.tolerance is None else f"{row.tolerance:.3g}"] if numeric else []
        lines.append([row.name, cell(row.recorded), cell(row.reproduced), *numbers, row.status])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(entry.ljust(width) for entry, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


# ----------------------------------------------------------------------------- reproducing

def _dvc_yaml_files(worktree: Path, stages: list[str], kind: str) -> list[str]:
    """The `metrics` or `plots` paths of `stages` in the worktree's dvc.yaml."""
    spec = yaml.safe_load((worktree / "dvc.yaml").read_text()) or {}
    paths = []
    for stage in stages:
        for entry in spec["stages"][stage].get(kind, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def reproduced_metrics(worktree: Path, stages: list[str]) -> dict[str, Any]:
    """The metrics files DVC declares for `stages`, flattened to dotted keys as `dvc exp show` does."""
    metrics: dict[str, Any] = {}
    for path in _dvc_yaml_files(worktree, stages, "metrics"):
        file = worktree / path
        if file.is_file():
            metrics.update(flatten(json.loads(file.read_text())))
    return metrics


def _reproduced_device(worktree: Path, pipeline: str) -> str:
    """The device the reproduction trained on, from its run in the worktree's throwaway store."""
    try:
        raw = yaml.safe_load((worktree / "params.yaml").read_text()) or {}
        run_id = json.loads((worktree / raw[pipeline]["train"]["out_dir"] / "run.json").read_text())["run_id"]
        client = MlflowClient(tracking_uri=worktree_variables(worktree)["MLFLOW_TRACKING_URI"])
        return client.get_run(run_id).data.tags.get(f"{TAG}device", "")
    except (OSError, KeyError, TypeError, ValueError, MlflowException):
        return ""


def _worktree_params(worktree: Path, pipeline: str) -> dict[str, Any]:
    """The params a run of `pipeline` logs, read from the commit's params.yaml as MLflow stores them."""
    raw = yaml.safe_load((worktree / "params.yaml").read_text()) or {}
    flat = flatten({"seed": raw.get("seed", 0), "device": raw.get("device", "auto"), pipeline: raw.get(pipeline, {})})
    return {key: ("null" if value is None else value) for key, value in flat.items()}


@dataclass
class Report:
    text: str
    failed: bool


def reproduce(target: Target, root: Path, params: Params, keep_worktree: bool = False) -> Report:
    """Check out the target's commit, restore its data, `dvc repro` up to evaluation, compare."""
    cfg = params.reproduce
    # Train with the recorded number of threads: CPU kernels split their reductions by thread.
    threads = {"OMP_NUM_THREADS": target.threads} if target.threads.isdigit() else {}
    if threads:
        log.info("training with %s threads, as the recorded run did (OMP_NUM_THREADS)", target.threads)
    with temporary_worktree(root, target.commit, keep_worktree) as worktree, patch.dict(os.environ, threads):
        restored = restore_data(worktree, root, target.data_md5)
        log.info("data %s restored from %s", target.data_md5, restored)
        stages = [stage for stage in dvc_stages(worktree, target.pipeline) if not stage.endswith("_register")]
        log.info("reproducing %s in %s (dvc repro --force --no-run-cache %s)", target.label, worktree, stages[-1])
        worktree_dvc(worktree, "repro", "--force", "--no-run-cache", stages[-1])
        metrics = reproduced_metrics(worktree, stages)
        locked = lineage.locked_outs(lineage.lock_stages(worktree), f"{target.pipeline}_")
        outs = {path: md5 for stage in stages for path, md5 in locked.get(stage, {}).items()}
        reported = set(_dvc_yaml_files(worktree, stages, "metrics") + _dvc_yaml_files(worktree, stages, "plots"))
        device = _reproduced_device(worktree, target.pipeline)
        current_params = _worktree_params(worktree, target.pipeline)
    tol = tolerance_for(cfg, target.device, device)
    metric_rows = compare_metrics(target.recorded_metrics, metrics, tol, cfg.speed_metrics)
    out_rows = compare_outputs(target.recorded_outs, outs, cfg.volatile_outputs, reported)
    param_rows = compare_params(target.recorded_params, current_params) if target.recorded_params is not None else []
    checked = [row for row in metric_rows + out_rows if row.status in ("OK", "FAIL")]
    failed = any(row.failed for row in metric_rows + out_rows + param_rows) or not checked
    lines = [
        f"reproduced {target.label}",
        f"data {target.data_md5}: {restored}; device recorded {target.device or '-'}, reproduced {device or '-'}; "
        f"torch threads {target.threads + ' (as recorded)' if threads else 'not recorded: the machine default'}; "
        f"tolerance atol={tol.atol:g} rtol={tol.rtol:g}",
        "",
        table("metric", metric_rows),
        "",
        table(f"output md5 (recorded: {target.outs_source or 'none'})", out_rows, numeric=False),
    ]
    if param_rows:
        lines += ["", table("param that differs from the run", param_rows, ("run", "commit"), numeric=False)]
    if not checked:
        lines += ["", "nothing recorded to compare against: the run has no metrics or output md5s"]
    lines += ["", "RESULT: " + ("DIFFERENT" if failed else "REPRODUCED (every compared metric and output matches)")]
    return Report("\n".join(lines), failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", help="MODEL@ALIAS, MODEL@VERSION (model or pipeline name) or a run id")
    parser.add_argument("--rev", help="reproduce what this git revision pins (with --pipeline) instead of a run")
    parser.add_argument("--pipeline", choices=PIPELINES, help="the pipeline to reproduce at --rev")
    parser.add_argument("--root", default=".", help="repository root (default: current directory)")
    parser.add_argument("--keep-worktree", action="store_true", help="keep the temporary worktree for inspection")
    args = parser.parse_args(argv)
    if bool(args.spec) == bool(args.rev) or bool(args.rev) != bool(args.pipeline):
        parser.error("give either SPEC, or --rev GITREV with --pipeline PIPELINE")
    quiet_environment()
    setup_logging()
    root = Path(args.root).resolve()
    try:
        params = load_params(root / "params.yaml")
        if args.rev:
            target = target_from_rev(root, args.rev, args.pipeline)
        else:
            target = target_from_run(resolve_run(args.spec, params), root, args.spec)
        report = reproduce(target, root, params, args.keep_worktree)
    except D2lflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.text)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
