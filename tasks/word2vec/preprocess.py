"""word2vec preprocessing (d2l 15.3), vectorised: vocabulary, subsampling, centers/contexts, negatives.

Every function is pure given its `numpy.random.Generator`, so the same seed gives byte-identical
arrays. Corpora are flat id arrays plus sentence lengths; per-center contexts and negatives are
CSR-style (offsets + flat values), which is what the trainer batches from without Python loops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.atomic import atomic_path, read_json, to_json
from tasks.errors import DataError
from tasks.params import Word2vecPreprocessParams

log = logging.getLogger(__name__)

UNK = "<unk>"
SPLIT_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt"}
# Salts keep the random streams of the splits (and of training epochs) independent.
SPLIT_SALT = {"train": 1, "valid": 2}


@dataclass(frozen=True)
class Vocab:
    """Tokens by index (`<unk>` pinned at 0) and their pre-subsampling counts in the train corpus."""

    idx_to_token: list[str]
    counts: np.ndarray  # int64, counts[0] = number of tokens mapped to <unk>

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """Token strings → ids (unknown → 0), vectorised through a hash index."""
        ids = pd.Index(self.idx_to_token).get_indexer(tokens)
        return np.where(ids < 0, 0, ids).astype(np.int32)

    def index(self, token: str) -> int | None:
        try:
            return self.idx_to_token.index(token)
        except ValueError:
            return None


@dataclass(frozen=True)
class Corpus:
    """A tokenised corpus as flat ids plus per-sentence lengths."""

    ids: np.ndarray  # int32
    lengths: np.ndarray  # int64


@dataclass(frozen=True)
class Samples:
    """Training examples: per center word its contexts and negatives (CSR layout)."""

    centers: np.ndarray  # int32 (N,)
    ctx_offsets: np.ndarray  # int64 (N+1,)
    contexts: np.ndarray  # int32
    neg_offsets: np.ndarray  # int64 (N+1,)
    negatives: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.centers)


def read_tokens(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A PTB text file → (tokens, sentence lengths); one sentence a line, blank lines skipped."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the acquire step (`d2lflow acquire`) first")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte {raw[error.start:error.start + 1]!r} at offset {error.start}, "
                        f"line {line}); PTB files are plain text: re-save it as UTF-8 or acquire it again") from None
    lines = [line.split() for line in text.splitlines()]
    lengths = np.fromiter((len(words) for words in lines if words), dtype=np.int64)
    tokens = np.array([word for words in lines for word in words], dtype=object)
    if len(tokens) == 0:
        raise DataError(f"{path}: no tokens found; is this a PTB text file (one sentence a line)?")
    return tokens, lengths


def build_vocab(tokens: np.ndarray, min_freq: int) -> Vocab:
    """Tokens seen at least `min_freq` times, by count (desc) then token; `<unk>` pinned to 0."""
    counts = pd.Series(tokens).value_counts(sort=False)
    counts = counts[counts.index != UNK]
    kept = counts[counts >= min_freq]
    order = sorted(zip(-kept.to_numpy(), kept.index))
    idx_to_token = [UNK] + [token for _, token in order]
    token_counts = np.array([0] + [-c for c, _ in order], dtype=np.int64)
    token_counts[0] = len(tokens) - int(token_counts[1:].sum())
    return Vocab(idx_to_token, token_counts)


def subsample(corpus: Corpus, counts: np.ndarray, t: float, rng: np.random.Generator) -> Corpus:
    """Drop `<unk>`, then keep token w with probability min(1, sqrt(t / f(w))) (d2l 15.3.2).

    `counts` are the pre-subsampling train counts; f(w) = counts[w] / (tokens that are not <unk>).
    """
    known = corpus.ids != 0
    ids = corpus.ids[known]
    sentence = np.repeat(np.arange(len(corpus.lengths)), corpus.lengths)[known]
    total = counts[1:].sum()
    freq = counts[ids] / total
    keep = rng.random(len(ids)) < np.sqrt(t / freq)
    return Corpus(ids[keep], np.bincount(sentence[keep], minlength=len(corpus.lengths)).astype(np.int64))


def drop_unk(corpus: Corpus) -> Corpus:
    """The corpus without `<unk>` tokens (what training sees when subsampling is off)."""
    known = corpus.ids != 0
    sentence = np.repeat(np.arange(len(corpus.lengths)), corpus.lengths)[known]
    return Corpus(corpus.ids[known], np.bincount(sentence, minlength=len(corpus.lengths)).astype(np.int64))


def centers_and_contexts(corpus: Corpus, max_window: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every token of a sentence of ≥ 2 tokens is a center; window size uniform in 1..max_window.

    Contexts never cross sentences; per center they are in ascending position order, as in d2l.
    Returns (centers, ctx_offsets, contexts).
    """
    lengths = corpus.lengths
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    long_enough = np.repeat(lengths >= 2, lengths)
    pos = np.arange(len(corpus.ids)) - np.repeat(starts, lengths)
    sent_len = np.repeat(lengths, lengths)
    centers_at = np.flatnonzero(long_enough)
    pos, sent_len = pos[centers_at], sent_len[centers_at]
    window = rng.integers(1, max_window + 1, size=len(centers_at))
    offsets = np.concatenate([np.arange(-max_window, 0), np.arange(1, max_window + 1)])
    target = pos[:, None] + offsets[None, :]
    valid = (np.abs(offsets)[None, :] <= window[:, None]) & (target >= 0) & (target < sent_len[:, None])
    contexts = corpus.ids[(centers_at[:, None] + offsets[None, :])[valid]]
    ctx_offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
    return corpus.ids[centers_at], ctx_offsets, contexts.astype(np.int32)


