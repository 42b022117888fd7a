"""Restore many image files: on one process or sharded over many (``accelerate launch``), batched by
size, resumable, with a manifest of every file.

What a run guarantees:

* **Sharding**: the inputs, sorted by path, are dealt out round-robin over the processes
  (``accelerate``'s process index and count), so a restart with the same inputs gives every process the
  same share; a file is written by exactly one process, atomically (never half-written).
* **Per-image seeds** derived from the run's seed and the file name (:func:`~elqproj.seeding.file_seed`):
  an image's result does not depend on the sharding, the batch it ran in or the other files.
* **Manifest**: one JSON line per image (:mod:`elqproj.manifest`); ``resume=True`` skips only images
  whose newest line says ``done`` and whose output exists. A failed image is retried once, alone; a
  failure never stops the run.
* **Batching**: files of one size are restored together (``batch_size``) while DataLoader workers
  decode the next batch.

Batching changes which kernels run, so a batched result may differ from the unbatched one in the last
bits (on the CPU about 1e-6); with ``batch_size=1`` a sharded run writes the same bytes as one process.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import imageio
from .devices import check_seed
from .errors import ConfigError, InvalidInputError
from .imageio import IMAGE_SUFFIXES, expand_image_paths
from .manifest import MANIFEST_NAME, ManifestRecord, ManifestWriter, clear_manifest, latest_records, merge_manifest
from .seeding import MAX_SEED, file_seed

__all__ = ["ArchiveReport", "distributed_state", "output_paths", "pending_pairs", "restore_files", "restore_folder"]

logger = logging.getLogger(__name__)

#: How long a process waits for the others at the start and the end of a run: shards of an archive
#: finish at different times, far beyond torch.distributed's default 30 minutes.
BARRIER_TIMEOUT = timedelta(hours=72)


def output_paths(inputs: Sequence[Path], output: str | os.PathLike) -> list[Path]:
    """Where each input's result goes: ``output`` itself for one input when it names an image file,
    else ``output/<stem>.png``.

    Raises:
        InvalidInputError: several inputs and a file name, or two inputs with one output (same stem).
    """
    out = Path(output)
    if len(inputs) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        return [out]
    if out.suffix.lower() in IMAGE_SUFFIXES:
        raise InvalidInputError(f"{len(inputs)} inputs need an output folder, but -o {os.fspath(output)!r} names a file.")
    targets = [out / f"{p.stem}.png" for p in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets):
        if target in seen:
            raise InvalidInputError(f"{seen[target]} and {source} would both be written to {target}: rename one, or "
                                    "restore them into different folders.")
        seen[target] = source
    return targets


def distributed_state(device: str | torch.device | None = None) -> Any:
    """``accelerate``'s :class:`~accelerate.PartialState` of this process: its index, the process count
    and its device (under ``accelerate launch``: one GPU per process; on a machine without CUDA, or with
    ``device="cpu"``, processes talk over gloo).

    Raises:
        ConfigError: launched with several processes that did not join one process group (each would
            redo the whole archive).
    """
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or (device is not None and torch.device(device).type == "cpu")
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise ConfigError(
            f"{launched} processes were launched but this one sees {state.num_processes}: they did not form one "
            "process group, so each would restore every file. Launch with `accelerate launch --multi_gpu "
            "--num_processes N -m elqproj restore ...`."
        )
    return state


@dataclass
class ArchiveReport:
    """What a run did, over all its processes.

    Attributes:
        records: the newest manifest record of every input of the run, by input path.
        skipped: inputs not restored because they were already done (``resume``) or their output
            existed (``skip_existing``).
    """

    records: dict[str, ManifestRecord] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ManifestRecord]:
        return [r for r in self.records.values() if r.status == "failed"]

    @property
    def done(self) -> list[ManifestRecord]:
        return [r for r in self.records.values() if r.status == "done"]


@dataclass
class _Item:
    """One input file on its way through a run: ``pixels`` (1,3,H,W) in [0,1] once decoded."""

    source: Path
    target: Path
    seed: int
    pixels: torch.Tensor | None = None
    meta: Any = None
    error: str | None = None


class _DecodedBatches(torch.utils.data.Dataset):
    """Batches of items (planned by size); item i decodes batch i's files (in a DataLoader worker)."""

    def __init__(self, batches: list[list[_Item]], max_pixels: int | None) -> None:
        self.batches = batches
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[_Item]:
        return [_decode(item, self.max_pixels) for item in self.batches[index]]


def _decode(item: _Item, max_pixels: int | None) -> _Item:
    try:
        pixels, meta = imageio.to_tensor(item.source, max_pixels=max_pixels)
    except Exception as exc:  # noqa: BLE001 - recorded in the manifest; the run goes on
        return _Item(item.source, item.target, item.seed, error=_describe(exc))
    return _Item(item.source, item.target, item.seed, pixels=pixels, meta=meta)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _keep_batch(batch: list[_Item]) -> list[_Item]:
    """The DataLoader's collate function: a planned batch is already one."""
    return batch


