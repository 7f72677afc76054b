"""Atomic outputs: write to a temporary sibling, rename on success.

A crash never leaves a half-written artifact that a later stage or DVC would trust.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie counts as alive until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale(parent: Path, name: str) -> list[Path]:
    """Remove the `.{name}.pid<PID>-*` temporaries in `parent` whose creating process is dead (a killed
    stage's leftovers); a live writer's temporary is never touched. Returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(name)}\.pid(\d+)-")
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            log.info("removing %s, left behind by process %s, which no longer runs", entry, match.group(1))
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def temp_dir(parent: Path, name: str) -> Path:
    """A new empty directory `parent/.{name}.pid<PID>-XXXX`, after removing dead processes' ones: the
    pid in the name tells the next run whether the writer is still alive."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, name)
    return Path(tempfile.mkdtemp(prefix=f".{name}.pid{os.getpid()}-", dir=parent))


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success it replaces `dest` (file or directory).
    Temporaries that a killed earlier run left beside `dest` are removed first."""
    dest = Path(dest)
    tmp = temp_dir(dest.parent, dest.name) / dest.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the stage produced no output for {dest}")
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def to_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, stable floats, trailing newline (byte-identical for equal data)."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"


def write_json(dest: Path, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(to_json(obj))


def write_text(dest: Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
