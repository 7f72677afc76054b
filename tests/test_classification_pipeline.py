"""The classification pipeline's parts: the three data sources (the real sample as `local`, a local HTTP
mirror as `download` with MD5s), preprocess (seeded split, an `error:` line per malformed IDX file), the
per-epoch functions with checkpoint and resume, the scores and the served model."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.lenet import build_lenet
from tasks.classification import train as tr
from tasks.classification.data import FashionMnist, load_split, preprocess, split_indices, to_tensor
from tasks.classification.idx import read_split
from tasks.classification.metrics import classification_scores
from tasks.classification.serving import LenetClassifier
from tasks.classification.source import FILES
from tasks.classification.stages import acquire
from tasks.download import fetch
from tasks.errors import DownloadError
from tasks.params import ClassificationPreprocessParams, ClassificationTrainParams, load_params, set_params
from tasks.synthetic.fashion_mnist import write_synthetic_fashion_mnist
from tests.conftest import REPO

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist-sample"


def _root(tmp_path: Path, overrides: list[str]) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    set_params(root / "params.yaml", overrides)
    return root


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- sources

def test_fetch_checks_an_md5_when_one_is_given(server, tmp_path: Path) -> None:
    base, served, _ = server
    (served / "f.gz").write_bytes(b"fashion" * 1000)
    good = _md5(served / "f.gz")
    assert fetch(f"{base}/f.gz", tmp_path / "ok.gz", None, md5=good, progress=False).read_bytes() == b"fashion" * 1000
    with pytest.raises(DownloadError) as error:
        fetch(f"{base}/f.gz", tmp_path / "bad.gz", None, md5="0" * 32, progress=False)
    assert "MD5 mismatch" in str(error.value) and good in str(error.value) and "0" * 32 in str(error.value)
    assert not (tmp_path / "bad.gz").exists() and not (tmp_path / "bad.gz.part").exists()


def test_download_source_installs_the_four_files_checked_against_their_md5(server, tmp_path: Path) -> None:
    base, served, httpd = server
    for name in FILES:
        shutil.copy(SAMPLE / name, served / name)
    md5 = {name: _md5(SAMPLE / name) for name in FILES}
    root = _root(tmp_path, ["classification.data.source=download", f"classification.data.url={base}/",
                            f"classification.data.md5={json.dumps(md5)}"])
    summary = acquire(load_params(root / "params.yaml"))
    assert summary["source"] == "download"
    for name in FILES:
        assert (root / "data/fashion-mnist" / name).read_bytes() == (SAMPLE / name).read_bytes()
    assert sorted(path for path, _ in httpd.requests) == sorted(f"/{name}" for name in FILES)


def test_download_with_a_wrong_md5_is_refused_and_leaves_data_as_it_was(server, tmp_path: Path) -> None:
    base, served, _ = server
    for name in FILES:
        shutil.copy(SAMPLE / name, served / name)
    md5 = {name: _md5(SAMPLE / name) for name in FILES}
    md5["t10k-labels-idx1-ubyte.gz"] = "bb300cfdad3c16e7a12a480ee83cd310"  # the official one: not this file
    root = _root(tmp_path, ["classification.data.source=download", f"classification.data.url={base}",
                            f"classification.data.md5={json.dumps(md5)}"])
    (root / "data/fashion-mnist").mkdir(parents=True)
    (root / "data/fashion-mnist/keep.txt").write_text("old")
    wrong = "MD5 mismatch.*t10k-labels-idx1-ubyte.gz.*bb300cfdad3c16e7a12a480ee83cd310"
    with pytest.raises(DownloadError, match=wrong):
        acquire(load_params(root / "params.yaml"))
    assert [p.name for p in (root / "data/fashion-mnist").iterdir()] == ["keep.txt"]


def test_local_source_on_the_real_sample_then_preprocess_holds_out_a_seeded_split(tmp_path: Path) -> None:
    root = _root(tmp_path, ["classification.data.source=local", f"classification.data.local_path={SAMPLE}"])
    params = load_params(root / "params.yaml")
    acquire(params)
    for name in FILES:
        assert (root / "data/fashion-mnist" / name).read_bytes() == (SAMPLE / name).read_bytes()
    out = root / "artifacts/classification/preprocess"
    counts = preprocess(root / "data/fashion-mnist", out, params.classification.preprocess, params.seed)
    assert counts == {"train": 1800, "val": 200, "test": 500}
    train_x, train_y = read_split(SAMPLE, "train")
    test_x, test_y = read_split(SAMPLE, "t10k")
    images, labels = {}, {}
    for split in ("train", "val", "test"):
        images[split], labels[split] = load_split(out, split)
        assert images[split].dtype == np.uint8 and images[split].shape[1:] == (28, 28)
        assert labels[split].dtype == np.int64
    np.testing.assert_array_equal(images["test"], test_x)
    np.testing.assert_array_equal(labels["test"], test_y)
    train_idx, val_idx = split_indices(2000, 0.1, params.seed)
    np.testing.assert_array_equal(images["val"], train_x[val_idx])
    np.testing.assert_array_equal(labels["train"], train_y[train_idx])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["val"]["images"] == 200 and sum(stats["train"]["class_counts"].values()) == 1800
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test.npz", "train.npz", "val.npz"]


def test_local_raw_idx_files_are_installed_as_the_official_gz(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in FILES:
        (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress((SAMPLE / name).read_bytes()))
    root = _root(tmp_path, ["classification.data.source=local", f"classification.data.local_path={raw}"])
    acquire(load_params(root / "params.yaml"))
    assert sorted(p.name for p in (root / "data/fashion-mnist").iterdir()) == sorted(FILES)
    for split in ("train", "t10k"):
        for got, want in zip(read_split(root / "data/fashion-mnist", split), read_split(SAMPLE, split)):
            np.testing.assert_array_equal(got, want)


def test_split_is_fixed_by_the_seed_and_partitions_the_training_file() -> None:
    a_train, a_val = split_indices(1000, 0.2, seed=3)
    b_train, b_val = split_indices(1000, 0.2, seed=3)
    _, c_val = split_indices(1000, 0.2, seed=4)
    np.testing.assert_array_equal(a_val, b_val)
    np.testing.assert_array_equal(a_train, b_train)
    assert len(a_val) == 200 and not np.array_equal(a_val, c_val)
    assert sorted(np.concatenate([a_train, a_val]).tolist()) == list(range(1000))


# ----------------------------------------------------------------------------- malformed IDX: one error line

def _wrong_magic(folder: Path) -> str:
    path = folder / "train-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[:4] = struct.pack(">i", 2051)
    path.write_bytes(gzip.compress(bytes(data)))
    return "train-labels-idx1-ubyte.gz: IDX magic number 2051"


def _truncated(folder: Path) -> str:
    path = folder / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    return "t10k-images-idx3-ubyte.gz: dimensions (500, 28, 28) need 392016 bytes, the file has 391916: it is truncated"


def _count_mismatch(folder: Path) -> str:
    path = folder / "train-labels-idx1-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(struct.pack(">ii", 2049, 1999) + data[8:-1]))
    return "holds 2000 images but"


@pytest.mark.parametrize("damage", [_wrong_magic, _truncated, _count_mismatch])
def test_every_malformed_idx_file_is_one_error_line_from_preprocess(tmp_path: Path, capsys, damage) -> None:
    from tasks.cli import main

    root = _root(tmp_path, [])
    data = root / "data/fashion-mnist"
    shutil.copytree(SAMPLE, data)
    for path in data.iterdir():
        path.chmod(0o644)
    expected = damage(data)
    assert main(["classification", "preprocess", "--params", str(root / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err[-1]) and err[-1].startswith("error: ") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (root / "artifacts/classification/preprocess").exists()


# ----------------------------------------------------------------------------- training, scores, serving

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fm")
    write_synthetic_fashion_mnist(folder / "raw", n_train=600, n_test=200, seed=1)
    preprocess(folder / "raw", folder / "pre", ClassificationPreprocessParams(val_fraction=0.2), seed=0)
    return folder / "pre"


def test_train_epoch_lowers_the_loss_and_eval_epoch_scores_the_same_model(tiny: Path) -> None:
    torch.manual_seed(0)
    model = build_lenet("relu")
    cfg = ClassificationTrainParams(variant="relu", batch_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    dataset = FashionMnist(tiny, "train")
    cpu = torch.device("cpu")
    losses = [tr.train_epoch(model, tr.epoch_loader(dataset, cfg, 0, e, tr.distributed.Context(cpu)), optimizer,
                             cpu)["loss"] for e in range(4)]
    assert losses[-1] < losses[0] - 0.3
    scores = tr.eval_epoch(model, tr.eval_loader(FashionMnist(tiny, "val"), 50), cpu)
    logits, labels = tr.predict(model, tr.eval_loader(FashionMnist(tiny, "val"), 7), cpu)
    assert scores["images"] == 120 == len(labels)
    assert scores["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert scores["accuracy"] > 0.25  # chance is 0.1


def test_a_resumed_training_ends_with_the_uninterrupted_weights(tiny: Path, tmp_path: Path) -> None:
    cfg = ClassificationTrainParams(variant="sigmoid", epochs=3, batch_size=64)
    cpu, dataset = torch.device("cpu"), FashionMnist(tiny, "train")
    torch.manual_seed(0)
    full = tr.train(build_lenet("sigmoid"), dataset, cfg, 0, cpu, tmp_path / "a.pt", "fp")
    torch.manual_seed(0)
    tr.train(build_lenet("sigmoid"), dataset, cfg.model_copy(update={"epochs": 1}), 0, cpu, tmp_path / "b.pt", "fp")
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["epoch"] == 1
    resumed = tr.train(build_lenet("sigmoid"), dataset, cfg, 0, cpu, tmp_path / "b.pt", "fp", state=state)
    assert resumed.resumed_from_epoch == 1
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_scores_of_a_known_confusion_matrix() -> None:
    confusion = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    scores = classification_scores(confusion, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(11 / 14)
    assert scores["per_class_accuracy"] == {"a": 0.8, "b": 0.75, "c": None}
    assert scores["mean_class_accuracy"] == pytest.approx(0.775)
    assert scores["per_class_images"] == {"a": 10, "b": 4, "c": 0}


def test_the_served_model_maps_uint8_images_to_class_and_probabilities(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_lenet("relu")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "serving.json").write_text(json.dumps({"variant": "relu", "classes": [str(k) for k in range(10)]}))
    served = LenetClassifier()
    served.load_context(SimpleNamespace(artifacts={"weights": str(tmp_path / "model.pt"),
                                                   "config": str(tmp_path / "serving.json")}))
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    out = served.predict(None, images)
    assert out["class"].dtype == np.int64 and out["probabilities"].shape == (5, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        expected = net.eval()(to_tensor(images)).argmax(1).numpy()
    np.testing.assert_array_equal(out["class"], expected)
    with pytest.raises(ValueError, match="uint8"):
        served.predict(None, images.astype(np.float32))


def test_the_default_md5s_are_the_published_ones() -> None:
    from tasks.classification.idx import OFFICIAL_MD5
    from tasks.params import ClassificationDataParams

    assert ClassificationDataParams().md5 == OFFICIAL_MD5
    assert load_params(REPO / "params.yaml").classification.data.md5 == OFFICIAL_MD5


def test_an_accuracy_at_chance_is_said_and_a_clear_one_is_not():
    from tasks.metrics import chance_warning

    # 10 classes, 1,000 images: chance 0.1, three standard deviations 0.028
    assert "at chance" in chance_warning(0.100, 1000, 10)
    assert "variant: relu" in chance_warning(0.125, 1000, 10)
    assert chance_warning(0.135, 1000, 10) is None
    assert chance_warning(0.72, 1000, 10) is None
