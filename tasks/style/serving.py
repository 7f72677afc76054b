"""The registered feed-forward style network (`style-<name>`): uint8 RGB images in, stylised uint8 RGB
images of the same size out, one forward pass each.

`load_context` reads a state_dict (`torch.load(weights_only=True)`) into `models.style.TransformNet`
with the widths of the JSON config. `mlflow.pyfunc.load_model` unpickles `python_model.pkl` and imports
the bundled `code/`: use it only with a registry you trust; `d2lflow.load("style-synthetic@champion")`
(tasks/loader.py) builds this class from the installed code and hash-checked files instead.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import torch


class StyleTransformer(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from models.style import TransformNet

        with open(context.artifacts["config"], encoding="utf-8") as handle:
            self.config = json.load(handle)
        self.model = TransformNet(int(self.config["base"]), int(self.config["n_residual"]))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from tasks.style.transfer import stylise

        images = np.asarray(model_input)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images shaped (N, H, W, 3) or (H, W, 3), got {images.dtype} "
                             f"{images.shape}")
        if min(images.shape[1:3]) < 5:
            raise ValueError(f"images must be at least 5 pixels a side, got {images.shape[1:3]}")
        out = stylise(self.model, images)
        return out[0] if single else out
