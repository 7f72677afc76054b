"""word2vec: d2lflow's preprocess and training vs the book's code, on the same corpus, in one run.

    python benchmarks/word2vec_bench.py                      # PTB-sized synthetic corpus
    python benchmarks/word2vec_bench.py --data-dir data/ptb  # real PTB (after `d2lflow acquire`)

Writes benchmarks/results/word2vec.json. Throughput is honest: center words per second of wall
time of each epoch, batching included, for both sides. Same hyperparameters (the book's).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import book_word2vec as book  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from tasks.params import SyntheticPtbParams, Word2vecPreprocessParams, Word2vecTrainParams  # noqa: E402
from tasks.synthetic.ptb import write_synthetic_ptb  # noqa: E402
from tasks.word2vec import evaluate as ev  # noqa: E402
from tasks.word2vec import preprocess as pp  # noqa: E402
from tasks.word2vec import train as tr  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# About PTB's size: ~880k train tokens, a vocabulary of ~6.5k words after min_freq 10.
PTB_SCALE = SyntheticPtbParams(sentences=68000, groups=800, words_per_group=8, seed=0)


def ours(data_dir: Path, epochs: int, seed: int) -> dict:
    pre_cfg, train_cfg = Word2vecPreprocessParams(), Word2vecTrainParams(epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tokens, lengths = pp.read_tokens(data_dir / "ptb.train.txt")
        vocab = pp.build_vocab(tokens, pre_cfg.min_freq)
        corpus = pp.Corpus(vocab.encode(tokens), lengths)
        _, samples = pp.make_samples(corpus, vocab.counts, pre_cfg, pp.split_rng(seed, "train"))
        in_memory = time.perf_counter() - start
        start = time.perf_counter()
        stats = pp.preprocess(data_dir, Path(tmp) / "pre", pre_cfg, seed)
        stage = time.perf_counter() - start
        torch.manual_seed(seed)
        result = tr.train(samples, corpus, vocab.counts, len(vocab), train_cfg, pre_cfg, seed,
                          torch.device("cpu"), Path(tmp) / "ckpt.pt", "bench")
    history = result.history
    unit = ev.normalise(result.model.embed_v.weight.detach().numpy())
    return {
        "preprocess_seconds_train_split_in_memory": in_memory,
        "preprocess_stage_seconds_train_and_valid_written": stage,
        "vocab_size": len(vocab), "center_words": len(samples), "center_context_pairs": int(len(samples.contexts)),
        "tokens_after_subsampling": stats["train"]["tokens_after_subsampling"],
        "epoch_losses": [h["loss"] for h in history],
        "mean_epoch_loss": float(np.mean([h["loss"] for h in history])),
        "epoch_seconds": [h["seconds"] for h in history],
        "center_words_per_s": [h["center_words_per_s"] for h in history],
        "chip": ev.nearest(unit, vocab, "chip", 3),
    }


def reference(data_dir: Path, epochs: int, seed: int) -> dict:
    random.seed(seed)
    torch.manual_seed(seed)
    data_iter, vocab, stats = book.load_data_ptb(data_dir, 512, 5, 5)
    net = book.make_net(len(vocab), 100)
    result = book.train(net, data_iter, 0.002, epochs, torch.device("cpu"))
    chip = book.get_similar_tokens("chip", 3, net[0], vocab) if "chip" in vocab.token_to_idx else None
    return {"preprocess_seconds": stats["seconds"], **{k: v for k, v in stats.items() if k != "seconds"},
            **result, "chip": chip}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="folder with ptb.train.txt (default: PTB-sized synthetic)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "word2vec.json")
    args = parser.parse_args()
    data_dir = args.data_dir
    corpus = "real" if data_dir else f"synthetic {PTB_SCALE.model_dump()}"
    if data_dir is None:
        data_dir = RESULTS / "ptb_scale_synthetic"
        if not (data_dir / "ptb.train.txt").is_file():
            write_synthetic_ptb(data_dir, PTB_SCALE)
    ref = reference(data_dir, args.epochs, args.seed)
    mine = ours(data_dir, args.epochs, args.seed)
    ref_rate, my_rate = float(np.median(ref["center_words_per_s"])), float(np.median(mine["center_words_per_s"]))
    report = {
        "corpus": corpus, "data_dir": str(data_dir), "epochs": args.epochs, "machine": machine(),
        "summary": {
            "preprocess_speedup_in_memory":
                ref["preprocess_seconds"] / mine["preprocess_seconds_train_split_in_memory"],
            "preprocess_speedup_whole_stage":
                ref["preprocess_seconds"] / mine["preprocess_stage_seconds_train_and_valid_written"],
            "book_center_words_per_s_median": ref_rate,
            "d2lflow_center_words_per_s_median": my_rate,
            "training_throughput_speedup": my_rate / ref_rate,
            "book_mean_epoch_loss": ref["mean_epoch_loss"],
            "d2lflow_mean_epoch_loss": mine["mean_epoch_loss"],
        },
        "book": ref, "d2lflow": mine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
