"""The pipeline kit: the shape every train and register stage shares, in one place.

A pipeline's `stages.py` declares a `TrainSpec` (its data folder, what its fingerprint covers, how it
builds its data and model, how it fits, which numbers it reports) and calls `train(spec, params)`; its
register stage calls `register(...)` with its pyfunc, signature and input example. The kit does the rest,
the same way for every pipeline:

- the tracking server is checked before anything runs; above one process the stage re-launches itself
  under torchrun (`distributed.launch`), and every rank trains inside `distributed.process_group`;
- the seed, the run fingerprint (params, seed, device type, world size, the preprocessed data's hash, the
  training code's hash) and the checkpoint at `<pipeline>.train.checkpoint_dir/last.pt`, loaded by rank 0
  and shared with every rank; a run resumes only from a checkpoint of the same fingerprint;
- the MLflow run with its lineage (`tracking.training_run`, resumed with the checkpoint's run id), per-epoch
  metrics and the live progress line, and `on_bad_sample: skip` counts;
- rank 0 alone writes `model.pt`, `history.csv`, `validation.csv` and `metrics.json` (atomically, into
  `<pipeline>.train.out_dir`) and logs the stage's DVC figures to the run;
- register reads `<pipeline>.evaluate.out_dir/metrics.json`, writes `serving.json` when the pipeline has a
  serving config, and calls `tracking.log_and_register` (idempotent, the champion rule of `register.*`).

Moving an old-style train stage onto the kit is mechanical: what it did between `process_group` and
`training_run` (datasets, model, distributed checks) becomes `prepare(job)`; its `tr.train(...)` call
becomes `fit(job)`, fed `job.state`, `job.checkpoint`, `job.fingerprint`, `job.run_id`, `job.on_epoch` and
`job.ctx`; its metrics dict becomes `summary(job, result)`; its `fingerprint(...)` arguments ahead of the
seed become `fingerprint_config` and the `code_hash(...)` ones `code`; its `on_epoch` mapping becomes
`epoch_metrics`, the keys it did not log again `logged_per_epoch`, its history.csv columns `history`.
Its register stage keeps only its signature, input example, pyfunc and serving config. Then
`tests/test_dvc_yaml.py` names the dvc.yaml deps to add (tasks/kit.py among them).

A spec may name its `stage` (several train stages with their own params sections: generative's train_vae
and train_dcgan), its `weights` (several files), an `outputs` hook (further files, e.g. style's result.png)
and `distributed=False` (a fit without DDP sharding: a world size above 1 is refused before launching).

`epoch_loop` is the train loop itself (resume, per-epoch validation that leaves training's random stream
alone, progress, a checkpoint after every epoch) for a pipeline that supplies one `train_epoch` function;
`d2lflow new NAME` scaffolds such a pipeline (tasks/scaffold.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from torch import nn

from tasks import distributed, plots, tracking
from tasks.atomic import read_json, write_json, write_text
from tasks.errors import D2lflowError, DataError
from tasks.params import Params
from tasks.progress import EpochProgress
from tasks.runtime import code_hash, fingerprint, hash_tree, isolated_rng, restore, save_checkpoint, save_torch
from tasks.runtime import seed_everything as seed_all

log = logging.getLogger(__name__)


def section(params: Params, pipeline: str) -> Any:
    """The params section of `pipeline` (`params.<pipeline>`)."""
    return getattr(params, pipeline)


def train_outputs(params: Params, pipeline: str, stage: str = "train") -> dict[str, Path]:
    """The train stage's outputs in `<pipeline>.<stage>.out_dir` (dvc.yaml declares the same files)."""
    out = params.path(getattr(section(params, pipeline), stage).out_dir)
    return {"model": out / "model.pt", "history": out / "history.csv", "metrics": out / "metrics.json",
            "run": out / "run.json", "validation": out / "validation.csv"}


@dataclass(frozen=True)
class TrainedModel:
    """One model a pipeline trains and registers: its label ("" when the pipeline has one), the train
    section's output folder and its register section."""

    label: str
    train_dir: Path
    register: Any  # RegisterParams


