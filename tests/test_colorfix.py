"""The colour fixes against the official formulas, recomputed independently on random images.

The official OSEDiff / SeeSR / S3Diff scripts share two colour fixes (``wavelet_color_fix.py``):

* AdaIN: per image and channel, ``(t − mean_t) / std_t · std_s + mean_s`` with
  ``std = sqrt(unbiased variance over H·W + 1e-5)``;
* wavelet: five à-trous levels of the 3x3 kernel ``[1,2,1]⊗[1,2,1]/16`` dilated by 2^i with replicate
  padding; the result is the target's summed high frequencies plus the source's final low frequency.

Here both are recomputed in float64 with numpy and scipy (a dilated kernel, ``mode="nearest"`` is
replicate padding), so these cases pin the formulas on inputs other than the golden ones. The scripts
apply them to uint8 images read back as ``k/255`` and truncate the result (``ToPILImage``); that chain
is checked too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from elqproj.colorfix import adain_raw, apply_color_fix, wavelet_raw
from elqproj.errors import InvalidInputError


def _official_adain(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(B, C, H, W) float64."""
    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = x.reshape(*x.shape[:2], -1)
        return flat.mean(-1)[..., None, None], np.sqrt(flat.var(-1, ddof=1) + 1e-5)[..., None, None]

    mean_t, std_t = stats(target)
    mean_s, std_s = stats(source)
    return (target - mean_t) / std_t * std_s + mean_s


def _official_wavelet_levels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(summed high frequencies, low frequency) of (B, C, H, W) float64."""
    high, low = np.zeros_like(x), x
    for level in range(5):
        radius = 2**level
        kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
        kernel[::radius, ::radius] = np.outer([1, 2, 1], [1, 2, 1]) / 16
        blurred = np.stack([np.stack([ndimage.correlate(channel, kernel, mode="nearest") for channel in image])
                            for image in low])
        high, low = high + (low - blurred), blurred
    return high, low


def _official_wavelet(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    return _official_wavelet_levels(target)[0] + _official_wavelet_levels(source)[1]


OFFICIAL = {"adain": _official_adain, "wavelet": _official_wavelet}
OURS = {"adain": adain_raw, "wavelet": wavelet_raw}


def _random_pair(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A restored-looking target (a drifted, noisy copy) and its source, uint8 levels k/255 in float32."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 256, size=shape).astype(np.float64)
    drift = rng.uniform(-40, 40, size=(shape[0], shape[1], 1, 1))
    target = np.clip(source * rng.uniform(0.6, 1.3) + drift + rng.normal(0, 12, size=shape), 0, 255).round()
    return torch.from_numpy(target / 255).float(), torch.from_numpy(source / 255).float()


SHAPES = [(1, 3, 64, 64), (2, 3, 40, 72), (1, 3, 17, 9), (1, 3, 3, 5)]


@pytest.mark.parametrize("method", ["adain", "wavelet"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_color_fix_matches_the_official_formula_in_float64(method, shape, seed):
    """Unclamped float32 result within 2e-6 of the float64 formula (values in about [−0.5, 1.5])."""
    target, source = _random_pair(seed, shape)
    expected = OFFICIAL[method](target.double().numpy(), source.double().numpy())
    ours = OURS[method](target, source)
    assert ours.dtype == torch.float32 and ours.shape == target.shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("method", ["adain", "wavelet"])
@pytest.mark.parametrize("seed", range(6))
def test_color_fix_uint8_chain_matches_the_official_truncation(method, seed):
    """uint8 in, colour fix, clamp, truncate to uint8: equal to the float64 formula's truncation except
    where that value lies within float32 round-off (1e-5 levels) of a level boundary."""
    target, source = _random_pair(seed, (1, 3, 48, 48))
    exact = np.clip(OFFICIAL[method](target.double().numpy(), source.double().numpy()), 0, 1) * 255
    ours = apply_color_fix(target, source, method).numpy() * 255
    ours_levels, exact_levels = np.floor(ours), np.floor(exact)
    near_boundary = np.abs(exact - np.round(exact)) < 1e-5
    assert np.array_equal(ours_levels[~near_boundary], exact_levels[~near_boundary])
    assert (np.abs(ours_levels - exact_levels) <= 1).all()


def test_color_fix_none_returns_the_target_unchanged():
    target, source = _random_pair(0, (1, 3, 8, 8))
    assert apply_color_fix(target, source, "none") is target


@pytest.mark.parametrize(("method", "source_shape", "message"), [
    ("adain", (1, 3, 8, 9), "same shape"),
    ("sharpen", (1, 3, 8, 8), "Unknown color_fix"),
])
def test_color_fix_rejects_mismatched_shapes_and_unknown_methods(method, source_shape, message):
    target = torch.rand(1, 3, 8, 8)
    with pytest.raises(InvalidInputError, match=message):
        apply_color_fix(target, torch.rand(source_shape), method)
