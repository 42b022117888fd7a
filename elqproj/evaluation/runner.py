"""``elqproj evaluate``: ELQ inputs made once → every method's outputs → metrics → tables, plots, report.

Layout of the output folder::

    inputs/recipe.json, inputs/hq/<image>.png, inputs/elq/<image>.png (+ .json: seed, degradation params)
    methods/<method>/hq/<image>.png             the method's result
    methods/<method>/lq/<image>.png             f's LQ proxy (methods with a projector)
    methods/<method>/rounds/<k>/{lq,hq}/<image>.png   every LFO round k = 0 … lfo (methods with LFO)
    methods/<method>/runs.jsonl                 per image: seed, prompts of every pass, LFO stop, timings
    methods/<method>/scores.jsonl               per image and round: the per-image metrics
    per_image.csv, per_round.csv, summary.csv, summary.md, summary.json, plots/*.png, report.html
    complexity.csv, complexity.md               with ``complexity: true`` (the paper's Table 5)

A rerun skips every image whose run and scores are recorded (a killed run resumes where it stopped);
set metrics (FID) and the tables are recomputed from the files each time.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import ConfigError
from ..seeding import file_seed
from ..validation import ConfigModel
from .config import EvaluationConfig
from .data import EvalInputs, load_png, open_dataset, save_png, synthesize_inputs
from .methods import MethodSpec, method_slug
from .metrics import MetricSpec, MetricSuite, metric_specs

__all__ = ["evaluate", "EvaluationResult", "MethodFolder"]

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


def _append(path: Path, record: ConfigModel) -> None:
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
        return (LFO_AUTO_CAP if lfo == "auto" else lfo) + 1

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


def _restore_missing(folder: MethodFolder, inputs: EvalInputs, *, seed: int, device: Any, dtype: Any,
                     progress: bool) -> None:
    """Run the method on every input without a recorded run (the pipeline is loaded only if needed)."""
    done = folder.runs()
    todo = [name for name in inputs if name not in done]
    if not todo:
        return
    spec = folder.spec
    pipeline = spec.load(device=device, dtype=dtype)
    folder.root.mkdir(parents=True, exist_ok=True)
    try:
        for name in tqdm(todo, desc=f"restore [{spec.label}]", unit="img", disable=not progress):
            image_seed = file_seed(seed, name)
            start = time.perf_counter()
            result = pipeline(load_png(inputs.elq(name)), seed=image_seed, progress=False, **spec.call_arguments())
            seconds = dict(result.timings)
            seconds.setdefault("total", time.perf_counter() - start)
            save_png(result.image, folder.hq(name))
            if pipeline.projector is not None:
                save_png(result.lq_passes[-1], folder.lq(name))
            if folder.rounds > 1:
                # A run whose LFO stopped early (its prompts stopped changing) would repeat its last pass:
                # its later rounds are that pass's images.
                for k in range(folder.rounds):
                    last = min(k, len(result.hq_rounds) - 1)
                    save_png(result.hq_rounds[last], folder.hq(name, k))
                    save_png(result.lq_passes[last], folder.lq(name, k))
            prompts = [p if isinstance(p, str) else p[0] for p in result.prompts]
            _append(folder.runs_log, ImageRun(image=name, seed=image_seed, prompts=prompts,
                                              lfo_passes=result.lfo_passes, lfo_stop=result.lfo_stop,
                                              rounds=folder.rounds, seconds=seconds))
    finally:
        del pipeline
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _score_missing(folder: MethodFolder, inputs: EvalInputs, suite: MetricSuite, per_image: Sequence[str],
                   progress: bool) -> None:
    """Score every (image, round) without complete scores, from the saved 8-bit files."""
    have = folder.scores(per_image)
    todo = [(name, k) for name in inputs for k in range(folder.rounds) if (name, k) not in have]
    for name, k in tqdm(todo, desc=f"metrics [{folder.spec.label}]", unit="img", disable=not progress or not todo):
        path = folder.hq(name, k) if folder.rounds > 1 else folder.hq(name)
        scores = suite.score(load_png(path), load_png(inputs.hq(name)))
        _append(folder.scores_log, ImageScores(image=name, round=k, scores=scores))


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured and where it wrote it.

    ``summary``: one row per method (``method``, ``images``, ``seconds_per_image`` and the mean of
    each metric; set metrics over the whole set); ``rounds``: per LFO method, one row per round k.
    """

    out: Path
    metrics: list[MetricSpec]
    summary: list[dict[str, Any]]
    rounds: dict[str, list[dict[str, Any]]]
    settings: dict[str, str]
    files: dict[str, Path]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def evaluate(config: EvaluationConfig, *, progress: bool = True) -> EvaluationResult:
    """Run the whole evaluation of ``config`` (see the module docstring for what is written where).

    Raises:
        ConfigError: an invalid config, inputs of another recipe in ``config.out``, a metric without
            its package or weights (offline: names the file and where it belongs).
        WeightsNotFoundError: a method's weights are missing.
    """
    from ..training.data import degradation_config
    from .report import write_report

    labels = config.labels()
    out = Path(config.out)
    specs = metric_specs(config.metrics, channel=config.channel)
    per_image = [spec.name for spec in specs if spec.kind != "set"]
    images = open_dataset(config.data, split=config.split, image_column=config.image_column, limit=config.limit)
    inputs = synthesize_inputs(images, out / "inputs", degradation=degradation_config(config.degradation),
                               seed=config.seed, size=config.size, progress=progress)
    suite = MetricSuite(config.metrics, device=config.device, channel=config.channel, options=config.metric_options)
    folders = [MethodFolder(out / "methods" / method_slug(label), spec) for spec, label in zip(config.methods, labels)]
    for folder in folders:
        _restore_missing(folder, inputs, seed=config.seed, device=config.device, dtype=config.dtype, progress=progress)
        _score_missing(folder, inputs, suite, per_image, progress)

    summary, rounds = [], {}
    for folder, label in zip(folders, labels):
        scores = folder.scores(per_image)
        runs = folder.runs()
        final = folder.rounds - 1
        row: dict[str, Any] = {"method": label, "images": len(inputs.names),
                               "seconds_per_image": _mean([runs[n].seconds["total"] for n in inputs])}
        for name in per_image:
            row[name] = _mean([scores[(image, final)][name] for image in inputs])
        sets = suite.score_sets(folder.hq(inputs.names[0]).parent, inputs.hq_dir)
        row.update(sets)
        summary.append(row)
        if folder.rounds > 1:
            rounds[label] = []
            for k in range(folder.rounds):
                round_row: dict[str, Any] = {"round": k}
                for name in per_image:
                    round_row[name] = _mean([scores[(image, k)][name] for image in inputs])
                round_row.update(suite.score_sets(folder.hq(inputs.names[0], k).parent, inputs.hq_dir))
                rounds[label].append(round_row)

    result = EvaluationResult(out=out, metrics=specs, summary=summary, rounds=rounds, settings=suite.settings(),
                              files={})
    per_image_rows = _per_image_rows(folders, labels, inputs, per_image)
    complexity = _complexity(config, labels, progress) if config.complexity else None
    result.files = write_report(result, config=config, inputs=inputs, folders=dict(zip(labels, folders)),
                                per_image=per_image_rows, complexity=complexity,
                                provenance={"elqproj": __version__, "torch": torch.__version__})
    return result


