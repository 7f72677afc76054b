"""The generative pipeline (tasks/generative): training loops, resume, evaluation on the classifier's features
with its baselines, the Inception FID's absent-weights path, and the registered samplers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.generative import VAE, Discriminator, Generator
from tasks.errors import DataError
from tasks.generative import evaluate as ev
from tasks.generative import train as tr
from tasks.params import DcganTrainParams, VaeTrainParams, load_params
from tests.generative_fixtures import write_classification_outputs, write_params

REPO = Path(__file__).resolve().parents[1]


def _images(n: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_dcgan_epoch_reports_both_losses_and_the_discriminator_accuracies() -> None:
    torch.manual_seed(0)
    G, D = Generator(100, 28, 1, 8), Discriminator(28, 1, 8)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=0.005, betas=(0.5, 0.999)) for m in (G, D))
    record = tr.dcgan_epoch(G, D, opt_g, opt_d, tr.gan_images(_images(), 28), 32, tr.epoch_generator(0, "dcgan", 0))
    assert set(record) == {"loss_d", "loss_g", "d_real_accuracy", "d_fake_accuracy"}
    assert record["loss_d"] > 0 and record["loss_g"] > 0
    assert 0 <= record["d_real_accuracy"] <= 1 and 0 <= record["d_fake_accuracy"] <= 1


def test_padded_size_32_round_trips_to_the_28_pixel_images() -> None:
    images = _images(4)
    x = tr.gan_images(images, 32)
    assert x.shape == (4, 1, 32, 32) and float(x[:, :, :2].max()) == -1.0
    assert np.array_equal(tr.gan_to_uint8(x), images)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_resumed_dcgan_and_vae_training_equal_the_uninterrupted_runs(tmp_path: Path) -> None:
    """Resuming from the epoch-2 checkpoint replays epoch 3 exactly: G, D (with BatchNorm statistics) and VAE."""
    x_gan, x_vae = tr.gan_images(_images(), 28), tr.vae_images(_images())
    gan_cfg = DcganTrainParams(base=8, epochs=3, batch_size=32)
    vae_cfg = VaeTrainParams(latent_dim=4, base=4, epochs=3, batch_size=32)

    def dcgan(epochs: int, checkpoint: Path, state=None):
        torch.manual_seed(1)
        G, D = Generator(100, 28, 1, 8), Discriminator(28, 1, 8)
        cfg = gan_cfg.model_copy(update={"epochs": epochs})
        return tr.train_dcgan(G, D, x_gan, cfg, 0, checkpoint, "f", state)

    def vae(epochs: int, checkpoint: Path, state=None):
        torch.manual_seed(1)
        return tr.train_vae(VAE(4, 4), x_vae, vae_cfg.model_copy(update={"epochs": epochs}), 0, checkpoint, "f", state)

    for run in (dcgan, vae):
        full = run(3, tmp_path / f"{run.__name__}-full.pt")
        run(2, tmp_path / f"{run.__name__}-part.pt")
        state = torch.load(tmp_path / f"{run.__name__}-part.pt", weights_only=True)
        resumed = run(3, tmp_path / f"{run.__name__}-resumed.pt", state)
        assert resumed.resumed_from_epoch == 2 and len(resumed.history) == 3
        for key, module in full.models.items():
            expected, found = _state(module), _state(resumed.models[key])
            assert all(torch.equal(expected[k], found[k]) for k in expected), f"{run.__name__} {key} differs"
        assert resumed.history[-1]["epoch"] == 3
        assert {k: v for k, v in resumed.history[-1].items() if k not in ("seconds", "examples_per_s")} == {
            k: v for k, v in full.history[-1].items() if k not in ("seconds", "examples_per_s")}


def test_inception_fid_is_omitted_with_a_reason_when_its_weights_are_absent(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reason = ev.inception_unavailable()
    assert reason is not None and ev.INCEPTION_WEIGHTS in reason and str(tmp_path / "torch") in reason


def test_missing_classification_output_is_one_error_naming_the_stage_to_run(tmp_path: Path) -> None:
    from tasks.generative.stages import load_split

    with pytest.raises(DataError, match="classification_preprocess"):
        load_split(tmp_path / "train.npz")
    write_params(tmp_path)
    done = subprocess.run([sys.executable, "-m", "tasks", "generative", "train_vae", "--params",
                           str(tmp_path / "params.yaml")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "train.npz: not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_world_size_above_one_is_refused_by_the_single_process_train_stages(tmp_path: Path) -> None:
    """The VAE and DCGAN loops do not shard batches across ranks: torchrun would train the same model
    N times, so the kit refuses before launching (one error line, nothing written)."""
    import yaml

    from tasks.errors import D2lflowError
    from tasks.generative import stages
    from tasks.params import load_params

    path = write_params(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["distributed"] = {"nproc_per_node": 2}
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    for train in (stages.train_vae, stages.train_dcgan):
        with pytest.raises(D2lflowError, match="trains in one process.*nproc_per_node"):
            train(params)
    assert not (tmp_path / "artifacts" / "generative").exists()


def test_lenet_features_are_the_penultimate_layer_on_the_books_scale() -> None:
    torch.manual_seed(0)
    from models.lenet import build_lenet

    net = build_lenet("relu").eval()
    images = _images(5)
    features, labels = ev.classifier_outputs(net, images, 2)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.no_grad():
        # batches of 2 against all 5 at once: float32 rounding differs with the thread count (CI runs two)
        assert np.allclose(features, net[:-1](x).double().numpy(), rtol=1e-5, atol=1e-6)
        assert np.array_equal(labels, net(x).argmax(1).numpy())


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A directory with the classification outputs and both trained generative models (in-process stages)."""
    from tasks.generative import stages

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights: the omitted path
    write_classification_outputs(tmp_path)
    params = load_params(write_params(tmp_path))
    stages.train_vae(params)
    stages.train_dcgan(params)
    return tmp_path, params


