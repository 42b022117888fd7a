"""Training prompts: a tagger on the training images, with the paper's prompt dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..prompts import FixedPrompt, PromptExtractor, load_prompt_extractor
from .config import PromptSection

__all__ = ["drop_prompts", "build_prompt_extractor"]


def drop_prompts(prompts: Sequence[str], probability: float, generator: torch.Generator) -> list[str]:
    """Replace each prompt by the null prompt "" with probability ``probability`` (IRIB: p = 0.3),
    so that f and g also learn to run without text (the empty prompt is a supported inference path).

    ``generator``: a CPU generator; one uniform draw per prompt.
    """
    draws = torch.rand(len(prompts), generator=generator).tolist()
    return ["" if draw < probability else prompt for prompt, draw in zip(prompts, draws)]


def build_prompt_extractor(section: PromptSection, *, device: torch.device, dtype: torch.dtype) -> PromptExtractor:
    """The tagger of ``section``: "fixed" with its text, or a registered extractor on ``device``."""
    if section.extractor == "fixed":
        return FixedPrompt(section.text)
    return load_prompt_extractor(section.extractor, weights=section.weights, device=device, dtype=dtype)
