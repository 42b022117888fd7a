"""Images in any form to one tensor form and back: PIL images, numpy arrays, torch tensors, file paths
and lists of them to ``float32 (B, 3, H, W)`` in ``[0, 1]`` (:func:`to_tensor`), and the result back in
the caller's form (:func:`from_tensor`), guided by the :class:`ImageMeta` that :func:`to_tensor` records:
PIL mode, numpy dtype and layout, torch batching/dtype/device, the alpha channel (carried through and
resized to the output) and the EXIF block (orientation already applied and reset, to write back on save).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import InvalidInputError
from .files import _SIXTEEN_BIT_MODES, ImageArray, _check_pixel_count, load_image

__all__ = ["RANGE_TOLERANCE", "ImageMeta", "check_image_tensor", "to_tensor", "from_tensor"]

#: Values this far outside [0, 1] are still accepted: float images that went through arithmetic
#: (resizing, colour conversion) overshoot by a few ulps.
RANGE_TOLERANCE = 1e-6

_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")

_ACCEPTED_TYPES = (
    "a PIL.Image.Image, an image file path (str or os.PathLike), a numpy array (H, W) or (H, W, C) "
    "with C in {1, 3, 4} (uint8, uint16 or float in [0, 1]), a float torch.Tensor (3, H, W), "
    "(B, 3, H, W), (1, H, W) or (B, 1, H, W) in [0, 1], or a list of PIL images / paths of one size"
)

_GRAY_MODES = ("1", "L", "LA", "La", "I", "F", *_SIXTEEN_BIT_MODES)

_NATIVE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F", *_SIXTEEN_BIT_MODES)


@dataclass(frozen=True, eq=False)
class ImageMeta:
    """Everything :func:`from_tensor` needs to give a result back in the caller's form.

    Attributes:
        kind: ``"pil"`` (PIL images and file paths), ``"numpy"`` (arrays, and 16-bit colour files,
            read as :class:`ImageArray`) or ``"torch"``.
        batched: True for ``(B, C, H, W)`` tensors and for lists; False for a single image.
        size: ``(H, W)`` of the input.
        mode: PIL mode of a PIL input (``"RGB"``, ``"L"``, ``"RGBA"``, ``"P"``, ``"CMYK"``,
            ``"I;16"``, ...); for a list, the mode shared by all items or None.
        alpha: ``(B, 1, H, W)`` float32 alpha in [0, 1] on the CPU, or None when the input has no
            alpha. For a list where only some items have alpha, the others are opaque (1.0).
        dtype: numpy dtype name for numpy input (``"uint8"``, ``"uint16"``, ``"float32"``, ...),
            torch dtype name for torch input (``"float32"``, ``"bfloat16"``, ...), else None.
        exif: EXIF block of a PIL input or an :class:`ImageArray` with the orientation tag removed
            (the pixels are already upright), or None.
        icc_profile: ICC profile of a PIL input or an :class:`ImageArray`, or None.
        channels: channel count of the input (1 for grayscale, 2 for gray + alpha, 3, or 4).
        layout: array layout of numpy/torch input (``"HW"``, ``"HWC"``, ``"CHW"``, ``"BCHW"``),
            None for PIL.
        device: torch device of a torch input (as a string), else None.
        batch_size: number of images (B).
        items: for a list input, one unbatched meta per item; else None.
    """

    kind: Literal["pil", "numpy", "torch"]
    batched: bool
    size: tuple[int, int]
    mode: str | None = None
    alpha: torch.Tensor | None = None
    dtype: str | None = None
    exif: bytes | None = None
    icc_profile: bytes | None = None
    channels: int = 3
    layout: Literal["HW", "HWC", "CHW", "BCHW"] | None = None
    device: str | None = None
    batch_size: int = 1
    items: tuple[ImageMeta, ...] | None = None


# ----------------------------------------------------------------------------------------------
# Validation


def _check_values(x: torch.Tensor, name: str) -> bool:
    """Finite and within [0, 1] up to RANGE_TOLERANCE (one pass over the data); True when some value
    lies in the tolerance band outside [0, 1], i.e. the caller must clamp."""
    lo, hi = (v.item() for v in torch.aminmax(x.detach()))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = (~torch.isfinite(x.detach())).sum().item()
        raise InvalidInputError(
            f"{name} contains {bad} NaN or infinite values; fix the producer of the tensor "
            "(e.g. an fp16 overflow) before passing it in"
        )
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InvalidInputError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}] but images must be in [0, 1]; scale to [0, 1] "
            "(e.g. x / 255 for 8-bit data, (x + 1) / 2 for [-1, 1] data)"
        )
    return lo < 0 or hi > 1


def _require_floating_point(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise InvalidInputError(
            f"{name} has dtype {x.dtype}; images must be floating point in [0, 1]: convert integer data with "
            "x.float() / 255 (8-bit) or x.float() / 65535 (16-bit)"
        )


def check_image_tensor(x: Any, *, name: str = "image") -> torch.Tensor:
    """Validate a ``(B, 3, H, W)`` floating-point image tensor with values in [0, 1] and return it.

    The tensor is returned unchanged (same object, device, dtype and autograd graph).

    Raises:
        InvalidInputError: not a tensor, not floating point, wrong shape, empty, NaN/inf, or values
            outside [0, 1] (beyond ``RANGE_TOLERANCE``).
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    _require_floating_point(x, name)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InvalidInputError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise InvalidInputError(f"{name} is empty (shape {tuple(x.shape)}); an image needs at least one pixel")
    _check_values(x, name)
    return x


