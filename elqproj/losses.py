"""The IRIB training objective (IRIB paper, eq. 14-19) as pure functions of tensors.

For an HQ crop z, its ordinary degradation x = D_φ(z) and an extreme one x_E, the projector gives
x̂ = f(x_E) and the frozen one-step restorer ẑ = g(x̂). The projector minimises ::

    L = λ_LQ · L_LQ-recon  +  λ_VSD · L_HQ-prior  +  L_HQ-fid

* L_LQ-recon = ‖G_τ * D(ẑ) − G_τ * x‖²: the restored image, degraded back (by default with the very
  degradation φ that made x), must match the LQ target once both are blurred by a Gaussian G_τ — the
  blur forgives the high frequencies a degradation destroys anyway.
* L_HQ-prior: variational score distillation (VSD) as OSEDiff trains it: the gap between a LoRA
  "regulariser" UNet, itself trained on ẑ with the diffusion loss, and the frozen pretrained UNet
  (with classifier-free guidance) pulls ẑ towards the pretrained model's image distribution.
* L_HQ-fid = λ_l2‖ẑ − z‖² + λ_LPIPS · LPIPS(ẑ, z) + λ_blur‖G_k * ẑ − G_k * z‖².

Image tensors are ``(B, 3, H, W)`` floats in [-1, 1] (the VAE range; OSEDiff computes its MSE and
LPIPS there); latents are scaled SD latents ``(B, 4, H/8, W/8)``. Every loss is a 0-dim float32 tensor.
The networks (g, the UNets, LPIPS, the degradation) are arguments: these functions own only the math.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .errors import ConfigError, InvalidInputError
from .value_range import signed_to_unit, unit_to_signed

__all__ = [
    "gaussian_blur",
    "blur_mse",
    "lq_reconstruction_loss",
    "vsd_loss",
    "diffusion_loss",
    "hq_fidelity_loss",
    "FidelityTerms",
]


def _kernel_size(sigma: float, kernel_size: int | None) -> int:
    # ±3σ holds 99.7 % of a Gaussian's mass; the size must be odd for a centred kernel.
    size = kernel_size if kernel_size is not None else 2 * math.ceil(3 * sigma) + 1
    if size < 1 or size % 2 == 0:
        raise InvalidInputError(f"kernel_size must be a positive odd number of pixels, got {size}")
    return size


def gaussian_blur(images: torch.Tensor, sigma: float, kernel_size: int | None = None) -> torch.Tensor:
    """Depthwise Gaussian blur G_σ * images with reflect padding (torchvision's ``gaussian_blur``).

    Args:
        images: ``(B, C, H, W)`` float, any range; differentiable.
        sigma: standard deviation in pixels (> 0).
        kernel_size: odd side of the kernel in pixels; default ``2·ceil(3σ) + 1``. It must be smaller
            than twice each image side (reflect padding).
    """
    from torchvision.transforms.v2.functional import gaussian_blur as tv_gaussian_blur

    if sigma <= 0:
        raise InvalidInputError(f"sigma must be > 0 pixels, got {sigma}")
    size = _kernel_size(sigma, kernel_size)
    return tv_gaussian_blur(images, kernel_size=[size, size], sigma=[float(sigma), float(sigma)])


def blur_mse(
    prediction: torch.Tensor, target: torch.Tensor, *, sigma: float, kernel_size: int | None = None
) -> torch.Tensor:
    """Blurred MSE ‖G_σ * prediction − G_σ * target‖², averaged over every element.

    Args:
        prediction, target: ``(B, C, H, W)`` of the same shape and range.
        sigma, kernel_size: the Gaussian G_σ (see :func:`gaussian_blur`).
    """
    blurred = gaussian_blur(torch.stack([prediction.float(), target.float()]).flatten(0, 1), sigma, kernel_size)
    blurred_prediction, blurred_target = blurred.chunk(2)
    return F.mse_loss(blurred_prediction, blurred_target)


def lq_reconstruction_loss(
    restored: torch.Tensor,
    lq_target: torch.Tensor,
    degrade_back: Callable[[torch.Tensor], torch.Tensor],
    *,
    sigma: float,
    kernel_size: int | None = None,
) -> torch.Tensor:
    """L_LQ-recon = ‖G_τ * D(ẑ) − G_τ * x‖² (IRIB eq. 14-19, the LQ reconstruction term).

    Args:
        restored: ẑ, ``(B, 3, H, W)`` in [-1, 1], the restorer's output.
        lq_target: x, ``(B, 3, H, W)`` in [-1, 1], the ordinary-LQ image of the same HQ crop.
        degrade_back: D, a differentiable degradation of ``(B, 3, H, W)`` images in **[0, 1]**
            returning the same shape in [0, 1] (e.g. the degradation engine's ``apply(...,
            differentiable=True)`` with the parameters that produced x).
        sigma, kernel_size: the Gaussian G_τ.

    Returns:
        The blurred MSE in [-1, 1] units (same units as the HQ terms).
    """
    degraded = unit_to_signed(degrade_back(signed_to_unit(restored.float()).clamp(0, 1)))
    return blur_mse(degraded, lq_target, sigma=sigma, kernel_size=kernel_size)


def vsd_loss(latents: torch.Tensor, x0_regularizer: torch.Tensor, x0_pretrained: torch.Tensor) -> torch.Tensor:
    """L_HQ-prior: OSEDiff's VSD ("distribution matching") loss of the generator.

    With z the latent of the restored image, z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε a noisy copy, x̂0_reg the
    regulariser UNet's and x̂0_pre the frozen pretrained UNet's (CFG) clean-latent predictions from
    z_t (both without gradient)::

        w = mean_{C,H,W} |z − x̂0_pre|            (per sample)
        ∇ = (x̂0_reg − x̂0_pre) / w
        L = mean (z − sg(z − ∇))²

    so that ∂L/∂z = 2∇/N: the VSD gradient, normalised per sample as in the official code.

    Args:
        latents: z, ``(B, 4, h, w)`` scaled latents, with gradient.
        x0_regularizer, x0_pretrained: ``(B, 4, h, w)``, no gradient needed.
    """
    z = latents.float()
    x0_pretrained = x0_pretrained.float()
    weight = (z - x0_pretrained).abs().mean(dim=(1, 2, 3), keepdim=True)
    gradient = (x0_regularizer.float() - x0_pretrained) / weight
    return F.mse_loss(z, (z - gradient).detach())


def diffusion_loss(noise_prediction: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regulariser's denoising loss ‖ε_reg(z_t, t, c) − ε‖² (averaged), computed in float32.

    Args:
        noise_prediction: ε_reg, ``(B, 4, h, w)``; noise: the ε that made z_t, same shape.
    """
    return F.mse_loss(noise_prediction.float(), noise.float())


