"""CPU throughput and sample quality of the generative pipeline on the synthetic Fashion-MNIST.

Builds classification's outputs (npz splits and a briefly trained relu LeNet, tests/generative_fixtures.py) in
a temporary folder, runs the train_vae, train_dcgan and evaluate stages there, and copies the metrics table,
the figures and the metrics to --out; then times one epoch of the book's DCGAN (base 64, batch 256).

    OMP_NUM_THREADS=1 python -m benchmarks.generative_bench --out /tmp/generative
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from models.generative import Discriminator, Generator
from tasks.generative import stages
from tasks.generative import train as tr
from tasks.params import load_params
from tests.generative_fixtures import write_classification_outputs, write_params


def book_dcgan_images_per_s(images: torch.Tensor) -> float:
    """One epoch of the book's DCGAN (base 64, Adam 0.005 / β1 0.5, batch 256) on `images` (N, 1, 28, 28)."""
    torch.manual_seed(0)
    G, D = Generator(100, 28, 1, 64), Discriminator(28, 1, 64)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=0.005, betas=(0.5, 0.999)) for m in (G, D))
    start = time.perf_counter()
    tr.dcgan_epoch(G, D, opt_g, opt_d, images, 256, tr.epoch_generator(0, "dcgan", 0))
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--vae-epochs", type=int, default=5)
    parser.add_argument("--vae-base", type=int, default=16)
    parser.add_argument("--dcgan-epochs", type=int, default=5)
    parser.add_argument("--dcgan-base", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="generative-bench-") as scratch:
        root = Path(scratch)
        write_classification_outputs(root, args.n_train, args.n_test)
        params = load_params(write_params(root, {
            "train_vae": {"latent_dim": 16, "base": args.vae_base, "epochs": args.vae_epochs, "batch_size": 32,
                          "lr": 0.003},
            "train_dcgan": {"base": args.dcgan_base, "epochs": args.dcgan_epochs, "batch_size": 64},
            "evaluate": {"samples": args.samples, "batch_size": 500, "grid_images": 64, "interpolation_steps": 10}}))
        vae, dcgan = stages.train_vae(params), stages.train_dcgan(params)
        metrics = stages.evaluate(params)
        evaluation = params.path(params.generative.evaluate.out_dir)
        for name in ("samples.png", "interpolation.png", "table.md", "class_coverage.json"):
            shutil.copy2(evaluation / name, args.out / name)
        subset = tr.gan_images(stages.load_split(params.path(params.generative.data.preprocess_dir) / "train.npz")
                               .images[:256], 28)
        book = book_dcgan_images_per_s(subset)
    summary = {"train_vae": vae, "train_dcgan": dcgan, "evaluate": metrics,
               "book_dcgan_images_per_s": book, "book_dcgan_epochs_per_s_on_60k": book / 60000,
               "torch_threads": torch.get_num_threads()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(json.dumps({"vae_epochs_per_s": vae["epochs_per_s"], "dcgan_epochs_per_s": dcgan["epochs_per_s"],
                      "book_dcgan_images_per_s": book}, indent=2))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
