"""Acquisition from the real published layouts (../shared/data: the VOC2012 sample tar and the book's
ptb.zip), each also unpacked into every accepted form of `local_path`, then preprocessed; and the
all-or-nothing rule: a refused or killed acquisition leaves data/ and data.dvc as they were."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from tasks.cli import acquire_all, acquire_and_version
from tasks.errors import DataError
from tasks.params import load_params

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
VOC_TAR = SHARED / "VOCtrainval_sample.tar"
PTB_ZIP = SHARED / "ptb.zip"
VOC_MARKER = "VOC2012/ImageSets/Segmentation/train.txt"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file (and dot-file) under `folder` with its bytes: equal snapshots mean an untouched tree."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def params_at(root: Path, sections: dict):
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(sections))
    return load_params(root / "params.yaml")


def local(path: Path | str) -> dict:
    return {"data": {"source": "local", "local_path": str(path)}}


def unpacked_voc(tmp_path: Path) -> dict[str, Path]:
    """The official tar and every folder form a user may point local_path at."""
    src = tmp_path / "unpacked"
    (src / "downloads").mkdir(parents=True)
    with tarfile.open(VOC_TAR) as tar:
        tar.extractall(src / "downloads", filter="data")
    (src / "downloads" / "notes.txt").write_text("not part of the dataset\n")
    return {"tar": VOC_TAR, "VOCdevkit": src / "downloads" / "VOCdevkit",
            "VOC2012": src / "downloads" / "VOCdevkit" / "VOC2012", "above": src / "downloads", "two above": src}


@pytest.mark.parametrize("form", ["tar", "VOCdevkit", "VOC2012", "above", "two above"])
def test_voc_is_acquired_from_the_official_tar_and_every_folder_form(tmp_path: Path, form: str) -> None:
    from tasks.detection.stages import preprocess as detection_preprocess
    from tasks.segmentation.stages import acquire, preprocess

    sections = {"segmentation": {**local(unpacked_voc(tmp_path)[form]), "preprocess": {"crop_size": [128, 192]}}}
    params = params_at(tmp_path / "repo", sections)  # the 7 real images are all larger than the crop
    acquire(params)
    voc = tmp_path / "repo/data/VOCdevkit/VOC2012"
    assert sorted(p.name for p in (tmp_path / "repo/data/VOCdevkit").iterdir()) == ["VOC2012"]
    assert (voc / "ImageSets/Segmentation/train.txt").read_text().split() == ["2007_000032", "2007_000039"]
    assert len(list((voc / "JPEGImages").iterdir())) == 7
    stats = preprocess(params)
    assert {split: (s["listed"], s["kept"]) for split, s in stats.items()} == {"train": (2, 2), "val": (4, 4)}
    boxes = detection_preprocess(params)
    assert (boxes["train"]["images"], boxes["val"]["images"]) == (3, 2)
    assert boxes["train"]["objects"] > 3


def unpacked_ptb(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "unpacked"
    with zipfile.ZipFile(PTB_ZIP) as archive:
        archive.extractall(src)
    return {"zip": PTB_ZIP, "folder": src / "ptb", "above": src}


@pytest.mark.parametrize("form", ["zip", "folder", "above"])
def test_ptb_is_acquired_from_the_books_zip_and_a_folder_of_its_files(tmp_path: Path, form: str) -> None:
    from tasks.word2vec.stages import acquire, preprocess

    forms = unpacked_ptb(tmp_path)
    params = params_at(tmp_path / "repo", {"word2vec": local(forms[form])})
    acquire(params)
    ptb = tmp_path / "repo/data/ptb"
    assert snapshot(ptb) == snapshot(forms["folder"])
    stats = preprocess(params)
    assert stats["train"]["sentences"] == 42068 and stats["train"]["tokens"] == 887521
    assert stats["valid"]["tokens"] == 70390 and stats["vocab_size"] == 6719


def test_an_archive_without_the_dataset_names_what_was_looked_for_and_leaves_data_untouched(tmp_path: Path) -> None:
    from tasks.segmentation.stages import acquire

    root = tmp_path / "repo"
    acquire(params_at(root, {"segmentation": local(VOC_TAR)}))
    before = snapshot(root / "data")
    with pytest.raises(DataError, match=f"no '{VOC_MARKER}' or 'ImageSets/Segmentation/train.txt' found") as error:
        acquire(params_at(root, {"segmentation": local(PTB_ZIP)}))
    assert str(PTB_ZIP) in str(error.value)
    assert snapshot(root / "data") == before
    folder = unpacked_ptb(tmp_path)["folder"]
    with pytest.raises(DataError, match="no 'VOC2012/ImageSets"):
        acquire(params_at(root, {"segmentation": local(folder)}))
    assert snapshot(root / "data") == before


def test_two_copies_of_the_dataset_in_one_folder_are_refused_not_guessed(tmp_path: Path) -> None:
    from tasks.segmentation.stages import acquire

    for name in ("a", "b"):
        with tarfile.open(VOC_TAR) as tar:
            tar.extractall(tmp_path / "both" / name, filter="data")
    with pytest.raises(DataError, match=r"found in 2 places \(a/VOCdevkit, b/VOCdevkit\)"):
        acquire(params_at(tmp_path / "repo", {"segmentation": local(tmp_path / "both")}))
    assert snapshot(tmp_path / "repo/data") == {}


def test_a_symlink_in_a_local_folder_is_refused_with_the_archive_message(tmp_path: Path) -> None:
    from tasks.word2vec.stages import acquire

    folder = unpacked_ptb(tmp_path)["folder"]
    (folder / "passwd").symlink_to("/etc/passwd")
    root = tmp_path / "repo"
    with pytest.raises(DataError) as from_folder:
        acquire(params_at(root, {"word2vec": local(folder)}))
    assert snapshot(root / "data") == {}

    archive = tmp_path / "linked.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name in ("ptb.train.txt", "ptb.valid.txt"):
            out.write(folder / name, f"ptb/{name}")
        link = zipfile.ZipInfo("ptb/passwd")
        link.external_attr = (0o120777 << 16)
        out.writestr(link, "/etc/passwd")
    with pytest.raises(DataError) as from_archive:
        acquire(params_at(root, {"word2vec": local(archive)}))
    assert str(from_folder.value) == str(from_archive.value).replace(str(archive), str(folder)).replace(
        "'ptb/passwd'", "'passwd'")
    assert f"refusing to read {folder}: member 'passwd' is a symlink" in str(from_folder.value)


def test_a_symlinked_folder_inside_a_voc_tree_is_refused(tmp_path: Path) -> None:
    from tasks.segmentation.stages import acquire

    devkit = unpacked_voc(tmp_path)["VOCdevkit"]
    (devkit / "VOC2012" / "extra").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(DataError, match="member 'VOC2012/extra' is a symlink"):
        acquire(params_at(tmp_path / "repo", {"segmentation": local(devkit)}))


def test_an_incomplete_voc_tree_is_refused_before_data_changes(tmp_path: Path) -> None:
    from tasks.segmentation.stages import acquire

    root = tmp_path / "repo"
    acquire(params_at(root, {"segmentation": local(VOC_TAR)}))
    before = snapshot(root / "data")
    devkit = unpacked_voc(tmp_path)["VOCdevkit"]
    (devkit / "VOC2012/SegmentationClass/2007_000129.png").unlink()
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/val.txt: 1 of 4 listed ids have no "
                                        r"SegmentationClass/<id>.png \(first: SegmentationClass/2007_000129.png\)"):
        acquire(params_at(root, {"segmentation": local(devkit)}))
    assert snapshot(root / "data") == before
    assert [p.name for p in (root / "data").iterdir()] == ["VOCdevkit"]  # no staging left in data/


def test_acquire_all_changes_nothing_unless_every_pipeline_succeeded(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    devkit = unpacked_voc(tmp_path)["VOCdevkit"]
    params = params_at(root, {"word2vec": local(PTB_ZIP), "segmentation": local(devkit)})
    acquire_all(params)
    before = snapshot(root / "data")
    assert sorted(before)[:3] == ["VOCdevkit", "VOCdevkit/VOC2012", "VOCdevkit/VOC2012/Annotations"]

    (tmp_path / "other").mkdir()
    with zipfile.ZipFile(tmp_path / "other/ptb.zip", "w") as out:
        out.writestr("ptb/ptb.train.txt", " new words here \n")
        out.writestr("ptb/ptb.valid.txt", " new words \n")
    (devkit / "VOC2012/Annotations/2007_000042.xml").unlink()  # detection's part of the tree is incomplete
    params = params_at(root, {"word2vec": local(tmp_path / "other/ptb.zip"), "segmentation": local(devkit)})
    with pytest.raises(DataError, match=r"refused for detection .*ImageSets/Main/val.txt: 1 of 2 listed ids "
                                        r"have no Annotations/<id>.xml"):
        acquire_all(params)
    assert snapshot(root / "data") == before  # the new, valid PTB was not swapped in either
    assert sorted(p.name for p in (root / "data").iterdir()) == ["VOCdevkit", "fashion-mnist", "ptb", "style",
                                                                  "word2vec_eval"]


# ----------------------------------------------------------------------------- killed runs, DVC


def dvc_repo(root: Path, devkit: Path) -> Path:
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True, capture_output=True)
    params_at(root, {"word2vec": local(PTB_ZIP), "segmentation": local(devkit)})
    return root


def dvc_status(root: Path) -> str:
    return subprocess.run(["dvc", "status"], cwd=root, check=True, capture_output=True, text=True).stdout


# Copies the VOC tree slowly enough to be killed in the middle: after a few files it says so and waits.
SLOW_COPY = """
import shutil, sys, time
from pathlib import Path
from tasks.cli import acquire_and_version
real, copied = shutil.copy2, []
def copy2(src, dst, **kw):
    copied.append(real(src, dst, **kw))
    if len(copied) == 20:
        Path(sys.argv[1], "copying").write_text("20 files copied")
        time.sleep(600)
    return copied[-1]
