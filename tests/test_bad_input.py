"""Bad inputs on the real VOC sample (../shared/data/VOCtrainval_sample.tar, extracted and then damaged):
each ends in one `error:` line naming the file (exit 2), or with `on_bad_sample: skip` in a counted skip."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from tasks import cli, tracking
from tasks.atomic import read_json
from tasks.detection.data import DetectionDataset
from tasks.detection.data import preprocess as detection_preprocess
from tasks.errors import DataError
from tasks.params import DetectionPreprocessParams, SegmentationPreprocessParams, set_params
from tasks.segmentation.data import preprocess as segmentation_preprocess

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "VOCtrainval_sample.tar"
SEG = SegmentationPreprocessParams(crop_size=(64, 96))
SEG_SKIP = SegmentationPreprocessParams(crop_size=(64, 96), on_bad_sample="skip")
DET, DET_SKIP = DetectionPreprocessParams(), DetectionPreprocessParams(on_bad_sample="skip")


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """A fresh copy of the real sample: `tmp_path/VOCdevkit/VOC2012/...`."""
    with tarfile.open(SAMPLE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "VOCdevkit"


def voc2012(voc: Path) -> Path:
    return voc / "VOC2012"


def params_file(tmp_path: Path, voc: Path) -> Path:
    """A params.yaml in tmp_path whose segmentation and detection stages read `voc` and write under tmp_path."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    set_params(path, [f"segmentation.data.dir={voc}", f"detection.preprocess.data_dir={voc}",
                      "segmentation.preprocess.crop_size=[64,96]"])
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    code = cli.main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- VOC masks


def write_mask_with_index(png: Path, index: int) -> None:
    """Rewrite a palette mask with a block of pixels of `index`, keeping its palette."""
    mask = Image.open(png)
    values = np.array(mask)
    values[10:14, 20:25] = index
    damaged = Image.fromarray(values, mode="P")
    damaged.putpalette(mask.getpalette())
    damaged.save(png)


def test_a_mask_index_outside_the_classes_and_void_is_an_error_naming_the_file(voc: Path, tmp_path: Path,
                                                                              capsys) -> None:
    png = voc2012(voc) / "SegmentationClass" / "2007_000032.png"
    write_mask_with_index(png, 37)
    with pytest.raises(DataError, match="2007_000032.png.*palette index 37.*20 pixels") as caught:
        segmentation_preprocess(voc, tmp_path / "pre", SEG)
    assert "segmentation.preprocess.on_bad_sample" in str(caught.value)
    assert not (tmp_path / "pre").exists()
    code, errors = run_cli(["segmentation", "preprocess", "--params", str(params_file(tmp_path, voc))], capsys)
    assert code == 2 and len(errors) == 1 and "2007_000032.png" in errors[0]


def test_a_mask_index_outside_the_classes_is_skipped_and_counted(voc: Path, tmp_path: Path) -> None:
    write_mask_with_index(voc2012(voc) / "SegmentationClass" / "2007_000033.png", 37)
    summary = segmentation_preprocess(voc, tmp_path / "pre", SEG_SKIP)
    assert summary["val"] == {"listed": 4, "kept": 3, "dropped_small": 0, "skipped_bad": 1}
    assert summary["train"]["skipped_bad"] == 0
    bad = read_json(tmp_path / "pre" / "stats.json")["val"]["bad_samples"]
    assert [(b["id"], b["file"]) for b in bad] == [("2007_000033", "SegmentationClass/2007_000033.png")]
    assert "palette index 37" in bad[0]["reason"]
    assert read_json(tmp_path / "pre" / "val" / "ids.json") == ["2007_000042", "2007_000129", "2008_000533"]


def test_the_real_masks_pass_unchanged(voc: Path, tmp_path: Path) -> None:
    summary = segmentation_preprocess(voc, tmp_path / "pre", SEG)
    assert summary == {"train": {"listed": 2, "kept": 2, "dropped_small": 0, "skipped_bad": 0},
                       "val": {"listed": 4, "kept": 4, "dropped_small": 0, "skipped_bad": 0}}


# ----------------------------------------------------------------------------- detection JPEGs and XML


def truncate(jpg: Path) -> None:
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("damage", "reason"), [
    (truncate, "cannot decode image"),
    (Path.unlink, "file not found"),
])
def test_a_corrupt_or_missing_jpeg_is_refused_at_preprocess(voc: Path, tmp_path: Path, damage, reason: str) -> None:
    damage(voc2012(voc) / "JPEGImages" / "2007_000032.jpg")
    with pytest.raises(DataError, match=f"2007_000032.jpg: {reason}") as caught:
        detection_preprocess(DET, voc, tmp_path / "pre")
    assert "detection.preprocess.on_bad_sample: skip" in str(caught.value)
    assert not (tmp_path / "pre").exists()


