"""MLflow at the edges: one experiment per pipeline, one run per trained model, lineage tags,
registration with the champion/challenger rule.

The train stage opens the run (live per-epoch metrics) and records its id in a small JSON; the
evaluate and register stages reopen that run. The tracking URI comes from `MLFLOW_TRACKING_URI`
when set, else from params (`mlflow.tracking_uri`, an embedded SQLite file by default).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
import psutil
import torch
import yaml
from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks import lineage
from tasks.atomic import read_json, write_json
from tasks.errors import D2lflowError, ParamsError
from tasks.params import Params, RegisterParams, flatten, parse_params
from tasks.progress import describe_run
from tasks.runtime import cache_dir, library_versions

log = logging.getLogger(__name__)

# The packages a logged model's code needs (copied into the model, so it loads without this checkout).
CODE_PATHS = [str(Path(__file__).resolve().parents[1] / name) for name in ("tasks", "models")]

TAG = "d2lflow."
OUT_MD5 = f"{TAG}out_md5."  # + an output path: its md5 in dvc.lock when the run was tagged
CHAMPION, CHALLENGER = "champion", "challenger"
PROCESS = f"{TAG}process"  # host:pid:start time of the process that has the run open
COMPLETE = f"{TAG}registration_complete"  # on a version: decision, alias and tags all written
# MLflow 3's UI opens an experiment of this kind on its runs table (untagged: the GenAI overview and a type popup).
EXPERIMENT_KIND = "custom_model_development"
# Counts and sizes in a stage's metrics: logged as tags (config of the run, not curves to chart).
COUNT_KEYS = ("epochs", "resumed_from_epoch", "vocab_size", "detections", "*_images", "*_pairs", "*_total",
              "*_questions")


def store_root(params: Params) -> Path:
    """The repository relative MLflow store paths resolve against: the one the user ran from. DVC runs
    an experiment's stages (`dvc exp run --temp`, `--queue`) in a temporary copy it deletes afterwards,
    and names the user's repository in DVC_ROOT (with DVC_EXP_NAME / DVC_EXP_BASELINE_REV set)."""
    in_experiment = os.environ.get("DVC_EXP_NAME") or os.environ.get("DVC_EXP_BASELINE_REV")
    if in_experiment and os.environ.get("DVC_ROOT") and Path(os.environ["DVC_ROOT"]).is_dir():
        return Path(os.environ["DVC_ROOT"]).resolve()
    return params.root()



