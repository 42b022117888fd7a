"""IRIB training: a projector f (or, as the paper's baseline, the restorer itself) on accelerate.

    >>> from elqproj.training import load_config, train
    >>> final = train(load_config("configs/irib_osediff.yaml"), resume="latest")
    >>> Projector.from_pretrained(final)

Command line: ``accelerate launch -m elqproj.training --config X.yaml [--resume latest]`` or
``elqproj train --config X.yaml``. See docs/training.md. The trainer (torch, diffusers, accelerate)
is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import TrainingConfig, load_config, validate_config

__all__ = ["TrainingConfig", "load_config", "validate_config", "IRIBTrainer", "train"]

_LAZY = {"IRIBTrainer": "elqproj.training.trainer", "train": "elqproj.training.trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'elqproj.training' has no attribute {name!r}")
