"""Atomic outputs: write to a temporary sibling, rename on success.

A crash never leaves a half-written artifact that a later stage or DVC would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success it replaces `dest` (file or directory)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent)) / dest.name
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
