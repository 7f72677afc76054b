"""Registration (tasks.tracking.log_and_register) in-process on tiny models: idempotent in one store,
registered again in another store, and the safe loader (tasks.loader / d2lflow.load), which
builds models from installed code and hash-checked files only."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

import d2lflow
from models.skipgram import SkipGram
from tasks import tracking
from tasks.errors import D2lflowError
from tasks.params import Params, load_params
from tasks.word2vec.serving import Word2vecEmbeddings
from tests.conftest import REPO

TOKENS = ["<unk>", "chip", "wafer", "dog", "cat"]


def _store(monkeypatch: pytest.MonkeyPatch, path: Path) -> str:
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def word2vec_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Params, dict[str, str], Path]:
    """A root with params.yaml, a tiny skip-gram's weights, a vocabulary, and a training run's run.json."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    params = load_params(root / "params.yaml")
    torch.manual_seed(0)
    torch.save(SkipGram(len(TOKENS), 4).state_dict(), root / "model.pt")
    (root / "vocab.json").write_text(json.dumps({"idx_to_token": TOKENS}))
    _store(monkeypatch, tmp_path / "first.db")
    run_file = root / "run.json"
    with tracking.training_run("word2vec", params, "cpu", run_file):
        pass
    return params, {"weights": str(root / "model.pt"), "vocab": str(root / "vocab.json")}, run_file


def _register(params: Params, artifacts: dict[str, str], run_file: Path, heldout_loss: float = 0.3) -> dict:
    return tracking.log_and_register("word2vec", params, params.word2vec.register, run_file,
                                     {"heldout_loss": heldout_loss}, Word2vecEmbeddings(), artifacts, None, None)


def _versions(uri: str, name: str = "word2vec") -> list:
    return MlflowClient(uri, uri).search_model_versions(f"name = '{name}'")


def test_a_repeated_registration_is_reported_unchanged_and_registers_nothing(word2vec_outputs) -> None:
    params, artifacts, run_file = word2vec_outputs
    first = _register(params, artifacts, run_file)
    registered_json = params.path(params.word2vec.register.out_dir) / "registered.json"
    written = registered_json.read_bytes()
    second = _register(params, artifacts, run_file)
    assert (first["outcome"], first["version"], first["alias"]) == ("registered", 1, "champion")
    assert second["outcome"] == "unchanged"
    assert second["message"] == "unchanged: word2vec version 1 is still champion"
    assert len(_versions(mlflow.get_tracking_uri())) == 1
    assert registered_json.read_bytes() == written  # dvc.lock stays the same after a run that changed nothing
    outcome = json.loads((registered_json.parent / "outcome.json").read_text())
    assert outcome["status"] == "unchanged" and outcome["aliases"] == ["champion"]


