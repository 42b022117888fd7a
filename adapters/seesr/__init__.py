"""SeeSR (CVPR 2024) as a frozen restorer g: ``load_restorer("seesr", weights=..., prompt_extractor="dape")``.

Modules: :mod:`.image_attention` (the RAM image cross-attention added to diffusers' blocks),
:mod:`.models` (the SeeSR UNet and ControlNet), :mod:`.loading` (official folders),
:mod:`.sampler` (the official denoising loop), :mod:`.restorer` (pre/post-processing and the
:class:`~elqproj.adapters.base.Restorer` interface).
"""

from . import restorer
from .models import SeeSRControlNetModel, SeeSRUNet2DConditionModel
# The restorer's __all__: SeeSRRestorer, the official defaults and the official preprocessing.
from .restorer import *  # noqa: F401, F403
from .sampler import SEESR_TILING, SeeSRConditioning, SeeSRStep, denoise, guided_noise, predict_noise

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
