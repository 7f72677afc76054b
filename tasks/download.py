"""Checksummed, resumable downloads and path-safe archive extraction.

``fetch`` never leaves a half-written destination file: bytes go to ``<dest>.part`` and are
renamed only after the SHA-1 matches. ``safe_extract`` validates every archive member before
writing anything and moves the result into place only when extraction succeeded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import requests
from tqdm import tqdm

from tasks.atomic import temp_dir
from tasks.errors import DataError, DownloadError

logger = logging.getLogger(__name__)

_OFFLINE_HINT = (
    "to work offline set `data.source: synthetic` (generated data) or `data.source: local` "
    "(a file you already have) in params.yaml"
)


def digest_of(path: Path, algorithm: str = "sha1", chunk_size: int = 1 << 20) -> str:
    """Return the hex digest (``hashlib`` algorithm name) of the file at ``path``, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha1_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-1 of the file at ``path``, read in chunks."""
    return digest_of(path, "sha1", chunk_size)


def fetch(
    url: str,
    dest: Path,
    sha1: str | None,
    *,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    md5: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` with the right SHA-1 is reused; a wrong one is replaced. Bytes are
    streamed into ``<dest>.part`` (resumed with a Range request if it exists) and renamed to
    ``dest`` only after the checksum (if ``sha1`` is given) matches. Raises ``DownloadError``
    on HTTP/connection failures (the ``.part`` is kept for resuming) and on a checksum
    mismatch (the ``.part`` is deleted). ``md5`` (for datasets that publish MD5s, e.g. Fashion-MNIST)
    is checked instead of ``sha1`` when given.
    """
    dest = Path(dest)
    algorithm, expected_digest = ("md5", md5) if md5 is not None else ("sha1", sha1)
    if dest.exists():
        if expected_digest is None or digest_of(dest, algorithm, chunk_size) == expected_digest.lower():
            logger.info("%s already present, not downloading %s", dest, url)
            return dest
        logger.warning("%s has a wrong %s, removing it and downloading %s again", dest, algorithm.upper(), url)
        dest.unlink()

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    if offset:
        logger.info("resuming %s from byte %d", url, offset)

    try:
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as resp:
            if resp.status_code == 416 and offset:
                logger.info("server says %s is complete, verifying it", part)
            else:
                resp.raise_for_status()
                if resp.status_code != 206:
                    offset = 0  # the server ignored the Range header: start over
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                received = 0
                with (
                    open(part, "ab" if offset else "wb") as f,
                    tqdm(
                        total=None if expected is None else offset + expected,
                        initial=offset,
                        unit="B",
                        unit_scale=True,
                        desc=dest.name,
                        disable=not progress,
                    ) as bar,
                ):
                    for chunk in resp.iter_content(chunk_size=chunk_size):
                        f.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if expected is not None and received < expected:
                    raise DownloadError(
                        f"download of {url} stopped after {received} of {expected} bytes; "
                        f"re-run to resume it, or {_OFFLINE_HINT}"
                    )
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        reason = exc.response.reason if exc.response is not None else exc
        raise DownloadError(
            f"could not download {url}: HTTP {status} {reason}; check the URL or {_OFFLINE_HINT}"
        ) from exc
    except requests.RequestException as exc:
        raise DownloadError(
            f"could not download {url}: {type(exc).__name__}: {exc}; check your network "
            f"connection (a re-run resumes the partial file) or {_OFFLINE_HINT}"
        ) from exc

    if expected_digest is not None:
        found = digest_of(part, algorithm, chunk_size)
        if found != expected_digest.lower():
            part.unlink(missing_ok=True)
            label = "SHA-1" if algorithm == "sha1" else algorithm.upper()
            raise DownloadError(
                f"{label} mismatch for {url}: expected {expected_digest.lower()}, found {found}. The mirror may "
                "have changed or the download was corrupted; the partial file was removed, so "
                "just re-run, or set the data source to `local` with a file you trust"
            )
    os.replace(part, dest)
    logger.info("downloaded %s to %s", url, dest)
    return dest


def _escapes(name: str) -> bool:
    """True if archive member ``name`` is absolute or normalises to outside its root."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    norm = posixpath.normpath(name.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def refused(source: Path, member: str, why: str) -> DataError:
    """The one message for a member of an archive or of a local directory that is not accepted."""
    return DataError(f"refusing to read {source}: member {member!r} {why}; "
                     "use a copy without it (links, devices and paths outside the source are not accepted)")


def _check_tar(archive: Path, tar: tarfile.TarFile) -> None:
    for m in tar.getmembers():
        bad = None
        if _escapes(m.name):
            bad = "has an absolute path or escapes the target directory"
        elif m.isdev():
            bad = "is a device file or FIFO"
        elif m.issym() and (
            m.linkname.startswith("/")
            or _escapes(posixpath.join(posixpath.dirname(m.name), m.linkname))
        ):
            bad = f"is a symlink to {m.linkname!r} outside the target directory"
        elif m.islnk() and _escapes(m.linkname):
            bad = f"is a hard link to {m.linkname!r} outside the target directory"
        if bad:
            raise refused(archive, m.name, bad)


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        if _escapes(info.filename):
            raise refused(archive, info.filename, "has an absolute path or escapes the target directory")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise refused(archive, info.filename, "is a symlink")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract a zip or tar ``archive`` into ``target`` atomically and return its top-level paths.

    Every member is validated first (no absolute paths, ``..`` escapes, escaping links, device
    files, zip symlinks); a bad one raises ``DataError`` and nothing is written. Extraction goes
    to a temporary directory beside ``target``; each top-level entry then replaces any existing
    entry of the same name in ``target``.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist; download it again")
    if tarfile.is_tarfile(archive):
        opened: tarfile.TarFile | zipfile.ZipFile = tarfile.open(archive)
    elif zipfile.is_zipfile(archive):
        opened = zipfile.ZipFile(archive)
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive; delete it and re-run")

    with opened as arc:
        if isinstance(arc, tarfile.TarFile):
            _check_tar(archive, arc)
        else:
            _check_zip(archive, arc)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(target.parent, f"{target.name}.extract")  # a killed run's is removed by the next
        try:
            try:
                if isinstance(arc, tarfile.TarFile):
                    arc.extractall(tmp, filter="data")
                else:
                    arc.extractall(tmp)
            except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
                msg = f"could not extract {archive}: {exc}; delete it and re-run"
                raise DataError(msg) from exc
            target.mkdir(parents=True, exist_ok=True)
            moved = []
            for entry in sorted(tmp.iterdir()):
                dst = target / entry.name
                if dst.exists() or dst.is_symlink():
                    _remove(dst)
                os.replace(entry, dst)
                moved.append(dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s into %s", archive, target)
    return moved
