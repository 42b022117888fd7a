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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..seeding import file_seed
from .config import EvaluationConfig
from .data import EvalInputs, load_png, open_dataset, save_png, synthesize_inputs
from .methods import method_slug
from .metrics import MetricSuite, metric_specs
from .records import EvaluationResult, ImageRun, ImageScores, MethodFolder, append_record
from .report import write_report

__all__ = ["evaluate"]



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
                save_png(result.lq, folder.lq(name))  # what g restored (the input itself where f did not run)
            if folder.rounds > 1:
                # A run whose LFO stopped early (its prompts stopped changing) would repeat its last pass:
                # its later rounds are that pass's images.
                for k in range(folder.rounds):
                    last = min(k, len(result.hq_rounds) - 1)
                    save_png(result.hq_rounds[last], folder.hq(name, k))
                    save_png(result.lq_passes[last], folder.lq(name, k))
            prompts = [p if isinstance(p, str) else p[0] for p in result.prompts]  # a batch of one image
            decision = result.decision[0] if isinstance(result.decision, list) else result.decision
            append_record(folder.runs_log, ImageRun(image=name, seed=image_seed, prompts=prompts,
                                              lfo_passes=result.lfo_passes, lfo_stop=result.lfo_stop,
                                              rounds=folder.rounds, seconds=seconds, decision=decision))
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
        append_record(folder.scores_log, ImageScores(image=name, round=k, scores=scores))


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

    summary, rounds, decisions, per_image_rows = [], {}, {}, []
    for folder, label in zip(folders, labels):
        scores = folder.scores(per_image)
        runs = folder.runs()
        final = folder.rounds - 1
        # Every (image, round) row: the final round's make per_image.csv, all of them per_round.csv.
        per_image_rows += [{"method": label, "image": image, "round": k, "final": k == final,
                            **{name: scores[(image, k)][name] for name in per_image}}
                           for image in inputs for k in range(folder.rounds)]
        if folder.spec.mode == "auto":
            decisions[label] = decision_counts([runs[name].decision for name in inputs])
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
                              files={}, decisions=decisions)
    complexity = _complexity(config, labels, progress) if config.complexity else None
    result.files = write_report(result, config=config, inputs=inputs, folders=dict(zip(labels, folders)),
                                per_image=per_image_rows, complexity=complexity,
                                provenance={"elqproj": __version__, "torch": torch.__version__})
    return result


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


def decision_counts(decisions: Sequence[dict[str, Any] | None]) -> dict[str, int]:
    """How often auto mode chose each severity and each action, e.g. ``{"severe": 3, "mild": 1, "f": 3,
    "g alone": 1, "LFO×2": 3}``."""
    from collections import Counter

    counts: Counter[str] = Counter()
    for decision in decisions:
        if decision is None:
            continue
        counts[decision["severity"]] += 1
        counts["f" if decision["projector"] else "g alone"] += 1
        if decision["lfo"]:
            counts[f"LFO×{decision['lfo']}"] += 1
    return dict(counts)