class FidelityTerms(NamedTuple):
    """The HQ fidelity loss and its unweighted parts (0-dim float32 tensors; zero when not computed)."""

    total: torch.Tensor
    l2: torch.Tensor
    lpips: torch.Tensor
    blur: torch.Tensor


def hq_fidelity_loss(
    restored: torch.Tensor,
    target: torch.Tensor,
    *,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    lambda_l2: float = 1.0,
    lambda_lpips: float = 1.0,
    lambda_blur: float = 0.5,
    sigma: float = 2.0,
    kernel_size: int | None = None,
) -> FidelityTerms:
    """L_HQ-fid = λ_l2‖ẑ − z‖² + λ_LPIPS·LPIPS(ẑ, z) + λ_blur‖G_k * ẑ − G_k * z‖² (IRIB eq. 14-19).

    Args:
        restored: ẑ, ``(B, 3, H, W)`` in [-1, 1]; target: the HQ crop z, same shape and range.
        perceptual: LPIPS-like distance taking two [-1, 1] batches and returning per-image distances
            (any shape with B leading; averaged). Only called when ``lambda_lpips`` is not zero.
        lambda_l2, lambda_lpips: the IRIB paper's λ_l2 = λ_LPIPS = 1 (Appendix A; OSEDiff's own recipe
            weighs LPIPS 2); lambda_blur: the paper's 0.5.
        sigma, kernel_size: the Gaussian G_k of the blurred term.

    Terms with a zero weight are not computed (reported as zero).
    """
    zero = restored.new_zeros((), dtype=torch.float32)
    l2 = F.mse_loss(restored.float(), target.float()) if lambda_l2 else zero
    if lambda_lpips:
        if perceptual is None:
            raise ConfigError("lambda_lpips is not zero but no perceptual distance was given; pass perceptual=...")
        lpips = perceptual(restored.float(), target.float()).float().mean()
    else:
        lpips = zero
    blur = blur_mse(restored, target, sigma=sigma, kernel_size=kernel_size) if lambda_blur else zero
    return FidelityTerms(lambda_l2 * l2 + lambda_lpips * lpips + lambda_blur * blur, l2, lpips, blur)
