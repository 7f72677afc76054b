"""The registered word2vec model: words in, center embeddings out (an MLflow pyfunc).

Its `load_context` reads a state_dict (`torch.load(weights_only=True)`) and the vocabulary (JSON).
Unknown words map to `<unk>` (index 0), as in training.
The pyfunc is for `mlflow models serve` and `mlflow.pyfunc.load_model`, which unpickle
`python_model.pkl` (cloudpickle) and import the `code/` bundled in the artifact: they run code from the
artifact store, so use them only with a registry you trust. `d2lflow.load("word2vec@champion")` (tasks/loader.py)
builds this class from the installed code and hash-checked files instead.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

INPUT_COLUMN = "word"


class Word2vecEmbeddings(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.embeddings = state["embed_v.weight"].numpy()
        with open(context.artifacts["vocab"], encoding="utf-8") as handle:
            tokens = json.load(handle)["idx_to_token"]
        self.index = pd.Index(tokens)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        words = pd.Series(model_input[INPUT_COLUMN]).astype(str).str.lower()
        ids = self.index.get_indexer(words)
        return self.embeddings[np.where(ids < 0, 0, ids)]
