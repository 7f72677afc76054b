"""The GPU options the CNN trainers share: mixed precision, channels_last memory and torch.compile.

* amp (CUDA only): autocast in bfloat16 where the GPU supports it (`torch.cuda.is_bf16_supported`;
  bf16 has float32's range, so no GradScaler), else float16 with a GradScaler.
* channels_last (CUDA only): the model's 4-D weights and the input batches in NHWC memory, the
  layout cuDNN's tensor-core convolutions use. CPU training keeps NCHW (its results unchanged).
* torch_compile: the forward through `torch.compile` (any device; the first steps compile).

With every option at its default a CPU run is the plain float32 NCHW eager one, bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """What a training step runs under: autocast's dtype (None: float32) and whether to scale the loss."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def autocast(self) -> bool:
        return self.dtype is not None


def precision(amp: bool, device: torch.device, key: str) -> Precision:
    """bf16 autocast without a scaler on GPUs that support it, fp16 with a GradScaler on older ones,
    float32 elsewhere (`key` names the param in the log line that says amp did not apply)."""
    if not amp:
        return Precision(None, False)
    if device.type != "cuda":
        log.info("%s applies to CUDA only; training in float32 on %s", key, device)
        return Precision(None, False)
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def use_channels_last(channels_last: bool, device: torch.device) -> bool:
    return channels_last and device.type == "cuda"


def prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """`model` on `device`, in channels_last memory when that applies (in place; returns it)."""
    model.to(device)
    if use_channels_last(channels_last, device):
        model.to(memory_format=torch.channels_last)
    return model


def compiled(forward: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(forward)` when enabled (the module to train through; save the original's weights)."""
    return torch.compile(forward) if enabled else forward
