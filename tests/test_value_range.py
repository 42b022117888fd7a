"""[0, 1] <-> [-1, 1]: one conversion pair, used everywhere."""

from __future__ import annotations

import re

import torch

from elqproj.value_range import signed_to_unit, unit_to_signed
from tests.conftest import REPO_ROOT


def test_the_pair_maps_the_ranges_onto_each_other_exactly_at_the_ends():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(unit_to_signed(x), torch.tensor([-1.0, -0.5, 0.0, 1.0]), rtol=0, atol=0)
    torch.testing.assert_close(signed_to_unit(unit_to_signed(x)), x, rtol=0, atol=0)
    assert unit_to_signed(x.half()).dtype == torch.float16


def test_no_module_converts_ranges_by_hand():
    """Every conversion goes through elqproj.value_range (the official arithmetic in one place)."""
    by_hand = re.compile(r"\*\s*2\s*-\s*1\b|\*\s*0\.5\s*\+\s*0\.5|/\s*2\s*\+\s*0\.5")
    offenders = []
    for folder in ("elqproj", "adapters"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path.name == "value_range.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = re.sub(r"\"[^\"]*\"|'[^']*'", "", line).split("#", 1)[0]  # no strings, no comments
                if by_hand.search(code):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert offenders == []
