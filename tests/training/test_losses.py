"""The IRIB loss terms against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from elqproj import losses
from elqproj.errors import ConfigError, InvalidInputError


def _gaussian_3tap(sigma: float) -> torch.Tensor:
    side = math.exp(-0.5 / sigma**2)
    return torch.tensor([side, 1.0, side]) / (1 + 2 * side)


def test_blur_mse_of_an_impulse_is_the_squared_kernel_mass():
    # A unit impulse in the middle of a 5x5 zero image blurs into the outer product of the 1-D kernel
    # (the 3-tap kernel never reaches the border), so the MSE against zeros is (Σk²)² / 25.
    impulse = torch.zeros(1, 1, 5, 5)
    impulse[0, 0, 2, 2] = 1.0
    k = _gaussian_3tap(0.8)
    expected = float((k.square().sum()) ** 2 / 25)
    value = losses.blur_mse(impulse, torch.zeros_like(impulse), sigma=0.8, kernel_size=3)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_blur_mse_ignores_what_the_blur_removes():
    # A ±1 checkerboard (mean 0) all but vanishes under a wide blur: the blurred MSE forgives it.
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0  # ±1, mean 0
    board = checker.expand(1, 3, 8, 8)
    plain = losses.blur_mse(board, torch.zeros_like(board), sigma=1e-3, kernel_size=1)
    blurred = losses.blur_mse(board, torch.zeros_like(board), sigma=3.0, kernel_size=7)
    assert plain.item() == pytest.approx(1.0)
    assert blurred.item() < 0.05


def test_default_kernel_covers_three_sigma():
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(losses.gaussian_blur(image, 2.0), losses.gaussian_blur(image, 2.0, kernel_size=13))


def test_bad_blur_arguments_are_input_errors():
    image = torch.zeros(1, 3, 8, 8)
    with pytest.raises(InvalidInputError, match="sigma"):
        losses.gaussian_blur(image, 0.0)
    with pytest.raises(InvalidInputError, match="odd"):
        losses.gaussian_blur(image, 1.0, kernel_size=4)


def test_lq_reconstruction_degrades_back_in_unit_range_and_compares_in_vae_range():
    seen = []

    def darken(images01: torch.Tensor) -> torch.Tensor:
        seen.append((images01.min().item(), images01.max().item()))
        return images01 * 0.5

    restored = torch.full((1, 3, 8, 8), 0.6)   # ẑ in [-1, 1] -> 0.8 in [0, 1] -> D: 0.4 -> back: -0.2
    lq = torch.full((1, 3, 8, 8), -0.5)
    value = losses.lq_reconstruction_loss(restored, lq, darken, sigma=1.0)
    assert seen == [(pytest.approx(0.8), pytest.approx(0.8))]
    assert value.item() == pytest.approx((-0.2 - -0.5) ** 2)


def test_lq_reconstruction_gradient_flows_through_the_degrade_back():
    restored = torch.zeros(1, 3, 8, 8, requires_grad=True)
    losses.lq_reconstruction_loss(restored, torch.ones(1, 3, 8, 8), lambda x: x * 0.5, sigma=1.0).backward()
    # L = mean(G*(ẑ/2 − 3/2)²) over N = 192 elements: each output pixel's blur weights sum to 1, so the
    # gradients (the blur's adjoint spreads them unevenly near the reflect-padded border) sum to ẑ/2 − 3/2.
    assert restored.grad.sum().item() == pytest.approx(-1.5, rel=1e-5)
    assert bool((restored.grad < 0).all())


def test_vsd_loss_value_and_gradient_follow_the_official_normalisation():
    latents = torch.tensor([[[[1.0, 2.0]]], [[[0.0, -1.0]]]], requires_grad=True)   # (2, 1, 1, 2)
    x0_reg = torch.tensor([[[[1.5, 2.0]]], [[[0.0, 0.0]]]])
    x0_pre = torch.tensor([[[[0.5, 1.0]]], [[[1.0, -1.0]]]])
    # per sample: w = mean|z − x0_pre| = (0.5 + 1)/2 = 0.75 and (1 + 0)/2 = 0.5
    grad = torch.tensor([[[[1.0 / 0.75, 1.0 / 0.75]]], [[[-1.0 / 0.5, 1.0 / 0.5]]]])
    loss = losses.vsd_loss(latents, x0_reg, x0_pre)
    assert loss.item() == pytest.approx(grad.square().mean().item())
    loss.backward()
    assert torch.allclose(latents.grad, 2 * grad / 4)


def test_diffusion_loss_is_the_mse_to_the_noise():
    assert losses.diffusion_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)


def test_hq_fidelity_weights_each_term():
    restored, target = torch.full((2, 3, 8, 8), 0.5), torch.full((2, 3, 8, 8), -0.25)

    def mean_abs(a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))

    terms = losses.hq_fidelity_loss(restored, target, perceptual=mean_abs, lambda_l2=1.0, lambda_lpips=2.0,
                                    lambda_blur=0.5, sigma=1.0)
    d = 0.75
    assert terms.l2.item() == pytest.approx(d**2)
    assert terms.lpips.item() == pytest.approx(d)
    assert terms.blur.item() == pytest.approx(d**2)   # the blur of a constant image is the constant
    assert terms.total.item() == pytest.approx(1.0 * d**2 + 2.0 * d + 0.5 * d**2)


def test_hq_fidelity_skips_terms_with_zero_weight():
    def never(a, b):
        raise AssertionError("LPIPS must not run when its weight is zero")

    terms = losses.hq_fidelity_loss(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8), perceptual=never,
                                    lambda_lpips=0.0, lambda_blur=0.0)
    assert terms.lpips.item() == 0 and terms.blur.item() == 0
    assert terms.total.item() == pytest.approx(1.0)


def test_hq_fidelity_needs_a_perceptual_distance_when_weighted():
    with pytest.raises(ConfigError, match="perceptual"):
        losses.hq_fidelity_loss(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8), perceptual=None)
