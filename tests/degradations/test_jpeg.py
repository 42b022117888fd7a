"""DiffJPEG: quality handling, per-sample qualities, padding, gradients."""

from __future__ import annotations

import pytest
import torch

from elqproj.degradations import diff_jpeg
from elqproj.degradations.jpeg import jpeg_encode, jpeg_quality_to_factor
from elqproj.errors import InvalidInputError


def test_higher_quality_is_closer_to_the_input(photos):
    errors = [(diff_jpeg(photos, quality) - photos).abs().mean().item() for quality in (10, 40, 90)]
    assert errors[0] > errors[1] > errors[2]


def test_per_sample_quality_equals_compressing_each_sample_alone(photos):
    batched = diff_jpeg(photos, torch.tensor([20.0, 85.0]))
    torch.testing.assert_close(batched[1:], diff_jpeg(photos[1:], 85.0), rtol=0, atol=1e-6)


def test_sizes_that_are_not_multiples_of_16_are_padded_and_cropped_back(photos):
    crop = photos[:, :, :37, :50]
    out = diff_jpeg(crop, 50.0)
    assert out.shape == crop.shape
    assert (out - crop).abs().mean().item() < 0.05


def test_the_caller_quality_tensor_is_not_modified():
    quality = torch.tensor([30.0, 70.0])
    jpeg_quality_to_factor(quality)
    assert quality.tolist() == [30.0, 70.0]


def test_libjpeg_quality_to_factor_rule():
    factors = jpeg_quality_to_factor(torch.tensor([10.0, 50.0, 75.0, 100.0]))
    torch.testing.assert_close(factors, torch.tensor([5.0, 1.0, 0.5, 0.0]))


@pytest.mark.parametrize("quality", [0.0, 100.5, -3.0])
def test_quality_outside_1_100_is_rejected(quality):
    with pytest.raises(InvalidInputError, match=r"\[1, 100\]"):
        diff_jpeg(torch.rand(1, 3, 16, 16), quality)


def test_quantised_coefficients_are_integers(photos):
    coefficients = jpeg_encode(photos[:, :, :64, :64], jpeg_quality_to_factor(torch.tensor([30.0, 60.0])))
    assert coefficients.y.shape == (2, 64, 8, 8) and coefficients.cb.shape == (2, 16, 8, 8)
    torch.testing.assert_close(coefficients.y, coefficients.y.round(), rtol=0, atol=0)


def test_differentiable_mode_passes_gradients(photos):
    img = photos[:, :, :32, :32].clone().requires_grad_(True)
    diff_jpeg(img, 40.0, differentiable=True).sum().backward()
    assert img.grad is not None and img.grad.abs().sum().item() > 0


def test_hard_rounding_blocks_gradients(photos):
    img = photos[:, :, :32, :32].clone().requires_grad_(True)
    diff_jpeg(img, 40.0).sum().backward()
    assert img.grad.abs().sum().item() == 0


def test_non_rgb_input_is_rejected():
    with pytest.raises(InvalidInputError, match=r"\(B, 3, H, W\)"):
        diff_jpeg(torch.rand(3, 16, 16), 50.0)
