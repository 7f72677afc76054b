"""LeNet and corr2d (models/lenet.py) on the test vectors of d2l 7.2 and the shapes of 7.6."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.lenet import build_lenet, corr2d, layer_shapes


def _edge_image() -> torch.Tensor:
    x = torch.ones((6, 8))
    x[:, 2:6] = 0
    return x


def test_corr2d_on_the_books_example() -> None:
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    k = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert corr2d(x, k).tolist() == [[19.0, 25.0], [37.0, 43.0]]


def test_corr2d_detects_vertical_edges_only() -> None:
    x, k = _edge_image(), torch.tensor([[1.0, -1.0]])
    y = corr2d(x, k)
    expected = torch.zeros((6, 7))
    expected[:, 1], expected[:, 5] = 1.0, -1.0
    assert torch.equal(y, expected)
    assert torch.equal(corr2d(x.t(), k), torch.zeros((8, 5)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learning_the_edge_kernel_reaches_one_minus_one(seed: int) -> None:
    torch.manual_seed(seed)
    x = _edge_image()
    y = corr2d(x, torch.tensor([[1.0, -1.0]])).reshape(1, 1, 6, 7)
    conv = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    x = x.reshape(1, 1, 6, 8)
    for _ in range(10):  # the book's loop: squared loss summed, plain SGD, lr 0.03
        loss = ((conv(x) - y) ** 2).sum()
        conv.zero_grad()
        loss.backward()
        with torch.no_grad():
            conv.weight -= 3e-2 * conv.weight.grad
    kernel = conv.weight.detach().reshape(2)
    assert torch.allclose(kernel, torch.tensor([1.0, -1.0]), atol=0.1)


def test_lenet_layer_shapes_match_the_book() -> None:
    shapes = layer_shapes(build_lenet("sigmoid"), torch.zeros(1, 1, 28, 28))
    assert shapes == [
        ("Conv2d", (1, 6, 28, 28)), ("Sigmoid", (1, 6, 28, 28)), ("AvgPool2d", (1, 6, 14, 14)),
        ("Conv2d", (1, 16, 10, 10)), ("Sigmoid", (1, 16, 10, 10)), ("AvgPool2d", (1, 16, 5, 5)),
        ("Flatten", (1, 400)), ("Linear", (1, 120)), ("Sigmoid", (1, 120)),
        ("Linear", (1, 84)), ("Sigmoid", (1, 84)), ("Linear", (1, 10)),
    ]


def test_relu_variant_uses_relu_and_max_pooling_with_the_same_shapes() -> None:
    net = build_lenet("relu")
    names = [name for name, _ in layer_shapes(net, torch.zeros(2, 1, 28, 28))]
    assert names.count("ReLU") == 4 and names.count("MaxPool2d") == 2 and "Sigmoid" not in names
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="'sigmoid' or 'relu'"):
        build_lenet("tanh")  # type: ignore[arg-type]


def test_xavier_uniform_bounds_and_seeded_init() -> None:
    torch.manual_seed(0)
    a = build_lenet()
    torch.manual_seed(0)
    b = build_lenet()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    fc1 = a[7]
    bound = (6.0 / (400 + 120)) ** 0.5
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound
    conv1 = a[0]
    conv_bound = (6.0 / (1 * 25 + 6 * 25)) ** 0.5
    assert conv1.weight.abs().max() <= conv_bound and conv1.weight.std() > 0.4 * conv_bound
