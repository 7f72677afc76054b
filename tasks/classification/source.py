"""Fashion-MNIST into data/: the four official IDX `.gz` files downloaded from the published mirror (each
MD5-checked), copied from a local folder (`.gz` or raw IDX; raw files are compressed), or generated;
both splits must decode before the staged folder may replace data/."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

from tasks.acquire import Staging, refuse_links
from tasks.classification.idx import SPLITS, read_split, split_paths
from tasks.download import fetch
from tasks.errors import DataError
from tasks.params import ClassificationDataParams, Params
from tasks.runtime import cache_dir

log = logging.getLogger(__name__)

FILES: tuple[str, ...] = tuple(f"{stem}.gz" for split in ("train", "t10k") for stem in SPLITS[split])


def download_files(cfg: ClassificationDataParams, into: Path) -> None:
    """The four official `.gz` files from `cfg.url` into `into`, each checked against its MD5 in
    `cfg.md5` (kept in the download cache, so a second acquisition downloads nothing)."""
    missing = [name for name in FILES if name not in cfg.md5]
    if missing:
        raise DataError(f"classification.data.md5 has no checksum for {', '.join(missing)}; add the published "
                        "MD5 of each official file (params.yaml lists them)")
    base = cfg.url if cfg.url.endswith("/") else cfg.url + "/"
    for name in FILES:
        cached = fetch(base + name, cache_dir() / "downloads" / "fashion-mnist" / name, None, md5=cfg.md5[name])
        shutil.copyfile(cached, into / name)


def copy_local(folder: Path, into: Path) -> None:
    """The four files of a local folder (`.gz` or raw IDX, official names) into `into` as `.gz`
    (a raw file is compressed with mtime 0, so equal files give equal bytes)."""
    if not folder.is_dir():
        raise DataError(f"classification.data.local_path {folder}: not a folder; point it at the folder holding "
                        "the four Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...)")
    refuse_links(folder, folder)
    for split in ("train", "t10k"):
        for path in split_paths(folder, split):
            data = path.read_bytes()
            name = path.name if path.name.endswith(".gz") else f"{path.name}.gz"
            if not path.name.endswith(".gz"):
                data = gzip.compress(data, mtime=0)
            (into / name).write_bytes(data)


def check_files(tree: Path) -> None:
    """The reader's checks on an acquired folder: both splits decode (magic, sizes, labels, counts)."""
    for split in ("train", "t10k"):
        images, _ = read_split(tree, split)
        if len(images) == 0:
            raise DataError(f"{split_paths(tree, split)[0]}: holds no image; a split needs at least one")


def stage(params: Params, staging: Staging, generate) -> Path:
    """Build `classification.data.dir` in `staging` from the configured source and check it."""
    cfg = params.classification.data
    target = params.path(cfg.dir)
    new = staging.directory(target) / "new"
    if cfg.source == "synthetic":
        generate(new)
    else:
        new.mkdir(parents=True)
        if cfg.source == "download":
            download_files(cfg, new)
        else:
            if cfg.local_path is None:
                raise DataError("classification.data.source is 'local' but classification.data.local_path is null; "
                                "set it to the folder holding the four Fashion-MNIST IDX files")
            copy_local(params.path(cfg.local_path), new)
    try:
        check_files(new)
    except DataError as error:
        origin = {"download": cfg.url, "local": cfg.local_path, "synthetic": "the generator"}[cfg.source]
        reason = str(error).replace(f"{new}/", "")
        raise DataError(f"the data from {origin} for {target} is refused ({target} is left as it was): "
                        f"{reason}") from error
    log.info("staged %s from %s", target, cfg.source)
    return target
