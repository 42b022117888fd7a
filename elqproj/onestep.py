"""The one-step Stable Diffusion engine shared by the Projector (f) and one-step restorers (g).

One engine holds one SD2.1-style base (VAE, UNet, CLIP text encoder, tokenizer, DDPM noise schedule)
and any number of named **adapter sets** (:mod:`elqproj.adapter_sets`: LoRA adapters plus replaced base
parameters, switched in place), so the Projector and the OSEDiff backend run on **one** loaded copy of
the 1.78 B-parameter base instead of two. Prompts are encoded by :mod:`elqproj.text_encoding`, the
DDPM maths is :mod:`elqproj.schedule`; this module holds the loading and the forward pass.

The forward pass (OSEDiff, arXiv 2406.08177, and IRIB eq. 9)::

    x in [-1, 1] ──VAE encoder (+LoRA)──► posterior ──sample──► z = latent · 0.18215
    ε̂ = UNet(z, t = 999, prompt embedding)            (+ optional classifier-free guidance)
    x̂0 = (z − √(1−ᾱ_t) · ε̂) / √ᾱ_t                  (DDPM ε→x0; with one step at t = 999 the
                                                      scheduler's prev_sample equals x̂0)
    image = clamp(VAE decoder(x̂0 / 0.18215), −1, 1)

Engines are cached per (base model directory, device, dtype): a second ``OneStepSD.from_pretrained``
of the same base returns the same engine, which is how sharing happens without any special casing.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import tiling as tiling_mod
from .adapter_sets import AdapterSetMixin
from .errors import CheckpointMismatchError, InvalidInputError
from .devices import check_finite, check_seed, check_seeds, resolve_device_dtype
from .hub import WeightsSpec, resolve_dir
from .schedule import x0_from_epsilon
from .text_encoding import LongPromptMode, PromptEncoder
from .weights import COMPONENTS, sd_base_files

__all__ = ["OneStepSD", "OneStepOutput", "LongPromptMode", "prompts_for_batch", "SD21_BASE"]


#: The Stable Diffusion 2.1-base the projector (and OSEDiff) run on (its entry in the weights table).
SD21_BASE = COMPONENTS["sd21-base"].source

_BASE_FILES = sd_base_files()
_REQUIRED = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer", "scheduler")


def prompts_for_batch(prompt: str | Sequence[str] | None, batch: int) -> list[str]:
    """One prompt string per image: ``None`` -> empty prompts, a string -> repeated, a list -> checked."""
    if prompt is None:
        return [""] * batch
    if isinstance(prompt, str):
        return [prompt] * batch
    prompts = list(prompt)
    if len(prompts) != batch or not all(isinstance(p, str) for p in prompts):
        raise InvalidInputError(
            f"prompt must be a string or a list of {batch} strings (one per image), got {prompt!r}."
        )
    return prompts


@dataclass
class OneStepOutput:
    """Every intermediate of one engine pass (all tensors batch-first).

    image: (B,3,H,W) in [-1,1] (clamped); decoded_raw: the decoder output before clamping (both ``None``
    for a pass run with ``decode=False``); latent: (B,4,H/8,W/8) scaled VAE latent (UNet input);
    posterior_mean / posterior_std: unscaled; model_pred: the UNet's ε prediction (after guidance); x0:
    predicted clean latent (scaled).
    """

    image: torch.Tensor | None
    decoded_raw: torch.Tensor | None
    latent: torch.Tensor
    model_pred: torch.Tensor
    x0: torch.Tensor
    posterior_mean: torch.Tensor
    posterior_std: torch.Tensor


_ENGINES: "weakref.WeakValueDictionary[tuple, OneStepSD]" = weakref.WeakValueDictionary()
_ENGINES_LOCK = threading.Lock()


class OneStepSD(AdapterSetMixin, nn.Module):
    """SD2.1-style one-step engine with switchable adapter sets.

    Args:
        vae: diffusers ``AutoencoderKL``; unet: diffusers ``UNet2DConditionModel``;
        text_encoder: transformers ``CLIPTextModel``; tokenizer: its CLIP tokenizer;
        alphas_cumprod: (1000,) float64 ᾱ_t of the base model's DDPM schedule;
        base_model: id or path the base was loaded from (recorded in saved projectors);
        revision: Hub revision, if any; tiling: when and how to tile (see :mod:`elqproj.tiling`).
    """

    def __init__(
        self,
        vae: nn.Module,
        unet: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        alphas_cumprod: torch.Tensor,
        *,
        base_model: str = "",
        revision: str | None = None,
        tiling: tiling_mod.TilingConfig | None = None,
        prompt_cache_size: int = 256,
    ) -> None:
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)
        self.base_model = base_model
        self.revision = revision
        self.tiling = tiling or tiling_mod.TilingConfig()
        self.scaling_factor = float(vae.config.scaling_factor)
        for module in (vae, unet, text_encoder):
            module.requires_grad_(False)
            module.eval()
        self._init_adapter_sets()
        self.prompt_encoder = PromptEncoder(tokenizer, text_encoder, cache_size=prompt_cache_size)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        base_model: WeightsSpec,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        shared: bool = True,
        tiling: tiling_mod.TilingConfig | None = None,
    ) -> OneStepSD:
        """Load an SD2.1-style base from a diffusers-layout directory or Hub id.

        With ``shared=True`` (default) an engine already loaded from the same directory on the same
        device and dtype is returned instead of a second copy; adapter sets of different users live
        side by side on it. ``shared=False`` always loads a private copy (training uses that).
        """
        dev, dt = resolve_device_dtype(device, dtype)
        local = resolve_dir(base_model, revision=revision, allow_patterns=_BASE_FILES, required=_REQUIRED)
        key = (str(Path(local).resolve()), str(dev), str(dt))
        if shared:
            with _ENGINES_LOCK:
                engine = _ENGINES.get(key)
            if engine is not None:
                return engine
        engine = cls._load(local, dev, dt, base_model=str(base_model), revision=revision, tiling=tiling)
        if shared:
            with _ENGINES_LOCK:
                _ENGINES[key] = engine
        return engine

    @classmethod
    def _load(cls, local: Path, device: torch.device, dtype: torch.dtype, *, base_model: str,
              revision: str | None, tiling: tiling_mod.TilingConfig | None) -> OneStepSD:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        try:
            vae = AutoencoderKL.from_pretrained(local, subfolder="vae")
            unet = UNet2DConditionModel.from_pretrained(local, subfolder="unet")
            text_encoder = CLIPTextModel.from_pretrained(local, subfolder="text_encoder")
            tokenizer = AutoTokenizer.from_pretrained(local, subfolder="tokenizer")
            # The official OSEDiff/S3Diff code reads the noise schedule as DDPM whatever class the
            # folder names (SD2.1-base ships a PNDM config with the same betas).
            scheduler = DDPMScheduler.from_pretrained(local, subfolder="scheduler")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointMismatchError(
                f"{base_model} ({local}) is not a Stable Diffusion 2.x diffusers tree: {exc}"
            ) from exc
        if scheduler.config.prediction_type != "epsilon":
            raise CheckpointMismatchError(
                f"{base_model} predicts {scheduler.config.prediction_type!r}; the one-step engine needs an "
                "epsilon-prediction base such as stabilityai/stable-diffusion-2-1-base."
            )
        engine = cls(vae, unet, text_encoder, tokenizer, scheduler.alphas_cumprod.clone(),
                     base_model=base_model, revision=revision, tiling=tiling)
        return engine.to(device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def _apply(self, fn, recurse: bool = True):  # keep overrides and caches on the engine's device/dtype
        super()._apply(fn, recurse)
        self._map_adapter_tensors(fn)
        self.prompt_encoder.clear()
        return self

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompts: Sequence[str], *, long_prompt: LongPromptMode = "truncate") -> torch.Tensor:
        """Text embeddings ``(B, 77·k, D)`` in the engine dtype, cached per prompt string (see
        :class:`~elqproj.text_encoding.PromptEncoder`: ``"truncate"`` is the official encoding)."""
        return self.prompt_encoder(prompts, dtype=self.dtype, long_prompt=long_prompt)

    # ------------------------------------------------------------------- stages
    def draw_encoder_noise(self, shape: Sequence[int], *, seed: int | Sequence[int] | None = None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """N(0,1) noise of ``shape`` (B, C, h, w) for the VAE posterior sample, drawn on the CPU in float32 so
        that a seed gives the same image on every device (on CPU, seed N equals the official script after
        ``torch.manual_seed(N)``). ``seed`` may hold one seed per image: row i is then what a batch of one
        draws with seed i, so an image's noise does not depend on the batch it runs in."""
        if generator is None and isinstance(seed, (list, tuple)):
            seeds = check_seeds(seed, shape[0])
            return torch.cat([self.draw_encoder_noise((1, *shape[1:]), seed=s) for s in seeds])
        if generator is None:
            generator = torch.Generator("cpu")
            seed = check_seed(seed)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device=generator.device)

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel along a side: the VAE halves the image at every level but the last."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def min_image_side(self) -> int:
        """Smallest image side in pixels the UNet can take: one latent pixel at its deepest level."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def latent_shape(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return (x.shape[0], int(self.vae.config.latent_channels), x.shape[2] // f, x.shape[3] // f)

    def encode_image(
        self,
        x: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        sample_posterior: bool = True,
        tiling: tiling_mod.TilingConfig | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """VAE-encode ``x`` (B,3,H,W) in [-1,1], H and W multiples of 8, with the active set's encoder LoRA.

        Returns ``(latent, posterior)``: latent = (mean + std·noise)·scaling_factor, shape (B,4,H/8,W/8).
        ``noise`` (same shape) is injected as given; else it is drawn from ``seed`` (one, or one per image:
        see :meth:`draw_encoder_noise`) or ``generator``. ``sample_posterior=False`` uses the posterior mean (deterministic). ``tiling`` overrides
        :attr:`tiling` for this call (the engine may be shared: its own setting stays untouched).
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 8 or x.shape[3] % 8:
            raise InvalidInputError(
                f"encode_image needs (B,3,H,W) with H, W multiples of 8, got {tuple(x.shape)}; pad the image first."
            )
        if min(x.shape[-2:]) < self.min_image_side:
            raise InvalidInputError(
                f"The image is {x.shape[-1]}x{x.shape[-2]} px, but this model needs at least {self.min_image_side} px "
                "per side (its UNet halves the latent at every level); enlarge it first (upscale= or process_size=)."
            )
        posterior = tiling_mod.vae_encode(self.vae, x.to(self.vae.device, self.vae.dtype), tiling or self.tiling)
        mean = posterior.mean
        if not sample_posterior:
            return mean * self.scaling_factor, posterior
        if noise is None:
            noise = self.draw_encoder_noise(mean.shape, seed=seed, generator=generator)
        elif tuple(noise.shape) != tuple(mean.shape):
            raise InvalidInputError(
                f"encoder_noise has shape {tuple(noise.shape)}, expected {tuple(mean.shape)} (B,4,H/8,W/8)."
            )
        noise = noise.to(mean.device, mean.dtype)
        return (mean + posterior.std * noise) * self.scaling_factor, posterior

    def predict_noise(
        self,
        latent: torch.Tensor,
        prompt_embeds: torch.Tensor,
        *,
        timestep: int = 999,
        negative_embeds: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        tiling: tiling_mod.TilingConfig | None = None,
    ) -> torch.Tensor:
        """UNet ε-prediction at ``timestep``; with ``negative_embeds``, classifier-free guidance
        ε = ε(neg) + s·(ε(pos) − ε(neg)) from two separate UNet calls (as the official S3Diff code).
        Latent tiling (Gaussian-blended) applies per ``tiling`` (default: :attr:`tiling`); each tile
        is a (B,4,t,t) UNet call, CFG applied per tile."""
        t = torch.tensor([timestep], device=latent.device)
        pos = prompt_embeds.to(latent.device, self.unet.dtype)
        neg = negative_embeds.to(latent.device, self.unet.dtype) if negative_embeds is not None else None

        def eps(z: torch.Tensor) -> torch.Tensor:
            out = self.unet(z, t, encoder_hidden_states=pos).sample
            if neg is not None:
                uncond = self.unet(z, t, encoder_hidden_states=neg).sample
                out = uncond + guidance_scale * (out - uncond)
            return out

        latent = latent.to(self.unet.dtype)
        h, w = latent.shape[-2:]
        tiling = tiling or self.tiling
        if tiling.latent_needs_tiling(h, w):
            return tiling_mod.tiled_latent_apply(eps, latent, tile=tiling.latent_tile,
                                                 overlap=tiling.latent_overlap)
        return eps(latent)

    def x0_from_noise(self, latent: torch.Tensor, model_pred: torch.Tensor, timestep: int = 999) -> torch.Tensor:
        """DDPM ε→x0: (z − √(1−ᾱ_t)·ε)/√ᾱ_t, computed in float32 (the official scheduler arithmetic
        promotes to fp32), returned in the latent's dtype."""
        return x0_from_epsilon(latent, model_pred, timestep, self.alphas_cumprod).to(latent.dtype)

    def decode_latent(self, x0: torch.Tensor, *, tiling: tiling_mod.TilingConfig | None = None) -> torch.Tensor:
        """VAE-decode a scaled latent (B,4,h,w) -> raw image (B,3,8h,8w), roughly [-1,1], unclamped.
        ``tiling`` overrides :attr:`tiling` for this call."""
        z = (x0 / self.scaling_factor).to(self.vae.dtype)
        return check_finite(tiling_mod.vae_decode(self.vae, z, tiling or self.tiling), what="The VAE decoder",
                            dtype=self.vae.dtype)

    def forward(
        self,
        x: torch.Tensor,
        prompt_embeds: torch.Tensor,
        *,
        timestep: int = 999,
        encoder_noise: torch.Tensor | None = None,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        sample_posterior: bool = True,
        negative_embeds: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        latent: torch.Tensor | None = None,
        tiling: tiling_mod.TilingConfig | None = None,
        decode: bool = True,
    ) -> OneStepOutput:
        """One step with the active adapter set: image (B,3,H,W) in [-1,1] -> restored image in [-1,1].

        Differentiable (no ``no_grad`` inside) so that training can back-propagate through f and g.
        ``latent`` skips the VAE encoder (LFO reuses the ELQ latent across passes: the encoder does not
        depend on the prompt); then ``x`` is only used for its batch size. ``tiling`` overrides
        :attr:`tiling` for this pass (latent and VAE tiling). ``decode=False`` stops at ``x0`` (the caller
        decodes it, e.g. with a preview decoder).
        """
        if latent is None:
            latent, posterior = self.encode_image(x, noise=encoder_noise, seed=seed, generator=generator,
                                                  sample_posterior=sample_posterior, tiling=tiling)
            mean, std = posterior.mean, posterior.std
        else:
            mean = std = torch.empty(0)
        model_pred = self.predict_noise(latent, prompt_embeds, timestep=timestep, negative_embeds=negative_embeds,
                                        guidance_scale=guidance_scale, tiling=tiling)
        x0 = self.x0_from_noise(latent, model_pred, timestep)
        raw = self.decode_latent(x0, tiling=tiling) if decode else None
        return OneStepOutput(image=None if raw is None else raw.clamp(-1, 1), decoded_raw=raw, latent=latent,
                             model_pred=model_pred, x0=x0, posterior_mean=mean, posterior_std=std)
