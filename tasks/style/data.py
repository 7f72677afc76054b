"""The style pipeline's data: a content image, a style image and a set of content images for the
feed-forward network, installed under `style.data.dir` as

    style.json        the manifest: file names, sources, the style's name
    content.<ext>     the content image (the book's rainier.jpg, a local file, or the synthetic scene)
    style.<ext>       the style image (the book's autumn-oak.jpg, a local file, or the synthetic texture)
    content_set/      NNNN.<ext>: the feed-forward network's content images (sorted by their source path)

from the book's published img/ folder (SHA-1 checked), local paths, or the generators."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks.acquire import Staging, _is_archive, refuse_links
from tasks.atomic import read_json, write_json
from tasks.download import fetch, safe_extract
from tasks.errors import DataError
from tasks.params import Params, StyleContentSetParams
from tasks.runtime import cache_dir
from tasks.style.images import IMAGE_SUFFIXES, MANIFEST, read_rgb
from tasks.synthetic.style import content_scene, textured_style
from tasks.synthetic.voc import render

log = logging.getLogger(__name__)



def _local_image(value: str | None, key: str, params: Params) -> Path:
    """A local image path from params: it must be a regular file (no symlink) that decodes as an image."""
    if not value:
        raise DataError(f"style.data.{key} is not set; `style.data.source: local` needs the path of an image file")
    path = params.path(value)
    if path.is_symlink():
        raise DataError(f"style.data.{key}: {path} is a symlink; give the image file itself")
    if not path.is_file():
        raise DataError(f"style.data.{key}: {path} is not an existing file; give the path of a JPEG or PNG image")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"style.data.{key}: {path} has suffix {path.suffix!r}; expected one of {IMAGE_SUFFIXES}")
    read_rgb(path)
    return path


def _write_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG")


def _image_files(tree: Path) -> list[Path]:
    """The content images under `tree`: a VOC tree's JPEGImages (masks are not content), else every
    JPEG/PNG file, sorted by relative path."""
    voc = sorted(p for p in tree.rglob("JPEGImages") if p.is_dir())
    roots = voc or [tree]
    files = [f for root in roots for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda f: f.relative_to(tree).as_posix())


def _content_set(cfg: StyleContentSetParams, params: Params, dest: Path, scratch: Path) -> list[str]:
    """Fill `dest` with the feed-forward content images; returns their origins (in the order of the names)."""
    dest.mkdir(parents=True)
    if cfg.source == "synthetic":
        rng = np.random.default_rng(cfg.seed)
        h, w = cfg.image_size
        origins = []
        for i in range(cfg.images):
            image, _, _ = render(h, w, int(rng.integers(1, 4)), rng)
            _write_png(dest / f"{i:04d}.png", image)
            origins.append(f"synthetic:{i}")
        return origins
    if not cfg.local_path:
        raise DataError("style.data.content_set.local_path is not set; `content_set.source: local` needs a "
                        "folder or a tar/zip archive of JPEG/PNG images")
    source = params.path(cfg.local_path)
    if source.is_symlink() or not source.exists():
        found = "a symlink" if source.is_symlink() else "missing"
        raise DataError(f"style.data.content_set.local_path: {source} is {found}; "
                        "give an existing folder or tar/zip archive of images")
    if _is_archive(source):
        safe_extract(source, scratch)
        tree = scratch
    elif source.is_dir():
        tree = source
    else:
        raise DataError(f"style.data.content_set.local_path: {source} is neither a folder nor a zip/tar archive")
    refuse_links(source, tree)
    files = _image_files(tree)
    if len(files) < 2:
        raise DataError(f"style.data.content_set.local_path: {source} holds {len(files)} JPEG/PNG image(s); "
                        "the feed-forward network needs at least 2 (some are held out)")
    origins = []
    for i, file in enumerate(files):
        read_rgb(file)
        shutil.copy2(file, dest / f"{i:04d}{file.suffix.lower()}")
        origins.append(file.relative_to(tree).as_posix())
    return origins


def stage_style_data(staging: Staging, params: Params) -> Path:
    """Build the style data for `style.data.dir` in `staging` (see the module docstring)."""
    cfg = params.style.data
    target = params.path(cfg.dir)
    folder = staging.directory(target)
    new = folder / "new"
    new.mkdir()
    manifest: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "synthetic":
        h, w = cfg.synthetic.image_size
        _write_png(new / "content.png", content_scene(h, w, cfg.synthetic.seed))
        _write_png(new / "style.png", textured_style(h, w, cfg.synthetic.seed))
        manifest.update(content="content.png", style="style.png", style_name="synthetic",
                        origins={"content": "synthetic", "style": "synthetic"})
    else:
        origins = {}
        for role, book, local in (("content", cfg.content, cfg.content_path), ("style", cfg.style, cfg.style_path)):
            if cfg.source == "d2l":
                url = cfg.base_url.rstrip("/") + "/" + book.name
                path = fetch(url, cache_dir() / "downloads" / "style" / book.name, book.sha1)
                origins[role] = url
            else:
                path = _local_image(local, f"{role}_path", params)
                origins[role] = str(path)
            read_rgb(path)
            name = f"{role}{path.suffix.lower()}"
            shutil.copyfile(path, new / name)
            manifest[role] = name
        style_origin = cfg.style.name if cfg.source == "d2l" else Path(origins["style"]).name
        manifest.update(style_name=Path(style_origin).stem, origins=origins)
    manifest["content_set"] = _content_set(cfg.content_set, params, new / "content_set", folder / "extract")
    manifest["content_set_source"] = cfg.content_set.source
    write_json(new / MANIFEST, manifest)
    log.info("staged %s: %s and %s (%s), %d content-set images (%s)", target, manifest["content"], manifest["style"],
             cfg.source, len(manifest["content_set"]), cfg.content_set.source)
    return target


def acquire(params: Params, staging: Staging | None = None) -> dict[str, Any]:
    """Stage the style data and install it (at once, or with the shared `staging` of `acquire_all`)."""
    own = staging is None
    staging = staging or Staging(params.root())
    try:
        target = stage_style_data(staging, params)
        if own:
            staging.commit()
    finally:
        if own:
            staging.close()
    manifest = read_json((target if own else staging.view(target)) / MANIFEST)
    return {"dir": str(target), "source": params.style.data.source, "style_name": manifest["style_name"],
            "content_set_images": len(manifest["content_set"])}
