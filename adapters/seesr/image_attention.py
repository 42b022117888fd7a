"""SeeSR's image cross-attention, added to diffusers' UNet and ControlNet without copying their blocks.

SeeSR (Wu et al., CVPR 2024) conditions the SD2 UNet and its ControlNet on RAM/DAPE image embeddings
``(B, N, 512)`` as well as on the text. Every cross-attention block (down, mid and up) gets a second
``nn.ModuleList`` named ``image_attentions`` with one diffusers :class:`Transformer2DModel` per text
transformer in ``attentions``: built with the same arguments as its text twin except
``cross_attention_dim=512`` (the official code hard-codes the RAM width), and applied right after it::

    resnet → attentions[i] (text) → image_attentions[i] (RAM features) → …

The official repository edits copies of diffusers' block classes to insert that call. Here the blocks
stay diffusers' own: a forward hook on each text transformer feeds its output through the paired
image transformer, and the image embeddings reach the hooks through a context variable that the
model's ``forward`` sets for the duration of one call. State-dict keys are the official ones
(``down_blocks.0.image_attentions.0.transformer_blocks.0.attn2.to_k.weight`` …).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from elqproj.errors import InvalidInputError

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

__all__ = [
    "IMAGE_CROSS_ATTENTION_DIM",
    "add_image_cross_attention",
    "image_encoder_hidden_states",
    "check_image_encoder_hidden_states",
    "signature_with_flag",
]

#: Width of the RAM/DAPE image embeddings; fixed by the official block constructors, not configurable.
IMAGE_CROSS_ATTENTION_DIM = 512

_current_states: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "seesr_image_encoder_hidden_states", default=None
)


@contextmanager
def image_encoder_hidden_states(states: torch.Tensor | None) -> Iterator[None]:
    """Make ``states`` ``(B, N, 512)`` the context every image attention attends to inside the block.

    A context variable (not a module attribute) so that concurrent threads running the same model each
    see their own tensor.
    """
    token = _current_states.set(states)
    try:
        yield
    finally:
        _current_states.reset(token)


def check_image_encoder_hidden_states(states: Any, owner: str) -> torch.Tensor:
    """Validate the RAM/DAPE embeddings passed to a SeeSR network: a float tensor ``(B, N, 512)``."""
    if states is None:
        raise InvalidInputError(
            f"{owner} uses image cross-attention and needs image_encoder_hidden_states: the RAM/DAPE image "
            f"embeddings, a float tensor (B, N, {IMAGE_CROSS_ATTENTION_DIM}) (N = 145 for RAM Swin-L at 384 px)."
        )
    if (not isinstance(states, torch.Tensor) or states.ndim != 3 or states.shape[-1] != IMAGE_CROSS_ATTENTION_DIM
            or not states.is_floating_point()):
        what = f"{states.dtype} tensor of shape {tuple(states.shape)}" if isinstance(states, torch.Tensor) \
            else type(states).__name__
        raise InvalidInputError(
            f"{owner}: image_encoder_hidden_states must be a float tensor (B, N, {IMAGE_CROSS_ATTENTION_DIM}), "
            f"got a {what}."
        )
    return states


class _ImageAttentionHook:
    """Forward hook of ``attentions[index]``: runs ``image_attentions[index]`` on the text output.

    A callable object (not a closure) so that ``copy.deepcopy`` of the model re-targets the hook to the
    copy's image transformer.
    """

    def __init__(self, image_attentions: nn.ModuleList, index: int) -> None:
        self.image_attentions = image_attentions
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        states = _current_states.get()
        if states is None:
            raise InvalidInputError(
                "A SeeSR block ran without image embeddings: call the SeeSR UNet/ControlNet with "
                "image_encoder_hidden_states=..., not its blocks directly."
            )
        hidden = output[0] if isinstance(output, tuple) else output.sample
        # The official blocks hand the image transformer the same masks and attention kwargs as the text one.
        hidden = self.image_attentions[self.index](
            hidden,
            encoder_hidden_states=states.to(hidden.dtype),
            cross_attention_kwargs=kwargs.get("cross_attention_kwargs"),
            attention_mask=kwargs.get("attention_mask"),
            encoder_attention_mask=kwargs.get("encoder_attention_mask"),
            return_dict=False,
        )[0]
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=hidden)


def _image_twin(text_transformer: Transformer2DModel) -> Transformer2DModel:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    config = {k: v for k, v in text_transformer.config.items() if not k.startswith("_")}
    config["cross_attention_dim"] = IMAGE_CROSS_ATTENTION_DIM
    return Transformer2DModel.from_config(config)


def add_image_cross_attention(model: nn.Module) -> None:
    """Give every block of ``model`` that has text ``attentions`` a matching ``image_attentions`` list.

    ``model`` is a freshly built diffusers UNet or ControlNet (down blocks, mid block and, for the
    UNet, up blocks). Blocks without cross-attention (``DownBlock2D``/``UpBlock2D``) get nothing, as in
    the official code.
    """
    blocks = [*model.down_blocks, model.mid_block, *getattr(model, "up_blocks", [])]
    for block in blocks:
        attentions = getattr(block, "attentions", None)
        if not attentions:
            continue
        block.image_attentions = nn.ModuleList(_image_twin(attn) for attn in attentions)
        for index, attn in enumerate(attentions):
            attn.register_forward_hook(_ImageAttentionHook(block.image_attentions, index), with_kwargs=True)


def signature_with_flag(init: Any) -> inspect.Signature:
    """``init``'s signature plus a keyword ``use_image_cross_attention: bool = False``.

    diffusers builds models from ``config.json`` by matching config keys to the parameters of
    ``__init__``; a subclass that adds one flag to an ~50-parameter constructor declares the union this
    way instead of re-typing every parameter.
    """
    base = inspect.signature(init)
    params = [p for p in base.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    flag = inspect.Parameter("use_image_cross_attention", inspect.Parameter.KEYWORD_ONLY, default=False,
                             annotation=bool)
    return base.replace(parameters=[*params, flag])
