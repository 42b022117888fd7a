"""SeeSR's networks: diffusers' ``UNet2DConditionModel`` and ``ControlNetModel`` with image cross-attention.

Both classes accept every constructor argument of their diffusers parent plus the official config flag
``use_image_cross_attention`` (``True`` in the released ``seesr/unet`` and ``seesr/controlnet``
configs), and a forward keyword ``image_encoder_hidden_states``: the RAM/DAPE image embeddings
``(B, N, 512)``, required whenever the flag is on. See :mod:`.image_attention` for the mechanism.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from .image_attention import (
    add_image_cross_attention,
    check_image_encoder_hidden_states,
    image_encoder_hidden_states as image_context,
    signature_with_flag,
)

__all__ = ["SeeSRUNet2DConditionModel", "SeeSRControlNetModel"]


class SeeSRUNet2DConditionModel(UNet2DConditionModel):
    """SD2 UNet + one image transformer after each text transformer (official ``models/unet_2d_condition.py``).

    ``forward(sample, timestep, encoder_hidden_states, ..., image_encoder_hidden_states=...)``:

    * ``sample``: noisy latent ``(B, 4, h, w)`` (scaled by 0.18215);
    * ``encoder_hidden_states``: CLIP text embeddings ``(B, 77, D)``;
    * ``image_encoder_hidden_states``: RAM/DAPE embeddings ``(B, N, 512)``;
    * every other argument (ControlNet residuals, ``return_dict`` …) as in diffusers.

    Returns diffusers' output: the ε prediction ``(B, 4, h, w)``.
    """

    def __init__(self, *args: Any, use_image_cross_attention: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_to_config(use_image_cross_attention=use_image_cross_attention)
        if use_image_cross_attention:
            add_image_cross_attention(self)

    __init__.__signature__ = signature_with_flag(UNet2DConditionModel.__init__)

    def forward(self, *args: Any, image_encoder_hidden_states: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if self.config.use_image_cross_attention:
            check_image_encoder_hidden_states(image_encoder_hidden_states, type(self).__name__)
        with image_context(image_encoder_hidden_states):
            return super().forward(*args, **kwargs)


class SeeSRControlNetModel(ControlNetModel):
    """diffusers' ControlNet + image transformers in its down and mid blocks (official ``models/controlnet.py``).

    ``forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, ...,
    image_encoder_hidden_states=...)``: ``controlnet_cond`` is the upscaled LR image ``(B, 3, 8h, 8w)`` in
    **[0, 1]** (not [-1, 1]), RGB; the other tensors as for :class:`SeeSRUNet2DConditionModel`. Returns
    diffusers' residuals, already multiplied by ``conditioning_scale``.
    """

    def __init__(self, *args: Any, use_image_cross_attention: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_to_config(use_image_cross_attention=use_image_cross_attention)
        if use_image_cross_attention:
            add_image_cross_attention(self)

    __init__.__signature__ = signature_with_flag(ControlNetModel.__init__)

    def forward(self, *args: Any, image_encoder_hidden_states: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if self.config.use_image_cross_attention:
            check_image_encoder_hidden_states(image_encoder_hidden_states, type(self).__name__)
        with image_context(image_encoder_hidden_states):
            return super().forward(*args, **kwargs)
