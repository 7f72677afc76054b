"""word2vec evaluation on hand-made embeddings: neighbours, similarity ρ, analogies, held-out loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.skipgram import SkipGram, masked_sigmoid_bce
from tasks.errors import DataError
from tasks.word2vec.evaluate import (
    Pairs,
    analogy_accuracy,
    heldout_loss,
    nearest,
    normalise,
    read_analogies,
    read_pairs,
    similarity_spearman,
)
from tasks.word2vec.preprocess import Samples
from tasks.word2vec.train import batchify
from tests.word2vec_fixtures import examples_of, make_vocab, random_samples


def _at_angles(degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# ----------------------------------------------------------------------------- nearest neighbours


@pytest.fixture
def circle():
    vocab = make_vocab(["<unk>", "a", "b", "c", "d", "e"])
    # <unk> points exactly where "a" does: only its explicit exclusion keeps it out of a's neighbours.
    unit = _at_angles([0, 0, 10, 50, 30, 180])
    return vocab, unit


def test_nearest_orders_by_cosine_and_excludes_the_query_and_unk(circle):
    vocab, unit = circle
    before = unit.copy()
    result = nearest(unit, vocab, "a", 3)
    assert [word for word, _ in result] == ["b", "d", "c"]
    assert [cos for _, cos in result] == [round(float(np.cos(np.deg2rad(x))), 4) for x in (10, 30, 50)]
    assert np.array_equal(unit, before)  # the embeddings are not modified
    assert [word for word, _ in nearest(unit, vocab, "e", 2)] == ["c", "d"]
    assert [word for word, _ in nearest(unit, vocab, "a", 1)] == ["b"]


def test_nearest_of_an_unknown_word_or_unk_is_none(circle):
    vocab, unit = circle
    assert nearest(unit, vocab, "zebra", 3) is None
    assert nearest(unit, vocab, "<unk>", 3) is None


def test_normalise_gives_unit_rows_and_leaves_zero_rows_finite():
    unit = normalise(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    assert unit.tolist() == [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]]


# ----------------------------------------------------------------------------- similarity


def test_similarity_spearman_is_one_for_cosines_monotone_in_the_scores():
    vocab = make_vocab(["<unk>", "w0", "w1", "w2", "w3", "w4"])
    unit = _at_angles([0, 15, 40, 80, 170])
    unit = np.vstack([[1.0, 0.0], unit])  # row 0 is <unk>
    pairs = Pairs(
        words_a=["w0", "w0", "w0", "w0", "w1", "zebra", "w2"],
        words_b=["w1", "w2", "w3", "w4", "w4", "w0", "<unk>"],
        scores=np.array([9.0, 7.5, 3.0, 0.5, 1.0, 10.0, 10.0]),
    )
    # Angles between covered pairs: 15, 40, 80, 170, 155 degrees; scores 9, 7.5, 3, 0.5, 1.
    result = similarity_spearman(unit, vocab, pairs)
    assert result == {"spearman": 1.0, "pairs": 5, "total": 7}

    reversed_scores = Pairs(pairs.words_a, pairs.words_b, -pairs.scores)
    assert similarity_spearman(unit, vocab, reversed_scores)["spearman"] == -1.0


def test_similarity_spearman_needs_three_covered_pairs():
    vocab = make_vocab(["<unk>", "w0", "w1"])
    unit = np.vstack([[1.0, 0.0], _at_angles([0, 30])])
    pairs = Pairs(["w0", "w0", "x"], ["w1", "w0", "w1"], np.array([1.0, 2.0, 3.0]))
    assert similarity_spearman(unit, vocab, pairs) == {"spearman": None, "pairs": 2, "total": 3}


def test_read_pairs_skips_comments_and_blank_lines_and_lowercases(tmp_path: Path):
    path = tmp_path / "pairs.tsv"
    path.write_text("# Word 1\tWord 2\tHuman (mean)\n\nTiger\tcat\t7.35\nbook\tpaper\t7.46\n# end\n")
    pairs = read_pairs(path)
    assert pairs.words_a == ["tiger", "book"]
    assert pairs.words_b == ["cat", "paper"]
    assert pairs.scores.tolist() == [7.35, 7.46]


@pytest.mark.parametrize("bad", ["tiger\tcat", "tiger\tcat\thigh", "tiger cat 7.35"])
def test_read_pairs_malformed_line_raises_data_error_with_file_and_line(tmp_path: Path, bad: str):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"# header\ntiger\tcat\t7.35\n{bad}\n")
    with pytest.raises(DataError) as info:
        read_pairs(path)
    assert f"{path}:3:" in str(info.value)
    assert repr(bad) in str(info.value)


def test_read_pairs_missing_file_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="similarity file not found"):
        read_pairs(tmp_path / "absent.tsv")


def test_gensim_wordsim353_copy_parses():
    from gensim.test.utils import datapath

    pairs = read_pairs(Path(datapath("wordsim353.tsv")))
    assert len(pairs.scores) == 353
    assert 0 <= pairs.scores.min() and pairs.scores.max() <= 10


# ----------------------------------------------------------------------------- analogies


def _analogy_space():
    """man:king :: woman:queen and paris:france :: berlin:germany hold exactly on unit vectors
    (b - a + c = d with |a| = |b| = |c| = |d| = 1), plus distractors."""
    e = np.eye(10)
    words = {
        "man": 0.8 * e[1] + 0.6 * e[2], "king": 0.8 * e[1] - 0.6 * e[2],
        "woman": 0.8 * e[3] + 0.6 * e[2], "queen": 0.8 * e[3] - 0.6 * e[2],
        "paris": 0.8 * e[4] + 0.6 * e[5], "france": 0.8 * e[4] - 0.6 * e[5],
        "berlin": 0.8 * e[6] + 0.6 * e[5], "germany": 0.8 * e[6] - 0.6 * e[5],
        "prince": 0.6 * e[3] - 0.8 * e[2], "noise": e[7], "other": e[8],
    }
    tokens = ["<unk>", *words]
    unit = np.vstack([words["queen"], *words.values()])  # <unk> equals queen: must be excluded
    return make_vocab(tokens), normalise(unit)


def test_analogy_accuracy_is_one_for_exact_parallelograms_and_skips_oov_questions():
    vocab, unit = _analogy_space()
    questions = [
        ("man", "king", "woman", "queen"),
        ("paris", "france", "berlin", "germany"),
        ("man", "king", "woman", "empress"),  # OOV answer: not counted
        ("boy", "prince", "woman", "queen"),  # OOV question word: not counted
    ]
    assert analogy_accuracy(unit, vocab, questions) == {"accuracy": 1.0, "questions": 2, "total": 4}


def test_analogy_accuracy_counts_wrong_answers_and_never_answers_a_question_word():
    vocab, unit = _analogy_space()
    questions = [
        ("man", "king", "woman", "queen"),
        ("man", "king", "woman", "prince"),  # 3CosAdd answers queen
        ("paris", "france", "berlin", "germany"),
    ]
    assert analogy_accuracy(unit, vocab, questions, chunk=2) == {"accuracy": 0.666667, "questions": 3, "total": 3}
    # b - a + c is closest to c itself here; excluding a, b, c forces another answer.
    trivial = [("noise", "noise", "other", "other")]
    assert analogy_accuracy(unit, vocab, trivial)["accuracy"] == 0.0


def test_analogy_accuracy_without_covered_questions_is_none():
    vocab, unit = _analogy_space()
    assert analogy_accuracy(unit, vocab, []) == {"accuracy": None, "questions": 0, "total": 0}
    assert analogy_accuracy(unit, vocab, [("a", "b", "c", "d")]) == {"accuracy": None, "questions": 0, "total": 1}


def test_read_analogies_skips_section_headers_and_lowercases(tmp_path: Path):
    path = tmp_path / "questions-words.txt"
    path.write_text(": capital-common-countries\nAthens Greece Baghdad Iraq\n\n: family\nboy girl brother sister\n")
    assert read_analogies(path) == [("athens", "greece", "baghdad", "iraq"), ("boy", "girl", "brother", "sister")]


def test_read_analogies_malformed_line_raises_data_error_with_file_and_line(tmp_path: Path):
    path = tmp_path / "questions-words.txt"
    path.write_text(": family\nboy girl brother sister\nboy girl brother\n")
    with pytest.raises(DataError, match=rf"{path}:3: expected four words"):
        read_analogies(path)


# ----------------------------------------------------------------------------- held-out loss


def _book_mean_loss(model: SkipGram, samples: Samples) -> float:
    center, words, mask, labels = batchify(examples_of(samples, np.arange(len(samples))))
    with torch.no_grad():
        return float(masked_sigmoid_bce(model(center, words).reshape(labels.shape), labels, mask).mean())


@pytest.mark.parametrize("batch_size", [4096, 7, 1])
def test_heldout_loss_is_the_mean_per_example_book_loss(batch_size: int):
    samples = random_samples(np.random.default_rng(5), 50, 40, k=5, max_ctx=6)
    torch.manual_seed(0)
    model = SkipGram(40, 8)
    with torch.no_grad():
        model.embed_v.weight.mul_(4)
        model.embed_u.weight.mul_(4)
    expected = _book_mean_loss(model, samples)
    assert abs(expected - np.log(2)) > 0.1  # the logits are not all near 0
    assert heldout_loss(model, samples, batch_size=batch_size) == pytest.approx(expected, abs=1e-5)


def test_heldout_loss_of_no_examples_is_none():
    empty = Samples(*(np.zeros(0, dtype=np.int32) if i % 2 == 0 else np.zeros(1, dtype=np.int64)
                      for i in range(5)))
    assert len(empty) == 0
    assert heldout_loss(SkipGram(5, 2), empty) is None