@pytest.mark.slow
def test_both_models_beat_the_gaussian_baseline_and_register_as_loadable_samplers(trained) -> None:
    from tasks import loader
    from tasks.generative import stages

    root, params = trained
    metrics = stages.evaluate(params)
    for name in ("vae", "dcgan"):
        assert metrics[f"{name}_fid_lenet"] < metrics["gaussian_fid_lenet"], metrics
        assert metrics[f"{name}_beats_gaussian"] is True
        assert metrics[f"{name}_fid_lenet_gap_to_test_halves"] == pytest.approx(
            metrics[f"{name}_fid_lenet"] - metrics["test_halves_fid_lenet"])
    assert 0 <= metrics["test_halves_fid_lenet"] < metrics["gaussian_fid_lenet"]
    assert metrics["compared_images"] == 100 and metrics["samples_per_model"] == 200
    assert metrics["vae_heldout_neg_elbo"] == pytest.approx(
        metrics["vae_heldout_reconstruction_nll"] + metrics["vae_heldout_kl"])
    assert 0 < metrics["vae_heldout_reconstruction_mse"] < 0.25
    assert not any("inception" in key for key in metrics)
    evaluation = root / "artifacts/generative/evaluate"
    inception = json.loads((evaluation / "inception.json").read_text())
    assert inception["computed"] is False and "InceptionV3 weights" in inception["reason"]
    coverage = json.loads((evaluation / "class_coverage.json").read_text())
    assert sum(coverage["fraction_per_class"]["dcgan"]) == pytest.approx(1.0)
    assert "baseline: per-pixel Gaussian" in (evaluation / "table.md").read_text()
    for figure in ("samples.png", "interpolation.png"):
        assert (evaluation / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vae_scores = json.loads((evaluation / "vae.json").read_text())
    assert vae_scores["fid_lenet"] == metrics["vae_fid_lenet"]

    registered = stages.register(params)
    assert registered["vae"]["alias"] == registered["dcgan"]["alias"] == "champion"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    test_images = np.load(root / "artifacts/classification/preprocess/test.npz")["images"][:3]
    vae = loader.load("vae-fashion-mnist@champion", tracking_uri=uri)
    out = vae.predict({"n": np.array([5]), "seed": np.array([3]), "images": test_images})
    assert out["samples"].dtype == np.uint8 and out["samples"].shape == (5, 28, 28)
    assert out["reconstructions"].shape == (3, 28, 28)
    again = vae.predict({"n": np.array([5]), "seed": np.array([3]), "images": test_images[:0]})
    assert np.array_equal(again["samples"], out["samples"]) and again["reconstructions"].shape == (0, 28, 28)
    dcgan = loader.load("dcgan-fashion-mnist@champion", tracking_uri=uri)
    first = dcgan.predict({"n": np.array([4]), "seed": np.array([0])})["samples"]
    assert first.dtype == np.uint8 and first.shape == (4, 28, 28)
    assert np.array_equal(first, dcgan.predict({"n": np.array([4]), "seed": np.array([0])})["samples"])
    assert not np.array_equal(first, dcgan.predict({"n": np.array([4]), "seed": np.array([1])})["samples"])

    # what `d2lflow run generative` prints at the end: both models' registrations and runs
    from flows.pipeline import summary_markdown

    text, summary = summary_markdown("generative", root)
    assert [m["model"] for m in summary["models"]] == ["vae-fashion-mnist", "dcgan-fashion-mnist"]
    assert [m["registered"]["version"] for m in summary["models"]] == [1, 1]
    assert "**vae**: Primary metric `fid_lenet`" in text and "**dcgan**: Primary metric `fid_lenet`" in text
    assert "vae_final_epoch_loss" in summary["train"] or any(k.startswith("dcgan_") for k in summary["train"])


@pytest.mark.slow
def test_killed_dcgan_training_resumes_with_exactly_the_uninterrupted_weights(tmp_path: Path) -> None:
    """A real `python -m tasks generative train_dcgan` killed (SIGKILL) after its first checkpoint, run again,
    ends with the generator and discriminator of an uninterrupted run, bit for bit (CPU)."""
    write_classification_outputs(tmp_path, n_train=120, n_test=40)
    params_file = write_params(tmp_path, {"train_dcgan": {"epochs": 8, "batch_size": 64}})
    command = [sys.executable, "-m", "tasks", "generative", "train_dcgan", "--params", str(params_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    checkpoint = tmp_path / "checkpoints/generative/dcgan/last.pt"
    stage = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and stage.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(stage.pid, signal.SIGKILL)
    stage.wait()
    assert checkpoint.exists(), "the stage ended before writing its first checkpoint"
    out = tmp_path / "artifacts/generative/train_dcgan"
    assert not (out / "generator.pt").exists(), "a killed stage must not leave a model"

    def finished() -> tuple[dict, dict, dict]:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return (json.loads((out / "metrics.json").read_text()),
                torch.load(out / "generator.pt", weights_only=True),
                torch.load(out / "discriminator.pt", weights_only=True))

    resumed, resumed_g, resumed_d = finished()
    assert 1 <= resumed["resumed_from_epoch"] < 8 and resumed["epochs"] == 8
    checkpoint.unlink()
    fresh, fresh_g, fresh_d = finished()
    assert fresh["resumed_from_epoch"] == 0
    for expected, found in ((fresh_g, resumed_g), (fresh_d, resumed_d)):
        assert expected.keys() == found.keys()
        assert all(torch.equal(expected[k], found[k]) for k in expected)
    assert fresh["final_loss_d"] == resumed["final_loss_d"] and fresh["final_loss_g"] == resumed["final_loss_g"]