def _per_image_rows(folders: Sequence[MethodFolder], labels: Sequence[str], inputs: EvalInputs,
                    per_image: Sequence[str]) -> list[dict[str, Any]]:
    """Every (method, image, round) row: the final round's rows make per_image.csv, all make per_round.csv."""
    rows = []
    for folder, label in zip(folders, labels):
        scores = folder.scores(per_image)
        for image in inputs:
            for k in range(folder.rounds):
                rows.append({"method": label, "image": image, "round": k, "final": k == folder.rounds - 1,
                             **{name: scores[(image, k)][name] for name in per_image}})
    return rows


def _complexity(config: EvaluationConfig, labels: Sequence[str], progress: bool) -> list[Any]:
    """The paper's Table 5 for each method, at ``config.complexity_size`` pixels."""
    from .complexity import measure_complexity

    reports = []
    for spec, label in tqdm(list(zip(config.methods, labels)), desc="complexity", disable=not progress):
        pipeline = spec.load(device=config.device, dtype=config.dtype)
        lfo = spec.lfo if spec.lfo != "auto" else 0
        reports.append(measure_complexity(pipeline, method=label, size=config.complexity_size, lfo=lfo,
                                          seed=config.seed, prompt=spec.prompt))
        del pipeline
        gc.collect()
    return reports

