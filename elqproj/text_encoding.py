"""CLIP text encoding of prompts for SD-based models, with a cache per prompt string.

The official OSEDiff, SeeSR and S3Diff code encodes a prompt the same way: the CLIP tokenizer pads or
truncates to its 77 tokens (the pad token is SD2's ``"!"``), the text encoder runs without an attention
mask, and its last hidden state (final layer norm included) conditions the UNet. ``long_prompt="chunk"``
is elqproj's extension for prompts beyond 75 tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .errors import InvalidInputError

__all__ = ["LongPromptMode", "PromptEncoder"]

LongPromptMode = Literal["truncate", "chunk"]


class PromptEncoder:
    """Prompts -> text embeddings ``(B, 77·k, D)`` with a least-recently-used cache per prompt.

    Args:
        tokenizer: a CLIP tokenizer; text_encoder: its ``CLIPTextModel`` (read at call time: it may be
            moved between devices; a cached embedding is used only on the encoder's device and in the
            requested dtype).
        cache_size: prompts kept (LFO and batch runs repeat the same few prompts).
    """

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, *, cache_size: int = 256) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.RLock()

    def clear(self) -> None:
        """Forget the cached embeddings (after the text encoder moved or changed)."""
        with self._lock:
            self._cache.clear()

    def __call__(self, prompts: Sequence[str] | str, *, dtype: torch.dtype,
                 long_prompt: LongPromptMode = "truncate") -> torch.Tensor:
        """Text embeddings ``(B, 77·k, D)`` in ``dtype``.

        ``long_prompt="truncate"`` is the official behaviour (77 tokens, truncation, padding with the
        pad token, last hidden state, no attention mask): k = 1. ``"chunk"`` splits a longer prompt
        into 75-token chunks, encodes each as its own 77-token sequence and concatenates them; prompts
        with fewer chunks are padded with empty-chunk embeddings so the batch stacks.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if long_prompt not in ("truncate", "chunk"):
            raise InvalidInputError(f"long_prompt={long_prompt!r}; use 'truncate' or 'chunk'.")
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise InvalidInputError(f"Prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}.")
        embeds = [self._encode_one(p, long_prompt, dtype) for p in prompts]
        longest = max(e.shape[1] for e in embeds)
        if any(e.shape[1] != longest for e in embeds):
            empty = self._encode_one("", "truncate", dtype)
            embeds = [torch.cat([e] + [empty] * ((longest - e.shape[1]) // empty.shape[1]), dim=1) for e in embeds]
        return torch.cat(embeds, dim=0)

    def token_ids(self, text: str, mode: LongPromptMode = "truncate") -> torch.Tensor:
        """The token ids the text encoder reads for ``text``: ``(k, 77)`` int64."""
        tok = self.tokenizer
        length = tok.model_max_length
        if mode == "truncate":
            return tok(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        body = tok(text, add_special_tokens=False, truncation=False).input_ids
        width = length - 2
        chunks = [body[i:i + width] for i in range(0, len(body), width)] or [[]]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = [[tok.bos_token_id] + c + [tok.eos_token_id] + [pad] * (width - len(c)) for c in chunks]
        return torch.tensor(rows, dtype=torch.long)

    def _encode_one(self, text: str, mode: LongPromptMode, dtype: torch.dtype) -> torch.Tensor:
        key = (mode, text)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached.dtype == dtype and cached.device == self.text_encoder.device:
                self._cache.move_to_end(key)
                return cached
        ids = self.token_ids(text, mode).to(self.text_encoder.device)
        with torch.no_grad():
            hidden = self.text_encoder(ids)[0]  # (k, 77, D): last hidden state incl. final layer norm
        value = hidden.reshape(1, -1, hidden.shape[-1]).to(dtype)
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value
