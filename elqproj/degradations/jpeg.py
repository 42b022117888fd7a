"""Differentiable JPEG (BasicSR's ``DiffJPEG``) with a per-sample quality, batched on any device.

Written by hand because no installed library implements this exact variant, whose numerics the
Real-ESRGAN degradations depend on:

* the image (times 255, not rounded) goes to full-range YCbCr (JFIF matrix), chroma is 2×2
  average-pooled (4:2:0), and each plane is cut into 8×8 blocks after zero-padding the image at the
  bottom/right to a multiple of 16;
* blocks get the orthonormal 2-D DCT of ``value - 128`` and are divided by ``table × factor``, where
  ``factor`` is 50 / q below quality 50 and (200 − 2q) / 100 above (libjpeg's rule), and the tables
  are **not** rounded or clamped to [1, 255] as libjpeg does, so below about q = 25 this quantises
  more coarsely than a real JPEG;
* the tables are indexed transposed with respect to the JPEG standard (coefficient (u, v), u the
  vertical frequency, is divided by the standard entry at row v, column u), as DiffJPEG does;
* decoding multiplies back, inverts the DCT, repeats chroma 2×2, converts to RGB, clamps to
  [0, 255] and crops the padding.

``differentiable=True`` replaces ``round(x)`` by ``round(x) + (x − round(x))³`` (DiffJPEG's
approximation), which has a useful gradient; ``False`` uses ``torch.round`` (half to even).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

__all__ = ["JpegCoefficients", "jpeg_quality_to_factor", "jpeg_encode", "jpeg_decode", "diff_jpeg"]

# JPEG standard (ITU-T T.81, Annex K) quantisation tables, rows = vertical frequency.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)
# JFIF full-range colour conversion.
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
_CHROMA_OFFSET = 128.0


class JpegCoefficients(NamedTuple):
    """Quantised DCT coefficients, one 8×8 block per row in raster block order.

    ``y``: ``(B, H/8 · W/8, 8, 8)``; ``cb``, ``cr``: ``(B, H/16 · W/16, 8, 8)`` (H, W padded to 16).
    Integers (stored as float) unless encoded with ``differentiable=True``.
    """

    y: torch.Tensor
    cb: torch.Tensor
    cr: torch.Tensor


def _dct_basis(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 2-D orthonormal DCT-II of an 8×8 block as a (64, 64) matrix acting on row-major blocks:
    ``K[8u + v, 8x + y] = C[u, x] C[v, y]`` with ``C[u, x] = a(u)/2 · cos((2x + 1) u π / 16)``,
    a(0) = 1/√2. One GEMM per plane (as DiffJPEG's ``tensordot``); ``K⁻¹ = Kᵀ``."""
    index = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * index[None, :] + 1) * index[:, None] * math.pi / 16) / 2
    basis[0] /= math.sqrt(2)
    return torch.kron(basis, basis).to(dtype=dtype, device=device)


def _table(values: tuple[tuple[int, ...], ...], like: torch.Tensor) -> torch.Tensor:
    """A quantisation table, transposed as DiffJPEG uses it, flattened to (64,) row-major."""
    return torch.tensor(values, dtype=torch.float32).T.reshape(64).to(dtype=like.dtype, device=like.device)


