"""Style transfer's plain functions (tasks/style/transfer.py) and its serving class: the colour-matched
baseline, the seeded random trunk, the ImageNet weights' offline error, the book's optimisation on a
tiny image, the feed-forward network's training, and the pyfunc's shapes."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision

from models.style import TransformNet
from tasks.errors import D2lflowError
from tasks.params import StyleFeedForwardParams, StyleLossWeights, StyleTrainParams
from tasks.style import transfer as st
from tasks.style.serving import StyleTransformer


def test_color_match_gives_the_styles_channel_means_and_stds() -> None:
    torch.manual_seed(0)
    content = torch.rand(1, 3, 20, 30) * 0.5 + 0.2
    style = torch.stack([torch.rand(20, 30) * 0.2 + 0.6, torch.rand(20, 30) * 0.4 + 0.1,
                         torch.rand(20, 30) * 0.1 + 0.4])[None]
    matched = st.color_match(content, style)
    assert torch.allclose(matched.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(matched.std(dim=(2, 3)), style.std(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(st.color_match(style, style), style, atol=1e-6)


def test_random_trunk_is_a_function_of_the_seed_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = st.build_trunk("random", 0), st.build_trunk("random", 0), st.build_trunk("random", 1)
    assert torch.rand(1) == expected_next
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert len(a) == 29 and not any(p.requires_grad for p in a.parameters())
    vgg = torchvision.models.vgg19(weights=None).features  # the same architecture as torchvision's
    assert [type(m) for m in a] == [type(m) for m in vgg[:29]]
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in vgg[:29].parameters()]


def test_imagenet_features_offline_name_the_weights_file_and_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(D2lflowError) as caught:
        st.build_trunk("imagenet", 0)
    message = str(caught.value)
    assert "vgg19-dcbb9e9d.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "style.train.features: random" in message


def test_book_optimisation_lowers_the_style_loss_from_the_content_image() -> None:
    torch.manual_seed(0)
    trunk = st.build_trunk("random", 0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 36), indexing="ij")
    content = torch.stack([ys, xs, 0.5 * (ys + xs)])[None]
    style = (torch.rand(1, 3, 24, 36) > 0.5).float()
    target = st.targets(trunk, content, style)
    cfg = StyleTrainParams(epochs=30, lr_decay_epoch=10, weights=StyleLossWeights(style=1e8))
    seen = []
    result, history = st.synthesize(trunk, content, target, cfg, on_epoch=lambda e, r, x: seen.append(e))
    assert seen == list(range(1, 31)) and [h["epoch"] for h in history] == seen
    before = st.image_losses(trunk, content, target, cfg.weights)
    after = st.image_losses(trunk, result, target, cfg.weights)
    assert history[0]["style_loss"] == pytest.approx(before["style_loss"], rel=1e-5)
    assert after["style_loss"] < before["style_loss"] / 2 and before["content_loss"] == 0.0
    assert result.shape == content.shape and 0 <= result.min() and result.max() <= 1


def test_feed_forward_training_lowers_its_perceptual_loss() -> None:
    torch.manual_seed(0)
    trunk = st.build_trunk("random", 0)
    images = torch.rand(4, 3, 16, 16) * 0.3 + 0.3
    style = (torch.rand(1, 3, 32, 32) > 0.5).float()
    net = TransformNet(base=8, n_residual=1)
    cfg = StyleFeedForwardParams(base=8, n_residual=1, steps=30, batch_size=2, lr=1e-2, log_every=10)
    history = st.train_transform_net(net, trunk, images, style, cfg, StyleLossWeights(style=1e8), seed=0)
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["total_loss"] < history[0]["total_loss"] and not net.training


def test_served_network_keeps_each_images_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(TransformNet(base=4, n_residual=1).state_dict(), tmp_path / "w.pt")
    (tmp_path / "c.json").write_text(json.dumps({"base": 4, "n_residual": 1}))
    model = StyleTransformer()
    artifacts = {"weights": str(tmp_path / "w.pt"), "config": str(tmp_path / "c.json")}
    model.load_context(SimpleNamespace(artifacts=artifacts))
    image = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    single, batch = model.predict(None, image), model.predict(None, np.stack([image, image[::-1]]))
    assert single.shape == image.shape and single.dtype == np.uint8
    assert batch.shape == (2, 21, 34, 3) and np.array_equal(batch[0], single)
    with pytest.raises(ValueError, match="expected uint8 images"):
        model.predict(None, image.astype(np.float32))
