"""Named degradation configs: ``REALESRGAN``, ``OSEDIFF`` (ordinary LQ) and ``ELQ`` (extreme LQ).

* ``REALESRGAN``: Real-ESRGAN ``options/train_realesrgan_x4plus.yml`` (xinntao/Real-ESRGAN a4abfb29),
  including the USM sharpening of the GT before degrading; LQ is GT / 4.
* ``OSEDIFF``: OSEDiff ``dataloaders/params_realesrgan.yml`` (cswry/OSEDiff fcc4f09c): the same numbers
  without USM, and the LQ resized back to the GT size (``resize_bak=True``) with a random mode.
* ``ELQ``: our extreme preset (docs/degradations.md gives every widened range and why): the same
  pipeline with wider blur, noise, JPEG and resize ranges, a final down-scale drawn in [4, 8], and the
  LQ resized back to the GT size. The mild end of every range is kept, so ELQ still overlaps the
  ordinary LQ distribution the frozen restorer was trained on.
"""

from __future__ import annotations

import math

from ..errors import UnknownNameError
from .config import (
    BlurConfig,
    DegradationConfig,
    FinalSincConfig,
    NoiseConfig,
    ResizeConfig,
    StageConfig,
    USMConfig,
)

__all__ = ["REALESRGAN", "OSEDIFF", "ELQ", "PRESETS", "get_preset"]

#: Real-ESRGAN's ``kernel_list`` / ``kernel_prob`` (both stages).
_KERNEL_PROBS = {
    "iso": 0.45,
    "aniso": 0.25,
    "generalized_iso": 0.12,
    "generalized_aniso": 0.03,
    "plateau_iso": 0.12,
    "plateau_aniso": 0.03,
}

REALESRGAN = DegradationConfig(
    name="realesrgan",
    usm=USMConfig(weight=0.5, radius=50, threshold=10),
    stage1=StageConfig(
        blur=BlurConfig(
            kernel_probs=_KERNEL_PROBS,
            sinc_prob=0.1,
            sigma_range=(0.2, 3.0),
            betag_range=(0.5, 4.0),
            betap_range=(1.0, 2.0),
        ),
        resize=ResizeConfig(probs={"up": 0.2, "down": 0.7, "keep": 0.1}, range=(0.15, 1.5)),
        noise=NoiseConfig(gaussian_prob=0.5, sigma_range=(1.0, 30.0), poisson_scale_range=(0.05, 3.0), gray_prob=0.4),
        jpeg_range=(30.0, 95.0),
    ),
    second_blur_prob=0.8,
    stage2=StageConfig(
        blur=BlurConfig(
            kernel_probs=_KERNEL_PROBS,
            sinc_prob=0.1,
            sigma_range=(0.2, 1.5),
            betag_range=(0.5, 4.0),
            betap_range=(1.0, 2.0),
        ),
        resize=ResizeConfig(probs={"up": 0.3, "down": 0.4, "keep": 0.3}, range=(0.3, 1.2)),
        noise=NoiseConfig(gaussian_prob=0.5, sigma_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5), gray_prob=0.4),
        jpeg_range=(30.0, 95.0),
    ),
    final_sinc=FinalSincConfig(prob=0.8, cutoff_range=(math.pi / 3, math.pi)),
    final_scale=(4, 4),
    resize_back=False,
)

OSEDIFF = REALESRGAN.model_copy(update={"name": "osediff", "usm": None, "resize_back": True})

ELQ = DegradationConfig(
    name="elq",
    usm=None,
    stage1=StageConfig(
        blur=BlurConfig(
            kernel_probs=_KERNEL_PROBS,
            sinc_prob=0.15,
            sigma_range=(0.2, 4.0),
            betag_range=(0.5, 6.0),
            betap_range=(1.0, 3.0),
        ),
        resize=ResizeConfig(probs={"up": 0.1, "down": 0.8, "keep": 0.1}, range=(0.1, 1.5)),
        noise=NoiseConfig(gaussian_prob=0.5, sigma_range=(1.0, 60.0), poisson_scale_range=(0.05, 6.0), gray_prob=0.4),
        jpeg_range=(15.0, 90.0),
    ),
    second_blur_prob=0.9,
    stage2=StageConfig(
        blur=BlurConfig(
            kernel_probs=_KERNEL_PROBS,
            sinc_prob=0.15,
            sigma_range=(0.2, 3.0),
            betag_range=(0.5, 6.0),
            betap_range=(1.0, 3.0),
        ),
        resize=ResizeConfig(probs={"up": 0.2, "down": 0.6, "keep": 0.2}, range=(0.15, 1.2)),
        noise=NoiseConfig(gaussian_prob=0.5, sigma_range=(1.0, 50.0), poisson_scale_range=(0.05, 5.0), gray_prob=0.4),
        jpeg_range=(10.0, 90.0),
    ),
    final_sinc=FinalSincConfig(prob=0.8, cutoff_range=(math.pi / 3, math.pi)),
    final_scale=(4, 8),
    resize_back=True,
)

#: Every preset by its (lower-case) name.
PRESETS: dict[str, DegradationConfig] = {config.name: config for config in (REALESRGAN, OSEDIFF, ELQ)}


def get_preset(name: str) -> DegradationConfig:
    """The preset called ``name`` (case-insensitive): ``"realesrgan"``, ``"osediff"`` or ``"elq"``."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise UnknownNameError(f"unknown degradation preset {name!r}; choose one of {sorted(PRESETS)}") from None
