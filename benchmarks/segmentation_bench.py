"""Segmentation data: d2lflow's decode-once uint8 store vs the book's in-memory VOCSegDataset, in one run.

    python benchmarks/segmentation_bench.py                       # book-sized synthetic VOC (200 + 40 images)
    python benchmarks/segmentation_bench.py --data-dir data/VOCdevkit   # real VOC2012 (after `d2lflow acquire`)

Writes benchmarks/results/segmentation.json. Every side runs in a fresh subprocess of this script
(`--side ...`), so each peak RSS (`ru_maxrss`) belongs to that side alone:

* book: `VOCSegDataset(True, crop, voc_dir)` (d2l 14.9, re-typed in book_segmentation.py) decodes every
  image and keeps each kept one as normalised float32; then its DataLoader (shuffle, drop_last as the
  book) with 0 and with 2 workers: time to the first batch and images/s (the median of
  `--loader-epochs` epochs each).
* ours-preprocess: `tasks.segmentation.data.preprocess` (train and val, as the stage does) into a
  temporary store: seconds, images/s, store size, peak RSS.
* ours: a new process that only opens the stored train split, as the train stage does: the uint8
  crops of `SegmentationDataset(...).uint8()` + DataLoader (shuffle) with 0 and with 2 workers: time
  to the first batch and images/s (median of `--loader-epochs` epochs) of the uint8 batches and of the
  batches converted and normalised by `device_batch` on the CPU ("normalised on the CPU": the form the
  book's loader yields; on a GPU that step runs there); peak RSS (recorded before training; worker
  processes' peak separately). Then CPU training throughput of `build_fcn(21, "none")`
  (SGD lr 0.001, wd 1e-3, `pixel_loss(...).sum().backward()`) over --train-steps steps of our loader,
  the first step excluded as warm-up. Training is the same for both sides, so it is measured once.

Ours' peak RSS is the larger of its two processes (preprocess and train are separate pipeline stages).
`--rss-images N` also preprocesses and loads a larger synthetic set of N train images (ours only:
the book's would hold N float32 images) to show that ours' peak does not grow with the store.
The machine may be busy: compare the ratios of one run, not absolute numbers across runs. On a loaded
machine with few cores, torch's intra-op threads can make small element-wise ops (normalising one image)
10x slower than one thread does: `--threads 1` sets `torch.set_num_threads` in every child.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from tasks.params import SegmentationPreprocessParams, SyntheticVocParams  # noqa: E402
from tasks.synthetic.voc import write_synthetic_voc  # noqa: E402
from tasks.voc import read_ids, voc_root  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Book-like image sizes (VOC images are at most 500 px a side; most are 500x375 or 375x500).
SYNTHETIC = SyntheticVocParams(train_images=200, val_images=40, image_size=(360, 500), seed=0)
# measured-anchors.md, real VOC2012 with the book's VOCSegDataset (for context only).
ANCHORS = {"book_peak_gib_for_669_images": 3.3, "book_loader_images_per_s_0_workers": 540}
GIB = 1 << 30


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def loader_epoch(loader) -> tuple[int, float]:
    """Images and seconds of one full epoch over `loader` (fresh iterator, no model)."""
    images, start = 0, time.perf_counter()
    for x, _ in loader:
        images += len(x)
    return images, time.perf_counter() - start


def normalised_epoch(loader) -> tuple[int, float]:
    """`loader_epoch` of our uint8 loader with every batch through `device_batch` on the CPU."""
    from tasks.segmentation.data import device_batch

    images, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = device_batch(x, y, torch.device("cpu"))
        images += len(x)
    return images, time.perf_counter() - start


def cpu_rate(workers: int, images: int, cpu_seconds: float) -> dict:
    """Images per CPU second of this process (0 workers only: then all the loading is this process's
    work). Less sensitive than wall time to other load on a shared machine."""
    return {"images_per_cpu_s": images / cpu_seconds} if workers == 0 and cpu_seconds > 0 else {}


def children_peak_rss_bytes() -> int:
    """The largest peak RSS of this process's finished children (DataLoader workers)."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


WORKERS = (0, 2)


# ---------------------------------------------------------------------------
# The sides (each runs in its own process)
# ---------------------------------------------------------------------------


