"""Methods under evaluation: each one a :class:`~elqproj.pipeline.RestorationPipeline` setup and how it
is called (g alone, f + g, LFO rounds, prompts).

On the command line a method is one comma-separated string: bare words name the restorer, ``key=value``
pairs set the rest::

    osediff                                              # g alone on the ELQ input (the paper's baseline)
    projector=./runs/x/checkpoint-5000,osediff,lfo=2     # f + g with two Look-Forward-Once passes
    projector=elqproj/irib,seesr,prompt_extractor=dape,name=Ours+SeeSR
    projector=./runs/x/checkpoint-5000,osediff,mode=auto         # auto mode (elqproj.auto)
    osediff,weights=osediff.pkl,base_model=./sd21,restorer.merge_lora=false,option.color_fix=none

Keys: ``name`` (the label in tables; default: made from the other keys), ``projector``, ``weights``
(g's weights), ``base_model``, ``prompt_extractor``, ``prompt_weights``, ``prompt`` (a fixed text),
``lfo``, ``strength``, ``mode`` (``auto``: severity picks f, LFO and strength per image), ``process_size``,
``upscale``, ``restorer.<key>`` (g's loading options), ``prompt_extractor.<key>``
(Y's loading options) and ``option.<key>`` (g's call options, e.g. SeeSR's ``steps``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from ..errors import ConfigError
from ..validation import ConfigModel

__all__ = ["MethodSpec", "parse_method", "method_slug"]


class MethodSpec(ConfigModel):
    """One method: what to load (f, g, Y) and how to call the pipeline.

    ``projector`` ``None`` is g alone on the ELQ input; ``lfo`` is the number of Look-Forward-Once
    passes (needs a projector). With ``lfo`` > 0 every round's LQ proxy and HQ result are kept
    (``RestorationResult.hq_rounds``) for the metric-vs-round plot (the paper's Figure 10).
    """

    name: str | None = None
    projector: str | None = None
    restorer: str = "osediff"
    restorer_options: dict[str, Any] = {}
    prompt_extractor: str | None = None
    prompt_extractor_options: dict[str, Any] = {}
    prompt: str | None = None
    lfo: int | Literal["auto"] = Field(0, ge=0)
    strength: float = Field(1.0, ge=0.0, le=1.0)
    mode: Literal["fixed", "auto"] = "fixed"
    process_size: int = Field(512, ge=0)
    upscale: int = Field(1, ge=1)
    call_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _auto_needs_f_and_chooses(self) -> MethodSpec:
        if self.mode == "auto" and (self.lfo != 0 or self.strength != 1.0):
            raise ValueError("mode=auto chooses lfo and strength per image: leave them out")
        if self.mode == "auto" and self.projector is None:
            raise ValueError("mode=auto chooses whether the projector runs: give projector=…")
        return self

    @property
    def label(self) -> str:
        """The method's name in tables and plots."""
        if self.name:
            return self.name
        parts = [self.restorer if self.projector is None else f"f+{self.restorer}"]
        if self.prompt_extractor:
            parts.append(self.prompt_extractor)
        if self.lfo:
            parts.append(f"LFO×{self.lfo}" if self.lfo != "auto" else "LFO auto")
        if self.strength != 1.0:
            parts.append(f"strength {self.strength:g}")
        if self.mode == "auto":
            parts.append("auto")
        return " ".join(parts)

    def load(self, *, device: Any = None, dtype: Any = None) -> Any:
        """The :class:`~elqproj.pipeline.RestorationPipeline` this method runs."""
        from ..pipeline import RestorationPipeline

        return RestorationPipeline.from_components(
            projector=self.projector, restorer=self.restorer, restorer_options=dict(self.restorer_options),
            prompt_extractor=self.prompt_extractor, prompt_extractor_options=dict(self.prompt_extractor_options),
            device=device, dtype=dtype,
        )

    def call_arguments(self) -> dict[str, Any]:
        """Keyword arguments of the pipeline call (seed and image excepted)."""
        chosen = {"mode": "auto"} if self.mode == "auto" else {"lfo": self.lfo, "strength": self.strength}
        return {"prompt": self.prompt, "process_size": self.process_size, "upscale": self.upscale,
                "restorer_options": dict(self.call_options) or None, "return_rounds": bool(self.lfo), **chosen}


def _value(text: str) -> Any:
    """``"2"`` → 2, ``"0.5"`` → 0.5, ``"true"``/``"false"`` → bool, ``"none"`` → None, else the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


_DIRECT = {"name", "projector", "prompt_extractor", "prompt", "lfo", "strength", "mode", "process_size", "upscale"}
_RESTORER_KEYS = {"weights": "weights", "base_model": "base_model"}


def parse_method(text: str) -> MethodSpec:
    """A :class:`MethodSpec` from its command-line form (see the module docstring).

    Raises:
        ConfigError: an unknown key, two restorer names, or an invalid value (e.g. ``lfo=-1``).
    """
    fields: dict[str, Any] = {"restorer_options": {}, "prompt_extractor_options": {}, "call_options": {}}
    restorer = None
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            if restorer is not None:
                raise ConfigError(f"method {text!r} names two restorers ({restorer!r} and {key!r}); give one")
            restorer = key
        elif key in _DIRECT:
            fields[key] = raw if key in ("name", "prompt", "projector") else _value(raw)
        elif key in _RESTORER_KEYS:
            fields["restorer_options"][_RESTORER_KEYS[key]] = raw
        elif key == "prompt_weights":
            fields["prompt_extractor_options"]["weights"] = raw
        elif key.startswith(("restorer.", "prompt_extractor.", "option.")):
            group, _, option = key.partition(".")
            target = {"restorer": "restorer_options", "prompt_extractor": "prompt_extractor_options",
                      "option": "call_options"}[group]
            fields[target][option] = _value(raw)
        else:
            raise ConfigError(
                f"method {text!r}: unknown key {key!r}; keys are {', '.join(sorted(_DIRECT | set(_RESTORER_KEYS)))}, "
                "prompt_weights, restorer.<option>, prompt_extractor.<option>, option.<call option>"
            )
    if restorer is not None:
        fields["restorer"] = restorer
    return MethodSpec(**fields)


def method_slug(label: str) -> str:
    """A folder name for a method label: lower case, runs of other characters as ``-``."""
    slug = re.sub(r"[^0-9a-z]+", "-", label.lower().replace("×", "x").replace("+", "-plus-")).strip("-")
    return slug or "method"
