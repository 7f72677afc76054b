"""The generative stages as the CLI, DVC and Prefect run them: Fashion-MNIST (the classification pipeline's
preprocess output) → a VAE and a DCGAN → an evaluation on the trained LeNet's features → two samplers in MLflow.

One pipeline, two train stages: the models share the data, the feature extractor, the baselines and one
evaluation (both are scored against the same test half), and each trains, resumes and re-runs on its own
params section (`generative.train_vae`, `generative.train_dcgan`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import torch

import models.generative
from models.generative import VAE, Discriminator, Generator, PixelGaussian
from models.lenet import build_lenet
from tasks import kit, tracking
from tasks.atomic import atomic_path, read_json, write_json, write_text
from tasks.errors import D2lflowError, DataError
from tasks.generative import evaluate as ev
from tasks.generative import train as tr
from tasks.generative.serving import GenerativeSampler, reconstruct, sample_dcgan, sample_vae
from tasks.metrics import chance_warning
from tasks.params import Params
from tasks.runtime import seed_everything

log = logging.getLogger(__name__)

PIPELINE = "generative"
SAMPLERS = ("vae", "dcgan", "gaussian")  # the two models and the per-pixel Gaussian baseline


class Split(NamedTuple):
    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int64 (N,)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: not found; the generative pipeline reads the classification pipeline's "
                        "preprocess output: run `dvc repro classification_preprocess` (or set "
                        "generative.data.preprocess_dir)")
    return path


def load_split(path: Path) -> Split:
    """One split of the classification pipeline's preprocess output (uint8 images N×28×28, int64 labels)."""
    _require(path)
    with np.load(path, allow_pickle=False) as data:
        missing = {"images", "labels"} - set(data.files)
        if missing:
            raise DataError(f"{path}: lacks {sorted(missing)} (found {sorted(data.files)}); rebuild it with "
                            "`dvc repro classification_preprocess`")
        images, labels = data["images"], data["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise DataError(f"{path}: expected uint8 images (N, 28, 28) and N labels, found {images.dtype} "
                        f"{images.shape} and {labels.shape}; rebuild it with `dvc repro classification_preprocess`")
    return Split(images, labels.astype(np.int64))


def acquire(params: Params, staging=None) -> dict[str, Any]:
    """Nothing to download: the data is the classification pipeline's (a DVC dependency, never a copy)."""
    return {"dir": params.generative.data.preprocess_dir, "source": "classification"}


def _paths(params: Params) -> dict[str, Path]:
    cfg = params.generative
    vae, dcgan = params.path(cfg.train_vae.out_dir), params.path(cfg.train_dcgan.out_dir)
    out = params.path(cfg.evaluate.out_dir)
    return {"vae_model": vae / "model.pt", "vae_history": vae / "history.csv", "vae_metrics": vae / "metrics.json",
            "vae_run": vae / "run.json", "generator": dcgan / "generator.pt",
            "discriminator": dcgan / "discriminator.pt", "dcgan_history": dcgan / "history.csv",
            "dcgan_metrics": dcgan / "metrics.json", "dcgan_run": dcgan / "run.json",
            "metrics": out / "metrics.json", "vae_scores": out / "vae.json", "dcgan_scores": out / "dcgan.json",
            "coverage": out / "class_coverage.json", "table": out / "table.md", "inception": out / "inception.json",
            "samples": out / "samples.png", "interpolation": out / "interpolation.png"}


def _train_file(params: Params) -> Path:
    return _require(params.path(params.generative.data.preprocess_dir) / "train.npz")


def _summary(job: kit.TrainJob, result: kit.FitResult) -> dict[str, Any]:
    history = result.history
    return {**{f"final_{k}": v for k, v in history[-1].items() if k not in ("epoch", "seconds", "examples_per_s")},
            "images_per_s": sum(h["examples_per_s"] for h in history) / len(history),
            "epochs_per_s": len(history) / sum(h["seconds"] for h in history),
            "epochs": len(history), "resumed_from_epoch": result.resumed_from_epoch,
            "train_images": len(job.data["images"])}


