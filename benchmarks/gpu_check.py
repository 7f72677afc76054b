"""One-command GPU check: every pipeline's training steps on CUDA from random init, figures to JSON.

    bash benchmarks/gpu_check.sh                 # at most 8 minutes on one GPU
    python benchmarks/gpu_check.py --out x.json  # the same, without the shell's time limit

Checks, each on the GPU, from random init, through the project's own training code:

* word2vec: `tasks.word2vec.train.train`, one epoch with the dense Adam and one with sparse_adam, on
  real PTB (../shared/data/ptb.zip) when present, else a PTB-sized synthetic corpus: center words/s.
* FCN: `tasks.segmentation.train.train` at 320x480, batch 32, amp (bf16 where supported), channels_last,
  on a synthetic VOC store read by the uint8 loader and normalised on the GPU: images/s per epoch.
* Faster R-CNN resnet50_fpn: images resized to 800 px (shorter side), batch 8, amp, channels_last,
  random boxes: images/s over the timed steps.
* DDP: one FCN step through DistributedDataParallel in a world of 1 process on nccl.

Each check records its peak GPU memory (torch.cuda.max_memory_allocated). A check that fails is
recorded with its error and the script exits 1 after the rest ran. Without CUDA it exits 2 at once
with a one-line error. `--device cpu --tiny` runs the same code at toy sizes (gloo for DDP): that is
how the test suite checks the script without a GPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PTB_ZIP = REPO.parent / "shared" / "data" / "ptb.zip"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def peak_gib(device) -> float | None:  # noqa: ANN001 - torch.device, torch imported late
    import torch

    return torch.cuda.max_memory_allocated(device) / (1 << 30) if device.type == "cuda" else None


def reset_peak(device) -> None:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check_word2vec(device, tmp: Path, tiny: bool) -> dict:  # noqa: ANN001
    import torch

    from tasks.params import SyntheticPtbParams, Word2vecPreprocessParams, Word2vecTrainParams
    from tasks.synthetic.ptb import write_synthetic_ptb
    from tasks.word2vec import preprocess as pp
    from tasks.word2vec import train as tr

    tmp.mkdir(parents=True, exist_ok=True)
    if PTB_ZIP.is_file() and not tiny:
        with zipfile.ZipFile(PTB_ZIP) as archive:
            member = next(m for m in archive.namelist() if m.endswith("ptb.train.txt"))
            (tmp / "ptb.train.txt").write_bytes(archive.read(member))
        corpus_name = str(PTB_ZIP)
    else:
        size = SyntheticPtbParams(sentences=500) if tiny else SyntheticPtbParams(sentences=68000, groups=800)
        write_synthetic_ptb(tmp, size)
        corpus_name = f"synthetic {size.model_dump()}"
    pre = Word2vecPreprocessParams()
    tokens, lengths = pp.read_tokens(tmp / "ptb.train.txt")
    vocab = pp.build_vocab(tokens, pre.min_freq)
    corpus = pp.Corpus(vocab.encode(tokens), lengths)
    _, samples = pp.make_samples(corpus, vocab.counts, pre, pp.split_rng(0, "train"))
    out: dict = {"corpus": corpus_name, "center_words": len(samples), "vocab_size": len(vocab)}
    for optimizer in ("adam", "sparse_adam"):
        reset_peak(device)
        cfg = Word2vecTrainParams(epochs=2, optimizer=optimizer, embed_size=16 if tiny else 100)
        result = tr.train(samples, corpus, vocab.counts, len(vocab), cfg, pre, 0, device,
                          tmp / f"{optimizer}.pt", "gpu-check")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[optimizer] = {"epochs": [{k: h[k] for k in ("loss", "seconds", "center_words_per_s")}
                                     for h in result.history],
                          "center_words_per_s_after_warmup": result.history[-1]["center_words_per_s"],
                          "peak_gpu_memory_gib": peak_gib(device)}
    return out


def fcn_store(tmp: Path, tiny: bool) -> tuple[Path, tuple[int, int]]:
    from tasks.params import SegmentationPreprocessParams, SyntheticVocParams
    from tasks.segmentation.data import preprocess
    from tasks.synthetic.voc import write_synthetic_voc

    crop = (64, 96) if tiny else (320, 480)
    size = (80, 112) if tiny else (360, 500)
    voc = write_synthetic_voc(tmp / "VOCdevkit", SyntheticVocParams(
        train_images=8 if tiny else 192, val_images=2, image_size=size, small_fraction=0.0, seed=0))
    preprocess(voc, tmp / "pre", SegmentationPreprocessParams(crop_size=crop))
    return tmp / "pre" / "train", crop


def check_fcn(device, tmp: Path, tiny: bool) -> dict:  # noqa: ANN001
    import torch

    from models.fcn import build_fcn
    from tasks import accel
    from tasks.params import SegmentationTrainParams
    from tasks.segmentation.data import SegmentationDataset
    from tasks.segmentation.train import train

    store, crop = fcn_store(tmp, tiny)
    batch = 4 if tiny else 32
    cfg = SegmentationTrainParams(batch_size=batch, epochs=2 if tiny else 4, amp=True, channels_last=True,
                                  num_workers=0 if tiny else 4, pin_memory=True, lr=0.01, momentum=0.9)
    dataset = SegmentationDataset(store, crop, seed=0, train=True)
    reset_peak(device)
    torch.manual_seed(0)
    result = train(build_fcn(21, "none"), dataset, cfg, 0, device, tmp / "fcn.pt", "gpu-check")
    later = result.history[1:] or result.history  # epoch 1 includes cuDNN's autotuning and worker start
    return {"crop": list(crop), "batch_size": batch, "train_images": len(dataset),
            "precision": str(accel.precision(True, device, "amp").dtype), "channels_last": device.type == "cuda",
            "epochs": [{k: h[k] for k in ("loss", "seconds", "images_per_s")} for h in result.history],
            "images_per_s_after_first_epoch": sum(h["images_per_s"] for h in later) / len(later),
            "peak_gpu_memory_gib": peak_gib(device)}


def check_detection(device, tiny: bool) -> dict:  # noqa: ANN001
    import torch

    from models.detection import build_detector
    from tasks import accel

    size, batch, steps = ((128, 160), 2, 2) if tiny else ((800, 1066), 8, 12)
    torch.manual_seed(0)
    model = build_detector("resnet50_fpn", 21, "none", min_size=size[0], max_size=max(size))
    accel.prepare(model, device, channels_last=True)
    model.train()
    amp = accel.precision(True, device, "amp")
    scaler = torch.amp.GradScaler("cuda", enabled=amp.scaler)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    def batch_of_images() -> tuple[list, list]:
        images, targets = [], []
        for _ in range(batch):
            images.append(torch.rand(3, *size, generator=generator).to(device))
            xy = torch.rand(3, 2, generator=generator) * torch.tensor([size[1] * 0.6, size[0] * 0.6])
            wh = 16 + torch.rand(3, 2, generator=generator) * torch.tensor([size[1] * 0.3, size[0] * 0.3])
            targets.append({"boxes": torch.cat([xy, xy + wh], dim=1).to(device),
                            "labels": torch.randint(1, 21, (3,), generator=generator).to(device)})
        return images, targets

    reset_peak(device)
    seconds, losses = [], []
    for step in range(steps + 2):  # two warm-up steps
        images, targets = batch_of_images()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=amp.dtype, enabled=amp.autocast):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 2:
            seconds.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    return {"backbone": "resnet50_fpn", "image_size": list(size), "batch_size": batch, "timed_steps": steps,
            "precision": str(amp.dtype), "losses": losses,
            "images_per_s": batch * steps / sum(seconds), "peak_gpu_memory_gib": peak_gib(device)}


def check_ddp(device, tiny: bool) -> dict:  # noqa: ANN001
    import torch
    from torch import distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from models.fcn import build_fcn
    from tasks.segmentation.train import pixel_loss

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = build_fcn(21, "none").to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        shape = (2, 3, 64, 96) if tiny else (8, 3, 320, 480)
        images = torch.randn(*shape, device=device)
        labels = torch.randint(0, 21, (shape[0], *shape[2:]), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loss = pixel_loss(ddp(images), labels).sum()
        loss.backward()
        optimizer.step()
        grads = [p.grad is not None for p in model.parameters() if p.requires_grad]
        return {"backend": backend, "world_size": dist.get_world_size(), "loss": float(loss.detach()),
                "all_parameters_got_gradients": all(grads), "peak_gpu_memory_gib": peak_gib(device)}
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N (or cpu, with --tiny, for the tests)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the code runs, not its speed")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "4")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"the GPU check needs CUDA, and torch {torch.__version__} (CUDA build {torch.version.cuda}) sees "
             "no GPU (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU and a "
             "CUDA build of torch")
    if args.device == "cpu" and not args.tiny:
        fail("--device cpu is only for --tiny (the test suite's run of this script); the check is for GPUs")
    sys.path.insert(0, str(REPO))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report: dict = {"device": str(device), "tiny": args.tiny, "torch": torch.__version__, "checks": {},
                    "failed": []}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report["gpu"] = {"name": props.name, "memory_gib": props.total_memory / (1 << 30),
                         "bf16_supported": torch.cuda.is_bf16_supported()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        checks = {
            "word2vec": lambda: check_word2vec(device, Path(tmp) / "ptb", args.tiny),
            "fcn": lambda: check_fcn(device, Path(tmp) / "voc", args.tiny),
            "faster_rcnn_resnet50_fpn": lambda: check_detection(device, args.tiny),
            "ddp_world_size_1": lambda: check_ddp(device, args.tiny),
        }
        for name, check in checks.items():
            print(f"[gpu-check] {name} ...", flush=True)
            start = time.perf_counter()
            try:
                report["checks"][name] = {"ok": True, **check()}
            except Exception as exc:  # noqa: BLE001 - recorded, the other checks still run
                report["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                          "traceback": traceback.format_exc()}
                report["failed"].append(name)
                print(f"[gpu-check] {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            report["checks"][name]["seconds"] = time.perf_counter() - start
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # what ran so far, if time runs out
    report["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({name: {k: v for k, v in c.items() if k != "traceback"} for name, c in report["checks"].items()},
                     indent=2))
    if report["failed"]:
        print(f"error: GPU check failed: {', '.join(report['failed'])} (details in {args.out})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
