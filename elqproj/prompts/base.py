"""The prompt-extractor protocol (Y in the paper) and the registry that finds extractors by name.

A prompt extractor turns images into one text prompt per image. It conditions both the Projector f and
the restorer g, and the LFO loop calls it again on every intermediate LQ image (paper eq. 20-22).

Built-in extractors are listed once among the built-ins of :data:`PROMPT_EXTRACTORS` as
``"module:factory"`` strings, imported on first use (importing ``elqproj.prompts`` does not import timm
or a VLM). Third-party packages add extractors through the entry-point group
``elqproj.prompt_extractors``::

    [project.entry-points."elqproj.prompt_extractors"]
    mytagger = "my_package.tagger:load_my_tagger"

where ``load_my_tagger(weights=None, *, device=None, dtype=None, revision=None, **kwargs)`` returns a
:class:`PromptExtractor`. See docs/prompts.md.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from elqproj.errors import ConfigError, DeviceError, InvalidInputError, WeightsNotFoundError
from elqproj.imageio import to_tensor
from elqproj.registry import Registry, RegistryEntry

__all__ = [
    "PromptResult",
    "PromptExtractor",
    "PromptExtractorFactory",
    "register_prompt_extractor",
    "load_prompt_extractor",
    "list_prompt_extractors",
    "describe_prompt_extractor",
    "PROMPT_EXTRACTORS",
    "image_list",
    "count_images",
    "usable_texts",
    "ENTRY_POINT_GROUP",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "elqproj.prompt_extractors"


@dataclass
class PromptResult:
    """What a prompt extractor returns for a batch of B images.

    Attributes:
        texts: one prompt per image (``"dog, gray, neckband, sit"``; ``""`` is the empty prompt).
        tags: per image, the tags (or phrases) of ``texts[i]`` in the order they appear there; ``None``
            when the prompt is free text that was not split (fixed prompts, callables).
        scores: ``(B, num_classes)`` float32 tag probabilities in [0, 1] (taggers only), else ``None``.
        image_features: what SeeSR consumes from RAM/DAPE: ``(B, 145, 512)`` (pooled token + 12×12 Swin
            tokens, projected to 512) in the tagger's dtype and device; ``None`` for extractors that
            have no image embedding.
    """

    texts: list[str]
    tags: list[list[str]] | None = None
    scores: torch.Tensor | None = None
    image_features: torch.Tensor | None = None


class PromptExtractor(abc.ABC):
    """Images -> one text prompt per image. Third-party extractors subclass this.

    Subclasses implement :meth:`extract`; ``images`` is anything :func:`image_list` accepts (PIL
    images, paths, numpy arrays, float tensors ``(B, 3, H, W)`` in [0, 1], lists of them, sizes may
    differ). Models override :meth:`to`.
    """

    name: str = "custom"
    #: ``(name, options)`` it was loaded with by :func:`load_prompt_extractor` (device and dtype left
    #: out), so a pipeline can record how to load it again; ``None`` for one built otherwise.
    load_spec: tuple[str, dict[str, Any]] | None = None

    @abc.abstractmethod
    def extract(self, images: Any) -> PromptResult:
        """Prompts (and, for taggers, tags, scores and image features) for every image."""

    def __call__(self, images: Any) -> list[str]:
        """The prompts of :meth:`extract`; an unusable entry becomes ``""`` (logged)."""
        return usable_texts(self.extract(images).texts, count_images(images), source=self.name)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> PromptExtractor:
        """Move the extractor's weights (``None`` keeps the current device / dtype); extractors without
        weights return themselves unchanged."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


#: ``factory(weights=None, *, device=None, dtype=None, revision=None, **kwargs) -> PromptExtractor``
PromptExtractorFactory = Callable[..., PromptExtractor]


