"""What the TAESD preview decoder saves per Look-Forward-Once pass, and how often the tagger agrees.

Part 1, cost: the SD2.1 VAE decoder (the released configuration) against TAESD (diffusers'
``AutoencoderTiny`` defaults are TAESD's layout), both with random weights (the arithmetic does not
depend on the values): MACs counted by torch's FLOP counter (``elqproj.evaluation.complexity.count_macs``)
and median seconds per decode, side by side, at each ``--sizes``. Every LFO pass with the preview decoder
spends TAESD's MACs instead of the VAE decoder's.

Part 2, agreement: on the tiny test fixtures (a fresh projector on the tiny SD2.1, the golden 20-tag RAM,
and a TAESD-shaped decoder), the tags the prompt extractor gives each LFO pass's full decode and its preview
decode, as the mean Jaccard overlap of the tag sets. With ``--taesd DIR`` and ``--ram CKPT --tag-list FILE``
the same measurement runs on real weights. On the fixtures' random weights the number only shows the
harness works; it says nothing about the real TAESD::

    python benchmarks/bench_preview.py --sizes 256 512 --repeats 3
    python benchmarks/bench_preview.py --agreement-only --taesd madebyollin/taesd --ram ram_swin_large_14m.pth
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench_onestep import SD21_VAE  # same folder
from timing import add_common_arguments, device_name, parse_arguments, report

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def decoder_costs(sizes: list[int], repeats: int, warmup: int) -> list[dict]:
    from diffusers import AutoencoderKL, AutoencoderTiny

    from elqproj.evaluation.complexity import count_macs

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD21_VAE).eval()
    taesd = AutoencoderTiny().eval()
    decoders = {"SD2.1 VAE decoder": lambda z: vae.decode(z / 0.18215).sample,
                "TAESD decoder": lambda z: taesd.decode(z).sample}
    rows = []
    for size in sizes:
        z = torch.randn(1, 4, size // 8, size // 8)
        row: dict = {"size": size}
        with torch.no_grad():
            for name, decode in decoders.items():
                row[f"{name} GMACs"] = round(count_macs(lambda decode=decode: decode(z)) / 1e9, 2)
            times: dict[str, list[float]] = {name: [] for name in decoders}
            for index in range(warmup + repeats):
                for name, decode in decoders.items():  # alternating: both see the same machine load
                    start = time.perf_counter()
                    decode(z)
                    if index >= warmup:
                        times[name].append(time.perf_counter() - start)
        for name in decoders:
            row[f"{name} s"] = round(statistics.median(times[name]), 4)
        row["MACs saved per LFO pass (G)"] = round(row["SD2.1 VAE decoder GMACs"] - row["TAESD decoder GMACs"], 2)
        row["time ratio VAE/TAESD"] = round(row["SD2.1 VAE decoder s"] / row["TAESD decoder s"], 1)
        rows.append(row)
    return rows


def tag_agreement(taesd: str | None, ram: str | None, tag_list: str | None, images: int) -> dict:
    """Mean Jaccard overlap of the tags of full and preview decodes of every LFO pass."""
    from diffusers import AutoencoderTiny

    from elqproj import Projector
    from elqproj.preview import PreviewDecoder, load_preview_decoder
    from elqproj.prompts import load_prompt_extractor

    fixtures = SHARED / "fixtures" / "tiny-sd21"
    golden = SHARED / "golden" / "ram"
    projector = Projector.from_base(fixtures, device="cpu")
    tagger = load_prompt_extractor("ram", weights=ram or golden / "ram_tiny.pth", device="cpu",
                                   tag_list=tag_list or golden / "tags" / "ram_tag_list.txt",
                                   **({} if tag_list else {"tag_thresholds": golden / "tags" / "ram_tag_list_threshold.txt"}))
    if taesd:
        preview = load_preview_decoder(taesd, device="cpu")
    else:
        torch.manual_seed(0)
        preview = PreviewDecoder(AutoencoderTiny())
    engine = projector.engine
    overlaps = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(images):
        x = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
        with torch.no_grad():
            latent = projector.encode_image(x, seed=0)
            texts = tagger((x + 1) / 2)
            for _pass in range(3):  # the first pass and two LFO passes
                out = projector(x, projector.encode_prompt(texts), latent=latent, decode=False)
                full = ((projector.decode_latent(out.x0).clamp(-1, 1) + 1) / 2).float()
                quick = ((preview(out.x0) + 1) / 2).float()
                full_tags, quick_tags = (set(filter(None, t.split(", "))) for t in (tagger(full)[0], tagger(quick)[0]))
                union = full_tags | quick_tags
                overlaps.append(len(full_tags & quick_tags) / len(union) if union else 1.0)
                texts = tagger(full)
    del engine
    return {"passes compared": len(overlaps), "mean tag-set Jaccard (full vs preview)": round(statistics.mean(overlaps), 3),
            "weights": "real" if taesd and ram else "tiny random fixtures (harness check only)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--images", type=int, default=8, help="images for the tag agreement (default 8)")
    parser.add_argument("--taesd", default=None, help="a real TAESD folder or Hub id (default: random, fixture shapes)")
    parser.add_argument("--ram", default=None, help="a real RAM/DAPE checkpoint for the agreement")
    parser.add_argument("--tag-list", default=None, help="its tag list")
    parser.add_argument("--agreement-only", action="store_true")
    add_common_arguments(parser, dtype="fp32", warmup=1, repeats=3)
    args = parse_arguments(parser)
    result = {"device": device_name(torch.device("cpu")), "threads": torch.get_num_threads()}
    if not args.agreement_only:
        result["decoders"] = decoder_costs(args.sizes, args.repeats, args.warmup)
    result["agreement"] = tag_agreement(args.taesd, args.ram, args.tag_list, args.images)
    report(result, args.json)


if __name__ == "__main__":
    main()
