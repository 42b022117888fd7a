"""DA-CLIP as a torch module, and the reading of official DA-CLIP checkpoints.

DA-CLIP (Luo et al., "Controlling Vision-Language Models for Multi-Task Image Restoration", ICLR 2024) is a
frozen CLIP plus a *controller*: a trainable copy of CLIP's image tower with one linear projection per block
(zero-initialised when training starts, so the untrained controller leaves CLIP unchanged). Encoding an image
with control runs the controller first: its pooled, projected output is the **degradation embedding**, and
the projections of its block outputs are added to the residual stream of the frozen tower, one after each
block. The frozen tower's output is then the **content embedding**. In training, the two are matched
contrastively to the clean image's caption and to the name of its degradation type; the text tower is CLIP's,
unchanged.

One detail of the official forward decides the weights' meaning: the frozen tower takes the controls from the
end of the controller's list, so block ``i`` of the frozen tower receives the projection of controller block
``L - 1 - i`` (reverse order). The released weights were trained that way, and :class:`DaCLIPModel` does the
same.

The CLIP itself (both towers, their weights under the official names) is open_clip's :class:`open_clip.CLIP`.
The controller and the controlled forward are written here: open_clip's image tower runs its blocks in one
call with no way to read or add to the residual stream between blocks, and its package has no DA-CLIP. The
controller's tower is a copy of open_clip's, so both towers always share one architecture, as in the
official model.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import model_validator
from torch import nn

from elqproj.errors import CheckpointMismatchError, ConfigError
from elqproj.hub import load_state_strictly
from elqproj.validation import ConfigModel

__all__ = [
    "DaCLIPConfig",
    "DaCLIPModel",
    "DegradationController",
    "OFFICIAL_CONFIGS",
    "official_daclip_state",
    "infer_daclip_config",
    "load_official_weights",
    "require_open_clip",
]

#: The official model configs (``da-clip/src/open_clip/model_configs/daclip_*.json``), as written there.
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    "daclip_ViT-B-32": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
        "custom_text": True,
    },
    "daclip_ViT-L-14": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
        "custom_text": True,
    },
}
# open_clip's default for what the official JSON leaves out: 64 channels per attention head in the image
# tower. The released text towers also have 64 per head (512 / 8, 768 / 12).
_HEAD_WIDTH = 64
_MLP_RATIO = 4.0


def require_open_clip() -> Any:
    """The ``open_clip`` module (package ``open_clip_torch``), or a :class:`ConfigError` saying how to install it."""
    try:
        import open_clip
    except ImportError as exc:
        raise ConfigError(
            f"DA-CLIP needs open_clip_torch ({exc}): pip install 'elqproj[daclip]' (or pip install open_clip_torch)."
        ) from exc
    return open_clip


class DaCLIPConfig(ConfigModel):
    """Architecture of a DA-CLIP model; the defaults are the released ``daclip_ViT-B-32``.

    Fields follow the official JSON (``vision_cfg.width`` -> ``vision_width`` and so on); read one with
    :meth:`from_official`. Both towers have GELU activations (DA-CLIP's configs do not set ``quick_gelu``).
    """

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_head_width: int = _HEAD_WIDTH
    vision_mlp_ratio: float = _MLP_RATIO
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    quick_gelu: bool = False

    @model_validator(mode="after")
    def _check(self) -> DaCLIPConfig:
        for name in ("embed_dim", "image_size", "patch_size", "vision_width", "vision_layers", "vision_head_width",
                     "context_length", "vocab_size", "text_width", "text_heads", "text_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_head_width:
            raise ValueError(f"vision_width {self.vision_width} is not a multiple of vision_head_width "
                             f"{self.vision_head_width}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        return self

    @classmethod
    def from_official(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> DaCLIPConfig:
        """Read an official model config: a dict or a JSON file laid out like ``model_configs/daclip_ViT-B-32.json``."""
        source = "the config dict"
        if not isinstance(config, Mapping):
            source = os.fspath(config)
            try:
                config = json.loads(Path(source).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"Cannot read the DA-CLIP config file {source}: {exc}") from exc
        try:
            vision, text = config["vision_cfg"], config["text_cfg"]
            values = {
                "embed_dim": config["embed_dim"],
                "image_size": vision["image_size"], "patch_size": vision["patch_size"],
                "vision_width": vision["width"], "vision_layers": vision["layers"],
                "vision_head_width": vision.get("head_width", _HEAD_WIDTH),
                "vision_mlp_ratio": vision.get("mlp_ratio", _MLP_RATIO),
                "context_length": text.get("context_length", 77), "vocab_size": text.get("vocab_size", 49408),
                "text_width": text["width"], "text_heads": text["heads"], "text_layers": text["layers"],
                "quick_gelu": config.get("quick_gelu", False),
            }
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{source} is not an official DA-CLIP model config: it lacks {exc} (expected "
                              "embed_dim, vision_cfg and text_cfg as in model_configs/daclip_ViT-B-32.json).") from exc
        unsupported = sorted(set(vision) - {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"})
        if unsupported or isinstance(vision["layers"], (list, tuple)):
            raise ConfigError(f"{source}: only plain ViT image towers are supported; unsupported vision_cfg entries "
                              f"{unsupported or ['layers as a list (a ResNet)']}.")
        return cls(**{**values, **overrides})

    def open_clip_config(self) -> dict[str, Any]:
        """The keyword arguments of :class:`open_clip.CLIP` for this architecture."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                           "patch_size": self.patch_size, "head_width": self.vision_head_width,
                           "mlp_ratio": self.vision_mlp_ratio},
            "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size,
                         "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers},
            "quick_gelu": self.quick_gelu,
        }