shutil.copy2 = copy2
acquire_and_version(Path(sys.argv[1]))
"""


def test_a_killed_acquire_leaves_data_and_data_dvc_as_they_were_and_the_next_one_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    devkit = unpacked_voc(tmp_path)["VOCdevkit"]
    dvc_repo(root, devkit)
    acquire_and_version(root)
    data_dvc, data, status = (root / "data.dvc").read_bytes(), snapshot(root / "data"), dvc_status(root)
    assert b"nfiles:" in data_dvc

    (devkit / "VOC2012/ImageSets/Segmentation/train.txt").write_text("2007_000032\n")  # a new version
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COPY, str(root)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # bounded: at most 120 s for the copy to start
            if (root / "copying").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (root / "copying").exists(), proc.stderr.read() if proc.poll() is not None else "copy never started"
        staged = [p.name for p in (root / ".dvc/tmp").iterdir() if p.name.startswith(".acquire-")]
        assert f".acquire-VOCdevkit.pid{proc.pid}-" in " ".join(staged)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    (root / "copying").unlink()

    assert (root / "data.dvc").read_bytes() == data_dvc
    assert snapshot(root / "data") == data
    assert dvc_status(root) == status
    assert any(p.name.startswith(".acquire-") for p in (root / ".dvc/tmp").iterdir())  # the killed run's staging

    (devkit / "VOC2012/ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    acquire_and_version(root)
    assert (root / "data.dvc").read_bytes() == data_dvc
    assert snapshot(root / "data") == data
    assert not [p for p in (root / ".dvc/tmp").iterdir() if p.name.startswith(".acquire-")]
    assert not [p for p in (root / "data").rglob(".*")]


# Enters the preprocess stage's atomic output, writes part of it, and dies as a SIGKILL would leave it.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from tasks.atomic import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.mkdir()
    (tmp / "images.npy").write_bytes(b"0" * 100000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_next_preprocess_removes_what_a_killed_one_left_and_spares_a_live_writer(tmp_path: Path) -> None:
    from tasks.segmentation.stages import acquire, preprocess

    params = params_at(tmp_path / "repo", {"segmentation": {**local(VOC_TAR), "preprocess": {"crop_size": [128, 192]}}})
    acquire(params)
    out = tmp_path / "repo/artifacts/segmentation/preprocess"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], env=env, capture_output=True)
    assert done.returncode == -signal.SIGKILL
    left = [p.name for p in out.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".preprocess.pid")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (out.parent / f".preprocess.pid{live.pid}-abcd1234").mkdir()
        preprocess(params)
        assert sorted(p.name for p in out.parent.iterdir()) == [f".preprocess.pid{live.pid}-abcd1234", "preprocess"]
    finally:
        live.kill()
        live.wait()
    preprocess(params)
    assert [p.name for p in out.parent.iterdir()] == ["preprocess"]


def test_staging_in_a_dvc_repository_is_under_dvc_tmp_never_in_data(tmp_path: Path, monkeypatch) -> None:
    from tasks import acquire as acquire_module

    root = tmp_path / "repo"
    root.mkdir()
    dvc_repo(root, unpacked_voc(tmp_path)["VOCdevkit"])
    seen: list[Path] = []
    original = acquire_module.stage_dataset

    def spy(staging, cfg, params, *args, **kwargs):
        target = original(staging, cfg, params, *args, **kwargs)
        seen.append(staging.new(target))
        return target

    monkeypatch.setattr(acquire_module, "stage_dataset", spy)
    acquire_and_version(root)
    assert len(seen) == 2 and all(path.parent.parent == root / ".dvc" / "tmp" for path in seen)
