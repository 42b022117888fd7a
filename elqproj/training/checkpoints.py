"""Checkpoint directories of a training run: finding, pruning, and the files beside the weights.

A checkpoint ``<output_dir>/checkpoint-<step>/`` holds

* the trained network: a Projector directory (config.json, projector.safetensors, README.md; load it
  with ``Projector.from_pretrained``) — or, for the restorer baseline, ``osediff.safetensors`` in
  OSEDiff's official checkpoint layout (``OSEDiffRestorer.save_weights``; load it with
  ``load_restorer("osediff", weights=...)``);
* ``regularizer.safetensors``: the VSD regulariser's LoRA;
* accelerate's state: optimizers, learning-rate schedulers, gradient scaler, RNG and sampler states;
* ``training_config.yaml`` and, written last, ``trainer_state.json`` (``global_step``): a directory
  without it is incomplete and never resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINER_STATE",
    "REGULARIZER_WEIGHTS",
    "RESTORER_WEIGHTS",
    "list_checkpoints",
    "resolve_resume",
    "prune_checkpoints",
    "write_trainer_state",
    "read_trainer_state",
]

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
REGULARIZER_WEIGHTS = "regularizer.safetensors"
RESTORER_WEIGHTS = "osediff.safetensors"
_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _PATTERN.match(path.name)
        if match and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: ``None`` (start fresh), ``"latest"`` (newest complete checkpoint
    of ``output_dir``, or fresh when there is none) or a checkpoint directory."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(
            f"--resume {resume!r} is not a complete checkpoint directory (no {TRAINER_STATE}); "
            f"use 'latest' or a {CHECKPOINT_PREFIX}<step> folder of a run."
        )
    return path


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; returns the deleted paths."""
    if keep is None:
        return []
    doomed = [path for _, path in list_checkpoints(output_dir)[:-keep]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def write_trainer_state(directory: str | Path, state: dict[str, Any]) -> None:
    (Path(directory) / TRAINER_STATE).write_text(json.dumps({**state, "elqproj_version": __version__}, indent=2) + "\n")


def read_trainer_state(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / TRAINER_STATE).read_text())