def trained_models(params: Params, pipeline: str) -> list[TrainedModel]:
    """The models of `pipeline`: `train` + `register` for most; a pipeline with several (generative) has
    `register.<name>` sections, each trained by its `train_<name>` section."""
    cfg = section(params, pipeline)
    registers = tracking.register_sections(params, pipeline)
    if len(registers) == 1 and hasattr(cfg, "train"):
        return [TrainedModel("", params.path(cfg.train.out_dir), registers[0])]
    names = list(type(cfg.register).model_fields)
    return [TrainedModel(name, params.path(getattr(cfg, f"train_{name}").out_dir), register)
            for name, register in zip(names, registers)]


@dataclass
class TrainJob:
    """What the kit hands a pipeline's `prepare`, `fit` and `summary` functions."""

    pipeline: str
    params: Params
    cfg: Any  # params.<pipeline>
    ctx: distributed.Context
    checkpoint: Path
    fingerprint: str
    state: dict[str, Any] | None  # the checkpoint to resume from (same fingerprint), or None
    data: Any = None  # what `prepare` returned (datasets, model, ...)
    run_id: str = ""  # the MLflow run (rank 0; "" on the other ranks)
    on_epoch: Callable[[dict], None] | None = None  # logs one history record to MLflow (rank 0), else None
    stage: str = "train"  # the stage's name after the pipeline's (progress lines: generative_train_vae)

    @property
    def device(self) -> torch.device:
        return self.ctx.device


@dataclass(frozen=True)
class TrainSpec:
    """A pipeline's train stage, declared. Functions take the `TrainJob`; `fit` returns an object with
    `.model`, `.history` (one dict per epoch: "epoch", "loss", ...) and `.resumed_from_epoch`."""

    pipeline: str
    data_dir: Callable[[Params], Path]  # the raw dataset folder the run's lineage names
    fingerprint_config: Callable[[Params], tuple]  # the params a checkpoint must match (ahead of seed and data)
    code: tuple[object, ...]  # modules/objects whose source the checkpoint must match
    fit: Callable[[TrainJob], Any]
    summary: Callable[[TrainJob, Any], dict[str, Any]]  # the train metrics (metrics.json)
    history: dict[str, str]  # history.csv: column -> format spec ("" = str())
    prepare: Callable[[TrainJob], Any] = lambda job: None  # datasets/model, built after the checkpoint is read
    epoch_metrics: Callable[[dict], dict] = field(
        default=lambda record: {k: v for k, v in record.items() if k != "epoch"})  # per-epoch MLflow metrics
    logged_per_epoch: tuple[str, ...] = ()  # summary keys already logged per epoch (not logged again)
    pre_dir: Callable[[Params], Path] | None = None  # hashed into the fingerprint (default preprocess.out_dir)
    skipped_samples: bool = False  # log `<pre_dir>/stats.json` (on_bad_sample: skip counts) to the run
    stage: str = "train"  # the stage (`python -m tasks PIPELINE STAGE`) and its params section, e.g. train_vae
    weights: Callable[[Any], dict[str, nn.Module]] | None = None  # files to write: {name: module} → name.pt
    validation: bool = True  # write validation.csv (the epochs' val_* scores)
    distributed: bool = True  # False: the fit is single-process; a world size above 1 is refused
    outputs: Callable[[TrainJob, Any], list[Path]] | None = None  # writes further outputs (rank 0, atomically);
    # returns the files among them that are DVC plots (logged to the run as figures with history.csv)


def history_csv(history: list[dict], columns: dict[str, str]) -> str:
    return ",".join(columns) + "\n" + "".join(
        ",".join(format(h[c], spec) if spec else str(h[c]) for c, spec in columns.items()) + "\n" for h in history)


