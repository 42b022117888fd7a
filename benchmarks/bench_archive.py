"""Throughput of restoring a folder (images/s over the whole run) with ``restore_files``: one process or
several under ``accelerate launch``, at a given batch size, on SD2.1-base-sized f and g with random weights.

    python benchmarks/bench_archive.py --images 8 --size 256 --batch-size 1 --threads 2
    python benchmarks/bench_archive.py --images 8 --size 256 --batch-size 4 --threads 2
    accelerate launch --multi_gpu --num_processes 2 benchmarks/bench_archive.py --images 8 --size 256 --threads 1
    python benchmarks/bench_archive.py --tiny --images 16 --size 64        # seconds: the tiny test fixture

Every process builds the same random models (seeded), the main process writes ``--images`` random PNGs
of ``--size``² and times from the moment all processes have their models until the merged manifest is
written; model building is not timed. f runs ``--lfo`` passes with a fixed prompt (no tagger); g is
OSEDiff-shaped on f's base. Random weights cost what real ones cost; the images are meaningless.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_onestep import build_engine  # same folder
from elqproj import Projector
from elqproj.adapters.osediff import OSEDiffRestorer
from elqproj.archive import distributed_state, restore_folder
from elqproj.devices import resolve_device_dtype
from elqproj.pipeline import RestorationPipeline
from timing import device_name, print_row  # same folder

TINY_SD21 = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-sd21"


def build_pipeline(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> RestorationPipeline:
    if args.tiny:
        f = Projector.from_base(str(TINY_SD21), device=device, dtype=dtype)
    else:
        f = Projector.from_engine(build_engine(device, dtype, args.tokenizer))
    g = Projector.from_engine(f.engine)  # OSEDiff-shaped LoRA on the shared base
    return RestorationPipeline(OSEDiffRestorer(f.engine, g.adapter_set), projector=f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="side of the square input images (px)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--lfo", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads per process")
    parser.add_argument("--tiny", action="store_true", help="the tiny SD2.1 test fixture instead of full-size models")
    parser.add_argument("--tokenizer", default=None, help="a CLIP tokenizer directory (default: the tiny fixture's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    state = distributed_state(args.device)
    device, dtype = resolve_device_dtype(args.device or (state.device if state.num_processes > 1 else None),
                                         args.dtype)
    pipeline = build_pipeline(args, device, dtype)
    root = Path(tempfile.gettempdir()) / f"elqproj-bench-archive-{args.size}-{args.images}"
    if state.is_main_process:
        rng = np.random.default_rng(0)
        for i in range(args.images):
            path = root / "in" / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((rng.random((args.size, args.size, 3)) * 255).astype(np.uint8)).save(path)
    state.wait_for_everyone()
    start = time.perf_counter()
    report = restore_folder(pipeline, root / "in", root / f"out-{state.num_processes}-{args.batch_size}", seed=0,
                            lfo=args.lfo, prompt="a photo", process_size=0, batch_size=args.batch_size,
                            num_workers=args.workers, progress=False, state=state)
    seconds = time.perf_counter() - start
    if state.is_main_process:
        row = {"model": "tiny fixture" if args.tiny else "SD2.1-base size, random", "size": args.size,
               "images": args.images, "processes": state.num_processes, "batch_size": args.batch_size,
               "threads_per_process": torch.get_num_threads(), "lfo": args.lfo, "dtype": args.dtype,
               "device": device_name(device) if device.type == "cuda" else "cpu", "failed": len(report.failed),
               "seconds": round(seconds, 2), "images_per_s": round(args.images / seconds, 4)}
        print_row(row)


if __name__ == "__main__":
    main()
