"""Pydantic base models whose validation failures are elqproj errors: the one place where a
``pydantic.ValidationError`` becomes an :class:`~elqproj.errors.ElqprojError`.

Pydantic reports bad values as ``pydantic.ValidationError``; the SDK promises ``ElqprojError``
subclasses. These bases translate at every entry point (constructor, ``model_validate``,
``model_validate_json``) so that nested models are covered by the outermost call. Every config and
parameter model of the package derives from :class:`ConfigModel` or :class:`ParamsModel`; the message
names each bad field as ``section.field = value: reason``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, ElqprojError, InvalidInputError

__all__ = ["ConfigModel", "ParamsModel"]


Problem = tuple[tuple[Any, ...], Any, str]  # (location, offending value, message)


def _problems(error: ValidationError) -> list[Problem]:
    """Flatten pydantic's errors; a nested model's own translated error is expanded in place
    (pydantic calls a custom ``__init__`` for nested models too and wraps what it raises)."""
    problems: list[Problem] = []
    for item in error.errors():
        inner = item.get("ctx", {}).get("error")
        location = tuple(item["loc"])
        if isinstance(inner, ElqprojError) and hasattr(inner, "problems"):
            problems += [(location + loc, value, message) for loc, value, message in inner.problems]
        else:
            problems.append((location, item.get("input"), item["msg"].removeprefix("Value error, ")))
    return problems


def _translate(error: ValidationError, model: type[_TranslatingModel]) -> ElqprojError:
    problems = _problems(error)
    lines = []
    for location, value, message in problems:
        shown = "{…}" if isinstance(value, dict) else repr(value)
        lines.append(f"  {'.'.join(str(part) for part in location) or '(root)'} = {shown}: {message}")
    translated = model.error_type(f"invalid {model.__name__}:\n" + "\n".join(lines))
    translated.problems = problems  # lets an enclosing model flatten this error
    return translated


class _TranslatingModel(BaseModel):
    """Immutable, no unknown keys; validation errors are raised as ``error_type``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    error_type: ClassVar[type[ElqprojError]] = ConfigError

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise _translate(error, type(self)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as error:
            raise _translate(error, cls) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as error:
            raise _translate(error, cls) from None


class ConfigModel(_TranslatingModel):
    """Base of the configs (degradations, projector, training, taggers, saved pipelines): bad values raise
    :class:`~elqproj.errors.ConfigError`."""

    error_type: ClassVar[type[ElqprojError]] = ConfigError


class ParamsModel(_TranslatingModel):
    """Base of the sampled parameters: bad values raise :class:`~elqproj.errors.InvalidInputError`."""

    error_type: ClassVar[type[ElqprojError]] = InvalidInputError
