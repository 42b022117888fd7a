"""Gaussian and Poisson (shot) noise, colour or luminance-only, with per-sample strengths.

The formulas are BasicSR's ``*_noise_pt`` functions. The random draws come from a
:class:`NoiseSource` instead of torch's global RNG, so that a degradation is a deterministic function
of its parameters: :class:`SeededNoise` draws each sample's noise from that sample's own seed (so a
batch gives the same noise as its images one by one), and a test can feed recorded draws instead.

A source has two independent streams per sample: ``"color"`` (a ``(C, H, W)`` draw) and ``"gray"``
(a ``(1, H, W)`` draw shared by the channels). Gray draws happen only when some sample of the batch
is gray (as in the official code); because the streams are separate, that does not change anyone's
colour noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torchvision.transforms.functional import rgb_to_grayscale

from ..errors import InvalidInputError
from ..seeding import derive_seed

__all__ = [
    "NoiseStream",
    "NoiseSource",
    "SeededNoise",
    "gaussian_noise",
    "poisson_noise",
    "add_gaussian_noise",
    "add_poisson_noise",
]

NoiseStream = Literal["color", "gray"]
_STREAM_KEYS: dict[str, int] = {"color": 0, "gray": 1}


class NoiseSource(Protocol):
    """Where the random numbers of the noise functions come from."""

    def standard_normal(
        self, shape: tuple[int, int, int, int], stream: NoiseStream, like: torch.Tensor
    ) -> torch.Tensor:
        """N(0, 1) samples of ``shape`` = (B, C, H, W), with ``like``'s dtype and device."""
        ...

    def poisson(self, rate: torch.Tensor, stream: NoiseStream) -> torch.Tensor:
        """Poisson samples with the given ``(B, C, H, W)`` non-negative rates."""
        ...


