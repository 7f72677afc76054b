"""VOC annotation XML → box table: hardened parsing, validation, skip-and-count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.detection.annotations import parse_annotation, read_split
from tasks.params import SyntheticVocParams
from tasks.synthetic.voc import write_synthetic_voc
from tasks.voc import BadSampleError, voc_root

GOOD = """<annotation><filename>a.jpg</filename><size><width>500</width><height>375</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>10</ymin><xmax>200</xmax>
<ymax>375</ymax></bndbox></object>
<object><name>pottedplant</name><difficult>1</difficult><bndbox><xmin>300</xmin><ymin>20</ymin><xmax>500</xmax>
<ymax>100</ymax></bndbox></object></annotation>"""

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><size><width>10</width><height>10</height></size><object><name>&lol3;</name></object></annotation>"""


def write(tmp_path: Path, text: str, name: str = "x.xml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_boxes_become_zero_based_xyxy_with_labels_and_difficult_flags(tmp_path: Path) -> None:
    rows = parse_annotation(write(tmp_path, GOOD), "a")
    assert [(r["name"], r["label"], r["difficult"]) for r in rows] == [("dog", 12, False), ("pottedplant", 16, True)]
    assert (rows[0]["xmin"], rows[0]["ymin"], rows[0]["xmax"], rows[0]["ymax"]) == (0, 9, 200, 375)
    assert (rows[0]["width"], rows[0]["height"]) == (500, 375)


@pytest.mark.parametrize(("text", "reason"), [
    (BOMB, "declares entities"),
    ("<annotation><size><width>10</width>", "malformed XML"),
    (GOOD.replace("<xmax>200</xmax>", "<xmax>501</xmax>"), "outside the 500x375 image"),
    (GOOD.replace("<xmin>1</xmin>", "<xmin>250</xmin>"), "empty or outside"),
    (GOOD.replace("<name>dog</name>", "<name>unicorn</name>"), "unknown class name 'unicorn'"),
    (GOOD.replace("<ymin>10</ymin>", "<ymin>ten</ymin>"), "<ymin> is not a number"),
])
def test_bad_annotations_are_refused_with_an_error_naming_the_file(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text, "2012_000042.xml")
    with pytest.raises(BadSampleError, match=reason) as caught:
        parse_annotation(path, "2012_000042")
    assert "2012_000042.xml" in str(caught.value)


def test_synthetic_annotations_parse_into_a_table_and_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    data = write_synthetic_voc(tmp_path / "VOCdevkit", SyntheticVocParams(train_images=12, val_images=4, seed=3))
    boxes, images, bad = read_split(data, "train", on_bad_sample="error")
    assert len(images) == 12 and not bad
    assert boxes["image_id"].isin(images["image_id"]).all()
    assert set(images["image_id"]) - set(boxes["image_id"]), "some images have no objects"
    assert ((boxes.xmin < boxes.xmax) & (boxes.ymin < boxes.ymax)).all()
    assert (boxes.xmax <= boxes.width).all() and (boxes.ymax <= boxes.height).all()

    victim = images["image_id"].iloc[0]
    (voc_root(data) / "Annotations" / f"{victim}.xml").write_text(BOMB)
    with pytest.raises(BadSampleError, match=f"{victim}.xml"):
        read_split(data, "train", on_bad_sample="error")
    boxes, images, bad = read_split(data, "train", on_bad_sample="skip")
    assert len(images) == 11 and victim not in set(boxes["image_id"])
    assert [b["id"] for b in bad] == [victim] and "entities" in bad[0]["reason"]
