"""The DA-CLIP prompt extractor: zero-shot tags from DA-CLIP's degradation-robust content embedding, and
DA-CLIP's degradation-type probabilities.

``load_prompt_extractor("daclip")`` loads the released DA-CLIP ViT-B-32 (``daclip_ViT-B-32.pt``, through the
weights table) and tags each image zero-shot: the cosine similarity between the image's *content* embedding
(DA-CLIP's image features with control, trained to match the caption of the clean image) and CLIP's text
embedding of ``"a photo of a {tag}."`` for every tag of RAM's tag list; the ``top_k`` most similar tags
(optionally only those above ``threshold``) form the prompt, most similar first. The same forward pass gives
the degradation embedding, and with it the probabilities of DA-CLIP's ten degradation types
(:data:`DEGRADATIONS`), computed as the DA-CLIP README does. The model is
:mod:`elqproj.prompts.daclip_model`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from elqproj import hub
from elqproj.devices import resolve_device_dtype
from elqproj.errors import ConfigError
from elqproj.prompts.base import PromptExtractor, PromptResult, image_list, move_module
from elqproj.prompts.daclip_model import (
    DaCLIPConfig,
    DaCLIPModel,
    infer_daclip_config,
    load_official_weights,
    official_daclip_state,
)
from elqproj.prompts.ram import RAM_TAG_LIST, read_tag_list, tag_indices
from elqproj.weights import COMPONENTS, resolve_weights

__all__ = [
    "DaCLIPTagger",
    "DaCLIPPromptResult",
    "load_daclip",
    "load_daclip_model",
    "daclip_pixel_values",
    "DEGRADATIONS",
    "TAG_TEMPLATE",
    "DEFAULT_TOP_K",
    "DACLIP_WEIGHTS",
]

#: The authors' Hub copy of DA-CLIP ViT-B-32 (their README's "DA-CLIP" row; the same file is on Google Drive).
DACLIP_WEIGHTS = COMPONENTS["daclip"].source
_DACLIP_FILE = COMPONENTS["daclip"].files[0]
#: DA-CLIP's degradation vocabulary, in the order of the README example (its ten training tasks;
#: "uncompleted" is inpainting). The texts are the bare words, as the README tokenizes them.
DEGRADATIONS: tuple[str, ...] = ("motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "raindrop",
                                 "rainy", "shadowed", "snowy", "uncompleted")
#: The text each tag is embedded as: CLIP's own single zero-shot template.
TAG_TEMPLATE = "a photo of a {}."
#: Tags kept per image: prompts of the length RAM / DAPE typically give (a few to a dozen tags), the kind the
#: restorers were trained with. Not tuned on the released weights.
DEFAULT_TOP_K = 10
# The official softmax temperature: the README scales cosine similarities by a fixed 100 (not the model's
# learned logit scale) before the softmax over the degradation vocabulary.
_PROBABILITY_SCALE = 100.0
# open_clip's OPENAI_DATASET_MEAN / _STD, the normalisation of DA-CLIP's preprocess.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def daclip_pixel_values(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """DA-CLIP's input: open_clip's evaluation preprocess, ``(B, 3, size, size)`` float32.

    As the official ``preprocess`` does on a PIL image: the shorter side resized to ``size`` with PIL's bicubic
    filter (the aspect ratio kept), a centre crop of ``size``², then ``/ 255`` and CLIP's mean/std. Float
    images are taken as 8-bit first (rounded), as the official code receives them.

    Args:
        images: ``(3, H, W)`` float tensors in [0, 1] (sizes may differ), on any device.
        size: the model's input side (224 for the released models).

    Returns:
        The batch on the first image's device.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    device = images[0].device
    batch = []
    for image in images:
        as_uint8 = (image.detach().float() * 255).round().clamp(0, 255).to("cpu", torch.uint8)
        pil = Image.fromarray(as_uint8.permute(1, 2, 0).numpy())  # (H, W, 3) uint8: RGB
        pil = TF.center_crop(TF.resize(pil, size, interpolation=InterpolationMode.BICUBIC), size)
        batch.append(TF.pil_to_tensor(pil).float() / 255)
    pixels = torch.stack(batch).to(device)
    mean = torch.tensor(_CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, device=device).view(1, 3, 1, 1)
    return (pixels - mean) / std


