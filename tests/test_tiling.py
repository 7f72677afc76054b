"""Full-image prediction by tiling: tiles cover the image with the asked overlap, overlapping logits
are averaged, small images are padded and cropped back; and the book's centre-crop protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tasks.segmentation.predict import predict_center_crop, predict_tiled, tile_starts


def _pointwise_model() -> nn.Module:
    """Translation-equivariant: a 1x1 convolution with fixed weights (3 → 5 channels)."""
    torch.manual_seed(0)
    return nn.Conv2d(3, 5, kernel_size=1).eval()


class _TopLeft(nn.Module):
    """Fills each tile's logits with the tile's (top, left), read from coordinate channels of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2, :1, :1].expand(-1, -1, x.shape[2], x.shape[3])


class _TileSum(nn.Module):
    """Fills each tile's logits with the sum of its first channel: sees what padding adds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].sum(dim=(2, 3), keepdim=True).expand(-1, -1, x.shape[2], x.shape[3])


def _coordinates(height: int, width: int) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    return torch.stack([rows, cols, torch.zeros(height, width)])


@pytest.mark.parametrize("length", [1, 31, 64, 65, 96, 100, 128, 129, 320, 500, 513])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_tile_starts_cover_every_position_with_the_overlap(length: int, overlap: float) -> None:
    tile = 64
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if length > tile:
        assert starts[-1] == length - tile
        for left, right in zip(starts, starts[1:]):
            assert tile - (right - left) >= overlap * tile
    else:
        assert starts == [0]
    covered = torch.zeros(max(length, tile), dtype=torch.bool)
    for start in starts:
        covered[start:start + tile] = True
    assert covered[:length].all()


def test_tile_starts_exact_values() -> None:
    assert tile_starts(128, 64, 0.0) == [0, 64]
    assert tile_starts(128, 64, 0.5) == [0, 32, 64]
    assert tile_starts(100, 64, 0.5) == [0, 18, 36]
    assert tile_starts(64, 64, 0.5) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 64, 1.0)


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_tiled_prediction_equals_whole_image_for_equivariant_model(batch_size: int) -> None:
    model = _pointwise_model()
    image = torch.randn(3, 100, 150)
    logits = predict_tiled(model, image, tile=(64, 96), overlap=0.25, batch_size=batch_size)
    with torch.no_grad():
        expected = model(image[None])[0]
    assert logits.shape == (5, 100, 150)
    assert logits.device.type == "cpu"
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_overlapping_logits_are_averaged() -> None:
    image = _coordinates(96, 96)  # tile 64, overlap 0.5: tiles start at rows/cols 0 and 32
    logits = predict_tiled(_TopLeft(), image, tile=(64, 64), overlap=0.5)
    assert logits[:, 10, 10].tolist() == [0.0, 0.0]  # one tile
    assert logits[:, 70, 10].tolist() == [32.0, 0.0]  # one tile row, top 32
    assert logits[:, 40, 10].tolist() == [16.0, 0.0]  # tops 0 and 32
    assert logits[:, 40, 40].tolist() == [16.0, 16.0]  # four tiles
    assert logits[:, 10, 70].tolist() == [0.0, 32.0]


def test_image_smaller_than_tile_is_zero_padded_and_cropped_back() -> None:
    image = torch.randn(3, 20, 40)
    model = _pointwise_model()
    logits = predict_tiled(model, image, tile=(64, 64), overlap=0.5)
    assert logits.shape == (5, 20, 40)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(image[None])[0], atol=1e-5, rtol=0)
    # padding with 0 adds nothing to the tile's sum
    summed = predict_tiled(_TileSum(), image, tile=(64, 64), overlap=0.5)
    torch.testing.assert_close(summed, image[0].sum().expand(1, 20, 40))


def test_image_smaller_than_tile_in_one_side_only() -> None:
    image = torch.randn(3, 20, 150)
    model = _pointwise_model()
    logits = predict_tiled(model, image, tile=(64, 64), overlap=0.5)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(image[None])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tile", [(64, 50), (30, 64), (0, 64)])
def test_tile_sides_must_be_multiples_of_32(tile: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        predict_tiled(_pointwise_model(), torch.zeros(3, 64, 64), tile=tile, overlap=0.5)


def test_center_crop_prediction_returns_crop_logits_and_offset() -> None:
    model = _pointwise_model()
    image = torch.randn(3, 100, 130)
    logits, (top, left) = predict_center_crop(model, image, crop=(64, 96))
    assert (top, left) == (18, 17)
    with torch.no_grad():
        expected = model(image[None, :, 18:82, 17:113])[0]
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="smaller than the crop"):
        predict_center_crop(model, torch.zeros(3, 60, 130), crop=(64, 96))
