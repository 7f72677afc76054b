"""Faster R-CNN training throughput (images/s) with our train loop, per backbone and setting.

    python benchmarks/detection_train_bench.py                         # CPU: the offline default vs torchvision's
    python benchmarks/detection_train_bench.py --device cuda --setting resnet50_fpn_reference   # on a GPU

Writes benchmarks/results/detection_train[_<device>].json. Each setting trains a fresh detector
(`weights: none`, so it needs no network) with `tasks.detection.train.train` on a synthetic VOC
(written to a temporary folder) for --epochs epochs and records every epoch's images/s as the train
stage logs it (wall time of the epoch, data loading included). The first epoch's warm-up is in its
time, so the median over epochs is the figure to quote. Settings:

* `offline_default`: `detection.train` as in params.yaml (mobilenet_v3_large_320_fpn, small resize,
  fewer RPN proposals and RoIs: what the CI-sized run uses).
* `torchvision_reference`: the same backbone with torchvision's own values (resize 320/640, 2000 RPN
  proposals before and after NMS, 512 RoIs per image), i.e. what one gets without our CPU settings.
* `resnet50_fpn_reference`: the real-data default on a GPU (resize 800/1333, torchvision's values,
  batch 2 as in measured-anchors.md); slow on a CPU (tens of seconds per step).

The machine may be busy: compare the settings of one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from models.detection import build_from_config  # noqa: E402
from tasks.detection import train as tr  # noqa: E402
from tasks.detection.data import DetectionDataset  # noqa: E402
from tasks.detection.data import preprocess as preprocess_boxes  # noqa: E402
from tasks.detection.transforms import TrainTransform  # noqa: E402
from tasks.params import DetectionPreprocessParams, load_params  # noqa: E402
from tasks.synthetic.voc import write_synthetic_voc  # noqa: E402
from tasks.voc import VOC_CLASSES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TORCHVISION = {"box_batch_size_per_image": 512, "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000}
SETTINGS = {
    "offline_default": {},
    "torchvision_reference": {**TORCHVISION, "min_size": 320, "max_size": 640},
    "resnet50_fpn_reference": {**TORCHVISION, "backbone": "resnet50_fpn", "min_size": 800, "max_size": 1333,
                               "batch_size": 2},
}
# measured-anchors.md (torchvision's reference loop on this machine), for context only.
ANCHORS = {"mobilenet_v3_large_320_fpn_batch4_images_per_s_cpu": 1.07, "resnet50_fpn_batch2_s_per_step_cpu": 18.9}


def measure(name: str, overrides: dict, data_dir: Path, pre_dir: Path, epochs: int, device: torch.device) -> dict:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = params.detection.train.model_copy(update={**overrides, "epochs": epochs})
    torch.manual_seed(params.seed)
    dataset = DetectionDataset(pre_dir / "train", data_dir, TrainTransform(flip_prob=cfg.flip_prob), params.seed)
    model = build_from_config(cfg.model_dump(), len(VOC_CLASSES))
    with tempfile.TemporaryDirectory() as tmp:
        result = tr.train(model, dataset, cfg, params.seed, device, Path(tmp) / "last.pt", name)
    per_epoch = [round(h["images_per_s"], 3) for h in result.history]
    return {"setting": {k: v for k, v in cfg.model_dump().items() if k not in ("out_dir", "checkpoint_dir")},
            "images_per_s_per_epoch": per_epoch, "images_per_s_median": statistics.median(per_epoch),
            "loss_per_epoch": [round(h["loss"], 4) for h in result.history], "train_images": len(dataset)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", action="append", choices=sorted(SETTINGS),
                        help="repeatable; default: offline_default and torchvision_reference")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    results = {"machine": {**machine(), "device": str(device),
                           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
               "epochs": args.epochs, "anchors": ANCHORS, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_synthetic_voc(Path(tmp) / "VOCdevkit", params.segmentation.data.synthetic)
        pre_dir = Path(tmp) / "preprocess"
        preprocess_boxes(DetectionPreprocessParams(), data_dir, pre_dir)
        for name in args.setting or ["offline_default", "torchvision_reference"]:
            results["settings"][name] = measure(name, SETTINGS[name], data_dir, pre_dir, args.epochs, device)
            print(name, json.dumps(results["settings"][name]["images_per_s_per_epoch"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    (RESULTS / f"detection_train{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