def _spec(name: str, columns: tuple[str, ...], prepare, fit) -> kit.TrainSpec:
    """A generative train stage on the kit: one process (the loops have no DDP sharding), the classification
    pipeline's train.npz as its data (hashed into the fingerprint), the per-epoch columns as history."""
    stage = f"train_{name}"
    return kit.TrainSpec(
        pipeline=PIPELINE, stage=stage, distributed=False, validation=False,
        data_dir=lambda params: _train_file(params).parent,
        pre_dir=_train_file,
        fingerprint_config=lambda params: (getattr(params.generative, stage).model_dump(
            exclude={"out_dir", "checkpoint_dir"}),),
        code=(tr, models.generative, kit.epoch_loop),  # the loop itself lives in the kit
        prepare=prepare, fit=fit, summary=_summary,
        epoch_metrics=lambda record: {k: v for k, v in record.items() if k not in ("epoch", "seconds")},
        logged_per_epoch=("images_per_s",),
        history={"epoch": "", **{c: ".6f" for c in columns}, "examples_per_s": ".6f"},
        weights=lambda result: result.models if name == "dcgan" else {"model": result.model})


def _prepare_vae(job: kit.TrainJob) -> dict[str, Any]:
    cfg = job.params.generative.train_vae
    return {"images": load_split(_train_file(job.params)).images, "model": VAE(cfg.latent_dim, cfg.base)}


def _fit_vae(job: kit.TrainJob) -> kit.FitResult:
    cfg, device = job.params.generative.train_vae, job.device
    return tr.train_vae(job.data["model"].to(device), tr.vae_images(job.data["images"]).to(device), cfg,
                        job.params.seed, job.checkpoint, job.fingerprint, job.state, job.run_id, job.on_epoch)


def _prepare_dcgan(job: kit.TrainJob) -> dict[str, Any]:
    cfg = job.params.generative.train_dcgan
    return {"images": load_split(_train_file(job.params)).images,
            "generator": Generator(cfg.latent_dim, cfg.image_size, 1, cfg.base),
            "discriminator": Discriminator(cfg.image_size, 1, cfg.base)}


def _fit_dcgan(job: kit.TrainJob) -> kit.FitResult:
    cfg, device = job.params.generative.train_dcgan, job.device
    return tr.train_dcgan(job.data["generator"].to(device), job.data["discriminator"].to(device),
                          tr.gan_images(job.data["images"], cfg.image_size).to(device), cfg, job.params.seed,
                          job.checkpoint, job.fingerprint, job.state, job.run_id, job.on_epoch)


TRAIN_VAE = _spec("vae", ("loss", "reconstruction", "kl"), _prepare_vae, _fit_vae)
TRAIN_DCGAN = _spec("dcgan", ("loss_d", "loss_g", "d_real_accuracy", "d_fake_accuracy"), _prepare_dcgan, _fit_dcgan)


def train_vae(params: Params) -> dict[str, Any]:
    """The VAE (latent `generative.train_vae.latent_dim`) on the negative ELBO; per-epoch loss terms."""
    return kit.train(TRAIN_VAE, params)


def train_dcgan(params: Params) -> dict[str, Any]:
    """The book's DCGAN; per-epoch D and G losses and D's accuracy on real and on fake images."""
    return kit.train(TRAIN_DCGAN, params)


def serving_config(params: Params, name: str) -> dict[str, Any]:
    if name == "vae":
        cfg = params.generative.train_vae
        return {"kind": "vae", "latent_dim": cfg.latent_dim, "base": cfg.base, "image_size": 28}
    cfg = params.generative.train_dcgan
    return {"kind": "dcgan", "latent_dim": cfg.latent_dim, "base": cfg.base, "image_size": cfg.image_size}


