"""How the official OSEDiff and SeeSR scripts size an LQ image before their model sees it, shared by the
adapters (PIL in, as the scripts do; and the same rule on tensors).

Both scripts first enlarge an image whose side is below ``process_size // upscale`` so that its short
side equals that floor (sizes truncated with ``int``), then resize by ``upscale``, then resize to the
next lower multiple of 8 — with Lanczos in ``test_osediff.py`` and bicubic in SeeSR's ``test_seesr.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["pre_enlarged_size", "upscale_like_official", "upscale_tensor"]


def pre_enlarged_size(width: int, height: int, *, process_size: int, upscale: int) -> tuple[int, int]:
    """``(width, height)`` after the scripts' first step: unchanged unless a side is below
    ``process_size // upscale``, else scaled so that the short side equals it (truncated with ``int``)."""
    floor = process_size // upscale
    if width < floor or height < floor:
        scale = floor / min(width, height)
        return int(scale * width), int(scale * height)
    return width, height


def upscale_like_official(image: Image.Image, *, process_size: int, upscale: int,
                          final_filter: Image.Resampling) -> Image.Image:
    """The scripts' PIL chain for one RGB image: pre-enlargement and ×``upscale`` (bicubic), then a
    resize with ``final_filter`` to the next lower multiple of 8 (a resize, not a crop)."""
    size = pre_enlarged_size(*image.size, process_size=process_size, upscale=upscale)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    image = image.resize((w * upscale, h * upscale), Image.BICUBIC)
    w, h = image.size
    return image.resize((w - w % 8, h - h % 8), final_filter)


def upscale_tensor(x: torch.Tensor, *, process_size: int, upscale: int) -> torch.Tensor:
    """Tensor counterpart of :func:`upscale_like_official` for ``(B, 3, H, W)`` in [0, 1], without the
    multiple-of-8 resize (the tensor path pads and crops instead, keeping the exact scale)."""
    h, w = x.shape[-2:]
    new_w, new_h = pre_enlarged_size(w, h, process_size=process_size, upscale=upscale)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False)
    if upscale != 1:
        x = F.interpolate(x, size=(new_h * upscale, new_w * upscale), mode="bicubic", align_corners=False)
    return x.clamp(0, 1)
