"""word2vec: the book's code, d2lflow (dense Adam and sparse_adam) and gensim, on the same corpus, in one run.

    python benchmarks/word2vec_bench.py                                  # PTB-sized synthetic corpus
    python benchmarks/word2vec_bench.py --data-dir ../shared/data/ptb.zip   # real PTB (a zip or a folder)
    python benchmarks/word2vec_bench.py --data-dir data/ptb --seeds 0 --book-epochs 1   # a quick run

Writes benchmarks/results/word2vec.json. For every seed, every side trains from scratch with the
book's hyperparameters (embed 100, batch 512, window 5, 5 noise words, lr 0.002, 5 epochs; gensim:
sg=1, negative=5, window=5, sample=1e-4, min_count=10, its own learning-rate schedule) and is
scored the same way: center words/s and s per epoch (wall time of each epoch, batching included;
also the process's CPU seconds per epoch, less sensitive to other load on a shared machine),
mean training loss over the epochs, held-out loss on d2lflow's validation draw (ptb.valid.txt, the
same examples for every side of a seed; the book's and gensim's tables are mapped onto d2lflow's
vocabulary by word), WordSim-353 and SimLex-999 Spearman rho, Google analogy accuracy (gensim's test
data), and the nearest neighbours of chip, baby and beautiful. The summary gives each figure's mean,
sample standard deviation, min and max over the seeds. `--profile-steps N` adds a torch.profiler
table of N training steps of each d2lflow optimiser (where the time of a step goes).

The book's code needs ~20 s an epoch on a quiet core: `--book-epochs` trains it for fewer epochs
(its figures are then over those epochs; recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import book_word2vec as book  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from models.skipgram import SkipGram  # noqa: E402
from tasks.params import SyntheticPtbParams, Word2vecPreprocessParams, Word2vecTrainParams  # noqa: E402
from tasks.synthetic.ptb import write_synthetic_ptb  # noqa: E402
from tasks.word2vec import evaluate as ev  # noqa: E402
from tasks.word2vec import preprocess as pp  # noqa: E402
from tasks.word2vec import train as tr  # noqa: E402
from tasks.word2vec.row_adam import sgns_adam_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# About PTB's size: ~880k train tokens, a vocabulary of ~6.5k words after min_freq 10.
PTB_SCALE = SyntheticPtbParams(sentences=68000, groups=800, words_per_group=8, seed=0)
SIDES = ("d2lflow_dense", "d2lflow_sparse", "gensim", "book")  # the slowest last
PROBES = ("chip", "baby", "beautiful")


class Task:
    """The corpus, d2lflow's vocabulary and the evaluation sets, shared by every side."""

    def __init__(self, data_dir: Path) -> None:
        from gensim.test.utils import datapath

        self.data_dir = data_dir
        self.pre_cfg = Word2vecPreprocessParams()
        tokens, lengths = pp.read_tokens(data_dir / "ptb.train.txt")
        self.vocab = pp.build_vocab(tokens, self.pre_cfg.min_freq)
        self.corpus = pp.Corpus(self.vocab.encode(tokens), lengths)
        valid_tokens, valid_lengths = pp.read_tokens(data_dir / "ptb.valid.txt")
        self.valid_corpus = pp.Corpus(self.vocab.encode(valid_tokens), valid_lengths)
        self.wordsim = ev.read_pairs(Path(datapath("wordsim353.tsv")))
        self.simlex = ev.read_pairs(Path(datapath("simlex999.txt")))
        self.analogies = ev.read_analogies(Path(datapath("questions-words.txt")))

    def valid(self, seed: int) -> pp.Samples:
        """The validation examples the preprocess stage would draw for `seed`."""
        return pp.make_samples(self.valid_corpus, self.vocab.counts, self.pre_cfg, pp.split_rng(seed, "valid"))[1]

    def score(self, model: SkipGram, seed: int) -> dict:
        """Every quality figure of a model whose rows follow d2lflow's vocabulary."""
        unit = ev.normalise(model.embed_v.weight.detach().numpy())
        return {
            "heldout_loss": ev.heldout_loss(model, self.valid(seed)),
            "wordsim353_spearman": ev.similarity_spearman(unit, self.vocab, self.wordsim)["spearman"],
            "simlex999_spearman": ev.similarity_spearman(unit, self.vocab, self.simlex)["spearman"],
            "analogy_accuracy": ev.analogy_accuracy(unit, self.vocab, self.analogies)["accuracy"],
            "neighbours": {word: ev.nearest(unit, self.vocab, word, 3) for word in PROBES},
        }

    def aligned(self, tables: tuple[np.ndarray, np.ndarray], index: dict[str, int]) -> SkipGram:
        """A SkipGram holding another model's (center, context) tables, rows reordered to d2lflow's
        vocabulary by word (a word the other model lacks gets zero vectors: logit 0)."""
        model = SkipGram(len(self.vocab), tables[0].shape[1])
        for weight, table in zip((model.embed_v.weight, model.embed_u.weight), tables, strict=True):
            aligned = np.zeros((len(self.vocab), table.shape[1]), dtype=np.float32)
            for i, token in enumerate(self.vocab.idx_to_token):
                if token in index:
                    aligned[i] = table[index[token]]
            weight.data.copy_(torch.from_numpy(aligned))
        return model


