"""Throughput of the second-order degradation: batched vs a per-image loop.

    python benchmarks/bench_degradations.py                       # ELQ, 16 x 512², CPU
    python benchmarks/bench_degradations.py --device cuda --iters 20

Both variants apply the *same* degradations: the loop applies the batch's params one sample at a time
(``params.split()``), so the only difference is batching. Sampling the params (pure Python, CPU) is
timed separately. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable

import torch

from elqproj.degradations import DegradationParams, DegradationPipeline
from timing import device_name, parse_arguments, print_row, time_calls  # same folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--preset", default="elq", help="realesrgan, osediff or elq")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="HQ side in pixels")
    parser.add_argument("--iters", type=int, default=3, help="timed repetitions (each a fresh set of params)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_arguments(parser)

    device = torch.device(args.device)
    pipeline = DegradationPipeline(args.preset)
    generator = torch.Generator().manual_seed(args.seed)
    hq = torch.rand(args.batch_size, 3, args.size, args.size, generator=generator).to(device)
    # Every repetition draws new params, so the timing averages over the preset's distribution.
    param_sets = [pipeline.sample(args.batch_size, generator) for _ in range(args.warmup + args.iters)]

    def batched(params: DegradationParams) -> None:
        pipeline.apply(hq, params)

    def per_image(params: DegradationParams) -> None:
        for index, single in enumerate(params.split()):
            pipeline.apply(hq[index : index + 1], single)

    def mean_seconds(run: Callable[[DegradationParams], object]) -> float:
        """Mean seconds of ``run(params)`` over the timed param sets, after the warm-up ones."""
        params = iter(param_sets)
        measurement = time_calls(lambda: run(next(params)), device, warmup=args.warmup, repeats=args.iters)
        return statistics.fmean(measurement.seconds)

    sample_s = mean_seconds(lambda _: pipeline.sample(args.batch_size, generator))
    batched_s = mean_seconds(batched)
    loop_s = mean_seconds(per_image)

    context = {
        "preset": pipeline.config.name,
        "device": device_name(device, cpu=platform.processor() or "cpu"),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "size": args.size,
        "iters": args.iters,
        "torch": torch.__version__,
    }
    results = {
        "batched_images_per_s": args.batch_size / batched_s,
        "per_image_loop_images_per_s": args.batch_size / loop_s,
        "batched_speedup": loop_s / batched_s,
        "sample_ms_per_batch": 1000 * sample_s,
    }
    print_row(context | {name: round(value, 3) for name, value in results.items()})


if __name__ == "__main__":
    main()