def _convert_colours(img: torch.Tensor, matrix: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    """Apply a 3×3 colour matrix to (B, 3, H, W) (a batched matmul: several times faster on CPU than
    einsum or a 1×1 convolution). The constants are rounded to float32 as in the official module."""
    weight = torch.tensor(matrix, dtype=torch.float32).to(dtype=img.dtype, device=img.device)
    return (weight @ img.flatten(2)).view(img.shape)


def jpeg_quality_to_factor(quality: float | torch.Tensor) -> torch.Tensor:
    """Quantisation-table multiplier for JPEG ``quality`` in [1, 100] (scalar or ``(B,)``).

    Returns a float32 tensor of the same shape; the input is never modified (the official module
    overwrites a tensor quality with the factors in place).
    """
    quality = torch.as_tensor(quality, dtype=torch.float32)
    if quality.numel() and (bool((quality < 1).any()) or bool((quality > 100).any())):
        raise InvalidInputError(f"JPEG quality must lie in [1, 100], got {quality.tolist()}")
    # Same float32 operation order as DiffJPEG's quality_to_factor.
    return torch.where(quality < 50, 5000.0 / quality, 200.0 - quality * 2) / 100.0


def _round(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    rounded = torch.round(x)
    return rounded + (x - rounded) ** 3 if differentiable else rounded


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → (B, H/8 · W/8, 64): row-major 8×8 blocks in raster block order."""
    batch, height, width = plane.shape
    blocks = plane.reshape(batch, height // 8, 8, width // 8, 8).permute(0, 1, 3, 2, 4)
    return blocks.reshape(batch, -1, 64)


def _from_blocks(blocks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H/8 · W/8, 64) → (B, H, W)."""
    batch = blocks.shape[0]
    plane = blocks.reshape(batch, height // 8, width // 8, 8, 8).permute(0, 1, 3, 2, 4)
    return plane.reshape(batch, height, width)


def _factor_per_sample(factor: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) factor as (B or 1, 1, 1), broadcasting over (B, blocks, 64)."""
    factor = factor.to(device=like.device)
    if factor.ndim != 0 and factor.shape != (batch,):
        raise InvalidInputError(f"got {factor.numel()} JPEG qualities for a batch of {batch} images")
    return factor.reshape(-1, 1, 1)


def jpeg_encode(img: torch.Tensor, factor: torch.Tensor, *, differentiable: bool = False) -> JpegCoefficients:
    """Quantised DCT coefficients of ``img`` (B, 3, H, W) in [0, 1] with H, W multiples of 16.

    ``factor``: scalar or ``(B,)`` table multiplier from :func:`jpeg_quality_to_factor`.
    """
    batch, _, height, width = img.shape
    factor = _factor_per_sample(factor, batch, img)
    dct = _dct_basis(img.dtype, img.device)
    ycbcr = _convert_colours(img * 255, _RGB_TO_YCBCR)
    luma = ycbcr[:, 0]
    chroma = F.avg_pool2d(ycbcr[:, 1:] + _CHROMA_OFFSET, kernel_size=2, stride=2)
    planes = {"y": luma, "cb": chroma[:, 0], "cr": chroma[:, 1]}
    tables = {"y": _table(_LUMA_TABLE, img), "cb": _table(_CHROMA_TABLE, img), "cr": _table(_CHROMA_TABLE, img)}
    coefficients = {}
    for name, plane in planes.items():
        blocks = (_to_blocks(plane) - 128) @ dct.T
        quantised = _round(blocks / (tables[name] * factor), differentiable)
        coefficients[name] = quantised.view(batch, -1, 8, 8)
    return JpegCoefficients(**coefficients)


def jpeg_decode(coefficients: JpegCoefficients, factor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Decode :func:`jpeg_encode`'s output back to ``(B, 3, height, width)`` RGB in [0, 1]."""
    like = coefficients.y
    batch = like.shape[0]
    factor = _factor_per_sample(factor, batch, like)
    dct = _dct_basis(like.dtype, like.device)
    luma_table, chroma_table = _table(_LUMA_TABLE, like), _table(_CHROMA_TABLE, like)
    planes = []
    for name, table in (("y", luma_table), ("cb", chroma_table), ("cr", chroma_table)):
        quantised = getattr(coefficients, name).reshape(batch, -1, 64)
        blocks = (quantised * (table * factor)) @ dct + 128
        if name == "y":
            planes.append(_from_blocks(blocks, height, width))
        else:
            plane = _from_blocks(blocks, height // 2, width // 2) - _CHROMA_OFFSET
            half_h, half_w = plane.shape[-2:]  # chroma upsampling: repeat each sample 2×2
            planes.append(plane[:, :, None, :, None].expand(batch, half_h, 2, half_w, 2).reshape(batch, height, width))
    rgb = _convert_colours(torch.stack(planes, dim=1), _YCBCR_TO_RGB)
    return torch.clamp(rgb, 0, 255) / 255


def diff_jpeg(img: torch.Tensor, quality: float | torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
    """JPEG-compress and decode a batch, as BasicSR's ``DiffJPEG``.

    Args:
        img: ``(B, 3, H, W)`` float RGB in [0, 1] (any H, W: padded to 16 and cropped back).
        quality: JPEG quality in [1, 100], a float, scalar or ``(B,)`` (one per sample).
        differentiable: use the cubic rounding approximation so gradients reach ``img``.

    Returns:
        ``(B, 3, H, W)`` float RGB in [0, 1], same dtype and device as ``img``.
    """
    if img.ndim != 4 or img.shape[1] != 3:
        raise InvalidInputError(f"diff_jpeg expects a (B, 3, H, W) RGB tensor, got shape {tuple(img.shape)}")
    factor = jpeg_quality_to_factor(quality)
    height, width = img.shape[-2:]
    padded = F.pad(img, [0, -width % 16, 0, -height % 16])
    coefficients = jpeg_encode(padded, factor, differentiable=differentiable)
    decoded = jpeg_decode(coefficients, factor, padded.shape[-2], padded.shape[-1])
    return decoded[:, :, :height, :width]
