"""The uint8 comparison rules of tests/golden/parity.py accept what they state and nothing more."""

from __future__ import annotations

import numpy as np
import pytest

from tests.golden.parity import adain_gain, assert_adain_uint8_close, assert_uint8_close


def _image(seed: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(128 + rng.normal(0, spread, size=(32, 32, 3)), 0, 255).round().astype(np.uint8)


def test_uint8_rule_allows_one_level_on_a_small_fraction_only():
    expected = _image(0, 30)
    expected[0, :2, 0] = 100
    ours = expected.copy()
    ours[0, 0, 0] += 1
    assert_uint8_close(ours, expected, "one level", max_fraction=0.005)
    ours[0, 1, 0] += 2
    with pytest.raises(AssertionError, match="max uint8 diff 2"):
        assert_uint8_close(ours, expected, "two levels", max_fraction=0.005)
    many = expected.copy()
    many[:4] = np.minimum(many[:4], 254) + 1
    with pytest.raises(AssertionError, match="of values differ"):
        assert_uint8_close(many, expected, "too many", max_fraction=0.005)


def test_adain_gain_is_the_ratio_of_channel_deviations():
    source, target = _image(1, 60), _image(2, 30)
    gain = adain_gain(source, target)
    assert gain.shape == (3,)
    assert np.all((gain > 1.6) & (gain < 2.4))  # twice the spread, up to sampling and clipping


def test_adain_rule_lets_a_differing_input_value_grow_by_the_gain_and_no_more():
    source, before = _image(1, 60), _image(2, 30)  # gain ~2
    gain = adain_gain(source, before)
    before_ours = before.copy()
    before_ours[5, 5, 0] += 1
    fixed = _image(3, 30)
    fixed[5, 5, 0] = fixed[9, 9, 1] = 100  # room to add levels without wrapping
    grown = fixed.copy()
    grown[5, 5, 0] += int(np.ceil(gain[0]))
    assert_adain_uint8_close(grown, fixed, "grown", before_actual=before_ours, before_expected=before, source=source,
                             max_fraction=0.005)
    too_far = fixed.copy()
    too_far[5, 5, 0] += int(np.ceil(gain[0])) + 1
    with pytest.raises(AssertionError, match="allowed"):
        assert_adain_uint8_close(too_far, fixed, "too far", before_actual=before_ours, before_expected=before,
                                 source=source, max_fraction=0.005)
    elsewhere = fixed.copy()
    elsewhere[9, 9, 1] += 2  # its input did not differ: one level at most
    with pytest.raises(AssertionError, match="input diff 0"):
        assert_adain_uint8_close(elsewhere, fixed, "elsewhere", before_actual=before_ours, before_expected=before,
                                 source=source, max_fraction=0.005)
