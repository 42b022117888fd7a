"""Batched 2-D filtering with reflect padding, and unsharp masking (USM).

``filter2d`` is BasicSR's ``filter2D``: reflect-pad by ``k // 2`` and cross-correlate (``conv2d``
does not flip the kernel), with one kernel shared by the batch or one kernel per sample (a grouped
convolution, so the whole batch is one call on any device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

__all__ = ["filter2d", "usm_kernel", "usm_sharpen"]


def _check_fits(height: int, width: int, kernel_size: int) -> None:
    # Reflect padding cannot reach further than the image is wide.
    if kernel_size // 2 >= min(height, width):
        raise InvalidInputError(
            f"a {kernel_size}x{kernel_size} kernel needs images larger than {kernel_size // 2} px on each "
            f"side for reflect padding, got {height}x{width}; use a larger input (or a milder down-scale)"
        )


def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter every channel of every image with a centred odd-sized kernel.

    Args:
        img: ``(B, C, H, W)`` float tensor (any range).
        kernel: ``(k, k)`` or ``(1, k, k)`` shared by the batch, or ``(B, k, k)`` one per sample;
            ``k`` odd. Cast to ``img``'s dtype and device.

    Returns:
        ``(B, C, H, W)``: the reflect-padded cross-correlation of ``img`` with ``kernel``.
    """
    if img.ndim != 4:
        raise InvalidInputError(f"filter2d expects a (B, C, H, W) tensor, got shape {tuple(img.shape)}")
    if kernel.ndim == 2:
        kernel = kernel.unsqueeze(0)
    if kernel.ndim != 3 or kernel.shape[-1] != kernel.shape[-2] or kernel.shape[-1] % 2 == 0:
        raise InvalidInputError(
            f"filter2d expects square odd-sized kernels (k, k), (1, k, k) or (B, k, k), got {tuple(kernel.shape)}"
        )
    batch, channels, height, width = img.shape
    if kernel.shape[0] not in (1, batch):
        raise InvalidInputError(f"got {kernel.shape[0]} kernels for a batch of {batch} images; pass 1 or {batch}")
    size = kernel.shape[-1]
    _check_fits(height, width, size)
    kernel = kernel.to(device=img.device, dtype=img.dtype)
    padded = F.pad(img, [size // 2] * 4, mode="reflect")
    if kernel.shape[0] == 1:
        out = F.conv2d(padded.reshape(batch * channels, 1, *padded.shape[-2:]), kernel.view(1, 1, size, size))
    else:
        weight = kernel.repeat_interleave(channels, dim=0).view(batch * channels, 1, size, size)
        out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.view(batch, channels, height, width)


def usm_kernel(radius: int = 50) -> torch.Tensor:
    """The USM blur kernel: ``(k, k)`` float64 Gaussian, ``k`` = ``radius`` rounded up to odd, with
    OpenCV's default sigma for that window, ``0.3 ((k - 1) / 2 - 1) + 0.8`` (8.0 for k = 51), as
    ``cv2.getGaussianKernel(k, 0)`` gives in the official ``USMSharp``."""
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-offsets.square() / (2 * sigma**2))
    taps = taps / taps.sum()
    return torch.outer(taps, taps)


def usm_sharpen(
    img: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10.0
) -> torch.Tensor:
    """Unsharp masking as Real-ESRGAN sharpens its GT (``USMSharp``).

    ``residual = img - blur(img)``; pixels with ``|residual| * 255 > threshold`` form a hard mask that
    is blurred into a soft one; the output blends ``clip(img + weight * residual, 0, 1)`` into
    ``img`` with that soft mask.

    Args:
        img: ``(B, C, H, W)`` float in [0, 1]; H and W larger than ``radius // 2``.
        weight: sharpening amount. radius: Gaussian window (rounded up to odd).
        threshold: minimum residual in 0-255 units to sharpen.

    Returns:
        ``(B, C, H, W)`` float in [0, 1].
    """
    kernel = usm_kernel(radius)
    blur = filter2d(img, kernel)
    residual = img - blur
    mask = (residual.abs() * 255 > threshold).to(img.dtype)
    soft_mask = filter2d(mask, kernel)
    sharp = torch.clamp(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img