def noise_weights(counts: np.ndarray) -> np.ndarray:
    """Sampling distribution of noise words: count^0.75 over the vocabulary, `<unk>` excluded."""
    weights = counts.astype(np.float64) ** 0.75
    weights[0] = 0.0
    return weights / weights.sum()


def negatives(ctx_offsets: np.ndarray, contexts: np.ndarray, weights: np.ndarray, k: int,
              rng: np.random.Generator, max_rounds: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """K noise words per context word; a noise word equal to one of its center's contexts is redrawn.

    Returns (neg_offsets, negatives) with the negatives of center i at neg_offsets[i]:neg_offsets[i+1].
    """
    n_ctx = np.diff(ctx_offsets)
    owner = np.repeat(np.arange(len(n_ctx)), n_ctx * k)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]

    def draw(size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1).astype(np.int32)

    width = int(n_ctx.max()) if len(n_ctx) else 0
    ctx_table = np.full((len(n_ctx), max(width, 1)), -1, dtype=np.int32)
    rows = np.repeat(np.arange(len(n_ctx)), n_ctx)
    ctx_table[rows, np.arange(len(contexts)) - ctx_offsets[rows]] = contexts

    def clashes(candidates: np.ndarray, who: np.ndarray) -> np.ndarray:
        out = np.empty(len(candidates), dtype=bool)
        for lo in range(0, len(candidates), 1 << 20):
            hi = lo + (1 << 20)
            out[lo:hi] = (ctx_table[who[lo:hi]] == candidates[lo:hi, None]).any(axis=1)
        return out

    noise = draw(len(owner))
    todo = np.flatnonzero(clashes(noise, owner))
    for _ in range(max_rounds):
        if len(todo) == 0:
            break
        noise[todo] = draw(len(todo))
        todo = todo[clashes(noise[todo], owner[todo])]
    else:
        raise DataError(
            f"could not draw negatives for {len(todo)} context words in {max_rounds} rounds: their "
            "contexts cover almost the whole vocabulary; use a larger corpus or lower "
            "word2vec.preprocess.min_freq"
        )
    return (ctx_offsets * k).astype(np.int64), noise


def make_samples(corpus: Corpus, counts: np.ndarray, cfg: Word2vecPreprocessParams,
                 rng: np.random.Generator) -> tuple[Corpus, Samples]:
    """Subsample (if enabled), then centers/contexts and negatives: one draw of training examples."""
    kept = subsample(corpus, counts, cfg.subsample_t, rng) if cfg.subsample else drop_unk(corpus)
    centers, ctx_offsets, contexts = centers_and_contexts(kept, cfg.max_window_size, rng)
    neg_offsets, negs = negatives(ctx_offsets, contexts, noise_weights(counts), cfg.num_noise_words, rng)
    return kept, Samples(centers, ctx_offsets, contexts, neg_offsets, negs)


