"""A preview decoder for the Look-Forward-Once passes: TAESD (diffusers' ``AutoencoderTiny``), a tiny
decoder for SD latents.

Each LFO pass decodes f's latent only so that the prompt extractor can look at it again. TAESD decodes the
same SD2.x latents at a small fraction of the full VAE decoder's cost (``benchmarks/bench_preview.py``
measures the MACs saved per pass), at the price of a softer image. The pipeline therefore uses it only for
what the tagger sees; the LQ proxy handed to g is always decoded once more by the full decoder. The
preview decoder is opt-in: ``RestorationPipeline.from_components(..., preview_decoder="taesd")`` or
``--preview-decoder taesd``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import CheckpointMismatchError

__all__ = ["PreviewDecoder", "load_preview_decoder"]


class PreviewDecoder:
    """Scaled SD latents ``(B, 4, h, w)`` (what the UNet predicts as x0) → images ``(B, 3, 8h, 8w)`` in
    [-1, 1], through an ``AutoencoderTiny`` decoder (its ``scaling_factor`` is 1: it takes the scaled latents
    as they are)."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        first = next(self.model.parameters())
        return self.model.decode(x0.to(first.device, first.dtype)).sample.float().clamp(-1, 1)


def load_preview_decoder(source: str | os.PathLike | None = "taesd", *, device: str | torch.device | None = None,
                         dtype: torch.dtype | str | None = None, revision: str | None = None) -> PreviewDecoder:
    """TAESD from the weights table (``"taesd"``: madebyollin/taesd, downloaded once), or an
    ``AutoencoderTiny`` folder or Hub id.

    Raises:
        WeightsNotFoundError: offline and not cached; CheckpointMismatchError: not an AutoencoderTiny.
    """
    from diffusers import AutoencoderTiny

    from . import hub, weights
    from .devices import resolve_device_dtype

    device, dtype = resolve_device_dtype(device, dtype)
    if source is None or os.fspath(source) == "taesd":
        folder = weights.fetch("taesd")
    else:
        folder = hub.resolve_dir(os.fspath(source), revision=revision)
    try:
        model = AutoencoderTiny.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointMismatchError(f"{folder} is not an AutoencoderTiny (TAESD) folder: {exc}") from None
    return PreviewDecoder(model.to(device))
