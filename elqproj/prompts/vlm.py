"""A vision-language model as the prompt extractor: it describes what the image shows once restored.

Any transformers image-text-to-text model with a chat template works (``AutoModelForImageTextToText``
+ ``AutoProcessor``); the default is :data:`DEFAULT_VLM`, see docs/prompts.md for the choice. The model
is asked to describe the image *as if its degradations were removed* — the MRIR finding that prompts
about the restored content condition a restorer better than captions of the degraded input — and its
answer is normalised to a comma-separated prompt (:func:`prompt_phrases`).
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from PIL import Image

from elqproj import hub
from elqproj.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from elqproj.devices import resolve_device_dtype
from elqproj.prompts.base import PromptExtractor, PromptResult, image_list, move_module
from elqproj.weights import COMPONENTS, TRANSFORMERS_MODEL_FILES

__all__ = ["VLMPromptExtractor", "load_vlm", "prompt_phrases", "DEFAULT_VLM", "DEFAULT_INSTRUCTION"]

#: Default model: SmolVLM-256M-Instruct (Apache-2.0, 256M parameters, native in transformers).
DEFAULT_VLM = COMPONENTS["smolvlm"].source
#: What the model is asked for every image.
DEFAULT_INSTRUCTION = (
    "Describe the image as if its degradations were removed. Answer with a short comma-separated list of "
    "keywords for the objects, materials, colours and scene of the clean photo."
)
# Files a model repository needs for from_pretrained (skips ONNX / GGUF exports that some repos carry).
_MODEL_FILES = TRANSFORMERS_MODEL_FILES

# Phrase boundaries: lines, semicolons, bars, bullets, commas, and sentence ends (a period after a
# digit is list numbering, "1. cat", and stays).
_SEPARATORS = re.compile(r"[\n;|•,]+|(?<!\d)\.(?:\s+|$)")
_LIST_MARK = re.compile(r"^(?:\d+[.)]\s+|[-*#]+\s*)")
_LEAD_IN = re.compile(
    r"^(?:(?:the|this) (?:image|photo|picture|photograph|scene) (?:shows|depicts|contains|features|is of)"
    r"|(?:in|on) the (?:image|photo|picture)|there (?:is|are)|keywords?:|answer:)\s*",
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_EDGE_PUNCTUATION = "\"'`.:!? "


def prompt_phrases(text: str) -> list[str]:
    """A free-text answer -> lower-case keyword phrases, in order, without duplicates.

    Sentences, lines, bullets and semicolons become separate phrases; lead-ins ("the image shows",
    "there are"), leading articles, list numbering and surrounding punctuation are dropped.
    ``", ".join(prompt_phrases(text))`` is the prompt.
    """
    phrases: list[str] = []
    for part in _SEPARATORS.split(text.lower()):
        phrase = _LIST_MARK.sub("", " ".join(part.split())).strip(_EDGE_PUNCTUATION)
        phrase = _ARTICLE.sub("", _LEAD_IN.sub("", phrase)).strip(_EDGE_PUNCTUATION)
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


def _as_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> 8-bit RGB PIL image, the input every image processor accepts."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to("cpu", torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)  # (H, W, 3) uint8: RGB


class VLMPromptExtractor(PromptExtractor):
    """A transformers image-text-to-text model answering :attr:`instruction` for every image.

    Use :func:`load_vlm` (``load_prompt_extractor("vlm", weights=model_id)``). Decoding is greedy, so
    prompts are reproducible.

    Args:
        model: an ``AutoModelForImageTextToText`` model.
        processor: its ``AutoProcessor``, with a chat template.
        instruction: the user message sent with each image.
        max_new_tokens: answer length limit (prompts longer than CLIP's 77 tokens are encoded in chunks
            by the diffusion engine).
    """

    name = "vlm"

    def __init__(self, model: Any, processor: Any, *, instruction: str = DEFAULT_INSTRUCTION,
                 max_new_tokens: int = 64) -> None:
        if getattr(processor, "chat_template", None) is None:
            raise ConfigError(
                f"The processor of {type(model).__name__} has no chat template, so the instruction cannot be "
                "formatted; use an instruction-tuned model (e.g. an '-Instruct' checkpoint)."
            )
        if not isinstance(instruction, str) or not instruction.strip():
            raise ConfigError(f"instruction must be a non-empty string, got {instruction!r}.")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be positive, got {max_new_tokens}.")
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        # Batched generation with a decoder-only LM: pad on the left so every answer starts at the end.
        processor.tokenizer.padding_side = "left"
        self.instruction = instruction
        self.max_new_tokens = max_new_tokens
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        self._chat_prompt = processor.apply_chat_template(messages, add_generation_prompt=True)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> VLMPromptExtractor:
        move_module(self.model, device, dtype, owner="prompt extractor 'vlm'")
        return self

    @torch.inference_mode()
    def extract(self, images: Any) -> PromptResult:
        """Prompts for ``images`` (anything :func:`~elqproj.prompts.base.image_list` accepts).

        Returns:
            :class:`PromptResult` with ``texts`` (normalised, comma-separated) and ``tags`` (the phrases);
            no scores or image features.
        """
        pil = [_as_pil(image) for image in image_list(images)]
        inputs = self.processor(text=[self._chat_prompt] * len(pil), images=[[image] for image in pil],
                                return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        for key, value in inputs.items():
            if value.is_floating_point():
                inputs[key] = value.to(self.dtype)
        generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        answers = self.processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        phrases = [prompt_phrases(answer) for answer in answers]
        return PromptResult(texts=[", ".join(p) for p in phrases], tags=phrases)

    def __repr__(self) -> str:
        return f"VLMPromptExtractor(model={self.model.name_or_path!r}, max_new_tokens={self.max_new_tokens})"


def load_vlm(
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    max_new_tokens: int = 64,
) -> VLMPromptExtractor:
    """Load a VLM prompt extractor (registered as ``"vlm"``).

    Args:
        weights: Hub model id or local folder of an image-text-to-text model with a chat template
            (default :data:`DEFAULT_VLM`), e.g. ``"Qwen/Qwen2-VL-2B-Instruct"`` for better descriptions.
        device, dtype: where it runs (default: CUDA when available, else CPU; float32; fp16/bf16 on a GPU).
        revision: Hub branch, tag or commit.
        instruction, max_new_tokens: see :class:`VLMPromptExtractor`.

    Raises:
        WeightsNotFoundError: the model cannot be found (offline and not cached, wrong id).
        CheckpointMismatchError: the model is not an image-text-to-text model.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    spec = DEFAULT_VLM if weights is None else weights
    folder = hub.resolve_dir(spec, revision=revision, allow_patterns=_MODEL_FILES, required=("config.json",))
    try:
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder)
    except OSError as exc:
        raise WeightsNotFoundError(f"{spec} ({folder}) lacks files of a transformers model: {exc}") from exc
    except (ValueError, KeyError) as exc:
        raise CheckpointMismatchError(
            f"{spec} is not an image-text-to-text model that transformers can load "
            f"(AutoModelForImageTextToText / AutoProcessor): {exc}"
        ) from exc
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise CheckpointMismatchError(f"{spec} has a {type(processor).__name__}, not an image + text processor.")
    extractor = VLMPromptExtractor(model, processor, instruction=instruction, max_new_tokens=max_new_tokens)
    return extractor.to(*resolve_device_dtype(device, dtype))

