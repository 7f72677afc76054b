"""A synthetic Penn Tree Bank: `ptb.{train,valid,test}.txt` in the real format, with planted structure.

Sentences are drawn from topic groups: most content words of a sentence come from one group, so
words of a group co-occur and a working skip-gram model puts them next to each other. Function
words follow a Zipf law ("the" is as frequent as in PTB, so subsampling has work to do), "join"
is rare enough to be always kept, and a tail of rare words becomes `<unk>` under min_freq 10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.atomic import atomic_path
from tasks.params import SyntheticPtbParams

# Real words, so probe words and some similarity/analogy pairs are covered offline.
TOPICS: tuple[tuple[str, ...], ...] = (
    ("chip", "microprocessor", "intel", "mips", "computer", "software", "desktop", "hardware"),
    ("stock", "shares", "market", "trading", "investors", "bonds", "prices", "traders"),
    ("baby", "mother", "father", "child", "son", "daughter", "wife", "husband"),
    ("beautiful", "lovely", "pretty", "elegant", "charming", "attractive", "gorgeous", "graceful"),
    ("car", "truck", "engine", "driver", "road", "wheel", "highway", "vehicle"),
    ("doctor", "hospital", "patient", "nurse", "medicine", "surgery", "drug", "clinic"),
    ("king", "queen", "prince", "princess", "palace", "throne", "royal", "crown"),
    ("football", "soccer", "team", "coach", "player", "stadium", "league", "match"),
    ("rain", "weather", "storm", "wind", "snow", "cloud", "forecast", "temperature"),
    ("bank", "loan", "credit", "debt", "interest", "mortgage", "deposit", "lender"),
    ("film", "movie", "actor", "director", "studio", "theater", "cinema", "audience"),
    ("farm", "corn", "wheat", "crop", "harvest", "soil", "farmer", "grain"),
)
FUNCTION_WORDS: tuple[str, ...] = (
    "the", "of", "to", "a", "and", "in", "'s", "that", "for", "is", "$", "n't", "it", "said",
    "on", "at", "by", "as", "from", "with", "was", "he", "be", "are", "have", "but", "will", "has",
)
RARE_WORD = "join"
SPLITS = {"train": 1.0, "valid": 0.08, "test": 0.09}


def planted_groups(cfg: SyntheticPtbParams) -> list[list[str]]:
    """The word groups the generator plants (real words first, then made-up ones)."""
    groups = []
    for g in range(cfg.groups):
        base = TOPICS[g] if g < len(TOPICS) else ()
        words = list(base[: cfg.words_per_group])
        words += [f"topic{g}w{m}" for m in range(len(words), cfg.words_per_group)]
        groups.append(words)
    return groups


def _sentences(cfg: SyntheticPtbParams, n: int, rng: np.random.Generator) -> list[str]:
    groups = planted_groups(cfg)
    n_groups, per_group = len(groups), cfg.words_per_group
    content = np.array([w for group in groups for w in group])
    zipf = 1.0 / np.arange(1, len(FUNCTION_WORDS) + 1)
    zipf /= zipf.sum()
    rare_tail = np.array([f"rare{i}" for i in range(max(50, n // 20))])

    lengths = rng.integers(6, 21, size=n)
    total = int(lengths.sum())
    topic = np.repeat(rng.integers(0, n_groups, size=n), lengths)
    kind = rng.choice(4, size=total, p=[0.47, 0.44, 0.06, 0.03])  # function/topic/noise/rare
    tokens = np.empty(total, dtype=object)
    is_fn, is_topic, is_noise, is_rare = (kind == k for k in range(4))
    tokens[is_fn] = np.array(FUNCTION_WORDS, dtype=object)[
        rng.choice(len(FUNCTION_WORDS), size=int(is_fn.sum()), p=zipf)
    ]
    member = rng.integers(0, per_group, size=total)
    tokens[is_topic] = content[(topic * per_group + member)[is_topic]]
    tokens[is_noise] = content[rng.integers(0, len(content), size=int(is_noise.sum()))]
    rare = rng.integers(0, len(rare_tail) + 1, size=int(is_rare.sum()))
    tokens[is_rare] = np.where(rare == len(rare_tail), "<unk>", rare_tail[np.minimum(rare, len(rare_tail) - 1)])
    # "join": rare but in the vocabulary; from ~120k tokens on (the default is ~390k) f(join) < t,
    # so subsampling always keeps it, as it does in PTB.
    join_at = rng.choice(total, size=max(12, total // 40000), replace=False)
    tokens[join_at] = RARE_WORD
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [" " + " ".join(tokens[a:b]) + " " for a, b in zip(bounds[:-1], bounds[1:])]


def write_synthetic_ptb(target: Path, cfg: SyntheticPtbParams) -> Path:
    """Write `ptb.train.txt`, `ptb.valid.txt`, `ptb.test.txt` into `target` (atomically, as a whole)."""
    rng = np.random.default_rng(cfg.seed)
    with atomic_path(Path(target)) as tmp:
        tmp.mkdir()
        for split, fraction in SPLITS.items():
            lines = _sentences(cfg, max(10, int(cfg.sentences * fraction)), rng)
            (tmp / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")
    return Path(target)
