"""Prompt extractors without a model (the empty prompt, a fixed text, any user callable), and the rule that
turns what a user passes as a prompt into an extractor (:func:`as_prompt_extractor`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from elqproj.errors import InvalidInputError
from elqproj.prompts.base import (
    PROMPT_EXTRACTORS,
    PromptExtractor,
    PromptResult,
    count_images,
    list_prompt_extractors,
    load_prompt_extractor,
    usable_texts,
)

__all__ = ["EmptyPrompt", "FixedPrompt", "CallablePrompt", "load_empty_prompt", "as_prompt_extractor"]


class EmptyPrompt(PromptExtractor):
    """``""`` for every image: no text conditioning.

    A trained path, not a fallback hack: the paper replaces the prompt by the null prompt with
    p = 0.3 during training, so f and g know how to run without one.
    """

    name = "none"

    def extract(self, images: Any) -> PromptResult:
        n = count_images(images)
        return PromptResult(texts=[""] * n, tags=[[] for _ in range(n)])


class FixedPrompt(PromptExtractor):
    """The same text for every image (also the way to pass a literal text that is a registered name)."""

    name = "fixed"

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise InvalidInputError(f"FixedPrompt needs a str, got {type(text).__name__} ({text!r}).")
        self.text = text

    def extract(self, images: Any) -> PromptResult:
        return PromptResult(texts=[self.text] * count_images(images))

    def __repr__(self) -> str:
        return f"FixedPrompt({self.text!r})"


class CallablePrompt(PromptExtractor):
    """Wraps ``fn(images) -> list[str]`` (or ``-> str`` when given one image) as an extractor.

    ``fn`` receives ``images`` exactly as passed to :meth:`extract`. A result that is not one string per
    image (``None``, a wrong length, non-strings) gives ``""`` for the affected images and a logged
    warning instead of an error. Exceptions raised by ``fn`` propagate.
    """

    def __init__(self, fn: Callable[[Any], Any], name: str | None = None) -> None:
        if not callable(fn):
            raise InvalidInputError(f"CallablePrompt needs a callable, got {type(fn).__name__}.")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def extract(self, images: Any) -> PromptResult:
        return PromptResult(texts=usable_texts(self.fn(images), count_images(images), source=self.name))

    def __repr__(self) -> str:
        return f"CallablePrompt({self.fn!r})"


def load_empty_prompt(
    weights: Any = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> EmptyPrompt:
    """Registry factory of ``"none"``; it has no weights, so every argument must be left unset."""
    if weights is not None:
        raise InvalidInputError(f"The 'none' prompt extractor has no weights; got weights={weights!r}.")
    return EmptyPrompt()


def as_prompt_extractor(spec: Any) -> PromptExtractor:
    """Turn whatever a user passes as ``prompt=`` into a :class:`PromptExtractor`.

    The rule, in order:

    * ``None`` or ``"none"`` -> the empty prompt (``""`` for every image);
    * a :class:`PromptExtractor` -> itself;
    * a registered name (``"ram"``, ``"dape"``, ``"vlm"``, ...; case-insensitive) ->
      ``load_prompt_extractor(name)`` with its default weights;
    * any other string -> that text for every image (``FixedPrompt``); use ``FixedPrompt("dape")`` to
      force a literal text that happens to be a registered name;
    * a callable ``images -> list[str]`` (or ``-> str`` for one image) -> wrapped (``CallablePrompt``).

    Each call with a name loads a new extractor: load once with :func:`load_prompt_extractor` and pass the
    object when calling repeatedly.
    """
    if spec is None:
        return EmptyPrompt()
    if isinstance(spec, PromptExtractor):
        return spec
    if isinstance(spec, str):
        if spec in PROMPT_EXTRACTORS:
            return load_prompt_extractor(spec)
        return FixedPrompt(spec)
    if callable(spec):
        return CallablePrompt(spec)
    raise InvalidInputError(
        f"prompt={spec!r} ({type(spec).__name__}) is not a prompt: pass None, a text, an extractor name "
        f"({', '.join(list_prompt_extractors())}), a PromptExtractor, or a callable images -> list[str]."
    )
