"""Seeds derived from a run's seed: one per training step, dataset item or input file.

A derived seed depends only on the run's seed and its keys, never on the order or company in which
the work happens, so a file degraded or restored alone, in a batch or on another process of a sharded
run gets the same random draws.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["MAX_SEED", "derive_seed", "file_seed"]

#: Seeds are non-negative 63-bit integers (what ``torch.Generator.manual_seed`` and JSON both hold).
MAX_SEED = 2**63 - 1

# An odd 64-bit constant (the golden-ratio increment of splitmix64): multiplying by it spreads
# consecutive user seeds (0, 1, 2, …) far apart before the key is added.
_MIX = 0x9E3779B97F4A7C15


def derive_seed(seed: int, *keys: int) -> int:
    """A new 63-bit seed determined by ``seed`` and ``keys`` (e.g. an epoch and a dataset index).

    Small consecutive seeds and keys map to well separated values, so ``derive_seed(0, 1)`` and
    ``derive_seed(1, 0)`` differ.
    """
    value = int(seed) & MAX_SEED
    for key in keys:
        value = (value * _MIX + int(key) + 1) & MAX_SEED
    return value


def file_seed(seed: int, path: str | os.PathLike) -> int:
    """The seed of one file's work (its degradation, its restoration): derived from ``seed`` and the file
    *name*, so a file gets the same draws whatever other files run with it, in any order, on any process,
    and wherever the archive is mounted."""
    digest = hashlib.sha256(Path(path).name.encode("utf-8")).digest()
    return derive_seed(seed, int.from_bytes(digest[:8], "little"))
