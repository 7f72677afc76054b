"""What `dvc repro` and its stage commands print, relayed as log records a person can read.

- A stage's records keep their level, parsed from our log format, MLflow's, and DVC's `ERROR:` / `WARNING:`.
- Progress-bar frames (text ended by a carriage return: a stage's output is no terminal) become a line
  only after `interval` seconds in which the stage said nothing else, so a bar shows as periodic lines.
- DVC's hints (`git add dvc.lock`, autostage, `dvc push`: `d2lflow run` says once at its end what to
  commit), the stage's command echo and the JSON summary a stage prints go to DEBUG, the summary whole.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

PROGRESS_INTERVAL_SECONDS = 10.0  # at most one progress-bar line per stage in this many seconds

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# "%(asctime)s %(levelname)s [rank R/W] %(name)s: %(message)s" (tasks.cli.setup_logging) and MLflow's
# "2026/12/01 22:02:56 INFO mlflow.pyfunc: ..."
RECORD = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)? (?P<level>" + "|".join(LEVELS)
                    + r") (?P<rank>\[[^\]]*\] )?(?P<name>[\w.\-]+): (?P<message>.*)$")
DVC_LEVEL = re.compile(r"^(?P<level>ERROR|WARNING): ")
PY_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")
EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|KeyboardInterrupt)(:|$)")  # a traceback's last line
RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)':$")
UNCHANGED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping$")
# DVC's and MLflow's chatter: hints about git and remotes, the command echo, lock-file notices, what
# MLflow prints (not logs) when it registers a model; the lock error is retried by run_dvc, which says so.
CHATTER = re.compile("|".join([
    r"^To track the changes with git, run:$", r"^\s*git add ", r"^To enable auto staging, run:$",
    r"^\s*dvc config core\.autostage true$", r"^Use `dvc push` to send your updates to remote storage\.$",
    r"^(Updating|Generating) lock file ", r"^Data and pipelines are up to date\.$", r"^> ",
    r"Unable to acquire lock", r"^Successfully registered model '", r"^Created version '\d+' of model ",
]))


class StageOutput:
    """Call it with each piece of a stage's output: `(text, frame)`, `frame` when the text ended with a
    carriage return instead of a newline. `logger`: a `logging.Logger` or Prefect's run logger."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, interval: float = PROGRESS_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._quiet_since = clock()  # a bar frame shows only after `interval` seconds without other output
        self._last_frame = ""
        self._json: list[str] = []
        self._level = logging.INFO  # the level of the record a continuation line belongs to

    def __call__(self, text: str, frame: bool = False) -> None:
        if frame:
            self._frame(text.strip())
        else:
            self._line(text.rstrip())

    def flush(self) -> None:
        """Relay an unterminated JSON block (a stage that died mid-print)."""
        if self._json:
            self.logger.debug("stage output:\n%s", "\n".join(self._json))
            self._json = []

    def _frame(self, text: str) -> None:
        now = self.clock()
        if not text or text == self._last_frame:
            return
        if now - self._quiet_since < self.interval:
            return
        self._last_frame = text
        self._emit(logging.INFO, "%s", text)

    def _emit(self, level: int, message: str, *args: object) -> None:
        if level > logging.DEBUG:
            self._quiet_since = self.clock()
        self.logger.log(level, message, *args)

    def _line(self, text: str) -> None:
        if self._json:
            self._json.append(text)
            if text in ("}", "]"):
                self.flush()
            return
        if text in ("{", "["):
            self._json = [text]
            return
        if not text.strip():
            return
        if record := RECORD.match(text):
            self._level = getattr(logging, record["level"])
            name = record["name"]
            message = record["message"] if name.startswith(("tasks.", "flows.")) else f"{name}: {record['message']}"
            self._emit(self._level, "%s%s", record["rank"] or "", message)
            return
        if match := RUNNING.match(text):
            self._level = logging.INFO
            self._emit(logging.INFO, "stage %s: running", match["stage"])
            return
        if match := UNCHANGED.match(text):
            self._level = logging.INFO
            self._emit(logging.INFO, "stage %s: unchanged, skipped", match["stage"])
            return
        if CHATTER.search(text):
            self.logger.debug("%s", text)
            return
        self._level = self._level_of(text)
        self._emit(self._level, "%s", text)

    def _level_of(self, text: str) -> int:
        """The level of a line that is no log record: DVC's prefix, a Python warning or traceback, our CLI's
        `error:`; an indented line continues the record before it; anything else is INFO."""
        if match := DVC_LEVEL.match(text):
            return getattr(logging, match["level"])
        if text.startswith(("error: ", "Traceback (most recent call last):")) or EXCEPTION.match(text):
            return logging.ERROR
        if PY_WARNING.match(text):
            return logging.WARNING
        if text[:1].isspace():
            return self._level
        return logging.INFO
