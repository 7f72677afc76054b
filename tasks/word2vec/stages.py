"""The word2vec stages as the CLI, DVC and Prefect run them: read params, call the pure functions,
write outputs atomically, log to MLflow. One function per stage; each returns a small summary.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import mlflow
import torch

from models.skipgram import SkipGram
from tasks import kit, tracking
from tasks.acquire import Staging
from tasks.acquire import acquire as acquire_data
from tasks.atomic import write_json
from tasks.errors import DataError
from tasks.params import Params
from tasks.synthetic.ptb import write_synthetic_ptb
from tasks.word2vec import evaluate as ev
from tasks.word2vec import preprocess as pp
from tasks.word2vec import row_adam
from tasks.word2vec import train as tr

log = logging.getLogger(__name__)

PIPELINE = "word2vec"
EVAL_FILES = ("wordsim353.tsv", "simlex999.txt", "questions-words.txt")


def acquire(params: Params, staging: Staging | None = None) -> dict[str, Any]:
    """PTB into `word2vec.data.dir` from the configured source, the evaluation sets into `eval_dir`;
    both staged and checked (the text decodes, train and valid hold words) before either is replaced."""
    cfg = params.word2vec.data
    own = staging is None
    staging = Staging(params.root()) if own else staging
    try:
        target = acquire_data(cfg, params, "ptb.train.txt", lambda path: write_synthetic_ptb(path, cfg.synthetic),
                              check=check_ptb, staging=staging)
        eval_dir = params.path(cfg.eval_dir)
        copied = copy_eval_sets(staging.directory(eval_dir) / "new")
        if own:
            staging.commit()
    finally:
        if own:
            staging.close()
    return {"dir": str(target), "source": cfg.source, "eval_sets": copied}


def check_ptb(tree: Path) -> None:
    """The reader's cheap checks on an acquired PTB folder: train and valid exist, decode and hold words."""
    if not (tree / "ptb.valid.txt").is_file():
        raise DataError(f"{tree / 'ptb.valid.txt'}: missing; the held-out loss needs it")
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        if (tree / name).is_file() or name != "ptb.test.txt":
            pp.read_tokens(tree / name)


