"""Size alignment and quantisation of image tensors: padding to a multiple and a minimum side (and
cropping back), the pixel budget of the size a model will process, uint8 level snapping as the official
scripts' PIL conversions do, and whether an input is the PIL kind the official scripts take.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ImageTooLargeError, InvalidInputError
from .files import resolve_max_pixels

__all__ = ["is_pil_input", "snap_to_uint8_levels", "pad_to_multiple", "crop_padding", "check_processing_size"]


def is_pil_input(image: Any) -> bool:
    """True for a PIL image or a non-empty list/tuple of them (the inputs official scripts take)."""
    if isinstance(image, Image.Image):
        return True
    return isinstance(image, (list, tuple)) and bool(image) and all(isinstance(i, Image.Image) for i in image)


def snap_to_uint8_levels(x: torch.Tensor, *, truncate: bool) -> torch.Tensor:
    """Snap [0, 1] values to k/255 as a uint8 conversion would, staying float.

    ``truncate=True`` is torchvision's ``ToPILImage`` (``mul(255).byte()``, used by the official
    OSEDiff/S3Diff scripts and colour fixes); ``False`` rounds like diffusers' ``numpy_to_pil``.
    """
    scaled = x.clamp(0, 1) * 255
    return (scaled.floor() if truncate else scaled.round()) / 255


def pad_to_multiple(
    x: torch.Tensor, multiple: int = 8, *, mode: Literal["reflect", "replicate", "constant"] = "reflect",
    min_side: int = 1,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(..., H, W)`` at the bottom and right so that H and W are multiples of ``multiple`` and at
    least ``min_side`` (a model's smallest input, e.g. one latent pixel at the UNet's deepest level).

    ``"reflect"`` mirrors the image at its edge, repeatedly where the padding is wider than the axis (a
    16-px image padded to 64); an axis of one pixel is replicated. ``"constant"`` pads with zeros.

    Returns:
        ``(padded, (pad_h, pad_w))``; ``x`` itself when no padding is needed. Undo with
        :func:`crop_padding`.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise InvalidInputError(f"pad_to_multiple expects a tensor (..., H, W) with at least 3 dims, got "
                                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if multiple < 1:
        raise InvalidInputError(f"multiple must be a positive integer, got {multiple}")
    if mode not in ("reflect", "replicate", "constant"):
        raise InvalidInputError(f"unknown padding mode {mode!r}; use 'reflect', 'replicate' or 'constant'")
    height, width = x.shape[-2:]
    pad_h, pad_w = (-max(height, min_side)) % multiple + max(min_side - height, 0), \
        (-max(width, min_side)) % multiple + max(min_side - width, 0)
    for axis, pad in ((-2, pad_h), (-1, pad_w)):
        while pad:  # reflect pads at most size - 1 at a time: mirror again until wide enough
            size = x.shape[axis]
            step = pad if mode != "reflect" else min(pad, size - 1) or pad
            axis_mode = "replicate" if mode == "reflect" and size == 1 else mode
            x = F.pad(x, (0, 0, 0, step) if axis == -2 else (0, step, 0, 0), mode=axis_mode)
            pad -= step
    return x, (pad_h, pad_w)


def crop_padding(x: torch.Tensor, pad: tuple[int, int], *, scale: int = 1) -> torch.Tensor:
    """Remove the bottom/right padding added by :func:`pad_to_multiple` from ``x``.

    ``x`` may be ``scale`` times the padded input (an upscaled output): ``pad_h * scale`` rows and
    ``pad_w * scale`` columns are removed.
    """
    pad_h, pad_w = pad[0] * scale, pad[1] * scale
    height, width = x.shape[-2:]
    if pad_h < 0 or pad_w < 0 or pad_h >= height or pad_w >= width:
        raise InvalidInputError(
            f"cannot remove padding {pad} x{scale} from a tensor of size {height}x{width} (H x W)"
        )
    return x[..., : height - pad_h, : width - pad_w]


def check_processing_size(input_size: tuple[int, int], processed_size: tuple[int, int], *, how: str,
                          max_pixels: int | None = None) -> None:
    """Refuse, before anything is allocated, a size a model would process that exceeds the pixel budget.

    Args:
        input_size, processed_size: ``(H, W)`` of the caller's image and of what the model would run on.
        how: the settings that produced ``processed_size`` (named in the error, e.g. ``"upscale=4,
            process_size=512"``).
        max_pixels: the budget (default :func:`~elqproj.imageio.resolve_max_pixels`: ``ELQPROJ_MAX_PIXELS``
            or 8192², the limit images are read with).

    Raises:
        ImageTooLargeError: naming both sizes and what to change. A thin strip such as 1×4000 px, which
        the 512-px minimum side would blow up to 512×2,048,000, ends here instead of in a 12 GB allocation.
    """
    limit = resolve_max_pixels(max_pixels)
    (in_h, in_w), (h, w) = input_size, processed_size
    if h * w > limit:
        raise ImageTooLargeError(
            f"A {in_h}x{in_w} (H x W) image would be processed at {h}x{w} = {h * w:,} pixels ({how}), above the "
            f"pixel budget of {limit:,}. Lower upscale= / process_size= (0 turns the enlargement off), crop an "
            "extreme aspect ratio, or raise the budget with max_pixels= or ELQPROJ_MAX_PIXELS."
        )
