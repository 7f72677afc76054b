"""word2vec preprocessing (d2l 15.3): vocabulary, subsampling, centers/contexts, negatives, the stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from tasks.atomic import read_json
from tasks.errors import DataError
from tasks.params import SyntheticPtbParams, Word2vecPreprocessParams
from tasks.synthetic.ptb import write_synthetic_ptb
from tasks.word2vec.preprocess import (
    Corpus,
    build_vocab,
    centers_and_contexts,
    negatives,
    noise_weights,
    preprocess,
    read_tokens,
    subsample,
)
from tests.word2vec_fixtures import Preprocessed, tree_bytes

# ----------------------------------------------------------------------------- vocabulary


def _tokens(counts: dict[str, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    tokens = np.array([t for t, c in counts.items() for _ in range(c)], dtype=object)
    return tokens[rng.permutation(len(tokens))]


def test_vocab_pins_unk_at_zero_even_when_tokens_sort_before_it():
    # "$", "'s" and "!" all sort before "<unk>" (and "$" is the most frequent token).
    tokens = _tokens({"$": 50, "'s": 30, "!": 12, "<unk>": 20, "the": 40})
    vocab = build_vocab(tokens, min_freq=10)
    assert vocab.idx_to_token == ["<unk>", "$", "the", "'s", "!"]
    assert vocab.index("<unk>") == 0
    assert vocab.idx_to_token.count("<unk>") == 1


def test_vocab_orders_by_count_descending_then_token():
    tokens = _tokens({"b": 12, "a": 12, "c": 30, "z": 12, "y": 15})
    vocab = build_vocab(tokens, min_freq=10)
    assert vocab.idx_to_token == ["<unk>", "c", "y", "a", "b", "z"]
    assert vocab.counts.tolist() == [0, 30, 15, 12, 12, 12]


def test_tokens_below_min_freq_map_to_unk_and_are_counted_in_counts0():
    tokens = _tokens({"frequent": 10, "rare": 9, "rarer": 1, "<unk>": 4, "other": 11})
    vocab = build_vocab(tokens, min_freq=10)
    assert vocab.idx_to_token == ["<unk>", "other", "frequent"]
    assert vocab.counts.tolist() == [9 + 1 + 4, 11, 10]
    assert vocab.counts.sum() == len(tokens)
    encoded = vocab.encode(np.array(["rare", "rarer", "<unk>", "frequent", "other", "never-seen"], dtype=object))
    assert encoded.tolist() == [0, 0, 0, 2, 1, 0]
    assert encoded.dtype == np.int32


def test_read_tokens_skips_blank_lines_and_splits_on_whitespace(tmp_path: Path):
    path = tmp_path / "ptb.train.txt"
    path.write_text(" a b c \n\n d  e \n f\n")
    tokens, lengths = read_tokens(path)
    assert tokens.tolist() == ["a", "b", "c", "d", "e", "f"]
    assert lengths.tolist() == [3, 2, 1]


# ----------------------------------------------------------------------------- subsampling

T = 1e-4
THE, N_UNK = 1, 3000
# ids: 1 "the" (f = 0.1), 2..11 rare (f = 5e-5), 12 exactly at the threshold (f = t), 13.. filler (f = 0.01).
COUNTS = np.array([N_UNK, 10_000] + [5] * 10 + [10] + [1000] * 89 + [940], dtype=np.int64)
assert COUNTS[1:].sum() == 100_000


def _corpus_of(counts: np.ndarray, rng: np.random.Generator) -> Corpus:
    ids = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    ids = ids[rng.permutation(len(ids))]
    lengths = []
    left = len(ids)
    while left:
        lengths.append(min(left, int(rng.integers(0, 30))))
        left -= lengths[-1]
    return Corpus(ids, np.array(lengths, dtype=np.int64))


@pytest.fixture(scope="module")
def subsampled() -> tuple[Corpus, Corpus]:
    rng = np.random.default_rng(0)
    corpus = _corpus_of(COUNTS, rng)
    return corpus, subsample(corpus, COUNTS, T, np.random.default_rng(123))


def test_subsampling_keeps_every_occurrence_of_words_with_frequency_at_most_t(subsampled):
    _, kept = subsampled
    kept_counts = np.bincount(kept.ids, minlength=len(COUNTS))
    assert kept_counts[2:12].tolist() == [5] * 10  # f = 5e-5 < t
    assert kept_counts[12] == 10  # f == t exactly: keep probability 1


def test_subsampling_keeps_a_very_frequent_word_at_rate_sqrt_t_over_f(subsampled):
    _, kept = subsampled
    n, p = COUNTS[THE], np.sqrt(T / 0.1)
    expected, std = n * p, np.sqrt(n * p * (1 - p))
    kept_the = int((kept.ids == THE).sum())
    assert abs(kept_the - expected) < 4 * std, (kept_the, expected, std)
    # And the filler words (f = 0.01) at sqrt(1e-4 / 0.01) = 0.1 overall.
    filler = COUNTS[13:-1].sum()
    kept_filler = int(np.isin(kept.ids, np.arange(13, len(COUNTS) - 1)).sum())
    assert abs(kept_filler - 0.1 * filler) < 4 * np.sqrt(filler * 0.1 * 0.9)


def test_subsampling_removes_every_unk_token(subsampled):
    corpus, kept = subsampled
    assert (corpus.ids == 0).sum() == N_UNK
    assert not (kept.ids == 0).any()


def test_subsampled_sentence_lengths_sum_to_the_kept_tokens_and_keep_sentence_boundaries(subsampled):
    corpus, kept = subsampled
    assert kept.lengths.sum() == len(kept.ids)
    assert len(kept.lengths) == len(corpus.lengths)
    assert (kept.lengths <= corpus.lengths).all()
    # Kept tokens of each sentence are a subsequence of that sentence.
    starts, kstarts = np.cumsum(corpus.lengths) - corpus.lengths, np.cumsum(kept.lengths) - kept.lengths
    for s in range(0, len(corpus.lengths), 97):
        sentence = corpus.ids[starts[s]:starts[s] + corpus.lengths[s]].tolist()
        it = iter(sentence)
        assert all(token in it for token in kept.ids[kstarts[s]:kstarts[s] + kept.lengths[s]].tolist())


# ----------------------------------------------------------------------------- centers and contexts


def _unique_token_corpus(lengths: list[int]) -> Corpus:
    """Every token id is its position + 1: each id identifies its sentence and position."""
    lengths_arr = np.array(lengths, dtype=np.int64)
    return Corpus(np.arange(1, lengths_arr.sum() + 1, dtype=np.int32), lengths_arr)


LENGTHS = [1, 12, 0, 2, 1, 7, 30, 3, 1, 15, 5, 0, 1, 11] * 20


@pytest.fixture(scope="module")
def windows():
    corpus = _unique_token_corpus(LENGTHS)
    centers, offsets, contexts = centers_and_contexts(corpus, 5, np.random.default_rng(7))
    sentence_of = np.repeat(np.arange(len(LENGTHS)), LENGTHS)  # by position
    position_in = np.arange(len(corpus.ids)) - np.repeat(np.cumsum(LENGTHS) - LENGTHS, LENGTHS)
    return corpus, centers, offsets, contexts, sentence_of, position_in


def test_every_token_of_sentences_with_two_or_more_tokens_is_a_center_and_others_are_not(windows):
    corpus, centers, offsets, contexts, sentence_of, _ = windows
    lengths = np.array(LENGTHS)
    expected = corpus.ids[np.repeat(lengths >= 2, lengths)]
    assert centers.tolist() == expected.tolist()
    singletons = corpus.ids[np.repeat(lengths == 1, lengths)]
    assert len(singletons) == 80
    assert not np.isin(singletons, centers).any()
    assert not np.isin(singletons, contexts).any()
    assert len(offsets) == len(centers) + 1
    assert (np.diff(offsets) >= 1).all()  # every center has at least its neighbour


def test_contexts_never_cross_sentences_and_stay_within_the_window(windows):
    _, centers, offsets, contexts, sentence_of, position_in = windows
    for i, center in enumerate(centers):
        ctx = contexts[offsets[i]:offsets[i + 1]]
        c_pos, x_pos = center - 1, ctx - 1
        assert (sentence_of[x_pos] == sentence_of[c_pos]).all()
        distance = np.abs(position_in[x_pos] - position_in[c_pos])
        assert ((distance >= 1) & (distance <= 5)).all()


def test_contexts_are_the_whole_symmetric_window_in_ascending_position_order(windows):
    _, centers, offsets, contexts, sentence_of, position_in = windows
    for i, center in enumerate(centers):
        ctx = (contexts[offsets[i]:offsets[i + 1]] - 1).tolist()
        c = int(center) - 1
        w = max(abs(x - c) for x in ctx)
        same = np.flatnonzero(sentence_of == sentence_of[c])
        expected = [int(q) for q in same if 0 < abs(q - c) <= w]
        assert ctx == expected


def test_window_sizes_are_uniform_over_one_to_max_window():
    corpus = _unique_token_corpus([1000] * 20)
    centers, offsets, _ = centers_and_contexts(corpus, 5, np.random.default_rng(3))
    position = (centers - 1) % 1000
    interior = (position >= 5) & (position < 995)
    sizes = np.diff(offsets)[interior] // 2
    observed = np.bincount(sizes, minlength=6)[1:]
    assert observed.sum() == interior.sum()
    assert chisquare(observed).pvalue > 1e-3, observed


def test_max_window_of_one_gives_exactly_the_neighbours():
    corpus = Corpus(np.array([5, 6, 7, 8, 9, 3, 4], dtype=np.int32), np.array([4, 1, 2], dtype=np.int64))
    centers, offsets, contexts = centers_and_contexts(corpus, 1, np.random.default_rng(0))
    per_center = [contexts[offsets[i]:offsets[i + 1]].tolist() for i in range(len(centers))]
    assert centers.tolist() == [5, 6, 7, 8, 3, 4]
    assert per_center == [[6], [5, 7], [6, 8], [7], [4], [3]]


# ----------------------------------------------------------------------------- negatives


@pytest.fixture(scope="module")
def small_ptb(tmp_path_factory) -> Preprocessed:
    return Preprocessed(tmp_path_factory.mktemp("ptb2000"), sentences=2000)


def test_k_negatives_per_context_word(small_ptb: Preprocessed):
    samples, k = small_ptb.samples, small_ptb.pre_cfg.num_noise_words
    assert k == 5
    assert samples.neg_offsets.tolist() == (samples.ctx_offsets * k).tolist()
    assert len(samples.negatives) == k * len(samples.contexts)


def test_no_negative_is_one_of_its_centers_contexts(small_ptb: Preprocessed):
    s = small_ptb.samples
    for i in range(len(s)):
        ctx = set(s.contexts[s.ctx_offsets[i]:s.ctx_offsets[i + 1]].tolist())
        negs = set(s.negatives[s.neg_offsets[i]:s.neg_offsets[i + 1]].tolist())
        assert not ctx & negs, i


def test_clashing_negatives_are_redrawn_even_when_most_draws_clash():
    # Words 1 and 2 (71% of the noise weight) are every center's contexts: only word 3 is a valid negative.
    weights = noise_weights(np.array([100, 10**4, 10, 3000], dtype=np.int64))
    assert weights[1] + weights[2] > 0.7
    ctx_offsets = np.arange(0, 2001, 2, dtype=np.int64)
    contexts = np.tile(np.array([1, 2], dtype=np.int32), 1000)
    _, negs = negatives(ctx_offsets, contexts, weights, 5, np.random.default_rng(0))
    assert len(negs) == 10_000
    assert (negs == 3).all()


def test_negatives_that_cannot_avoid_the_contexts_raise_data_error():
    weights = noise_weights(np.array([1, 10, 10], dtype=np.int64))
    with pytest.raises(DataError, match="could not draw negatives"):
        negatives(np.array([0, 2]), np.array([1, 2], dtype=np.int32), weights, 5, np.random.default_rng(0))


def test_unk_is_never_drawn_as_a_negative(small_ptb: Preprocessed):
    assert small_ptb.vocab.counts[0] > 0  # <unk> has a count, so only the explicit exclusion keeps it out
    assert not (small_ptb.samples.negatives == 0).any()
    assert not (small_ptb.valid.negatives == 0).any()


def test_negatives_follow_count_to_the_power_three_quarters():
    counts = np.array([5000, 4000, 2000, 1000, 500, 250, 100, 50, 20, 10], dtype=np.int64)
    n_centers = 40_000
    ctx_offsets = np.arange(n_centers + 1, dtype=np.int64)
    contexts = np.ones(n_centers, dtype=np.int32)  # word 1 is every center's only context: never a negative
    _, negs = negatives(ctx_offsets, contexts, noise_weights(counts), 5, np.random.default_rng(11))
    observed = np.bincount(negs, minlength=len(counts))
    assert observed[0] == 0 and observed[1] == 0
    expected_p = counts.astype(float) ** 0.75
    expected_p[:2] = 0
    expected_p /= expected_p.sum()
    expected = expected_p[2:] * len(negs)
    assert chisquare(observed[2:], expected).pvalue > 1e-3
    frequent = expected > 5000
    assert frequent.sum() >= 4
    assert np.max(np.abs(observed[2:][frequent] / expected[frequent] - 1)) < 0.03


def test_noise_weights_are_count_to_075_without_unk():
    weights = noise_weights(np.array([99, 16, 1], dtype=np.int64))
    assert weights.tolist() == pytest.approx([0.0, 8 / 9, 1 / 9])


# ----------------------------------------------------------------------------- the stage


def test_preprocess_is_byte_identical_for_the_same_seed(tmp_path: Path, small_ptb: Preprocessed):
    cfg = Word2vecPreprocessParams()
    preprocess(small_ptb.data_dir, tmp_path / "a", cfg, seed=0)
    preprocess(small_ptb.data_dir, tmp_path / "b", cfg, seed=0)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert set(a) == {"vocab.json", "stats.json"} | {
        f"{split}/{name}.npy" for split in ("train", "valid")
        for name in ("centers", "ctx_offsets", "contexts", "neg_offsets", "negatives")
    } | {f"{split}_corpus/{name}.npy" for split in ("train", "valid") for name in ("ids", "lengths")}
    assert a == b
    assert a == tree_bytes(small_ptb.out_dir)  # the module fixture used seed 0 too


def test_preprocess_with_another_seed_draws_other_examples(tmp_path: Path, small_ptb: Preprocessed):
    preprocess(small_ptb.data_dir, tmp_path / "other", Word2vecPreprocessParams(), seed=1)
    a, b = tree_bytes(small_ptb.out_dir), tree_bytes(tmp_path / "other")
    assert a["vocab.json"] == b["vocab.json"]  # the vocabulary does not depend on the seed
    assert a["train_corpus/ids.npy"] == b["train_corpus/ids.npy"]
    for name in ("centers", "contexts", "negatives"):
        assert a[f"train/{name}.npy"] != b[f"train/{name}.npy"], name
        assert a[f"valid/{name}.npy"] != b[f"valid/{name}.npy"], name


def test_train_and_valid_draws_are_independent(small_ptb: Preprocessed):
    # Same seed, different split salt: the valid examples are not a prefix-copy of the train stream.
    s, v = small_ptb.samples, small_ptb.valid
    n = min(len(s.negatives), len(v.negatives))
    assert not np.array_equal(s.negatives[:n], v.negatives[:n])


def test_synthetic_ptb_is_deterministic_in_its_seed(tmp_path: Path):
    write_synthetic_ptb(tmp_path / "a", SyntheticPtbParams(sentences=50, seed=3))
    write_synthetic_ptb(tmp_path / "b", SyntheticPtbParams(sentences=50, seed=3))
    write_synthetic_ptb(tmp_path / "c", SyntheticPtbParams(sentences=50, seed=4))
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert tree_bytes(tmp_path / "a")["ptb.train.txt"] != tree_bytes(tmp_path / "c")["ptb.train.txt"]
    assert sorted(tree_bytes(tmp_path / "a")) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    assert len((tmp_path / "a" / "ptb.train.txt").read_text().splitlines()) == 50


@pytest.fixture(scope="module")
def ptb_12000(tmp_path_factory) -> Preprocessed:
    # 12000 sentences: enough tokens that "join" (12 occurrences) has f(join) < t. With 2000 it does not.
    return Preprocessed(tmp_path_factory.mktemp("ptb12000"), sentences=12000)


def test_stats_agree_with_the_written_arrays(ptb_12000: Preprocessed):
    stats = read_json(ptb_12000.out_dir / "stats.json")
    assert stats == ptb_12000.stats
    assert stats["vocab_size"] == len(ptb_12000.vocab)
    assert stats["min_freq"] == 10
    for split, samples in (("train", ptb_12000.samples), ("valid", ptb_12000.valid)):
        s = stats[split]
        corpus_dir = ptb_12000.out_dir / f"{split}_corpus"
        ids, lengths = np.load(corpus_dir / "ids.npy"), np.load(corpus_dir / "lengths.npy")
        assert s["center_words"] == len(samples) == len(np.load(ptb_12000.out_dir / split / "centers.npy"))
        assert s["center_context_pairs"] == len(samples.contexts) == samples.ctx_offsets[-1]
        assert s["negatives"] == 5 * s["center_context_pairs"]
        assert s["tokens"] == len(ids) == lengths.sum()
        assert s["sentences"] == len(lengths)
        assert s["tokens_before_subsampling"] == int((ids != 0).sum())
        assert s["center_words"] <= s["tokens_after_subsampling"] < s["tokens_before_subsampling"]


def test_stats_show_the_subsampled_and_the_rare_word(ptb_12000: Preprocessed):
    vocab, train = ptb_12000.vocab, ptb_12000.stats["train"]
    f_join = vocab.counts[vocab.index("join")] / vocab.counts[1:].sum()
    assert f_join <= 1e-4  # precondition: "join" is rare enough to be always kept
    assert train["join_before"] == train["join_after"] == 12
    assert train["the_after"] < train["the_before"] / 5
    f_the = vocab.counts[vocab.index("the")] / vocab.counts[1:].sum()
    n, p = train["the_before"], np.sqrt(1e-4 / f_the)
    assert abs(train["the_after"] - n * p) < 4 * np.sqrt(n * p * (1 - p))
    assert train["tokens_after_subsampling"] < train["tokens_before_subsampling"] / 4


def test_missing_train_file_raises_data_error_naming_it(tmp_path: Path):
    (tmp_path / "ptb").mkdir()
    with pytest.raises(DataError, match=r"ptb\.train\.txt: file not found"):
        preprocess(tmp_path / "ptb", tmp_path / "out", Word2vecPreprocessParams(), 0)
    assert not (tmp_path / "out").exists()


def test_missing_valid_file_raises_data_error_and_writes_nothing(tmp_path: Path):
    write_synthetic_ptb(tmp_path / "ptb", SyntheticPtbParams(sentences=200))
    (tmp_path / "ptb" / "ptb.valid.txt").unlink()
    with pytest.raises(DataError, match=r"ptb\.valid\.txt: file not found"):
        preprocess(tmp_path / "ptb", tmp_path / "out", Word2vecPreprocessParams(), 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ptb"]  # no partial output, no temp folder


def test_too_small_vocabulary_is_a_data_error(tmp_path: Path):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.train.txt").write_text(" a b c \n a b \n")
    with pytest.raises(DataError, match="min_freq=10"):
        preprocess(tmp_path / "ptb", tmp_path / "out", Word2vecPreprocessParams(), 0)
