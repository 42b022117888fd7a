"""Batched 2-D filtering with reflect padding, and unsharp masking (USM).

``filter2d`` is BasicSR's ``filter2D``: reflect-pad by ``k // 2`` and cross-correlate (``conv2d``
does not flip the kernel), with one kernel shared by the batch or one kernel per sample (a grouped
convolution, so the whole batch is one call on any device). ``filter2d_separable`` is the same for a
kernel that is an outer product of 1-D taps (USM's Gaussian): two 1-D passes, 2k multiply-adds per
pixel instead of k², equal to ``filter2d`` with ``outer(taps, taps)`` up to float round-off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

__all__ = ["filter2d", "filter2d_separable", "usm_kernel", "usm_sharpen", "usm_taps"]


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


def filter2d_separable(img: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Filter every channel of every image with the kernel ``outer(taps, taps)``, as :func:`filter2d`
    does (reflect padding by ``k // 2``, cross-correlation), in two 1-D passes.

    Args:
        img: ``(B, C, H, W)`` float tensor (any range).
        taps: ``(k,)``, ``k`` odd; cast to ``img``'s dtype and device.

    Returns:
        ``(B, C, H, W)``.
    """
    if img.ndim != 4 or taps.ndim != 1 or taps.shape[0] % 2 == 0:
        raise InvalidInputError(f"filter2d_separable expects (B, C, H, W) and odd (k,) taps, got {tuple(img.shape)} "
                                f"and {tuple(taps.shape)}")
    batch, channels, height, width = img.shape
    size = taps.shape[0]
    _check_fits(height, width, size)
    taps = taps.to(device=img.device, dtype=img.dtype)
    padded = F.pad(img, [size // 2] * 4, mode="reflect").reshape(batch * channels, 1, height + size - 1, width + size - 1)
    rows = F.conv2d(padded, taps.view(1, 1, 1, size))  # along W: (B·C, 1, H + k - 1, W)
    return F.conv2d(rows, taps.view(1, 1, size, 1)).view(batch, channels, height, width)  # along H


def usm_taps(radius: int = 50) -> torch.Tensor:
    """The 1-D taps of the USM blur: ``(k,)`` float64 Gaussian, ``k`` = ``radius`` rounded up to odd, with
    OpenCV's default sigma for that window, ``0.3 ((k - 1) / 2 - 1) + 0.8`` (8.0 for k = 51), as
    ``cv2.getGaussianKernel(k, 0)`` gives in the official ``USMSharp``."""
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-offsets.square() / (2 * sigma**2))
    return taps / taps.sum()


def usm_kernel(radius: int = 50) -> torch.Tensor:
    """The USM blur kernel ``(k, k)`` float64: ``outer(usm_taps(radius), usm_taps(radius))``, the official
    ``USMSharp`` buffer."""
    taps = usm_taps(radius)
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
    taps = usm_taps(radius)  # the official 51x51 Gaussian is separable: two 1-D passes
    blur = filter2d_separable(img, taps)
    residual = img - blur
    mask = (residual.abs() * 255 > threshold).to(img.dtype)
    soft_mask = filter2d_separable(mask, taps)
    sharp = torch.clamp(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img