def side_book(args: argparse.Namespace) -> dict:
    from benchmarks import book_segmentation as book

    voc_dir = voc_root(args.data_dir)
    listed = len(read_ids(voc_dir, "Segmentation", "train"))
    torch.manual_seed(args.seed)
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    dataset = book.VOCSegDataset(True, tuple(args.crop), str(voc_dir))
    construct = time.perf_counter() - start
    # As book.load_data_voc builds its train iterator.
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, shuffle=True, drop_last=True, num_workers=0)
    start = time.perf_counter()
    x, y = next(iter(loader))
    first_batch = time.perf_counter() - start
    batch_shapes = [list(x.shape), list(y.shape)]
    images, seconds = loader_epoch(loader)
    per_workers = {}
    for workers in WORKERS:
        loader = torch.utils.data.DataLoader(dataset, args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=workers)
        cpu = time.process_time()
        epochs = [loader_epoch(loader) for _ in range(args.loader_epochs)]
        cpu = (time.process_time() - cpu) / len(epochs)
        n, sec = epochs[0][0], float(np.median([s for _, s in epochs]))
        per_workers[str(workers)] = {"images": n, "epoch_seconds": [s for _, s in epochs], "seconds": sec,
                                     "images_per_s": n / sec, **cpu_rate(workers, n, cpu)}
    held = sum(f.numel() * f.element_size() for f in dataset.features)
    held += sum(lab.numel() * lab.element_size() for lab in dataset.labels)
    held += dataset.colormap2label.numel() * dataset.colormap2label.element_size()
    return {
        "listed": listed, "kept": len(dataset), "filtered_small": listed - len(dataset),
        "construct_seconds": construct, "preprocess_images_per_s": listed / construct,
        "first_batch_seconds_after_construct": first_batch,
        "time_to_first_batch_s": construct + first_batch,
        "batch_shapes": batch_shapes,
        "loader_epoch_images": images, "loader_epoch_seconds": seconds, "loader_images_per_s": images / seconds,
        "loader_by_workers": per_workers,
        "bytes_held_by_dataset": held,
        "rss_after_imports_bytes": baseline, "peak_rss_bytes": peak_rss_bytes(),
    }


def side_ours_preprocess(args: argparse.Namespace) -> dict:
    from tasks.segmentation.data import preprocess

    baseline = peak_rss_bytes()
    start = time.perf_counter()
    stats = preprocess(args.data_dir, args.store, SegmentationPreprocessParams(crop_size=tuple(args.crop)))
    seconds = time.perf_counter() - start
    listed = sum(s["listed"] for s in stats.values())
    store = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file())
    return {
        "splits": stats, "listed_all_splits": listed, "seconds": seconds, "preprocess_images_per_s": listed / seconds,
        "store_bytes": store, "rss_after_imports_bytes": baseline, "peak_rss_bytes": peak_rss_bytes(),
    }


def side_ours(args: argparse.Namespace) -> dict:
    from torch.utils.data import DataLoader

    from models.fcn import build_fcn
    from tasks.segmentation.data import SegmentationDataset, collate_crops, device_batch
    from tasks.segmentation.train import pixel_loss

    torch.manual_seed(args.seed)
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    floats = SegmentationDataset(Path(args.store) / "train", tuple(args.crop), seed=args.seed, train=True)
    dataset = floats.uint8()
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0, collate_fn=collate_crops)
    x, y = next(iter(loader))
    first_batch = time.perf_counter() - start
    batch_shapes = [list(x.shape), list(y.shape)]
    images, seconds = loader_epoch(loader)
    per_workers = {}
    for workers in WORKERS:
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                            collate_fn=collate_crops)
        cpu = time.process_time()
        epochs = [loader_epoch(loader) for _ in range(args.loader_epochs)]
        cpu = (time.process_time() - cpu) / len(epochs)
        n, sec = epochs[0][0], float(np.median([s for _, s in epochs]))
        nn_, nsec = normalised_epoch(loader)
        per_workers[str(workers)] = {"images": n, "epoch_seconds": [s for _, s in epochs], "seconds": sec,
                                     "images_per_s": n / sec, "normalised_on_cpu_images_per_s": nn_ / nsec,
                                     **cpu_rate(workers, n, cpu)}
    data_peak = peak_rss_bytes()
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0, collate_fn=collate_crops)

    model = build_fcn(21, "none")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, weight_decay=1e-3)
    step_seconds, step_images, losses = [], [], []
    batches = iter(loader)
    for _ in range(args.train_steps):
        start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = device_batch(x, y, torch.device("cpu"))
        loss = pixel_loss(model(x), y).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        step_seconds.append(time.perf_counter() - start)
        step_images.append(len(x))
    timed = step_seconds[1:] or step_seconds
    timed_images = step_images[1:] or step_images
    return {
        "kept": len(dataset), "time_to_first_batch_s": first_batch, "batch_shapes": batch_shapes,
        "batch_dtypes": [str(x.dtype), str(y.dtype)],
        "loader_epoch_images": images, "loader_epoch_seconds": seconds, "loader_images_per_s": images / seconds,
        "loader_by_workers": per_workers,
        "rss_after_imports_bytes": baseline, "peak_rss_bytes": data_peak,
        "workers_peak_rss_bytes": children_peak_rss_bytes(),
        "training": {
            "model": 'build_fcn(21, "none")', "optimizer": "SGD lr 0.001 weight_decay 1e-3",
            "batch_size": args.batch_size, "crop": list(args.crop), "steps": args.train_steps,
            "step_seconds": step_seconds, "losses": losses,
            "images_per_s_excluding_first_step": sum(timed_images) / sum(timed) if timed else None,
            "peak_rss_bytes_after_training": peak_rss_bytes(),
        },
    }


