"""What every benchmark script shares: timing a callable on a device, peak memory, the common
command-line options and the JSON output.

The scripts run as ``python benchmarks/bench_x.py`` and import this module as ``timing`` (same folder).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that wall-clock time covers them (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device, cpu: str = "cpu") -> str:
    """The GPU's model name on CUDA, else ``cpu`` (what a script calls the host)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu


@dataclass(frozen=True)
class Measurement:
    """Wall-clock seconds of the timed calls and the peak memory while they ran.

    ``peak_gib``: on CUDA the most memory allocated by tensors during the timed calls (GiB); on the
    CPU the process's peak resident set size since it started (GiB; it cannot be reset).
    ``peak_reserved_gib``: the most memory the CUDA caching allocator held; ``None`` on the CPU.
    """

    seconds: list[float]
    on_gpu: bool
    peak_gib: float
    peak_reserved_gib: float | None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def memory_row(self, digits: int) -> dict[str, float]:
        """``{"peak_gpu_memory_gib": …}`` on CUDA, ``{"peak_process_rss_gib": …}`` on the CPU."""
        key = "peak_gpu_memory_gib" if self.on_gpu else "peak_process_rss_gib"
        return {key: round(self.peak_gib, digits)}


def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> Measurement:
    """Call ``fn()`` ``warmup`` times untimed (kernel selection, allocator growth, caches), then time
    ``repeats`` calls one by one, each synchronised with ``device`` before and after."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    if on_gpu:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        reserved = torch.cuda.max_memory_reserved(device) / 2**30
    else:
        # ru_maxrss is in KiB on Linux.
        peak, reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, None
    return Measurement(seconds, on_gpu, peak, reserved)


class StageTimer:
    """Wall-clock seconds of named stages, one entry per run of a stage, in run order."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, list[float]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.record(name, time.perf_counter() - start)

    def record(self, name: str, seconds: float) -> None:
        """Add a time measured elsewhere (e.g. a pipeline's own stage timings)."""
        self.seconds.setdefault(name, []).append(seconds)

    def medians_ms(self, digits: int, skip: int = 0) -> dict[str, float]:
        """Median milliseconds per stage, leaving out each stage's first ``skip`` runs (the warm-up)."""
        return {name: round(1000 * statistics.median(times[skip:]), digits) for name, times in self.seconds.items()}


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    dtype: str,
    warmup: int,
    repeats: int,
    dtype_help: str = "fp32, fp16 or bf16",
    dtype_choices: Sequence[str] | None = None,
) -> None:
    """``--device``, ``--dtype``, ``--warmup``, ``--repeats``, ``--threads`` and ``--json`` with the
    given defaults; :func:`parse_arguments` applies ``--threads``."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default=dtype, choices=dtype_choices, help=dtype_help)
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs after them (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: the command line) and set torch's CPU threads from ``--threads``."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def print_row(row: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed at once (long runs show each row as it is measured)."""
    print(json.dumps(row), flush=True)


def write_json(data: Any, path: Path | None) -> None:
    """Write ``data`` as indented JSON to ``path`` (the ``--json`` option); nothing when it is ``None``."""
    if path is not None:
        path.write_text(json.dumps(data, indent=1))


def report(result: dict[str, Any], path: Path | None) -> None:
    """Print ``result`` as indented JSON and also write it to ``path`` when given."""
    print(json.dumps(result, indent=1))
    write_json(result, path)