def load_models(params: Params) -> tuple[VAE, Generator]:
    from tasks.generative.serving import build

    out = _paths(params)
    loaded = []
    for name, file in (("vae", out["vae_model"]), ("dcgan", out["generator"])):
        if not file.is_file():
            raise D2lflowError(f"{file}: not found; run `dvc repro generative_train_{name}` first")
        model = build(serving_config(params, name))
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        loaded.append(model.eval())
    return loaded[0], loaded[1]


def load_classifier(params: Params) -> torch.nn.Sequential:
    """The classification pipeline's trained LeNet (`classification.train.variant`, its weights at
    `generative.data.classifier`): the domain feature extractor of `fid_lenet` and the class histogram."""
    data = params.generative.data
    path = params.path(data.classifier)
    if not path.is_file():
        raise DataError(f"{path}: not found; the evaluation's feature extractor is the classification pipeline's "
                        "LeNet: run `dvc repro classification_train` (or set generative.data.classifier)")
    net = build_lenet(params.classification.train.variant)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError) as error:
        raise DataError(f"{path}: not a LeNet state_dict ({str(error).splitlines()[0]}); rebuild it with "
                        "`dvc repro classification_train`") from None
    return net.eval()


def _stream(seed: int, *words: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 7, *words]).generate_state(1)[0]))


