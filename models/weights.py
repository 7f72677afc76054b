"""Pretrained torchvision weights, offline-aware: a weights file that cannot be had (no network, no
copy in the torch hub cache) becomes a D2lflowError that names the file, the cache folder and the
params.yaml setting that trains without it; never a silent fallback to random init."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum

from tasks.errors import D2lflowError

T = TypeVar("T")


def weights_file(weights: WeightsEnum) -> str:
    """The file name torchvision stores `weights` under in $TORCH_HOME/hub/checkpoints."""
    return os.path.basename(urlparse(weights.url).path)


def build_with_weights(build: Callable[[], T], weights: WeightsEnum, what: str, offline_setting: str) -> T:
    """`build()` (a torchvision builder that loads `weights`), with an unobtainable weights file turned
    into a D2lflowError; `what` describes the weights ("ImageNet ResNet-18"), `offline_setting` is the
    params.yaml line that avoids them ("segmentation.train.backbone_weights: none")."""
    try:
        return build()
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated file a RuntimeError
        name = weights_file(weights)
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise D2lflowError(
            f"could not obtain the {what} weights {name} ({err}). torch looks for the file in {cache} "
            f"($TORCH_HOME/hub/checkpoints) and downloads it when it is missing. To run offline, copy {name} "
            f"into {cache}, or train from random init with `{offline_setting}` in params.yaml."
        ) from err