def _absolute_sqlite(uri: str, root: Path) -> str:
    """A relative store URI (`sqlite:///mlflow.db`, a plain path such as `mlruns`) pinned to `root`
    (SQLite's and MLflow's own resolution would use the working directory)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    # MLflow's scheme-less names for Databricks are URIs, not folders
    has_scheme = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) or uri in ("databricks", "databricks-uc", "uc")
    if uri and not has_scheme and not Path(uri).expanduser().is_absolute():
        return str((root / uri).resolve())
    return uri


def artifact_root(params: Params) -> Path:
    """`mlflow.artifact_root` (where a SQLite store's experiments keep their artifacts), resolved
    against the same repository as the store."""
    path = Path(params.mlflow.artifact_root).expanduser()
    return path if path.is_absolute() else store_root(params) / path


def tracking_uri(params: Params) -> str:
    """`MLFLOW_TRACKING_URI` when set, else `mlflow.tracking_uri`; a relative one resolves against
    `store_root`: the user's repository, also inside DVC's experiment executors."""
    return _absolute_sqlite(os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri, store_root(params))


def configure(params: Params) -> str:
    """Point MLflow at the configured tracking (and registry) store; returns the tracking URI."""
    root = store_root(params)
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or params.mlflow.registry_uri
    if registry:
        mlflow.set_registry_uri(_absolute_sqlite(registry, root))
    _create_sqlite_schema(uri)
    return uri


_SCHEMA_READY: set[str] = set()


def _create_sqlite_schema(uri: str) -> None:
    """Create a new SQLite store's schema under a file lock beside it, once per process: stages started
    together on a fresh store (`dvc queue start -j 2`) otherwise both create it, and one fails with
    'table ... already exists'."""
    if not uri.startswith("sqlite:///") or uri in _SCHEMA_READY:
        return
    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.d2lflow-schema.lock"):
        MlflowClient(uri).search_experiments(max_results=1)  # the store migrates its schema on first use
    _SCHEMA_READY.add(uri)


def check_tracking_server(params: Params, timeout: float = 10.0) -> str:
    """Before anything trains: an http(s) tracking URI must answer within `timeout` seconds (one
    request, no retries), else one error naming the URI, instead of MLflow's minutes of silent
    retries. Any HTTP answer below 500 counts (credentials are MLflow's to check); other stores
    (sqlite, file, databases) are not probed. Returns the URI."""
    import requests

    from_env = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    uri = os.environ.get("MLFLOW_TRACKING_URI") or _absolute_sqlite(params.mlflow.tracking_uri, params.root())
    if not uri.startswith(("http://", "https://")):
        return uri
    parts = urlsplit(uri)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never print a password
    where = "MLFLOW_TRACKING_URI" if from_env else f"mlflow.tracking_uri in {params.root() / 'params.yaml'}"
    try:
        answer = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                              timeout=(timeout, timeout), allow_redirects=False)
    except requests.Timeout:
        problem = f"no answer within {timeout:g} s"
    except requests.RequestException as error:
        problem = f"cannot connect: {type(error).__name__}"
    else:
        if answer.status_code < 500:
            return uri
        problem = f"it answers HTTP {answer.status_code}"
    raise D2lflowError(f"MLflow tracking server {shown} ({where}): {problem}; start the server "
                       "(README 'Tracking server (PostgreSQL)') or point the URI at one that runs, then run again")


def experiment_id(pipeline: str, params: Params) -> str:
    """The pipeline's experiment (created on first use, artifacts under `mlflow.artifact_root`)."""
    client = MlflowClient()
    found = client.get_experiment_by_name(pipeline)
    if found is not None:
        if "mlflow.experimentKind" not in found.tags:  # created before d2lflow set it: kind and description now
            client.set_experiment_tag(found.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
            if "mlflow.note.content" not in found.tags:
                client.set_experiment_tag(found.experiment_id, "mlflow.note.content",
                                          experiment_description(pipeline, params))
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = artifact_root(params).joinpath(pipeline).resolve().as_uri()
    tags = {"mlflow.experimentKind": EXPERIMENT_KIND, "mlflow.note.content": experiment_description(pipeline, params)}
    try:
        return client.create_experiment(pipeline, artifact_location=location, tags=tags)
    except MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(pipeline).experiment_id


def experiment_description(pipeline: str, params: Params) -> str:
    """The experiment's description (MLflow shows `mlflow.note.content` above the runs table)."""
    stages = [name for name in lineage.stage_names(params.root()) if name.startswith(f"{pipeline}_")]
    registers = register_sections(params, pipeline)
    models = "; ".join(f"{r.model_name}: alias champion on the {'highest' if r.greater_is_better else 'lowest'} "
                       f"{r.primary_metric}" for r in registers)
    return (f"d2lflow pipeline {pipeline}: one run per trained model, from the DVC stages "
            f"{', '.join(stages) or '(none found in dvc.yaml)'}. Params: {pipeline}.* in params.yaml (a run's name "
            f"carries its -S edits). Registered model{'s' if len(registers) > 1 else ''} {models}.")


def register_sections(params: Params, pipeline: str) -> list[RegisterParams]:
    """The pipeline's register params: its `register` section, or each one it holds (generative: vae, dcgan)."""
    register = getattr(params, pipeline).register
    if isinstance(register, RegisterParams):
        return [register]
    return [getattr(register, name) for name in type(register).model_fields]


def _is_count(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in COUNT_KEYS)


def recorded_numbers(run) -> dict[str, float]:
    """A run's metrics plus the counts `log_metrics` kept as tags (what its stages' metrics files held)."""
    counts = {}
    for key, value in run.data.tags.items():
        if _is_count(key):
            try:
                counts[key] = float(value)
            except ValueError:
                continue
    return {**counts, **run.data.metrics}


def changed_params(params: Params, pipeline: str) -> dict[str, Any]:
    """The run's params (`pipeline_params`) that differ from the committed params.yaml: the `-S` edits.
    Empty outside git or when HEAD has no params file (nothing to compare with)."""
    name = params.source().relative_to(params.root()).as_posix() if params.source().is_relative_to(
        params.root()) else params.source().name
    text = lineage.head_file(params.root(), name)
    if text is None:
        return {}
    raw = yaml.safe_load(text) or {}
    try:
        committed = pipeline_params(parse_params(raw, params.source()), pipeline)
    except ParamsError:  # the committed file no longer validates: compare the raw values
        committed = pipeline_params_raw(raw, pipeline)
    return {key: value for key, value in pipeline_params(params, pipeline).items()
            if key not in committed or str(committed[key]) != str(value)}


def pipeline_params_raw(raw: dict[str, Any], pipeline: str) -> dict[str, Any]:
    world = {key: (raw.get("distributed") or {}).get(key) for key in ("nproc_per_node", "nnodes")}
    flat = flatten({"seed": raw.get("seed"), "device": raw.get("device"), "distributed": world,
                    pipeline: raw.get(pipeline) or {}})
    return {key: ("null" if value is None else value) for key, value in flat.items()}


def overrides_label(changes: dict[str, Any], limit: int = 40) -> str:
    """`lr=0.005,epochs=3` (last key parts) for a run name; past `limit` characters, the first ones and
    a digest of all (`lr=0.005+3-a1b2c3`)."""
    if not changes:
        return ""
    lasts = [key.rsplit(".", 1)[-1] for key in changes]
    parts = [f"{key if lasts.count(last) > 1 else last}={value}" for (key, value), last in zip(changes.items(), lasts)]
    label = ",".join(parts)
    if len(label) <= limit:
        return label
    digest = hashlib.sha256(repr(sorted(changes.items())).encode()).hexdigest()[:6]
    return f"{parts[0][:limit - 12]}+{len(parts) - 1}-{digest}"


def pipeline_git_state(params: Params, pipeline: str) -> dict[str, Any]:
    """`lineage.git_state` judged on the files the pipeline's stages depend on (dvc.yaml deps), plus
    params.yaml only when the pipeline's params differ from the commit's and dvc.yaml only when its
    stages do: another pipeline's edits leave this one clean."""
    root = params.root()
    paths = lineage.stage_deps(root, f"{pipeline}_")
    if changed_params(params, pipeline):
        paths.append(params.source().name)
    if lineage.stages_changed(root, f"{pipeline}_"):
        paths.append("dvc.yaml")
    return lineage.git_state(root, paths)


def lineage_tags(params: Params, pipeline: str, device: str | None = None, locked: bool = True) -> dict[str, str]:
    """Git commit and dirty flag, data.dvc hash, dvc.lock stage hashes and output md5s, seed,
    versions, and the device and torch's intra-op thread count when the caller knows them (the train
    stage; later stages keep the train stage's tags). `locked`: add the dvc.lock stage hashes and
    output md5s, which are current only once DVC has locked the run's stages (the register stage),
    never at training start; the output md5s let `flows.reproduce` check a rebuilt model against the run itself."""
    root = params.root()
    git = pipeline_git_state(params, pipeline)
    tags = {
        f"{TAG}pipeline": pipeline,
        f"{TAG}git_commit": git["commit"],
        f"{TAG}git_dirty": str(git["dirty"]).lower(),
        f"{TAG}data_dvc_md5": lineage.data_hash(root),
        f"{TAG}seed": str(params.seed),
        "mlflow.source.git.commit": git["commit"],
    }
    if device is not None:
        tags[f"{TAG}device"] = device
        # CPU kernels split their reductions by thread: the same seed gives the same bits only with the same count
        tags[f"{TAG}torch_threads"] = str(torch.get_num_threads())
    if git["dirty_files"]:
        tags[f"{TAG}git_dirty_files"] = ", ".join(git["dirty_files"])[:4000]
    if locked:
        for stage, digest in lineage.stage_hashes(root, f"{pipeline}_").items():
            tags[f"{TAG}dvc_lock.{stage}"] = digest
        for outs in lineage.locked_outs(lineage.lock_stages(root), f"{pipeline}_").values():
            for path, md5 in outs.items():
                tags[f"{OUT_MD5}{path}"] = md5
    for name, version in library_versions().items():
        tags[f"{TAG}version.{name}"] = version
    if os.environ.get("DVC_EXP_NAME"):
        # the experiment's commit exists only once DVC has run every stage: name and baseline find its ref
        tags[f"{TAG}dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            tags[f"{TAG}dvc_exp_baseline"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def run_name(pipeline: str, params: Params) -> str:
    short = lineage.git_state(params.root())["short"]
    name = f"{pipeline}-{short}"
    if os.environ.get("DVC_EXP_NAME"):
        return f"{name}-{os.environ['DVC_EXP_NAME']}"
    label = overrides_label(changed_params(params, pipeline))  # the -S edits: names of one commit's runs differ
    return f"{name}-{label}" if label else name


def pipeline_params(params: Params, pipeline: str) -> dict[str, Any]:
    """The params a run depends on, with full keys: shared ones plus the pipeline's section."""
    world = {key: getattr(params.distributed, key) for key in ("nproc_per_node", "nnodes")}  # the world size
    flat = flatten({"seed": params.seed, "device": params.device, "distributed": world,
                    pipeline: getattr(params, pipeline).model_dump()})
    return {key: ("null" if value is None else value) for key, value in flat.items()}


@contextmanager
def training_run(pipeline: str, params: Params, device: str, run_file: Path, dataset_dir: Path | None = None,
                 resume_run_id: str | None = None, world_size: int = 1) -> Iterator[mlflow.ActiveRun]:
    """Start the run of a training stage: params, lineage tags, the dataset as an input, and
    system metrics; its id goes to `run_file` for the later stages of the same pipeline.
    `resume_run_id` (from a checkpoint) continues the interrupted run when the store still has it; a run
    that had FINISHED is never reopened (its model is done): this training gets its own run, tagged with it.
    Under DDP only rank 0 calls this; `world_size` (processes that trained) becomes a tag."""
    configure(params)
    mark_dead_runs(experiment_id(pipeline, params))
    tags = {**lineage_tags(params, pipeline, device, locked=False), f"{TAG}world_size": str(world_size),
            PROCESS: process_tag()}
    if resume_run_id:
        try:
            finished = MlflowClient().get_run(resume_run_id).info.status == "FINISHED"
        except MlflowException:
            finished, resume_run_id = False, None
        if finished:  # that run trained to the end and belongs to another run (e.g. an earlier experiment)
            tags[f"{TAG}resumed_checkpoint_of_run"] = resume_run_id
            resume_run_id = None
    start = ({"run_id": resume_run_id} if resume_run_id else
             {"experiment_id": experiment_id(pipeline, params), "run_name": run_name(pipeline, params)})
    with mlflow.start_run(**start, tags=tags, log_system_metrics=params.mlflow.system_metrics) as run:
        if not resume_run_id:
            mlflow.log_params(pipeline_params(params, pipeline))
        if dataset_dir is not None:
            _log_dataset(params, dataset_dir)
        write_json(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})
        log.info("MLflow run: %s", describe_run(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id))
        yield run


def _log_dataset(params: Params, dataset_dir: Path) -> None:
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    digest = lineage.data_hash(params.root())
    source = LocalArtifactDatasetSource(str(dataset_dir.resolve()))
    mlflow.log_input(MetaDataset(source=source, name=dataset_dir.name, digest=digest[:36]), context="training")


@contextmanager
def reopened_run(pipeline: str, params: Params, run_file: Path) -> Iterator[mlflow.ActiveRun]:
    """Reopen the run the train stage started. If this tracking store does not have it (outputs
    pulled from a DVC remote, another store), the run an earlier stage started here for it (tag
    `d2lflow.trained_in_run`) is reopened, else a new one is started with that tag. Runs of the
    pipeline left RUNNING by a dead process are marked KILLED first."""
    configure(params)
    experiment = experiment_id(pipeline, params)
    mark_dead_runs(experiment)
    recorded = read_json(run_file)["run_id"] if run_file.is_file() else None
    client = MlflowClient()
    if recorded is not None:
        try:
            client.get_run(recorded)
        except MlflowException:
            stand_ins = client.search_runs([experiment], f"tags.`{TAG}trained_in_run` = '{recorded}'",
                                           order_by=["attributes.start_time DESC"], max_results=1)
            if stand_ins:
                with mlflow.start_run(run_id=stand_ins[0].info.run_id, tags={PROCESS: process_tag()}) as run:
                    yield run
                return
            log.warning("run %s is not in %s; starting a new run for this model", recorded,
                        public_uri(mlflow.get_tracking_uri()))
        else:
            with mlflow.start_run(run_id=recorded, tags={PROCESS: process_tag()}) as run:
                yield run
            return
    tags = {**lineage_tags(params, pipeline), PROCESS: process_tag()}
    if recorded:
        tags[f"{TAG}trained_in_run"] = recorded
    with mlflow.start_run(experiment_id=experiment, run_name=run_name(pipeline, params), tags=tags) as run:
        mlflow.log_params(pipeline_params(params, pipeline))
        yield run


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the numeric, finite entries of a (flat) metrics dict; counts (`COUNT_KEYS`: epochs,
    vocab_size, *_total, ...) become tags of the run, not metric charts."""
    counts = {k: str(v) for k, v in metrics.items() if _is_count(k) and isinstance(v, (int, float))}
    if counts:
        mlflow.set_tags(counts)
    numeric = {k: float(v) for k, v in metrics.items() if k not in counts
               and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_skipped_samples(stats_file: Path) -> None:
    """The preprocess stage's `on_bad_sample: skip` count per split (`skipped_bad_<split>`) and the
    skipped files (`preprocess/bad_samples.json`) in the active run, so a skip is never silent."""
    stats = read_json(stats_file)
    splits = {split: values for split, values in stats.items() if isinstance(values, dict) and "skipped_bad" in values}
    log_metrics({f"skipped_bad_{split}": values["skipped_bad"] for split, values in splits.items()})
    if any(values["skipped_bad"] for values in splits.values()):
        mlflow.log_dict({split: values.get("bad_samples", []) for split, values in splits.items()},
                        "preprocess/bad_samples.json")


def primary_value(metrics: dict[str, Any], cfg: RegisterParams) -> float:
    """The metric that decides the champion; missing or not finite is an error before anything is logged."""
    value = metrics.get(cfg.primary_metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise D2lflowError(
            f"register.primary_metric '{cfg.primary_metric}' is {value!r} in the metrics; "
            f"choose one of {sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))} in params.yaml"
        )
    return float(value)


# ----------------------------------------------------------------------------- dead runs

def process_tag() -> str:
    """`host:pid:start time` of this process: lets a later stage tell a live run from one whose process died."""
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{me.create_time():.2f}"


def _process_alive(owner: str) -> bool:
    """Whether the process a run's `d2lflow.process` tag names still runs. Another host's process
    cannot be checked from here and counts as alive (its run is left alone)."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def mark_dead_runs(experiment: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `experiment` whose process (on this host) has died, e.g. a
    stage killed by SIGKILL or a lost machine; returns their ids. Runs without the tag are left alone."""
    client = MlflowClient()
    dead = []
    for run in client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=1000):
        owner = run.data.tags.get(PROCESS)
        if owner and not _process_alive(owner):
            client.set_tag(run.info.run_id, f"{TAG}killed", f"process {owner} died while the run was open")
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s was left RUNNING by process %s, which died; marked KILLED", run.info.run_id, owner)
            dead.append(run.info.run_id)
    return dead


# ----------------------------------------------------------------------------- registration

def test_hook(point: str) -> None:
    """Deterministic crash and pause points for the registration tests (tests/test_registration.py),
    inert unless their variable is set: `D2LFLOW_TEST_KILL_AT=point` makes this process SIGKILL itself
    at `point`; `D2LFLOW_TEST_PAUSE_AT=point:PATH` creates `PATH.reached` and waits until PATH exists."""
    if os.environ.get("D2LFLOW_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, path = os.environ.get("D2LFLOW_TEST_PAUSE_AT", "").partition(":")
    if at == point and path:
        Path(f"{path}.reached").touch()
        while not Path(path).exists():
            time.sleep(0.05)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def public_uri(uri: str) -> str:
    """A store URI without its password, fit for files and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


@contextmanager
def registry_lock(registry_uri: str, timeout: float) -> Iterator[Path]:
    """An OS file lock keyed by the registry URI, in the user's cache dir: the find-or-create of a
    version and the champion/challenger decision of every d2lflow process on this machine that
    registers into that registry run one at a time. It cannot order processes on other machines."""

    key = hashlib.sha256(registry_uri.encode()).hexdigest()[:16]
    path = cache_dir() / "locks" / f"registry-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for the registry lock %s (another registration into %s)", path, public_uri(registry_uri))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise D2lflowError(f"{path}: another d2lflow process has been registering into "
                               f"{public_uri(registry_uri)} for over {timeout:.0f} s (dvc.lock_timeout_seconds); "
                               "wait for it to finish and run again") from None
    try:
        yield path
    finally:
        lock.release()


def _champion_value(client: MlflowClient, name: str, metric: str) -> tuple[str | None, float | None]:
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    recorded = version.tags.get(f"{TAG}primary_metric_value")
    if version.tags.get(f"{TAG}primary_metric") == metric and recorded is not None:
        return version.version, float(recorded)
    run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return version.version, run_metrics.get(metric)


def find_registration(client: MlflowClient, name: str, identity: dict[str, str]):
    """The version of `name` whose tags carry `identity` (the weights' sha256 and the training run's
    id), or None: what makes a repeated or resumed registration find its own version again."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        return None
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        found += [v for v in page if all(v.tags.get(k) == value for k, value in identity.items())]
        token = page.token
        if not token:
            break
    if not found:
        return None
    return client.get_model_version(name, min(found, key=lambda v: int(v.version)).version)  # with its aliases


def _logged_model(client: MlflowClient, run_id: str, identity: dict[str, str]):
    """A model a killed earlier attempt already logged to this run (READY, same identity), or None."""
    run = client.get_run(run_id)
    for model in client.search_logged_models(experiment_ids=[run.info.experiment_id], max_results=1000):
        if (model.source_run_id == run_id and str(model.status).endswith("READY")
                and all(model.tags.get(k) == value for k, value in identity.items())):
            return model
    return None


def decide_alias(client: MlflowClient, version, value: float, cfg: RegisterParams) -> dict[str, Any]:
    """Champion when `value` beats the current champion's primary metric (or there is none, or the
    champion is this version already); else challenger. Call it under the registry lock."""
    champion, champion_value = _champion_value(client, cfg.model_name, cfg.primary_metric)
    if champion is not None and int(champion) == int(version.version):
        champion, champion_value = None, None
    better = champion_value is None or (value > champion_value if cfg.greater_is_better else value < champion_value)
    return {"alias": CHAMPION if better else CHALLENGER,
            "previous_champion_version": None if champion is None else int(champion),
            "previous_champion_value": champion_value}


def registration_record(version, registry_uri: str) -> dict[str, Any]:
    """registered.json: the registration as its version's tags recorded it, so a repeated run writes
    the same bytes; `registry` says which store holds it."""
    tags = version.tags
    previous = tags.get(f"{TAG}previous_champion_version")
    previous_value = tags.get(f"{TAG}previous_champion_value")
    return {
        "name": version.name,
        "version": int(version.version),
        "run_id": version.run_id,
        "alias": tags.get(f"{TAG}decision"),
        "primary_metric": tags.get(f"{TAG}primary_metric"),
        "primary_metric_value": float(tags[f"{TAG}primary_metric_value"]),
        "previous_champion_version": int(previous) if previous else None,
        "previous_champion_value": float(previous_value) if previous_value else None,
        "weights_sha256": tags.get(f"{TAG}sha256.weights"),
        "registry": public_uri(registry_uri),
    }


def _unchanged_message(client: MlflowClient, version) -> str:
    aliases = sorted(version.aliases or [], key=lambda a: a != CHAMPION)
    if aliases:
        return f"unchanged: {version.name} version {version.version} is still {' and '.join(aliases)}"
    champion, _ = _champion_value(client, version.name, "")
    now = f"champion is version {champion}" if champion else "no champion"
    return f"unchanged: {version.name} version {version.version} is registered already (no alias now; {now})"


def register_version(model_uri: str, run_id: str, metrics: dict[str, Any], cfg: RegisterParams,
                     identity: dict[str, str] | None = None, files: dict[str, tuple[str, str]] | None = None):
    """Create a version of `cfg.model_name` for `model_uri` with its identity (weights sha256 and
    training run) and the loader's file names and hashes as tags (one call: the store writes the
    version and its tags together). Returns the version; the alias is set by `complete_registration`."""
    value = primary_value(metrics, cfg)
    tags = {f"{TAG}primary_metric": cfg.primary_metric, f"{TAG}primary_metric_value": repr(value),
            f"{TAG}run_id": run_id, **(identity or {})}
    for key, (name, digest) in (files or {}).items():
        tags[f"{TAG}file.{key}"] = name
        tags[f"{TAG}sha256.{key}"] = digest
    return mlflow.register_model(model_uri, cfg.model_name, tags=tags)


def complete_registration(client: MlflowClient, version, value: float, cfg: RegisterParams):
    """Decide the alias, record the decision on the version, set the alias, then mark the version
    complete (the last step: a version without the mark is resumed by the next run)."""
    decision = decide_alias(client, version, value, cfg)
    for key in ("previous_champion_version", "previous_champion_value"):
        client.set_model_version_tag(cfg.model_name, version.version, f"{TAG}{key}",
                                     "" if decision[key] is None else repr(decision[key]))
    client.set_model_version_tag(cfg.model_name, version.version, f"{TAG}decision", decision["alias"])
    test_hook("before_alias")
    client.set_registered_model_alias(cfg.model_name, decision["alias"], version.version)
    client.set_model_version_tag(cfg.model_name, version.version, COMPLETE, "true")
    log.info("registered %s version %s (%s %s=%.6g, champion was %s)", cfg.model_name, version.version,
             decision["alias"], cfg.primary_metric, value, decision["previous_champion_value"])
    return client.get_model_version(cfg.model_name, version.version)


def log_and_register(pipeline: str, params: Params, cfg: RegisterParams, run_file: Path, metrics: dict[str, Any],
                     python_model: mlflow.pyfunc.PythonModel, artifacts: dict[str, str], signature,
                     input_example: Any) -> dict[str, Any]:
    """The register stage of every pipeline, idempotent and resumable. The primary metric is checked
    first (nothing is logged for a bad one). Then, under the registry lock: a version of the same
    weights and training run that is complete means "unchanged" (nothing is logged or registered);
    otherwise, in the pipeline's run, the model is logged (or a READY one a killed attempt logged is
    reused), the version is created (or the one a killed attempt created is found again), the alias is
    decided and set, and the version is marked complete. Writes registered.json (the registration, from
    the version's tags) and outcome.json (what this run did); returns both merged."""
    value = primary_value(metrics, cfg)
    configure(params)
    registry = mlflow.get_registry_uri()
    client = MlflowClient()
    files = {key: (Path(path).name, sha256_file(Path(path))) for key, path in artifacts.items()}
    recorded = read_json(run_file)["run_id"] if run_file.is_file() else ""
    identity = {f"{TAG}sha256.weights": files["weights"][1], f"{TAG}trained_in_run": recorded,
                f"{TAG}pipeline": pipeline}
    mark_dead_runs(experiment_id(pipeline, params))
    with registry_lock(registry, params.dvc.lock_timeout_seconds):
        version = find_registration(client, cfg.model_name, identity)
        if version is not None and version.tags.get(COMPLETE) == "true":
            status, message = "unchanged", _unchanged_message(client, version)
        else:
            status = "registered" if version is None else "resumed"
            with reopened_run(pipeline, params, run_file) as run:
                mlflow.set_tags(lineage_tags(params, pipeline))
                if cfg.primary_metric not in client.get_run(run.info.run_id).data.metrics:
                    log_metrics(metrics)  # a run this store did not have: evaluate's metrics come with the model
                if version is None:
                    version = _log_and_create(run.info.run_id, params, cfg, metrics, python_model, artifacts,
                                              signature, input_example, identity, files)
                version = complete_registration(client, version, value, cfg)
            message = (f"{'registered' if status == 'registered' else 'completed the registration of'} "
                       f"{version.name} version {version.version} as {version.tags[f'{TAG}decision']}")
    log.info("%s in %s", message, public_uri(registry))
    record = registration_record(version, registry)
    out = params.path(cfg.out_dir)
    write_json(out / "registered.json", record)
    outcome = {"status": status, "message": message, "version": record["version"],
               "aliases": sorted(version.aliases or []), "registry": record["registry"]}
    write_json(out / "outcome.json", outcome)
    return {**record, "outcome": status, "message": message}


def _log_and_create(run_id: str, params: Params, cfg: RegisterParams, metrics: dict[str, Any],
                    python_model: mlflow.pyfunc.PythonModel, artifacts: dict[str, str], signature,
                    input_example: Any, identity: dict[str, str], files: dict[str, tuple[str, str]]):
    """Log the model as a pyfunc (for `mlflow models serve`: it carries its own code) unless this
    run has it already, then create its version."""
    client = MlflowClient()
    logged = _logged_model(client, run_id, identity)
    if logged is None:
        mlflow.log_artifact(str(params.root() / "params.yaml"), "lineage")
        versions = library_versions()
        logged = mlflow.pyfunc.log_model(
            name=cfg.model_name, python_model=python_model, artifacts=artifacts, code_paths=CODE_PATHS,
            signature=signature, input_example=input_example, tags=identity,
            pip_requirements=[f"{name}=={versions[name]}" for name in ("mlflow", "torch", "torchvision", "numpy",
                                                                      "pandas") if name in versions],
        )
    test_hook("after_model_logged")
    version = register_version(logged.model_uri, run_id, metrics, cfg, identity, files)
    test_hook("after_version_created")
    return version
