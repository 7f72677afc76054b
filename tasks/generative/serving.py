"""The registered samplers `vae-fashion-mnist` and `dcgan-fashion-mnist`: a number of samples and a seed in,
uint8 images out (and, for the VAE, reconstructions of given images).

Input: a dict of arrays `{"n": [N], "seed": [S]}` (int64, one element each), for the VAE also
`"images"`: uint8 (M, 28, 28), M may be 0. Output: `{"samples": uint8 (N, 28, 28)}`, for the VAE also
`"reconstructions"`: uint8 (M, 28, 28) (decoder means of z = μ). Equal (n, seed) give equal images.

`load_context` reads a state_dict (`torch.load(weights_only=True)`; the DCGAN's is the generator's) and the
JSON config. `mlflow.pyfunc.load_model` unpickles code from the artifact store: use it only with a registry
you trust; `d2lflow.load("vae-fashion-mnist@champion")` (tasks/loader.py) builds this class from the
installed code and hash-checked files instead.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import torch

from models.generative import VAE, Generator
from tasks.generative.train import gan_to_uint8, unit_to_uint8, vae_images


@torch.inference_mode()
def sample_vae(model: VAE, n: int, generator: torch.Generator) -> np.ndarray:
    """n uint8 images: decoder means of z ~ N(0, I)."""
    model.eval()
    return unit_to_uint8(model.sample(n, generator=generator))


@torch.inference_mode()
def sample_dcgan(G: Generator, n: int, generator: torch.Generator) -> np.ndarray:
    """n uint8 images from z ~ N(0, I), the generator in eval mode (BatchNorm's running statistics)."""
    G.eval()
    return gan_to_uint8(G(torch.randn((n, G.latent_dim), generator=generator)))


@torch.inference_mode()
def reconstruct(model: VAE, images: np.ndarray) -> np.ndarray:
    model.eval()
    mu, _ = model.encode(vae_images(images))
    return unit_to_uint8(torch.sigmoid(model.decode(mu)))


def build(config: dict) -> torch.nn.Module:
    """The network a config describes, with fresh weights (load_state_dict follows)."""
    if config["kind"] == "vae":
        return VAE(config["latent_dim"], config["base"])
    return Generator(config["latent_dim"], config["image_size"], 1, config["base"])


class GenerativeSampler(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        with open(context.artifacts["config"], encoding="utf-8") as handle:
            self.config = json.load(handle)
        self.model = build(self.config)
        self.model.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.model.eval()

    def predict(self, context, model_input, params=None):
        if not isinstance(model_input, dict) or "n" not in model_input or "seed" not in model_input:
            raise ValueError('expected {"n": [N], "seed": [S]} (and "images" for the VAE)')
        n, seed = int(np.asarray(model_input["n"]).ravel()[0]), int(np.asarray(model_input["seed"]).ravel()[0])
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        generator = torch.Generator().manual_seed(seed)
        if self.config["kind"] == "vae":
            out = {"samples": sample_vae(self.model, n, generator)}
            images = np.asarray(model_input.get("images", np.zeros((0, 28, 28), np.uint8)), dtype=np.uint8)
            if images.ndim != 3 or images.shape[1:] != (28, 28):
                raise ValueError(f"images must be uint8 (M, 28, 28), got shape {images.shape}")
            out["reconstructions"] = reconstruct(self.model, images) if len(images) else images
            return out
        return {"samples": sample_dcgan(self.model, n, generator)}
