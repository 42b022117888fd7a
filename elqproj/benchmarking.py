"""Speed and peak memory of a restoration setup on the hardware at hand (``elqproj bench``).

Two layers:

* a generic timing core — :func:`synchronize`, :func:`device_name`, :func:`peak_rss_gib`,
  :class:`Measurement` and :func:`time_calls` — that also serves the developer scripts in
  ``benchmarks/``;
* :func:`benchmark_restore`: the whole ELQ -> LQ -> HQ restoration (prompt extractor Y, projector f with
  its LFO passes, restorer g) timed on synthetic inputs of given sizes, one result row per size, and
  :func:`format_table` to print those rows.

Times are wall-clock seconds; memory is in GiB (2**30 bytes).
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .devices import synchronize
from .errors import InvalidInputError

if TYPE_CHECKING:
    from .pipeline import RestorationPipeline

__all__ = [
    "Measurement",
    "benchmark_restore",
    "check_bench_options",
    "device_name",
    "format_table",
    "peak_rss_gib",
    "synchronize",
    "synthetic_images",
    "time_calls",
]


def device_name(device: torch.device, cpu: str = "cpu") -> str:
    """The GPU's model name on CUDA (e.g. ``"NVIDIA H100 80GB HBM3"``), else ``cpu`` (what the caller
    calls the host)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu


def peak_rss_gib() -> float | None:
    """The process's peak resident set size since it started, in GiB; ``None`` where the OS does not
    report it (Windows). It cannot be reset, so it includes everything the process did before."""
    try:
        import resource
    except ImportError:  # Windows has no getrusage
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


@dataclass(frozen=True)
class Measurement:
    """Wall-clock seconds of the timed calls and the peak memory while they ran.

    ``seconds``: one entry per timed call, in call order.
    ``peak_gib``: on CUDA the most memory allocated by tensors during the timed calls (GiB); on the
    CPU the process's peak resident set size since it started (GiB; it cannot be reset; ``None`` where
    the OS does not report it).
    ``peak_reserved_gib``: the most memory the CUDA caching allocator held (GiB); ``None`` on the CPU.
    """

    seconds: list[float]
    on_gpu: bool
    peak_gib: float | None
    peak_reserved_gib: float | None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def memory_row(self, digits: int) -> dict[str, float | None]:
        """``{"peak_gpu_memory_gib": …}`` on CUDA, ``{"peak_process_rss_gib": …}`` on the CPU."""
        key = "peak_gpu_memory_gib" if self.on_gpu else "peak_process_rss_gib"
        return {key: None if self.peak_gib is None else round(self.peak_gib, digits)}


def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> Measurement:
    """Call ``fn()`` ``warmup`` times untimed (kernel selection, allocator growth, caches), then time
    ``repeats`` calls one by one, each synchronised with ``device`` before and after.

    On CUDA the peak-memory statistics are reset after the warm-up, so the peaks cover the timed calls
    only."""
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
        peak, reserved = peak_rss_gib(), None
    return Measurement(seconds, on_gpu, peak, reserved)


