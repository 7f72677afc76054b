"""DVC commands on a repository, one at a time.

Our own runs (a scheduled retraining, `d2lflow run`, `d2lflow acquire`) share one repository lock,
`.dvc/tmp/d2lflow.lock`: an OS file lock, released when its process exits, so it is never stale. A
manual `dvc` command holds DVC's own lock instead; `run_dvc` retries while DVC reports it. Both waits
are bounded by `dvc.lock_timeout_seconds`, then a RepoBusyError names the lock, its holder and what to do,
so two writers never interleave on dvc.lock.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from tasks.errors import D2lflowError
from tasks.params import load_params

log = logging.getLogger(__name__)

LOCK_FILE = ".dvc/tmp/d2lflow.lock"
DVC_LOCK_FILE = ".dvc/tmp/lock"  # DVC's own repository lock (zc.lockfile: holds the holder's pid)
DVC_LOCK_ERROR = "Unable to acquire lock"  # DVC's message when another DVC process holds its lock
MAX_BACKOFF_SECONDS = 15.0


class RepoBusyError(D2lflowError):
    """Another process kept the repository locked for longer than `dvc.lock_timeout_seconds`."""


def lock_timeout(root: Path) -> float:
    """`dvc.lock_timeout_seconds` of the repository's params.yaml."""
    return load_params(root / "params.yaml").dvc.lock_timeout_seconds


