"""tasks.progress: the per-epoch progress line (epoch k/N, loss, throughput, elapsed, time left) and
where the MLflow run is shown."""

from __future__ import annotations

import logging

import pytest

from tasks.progress import EpochProgress, describe_run, duration, run_url, ui_command


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_epoch_line_says_epoch_loss_throughput_elapsed_and_time_left() -> None:
    clock = Clock()
    progress = EpochProgress("segmentation_train", 20, clock=clock)
    clock.now += 30.0  # one epoch of 30 s: 19 left
    assert progress.line(1, 2.34567, 9.6789, "images/s", train_pixel_accuracy=0.51234) == (
        "segmentation_train epoch 1/20 loss=2.3457 train_pixel_accuracy=0.5123 9.68 images/s elapsed 30.0s"
        " ETA 9m30s")
    clock.now += 30.0 * 19
    assert progress.line(20, 0.5, 210345.2, "center words/s").endswith(
        "epoch 20/20 loss=0.5000 210,345 center words/s elapsed 10m00s ETA 0.0s")


def test_a_resumed_run_estimates_from_its_own_epochs() -> None:
    clock = Clock()
    progress = EpochProgress("word2vec_train", 10, start_epoch=6, clock=clock)
    clock.now += 8.0  # epochs 7 and 8 in 8 s: 4 s each, 2 left
    assert progress.line(8, 0.3, 1000.0, "center words/s").endswith("elapsed 8.0s ETA 8.0s")


def test_epoch_logs_through_logging_and_not_on_other_ranks(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        EpochProgress("word2vec_train", 2).epoch(1, 0.6, 5000.0, "center words/s")
        EpochProgress("word2vec_train", 2, enabled=False).epoch(1, 0.6, 5000.0, "center words/s")
    assert [r.getMessage().split(" loss")[0] for r in caplog.records] == ["word2vec_train epoch 1/2"]


@pytest.mark.parametrize(("seconds", "text"), [(0.04, "0.0s"), (59.94, "59.9s"), (61, "1m01s"), (3599.4, "59m59s"),
                                               (7260, "2h01m")])
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_sqlite_store_points_at_mlflow_ui_and_says_how_to_start_it() -> None:
    uri = "sqlite:////work/repo/mlflow.db"
    assert run_url(uri, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert describe_run(uri, "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning "
        "(once `mlflow ui --backend-store-uri sqlite:////work/repo/mlflow.db` runs)")


def test_a_tracking_server_is_linked_directly_without_credentials() -> None:
    assert describe_run("https://alice:s3cret@mlflow.example.org:8443/", "1", "r1") == (
        "https://mlflow.example.org:8443/#/experiments/1/runs/r1?workflowType=machine_learning")
    assert ui_command("http://127.0.0.1:5001") is None
    assert ui_command("postgresql://bob:s3cret@db:5432/mlflow") == "mlflow ui --backend-store-uri postgresql://db:5432/mlflow"
