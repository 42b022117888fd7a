"""SeeSR (Wu et al., "SeeSR: Towards Semantics-Aware Real-World Image Super-Resolution", CVPR 2024) as g.

Reproduces the official ``test_seesr.py`` + ``pipelines/pipeline_seesr.py`` for PIL input:

1. tags and image embeddings from DAPE on the *original* LR image;
2. the LR is enlarged so that its short side is at least ``process_size // upscale`` (PIL bicubic), then
   ×``upscale`` (bicubic), then resized to a multiple of 8 (bicubic, rounding down). That image, in
   [0, 1], is the ControlNet condition; in [-1, 1] it is VAE-encoded for the start latent;
3. prompt ``f"{tags}, {extra_prompt}," + added_prompt`` against the negative prompt, CFG 5.5, 50 DDPM
   steps from the noised LR latent (:mod:`.sampler`);
4. decode, round to uint8, colour fix (AdaIN by default) truncated to uint8, and a final PIL bicubic
   resize to exactly ``upscale`` × the input size.

Image files are read and take the PIL path. Other inputs (tensors, numpy) take the same path in float: torch bicubic resizing, padding to a multiple of
8 instead of the resize, no quantisation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from elqproj import imageio
from elqproj import tiling as tiling_mod
from elqproj.colorfix import ColorFix
from elqproj.errors import CheckpointMismatchError, InvalidInputError
from elqproj.hub import WeightsSpec, resolve_dir
from elqproj.devices import check_finite, resolve_device_dtype
from elqproj.weights import COMPONENTS, fetch, sd_base_files
from elqproj.prompts.base import PromptExtractor, PromptResult, load_prompt_extractor
from elqproj.text_encoding import PromptEncoder
from elqproj.value_range import signed_to_unit, unit_to_signed

from .. import official_edge
from ..base import Restorer, RestorerCapabilities
from .image_attention import IMAGE_CROSS_ATTENTION_DIM
from .sampler import SEESR_TILING, SeeSRConditioning, SeeSRStep, StartPoint, denoise

if TYPE_CHECKING:  # diffusers (seconds to import) and the models load with the weights, not with this module
    from diffusers import AutoencoderKL, DDPMScheduler

    from .models import SeeSRControlNetModel, SeeSRUNet2DConditionModel

__all__ = [
    "SeeSRRestorer",
    "SD2_BASE",
    "SEESR_DOWNLOAD_PAGE",
    "OFFICIAL_ADDED_PROMPT",
    "OFFICIAL_NEGATIVE_PROMPT",
    "official_prompt",
    "upscale_like_official",
]

SD2_BASE = COMPONENTS["sd2-base"].source
#: The SeeSR weights (``seesr/unet``, ``seesr/controlnet``) and DAPE.pth are published on Google Drive and
#: OneDrive only (README "Download the pretrained models"); there is no official Hub repository.
SEESR_DOWNLOAD_PAGE = "https://drive.google.com/drive/folders/" + COMPONENTS["seesr"].source
OFFICIAL_ADDED_PROMPT = "clean, high-resolution, 8k"
OFFICIAL_NEGATIVE_PROMPT = "dotted, noise, blur, lowres, smooth"
_COLOR_FIXES = ("adain", "wavelet", "none")

# SeeSR brings its own UNet: the base UNet is fetched on its own, only when the SeeSR UNet file holds
# just the image attentions (see load_seesr_unet).
_BASE_FILES = sd_base_files("model_index", "scheduler", "tokenizer", "text_encoder", "vae")
_BASE_UNET_FILES = sd_base_files("unet")
_SEESR_FILES = ["unet/*", "controlnet/*"]


def official_prompt(tags: str, extra_prompt: str = "", added_prompt: str = OFFICIAL_ADDED_PROMPT) -> str:
    """The positive prompt as ``test_seesr.py`` assembles it: ``f"{tags}, {extra_prompt}," + added_prompt``.

    With the official empty ``--prompt`` this gives ``"tag1, tag2, ,clean, high-resolution, 8k"``: the
    empty slot and the missing space before ``clean`` are part of what the model saw.
    """
    return f"{tags}, {extra_prompt}," + added_prompt


def upscale_like_official(image: Image.Image, *, process_size: int = 512, upscale: int = 4) -> Image.Image:
    """The official PIL resizing of test_seesr.py for one RGB image: pre-enlargement, ×``upscale``, and
    the resize to the next lower multiple of 8, all bicubic (:mod:`..official_edge`)."""
    return official_edge.upscale_like_official(image, process_size=process_size, upscale=upscale,
                                                 final_filter=Image.BICUBIC)


def _load_if_file(image: Any) -> Any:
    """Image files (one path or a list of paths) loaded: as PIL images, which take the official script's
    path, except 16-bit colour files (an :class:`~elqproj.imageio.ImageArray`, the tensor path)."""
    if isinstance(image, (str, os.PathLike)):
        return imageio.load_image(image)
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, (str, os.PathLike)) for i in image):
        return [imageio.load_image(i) for i in image]
    return image


def _per_image(value: torch.Tensor | None, index: int, batch: int, shape: tuple[int, ...],
               name: str) -> torch.Tensor | None:
    """Row ``index`` of a user-supplied ``(batch or 1, *shape[1:])`` tensor (one row serves every image)."""
    if value is None:
        return None
    if (not isinstance(value, torch.Tensor) or value.ndim != len(shape) or tuple(value.shape[1:]) != shape[1:]
            or value.shape[0] not in (1, batch)):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidInputError(
            f"{name} must be a tensor ({batch} or 1, {', '.join(map(str, shape[1:]))}) for these images, got {got}."
        )
    return value if value.shape[0] == 1 else value[index : index + 1]


class SeeSRRestorer(Restorer):
    """SeeSR: SD-2-base UNet with RAM image cross-attention + ControlNet on the upscaled LR, 50 DDPM steps.

    Use :meth:`from_pretrained` (or ``load_restorer("seesr", ...)``) rather than the constructor.

    Attributes:
        unet, controlnet: the SeeSR networks (:mod:`.models`); vae, text_encoder, tokenizer: the base's.
        scheduler: DDPM scheduler of the base (copied per call, so one restorer serves several threads).
        prompt_extractor: DAPE (or any extractor giving ``image_features``) used when ``restore`` is not
            given a prompt or image features; ``None`` to always pass them.
        tiling: latent and VAE tiling (default :data:`~.sampler.SEESR_TILING`: official sizes).
    """

    name = "seesr"
    capabilities = RestorerCapabilities(
        scale=4,
        steps=50,
        supports_fp16=True,
        supports_bf16=True,
        needs_prompt=True,
        uses_image_features=True,
        differentiable=False,
        code_licence="Apache-2.0",
        weights_licence="Apache-2.0 (SeeSR README: code and weights); base SD-2-base: CreativeML Open RAIL++-M",
        base_model=SD2_BASE,
        default_weights="Google Drive folder " + COMPONENTS["seesr"].source + " (elqproj download seesr)",
        paper="Wu et al., SeeSR: Towards Semantics-Aware Real-World Image Super-Resolution, CVPR 2024 (arXiv:2311.16518)",
        supports_tiling=True,
        value_range="unit",
        color_fix="adain",
    )

    def __init__(
        self,
        unet: SeeSRUNet2DConditionModel,
        controlnet: SeeSRControlNetModel,
        vae: AutoencoderKL,
        text_encoder: nn.Module,
        tokenizer: Any,
        scheduler: DDPMScheduler,
        *,
        prompt_extractor: PromptExtractor | None = None,
        tiling: tiling_mod.TilingConfig | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.prompt_encoder = PromptEncoder(tokenizer, text_encoder)
        self.scheduler = scheduler
        self.prompt_extractor = prompt_extractor
        self.tiling = tiling or SEESR_TILING
        for module in (unet, controlnet, vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.refine_capabilities(size_multiple=vae_factor,
                                 min_side=vae_factor * 2 ** (len(unet.config.block_out_channels) - 1))

    # ------------------------------------------------------------------ loading
    @classmethod
    def tiny_random(cls, engine: Any, *, seed: int = 0) -> SeeSRRestorer:
        """SeeSR's UNet and ControlNet (with their image cross-attention) at the widths of ``engine``'s tiny
        UNet, random weights, on ``engine``'s VAE, text encoder and schedule; a stand-in for DAPE gives
        fixed tags and seeded random image features. For ``elqproj selftest``."""
        from diffusers import DDPMScheduler

        from .models import SeeSRControlNetModel, SeeSRUNet2DConditionModel

        unet_config = {k: v for k, v in engine.unet.config.items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = SeeSRUNet2DConditionModel.from_config({**unet_config, "use_image_cross_attention": True})
            controlnet = SeeSRControlNetModel(
                in_channels=unet_config["in_channels"], down_block_types=unet_config["down_block_types"],
                block_out_channels=unet_config["block_out_channels"], layers_per_block=unet_config["layers_per_block"],
                attention_head_dim=unet_config["attention_head_dim"],
                cross_attention_dim=unet_config["cross_attention_dim"],
                use_linear_projection=unet_config["use_linear_projection"],
                norm_num_groups=unet_config["norm_num_groups"], use_image_cross_attention=True)
        scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        restorer = cls(unet, controlnet, engine.vae, engine.text_encoder, engine.tokenizer, scheduler,
                       prompt_extractor=_RandomFeatures(seed))
        return restorer.to(engine.device, engine.dtype)

    @classmethod
    def from_pretrained(
        cls,
        weights: Any = None,
        *,
        base_model: Any = None,
        revision: str | None = None,
        weights_revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        prompt_extractor: str | PromptExtractor | None = None,
        prompt_extractor_weights: Any = None,
        prompt_extractor_options: dict[str, Any] | None = None,
        tiling: tiling_mod.TilingConfig | None = None,
        **kwargs: Any,
    ) -> SeeSRRestorer:
        """Load SeeSR.

        Args:
            weights: the SeeSR folder holding ``unet/`` and ``controlnet/`` (local directory or Hub id,
                ``weights_revision`` applies; a folder written by ``elqproj convert seesr``). Default: the
                official release, downloaded from Google Drive (:data:`SEESR_DOWNLOAD_PAGE`) through the
                weights table (``elqproj download seesr``). The UNet file may be the full release or only
                its image attentions (then the rest comes from ``base_model``'s UNet).
            base_model: the SD-2-base diffusers tree (Hub id or directory; default
                ``stabilityai/stable-diffusion-2-base``); ``revision`` applies. Its scheduler,
                tokenizer, text encoder and VAE are used.
            device, dtype: default CUDA if available, float32; ``torch.float16`` / ``torch.bfloat16`` on
                CUDA (the official script runs fp16). fp16 is refused on the CPU.
            prompt_extractor: ``"dape"`` (or another registered name) to load with
                ``prompt_extractor_weights`` and ``prompt_extractor_options``, a loaded
                :class:`~elqproj.prompts.base.PromptExtractor`, or ``None`` (then every ``restore`` call
                needs ``prompt=`` and ``image_features=``).
            tiling: latent / VAE tiling (default: the official sizes, :data:`~.sampler.SEESR_TILING`).

        Raises:
            WeightsNotFoundError: a folder or file is missing (offline and not cached, wrong path).
            CheckpointMismatchError: the folders do not hold SeeSR / SD-2 weights that fit together.
            InvalidInputError: an unknown argument.
        """
        if kwargs:
            raise InvalidInputError(
                f"Unknown arguments for SeeSR: {sorted(kwargs)}. Accepted: weights, base_model, revision, "
                "weights_revision, device, dtype, prompt_extractor, prompt_extractor_weights, "
                "prompt_extractor_options, tiling."
            )
        if weights is None:  # the official release, from Google Drive (through the weights table)
            weights = fetch("seesr")
        dev, dt = resolve_device_dtype(device, dtype)
        base_spec: WeightsSpec = base_model or SD2_BASE
        seesr_dir = resolve_dir(weights, revision=weights_revision, allow_patterns=_SEESR_FILES,
                                required=("unet/config.json", "controlnet/config.json"))
        base_dir = resolve_dir(base_spec, revision=revision, allow_patterns=_BASE_FILES,
                               required=("scheduler", "tokenizer", "text_encoder/config.json", "vae/config.json"))

        def base_unet_dir() -> Path:
            return resolve_dir(base_spec, revision=revision, allow_patterns=_BASE_UNET_FILES,
                               required=("unet/config.json",)) / "unet"

        from .loading import load_seesr_controlnet, load_seesr_unet

        unet = load_seesr_unet(seesr_dir, base_unet_dir)
        controlnet = load_seesr_controlnet(seesr_dir)
        vae, text_encoder, tokenizer, scheduler = _load_base_components(base_dir, str(base_spec))
        extractor = _resolve_extractor(prompt_extractor, prompt_extractor_weights, prompt_extractor_options,
                                       device=dev, dtype=dt)
        restorer = cls(unet, controlnet, vae, text_encoder, tokenizer, scheduler,
                       prompt_extractor=extractor, tiling=tiling)
        return restorer.to(device=dev, dtype=dt)

    def configure_tiling(self, config: tiling_mod.TilingConfig) -> None:
        """Use ``config`` for the latent tiles of every denoising step and for VAE encoding/decoding."""
        self.tiling = config

    # ---------------------------------------------------------------- stages
    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP embeddings ``(B, 77, D)`` in the UNet dtype: padded/truncated to the tokenizer's 77
        tokens, last hidden state, no attention mask (the official ``_encode_prompt``)."""
        return self.prompt_encoder(list(texts), dtype=self.unet.dtype)

    def encode_image(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latent ``(B, 4, H/8, W/8)`` float32 of ``x`` ``(B, 3, H, W)`` in [0, 1] (H, W multiples
        of 8): ``(mean + std·noise)·0.18215``, the official posterior *sample* with the draw ``noise``."""
        posterior = tiling_mod.vae_encode(self.vae, unit_to_signed(x).to(self.vae.device, self.vae.dtype), self.tiling)
        return posterior.sample(noise=noise).float() * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, 8h, 8w)`` float32 in [0, 1] from scaled latents: ``signed_to_unit(decode(z / 0.18215))``
        clamped, the pipeline's output before its uint8 conversion."""
        z = (latents / self.vae.config.scaling_factor).to(self.vae.device, self.vae.dtype)
        decoded = check_finite(tiling_mod.vae_decode(self.vae, z, self.tiling), what="The VAE decoder",
                               dtype=self.vae.dtype)
        return signed_to_unit(decoded.float()).clamp(0, 1)

    def latent_shape(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """Shape of the latents (and of ``latents=`` / ``encoder_noise=`` rows) for a condition image ``x``."""
        return (1, int(self.unet.config.in_channels), x.shape[-2] // 8, x.shape[-1] // 8)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def restore(
        self,
        image: Any,
        *,
        prompt: str | Sequence[str] | None = None,
        image_features: torch.Tensor | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        encoder_noise: torch.Tensor | None = None,
        steps: int = 50,
        guidance_scale: float = 5.5,
        conditioning_scale: float = 1.0,
        extra_prompt: str = "",
        added_prompt: str = OFFICIAL_ADDED_PROMPT,
        negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
        color_fix: ColorFix | str = "adain",
        process_size: int = 512,
        upscale: int = 4,
        start_point: StartPoint = "lr",
        start_steps: int = 999,
        tiling: tiling_mod.TilingConfig | None = None,
        progress: bool = True,
        callback: Callable[[SeeSRStep], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Restore ``image`` (PIL in → PIL out; ``(B, 3, H, W)`` [0, 1] tensors in → tensors out; numpy arrays;
        image files, which are read and returned as PIL images).

        PIL images and files follow the official script bit for bit (PIL resizing, uint8 steps); other
        inputs take the same path in float (torch bicubic, padding to a multiple of 8, no quantisation).

        Args:
            prompt: the tags (one string, or one per image), e.g. ``"bird, branch, tree"``; the official
                template :func:`official_prompt` adds ``extra_prompt`` and ``added_prompt``. ``None``:
                the tags of the prompt extractor given at load time.
            image_features: RAM/DAPE image embeddings ``(B, N, 512)`` (``(1, N, 512)`` serves every
                image). ``None``: the prompt extractor's, computed on the input image.
            seed: makes the run reproducible (``None``: a fresh random one). Seeds a CPU generator for
                the initial noise and the DDPM draws (the official ``generator``; on CPU seed N equals the
                official run with ``--seed N``), and a second CPU generator for the VAE posterior draw
                (the official script takes that from the global RNG, so it cannot be reproduced there).
            generator: use this generator instead of the seeded one for the initial noise and the
                DDPM draws.
            latents: the initial noise ε ``(B, 4, h, w)`` (h, w = processed size / 8) instead of the
                generator's first draw; encoder_noise: the VAE posterior draw, same shape.
            steps: DDPM steps (official 50); guidance_scale: CFG weight (official 5.5, off at ≤ 1);
                conditioning_scale: ControlNet residual scale (official 1.0).
            extra_prompt, added_prompt, negative_prompt: the official ``--prompt``, ``--added_prompt``
                and ``--negative_prompt``.
            color_fix: "adain" (official default), "wavelet" or "none".
            process_size, upscale: the short side is enlarged to ``process_size // upscale`` if smaller;
                the output is ``upscale`` × the input size.
            start_point, start_steps: "lr" (official: the LR latent noised to t = ``start_steps``) or "noise".
            tiling: overrides the restorer's tiling for this call.
            progress: tqdm bar over the denoising steps; callback: called with a
                :class:`~.sampler.SeeSRStep` after every step.

        Raises:
            InvalidInputError: a bad image, option, prompt, or tensor shape; no prompt extractor when
                ``prompt`` or ``image_features`` is missing.
        """
        if kwargs:
            raise InvalidInputError(
                f"Unknown options for SeeSRRestorer.restore: {sorted(kwargs)}. See help(SeeSRRestorer.restore)."
            )
        if color_fix not in _COLOR_FIXES:
            raise InvalidInputError(f"color_fix must be one of {_COLOR_FIXES}, got {color_fix!r} (official: 'adain').")
        if not isinstance(upscale, int) or isinstance(upscale, bool) or upscale < 1:
            raise InvalidInputError(f"upscale must be a positive integer, got {upscale!r} (official: 4).")
        if not isinstance(process_size, int) or process_size < 0:
            raise InvalidInputError(f"process_size must be an integer >= 0, got {process_size!r} (official: 512).")
        image = _load_if_file(image)
        official_pil = imageio.is_pil_input(image)
        lr, meta = imageio.to_tensor(image)
        if official_pil:
            pils = [image] if isinstance(image, Image.Image) else list(image)
            upscaled = [upscale_like_official(p.convert("RGB"), process_size=process_size, upscale=upscale)
                        for p in pils]
            sources, _ = imageio.to_tensor(upscaled)
            conditions, pad = sources, (0, 0)
        else:
            sources = official_edge.upscale_tensor(lr, process_size=process_size, upscale=upscale)
            conditions, pad = imageio.pad_to_multiple(sources, self.capabilities.size_multiple,
                                                      mode=self.capabilities.pad_mode)
        tags, features = self._tags_and_features(lr, prompt, image_features)  # DAPE sees the original LR
        out = self.restore_batch(conditions.to(self.device, self.dtype), prompts=tags, image_features=features,
                                 seed=seed, tiling=tiling, progress=progress, generator=generator, latents=latents,
                                 encoder_noise=encoder_noise, steps=steps, guidance_scale=guidance_scale,
                                 conditioning_scale=conditioning_scale, extra_prompt=extra_prompt,
                                 added_prompt=added_prompt, negative_prompt=negative_prompt,
                                 start_point=start_point, start_steps=start_steps, callback=callback)
        restored = imageio.crop_padding(out.float().cpu(), pad)
        size = (lr.shape[-2] * upscale, lr.shape[-1] * upscale)
        outputs = [self._finish(restored[i : i + 1], sources[i : i + 1], color_fix, official_pil, size)
                   for i in range(lr.shape[0])]
        return imageio.from_tensor(torch.cat(outputs), meta)

    def _restore_batch(
        self,
        lq: torch.Tensor,
        *,
        prompts: list[str] | None,
        image_features: torch.Tensor | None,
        seed: int | None,
        tiling: tiling_mod.TilingConfig | None,
        progress: bool,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        encoder_noise: torch.Tensor | None = None,
        steps: int = 50,
        guidance_scale: float = 5.5,
        conditioning_scale: float = 1.0,
        extra_prompt: str = "",
        added_prompt: str = OFFICIAL_ADDED_PROMPT,
        negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
        start_point: StartPoint = "lr",
        start_steps: int = 999,
        callback: Callable[[SeeSRStep], None] | None = None,
    ) -> torch.Tensor:
        """The SeeSR sampler on conditions ``lq`` (B,3,H,W) in [0, 1] (the upscaled LR): one image at a time,
        tags ``prompts`` in the official template, ``image_features`` in the image cross-attention (either
        missing: the prompt extractor's, run on ``lq``). Returns the decoded images (B,3,H,W) in [0, 1],
        before the colour fix. Options as in :meth:`restore`."""
        tiling = tiling or self.tiling
        batch = lq.shape[0]
        tags, features = self._tags_and_features(lq.float(), prompts, image_features)
        generator = generator or _seeded_generator(seed)
        encoder_generator = _seeded_generator(seed)
        outputs = []
        for i in range(batch):
            condition = lq[i : i + 1]
            shape = self.latent_shape(condition)
            noise = _per_image(latents, i, batch, shape, "latents")
            posterior_noise = _per_image(encoder_noise, i, batch, shape, "encoder_noise")
            if noise is None:
                noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)
            lr_latents = None
            if start_point == "lr":
                if posterior_noise is None:
                    posterior_noise = torch.randn(shape, generator=encoder_generator, dtype=torch.float32)
                lr_latents = self.encode_image(condition, posterior_noise.to(condition.device))
            embeds = self.encode_prompt([official_prompt(tags[i], extra_prompt, added_prompt), negative_prompt])
            conditioning = SeeSRConditioning(
                condition=condition,
                prompt_embeds=embeds[0:1],
                negative_embeds=embeds[1:2],
                image_embeds=features[i if features.shape[0] > 1 else 0][None].to(self.unet.device),
            )
            final = denoise(
                self.unet, self.controlnet, type(self.scheduler).from_config(self.scheduler.config), conditioning,
                noise.to(self.unet.device), lr_latents=lr_latents, steps=steps, guidance_scale=guidance_scale,
                conditioning_scale=conditioning_scale, start_point=start_point, start_steps=start_steps,
                generator=generator, tiling=tiling, progress=progress, callback=callback,
            )
            outputs.append(self.decode_latents(final))
        return torch.cat(outputs)

    def _tags_and_features(
        self, lr: torch.Tensor, prompt: str | Sequence[str] | None, image_features: torch.Tensor | None
    ) -> tuple[list[str], torch.Tensor]:
        """One tag string per image and the image embeddings ``(B or 1, N, 512)``, from the arguments or
        from the prompt extractor run on the original LR images ``lr`` ``(B, 3, H, W)`` in [0, 1]."""
        batch = lr.shape[0]
        tags: list[str] | None
        if prompt is None:
            tags = None
        elif isinstance(prompt, str):
            tags = [prompt] * batch
        else:
            tags = list(prompt)
            if len(tags) != batch or not all(isinstance(t, str) for t in tags):
                raise InvalidInputError(
                    f"prompt must be a string or a list of {batch} strings (one per image), got {prompt!r}."
                )
        if tags is None or image_features is None:
            if self.prompt_extractor is None:
                raise InvalidInputError(
                    "SeeSR needs tags and image features: load it with prompt_extractor='dape' "
                    "(prompt_extractor_weights='DAPE.pth'), or pass prompt= and image_features= "
                    f"(RAM/DAPE embeddings, (B, N, {IMAGE_CROSS_ATTENTION_DIM}))."
                )
            result = self.prompt_extractor.extract(lr)
            if tags is None:
                tags = list(result.texts)
            if image_features is None:
                if result.image_features is None:
                    raise InvalidInputError(
                        f"The prompt extractor {self.prompt_extractor!r} gives no image features; SeeSR needs "
                        "RAM/DAPE embeddings: use prompt_extractor='dape' or pass image_features=."
                    )
                image_features = result.image_features
        if image_features.ndim == 2:
            image_features = image_features[None]
        if (image_features.ndim != 3 or image_features.shape[-1] != IMAGE_CROSS_ATTENTION_DIM
                or image_features.shape[0] not in (1, batch) or not image_features.is_floating_point()):
            raise InvalidInputError(
                f"image_features must be a float tensor ({batch} or 1, N, {IMAGE_CROSS_ATTENTION_DIM}), "
                f"got {image_features.dtype} {tuple(image_features.shape)}."
            )
        return tags, image_features

    def _finish(self, restored: torch.Tensor, source: torch.Tensor, method: str, official_pil: bool,
                size: tuple[int, int]) -> torch.Tensor:
        """Colour fix against the upscaled LR ``source`` and resize to ``size``; ``(1, 3, *size)`` in [0, 1].

        PIL input repeats the official chain: uint8 pipeline output (rounded), colour fix on it, uint8
        again (truncated), PIL bicubic resize. Other inputs stay float (antialiased torch bicubic)."""
        restored = official_edge.color_fix_like_official(restored, source, method, official_pil=official_pil,
                                                         output_levels="round")
        if official_pil:
            if tuple(restored.shape[-2:]) != size:
                levels = (restored[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                pil = Image.fromarray(levels).resize((size[1], size[0]), Image.BICUBIC)
                restored, _ = imageio.to_tensor(pil)
        elif tuple(restored.shape[-2:]) != size:
            restored = F.interpolate(restored, size=size, mode="bicubic", align_corners=False,
                                     antialias=True).clamp(0, 1)
        return restored


def _seeded_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator("cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def _load_base_components(base_dir: Path, base_name: str) -> tuple[AutoencoderKL, nn.Module, Any, DDPMScheduler]:
    """VAE, CLIP text encoder, tokenizer and DDPM scheduler of an SD-2 diffusers tree (float32, CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        vae = AutoencoderKL.from_pretrained(base_dir, subfolder="vae")
        text_encoder = CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder")
        tokenizer = AutoTokenizer.from_pretrained(base_dir, subfolder="tokenizer")
        # The official pipeline reads SD-2-base's scheduler folder (a PNDM config) as DDPM.
        scheduler = DDPMScheduler.from_pretrained(base_dir, subfolder="scheduler")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointMismatchError(f"{base_name} ({base_dir}) is not a Stable Diffusion 2 diffusers tree: {exc}") from exc
    if scheduler.config.prediction_type != "epsilon":
        raise CheckpointMismatchError(
            f"{base_name} predicts {scheduler.config.prediction_type!r}; SeeSR was trained on the "
            f"epsilon-prediction {SD2_BASE}."
        )
    return vae, text_encoder, tokenizer, scheduler


def _resolve_extractor(spec: str | PromptExtractor | None, weights: Any, options: dict[str, Any] | None, *,
                       device: torch.device, dtype: torch.dtype) -> PromptExtractor | None:
    if spec is None or isinstance(spec, PromptExtractor):
        if weights is not None or options:
            raise InvalidInputError(
                "prompt_extractor_weights / prompt_extractor_options need prompt_extractor= to be a registered "
                "name such as 'dape'."
            )
        return spec
    if isinstance(spec, str):
        return load_prompt_extractor(spec, weights=weights, device=device, dtype=dtype, **(options or {}))
    raise InvalidInputError(
        f"prompt_extractor must be a registered name such as 'dape', a PromptExtractor or None, got {spec!r}."
    )


class _RandomFeatures(PromptExtractor):
    """A stand-in for DAPE in :meth:`SeeSRRestorer.tiny_random`: the tags "a photo" and seeded random image
    features ``(B, 145, 512)`` (what DAPE gives SeeSR), float32 on the images' device."""

    name = "random-features"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def extract(self, images: Any) -> PromptResult:
        batch = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else len(images)
        device = images.device if isinstance(images, torch.Tensor) else None
        features = torch.randn(batch, 145, IMAGE_CROSS_ATTENTION_DIM, generator=torch.Generator().manual_seed(self.seed))
        return PromptResult(texts=["a photo"] * batch, image_features=features.to(device))