SIDES = {"book": side_book, "ours-preprocess": side_ours_preprocess, "ours": side_ours}


def run_side(side: str, args: argparse.Namespace, store: Path, tmp: Path) -> dict:
    """Run one side in a fresh interpreter and return its JSON."""
    out = tmp / f"{side}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--side-out", str(out),
               "--data-dir", str(args.data_dir), "--store", str(store), "--crop", *map(str, args.crop),
               "--batch-size", str(args.batch_size), "--loader-epochs", str(args.loader_epochs),
               "--train-steps", str(args.train_steps), "--seed", str(args.seed),
               "--threads", str(args.threads)]
    print(f"[{side}] running ...", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    result = json.loads(out.read_text())
    result["process_wall_seconds"] = time.perf_counter() - start
    return result


def large_store(args: argparse.Namespace, tmp: Path) -> dict:
    """Ours' preprocess and loader on a synthetic set of `--rss-images` train images (deleted after)."""
    cfg = SyntheticVocParams(train_images=args.rss_images, val_images=8, image_size=(360, 500), seed=1)
    print(f"generating {args.rss_images} synthetic images ...", flush=True)
    big = argparse.Namespace(**{**vars(args), "data_dir": tmp / "voc_large", "train_steps": 0})
    write_synthetic_voc(big.data_dir, cfg)
    store = tmp / "preprocess_large"
    pre = run_side("ours-preprocess", big, store, tmp)
    ours = run_side("ours", big, store, tmp)
    shutil.rmtree(big.data_dir)
    peak_above = max(pre["peak_rss_bytes"] - pre["rss_after_imports_bytes"],
                     ours["peak_rss_bytes"] - ours["rss_after_imports_bytes"])
    return {"synthetic": cfg.model_dump(), "ours_preprocess": pre, "ours": ours, "summary": {
        "train_images": ours["kept"], "store_gib": pre["store_bytes"] / GIB,
        "ours_peak_rss_above_imports_gib": peak_above / GIB,
        "ours_workers_peak_rss_gib": ours["workers_peak_rss_bytes"] / GIB,
        "loader_images_per_s_by_workers": {w: v["images_per_s"] for w, v in ours["loader_by_workers"].items()}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path,
                        help="VOCdevkit (or VOC2012) folder (default: a book-sized synthetic one, generated)")
    parser.add_argument("--crop", type=int, nargs=2, default=(320, 480), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads in each side (0: torch's default)")
    parser.add_argument("--loader-epochs", type=int, default=3,
                        help="epochs timed per loader and worker count (the median is reported)")
    parser.add_argument("--rss-images", type=int, default=0,
                        help="also a synthetic set of this many train images, ours only (peak RSS vs store size)")
    parser.add_argument("--out", type=Path, default=RESULTS / "segmentation.json")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.side:  # internal: one side, in this fresh process
        result = SIDES[args.side](args)
        result["torch_threads"] = torch.get_num_threads()
        args.side_out.write_text(json.dumps(result, indent=2) + "\n")
        return

    dataset = "real" if args.data_dir else f"synthetic {SYNTHETIC.model_dump()}"
    if args.data_dir is None:
        args.data_dir = RESULTS / "voc_synthetic"
        if not (args.data_dir / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").is_file():
            print(f"generating {args.data_dir} ...", flush=True)
            write_synthetic_voc(args.data_dir, SYNTHETIC)
    with tempfile.TemporaryDirectory(prefix="segbench-") as tmp:
        tmp = Path(tmp)
        store = tmp / "preprocess"
        book = run_side("book", args, store, tmp)
        pre = run_side("ours-preprocess", args, store, tmp)
        ours = run_side("ours", args, store, tmp)
        large = large_store(args, tmp) if args.rss_images else None

    ours_peak = max(pre["peak_rss_bytes"], ours["peak_rss_bytes"])
    ours_w, book_w = ours["loader_by_workers"], book["loader_by_workers"]
    summary = {
        "book_peak_rss_gib": book["peak_rss_bytes"] / GIB,
        "ours_peak_rss_gib": ours_peak / GIB,
        "peak_rss_ratio_book_over_ours": book["peak_rss_bytes"] / ours_peak,
        # Above what the process held after its imports (torch + torchvision alone are ~0.5-0.7 GiB).
        "book_peak_rss_above_imports_gib": (book["peak_rss_bytes"] - book["rss_after_imports_bytes"]) / GIB,
        "ours_peak_rss_above_imports_gib": max(pre["peak_rss_bytes"] - pre["rss_after_imports_bytes"],
                                               ours["peak_rss_bytes"] - ours["rss_after_imports_bytes"]) / GIB,
        "book_time_to_first_batch_s": book["time_to_first_batch_s"],
        "ours_time_to_first_batch_s": ours["time_to_first_batch_s"],
        "time_to_first_batch_ratio_book_over_ours": book["time_to_first_batch_s"] / ours["time_to_first_batch_s"],
        "ours_time_to_first_batch_incl_preprocess_s": pre["seconds"] + ours["time_to_first_batch_s"],
        "book_preprocess_images_per_s": book["preprocess_images_per_s"],
        "ours_preprocess_images_per_s": pre["preprocess_images_per_s"],
        "book_loader_images_per_s": book["loader_images_per_s"],
        "ours_loader_images_per_s": ours["loader_images_per_s"],
        "loader_images_per_s_by_workers": {
            w: {"book": book_w[w]["images_per_s"], "ours_uint8": ours_w[w]["images_per_s"],
                "ours_normalised_on_cpu": ours_w[w]["normalised_on_cpu_images_per_s"],
                "speedup_uint8": ours_w[w]["images_per_s"] / book_w[w]["images_per_s"],
                "speedup_normalised_on_cpu": ours_w[w]["normalised_on_cpu_images_per_s"] / book_w[w]["images_per_s"]}
            for w in book_w},
        "loader_images_per_cpu_s_0_workers": {
            "book": book_w["0"].get("images_per_cpu_s"), "ours_uint8": ours_w["0"].get("images_per_cpu_s"),
            "speedup_uint8": (ours_w["0"]["images_per_cpu_s"] / book_w["0"]["images_per_cpu_s"]
                              if "images_per_cpu_s" in ours_w["0"] and "images_per_cpu_s" in book_w["0"] else None)},
        "ours_workers_peak_rss_gib": ours["workers_peak_rss_bytes"] / GIB,
        "larger_store": large["summary"] if large else None,
        "training_images_per_s_cpu": ours["training"]["images_per_s_excluding_first_step"],
        "train_images_kept": {"book": book["kept"], "ours": ours["kept"], "listed": book["listed"]},
    }
    report = {
        "dataset": dataset, "data_dir": str(args.data_dir), "crop": list(args.crop), "batch_size": args.batch_size,
        "train_steps": args.train_steps, "seed": args.seed, "machine": machine(),
        "load_average_at_end": os.getloadavg(), "anchors_real_voc": ANCHORS,
        "summary": summary, "book": book, "ours_preprocess": pre, "ours": ours, "larger_store": large,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
