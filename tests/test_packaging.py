"""What ``pip install elqproj`` ships: every subpackage of the source tree is declared in pyproject.toml."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _source_packages() -> set[str]:
    """Import names of every folder with an ``__init__.py`` under the package-dir roots."""
    roots = PYPROJECT["tool"]["setuptools"]["package-dir"]  # import name -> folder
    found = set()
    for name, folder in roots.items():
        base = REPO_ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_subpackage_is_listed_in_pyproject():
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    source = _source_packages()
    assert source - declared == set(), "add these to [tool.setuptools] packages, or pip install leaves them out"
    assert declared - source == set(), "declared packages without an __init__.py"


def test_the_tested_torch_range_is_declared():
    """pip may not pick an untested torch: the dependency has an upper bound below the next minor."""
    (torch,) = [d for d in PYPROJECT["project"]["dependencies"] if d.replace(" ", "").startswith("torch>")]
    assert "<" in torch, f"{torch!r} has no upper bound"
