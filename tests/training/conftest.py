"""Tiny training runs: the example CPU config on the tiny SD2.1 fixture, the golden OSEDiff checkpoint
as g, and a folder of two random 128x128 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elqproj.training import TrainingConfig, load_config
from tests.conftest import OSEDIFF_GOLDEN_PKL, REPO_ROOT, TINY_SD21

TINY_CONFIG = REPO_ROOT / "configs" / "irib_tiny_cpu.yaml"


@pytest.fixture(scope="session")
def train_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hq")
    for i in range(2):
        pixels = (np.random.default_rng(i).random((128, 128, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def tiny_config(output_dir: Path, images: Path, **overrides) -> TrainingConfig:
    """The example CPU config with the fixtures' absolute paths, no trackers, and ``overrides``."""
    base = {
        "output_dir": str(output_dir),
        "base_model": str(TINY_SD21),
        "restorer.weights": str(OSEDIFF_GOLDEN_PKL),
        "data.train": str(images),
        "training.log_with": [],
    }
    return load_config(TINY_CONFIG, overrides={**base, **overrides})
