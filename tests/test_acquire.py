"""Acquisition from each source into the real layout: the book's mirror (a local HTTP server on
127.0.0.1 stands in for it), a local directory or archive, and the synthetic generator."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from tasks.errors import DataError, DownloadError
from tasks.params import parse_params
from tasks.synthetic.ptb import planted_groups
from tasks.word2vec.stages import acquire

PTB = {"ptb/ptb.train.txt": " a b c \n d e f \n", "ptb/ptb.valid.txt": " a b \n", "ptb/ptb.test.txt": " c d \n"}


def ptb_zip(path: Path, files: dict[str, str] = PTB) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def params_for(root: Path, **data: object):
    (root / "params.yaml").write_text("{}\n")
    return parse_params({"word2vec": {"data": data}}, root / "params.yaml")


def test_mirror_source_downloads_verifies_and_installs_the_real_layout(server, tmp_path: Path) -> None:
    base, served, httpd = server
    sha1 = ptb_zip(served / "ptb.zip")
    params = params_for(tmp_path, source="d2l", url=f"{base}/ptb.zip", sha1=sha1)
    summary = acquire(params)
    ptb = tmp_path / "data/ptb"
    assert sorted(p.name for p in ptb.iterdir()) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    assert (ptb / "ptb.train.txt").read_text() == PTB["ptb/ptb.train.txt"]
    assert summary["eval_sets"] == ["wordsim353.tsv", "simlex999.txt", "questions-words.txt"]
    assert (tmp_path / "data/word2vec_eval/wordsim353.tsv").read_text().startswith("# The WordSimilarity-353")
    acquire(params)  # the cached, verified archive is not downloaded again
    assert [path for path, _ in httpd.requests] == ["/ptb.zip"]


def test_mirror_source_with_a_wrong_checksum_keeps_the_previous_data(server, tmp_path: Path) -> None:
    base, served, _ = server
    ptb_zip(served / "ptb.zip")
    previous = tmp_path / "data/ptb"
    previous.mkdir(parents=True)
    (previous / "ptb.train.txt").write_text("previous\n")
    params = params_for(tmp_path, source="d2l", url=f"{base}/ptb.zip", sha1="0" * 40)
    with pytest.raises(DownloadError, match="0{40}"):
        acquire(params)
    assert (previous / "ptb.train.txt").read_text() == "previous\n"
    assert sorted(p.name for p in previous.iterdir()) == ["ptb.train.txt"]


def test_local_source_accepts_a_directory_or_an_archive(tmp_path: Path) -> None:
    mine = tmp_path / "mine" / "penn"
    mine.mkdir(parents=True)
    for name, text in PTB.items():
        (mine / Path(name).name).write_text(text.upper())
    acquire(params_for(tmp_path, source="local", local_path=str(tmp_path / "mine")))
    assert (tmp_path / "data/ptb/ptb.valid.txt").read_text() == " A B \n"

    ptb_zip(tmp_path / "ptb.zip")
    acquire(params_for(tmp_path, source="local", local_path="ptb.zip"))
    assert (tmp_path / "data/ptb/ptb.valid.txt").read_text() == " a b \n"


def test_local_source_without_the_ptb_files_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ptb.train.txt"):
        acquire(params_for(tmp_path, source="local", local_path="empty"))
    with pytest.raises(DataError, match="local_path"):
        acquire(params_for(tmp_path, source="local", local_path="does-not-exist"))


def test_archive_missing_the_validation_split_is_refused(server, tmp_path: Path) -> None:
    base, served, _ = server
    sha1 = ptb_zip(served / "ptb.zip", {"ptb/ptb.train.txt": " a b \n"})
    with pytest.raises(DataError, match="ptb.valid.txt"):
        acquire(params_for(tmp_path, source="d2l", url=f"{base}/ptb.zip", sha1=sha1))


def test_synthetic_source_is_deterministic_and_plants_its_groups(tmp_path: Path) -> None:
    synthetic = {"sentences": 500, "groups": 3, "words_per_group": 4, "seed": 7}
    params = params_for(tmp_path, source="synthetic", synthetic=synthetic)
    acquire(params)
    first = {p.name: p.read_bytes() for p in (tmp_path / "data/ptb").iterdir()}
    acquire(params)
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "data/ptb").iterdir()}
    lines = first["ptb.train.txt"].decode().splitlines()
    assert len(lines) == 500 and all(line.startswith(" ") for line in lines)
    groups = planted_groups(params.word2vec.data.synthetic)
    assert groups[0][:4] == ["chip", "microprocessor", "intel", "mips"]
    assert sum("chip" in line.split() for line in lines) > 10
