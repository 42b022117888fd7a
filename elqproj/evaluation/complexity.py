"""Computational complexity of a restoration setup: the paper's Table 5 (time, GMACs, parameters).

:func:`measure_complexity` runs a :class:`~elqproj.pipeline.RestorationPipeline` on one synthetic image
and reports, per pipeline stage ("prompt", "project", "lfo", "restore"), the multiply–accumulates it
computes and its median wall time, with the parameter counts of the setup's components.
:func:`complexity_rows` and :func:`complexity_markdown` turn reports into CSV/JSON rows and a table.

Units: MACs are counts (GMACs = 10⁹ MACs), times are seconds, parameters are counts (M = 10⁶).

What is counted: :class:`torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of matrix products
(``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions and attention kernels, at two FLOPs per
multiply–accumulate; elementwise work (activations, normalisation, softmax, resampling, colour fix) is
not counted. MACs = FLOPs / 2, the convention of the paper's Table 5.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

from ..adapter_sets import AdapterSetMixin
from ..benchmarking import synthetic_images
from ..errors import InvalidInputError
from ..pipeline import RestorationPipeline
from ..prompts.base import PromptExtractor, PromptResult

__all__ = ["STAGES", "StageCost", "ComplexityReport", "count_macs", "measure_complexity", "complexity_rows",
           "complexity_markdown"]

#: The pipeline's stages in the order a call runs them (``RestorationResult.timings`` names them).
STAGES = ("prompt", "project", "lfo", "restore")


@dataclass(frozen=True)
class StageCost:
    """The cost of one pipeline stage in one call on one image.

    Attributes:
        stage: the pipeline's stage name: "prompt" (Y on the input and on the final LQ proxy), "project"
            (f's first pass, with the VAE encoding every pass re-uses), "lfo" (every Look-Forward-Once
            round: Y on the proxy and f again), "restore" (g).
        macs: multiply–accumulates of the stage (FLOPs / 2; matrix products, convolutions and attention
            only, see the module docstring).
        seconds: median wall-clock seconds of the stage over the timed calls (synchronised with the device).
    """

    stage: str
    macs: int
    seconds: float


@dataclass(frozen=True)
class ComplexityReport:
    """What :func:`measure_complexity` measures for one method (one row of Table 5).

    Attributes:
        method: the row's label (e.g. "Baseline", "Ours (LFO×2)").
        image_size: (H, W) in pixels at which the pipeline processed the image (f and g; g pads further
            to its own size multiple where it has one).
        params_total: the parameters of every component (Y, f, g) added up, a tensor two components share
            counted once per component: the paper's convention, where f and g each hold an SD copy.
        params_unique: the distinct parameter tensors the components hold in memory: a base shared by f
            and g (``shares_projector_base``) counted once.
        params_trainable: what IRIB training updates: f's LoRA and the base weights it trains in full
            (``ProjectorConfig.full_weights``); g and Y are frozen; 0 without a projector.
        stages: the cost of each stage the call ran, in the order it ran them.
    """

    method: str
    image_size: tuple[int, int]
    params_total: int
    params_unique: int
    params_trainable: int
    stages: tuple[StageCost, ...]

    @property
    def total_macs(self) -> int:
        """Multiply–accumulates of the whole call: the stages' sum."""
        return sum(stage.macs for stage in self.stages)

    @property
    def total_seconds(self) -> float:
        """Seconds of the whole call: the sum of the stages' medians (the models' time; the sizing and the
        image conversions around them are left out)."""
        return sum(stage.seconds for stage in self.stages)

    def stage(self, name: str) -> StageCost | None:
        """The cost of stage ``name``; ``None`` when the call did not run it (no projector: no "project")."""
        return next((stage for stage in self.stages if stage.stage == name), None)


# ------------------------------------------------------------------------------------------ counting
def _cpu_flash_attention_flop(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int],
                              *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu``: QKᵀ and the weighted sum of V."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# torch registers formulas for the CUDA attention kernels but not for the kernel that
# F.scaled_dot_product_attention dispatches to on the CPU: without this every attention layer would
# count 0 there.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop}


def _flop_counter() -> flop_counter.FlopCounterMode:
    return flop_counter.FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)


def count_macs(fn: Callable[[], Any]) -> int:
    """Multiply–accumulates of ``fn()``: torch's FLOP counter (matrix products, convolutions, attention;
    not elementwise work) halved."""
    with _flop_counter() as counter:
        fn()
    return counter.get_total_flops() // 2


@contextmanager
def _stage_flops(pipeline: RestorationPipeline) -> Iterator[dict[str, int]]:
    """While active, each call of ``pipeline`` also counts the FLOPs of each of its stages into the yielded
    dict (stage -> FLOPs, in the order the stages first ran), through the pipeline's ``stage_hooks``."""
    flops: dict[str, int] = {}

    @contextmanager
    def count(stage: str) -> Iterator[None]:
        with _flop_counter() as counter:
            yield
        flops[stage] = flops.get(stage, 0) + counter.get_total_flops()

    pipeline.stage_hooks.append(count)
    try:
        yield flops
    finally:
        pipeline.stage_hooks.remove(count)


