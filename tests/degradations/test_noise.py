"""Gaussian and Poisson noise with per-sample seeds."""

from __future__ import annotations

import pytest
import torch

from elqproj.degradations import SeededNoise, add_gaussian_noise, add_poisson_noise
from elqproj.degradations.noise import gaussian_noise, poisson_noise
from elqproj.errors import InvalidInputError

IMG = torch.full((2, 3, 64, 64), 0.5)


def test_same_seeds_give_the_same_noise():
    first = gaussian_noise(IMG, 10.0, False, SeededNoise([1, 2]))
    torch.testing.assert_close(first, gaussian_noise(IMG, 10.0, False, SeededNoise([1, 2])), rtol=0, atol=0)


def test_each_sample_noise_depends_only_on_its_own_seed():
    batched = gaussian_noise(IMG, 10.0, torch.tensor([True, False]), SeededNoise([1, 2]))
    alone = gaussian_noise(IMG[1:], 10.0, False, SeededNoise([2]))
    torch.testing.assert_close(batched[1:], alone, rtol=0, atol=0)


def test_gaussian_sigma_is_in_0_255_units():
    noise = gaussian_noise(torch.zeros(1, 3, 256, 256), 25.5, False, SeededNoise([0]))
    assert noise.std().item() == pytest.approx(0.1, rel=0.02)


def test_gray_noise_is_the_same_on_every_channel():
    noise = gaussian_noise(IMG, torch.tensor([5.0, 20.0]), torch.tensor([True, False]), SeededNoise([3, 4]))
    torch.testing.assert_close(noise[0, 0], noise[0, 2], rtol=0, atol=0)
    assert not torch.equal(noise[1, 0], noise[1, 2])


def test_poisson_noise_is_zero_mean_and_grows_with_scale():
    weak = poisson_noise(IMG, 0.5, False, SeededNoise([5, 6]))
    strong = poisson_noise(IMG, 2.0, False, SeededNoise([5, 6]))
    assert abs(weak.mean().item()) < 1e-2
    torch.testing.assert_close(strong, weak * 4, rtol=1e-5, atol=1e-7)


def test_gray_poisson_noise_is_the_same_on_every_channel():
    noise = poisson_noise(IMG, 1.0, True, SeededNoise([7, 8]))
    torch.testing.assert_close(noise[:, 0], noise[:, 1], rtol=0, atol=0)


def test_added_noise_is_clipped_to_the_unit_range():
    out = add_gaussian_noise(torch.full((1, 3, 32, 32), 0.99), 50.0, False, SeededNoise([9]))
    assert out.max().item() == 1.0 and out.min().item() >= 0


def test_rounds_puts_the_result_on_the_8_bit_grid():
    out = add_poisson_noise(IMG, 1.0, False, SeededNoise([1, 2]), rounds=True)
    torch.testing.assert_close(out * 255, (out * 255).round(), rtol=0, atol=1e-4)


def test_seed_count_must_match_the_batch():
    with pytest.raises(InvalidInputError, match="1 noise seeds for a batch of 2"):
        gaussian_noise(IMG, 5.0, False, SeededNoise([0]))
