"""The RAM image tagger as a torch module, and the conversion of official RAM / DAPE checkpoints.

RAM (Recognize Anything, Zhang et al. 2023) = a Swin transformer image encoder, a linear projection of
its tokens to 512 (``image_embeds``, the features SeeSR consumes), and a Query2Label tagging head: one
learned 512-d embedding per tag, projected to the head width, attends to the image tokens through
cross-attention layers without self-attention, then a linear layer gives one logit per tag.

The encoder is timm's :class:`~timm.models.swin_transformer.SwinTransformer`, which hosts the official
weights exactly after timm's own key filter. The tagging head is written here on
:func:`torch.nn.functional.scaled_dot_product_attention`: transformers' ``BertModel`` cannot host it,
because its cross-attention projects keys/values from the hidden width (RAM projects 512-wide image
tokens) and its layers always run embeddings and self-attention first, which RAM's tagging mode lacks.

DAPE (SeeSR) is RAM with LoRA (rank 8, alpha 1) on q and v of every Swin ``qkv`` and on query and key
of the head's cross-attention; :func:`merge_dape_lora` folds it into the RAM weights, as loralib does
when SeeSR calls ``.eval()``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from elqproj.errors import CheckpointMismatchError, ConfigError
from elqproj.hub import load_state_strictly
from elqproj.validation import ConfigModel

__all__ = [
    "RAMConfig",
    "RAMModel",
    "RAMOutput",
    "official_ram_state",
    "infer_ram_config",
    "merge_dape_lora",
    "load_official_weights",
]

# The official code hard-codes a 512-wide image projection; the label embeddings share that width.
_IMAGE_EMBED_DIM = 512
# DAPE's loralib layers: r = 8, lora_alpha = 1, so the update is scaled by 1/8.
_DAPE_LORA_SCALING = 1.0 / 8.0


class RAMConfig(ConfigModel):
    """Architecture of a RAM tagger; the defaults are the released ``ram_swin_large_14m`` (Swin-L, 384²).

    Swin fields follow ``configs/swin/config_swinL_384.json`` (``image_res`` -> ``image_size``), head
    fields follow ``configs/q2l_config.json`` (a BERT config: ``hidden_size`` -> ``head_hidden_size``
    etc.); ``num_classes`` is the length of the tag list.
    """


    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    image_embed_dim: int = _IMAGE_EMBED_DIM
    head_hidden_size: int = 768
    head_num_layers: int = 2
    head_num_heads: int = 4
    head_intermediate_size: int = 3072
    head_layer_norm_eps: float = 1e-12
    num_classes: int = 4585

    @model_validator(mode="after")
    def _check(self) -> RAMConfig:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} need one entry per stage")
        for name in ("image_size", "patch_size", "embed_dim", "window_size", "image_embed_dim",
                     "head_hidden_size", "head_num_layers", "head_num_heads", "head_intermediate_size",
                     "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head_hidden_size % self.head_num_heads:
            raise ValueError(f"head_hidden_size {self.head_hidden_size} is not divisible by "
                             f"head_num_heads {self.head_num_heads}")
        grid = self.image_size // self.patch_size
        if self.image_size % self.patch_size or grid % 2 ** (len(self.depths) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size·2^(stages-1) "
                             f"= {self.patch_size * 2 ** (len(self.depths) - 1)}")
        return self

    @property
    def vision_width(self) -> int:
        """Channels of the last Swin stage (1536 for Swin-L)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image in ``image_embeds``: the pooled token plus the last stage's grid (145 at 384²)."""
        side = self.image_size // self.patch_size // 2 ** (len(self.depths) - 1)
        return 1 + side * side

    @classmethod
    def from_official_files(cls, swin_config: str | os.PathLike, q2l_config: str | os.PathLike,
                            **overrides: Any) -> RAMConfig:
        """Read the official pair ``configs/swin/config_swin*_384.json`` + ``configs/q2l_config.json``."""
        swin, q2l = _read_json(swin_config), _read_json(q2l_config)
        if q2l.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"{q2l_config}: hidden_act {q2l['hidden_act']!r} is not supported (RAM uses 'gelu').")
        try:
            values = {
                "image_size": swin["image_res"], "embed_dim": swin["embed_dim"],
                "depths": tuple(swin["depths"]), "num_heads": tuple(swin["num_heads"]),
                "window_size": swin["window_size"],
                "head_hidden_size": q2l["hidden_size"], "head_num_layers": q2l["num_hidden_layers"],
                "head_num_heads": q2l["num_attention_heads"],
                "head_intermediate_size": q2l["intermediate_size"],
                "head_layer_norm_eps": q2l.get("layer_norm_eps", 1e-12),
            }
            config = cls(**{**values, **overrides})
        except KeyError as exc:
            raise ConfigError(f"RAM config files {swin_config} / {q2l_config} lack the entry {exc}.") from exc
        except ConfigError as exc:
            raise ConfigError(f"RAM config files {swin_config} / {q2l_config} are inconsistent: {exc}") from exc
        if "vision_width" in swin and swin["vision_width"] != config.vision_width:
            raise ConfigError(f"{swin_config}: vision_width {swin['vision_width']} does not match embed_dim "
                              f"{config.embed_dim} over {len(config.depths)} stages ({config.vision_width}).")
        return config

    @classmethod
    def from_official_dir(cls, folder: str | os.PathLike, **overrides: Any) -> RAMConfig:
        """Read the official config files from a folder laid out like RAM's ``ram/configs/``.

        Looks for ``q2l_config.json`` and a Swin config named ``swin_config.json``,
        ``swin/config_swinL_384.json`` or ``config_swinL_384.json``.
        """
        root = Path(folder)
        q2l = root / "q2l_config.json"
        swin = next((root / name for name in ("swin_config.json", "swin/config_swinL_384.json",
                                              "config_swinL_384.json") if (root / name).is_file()), None)
        if not q2l.is_file() or swin is None:
            raise ConfigError(
                f"{root} is not a RAM config folder: it needs q2l_config.json and swin_config.json "
                "(or swin/config_swinL_384.json, as in RAM's ram/configs/)."
            )
        return cls.from_official_files(swin, q2l, **overrides)


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Cannot read the RAM config file {path}: {exc}") from exc