# ------------------------------------------------------------------------------------------ prompts
#: Numbers appended to the prompts of measurement calls: never the same twice in a process.
_EXTRACTIONS = itertools.count()


class _DistinctPrompts(PromptExtractor):
    """A prompt source with a number no earlier extraction had appended to every prompt.

    The pipeline skips an LFO pass whose prompts repeat the previous pass's, and the text encoder caches
    embeddings by prompt: with distinct prompts every pass asked for runs and every prompt is encoded,
    so the cost does not depend on the image or on earlier calls. The words do not change f's or g's cost
    (the text encoder always sees 77 tokens)."""

    def __init__(self, source: PromptExtractor | str) -> None:
        self.source = source
        self.name = source if isinstance(source, str) else source.name

    def extract(self, images: torch.Tensor) -> PromptResult:
        if isinstance(self.source, str):
            result = PromptResult(texts=[self.source] * images.shape[0])
        else:
            result = self.source.extract(images)
        number = next(_EXTRACTIONS)
        return replace(result, texts=[f"{text} {number}".strip() for text in result.texts])


# ---------------------------------------------------------------------------------------- parameters
def _modules(component: Any) -> list[nn.Module]:
    """The modules a component computes with: itself if it is a module, else its module attributes (a
    prompt extractor's model); and those of a prompt extractor it holds (SeeSR tags with its own DAPE)."""
    if isinstance(component, nn.Module):
        found = [component]
    else:
        found = [value for value in vars(component).values() if isinstance(value, nn.Module)]
    held = getattr(component, "prompt_extractor", None)
    return found + (_modules(held) if held is not None else [])


def _parameters(component: Any) -> dict[int, nn.Parameter]:
    """The parameters a component runs with, by identity. On an engine that several adapter sets share
    (f and OSEDiff on one SD base), the LoRA of the sets other than the component's own is not its."""
    params = {id(p): p for module in _modules(component) for p in module.parameters()}
    engine = getattr(component, "engine", None)
    own = getattr(component, "adapter_set", None)
    if isinstance(engine, AdapterSetMixin) and own is not None:
        for name in engine.adapter_sets():
            if name != own:
                for param in engine.adapter_parameters(name):
                    params.pop(id(param), None)
    return params


def _parameter_counts(pipeline: RestorationPipeline) -> tuple[int, int, int]:
    """(total, unique, trainable) parameter counts of the pipeline's components."""
    components = [c for c in (pipeline.prompt_extractor, pipeline.projector, pipeline.restorer) if c is not None]
    per_component = [_parameters(component) for component in components]
    total = sum(p.numel() for params in per_component for p in params.values())
    unique = sum(p.numel() for p in {k: v for params in per_component for k, v in params.items()}.values())
    trainable = 0
    if pipeline.projector is not None:
        projector = pipeline.projector
        trainable = sum(p.numel() for p in projector.engine.trainable_parameters(projector.adapter_set))
    return total, unique, trainable


# ---------------------------------------------------------------------------------------- measuring
def _check_size(size: Any, minimum: int) -> tuple[int, int]:
    """``size`` (a side or (H, W)) as (H, W): positive multiples of 8 (the VAE's factor), at least ``minimum``."""
    sides = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if (not isinstance(sides, (tuple, list)) or len(sides) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sides)):
        raise InvalidInputError(f"size must be a side in pixels or a pair (H, W) of them, got {size!r} (e.g. 512).")
    if any(s % 8 or s < minimum for s in sides):
        raise InvalidInputError(
            f"size {size!r}: each side must be a multiple of 8 (the VAE's downsampling) and at least {minimum} px "
            f"(this pipeline's smallest side), so that f and g run at exactly that size; e.g. 512."
        )
    return int(sides[0]), int(sides[1])


