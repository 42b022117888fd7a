"""Colour correction of a restored image towards its (upscaled) LQ source.

Diffusion restorers drift in colour; the official OSEDiff, SeeSR and S3Diff scripts pull the output's
low frequencies (wavelet) or channel statistics (AdaIN) back to the LQ input. Both are written here as
batched tensor functions (no library ships them).

All functions take ``target`` (the restored image) and ``source`` (the LQ image resized to the same
size), float tensors ``(B, 3, H, W)`` in [0, 1], and return a tensor of the same shape. The ``*_raw``
variants return the unclamped result (the official code clamps afterwards).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

__all__ = ["ColorFix", "apply_color_fix", "check_color_fix", "adain_raw", "wavelet_raw"]

ColorFix = Literal["adain", "wavelet", "none"]

_ADAIN_EPS = 1e-5  # official: unbiased variance + 1e-5
_WAVELET_LEVELS = 5


def adain_raw(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Match per-image, per-channel mean and std of ``target`` to ``source`` (unclamped).

    ``(target - mean_t) / std_t * std_s + mean_s`` with std = sqrt(unbiased variance + 1e-5) over H·W.
    """
    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(-1)[..., None, None], (flat.var(-1, unbiased=True) + _ADAIN_EPS).sqrt()[..., None, None]

    mean_t, std_t = stats(target)
    mean_s, std_s = stats(source)
    return (target - mean_t) / std_t * std_s + mean_s


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    # 3x3 binomial kernel [1,2,1]⊗[1,2,1]/16, dilated by `radius`, replicate padding: an a-trous
    # ("with holes") wavelet level as in the official wavelet_color_fix.
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k[:, None] * k[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=radius)


def _wavelet_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high frequencies summed over 5 levels, final low-frequency residual)."""
    high = torch.zeros_like(x)
    low = x
    for level in range(_WAVELET_LEVELS):
        blurred = _wavelet_blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_raw(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``target`` plus low frequencies of ``source`` (unclamped)."""
    high, _ = _wavelet_split(target)
    _, low = _wavelet_split(source)
    return high + low


def check_color_fix(method: object) -> None:
    """Refuse a colour-fix name :func:`apply_color_fix` does not know (InvalidInputError listing them)."""
    if method not in ("adain", "wavelet", "none", "nofix", None):
        raise InvalidInputError(f"Unknown color_fix {method!r}; use 'adain', 'wavelet' or 'none'.")


def apply_color_fix(target: torch.Tensor, source: torch.Tensor, method: ColorFix | str) -> torch.Tensor:
    """Apply ``method`` ("adain", "wavelet" or "none") and clamp to [0, 1].

    Args:
        target: restored image ``(B, 3, H, W)`` in [0, 1].
        source: LQ image resized to the same shape, in [0, 1].
    """
    check_color_fix(method)
    if method in ("none", "nofix", None):
        return target
    if target.shape != source.shape:
        raise InvalidInputError(
            f"color_fix needs target and source of the same shape, got {tuple(target.shape)} and "
            f"{tuple(source.shape)}; resize the LQ source to the output size first."
        )
    if method == "adain":
        return adain_raw(target, source).clamp(0, 1)
    return wavelet_raw(target, source).clamp(0, 1)
