"""The manifest of a folder restoration: one JSON line per input file, what happened to it and why.

Every process of a run appends its lines to its own part file (``manifest.part-<process>.jsonl`` beside
``manifest.jsonl``), flushed line by line, so a crash or a preemption loses at most the image that was
running. At the end of a run the parts are merged into ``manifest.jsonl`` (the newest line per input
wins) and removed; a resumed run reads both the merged file and any part left by a run that never got
to merge. A line cut short by a kill is ignored: its image is simply done again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .validation import ConfigModel

__all__ = ["MANIFEST_NAME", "ManifestRecord", "ManifestWriter", "clear_manifest", "latest_records",
           "merge_manifest", "part_path"]

logger = logging.getLogger(__name__)

#: The merged manifest's file name in the output folder of ``elqproj restore`` / ``restore_folder``.
MANIFEST_NAME = "manifest.jsonl"


class ManifestRecord(ConfigModel):
    """One input file's line.

    Attributes:
        input / output: the file paths as the run was given them and wrote them.
        status: ``"done"`` (the output is complete) or ``"failed"`` (``error`` says why).
        attempts: how many times the image was tried (a failed image is retried once, alone).
        seed: the image's own seed (derived from the run's seed and the file name, or drawn at random
            when the run has no seed): ``restore(image, seed=seed)`` reproduces the output.
        prompts: the prompt of every pass [c¹, …, c^{lfo+1}, c_LQ] (empty when the image failed).
        lfo_passes / lfo_stop: Look-Forward-Once passes run, and why fewer than asked (see
            :class:`~elqproj.pipeline.RestorationResult`).
        timings: seconds per stage of the call the image ran in (shared by the images of one batch).
        decision: with auto mode, the image's severity score and what was chosen (f, LFO passes,
            strength; see :mod:`elqproj.auto`); else ``None``.
        batch_size: images in that call.
        device: where it ran; process: the index of the process that ran it.
        finished: UTC time (ISO 8601) the line was written; the newest line of an input wins a merge.
    """

    input: str
    output: str
    status: Literal["done", "failed"]
    error: str | None = None
    attempts: int = 1
    seed: int | None = None
    prompts: list[str] = []
    lfo_passes: int = 0
    lfo_stop: str | None = None
    timings: dict[str, float] = {}
    decision: dict[str, Any] | None = None
    batch_size: int = 1
    device: str = ""
    process: int = 0
    finished: str = ""

    @classmethod
    def now(cls, **fields: object) -> ManifestRecord:
        """A record stamped with the current UTC time."""
        return cls(finished=datetime.now(timezone.utc).isoformat(timespec="microseconds"), **fields)


def part_path(manifest: Path, process: int) -> Path:
    """The part file process ``process`` appends to, beside ``manifest``."""
    return manifest.with_name(f"{manifest.stem}.part-{process:05d}{manifest.suffix}")


def _part_files(manifest: Path) -> list[Path]:
    return sorted(manifest.parent.glob(f"{manifest.stem}.part-*{manifest.suffix}"))


class ManifestWriter:
    """Appends one process's records to its part file, each line flushed as it is written."""

    def __init__(self, manifest: Path, process: int) -> None:
        self.path = part_path(manifest, process)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: ManifestRecord) -> None:
        self._file.write(record.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _read(path: Path) -> Iterable[ManifestRecord]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                yield ManifestRecord.model_validate_json(line)
            except ConfigError:  # a line cut short by a kill, or not ours: its image is not done
                logger.warning("%s:%d is not a manifest line; ignored", path, number)


def latest_records(manifest: Path) -> dict[str, ManifestRecord]:
    """The newest record of every input in ``manifest`` and its part files (what a resumed run trusts)."""
    latest: dict[str, ManifestRecord] = {}
    for path in [manifest, *_part_files(manifest)]:
        for record in _read(path):
            if record.input not in latest or record.finished >= latest[record.input].finished:
                latest[record.input] = record
    return latest


def merge_manifest(manifest: Path) -> dict[str, ManifestRecord]:
    """Merge the part files into ``manifest`` (the newest line per input, sorted by input; written
    atomically), remove the parts, and return the merged records."""
    records = latest_records(manifest)
    temporary = manifest.with_name(f".{manifest.name}.tmp")
    temporary.write_text("".join(records[key].model_dump_json() + "\n" for key in sorted(records)), encoding="utf-8")
    os.replace(temporary, manifest)
    for part in _part_files(manifest):
        part.unlink()
    return records


def clear_manifest(manifest: Path) -> None:
    """Remove ``manifest`` and its part files (a run that does not resume starts a new manifest)."""
    for path in [manifest, *_part_files(manifest)]:
        path.unlink(missing_ok=True)
