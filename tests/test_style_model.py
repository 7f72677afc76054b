"""Style-transfer building blocks (models/style.py): losses on known values, VGG-19 layer shapes, the
transformation network's sizes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models.style import (
    CONTENT_LAYERS,
    STYLE_LAYERS,
    TransformNet,
    compute_loss,
    content_loss,
    denormalize,
    extract_features,
    gram,
    normalize,
    style_loss,
    tv_loss,
    vgg19_trunk,
)


def test_gram_of_a_known_tensor_is_normalised_by_c_h_w() -> None:
    x = torch.arange(12.0).reshape(1, 2, 2, 3)  # rows a = 0..5, b = 6..11; a·a 55, a·b 145, b·b 451
    assert torch.allclose(gram(x), torch.tensor([[[55.0, 145.0], [145.0, 451.0]]]) / 12)
    batch = torch.stack([x[0], 2 * x[0]])
    assert torch.allclose(gram(batch)[1], 4 * gram(x)[0])


def test_tv_loss_of_a_known_image() -> None:
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])  # vertical |3-0|, |5-1| → 3.5; horizontal |1-0|, |5-3| → 1.5
    assert tv_loss(x).item() == pytest.approx(2.5)
    assert tv_loss(torch.full((1, 3, 4, 5), 0.7)).item() == 0.0


def test_content_and_style_losses_are_squared_errors_with_constant_targets() -> None:
    y_hat = torch.tensor([[[[1.0, 2.0]]]], requires_grad=True)
    y = torch.tensor([[[[0.0, 4.0]]]], requires_grad=True)
    loss = content_loss(y_hat, y)
    assert loss.item() == pytest.approx((1 + 4) / 2)
    loss.backward()
    assert y.grad is None and torch.allclose(y_hat.grad, torch.tensor([[[[1.0, -2.0]]]]))
    # gram(y_hat) = (1 + 4) / (1 · 1 · 2) = 2.5 against a target 0.5: squared error 4.
    assert style_loss(y_hat, torch.tensor([[[0.5]]])).item() == pytest.approx(4.0)


def test_compute_loss_weights_the_terms_as_the_book() -> None:
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    c_hat, c = [torch.ones(1, 1, 1, 2)], [torch.zeros(1, 1, 1, 2)]
    s_hat, s = [torch.ones(1, 1, 1, 2)], [torch.zeros(1, 1, 1)]
    losses = compute_loss(x, c_hat, s_hat, c, s)
    assert losses.content[0].item() == pytest.approx(1.0)
    assert losses.style[0].item() == pytest.approx(1e4 * 1.0)
    assert losses.tv.item() == pytest.approx(10 * 2.5)
    assert losses.total.item() == pytest.approx(1.0 + 1e4 + 25.0)


def test_normalize_round_trips_and_clamps() -> None:
    x = torch.rand(2, 3, 4, 5)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
    assert normalize(torch.full((1, 3, 1, 1), 0.485))[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert denormalize(torch.full((1, 3, 1, 1), 100.0)).max().item() == 1.0


def test_vgg19_layers_give_the_expected_feature_shapes_at_300x450() -> None:
    with torch.device("meta"):  # shapes only: the real torchvision architecture, no compute
        trunk = vgg19_trunk(torchvision.models.vgg19(weights=None).features)
        contents, styles = extract_features(trunk, torch.zeros(1, 3, 300, 450))
    assert len(trunk) == 29 and all(isinstance(trunk[i], nn.Conv2d) for i in CONTENT_LAYERS + STYLE_LAYERS)
    # Each 2×2 max-pool floors: 300×450 → 150×225 → 75×112 → 37×56 → 18×28.
    assert [tuple(y.shape) for y in contents] == [(1, 512, 37, 56)]
    assert [tuple(y.shape) for y in styles] == [
        (1, 64, 300, 450), (1, 128, 150, 225), (1, 256, 75, 112), (1, 512, 37, 56), (1, 512, 18, 28)]


def test_extract_features_matches_the_books_in_place_relu_loop() -> None:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                             nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        features[5].bias.fill_(-0.3)  # the last layer's raw output has negatives: it is not ReLU'd
    x = torch.randn(1, 3, 8, 10)
    book_contents, book_styles = [], []
    with torch.no_grad():
        y = x
        for i, layer in enumerate(features):  # the book's extract_features, verbatim in substance
            y = layer(y)
            if i in (0, 5):
                book_styles.append(y)
            if i == 3:
                book_contents.append(y)
    trunk = vgg19_trunk(features, layers=(0, 3, 5))
    with torch.no_grad():
        contents, styles = extract_features(trunk, x, content_layers=(3,), style_layers=(0, 5))
    assert (styles[0] >= 0).all() and (contents[0] >= 0).all() and (styles[1] < 0).any()
    for ours, book in zip(contents + styles, book_contents + book_styles):
        assert torch.equal(ours, book)
    assert not any(p.requires_grad for p in trunk.parameters()) and not trunk.training


def test_trunk_rejects_layers_beyond_the_features() -> None:
    with pytest.raises(ValueError, match="layer 7 requested but the VGG features have 3 layers"):
        vgg19_trunk(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 1)), layers=(7,))


@pytest.mark.parametrize("size", [(33, 47), (17, 9), (5, 6)])
def test_transform_net_keeps_odd_sizes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = TransformNet(base=8, n_residual=2)
    x = torch.rand(2, 3, *size)
    y = net(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    y.mean().backward()
    assert net.stem[1].weight.grad.abs().sum() > 0


def test_transform_net_defaults_are_johnsons_widths() -> None:
    net = TransformNet()
    assert [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)][:3] == [32, 64, 128]
    assert len(net.residual) == 5
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules()) == 3 + 2 * 5 + 2
    assert net(torch.rand(1, 3, 21, 15)).shape == (1, 3, 21, 15)
