"""What an evaluation writes and where: the output layout of one method, the JSONL records of its
runs and scores (read back on resume), and the result of the whole evaluation."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..validation import ConfigModel
from .methods import MethodSpec
from .metrics import MetricSpec

__all__ = ["ImageRun", "ImageScores", "MethodFolder", "EvaluationResult", "append_record"]

logger = logging.getLogger(__name__)


class ImageRun(ConfigModel):
    """One image's restoration by one method (a line of ``runs.jsonl``); ``seconds`` per pipeline stage."""

    image: str
    seed: int
    prompts: list[str]
    lfo_passes: int
    lfo_stop: str | None
    rounds: int
    seconds: dict[str, float]
    decision: dict[str, Any] | None = None


class ImageScores(ConfigModel):
    """The per-image metrics of one image at one LFO round (a line of ``scores.jsonl``)."""

    image: str
    round: int
    scores: dict[str, float]


def _read_lines(path: Path, model: type[ConfigModel]) -> Iterable[Any]:
    """The valid lines of a JSONL log; a line cut short by a kill is skipped (its image is redone)."""
    if not path.is_file():
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            yield model.model_validate_json(line)
        except ConfigError:
            logger.warning("%s:%d is not a complete record; ignored", path, number)


def append_record(path: Path, record: ConfigModel) -> None:
    """Append one JSON line and flush it (a kill loses at most the line being written)."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record.model_dump_json() + "\n")
        handle.flush()


@dataclass(frozen=True)
class MethodFolder:
    """Where one method's files live (see the module docstring)."""

    root: Path
    spec: MethodSpec

    @property
    def rounds(self) -> int:
        """LFO rounds kept: k = 0 … lfo (0 alone without LFO; ``lfo="auto"`` keeps its cap's rounds)."""
        from ..pipeline import LFO_AUTO_CAP

        lfo = self.spec.lfo
        return (LFO_AUTO_CAP if lfo == "auto" else lfo) + 1  # auto mode: 0 (its LFO passes vary per image)

    def hq(self, name: str, round: int | None = None) -> Path:
        base = self.root if round is None else self.root / "rounds" / str(round)
        return base / "hq" / f"{name}.png"

    def lq(self, name: str, round: int | None = None) -> Path:
        base = self.root if round is None else self.root / "rounds" / str(round)
        return base / "lq" / f"{name}.png"

    @property
    def runs_log(self) -> Path:
        return self.root / "runs.jsonl"

    @property
    def scores_log(self) -> Path:
        return self.root / "scores.jsonl"

    def runs(self) -> dict[str, ImageRun]:
        """The recorded run of every image whose result file exists."""
        return {run.image: run for run in _read_lines(self.runs_log, ImageRun) if self.hq(run.image).is_file()}

    def scores(self, needed: Sequence[str]) -> dict[tuple[str, int], dict[str, float]]:
        """(image, round) → scores, for records that hold every metric in ``needed`` (newest wins)."""
        found: dict[tuple[str, int], dict[str, float]] = {}
        for record in _read_lines(self.scores_log, ImageScores):
            if set(needed) <= set(record.scores):
                found[(record.image, record.round)] = record.scores
        return found


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured and where it wrote it.

    ``summary``: one row per method (``method``, ``images``, ``seconds_per_image`` and the mean of
    each metric; set metrics over the whole set); ``rounds``: per LFO method, one row per round k;
    ``decisions``: per auto-mode method, how many images got each severity and each action.
    """

    out: Path
    metrics: list[MetricSpec]
    summary: list[dict[str, Any]]
    rounds: dict[str, list[dict[str, Any]]]
    settings: dict[str, str]
    files: dict[str, Path]
    decisions: dict[str, dict[str, int]] = field(default_factory=dict)
