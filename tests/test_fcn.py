"""FCN (d2l 14.10–14.11) against the book's test vectors: transposed convolution, bilinear kernel,
trunk and FCN shapes, and ImageNet weights from the torch hub cache or a clear offline error."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from models.fcn import bilinear_kernel, build_fcn, resnet18_trunk
from tasks.errors import D2lflowError

X = torch.tensor([[0.0, 1.0], [2.0, 3.0]])


def _transpose_conv(**kwargs) -> torch.Tensor:
    conv = nn.ConvTranspose2d(1, 1, kernel_size=2, bias=False, **kwargs)
    with torch.no_grad():
        conv.weight.copy_(X.reshape(1, 1, 2, 2))
        return conv(X.reshape(1, 1, 2, 2))[0, 0]


def test_transposed_convolution_matches_book_vectors() -> None:
    assert torch.equal(_transpose_conv(), torch.tensor([[0.0, 0, 1], [0, 4, 6], [4, 12, 9]]))
    assert torch.equal(_transpose_conv(padding=1), torch.tensor([[4.0]]))
    assert torch.equal(_transpose_conv(stride=2),
                       torch.tensor([[0.0, 0, 0, 1], [0, 0, 2, 3], [0, 2, 0, 3], [4, 6, 6, 9]]))


def test_bilinear_kernel_is_outer_product_on_channel_diagonal() -> None:
    weight = bilinear_kernel(3, 3, 4)
    assert weight.shape == (3, 3, 4, 4)
    expected = torch.outer(torch.tensor([0.25, 0.75, 0.75, 0.25]), torch.tensor([0.25, 0.75, 0.75, 0.25]))
    for i in range(3):
        for j in range(3):
            assert torch.allclose(weight[i, j], expected if i == j else torch.zeros(4, 4))


def test_bilinear_kernel_odd_size_peaks_at_center() -> None:
    weight = bilinear_kernel(1, 1, 3)[0, 0]
    # factor 2, center 1: 1 - |i-1|/2 = [0.5, 1, 0.5]
    line = torch.tensor([0.5, 1.0, 0.5])
    assert torch.allclose(weight, torch.outer(line, line))


def test_bilinear_transposed_convolution_doubles_image_size() -> None:
    conv = nn.ConvTranspose2d(3, 3, kernel_size=4, padding=1, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(bilinear_kernel(3, 3, 4))
        image = torch.rand(1, 3, 24, 36)
        out = conv(image)
    assert out.shape == (1, 3, 48, 72)
    # interior of a constant image stays constant under bilinear upsampling
    constant = conv(torch.ones(1, 3, 8, 8)).detach()
    assert torch.allclose(constant[..., 1:-1, 1:-1], torch.ones(1, 3, 14, 14))


def test_trunk_maps_320x480_to_512x10x15() -> None:
    trunk = resnet18_trunk("none").eval()
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 320, 480)).shape == (1, 512, 10, 15)


def test_fcn_output_matches_input_size_and_book_structure() -> None:
    net = build_fcn(21).eval()
    assert [name for name, _ in net.named_children()][-2:] == ["final_conv", "transpose_conv"]
    assert torch.equal(net.transpose_conv.weight, bilinear_kernel(21, 21, 64))
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 320, 480)).shape == (1, 21, 320, 480)


def test_unknown_backbone_weights_raise_value_error() -> None:
    with pytest.raises(ValueError, match="'imagenet' or 'none'"):
        resnet18_trunk("coco")


def test_unreachable_imagenet_weights_raise_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(D2lflowError) as info:
        build_fcn(21, backbone_weights="imagenet")
    message = str(info.value)
    assert "backbone_weights: none" in message
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_imagenet_weights_are_loaded_from_torch_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    saved = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(saved, checkpoints / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # a cached file is loaded as is (torch.hub checks the name's hash prefix only when downloading)
    def no_download(*args, **kwargs):
        raise AssertionError("the cached weights file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    trunk = resnet18_trunk("imagenet")
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    loaded = {}
    for key, value in trunk.state_dict().items():
        index, _, rest = key.partition(".")
        loaded[f"{names[int(index)]}.{rest}"] = value
    assert set(loaded) == set(saved) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key
