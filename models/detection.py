"""Faster R-CNN (d2l 14.8): torchvision's detector with a MobileNetV3-Large-320 FPN or a ResNet-50 FPN
backbone, random, ImageNet-backbone or COCO-detector initialised, with a `num_classes` box predictor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, WeightsEnum
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_resnet50_fpn,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from models.weights import build_with_weights

# backbone → (builder, ImageNet backbone weights, COCO detector weights)
BACKBONES: dict[str, tuple[Callable[..., FasterRCNN], WeightsEnum, WeightsEnum]] = {
    "mobilenet_v3_large_320_fpn": (fasterrcnn_mobilenet_v3_large_320_fpn, MobileNet_V3_Large_Weights.IMAGENET1K_V1,
                                   FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1),
    "resnet50_fpn": (fasterrcnn_resnet50_fpn, ResNet50_Weights.IMAGENET1K_V1, FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
}
WEIGHTS = ("none", "imagenet", "coco")
OFFLINE_SETTING = "detection.train.weights: none"


# The params of `detection.train` that shape the network (torchvision FasterRCNN keyword arguments).
MODEL_OPTIONS = ("box_batch_size_per_image", "min_size", "max_size", "rpn_pre_nms_top_n_train",
                 "rpn_post_nms_top_n_train")


def build_detector(backbone: str, num_classes: int = 21, weights: str = "none", box_batch_size_per_image: int = 512,
                   min_size: int | None = None, max_size: int | None = None, **options: int) -> FasterRCNN:
    """A Faster R-CNN for `num_classes` classes (background included: VOC is 20 + 1).

    weights: "none" (random init), "imagenet" (backbone only) or "coco" (the whole COCO detector, then a
    fresh `FastRCNNPredictor` for `num_classes`). `box_batch_size_per_image` is the number of RoIs sampled
    per image for the box head's loss: torchvision's 512 costs ~3x the step time of 128 on a CPU.
    `min_size`/`max_size` override the model's internal resize (torchvision's defaults when None); other
    `options` (e.g. `rpn_post_nms_top_n_train`) go to torchvision's FasterRCNN as they are.
    Unobtainable weights raise D2lflowError naming the file; never a silent fallback to random init."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown detection backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown detection weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    builder, imagenet, coco = BACKBONES[backbone]
    options = {"box_batch_size_per_image": box_batch_size_per_image, **options}
    if min_size is not None:
        options["min_size"] = min_size
    if max_size is not None:
        options["max_size"] = max_size
    if weights == "none":
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    if weights == "imagenet":
        return build_with_weights(
            lambda: builder(weights=None, weights_backbone=imagenet, num_classes=num_classes, **options),
            imagenet, f"ImageNet {backbone} backbone", OFFLINE_SETTING)
    # COCO: the checkpoint's 91-class predictor must load as is, then make way for ours
    model = build_with_weights(lambda: builder(weights=coco, weights_backbone=None, **options),
                               coco, f"COCO Faster R-CNN {backbone}", OFFLINE_SETTING)
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model


def build_from_config(train: Mapping[str, Any], num_classes: int, weights: str = "none") -> FasterRCNN:
    """The detector `detection.train` params describe (a dict: the train stage's params, or the copy a
    registered model carries), so training, evaluation and serving build the same network."""
    return build_detector(train["backbone"], num_classes, weights,
                          **{key: train[key] for key in MODEL_OPTIONS if train.get(key) is not None})
