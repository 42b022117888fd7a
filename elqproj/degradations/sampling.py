"""Random draws for the degradation samplers, all from one ``torch.Generator``.

Every random choice of the degradation engine goes through :class:`RandomDraws`, so a run is fully
determined by the generator's seed (the official code mixed Python ``random``, numpy's legacy global
RNG and torch's global RNG; we use none of them, which keeps DataLoader workers independent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch

from ..seeding import MAX_SEED

__all__ = ["RandomDraws"]

T = TypeVar("T")

class RandomDraws:
    """Scalar random draws from a CPU ``torch.Generator`` (float64 uniforms).

    Args:
        generator: the source of randomness; ``None`` uses a fresh generator seeded from torch's
            global RNG (not reproducible unless the caller seeded torch).
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, MAX_SEED, ()).item()))
        self.generator = generator

    def unit(self) -> float:
        """A uniform float in [0, 1)."""
        return float(torch.rand((), dtype=torch.float64, generator=self.generator).item())

    def uniform(self, low: float, high: float) -> float:
        """A uniform float in [low, high)."""
        return low + (high - low) * self.unit()

    def bernoulli(self, probability: float) -> bool:
        """True with the given probability (never for 0, always for 1)."""
        return self.unit() < probability

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in [low, high], both ends included."""
        return int(torch.randint(low, high + 1, (), generator=self.generator).item())

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options``, uniformly."""
        return options[self.integer(0, len(options) - 1)]

    def weighted_choice(self, weights: Mapping[T, float]) -> T:
        """A key of ``weights`` drawn with probability proportional to its weight."""
        keys = [key for key, weight in weights.items() if weight > 0]
        target = self.unit() * sum(weights[key] for key in keys)
        cumulative = 0.0
        for key in keys:
            cumulative += weights[key]
            if target < cumulative:
                return key
        return keys[-1]  # float round-off left target at the very top of the last interval

    def seed(self) -> int:
        """A fresh 63-bit seed (for the noise generators of one sample)."""
        return int(torch.randint(0, MAX_SEED, (), generator=self.generator).item())
