"""Latency and peak memory of the one-step engine: g alone (OSEDiff-shaped), f + g on one shared base, and
the full pipeline with a DAPE-sized prompt extractor and LFO x2.

Builds SD2.1-base-sized models with random weights from the real configs (no download) and times each
stage (prompt encode, VAE encode, UNet, VAE decode) with CUDA synchronisation, after warm-up.

    python benchmarks/bench_onestep.py --device cuda --dtypes fp32 fp16 bf16 --sizes 512 2048
    python benchmarks/bench_onestep.py --device cpu --sizes 128 --dtypes fp32 --repeats 2   # CPU smoke run

At 2048² the latent (256²) exceeds one 96² latent tile, so latent tiling and the tiled VAE are used.
The "pipeline" rows run ``RestorationPipeline`` (extractor k + 2 = 4 times, f three times, g once) with a
random full-size DAPE tagger (Swin-L, 384²) and report its stage timings (prompt, project, lfo, restore).
Random weights give the same cost as real ones; the outputs are meaningless.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from bench_prompts import CONFIGS, build_tagger  # same folder
from elqproj import Projector
from elqproj.adapters.osediff import OSEDiffRestorer
from elqproj.pipeline import RestorationPipeline
from elqproj.devices import resolve_device_dtype
from elqproj.onestep import OneStepSD
from elqproj.tiling import TilingConfig
from timing import Measurement, StageTimer, device_name, print_row, time_calls  # same folder

# stabilityai/stable-diffusion-2-1-base configs (unet/, vae/, text_encoder/ config.json), abridged to the
# fields that differ from the library defaults.
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    use_linear_projection=True,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD21_TEXT = dict(
    hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, vocab_size=49408,
)


def build_engine(device: torch.device, dtype: torch.dtype, tokenizer_dir: str | None) -> OneStepSD:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET)
    vae = AutoencoderKL(**SD21_VAE)
    text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
    if tokenizer_dir is None:
        from pathlib import Path

        tokenizer_dir = str(Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-sd21" / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # same length (77); ids stay in vocab range
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    engine = OneStepSD(vae, unet, text, tokenizer, sched.alphas_cumprod, base_model="random-sd21-base")
    return engine.to(device=device, dtype=dtype)


def one_step(engine: OneStepSD, set_name: str, x: torch.Tensor, prompt: str, timer: StageTimer, tag: str) -> None:
    engine.prompt_encoder.clear()  # measure the text encoder every time
    with engine.using(set_name):
        with timer.stage(f"{tag}.prompt"):
            embeds = engine.encode_prompt([prompt])
        with timer.stage(f"{tag}.vae_enc"):
            latent, _ = engine.encode_image(x, seed=0)
        with timer.stage(f"{tag}.unet"):
            eps = engine.predict_noise(latent, embeds)
        with timer.stage(f"{tag}.vae_dec"):
            engine.decode_latent(engine.x0_from_noise(latent, eps)).clamp(-1, 1)


def project_steps(engine: OneStepSD, projectors: dict[str, Projector], x: torch.Tensor, timer: StageTimer) -> None:
    """One step of each projector in turn (``f`` then ``g``), stages timed under the projector's tag."""
    for tag, projector in projectors.items():
        one_step(engine, projector.adapter_set, x, "dog, gray", timer, tag)


def memory_columns(measurement: Measurement) -> dict:
    """This script's peak-memory columns (CUDA only): allocated GiB under ``peak_mem_gb``."""
    return {"peak_mem_gb": round(measurement.peak_gib, 2)} if measurement.on_gpu else {}


@torch.no_grad()
def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for dtype_name in args.dtypes:
        device, dtype = resolve_device_dtype(args.device, dtype_name)
        engine = build_engine(device, dtype, args.tokenizer)
        f = Projector.from_engine(engine)
        g = Projector.from_engine(engine)  # OSEDiff-shaped: the same LoRA/conv_in layout as OSEDiff
        for size in args.sizes:
            engine.tiling = TilingConfig(mode="auto")
            x = torch.rand(1, 3, size, size, device=device, dtype=dtype) * 2 - 1
            for scenario, projectors in (("g", {"g": g}), ("f+g", {"f": f, "g": g})):
                timer = StageTimer(device)
                steps = partial(project_steps, engine, projectors, x, timer)
                measurement = time_calls(steps, device, warmup=args.warmup, repeats=args.repeats)
                row = {"scenario": scenario, "size": size, "dtype": dtype_name, "device": str(device),
                       **timer.medians_ms(digits=2, skip=args.warmup),
                       "total": round(1000 * measurement.median_s, 2), **memory_columns(measurement)}
                if measurement.on_gpu:
                    row["gpu"] = device_name(device)
                rows.append(row)
                print_row(row)
            if args.lfo is not None and size <= 1024:
                rows.append(pipeline_row(engine, f, g, size, dtype_name, args))
        del engine, f, g
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def pipeline_row(engine: OneStepSD, f: Projector, g: Projector, size: int, dtype_name: str,
                 args: argparse.Namespace) -> dict:
    """Median stage timings of the whole pipeline: DAPE-sized tagger, f with LFO, OSEDiff-shaped g."""
    device = engine.device
    tagger = build_tagger(CONFIGS[args.tagger], device, engine.dtype, "seesr")
    pipe = RestorationPipeline(OSEDiffRestorer(engine, g.adapter_set), projector=f, prompt_extractor=tagger)
    image = torch.rand(1, 3, size, size)
    timer = StageTimer(device)

    def restore() -> None:
        result = pipe(image, lfo=args.lfo, seed=0, process_size=0, restorer_options={"color_fix": "none"})
        for stage, seconds in result.timings.items():
            timer.record(stage, seconds)

    measurement = time_calls(restore, device, warmup=args.warmup, repeats=args.repeats)
    row = {"scenario": f"pipeline lfo={args.lfo} tagger={args.tagger}", "size": size, "dtype": dtype_name,
           "device": str(device), **timer.medians_ms(digits=2, skip=args.warmup), **memory_columns(measurement)}
    print_row(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--lfo", type=int, default=2, help="LFO passes of the pipeline rows (-1: skip them)")
    parser.add_argument("--tagger", choices=sorted(CONFIGS), default="full", help="DAPE size for the pipeline rows")
    parser.add_argument("--tokenizer", default=None, help="a CLIP tokenizer directory (default: the tiny fixture's)")
    args = parser.parse_args()
    args.lfo = None if args.lfo < 0 else args.lfo
    print("# times in ms (median); stage keys: <f|g>.<prompt|vae_enc|unet|vae_dec>, total")
    run(args)


if __name__ == "__main__":
    main()