def side_d2lflow(task: Task, seed: int, epochs: int, optimizer: str) -> dict:
    cfg = Word2vecTrainParams(epochs=epochs, optimizer=optimizer)
    start = time.perf_counter()
    _, samples = pp.make_samples(task.corpus, task.vocab.counts, task.pre_cfg, pp.split_rng(seed, "train"))
    preprocess = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        result = tr.train(samples, task.corpus, task.vocab.counts, len(task.vocab), cfg, task.pre_cfg, seed,
                          torch.device("cpu"), Path(tmp) / "ckpt.pt", "bench")
        cpu = time.process_time() - cpu
    history = result.history
    return {
        "optimizer": optimizer, "preprocess_seconds_train_split_in_memory": preprocess,
        "cpu_seconds_per_epoch": cpu / epochs,
        "center_words": len(samples), "center_context_pairs": int(len(samples.contexts)),
        "epoch_losses": [h["loss"] for h in history], "epoch_seconds": [h["seconds"] for h in history],
        "center_words_per_s_epochs": [h["center_words_per_s"] for h in history],
        **task.score(result.model, seed),
    }


def side_book(task: Task, seed: int, epochs: int) -> dict:
    random.seed(seed)
    torch.manual_seed(seed)
    data_iter, vocab, stats = book.load_data_ptb(task.data_dir, 512, 5, 5)
    net = book.make_net(len(vocab), 100)
    cpu = time.process_time()
    result = book.train(net, data_iter, 0.002, epochs, torch.device("cpu"))
    cpu = time.process_time() - cpu
    tables = (net[0].weight.detach().numpy(), net[1].weight.detach().numpy())
    return {
        "preprocess_seconds": stats["seconds"], "center_words": stats["num_centers"],
        "cpu_seconds_per_epoch": cpu / epochs,
        "center_context_pairs": stats["num_pairs"],
        "epoch_losses": result["epoch_losses"], "epoch_seconds": result["epoch_seconds"],
        "center_words_per_s_epochs": result["center_words_per_s"],
        **task.score(task.aligned(tables, vocab.token_to_idx), seed),
    }


