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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks import lineage
from tasks.atomic import read_json, write_json
from tasks.errors import D2lflowError, ParamsError
from tasks.params import Params, RegisterParams, flatten, parse_params
from tasks.runtime import library_versions

log = logging.getLogger(__name__)

# The packages a logged model's code needs (copied into the model, so it loads without this checkout).
CODE_PATHS = [str(Path(__file__).resolve().parents[1] / name) for name in ("tasks", "models")]

TAG = "d2lflow."
OUT_MD5 = f"{TAG}out_md5."  # + an output path: its md5 in dvc.lock when the run was tagged
CHAMPION, CHALLENGER = "champion", "challenger"
# MLflow 3's UI opens an experiment of this kind on its runs table (untagged: the GenAI overview and a type popup).
EXPERIMENT_KIND = "custom_model_development"
# Counts and sizes in a stage's metrics: logged as tags (config of the run, not curves to chart).
COUNT_KEYS = ("epochs", "resumed_from_epoch", "vocab_size", "detections", "*_images", "*_pairs", "*_total",
              "*_questions")


def _absolute_sqlite(uri: str, root: Path) -> str:
    """`sqlite:///mlflow.db` is relative to the working directory; pin it to the repository root."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def configure(params: Params) -> str:
    """Point MLflow at the configured tracking (and registry) store; returns the tracking URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or _absolute_sqlite(params.mlflow.tracking_uri, params.root())
    mlflow.set_tracking_uri(uri)
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or params.mlflow.registry_uri
    if registry:
        mlflow.set_registry_uri(_absolute_sqlite(registry, params.root()))
    return uri


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
        location = params.path(params.mlflow.artifact_root).joinpath(pipeline).resolve().as_uri()
    tags = {"mlflow.experimentKind": EXPERIMENT_KIND, "mlflow.note.content": experiment_description(pipeline, params)}
    try:
        return client.create_experiment(pipeline, artifact_location=location, tags=tags)
    except MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(pipeline).experiment_id


def experiment_description(pipeline: str, params: Params) -> str:
    """The experiment's description (MLflow shows `mlflow.note.content` above the runs table)."""
    stages = [name for name in lineage.stage_names(params.root()) if name.startswith(f"{pipeline}_")]
    register = getattr(params, pipeline).register
    best = "highest" if register.greater_is_better else "lowest"
    return (f"d2lflow pipeline {pipeline}: one run per trained model, from the DVC stages "
            f"{', '.join(stages) or '(none found in dvc.yaml)'}. Params: {pipeline}.* in params.yaml (a run's name "
            f"carries its -S edits). Registered model {register.model_name}: alias champion on the {best} "
            f"{register.primary_metric}.")


