"""What the generative pipeline reads from the classification pipeline (its preprocess npz files and a trained
LeNet, per the shared contract), built here from the synthetic Fashion-MNIST generator, and a params file of
tiny sizes pointing at them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn import functional as F

from models.lenet import build_lenet
from tasks.classification.idx import read_split
from tasks.synthetic.fashion_mnist import write_synthetic_fashion_mnist

SMALL = {
    "train_vae": {"latent_dim": 8, "base": 8, "epochs": 10, "batch_size": 32, "lr": 0.003},
    "train_dcgan": {"base": 8, "epochs": 5, "batch_size": 32},  # the book's lr 0.005
    "evaluate": {"samples": 200, "batch_size": 200, "grid_images": 16, "interpolation_steps": 6},
}


def write_classification_outputs(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> None:
    """artifacts/classification/preprocess/{train,val,test}.npz and artifacts/classification/train/model.pt
    (a relu LeNet trained for two epochs on the synthetic train split: a weak but real classifier)."""
    raw = write_synthetic_fashion_mnist(root / "data" / "fashion-mnist", n_train=n_train, n_test=n_test, seed=seed)
    train_x, train_y = read_split(raw, "train")
    test_x, test_y = read_split(raw, "t10k")
    pre = root / "artifacts" / "classification" / "preprocess"
    pre.mkdir(parents=True)
    cut = len(train_x) * 9 // 10
    for name, x, y in (("train", train_x[:cut], train_y[:cut]), ("val", train_x[cut:], train_y[cut:]),
                       ("test", test_x, test_y)):
        np.savez(pre / f"{name}.npz", images=x.astype(np.uint8), labels=y.astype(np.int64))
    torch.manual_seed(seed)
    net = build_lenet("relu")
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.from_numpy(train_x[:cut]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(train_y[:cut].astype(np.int64))
    for _ in range(2):
        for start in range(0, len(x), 64):
            loss = F.cross_entropy(net(x[start:start + 64]), y[start:start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    out = root / "artifacts" / "classification" / "train"
    out.mkdir(parents=True)
    torch.save(net.state_dict(), out / "model.pt")


def write_params(root: Path, overrides: dict | None = None) -> Path:
    """A params.yaml in `root` (paths relative to it): CPU, the fixture's relu LeNet, tiny generative sizes."""
    generative = {k: dict(v) for k, v in SMALL.items()}
    for section, values in (overrides or {}).items():
        generative.setdefault(section, {}).update(values)
    params = {"device": "cpu", "mlflow": {"system_metrics": False}, "generative": generative,
              "classification": {"train": {"variant": "relu"}}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path
