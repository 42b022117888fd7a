"""Latency and peak memory of the DAPE / RAM prompt extractor with random weights of the real sizes.

The tagger is built from the released architecture (Swin-L 384², 4585 tags, 2-layer tagging head) with
random weights (no download): the arithmetic does not depend on the weight values, and DAPE runs exactly
as RAM does because its LoRA is merged into the weights at load. Timed: ``extract`` (preprocessing, Swin,
tagging head, tag selection and the (B, 145, 512) SeeSR features), and the network alone::

    python benchmarks/bench_prompts.py --device cuda --dtype fp16        # issue target: <= 8 ms on an H100
    python benchmarks/bench_prompts.py --device cpu --dtype fp32 --repeats 3
    python benchmarks/bench_prompts.py --config tiny                     # checks the harness in seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from elqproj.devices import resolve_device_dtype
from elqproj.prompts.ram import RAMTagger
from elqproj.prompts.ram_model import RAMConfig, RAMModel

CONFIGS = {
    "full": RAMConfig(),  # ram_swin_large_14m
    "tiny": RAMConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), head_hidden_size=32,
                      head_intermediate_size=64, num_classes=20),  # the golden set's shapes
}


def build_tagger(config: RAMConfig, device: torch.device, dtype: torch.dtype, preprocessing: str) -> RAMTagger:
    torch.manual_seed(0)
    model = RAMModel(config)
    tags = [f"tag{i}" for i in range(config.num_classes)]
    tagger = RAMTagger(model, tags, torch.full((config.num_classes,), 0.68), name="dape",
                       preprocessing=preprocessing)
    return tagger.to(device, dtype)


def time_ms(fn, device: torch.device, repeats: int) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``fn`` after two warm-up calls."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full", help="network sizes")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--size", type=int, default=384, help="input image side (resized to 384 by the tagger)")
    parser.add_argument("--preprocessing", choices=["seesr", "ram"], default="seesr",
                        help="seesr: tensor resize on the device (DAPE default); ram: PIL resize on the CPU")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs (after two warm-up runs)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    start = time.perf_counter()
    tagger = build_tagger(CONFIGS[args.config], device, dtype, args.preprocessing)
    build_s = time.perf_counter() - start
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    pixels = tagger.pixel_values(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        extract_ms = time_ms(lambda: tagger.extract(images), device, args.repeats)
        network_ms = time_ms(lambda: tagger.model(pixels), device, args.repeats)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "config": args.config,
        "parameters_m": round(sum(p.numel() for p in tagger.model.parameters()) / 1e6, 1),
        "batch": args.batch,
        "input": f"{args.size}x{args.size}",
        "preprocessing": args.preprocessing,
        "build_s": round(build_s, 2),
        "extract_ms_median": round(statistics.median(extract_ms), 2),
        "extract_ms_min": round(min(extract_ms), 2),
        "network_ms_median": round(statistics.median(network_ms), 2),
        "repeats": args.repeats,
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    else:
        result["peak_process_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
