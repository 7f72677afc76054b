"""The registered FCN: uint8 RGB images (N,H,W,3) in, class maps (N,H,W) out, by tiled prediction.

Its `load_context` reads a state_dict (`torch.load(weights_only=True)`) into `models.fcn.build_fcn`
and the JSON config.
The pyfunc is for `mlflow models serve` and `mlflow.pyfunc.load_model`, which unpickle
`python_model.pkl` (cloudpickle) and import the `code/` bundled in the artifact: they run code from the
artifact store, so use them only with a registry you trust. `d2lflow.load("fcn-voc@champion")` (tasks/loader.py)
builds this class from the installed code and hash-checked files instead.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import torch


class FcnSegmenter(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from models.fcn import build_fcn

        with open(context.artifacts["config"], encoding="utf-8") as handle:
            self.config = json.load(handle)
        self.model = build_fcn(self.config["num_classes"], "none")
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from tasks.segmentation.data import normalize
        from tasks.segmentation.predict import predict_tiled

        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images shaped (N, H, W, 3), got {images.shape}")
        tile, overlap = tuple(self.config["tile"]), float(self.config["overlap"])
        return np.stack([predict_tiled(self.model, normalize(image), tile, overlap).argmax(dim=0).numpy()
                         for image in images]).astype(np.int64)
