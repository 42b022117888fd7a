"""RAM and DAPE prompt extractors: image tags as the prompt, plus the image features SeeSR consumes.

``load_prompt_extractor("ram")`` loads the released RAM (``ram_swin_large_14m.pth``) from the Hub;
``load_prompt_extractor("dape")`` adds SeeSR's degradation-aware LoRA on top (``DAPE.pth``, published on
Google Drive only, downloaded through the weights table, or given as ``weights=``). Both read the official checkpoints
without executing code, infer the architecture from the tensor shapes (or take ``config=``), and tag
with the official 4585-tag list and per-class thresholds.

The prompt is the selected tags in tag-list order joined with ``", "`` (SeeSR's and OSEDiff's format;
the RAM demo's ``" | "`` is ``separator=" | "``). The model itself is :mod:`elqproj.prompts.ram_model`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from elqproj import hub
from elqproj.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from elqproj.devices import resolve_device_dtype
from elqproj.prompts.base import PromptExtractor, PromptResult, image_list, move_module
from elqproj.weights import COMPONENTS, resolve_weights
from elqproj.prompts.ram_model import (
    RAMConfig,
    RAMModel,
    infer_ram_config,
    load_official_weights,
    merge_dape_lora,
    official_ram_state,
)

__all__ = [
    "RAMTagger",
    "load_ram",
    "load_dape",
    "ram_pixel_values",
    "read_tag_list",
    "tag_indices",
    "read_tag_thresholds",
    "RAM_WEIGHTS",
    "RAM_TAG_LIST",
    "RAM_TAG_LIST_CHINESE",
    "RAM_TAG_THRESHOLDS",
    "DAPE_DOWNLOAD_PAGE",
]

#: The authors' Hub copy of the released RAM (Swin-L, 14M images). The RAM README also links a copy in
#: the Space ``xinyu1205/recognize-anything`` (fetch it with ``hf_hub_download(..., repo_type="space")``).
RAM_WEIGHTS = COMPONENTS["ram"].source
_RAM_DATA = ("https://raw.githubusercontent.com/xinyu1205/recognize-anything/"
             "7cb804a8609e9f4b1a50b7f31436d2df40bb9481/ram/data/")
#: The official tag list (4585 English tags, one per line), pinned to a commit.
RAM_TAG_LIST = _RAM_DATA + "ram_tag_list.txt"
#: The same tags in Chinese (``tag_list=RAM_TAG_LIST_CHINESE`` gives Chinese prompts).
RAM_TAG_LIST_CHINESE = _RAM_DATA + "ram_tag_list_chinese.txt"
#: The per-class decision thresholds (one float per tag).
RAM_TAG_THRESHOLDS = _RAM_DATA + "ram_tag_list_threshold.txt"
_SHA256 = {
    RAM_TAG_LIST: "5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b",
    RAM_TAG_LIST_CHINESE: "c912657a0f30be7b2f5df6ccffa17e1d84561d0bea508528e38b6d0d711bcfbe",
    RAM_TAG_THRESHOLDS: "b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447",
}
#: Where SeeSR publishes DAPE.pth (Google Drive; there is no official Hub copy).
DAPE_DOWNLOAD_PAGE = "https://drive.google.com/file/d/" + COMPONENTS["dape"].source

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

Preprocessing = Literal["ram", "seesr"]


def ram_pixel_values(images: Sequence[torch.Tensor], size: int, preprocessing: Preprocessing = "ram") -> torch.Tensor:
    """RAM's input: images resized to ``size``², ImageNet-normalised, ``(B, 3, size, size)`` float32.

    Args:
        images: ``(3, H, W)`` float tensors in [0, 1] (sizes may differ), on any device.
        size: the model's input side (384 for the released RAM).
        preprocessing: how to resize, after one of the two official pipelines:

            * ``"ram"`` — RAM's ``get_transform``: the image as 8-bit (PIL's input), then PIL's
              antialiased bilinear resize, done by PIL on the CPU.
            * ``"seesr"`` — SeeSR's / OSEDiff's ``ram_transforms`` on a float tensor: bilinear **without**
              antialias (their pinned torchvision 0.15 default; newer torchvision antialiases, which
              changes downscaled inputs by up to 0.26 in normalised units). Runs on the images' device.

    Returns:
        The batch on the first image's device (float32).
    """
    if preprocessing not in ("ram", "seesr"):
        raise ConfigError(f"preprocessing={preprocessing!r} is not one of 'ram', 'seesr'.")
    device = images[0].device
    resized = []
    for image in images:
        if preprocessing == "ram":
            as_uint8 = (image.detach().float() * 255).round().clamp(0, 255).to("cpu", torch.uint8)
            pil = Image.fromarray(as_uint8.permute(1, 2, 0).numpy())  # (H, W, 3) uint8: RGB
            # PIL itself: torch's uint8 antialiased kernel differs from PIL's by one level on downscales.
            out = np.array(pil.resize((size, size), Image.Resampling.BILINEAR))
            resized.append(torch.from_numpy(out).permute(2, 0, 1)[None].to(device).float() / 255)
        else:
            resized.append(F.interpolate(image.float()[None], size=(size, size), mode="bilinear",
                                         antialias=False, align_corners=False))
    batch = torch.cat(resized)
    mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (batch - mean) / std


def _read_text(spec: str | os.PathLike, what: str) -> str:
    try:
        path = hub.resolve_file(spec, sha256=_SHA256.get(os.fspath(spec)))
    except WeightsNotFoundError as exc:
        option = "tag_thresholds" if "threshold" in what else "tag_list"
        raise WeightsNotFoundError(
            f"{exc} The {what} is a separate file from the RAM/DAPE weights: pass {option}= a local copy (CLI: "
            f"--{option.replace('_', '-')} FILE, or --prompt-option {option}=FILE) of {spec}."
        ) from exc
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the {what} {spec}: {exc}") from exc


def read_tag_list(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """Tags, one per line, exactly as the official code reads them (``splitlines()``, nothing stripped:
    several Chinese tags end with a space that shows in the prompt). A sequence of str is used as is."""
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return list(spec)
    return _read_text(spec, "tag list").splitlines()


def read_tag_thresholds(spec: str | os.PathLike | Sequence[float]) -> torch.Tensor:
    """Per-class thresholds ``(num_classes,)`` float32, one float per line (blank lines ignored)."""
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return torch.tensor([float(v) for v in spec], dtype=torch.float32)
    lines = [line.strip() for line in _read_text(spec, "tag threshold file").splitlines() if line.strip()]
    try:
        return torch.tensor([float(v) for v in lines], dtype=torch.float32)
    except ValueError as exc:
        raise ConfigError(f"{spec} is not a threshold file (one float per line): {exc}") from exc


def tag_indices(selection: Sequence[int | str], tags: Sequence[str]) -> list[int]:
    """Tag names or indices (negative ones count from the end) -> indices into ``tags``.

    Raises:
        ConfigError: a name that is not a tag (the message suggests close ones) or an index out of range.
    """
    index = {tag: i for i, tag in enumerate(tags)}
    out = []
    for item in selection:
        if isinstance(item, str):
            if item not in index:
                close = difflib.get_close_matches(item, tags, n=3)
                raise ConfigError(f"exclude_tags: {item!r} is not a tag" + (f"; did you mean {close}?" if close else "."))
            out.append(index[item])
        elif isinstance(item, int) and -len(tags) <= item < len(tags):
            out.append(item % len(tags))
        else:
            raise ConfigError(f"exclude_tags: {item!r} is neither a tag name nor an index below {len(tags)}.")
    return out


class RAMTagger(PromptExtractor):
    """RAM / DAPE as a prompt extractor: tags above their class threshold, in tag-list order.

    Use :func:`load_ram` / :func:`load_dape` (or ``load_prompt_extractor("ram" | "dape", ...)``).

    Args:
        model: the tagging network (weights loaded).
        tags: one name per class, in class order.
        thresholds: ``(num_classes,)`` per-class thresholds; a tag is selected when its sigmoid
            probability is strictly greater.
        name: registry name shown in logs (``"ram"`` or ``"dape"``).
        separator: joins the selected tags into the prompt.
        exclude_tags: tag names or class indices never selected (the official ``delete_tag_index``).
        preprocessing: ``"ram"`` or ``"seesr"``, see :func:`ram_pixel_values`.
    """

    def __init__(
        self,
        model: RAMModel,
        tags: Sequence[str],
        thresholds: torch.Tensor,
        *,
        name: str = "ram",
        separator: str = ", ",
        exclude_tags: Sequence[int | str] = (),
        preprocessing: Preprocessing = "ram",
    ) -> None:
        num_classes = model.config.num_classes
        if len(tags) != num_classes or thresholds.shape != (num_classes,):
            raise ConfigError(
                f"The tagger has {num_classes} classes but {len(tags)} tags and {tuple(thresholds.shape)} "
                "thresholds: pass a tag list and threshold file with one line per class."
            )
        if preprocessing not in ("ram", "seesr"):
            raise ConfigError(f"preprocessing={preprocessing!r} is not one of 'ram', 'seesr'.")
        self.model = model.eval().requires_grad_(False)
        self.tags = list(tags)
        self.thresholds = thresholds.float()
        self.name = name
        self.separator = separator
        self.preprocessing: Preprocessing = preprocessing
        self.excluded = tag_indices(exclude_tags, self.tags)

    @property
    def config(self) -> RAMConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.label_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.label_embed.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> RAMTagger:
        move_module(self.model, device, dtype, owner=f"prompt extractor {self.name!r}")
        return self

    def pixel_values(self, images: Any) -> torch.Tensor:
        """The model input for ``images`` (see :func:`ram_pixel_values`), on the model's device and dtype."""
        batch = ram_pixel_values(image_list(images), self.config.image_size, self.preprocessing)
        return batch.to(self.device, self.dtype)

    def extract(self, images: Any) -> PromptResult:
        """Tags and features of ``images`` (float ``(B,3,H,W)`` / ``(3,H,W)`` in [0,1], PIL, paths, lists).

        Returns:
            :class:`PromptResult` with ``texts`` (tags joined by :attr:`separator`), ``tags``,
            ``scores`` ``(B, num_classes)`` float32 probabilities, and ``image_features``
            ``(B, 145, 512)`` at 384² in the model's dtype and device — SeeSR's
            ``ram_encoder_hidden_states`` (token 0 is the average of the 144 Swin tokens).
        """
        return self.tag_pixel_values(self.pixel_values(images))

    @torch.no_grad()  # not inference_mode: the features may enter a graph later (e.g. SeeSR training)
    def tag_pixel_values(self, pixel_values: torch.Tensor) -> PromptResult:
        """:meth:`extract` on an already preprocessed batch ``(B, 3, S, S)`` (see :meth:`pixel_values`)."""
        output = self.model(pixel_values.to(self.device, self.dtype))
        # Thresholds are compared in float32: half-precision sigmoids round onto the 0.65/0.8 grid.
        result = self.prompts_from_scores(torch.sigmoid(output.logits.float()))
        result.image_features = output.image_embeds
        return result

    def prompts_from_scores(self, scores: torch.Tensor) -> PromptResult:
        """Prompts for tag probabilities ``(B, num_classes)``: every tag whose probability is strictly
        above its class threshold and not excluded, in tag-list order, joined by :attr:`separator`."""
        selected = scores > self.thresholds.to(scores.device)
        selected[:, self.excluded] = False
        tags = [[self.tags[i] for i in row.nonzero().flatten().tolist()] for row in selected.cpu()]
        return PromptResult(texts=[self.separator.join(row) for row in tags], tags=tags, scores=scores)

    def __repr__(self) -> str:
        return (f"RAMTagger(name={self.name!r}, classes={self.config.num_classes}, "
                f"image_size={self.config.image_size}, preprocessing={self.preprocessing!r})")


