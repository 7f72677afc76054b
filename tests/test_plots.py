"""`d2lflow plots`: dvc.yaml's plots drawn offline (SVG inline, no script), and the same figures as PNGs
in the MLflow run of a train stage."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from flows.cli import main
from tasks import plots
from tests.conftest import REPO, git

HISTORY = "epoch,loss,center_words_per_s,seconds\n1,0.52,100,1\n2,0.41,100,1\n3,0.37,100,1\n"


def make_plots_repo(root: Path) -> Path:
    """This checkout's dvc.yaml (and DVC templates) in a fresh git + DVC repository, with a word2vec
    history and detection's precision-recall folder written as the stages would."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvc/plots/confusion_pixels.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    git(root, "init", "-q")
    history = root / "artifacts/word2vec/train/history.csv"
    history.parent.mkdir(parents=True)
    history.write_text(HISTORY)
    pr = root / "artifacts/detection/evaluate/pr_curves"
    pr.mkdir(parents=True)
    (pr / "cat.csv").write_text("recall,precision\n0,1\n0.5,0.8\n1,0.3\n")
    (pr / "dog.csv").write_text("recall,precision\n0,1\n0.6,0.5\n")
    return root


def drawn_pixels(png: bytes) -> int:
    """Pixels that are neither white nor transparent: something was drawn."""
    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    return int(((rgba[..., :3].min(axis=2) < 200) & (rgba[..., 3] > 0)).sum())


def test_plot_targets_follow_the_pipelines_stages() -> None:
    assert plots.plot_targets(REPO, "word2vec") == ["artifacts/word2vec/train/history.csv", "word2vec_validation"]
    detection = plots.plot_targets(REPO, "detection")
    assert "detection_losses" in detection  # the top-level plot over detection_train's history
    assert "artifacts/detection/evaluate/pr_curves" in detection
    assert not any("word2vec" in t or "segmentation" in t for t in detection)
    assert plots.plot_targets(REPO, stage="word2vec_train") == ["artifacts/word2vec/train/history.csv",
                                                                "word2vec_validation"]
    assert plots.plot_targets(REPO, stage="word2vec_evaluate") == []


def test_the_plots_page_draws_svg_without_scripts_or_network(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_plots_repo(tmp_path / "repo")
    assert main(["plots", "--root", str(root)]) == 0
    page = (root / "artifacts/plots/all/index.html").read_text()
    assert "<script" not in page and "cdn" not in page.lower()
    assert page.count("<svg") == 3  # the word2vec loss and one precision-recall figure per class file
    assert "word2vec training loss per epoch" in page
    assert "not drawn: detection_losses" in page  # declared but not produced: said on the page
    pngs = sorted((root / "artifacts/plots/all").glob("*.png"))
    assert len(pngs) == 3 and all(drawn_pixels(p.read_bytes()) > 500 for p in pngs)


def test_a_pipeline_without_data_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_plots_repo(tmp_path / "repo")
    assert main(["plots", "segmentation", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no plot has data yet")
    assert "d2lflow run segmentation" in err[0] and not (root / "artifacts/plots/segmentation").exists()


def test_a_train_stage_logs_its_history_and_figures_to_mlflow(tmp_path: Path) -> None:
    root = make_plots_repo(tmp_path / "repo")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        logged = plots.log_stage_figures(root, "word2vec_train", [root / "artifacts/word2vec/train/history.csv"])
    # the stage's own plot and the top-level one over its validation.csv (not written here: a warning)
    assert logged == ["history/history.csv", "plots/word2vec_train_history.png"]
    client = MlflowClient()
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "down")))
    assert (local / "history/history.csv").read_text() == HISTORY
    assert drawn_pixels((local / "plots/word2vec_train_history.png").read_bytes()) > 500