def split_rng(seed: int, split: str, epoch: int = 0) -> np.random.Generator:
    """The random stream of one split (and epoch): independent of every other split and epoch."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_SALT[split], epoch]))


# ----------------------------------------------------------------------------- on-disk format

ARRAYS = ("centers", "ctx_offsets", "contexts", "neg_offsets", "negatives")


def save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def load_samples(folder: Path) -> Samples:
    return Samples(*(np.load(folder / f"{name}.npy", allow_pickle=False) for name in ARRAYS))


def load_corpus(folder: Path) -> Corpus:
    return Corpus(np.load(folder / "ids.npy", allow_pickle=False), np.load(folder / "lengths.npy", allow_pickle=False))


def load_vocab(out_dir: Path) -> Vocab:
    data = read_json(out_dir / "vocab.json")
    return Vocab(data["idx_to_token"], np.asarray(data["counts"], dtype=np.int64))


def _count(ids: np.ndarray, vocab: Vocab, token: str) -> int | None:
    idx = vocab.index(token)
    return None if idx is None else int((ids == idx).sum())


def preprocess(data_dir: Path, out_dir: Path, cfg: Word2vecPreprocessParams, seed: int) -> dict:
    """The preprocess stage: read PTB train/valid, build the vocabulary, draw examples, write arrays.

    Writes (atomically) `vocab.json`, `stats.json`, `{train,valid}/{samples arrays}.npy` and the
    encoded corpora `{train,valid}_corpus/{ids,lengths}.npy` (for per-epoch resampling). Returns stats.
    """
    tokens, lengths = read_tokens(data_dir / SPLIT_FILES["train"])
    vocab = build_vocab(tokens, cfg.min_freq)
    if len(vocab) < 3:
        raise DataError(f"{data_dir}: only {len(vocab) - 1} words occur ≥ min_freq={cfg.min_freq} times; "
                        "lower word2vec.preprocess.min_freq or use a larger corpus")
    stats: dict = {"vocab_size": len(vocab), "min_freq": cfg.min_freq}
    with atomic_path(out_dir) as tmp:
        for split, filename in SPLIT_FILES.items():
            if split != "train":
                tokens, lengths = read_tokens(data_dir / filename)
            corpus = Corpus(vocab.encode(tokens), lengths)
            kept, samples = make_samples(corpus, vocab.counts, cfg, split_rng(seed, split))
            save_arrays(tmp / f"{split}_corpus", {"ids": corpus.ids, "lengths": corpus.lengths})
            save_arrays(tmp / split, {name: getattr(samples, name) for name in ARRAYS})
            if len(samples.contexts) == 0:
                raise DataError(f"{data_dir / filename}: no center/context pairs to train or evaluate on: of its "
                                f"{len(tokens)} tokens, {int((corpus.ids != 0).sum())} are among the {len(vocab) - 1} "
                                f"words seen ≥ min_freq={cfg.min_freq} times in {SPLIT_FILES['train']}, and "
                                f"{len(kept.ids)} remain after subsampling; lower word2vec.preprocess.min_freq "
                                "(or set word2vec.preprocess.subsample: false) or use a larger corpus")
            known = corpus.ids[corpus.ids != 0]
            stats[split] = {
                "sentences": int(len(lengths)),
                "tokens": int(len(tokens)),
                "tokens_before_subsampling": int(len(known)),
                "tokens_after_subsampling": int(len(kept.ids)),
                "the_before": _count(known, vocab, "the"),
                "the_after": _count(kept.ids, vocab, "the"),
                "join_before": _count(known, vocab, "join"),
                "join_after": _count(kept.ids, vocab, "join"),
                "center_words": int(len(samples)),
                "center_context_pairs": int(len(samples.contexts)),
                "negatives": int(len(samples.negatives)),
            }
        (tmp / "vocab.json").write_text(to_json({"idx_to_token": vocab.idx_to_token, "counts": vocab.counts.tolist()}))
        (tmp / "stats.json").write_text(to_json(stats))
    log.info("preprocess: vocab %d, %d train center words, %d pairs", len(vocab),
             stats["train"]["center_words"], stats["train"]["center_context_pairs"])
    return stats