def test_a_corrupt_jpeg_is_skipped_and_counted_and_training_data_loads(voc: Path, tmp_path: Path) -> None:
    truncate(voc2012(voc) / "JPEGImages" / "2007_000032.jpg")
    (voc2012(voc) / "JPEGImages" / "2007_000042.jpg").unlink()
    summary = detection_preprocess(DET_SKIP, voc, tmp_path / "pre")
    assert (summary["train"]["images"], summary["train"]["skipped_bad"]) == (2, 1)
    assert (summary["val"]["images"], summary["val"]["skipped_bad"]) == (1, 1)
    stats = read_json(tmp_path / "pre" / "stats.json")
    assert [(b["id"], Path(b["file"]).name) for b in stats["train"]["bad_samples"]] == [
        ("2007_000032", "2007_000032.jpg")]
    dataset = DetectionDataset(tmp_path / "pre" / "train", voc)
    assert dataset.ids == ["2007_000027", "2007_000039"]
    assert [dataset[i][0].shape[0] for i in range(len(dataset))] == [3, 3]  # every kept image decodes


def test_an_annotation_size_that_disagrees_with_its_jpeg_is_refused(voc: Path, tmp_path: Path, capsys) -> None:
    xml = voc2012(voc) / "Annotations" / "2007_000033.xml"
    xml.write_text(xml.read_text().replace("<width>500</width>", "<width>510</width>"))
    with pytest.raises(DataError, match=r"2007_000033.xml: <size> says 510x366 \(WxH\) but "
                                        r".*2007_000033.jpg is 500x366"):
        detection_preprocess(DET, voc, tmp_path / "pre")
    summary = detection_preprocess(DET_SKIP, voc, tmp_path / "pre")
    assert (summary["val"]["images"], summary["val"]["skipped_bad"]) == (1, 1)


@pytest.mark.parametrize(("old", "new", "reason"), [
    ("<width>500</width>", "<width>NaN</width>", "<width> is not a finite number: 'NaN'"),
    ("<width>500</width>", "<width>5OO</width>", "<width> is not a number: '5OO'"),
    ("<xmin>9</xmin>", "<xmin>nan</xmin>", "<xmin> is not a finite number: 'nan'"),
    ("<ymax>263</ymax>", "<ymax>inf</ymax>", "<ymax> is not a finite number: 'inf'"),
])
def test_a_non_numeric_or_nan_size_or_coordinate_is_one_error_line(voc: Path, tmp_path: Path, capsys, old: str,
                                                                   new: str, reason: str) -> None:
    xml = voc2012(voc) / "Annotations" / "2007_000033.xml"
    xml.write_text(xml.read_text().replace(old, new, 1))
    code, errors = run_cli(["detection", "preprocess", "--params", str(params_file(tmp_path, voc))], capsys)
    assert code == 2 and len(errors) == 1
    assert "2007_000033.xml" in errors[0] and reason in errors[0]
    assert "detection.preprocess.on_bad_sample" in errors[0]


def test_skipped_samples_are_logged_to_mlflow(voc: Path, tmp_path: Path) -> None:
    truncate(voc2012(voc) / "JPEGImages" / "2007_000032.jpg")
    detection_preprocess(DET_SKIP, voc, tmp_path / "pre")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        tracking.log_skipped_samples(tmp_path / "pre" / "stats.json")
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged["skipped_bad_train"] == 1 and logged["skipped_bad_val"] == 0
    artifact = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/preprocess/bad_samples.json")
    assert [b["id"] for b in artifact["train"]] == ["2007_000032"]


# ----------------------------------------------------------------------------- read-only data/ and artifacts/


@pytest.fixture
def read_only():
    """Make folders read-only for real: file modes for a normal user; for root (whom modes do not stop)
    a read-only bind mount of the folder on itself, undone afterwards."""
    mounted: list[Path] = []

    def make(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
                folder.chmod(0o555)
            return
        for command in (["mount", "--bind", str(path), str(path)],
                        ["mount", "-o", "remount,ro,bind", str(path), str(path)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                if mounted and mounted[-1] == path:
                    subprocess.run(["umount", str(path)], check=False)
                    mounted.pop()
                pytest.skip(f"running as root and cannot make {path} read-only: {done.stderr.strip()}")
            if path not in mounted:
                mounted.append(path)

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_artifacts_folder_is_one_error_line_naming_it(voc: Path, tmp_path: Path, capsys,
                                                                  read_only) -> None:
    params = params_file(tmp_path, voc)
    artifacts = tmp_path / "artifacts"
    read_only(artifacts)
    code, errors = run_cli(["detection", "preprocess", "--params", str(params)], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert str(artifacts) in errors[0] and "not writable" in errors[0]


def test_a_read_only_data_folder_is_one_error_line_naming_it(tmp_path: Path, capsys, read_only) -> None:
    from flows import cli as flows_cli

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    data = tmp_path / "data"
    read_only(data)
    assert flows_cli.main(["acquire", "--root", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(data) in errors[0] and "not writable" in errors[0]
