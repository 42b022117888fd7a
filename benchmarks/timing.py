"""What every benchmark script shares: timing a callable on a device and peak memory (the package's
:mod:`elqproj.benchmarking` core, re-exported here), stage timers, the common command-line options and
the JSON output.

The scripts run as ``python benchmarks/bench_x.py`` and import this module as ``timing`` (same folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from elqproj.benchmarking import Measurement, device_name, time_calls
from elqproj.devices import synchronize

__all__ = ["Measurement", "StageTimer", "add_common_arguments", "device_name", "parse_arguments", "print_row",
           "report", "synchronize", "time_calls", "write_json"]


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
