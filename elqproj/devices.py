"""Device, dtype and seed arguments: one place that turns what users pass into torch objects (no heavy imports)."""

from __future__ import annotations

import numbers

import torch

from .errors import DeviceError, InvalidInputError, NumericalError

__all__ = ["resolve_device_dtype", "resolve_dtype", "synchronize", "check_finite", "check_seed", "check_seeds"]

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A user's dtype argument as a torch dtype: a torch dtype, or one of "fp32", "fp16", "bf16" (also
    "float16", "bfloat16", …); ``None`` is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise DeviceError(f"Unknown dtype {dtype!r}; use 'fp32', 'fp16' or 'bf16'.")
        return _DTYPE_NAMES[dtype.lower()]
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return dtype
    raise DeviceError(f"Unsupported dtype {dtype!r}; use torch.float32, torch.float16 or torch.bfloat16.")


def resolve_device_dtype(
    device: str | torch.device | None, dtype: torch.dtype | str | None
) -> tuple[torch.device, torch.dtype]:
    """Normalise user device/dtype arguments; default: CUDA if available, fp32.

    ``dtype`` may be a torch dtype or one of "fp32", "fp16", "bf16" (also "float16", "bfloat16", …).
    fp16 on the CPU is refused (most CPU kernels lack it): use bf16 or fp32 there.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"Unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was requested but CUDA is not available; use device='cpu'.")
    dt = resolve_dtype(dtype)
    if dev.type == "cpu" and dt == torch.float16:
        raise DeviceError("fp16 is not supported on the CPU; use dtype='bf16' or 'fp32' there, or a CUDA device.")
    return dev, dt


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that wall-clock time covers them (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_finite(x: torch.Tensor, *, what: str, dtype: torch.dtype) -> torch.Tensor:
    """Return ``x`` if every value is finite, else raise :class:`NumericalError` naming ``what`` produced it
    and the remedy for ``dtype`` (a float16 overflow decodes to a black or noisy image, never to an error,
    so it is caught here rather than handed to the user). One reduction; on CUDA it waits for ``x``."""
    if bool(torch.isfinite(x.detach()).all()):
        return x
    bad = int((~torch.isfinite(x.detach())).sum())
    if dtype == torch.float16:
        hint = "float16 overflowed: load the models with dtype=torch.bfloat16 (or float32)"
    else:
        hint = "check the weights (a diverged or corrupted checkpoint gives NaN) and the input"
    raise NumericalError(f"{what} produced {bad} NaN or infinite values in {dtype}; {hint}.")


def check_seed(seed: object) -> int | None:
    """A user's ``seed=``: ``None`` (fresh randomness) or an integer in [0, 2**64), what torch's generators
    take; anything else (a bool, a float, 2**70, -1) is an :class:`InvalidInputError` naming the range."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise InvalidInputError(f"seed must be None or an integer from 0 to 2**64 - 1, got {seed!r}.")
    return int(seed)


def check_seeds(seed: object, batch: int) -> int | list[int] | None:
    """A batch's ``seed=``: ``None``, one seed for the whole batch (see :func:`check_seed`), or a list or
    tuple of ``batch`` integer seeds, one per image, so that each image gets the draws it would get if
    it were restored alone with its seed."""
    if not isinstance(seed, (list, tuple)):
        return check_seed(seed)
    if len(seed) != batch or any(s is None for s in seed):
        raise InvalidInputError(f"seed holds {len(seed)} entries for a batch of {batch} images: give one integer "
                                f"seed per image, or one integer for the whole batch; got {seed!r}.")
    return [check_seed(s) for s in seed]