def copy_eval_sets(target: Path) -> list[str]:
    """WordSim-353, SimLex-999 and Google analogies from the gensim wheel's test data (LGPL)."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise DataError("the evaluation sets come from the gensim package, which is not installed; "
                        "`pip install gensim` or point word2vec.evaluate.* at your own files") from None
    target.mkdir(parents=True, exist_ok=True)
    for name in EVAL_FILES:
        shutil.copyfile(datapath(name), target / name)
    return list(EVAL_FILES)


def preprocess(params: Params) -> dict[str, Any]:
    cfg = params.word2vec
    return pp.preprocess(params.path(cfg.data.dir), params.path(cfg.preprocess.out_dir), cfg.preprocess, params.seed)


def _train_outputs(params: Params) -> dict[str, Path]:
    return kit.train_outputs(params, PIPELINE)


def _prepare(job: kit.TrainJob) -> dict[str, Any]:
    pre_dir = job.params.path(job.cfg.preprocess.out_dir)
    vocab = pp.load_vocab(pre_dir)
    return {"vocab": vocab, "samples": pp.load_samples(pre_dir / "train"),
            "corpus": pp.load_corpus(pre_dir / "train_corpus"), "valid": pp.load_samples(pre_dir / "valid")}


def _fit(job: kit.TrainJob) -> tr.TrainResult:
    cfg, data = job.cfg, job.data

    def validate(model: torch.nn.Module, epoch: int) -> dict:
        return {"val_loss": ev.heldout_loss(model, data["valid"])}  # the evaluate stage's heldout_loss, per epoch
    return tr.train(data["samples"], data["corpus"], data["vocab"].counts, len(data["vocab"]), cfg.train,
                    cfg.preprocess, job.params.seed, job.device, job.checkpoint, job.fingerprint, state=job.state,
                    run_id=job.run_id, on_epoch=job.on_epoch, ctx=job.ctx, validate=validate)


def _summary(job: kit.TrainJob, result: tr.TrainResult) -> dict[str, Any]:
    history = result.history
    return {
        "final_epoch_loss": history[-1]["loss"],
        "mean_epoch_loss": sum(h["loss"] for h in history) / len(history),
        "center_words_per_s": sum(h["center_words_per_s"] for h in history) / len(history),
        "epochs": len(history),
        "resumed_from_epoch": result.resumed_from_epoch,
    }


TRAIN = kit.TrainSpec(
    pipeline=PIPELINE,
    data_dir=lambda params: params.path(params.word2vec.data.dir),
    fingerprint_config=lambda params: (params.word2vec.train.model_dump(exclude={"out_dir", "checkpoint_dir"}),
                                       params.word2vec.preprocess.model_dump(exclude={"out_dir"})),
    code=(tr, row_adam, SkipGram, kit.epoch_loop),  # the loop itself lives in the kit
    prepare=_prepare,
    fit=_fit,
    summary=_summary,
    epoch_metrics=lambda record: {"train_loss": record["loss"], "val_loss": record.get("val_loss"),
                                  "center_words_per_s": record["center_words_per_s"],
                                  "epoch_seconds": record["seconds"]},
    logged_per_epoch=("center_words_per_s",),
    history={"epoch": "", "loss": ".6f", "center_words_per_s": ".1f", "seconds": ".3f"},
)


def train(params: Params) -> dict[str, Any]:
    """Train (resuming from the last checkpoint of the same inputs and params), then write the model,
    the per-epoch history (DVC plot) and the train metrics. With `distributed.*` asking for several
    processes it runs under torchrun; rank 0 alone logs to MLflow and writes outputs and checkpoints
    (tasks/kit.py)."""
    return kit.train(TRAIN, params)


def _load_model(params: Params, vocab_size: int) -> torch.nn.Module:
    model = SkipGram(vocab_size, params.word2vec.train.embed_size)
    state = torch.load(_train_outputs(params)["model"], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def evaluate(params: Params) -> dict[str, Any]:
    """Neighbours of the probe words, similarity and analogy scores, held-out loss → one metrics JSON."""
    cfg = params.word2vec
    pre_dir = params.path(cfg.preprocess.out_dir)
    vocab = pp.load_vocab(pre_dir)
    model = _load_model(params, len(vocab))
    unit = ev.normalise(model.embed_v.weight.detach().numpy())
    ws = ev.similarity_spearman(unit, vocab, ev.read_pairs(params.path(cfg.evaluate.wordsim353)))
    sl = ev.similarity_spearman(unit, vocab, ev.read_pairs(params.path(cfg.evaluate.simlex999)))
    an = ev.analogy_accuracy(unit, vocab, ev.read_analogies(params.path(cfg.evaluate.analogies)))
    metrics = {
        "heldout_loss": ev.heldout_loss(model, pp.load_samples(pre_dir / "valid")),
        "wordsim353_spearman": ws["spearman"], "wordsim353_pairs": ws["pairs"], "wordsim353_total": ws["total"],
        "simlex999_spearman": sl["spearman"], "simlex999_pairs": sl["pairs"], "simlex999_total": sl["total"],
        "analogy_accuracy": an["accuracy"], "analogy_questions": an["questions"], "analogy_total": an["total"],
        "vocab_size": len(vocab),
    }
    neighbours = {word: ev.nearest(unit, vocab, word, cfg.evaluate.k) for word in cfg.evaluate.probe_words}
    out = params.path(cfg.evaluate.out_dir)
    with tracking.reopened_run(PIPELINE, params, _train_outputs(params)["run"]):
        tracking.log_metrics(metrics)
        mlflow.log_dict(neighbours, "evaluation/neighbours.json")
    write_json(out / "neighbours.json", neighbours)
    write_json(out / "metrics.json", metrics)
    return metrics


def register(params: Params) -> dict[str, Any]:
    """Log the model (pyfunc: words → center embeddings) to the run and register it with the alias rule."""
    import pandas as pd
    from mlflow.models import infer_signature

    from tasks.word2vec.serving import INPUT_COLUMN, Word2vecEmbeddings

    pre_dir = params.path(params.word2vec.preprocess.out_dir)
    vocab = pp.load_vocab(pre_dir)
    example = pd.DataFrame({INPUT_COLUMN: vocab.idx_to_token[1:4]})
    weights = _load_model(params, len(vocab)).embed_v.weight.detach().numpy()
    return kit.register(params, PIPELINE, Word2vecEmbeddings(), infer_signature(example, weights[1:4]), example,
                        [("vocab", pre_dir / "vocab.json")])


STAGES = {"acquire": acquire, "preprocess": preprocess, "train": train, "evaluate": evaluate, "register": register}
