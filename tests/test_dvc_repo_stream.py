"""run_dvc streams a stage's output as it arrives (not after the stage ends), keeps failing with DVC's
own output, and keeps waiting for DVC's lock; stream_process splits lines and progress frames."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
from dvc.lock import make_lock

from tasks.dvc_repo import DVC_LOCK_FILE, RepoBusyError, run_dvc, stage_environment, stream_process
from tasks.errors import D2lflowError
from tasks.relay import StageOutput

# The stage says one line, then waits for the test to have *received* it (the file `go`), so it can only
# finish if its output is relayed while it runs; captured output would leave it waiting, then exit 3.
TALK = """
import sys, time
from pathlib import Path
print("first line", flush=True)
sys.stderr.write("epoch 1/2: 50%|#  | 1/2\\r"); sys.stderr.flush()
deadline = time.monotonic() + 60
while not Path("go").exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.05)
print("2026-12-01 22:09:05,356 WARNING tasks.talk: heard back", flush=True)
if len(sys.argv) > 1:
    print("ERROR-ish last words", flush=True)
    sys.exit(int(sys.argv[1]))
Path("said.txt").write_text("done")
"""


def talking_stage(root: Path, exit_code: int | None = None) -> None:
    (root / "talk.py").write_text(TALK)
    cmd = "python talk.py" + ("" if exit_code is None else f" {exit_code}")
    (root / "dvc.yaml").write_text(f"stages:\n  talk:\n    cmd: {cmd}\n    deps: [talk.py]\n    outs: [said.txt]\n")


class Listener:
    """Receives the output; answers the stage's first line with the file it waits for."""

    def __init__(self, root: Path) -> None:
        self.root, self.received = root, []

    def __call__(self, text: str, frame: bool) -> None:
        self.received.append((text, frame, (self.root / "go").exists()))
        if text == "first line":
            (self.root / "go").write_text("")


def test_stage_output_arrives_while_the_stage_runs(dvc_repo: Path) -> None:
    talking_stage(dvc_repo)
    listener = Listener(dvc_repo)
    output = run_dvc(dvc_repo, "repro", "talk", on_output=listener)
    assert (dvc_repo / "said.txt").read_text() == "done"
    received = [(text, frame) for text, frame, _ in listener.received]
    assert ("first line", False) in received and ("epoch 1/2: 50%|#  | 1/2", True) in received
    heard = [go for text, _, go in listener.received if text.endswith("heard back")]
    assert heard == [True], "the stage went on only after its first line had been received"
    assert "first line" in output and "epoch 1/2" not in output, "the output returned: lines, not frames"


def test_a_failing_stage_raises_with_dvcs_output_after_relaying_it(dvc_repo: Path) -> None:
    talking_stage(dvc_repo, exit_code=5)
    listener = Listener(dvc_repo)
    with pytest.raises(D2lflowError) as info:
        run_dvc(dvc_repo, "repro", "talk", on_output=listener)
    message = str(info.value)
    assert "`dvc repro talk` failed" in message and "ERROR-ish last words" in message
    assert "failed to reproduce 'talk'" in message
    assert any(text == "ERROR-ish last words" for text, _, _ in listener.received)


def test_streamed_runs_still_wait_for_dvcs_lock_without_relaying_its_error(dvc_repo: Path) -> None:
    logger = logging.getLogger("test_dvc_repo_stream")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    dvc_lock = make_lock(str(dvc_repo / DVC_LOCK_FILE), tmp_dir=str(dvc_repo / ".dvc/tmp"))
    dvc_lock.lock()
    try:
        with pytest.raises(RepoBusyError, match=f"held by pid {os.getpid()}"):
            run_dvc(dvc_repo, "add", "numbers.txt", timeout=2, on_output=StageOutput(logger))
    finally:
        dvc_lock.unlock()
        logger.removeHandler(handler)
    assert any("Unable to acquire lock" in r.getMessage() for r in records)
    assert all(r.levelno == logging.DEBUG for r in records if "lock" in r.getMessage()), "retried, not an error"


def test_stream_process_splits_lines_frames_and_crlf_across_reads(tmp_path: Path) -> None:
    script = ("import sys, time\n"
              "for part in [b'a\\r', b'\\nb\\rc', b'\\xc3', b'\\xa9\\n', b'tail']:\n"
              "    sys.stdout.buffer.write(part); sys.stdout.flush(); time.sleep(0.2)\n")
    pieces: list[tuple[str, bool]] = []
    code, output = stream_process([sys.executable, "-c", script], tmp_path, stage_environment(),
                                  lambda text, frame: pieces.append((text, frame)))
    assert code == 0
    assert pieces == [("a", False), ("b", True), ("cé", False), ("tail", False)]
    assert output == "a\ncé\ntail"
