"""The registered detector: uint8 RGB images (N,H,W,3) in, one row per detected box out.

Its `load_context` reads a state_dict (`torch.load(weights_only=True)`) into
`models.detection.build_from_config` and the JSON config.
The pyfunc is for `mlflow models serve` and `mlflow.pyfunc.load_model`, which unpickle
`python_model.pkl` (cloudpickle) and import the `code/` bundled in the artifact: they run code from the
artifact store, so use them only with a registry you trust. `d2lflow.load("fasterrcnn-voc@champion")` (tasks/loader.py)
builds this class from the installed code and hash-checked files instead.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

COLUMNS = ("image", "label", "name", "score", "xmin", "ymin", "xmax", "ymax")


class FasterRcnnDetector(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from models.detection import build_from_config

        with open(context.artifacts["config"], encoding="utf-8") as handle:
            self.config = json.load(handle)
        train, evaluate = self.config["train"], self.config["evaluate"]
        self.model = build_from_config(train, len(self.config["classes"]))
        self.model.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.model.roi_heads.score_thresh = evaluate["score_thresh"]
        self.model.roi_heads.nms_thresh = evaluate["nms_thresh"]
        self.model.roi_heads.detections_per_img = evaluate["detections_per_image"]
        self.model.eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images shaped (N, H, W, 3), got {images.shape}")
        tensors = [torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255) for image in images]
        with torch.inference_mode():
            outputs = self.model(tensors)
        rows = [(i, int(label), self.config["classes"][int(label)], float(score), *map(float, box))
                for i, out in enumerate(outputs)
                for box, label, score in zip(out["boxes"], out["labels"], out["scores"])]
        return pd.DataFrame(rows, columns=list(COLUMNS))
