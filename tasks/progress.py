"""Progress a person can follow while a stage runs: one log line per epoch (epoch k/N, loss, throughput,
elapsed and estimated time left) and where the MLflow run can be watched.

The lines go through `logging`, so they reach the console of `python -m tasks`, `dvc repro`, and, relayed
by `tasks.relay`, the console and the Prefect task logs of `d2lflow run`.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


def duration(seconds: float) -> str:
    """`42.3s` under a minute, `3m05s` under an hour, `2h07m` beyond."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class EpochProgress:
    """Logs `STAGE epoch k/N loss=... THROUGHPUT elapsed ... ETA ...` after each epoch. The time left is
    the mean epoch time of this process so far times the epochs left (a resumed run counts from where it
    resumed). `enabled=False` (other DDP ranks) logs nothing."""

    def __init__(self, stage: str, epochs: int, start_epoch: int = 0, enabled: bool = True,
                 clock=time.monotonic) -> None:
        self.stage, self.epochs, self.start_epoch, self.enabled = stage, epochs, start_epoch, enabled
        self._clock = clock
        self._started = clock()

    def line(self, epoch: int, loss: float, throughput: float, unit: str, **extra: float) -> str:
        """The progress line after `epoch` (1-based) ended."""
        elapsed = self._clock() - self._started
        done = max(epoch - self.start_epoch, 1)
        left = elapsed / done * max(self.epochs - epoch, 0)
        extras = "".join(f" {name}={value:.4g}" for name, value in extra.items())
        rate = f"{throughput:,.0f}" if throughput >= 100 else f"{throughput:.2f}"
        return (f"{self.stage} epoch {epoch}/{self.epochs} loss={loss:.4f}{extras} {rate} {unit}"
                f" elapsed {duration(elapsed)} ETA {duration(left)}")

    def epoch(self, epoch: int, loss: float, throughput: float, unit: str, **extra: float) -> None:
        if self.enabled:
            log.info("%s", self.line(epoch, loss, throughput, unit, **extra))


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def run_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The page of a run (or, without `run_id`, the experiment's runs table): on the tracking server itself
    for an http(s) store, else on `mlflow ui`'s default address (the store is a database or folder; the
    page exists once `mlflow ui` serves that store). MLflow 3.17's UI opens every experiment on its GenAI
    overview unless the link says `workflowType=machine_learning` (or the user picked "Model training" in
    its top-left switch once, which it remembers)."""
    base = _without_credentials(tracking_uri).rstrip("/") if tracking_uri.startswith(("http:", "https:")) else MLFLOW_UI
    page = f"experiments/{experiment_id}/runs/{run_id}" if run_id else f"experiments/{experiment_id}"
    return f"{base}/#/{page}?workflowType=machine_learning"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a store that is no server on `MLFLOW_UI` (None for a tracking server)."""
    if tracking_uri.startswith(("http:", "https:")):
        return None
    return f"mlflow ui --backend-store-uri {_without_credentials(tracking_uri)}"


def describe_run(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """`run_url`, and for a store that is no server, the command that serves it there."""
    url = run_url(tracking_uri, experiment_id, run_id)
    command = ui_command(tracking_uri)
    return url if command is None else f"{url} (once `{command}` runs)"