def _header_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of the upright image from the file header (EXIF orientations 5-8 swap the sides), or None
    when the header cannot be read (the file then fails in its own batch)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            swapped = image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - decoding reports the error properly
        return None
    return (width, height) if swapped else (height, width)


def _plan_batches(items: list[_Item], batch_size: int) -> list[list[_Item]]:
    """Group items by image size (from the headers) into batches of at most ``batch_size``, in path order."""
    groups: dict[Any, list[_Item]] = {}
    for item in items:
        size = _header_size(item.source) if batch_size > 1 else None
        key = size if size is not None else ("alone", item.source)
        groups.setdefault(key, []).append(item)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def _finished(source: Path, target: Path, earlier: dict[str, ManifestRecord], resume: bool,
              skip_existing: bool) -> bool:
    if skip_existing and target.exists():
        return True
    record = earlier.get(os.fspath(source))
    return (resume and record is not None and record.status == "done" and record.output == os.fspath(target)
            and target.exists())


def pending_pairs(
    pairs: Sequence[tuple[Path, Path]], *, manifest: Path | None, resume: bool = False, skip_existing: bool = False,
) -> list[tuple[Path, Path]]:
    """The pairs a run with these settings would restore (what ``resume`` / ``skip_existing`` leave); lets a
    caller skip loading the models when nothing is left."""
    earlier = latest_records(manifest) if resume and manifest is not None else {}
    return [(src, dst) for src, dst in pairs if not _finished(src, dst, earlier, resume, skip_existing)]


