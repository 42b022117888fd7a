"""The two value ranges images take in elqproj, and the one conversion pair between them.

Images at the API, in files and in colour fixes are in **[0, 1]** ("unit"); the VAE of every SD-based
model reads and writes **[-1, 1]** ("signed"). Every conversion goes through these two functions, so the
arithmetic is the official scripts' everywhere (``x * 2 - 1`` and ``x * 0.5 + 0.5``, exact in floating
point up to the final rounding of each operation), and golden parity cannot drift from one copy to another.
"""

from __future__ import annotations

import torch

__all__ = ["unit_to_signed", "signed_to_unit"]


def unit_to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: ``x * 2 - 1`` (same shape, dtype and device)."""
    return x * 2 - 1


def signed_to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: ``x * 0.5 + 0.5`` (same shape, dtype and device; not clamped)."""
    return x * 0.5 + 0.5