@dataclass
class DaCLIPPromptResult(PromptResult):
    """:class:`PromptResult` of the DA-CLIP extractor, with what auto mode reports.

    Attributes (besides ``texts`` and ``tags``):
        scores: ``(B, num_tags)`` float32 cosine similarities in [-1, 1] between each image's content embedding
            and each tag's text embedding (not probabilities).
        degradations: per image, ``{degradation: probability}`` over the extractor's vocabulary (sums to 1).
        content_features, degradation_features: DA-CLIP's image embeddings ``(B, embed_dim)``, not normalised,
            in the model's dtype and device.
        image_features: always ``None`` (DA-CLIP has no SeeSR image features).
    """

    degradations: list[dict[str, float]] = field(default_factory=list)
    content_features: torch.Tensor | None = None
    degradation_features: torch.Tensor | None = None


class DaCLIPTagger(PromptExtractor):
    """DA-CLIP as a prompt extractor. Use :func:`load_daclip` (``load_prompt_extractor("daclip", ...)``).

    Args:
        model: the DA-CLIP network (weights loaded).
        tags: the tag vocabulary (RAM's tag list by default in :func:`load_daclip`).
        top_k: tags kept per image, the most similar first.
        threshold: when set, only tags whose cosine similarity is strictly above it are kept (so a prompt may
            have fewer than ``top_k`` tags, or none).
        template: the text each tag is embedded as; ``{}`` is replaced by the tag.
        separator: joins the tags into the prompt.
        exclude_tags: tag names or indices never selected.
        degradations: the degradation vocabulary of :meth:`degradation_probabilities`.
        batch_size: tags per text-encoder batch when the tag embeddings are computed.
        progress: show a progress bar while the tag embeddings are computed.
    """

    name = "daclip"

    def __init__(
        self,
        model: DaCLIPModel,
        tags: Sequence[str],
        *,
        top_k: int = DEFAULT_TOP_K,
        threshold: float | None = None,
        template: str = TAG_TEMPLATE,
        separator: str = ", ",
        exclude_tags: Sequence[int | str] = (),
        degradations: Sequence[str] = DEGRADATIONS,
        batch_size: int = 256,
        progress: bool = True,
    ) -> None:
        if not tags:
            raise ConfigError("The DA-CLIP tagger needs at least one tag (tag_list=...).")
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k={top_k!r} must be a positive integer.")
        if "{}" not in template:
            raise ConfigError(f"template={template!r} has no '{{}}' for the tag (e.g. {TAG_TEMPLATE!r}).")
        if len(degradations) < 2:
            raise ConfigError(f"degradations={list(degradations)!r}: probabilities need at least two texts.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer.")
        self.model = model.eval().requires_grad_(False)
        self.tags = list(tags)
        self.top_k = top_k
        self.threshold = None if threshold is None else float(threshold)
        self.template = template
        self.separator = separator
        self.degradations = list(degradations)
        self.batch_size = batch_size
        self.progress = progress
        self.excluded = tag_indices(exclude_tags, self.tags)
        self._tag_embeddings: torch.Tensor | None = None
        self._degradation_embeddings: torch.Tensor | None = None

    @property
    def config(self) -> DaCLIPConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> DaCLIPTagger:
        move_module(self.model, device, dtype, owner=f"prompt extractor {self.name!r}")
        self._tag_embeddings = self._degradation_embeddings = None  # recomputed in the new dtype on next use
        return self

    def pixel_values(self, images: Any) -> torch.Tensor:
        """The model input for ``images`` (see :func:`daclip_pixel_values`), on the model's device and dtype."""
        return daclip_pixel_values(image_list(images), self.config.image_size).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, desc: str | None = None) -> torch.Tensor:
        """Unit-length text embeddings ``(N, embed_dim)`` float32, in batches of :attr:`batch_size` (with a
        progress bar named ``desc`` when :attr:`progress` is on)."""
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not (self.progress and desc), leave=False) as bar:
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start:start + self.batch_size]
                out.append(F.normalize(self.model.encode_text(self.model.tokenize(chunk)).float(), dim=-1))
                bar.update(len(chunk))
        return torch.cat(out)

    def tag_embeddings(self) -> torch.Tensor:
        """``(num_tags, embed_dim)`` unit-length text embeddings of the templated tags, computed once."""
        if self._tag_embeddings is None:
            texts = [self.template.format(tag.strip()) for tag in self.tags]
            self._tag_embeddings = self.encode_texts(texts, desc="DA-CLIP tag embeddings")
        return self._tag_embeddings

    def degradation_embeddings(self) -> torch.Tensor:
        """``(num_degradations, embed_dim)`` unit-length text embeddings of :attr:`degradations`, computed once."""
        if self._degradation_embeddings is None:
            self._degradation_embeddings = self.encode_texts(self.degradations)
        return self._degradation_embeddings

    @torch.no_grad()
    def degradation_probabilities_of(self, degradation_features: torch.Tensor) -> torch.Tensor:
        """``(B, num_degradations)`` float32 probabilities for degradation embeddings ``(B, embed_dim)``:
        ``softmax(100 · normalised features @ normalised texts.T)``, as in the DA-CLIP README."""
        logits = _PROBABILITY_SCALE * F.normalize(degradation_features.float(), dim=-1) @ self.degradation_embeddings().T
        return logits.softmax(dim=-1)

    def degradation_probabilities(self, images: Any) -> list[dict[str, float]]:
        """Per image, the probability of each degradation type of :attr:`degradations` (they sum to 1).

        ``images``: anything :func:`~elqproj.prompts.base.image_list` accepts (PIL, paths, arrays, float
        ``(B, 3, H, W)`` / ``(3, H, W)`` tensors in [0, 1], lists). The tag embeddings are not computed.
        """
        with torch.no_grad():
            _, degradation = self.model.encode_image(self.pixel_values(images), control=True)
        return self._as_dicts(self.degradation_probabilities_of(degradation))

    def _as_dicts(self, probabilities: torch.Tensor) -> list[dict[str, float]]:
        return [dict(zip(self.degradations, row)) for row in probabilities.cpu().tolist()]

    def extract(self, images: Any) -> DaCLIPPromptResult:
        """Prompts, tags, similarities and degradation probabilities of ``images`` (any form
        :func:`~elqproj.prompts.base.image_list` accepts); see :class:`DaCLIPPromptResult`."""
        return self.extract_pixel_values(self.pixel_values(images))

    @torch.no_grad()
    def extract_pixel_values(self, pixel_values: torch.Tensor) -> DaCLIPPromptResult:
        """:meth:`extract` on an already preprocessed batch ``(B, 3, S, S)`` (see :meth:`pixel_values`)."""
        content, degradation = self.model.encode_image(pixel_values.to(self.device, self.dtype), control=True)
        scores = F.normalize(content.float(), dim=-1) @ self.tag_embeddings().T
        result = self.prompts_from_scores(scores)
        result.degradations = self._as_dicts(self.degradation_probabilities_of(degradation))
        result.content_features, result.degradation_features = content, degradation
        return result

    def prompts_from_scores(self, scores: torch.Tensor) -> DaCLIPPromptResult:
        """Prompts for similarities ``(B, num_tags)``: the :attr:`top_k` most similar tags that are not excluded
        (and above :attr:`threshold` when set), most similar first (ties: tag-list order), joined by
        :attr:`separator`."""
        scores = scores.float()
        ranked = scores.clone()
        ranked[:, self.excluded] = float("-inf")
        order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :self.top_k].cpu()
        tags = []
        for row, indices in zip(ranked.cpu(), order):
            keep = [i for i in indices.tolist() if row[i] > (float("-inf") if self.threshold is None else self.threshold)]
            tags.append([self.tags[i] for i in keep])
        return DaCLIPPromptResult(texts=[self.separator.join(row) for row in tags], tags=tags, scores=scores)

    def __repr__(self) -> str:
        return (f"DaCLIPTagger(tags={len(self.tags)}, top_k={self.top_k}, threshold={self.threshold}, "
                f"image_size={self.config.image_size})")


