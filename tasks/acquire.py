"""Data acquisition, shared by every pipeline: the book's mirror, a local path, or a synthetic generator,
each ending in the same on-disk layout under data/, which `data.dvc` then versions.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tasks.atomic import temp_dir
from tasks.download import fetch, refused, safe_extract
from tasks.dvc_repo import run_dvc
from tasks.errors import D2lflowError, DataError
from tasks.params import DataSourceParams, Params
from tasks.runtime import cache_dir

log = logging.getLogger(__name__)


def _is_archive(path: Path) -> bool:
    import tarfile
    import zipfile

    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def _matches(root: Path, marker: str) -> list[Path]:
    """Every directory D under `root` (itself included, links not followed) with the file D/marker;
    the search does not descend into a match."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if (here / marker).is_file() and not (here / marker).is_symlink():
            found.append(here)
            dirnames[:] = []
        else:
            dirnames.sort()
    return found


def find_dataset(source: Path, root: Path, marker: str) -> tuple[Path, str]:
    """(D, prefix): the folder under `root` that is the dataset, to be installed as target/prefix.

    D holds the marker's full relative path (e.g. a VOCdevkit folder holds VOC2012/ImageSets/...);
    failing that, D may be the marker's top folder itself (a VOC2012 folder holds ImageSets/...), then
    installed under that folder's name. More than one candidate is an error: we never guess.
    """
    parts = Path(marker).parts
    attempts = [(marker, "")]
    if len(parts) > 2:
        attempts.append((str(Path(*parts[1:])), parts[0]))
    for relative, prefix in attempts:
        found = _matches(root, relative)
        if len(found) > 1:
            listed = ", ".join(str(path.relative_to(root)) or "." for path in found)
            raise DataError(f"{source}: the dataset was found in {len(found)} places ({listed}); point "
                            "local_path at the one you mean")
        if found:
            return found[0], prefix
    looked = " or ".join(f"'{relative}'" for relative, _ in attempts)
    raise DataError(f"{source}: no {looked} found inside; expected the dataset's original layout "
                    "(README: Real data shows the accepted forms of local_path)")


def refuse_links(source: Path, tree: Path) -> None:
    """The archive rules for a tree: a symlink or special file anywhere inside is refused."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            member = path.relative_to(tree).as_posix()
            if path.is_symlink():
                raise refused(source, member, "is a symlink")
            if not (path.is_dir() or path.is_file()):
                raise refused(source, member, "is a device file or FIFO")


def copy_tree(source: Path, tree: Path, dest: Path) -> None:
    """Copy `tree` (inside `source`) to `dest`, refusing links first as archives do."""
    refuse_links(source, tree)
    shutil.copytree(tree, dest, copy_function=shutil.copy2)


Check = Callable[[Path], None]


class Staging:
    """New dataset trees built outside data/ (where DVC never versions them), checked, then swapped in
    together: data/ changes only once every staged tree is complete. Staging lives in `.dvc/tmp/`
    (a DVC repository on the same filesystem) or beside the target; a killed run's staging is removed
    by the next one (the pid is in its name)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.staged: dict[Path, Path] = {}  # target → its staging directory (holding `new/`)
        self.checks: list[Callable[[], None]] = []

    def _parent(self, target: Path) -> Path:
        base = self.root / ".dvc" / "tmp"
        if (self.root / ".dvc").is_dir():
            base.mkdir(exist_ok=True)
            anchor = target.parent
            while not anchor.exists():
                anchor = anchor.parent
            if os.stat(base).st_dev == os.stat(anchor).st_dev:
                return base
        return target.parent

    def directory(self, target: Path) -> Path:
        """An empty staging directory for `target`; its `new/` is to receive the complete new tree."""
        target = Path(target)
        if target in self.staged:
            shutil.rmtree(self.staged[target], ignore_errors=True)
        self.staged[target] = temp_dir(self._parent(target), f"acquire-{target.name}")
        return self.staged[target]

    def new(self, target: Path) -> Path:
        return self.staged[Path(target)] / "new"

    def view(self, target: Path) -> Path:
        """Where `target`'s data is to be read before the swap: the staged tree, or data/ as it is."""
        target = Path(target)
        return self.new(target) if target in self.staged else target

    def defer(self, check: Callable[[], None]) -> None:
        """A check that needs every tree staged (e.g. detection reads the segmentation VOC tree)."""
        self.checks.append(check)

    def commit(self) -> None:
        """Run the deferred checks, then replace every target by its staged tree (rolled back on failure)."""
        for check in self.checks:
            check()
        for target, folder in self.staged.items():
            if not (folder / "new").is_dir():
                raise DataError(f"{target}: nothing was staged for it")
        done: list[tuple[Path, Path]] = []
        try:
            for target, folder in self.staged.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists() or target.is_symlink():
                    os.replace(target, folder / "old")
                os.replace(folder / "new", target)
                done.append((target, folder))
        except OSError as error:
            for target, folder in reversed(done):
                os.replace(target, folder / "new")
                if (folder / "old").exists():
                    os.replace(folder / "old", target)
            raise DataError(f"{error.filename or target}: cannot replace the data ({error.strerror}); "
                            "nothing was changed. Make it writable and run again") from error
        self.close()

    def close(self) -> None:
        for folder in self.staged.values():
            shutil.rmtree(folder, ignore_errors=True)
        self.staged.clear()
        self.checks.clear()


