"""Small real photographs (scikit-image's samples, offline) for the degradation tests."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image


def photo(name: str, size: int) -> torch.Tensor:
    """scikit-image sample ``name`` centre-cropped to a square and resized: (1, 3, size, size) in [0, 1]."""
    array = getattr(skimage.data, name)()
    side = min(array.shape[:2])
    top, left = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
    image = Image.fromarray(array[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="session")
def photos() -> torch.Tensor:
    """(2, 3, 128, 128) float32 in [0, 1]: astronaut and chelsea (128 px fits every ELQ down-scale)."""
    return torch.cat([photo("astronaut", 128), photo("chelsea", 128)])


def assert_grid_close(actual: torch.Tensor, expected: torch.Tensor, max_flip_fraction: float = 0.005) -> None:
    """Images on the 1/255 grid computed with different float round-off (batching, thread counts):
    equal to 1e-6 except a small fraction of values off by exactly one 1/255 step."""
    diff = (actual - expected).abs()
    off = diff > 1e-6
    assert bool(((diff - 1 / 255).abs() <= 1e-6)[off].all()), f"max diff {diff.max().item():.3g} exceeds one 1/255 step"
    assert off.float().mean().item() <= max_flip_fraction, f"{off.float().mean().item():.4%} of values differ"