# Built-in factories are "module:attr" paths until first use (importing one pulls in timm or a VLM).
PROMPT_EXTRACTORS: Registry[PromptExtractorFactory] = Registry(
    "prompt extractor",
    group=ENTRY_POINT_GROUP,
    builtin={
        "none": RegistryEntry(
            "elqproj.prompts.fixed:load_empty_prompt",
            {"description": "the empty prompt for every image (no conditioning)"},
        ),
        "ram": RegistryEntry("elqproj.prompts.ram:load_ram", {
            "description": "RAM (Recognize Anything, Swin-L 14M) image tagger: 4585 tags, official per-class "
                           "thresholds",
            "default_weights": "xinyu1205/recognize_anything_model/ram_swin_large_14m.pth",
        }),
        "dape": RegistryEntry("elqproj.prompts.ram:load_dape", {
            "description": "DAPE (SeeSR's degradation-aware RAM: RAM + LoRA); also gives SeeSR's image features",
            "default_weights": "DAPE.pth from SeeSR's Google Drive (elqproj download dape)",
        }),
        "daclip": RegistryEntry("elqproj.prompts.daclip:load_daclip", {
            "description": "DA-CLIP (degradation-aware CLIP ViT-B-32): zero-shot RAM tags from its degradation-robust "
                           "content embedding, plus degradation-type probabilities",
            "default_weights": "weblzw/daclip-uir-ViT-B-32-irsde/daclip_ViT-B-32.pt",
        }),
        "vlm": RegistryEntry("elqproj.prompts.vlm:load_vlm", {
            "description": "a vision-language model (transformers image-text-to-text) describing the restored "
                           "content",
            "default_weights": "HuggingFaceTB/SmolVLM-256M-Instruct",
        }),
    },
    accepts=callable,
    expected="a callable factory",
    unknown_hint="Pass one of these, a PromptExtractor, a callable images -> list[str], or register yours with "
    "register_prompt_extractor().",
)


def register_prompt_extractor(
    name: str,
    factory: PromptExtractorFactory | str,
    *,
    description: str = "",
    default_weights: str | None = None,
    overwrite: bool = False,
) -> None:
    """Make ``load_prompt_extractor(name, ...)`` (and ``prompt_extractor=name`` in the pipeline) build an extractor.

    Args:
        name: registry key, matched case-insensitively.
        factory: ``factory(weights=None, *, device=None, dtype=None, revision=None, **kwargs)`` returning
            a :class:`PromptExtractor` (a class whose constructor has that signature works), or its
            ``"module:attr"`` path, imported on first use.
        description: one line shown by :func:`describe_prompt_extractor` and ``elqproj info``.
        default_weights: where the weights come from when ``weights=None`` (for display only; the
            factory applies its own default).
        overwrite: replace an existing entry of that name instead of raising :class:`ConfigError`.
    """
    info = {"description": description, "default_weights": default_weights}
    PROMPT_EXTRACTORS.register(name, factory, info=info, overwrite=overwrite)


def list_prompt_extractors() -> list[str]:
    """Names accepted by :func:`load_prompt_extractor`: built-ins, registered ones and entry points."""
    return PROMPT_EXTRACTORS.names()


def describe_prompt_extractor(name: str) -> dict[str, Any]:
    """``{"name", "description", "default_weights", ...}`` of a registered extractor (no loading)."""
    info = PROMPT_EXTRACTORS.entry(name).info
    return {"name": name.lower(), "description": "", "default_weights": None, **info}