def _check_count(name: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InvalidInputError(f"{name} must be an integer >= {least}, got {value!r}.")


def measure_complexity(
    pipeline: RestorationPipeline,
    *,
    method: str,
    size: int | tuple[int, int] = 512,
    lfo: int = 0,
    seed: int = 0,
    repeats: int = 3,
    warmup: int = 1,
    prompt: str | None = None,
) -> ComplexityReport:
    """Measure one row of Table 5: MACs and median seconds per stage, and the parameter counts, of the
    pipeline restoring one ``size`` image with ``lfo`` Look-Forward-Once rounds.

    The MACs come from one counted call (torch's FLOP counter in every stage; MACs = FLOPs / 2, matrix
    products, convolutions and attention only); the seconds from ``repeats`` further calls after
    ``warmup`` untimed ones, each stage's median of the pipeline's own ``RestorationResult.timings``, so
    the counter's overhead is in no timing. A number is appended to every prompt (a new one per
    extraction), so that every LFO round asked for runs and every prompt is encoded: the pipeline would
    otherwise skip a round whose prompts repeat, and re-use cached prompt embeddings.

    Args:
        pipeline: the setup to measure, on the device and dtype to measure (a "Baseline" is a pipeline
            without projector: g alone).
        method: the row's label.
        size: (H, W) or one side, in pixels, at which f and g run: multiples of 8, at least
            ``pipeline.min_image_side``. The input is a :func:`~elqproj.benchmarking.synthetic_images`
            image of that size (run without enlargement); f's and g's cost does not depend on the content.
        lfo: Look-Forward-Once rounds k >= 0 (each adds a Y pass and an f pass on the cached VAE latent);
            needs a projector.
        seed: seed of the synthetic image and of the pipeline's draws.
        repeats: timed calls, >= 1.
        warmup: untimed calls before them (kernel selection, allocator growth), >= 0.
        prompt: a fixed text instead of the pipeline's prompt extractor (Y then is not run nor counted);
            ``None``: the extractor's prompts (the empty prompt without one).

    Raises:
        InvalidInputError: ``size``, ``lfo``, ``repeats`` or ``warmup`` out of range; ``lfo`` > 0 without
            a projector.
    """
    height, width = _check_size(size, pipeline.min_image_side)
    _check_count("lfo", lfo, 0)
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    if lfo and pipeline.projector is None:
        raise InvalidInputError(f"lfo={lfo}: Look Forward Once re-runs the projector, and this pipeline has none "
                                "(g alone); measure it with lfo=0.")
    if prompt is not None:
        source: PromptExtractor | str = prompt
    else:
        source = pipeline.prompt_extractor if pipeline.prompt_extractor is not None else ""
    measured = RestorationPipeline(pipeline.restorer, projector=pipeline.projector,
                                   prompt_extractor=_DistinctPrompts(source))
    measured.tiling = pipeline.tiling
    image = synthetic_images(max(height, width), seed=seed)[..., :height, :width]

    def restore() -> dict[str, float]:
        return measured(image, lfo=lfo, seed=seed, process_size=0, progress=False).timings

    with _stage_flops(measured) as flops:
        restore()
    for _ in range(warmup):
        restore()
    timings = [restore() for _ in range(repeats)]
    stages = tuple(StageCost(stage, count // 2, statistics.median(t[stage] for t in timings))
                   for stage, count in flops.items())
    total, unique, trainable = _parameter_counts(pipeline)
    return ComplexityReport(method=method, image_size=(height, width), params_total=total, params_unique=unique,
                            params_trainable=trainable, stages=stages)


# ------------------------------------------------------------------------------------------ reports
def _stages_of(reports: Sequence[ComplexityReport]) -> list[str]:
    """The stages any report ran, in the pipeline's order."""
    ran = {stage.stage for report in reports for stage in report.stages}
    return [stage for stage in STAGES if stage in ran]


def complexity_rows(reports: Sequence[ComplexityReport]) -> list[dict[str, Any]]:
    """One flat, JSON/CSV-ready dict per report, every row with the same keys:

    ``method``, ``height``, ``width`` (px), ``params_total_m``, ``params_unique_m``, ``params_trainable_m``
    (millions), ``gmacs_<stage>`` and ``gmacs_total`` (10⁹ MACs), ``seconds_<stage>`` and ``seconds_total``
    (median seconds), for every stage any report ran (0 where a method does not run it: g alone has no
    "project")."""
    stages = _stages_of(reports)
    rows = []
    for report in reports:
        row: dict[str, Any] = {
            "method": report.method, "height": report.image_size[0], "width": report.image_size[1],
            "params_total_m": report.params_total / 1e6, "params_unique_m": report.params_unique / 1e6,
            "params_trainable_m": report.params_trainable / 1e6,
        }
        costs = [report.stage(name) for name in stages]
        row.update({f"gmacs_{name}": cost.macs / 1e9 if cost else 0.0 for name, cost in zip(stages, costs)})
        row["gmacs_total"] = report.total_macs / 1e9
        row.update({f"seconds_{name}": cost.seconds if cost else 0.0 for name, cost in zip(stages, costs)})
        row["seconds_total"] = report.total_seconds
        rows.append(row)
    return rows


def _number(value: float) -> str:
    """One decimal, as the paper's table ("8.5"); three below 1, so that a small count does not read 0.0."""
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"


def complexity_markdown(reports: Sequence[ComplexityReport]) -> str:
    """A Markdown table in the layout of the paper's Table 5, one row per report: Method | Time (s) |
    GMACs | Total params (M) | Trainable params (M), then GMACs and seconds per stage."""
    stages = _stages_of(reports)
    header = ["Method", "Time (s)", "GMACs", "Total params (M)", "Trainable params (M)",
              *(f"{name} GMACs" for name in stages), *(f"{name} (s)" for name in stages)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in complexity_rows(reports):
        cells = [row["method"], f"{row['seconds_total']:.3f}", _number(row["gmacs_total"]),
                 _number(row["params_total_m"]), _number(row["params_trainable_m"]),
                 *(_number(row[f"gmacs_{name}"]) for name in stages),
                 *(f"{row[f'seconds_{name}']:.3f}" for name in stages)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