def restore_files(
    pipeline: Any,
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    *,
    manifest: str | os.PathLike | None = None,
    resume: bool = False,
    skip_existing: bool = False,
    seed: int | None = None,
    batch_size: int = 1,
    num_workers: int | None = None,
    progress: bool = True,
    on_error: Callable[[Path, str], None] | None = None,
    state: Any = None,
    **call_options: Any,
) -> ArchiveReport:
    """Restore each ``(input file, output file)`` pair with ``pipeline``; see the module docstring.

    Args:
        pipeline: a loaded :class:`~elqproj.pipeline.RestorationPipeline`.
        pairs: input and output paths; an output is never one of the inputs.
        manifest: the merged manifest file (JSON lines); ``None``: no manifest (then ``resume`` is refused).
        resume: skip inputs whose newest manifest line says done and whose output exists.
        skip_existing: skip inputs whose output exists, whatever the manifest says.
        seed: the run's seed; each image's is :func:`~elqproj.seeding.file_seed` of it and the file name.
            ``None``: a random seed per image, recorded in the manifest.
        batch_size: images of one size per pipeline call (default 1).
        num_workers: DataLoader processes decoding files ahead of the models (default: 2, or 0 for a
            single batch).
        progress: a progress bar over this process's images (and the pipeline's stage bar at batch size 1).
        on_error: called with ``(input, reason)`` for each image that failed its last attempt.
        state: ``accelerate``'s process state (default :func:`distributed_state` on the pipeline's device).
        call_options: the pipeline call's options (``prompt``, ``lfo``, ``upscale``, ``process_size``,
            ``restorer_options``, ``max_pixels``, …).

    Returns:
        :class:`ArchiveReport` over all processes (with a manifest; else over this process).

    Raises:
        InvalidInputError: bad ``batch_size`` / ``num_workers``, ``resume`` without a manifest, an output
            that is an input, or a bad call option (checked before any work).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise InvalidInputError(f"num_workers must be an integer >= 0, got {num_workers!r}.")
    if resume and manifest is None:
        raise InvalidInputError("resume=True reads the manifest of the earlier run: give manifest= (the CLI writes "
                                f"<output folder>/{MANIFEST_NAME}).")
    if "seed" in call_options or "progress" in call_options:
        raise InvalidInputError("seed and progress are restore_files' own arguments.")
    check_seed(seed)
    pipeline.check_restorer_options(call_options.get("restorer_options"))
    pairs = sorted((Path(src), Path(dst)) for src, dst in pairs)
    sources = {src.resolve() for src, _ in pairs}
    clashes = [f"{dst}" for _, dst in pairs if dst.resolve() in sources]
    if clashes:
        raise InvalidInputError(f"output {clashes[0]} is an input: restoring it would overwrite it; choose another output.")
    state = state if state is not None else distributed_state(pipeline.device)
    manifest_path = Path(manifest) if manifest is not None else None

    earlier: dict[str, ManifestRecord] = {}
    if manifest_path is not None and resume:
        earlier = latest_records(manifest_path)
    elif manifest_path is not None and state.is_main_process:
        clear_manifest(manifest_path)
    state.wait_for_everyone()  # every process has read the old manifest, or it is gone, before anyone writes

    share = pairs[state.process_index::state.num_processes]
    skipped = [os.fspath(src) for src, dst in pairs if _finished(src, dst, earlier, resume, skip_existing)]
    todo = [_Item(src, dst, file_seed(seed, src) if seed is not None else secrets.randbits(63) & MAX_SEED)
            for src, dst in share if not _finished(src, dst, earlier, resume, skip_existing)]
    if skipped and state.is_main_process:
        logger.info("skipping %d of %d inputs (done before)", len(skipped), len(pairs))

    writer = ManifestWriter(manifest_path, state.process_index) if manifest_path is not None else None
    local: dict[str, ManifestRecord] = {}

    def record(item: _Item, attempts: int, *, result: Any = None, index: int = 0, batch: int = 1,
               error: str | None = None) -> None:
        fields: dict[str, Any] = dict(input=os.fspath(item.source), output=os.fspath(item.target), attempts=attempts,
                                      seed=item.seed, batch_size=batch, device=str(pipeline.device),
                                      process=state.process_index)
        if result is None:
            entry = ManifestRecord.now(status="failed", error=error, **fields)
            if on_error is not None:
                on_error(item.source, error or "")
        else:
            entry = ManifestRecord.now(status="done", prompts=[str(p[index]) for p in result.prompts],
                                       lfo_passes=result.lfo_passes, lfo_stop=result.lfo_stop,
                                       decision=None if result.decision is None else result.decision[index],
                                       timings={k: round(v, 6) for k, v in result.timings.items()}, **fields)
        local[entry.input] = entry
        if writer is not None:
            writer.write(entry)

    stage_bar = progress and batch_size == 1 and state.is_main_process
    label = "restore" if state.num_processes == 1 else f"restore (process 1 of {state.num_processes})"
    bar = tqdm(total=len(todo), desc=label, unit="img", disable=not progress or not state.is_main_process)

    def run(group: list[_Item], attempt: int) -> None:
        """Restore ``group`` (decoded, one size) in one call; on failure each image once more alone."""
        try:
            result = pipeline(torch.cat([item.pixels for item in group]), seed=[item.seed for item in group],
                              progress=stage_bar, **call_options)
            for index, item in enumerate(group):
                image = imageio.from_tensor(result.image[index:index + 1], item.meta)
                imageio.save_image(image, item.target, exif=item.meta.exif)
                record(item, attempt, result=result, index=index, batch=len(group))
        except Exception as exc:  # noqa: BLE001 - one image's failure never stops the run
            if attempt == 1:
                logger.info("retrying %d image(s) alone after %s", len(group), _describe(exc))
                for item in group:
                    run([item], 2)
            else:
                record(group[0], attempt, error=_describe(exc))
        bar.update(len(group) if attempt == 1 else 0)

    batches = _plan_batches(todo, batch_size)
    workers = (2 if len(batches) > 1 else 0) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(_DecodedBatches(batches, call_options.get("max_pixels")), batch_size=None,
                                         num_workers=workers, collate_fn=_keep_batch)
    try:
        for loaded in loader:
            by_size: dict[tuple[int, ...], list[_Item]] = {}
            for item in loaded:
                if item.error is not None:  # decoding failed in the worker: once more here
                    item = _decode(item, call_options.get("max_pixels"))
                    if item.error is not None:
                        record(item, 2, error=item.error)
                        bar.update(1)
                        continue
                by_size.setdefault(tuple(item.pixels.shape), []).append(item)
            for group in by_size.values():
                run(group, 1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    state.wait_for_everyone()
    if manifest_path is None:
        return ArchiveReport(records=local, skipped=skipped)
    if state.is_main_process:
        merge_manifest(manifest_path)
    state.wait_for_everyone()  # the merged manifest is complete before any process reads it
    merged = latest_records(manifest_path)
    return ArchiveReport(records={os.fspath(s): merged[os.fspath(s)] for s, _ in pairs if os.fspath(s) in merged},
                         skipped=skipped)


def restore_folder(
    pipeline: Any,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    **options: Any,
) -> ArchiveReport:
    """Restore image files (folders, globs, files) into ``output_dir/<stem>.png`` with
    ``output_dir/manifest.jsonl``; options as in :func:`restore_files`."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    sources = expand_image_paths(items)
    out = Path(output_dir)
    if out.suffix.lower() in IMAGE_SUFFIXES:
        raise InvalidInputError(f"restore_folder writes into a folder, but {os.fspath(output_dir)!r} names an image file.")
    return restore_files(pipeline, list(zip(sources, output_paths(sources, out))), manifest=out / MANIFEST_NAME,
                         **options)
