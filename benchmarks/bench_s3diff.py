"""Latency and peak memory of S3Diff ``restore`` with random weights of the real sizes (no download).

The base is built from SD-Turbo's configs (SD-Turbo has exactly the SD2.1-base architecture, so the
shapes come from ``bench_onestep.py``), the S3Diff checkpoint is a random ``s3diff.pkl`` with the
official layout (UNet LoRA rank 32 on the official targets, VAE-encoder LoRA rank 16, modulation MLPs,
block embeddings) and the degradation estimator a random full-width ``de_net.pth``; both are written to
a temporary folder and read through the public loader, as the real files are. Random weights cost the
same arithmetic as real ones; the outputs are meaningless.

The default measures the official setting: a 128² LQ image, bilinear ×4 to 512², CFG 1.07 (two UNet
passes), wavelet colour fix, tensor in and out::

    python benchmarks/bench_s3diff.py --device cuda --dtype fp16               # issue target: <= 60 ms on an H100
    python benchmarks/bench_s3diff.py --device cpu --dtype fp32 --size 128 --repeats 2   # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from bench_onestep import SD21_TEXT, SD21_UNET, SD21_VAE  # noqa: E402  (sibling benchmark script)
from bench_seesr import byte_level_tokenizer  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from transformers import CLIPTextConfig, CLIPTextModel

from elqproj.adapters.s3diff import DegradationEstimator, S3DiffRestorer
from elqproj.adapters.s3diff.modulation import UNET_BLOCKS, VAE_BLOCKS
from elqproj.devices import resolve_device_dtype
from elqproj.onestep import OneStepSD
from timing import StageTimer, add_common_arguments, device_name, parse_arguments, report, time_calls  # same folder

# Official S3Diff LoRA targets (s3diff_tile.py) and the CLI default ranks.
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]
VAE_TARGETS = r"^encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$"
RANK_UNET, RANK_VAE = 32, 16


def build_engine(device: torch.device, dtype: torch.dtype, tokenizer) -> OneStepSD:
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
        text = CLIPTextModel(CLIPTextConfig(**{
            **SD21_TEXT, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    engine = OneStepSD(vae, unet, text, tokenizer, sched.alphas_cumprod, base_model="random-sd-turbo")
    return engine.to(device=device, dtype=dtype)


def random_lora_state(model: torch.nn.Module, targets, rank: int, adapter: str) -> dict[str, torch.Tensor]:
    """peft-layout LoRA tensors (``<module>.lora_A.<adapter>.weight`` …) for every targeted layer."""
    config = LoraConfig(r=rank, target_modules=targets)
    state = {}
    for name, module in model.named_modules():
        if not check_target_module_exists(config, name):
            continue
        if isinstance(module, torch.nn.Conv2d):
            a, b = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        elif isinstance(module, torch.nn.Linear):
            a, b = (rank, module.in_features), (module.out_features, rank)
        else:
            continue
        state[f"{name}.lora_A.{adapter}.weight"] = torch.randn(a) * 0.01
        state[f"{name}.lora_B.{adapter}.weight"] = torch.randn(b) * 0.01
    return state


def random_s3diff_checkpoint(engine: OneStepSD) -> dict:
    """A random checkpoint in the official s3diff.pkl layout for ``engine``'s base."""
    def linear(out_features: int, in_features: int, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}weight": torch.randn(out_features, in_features) * 0.02,
                f"{prefix}bias": torch.zeros(out_features)}

    unet_state = random_lora_state(engine.unet, UNET_TARGETS, RANK_UNET, "default")
    conv_in = engine.unet.conv_in
    unet_state.update({"conv_in.weight": conv_in.weight.detach().float().cpu().clone(),
                       "conv_in.bias": conv_in.bias.detach().float().cpu().clone()})
    return {
        "unet_lora_target_modules": UNET_TARGETS,
        "vae_lora_target_modules": VAE_TARGETS,
        "rank_unet": RANK_UNET,
        "rank_vae": RANK_VAE,
        "state_dict_unet": unet_state,
        "state_dict_vae": random_lora_state(engine.vae, VAE_TARGETS, RANK_VAE, "vae_skip"),
        "state_dict_unet_de_mlp": linear(256, 256, "0."),
        "state_dict_vae_de_mlp": linear(256, 256, "0."),
        "state_dict_unet_block_mlp": linear(64, 64, "0."),
        "state_dict_vae_block_mlp": linear(64, 64, "0."),
        "state_dict_unet_fuse_mlp": linear(RANK_UNET**2, 320),
        "state_dict_vae_fuse_mlp": linear(RANK_VAE**2, 320),
        "w": torch.randn(64),
        "state_embeddings": {"state_dict_unet_block": {"weight": torch.randn(UNET_BLOCKS, 64)},
                             "state_dict_vae_block": {"weight": torch.randn(VAE_BLOCKS, 64)}},
    }