# ----------------------------------------------------------------------------------------------
# Into tensors


def _pil_to_array(image: Image.Image) -> tuple[np.ndarray, float]:
    """PIL image -> (H, W, C) array in a mode numpy can hold exactly, and the value that maps to 1.0."""
    if image.mode not in _NATIVE_MODES:
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode == "La":
            image = image.convert("LA")
        elif image.mode in ("RGBa", "PA") or (image.mode == "P" and _palette_has_alpha(image)):
            image = image.convert("RGBA")
        else:  # P without transparency, CMYK, YCbCr, LAB, HSV, RGBX
            image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if image.mode in _SIXTEEN_BIT_MODES:
        return array, 65535.0
    if image.mode == "I":  # 32-bit integer mode: 16-bit data as read by some plugins
        if array.min() < 0 or array.max() > 65535:
            raise InvalidInputError(
                f"mode-I image has values in [{array.min()}, {array.max()}]; only 16-bit data (0..65535) "
                "is supported, rescale it"
            )
        return array, 65535.0
    if image.mode == "F":
        return array, 1.0
    return array, 255.0


def _palette_has_alpha(image: Image.Image) -> bool:
    return "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")


def _array_to_tensor(array: np.ndarray, scale: float, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H, W, C) array, C in {1, 2, 3, 4} -> ((1, 3, H, W) float32 [0,1], (1, 1, H, W) alpha or None)."""
    values = torch.from_numpy(np.array(array, dtype=np.float32, copy=True)).permute(2, 0, 1)[None]
    if scale != 1.0:
        values = values / scale
    elif _check_values(values, name):
        values.clamp_(0, 1)
    channels = values.shape[1]
    color = values[:, :3] if channels >= 3 else values[:, :1].expand(-1, 3, -1, -1)
    alpha = values[:, channels - 1 :] if channels in (2, 4) else None
    return color.contiguous(), alpha


def _from_pil(image: Image.Image, max_pixels: int | None, name: str) -> tuple[torch.Tensor, ImageMeta]:
    width, height = image.size
    _check_pixel_count(height, width, max_pixels, name)
    upright = ImageOps.exif_transpose(image)
    array, scale = _pil_to_array(upright)
    tensor, alpha = _array_to_tensor(array, scale, name)
    meta = ImageMeta(
        kind="pil",
        batched=False,
        size=tuple(tensor.shape[-2:]),
        mode=image.mode,
        alpha=alpha,
        exif=upright.info.get("exif") or None,
        icc_profile=upright.info.get("icc_profile") or None,
        channels=len(image.getbands()),
    )
    return tensor, meta


def _from_numpy(array: np.ndarray, max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    if array.ndim not in (2, 3):
        raise InvalidInputError(
            f"numpy image must be (H, W) or (H, W, C), got shape {array.shape}; pass a batch as a list or "
            "as a (B, 3, H, W) torch tensor"
        )
    layout = "HW" if array.ndim == 2 else "HWC"
    hwc = array[:, :, None] if array.ndim == 2 else array
    channels = hwc.shape[2]
    if channels not in (1, 3, 4):
        hint = " (it looks channels-first: transpose it to (H, W, C))" if array.shape[0] in (1, 3, 4) else ""
        raise InvalidInputError(f"numpy image of shape {array.shape} has {channels} channels, expected 1, 3 or 4{hint}")
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        scale = 1.0
    else:
        raise InvalidInputError(
            f"numpy image has dtype {array.dtype}; supported are uint8, uint16 and float (values in [0, 1])"
        )
    _check_pixel_count(hwc.shape[0], hwc.shape[1], max_pixels, f"numpy image of shape {array.shape}")
    tensor, alpha = _array_to_tensor(hwc, scale, f"numpy image ({array.dtype})")
    info = array.info if isinstance(array, ImageArray) else {}
    meta = ImageMeta(
        kind="numpy",
        batched=False,
        size=(hwc.shape[0], hwc.shape[1]),
        alpha=alpha,
        dtype=array.dtype.name,
        exif=info.get("exif") or None,
        icc_profile=info.get("icc_profile") or None,
        channels=channels,
        layout=layout,
    )
    return tensor, meta


def _from_file(path: str | os.PathLike, max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    image = load_image(path, max_pixels=max_pixels)
    if isinstance(image, ImageArray):  # 16-bit colour
        return _from_numpy(image, max_pixels)
    return _from_pil(image, max_pixels, f"image {str(path)!r}")


def _from_torch(x: torch.Tensor, max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    _require_floating_point(x, "torch image")
    if x.ndim not in (3, 4) or x.shape[-3] not in (1, 3):
        raise InvalidInputError(
            f"torch image must have shape (3, H, W), (B, 3, H, W), (1, H, W) or (B, 1, H, W), got {tuple(x.shape)}"
        )
    batched = x.ndim == 4
    channels = x.shape[-3]
    _check_pixel_count(x.shape[-2], x.shape[-1], max_pixels, f"torch image of shape {tuple(x.shape)}")
    images = (x if batched else x[None]).to(torch.float32)
    if channels == 1:
        images = images.repeat(1, 3, 1, 1)
    check_image_tensor(images, name="torch image")
    lo, hi = torch.aminmax(images)
    if lo < 0 or hi > 1:  # a few ulps outside [0, 1], within RANGE_TOLERANCE
        images = images.clamp(0, 1)
    meta = ImageMeta(
        kind="torch",
        batched=batched,
        size=(x.shape[-2], x.shape[-1]),
        dtype=str(x.dtype).removeprefix("torch."),
        channels=channels,
        layout="BCHW" if batched else "CHW",
        device=str(x.device),
        batch_size=images.shape[0],
    )
    return images, meta


def _from_list(items: Sequence[Any], max_pixels: int | None) -> tuple[torch.Tensor, ImageMeta]:
    if len(items) == 0:
        raise InvalidInputError("the list of images is empty; pass at least one image")
    tensors, metas = [], []
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            tensor, meta = _from_file(item, max_pixels)
        elif isinstance(item, Image.Image):
            tensor, meta = _from_pil(item, max_pixels, f"list item {index}")
        else:
            raise InvalidInputError(
                f"list item {index} is a {type(item).__name__}; a list may hold PIL images or file paths only "
                "(stack tensors into one (B, 3, H, W) tensor instead)"
            )
        tensors.append(tensor)
        metas.append(meta)
    sizes = {meta.size for meta in metas}
    if len(sizes) > 1:
        raise InvalidInputError(
            f"images in one list must share one size, got (H, W) sizes {sorted(sizes)}; resize them or "
            "process them one at a time"
        )
    modes = {meta.mode for meta in metas}
    alpha = None
    if any(meta.alpha is not None for meta in metas):
        alpha = torch.cat([m.alpha if m.alpha is not None else torch.ones_like(t[:, :1]) for m, t in zip(metas, tensors)])
    meta = ImageMeta(
        kind="pil",
        batched=True,
        size=metas[0].size,
        mode=modes.pop() if len(modes) == 1 else None,
        alpha=alpha,
        batch_size=len(metas),
        items=tuple(metas),
    )
    return torch.cat(tensors), meta


def to_tensor(images: Any, *, max_pixels: int | None = None) -> tuple[torch.Tensor, ImageMeta]:
    """Convert any supported image input to a float32 ``(B, 3, H, W)`` tensor in [0, 1].

    Accepts a PIL image; an image file path (str or os.PathLike, read with :func:`load_image`: a
    16-bit colour file is an :class:`ImageArray` from then on); a numpy array ``(H, W)`` or
    ``(H, W, C)`` with C in {1, 3, 4}, dtype uint8 (/255), uint16 (/65535) or float in [0, 1]; a
    float torch tensor ``(3, H, W)``, ``(B, 3, H, W)``, ``(1, H, W)`` or ``(B, 1, H, W)`` in [0, 1];
    or a list of PIL images / paths of one size.

    Grayscale becomes three equal channels; an alpha channel (RGBA, LA, palette transparency,
    4-channel arrays) is split off into ``meta.alpha``; palette and CMYK/YCbCr/LAB/HSV become RGB(A);
    16-bit data keeps its precision; PIL inputs are turned upright by their EXIF orientation.
    The result lives on the CPU, except for torch input, which keeps its device (and autograd graph).

    Returns:
        ``(images, meta)``: images ``float32 (B, 3, H, W)`` in [0, 1], and the :class:`ImageMeta`
        that :func:`from_tensor` needs to return a result in the input's form.

    Raises:
        InvalidInputError: unsupported type, empty/0-size image, wrong channel count, integer torch
            tensor, NaN/inf, float values outside [0, 1], list of mixed sizes.
        ImageDecodeError: a path that is not a readable image.
        ImageTooLargeError: an image with more than ``max_pixels`` pixels.
    """
    if isinstance(images, Image.Image):
        return _from_pil(images, max_pixels, "PIL image")
    if isinstance(images, (str, os.PathLike)):
        return _from_file(images, max_pixels)
    if isinstance(images, np.ndarray):
        return _from_numpy(images, max_pixels)
    if isinstance(images, torch.Tensor):
        return _from_torch(images, max_pixels)
    if isinstance(images, (list, tuple)):
        return _from_list(images, max_pixels)
    raise InvalidInputError(f"unsupported image type {type(images).__module__}.{type(images).__name__}; expected {_ACCEPTED_TYPES}")


# ----------------------------------------------------------------------------------------------
# Back to the caller's form


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) with PIL's convert("L") weights."""
    weights = images.new_tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _resized_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(alpha.shape[-2:]) == size:
        return alpha
    return F.interpolate(alpha, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _quantize(values: torch.Tensor, maximum: int, dtype: np.dtype) -> np.ndarray:
    """Float [0, 1] -> integers 0..maximum, round to nearest (ties to even), clamped."""
    return (values.clamp(0, 1) * maximum).round().numpy().astype(dtype)


def _to_pil(image: torch.Tensor, meta: ImageMeta) -> Image.Image:
    """(1, 3, H', W') float in [0, 1] -> PIL image in the output mode for ``meta.mode``."""
    gray = meta.mode in _GRAY_MODES
    plane = _luma(image) if gray else image
    size = tuple(image.shape[-2:])
    if meta.mode in _SIXTEEN_BIT_MODES or meta.mode == "I":
        out = Image.fromarray(_quantize(plane[0, 0], 65535, np.uint16))  # mode I;16
        if meta.mode == "I":
            out = out.convert("I")
    elif meta.mode == "F":
        out = Image.fromarray(plane[0, 0].clamp(0, 1).numpy().astype(np.float32))  # mode F
    else:
        if meta.alpha is not None:
            plane = torch.cat([plane, _resized_alpha(meta.alpha, size)], dim=1)
        array = _quantize(plane[0].permute(1, 2, 0), 255, np.uint8)
        out = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if meta.exif:
        out.info["exif"] = meta.exif
    if meta.icc_profile:
        out.info["icc_profile"] = meta.icc_profile
    return out


def _to_numpy(image: torch.Tensor, meta: ImageMeta) -> np.ndarray:
    """(1, 3, H', W') float in [0, 1] -> array with the input's dtype, channels and layout."""
    planes = _luma(image) if meta.channels == 1 else image
    if meta.channels == 4:
        planes = torch.cat([planes, _resized_alpha(meta.alpha, tuple(image.shape[-2:]))], dim=1)
    hwc = planes[0].permute(1, 2, 0)
    dtype = np.dtype(meta.dtype)
    if dtype == np.uint8:
        array = _quantize(hwc, 255, dtype)
    elif dtype == np.uint16:
        array = _quantize(hwc, 65535, dtype)
    else:
        array = hwc.clamp(0, 1).numpy().astype(dtype)
    array = array[:, :, 0] if meta.layout == "HW" else array
    if meta.exif or meta.icc_profile:  # the input was an ImageArray carrying them
        info = {"exif": meta.exif, "icc_profile": meta.icc_profile}
        return ImageArray(array, {key: value for key, value in info.items() if value})
    return array


def _to_torch(images: torch.Tensor, meta: ImageMeta) -> torch.Tensor:
    out = images.clamp(0, 1)
    if meta.channels == 1:
        out = _luma(out)
    out = out.to(device=meta.device, dtype=getattr(torch, meta.dtype))
    return out if meta.batched else out[0]


def from_tensor(images: torch.Tensor, meta: ImageMeta) -> Any:
    """Convert a result tensor back to the form :func:`to_tensor` was given.

    Args:
        images: ``(B, 3, H', W')`` float in [0, 1]; H', W' may differ from the input size (an
            upscaled result). Values are clamped to [0, 1].
        meta: the meta returned by :func:`to_tensor` for the input.

    Returns:
        * PIL input: a PIL image (a list of them for a list input). 8-bit RGB, or RGBA when the
          input had alpha (alpha resized bilinearly to (H', W')); grayscale inputs give ``"L"``
          (``"LA"`` with alpha), 16-bit inputs ``"I;16"`` (``"I"``/``"F"`` inputs keep their mode);
          palette/CMYK/other colour modes give RGB(A). ``info["exif"]``/``["icc_profile"]`` are set
          from the input so :func:`save_image` writes them back.
        * numpy input (and 16-bit colour files, read as :class:`ImageArray`): an array with the
          input's dtype and layout (``(H', W')`` for 2-D input, ``(H', W', C)`` otherwise, alpha
          re-attached for 4 channels); an :class:`ImageArray` with the input's ``info["exif"]`` /
          ``["icc_profile"]`` when the input carried them, so :func:`save_image` writes them back.
        * torch input: a tensor with the input's batching, channel count, dtype and device.
        Integer outputs are rounded to nearest, not truncated.

    Raises:
        InvalidInputError: wrong shape/dtype, a batch size that does not match ``meta``, NaN/inf.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(f"from_tensor expects a float (B, 3, H, W) tensor, got {shape}")
    if images.shape[0] != meta.batch_size:
        raise InvalidInputError(
            f"from_tensor got a batch of {images.shape[0]} images but the input had {meta.batch_size}"
        )
    if not torch.isfinite(images.detach()).all():
        raise InvalidInputError("the result tensor contains NaN or infinite values; it cannot be converted to an image")
    if meta.items is not None:
        return [from_tensor(images[i : i + 1], item) for i, item in enumerate(meta.items)]
    if meta.kind == "torch":
        return _to_torch(images, meta)
    images = images.detach().to("cpu", torch.float32)
    if meta.kind == "numpy":
        return _to_numpy(images, meta)
    return _to_pil(images, meta)

