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
import time

import torch

from elqproj.devices import resolve_device_dtype
from elqproj.prompts.ram import RAMTagger
from elqproj.prompts.ram_model import RAMConfig, RAMModel
from timing import add_common_arguments, device_name, parse_arguments, report, time_calls  # same folder

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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, dtype="fp32", warmup=2, repeats=20)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full", help="network sizes")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--size", type=int, default=384, help="input image side (resized to 384 by the tagger)")
    parser.add_argument("--preprocessing", choices=["seesr", "ram"], default="seesr",
                        help="seesr: tensor resize on the device (DAPE default); ram: PIL resize on the CPU")
    args = parse_arguments(parser, argv)

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    start = time.perf_counter()
    tagger = build_tagger(CONFIGS[args.config], device, dtype, args.preprocessing)
    build_s = time.perf_counter() - start
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    pixels = tagger.pixel_values(images)

    with torch.inference_mode():
        extract = time_calls(lambda: tagger.extract(images), device, warmup=args.warmup, repeats=args.repeats)
        network = time_calls(lambda: tagger.model(pixels), device, warmup=args.warmup, repeats=args.repeats)
    result = {
        "device": device_name(device, cpu=f"cpu ({torch.get_num_threads()} threads)"),
        "dtype": str(dtype).removeprefix("torch."),
        "config": args.config,
        "parameters_m": round(sum(p.numel() for p in tagger.model.parameters()) / 1e6, 1),
        "batch": args.batch,
        "input": f"{args.size}x{args.size}",
        "preprocessing": args.preprocessing,
        "build_s": round(build_s, 2),
        "extract_ms_median": round(1000 * extract.median_s, 2),
        "extract_ms_min": round(1000 * min(extract.seconds), 2),
        "network_ms_median": round(1000 * network.median_s, 2),
        "repeats": args.repeats,
        "torch": torch.__version__,
        **max(extract, network, key=lambda measurement: measurement.peak_gib).memory_row(3),
    }
    report(result, args.json)
    return result


if __name__ == "__main__":
    main()