def build_restorer(device: torch.device, dtype: torch.dtype, folder: Path) -> S3DiffRestorer:
    engine = build_engine(device, dtype, byte_level_tokenizer(folder))
    torch.save(random_s3diff_checkpoint(engine), folder / "s3diff.pkl")
    torch.save(DegradationEstimator().state_dict(), folder / "de_net.pth")
    return S3DiffRestorer.from_pretrained(folder / "s3diff.pkl", de_net=folder / "de_net.pth", engine=engine)


@torch.no_grad()
def stages(restorer: S3DiffRestorer, lq: torch.Tensor, size: int, timer: StageTimer) -> None:
    """The restore pipeline's model stages, timed one by one (same work as ``restore``)."""
    engine = restorer.engine
    lq = lq.to(engine.device)
    with timer.stage("degradation_estimator"):
        scores = restorer.estimate_degradation(lq)
    up = torch.nn.functional.interpolate(lq, size=(size, size), mode="bilinear", align_corners=False)
    pos, neg = restorer.encode_prompt(["a"]), restorer.encode_prompt(["b"])  # cached after the warm-up
    with restorer.conditioned(scores):
        with timer.stage("vae_encode"):
            latent, _ = engine.encode_image((up * 2 - 1).to(engine.dtype), seed=0)
        with timer.stage("unet_cfg_2_passes"):
            eps = engine.predict_noise(latent, pos, negative_embeds=neg, guidance_scale=1.07)
        with timer.stage("vae_decode"):
            engine.decode_latent(engine.x0_from_noise(latent, eps))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, dtype="fp16", warmup=1, repeats=5, dtype_help="fp32, fp16 or bf16 (fp16 needs CUDA)")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels; the LQ input is size/4")
    args = parse_arguments(parser, argv)

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    with tempfile.TemporaryDirectory() as folder:
        restorer = build_restorer(device, dtype, Path(folder))
    lq = torch.rand(1, 3, args.size // 4, args.size // 4, device=device)

    def restore() -> None:
        out = restorer.restore(lq, seed=0)
        assert out.shape[-1] == args.size

    measurement = time_calls(restore, device, warmup=args.warmup, repeats=args.repeats)
    timer = StageTimer(device)
    for _ in range(args.repeats):
        stages(restorer, lq, args.size, timer)
    lora = {c: sum(v.numel() for v in restorer.engine.adapter_state(restorer.adapter_set, c).values())
            for c in ("unet", "vae")}
    result = {
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "cpu_threads": torch.get_num_threads(),
        "lora_parameters_millions": {c: round(n / 1e6, 1) for c, n in lora.items()},
        "latency_ms_median": round(1000 * measurement.median_s, 1),
        "latency_ms_all": [round(1000 * t, 1) for t in measurement.seconds],
        "stage_ms_median": timer.medians_ms(digits=1),
        **measurement.memory_row(3),
    }
    report(result, args.json)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