def train(spec: TrainSpec, params: Params) -> dict[str, Any]:
    """Run a pipeline's train stage (see the module docstring); returns the train metrics on rank 0."""
    out = train_outputs(params, spec.pipeline, spec.stage)
    tracking.check_tracking_server(params)  # an unreachable server fails now, not after the first epoch
    if not spec.distributed and params.distributed.world_size > 1:
        raise D2lflowError(f"{params.source()}: {spec.pipeline} {spec.stage} trains in one process, but "
                           f"distributed asks for {params.distributed.world_size}; set distributed.nproc_per_node "
                           "and distributed.nnodes to 1 for this stage")
    if (summary := distributed.launch(params, spec.pipeline, spec.stage, out["metrics"])) is not None:
        return summary
    cfg = section(params, spec.pipeline)
    pre_dir = spec.pre_dir(params) if spec.pre_dir else params.path(cfg.preprocess.out_dir)
    if not pre_dir.exists():
        raise DataError(f"{pre_dir}: not found; the {spec.pipeline} {spec.stage} stage trains on it: run "
                        f"`dvc repro {spec.pipeline}_preprocess` first")
    with distributed.process_group(params) as ctx:
        seed_all(params.seed)
        run_fingerprint = fingerprint(*spec.fingerprint_config(params), params.seed, ctx.device.type,
                                      ctx.world_size, hash_tree(pre_dir), code_hash(*spec.code))
        stage_cfg = getattr(cfg, spec.stage)
        checkpoint = params.path(stage_cfg.checkpoint_dir) / "last.pt" if hasattr(stage_cfg, "checkpoint_dir") else None
        # (a section without checkpoint_dir never resumes: style's minutes-long optimisations)
        state = distributed.load_shared_checkpoint(checkpoint, run_fingerprint, ctx) if checkpoint else None
        job = TrainJob(spec.pipeline, params, cfg, ctx, checkpoint, run_fingerprint, state, stage=spec.stage)
        job.data = spec.prepare(job)
        with distributed.main_only(ctx, tracking.training_run(
                spec.pipeline, params, str(ctx.device), out["run"], spec.data_dir(params),
                resume_run_id=state.get("run_id") if state else None, world_size=ctx.world_size)) as run:
            if run:
                if spec.stage != "train":  # one of several models the pipeline trains (generative: vae, dcgan)
                    mlflow.set_tag(f"{tracking.TAG}model", spec.stage.removeprefix("train_"))
                if spec.skipped_samples:
                    tracking.log_skipped_samples(pre_dir / "stats.json")
                job.run_id = run.info.run_id
                job.on_epoch = lambda record: tracking.log_metrics(spec.epoch_metrics(record), step=record["epoch"])
            result = spec.fit(job)
            metrics = spec.summary(job, result)
            if not ctx.is_main:
                return {"rank": ctx.rank, "outputs": "written by rank 0"}
            # the rest were logged per epoch (a second, step-less value would break their series)
            tracking.log_metrics({k: v for k, v in metrics.items() if k not in spec.logged_per_epoch})
            weights = spec.weights(result) if spec.weights else {"model": result.model}
            for name, module in weights.items():
                save_torch(out["model"].with_name(f"{name}.pt"), {k: v.cpu() for k, v in module.state_dict().items()},
                           f"the trained {'weights' if name == 'model' else name}")
            write_text(out["history"], history_csv(result.history, spec.history))
            figures = [out["history"]]
            if spec.validation:
                plots.write_validation(out["validation"], result.history)
                figures.append(out["validation"])
            if spec.outputs is not None:
                figures += spec.outputs(job, result)
            write_json(out["metrics"], metrics)  # unrounded: `dvc exp show` and MLflow show the same numbers
            plots.log_stage_figures(params.root(), f"{spec.pipeline}_{spec.stage}", figures)
    return metrics


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0
    models: dict[str, nn.Module] = field(default_factory=dict)  # every module trained, by checkpoint key


