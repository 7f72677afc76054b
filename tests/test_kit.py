"""The pipeline kit (tasks/kit.py): every pipeline's train stage is a `TrainSpec` the kit runs, and the
kit's own pieces (history file, epoch loop with checkpoint and resume) behave as documented."""

from __future__ import annotations

import importlib

import pytest

from tasks import kit
from tasks.params import Params


@pytest.mark.parametrize("pipeline", ["word2vec", "segmentation", "detection"])
def test_the_train_stage_is_a_spec_the_kit_runs(pipeline: str) -> None:
    stages = importlib.import_module(f"tasks.{pipeline}.stages")
    assert isinstance(stages.TRAIN, kit.TrainSpec)
    assert stages.TRAIN.pipeline == pipeline
    assert stages.STAGES["train"] is stages.train
    outputs = kit.train_outputs(Params(), pipeline)
    assert {path.name for path in outputs.values()} == {"model.pt", "history.csv", "metrics.json", "run.json",
                                                        "validation.csv"}


def test_history_csv_formats_each_column_as_declared() -> None:
    history = [{"epoch": 1, "loss": 0.5, "rate": 1234.56, "seconds": 2.0},
               {"epoch": 2, "loss": 0.25, "rate": 99.0, "seconds": 1.5}]
    text = kit.history_csv(history, {"epoch": "", "loss": ".6f", "rate": ".1f", "seconds": ".3f"})
    assert text == "epoch,loss,rate,seconds\n1,0.500000,1234.6,2.000\n2,0.250000,99.0,1.500\n"
