"""DDPM schedule arithmetic shared by the one-step engine and the VSD regulariser.

With ᾱ_t the cumulative product of the scheduler's alphas (``scheduler.alphas_cumprod``):

* forward diffusion: z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε  (:func:`add_noise`);
* ε → x0: x̂0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t  (:func:`x0_from_epsilon`), the ``pred_original_sample``
  of diffusers' ``DDPMScheduler.step``, which the official one-step restorers decode.

Both compute in float32 (the official scheduler arithmetic promotes to float32) whatever the inputs'
dtype; ᾱ is looked up in float64 and rounded once.
"""

from __future__ import annotations

import torch

__all__ = ["add_noise", "x0_from_epsilon"]


def _alpha(alphas_cumprod: torch.Tensor, timesteps: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t in float32 on ``like``'s device: a scalar for one int timestep, ``(B, 1, 1, 1)`` for ``(B,)``."""
    alpha = alphas_cumprod[timesteps].to(like.device, torch.float32)
    return alpha.view(-1, 1, 1, 1) if alpha.ndim == 1 else alpha


def x0_from_epsilon(noisy_latents: torch.Tensor, epsilon: torch.Tensor, timesteps: int | torch.Tensor,
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x̂0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, float32 ``(B, C, h, w)``.

    Args:
        noisy_latents, epsilon: ``(B, C, h, w)``; timesteps: one int, or ``(B,)`` integers (one per
            sample); alphas_cumprod: ``(T,)`` ᾱ.
    """
    alpha = _alpha(alphas_cumprod, timesteps, noisy_latents)
    return (noisy_latents.float() - (1 - alpha).sqrt() * epsilon.float()) / alpha.sqrt()


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε, float32 ``(B, C, h, w)``; arguments as in :func:`x0_from_epsilon`."""
    alpha = _alpha(alphas_cumprod, timesteps, latents)
    return alpha.sqrt() * latents.float() + (1 - alpha).sqrt() * noise.float()