def _resolve_checkpoint(spec: Any, default_filename: str, revision: str | None, what: str, *,
                        component: str) -> tuple[dict, str]:
    """Read a checkpoint given as a file, a folder or Hub repo holding ``default_filename``, or a URL;
    ``None``: ``component``'s default from the weights table."""
    names_a_folder = False
    if spec is not None:
        text = os.fspath(spec)
        names_a_folder = Path(text).expanduser().is_dir() or (
            not Path(text).expanduser().exists() and "://" not in text and text.count("/") == 1
        )
    path = resolve_weights(spec, component, filename=default_filename if names_a_folder else None, revision=revision)
    return hub.load_checkpoint(path), f"{what} {path}"


def _resolve_config(config: RAMConfig | dict | str | os.PathLike | None, state: dict, num_classes: int) -> RAMConfig:
    if config is None or isinstance(config, dict):
        return infer_ram_config(state, **(config or {}))
    if isinstance(config, RAMConfig):
        return config.model_copy(update={"num_classes": num_classes})
    return RAMConfig.from_official_dir(config, num_classes=num_classes)


def _read_ram_state(weights: Any, revision: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The official RAM state dict in ``weights`` (default :data:`RAM_WEIGHTS`) and where it was read."""
    checkpoint, source = _resolve_checkpoint(weights, "ram_swin_large_14m.pth", revision, "RAM checkpoint",
                                             component="ram")
    return official_ram_state(checkpoint, source=source), source


def _build_tagger(
    state: dict,
    source: str,
    *,
    name: str,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    config: RAMConfig | dict | str | os.PathLike | None,
    tag_list: str | os.PathLike | Sequence[str] | None,
    tag_thresholds: str | os.PathLike | Sequence[float] | None,
    threshold: float | None,
    separator: str,
    exclude_tags: Sequence[int | str],
    preprocessing: Preprocessing,
) -> RAMTagger:
    tags = read_tag_list(RAM_TAG_LIST if tag_list is None else tag_list)
    if threshold is not None:
        thresholds = torch.full((len(tags),), float(threshold))
    else:
        thresholds = read_tag_thresholds(RAM_TAG_THRESHOLDS if tag_thresholds is None else tag_thresholds)
    checkpoint_classes = state["label_embed"].shape[0]
    if checkpoint_classes != len(tags):
        raise CheckpointMismatchError(
            f"{source} has {checkpoint_classes} classes, but the tag list has {len(tags)} tags. Pass the tag "
            "list the checkpoint was trained with (tag_list=...; the released RAM uses RAM_TAG_LIST)."
        )
    model = RAMModel(_resolve_config(config, state, len(tags)))
    load_official_weights(model, state, source=source)
    tagger = RAMTagger(model, tags, thresholds, name=name, separator=separator, exclude_tags=exclude_tags,
                       preprocessing=preprocessing)
    return tagger.to(*resolve_device_dtype(device, dtype))


def load_ram(
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    config: RAMConfig | dict | str | os.PathLike | None = None,
    tag_list: str | os.PathLike | Sequence[str] | None = None,
    tag_thresholds: str | os.PathLike | Sequence[float] | None = None,
    threshold: float | None = None,
    separator: str = ", ",
    exclude_tags: Sequence[int | str] = (),
    preprocessing: Preprocessing = "ram",
) -> RAMTagger:
    """Load RAM from an official checkpoint (registered as ``"ram"``).

    Args:
        weights: ``ram_swin_large_14m.pth`` or its ``.safetensors`` copy: a local file, a folder or Hub
            repo holding that file name, ``"org/name/path/file.pth"``, or a URL. Default:
            :data:`RAM_WEIGHTS`. Only the ``"model"`` entry of a training save is read.
        device, dtype: where the model runs (default: CUDA when available, else CPU; float32).
        revision: Hub revision of ``weights``.
        config: the architecture. ``None`` reads it from the checkpoint's shapes, with the official
            values for what the weights do not show (384² input, 4 head attention heads, LayerNorm eps
            1e-12); a dict overrides fields of that inferred config (``{"image_size": 224}``); a
            :class:`RAMConfig` or a folder of official config files (``q2l_config.json`` +
            ``swin_config.json`` / ``swin/config_swinL_384.json``) gives it in full, and the checkpoint
            is checked against it. ``num_classes`` always comes from the tag list.
        tag_list: tag names (file/URL with one tag per line, or a list). Default: :data:`RAM_TAG_LIST`;
            :data:`RAM_TAG_LIST_CHINESE` gives Chinese tags.
        tag_thresholds: per-class thresholds (file/URL or floats). Default: :data:`RAM_TAG_THRESHOLDS`.
        threshold: one threshold for every class instead of ``tag_thresholds``.
        separator: joins tags into the prompt; ``", "`` (SeeSR/OSEDiff), RAM's demo prints ``" | "``.
        exclude_tags: tag names or class indices never selected.
        preprocessing: ``"ram"`` (RAM's PIL pipeline, default) or ``"seesr"``; see :func:`ram_pixel_values`.

    Raises:
        WeightsNotFoundError: the checkpoint, tag list or thresholds cannot be found (offline, wrong path).
        CheckpointMismatchError: the file is not a RAM checkpoint for this config / tag list.
    """
    state, source = _read_ram_state(weights, revision)
    return _build_tagger(state, source, name="ram", device=device, dtype=dtype, config=config, tag_list=tag_list,
                         tag_thresholds=tag_thresholds, threshold=threshold, separator=separator,
                         exclude_tags=exclude_tags, preprocessing=preprocessing)


def load_dape(
    weights: str | os.PathLike | None = None,
    *,
    ram_weights: str | os.PathLike | None = None,
    ram_revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    config: RAMConfig | dict | str | os.PathLike | None = None,
    tag_list: str | os.PathLike | Sequence[str] | None = None,
    tag_thresholds: str | os.PathLike | Sequence[float] | None = None,
    threshold: float | None = None,
    separator: str = ", ",
    exclude_tags: Sequence[int | str] = (),
    preprocessing: Preprocessing = "seesr",
) -> RAMTagger:
    """Load DAPE, SeeSR's degradation-aware RAM (registered as ``"dape"``).

    DAPE = RAM weights + a LoRA file, merged at load as SeeSR's ``.eval()`` does. Same arguments as
    :func:`load_ram`, plus:

    Args:
        weights: ``DAPE.pth`` (or its safetensors copy): file, folder holding ``DAPE.pth`` (or written by
            ``elqproj convert dape``), Hub path or URL. Default: SeeSR's release on Google Drive
            (:data:`DAPE_DOWNLOAD_PAGE`), downloaded through the weights table (``elqproj download dape``).
        ram_weights, ram_revision: the RAM checkpoint DAPE was trained on (default :data:`RAM_WEIGHTS`).
        preprocessing: defaults to ``"seesr"``, the resize SeeSR and OSEDiff apply before DAPE; their
            networks were trained on those image features.
    """
    lora, lora_source = _resolve_checkpoint(weights, "DAPE.pth", revision, "DAPE LoRA", component="dape")
    ram_state, ram_source = _read_ram_state(ram_weights, ram_revision)
    state = merge_dape_lora(ram_state, lora, source=lora_source)
    return _build_tagger(state, f"{ram_source} + {lora_source}", name="dape", device=device, dtype=dtype,
                         config=config, tag_list=tag_list, tag_thresholds=tag_thresholds, threshold=threshold,
                         separator=separator, exclude_tags=exclude_tags, preprocessing=preprocessing)
