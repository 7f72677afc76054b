"""The IDX file format of (Fashion-)MNIST: read and write uint8 arrays, validated.

Layout: a big-endian magic number (0x00000803 = 2051 for images, 0x00000801 = 2049 for labels:
two zero bytes, the type code 0x08 = unsigned byte, the number of dimensions), one big-endian
int32 per dimension, then the uint8 data in C order. Files are gzip-compressed or raw; which one
is told by the gzip signature, not by the name. Every malformed file is a DataError naming it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from tasks.atomic import atomic_path
from tasks.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SIDE = 28
NUM_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = ("t-shirt", "trouser", "pullover", "dress", "coat",
                                "sandal", "shirt", "sneaker", "bag", "ankle boot")

# The official file names (the dataset's published mirror) with their published MD5s.
OFFICIAL_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_GZIP_SIGNATURE = b"\x1f\x8b"
_UBYTE = 0x08


def _raw_bytes(path: Path) -> bytes:
    """The file's IDX bytes: decompressed if it starts with the gzip signature."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such IDX file; put the Fashion-MNIST files there or use another source") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as an IDX file ({exc.strerror}); expected a regular file") from None
    if data[:2] != _GZIP_SIGNATURE:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: a damaged or truncated gzip file ({exc}); download it again") from None


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """The uint8 array of one IDX file; DataError for a wrong magic, a short or long body."""
    path = Path(path)
    data = _raw_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header; the file is truncated")
    (magic,) = struct.unpack(">i", data[:4])
    if magic != expected_magic:
        raise DataError(f"{path}: IDX magic number {magic} (0x{magic & 0xFFFFFFFF:08x}), expected {expected_magic} "
                        f"(0x{expected_magic:08x}); is this the right file (images 2051, labels 2049)?")
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: the header needs {header} bytes for {ndim} dimension sizes, the file has "
                        f"{len(data)}; the file is truncated")
    shape = struct.unpack(f">{ndim}i", data[4:header])
    if any(size < 0 for size in shape):
        raise DataError(f"{path}: negative dimension sizes {shape} in the IDX header; the file is corrupt")
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{path}: dimensions {shape} need {expected} bytes, the file has {len(data)}: it is {what}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_images(path: Path, side: int = IMAGE_SIDE) -> np.ndarray:
    """(N, side, side) uint8 images; DataError unless the file holds side×side images."""
    images = read_idx(path, IMAGES_MAGIC)
    if images.shape[1:] != (side, side):
        raise DataError(f"{path}: images of {images.shape[1]}×{images.shape[2]} pixels, expected {side}×{side}")
    return images


def read_labels(path: Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(N,) uint8 labels; DataError for a label outside 0..num_classes-1."""
    labels = read_idx(path, LABELS_MAGIC)
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{path}: label {int(labels.max())} found, expected labels 0..{num_classes - 1}")
    return labels


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split; DataError when their counts differ."""
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                        "the two files must come from the same split")
    return images, labels


def split_paths(folder: Path, split: str) -> tuple[Path, Path]:
    """The images and labels files of `split` ("train" or "t10k") in `folder`, `.gz` or raw."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    found = []
    for stem in SPLITS[split]:
        candidates = [Path(folder) / f"{stem}.gz", Path(folder) / stem]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise DataError(f"{folder}: neither {stem}.gz nor {stem} found; put the Fashion-MNIST IDX files there")
        found.append(path)
    return found[0], found[1]


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of `split` from a folder with the official file names."""
    return read_pair(*split_paths(folder, split))


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array with 1 (labels) or 3 (images) dimensions."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"IDX needs a uint8 array of 1 or 3 dimensions, got {array.dtype} with {array.ndim}")
    magic = (_UBYTE << 8) | array.ndim
    return struct.pack(f">i{array.ndim}i", magic, *array.shape) + np.ascontiguousarray(array).tobytes()


def write_idx_gz(dest: Path, array: np.ndarray) -> None:
    """Write `array` as a gzip IDX file, atomically; mtime 0 so equal arrays give equal bytes."""
    with atomic_path(Path(dest)) as tmp:
        tmp.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
