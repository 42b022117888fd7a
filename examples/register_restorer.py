"""Plug your own restorer g into elqproj.

A restorer is a ``Restorer`` subclass with ``name``, ``capabilities``, ``from_pretrained``, the tensor
core ``_restore_batch`` (what the pipeline calls) and the edge ``restore`` (any image in). Register it at run time with ``register_restorer`` — or, in a package, through the entry
point group ``elqproj.restorers`` (see docs/adding-a-restorer.md) so that ``load_restorer("name")`` and
``elqproj restore --backend name`` find it without any import.

    python examples/register_restorer.py --projector ./my-projector photo.png restored.png
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from elqproj import Projector, Restorer, RestorerCapabilities, register_restorer
from elqproj.imageio import from_tensor, to_tensor


class UnsharpRestorer(Restorer):
    """A deliberately simple g: bicubic resize and unsharp masking (no weights)."""

    name = "unsharp"
    capabilities = RestorerCapabilities(
        scale=1, steps=1, supports_fp16=True, supports_bf16=True, needs_prompt=False,
        uses_image_features=False, differentiable=False, code_licence="MIT", weights_licence="none",
        base_model="", default_weights=None, paper="", size_multiple=1, min_side=3, value_range="unit",
        color_fix="none",
    )

    def __init__(self, amount: float = 0.6) -> None:
        super().__init__()
        self.amount = amount

    @classmethod
    def from_pretrained(cls, weights=None, *, amount: float = 0.6, device=None, dtype=None, **kwargs):
        return cls(amount)

    def _restore_batch(self, lq, *, prompts, image_features, seed, tiling, progress):
        # lq: (B, 3, H, W) in [0, 1] (value_range="unit"), already sized; restored at the same size.
        blur = F.avg_pool2d(F.pad(lq, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return (lq + self.amount * (lq - blur)).clamp(0, 1)

    @torch.no_grad()
    def restore(self, image, *, prompt=None, seed=None, upscale: int = 1):
        x, meta = to_tensor(image)
        if upscale != 1:
            x = F.interpolate(x, scale_factor=upscale, mode="bicubic", align_corners=False).clamp(0, 1)
        return from_tensor(self.restore_batch(x.to(self.device, self.dtype), seed=seed).float().cpu(), meta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="restore with a third-party restorer")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--projector", required=True)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--process-size", type=int, default=512)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    register_restorer("unsharp", UnsharpRestorer, overwrite=True)
    projector = Projector.from_pretrained(args.projector, device=args.device, base_model=args.base_model)
    result = projector.restore(args.input, backend="unsharp", prompt=None, process_size=args.process_size, seed=0)
    result.image.save(args.output)
    print(f"{args.output}: {result.image.size}, timings {result.timings}")


if __name__ == "__main__":
    main()
