"""A valid params value never breaks the DAG: every output dvc.yaml declares for segmentation_evaluate is
written whatever `segmentation.evaluate.modes` and `figure_images` are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from models.fcn import build_fcn
from tasks.params import load_params, set_params
from tasks.segmentation import stages
from tasks.synthetic.voc import write_synthetic_voc
from tasks.voc import VOC_CLASSES

REPO = Path(__file__).resolve().parents[1]


def declared_outputs(stage: str) -> list[str]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    paths = []
    for key in ("outs", "metrics", "plots"):
        for entry in spec.get(key, []):
            paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


@pytest.mark.parametrize(("modes", "figure_images"), [
    (["center_crop"], 2), (["tiled"], 2), (["center_crop"], 0)])
def test_every_declared_evaluate_output_is_written(tmp_path: Path, modes: list[str], figure_images: int) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    set_params(params_file, ["segmentation.data.synthetic.train_images=2", "segmentation.data.synthetic.val_images=3",
                             "segmentation.data.synthetic.image_size=[64,96]",
                             "segmentation.data.synthetic.small_fraction=0",
                             "segmentation.preprocess.crop_size=[64,64]",
                             f"segmentation.evaluate.modes={modes}".replace("'", ""),
                             f"segmentation.evaluate.figure_images={figure_images}"])
    params = load_params(params_file)
    write_synthetic_voc(params.path(params.segmentation.data.dir), params.segmentation.data.synthetic)
    stages.preprocess(params)
    model = params.path(params.segmentation.train.out_dir) / "model.pt"
    model.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_fcn(len(VOC_CLASSES), "none").state_dict(), model)

    metrics = stages.evaluate(params)

    missing = [path for path in declared_outputs("segmentation_evaluate") if not (tmp_path / path).is_file()]
    assert missing == []
    assert ("tiled_mean_iou" in metrics) == ("tiled" in modes) and "mean_iou" in metrics
    figure = Image.open(tmp_path / "artifacts/segmentation/evaluate/predictions.png")
    assert 180 * figure_images <= figure.size[1] < 180 * (figure_images + 1)  # one row (2.6 in) per example image
