"""The style pipeline's acquisition (the book's images over HTTP with checksums, local files, synthetic
images, the feed-forward content set) and its preprocessing (the book's resize)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from models.style import tv_loss
from tasks.errors import DataError, DownloadError
from tasks.params import parse_params
from tasks.style.stages import acquire, preprocess
from tasks.style.transfer import resize, to_tensor

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BOOK = SHARED / "style"
SHA256 = {"rainier.jpg": "014381e94081625e5e5279fd81f50d01b75ebf10f1e85189d66e2fc93adbc768",
          "autumn-oak.jpg": "a277e6926333bcb06f8fa7e68d24e4d3027ecb87802227ed4b514ab1906af557"}


def make_params(root: Path, **data) -> object:
    content_set = data.pop("content_set", {"images": 3, "image_size": [40, 56]})
    raw = {"style": {"data": {"synthetic": {"image_size": [60, 90]}, "content_set": content_set, **data},
                     "preprocess": {"image_shape": [30, 45], "content_set_shape": [24, 32], "heldout_images": 1}}}
    root.mkdir(parents=True, exist_ok=True)
    return parse_params(raw, root / "params.yaml")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_d2l_source_downloads_the_books_two_images_checksummed(tmp_path: Path, server) -> None:
    url, served, httpd = server
    for name in SHA256:
        shutil.copy(BOOK / name, served / name)
    params = make_params(tmp_path / "repo", source="d2l", base_url=f"{url}/")
    summary = acquire(params)
    data = tmp_path / "repo" / "data" / "style"
    manifest = json.loads((data / "style.json").read_text())
    assert (manifest["content"], manifest["style"]) == ("content.jpg", "style.jpg")
    assert manifest["style_name"] == "autumn-oak"
    assert sha256(data / "content.jpg") == SHA256["rainier.jpg"]
    assert sha256(data / "style.jpg") == SHA256["autumn-oak.jpg"]
    assert sorted(path for path, _ in httpd.requests) == ["/autumn-oak.jpg", "/rainier.jpg"]
    assert summary["style_name"] == "autumn-oak" and summary["content_set_images"] == 3


def test_d2l_source_refuses_a_changed_image_and_keeps_the_data(tmp_path: Path, server) -> None:
    url, served, _ = server
    params = make_params(tmp_path / "repo")
    acquire(params)  # synthetic data in place first
    before = sha256(tmp_path / "repo" / "data" / "style" / "style.json")
    shutil.copy(BOOK / "rainier.jpg", served / "rainier.jpg")
    (served / "autumn-oak.jpg").write_bytes((BOOK / "autumn-oak.jpg").read_bytes()[:-10])
    with pytest.raises(DownloadError, match="SHA-1 mismatch for .*autumn-oak.jpg"):
        acquire(make_params(tmp_path / "repo", source="d2l", base_url=url))
    assert sha256(tmp_path / "repo" / "data" / "style" / "style.json") == before


def test_local_source_copies_the_files_and_names_the_style_after_its_file(tmp_path: Path) -> None:
    own = tmp_path / "mine"
    own.mkdir()
    shutil.copy(BOOK / "rainier.jpg", own / "mountain.jpg")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(own / "Starry Night.png")
    params = make_params(tmp_path / "repo", source="local", content_path=str(own / "mountain.jpg"),
                         style_path=str(own / "Starry Night.png"))
    assert acquire(params)["style_name"] == "Starry Night"
    data = tmp_path / "repo" / "data" / "style"
    assert sha256(data / "content.jpg") == SHA256["rainier.jpg"]
    assert (data / "style.png").read_bytes() == (own / "Starry Night.png").read_bytes()


@pytest.mark.parametrize("problem", ["symlink", "missing", "not an image", "unset"])
def test_local_source_refuses_bad_paths_with_one_message(tmp_path: Path, problem: str) -> None:
    own = tmp_path / "mine"
    own.mkdir()
    shutil.copy(BOOK / "rainier.jpg", own / "content.jpg")
    style = own / "style.jpg"
    if problem == "symlink":
        style.symlink_to(BOOK / "autumn-oak.jpg")
    elif problem == "not an image":
        style.write_text("hello")
    paths = {"content_path": str(own / "content.jpg")}
    if problem != "unset":
        paths["style_path"] = str(style)
    expected = {"symlink": "is a symlink", "missing": "is not an existing file", "not an image": "not a readable image",
                "unset": "style.data.style_path is not set"}[problem]
    with pytest.raises(DataError, match=expected):
        acquire(make_params(tmp_path / "repo", source="local", **paths))
    assert not (tmp_path / "repo" / "data" / "style").exists()


def test_synthetic_content_is_smooth_and_the_style_strongly_textured(tmp_path: Path) -> None:
    params = make_params(tmp_path / "repo")
    acquire(params)
    data = tmp_path / "repo" / "data" / "style"
    content = to_tensor(np.asarray(Image.open(data / "content.png")))
    style = to_tensor(np.asarray(Image.open(data / "style.png")))
    assert content.shape == style.shape == (1, 3, 60, 90)
    assert tv_loss(style).item() > 10 * tv_loss(content).item()
    assert sorted(p.name for p in (data / "content_set").iterdir()) == ["0000.png", "0001.png", "0002.png"]


def test_content_set_from_the_real_voc_sample_takes_its_jpeg_images_only(tmp_path: Path) -> None:
    params = make_params(tmp_path / "repo", content_set={"source": "local",
                                                        "local_path": str(SHARED / "VOCtrainval_sample.tar")})
    assert acquire(params)["content_set_images"] == 7
    manifest = json.loads((tmp_path / "repo" / "data" / "style" / "style.json").read_text())
    assert manifest["content_set"][0] == "VOCdevkit/VOC2012/JPEGImages/2007_000027.jpg"
    assert all(name.endswith(".jpg") and "/JPEGImages/" in name for name in manifest["content_set"])


def test_content_set_archive_with_a_link_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(BOOK / "rainier.jpg", "a.jpg")
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    params = make_params(tmp_path / "repo", content_set={"source": "local", "local_path": str(archive)})
    with pytest.raises(DataError, match="refusing to read .*'b.jpg'"):
        acquire(params)


def test_preprocess_resizes_as_the_book_and_holds_images_out(tmp_path: Path) -> None:
    params = make_params(tmp_path / "repo")
    acquire(params)
    stats = preprocess(params)
    assert (stats["train_images"], stats["heldout_images"]) == (2, 1)
    pre = tmp_path / "repo" / "artifacts" / "style" / "preprocess"
    with np.load(pre / "images.npz") as images, np.load(pre / "content_set.npz") as content_set:
        assert images["content"].shape == images["style"].shape == (30, 45, 3)
        assert content_set["train"].shape == (2, 24, 32, 3) and content_set["heldout"].shape == (1, 24, 32, 3)
        source = Image.open(tmp_path / "repo" / "data" / "style" / "content.png").convert("RGB")
        book = transforms.Compose([transforms.Resize((30, 45)), transforms.ToTensor()])(source)
        assert torch.allclose(to_tensor(images["content"])[0], book, atol=0.5 / 255 + 1e-6)


def test_book_resize_of_the_real_content_image_keeps_its_colours() -> None:
    image = np.asarray(Image.open(BOOK / "rainier.jpg").convert("RGB"))
    small = resize(image, (300, 450))
    assert small.shape == (300, 450, 3)
    assert np.abs(small.reshape(-1, 3).mean(0) - image.reshape(-1, 3).mean(0)).max() < 2.0
