"""tasks.relay: a DVC stage's output becomes log records at their own level; bar frames become periodic
lines; DVC's git hints, the command echo and a stage's JSON summary go to DEBUG (the summary whole)."""

from __future__ import annotations

import logging

import pytest

from tasks.relay import StageOutput


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def relayed():
    """A StageOutput on a logger that keeps every record, with a clock the test moves."""
    logger = logging.getLogger("test_relay")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    clock = Clock()
    yield StageOutput(logger, interval=10.0, clock=clock), records, clock
    logger.removeHandler(handler)


def shown(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records if r.levelno > logging.DEBUG]


# What `dvc repro --single-item word2vec_register` printed before this relay (stage lines, MLflow's own
# format, its prints, DVC's hints), one output line per entry.
REGISTER_OUTPUT = """Running stage 'word2vec_register':
> python -m tasks word2vec register
2026/12/01 22:03:04 WARNING mlflow.pyfunc: Passing a Python object as `python_model` causes it to be serialized
2026/12/01 22:03:04 INFO mlflow.pyfunc: Validating input example against model signature

Successfully registered model 'word2vec'.
Created version '1' of model 'word2vec'.
2026-12-01 22:03:05,187 INFO tasks.tracking: registered word2vec version 1 (champion heldout_loss=0.343318)
{
  "alias": "champion",
  "version": 1
}
Updating lock file 'dvc.lock'

To track the changes with git, run:

\tgit add dvc.lock

To enable auto staging, run:

\tdvc config core.autostage true
Use `dvc push` to send your updates to remote storage."""


def test_records_keep_their_level_and_dvc_hints_blank_lines_and_json_are_not_shown(relayed) -> None:
    relay, records, _ = relayed
    for line in REGISTER_OUTPUT.splitlines():
        relay(line, False)
    relay.flush()
    assert shown(records) == [
        ("INFO", "stage word2vec_register: running"),
        ("WARNING", "mlflow.pyfunc: Passing a Python object as `python_model` causes it to be serialized"),
        ("INFO", "mlflow.pyfunc: Validating input example against model signature"),
        ("INFO", "registered word2vec version 1 (champion heldout_loss=0.343318)"),
    ]
    json_records = [r.getMessage() for r in records if '"alias"' in r.getMessage()]
    assert json_records == ['stage output:\n{\n  "alias": "champion",\n  "version": 1\n}'], "the JSON whole, once"
    assert not any(r.getMessage().strip() == "" for r in records), "no blank records"


def test_an_unchanged_stage_says_so_in_one_line(relayed) -> None:
    relay, records, _ = relayed
    for line in ["Stage 'word2vec_preprocess' didn't change, skipping", "Data and pipelines are up to date."]:
        relay(line, False)
    assert shown(records) == [("INFO", "stage word2vec_preprocess: unchanged, skipped")]


def test_errors_warnings_and_tracebacks_keep_a_level_above_info(relayed) -> None:
    relay, records, _ = relayed
    lines = ["2026-12-01 22:09:05,356 WARNING [rank 1/2] tasks.distributed: slow rank",
             "/x/torch/functional.py:12: UserWarning: deterministic kernels are not available",
             "  warnings.warn(",
             "Traceback (most recent call last):",
             '  File "/tmp/r/tasks/word2vec/train.py", line 180, in train',
             "AttributeError: 'tqdm' object has no attribute 'epoch'",
             "error: params.yaml: word2vec.train.lr must be > 0",
             "ERROR: failed to reproduce 'word2vec_train': failed to run: python -m tasks word2vec train",
             "a plain print"]
    for line in lines:
        relay(line, False)
    assert [level for level, _ in shown(records)] == ["WARNING", "WARNING", "WARNING", "ERROR", "ERROR", "ERROR",
                                                       "ERROR", "ERROR", "INFO"]
    assert shown(records)[0][1] == "[rank 1/2] slow rank"


def test_bar_frames_show_only_after_a_quiet_interval_and_never_twice(relayed) -> None:
    relay, records, clock = relayed
    relay("epoch 1/20:   0%|          | 0/90 [00:00<?, ?it/s]", True)  # at once: not shown
    clock.now += 11
    relay("epoch 1/20:  40%|####      | 36/90 [00:11<00:16, 3.2it/s]", True)
    clock.now += 2
    relay("epoch 1/20:  47%|####      | 42/90 [00:13<00:15, 3.2it/s]", True)  # 2 s after the last line
    clock.now += 9
    relay("epoch 1/20:  40%|####      | 36/90 [00:11<00:16, 3.2it/s]", True)  # the shown frame again
    relay("2026-12-01 22:09:05,356 INFO tasks.progress: segmentation_train epoch 1/20 loss=2.1", False)
    clock.now += 5
    relay("epoch 2/20:  10%|#         | 9/90 [00:05<00:40, 2.0it/s]", True)  # 5 s after the epoch line
    clock.now += 6
    relay("epoch 2/20:  20%|##        | 18/90 [00:11<00:36, 2.0it/s]", True)
    relay(" " * 50, True)  # tqdm clearing its line
    assert shown(records) == [
        ("INFO", "epoch 1/20:  40%|####      | 36/90 [00:11<00:16, 3.2it/s]"),
        ("INFO", "segmentation_train epoch 1/20 loss=2.1"),
        ("INFO", "epoch 2/20:  20%|##        | 18/90 [00:11<00:36, 2.0it/s]"),
    ]


def test_an_unterminated_json_block_is_relayed_whole_on_flush(relayed) -> None:
    relay, records, _ = relayed
    for line in ["{", '  "epochs": 3,']:
        relay(line, False)
    assert records == []
    relay.flush()
    assert [r.getMessage() for r in records] == ['stage output:\n{\n  "epochs": 3,']