def side_gensim(task: Task, seed: int, epochs: int, workers: int) -> dict:
    from gensim.models import Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec

    class Clock(CallbackAny2Vec):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_epoch_begin(self, model) -> None:  # noqa: ANN001 - gensim's callback signature
            self.start = time.perf_counter()

        def on_epoch_end(self, model) -> None:  # noqa: ANN001
            self.seconds.append(time.perf_counter() - self.start)

    # The same corpus the others train on: PTB's literal <unk> tokens dropped (the book and d2lflow drop them).
    sentences = [[t for t in line.split() if t != "<unk>"]
                 for line in (task.data_dir / "ptb.train.txt").read_text().splitlines()]
    model = Word2Vec(vector_size=100, window=5, sg=1, negative=5, sample=1e-4, min_count=10, seed=seed,
                     workers=workers)
    model.build_vocab(sentences)
    clock = Clock()
    cpu = time.process_time()  # the whole process: gensim's worker threads included
    trained, _ = model.train(sentences, total_examples=model.corpus_count, epochs=epochs, callbacks=[clock])
    cpu = time.process_time() - cpu
    per_epoch = trained / epochs  # words kept after gensim's downsampling: its center words
    tables = (model.wv.vectors, model.syn1neg)
    return {
        "workers": workers, "center_words": int(per_epoch), "epoch_seconds": clock.seconds,
        "cpu_seconds_per_epoch": cpu / epochs,
        "center_words_per_s_epochs": [per_epoch / s for s in clock.seconds],
        "epoch_losses": None,  # gensim's running loss is not the per-example mean BCE the others report
        **task.score(task.aligned(tables, model.wv.key_to_index), seed),
    }


def profile_steps(task: Task, optimizer: str, steps: int) -> dict:
    """torch.profiler over `steps` training steps (after 10 warm-up steps): the ops that take the time."""
    from torch.profiler import profile, record_function

    _, samples = pp.make_samples(task.corpus, task.vocab.counts, task.pre_cfg, pp.split_rng(0, "train"))
    entries = tr.flatten_examples(samples, np.arange(len(samples)))
    cfg = Word2vecTrainParams(optimizer=optimizer)
    torch.manual_seed(0)
    model = SkipGram(len(task.vocab), cfg.embed_size)
    opt = tr.make_optimizer(model, cfg, torch.device("cpu"))
    order = torch.from_numpy(tr.epoch_order(len(entries), 0, 0))

    def step(i: int) -> None:  # the training loop's step (tasks/word2vec/train.py), in labelled phases
        with record_function("phase: batch select"):
            part = entries.select(order[i * cfg.batch_size:(i + 1) * cfg.batch_size])
        if optimizer == "sparse_adam":  # labels its own phases: gather and catch up, loss and gradient, adam
            sgns_adam_step(opt, model.embed_v.weight, model.embed_u.weight, part.offsets, part.centers,
                           part.words, part.labels, part.weights)  # and write back
            return
        with record_function("phase: loss and gradient"):
            loss = tr.pair_loss(model.pair_logits(part.centers, part.words), part)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("phase: optimizer"):
            opt.step()

    for i in range(10):
        step(i)
    start = time.perf_counter()
    with profile() as prof:
        for i in range(10, 10 + steps):
            step(i)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted((e for e in events if not e.key.startswith("phase: ")), key=lambda e: e.self_cpu_time_total,
                 reverse=True)[:12]
    phases = {e.key.removeprefix("phase: "): e.cpu_time_total / total for e in events if e.key.startswith("phase: ")}
    return {
        "steps": steps, "ms_per_step_profiled": 1000 * wall / steps,
        "optimizer_step_share_of_self_cpu": phases.get("optimizer", phases.get("adam and write back")),
        "phase_share_of_self_cpu": phases,
        "top_ops_by_self_cpu": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count}
                                for e in top],
    }


