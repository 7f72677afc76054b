"""Device choice, seeding, checkpoints and library versions: the runtime facts every training stage shares."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from tasks.atomic import atomic_path
from tasks.errors import D2lflowError, write_fault

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "mlflow", "dvc", "prefect", "gensim", "pycocotools",
             "faster-coco-eval", "torchmetrics")


def cache_dir() -> Path:
    """The user's d2lflow cache (`D2LFLOW_CACHE`, default ~/.cache/d2lflow): downloaded archives (outside
    data/, so DVC versions extracted data only) and the registry locks."""
    return Path(os.environ.get("D2LFLOW_CACHE", Path.home() / ".cache" / "d2lflow")).expanduser()


def select_device(spec: str) -> torch.device:
    """`auto` → CUDA when present, else CPU; an explicit `cuda` without a GPU is an error, not a fallback."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise D2lflowError(f"params.yaml: device is '{spec}' but CUDA is not available on this machine; "
                           "set `device: auto` (or `cpu`) to train on the CPU")
    return torch.device(spec)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch and ask torch for deterministic kernels (warn where none exist).
    cuBLAS is deterministic only with a fixed workspace, set before its first call (a user's value wins)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def isolated_rng(device: torch.device):
    """A block whose random draws leave torch's global generators as they were (CPU, and the device's on
    CUDA): validation during training (a DataLoader iterator draws its base seed, say) must not move
    the stream that training's own sampling (e.g. Faster R-CNN's RoI sampler) draws from, so a model
    does not depend on how often it was validated."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type)


def figure_png(fig: Any, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes (and closed, so long runs don't accumulate figures)."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hash_tree(path: Path) -> str:
    """SHA-256 over the relative names and bytes of every file under `path` (or of one file)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def code_hash(*objects: object) -> str:
    """SHA-256 of the source files defining `objects` (modules, classes, functions): a checkpoint
    written by other training or model code must not be resumed."""
    import inspect

    return hashlib.sha256("".join(hash_tree(Path(inspect.getfile(o))) for o in objects).encode()).hexdigest()


def fingerprint(*parts: object) -> str:
    """Identifies what a checkpoint was trained on (params and input hashes): a checkpoint is
    resumed only under the same fingerprint, so a stale one never leaks into a changed run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def save_torch(path: Path, obj: Any, what: str) -> None:
    """`torch.save` atomically: a kill or a failed write leaves the previous file intact. Writing through
    a Python file keeps the OS error (torch's own path writer turns a full disk into "unexpected pos"),
    so a full or read-only disk is one error naming `path`."""
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            torch.save(obj, handle)
    except OSError as error:
        reason = write_fault(error)
        if reason is None:
            raise
        kept = "the previous one is intact" if Path(path).exists() else "nothing was written"
        raise D2lflowError(f"{path}: cannot write {what}: {reason}, {kept}; free space on that file system "
                           "(or make it writable) and run again") from error


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a kill or a full disk mid-write leaves the previous one intact)."""
    save_torch(path, state, "the checkpoint")


def restore(state: dict[str, Any], **stateful: Any) -> tuple[list[dict], int]:
    """Load a checkpoint's state dicts into `stateful` objects (model=..., optimizer=..., scaler=...);
    returns the recorded history and the number of completed epochs."""
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    return list(state["history"]), int(state["epoch"])


def load_checkpoint(path: Path, fingerprint: str, data: BinaryIO | None = None) -> dict[str, Any] | None:
    """The checkpoint at `path` if it was written for the same inputs and params, else None.
    `data`: the file's bytes already read (a rank that received rank 0's checkpoint)."""
    if data is None and not path.is_file():
        return None
    try:
        state = torch.load(path if data is None else data, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt checkpoint is not trusted, training starts over
        log.warning("ignoring unreadable checkpoint %s (%s); starting from scratch", path, error)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("checkpoint %s was written for other params or data; starting from scratch", path)
        return None
    return state
