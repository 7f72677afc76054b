"""word2vec evaluation: nearest neighbours, word-similarity Spearman ρ, analogy accuracy, held-out loss.

Pure functions on an embedding matrix and a vocabulary; similarity and analogy sets are read from
the files params point at (by default the copies of gensim's bundled test data under data/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from models.skipgram import SkipGram
from tasks.errors import DataError
from tasks.word2vec.preprocess import Samples, Vocab
from tasks.word2vec.train import flatten_examples, ragged_loss


def normalise(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-9)


def nearest(unit: np.ndarray, vocab: Vocab, word: str, k: int) -> list[tuple[str, float]] | None:
    """The k words with the highest cosine similarity to `word` (itself and `<unk>` excluded),
    as the book's `get_similar_tokens`; None when `word` is not in the vocabulary."""
    idx = vocab.index(word)
    if idx is None or idx == 0:
        return None
    cos = unit @ unit[idx]
    cos[[0, idx]] = -np.inf
    top = np.argsort(-cos, kind="stable")[:k]
    return [(vocab.idx_to_token[i], round(float(cos[i]), 4)) for i in top]


@dataclass(frozen=True)
class Pairs:
    words_a: list[str]
    words_b: list[str]
    scores: np.ndarray


def read_pairs(path: Path) -> Pairs:
    """A word-similarity file: `word1<TAB>word2<TAB>score` lines, `#` comments (WordSim-353, SimLex-999)."""
    if not path.is_file():
        raise DataError(f"{path}: similarity file not found; run the acquire step, or point "
                        "word2vec.evaluate.wordsim353/simlex999 in params.yaml at your copy")
    a, b, scores = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            a.append(fields[0].lower())
            b.append(fields[1].lower())
            scores.append(float(fields[2]))
        except (IndexError, ValueError):
            raise DataError(f"{path}:{number}: expected 'word1<TAB>word2<TAB>score', found {line!r}") from None
    return Pairs(a, b, np.array(scores))


def similarity_spearman(unit: np.ndarray, vocab: Vocab, pairs: Pairs) -> dict[str, float | int | None]:
    """Spearman ρ between human scores and cosine similarity, over the pairs whose words are in the vocabulary."""
    ia = vocab.encode(np.array(pairs.words_a, dtype=object))
    ib = vocab.encode(np.array(pairs.words_b, dtype=object))
    covered = (ia != 0) & (ib != 0)
    rho = None
    if covered.sum() >= 3:
        cos = (unit[ia[covered]] * unit[ib[covered]]).sum(axis=1)
        rho = float(spearmanr(pairs.scores[covered], cos).statistic)
        rho = None if np.isnan(rho) else round(rho, 6)
    return {"spearman": rho, "pairs": int(covered.sum()), "total": len(pairs.scores)}


def read_analogies(path: Path) -> list[tuple[str, str, str, str]]:
    """Google's `questions-words.txt`: `: section` headers, then `a b c d` (a:b :: c:d), lower-cased."""
    if not path.is_file():
        raise DataError(f"{path}: analogy file not found; run the acquire step, or point "
                        "word2vec.evaluate.analogies in params.yaml at your copy")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith(":"):
            continue
        words = line.lower().split()
        if len(words) != 4:
            raise DataError(f"{path}:{number}: expected four words 'a b c d', found {line!r}")
        questions.append(tuple(words))
    return questions


def analogy_accuracy(unit: np.ndarray, vocab: Vocab, questions: list[tuple[str, str, str, str]],
                     chunk: int = 1024) -> dict[str, float | int | None]:
    """3CosAdd: d = argmax cos(x, b - a + c) over the vocabulary minus a, b, c and `<unk>`;
    accuracy over the questions whose four words are in the vocabulary."""
    ids = np.zeros((0, 4), dtype=np.int32)
    if questions:
        ids = vocab.encode(np.array(questions, dtype=object).reshape(-1)).reshape(-1, 4)
    ids = ids[(ids != 0).all(axis=1)]
    correct = 0
    for lo in range(0, len(ids), chunk):
        q = ids[lo:lo + chunk]
        target = normalise(unit[q[:, 1]] - unit[q[:, 0]] + unit[q[:, 2]])
        scores = target @ unit.T
        rows = np.arange(len(q))[:, None]
        scores[rows, q[:, :3]] = -np.inf
        scores[:, 0] = -np.inf
        correct += int((scores.argmax(axis=1) == q[:, 3]).sum())
    accuracy = round(correct / len(ids), 6) if len(ids) else None
    return {"accuracy": accuracy, "questions": int(len(ids)), "total": len(questions)}


@torch.inference_mode()
def heldout_loss(model: SkipGram, samples: Samples, batch_size: int = 4096) -> float | None:
    """Mean per-example loss (the training objective) on held-out examples, in their stored order."""
    if len(samples) == 0:
        return None
    model.eval()
    entries = flatten_examples(samples, np.arange(len(samples))).to(next(model.parameters()).device)
    device = entries.offsets.device
    total = sum(float(ragged_loss(model, entries.select(torch.arange(first, min(first + batch_size, len(entries)),
                                                                     device=device))))
                for first in range(0, len(entries), batch_size))
    return round(total / len(samples), 6)
