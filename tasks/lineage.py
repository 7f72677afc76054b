"""Lineage of a run: git commit and dirty flag, data.dvc hash, dvc.lock stage hashes.

Read from the repository at `root` with git's and DVC's own files; a checkout without git (an
exported copy) records 'unknown' instead of failing the run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

UNKNOWN = "unknown"
# Files a reproduction rewrites by design; they do not make the source tree dirty.
GENERATED = {"dvc.lock", "data.dvc"}


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout


def git_state(root: Path, paths: list[str] | None = None) -> dict[str, Any]:
    """{'commit', 'short', 'dirty', 'dirty_files'}: dirty means tracked source changed since the commit.
    `paths` (files or folders, relative to `root`): only changes to these count (a pipeline's deps)."""
    commit = (_git(root, "rev-parse", "HEAD") or "").strip()
    if not commit:
        return {"commit": UNKNOWN, "short": UNKNOWN, "dirty": True, "dirty_files": []}
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    changed = [line[3:].strip() for line in status.splitlines() if line.strip()]
    changed = [path for path in changed if Path(path).name not in GENERATED]
    if paths is not None:
        changed = [path for path in changed if any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths)]
    return {"commit": commit, "short": commit[:8], "dirty": bool(changed), "dirty_files": changed}


def head_file(root: Path, path: str) -> str | None:
    """The text of `path` at the commit HEAD (None outside git or when HEAD lacks it)."""
    return _git(root, "show", f"HEAD:./{path}")


def stage_deps(root: Path, prefix: str) -> list[str]:
    """The `deps` of the dvc.yaml stages whose names start with `prefix` (a pipeline's files and folders)."""
    path = root / "dvc.yaml"
    stages = _stages(path.read_text() if path.is_file() else None)
    return sorted({dep for name, stage in stages.items() if name.startswith(prefix) for dep in stage.get("deps", [])})


def _stages(text: str | None) -> dict[str, Any]:
    return ((yaml.safe_load(text) or {}).get("stages") or {}) if text else {}


def stage_names(root: Path) -> list[str]:
    path = root / "dvc.yaml"
    return list(_stages(path.read_text() if path.is_file() else None))


def stages_changed(root: Path, prefix: str) -> bool:
    """Whether dvc.yaml's stages named `prefix*` differ from the commit's (False outside git)."""
    committed = head_file(root, "dvc.yaml")
    if committed is None:
        return False
    path = root / "dvc.yaml"
    now = _stages(path.read_text() if path.is_file() else None)
    before = _stages(committed)
    pick = lambda stages: {k: v for k, v in stages.items() if k.startswith(prefix)}  # noqa: E731
    return pick(now) != pick(before)


def data_hash(root: Path, dvc_file: str = "data.dvc") -> str:
    """The md5 DVC recorded for the data directory (`outs[0].md5` of data.dvc)."""
    path = root / dvc_file
    if not path.is_file():
        return UNKNOWN
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", UNKNOWN))


def parse_lock(text: str) -> dict[str, dict[str, Any]]:
    """The `stages` mapping of a dvc.lock's text (from the working tree or `git show REV:dvc.lock`)."""
    return (yaml.safe_load(text) or {}).get("stages", {}) or {}


def lock_stages(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    return parse_lock(path.read_text())


def stage_digest(entry: dict[str, Any]) -> str:
    """SHA-256 (16 hex) of one canonical lock entry: equal digests mean an identical stage."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_hashes(root: Path, prefix: str) -> dict[str, str]:
    """Per dvc.lock stage of a pipeline: SHA-256 (16 hex) of its canonical lock entry
    (command, deps, params, outs with their md5s): equal hashes mean an identical stage."""
    return {name: stage_digest(entry) for name, entry in lock_stages(root).items() if name.startswith(prefix)}


def locked_outs(stages: dict[str, dict[str, Any]], prefix: str) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} for the stages of a pipeline in a parsed dvc.lock: what a
    reproduction's outputs must hash to (a directory's md5 ends in `.dir`)."""
    return {name: {out["path"]: out["md5"] for out in entry.get("outs", []) if out.get("md5")}
            for name, entry in stages.items() if name.startswith(prefix)}


def out_md5(root: Path, stage: str, path: str) -> str | None:
    """The md5 dvc.lock pins for one output of a stage (None if not locked yet)."""
    for out in lock_stages(root).get(stage, {}).get("outs", []):
        if out.get("path") == path:
            return out.get("md5")
    return None
