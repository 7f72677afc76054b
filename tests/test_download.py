"""Tests for tasks.download against a local HTTP server (127.0.0.1, no internet needed)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from tasks.download import fetch, safe_extract, sha1_of
from tasks.errors import DataError, DownloadError


def _make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def payload(server):
    """A ~300 KB zip served as /data.zip; returns (url, bytes, sha1)."""
    base, root, _ = server
    path = _make_zip(root / "data.zip", {"data/a.bin": os.urandom(300_000), "data/b.txt": b"hi"})
    data = path.read_bytes()
    return f"{base}/data.zip", data, hashlib.sha1(data).hexdigest()


def test_fetch_good_checksum(payload, tmp_path):
    url, data, sha1 = payload
    dest = tmp_path / "out" / "sub" / "data.zip"
    assert fetch(url, dest, sha1, progress=False) == dest
    assert dest.read_bytes() == data
    assert sha1_of(dest) == sha1
    assert not dest.with_name("data.zip.part").exists()


def test_fetch_wrong_checksum(payload, tmp_path):
    url, _, sha1 = payload
    wrong = "0" * 40
    dest = tmp_path / "out" / "data.zip"
    with pytest.raises(DownloadError) as exc:
        fetch(url, dest, wrong, progress=False)
    msg = str(exc.value)
    assert wrong in msg and sha1 in msg and url in msg
    assert not dest.exists()
    assert not dest.with_name("data.zip.part").exists()


def test_fetch_resumes_partial_download(payload, server, tmp_path):
    url, data, sha1 = payload
    httpd = server[2]
    half = len(data) // 2
    httpd.cut_after = half
    dest = tmp_path / "out" / "data.zip"
    part = dest.with_name("data.zip.part")
    with pytest.raises(DownloadError, match=re.escape(url)):
        fetch(url, dest, sha1, progress=False, chunk_size=4096)
    assert not dest.exists()
    # urllib3 drops the last short read when the connection dies, so the .part holds a
    # prefix of at most the bytes the server sent.
    partial = part.stat().st_size
    assert 0 < partial <= half
    assert part.read_bytes() == data[:partial]
    assert httpd.requests[-1] == ("/data.zip", None)

    assert fetch(url, dest, sha1, progress=False) == dest
    assert httpd.requests[-1] == ("/data.zip", f"bytes={partial}-")
    assert sha1_of(dest) == sha1
    assert dest.read_bytes() == data
    assert not part.exists()


def test_fetch_complete_part_gets_416_and_is_verified(payload, server, tmp_path):
    url, data, sha1 = payload
    dest = tmp_path / "data.zip"
    dest.with_name("data.zip.part").write_bytes(data)
    assert fetch(url, dest, sha1, progress=False) == dest
    assert server[2].requests[-1] == ("/data.zip", f"bytes={len(data)}-")
    assert sha1_of(dest) == sha1


def test_fetch_existing_good_file_not_downloaded(payload, server, tmp_path):
    url, data, sha1 = payload
    dest = tmp_path / "data.zip"
    dest.write_bytes(data)
    before = len(server[2].requests)
    assert fetch(url, dest, sha1, progress=False) == dest
    assert len(server[2].requests) == before == 0


def test_fetch_existing_bad_file_is_replaced(payload, server, tmp_path):
    url, data, sha1 = payload
    dest = tmp_path / "data.zip"
    dest.write_bytes(b"stale")
    assert fetch(url, dest, sha1, progress=False) == dest
    assert dest.read_bytes() == data
    assert len(server[2].requests) == 1


def test_fetch_404(server, tmp_path):
    url = f"{server[0]}/missing.zip"
    dest = tmp_path / "missing.zip"
    with pytest.raises(DownloadError) as exc:
        fetch(url, dest, None, progress=False)
    msg = str(exc.value)
    assert url in msg and "404" in msg and "synthetic" in msg
    assert not dest.exists()


def _assert_nothing_written(target: Path) -> None:
    assert not target.exists() or not any(target.iterdir())
    assert not list(target.parent.glob(".*extract*"))


def test_zip_with_parent_escape_refused(tmp_path):
    archive = _make_zip(tmp_path / "evil.zip", {"ok.txt": b"ok", "../evil.txt": b"x"})
    target = tmp_path / "ws" / "target"
    with pytest.raises(DataError) as exc:
        safe_extract(archive, target)
    assert "../evil.txt" in str(exc.value) and "evil.zip" in str(exc.value)
    _assert_nothing_written(target)
    assert not (tmp_path / "ws" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_zip_with_absolute_path_refused(tmp_path):
    archive = _make_zip(tmp_path / "abs.zip", {"/tmp/abs-evil.txt": b"x"})
    target = tmp_path / "target"
    with pytest.raises(DataError, match="/tmp/abs-evil.txt"):
        safe_extract(archive, target)
    _assert_nothing_written(target)


def test_zip_with_symlink_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    target = tmp_path / "target"
    with pytest.raises(DataError, match="symlink"):
        safe_extract(archive, target)
    _assert_nothing_written(target)


@pytest.mark.parametrize("linkname", ["/etc/passwd", "../../outside"])
def test_tar_with_escaping_symlink_refused(tmp_path, linkname):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("data/link")
        info.type = tarfile.SYMTYPE
        info.linkname = linkname
        tf.addfile(info)
    target = tmp_path / "target"
    with pytest.raises(DataError) as exc:
        safe_extract(archive, target)
    assert "data/link" in str(exc.value) and linkname in str(exc.value)
    _assert_nothing_written(target)


def test_tar_with_parent_escape_refused(tmp_path):
    archive = _make_tar(tmp_path / "evil.tar", {"a.txt": b"a", "../evil.txt": b"x"}, mode="w")
    target = tmp_path / "ws" / "target"
    with pytest.raises(DataError, match=re.escape("../evil.txt")):
        safe_extract(archive, target)
    _assert_nothing_written(target)
    assert not (tmp_path / "ws" / "evil.txt").exists()


def test_tar_with_fifo_refused(tmp_path):
    archive = tmp_path / "fifo.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("pipe")
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
    with pytest.raises(DataError, match="pipe"):
        safe_extract(archive, tmp_path / "target")
    _assert_nothing_written(tmp_path / "target")


def test_not_an_archive_refused(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="bogus.zip"):
        safe_extract(bogus, tmp_path / "target")


def test_good_zip_extracts_and_replaces(tmp_path):
    target = tmp_path / "target"
    (target / "data").mkdir(parents=True)
    (target / "data" / "stale.txt").write_text("old")
    (target / "keep.txt").write_text("untouched")
    files = {"data/x.txt": b"x1", "data/sub/y.txt": b"y1", "top.txt": b"t"}
    archive = _make_zip(tmp_path / "good.zip", files)
    assert safe_extract(archive, target) == [target / "data", target / "top.txt"]
    assert (target / "data" / "x.txt").read_bytes() == b"x1"
    assert (target / "data" / "sub" / "y.txt").read_bytes() == b"y1"
    assert (target / "top.txt").read_bytes() == b"t"
    assert not (target / "data" / "stale.txt").exists()  # top-level entry was replaced whole
    assert (target / "keep.txt").read_text() == "untouched"

    archive2 = _make_zip(tmp_path / "good2.zip", {"data/x.txt": b"x2"})
    assert safe_extract(archive2, target) == [target / "data"]
    assert (target / "data" / "x.txt").read_bytes() == b"x2"
    assert not (target / "data" / "sub").exists()
    assert not list(tmp_path.glob(".*extract*"))


def test_good_tar_gz_extracts_and_replaces(tmp_path):
    target = tmp_path / "target"
    files = {"ptb/train.txt": b"a b c\n", "ptb/valid.txt": b"d e\n"}
    archive = _make_tar(tmp_path / "good.tgz", files)
    assert safe_extract(archive, target) == [target / "ptb"]
    assert (target / "ptb" / "train.txt").read_bytes() == b"a b c\n"
    assert (target / "ptb" / "valid.txt").read_bytes() == b"d e\n"

    archive2 = _make_tar(tmp_path / "good2.tar.xz", {"ptb/train.txt": b"new\n"}, mode="w:xz")
    assert safe_extract(archive2, target) == [target / "ptb"]
    assert (target / "ptb" / "train.txt").read_bytes() == b"new\n"
    assert not (target / "ptb" / "valid.txt").exists()
    assert not list(tmp_path.glob(".*extract*"))
