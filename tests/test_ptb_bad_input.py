"""Bad PTB input ends in one `error:` line naming the file (and the params key to change), exit 2,
never a traceback; as the user meets it, through `python -m tasks word2vec ...`."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PTB_ZIP = REPO.parent / "shared" / "data" / "ptb.zip"


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tasks", "word2vec", *args, "--params", str(root / "params.yaml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and done.stderr.rstrip().endswith(errors[0]), done.stderr
    return errors[0]


def real_ptb(root: Path) -> Path:
    """The book's PTB files in `root/data/ptb`, as acquired."""
    with zipfile.ZipFile(PTB_ZIP) as archive:
        archive.extractall(root / "data")
    return root / "data" / "ptb"


@pytest.mark.parametrize("split", ["ptb.train.txt", "ptb.valid.txt"])
def test_an_empty_ptb_file_is_one_error_naming_it(tmp_path: Path, split: str) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    (real_ptb(tmp_path) / split).write_text("")
    line = one_error_line(cli(tmp_path, "preprocess"))
    assert line.startswith(f"error: {tmp_path / 'data/ptb' / split}: no tokens found")
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts/word2vec").iterdir())


def test_non_utf8_bytes_are_one_error_naming_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    train = real_ptb(tmp_path) / "ptb.train.txt"
    train.write_bytes(b" the cat \n caf\xe9 au lait \n")
    line = one_error_line(cli(tmp_path, "preprocess"))
    assert line == (f"error: {train}: not UTF-8 text (byte b'\\xe9' at offset 14, line 2); PTB files are plain "
                    "text: re-save it as UTF-8 or acquire it again")


def test_non_utf8_bytes_in_a_local_source_are_refused_at_acquire_and_data_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "mine"
    source.mkdir()
    (source / "ptb.train.txt").write_bytes(b" a b \n \xff\xfe c \n")
    (source / "ptb.valid.txt").write_text(" a b \n")
    (tmp_path / "params.yaml").write_text(f"word2vec:\n  data:\n    source: local\n    local_path: {source}\n")
    previous = real_ptb(tmp_path)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    line = one_error_line(cli(tmp_path, "acquire"))
    assert line.startswith(f"error: the data from {source} for {previous} is refused ({previous} is left as it "
                           "was): ptb.train.txt: not UTF-8 text (byte b'\\xff' at offset 7, line 2)")
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before


def test_a_vocabulary_too_small_for_contexts_is_refused_at_preprocess_naming_min_freq(tmp_path: Path) -> None:
    # 30 words, 400 sentences: with min_freq 150 a few words survive, subsampling keeps some of them in
    # train, and the one valid sentence keeps none: no held-out pairs, so training would end in a NaN loss.
    words = [f"w{i}" for i in range(30)]
    ptb = tmp_path / "data/ptb"
    ptb.mkdir(parents=True)
    (ptb / "ptb.train.txt").write_text("".join(
        " " + " ".join(words[(7 * s + 3 * k) % 30 if k % 2 else (s + k) % 5] for k in range(12)) + " \n"
        for s in range(400)))
    (ptb / "ptb.valid.txt").write_text(" " + " ".join(words[10:22]) + " \n")
    (tmp_path / "params.yaml").write_text("word2vec:\n  preprocess:\n    min_freq: 150\n")
    line = one_error_line(cli(tmp_path, "preprocess"))
    assert line.startswith(f"error: {ptb / 'ptb.valid.txt'}: no center/context pairs to train or evaluate on")
    assert "lower word2vec.preprocess.min_freq" in line
    assert not (tmp_path / "artifacts/word2vec/preprocess").exists()


def test_a_vocabulary_of_one_word_is_refused_naming_min_freq(tmp_path: Path) -> None:
    ptb = tmp_path / "data/ptb"
    ptb.mkdir(parents=True)
    (ptb / "ptb.train.txt").write_text(" a a a b \n" * 20)
    (ptb / "ptb.valid.txt").write_text(" a a \n")
    (tmp_path / "params.yaml").write_text("word2vec:\n  preprocess:\n    min_freq: 30\n")
    line = one_error_line(cli(tmp_path, "preprocess"))
    assert line == (f"error: {ptb}: only 1 words occur ≥ min_freq=30 times; lower word2vec.preprocess.min_freq or "
                    "use a larger corpus")