def ui_url(experiment_id: str, run_id: str | None = None, tracking_uri: str | None = None) -> str:
    """The MLflow UI's page of an experiment (its runs table) or of a run. MLflow 3.17's UI opens every
    experiment on its GenAI overview unless the link says `workflowType=machine_learning` (or the user
    picked "Model training" in its top-left switch once). A local store's UI is `mlflow ui` on port 5000."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"experiments/{experiment_id}/runs/{run_id}" if run_id else f"experiments/{experiment_id}"
    return f"{base}/#/{page}?workflowType=machine_learning"


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
        tags[f"{TAG}dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
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
    `resume_run_id` (from a checkpoint) continues the interrupted run when the store still has it.
    Under DDP only rank 0 calls this; `world_size` (processes that trained) becomes a tag."""
    configure(params)
    if resume_run_id:
        try:
            MlflowClient().get_run(resume_run_id)
        except MlflowException:
            resume_run_id = None
    start = ({"run_id": resume_run_id} if resume_run_id else
             {"experiment_id": experiment_id(pipeline, params), "run_name": run_name(pipeline, params)})
    tags = {**lineage_tags(params, pipeline, device, locked=False), f"{TAG}world_size": str(world_size)}
    with mlflow.start_run(**start, tags=tags, log_system_metrics=params.mlflow.system_metrics) as run:
        if not resume_run_id:
            mlflow.log_params(pipeline_params(params, pipeline))
        if dataset_dir is not None:
            _log_dataset(params, dataset_dir)
        write_json(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})
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
    pulled from a DVC remote, another store), a new run is started and says so in a tag."""
    configure(params)
    recorded = read_json(run_file)["run_id"] if run_file.is_file() else None
    if recorded is not None:
        try:
            MlflowClient().get_run(recorded)
        except MlflowException:
            log.warning("run %s is not in %s; starting a new run for this model", recorded, mlflow.get_tracking_uri())
        else:
            with mlflow.start_run(run_id=recorded) as run:
                yield run
            return
    tags = lineage_tags(params, pipeline)
    if recorded:
        tags[f"{TAG}trained_in_run"] = recorded
    with mlflow.start_run(experiment_id=experiment_id(pipeline, params), run_name=run_name(pipeline, params),
                          tags=tags) as run:
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


def primary_value(metrics: dict[str, Any], cfg: RegisterParams) -> float:
    """The metric that decides the champion; missing or not finite is an error before anything is logged."""
    value = metrics.get(cfg.primary_metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise D2lflowError(
            f"register.primary_metric '{cfg.primary_metric}' is {value!r} in the metrics; "
            f"choose one of {sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))} in params.yaml"
        )
    return float(value)


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


def register_version(model_uri: str, run_id: str, metrics: dict[str, Any], cfg: RegisterParams) -> dict[str, Any]:
    """Register `model_uri` as a new version of `cfg.model_name`. The alias `champion` moves to it
    only when its primary metric beats the champion's; otherwise it gets `challenger`."""
    value = primary_value(metrics, cfg)
    client = MlflowClient()
    version = mlflow.register_model(model_uri, cfg.model_name, tags={
        f"{TAG}primary_metric": cfg.primary_metric,
        f"{TAG}primary_metric_value": repr(value),
        f"{TAG}run_id": run_id,
    })
    champion, champion_value = _champion_value(client, cfg.model_name, cfg.primary_metric)
    better = champion_value is None or (value > champion_value if cfg.greater_is_better else value < champion_value)
    alias = CHAMPION if better else CHALLENGER
    client.set_registered_model_alias(cfg.model_name, alias, version.version)
    log.info("registered %s version %s (%s %s=%.6g, champion was %s)", cfg.model_name, version.version, alias,
             cfg.primary_metric, value, champion_value)
    return {
        "name": cfg.model_name,
        "version": int(version.version),
        "run_id": run_id,
        "alias": alias,
        "primary_metric": cfg.primary_metric,
        "primary_metric_value": value,
        "previous_champion_version": None if champion is None else int(champion),
        "previous_champion_value": champion_value,
    }


def log_and_register(pipeline: str, params: Params, cfg: RegisterParams, run_file: Path, metrics: dict[str, Any],
                     python_model: mlflow.pyfunc.PythonModel, artifacts: dict[str, str], signature,
                     input_example: Any) -> dict[str, Any]:
    """The register stage of every pipeline: check the primary metric first (nothing is logged for
    a bad one), then in the pipeline's run refresh the lineage tags, snapshot params.yaml, log the
    model as a pyfunc (state_dict + loader, no pickled torch objects) and register it."""
    primary_value(metrics, cfg)
    versions = library_versions()
    with reopened_run(pipeline, params, run_file) as run:
        mlflow.set_tags(lineage_tags(params, pipeline))
        mlflow.log_artifact(str(params.root() / "params.yaml"), "lineage")
        info = mlflow.pyfunc.log_model(
            name=cfg.model_name, python_model=python_model, artifacts=artifacts, code_paths=CODE_PATHS,
            signature=signature, input_example=input_example,
            pip_requirements=[f"{name}=={versions[name]}" for name in ("mlflow", "torch", "torchvision", "numpy",
                                                                      "pandas") if name in versions],
        )
        registered = register_version(info.model_uri, run.info.run_id, metrics, cfg)
    write_json(params.path(cfg.out_dir) / "registered.json", registered)
    return registered
