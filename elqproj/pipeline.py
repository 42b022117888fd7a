"""ELQ -> LQ -> HQ orchestration with Look Forward Once (IRIB paper, eq. 20-22).

The pipeline owns no math: it sizes the input, asks the prompt extractor Y for prompts, runs the
projector f (re-using the prompt-independent VAE latent of the ELQ image in every LFO pass), and hands
the LQ proxy to the frozen restorer g::

    c¹ = Y(x);  x̂¹ = f(x; c¹)
    c^{k+1} = Y(x̂^k);  x̂^{k+1} = f(x; c^{k+1})        k = 1 … lfo
    x̂_HQ = g(x̂^{lfo+1}; Y(x̂^{lfo+1}))

so Y runs lfo + 2 times and the VAE encoder of f once per image.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import imageio
from .devices import synchronize
from .errors import InvalidInputError

if TYPE_CHECKING:
    from .adapters.base import Restorer
    from .projector import Projector

__all__ = ["RestorationPipeline", "RestorationResult", "LFO_AUTO_CAP", "processing_size"]

logger = logging.getLogger(__name__)

#: Upper bound of refinement passes for ``lfo="auto"`` (the paper finds 2 best; it oscillates after).
LFO_AUTO_CAP = 4


@dataclass
class RestorationResult:
    """What :meth:`RestorationPipeline.__call__` returns.

    Attributes:
        image: the HQ restoration, in the input's kind (PIL in -> PIL out, tensors -> (B,3,H,W) [0,1]).
        lq: the LQ proxy after the last projector pass, in the input's kind.
        prompts: the prompt of every pass in order, [c¹, …, c^{lfo+1}, c_LQ] (c_LQ conditions g); for
            a batch, each entry is a list with one prompt per image.
        lq_passes: the LQ proxy of every projector pass, (B,3,H,W) float tensors in [0,1] on the CPU.
        timings: seconds per stage: "prompt" (Y on the input and on the final LQ proxy), "project" (f's
            first pass), "lfo" (every Look-Forward-Once round: Y on the proxy and f again; only when
            ``lfo`` is not 0), "restore" (g) and "total" (the whole call, sizing and conversions included).
        lfo_passes: refinement passes actually run (< lfo cap when ``lfo="auto"`` stopped early).
    """

    image: Any
    lq: Any
    prompts: list[Any]
    lq_passes: list[torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    lfo_passes: int = 0


class _Stopwatch:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start


def _tag_set(text: str) -> frozenset[str]:
    return frozenset(t.strip().lower() for t in text.split(",") if t.strip())


class RestorationPipeline:
    """f (a :class:`~elqproj.projector.Projector`) followed by g (a :class:`~elqproj.adapters.base.Restorer`).

    Args:
        projector: the projector f.
        restorer: the frozen restorer g.
    """

    def __init__(self, projector: Projector, restorer: Restorer) -> None:
        self.projector = projector
        self.restorer = restorer

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        *,
        prompt: Any = None,
        lfo: int | str = 0,
        seed: int | None = None,
        upscale: int = 1,
        process_size: int = 512,
        sample_posterior: bool = True,
        restorer_kwargs: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> RestorationResult:
        """Restore an extreme-LQ image.

        Args:
            image: PIL image, path, numpy array, (B,3,H,W) float tensor in [0,1], or a list of same-size
                images.
            prompt: the prompt extractor Y — None / "none" (empty prompt, a trained path), a registered
                extractor name ("ram", "dape", "vlm", …), any other text (used as a fixed prompt), a
                :class:`~elqproj.prompts.PromptExtractor`, or any callable ``images -> list[str]``.
            lfo: refinement passes k (0 = no LFO; the paper recommends 2), or "auto": stop when the tag
                set stops changing, at most :data:`LFO_AUTO_CAP` passes.
            seed: makes the VAE posterior samples of f and g reproducible.
            upscale: output/input size ratio. The ELQ image is first enlarged (bicubic) by ``upscale``;
                f and g then run at that size (g with ``upscale=1``), as in training where ELQ, LQ and
                HQ share one size.
            process_size: if the enlarged image's short side is below this, it is enlarged further so
                the short side equals it (SD-based models work poorly below 512 px); 0 disables.
            restorer_kwargs: extra options for g's ``restore`` (e.g. ``color_fix``, ``steps``).
            progress: show a progress bar over the stages.
        """
        from .prompts import as_prompt_extractor

        if not (lfo == "auto" or (isinstance(lfo, int) and not isinstance(lfo, bool) and lfo >= 0)):
            raise InvalidInputError(f"lfo must be a non-negative integer or 'auto', got {lfo!r}.")
        if not isinstance(upscale, int) or isinstance(upscale, bool) or upscale < 1:
            raise InvalidInputError(f"upscale must be a positive integer, got {upscale!r}.")
        extractor = as_prompt_extractor(prompt)
        clock = _Stopwatch(self.projector.device)
        start = time.perf_counter()

        x, meta = imageio.to_tensor(image)
        x = _enlarge(x, upscale=upscale, process_size=process_size)
        padded, pad = imageio.pad_to_multiple(x, 8)
        elq = (padded * 2 - 1).to(self.projector.device, self.projector.dtype)
        cap = LFO_AUTO_CAP if lfo == "auto" else lfo
        bar = tqdm(total=cap + 3, desc="restore", disable=not progress, leave=False)

        with clock("prompt"):
            result = extractor.extract(x)
        prompts = [result.texts]
        with clock("project"):
            latent = self.projector.encode_image(elq, seed=seed, sample_posterior=sample_posterior)
            lq = self._project(elq, latent, result.texts)
        lq_passes = [lq]
        bar.update(2)
        passes = 0
        while passes < cap:
            with clock("lfo"):
                result = extractor.extract(lq)
            changed = [_tag_set(a) != _tag_set(b) for a, b in zip(result.texts, prompts[-1])]
            if lfo == "auto" and not any(changed):
                logger.info("LFO stopped after %d passes: the prompts no longer change", passes)
                break
            prompts.append(result.texts)
            with clock("lfo"):
                lq = self._project(elq, latent, result.texts)
            lq_passes.append(lq)
            passes += 1
            bar.update(1)
        with clock("prompt"):
            result = extractor.extract(lq)
        prompts.append(result.texts)
        with clock("restore"):
            kwargs = dict(restorer_kwargs or {})
            if self.restorer.accepts("process_size"):
                kwargs.setdefault("process_size", 0)  # already sized above: no second pre-enlargement in g
            if self.restorer.capabilities.uses_image_features and result.image_features is not None:
                kwargs.setdefault("image_features", result.image_features)
            # No prompt at all (extractor "none"): let g use its own default (S3Diff's official positive
            # prompt, SeeSR's own tagger) rather than forcing the empty string on it.
            g_prompt = result.texts if any(result.texts) else None
            hq = self.restorer.restore(lq, prompt=g_prompt, seed=seed, upscale=1, **kwargs)
        bar.update(bar.total - bar.n)
        bar.close()
        clock.times["total"] = time.perf_counter() - start

        hq = imageio.crop_padding(hq.float().cpu(), pad, scale=hq.shape[-1] // padded.shape[-1])
        lq_out = imageio.crop_padding(lq, pad)
        batched = meta.batched
        return RestorationResult(
            image=imageio.from_tensor(hq, meta),
            lq=imageio.from_tensor(lq_out, meta),
            prompts=prompts if batched else [p[0] for p in prompts],
            lq_passes=[imageio.crop_padding(p, pad) for p in lq_passes],
            timings=clock.times,
            lfo_passes=passes,
        )

    def _project(self, elq: torch.Tensor, latent: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """One f pass from the cached ELQ latent -> LQ proxy (B,3,H,W) in [0,1] on the CPU, float32."""
        embeds = self.projector.encode_prompt(list(texts))
        out = self.projector(elq, embeds, latent=latent)
        return (out.image.float() * 0.5 + 0.5).cpu()


def _enlarged_size(height: int, width: int, *, upscale: int, process_size: int) -> tuple[int, int]:
    """Enlargement by ``upscale``, then (if needed) so that the short side is ``process_size``."""
    factor = float(upscale)
    if process_size and min(height, width) * factor < process_size:
        factor = process_size / min(height, width)
    return round(height * factor), round(width * factor)


def processing_size(height: int, width: int, *, upscale: int = 1, process_size: int = 512) -> tuple[int, int]:
    """(H, W) in pixels at which f and g run for a ``height``×``width`` input: enlarged as
    :meth:`RestorationPipeline.__call__` does, then padded up to multiples of 8."""
    h, w = _enlarged_size(height, width, upscale=upscale, process_size=process_size)
    return -(-h // 8) * 8, -(-w // 8) * 8


def _enlarge(x: torch.Tensor, *, upscale: int, process_size: int) -> torch.Tensor:
    """Bicubic enlargement of (B, 3, H, W) in [0, 1] to :func:`_enlarged_size`."""
    size = _enlarged_size(*x.shape[-2:], upscale=upscale, process_size=process_size)
    if size == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
