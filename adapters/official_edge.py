"""The edge of a restorer: what the official scripts do to an image before and after their model, shared
by the adapters' ``restore`` (the pipeline calls the tensor core and uses none of it but the colour fix).

**Sizing** (OSEDiff and SeeSR; PIL in, as the scripts do, and the same rule on tensors): both scripts first enlarge an image whose side is below ``process_size // upscale`` so that its short
side equals that floor (sizes truncated with ``int``), then resize by ``upscale``, then resize to the
next lower multiple of 8 — with Lanczos in ``test_osediff.py`` and bicubic in SeeSR's ``test_seesr.py``.

**Colour fix** (all three): the restored image is pulled towards its upscaled LQ reference; for PIL input
the scripts go through uint8 on the way (:func:`color_fix_like_official`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image

from elqproj.colorfix import ColorFix, apply_color_fix
from elqproj.imageio import check_processing_size, snap_to_uint8_levels

__all__ = ["pre_enlarged_size", "upscale_like_official", "upscale_tensor", "color_fix_like_official"]


def pre_enlarged_size(width: int, height: int, *, process_size: int, upscale: int) -> tuple[int, int]:
    """``(width, height)`` after the scripts' first step: unchanged unless a side is below
    ``process_size // upscale``, else scaled so that the short side equals it (truncated with ``int``).

    Raises:
        ImageTooLargeError: the size the model would then run at (×``upscale``) is over the pixel budget
            (:func:`~elqproj.imageio.check_processing_size`): checked here, before any resize allocates it.
    """
    floor = process_size // upscale
    new_w, new_h = width, height
    if width < floor or height < floor:
        scale = floor / min(width, height)
        new_w, new_h = int(scale * width), int(scale * height)
    check_processing_size((height, width), (new_h * upscale, new_w * upscale),
                          how=f"upscale={upscale}, process_size={process_size}")
    return new_w, new_h


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


def color_fix_like_official(restored: torch.Tensor, reference: torch.Tensor, method: ColorFix | str, *,
                            official_pil: bool, output_levels: Literal["truncate", "round"] = "truncate") -> torch.Tensor:
    """Colour-fix ``restored`` towards ``reference`` (both ``(B, 3, H, W)`` in [0, 1], same size), as the
    scripts do.

    With ``official_pil`` the scripts' uint8 steps are repeated: the model output becomes uint8
    (``output_levels``: truncated by torchvision's ``ToPILImage`` in OSEDiff and S3Diff, rounded by
    diffusers' ``numpy_to_pil`` in SeeSR), the reference is read back as uint8 (truncated; a no-op for a
    reference that was a PIL image), and the corrected image is truncated to uint8 once more. Otherwise
    the images stay float.
    """
    if official_pil:
        restored = snap_to_uint8_levels(restored, truncate=output_levels == "truncate")
        reference = snap_to_uint8_levels(reference, truncate=True)
    fixed = apply_color_fix(restored, reference.to(restored.device, restored.dtype), method)
    return snap_to_uint8_levels(fixed, truncate=True) if official_pil else fixed