def spread(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    return {
        "center_words_per_s": spread([float(np.median(r["center_words_per_s_epochs"])) for r in runs]),
        "seconds_per_epoch": spread([float(np.mean(r["epoch_seconds"])) for r in runs]),
        "cpu_seconds_per_epoch": spread([r.get("cpu_seconds_per_epoch") for r in runs]),
        "mean_epoch_loss": spread([float(np.mean(r["epoch_losses"])) if r["epoch_losses"] else None for r in runs]),
        "heldout_loss": spread([r["heldout_loss"] for r in runs]),
        "wordsim353_spearman": spread([r["wordsim353_spearman"] for r in runs]),
        "simlex999_spearman": spread([r["simlex999_spearman"] for r in runs]),
        "analogy_accuracy": spread([r["analogy_accuracy"] for r in runs]),
        "neighbours_first_seed": runs[0]["neighbours"],
    }


def corpus_dir(data_dir: Path | None, tmp: Path) -> tuple[Path, str]:
    """A folder with ptb.{train,valid}.txt: the given folder, the given zip extracted, or the synthetic one."""
    if data_dir is None:
        folder = RESULTS / "ptb_scale_synthetic"
        if not (folder / "ptb.train.txt").is_file():
            write_synthetic_ptb(folder, PTB_SCALE)
        return folder, f"synthetic {PTB_SCALE.model_dump()}"
    if data_dir.suffix == ".zip":
        with zipfile.ZipFile(data_dir) as archive:
            for name in ("ptb.train.txt", "ptb.valid.txt"):
                member = next(m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name)
                (tmp / name).write_bytes(archive.read(member))
        return tmp, f"real ({data_dir})"
    return data_dir, f"real ({data_dir})"


def write_report(args: argparse.Namespace, corpus: str, book_epochs: int, runs: dict[str, list[dict]],
                 profiles: dict, complete: bool) -> dict:
    summary = {side: summarise(side_runs) for side, side_runs in runs.items() if side_runs}
    if "book" in summary and "d2lflow_dense" in summary:
        summary["training_throughput_speedup_dense_over_book"] = (
            summary["d2lflow_dense"]["center_words_per_s"]["mean"] / summary["book"]["center_words_per_s"]["mean"])
    ratios = {}  # >1: the first side is faster (ratios of mean seconds per epoch, wall clock and CPU time)
    for fast, slow in (("d2lflow_sparse", "d2lflow_dense"), ("d2lflow_sparse", "gensim"), ("d2lflow_dense", "book"),
                       ("d2lflow_sparse", "book")):
        if fast in summary and slow in summary:
            for key in ("seconds_per_epoch", "cpu_seconds_per_epoch"):
                if summary[fast][key] and summary[slow][key]:
                    ratios[f"{key}_{slow}_over_{fast}"] = summary[slow][key]["mean"] / summary[fast][key]["mean"]
    summary["speed_ratios"] = ratios
    report = {
        "complete": complete, "corpus": corpus, "epochs": args.epochs, "book_epochs": book_epochs,
        "seeds": args.seeds, "gensim_workers": args.gensim_workers, "machine": machine(),
        "load_average_at_end": os.getloadavg(), "summary": summary, "profile": profiles, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="ptb.zip, or a folder with ptb.train.txt and ptb.valid.txt "
                                                      "(default: PTB-sized synthetic)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--book-epochs", type=int, help="epochs of the book's code (default: --epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--gensim-workers", type=int, default=3, help="gensim's worker threads (its default: 3)")
    parser.add_argument("--profile-steps", type=int, default=100, help="0: no profile")
    parser.add_argument("--out", type=Path, default=RESULTS / "word2vec.json")
    args = parser.parse_args()
    book_epochs = args.book_epochs or args.epochs

    with tempfile.TemporaryDirectory() as tmp:
        data_dir, corpus = corpus_dir(args.data_dir, Path(tmp))
        task = Task(data_dir)
        profiles = {opt: profile_steps(task, opt, args.profile_steps)
                    for opt in ("adam", "sparse_adam") if args.profile_steps > 0}
        runs: dict[str, list[dict]] = {side: [] for side in args.sides}
        for seed in args.seeds:
            for side in args.sides:
                print(f"[seed {seed}] {side} ...", flush=True)
                if side == "book":
                    run = side_book(task, seed, book_epochs)
                elif side == "gensim":
                    run = side_gensim(task, seed, args.epochs, args.gensim_workers)
                else:
                    run = side_d2lflow(task, seed, args.epochs, "adam" if side == "d2lflow_dense" else "sparse_adam")
                runs[side].append({"seed": seed, **run})
                write_report(args, corpus, book_epochs, runs, profiles, complete=False)  # what ran so far
    report = write_report(args, corpus, book_epochs, runs, profiles, complete=True)
    summary = report["summary"]
    print(json.dumps({side: {k: (v["mean"] if isinstance(v, dict) and "mean" in v else v)
                             for k, v in s.items() if k != "neighbours_first_seed"}
                      for side, s in summary.items() if isinstance(s, dict)}, indent=2))


if __name__ == "__main__":
    main()
