"""Data acquisition, shared by every pipeline: the book's mirror, a local path, or a synthetic generator,
each ending in the same on-disk layout under data/, which `data.dvc` then versions.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tasks.download import fetch, safe_extract
from tasks.dvc_repo import run_dvc
from tasks.errors import D2lflowError, DataError
from tasks.params import DataSourceParams, Params

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloaded archives are kept (outside data/, so DVC versions extracted data only)."""
    return Path(os.environ.get("D2LFLOW_CACHE", Path.home() / ".cache" / "d2lflow")).expanduser()


def _is_archive(path: Path) -> bool:
    import tarfile
    import zipfile

    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def _find(root: Path, marker: str) -> Path | None:
    """The directory under `root` (itself included) that holds `marker`."""
    if (root / marker).exists():
        return root
    for candidate in sorted(root.rglob(marker)):
        return candidate.parent
    return None


def install_tree(source_root: Path, marker: str, target: Path) -> Path:
    """Copy the directory under `source_root` that holds `marker` to `target`, replacing it atomically."""
    found = _find(source_root, marker)
    if found is None:
        raise DataError(f"{source_root}: no '{marker}' found inside; expected the dataset's original layout")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(found, staging / target.name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def acquire(cfg: DataSourceParams, params: Params, marker: str, synthetic: Callable[[Path], Path]) -> Path:
    """Install a pipeline's dataset at `cfg.dir` from `cfg.source` ('d2l', 'local' or 'synthetic');
    `marker` is a file (relative to the dataset folder) whose presence proves the layout."""
    target = params.path(cfg.dir)
    source, url, sha1 = cfg.source, cfg.url, cfg.sha1
    local_path = params.path(cfg.local_path) if cfg.local_path else None
    if source == "synthetic":
        synthetic(target)
    elif source in ("d2l", "local"):
        if source == "d2l":
            archive = fetch(url, cache_dir() / "downloads" / url.rsplit("/", 1)[-1], sha1)
        else:
            if local_path is None or not local_path.exists():
                raise DataError(f"data source 'local' needs an existing local_path; found {local_path!r}. "
                                "Set it in params.yaml to a directory or archive you already have")
            archive = local_path
        if _is_archive(archive):
            with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
                safe_extract(archive, Path(tmp) / "x")
                install_tree(Path(tmp) / "x", marker, target)
        elif archive.is_dir():
            install_tree(archive, marker, target)
        else:
            raise DataError(f"{archive}: neither a directory nor a zip/tar archive")
    else:
        raise D2lflowError(f"unknown data source {source!r}; use 'd2l', 'local' or 'synthetic'")
    if not (target / marker).exists():
        raise DataError(f"{target}: '{marker}' missing after acquisition from {source!r}")
    log.info("acquired %s from %s", target, source)
    return target


def dvc_add(root: Path, path: str = "data") -> None:
    """Version `path` with DVC (writes/updates `<path>.dvc`); a no-op outside a DVC repository."""
    if not (root / ".dvc").is_dir():
        log.warning("%s is not a DVC repository; %s is not versioned", root, path)
        return
    run_dvc(root, "add", "--quiet", path)