def stage_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment DVC and its stage commands run in: this interpreter's `python` first on PATH,
    plus `extra` variables (a reproduction's own MLflow store and code path)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def _holder_file(root: Path) -> Path:
    return root / f"{LOCK_FILE}.holder"


def _describe_holder(root: Path) -> str:
    """Who holds the lock, as its holder recorded it ('unknown' when it left no record)."""
    try:
        holder = json.loads(_holder_file(root).read_text())
        return f"pid {holder['pid']} on {holder['host']}, {holder['purpose']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextmanager
def repo_lock(root: Path, purpose: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the repository lock for the block; reentrant within a process (a flow run holds it around
    its stages, each stage's `run_dvc` takes it again). Waits up to `timeout` seconds (default:
    `dvc.lock_timeout_seconds`), then raises RepoBusyError naming the lock file and its holder."""
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        raise D2lflowError(f"{root} is not a DVC repository (no .dvc/); run `dvc init` there or pass the "
                           "repository root")
    wait = lock_timeout(root) if timeout is None else timeout
    lock = FileLock(root / LOCK_FILE, thread_local=False, is_singleton=True)
    try:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.warning("%s is locked by another d2lflow run (%s); waiting up to %g s for it", root,
                        _describe_holder(root), wait)
            lock.acquire(timeout=wait)
    except Timeout:
        raise RepoBusyError(
            f"{root}: the repository is locked by another d2lflow run ({_describe_holder(root)}); waited "
            f"{wait:g} s for {root / LOCK_FILE} (dvc.lock_timeout_seconds). Wait for that run to finish and try "
            "again, or raise dvc.lock_timeout_seconds in params.yaml. The lock is released when its process "
            "exits, so it is never left behind by a crash."
        ) from None
    try:
        if lock.lock_counter == 1:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                      "since": datetime.now(UTC).isoformat(timespec="seconds")}
            _holder_file(root).write_text(json.dumps(holder) + "\n")
            log.debug("locked %s for %s", root / LOCK_FILE, purpose)
        yield
    finally:
        if lock.lock_counter == 1:
            _holder_file(root).unlink(missing_ok=True)
        lock.release()


def _dvc_lock_holder(root: Path) -> str:
    """The pid zc.lockfile wrote into DVC's lock file, if any."""
    try:
        pid = (root / DVC_LOCK_FILE).read_text().strip()
    except OSError:
        return ""
    return f" (held by pid {pid})" if pid.isdigit() else ""


OutputHandler = Callable[[str, bool], None]  # (text, frame): frame when the text ended with '\r', not '\n'


def stream_process(command: list[str], cwd: Path, env: Mapping[str, str], on_output: OutputHandler) -> tuple[int, str]:
    """Run `command` with stdout and stderr merged, handing each line (and each '\r'-ended progress frame)
    to `on_output` as it arrives; returns the exit code and the lines (frames left out)."""
    lines: list[str] = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    with subprocess.Popen(command, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as process:
        fd = process.stdout.fileno()
        while chunk := os.read(fd, 65536):
            pending += decoder.decode(chunk)
            held = "\r" if pending.endswith("\r") else ""  # the first half of a "\r\n" split between reads
            *pieces, pending = re.split(r"(\r\n|\n|\r)", pending[:len(pending) - len(held)])
            pending += held
            for text, end in zip(pieces[::2], pieces[1::2]):
                frame = end == "\r"
                if not frame:
                    lines.append(text)
                on_output(text, frame)
        if tail := (pending + decoder.decode(b"", final=True)).rstrip("\r"):
            lines.append(tail)
            on_output(tail, False)
    return process.returncode, "\n".join(lines).strip()


def _dvc(root: Path, args: tuple[str, ...], env: Mapping[str, str] | None = None,
         on_output: OutputHandler | None = None) -> tuple[int, str]:
    command = [sys.executable, "-m", "dvc", *args]
    if on_output is not None:
        return stream_process(command, root, stage_environment(env), on_output)
    done = subprocess.run(command, cwd=root, env=stage_environment(env), capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip()


def _failed(root: Path, args: tuple[str, ...], code: int, output: str) -> D2lflowError:
    tail = "\n".join(output.splitlines()[-60:])
    return D2lflowError(f"`dvc {' '.join(args)}` failed (exit {code}) in {root}:\n{tail}")


def run_dvc(root: Path, *args: str, lock: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, on_output: OutputHandler | None = None) -> str:
    """Run a DVC command in `root` and return its output; a failure raises with DVC's own output.

    With `lock` (every command that writes: repro, add, push, pull, ...) it runs under `repo_lock`,
    and while a DVC process we did not start holds DVC's lock (e.g. a manual `dvc repro`) it is retried
    with backoff; both waits together last at most `timeout` seconds (default `dvc.lock_timeout_seconds`).
    `lock=False` is for commands that only read (`dvc remote list`). `env`: extra environment variables.
    `on_output`: streams the output (stdout and stderr merged) as it arrives, line by line (a long stage's
    progress); without it, the output is captured and returned, stdout before stderr (for parsing).
    """
    root = Path(root)
    if not lock:
        code, output = _dvc(root, args, env, on_output)
        if code != 0:
            raise _failed(root, args, code, output)
        return output
    wait = lock_timeout(root) if timeout is None else timeout
    deadline = time.monotonic() + wait
    delay = 1.0
    command = f"dvc {' '.join(args)}"
    with repo_lock(root, f"`{command}`", timeout=wait):
        while True:
            code, output = _dvc(root, args, env, on_output)
            if code == 0:
                return output
            if DVC_LOCK_ERROR not in output:
                raise _failed(root, args, code, output)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RepoBusyError(
                    f"another DVC process is running in {root.resolve()}{_dvc_lock_holder(root)}: DVC's lock "
                    f"{root.resolve() / DVC_LOCK_FILE} stayed held while `{command}` was retried for {wait:g} s "
                    "(dvc.lock_timeout_seconds). Wait for it (e.g. a manual `dvc repro`) to finish and run again; "
                    "if no DVC process is running, see https://dvc.org/doc/user-guide/troubleshooting#lock-issue"
                )
            log.info("DVC's lock is held in %s; retrying `%s` in %.0f s", root, command, min(delay, remaining))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def default_remote(root: Path) -> str | None:
    """The repository's default DVC remote (`dvc remote default`), or None when none is set."""
    code, output = _dvc(Path(root), ("remote", "default"))
    if code == 0 and output:
        return output.splitlines()[-1].strip()
    if "No default remote set" in output:
        return None
    raise _failed(Path(root), ("remote", "default"), code, output)


def remotes(root: Path) -> list[str]:
    """Names of the DVC remotes configured for the repository (`dvc remote list`)."""
    return [line.split()[0] for line in run_dvc(root, "remote", "list", lock=False).splitlines() if line.strip()]