class SeededNoise:
    """Noise drawn per sample from ``torch.Generator``s seeded by ``seeds`` (one per sample).

    The draws are made in float32 on the tensor's device: float32 and float64 inputs get the same
    noise, but CPU and CUDA give different (equally valid) noise for the same seed; everything else in
    the pipeline is device-independent up to float round-off.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(seed) for seed in seeds]

    def _generator(self, sample: int, stream: NoiseStream, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(derive_seed(self.seeds[sample], _STREAM_KEYS[stream]))

    def _check_batch(self, batch: int) -> None:
        if batch != len(self.seeds):
            raise InvalidInputError(f"{len(self.seeds)} noise seeds for a batch of {batch} images")

    def standard_normal(
        self, shape: tuple[int, int, int, int], stream: NoiseStream, like: torch.Tensor
    ) -> torch.Tensor:
        self._check_batch(shape[0])
        # Drawn in float32 whatever the working precision: the same seed gives the same noise.
        out = torch.empty(shape, dtype=torch.float32, device=like.device)
        for b in range(shape[0]):
            out[b].normal_(generator=self._generator(b, stream, like.device))
        return out.to(like.dtype)

    def poisson(self, rate: torch.Tensor, stream: NoiseStream) -> torch.Tensor:
        self._check_batch(rate.shape[0])
        samples = [
            torch.poisson(rate[b].float(), generator=self._generator(b, stream, rate.device))
            for b in range(rate.shape[0])
        ]
        return torch.stack(samples).to(rate.dtype)


def _any_gray(gray: bool | torch.Tensor) -> bool:
    # Pass gray flags as a CPU tensor (or bool) to keep this test from waiting on the GPU.
    return bool(torch.as_tensor(gray).any())


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value as a (B, 1, 1, 1) tensor on ``like``'s device and dtype."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(like.shape[0]).reshape(-1, 1, 1, 1)


def gaussian_noise(
    img: torch.Tensor, sigma: float | torch.Tensor, gray: bool | torch.Tensor, source: NoiseSource
) -> torch.Tensor:
    """Additive Gaussian noise for ``img``.

    Args:
        img: ``(B, C, H, W)`` float (only its shape, dtype and device are used).
        sigma: standard deviation in 0-255 units, scalar or ``(B,)``.
        gray: luminance-only noise (one draw shared by the channels), scalar or ``(B,)`` bool/0-1.
        source: the random numbers.

    Returns:
        ``(B, C, H, W)`` noise in [0, 1] image units.
    """
    batch, channels, height, width = img.shape
    sigma = _per_sample(sigma, img)
    any_gray, gray = _any_gray(gray), _per_sample(gray, img)
    noise = source.standard_normal((batch, channels, height, width), "color", img) * sigma / 255.0
    if any_gray:
        gray_noise = source.standard_normal((batch, 1, height, width), "gray", img) * sigma / 255.0
        noise = noise * (1 - gray) + gray_noise * gray
    return noise


def _shot_noise(img: torch.Tensor, stream: NoiseStream, source: NoiseSource) -> torch.Tensor:
    """Poisson noise of ``img`` (B, C, H, W) quantised to 8 bits, with a photon count per sample of
    the next power of two above its number of distinct 8-bit values (the official heuristic)."""
    levels = torch.clamp((img * 255.0).round(), 0, 255)
    quantised = levels / 255.0
    batch = img.shape[0]
    # Distinct values per sample, counted on the 256 integer levels (same count as torch.unique).
    offsets = torch.arange(batch, device=img.device).view(-1, 1) * 256
    histogram = torch.bincount((levels.reshape(batch, -1).long() + offsets).flatten(), minlength=batch * 256)
    distinct = (histogram.view(batch, 256) > 0).sum(dim=1).to(torch.float64)
    counts = torch.exp2(torch.ceil(torch.log2(distinct))).to(img.dtype).view(-1, 1, 1, 1)
    return source.poisson(quantised * counts, stream) / counts - quantised


def poisson_noise(
    img: torch.Tensor, scale: float | torch.Tensor, gray: bool | torch.Tensor, source: NoiseSource
) -> torch.Tensor:
    """Additive Poisson (shot) noise for ``img``.

    Args:
        img: ``(B, 3, H, W)`` float in [0, 1].
        scale: noise multiplier, scalar or ``(B,)``.
        gray: luminance-only noise (drawn on the ITU-R 601 luma), scalar or ``(B,)`` bool/0-1.
        source: the random numbers.

    Returns:
        ``(B, 3, H, W)`` noise in [0, 1] image units (detached from ``img``: sampling has no gradient).
    """
    any_gray, gray = _any_gray(gray), _per_sample(gray, img)
    with torch.no_grad():
        noise = _shot_noise(img, "color", source)
        if any_gray:
            gray_noise = _shot_noise(rgb_to_grayscale(img, num_output_channels=1), "gray", source)
            noise = noise * (1 - gray) + gray_noise.expand_as(noise) * gray
    return noise * _per_sample(scale, img)


def _finish(out: torch.Tensor, clip: bool, rounds: bool) -> torch.Tensor:
    if rounds:
        out = (out * 255.0).round()
        return (torch.clamp(out, 0, 255) if clip else out) / 255.0
    return torch.clamp(out, 0, 1) if clip else out


def add_gaussian_noise(
    img: torch.Tensor,
    sigma: float | torch.Tensor,
    gray: bool | torch.Tensor,
    source: NoiseSource,
    *,
    clip: bool = True,
    rounds: bool = False,
) -> torch.Tensor:
    """``img + gaussian_noise(...)``, clamped to [0, 1] (``clip``) and/or rounded to the 1/255 grid
    (``rounds``). Shapes as in :func:`gaussian_noise`."""
    return _finish(img + gaussian_noise(img, sigma, gray, source), clip, rounds)


def add_poisson_noise(
    img: torch.Tensor,
    scale: float | torch.Tensor,
    gray: bool | torch.Tensor,
    source: NoiseSource,
    *,
    clip: bool = True,
    rounds: bool = False,
) -> torch.Tensor:
    """``img + poisson_noise(...)`` (the noise is added to the unquantised image), clamped and/or
    rounded as in :func:`add_gaussian_noise`."""
    return _finish(img + poisson_noise(img, scale, gray, source), clip, rounds)
