"""Blur kernels: shapes, normalisation, symmetries, sampling from a config."""

from __future__ import annotations

import math

import pytest
import torch

from elqproj.degradations import presets
from elqproj.degradations.config import BlurConfig, FinalSincConfig
from elqproj.degradations.kernels import (
    GaussianKernel,
    GeneralizedGaussianKernel,
    PlateauKernel,
    PulseKernel,
    SincKernel,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    sample_blur_kernel,
    sample_final_sinc,
    sinc_kernel,
    stack_kernels,
)
from elqproj.degradations.sampling import RandomDraws
from elqproj.errors import InvalidInputError

BUILDERS = {
    "gaussian": lambda: gaussian_kernel(13, 2.0, 0.7, 0.4),
    "generalized": lambda: generalized_gaussian_kernel(13, 2.0, 0.7, 0.4, 2.5),
    "plateau": lambda: plateau_kernel(13, 2.0, 0.7, 0.4, 1.5),
    "sinc": lambda: sinc_kernel(13, 1.2),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_kernels_are_normalised_and_point_symmetric(name):
    kernel = BUILDERS[name]()
    assert kernel.shape == (13, 13) and kernel.dtype == torch.float64
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(kernel, kernel.flip(0, 1))


def test_isotropic_gaussian_is_separable_1d_gaussian():
    offsets = torch.arange(-5, 6, dtype=torch.float64)
    taps = torch.exp(-(offsets**2) / (2 * 1.5**2))
    expected = torch.outer(taps, taps) / torch.outer(taps, taps).sum()
    torch.testing.assert_close(gaussian_kernel(11, 1.5, 1.5), expected)


def test_rotating_by_a_quarter_turn_swaps_the_sigmas():
    torch.testing.assert_close(gaussian_kernel(15, 3.0, 1.0, math.pi / 2), gaussian_kernel(15, 1.0, 3.0, 0.0))


def test_x_sigma_spreads_along_columns():
    kernel = gaussian_kernel(15, 3.0, 0.5)
    assert kernel[7, 7 + 3] > kernel[7 + 3, 7]  # x is the column offset


def test_generalized_gaussian_with_beta_one_is_the_gaussian():
    torch.testing.assert_close(generalized_gaussian_kernel(11, 1.2, 2.0, 0.3, 1.0), gaussian_kernel(11, 1.2, 2.0, 0.3))


def test_sinc_at_nyquist_cutoff_keeps_mass_at_the_centre():
    kernel = sinc_kernel(21, math.pi)
    assert kernel.argmax().item() == 10 * 21 + 10
    assert kernel[10, 10] > 0.5


def test_stack_kernels_pads_every_kernel_centred_to_the_largest():
    kernels = [GaussianKernel(size=7, sigma_x=1, sigma_y=1), SincKernel(size=21, cutoff=1.0), PulseKernel()]
    stacked = stack_kernels(kernels)
    assert stacked.shape == (3, 21, 21) and stacked.dtype == torch.float32
    torch.testing.assert_close(stacked[0, 7:14, 7:14], gaussian_kernel(7, 1, 1).float())
    assert stacked[0].sum().item() == pytest.approx(1.0, abs=1e-6)
    pulse = torch.zeros(21, 21)
    pulse[10, 10] = 1
    torch.testing.assert_close(stacked[2], pulse)


@pytest.mark.parametrize("size", [4, 1, -3])
def test_kernel_params_reject_even_or_tiny_sizes(size):
    with pytest.raises(InvalidInputError, match="odd and >= 3"):
        GaussianKernel(size=size, sigma_x=1.0, sigma_y=1.0)


def test_kernel_params_reject_a_cutoff_above_nyquist():
    with pytest.raises(InvalidInputError, match="cutoff"):
        SincKernel(size=7, cutoff=4.0)


def _blur_config(**update) -> BlurConfig:
    return presets.REALESRGAN.stage1.blur.model_copy(update=update)


def test_sampled_blur_kernels_stay_inside_the_config_ranges():
    draws = RandomDraws(torch.Generator().manual_seed(0))
    config = presets.ELQ.stage1.blur
    for _ in range(200):
        kernel = sample_blur_kernel(config, draws)
        assert kernel.size in config.kernel_sizes
        if isinstance(kernel, SincKernel):
            assert math.pi / 5 <= kernel.cutoff <= math.pi
            continue
        low, high = config.sigma_range
        assert low <= kernel.sigma_x <= high and low <= kernel.sigma_y <= high
        if isinstance(kernel, GeneralizedGaussianKernel):
            assert config.betag_range[0] <= kernel.beta <= config.betag_range[1]
        if isinstance(kernel, PlateauKernel):
            assert config.betap_range[0] <= kernel.beta <= config.betap_range[1]


def test_sinc_probability_one_always_gives_sinc_kernels():
    draws = RandomDraws(torch.Generator().manual_seed(1))
    assert all(isinstance(sample_blur_kernel(_blur_config(sinc_prob=1.0), draws), SincKernel) for _ in range(20))


def test_isotropic_only_config_gives_round_kernels():
    draws = RandomDraws(torch.Generator().manual_seed(2))
    config = _blur_config(kernel_probs={"iso": 1.0}, sinc_prob=0.0)
    for _ in range(20):
        kernel = sample_blur_kernel(config, draws)
        assert isinstance(kernel, GaussianKernel) and kernel.sigma_x == kernel.sigma_y and kernel.theta == 0.0


def test_final_sinc_probability_zero_gives_the_identity():
    draws = RandomDraws(torch.Generator().manual_seed(3))
    assert isinstance(sample_final_sinc(FinalSincConfig(prob=0.0), draws), PulseKernel)
