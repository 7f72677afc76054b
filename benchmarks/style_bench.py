"""Style transfer on the CPU: the book's optimisation speed at its 300×450, the feed-forward network's ms
per image, and the losses table of a run on the book's own images.

    python benchmarks/style_bench.py                   # the book's rainier.jpg / autumn-oak.jpg from ../shared/data
    python benchmarks/style_bench.py --epochs 500      # the book's epoch count (slow on a CPU)

Writes benchmarks/results/style.json:
* `book_size`: iterations/s of the book's optimisation step (forward through VGG-19 `features[0..28]`, the
  three losses, backward, Adam) at 300×450, the median of `--iterations` steps after one warm-up step;
* `feedforward`: ms per 300×450 image of TransformNet (params.yaml's widths, and Johnson et al.'s 32/5
  residual) in inference mode, the median of 5 after one warm-up;
* `losses`: the weighted content, style, TV and total loss of the optimised image, of the content image and
  of the content image colour-matched to the style, at params.yaml's `style.preprocess.image_shape` and
  `style.train` (epochs overridable), with the features params.yaml names (random by default).
The machine may be busy: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from models.style import TransformNet, compute_loss, extract_features, normalize  # noqa: E402
from tasks.params import load_params  # noqa: E402
from tasks.style import transfer as st  # noqa: E402
from tasks.style.images import read_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BOOK = ROOT.parent / "shared" / "data" / "style"


def book_speed(trunk: torch.nn.Module, content: torch.Tensor, style: torch.Tensor, weights, iterations: int) -> dict:
    target = st.targets(trunk, content, style)
    x = torch.nn.Parameter(normalize(content).clone())
    optimizer = torch.optim.Adam([x], lr=0.3)
    seconds = []
    for _ in range(iterations + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        contents, styles = extract_features(trunk, x)
        compute_loss(x, contents, styles, target.contents, target.style_grams, weights.content, weights.style,
                     weights.tv).total.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds[1:])
    return {"image_shape": list(content.shape[-2:]), "iterations": iterations, "seconds_per_iteration": median,
            "iterations_per_s": 1.0 / median, "book_500_epochs_minutes": 500 * median / 60}


@torch.inference_mode()
def feedforward_ms(base: int, n_residual: int, shape: tuple[int, int]) -> float:
    torch.manual_seed(0)
    net = TransformNet(base, n_residual).eval()
    image = torch.rand(1, 3, *shape)
    net(image)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        net(image)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", default=str(BOOK / "rainier.jpg"))
    parser.add_argument("--style", default=str(BOOK / "autumn-oak.jpg"))
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: style.train.epochs of params.yaml")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    cfg = params.style
    trunk = st.build_trunk(cfg.train.features, params.seed)
    content_raw, style_raw = read_rgb(Path(args.content)), read_rgb(Path(args.style))
    book = [st.to_tensor(st.resize(image, (300, 450))) for image in (content_raw, style_raw)]
    result: dict = {"machine": machine(), "features": cfg.train.features, "content": Path(args.content).name,
                    "style": Path(args.style).name}
    result["book_size"] = book_speed(trunk, *book, cfg.train.weights, args.iterations)
    ff = cfg.train.feedforward
    result["feedforward"] = {"image_shape": [300, 450],
                             f"ms_per_image_base{ff.base}_res{ff.n_residual}": feedforward_ms(ff.base, ff.n_residual,
                                                                                             (300, 450)),
                             "ms_per_image_base32_res5": feedforward_ms(32, 5, (300, 450))}
    shape = cfg.preprocess.image_shape
    content, style = (st.to_tensor(st.resize(image, shape)) for image in (content_raw, style_raw))
    train_cfg = cfg.train.model_copy(update={"epochs": args.epochs or cfg.train.epochs})
    target = st.targets(trunk, content, style)
    started = time.perf_counter()
    optimised, _ = st.synthesize(trunk, content, target, train_cfg)
    seconds = time.perf_counter() - started
    result["losses"] = {"image_shape": list(shape), "epochs": train_cfg.epochs, "seconds": seconds,
                        "iterations_per_s": train_cfg.epochs / seconds, "weights": train_cfg.weights.model_dump(),
                        "rows": {name: st.image_losses(trunk, image, target, train_cfg.weights) for name, image in (
                            ("result", st.to_tensor(st.to_uint8(optimised))), ("content_image", content),
                            ("color_matched", st.color_match(content, style)))}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "style.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
