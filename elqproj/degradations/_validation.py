"""Pydantic base models whose validation failures are elqproj errors.

Pydantic reports bad values as ``pydantic.ValidationError``; the SDK promises ``ElqprojError``
subclasses. These bases translate at every entry point (constructor, ``model_validate``,
``model_validate_json``) so that nested models are covered by the outermost call.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError, ElqprojError, InvalidInputError

__all__ = ["ConfigModel", "ParamsModel"]


def _describe(error: ValidationError, model: str) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{…}"
        lines.append(f"  {location} = {shown}: {item['msg']}")
    return f"invalid {model}:\n" + "\n".join(lines)


class _TranslatingModel(BaseModel):
    """Immutable, no unknown keys; validation errors are raised as ``error_type``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    error_type: ClassVar[type[ElqprojError]] = ConfigError

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise self.error_type(_describe(error, type(self).__name__)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as error:
            raise cls.error_type(_describe(error, cls.__name__)) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as error:
            raise cls.error_type(_describe(error, cls.__name__)) from None


class ConfigModel(_TranslatingModel):
    """Base of the degradation configs: bad values raise :class:`~elqproj.errors.ConfigError`."""

    error_type: ClassVar[type[ElqprojError]] = ConfigError


class ParamsModel(_TranslatingModel):
    """Base of the sampled parameters: bad values raise :class:`~elqproj.errors.InvalidInputError`."""

    error_type: ClassVar[type[ElqprojError]] = InvalidInputError
