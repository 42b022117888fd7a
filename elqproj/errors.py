"""The one exception hierarchy of elqproj.

Every error the SDK raises on purpose derives from :class:`ElqprojError`, so an application can catch
all of them in one place. Each message names the offending value and says how to fix it.
"""

from __future__ import annotations


class ElqprojError(Exception):
    """Base class of every error raised by elqproj."""


class InvalidInputError(ElqprojError, ValueError):
    """An image, tensor or argument has the wrong type, shape, value range or size."""


class ImageDecodeError(InvalidInputError):
    """An image file is empty, truncated, corrupt, or not an image."""


class ImageTooLargeError(InvalidInputError):
    """An image exceeds the configured pixel limit (decompression-bomb protection)."""


class WeightsNotFoundError(ElqprojError, FileNotFoundError):
    """Weights could not be found locally, in the Hugging Face cache, or downloaded."""


class UnsafeCheckpointError(ElqprojError):
    """A pickled checkpoint tried to execute code or construct objects outside the allowed set."""


class CheckpointMismatchError(ElqprojError):
    """A checkpoint does not belong to the architecture it is being loaded into."""


class IntegrityError(CheckpointMismatchError):
    """A weights file is truncated, corrupted or substituted: its checksum differs from the published one or
    from the one recorded when it was downloaded."""


class UnknownNameError(ElqprojError, KeyError):
    """A registry lookup (restorer, prompt extractor, preset, …) found no entry of that name."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(ElqprojError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DeviceError(ElqprojError, RuntimeError):
    """The requested device or dtype is not available or not supported by a component."""


class NumericalError(ElqprojError, ArithmeticError):
    """A model produced NaN or infinite values (typically a float16 overflow, or diverged training)."""
