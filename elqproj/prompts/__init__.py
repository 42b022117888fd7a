"""Prompt extractors (Y): images -> one text prompt per image, for f, g and the LFO loop.

``load_prompt_extractor("ram" | "dape" | "daclip" | "vlm" | "none", ...)`` loads a registered extractor;
``as_prompt_extractor(spec)`` turns anything a user passes as ``prompt=`` into one. Model code (timm,
transformers, open_clip) is imported only when a model extractor is loaded.
"""

from elqproj.prompts.base import (
    ENTRY_POINT_GROUP,
    PromptExtractor,
    PromptExtractorFactory,
    PromptResult,
    describe_prompt_extractor,
    list_prompt_extractors,
    load_prompt_extractor,
    register_prompt_extractor,
)
from elqproj.prompts.fixed import CallablePrompt, EmptyPrompt, FixedPrompt, as_prompt_extractor

__all__ = [
    "ENTRY_POINT_GROUP",
    "PromptExtractor",
    "PromptExtractorFactory",
    "PromptResult",
    "as_prompt_extractor",
    "describe_prompt_extractor",
    "list_prompt_extractors",
    "load_prompt_extractor",
    "register_prompt_extractor",
    "CallablePrompt",
    "EmptyPrompt",
    "FixedPrompt",
]