def _resolve_path(weights: Any, revision: str | None) -> Path:
    """``weights`` as a local file: a file, a folder or Hub repo holding ``daclip_ViT-B-32.pt``, a Hub file,
    a URL; ``None``: the weights table's ``daclip``."""
    names_a_folder = False
    if weights is not None:
        text = os.fspath(weights)
        names_a_folder = Path(text).expanduser().is_dir() or (
            not Path(text).expanduser().exists() and "://" not in text and text.count("/") == 1
        )
    return resolve_weights(weights, "daclip", filename=_DACLIP_FILE if names_a_folder else None, revision=revision)


def _resolve_config(config: DaCLIPConfig | dict | str | os.PathLike | None, state: dict, path: Path) -> DaCLIPConfig:
    if isinstance(config, DaCLIPConfig):
        return config
    if isinstance(config, dict) and "vision_cfg" in config:
        return DaCLIPConfig.from_official(config)
    if isinstance(config, (str, os.PathLike)):
        return DaCLIPConfig.from_official(config)
    beside = path.with_suffix(".json")  # the fork names a model's config after it: daclip_ViT-B-32.{pt,json}
    if config is None and beside.is_file():
        return DaCLIPConfig.from_official(beside)
    return infer_daclip_config(state, **(config or {}))


def load_daclip_model(
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    config: DaCLIPConfig | dict | str | os.PathLike | None = None,
) -> DaCLIPModel:
    """Load DA-CLIP from an official checkpoint, without executing code from it.

    Args:
        weights: ``daclip_ViT-B-32.pt`` (or another DA-CLIP release, or a ``.safetensors`` copy): a local file,
            a folder or Hub repo holding ``daclip_ViT-B-32.pt``, ``"org/name/path/file.pt"``, or a URL. Default:
            :data:`DACLIP_WEIGHTS` through the weights table. A bare state dict or a training save
            (``{"state_dict": ...}``, ``module.`` prefixes) is accepted.
        device, dtype: where the model runs (default: CUDA when available, else CPU; float32).
        revision: Hub revision of ``weights``.
        config: the architecture. ``None``: the official JSON beside the weights when there is one
            (``daclip_ViT-B-32.json`` next to ``daclip_ViT-B-32.pt``), else read from the checkpoint's shapes with
            64-channel attention heads (right for both released models). A dict of fields overrides the inferred
            config (``{"text_heads": 2}``); an official config dict or JSON path, or a :class:`DaCLIPConfig`,
            gives it in full, and the checkpoint is checked against it.

    Raises:
        WeightsNotFoundError: the checkpoint cannot be found (offline, wrong path).
        UnsafeCheckpointError: the pickle references code.
        CheckpointMismatchError: the file is not a DA-CLIP checkpoint, or does not fit ``config``.
        ConfigError: open_clip_torch is not installed, or a bad ``config``.
    """
    path = _resolve_path(weights, revision)
    source = f"DA-CLIP checkpoint {path}"
    state = official_daclip_state(hub.load_checkpoint(path), source=source)
    model = DaCLIPModel(_resolve_config(config, state, path))
    load_official_weights(model, state, source=source)
    model.eval().requires_grad_(False)
    move_module(model, *resolve_device_dtype(device, dtype), owner="DA-CLIP")
    return model


