"""Small builders shared by the word2vec tests (plain functions; the test modules wrap them in fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.params import SyntheticPtbParams, Word2vecPreprocessParams
from tasks.synthetic.ptb import write_synthetic_ptb
from tasks.word2vec.preprocess import Samples, Vocab, load_corpus, load_samples, load_vocab, preprocess


def random_samples(rng: np.random.Generator, n: int, vocab_size: int, k: int = 5, max_ctx: int = 6) -> Samples:
    """`n` centers with 1..max_ctx contexts each and k negatives per context (ids in 1..vocab_size-1)."""
    n_ctx = rng.integers(1, max_ctx + 1, size=n)
    ctx_offsets = np.concatenate([[0], np.cumsum(n_ctx)]).astype(np.int64)
    return Samples(
        centers=rng.integers(1, vocab_size, size=n).astype(np.int32),
        ctx_offsets=ctx_offsets,
        contexts=rng.integers(1, vocab_size, size=int(n_ctx.sum())).astype(np.int32),
        neg_offsets=ctx_offsets * k,
        negatives=rng.integers(1, vocab_size, size=int(n_ctx.sum()) * k).astype(np.int32),
    )


def examples_of(samples: Samples, order: np.ndarray) -> list[tuple[int, list[int], list[int]]]:
    """The book's (center, contexts, negatives) triples of `samples`, in `order`."""
    out = []
    for i in order:
        ctx = samples.contexts[samples.ctx_offsets[i]:samples.ctx_offsets[i + 1]]
        neg = samples.negatives[samples.neg_offsets[i]:samples.neg_offsets[i + 1]]
        out.append((int(samples.centers[i]), [int(x) for x in ctx], [int(x) for x in neg]))
    return out


def make_vocab(tokens: list[str]) -> Vocab:
    """A vocabulary with the given tokens (index 0 must be `<unk>`) and made-up descending counts."""
    assert tokens[0] == "<unk>"
    return Vocab(list(tokens), np.arange(len(tokens), 0, -1, dtype=np.int64) * 10)


class Preprocessed:
    """A synthetic PTB written and preprocessed under `root`."""

    def __init__(self, root: Path, sentences: int, seed: int = 0, synthetic_seed: int = 0, **groups: int) -> None:
        self.synthetic = SyntheticPtbParams(sentences=sentences, seed=synthetic_seed, **groups)
        self.pre_cfg = Word2vecPreprocessParams()
        self.data_dir = write_synthetic_ptb(root / "ptb", self.synthetic)
        self.out_dir = root / "preprocess"
        self.stats = preprocess(self.data_dir, self.out_dir, self.pre_cfg, seed)
        self.vocab = load_vocab(self.out_dir)
        self.samples = load_samples(self.out_dir / "train")
        self.corpus = load_corpus(self.out_dir / "train_corpus")
        self.valid = load_samples(self.out_dir / "valid")


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path → its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
