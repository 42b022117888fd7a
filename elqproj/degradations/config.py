"""Configuration of the second-order degradation: every range and probability the sampler uses.

A :class:`DegradationConfig` describes a *distribution* of degradations; a
:class:`~elqproj.degradations.params.DegradationParams` is one draw from it. The field names follow
the Real-ESRGAN option names (``blur_sigma`` → ``stage1.blur.sigma_range``, ``resize_prob2`` →
``stage2.resize.probs``, ``jpeg_range2`` → ``stage2.jpeg_range``, …). Invalid values raise
:class:`~elqproj.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from ..validation import ConfigModel

__all__ = [
    "KernelType",
    "ResizeMode",
    "ResizeDirection",
    "BlurConfig",
    "ResizeConfig",
    "NoiseConfig",
    "StageConfig",
    "FinalSincConfig",
    "USMConfig",
    "DegradationConfig",
    "OFFICIAL_KERNEL_SIZES",
]

#: The six kernel families of Real-ESRGAN's ``kernel_list``.
KernelType = Literal["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
#: ``F.interpolate`` modes drawn by the pipeline.
ResizeMode = Literal["area", "bilinear", "bicubic"]
ResizeDirection = Literal["up", "down", "keep"]

#: Real-ESRGAN's hard-coded ``kernel_range``: odd sizes 7, 9, …, 21.
OFFICIAL_KERNEL_SIZES: tuple[int, ...] = tuple(range(7, 22, 2))

_PROBABILITY_SUM_TOLERANCE = 1e-6


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"range bounds must be finite, got {bounds}")
    if low > high:
        raise ValueError(f"range ({low}, {high}) is not ordered: write it as ({high}, {low})")
    return bounds


#: A closed interval ``(low, high)`` with ``low <= high``.
Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _odd_sizes(sizes: tuple[int, ...]) -> tuple[int, ...]:
    if not sizes:
        raise ValueError("at least one kernel size is needed")
    bad = [size for size in sizes if size < 3 or size % 2 == 0]
    if bad:
        raise ValueError(f"kernel sizes must be odd and >= 3 (centred kernels), got {bad}")
    return sizes


KernelSizes = Annotated[tuple[int, ...], AfterValidator(_odd_sizes)]


def _some_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    if not modes:
        raise ValueError("at least one resize mode is needed")
    return modes


#: The ``F.interpolate`` modes one resize draws from (uniformly); not empty.
ResizeModes = Annotated[tuple[ResizeMode, ...], AfterValidator(_some_modes)]


def _check_distribution(weights: dict[str, float], what: str) -> dict[str, float]:
    negative = {key: value for key, value in weights.items() if value < 0}
    if negative:
        raise ValueError(f"{what} probabilities must be >= 0, got {negative}")
    total = sum(weights.values())
    if abs(total - 1.0) > _PROBABILITY_SUM_TOLERANCE:
        raise ValueError(f"{what} probabilities must sum to 1, they sum to {total:.6g}: {weights}")
    return weights


def _check_positive(bounds: tuple[float, float], what: str) -> tuple[float, float]:
    if bounds[0] <= 0:
        raise ValueError(f"{what} must be > 0, got {bounds}")
    return bounds


def _check_contains_one(bounds: tuple[float, float], what: str, rule: str) -> tuple[float, float]:
    """For ranges split at 1 (half the draws below, half above): ``rule`` says how they are drawn."""
    if not bounds[0] <= 1.0 <= bounds[1]:
        raise ValueError(f"{what} range must contain 1 ({rule}), got {bounds}")
    return bounds


class BlurConfig(ConfigModel):
    """Distribution of one blur kernel (Real-ESRGAN ``kernel_list``/``kernel_prob``/``blur_sigma``…).

    With probability ``sinc_prob`` the kernel is a sinc (circular low-pass) with cutoff drawn in
    [pi/3, pi] for sizes below 13 and [pi/5, pi] otherwise (the official rule); else a kernel type is
    drawn from ``kernel_probs``. Sigmas are in pixels, rotations in radians; for the generalized and
    plateau types, beta is drawn in [low, 1] or [1, high] with equal probability (official).
    """

    kernel_sizes: KernelSizes = OFFICIAL_KERNEL_SIZES
    kernel_probs: dict[KernelType, float]
    sinc_prob: Probability
    sigma_range: Range
    betag_range: Range
    betap_range: Range
    rotation_range: Range = (-math.pi, math.pi)

    @field_validator("kernel_probs")
    @classmethod
    def _kernel_probs_sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_distribution(value, "kernel type")

    @field_validator("sigma_range")
    @classmethod
    def _sigma_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_positive(value, "blur sigma")

    @field_validator("betag_range", "betap_range")
    @classmethod
    def _beta_brackets_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        _check_positive(value, "beta")
        return _check_contains_one(value, "beta", "beta is drawn in [low, 1] or [1, high]")


class ResizeConfig(ConfigModel):
    """Distribution of one random resize (Real-ESRGAN ``resize_prob``/``resize_range``).

    ``up`` draws a scale in [1, high], ``down`` in [low, 1], ``keep`` uses 1; the mode is drawn
    uniformly from ``modes``.
    """

    probs: dict[ResizeDirection, float]
    range: Range
    modes: ResizeModes = ("area", "bilinear", "bicubic")

    @field_validator("probs")
    @classmethod
    def _probs_sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_distribution(value, "resize up/down/keep")

    @field_validator("range")
    @classmethod
    def _range_brackets_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        _check_positive(value, "resize scale")
        return _check_contains_one(value, "resize", "down draws in [low, 1], up in [1, high]")


class NoiseConfig(ConfigModel):
    """Distribution of one noise step: Gaussian with probability ``gaussian_prob``, else Poisson.

    ``sigma_range`` is the Gaussian standard deviation in 0-255 units; ``poisson_scale_range``
    multiplies the shot noise; ``gray_prob`` is the per-sample chance of luminance-only noise.
    """

    gaussian_prob: Probability
    sigma_range: Range
    poisson_scale_range: Range
    gray_prob: Probability

    @field_validator("sigma_range", "poisson_scale_range")
    @classmethod
    def _non_negative(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 0:
            raise ValueError(f"noise strength must be >= 0, got {value}")
        return value


class StageConfig(ConfigModel):
    """One order of the degradation: blur, resize, noise, JPEG.

    In the second stage the JPEG (``jpeg_range``, Real-ESRGAN ``jpeg_range2``) is the one of the
    final step, applied before or after the final resize + sinc filter.
    """

    blur: BlurConfig
    resize: ResizeConfig
    noise: NoiseConfig
    jpeg_range: Range

    @field_validator("jpeg_range")
    @classmethod
    def _jpeg_quality_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 1 or value[1] > 100:
            raise ValueError(f"JPEG quality must lie in [1, 100], got {value}")
        return value


class FinalSincConfig(ConfigModel):
    """The final sinc filter: with probability ``prob`` a sinc of cutoff in ``cutoff_range``
    (radians per pixel, pi is Nyquist), else the identity (the official "pulse")."""

    prob: Probability
    kernel_sizes: KernelSizes = OFFICIAL_KERNEL_SIZES
    cutoff_range: Range = (math.pi / 3, math.pi)

    @field_validator("cutoff_range")
    @classmethod
    def _cutoff_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        _check_positive(value, "sinc cutoff")
        if value[1] > math.pi:
            raise ValueError(f"sinc cutoff cannot exceed pi (Nyquist), got {value}")
        return value


class USMConfig(ConfigModel):
    """Unsharp masking of the HQ input before degrading (Real-ESRGAN's ``USMSharp`` defaults).

    ``radius`` is the Gaussian window (rounded up to odd); ``threshold`` is in 0-255 units.
    """

    weight: float = Field(0.5, ge=0.0)
    radius: int = Field(50, ge=1)
    threshold: float = Field(10.0, ge=0.0)


class DegradationConfig(ConfigModel):
    """The full second-order degradation distribution (Real-ESRGAN ``feed_data``).

    Order of operations: [USM] → blur1 → resize1 → noise1 → JPEG1 → [blur2] → resize2 → noise2 →
    {[resize to H/s + sinc] then JPEG2, or JPEG2 then [resize + sinc]} → [resize back to H] →
    clamp and round to the 1/255 grid. ``s`` is drawn from ``final_scale`` (inclusive integer range).
    """

    name: str = "custom"
    usm: USMConfig | None = None
    stage1: StageConfig
    second_blur_prob: Probability
    stage2: StageConfig
    final_sinc: FinalSincConfig
    resize_sinc_first_prob: Probability = 0.5
    final_resize_modes: ResizeModes = ("area", "bilinear", "bicubic")
    final_scale: tuple[int, int] = (4, 4)
    resize_back: bool = False

    @field_validator("final_scale")
    @classmethod
    def _scale_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 1 or value[0] > value[1]:
            raise ValueError(f"final_scale must be an ordered integer range with low >= 1, got {value}")
        return value
