"""OSEDiff (one-step effective diffusion, arXiv 2406.08177) as a frozen restorer g.

Reads the official checkpoint (``osediff.pkl``: LoRA lists, ranks, UNet/VAE LoRA tensors and the fully
fine-tuned UNet ``conv_in``) onto a shared :class:`~elqproj.onestep.OneStepSD` SD2.1-base engine and
reproduces the official ``test_osediff.py`` for PIL input: optional pre-enlargement to a min side of
``process_size // upscale``, PIL-bicubic ×``upscale``, Lanczos to a multiple of 8, timestep 999,
ε→x0, clamp, uint8 by truncation, colour fix against the upscaled input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from elqproj import imageio
from elqproj.adapter_sets import official_lora_config
from elqproj.colorfix import ColorFix
from elqproj.errors import CheckpointMismatchError, InvalidInputError
from elqproj.hub import load_checkpoint, nested_entry
from elqproj.onestep import SD21_BASE, OneStepOutput, OneStepSD, prompts_for_batch
from elqproj.tiling import TilingConfig
from elqproj.value_range import signed_to_unit, unit_to_signed
from elqproj.weights import COMPONENTS, resolve_weights

from . import official_edge
from .base import Restorer, RestorerCapabilities

__all__ = ["OSEDiffRestorer", "OSEDIFF_WEIGHTS_URL", "SD21_BASE"]

#: The official weights ship inside the GitHub repository (no Hub release).
OSEDIFF_WEIGHTS_URL = COMPONENTS["osediff"].source

# Official adapter names in osediff.pkl -> (component, our suffix)
_UNET_LISTS = {
    "default_encoder": "unet_lora_encoder_modules",
    "default_decoder": "unet_lora_decoder_modules",
    "default_others": "unet_lora_others_modules",
}
_VAE_ADAPTER = "default_encoder"
_TIMESTEP = 999


def _rename_adapter(key: str, official: str, full: str) -> str:
    return key.replace(f".{official}.", f".{full}.")


def upscale_like_official(image: Image.Image, *, process_size: int, upscale: int) -> Image.Image:
    """The official PIL resizing chain of test_osediff.py for one RGB image: pre-enlargement and
    ×``upscale`` bicubic, then Lanczos to the next lower multiple of 8 (:mod:`.official_edge`)."""
    return official_edge.upscale_like_official(image, process_size=process_size, upscale=upscale,
                                                 final_filter=Image.LANCZOS)


class OSEDiffRestorer(Restorer):
    """OSEDiff on a (possibly shared) one-step SD2.1-base engine.

    Use :meth:`from_pretrained` (or ``load_restorer("osediff", ...)``) rather than the constructor.
    """

    name = "osediff"
    capabilities = RestorerCapabilities(
        scale=4,
        steps=1,
        supports_fp16=True,
        supports_bf16=True,
        needs_prompt=True,
        uses_image_features=False,
        differentiable=True,
        code_licence="Apache-2.0",
        weights_licence="Apache-2.0 (OSEDiff LoRA); base SD2.1: CreativeML Open RAIL++-M",
        base_model=SD21_BASE,
        default_weights=OSEDIFF_WEIGHTS_URL,
        paper="Wu et al., One-Step Effective Diffusion Network for Real-World Image Super-Resolution, NeurIPS 2024 (arXiv:2406.08177)",
        shares_projector_base=True,
        supports_tiling=True,
        color_fix="adain",
        per_image_seeds=True,  # one VAE posterior draw per image (OneStepSD.draw_encoder_noise)
    )

    def __init__(self, engine: OneStepSD, adapter_set: str, *, weights: str = "") -> None:
        super().__init__()
        self.engine = engine
        self.adapter_set = adapter_set
        self.weights = weights
        self.refine_capabilities(size_multiple=engine.vae_scale_factor, min_side=engine.min_image_side)

    @classmethod
    def recognizes(cls, checkpoint: dict[str, Any]) -> bool:
        """``osediff.pkl`` (or its safetensors copy): LoRA ranks, module lists and a UNet state dict."""
        try:
            _check_osediff_checkpoint(checkpoint, Path("checkpoint"))
        except CheckpointMismatchError:
            return False
        return True

    # ------------------------------------------------------------------ loading
    @classmethod
    def tiny_random(cls, engine: OneStepSD, *, seed: int = 0) -> OSEDiffRestorer:
        """OSEDiff's adapter set (the official LoRA targets, rank 4, and its own ``conv_in``) with random
        weights on ``engine``, for ``elqproj selftest``."""
        from elqproj.projector import OSEDIFF_UNET_TARGETS, OSEDIFF_VAE_TARGETS

        set_name = f"osediff_random_{seed}"
        if not engine.has_adapter_set(set_name):
            engine.add_random_adapter_set(set_name, unet={"default_encoder": official_lora_config(4, OSEDIFF_UNET_TARGETS)},
                                          vae={_VAE_ADAPTER: official_lora_config(4, OSEDIFF_VAE_TARGETS)},
                                          overrides=[("unet", "conv_in.weight")], seed=seed)
        return cls(engine, set_name, weights="random (selftest)")

    @classmethod
    def from_pretrained(
        cls,
        weights: Any = None,
        *,
        base_model: Any = None,
        revision: str | None = None,
        weights_revision: str | None = None,
        sha256: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        engine: OneStepSD | None = None,
        merge_lora: bool = False,
        **kwargs: Any,
    ) -> OSEDiffRestorer:
        """Load OSEDiff.

        Args:
            weights: ``osediff.pkl`` (or its safetensors copy): local path, Hub id with file, or URL.
                Default: the official file from the OSEDiff GitHub repository (downloaded, cached).
            base_model: SD2.1-base diffusers tree (Hub id or directory); ``revision`` applies to it.
            engine: an already loaded :class:`OneStepSD` to attach to. Without it the shared engine for
                ``base_model``/device/dtype is used (the Projector on the same base shares it).
            merge_lora: merge the LoRA into the base (faster); needs an engine of its own, so it
                implies a private (unshared) engine.
        """
        if kwargs:
            raise InvalidInputError(f"Unknown arguments for OSEDiff: {sorted(kwargs)}.")
        path = resolve_weights(weights, "osediff", revision=weights_revision, sha256=sha256)
        ckpt = load_checkpoint(path)
        _check_osediff_checkpoint(ckpt, path)
        if engine is None:
            engine = OneStepSD.from_pretrained(base_model or SD21_BASE, revision=revision, device=device,
                                               dtype=dtype, shared=not merge_lora)
        set_name = "osediff_" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
        if not engine.has_adapter_set(set_name):
            try:
                _attach(engine, set_name, ckpt)
            except Exception:
                if engine.has_adapter_set(set_name):  # leave the shared engine as it was
                    engine.remove_adapter_set(set_name)
                raise
        restorer = cls(engine, set_name, weights=str(path))
        if merge_lora:
            engine.merge()
        return restorer

    def save_weights(self, path: str | Path) -> Path:
        """Write the weights as one safetensors file in the official ``osediff.pkl`` layout.

        Keys ``state_dict_unet.<module>.lora_{A,B}.default_{encoder,decoder,others}.weight``,
        ``state_dict_vae.<module>.lora_{A,B}.default_encoder.weight`` and the fully trained
        ``state_dict_unet.conv_in.base_layer.{weight,bias}``; the module lists and ranks are JSON strings
        in the metadata. ``load_restorer("osediff", weights=path)`` reads it back. Saves the parameters as
        they are now (e.g. fine-tuned in place on a private engine).
        """
        from safetensors.torch import save_file

        engine, set_name = self.engine, self.adapter_set
        groups = {"unet": list(_UNET_LISTS.items()), "vae": [(_VAE_ADAPTER, "vae_lora_encoder_modules")]}
        tensors: dict[str, torch.Tensor] = {}
        metadata: dict[str, str] = {"format": "pt"}
        for component, adapters in groups.items():
            model = getattr(engine, component)
            renames = {}
            for official, list_key in adapters:
                full = engine.adapter_name(set_name, official)
                peft_config = model.peft_config[full]
                metadata[list_key] = json.dumps(sorted(peft_config.target_modules))
                metadata[f"rank_{component}"] = json.dumps(int(peft_config.r))
                renames[f".{full}."] = f".{official}."
            for key, value in engine.adapter_state(set_name, component).items():
                for full, official in renames.items():
                    key = key.replace(full, official)
                tensors[f"state_dict_{component}.{key}"] = value
        with engine.using(set_name):  # the live parameters hold the set's overrides only while it is active
            for component, name in engine.override_parameter_names(set_name):
                module, _, leaf = name.rpartition(".")
                tensors[f"state_dict_{component}.{module}.base_layer.{leaf}"] = engine.base_parameter(component, name)
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)
        return path

    # ---------------------------------------------------------------- inference
    def encode_prompt(self, prompts: Sequence[str], *, long_prompt: str = "truncate") -> torch.Tensor:
        """(B, 77, D) text embeddings of the base text encoder (cached per string)."""
        return self.engine.encode_prompt(prompts, long_prompt=long_prompt)

    def forward(self, lq: torch.Tensor, prompt_embeds: torch.Tensor, **kwargs: Any) -> OneStepOutput:
        """Differentiable OSEDiff pass on (B,3,H,W) in [-1,1] (H, W multiples of 8), already upscaled.

        Keyword arguments go to :meth:`OneStepSD.forward` (``encoder_noise``, ``seed``, ``generator``,
        ``sample_posterior``, ``latent``). Returns every intermediate; ``.image`` is in [-1,1].
        """
        with self.engine.using(self.adapter_set):
            return self.engine(lq, prompt_embeds, timestep=_TIMESTEP, **kwargs)

    def training_forward(self, lq: torch.Tensor, prompt_embeds: torch.Tensor, *,
                         generator: torch.Generator | None = None) -> OneStepOutput:
        """See :meth:`Restorer.training_forward`: :meth:`forward` with a sampled VAE posterior."""
        return self(lq, prompt_embeds, generator=generator)

    def _restore_batch(self, lq: torch.Tensor, *, prompts: list[str] | None, image_features: torch.Tensor | None,
                       seed: int | list[int] | None, tiling: TilingConfig | None, progress: bool,
                       generator: torch.Generator | None = None, encoder_noise: torch.Tensor | None = None,
                       sample_posterior: bool = True, long_prompt: str = "truncate") -> torch.Tensor:
        """One OSEDiff pass on ``lq`` (B,3,H,W) in [-1, 1]; the prompts are used verbatim (``None``: empty).
        Returns (B,3,H,W) in [-1, 1]. Options as in :meth:`restore`."""
        embeds = self.encode_prompt(prompts_for_batch(prompts, lq.shape[0]), long_prompt=long_prompt)
        with torch.no_grad():
            return self.forward(lq, embeds, encoder_noise=encoder_noise, seed=seed, generator=generator,
                                sample_posterior=sample_posterior, tiling=tiling).image

    @torch.no_grad()
    def restore(
        self,
        image: Any,
        *,
        prompt: str | Sequence[str] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        encoder_noise: torch.Tensor | None = None,
        sample_posterior: bool = True,
        color_fix: ColorFix | str = "adain",
        process_size: int = 512,
        upscale: int = 4,
        long_prompt: str = "truncate",
        tiling: TilingConfig | None = None,
    ) -> Any:
        """Restore ``image`` (PIL in -> PIL out; (B,3,H,W) [0,1] tensors in -> tensors out; numpy, paths).

        Args:
            prompt: text for the text encoder, used verbatim (one string, or one per image). The
                official script's ``"{tags}, {user_prompt},"`` template is the caller's business.
            seed: makes the VAE posterior sample reproducible (drawn on the CPU: seed N equals the
                official script run after ``torch.manual_seed(N)``). ``encoder_noise`` (B,4,H/8,W/8)
                injects the draw; ``sample_posterior=False`` uses the posterior mean instead.
            color_fix: "adain" (official default), "wavelet" or "none".
            process_size: the short side is first enlarged to ``process_size // upscale`` if smaller.
            upscale: integer scale factor (official default 4).
            tiling: latent / VAE tiling for this call (default: the engine's).

        PIL input follows the official script bit for bit: the output has the processed size (the
        upscaled size rounded down to a multiple of 8) and is quantised by truncation before the colour
        fix. Other inputs are resized with torch bicubic, padded to a multiple of 8 and cropped back,
        and stay float.
        """
        if not isinstance(upscale, int) or upscale < 1:
            raise InvalidInputError(f"upscale must be a positive integer, got {upscale!r}.")
        if process_size < 0:
            raise InvalidInputError(f"process_size must be >= 0, got {process_size!r}.")
        official_pil = imageio.is_pil_input(image)
        if official_pil:
            pils = [image] if isinstance(image, Image.Image) else list(image)
            _, meta = imageio.to_tensor(image)
            upscaled = [upscale_like_official(p.convert("RGB"), process_size=process_size, upscale=upscale)
                        for p in pils]
            source, _ = imageio.to_tensor(upscaled)
            pad = (0, 0)
            x = source
        else:
            x_in, meta = imageio.to_tensor(image)
            source = official_edge.upscale_tensor(x_in, process_size=process_size, upscale=upscale)
            x, pad = imageio.pad_to_multiple(source, self.capabilities.size_multiple, mode=self.capabilities.pad_mode)
        out = self.restore_batch(unit_to_signed(x).to(self.device, self.dtype),
                                 prompts=prompts_for_batch(prompt, x.shape[0]), seed=seed, tiling=tiling,
                                 generator=generator, encoder_noise=encoder_noise,
                                 sample_posterior=sample_posterior, long_prompt=long_prompt)
        restored = imageio.crop_padding(signed_to_unit(out.float()).cpu(), pad)
        restored = official_edge.color_fix_like_official(restored, source, color_fix, official_pil=official_pil)
        return imageio.from_tensor(restored, meta)


def _check_osediff_checkpoint(ckpt: dict, path: Path) -> None:
    needed = ["rank_unet", "rank_vae", "vae_lora_encoder_modules", *_UNET_LISTS.values()]
    missing = [k for k in needed if k not in ckpt]
    has_unet = "state_dict_unet" in ckpt or any(k.startswith("state_dict_unet.") for k in ckpt)
    if missing or not has_unet:
        hint = ""
        if "unet_lora_target_modules" in ckpt or "state_dict_unet_de_mlp" in ckpt or any(
            k.startswith("state_dict_unet_de_mlp") for k in ckpt
        ):
            hint = " It looks like an S3Diff checkpoint: use load_restorer('s3diff', ...)."
        raise CheckpointMismatchError(
            f"{path} is not an OSEDiff checkpoint: missing {missing or ['state_dict_unet']} "
            f"(found {sorted(ckpt)[:6]}…).{hint}"
        )


def _attach(engine: OneStepSD, set_name: str, ckpt: dict) -> None:
    """Create the OSEDiff adapter set on ``engine`` and load the checkpoint's tensors into it."""
    rank_unet, rank_vae = int(ckpt["rank_unet"]), int(ckpt["rank_vae"])
    unet_cfgs = {official: official_lora_config(rank_unet, ckpt[key]) for official, key in _UNET_LISTS.items()}
    vae_cfgs = {_VAE_ADAPTER: official_lora_config(rank_vae, ckpt["vae_lora_encoder_modules"])}
    try:
        engine.add_adapter_set(set_name, unet=unet_cfgs, vae=vae_cfgs)
    except ValueError as exc:  # peft: target modules not found in the base model
        raise CheckpointMismatchError(
            f"The OSEDiff LoRA targets do not exist in the base model {engine.base_model}: {exc}"
        ) from exc
    for component, state_key, officials in (
        ("unet", "state_dict_unet", list(_UNET_LISTS)),
        ("vae", "state_dict_vae", [_VAE_ADAPTER]),
    ):
        lora: dict[str, torch.Tensor] = {}
        for key, value in nested_entry(ckpt, state_key).items():
            if ".lora_" in key:
                for official in officials:
                    if f".{official}." in key:
                        key = _rename_adapter(key, official, engine.adapter_name(set_name, official))
                        break
                lora[key] = value
            else:  # fully trained base weights (conv_in), stored under peft's wrapped name
                engine.set_override(set_name, component, key.replace(".base_layer.", "."), value)
        engine.load_adapter_state(set_name, component, lora)