def epoch_loop(job: TrainJob, model: nn.Module | dict[str, nn.Module],
               optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer], epochs: int,
               train_epoch: Callable[[int], dict], validate: Callable[[nn.Module, int], dict] | None = None,
               unit: str = "examples/s", show: tuple[str, ...] = (), loss: str = "loss",
               rate: str = "examples_per_s", seconds: bool = True, extra: dict[str, Any] | None = None) -> FitResult:
    """The train loop a pipeline gets from the kit: resume from `job.state`, then for each epoch
    `train_epoch(epoch)` (0-based; returns {"loss": ..., "examples": n, ...}, summed over ranks by the
    caller), `validate(model, epoch)` (in eval mode) under an isolated random stream, the progress line (with
    the record's `show` keys), the checkpoint (rank 0) and `job.on_epoch`. The history records carry "epoch",
    "loss", "examples_per_s", "seconds" and what `train_epoch` and `validate` returned. Several models trained
    together (a GAN's generator and discriminator) are dicts of modules and of optimizers, checkpointed under
    their keys; `loss` names the record's key the progress line shows as the loss. `rate` names the record's
    throughput key (word2vec's "center_words_per_s"), `seconds=False` leaves the epoch's seconds out of the
    record, and `extra` holds further state checkpointed and restored under its keys (a GradScaler: "scaler")."""
    modules = model if isinstance(model, dict) else {"model": model}
    optimizers = optimizer if isinstance(optimizer, dict) else {"optimizer": optimizer}
    extra = extra or {}
    result = FitResult(next(iter(modules.values())), models=modules)
    if job.state is not None:
        result.history, result.resumed_from_epoch = restore(job.state, **modules, **optimizers, **extra)
        log.info("resuming from %s after epoch %d", job.checkpoint, result.resumed_from_epoch)
    ctx = job.ctx
    progress = EpochProgress(f"{job.pipeline}_{job.stage}", epochs, result.resumed_from_epoch,
                             enabled=ctx.local_rank == 0)
    for epoch in range(result.resumed_from_epoch, epochs):
        start = time.perf_counter()
        for module in modules.values():
            module.train()
        scores = train_epoch(epoch)
        elapsed = time.perf_counter() - start
        examples = scores.pop("examples")
        record = {"epoch": epoch + 1, **scores, rate: examples / elapsed, **({"seconds": elapsed} if seconds else {})}
        if validate is not None:
            with isolated_rng(job.device):  # validating must not change what training draws next
                result.model.eval()
                record.update(validate(result.model, epoch + 1))
        result.history.append(record)
        progress.epoch(epoch + 1, record[loss], record[rate], unit,
                       **{key: record[key] for key in show if key in record})
        if ctx.is_main:
            save_checkpoint(job.checkpoint, {"epoch": epoch + 1, **{k: m.state_dict() for k, m in modules.items()},
                                             **{k: o.state_dict() for k, o in optimizers.items()},
                                             **{k: x.state_dict() for k, x in extra.items()},
                                             "history": result.history, "fingerprint": job.fingerprint,
                                             "run_id": job.run_id})
        if job.on_epoch is not None:
            job.on_epoch(record)
    return result


def register(params: Params, pipeline: str, python_model: Any, signature: Any, input_example: Any,
             artifacts: Iterable[tuple[str, Path]] = (), serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pipeline's register stage: the evaluate metrics, `serving.json` (when `serving` is given) and the
    trained weights go with `python_model` to `tracking.log_and_register` (the champion rule of
    `<pipeline>.register`). `artifacts`: further (key, file) pairs the pyfunc loads."""
    cfg = section(params, pipeline)
    out = train_outputs(params, pipeline)
    metrics = read_json(params.path(cfg.evaluate.out_dir) / "metrics.json")
    files = {"weights": str(out["model"]), **{key: str(path) for key, path in artifacts}}
    if serving is not None:
        config = params.path(cfg.register.out_dir) / "serving.json"
        write_json(config, serving)
        files["config"] = str(config)
    return tracking.log_and_register(pipeline, params, cfg.register, out["run"], metrics, python_model, files,
                                     signature, input_example)