def test_another_store_gets_the_model_registered_in_it(word2vec_outputs, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    params, artifacts, run_file = word2vec_outputs
    first_uri = mlflow.get_tracking_uri()
    _register(params, artifacts, run_file)
    other = _store(monkeypatch, tmp_path / "other.db")
    again = _register(params, artifacts, run_file)
    assert again["outcome"] == "registered" and again["registry"] == other
    versions = _versions(other)
    assert [int(v.version) for v in versions] == [again["version"]] == [1]
    assert MlflowClient(other, other).get_model_version("word2vec", "1").aliases == ["champion"]
    trained_in = json.loads(run_file.read_text())["run_id"]
    assert versions[0].tags["d2lflow.trained_in_run"] == trained_in  # the run in the first store
    assert MlflowClient(other).get_run(versions[0].run_id).data.metrics["heldout_loss"] == 0.3
    assert _register(params, artifacts, run_file)["outcome"] == "unchanged"
    assert len(_versions(other)) == 1 and len(_versions(first_uri)) == 1


def test_new_weights_are_a_new_version_and_the_alias_rule_holds(word2vec_outputs) -> None:
    params, artifacts, run_file = word2vec_outputs
    _register(params, artifacts, run_file, heldout_loss=0.3)
    torch.save(SkipGram(len(TOKENS), 4).state_dict(), artifacts["weights"])
    worse = _register(params, artifacts, run_file, heldout_loss=0.4)
    assert (worse["outcome"], worse["version"], worse["alias"]) == ("registered", 2, "challenger")
    assert (worse["previous_champion_version"], worse["previous_champion_value"]) == (1, 0.3)
    assert _register(params, artifacts, run_file, 0.4)["message"] == "unchanged: word2vec version 2 is still challenger"


# ----------------------------------------------------------------------------- the safe loader

def _model_dir(uri: str, name: str, version: int) -> Path:
    client = MlflowClient(uri, uri)
    mlflow.set_tracking_uri(uri)
    location = client.get_model_version_download_uri(name, str(version))
    return Path(location.removeprefix("file://"))


class _Marker:
    """Unpickling this creates a file (what an attacker's python_model.pkl could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_loader_builds_word2vec_from_installed_code_and_runs_nothing_from_the_store(word2vec_outputs,
                                                                                     tmp_path: Path) -> None:
    params, artifacts, run_file = word2vec_outputs
    _register(params, artifacts, run_file)
    uri = mlflow.get_tracking_uri()
    model_dir = _model_dir(uri, "word2vec", 1)
    marker = tmp_path / "code-ran"
    (model_dir / "python_model.pkl").write_bytes(pickle.dumps(_Marker(marker)))
    for module in (model_dir / "code").rglob("*.py"):
        module.write_text(f"open({str(marker)!r}, 'w').close()\n")
    loaded = d2lflow.load("word2vec@champion", tracking_uri=uri)
    assert not marker.exists()
    assert (loaded.name, loaded.version, loaded.pipeline) == ("word2vec", 1, "word2vec")
    weights = torch.load(artifacts["weights"], weights_only=True)["embed_v.weight"].numpy()
    vectors = loaded.predict(pd.DataFrame({"word": ["chip", "no-such-word"]}))
    np.testing.assert_array_equal(vectors, weights[[1, 0]])
    # The tampering is real: MLflow's pyfunc unpickles the file, which runs the attacker's call.
    with pytest.raises(Exception):  # noqa: B017 (whatever the pyfunc loader makes of a file object)
        mlflow.pyfunc.load_model("models:/word2vec@champion")
    assert marker.exists()


def test_loader_refuses_weights_whose_hash_differs_from_the_version_tag(word2vec_outputs) -> None:
    params, artifacts, run_file = word2vec_outputs
    _register(params, artifacts, run_file)
    uri = mlflow.get_tracking_uri()
    stored = _model_dir(uri, "word2vec", 1) / "artifacts" / "model.pt"
    state = torch.load(stored, weights_only=True)
    state["embed_v.weight"] += 1
    torch.save(state, stored)
    with pytest.raises(D2lflowError, match="artifacts/model.pt has sha256 .* but the version records"):
        d2lflow.load("word2vec@1", tracking_uri=uri)
    with pytest.raises(D2lflowError, match="not found"):
        d2lflow.load("word2vec@no-such-alias", tracking_uri=uri)


def _register_image_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline: str, model: torch.nn.Module,
                          config: dict, python_model) -> tuple[str, Params]:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    params = load_params(root / "params.yaml")
    torch.save(model.state_dict(), root / "model.pt")
    (root / "serving.json").write_text(json.dumps(config))
    uri = _store(monkeypatch, tmp_path / "store.db")
    cfg = getattr(params, pipeline).register
    tracking.log_and_register(pipeline, params, cfg, root / "run.json", {cfg.primary_metric: 0.5}, python_model,
                              {"weights": str(root / "model.pt"), "config": str(root / "serving.json")}, None, None)
    return uri, params


def test_loader_builds_the_fcn_and_predicts_as_the_pyfunc_does(tmp_path: Path, monkeypatch) -> None:
    from models.fcn import build_fcn
    from tasks.segmentation.serving import FcnSegmenter
    from tasks.voc import VOC_CLASSES

    torch.manual_seed(0)
    config = {"num_classes": len(VOC_CLASSES), "tile": [64, 96], "overlap": 0.25, "classes": list(VOC_CLASSES)}
    uri, params = _register_image_model(tmp_path, monkeypatch, "segmentation", build_fcn(len(VOC_CLASSES), "none"),
                                        config, FcnSegmenter())
    images = np.random.default_rng(0).integers(0, 256, (1, 70, 100, 3), dtype=np.uint8)
    loaded = d2lflow.load(f"{params.segmentation.register.model_name}@champion", tracking_uri=uri)
    expected = mlflow.pyfunc.load_model(f"models:/{params.segmentation.register.model_name}@champion").predict(images)
    assert loaded.pipeline == "segmentation"
    np.testing.assert_array_equal(loaded.predict(images), expected)


@pytest.mark.slow
def test_loader_builds_the_detector_and_predicts_as_the_pyfunc_does(tmp_path: Path, monkeypatch) -> None:
    from models.detection import build_from_config
    from tasks.detection.serving import FasterRcnnDetector
    from tasks.voc import VOC_CLASSES

    params = load_params(REPO / "params.yaml")
    train = params.detection.train.model_dump(mode="json")
    evaluate = {**params.detection.evaluate.model_dump(mode="json"), "score_thresh": 0.0}
    torch.manual_seed(0)
    model = build_from_config(train, len(VOC_CLASSES))
    config = {"train": train, "evaluate": evaluate, "classes": list(VOC_CLASSES)}
    uri, params = _register_image_model(tmp_path, monkeypatch, "detection", model, config, FasterRcnnDetector())
    images = np.random.default_rng(0).integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    name = params.detection.register.model_name
    loaded = d2lflow.load(f"{name}@champion", tracking_uri=uri)
    expected = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(images)
    assert loaded.pipeline == "detection" and len(expected) > 0
    pd.testing.assert_frame_equal(loaded.predict(images), expected)


def test_the_run_summary_of_an_unchanged_run_claims_no_registration(word2vec_outputs) -> None:
    from flows.pipeline import summary_markdown
    from tasks.atomic import write_json

    params, artifacts, run_file = word2vec_outputs
    write_json(params.path(params.word2vec.train.out_dir) / "metrics.json", {"final_epoch_loss": 0.4})
    write_json(params.path(params.word2vec.evaluate.out_dir) / "metrics.json", {"heldout_loss": 0.3})
    _register(params, artifacts, run_file)
    first, _ = summary_markdown("word2vec", params.root())
    _register(params, artifacts, run_file)
    text, summary = summary_markdown("word2vec", params.root())
    assert first.splitlines()[0] == "# word2vec: registered word2vec version 1 as champion"
    assert text.splitlines()[0] == "# word2vec: unchanged: word2vec version 1 is still champion"
    assert "Nothing was registered" in text and summary["registration"]["status"] == "unchanged"
