"""The IDX reader (tasks/classification/idx.py) on the real Fashion-MNIST sample and on broken copies."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tasks.classification.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    OFFICIAL_MD5,
    idx_bytes,
    read_idx,
    read_images,
    read_labels,
    read_pair,
    read_split,
    split_paths,
    write_idx_gz,
)
from tasks.errors import DataError

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist-sample"


def _copy_sample(tmp_path: Path) -> Path:
    dest = tmp_path / "fmnist"
    shutil.copytree(SAMPLE, dest)
    for path in dest.iterdir():
        path.chmod(0o644)
    return dest


def test_real_sample_reads_with_the_published_counts_and_shapes() -> None:
    train_x, train_y = read_split(SAMPLE, "train")
    test_x, test_y = read_split(SAMPLE, "t10k")
    assert train_x.shape == (2000, 28, 28) and train_y.shape == (2000,)
    assert test_x.shape == (500, 28, 28) and test_y.shape == (500,)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.uint8
    assert set(np.unique(train_y)) == set(range(10))
    assert train_x.max() == 255 and train_x.min() == 0


def test_raw_and_gzip_files_give_the_same_arrays(tmp_path: Path) -> None:
    folder = _copy_sample(tmp_path)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        gz = folder / f"{name}.gz"
        (folder / name).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert split_paths(folder, "t10k")[0].name == "t10k-images-idx3-ubyte"
    raw_x, raw_y = read_split(folder, "t10k")
    gz_x, gz_y = read_split(SAMPLE, "t10k")
    np.testing.assert_array_equal(raw_x, gz_x)
    np.testing.assert_array_equal(raw_y, gz_y)


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(2, 28, 28)
    write_idx_gz(tmp_path / "x.gz", images)
    write_idx_gz(tmp_path / "y.gz", np.array([3, 9], dtype=np.uint8))
    x, y = read_pair(tmp_path / "x.gz", tmp_path / "y.gz")
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [3, 9]
    assert idx_bytes(np.array([7], dtype=np.uint8)) == struct.pack(">ii", LABELS_MAGIC, 1) + b"\x07"


def test_images_file_read_as_labels_names_both_magics(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: IDX magic number 2051 .*expected 2049"):
        read_labels(SAMPLE / "train-images-idx3-ubyte.gz")


def test_wrong_magic_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(struct.pack(">iiii", 0x0D03, 1, 28, 28) + bytes(784))
    with pytest.raises(DataError, match=rf"{bad.name}: IDX magic number 3331 .*expected {IMAGES_MAGIC}"):
        read_images(bad)


def test_truncated_gzip_is_an_error(tmp_path: Path) -> None:
    folder = _copy_sample(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: a damaged or truncated gzip file"):
        read_split(folder, "train")


def test_truncated_body_names_expected_and_found_sizes(tmp_path: Path) -> None:
    raw = gzip.decompress((SAMPLE / "t10k-images-idx3-ubyte.gz").read_bytes())
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(raw[:-100])
    expected = 16 + 500 * 784
    with pytest.raises(DataError, match=rf"\(500, 28, 28\) need {expected} bytes, the file has {expected - 100}: "
                                        r"it is truncated"):
        read_images(path)
    path.write_bytes(raw[:10])
    with pytest.raises(DataError, match=r"the header needs 16 bytes .* the file has 10; the file is truncated"):
        read_images(path)
    path.write_bytes(raw + b"\0")
    with pytest.raises(DataError, match=r"longer than its header says"):
        read_images(path)


def test_count_mismatch_between_images_and_labels(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz holds 500 images but .*"
                                        r"train-labels-idx1-ubyte\.gz holds 2000 labels"):
        read_pair(SAMPLE / "t10k-images-idx3-ubyte.gz", SAMPLE / "train-labels-idx1-ubyte.gz")


def test_wrong_image_size_and_label_range(tmp_path: Path) -> None:
    write_idx_gz(tmp_path / "x.gz", np.zeros((3, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match=r"x\.gz: images of 32×32 pixels, expected 28×28"):
        read_images(tmp_path / "x.gz")
    write_idx_gz(tmp_path / "y.gz", np.array([0, 10], dtype=np.uint8))
    with pytest.raises(DataError, match=r"y\.gz: label 10 found, expected labels 0\.\.9"):
        read_labels(tmp_path / "y.gz")


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"neither train-images-idx3-ubyte\.gz nor train-images-idx3-ubyte found"):
        read_split(tmp_path, "train")
    with pytest.raises(DataError, match=r"nope\.gz: no such IDX file"):
        read_idx(tmp_path / "nope.gz", IMAGES_MAGIC)
    (tmp_path / "dir.gz").mkdir()
    with pytest.raises(DataError, match=r"dir\.gz: cannot be read as an IDX file .*expected a regular file"):
        read_idx(tmp_path / "dir.gz", IMAGES_MAGIC)


def test_official_md5_table_names_the_four_published_files() -> None:
    assert OFFICIAL_MD5 == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    # The sample holds fewer images, so (as its README says) none of its files has the official MD5.
    for name, md5 in OFFICIAL_MD5.items():
        assert hashlib.md5((SAMPLE / name).read_bytes()).hexdigest() != md5