# ---------------------------------------------------------------------------------------------------
# The model

def _embed_patches(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP's image tokens before the blocks: patches, class token, positions, ``ln_pre`` -> ``(B, 1 + g², width)``."""
    x = tower.conv1(pixel_values).flatten(2).transpose(1, 2)
    cls = tower.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + tower.positional_embedding.to(x.dtype)
    return tower.ln_pre(tower.patch_dropout(x))


def _pooled(tower: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The class token after ``ln_post``, projected: ``(B, embed_dim)``."""
    return tower.ln_post(tokens[:, 0]) @ tower.proj


def _batch_first(tower: nn.Module) -> bool:
    return getattr(tower.transformer, "batch_first", False)  # open_clip < 2.24 runs its blocks sequence-first


class DegradationController(nn.Module):
    """DA-CLIP's controller: a copy of the CLIP image tower and one ``Linear(width, width)`` per block.

    Its pooled output is the degradation embedding; the projections of its block outputs are the controls the
    frozen tower adds after its blocks (see :class:`DaCLIPModel`).
    """

    def __init__(self, image_tower: nn.Module) -> None:
        super().__init__()
        self.tower = copy.deepcopy(image_tower)
        width, layers = self.tower.transformer.width, len(self.tower.transformer.resblocks)
        self.projections = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, 3, S, S)`` normalised pixels -> degradation embedding ``(B, embed_dim)`` and one control per
        block, in block order, each in the blocks' layout (``(B, T, width)`` batch-first, else ``(T, B, width)``)."""
        x = _embed_patches(self.tower, pixel_values)
        if not _batch_first(self.tower):
            x = x.transpose(0, 1)
        controls = []
        for block, projection in zip(self.tower.transformer.resblocks, self.projections):
            x = block(x)
            controls.append(projection(x))  # read off the stream; the controller's own stream is not changed
        if not _batch_first(self.tower):
            x = x.transpose(0, 1)
        return _pooled(self.tower, x), controls


class DaCLIPModel(nn.Module):
    """DA-CLIP: ``clip`` (open_clip's CLIP, frozen) + ``controller`` (:class:`DegradationController`).

    Inputs are CLIP-normalised ``(B, 3, S, S)`` float images, S = ``config.image_size`` (see
    :func:`elqproj.prompts.daclip.daclip_pixel_values`), and ``(N, context_length)`` int64 token ids from
    :meth:`tokenize`.
    """

    def __init__(self, config: DaCLIPConfig) -> None:
        super().__init__()
        open_clip = require_open_clip()
        self.config = config
        self.clip = open_clip.CLIP(**config.open_clip_config())
        self.controller = DegradationController(self.clip.visual)
        # The official model keeps a logit scale of its own for its training loss; nothing here uses it.
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP's BPE token ids ``(N, context_length)`` int64 on the CPU (texts are lower-cased and cleaned;
        longer texts are cut, keeping the end-of-text token)."""
        return require_open_clip().tokenize(list(texts), context_length=self.config.context_length)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(N, context_length)`` -> text embeddings ``(N, embed_dim)`` (not normalised)."""
        return self.clip.encode_text(tokens.to(self.clip.token_embedding.weight.device))

    def encode_image(self, pixel_values: torch.Tensor, *, control: bool = True) -> Any:
        """Image embeddings of ``(B, 3, S, S)`` CLIP-normalised pixels (not normalised).

        Returns:
            ``control=True``: ``(content, degradation)``, each ``(B, embed_dim)`` — the official
            ``encode_image(image, control=True)``. ``control=False``: the frozen CLIP's ``(B, embed_dim)``.
        """
        tower = self.clip.visual
        pixel_values = pixel_values.to(tower.conv1.weight.device, tower.conv1.weight.dtype)
        if not control:
            return self.clip.encode_image(pixel_values)
        degradation, controls = self.controller(pixel_values)
        x = _embed_patches(tower, pixel_values)
        if not _batch_first(tower):
            x = x.transpose(0, 1)
        for block, added in zip(tower.transformer.resblocks, reversed(controls)):  # reverse order: see the module doc
            x = block(x) + added
        if not _batch_first(tower):
            x = x.transpose(0, 1)
        return _pooled(tower, x), degradation


# ---------------------------------------------------------------------------------------------------
# Official checkpoints

_OFFICIAL_CONTROLLER_BLOCKS = "visual_control.transformer.transformer."
_OFFICIAL_PROJECTIONS = re.compile(r"visual_control\.transformer\.zero_modules\.(\d+)\.(weight|bias)$")
_CLIP_KEY = "clip.visual.conv1.weight"
_CONTROLLER_KEY = "visual_control.transformer.zero_modules.0.weight"


def official_daclip_state(checkpoint: Mapping[str, Any], *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The DA-CLIP state dict inside an official checkpoint, in the official names.

    Accepts what the official loader accepts: a bare ``DaCLIP.state_dict()``, or a training save
    ``{"state_dict": ..., "optimizer": ..., "epoch": ...}`` (only ``"state_dict"`` is read), with or without the
    ``module.`` prefix of a distributed run.

    Raises:
        CheckpointMismatchError: no DA-CLIP in it (e.g. a plain CLIP, or the Universal-IR restorer).
    """
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{source}: the 'state_dict' entry is a {type(state).__name__}, not a state dict.")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    if _CLIP_KEY not in tensors or _CONTROLLER_KEY not in tensors:
        hint = ""
        if "visual.conv1.weight" in tensors and _CLIP_KEY not in tensors:
            hint = " It looks like a plain CLIP checkpoint, without DA-CLIP's controller."
        raise CheckpointMismatchError(
            f"{source} is not a DA-CLIP checkpoint: it lacks {_CLIP_KEY!r} and/or {_CONTROLLER_KEY!r} (first keys: "
            f"{sorted(tensors)[:6]}).{hint} Pass daclip_ViT-B-32.pt (or another DA-CLIP release)."
        )
    return tensors


def _block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for key in state if (m := pattern.match(key))})


def infer_daclip_config(state: Mapping[str, torch.Tensor], **overrides: Any) -> DaCLIPConfig:
    """The :class:`DaCLIPConfig` of an official DA-CLIP state dict, read from its tensor shapes.

    The weights do not show the number of attention heads: the image tower gets open_clip's 64 channels per
    head (``vision_head_width``) and the text tower ``text_width // 64`` heads — the values of both released
    configs (ViT-B-32, ViT-L-14). ``overrides`` replace inferred fields (e.g. ``{"text_heads": 2}``).
    """
    unknown = sorted(set(overrides) - set(DaCLIPConfig.model_fields))
    if unknown:
        raise ConfigError(f"Unknown DA-CLIP config fields {unknown}; known: {sorted(DaCLIPConfig.model_fields)}.")
    try:
        conv = state["clip.visual.conv1.weight"]
        positions = state["clip.visual.positional_embedding"].shape[0] - 1
        side = round(positions ** 0.5)
        if side * side != positions:
            raise CheckpointMismatchError(f"clip.visual.positional_embedding has {positions} patch positions, not a "
                                          "square grid.")
        token_embedding = state["clip.token_embedding.weight"]
        values = {
            "embed_dim": state["clip.visual.proj"].shape[1],
            "image_size": side * conv.shape[-1],
            "patch_size": conv.shape[-1],
            "vision_width": conv.shape[0],
            "vision_layers": _block_count(state, "clip.visual.transformer.resblocks."),
            "vision_mlp_ratio": state["clip.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / conv.shape[0],
            "context_length": state["clip.positional_embedding"].shape[0],
            "vocab_size": token_embedding.shape[0],
            "text_width": token_embedding.shape[1],
            "text_heads": max(1, token_embedding.shape[1] // _HEAD_WIDTH),
            "text_layers": _block_count(state, "clip.transformer.resblocks."),
        }
        return DaCLIPConfig(**{**values, **overrides})
    except (KeyError, IndexError) as exc:
        raise CheckpointMismatchError(
            f"Cannot read the DA-CLIP architecture from the checkpoint: it lacks {exc}. Is it a DA-CLIP checkpoint?"
        ) from exc
    except ConfigError as exc:  # shapes read from a file, not the caller's arguments: the checkpoint is wrong
        raise CheckpointMismatchError(
            f"The checkpoint's shapes{' with ' + repr(overrides) if overrides else ''} give an invalid DA-CLIP "
            f"architecture: {exc} Pass config= (the model's official JSON, or overrides such as "
            "{'vision_head_width': 32})."
        ) from exc


def _to_model_names(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official names -> :class:`DaCLIPModel` names, and the official keys that have no place in the model.

    ``visual.*`` are the same tensors as ``clip.visual.*`` in the official model (an alias of the frozen tower)
    and are skipped.
    """
    out, unknown = {}, []
    for key, value in state.items():
        if key.startswith("clip.") or key == "logit_scale":
            out[key] = value
        elif key.startswith("visual."):
            continue
        elif key.startswith(_OFFICIAL_CONTROLLER_BLOCKS):
            out["controller.tower.transformer." + key[len(_OFFICIAL_CONTROLLER_BLOCKS):]] = value
        elif match := _OFFICIAL_PROJECTIONS.match(key):
            out[f"controller.projections.{match.group(1)}.{match.group(2)}"] = value
        elif key.startswith("visual_control."):
            out["controller.tower." + key[len("visual_control."):]] = value
        else:
            unknown.append(key)
    return out, unknown


def load_official_weights(model: DaCLIPModel, state: Mapping[str, torch.Tensor], *,
                          source: str = "checkpoint") -> None:
    """Load an official DA-CLIP state dict (from :func:`official_daclip_state`) into ``model``, all or nothing.

    Raises:
        CheckpointMismatchError: keys the model needs are missing, unknown keys are present, or shapes differ;
            the message names them.
    """
    converted, unknown = _to_model_names(state)
    load_state_strictly(model, converted, unknown=unknown, source=source,
                        what=f"the DA-CLIP architecture {model.config.model_dump()}",
                        fix="Pass a DA-CLIP checkpoint and, for another architecture, config= (or its official JSON "
                            "beside it).")
