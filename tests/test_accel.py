"""GPU options of the CNN trainers (tasks/accel.py): what each selects, decided without a GPU."""

from __future__ import annotations

import torch

from tasks import accel
from tasks.params import DetectionTrainParams, SegmentationTrainParams

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_is_bf16_without_a_scaler_where_supported_else_fp16_with_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.precision(True, CUDA, "x.amp") == accel.Precision(torch.bfloat16, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert accel.precision(True, CUDA, "x.amp") == accel.Precision(torch.float16, True)
    assert accel.precision(False, CUDA, "x.amp") == accel.Precision(None, False)


def test_cpu_training_is_float32_nchw_and_eager_by_default(caplog):
    for cfg in (SegmentationTrainParams(), DetectionTrainParams()):
        assert (cfg.amp, cfg.torch_compile) == (False, False)
        assert not accel.use_channels_last(cfg.channels_last, CPU)
    with caplog.at_level("INFO"):
        assert not accel.precision(True, CPU, "segmentation.train.amp").autocast
    assert "segmentation.train.amp applies to CUDA only" in caplog.text
    conv = torch.nn.Conv2d(3, 8, 3)
    accel.prepare(conv, CPU, channels_last=True)
    assert conv.weight.is_contiguous()  # not channels_last on the CPU
    assert accel.use_channels_last(True, CUDA) and not accel.use_channels_last(False, CUDA)


def test_torch_compile_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module: calls.append(module) or "compiled")
    module = torch.nn.Linear(2, 2)
    assert accel.compiled(module, False) is module and calls == []
    assert accel.compiled(module, True) == "compiled" and calls == [module]