def load_prompt_extractor(
    name: str,
    *,
    weights: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> PromptExtractor:
    """Load a registered extractor: ``load_prompt_extractor("dape", weights="DAPE.pth", device="cuda")``.

    Args:
        name: a name from :func:`list_prompt_extractors` (case-insensitive).
        weights: local file/directory, Hub id or URL; ``None`` uses the extractor's default (see
            :func:`describe_prompt_extractor`).
        device, dtype: where the model runs: ``None`` is CUDA when available, else the CPU, and float32;
            ``dtype`` may also be ``"fp16"`` / ``"bf16"``.
        revision: Hub branch, tag or commit of ``weights``.
        **kwargs: extractor-specific options (e.g. ``tag_list=``, ``config=`` for RAM and DAPE,
            ``ram_weights=`` for DAPE, ``instruction=`` for the VLM); see each loader.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the known names).
        WeightsNotFoundError: a file could not be found or downloaded (the message names the option).
    """
    factory = PROMPT_EXTRACTORS.get(name)
    try:
        extractor = factory(weights=weights, device=device, dtype=dtype, revision=revision, **kwargs)
    except WeightsNotFoundError as exc:
        default = describe_prompt_extractor(name).get("default_weights") or "none: pass them"
        raise WeightsNotFoundError(
            f"{exc}\nThe {name} prompt extractor's weights come from weights= (CLI: --prompt-weights, or --weights "
            f"for elqproj tag; default {default}); defaults are downloaded on first use and cached."
        ) from exc
    if not isinstance(extractor, PromptExtractor):
        raise ConfigError(
            f"The factory registered as {name!r} returned {type(extractor).__name__}, not a PromptExtractor."
        )
    extractor.load_spec = (name.lower(), {"weights": weights, "revision": revision, **kwargs})
    return extractor


def usable_texts(texts: Any, num_images: int, *, source: str) -> list[str]:
    """``texts`` as ``num_images`` strings; anything unusable becomes ``""`` with a logged warning.

    An extractor that returns ``None``, a list of the wrong length, or non-strings must not crash a
    restoration: the empty prompt is a trained path (the paper drops the prompt with p = 0.3 in training).
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) != num_images:
        logger.warning(
            "Prompt extractor %r returned %r for %d image(s); using the empty prompt instead.",
            source, texts if not isinstance(texts, Sequence) else f"{len(texts)} prompts", num_images,
        )
        return [""] * num_images
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            logger.warning("Prompt extractor %r returned %r for image %d; using the empty prompt.", source, text, i)
            text = ""
        out.append(text)
    return out


def count_images(images: Any) -> int:
    """How many images ``images`` holds (without reading them): B for ``(B,C,H,W)`` arrays, the sum over
    the items of a list, else 1 — the count :func:`image_list` yields."""
    if isinstance(images, (list, tuple)):
        return sum(count_images(item) for item in images)
    shape = getattr(images, "shape", None)
    if shape is not None and len(shape) == 4:
        return int(shape[0])
    return 1


def image_list(images: Any) -> list[torch.Tensor]:
    """Split ``images`` into a list of ``(3, H, W)`` float32 tensors in [0, 1], one per image.

    Accepts whatever :func:`elqproj.imageio.to_tensor` accepts (PIL image, path, numpy array, float
    tensor ``(B, 3, H, W)`` / ``(3, H, W)`` in [0, 1], list of same-size PIL images or paths), or a
    list/tuple of such items of *different* sizes (taggers resize every image on their own).
    Tensors keep their device.

    Raises:
        InvalidInputError: (or a subclass) an unsupported type, an empty list, NaN/inf, values outside
            [0, 1], an unreadable file; the message names the item.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise InvalidInputError("The list of images is empty; pass at least one image.")
        return [image for item in images for image in to_tensor(item)[0]]
    return list(to_tensor(images)[0])


def move_module(module: torch.nn.Module, device: str | torch.device | None, dtype: torch.dtype | str | None,
                *, owner: str) -> None:
    """``module.to(device, dtype)`` in place; ``None`` keeps the current device / dtype.

    ``dtype`` may be a torch dtype or ``"fp32"``, ``"fp16"``, ``"bf16"`` (see
    :func:`elqproj.devices.resolve_device_dtype`). Unavailable devices raise :class:`DeviceError`.
    """
    if device is None and dtype is None:
        return
    from elqproj.devices import resolve_device_dtype

    current = next(module.parameters())
    target_device, target_dtype = resolve_device_dtype(current.device if device is None else device,
                                                       current.dtype if dtype is None else dtype)
    try:
        module.to(device=target_device, dtype=target_dtype)
    except (RuntimeError, AssertionError) as exc:
        raise DeviceError(
            f"{owner}: cannot move to device={device!r}, dtype={dtype!r} ({exc}). Pick an available device "
            "(torch.cuda.is_available(), torch.cuda.device_count())."
        ) from exc
