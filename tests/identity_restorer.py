"""A weightless restorer for tests of the protocol around g: it returns its input and records each call."""

from __future__ import annotations

from elqproj import Restorer, RestorerCapabilities
from elqproj.imageio import from_tensor, to_tensor


class IdentityRestorer(Restorer):
    """g(x) = x. ``calls`` holds the keyword arguments of every tensor-core call (with the batch as ``lq``)."""

    name = "identity"
    capabilities = RestorerCapabilities(
        scale=1, steps=0, supports_fp16=False, supports_bf16=True, needs_prompt=False, uses_image_features=False,
        differentiable=False, code_licence="MIT", weights_licence="none", base_model="", default_weights=None,
        paper="", size_multiple=1, min_side=1, value_range="unit", color_fix="none",
    )

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []
        self.loaded_with: dict = {}

    @classmethod
    def from_pretrained(cls, weights=None, **kwargs):
        restorer = cls()
        restorer.loaded_with = kwargs
        return restorer

    def _restore_batch(self, lq, *, prompts, image_features, seed, tiling, progress, strength: float = 1.0):
        self.calls.append(dict(lq=lq, prompts=prompts, image_features=image_features, seed=seed, tiling=tiling,
                               progress=progress, strength=strength))
        return lq

    def restore(self, image, *, prompt=None, seed=None):
        x, meta = to_tensor(image)
        return from_tensor(self.restore_batch(x, seed=seed), meta)
