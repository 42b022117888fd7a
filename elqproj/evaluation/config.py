"""The evaluation config: test set, ELQ synthesis, methods, metrics and outputs (YAML, or the CLI's flags)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..errors import ConfigError
from ..validation import ConfigModel
from .methods import MethodSpec, parse_method
from .metrics import PAPER_METRICS, metric_specs

__all__ = ["EvaluationConfig", "load_evaluation_config"]


class EvaluationConfig(ConfigModel):
    """Everything one ``elqproj evaluate`` run needs.

    Attributes:
        data: a folder of HQ images, a named test set (``div2k-train``, ``div8k-train``, …) or a Hugging
            Face dataset id; ``split``, ``image_column`` and ``limit`` (the first N images) select from it.
        size: the paper's preparation: shorter side resized to ``size``, centre crop ``size`` × ``size``
            (pixels; 0 keeps the images as they are).
        degradation: the ELQ synthesis: a preset name (``elq``, the paper's widened Real-ESRGAN config) or
            ``{preset: elq, <field>: <value>, …}`` overrides.
        seed: base seed of the ELQ synthesis and of every method's random draws (each image derives its
            own from its name).
        methods: :class:`~elqproj.evaluation.methods.MethodSpec` mappings or their command-line strings.
        metrics: metric names in any order (tables use the paper's order); ``channel``: PSNR/SSIM on the
            ``y`` channel (the paper's convention) or on ``rgb``; ``metric_options``: extra pyiqa options
            per metric.
        out: the output folder (inputs, outputs, tables, plots, report.html).
        device, dtype: where the methods run (default: CUDA if available, float32).
        crop: side of the crops in the contact sheet, pixels.
        complexity: also measure parameters, MACs and latency per stage (the paper's Table 5) at
            ``complexity_size`` pixels.
    """

    data: str
    split: str = "train"
    image_column: str = "image"
    limit: int | None = Field(None, ge=1)
    size: int = Field(512, ge=0)
    degradation: str | dict[str, Any] = "elq"
    seed: int = Field(0, ge=0)
    methods: list[MethodSpec] = Field(min_length=1)
    metrics: list[str] = list(PAPER_METRICS)
    channel: Literal["y", "rgb"] = "y"
    metric_options: dict[str, dict[str, Any]] = {}
    out: str = "eval"
    device: str | None = None
    dtype: Literal["fp32", "fp16", "bf16"] | None = None
    crop: int = Field(128, ge=8)
    complexity: bool = False
    complexity_size: int = Field(512, ge=8)

    @field_validator("methods", mode="before")
    @classmethod
    def _parse_strings(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [parse_method(item) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        metric_specs(value)  # raises ConfigError naming the known metrics
        return value

    @field_validator("degradation")
    @classmethod
    def _valid_degradation(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        from ..training.data import degradation_config

        degradation_config(value)
        return value

    def labels(self) -> list[str]:
        """The methods' labels; two methods with one label are refused (their outputs would share a folder)."""
        labels = [method.label for method in self.methods]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(f"two methods are both called {repeated[0]!r}: give one of them name=…")
        return labels


def load_evaluation_config(path: str | os.PathLike | None = None, **overrides: Any) -> EvaluationConfig:
    """Read a YAML config (optional) and apply ``overrides`` (the CLI's flags; ``None`` values are ignored).

    Relative paths in the file (``data``, ``out``, a method's ``projector``) stay relative to the working
    directory, as on the command line.

    Raises:
        ConfigError: the file is missing or not valid YAML, or a value is invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"evaluation config {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file} must hold a mapping of settings, not {type(data).__name__}")
    data.update({key: value for key, value in overrides.items() if value is not None})
    if "data" not in data:
        raise ConfigError("no test images: give --data (a folder, a dataset id or div2k-train) or data: in the config")
    if "methods" not in data:
        raise ConfigError("no methods: give --method (e.g. --method osediff) or methods: in the config")
    return EvaluationConfig.model_validate(data)
