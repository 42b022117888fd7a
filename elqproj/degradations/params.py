"""One sampled degradation: every random choice, typed and JSON-serialisable.

:class:`DegradationParams` is everything :meth:`DegradationPipeline.apply` needs, so a saved JSON
reproduces a degradation exactly (noise realisations depend on the device, see
:class:`~elqproj.degradations.noise.SeededNoise`). Choices that change tensor sizes (resizes,
final scale) and the order of operations are shared by the batch, as in Real-ESRGAN; kernels, noise
strengths, gray flags, noise seeds and JPEG qualities are per sample.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..validation import ParamsModel
from .config import ResizeDirection, ResizeMode
from .kernels import BlurKernel
from ..seeding import MAX_SEED

__all__ = ["ResizeParams", "NoiseParams", "USMParams", "DegradationParams", "FinalOrder"]

#: Which of the final two operations comes first.
FinalOrder = Literal["resize_sinc_then_jpeg", "jpeg_then_resize_sinc"]

JpegQuality = Annotated[float, Field(ge=1.0, le=100.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class ResizeParams(ParamsModel):
    """A resize of the whole batch. ``scale`` is relative (see the pipeline for what it scales)."""

    direction: ResizeDirection
    scale: float = Field(gt=0.0, allow_inf_nan=False)
    mode: ResizeMode


class NoiseParams(ParamsModel):
    """One noise step: its kind (batch-wide) and per-sample strength, gray flag and seed.

    ``strength`` is the Gaussian sigma in 0-255 units, or the Poisson scale.
    """

    kind: Literal["gaussian", "poisson"]
    strength: list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]]
    gray: list[bool]
    seed: list[Seed]


class USMParams(ParamsModel):
    """Unsharp masking of the input (see :func:`~elqproj.degradations.filtering.usm_sharpen`)."""

    weight: float = Field(ge=0.0)
    radius: int = Field(ge=1)
    threshold: float = Field(ge=0.0)


class DegradationParams(ParamsModel):
    """Every choice of one second-order degradation of a batch of ``batch_size`` images.

    Per-sample lists all have ``batch_size`` entries. ``blur2`` is ``None`` when the second blur
    was not drawn. ``final_scale`` is the integer down-scale of the LQ relative to the input
    (before ``resize_back_mode`` brings it back to the input size, when set).
    """

    usm: USMParams | None = None
    blur1: list[BlurKernel]
    resize1: ResizeParams
    noise1: NoiseParams
    jpeg1: list[JpegQuality]
    blur2: list[BlurKernel] | None
    resize2: ResizeParams
    noise2: NoiseParams
    final_order: FinalOrder
    final_resize_mode: ResizeMode
    final_sinc: list[BlurKernel]
    jpeg2: list[JpegQuality]
    final_scale: int = Field(ge=1)
    resize_back_mode: ResizeMode | None = None

    @model_validator(mode="after")
    def _same_batch_everywhere(self) -> DegradationParams:
        lengths = {
            "blur1": len(self.blur1),
            "noise1.strength": len(self.noise1.strength),
            "noise1.gray": len(self.noise1.gray),
            "noise1.seed": len(self.noise1.seed),
            "jpeg1": len(self.jpeg1),
            "noise2.strength": len(self.noise2.strength),
            "noise2.gray": len(self.noise2.gray),
            "noise2.seed": len(self.noise2.seed),
            "final_sinc": len(self.final_sinc),
            "jpeg2": len(self.jpeg2),
        }
        if self.blur2 is not None:
            lengths["blur2"] = len(self.blur2)
        if len(set(lengths.values())) != 1 or self.batch_size == 0:
            raise ValueError(f"every per-sample list needs the same non-zero length, got {lengths}")
        return self

    @property
    def batch_size(self) -> int:
        """Number of images these parameters degrade."""
        return len(self.blur1)

    def split(self) -> list[DegradationParams]:
        """One ``batch_size == 1`` params per sample (the batch-wide choices are copied)."""
        return [self._select(index) for index in range(self.batch_size)]

    def _select(self, index: int) -> DegradationParams:
        def noise(step: NoiseParams) -> NoiseParams:
            return step.model_copy(
                update={"strength": [step.strength[index]], "gray": [step.gray[index]], "seed": [step.seed[index]]}
            )

        return self.model_copy(
            update={
                "blur1": [self.blur1[index]],
                "noise1": noise(self.noise1),
                "jpeg1": [self.jpeg1[index]],
                "blur2": None if self.blur2 is None else [self.blur2[index]],
                "noise2": noise(self.noise2),
                "final_sinc": [self.final_sinc[index]],
                "jpeg2": [self.jpeg2[index]],
            }
        )