@dataclass
class RAMOutput:
    """Outputs of :meth:`RAMModel.forward` for B images.

    Attributes:
        image_embeds: ``(B, T, image_embed_dim)`` projected image tokens, T = 145 at 384²; token 0 is the
            average of the others. SeeSR's ``ram_encoder_hidden_states``.
        logits: ``(B, num_classes)`` tag logits (sigmoid gives probabilities).
    """

    image_embeds: torch.Tensor
    logits: torch.Tensor


class RAMCrossAttention(nn.Module):
    """Multi-head attention of tag queries (width ``hidden``) over image tokens (width ``context``)."""

    def __init__(self, hidden: int, context: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(context, hidden)
        self.value = nn.Linear(context, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``queries`` (B, N, hidden), ``context`` (B, T, context) -> (B, N, hidden)."""
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query(queries)), heads(self.key(context)), heads(self.value(context))
        )
        return self.out(attended.transpose(1, 2).flatten(2))


class RAMTaggingLayer(nn.Module):
    """One Query2Label layer: cross-attention and a GELU MLP, each with a post-residual LayerNorm."""

    def __init__(self, config: RAMConfig) -> None:
        super().__init__()
        hidden = config.head_hidden_size
        self.cross_attn = RAMCrossAttention(hidden, config.image_embed_dim, config.head_num_heads)
        self.cross_attn_norm = nn.LayerNorm(hidden, eps=config.head_layer_norm_eps)
        self.ffn_in = nn.Linear(hidden, config.head_intermediate_size)
        self.ffn_out = nn.Linear(config.head_intermediate_size, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=config.head_layer_norm_eps)

    def forward(self, hidden: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        hidden = self.cross_attn_norm(self.cross_attn(hidden, image_embeds) + hidden)
        return self.ffn_norm(self.ffn_out(F.gelu(self.ffn_in(hidden))) + hidden)


class RAMTaggingHead(nn.Module):
    """The stack of :class:`RAMTaggingLayer` (BERT in 'tagging' mode: no embeddings, no self-attention)."""

    def __init__(self, config: RAMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(RAMTaggingLayer(config) for _ in range(config.head_num_layers))

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """``queries`` (B, N, hidden), ``image_embeds`` (B, T, 512) -> (B, N, hidden)."""
        for layer in self.layers:
            queries = layer(queries, image_embeds)
        return queries


class RAMModel(nn.Module):
    """RAM's tagging network. Input: ImageNet-normalised ``(B, 3, S, S)`` float, S = ``config.image_size``."""

    def __init__(self, config: RAMConfig) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.config = config
        self.visual_encoder = SwinTransformer(
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depths=config.depths, num_heads=config.num_heads, window_size=config.window_size,
            mlp_ratio=config.mlp_ratio, qkv_bias=True, num_classes=0, drop_path_rate=0.0,
            weight_init="skip",  # the weights come from a checkpoint; timm's init of Swin-L takes seconds
        )
        self.image_proj = nn.Linear(config.vision_width, config.image_embed_dim)
        self.label_embed = nn.Parameter(torch.zeros(config.num_classes, config.image_embed_dim))
        # The official model skips the projection when the head is as wide as the label embeddings.
        self.wordvec_proj = (nn.Identity() if config.head_hidden_size == config.image_embed_dim
                             else nn.Linear(config.image_embed_dim, config.head_hidden_size))
        self.tagging_head = RAMTaggingHead(config)
        self.fc = nn.Linear(config.head_hidden_size, 1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Swin tokens ``(B, 1 + h·w, vision_width)``: the token average, then the last stage row-major."""
        tokens = self.visual_encoder.forward_features(pixel_values).flatten(1, 2)  # NHWC -> (B, h·w, C)
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)

    def label_queries(self) -> torch.Tensor:
        """The tagging head's queries ``(num_classes, head_hidden_size)``, the same for every image."""
        return F.relu(self.wordvec_proj(self.label_embed))

    def forward(self, pixel_values: torch.Tensor) -> RAMOutput:
        image_embeds = self.image_proj(self.encode_image(pixel_values))
        queries = self.label_queries().expand(pixel_values.shape[0], -1, -1)
        logits = self.fc(self.tagging_head(queries, image_embeds)).squeeze(-1)
        return RAMOutput(image_embeds=image_embeds, logits=logits)


# ---------------------------------------------------------------------------------------------------
# Official checkpoints

# Official entries the tagger needs (prefixes); tag_encoder/text_decoder are captioning/training parts.
_TAGGING_PREFIXES = ("visual_encoder.", "image_proj.", "label_embed", "wordvec_proj.", "tagging_head.", "fc.")
_UNUSED_PREFIXES = ("tag_encoder.", "text_decoder.")

# official tagging-head names (after "tagging_head.encoder.layer.{i}.") -> ours (after "tagging_head.layers.{i}.")
_HEAD_NAMES = {
    "crossattention.self.query": "cross_attn.query",
    "crossattention.self.key": "cross_attn.key",
    "crossattention.self.value": "cross_attn.value",
    "crossattention.output.dense": "cross_attn.out",
    "crossattention.output.LayerNorm": "cross_attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_HEAD_KEY = re.compile(r"tagging_head\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def official_ram_state(checkpoint: Mapping[str, Any], *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The RAM state dict inside an official checkpoint, in official names.

    Accepts the training save ``{"model": state, "optimizer": ..., ...}`` (only ``"model"`` is read) or
    a bare state dict (the ``.safetensors`` copies). Renames the old ``vision_multi.*`` to
    ``tagging_head.*`` as the official loader does.
    """
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{source}: the 'model' entry is a {type(state).__name__}, not a state dict.")
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out["tagging_head." + key[len("vision_multi."):] if key.startswith("vision_multi.") else key] = value
    if "label_embed" not in out or "visual_encoder.patch_embed.proj.weight" not in out:
        raise CheckpointMismatchError(
            f"{source} is not a RAM checkpoint: it lacks 'label_embed' and/or 'visual_encoder.patch_embed.proj.weight' "
            f"(first keys: {sorted(out)[:6]}). Pass ram_swin_large_14m.pth or its safetensors copy."
        )
    return out


def infer_ram_config(state: Mapping[str, torch.Tensor], **overrides: Any) -> RAMConfig:
    """The :class:`RAMConfig` of an official RAM state dict, read from its tensor shapes.

    Not stored in the weights, hence the official values unless overridden: ``image_size`` 384,
    ``head_num_heads`` 4, ``head_layer_norm_eps`` 1e-12. ``overrides`` replace inferred fields.
    """
    unknown = sorted(set(overrides) - set(RAMConfig.model_fields))
    if unknown:
        raise ConfigError(f"Unknown RAM config fields {unknown}; known: {sorted(RAMConfig.model_fields)}.")
    try:
        proj = state["visual_encoder.patch_embed.proj.weight"]
        stages = sorted({int(m.group(1)) for k in state
                         if (m := re.match(r"visual_encoder\.layers\.(\d+)\.blocks\.", k))})
        depths = tuple(
            len({int(m.group(1)) for k in state if (m := re.match(rf"visual_encoder\.layers\.{i}\.blocks\.(\d+)\.", k))})
            for i in stages
        )
        tables = [state[f"visual_encoder.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in stages]
        fc1 = state["visual_encoder.layers.0.blocks.0.mlp.fc1.weight"]
        head_layers = sorted({int(m.group(1)) for k in state if (m := _HEAD_KEY.match(k))})
        values = {
            "patch_size": proj.shape[-1],
            "embed_dim": proj.shape[0],
            "depths": depths,
            "num_heads": tuple(t.shape[1] for t in tables),
            "window_size": (round(tables[0].shape[0] ** 0.5) + 1) // 2,
            "mlp_ratio": fc1.shape[0] / fc1.shape[1],
            "image_embed_dim": state["image_proj.weight"].shape[0],
            "head_hidden_size": state["tagging_head.encoder.layer.0.crossattention.self.query.weight"].shape[0],
            "head_num_layers": len(head_layers),
            "head_intermediate_size": state["tagging_head.encoder.layer.0.intermediate.dense.weight"].shape[0],
            "num_classes": state["label_embed"].shape[0],
        }
        return RAMConfig(**{**values, **overrides})
    except (KeyError, IndexError) as exc:
        raise CheckpointMismatchError(
            f"Cannot read the RAM architecture from the checkpoint: it lacks {exc}. Is it a RAM checkpoint?"
        ) from exc
    except ConfigError as exc:  # shapes read from a file, not the caller's arguments: the checkpoint is wrong
        raise CheckpointMismatchError(
            f"The checkpoint's shapes{' with ' + repr(overrides) if overrides else ''} give an invalid RAM "
            f"architecture: {exc}"
        ) from exc


def merge_dape_lora(state: Mapping[str, torch.Tensor], lora: Mapping[str, Any], *,
                    source: str = "DAPE weights") -> dict[str, torch.Tensor]:
    """RAM weights with SeeSR's DAPE LoRA folded in (what loralib's merge on ``.eval()`` computes).

    ``lora`` is ``DAPE.pth``: a flat dict of every ``lora_A``/``lora_B`` of SeeSR's ``RAMLora``.

    * Swin ``attn.qkv`` (``MergedLinear``, LoRA on q and v): A is (16, C), B is (2C, 8);
      ``W[:C] += B[:C] @ A[:8] / 8`` and ``W[2C:] += B[C:] @ A[8:] / 8``; k is unchanged.
    * BERT ``query``/``key`` (``lora.Linear``): ``W += B @ A / 8``. In the official model the first
      tag-encoder layers' cross-attention weights *are* the tagging head's (tied Parameters, each with
      its own LoRA), so both deltas land on the shared weight; DAPE training leaves the tag-encoder B
      at zero, but the sum is what the official merge computes, so it is reproduced here.

    Raises:
        CheckpointMismatchError: ``lora`` is not a DAPE LoRA file for this RAM (a full checkpoint,
            missing blocks, or shapes that do not fit).
    """
    tensors = {k: v for k, v in lora.items() if isinstance(v, torch.Tensor)}
    unexpected = sorted(k for k in tensors if not k.endswith((".lora_A", ".lora_B")))
    if unexpected:
        hint = " It looks like a full RAM checkpoint: pass it as ram_weights=." if "label_embed" in tensors else ""
        raise CheckpointMismatchError(
            f"{source} is not a DAPE LoRA file: unexpected keys {unexpected[:5]}"
            f"{' …' if len(unexpected) > 5 else ''}.{hint} DAPE.pth holds only lora_A/lora_B tensors."
        )
    merged = dict(state)
    qkv_targets = sorted(k[: -len(".weight")] for k in state
                         if k.startswith("visual_encoder.") and k.endswith(".attn.qkv.weight"))
    head_targets = sorted(k[: -len(".weight")] for k in state
                          if _HEAD_KEY.match(k) and re.search(r"crossattention\.self\.(query|key)\.weight$", k))
    missing = [f"{t}.lora_{ab}" for t in qkv_targets + head_targets for ab in "AB" if f"{t}.lora_{ab}" not in tensors]
    if missing:
        raise CheckpointMismatchError(
            f"{source} does not fit this RAM: missing {len(missing)} LoRA tensors, e.g. {missing[:4]}. "
            "Pass the DAPE.pth trained for this RAM (ram_swin_large_14m)."
        )
    try:
        for target in qkv_targets:
            weight = merged[f"{target}.weight"].clone()
            a, b = tensors[f"{target}.lora_A"].to(weight), tensors[f"{target}.lora_B"].to(weight)
            dim, rank = weight.shape[1], a.shape[0] // 2
            weight[:dim] += b[:dim] @ a[:rank] * _DAPE_LORA_SCALING
            weight[2 * dim:] += b[dim:] @ a[rank:] * _DAPE_LORA_SCALING
            merged[f"{target}.weight"] = weight
        for target in head_targets:
            weight = merged[f"{target}.weight"].clone()
            tied = target.replace("tagging_head.", "tag_encoder.", 1)
            for owner in (target, tied):
                if f"{owner}.lora_A" in tensors:
                    a, b = tensors[f"{owner}.lora_A"].to(weight), tensors[f"{owner}.lora_B"].to(weight)
                    weight += b @ a * _DAPE_LORA_SCALING
            merged[f"{target}.weight"] = weight
    except RuntimeError as exc:  # matmul / in-place add shape errors
        raise CheckpointMismatchError(f"{source}: LoRA shapes do not fit the RAM weights ({exc}).") from exc
    return merged


def _to_model_names(state: Mapping[str, torch.Tensor], model: RAMModel) -> dict[str, torch.Tensor]:
    """Official tagging names -> :class:`RAMModel` names (Swin through timm's own checkpoint filter)."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    swin = {k[len("visual_encoder."):]: v for k, v in state.items() if k.startswith("visual_encoder.")}
    out = {f"visual_encoder.{k}": v for k, v in checkpoint_filter_fn(swin, model.visual_encoder).items()}
    for key, value in state.items():
        if key.startswith("visual_encoder."):
            continue
        match = _HEAD_KEY.match(key)
        if match and match.group(2) in _HEAD_NAMES:
            key = f"tagging_head.layers.{match.group(1)}.{_HEAD_NAMES[match.group(2)]}.{match.group(3)}"
        out[key] = value
    return out


def load_official_weights(model: RAMModel, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Load an official RAM state dict (DAPE LoRA already merged) into ``model``, all or nothing.

    Raises:
        CheckpointMismatchError: keys the model needs are missing, keys of unknown parts are present,
            or shapes differ (e.g. a tag list of another length); the message names them.
    """
    tagging = {k: v for k, v in state.items() if k.startswith(_TAGGING_PREFIXES)}
    unknown = sorted(k for k in state if k not in tagging and not k.startswith(_UNUSED_PREFIXES))
    load_state_strictly(model, _to_model_names(tagging, model), unknown=unknown, source=source,
                        what=f"the RAM architecture {model.config.model_dump()}",
                        fix="Pass the RAM checkpoint (ram_swin_large_14m.pth), a config= that matches it, and a tag "
                            "list with one line per class.")
