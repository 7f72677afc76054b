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
    assert kit.epoch_loop in stages.TRAIN.code  # its loop is the kit's: a checkpoint of another loop is not resumed
    outputs = kit.train_outputs(Params(), pipeline)
    assert {path.name for path in outputs.values()} == {"model.pt", "history.csv", "metrics.json", "run.json",
                                                        "validation.csv"}


def test_every_spec_whose_loop_is_the_kits_hashes_the_kits_loop() -> None:
    """A change to kit.epoch_loop changes the fingerprint of every stage that trains in it, so no checkpoint of
    another loop is resumed (style fits in its own loop and never resumes)."""
    from tasks.classification import stages as classification
    from tasks.generative import stages as generative

    specs = [classification.TRAIN, generative.TRAIN_VAE, generative.TRAIN_DCGAN]
    assert all(kit.epoch_loop in spec.code for spec in specs)


def test_history_csv_formats_each_column_as_declared() -> None:
    history = [{"epoch": 1, "loss": 0.5, "rate": 1234.56, "seconds": 2.0},
               {"epoch": 2, "loss": 0.25, "rate": 99.0, "seconds": 1.5}]
    text = kit.history_csv(history, {"epoch": "", "loss": ".6f", "rate": ".1f", "seconds": ".3f"})
    assert text == "epoch,loss,rate,seconds\n1,0.500000,1234.6,2.000\n2,0.250000,99.0,1.500\n"


def _loop(tmp_path, epochs: int, state: dict | None = None, seen: list | None = None) -> kit.FitResult:
    import torch

    from tasks import distributed
    from tasks.runtime import load_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.arange(24.0).reshape(8, 3) / 24
    y = torch.tensor([0, 1] * 4)
    checkpoint = tmp_path / "last.pt"
    job = kit.TrainJob("demo", Params(), None, distributed.Context(torch.device("cpu")), checkpoint, "fp",
                       load_checkpoint(checkpoint, "fp") if state == "resume" else None,
                       on_epoch=seen.append if seen is not None else None)

    def train_epoch(epoch: int) -> dict:
        order = torch.randperm(8, generator=torch.Generator().manual_seed(epoch))
        loss = torch.nn.functional.cross_entropy(model(x[order]), y[order])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), "examples": 8}

    return kit.epoch_loop(job, model, optimizer, epochs, train_epoch,
                          validate=lambda m, epoch: {"val_loss": float(torch.rand(()))})


def test_epoch_loop_checkpoints_every_epoch_and_a_resumed_run_ends_with_the_same_weights(tmp_path) -> None:
    import torch

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = _loop(tmp_path / "a", 3)
    _loop(tmp_path / "b", 2)  # interrupted after epoch 2: its checkpoint stays
    records: list = []
    resumed = _loop(tmp_path / "b", 3, state="resume", seen=records)
    assert resumed.resumed_from_epoch == 2 and [r["epoch"] for r in records] == [3]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key])
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert saved["epoch"] == 3 and saved["fingerprint"] == "fp"


class _Steps:
    """A stateful object beside the model and optimizer (as a GradScaler): counts the steps taken."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def _named_loop(tmp_path, epochs: int, steps: _Steps, resume: bool = False) -> kit.FitResult:
    import torch

    from tasks import distributed
    from tasks.runtime import load_checkpoint

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = tmp_path / "last.pt"
    job = kit.TrainJob("demo", Params(), None, distributed.Context(torch.device("cpu")), checkpoint, "fp",
                       load_checkpoint(checkpoint, "fp") if resume else None)

    def train_epoch(epoch: int) -> dict:
        steps.n += 1
        return {"loss": float(steps.n), "words": 5, "examples": 10}

    return kit.epoch_loop(job, model, optimizer, epochs, train_epoch, rate="center_words_per_s", seconds=False,
                          extra={"steps": steps})


def test_epoch_loop_names_its_rate_key_can_leave_seconds_out_and_checkpoints_extra_state(tmp_path) -> None:
    import torch

    first = _named_loop(tmp_path, 2, _Steps())
    assert [sorted(h) for h in first.history] == [["center_words_per_s", "epoch", "loss", "words"]] * 2
    assert all(h["center_words_per_s"] > 0 for h in first.history)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["steps"] == {"n": 2}
    fresh = _Steps()  # a resumed run gets the extra state back before its next epoch
    resumed = _named_loop(tmp_path, 3, fresh, resume=True)
    assert resumed.resumed_from_epoch == 2 and fresh.n == 3 and resumed.history[-1]["loss"] == 3.0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["steps"] == {"n": 3}
