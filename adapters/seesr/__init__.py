"""SeeSR (CVPR 2024) as a frozen restorer g: ``load_restorer("seesr", weights=..., prompt_extractor="dape")``.

Modules: :mod:`.image_attention` (the RAM image cross-attention added to diffusers' blocks),
:mod:`.models` (the SeeSR UNet and ControlNet), :mod:`.loading` (official folders),
:mod:`.sampler` (the official denoising loop), :mod:`.restorer` (pre/post-processing and the
:class:`~elqproj.adapters.base.Restorer` interface).
"""

from typing import Any

from . import restorer
# The restorer's __all__: SeeSRRestorer, the official defaults and the official preprocessing.
from .restorer import *  # noqa: F401, F403
from .sampler import SEESR_TILING, SeeSRConditioning, SeeSRStep, denoise, guided_noise, predict_noise


def __getattr__(name: str) -> Any:  # PEP 562: the diffusers-based models import on first use (seconds)
    if name in ("SeeSRUNet2DConditionModel", "SeeSRControlNetModel"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    *restorer.__all__,
    "SeeSRUNet2DConditionModel",
    "SeeSRControlNetModel",
    "SeeSRConditioning",
    "SeeSRStep",
    "SEESR_TILING",
    "denoise",
    "guided_noise",
    "predict_noise",
]
