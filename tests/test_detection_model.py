"""Faster R-CNN builder: both backbones with a 21-class predictor, the four training losses and the
eval outputs on tiny images, a clear offline error for unreachable weights, and the book's RoI pooling."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from models.detection import MODEL_OPTIONS, build_detector, build_from_config
from tasks.errors import D2lflowError
from tasks.params import DetectionTrainParams, load_params
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny images run fastest on one thread: with two, a busy 2-core machine makes a forward pass 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large_320_fpn", "resnet50_fpn"])
def test_backbones_build_with_random_init_and_21_classes(backbone: str) -> None:
    model = build_detector(backbone, num_classes=21, weights="none", box_batch_size_per_image=128,
                           min_size=256, max_size=400)
    assert isinstance(model, torchvision.models.detection.FasterRCNN)
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 21 * 4
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    assert model.transform.min_size == (256,) and model.transform.max_size == 400


def test_default_keeps_torchvision_sampling_and_resize() -> None:
    model = build_detector("mobilenet_v3_large_320_fpn")
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert model.transform.min_size == (320,) and model.transform.max_size == 640


def test_the_network_params_describe_is_built_for_training_evaluation_and_serving() -> None:
    """The train stage, the evaluate stage and the registered model all build through build_from_config,
    so every option in params.yaml reaches torchvision (a stale copy would serve another network)."""
    train = load_params(REPO / "params.yaml").detection.train
    model = build_from_config(train.model_dump(), 21)
    assert model.transform.min_size == (train.min_size,) and model.transform.max_size == train.max_size
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == train.box_batch_size_per_image
    assert model.rpn._pre_nms_top_n["training"] == train.rpn_pre_nms_top_n_train
    assert model.rpn._post_nms_top_n["training"] == train.rpn_post_nms_top_n_train
    assert set(MODEL_OPTIONS) <= set(DetectionTrainParams.model_fields)
    defaults = build_from_config(DetectionTrainParams().model_dump(), 21)  # the class defaults: torchvision's own
    assert defaults.rpn._post_nms_top_n["training"] == 2000 and defaults.transform.min_size == (320,)


def _tiny_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[0.0, 0.0, 40.0, 30.0], [50.0, 40.0, 128.0, 96.0]]),
                "labels": torch.tensor([15, 7])}]
    return images, targets


def test_mobilenet_detector_trains_with_four_finite_losses_and_predicts() -> None:
    torch.manual_seed(0)
    model = build_detector("mobilenet_v3_large_320_fpn", box_batch_size_per_image=64, min_size=96, max_size=128)
    images, targets = _tiny_batch()
    model.train()
    with torch.no_grad():  # the losses, not their gradients: a backward pass takes seconds on a CPU
        losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    model.eval()
    model.roi_heads.score_thresh = 0.0  # random init: keep low-scoring detections so there is output to check
    with torch.inference_mode():
        detections = model(images)
    assert len(detections) == 2
    for found in detections:
        assert set(found) == {"boxes", "labels", "scores"}
        n = len(found["scores"])
        assert n > 0 and found["boxes"].shape == (n, 4) and found["labels"].shape == (n,)
        assert (found["boxes"][:, 2] <= 128).all() and (found["boxes"][:, 3] <= 96).all()
        assert ((found["labels"] >= 1) & (found["labels"] < 21)).all()


@pytest.mark.parametrize(("weights", "file"), [("imagenet", "mobilenet_v3_large-8738ca79.pth"),
                                               ("coco", "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth")])
def test_unreachable_weights_raise_user_error(weights: str, file: str, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(D2lflowError) as info:
        build_detector("mobilenet_v3_large_320_fpn", weights=weights)
    message = str(info.value)
    assert file in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "detection.train.weights: none" in message


def test_coco_weights_from_cache_get_a_fresh_21_class_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    coco = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                                               num_classes=91).state_dict()

    def cached(*args, **kwargs):
        return coco

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", cached)
    model = build_detector("mobilenet_v3_large_320_fpn", weights="coco", box_batch_size_per_image=128)
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    state = model.state_dict()
    key = "backbone.body.0.0.weight"
    assert torch.equal(state[key], coco[key])


def test_unknown_backbone_or_weights_list_the_choices() -> None:
    with pytest.raises(ValueError, match="mobilenet_v3_large_320_fpn, resnet50_fpn"):
        build_detector("vgg16")
    with pytest.raises(ValueError, match="none, imagenet, coco"):
        build_detector("resnet50_fpn", weights="voc")


def test_roi_pool_matches_book_example() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 10.0, 30.0, 30.0]])
    pooled = torchvision.ops.roi_pool(x, rois, output_size=(2, 2), spatial_scale=0.1)
    assert torch.equal(pooled, torch.tensor([[[[5.0, 6.0], [9.0, 10.0]]], [[[9.0, 11.0], [13.0, 15.0]]]]))
