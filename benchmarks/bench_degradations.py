"""Throughput of the second-order degradation: batched vs a per-image loop.

    python benchmarks/bench_degradations.py                       # ELQ, 16 x 512², CPU
    python benchmarks/bench_degradations.py --device cuda --iters 20

Both variants apply the *same* degradations: the loop applies the batch's params one sample at a time
(``params.split()``), so the only difference is batching. Sampling the params (pure Python, CPU) is
timed separately. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from elqproj.degradations import DegradationPipeline


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(run, inputs: list, device: torch.device, warmup: int) -> float:
    """Mean seconds of ``run(x)`` over ``inputs[warmup:]`` after running it on ``inputs[:warmup]``."""
    for item in inputs[:warmup]:
        run(item)
    _synchronize(device)
    start = time.perf_counter()
    for item in inputs[warmup:]:
        run(item)
    _synchronize(device)
    return (time.perf_counter() - start) / len(inputs[warmup:])


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
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipeline = DegradationPipeline(args.preset)
    generator = torch.Generator().manual_seed(args.seed)
    hq = torch.rand(args.batch_size, 3, args.size, args.size, generator=generator).to(device)
    # Every repetition draws new params, so the timing averages over the preset's distribution.
    param_sets = [pipeline.sample(args.batch_size, generator) for _ in range(args.warmup + args.iters)]

    def batched(params) -> None:
        pipeline.apply(hq, params)

    def per_image(params) -> None:
        for index, single in enumerate(params.split()):
            pipeline.apply(hq[index : index + 1], single)

    sample_s = _seconds_per_call(lambda _: pipeline.sample(args.batch_size, generator), param_sets, device, args.warmup)
    batched_s = _seconds_per_call(batched, param_sets, device, args.warmup)
    loop_s = _seconds_per_call(per_image, param_sets, device, args.warmup)

    context = {
        "preset": pipeline.config.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
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
    print(json.dumps(context | {name: round(value, 3) for name, value in results.items()}))


if __name__ == "__main__":
    main()
