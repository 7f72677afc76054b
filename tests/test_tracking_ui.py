"""What the MLflow UI shows of a run: the experiment's kind and description, counts as tags (not metric
charts), run names that say which params differ, and `git_dirty` judged on the pipeline's own files."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tasks import tracking
from tasks.params import load_params, set_params
from tests.conftest import REPO, git


@pytest.fixture
def git_root(tmp_path: Path) -> Path:
    """A git repository with this checkout's params.yaml, dvc.yaml and two stage deps, committed clean."""
    root = tmp_path / "repo"
    for name in ("params.yaml", "dvc.yaml", "tasks/word2vec/train.py", "tasks/segmentation/train.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "clean")
    return root


def test_experiment_opens_on_the_runs_table_and_has_a_description(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = load_params(tmp_path / "params.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure(params)
    experiment = MlflowClient().get_experiment(tracking.experiment_id("segmentation", params))
    # the value MLflow 3's UI maps to its classic ML view (runs table), not the GenAI overview
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = experiment.tags["mlflow.note.content"]
    assert "segmentation_train" in note and "fcn-voc" in note and "mean_iou" in note
    assert tracking.experiment_id("segmentation", params) == experiment.experiment_id  # found, not re-created
    older = MlflowClient().create_experiment("word2vec")  # made before d2lflow tagged its experiments
    assert tracking.experiment_id("word2vec", params) == older
    tags = MlflowClient().get_experiment(older).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "word2vec_train" in tags["mlflow.note.content"]


def test_counts_are_tags_and_scores_are_metrics(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        tracking.log_metrics({"analogy_accuracy": 0.25, "analogy_total": 19544, "wordsim353_pairs": 300,
                              "vocab_size": 6719, "epochs": 5, "resumed_from_epoch": 0, "val_images": 20,
                              "heldout_loss": 0.41, "analogy_questions": 1200, "flag": True})
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.metrics == {"analogy_accuracy": 0.25, "heldout_loss": 0.41}
    assert {k: data.tags[k] for k in ("analogy_total", "wordsim353_pairs", "vocab_size", "epochs",
                                      "resumed_from_epoch", "val_images", "analogy_questions")} == {
        "analogy_total": "19544", "wordsim353_pairs": "300", "vocab_size": "6719", "epochs": "5",
        "resumed_from_epoch": "0", "val_images": "20", "analogy_questions": "1200"}
    # what flows.reproduce compares a rebuilt model's metrics files against: the counts too
    numbers = tracking.recorded_numbers(MlflowClient().get_run(run.info.run_id))
    assert numbers["analogy_total"] == 19544.0 and numbers["heldout_loss"] == 0.41 and "flag" not in numbers


def test_another_pipelines_edits_leave_a_run_clean(git_root: Path) -> None:
    set_params(git_root / "params.yaml", ["word2vec.train.lr=0.005"])
    with (git_root / "tasks/word2vec/train.py").open("a") as source:
        source.write("# edited\n")
    params = load_params(git_root / "params.yaml")
    segmentation = tracking.pipeline_git_state(params, "segmentation")
    assert segmentation["dirty"] is False and segmentation["dirty_files"] == []
    word2vec = tracking.pipeline_git_state(params, "word2vec")
    assert word2vec["dirty"] is True and word2vec["dirty_files"] == ["params.yaml", "tasks/word2vec/train.py"]
    assert tracking.lineage_tags(params, "segmentation", locked=False)["d2lflow.git_dirty"] == "false"


def test_a_pipelines_own_dvc_yaml_stage_edit_makes_it_dirty(git_root: Path) -> None:
    text = (git_root / "dvc.yaml").read_text()
    (git_root / "dvc.yaml").write_text(text.replace("cmd: python -m tasks segmentation train",
                                                    "cmd: python3 -m tasks segmentation train"))
    params = load_params(git_root / "params.yaml")
    assert tracking.pipeline_git_state(params, "segmentation")["dirty_files"] == ["dvc.yaml"]
    assert tracking.pipeline_git_state(params, "word2vec")["dirty"] is False


def test_run_names_say_which_params_differ_from_the_commit(git_root: Path) -> None:
    params = load_params(git_root / "params.yaml")
    short = git(git_root, "rev-parse", "HEAD").strip()[:8]
    assert tracking.run_name("word2vec", params) == f"word2vec-{short}"
    set_params(git_root / "params.yaml", ["word2vec.train.lr=0.005", "word2vec.train.epochs=3",
                                          "segmentation.train.lr=0.5"])
    params = load_params(git_root / "params.yaml")
    assert tracking.changed_params(params, "word2vec") == {"word2vec.train.lr": 0.005, "word2vec.train.epochs": 3}
    assert tracking.run_name("word2vec", params) == f"word2vec-{short}-lr=0.005,epochs=3"
    assert tracking.run_name("segmentation", params) == f"segmentation-{short}-lr=0.5"
    assert tracking.run_name("detection", params) == f"detection-{short}"


def test_a_long_override_label_ends_in_a_digest() -> None:
    changes = {f"word2vec.train.key{i}": 1000 + i for i in range(8)}
    label = tracking.overrides_label(changes)
    assert len(label) <= 40 and label.startswith("key0=1000+7-")
    other = tracking.overrides_label({**changes, "word2vec.train.key7": 9})
    assert other != label and other.startswith("key0=1000+7-")  # the digest tells two long labels apart
    # the same last key part in two sections: the full keys
    assert tracking.overrides_label({"word2vec.train.lr": 1, "word2vec.x.lr": 2}) == (
        "word2vec.train.lr=1,word2vec.x.lr=2")
