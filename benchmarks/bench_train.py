"""Seconds per IRIB training step and peak memory, with random full-size weights (no download).

A random SD2.1-base tree (UNet, VAE, text encoder from the released configurations; byte-level
tokenizer) is written to a temporary folder and trained on exactly as a real run would be: the
trainer loads f, g and the VSD regulariser UNet from it. g is OSEDiff-shaped (OSEDiff's LoRA targets,
rank 4, its own conv_in) with random LoRA, registered under a benchmark-only name, so every network
has the real size and the real graph; the numbers hold for the real checkpoints (the arithmetic does
not depend on the weight values). LPIPS uses VGG16 with a random backbone (same cost as the trained
one); prompts are a fixed text (the tagger runs without gradients and is not measured).

Each configuration runs ``--warmup`` steps, then ``--repeats`` timed steps on one fixed batch of
512² crops (data loading excluded), for batch sizes ``--batches`` with and without gradient checkpointing::

    python benchmarks/bench_train.py --device cuda --dtype bf16          # the issue's target: batch 1 <= 40 GB with checkpointing
    python benchmarks/bench_train.py --device cpu --dtype fp32 --config tiny --size 128 --batches 1 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from torch.utils.data import default_collate
from transformers import CLIPTextConfig, CLIPTextModel

from bench_seesr import FULL, SCHEDULER, TINY, byte_level_tokenizer  # the released SD-2 shapes, shared
from elqproj import Projector
from elqproj.adapters.base import Restorer, register_restorer
from elqproj.adapters.osediff import OSEDiffRestorer
from elqproj.devices import resolve_device_dtype
from elqproj.training import IRIBTrainer, load_config
from timing import add_common_arguments, device_name, parse_arguments, print_row, time_calls, write_json  # same folder

RESTORER_NAME = "bench-onestep"
_MIXED = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}


class RandomOneStepRestorer(Restorer):
    """OSEDiff-shaped g with random LoRA: a projector-layout adapter set (OSEDiff's targets) on g's engine."""

    name = RESTORER_NAME
    capabilities = dataclasses.replace(OSEDiffRestorer.capabilities, default_weights=None)

    def __init__(self, projector: Projector) -> None:
        super().__init__()
        self.projector = projector
        self.engine = projector.engine
        self.adapter_set = projector.adapter_set

    @classmethod
    def from_pretrained(cls, weights: Any = None, *, engine: Any = None, **kwargs: Any) -> RandomOneStepRestorer:
        projector = Projector.from_engine(engine)
        with torch.no_grad():  # non-zero LoRA B, as in a trained checkpoint
            for param in engine.adapter_parameters(projector.adapter_set):
                param.normal_(0, 0.01)
        return cls(projector)

    def encode_prompt(self, prompts: Any, **kwargs: Any) -> torch.Tensor:
        return self.projector.encode_prompt(prompts, **kwargs)

    def forward(self, lq: torch.Tensor, prompt_embeds: torch.Tensor, **kwargs: Any):
        return self.projector(lq, prompt_embeds, **kwargs)

    def training_forward(self, lq: torch.Tensor, prompt_embeds: torch.Tensor, *, generator: Any = None):
        return self(lq, prompt_embeds, generator=generator)

    def restore(self, image: Any, *, prompt: Any = None, seed: int | None = None, **kwargs: Any) -> Any:
        return self.projector.project(image, prompt=prompt, seed=seed)

    @torch.no_grad()
    def _restore_batch(self, lq: torch.Tensor, *, prompts: list[str] | None, image_features: Any, seed: Any,
                       tiling: Any, progress: bool) -> torch.Tensor:
        """One pass on ``lq`` (B,3,H,W) in [-1, 1] (``None`` prompts: empty) -> (B,3,H,W) in [-1, 1]."""
        embeds = self.encode_prompt(prompts if prompts is not None else [""] * lq.shape[0])
        return self.projector(lq, embeds, seed=seed, tiling=tiling).image


def write_random_base(folder: Path, shapes: dict, device: torch.device, dtype: torch.dtype) -> tuple[Path, dict[str, int]]:
    """A diffusers SD2.1-style tree with random weights at ``shapes`` (initialised on ``device``)."""
    (folder / "tokenizer").mkdir(parents=True)
    tokenizer = byte_level_tokenizer(folder / "tokenizer")
    tokenizer.save_pretrained(folder / "tokenizer")
    with torch.device(device):
        models = {
            "unet": UNet2DConditionModel(**shapes["unet"]),
            "vae": AutoencoderKL(**shapes["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(
                vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shapes["text"])),
        }
    counts = {}
    for name, model in models.items():
        counts[name] = sum(p.numel() for p in model.parameters())
        model.to(dtype).save_pretrained(folder / name)
    DDPMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder, counts


def write_images(folder: Path, size: int, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def measure(trainer: IRIBTrainer, batch: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    measurement = time_calls(lambda: trainer.training_step(batch), device, warmup=warmup, repeats=repeats)
    row = {"s_per_step_median": round(measurement.median_s, 4),
           "s_per_step_all": [round(t, 4) for t in measurement.seconds], **measurement.memory_row(2)}
    if measurement.peak_reserved_gib is not None:
        row["peak_gpu_reserved_gib"] = round(measurement.peak_reserved_gib, 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, dtype="bf16", warmup=2, repeats=5, dtype_choices=sorted(_MIXED),
                         dtype_help="mixed precision (fp32 = none)")
    parser.add_argument("--config", choices=["full", "tiny"], default="full", help="network sizes")
    parser.add_argument("--size", type=int, default=512, help="crop side in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="batch sizes per device")
    parser.add_argument("--checkpointing", choices=["on", "off"], nargs="+", default=["on", "off"])
    args = parse_arguments(parser, argv)
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    diffusers_logging.set_verbosity_error()  # random models cast with .to(): nothing to warn about
    register_restorer(RESTORER_NAME, RandomOneStepRestorer, overwrite=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        base, counts = write_random_base(work / "base", FULL if args.config == "full" else TINY, device, dtype)
        images = write_images(work / "images", args.size, max(args.batches))
        config = load_config(overrides={
            "output_dir": str(work / "run"), "base_model": str(base), "restorer.name": RESTORER_NAME,
            "prompts.extractor": "fixed", "prompts.text": "a photo of a bird on a branch",
            "data.train": str(images), "data.crop_size": args.size, "data.batch_size": 1, "data.num_workers": 0,
            "loss.lpips_backbone": "random", "training.mixed_precision": _MIXED[args.dtype],
            "training.log_with": [], "training.num_validation_images": 0,
        })
        trainer = IRIBTrainer(config)
        setup_s = time.perf_counter() - start
        items = [trainer.dataset[i] for i in range(max(args.batches))]
        for checkpointing in args.checkpointing:
            trainer.set_gradient_checkpointing(checkpointing == "on")
            for batch_size in args.batches:
                row = {"device": device_name(device),
                       "mixed_precision": args.dtype, "config": args.config, "size": args.size,
                       "batch": batch_size, "gradient_checkpointing": checkpointing == "on"}
                batch = default_collate(items[:batch_size])
                try:
                    row.update(measure(trainer, batch, device, args.warmup, args.repeats))
                except torch.OutOfMemoryError:
                    row["result"] = "out of memory"
                    trainer.optimizer.zero_grad(set_to_none=True)
                    trainer.regularizer_optimizer.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
                rows.append(row)
                print_row(row)
    summary = {"setup_s": round(setup_s, 1), "base_parameters_millions": {k: round(v / 1e6, 1) for k, v in counts.items()},
               "trainable_parameters_millions": round(sum(p.numel() for p in trainer.student_parameters) / 1e6, 2),
               "regularizer_lora_millions": round(sum(p.numel() for p in trainer.regularizer.lora_parameters()) / 1e6, 2)}
    print_row(summary)
    write_json({"rows": rows, "summary": summary}, args.json)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
