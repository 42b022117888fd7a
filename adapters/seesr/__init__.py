"""SeeSR (CVPR 2024) as a frozen restorer g: ``load_restorer("seesr", weights=..., prompt_extractor="dape")``.

Modules: :mod:`.image_attention` (the RAM image cross-attention added to diffusers' blocks),
:mod:`.models` (the SeeSR UNet and ControlNet), :mod:`.loading` (official folders),
:mod:`.sampler` (the official denoising loop), :mod:`.restorer` (pre/post-processing and the
:class:`~elqproj.adapters.base.Restorer` interface).
"""

from .models import SeeSRControlNetModel, SeeSRUNet2DConditionModel
from .restorer import (
    OFFICIAL_ADDED_PROMPT,
    OFFICIAL_NEGATIVE_PROMPT,
    SD2_BASE,
    SEESR_DOWNLOAD_PAGE,
    SeeSRRestorer,
    official_prompt,
    upscale_like_official,
)
from .sampler import SEESR_TILING, SeeSRConditioning, SeeSRStep, denoise, predict_noise

__all__ = [
    "SeeSRRestorer",
    "SeeSRUNet2DConditionModel",
    "SeeSRControlNetModel",
    "SeeSRConditioning",
    "SeeSRStep",
    "SEESR_TILING",
    "SD2_BASE",
    "SEESR_DOWNLOAD_PAGE",
    "OFFICIAL_ADDED_PROMPT",
    "OFFICIAL_NEGATIVE_PROMPT",
    "official_prompt",
    "upscale_like_official",
    "denoise",
    "predict_noise",
]