def evaluate(params: Params) -> dict[str, Any]:
    """Every sampler (VAE, DCGAN, per-pixel Gaussian) and the test set's second half are scored against its
    first half with equal sample counts (so the halves are the floor the models are measured from):
    fid_lenet, precision and recall on LeNet features; the class histogram of `samples` samples; the VAE's
    held-out negative ELBO; the Inception FID when its weights are present; sample and interpolation figures."""
    cfg = params.generative
    e = cfg.evaluate
    out = _paths(params)
    seed_everything(params.seed)
    pre = params.path(cfg.data.preprocess_dir)
    train, test = load_split(pre / "train.npz"), load_split(pre / "test.npz")
    net = load_classifier(params)
    vae, G = load_models(params)
    order = np.random.default_rng(params.seed).permutation(len(test.images))
    half_a, half_b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    n_ref = len(half_b)
    if e.samples < n_ref:
        raise D2lflowError(f"generative.evaluate.samples is {e.samples}, fewer than the test half ({n_ref} images) "
                           f"the samplers are compared with; set it to at least {n_ref}")
    features, labels = ev.classifier_outputs(net, test.images, e.batch_size)
    metrics: dict[str, Any] = {"classifier_test_accuracy": float((labels == test.labels).mean())}
    if warning := chance_warning(metrics["classifier_test_accuracy"], len(labels), 10):
        log.warning("the feature extractor of fid_lenet and the class histogram is at chance, so both say little: "
                    "%s", warning)
    reference = features[half_a]
    gaussian = PixelGaussian.fit(tr.vae_images(train.images))
    samplers: dict[str, ev.Sampler] = {
        "vae": lambda n, g: sample_vae(vae, n, g), "dcgan": lambda n, g: sample_dcgan(G, n, g),
        "gaussian": lambda n, g: tr.unit_to_uint8(gaussian.sample(n, generator=g))}
    coverage: dict[str, list[float]] = {}
    grids: dict[str, np.ndarray] = {"test set": test.images[half_b[: e.grid_images]]}
    fakes: dict[str, np.ndarray] = {}
    halves = ev.sample_scores(reference, features[half_b], labels[half_b], e.k)
    metrics.update({f"test_halves_{k}": v for k, v in halves.items()})
    for index, (name, sampler) in enumerate(samplers.items()):
        images = ev.sample_in_batches(sampler, e.samples, e.batch_size, _stream(params.seed, index))
        sample_features, sample_labels = ev.classifier_outputs(net, images, e.batch_size)
        scores = ev.sample_scores(reference, sample_features[:n_ref], sample_labels, e.k)  # histogram: all samples
        metrics.update({f"{name}_{k}": v for k, v in scores.items()})
        coverage[name] = [scores[f"class_fraction_{c}"] for c in range(10)]
        grids[name] = images[: e.grid_images]
        fakes[name] = images[:n_ref]
        log.info("%s: fid_lenet %.4f precision %.3f recall %.3f class TV from uniform %.3f", name,
                 scores["fid_lenet"], scores["precision"], scores["recall"], scores["class_tv_from_uniform"])
    heldout = ev.vae_heldout(vae, test.images, e.batch_size, _stream(params.seed, 99))
    metrics.update({f"vae_heldout_{k}": v for k, v in heldout.items()})
    for name in ("vae", "dcgan"):
        metrics[f"{name}_fid_lenet_over_gaussian"] = metrics[f"{name}_fid_lenet"] / metrics["gaussian_fid_lenet"]
        metrics[f"{name}_fid_lenet_gap_to_test_halves"] = (metrics[f"{name}_fid_lenet"]
                                                           - metrics["test_halves_fid_lenet"])
        metrics[f"{name}_beats_gaussian"] = bool(metrics[f"{name}_fid_lenet"] < metrics["gaussian_fid_lenet"])
        if not metrics[f"{name}_beats_gaussian"]:
            log.warning("the %s does not beat the per-pixel Gaussian baseline (fid_lenet %.4f vs %.4f)", name,
                        metrics[f"{name}_fid_lenet"], metrics["gaussian_fid_lenet"])
    reason = ev.inception_unavailable()
    if reason is None:
        real = test.images[half_a]
        for name in ("test_halves", *SAMPLERS):
            fake = test.images[half_b] if name == "test_halves" else fakes[name]
            metrics[f"{name}_inception_fid"] = ev.inception_fid(real, fake, e.batch_size)
    else:
        log.info("Inception FID omitted: %s", reason)
    inception = {"computed": reason is None, "reason": reason}
    metrics.update(test_images=len(test.images), samples_per_model=e.samples, compared_images=n_ref)

    # figures: sample grids, and latent interpolations between two held-out images (VAE, their μ) and two z (DCGAN)
    with atomic_path(out["samples"]) as tmp:
        tmp.write_bytes(ev.panels_figure([(title, images) for title, images in grids.items()], 8))
    with torch.inference_mode():
        pairs = [(half_b[i], half_b[j]) for i, j in ((0, 1), (2, 3))]
        rows = []
        for a, b in pairs:
            mu, _ = vae.encode(tr.vae_images(test.images[[a, b]]))
            rows.append((f"VAE: test images {a} → {b}", tr.unit_to_uint8(torch.sigmoid(
                vae.decode(ev.lerp(mu[0], mu[1], e.interpolation_steps))))))
        z = torch.randn((4, G.latent_dim), generator=_stream(params.seed, 98))
        for k in (0, 2):
            rows.append((f"DCGAN: z{k} → z{k + 1}", tr.gan_to_uint8(G.eval()(ev.lerp(z[k], z[k + 1],
                                                                                    e.interpolation_steps)))))
        reconstructions = reconstruct(vae, test.images[half_b[: e.interpolation_steps]])
        rows.append(("VAE reconstructions (each pair: test image | its reconstruction from μ)", np.concatenate(
            [test.images[half_b[: e.interpolation_steps]], reconstructions], axis=2)))
    with atomic_path(out["interpolation"]) as tmp:
        tmp.write_bytes(ev.interpolation_figure(rows))

    per_model = {name: model_metrics(metrics, name) for name in ("vae", "dcgan")}
    write_json(out["vae_scores"], per_model["vae"])
    write_json(out["dcgan_scores"], per_model["dcgan"])
    write_json(out["coverage"], {"classes": list(range(10)), "fraction_per_class": coverage,
                                 "test_halves": [halves[f"class_fraction_{c}"] for c in range(10)]})
    write_json(out["inception"], inception)
    write_text(out["table"], metrics_table(metrics))
    write_json(out["metrics"], metrics)
    for name in ("vae", "dcgan"):
        with tracking.reopened_run(PIPELINE, params, out[f"{name}_run"]):
            tracking.log_metrics(per_model[name])
            mlflow.set_tag(f"{tracking.TAG}inception_fid", "computed" if reason is None else f"omitted: {reason}")
            for key in ("table", "coverage", "samples", "interpolation"):
                mlflow.log_artifact(str(out[key]), "evaluation")
    return metrics


