"""User-facing errors: every message names what was wrong and what to do about it."""

from __future__ import annotations

import errno
import os


class D2lflowError(Exception):
    """An error caused by input or environment, reported to the user without a traceback."""


class ParamsError(D2lflowError):
    """params.yaml has a wrong key, type or value."""


class DataError(D2lflowError):
    """A dataset file is missing, corrupt or not in the expected layout."""


class DownloadError(D2lflowError):
    """A download failed or its content did not match the expected checksum."""


_REFUSED_WRITES = {errno.EACCES: "not writable (permission denied)",
                   errno.EPERM: "not writable (operation not permitted)",
                   errno.EROFS: "not writable (read-only file system)"}
_FULL = {errno.ENOSPC: "the disk is full (ENOSPC)", errno.EDQUOT: "the disk quota is exceeded (EDQUOT)"}


def write_fault(error: OSError) -> str | None:
    """What the environment refused in a failed write ("the disk is full (ENOSPC)", "not writable
    (read-only file system)", ...), or None when the OSError is something else."""
    return _REFUSED_WRITES.get(error.errno) or _FULL.get(error.errno)


def filesystem_error(error: OSError) -> D2lflowError | None:
    """A write the environment refused (read-only or not permitted, a full disk) as one user-facing
    error naming the path; None for any other OSError, which is a bug and keeps its traceback."""
    path = error.filename if error.filename is not None else "a file"
    if os.path.basename(path).startswith("."):  # an atomic output's temporary sibling: name its folder
        path = os.path.dirname(path) or path
    if error.errno in _REFUSED_WRITES:
        return D2lflowError(f"{path}: {_REFUSED_WRITES[error.errno]}; make that folder writable, or point the "
                            "params key that names it (data.dir, out_dir, checkpoint_dir) at a writable one, and "
                            "run again")
    if error.errno in _FULL:
        return D2lflowError(f"{path}: cannot write, {_FULL[error.errno]}; free space on that file system and run "
                            "again")
    return None
