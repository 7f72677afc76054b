"""The registered LeNet: uint8 grey images (N, 28, 28) in, the class and its probabilities out.

Its `load_context` reads a state_dict (`torch.load(weights_only=True)`) into `models.lenet.build_lenet`
and the JSON config (variant, class names). `mlflow.pyfunc.load_model` unpickles the artifact's
`python_model.pkl` and imports its `code/`: use it only with a registry you trust.
`d2lflow.load("lenet-fashion-mnist@champion")` (tasks/loader.py) builds this class from the installed
code and hash-checked files instead.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import torch


class LenetClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from models.lenet import build_lenet

        with open(context.artifacts["config"], encoding="utf-8") as handle:
            self.config = json.load(handle)
        self.model = build_lenet(self.config["variant"], num_classes=len(self.config["classes"]))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> dict[str, np.ndarray]:
        """{"class": int64 (N,), "probabilities": float32 (N, 10)}; `config["classes"]` names the classes."""
        from tasks.classification.data import to_tensor

        images = np.asarray(model_input)
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (0..255), got dtype {images.dtype}")
        if images.ndim == 2:
            images = images[None]
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"expected uint8 images shaped (N, 28, 28), got {images.shape}")
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(to_tensor(np.ascontiguousarray(images))), dim=1).numpy()
        return {"class": probabilities.argmax(axis=1).astype(np.int64),
                "probabilities": probabilities.astype(np.float32)}