def model_metrics(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """A model's own scores under plain names (`fid_lenet`, the champion rule's metric) and the baselines'
    under theirs, as the model's MLflow run and its registration record them."""
    own = {k[len(name) + 1:]: v for k, v in metrics.items() if k.startswith(f"{name}_")}
    baselines = {k: v for k, v in metrics.items() if k.startswith(("gaussian_fid", "test_halves_fid",
                                                                    "gaussian_inception", "test_halves_inception"))}
    return {**own, **baselines}


TABLE_COLUMNS = ("fid_lenet", "precision", "recall", "class_tv_from_uniform", "classes_seen", "inception_fid")


def metrics_table(metrics: dict[str, Any]) -> str:
    """The comparison as a markdown table: the models and both baselines, and the VAE's held-out ELBO."""
    lines = ["| sampler | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for name, label in (("vae", "VAE"), ("dcgan", "DCGAN"), ("gaussian", "baseline: per-pixel Gaussian"),
                        ("test_halves", "baseline: test half vs test half")):
        cells = []
        for column in TABLE_COLUMNS:
            value = metrics.get(f"{name}_{column}")
            cells.append("omitted" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"VAE held-out negative ELBO {metrics['vae_heldout_neg_elbo']:.2f} nats/image "
                 f"(reconstruction {metrics['vae_heldout_reconstruction_nll']:.2f} "
                 f"+ KL {metrics['vae_heldout_kl']:.2f}),"
                 f" reconstruction MSE {metrics['vae_heldout_reconstruction_mse']:.5f} per pixel.")
    return "\n".join(lines) + "\n"


def register(params: Params) -> dict[str, Any]:
    """Log both samplers (pyfunc: {"n", "seed"} (+ "images" for the VAE) → uint8 images) and register each under
    its champion rule (lower `fid_lenet` wins)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    out = _paths(params)
    test = load_split(params.path(params.generative.data.preprocess_dir) / "test.npz")
    results = {}
    for name, weights in (("vae", out["vae_model"]), ("dcgan", out["generator"])):
        cfg = getattr(params.generative.register, name)
        config = params.path(cfg.out_dir) / "serving.json"
        write_json(config, serving_config(params, name))
        count = [TensorSpec(np.dtype(np.int64), (-1,), "n"), TensorSpec(np.dtype(np.int64), (-1,), "seed")]
        images = TensorSpec(np.dtype(np.uint8), (-1, 28, 28), "samples")
        example: dict[str, np.ndarray] = {"n": np.array([4], dtype=np.int64), "seed": np.array([0], dtype=np.int64)}
        if name == "vae":
            inputs = Schema([*count, TensorSpec(np.dtype(np.uint8), (-1, 28, 28), "images")])
            outputs = Schema([images, TensorSpec(np.dtype(np.uint8), (-1, 28, 28), "reconstructions")])
            example["images"] = test.images[:2].copy()
        else:
            inputs, outputs = Schema(count), Schema([images])
        results[name] = tracking.log_and_register(
            PIPELINE, params, cfg, out[f"{name}_run"], read_json(out[f"{name}_scores"]), GenerativeSampler(),
            {"weights": str(weights), "config": str(config)}, ModelSignature(inputs=inputs, outputs=outputs), example)
    return results


STAGES = {"acquire": acquire, "train_vae": train_vae, "train_dcgan": train_dcgan, "evaluate": evaluate,
          "register": register}
