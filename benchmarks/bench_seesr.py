"""Latency and peak memory of SeeSR ``restore`` with random weights of the real sizes (no download).

The networks are built from the released configurations (SD-2-base UNet + SeeSR image attentions,
SeeSR ControlNet, SD-2 VAE, OpenCLIP-H text encoder) with random initialisation, so the numbers hold for
the real checkpoints (the arithmetic does not depend on the weight values). The tokenizer is a
byte-level CLIP tokenizer written on the fly: text encoding is a negligible share of the run.

The default measures the official setting: a 128² LR image upscaled ×4 to 512², 50 steps, CFG 5.5
(2 ControlNet + UNet rows per step), adain colour fix::

    python benchmarks/bench_seesr.py --device cuda --dtype fp16              # the issue's target: <= 2.0 s on an H100
    python benchmarks/bench_seesr.py --device cpu --config tiny --size 64 --steps 4

``--config tiny`` uses the tiny test-fixture shapes (runs anywhere in seconds; only checks the harness).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from elqproj.adapters.seesr import SeeSRControlNetModel, SeeSRRestorer, SeeSRUNet2DConditionModel
from elqproj.devices import resolve_device_dtype
from timing import add_common_arguments, device_name, parse_arguments, report, time_calls  # same folder

_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

# stabilityai/stable-diffusion-2-base unet/config.json (what seesr/unet/config.json extends) and the
# ControlNet SeeSR derives from it; the SD-2 VAE; the OpenCLIP ViT-H/14 text tower of SD 2.
FULL = {
    "unet": dict(block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20],
                 cross_attention_dim=1024, layers_per_block=2, use_linear_projection=True, sample_size=64,
                 down_block_types=_DOWN, up_block_types=_UP),
    "controlnet": dict(block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20],
                       cross_attention_dim=1024, layers_per_block=2, use_linear_projection=True,
                       down_block_types=_DOWN, conditioning_embedding_out_channels=[16, 32, 96, 256]),
    "vae": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4),
    "text": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu", projection_dim=512),
}
# The tiny SD2.1 test fixture's shapes (tests/ and shared/golden/seesr use them).
TINY = {
    "unet": dict(block_out_channels=[32, 64, 64, 64], attention_head_dim=[2, 4, 4, 4], cross_attention_dim=32,
                 layers_per_block=1, use_linear_projection=True, sample_size=8, down_block_types=_DOWN,
                 up_block_types=_UP),
    "controlnet": dict(block_out_channels=[32, 64, 64, 64], attention_head_dim=[2, 4, 4, 4], cross_attention_dim=32,
                       layers_per_block=1, use_linear_projection=True, down_block_types=_DOWN,
                       conditioning_embedding_out_channels=[16, 32, 96, 256]),
    "vae": dict(block_out_channels=[32, 32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=32,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4),
    "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 hidden_act="gelu", projection_dim=32),
}
# SD-2-base scheduler/scheduler_config.json read as DDPM (as the official pipeline does).
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 clip_sample=False, steps_offset=1, prediction_type="epsilon")


def byte_level_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with the 256 byte symbols (and their end-of-word forms) and no merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=77)


def build_restorer(config: dict, device: torch.device, dtype: torch.dtype, tokenizer: CLIPTokenizer) -> SeeSRRestorer:
    """Random-weight SeeSR at ``config``'s sizes, initialised directly on ``device``."""
    with torch.device(device):
        unet = SeeSRUNet2DConditionModel(**config["unet"], use_image_cross_attention=True)
        controlnet = SeeSRControlNetModel(**config["controlnet"], use_image_cross_attention=True)
        vae = AutoencoderKL(**config["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config["text"]))
    restorer = SeeSRRestorer(unet, controlnet, vae, text_encoder, tokenizer, DDPMScheduler(**SCHEDULER))
    return restorer.to(device=device, dtype=dtype)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, dtype="fp32", warmup=1, repeats=3,
                         dtype_help="fp32, fp16 or bf16 (the official script runs fp16)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (official 50)")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels; the LR input is size/4")
    parser.add_argument("--guidance-scale", type=float, default=5.5, help="CFG weight (official 5.5; 1 = no CFG)")
    parser.add_argument("--config", choices=["full", "tiny"], default="full", help="network sizes")
    args = parse_arguments(parser, argv)

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = byte_level_tokenizer(Path(folder))
        restorer = build_restorer(FULL if args.config == "full" else TINY, device, dtype, tokenizer)
    lq = torch.rand(1, 3, args.size // 4, args.size // 4)
    features = torch.randn(1, 145, 512)  # RAM Swin-L at 384 px: pooled token + 12 x 12 tokens

    def restore() -> None:
        out = restorer.restore(lq, prompt="bird, branch, tree", image_features=features, steps=args.steps,
                               guidance_scale=args.guidance_scale, process_size=args.size, progress=False)
        assert out.shape[-1] == args.size

    measurement = time_calls(restore, device, warmup=args.warmup, repeats=args.repeats)
    result = {
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "config": args.config,
        "size": args.size,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "cpu_threads": torch.get_num_threads(),
        "parameters_millions": {name: round(parameter_count(getattr(restorer, name)) / 1e6, 1)
                                for name in ("unet", "controlnet", "vae", "text_encoder")},
        "latency_s_median": round(measurement.median_s, 4),
        "latency_s_all": [round(t, 4) for t in measurement.seconds],
        "ms_per_step": round(1000 * measurement.median_s / args.steps, 2),
        **measurement.memory_row(3),
    }
    report(result, args.json)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
