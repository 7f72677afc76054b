"""LeNet on Fashion-MNIST: CPU training images/s of d2lflow's loop (tasks/classification/train.py) against
the book's loop re-typed (benchmarks/book_lenet.py), in one run on the same images, model and seed;
then the test accuracy the pipeline's functions reach after `--epochs` (the book's 10) on the default
synthetic set and on the real sample (`../shared/data/fashion-mnist-sample`: 2,000 + 500 real images),
for both LeNet variants. Writes benchmarks/results/classification.json.

    python benchmarks/classification_bench.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks import book_lenet
from benchmarks.common import machine
from models.lenet import build_lenet
from tasks.classification import train as tr
from tasks.classification.data import FashionMnist, load_split, preprocess
from tasks.classification.idx import CLASS_NAMES, NUM_CLASSES, idx_bytes
from tasks.classification.metrics import classification_scores
from tasks.distributed import Context
from tasks.metrics import confusion_matrix
from tasks.params import ClassificationPreprocessParams, ClassificationTrainParams, load_params
from tasks.synthetic.fashion_mnist import write_synthetic_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "fashion-mnist-sample"
CPU = torch.device("cpu")


def write_book_layout(pre_dir: Path, root: Path) -> None:
    """Our train and test splits as the raw IDX files torchvision's FashionMNIST reads (root/FashionMNIST/raw)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, stem in (("train", "train"), ("test", "t10k")):
        images, labels = load_split(pre_dir, split)
        (raw / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(labels.astype("uint8")))


def throughput(pre_dir: Path, variant: str, epochs: int, batch_size: int, lr: float) -> dict:
    """Both loops, same seed, model, images and batch size; images/s of the training epochs only."""
    cfg = ClassificationTrainParams(variant=variant, epochs=epochs, batch_size=batch_size, lr=lr)
    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(0)
        ours = tr.train(build_lenet(variant), FashionMnist(pre_dir, "train"), cfg, 0, CPU,
                        Path(scratch) / "last.pt", "bench").history
        write_book_layout(pre_dir, Path(scratch) / "book")
        train_iter, _ = book_lenet.load_data_fashion_mnist(str(Path(scratch) / "book"), batch_size)
        torch.manual_seed(0)
        book = book_lenet.train_ch6(build_lenet(variant), train_iter, epochs, lr, CPU)
    rate = lambda history: sum(h.get("examples_per_s", h.get("images_per_s")) for h in history) / len(history)  # noqa: E731
    return {"variant": variant, "epochs": epochs, "batch_size": batch_size,
            "d2lflow_images_per_s": rate(ours), "book_images_per_s": rate(book),
            "speedup": rate(ours) / rate(book),
            "d2lflow_final_loss": ours[-1]["loss"], "book_final_loss": book[-1]["loss"],
            "d2lflow_epochs": ours, "book_epochs": book}


def accuracy_run(data_dir: Path, variant: str, epochs: int, seed: int) -> dict:
    """The pipeline's preprocess and training functions with the book's settings, scored on the test file."""
    params = load_params(REPO / "params.yaml").classification
    cfg = params.train.model_copy(update={"variant": variant, "epochs": epochs})
    with tempfile.TemporaryDirectory() as scratch:
        pre = Path(scratch) / "pre"
        counts = preprocess(data_dir, pre, ClassificationPreprocessParams(val_fraction=params.preprocess.val_fraction),
                            seed)
        torch.manual_seed(seed)
        result = tr.train(build_lenet(variant), FashionMnist(pre, "train"), cfg, seed, CPU,
                          Path(scratch) / "last.pt", "bench", ctx=Context(CPU))
        logits, labels = tr.predict(result.model, tr.eval_loader(FashionMnist(pre, "test"), 1024), CPU)
    scores = classification_scores(confusion_matrix(logits.argmax(1), labels, NUM_CLASSES).numpy(), CLASS_NAMES)
    return {"variant": variant, "epochs": epochs, "images": counts, "test_accuracy": scores["accuracy"],
            "mean_class_accuracy": scores["mean_class_accuracy"], "per_class_accuracy": scores["per_class_accuracy"],
            "final_train_loss": result.history[-1]["loss"],
            "train_loss_per_epoch": [round(h["loss"], 4) for h in result.history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the accuracy runs (the book: 10)")
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "classification.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = load_params(REPO / "params.yaml").classification
    synthetic = defaults.data.synthetic
    result: dict = {"machine": machine(), "settings": {"lr": defaults.train.lr, "batch_size": defaults.train.batch_size,
                                                         "synthetic": synthetic.model_dump()}}
    with tempfile.TemporaryDirectory() as scratch:
        raw = write_synthetic_fashion_mnist(Path(scratch) / "raw", synthetic.train_images, synthetic.test_images,
                                            synthetic.seed, synthetic.noise)
        pre = Path(scratch) / "pre"
        preprocess(raw, pre, defaults.preprocess, 0)
        result["throughput"] = throughput(pre, "sigmoid", args.speed_epochs, defaults.train.batch_size,
                                          defaults.train.lr)
        print(json.dumps({k: v for k, v in result["throughput"].items() if not k.endswith("_epochs")}, indent=1))
        result["accuracy"] = {}
        for name, folder in (("synthetic", raw), ("real_sample", args.sample)):
            for variant in ("sigmoid", "relu"):
                run = accuracy_run(folder, variant, args.epochs, 0)
                result["accuracy"][f"{name}_{variant}"] = run
                print(name, variant, f"test accuracy {run['test_accuracy']:.4f}", run["train_loss_per_epoch"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
