"""Auto mode: measure how degraded each input is, then choose whether f runs, how many Look-Forward-Once
rounds and f's strength (after AdaptBIR, which picks its restoration per input from a no-reference IQA
score; it chose MUSIQ for speed).

A no-reference score (MUSIQ through pyiqa by default, CLIP-IQA selectable) buckets each image:

    score >= mild_at        → mild    (default: g alone; the input is already ordinary LQ)
    severe_below <= score   → medium  (default: f at half strength, no LFO)
    score < severe_below    → severe  (default: f at full strength with LFO×2, the paper's setting)

Every threshold and every bucket's action is configurable (:class:`AutoConfig`). The decision of each
image is part of the result (``RestorationResult.decision``), the manifest, the CLI output, the demo page
and the evaluation report.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from .errors import ConfigError
from .validation import ConfigModel

__all__ = ["AutoConfig", "BucketAction", "SeverityScorer", "SEVERITIES", "DEFAULT_THRESHOLDS", "bucket", "decide",
           "describe_decision"]

SEVERITIES = ("mild", "medium", "severe")

#: (mild_at, severe_below) per scorer. MUSIQ's are AdaptBIR's (KonIQ scale, about 0–100); CLIP-IQA has no
#: published thresholds: these mirror MUSIQ's on its 0–1 scale (set your own from your data).
DEFAULT_THRESHOLDS = {"musiq": (70.0, 40.0), "clipiqa": (0.70, 0.40)}


class BucketAction(ConfigModel):
    """What auto mode does with an image of one severity: ``projector`` (run f at all), ``lfo`` (passes)
    and ``strength`` (f's strength in [0, 1]; 0 is the same as ``projector: false``)."""

    projector: bool
    lfo: int = Field(0, ge=0, le=8)
    strength: float = Field(1.0, ge=0.0, le=1.0)


class AutoConfig(ConfigModel):
    """Severity thresholds and the action of each bucket.

    ``scorer``: "musiq" (default) or "clipiqa"; ``scorer_options``: pyiqa options of the scorer (e.g.
    another checkpoint). ``mild_at`` / ``severe_below``: score thresholds (default
    :data:`DEFAULT_THRESHOLDS` for the scorer; higher scores are better images).
    """

    scorer: Literal["musiq", "clipiqa"] = "musiq"
    scorer_options: dict[str, Any] = {}
    mild_at: float | None = None
    severe_below: float | None = None
    mild: BucketAction = BucketAction(projector=False, lfo=0, strength=0.0)
    medium: BucketAction = BucketAction(projector=True, lfo=0, strength=0.5)
    severe: BucketAction = BucketAction(projector=True, lfo=2, strength=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoConfig:
        mild_at, severe_below = self.thresholds
        if severe_below > mild_at:
            raise ValueError(f"severe_below ({severe_below}) must not exceed mild_at ({mild_at})")
        return self

    @property
    def thresholds(self) -> tuple[float, float]:
        """(mild_at, severe_below) with the scorer's defaults filled in."""
        mild_at, severe_below = DEFAULT_THRESHOLDS[self.scorer]
        return (mild_at if self.mild_at is None else self.mild_at,
                severe_below if self.severe_below is None else self.severe_below)


def bucket(score: float, config: AutoConfig) -> str:
    """The severity of an image with no-reference ``score``: "mild", "medium" or "severe"."""
    mild_at, severe_below = config.thresholds
    if score >= mild_at:
        return "mild"
    return "medium" if score >= severe_below else "severe"


def decide(scores: list[float], config: AutoConfig, *, has_projector: bool = True) -> list[dict[str, Any]]:
    """One decision per image: ``{<scorer>: score, "severity": …, "projector": bool, "lfo": int,
    "strength": float}``. Without a projector every image gets g alone (the decision says so)."""
    decisions = []
    for score in scores:
        severity = bucket(score, config)
        action = getattr(config, severity)
        runs_f = has_projector and action.projector and action.strength > 0
        decisions.append({config.scorer: round(float(score), 4), "severity": severity, "projector": runs_f,
                          "lfo": action.lfo if runs_f else 0, "strength": action.strength if runs_f else 0.0})
    return decisions


def describe_decision(decision: dict[str, Any]) -> str:
    """One line for people, e.g. ``severe (musiq 31.2): f at strength 1.0, LFO×2``."""
    scorer = next(key for key in decision if key in DEFAULT_THRESHOLDS)
    action = ("g alone" if not decision["projector"]
              else f"f at strength {decision['strength']:g}" + (f", LFO×{decision['lfo']}" if decision["lfo"] else ""))
    return f"{decision['severity']} ({scorer} {decision[scorer]:.1f}): {action}"


class SeverityScorer:
    """The no-reference score of :class:`AutoConfig`'s ``scorer`` for each image, through the metric code of
    ``elqproj evaluate`` (pyiqa; its weights load once, on the CPU or ``device``).

    Raises:
        ConfigError: pyiqa is not installed; WeightsNotFoundError: offline without the scorer's weights.
    """

    def __init__(self, config: AutoConfig, *, device: str | torch.device | None = None) -> None:
        from .evaluation.metrics import MetricSuite

        self.config = config
        options = {config.scorer: dict(config.scorer_options)} if config.scorer_options else None
        self.suite = MetricSuite([config.scorer], device=device, options=options)

    def __call__(self, images: torch.Tensor) -> list[float]:
        """``images``: (B, 3, H, W) float in [0, 1] → B scores (higher is better)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"severity scoring takes (B, 3, H, W) images, got shape {tuple(images.shape)}")
        return [self.suite.score(images[i:i + 1].float().cpu())[self.config.scorer] for i in range(images.shape[0])]
