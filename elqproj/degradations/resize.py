"""Resizing exactly as the Real-ESRGAN degradation calls ``F.interpolate``.

Two details matter for parity: there is no antialiasing (down-scaling aliases, on purpose), and with
``scale_factor`` the bilinear/bicubic sampling positions use ``1 / scale_factor`` rather than the
ratio of the integer sizes, which gives different values from passing ``size``. ``area`` is adaptive
average pooling; bicubic overshoots [0, 1] (the next step clamps).
"""

from __future__ import annotations

import math
from typing import get_args

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from .config import ResizeMode

__all__ = ["resize"]

_MODES = get_args(ResizeMode)


def resize(
    img: torch.Tensor,
    mode: ResizeMode,
    *,
    size: tuple[int, int] | None = None,
    scale_factor: float | None = None,
) -> torch.Tensor:
    """Resize a ``(B, C, H, W)`` float batch to ``size`` (H', W') or by ``scale_factor``.

    With ``scale_factor`` the output is ``floor(H * scale_factor)`` by ``floor(W * scale_factor)``.
    Exactly one of ``size`` and ``scale_factor`` must be given.
    """
    if mode not in _MODES:
        raise InvalidInputError(f"resize mode must be one of {_MODES}, got {mode!r}")
    if (size is None) == (scale_factor is None):
        raise InvalidInputError("resize needs exactly one of size and scale_factor")
    height, width = img.shape[-2:]
    out_size = size if size is not None else (math.floor(height * scale_factor), math.floor(width * scale_factor))
    if min(out_size) < 1:
        raise InvalidInputError(
            f"resizing {height}x{width} to {out_size[0]}x{out_size[1]} leaves no pixels; use a larger input "
            "or a milder down-scale"
        )
    align_corners = None if mode == "area" else False
    if size is not None:
        return F.interpolate(img, size=tuple(size), mode=mode, align_corners=align_corners)
    return F.interpolate(img, scale_factor=scale_factor, mode=mode, align_corners=align_corners)
