"""elqproj: extreme blind image restoration with a prompt-conditioned projector.

    >>> from elqproj import Projector, load_restorer
    >>> proj = Projector.from_pretrained("my-projector", device="cuda")
    >>> res = proj.restore("old_scan.jpg", backend="osediff", prompt_extractor="ram", lfo=2)
    >>> res.image.save("restored.png")

Heavy submodules (diffusers, transformers) are imported on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Projector": "elqproj.projector",
    "ProjectorConfig": "elqproj.projector",
    "RestorationPipeline": "elqproj.pipeline",
    "RestorationResult": "elqproj.pipeline",
    "OneStepSD": "elqproj.onestep",
    "Restorer": "elqproj.adapters.base",
    "RestorerCapabilities": "elqproj.adapters.base",
    "load_restorer": "elqproj.adapters.base",
    "list_restorers": "elqproj.adapters.base",
    "register_restorer": "elqproj.adapters.base",
    "get_restorer_class": "elqproj.adapters.base",
    "TilingConfig": "elqproj.tiling",
}

from .errors import (  # noqa: E402  (light, always importable)
    CheckpointMismatchError,
    ConfigError,
    DeviceError,
    NumericalError,
    ElqprojError,
    ImageDecodeError,
    ImageTooLargeError,
    IntegrityError,
    InvalidInputError,
    UnknownNameError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)

__all__ = [
    "__version__",
    *_LAZY,
    "ElqprojError",
    "IntegrityError",
    "InvalidInputError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "WeightsNotFoundError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "UnknownNameError",
    "ConfigError",
    "DeviceError",
    "NumericalError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'elqproj' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