# ------------------------------------------------------------------------------------ restoration
def synthetic_images(size: int, *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """``batch`` seeded random smooth images: (batch, 3, size, size) float32 in [0, 1] on the CPU.

    Uniform noise on an 8×8 grid, enlarged bicubically: photo-like smooth content rather than pixel
    noise, so a tagger sees an image. The cost of f and g does not depend on the content; a VLM prompt
    extractor's does (it writes as many tokens as it sees fit)."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    coarse = torch.rand(batch, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def check_bench_options(*, sizes: Sequence[int], batch: int, warmup: int, repeats: int) -> None:
    """Raise :class:`~elqproj.errors.InvalidInputError` for settings no benchmark can run with (checked
    before any model is loaded; the model-dependent minimum size is checked by :func:`benchmark_restore`)."""
    if not sizes:
        raise InvalidInputError("No image size to benchmark: pass at least one size (e.g. sizes=[512]).")
    for name, value, least in (("batch", batch, 1), ("warmup", warmup, 0), ("repeats", repeats, 1),
                               *(("size", size, 1) for size in sizes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise InvalidInputError(f"{name} must be an integer >= {least}, got {value!r}.")


def _run_side(size: int, process_size: int) -> int:
    """The side f and g run at for a size×size input (the pipeline's own sizing rule)."""
    from .pipeline import processing_size

    return processing_size(size, size, upscale=1, process_size=process_size)[1]


def benchmark_restore(
    pipeline: RestorationPipeline,
    *,
    sizes: Sequence[int] = (512,),
    batch: int = 1,
    lfo: int | str = 0,
    prompt: Any = None,
    warmup: int = 2,
    repeats: int = 5,
    seed: int | None = 0,
    process_size: int = 512,
    restorer_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Time a :class:`~elqproj.pipeline.RestorationPipeline` (Y, f with LFO, g) on synthetic inputs, one
    row per size.

    For each size, ``warmup`` untimed calls, then ``repeats`` timed calls, each restoring
    :func:`synthetic_images` ``(batch, 3, size, size)`` exactly as the pipeline would a user's image of
    that size (moved to the device, enlarged, f, g, back to the CPU). An untrained projector
    (:meth:`Projector.from_base <elqproj.projector.Projector.from_base>`) costs exactly what a trained one
    does: the LoRA shapes are the same.

    Args:
        pipeline: the components to time (f may be absent: g alone), on the device and dtype to measure.
        sizes: side in pixels of the square input image (the ELQ image as the user has it). f and g run
            at this side, or at ``process_size`` when the side is smaller (the pipeline enlarges it
            first), padded to a multiple of 8; ``process_side`` in the rows says which.
        batch: images per call (one ``(batch, 3, size, size)`` tensor).
        lfo: Look-Forward-Once passes k (f runs k + 1 times, Y k + 2 times), or ``"auto"``.
        prompt: a fixed text instead of the pipeline's prompt extractor (None: the extractor's prompts).
        warmup: untimed calls per size first (kernel selection, allocator growth, caches); >= 0.
        repeats: timed calls per size; >= 1. The rows give medians over them.
        seed: seed of the synthetic images and of the VAE posterior samples (None: images from seed 0,
            fresh posterior noise per call).
        process_size: as in the pipeline call (0: no enlargement).
        restorer_options: extra options for g's ``restore`` (e.g. ``{"steps": 20}``).
        progress: show a progress bar over the calls.

    Returns:
        One dict per size (JSON-serialisable), with keys

        * ``size``, ``process_side`` (side f and g ran at, before padding), ``output_side`` (side of
          g's output), ``batch`` — pixels / images;
        * ``device`` (``"cuda:0"``, ``"cpu"``), ``device_name`` (GPU model, or ``"cpu (N threads)"``),
          ``dtype`` (``"float16"``, …), ``backend``, ``prompt`` (the extractor's name), ``lfo``,
          ``lfo_passes`` (refinement passes run: the most over the timed calls), ``warmup``, ``repeats``;
        * ``<stage>_s`` — median seconds per call of every stage of ``RestorationResult.timings``:
          ``prompt_s`` (Y on the input and on the final LQ proxy), ``project_s`` (f's first pass, with
          the one VAE encoding all passes share), ``lfo_s`` (the LFO rounds: Y and f again; only with
          ``lfo`` not 0), ``restore_s`` (g), ``total_s`` (the pipeline's total);
        * ``wall_s`` — median wall-clock seconds of the whole call, synchronised with the device (adds
          input/output conversion to ``total_s``); ``images_per_s`` = ``batch / wall_s``;
        * memory, GiB: on CUDA ``peak_allocated_gib`` and ``peak_reserved_gib`` (tensors, and what the
          caching allocator held) during the timed calls; on the CPU ``peak_rss_gib``, the process's
          peak resident set size since it started (it cannot be reset: it includes model loading and
          the earlier sizes), ``None`` where the OS does not report it.

        A size that runs out of CUDA memory gets a row with ``error: "out of memory"`` and the settings
        only (no sides, times or memory); the sizes after it are still measured.

    Raises:
        InvalidInputError: a size whose run side is below the engine's minimum
            (:attr:`OneStepSD.min_image_side <elqproj.onestep.OneStepSD.min_image_side>`), an empty
            ``sizes``, ``batch`` or ``repeats`` < 1, ``warmup`` < 0.
    """
    from tqdm.auto import tqdm

    check_bench_options(sizes=sizes, batch=batch, warmup=warmup, repeats=repeats)
    minimum = pipeline.min_image_side
    for size in sizes:
        if _run_side(size, process_size) < minimum:
            raise InvalidInputError(
                f"Size {size} px runs at {_run_side(size, process_size)} px (process_size={process_size}), below "
                f"the {minimum} px this model needs per side; benchmark sizes >= {minimum} (or a larger process_size)."
            )
    restorer, extractor = pipeline.restorer, pipeline.prompt_extractor
    label = _prompt_label(prompt, extractor)
    if lfo and (prompt is not None or extractor is None):
        # The pipeline skips an LFO pass whose prompts repeat the previous pass's (a fixed text, no
        # extractor): number the texts per pass so that the passes asked for run and are timed. f's cost
        # does not depend on the words.
        pipeline = _with_numbered_prompts(pipeline, "" if prompt is None else prompt)
        prompt, label = None, f"{label}, numbered per LFO pass"
    device = pipeline.device
    host = f"cpu ({torch.get_num_threads()} threads)"
    rows = []
    calls_per_size = warmup + repeats
    bar = tqdm(total=len(sizes) * calls_per_size, desc="bench", unit="call", disable=not progress)
    for index, size in enumerate(sizes):
        images = synthetic_images(size, batch=batch, seed=0 if seed is None else seed)
        calls: list[tuple[dict[str, float], int, int, int]] = []  # timings, LFO passes, run side, output side
        bar.set_postfix(size=size)

        def restore_once() -> None:
            result = pipeline(images, prompt=prompt, lfo=lfo, seed=seed, process_size=process_size, progress=False,
                              restorer_options=restorer_options)
            # Keep the numbers only: holding every result's images would inflate the memory measured.
            calls.append((result.timings, result.lfo_passes, result.lq.shape[-1], result.image.shape[-1]))
            bar.update(1)

        row: dict[str, Any] = {
            "size": size, "batch": batch, "device": str(device), "device_name": device_name(device, host),
            "dtype": str(pipeline.dtype).removeprefix("torch."), "backend": restorer.name,
            "prompt": label, "lfo": lfo, "warmup": warmup, "repeats": repeats,
        }
        try:
            measurement = time_calls(restore_once, device, warmup=warmup, repeats=repeats)
        except torch.OutOfMemoryError:
            measurement = None
        if measurement is None:
            # "Will it fit?" -- no: say so in this size's row and go on with the next size. The cache is
            # emptied outside the except block, where the traceback no longer holds the failed call's tensors.
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append({**row, "error": "out of memory"})
            bar.update((index + 1) * calls_per_size - bar.n)
            continue
        timed = calls[warmup:]
        timings, _, run_side, output_side = timed[-1]
        row.update(process_side=int(run_side), output_side=int(output_side),
                   lfo_passes=max(passes for _, passes, _, _ in timed))
        for stage in timings:
            row[f"{stage}_s"] = statistics.median(t.get(stage, 0.0) for t, _, _, _ in timed)
        row["wall_s"] = measurement.median_s
        row["images_per_s"] = batch / measurement.median_s
        if measurement.on_gpu:
            row["peak_allocated_gib"] = measurement.peak_gib
            row["peak_reserved_gib"] = measurement.peak_reserved_gib
        else:
            row["peak_rss_gib"] = measurement.peak_gib
        rows.append(row)
    bar.close()
    return rows


def _with_numbered_prompts(pipeline: RestorationPipeline, prompt: Any) -> RestorationPipeline:
    """The same f and g (and tiling) with an extractor that returns ``prompt`` followed by a call count."""
    from .pipeline import RestorationPipeline

    calls = itertools.count()

    def numbered(images: torch.Tensor) -> list[str]:
        count = next(calls)
        texts = [prompt] * images.shape[0] if isinstance(prompt, str) else list(prompt)
        return [f"{text} {count}".strip() for text in texts]

    stand_in = RestorationPipeline(pipeline.restorer, projector=pipeline.projector, prompt_extractor=numbered)
    stand_in.tiling = pipeline.tiling
    return stand_in


def _prompt_label(prompt: Any, extractor: Any) -> str:
    """What conditioned the run: "fixed text", the extractor's name, or "none"."""
    if prompt is not None:
        return "fixed text"
    return extractor.name if extractor is not None else "none"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`benchmark_restore` as a plain-text table: one line per size, the pixel sides,
    every ``*_s`` time (seconds, median per call, 4 decimals), images per second, the memory columns
    (GiB) and, when a size failed, the error; ``n/a`` where a row has no value."""
    keys = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys, in first-seen order
    times = [k for k in keys if k.endswith("_s") and k != "images_per_s"]
    memory = [k for k in ("peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib") if k in keys]
    columns = ["size", "process_side", "output_side", "batch", *times, "images_per_s", *memory]
    columns += ["error"] if "error" in keys else []
    titles = {"process_side": "run side", "output_side": "out side", "images_per_s": "img/s",
              "peak_allocated_gib": "alloc GiB", "peak_reserved_gib": "reserved GiB", "peak_rss_gib": "peak RSS GiB"}

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "" if key == "error" else "n/a"
        if not isinstance(value, float):
            return str(value)
        digits = 3 if key.endswith("_gib") else 2 if key == "images_per_s" else 4
        return f"{value:.{digits}f}"

    header = [titles.get(k, k.removesuffix("_s") + " s" if k.endswith("_s") else k) for k in columns]
    body = [[cell(k, row.get(k)) for k in columns] for row in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(columns))]
    return "\n".join("  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in (header, *body))
