"""Size alignment and quantisation of image tensors: padding to a multiple (and cropping back), uint8
level snapping as the official scripts' PIL conversions do, and whether an input is the PIL kind the
official scripts take.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidInputError

__all__ = ["is_pil_input", "snap_to_uint8_levels", "pad_to_multiple", "crop_padding"]


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
    x: torch.Tensor, multiple: int = 8, *, mode: Literal["reflect", "replicate", "constant"] = "reflect"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(..., H, W)`` at the bottom and right so that H and W are multiples of ``multiple``.

    ``"reflect"`` needs the padding to be smaller than the axis; on an axis too small to reflect
    (e.g. a 16-px image padded to 64) that axis falls back to ``"replicate"``. ``"constant"`` pads
    with zeros.

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
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    for pad, size, spec in ((pad_h, height, (0, 0, 0, pad_h)), (pad_w, width, (0, pad_w, 0, 0))):
        if pad:
            axis_mode = "replicate" if mode == "reflect" and pad >= size else mode
            x = F.pad(x, spec, mode=axis_mode)
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