def stage_dataset(staging: Staging, cfg: DataSourceParams, params: Params, marker: str,
                  synthetic: Callable[[Path], Path], check: Check | None = None) -> Path:
    """Build a pipeline's dataset for `cfg.dir` from `cfg.source` ('d2l', 'local' or 'synthetic') in
    `staging`; `marker` is a file (relative to the dataset folder) whose presence proves the layout,
    `check` the reader's cheap checks on the staged tree. Returns the target (not yet replaced)."""
    target = params.path(cfg.dir)
    source, url, sha1 = cfg.source, cfg.url, cfg.sha1
    local_path = params.path(cfg.local_path) if cfg.local_path else None
    folder = staging.directory(target)
    new = folder / "new"
    if source == "synthetic":
        synthetic(new)
    elif source in ("d2l", "local"):
        if source == "d2l":
            archive = fetch(url, cache_dir() / "downloads" / url.rsplit("/", 1)[-1], sha1)
        else:
            if local_path is None or not local_path.exists():
                raise DataError(f"data source 'local' needs an existing local_path; found {local_path!r}. "
                                "Set it in params.yaml to a directory or archive you already have")
            archive = local_path
        if _is_archive(archive):
            safe_extract(archive, folder / "x")
            found, prefix = find_dataset(archive, folder / "x", marker)
            refuse_links(archive, found)
            (new / prefix).parent.mkdir(parents=True, exist_ok=True)
            os.replace(found, new / prefix if prefix else new)
            shutil.rmtree(folder / "x", ignore_errors=True)
        elif archive.is_dir():
            found, prefix = find_dataset(archive, archive.resolve(), marker)
            copy_tree(archive, found, new / prefix if prefix else new)
        else:
            raise DataError(f"{archive}: neither a directory nor a zip/tar archive")
    else:
        raise D2lflowError(f"unknown data source {source!r}; use 'd2l', 'local' or 'synthetic'")
    if not (new / marker).is_file():
        raise DataError(f"{target}: '{marker}' missing after acquisition from {source!r}")
    if check is not None:
        try:
            check(new)
        except DataError as error:  # name the files as they are in the source, not in the staging folder
            origin = local_path if source == "local" else url if source == "d2l" else "the generator"
            reason = str(error).replace(f"{new}{os.sep}", "").replace(str(new), ".")
            raise DataError(f"the data from {origin} for {target} is refused ({target} is left as it was): "
                            f"{reason}") from error
    log.info("staged %s from %s", target, source)
    return target


def acquire(cfg: DataSourceParams, params: Params, marker: str, synthetic: Callable[[Path], Path],
            check: Check | None = None, staging: Staging | None = None) -> Path:
    """Stage a pipeline's dataset (see `stage_dataset`); without a shared `staging`, install it at once."""
    if staging is not None:
        return stage_dataset(staging, cfg, params, marker, synthetic, check)
    own = Staging(params.root())
    try:
        target = stage_dataset(own, cfg, params, marker, synthetic, check)
        own.commit()
    finally:
        own.close()
    log.info("acquired %s from %s", target, cfg.source)
    return target


def check_voc_lists(tree: Path, task: str, needs: tuple[str, ...], splits: tuple[str, ...] = ("train", "val")) -> None:
    """Cheap checks on a VOC tree: every id listed in `ImageSets/{task}/{split}.txt` has its files
    (`needs` are 'JPEGImages/{}.jpg'-style patterns) and each split lists at least one id."""
    from tasks.voc import read_ids, voc_root

    root = voc_root(tree)
    for split in splits:
        ids = read_ids(root, task, split)
        listing = root / "ImageSets" / task / f"{split}.txt"
        if not ids:
            raise DataError(f"{listing}: lists no image; a VOC split needs at least one")
        for pattern in needs:
            missing = [i for i in ids if not (root / pattern.format(i)).is_file()]
            if missing:
                raise DataError(f"{listing}: {len(missing)} of {len(ids)} listed ids have no "
                                f"{pattern.format('<id>')} (first: {pattern.format(missing[0])}); the tree "
                                "is incomplete: use the whole archive")


def dvc_add(root: Path, path: str = "data") -> None:
    """Version `path` with DVC (writes/updates `<path>.dvc`); a no-op outside a DVC repository."""
    if not (root / ".dvc").is_dir():
        log.warning("%s is not a DVC repository; %s is not versioned", root, path)
        return
    run_dvc(root, "add", path)  # not --quiet: that would also silence the reason of a failure
