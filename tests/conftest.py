"""Shared test fixtures: offline Hub, golden and fixture locations, tiny models.

Every test runs offline on the CPU. The golden vectors and the tiny SD2.1 fixture live in the shared
folder beside the checkout (``../shared``); ``ELQPROJ_GOLDEN_DIR`` / ``ELQPROJ_FIXTURES_DIR`` override.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
GOLDEN_DIR = Path(os.environ.get("ELQPROJ_GOLDEN_DIR", SHARED_DIR / "golden"))
FIXTURES_DIR = Path(os.environ.get("ELQPROJ_FIXTURES_DIR", SHARED_DIR / "fixtures"))
TINY_SD21 = FIXTURES_DIR / "tiny-sd21"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def golden_set(name: str) -> Path:
    """Path of one golden set; a missing set fails the test (golden tests are never skipped)."""
    path = GOLDEN_DIR / name
    if not (path / "README.md").is_file():
        raise FileNotFoundError(
            f"golden set {name!r} not found at {path}; set ELQPROJ_GOLDEN_DIR to the shared golden/ folder"
        )
    return path


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Keep every test's downloads/caches away from the user's home directory."""
    root = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("ELQPROJ_CACHE", str(root / "elqproj"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sd21() -> Path:
    if not (TINY_SD21 / "model_index.json").is_file():
        raise FileNotFoundError(f"tiny SD2.1 fixture not found at {TINY_SD21}")
    return TINY_SD21