def load_daclip(
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    config: DaCLIPConfig | dict | str | os.PathLike | None = None,
    tag_list: str | os.PathLike | Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    threshold: float | None = None,
    template: str = TAG_TEMPLATE,
    separator: str = ", ",
    exclude_tags: Sequence[int | str] = (),
    degradations: Sequence[str] = DEGRADATIONS,
    batch_size: int = 256,
    progress: bool = True,
) -> DaCLIPTagger:
    """Load the DA-CLIP prompt extractor (registered as ``"daclip"``).

    Args:
        weights, device, dtype, revision, config: see :func:`load_daclip_model`.
        tag_list: the tag vocabulary (file/URL with one tag per line, or a list). Default: RAM's official
            4585-tag list (:data:`elqproj.prompts.ram.RAM_TAG_LIST`, downloaded once and checked).
        top_k, threshold, template, separator, exclude_tags, degradations, batch_size, progress: see
            :class:`DaCLIPTagger`.

    The tag embeddings are computed on the first :meth:`~DaCLIPTagger.extract` (4585 texts through CLIP's
    text tower, in batches, with a progress bar) and kept for the extractor's life.
    """
    tags = read_tag_list(RAM_TAG_LIST if tag_list is None else tag_list)
    model = load_daclip_model(weights, device=device, dtype=dtype, revision=revision, config=config)
    return DaCLIPTagger(model, tags, top_k=top_k, threshold=threshold, template=template, separator=separator,
                        exclude_tags=exclude_tags, degradations=degradations, batch_size=batch_size,
                        progress=progress)
