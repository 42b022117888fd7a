"""S3Diff (degradation-guided one-step SR, arXiv 2409.17058) as a frozen restorer g.

Reads the official ``s3diff.pkl`` (UNet/VAE-encoder LoRA, fully trained UNet ``conv_in``, modulation
MLPs, block embeddings, Fourier frequencies) and ``de_net.pth`` (degradation estimator) without
executing code, attaches the LoRA as a non-mergeable adapter set on a shared
:class:`~elqproj.onestep.OneStepSD` engine (SD-Turbo base), and reproduces the official inference
(``inference_s3diff.py`` + ``S3Diff.forward`` in ``s3diff_tile.py``):

1. degradation scores from the LQ image at its own resolution;
2. bilinear ×``upscale`` (align_corners False), map to [-1, 1], reflect-pad to a multiple of 64;
3. VAE encoder with modulated LoRA, posterior *sample*;
4. UNet at t = 999 with modulated LoRA, once with the positive and once with the negative prompt,
   ``ε = ε_neg + 1.07 (ε_pos − ε_neg)`` (per latent tile above 96² latent pixels);
5. x0 = (z − √(1−ᾱ)ε)/√ᾱ, plain VAE decoder, clamp, crop;
6. colour fix (wavelet by default) against the upscaled LQ; for PIL images both sides are quantised
   by truncation first, as torchvision's ``ToPILImage`` does in the official script.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from elqproj import imageio
from elqproj.adapter_sets import official_lora_config
from elqproj.colorfix import ColorFix
from elqproj.errors import CheckpointMismatchError, InvalidInputError
from elqproj.hub import load_checkpoint
from elqproj.onestep import OneStepOutput, OneStepSD, prompts_for_batch
from elqproj.tiling import TilingConfig
from elqproj.value_range import signed_to_unit, unit_to_signed
from elqproj.weights import COMPONENTS, resolve_weights

from .. import official_edge
from ..base import Restorer, RestorerCapabilities
from .degradation_estimator import DegradationEstimator
from .modulation import (
    UNET_BLOCKS,
    VAE_BLOCKS,
    DegradationModulation,
    DegradationModulator,
    LoRAModulation,
    unet_block_index,
    vae_block_index,
)

__all__ = [
    "S3DiffRestorer",
    "S3DIFF_BASE",
    "S3DIFF_WEIGHTS",
    "DE_NET_URL",
    "POSITIVE_PROMPT",
    "NEGATIVE_PROMPT",
    "GUIDANCE_SCALE",
]

S3DIFF_BASE = COMPONENTS["sd-turbo"].source
#: Hub repository ``zhangap/S3Diff``, file ``s3diff.pkl`` (what the official scripts download).
S3DIFF_WEIGHTS = COMPONENTS["s3diff"].source
#: The degradation estimator ships only inside the GitHub repository; pinned to the commit read.
DE_NET_URL = COMPONENTS["de-net"].source
# Official CLI defaults (--pos_prompt / --neg_prompt) and the guidance scale hard-coded in S3Diff.__init__.
POSITIVE_PROMPT = (
    "A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, and natural lighting."
)
NEGATIVE_PROMPT = (
    "oil painting, cartoon, blur, dirty, messy, low quality, deformation, low resolution, oversmooth"
)
GUIDANCE_SCALE = 1.07

_TIMESTEP = 999
_PAD_MULTIPLE = 64  # the official script reflect-pads the upscaled input to a multiple of 64
_UNET_ADAPTER = "default"  # official peft adapter names inside s3diff.pkl
_VAE_ADAPTER = "vae_skip"
_REQUIRED_KEYS = (
    "unet_lora_target_modules", "vae_lora_target_modules", "rank_unet", "rank_vae", "state_dict_unet",
    "state_dict_vae", "state_dict_unet_de_mlp", "state_dict_vae_de_mlp", "state_dict_unet_block_mlp",
    "state_dict_vae_block_mlp", "state_dict_unet_fuse_mlp", "state_dict_vae_fuse_mlp", "w", "state_embeddings",
)

# engine -> adapter set -> (UNet hooks, VAE hooks). A second restorer loaded from the same file onto the
# same engine reuses the set and its hooks instead of stacking a second copy of the LoRA.
_MODULATIONS: weakref.WeakKeyDictionary[OneStepSD, dict[str, tuple[LoRAModulation, LoRAModulation]]] = (
    weakref.WeakKeyDictionary()
)


class S3DiffRestorer(Restorer):
    """S3Diff on a (possibly shared) one-step SD-Turbo engine, with its degradation estimator.

    Use :meth:`from_pretrained` (or ``load_restorer("s3diff", ...)``) rather than the constructor.
    """

    name = "s3diff"
    capabilities = RestorerCapabilities(
        scale=4,
        steps=1,
        supports_fp16=True,
        supports_bf16=True,
        needs_prompt=True,
        uses_image_features=False,
        differentiable=True,
        code_licence="Apache-2.0",
        weights_licence="S3Diff checkpoint: Apache-2.0 (project licence); base stabilityai/sd-turbo: "
                        "SD-Turbo weights non-commercial",
        base_model=S3DIFF_BASE,
        default_weights=S3DIFF_WEIGHTS,
        paper="Zhang et al., Degradation-Guided One-Step Image Super-Resolution with Diffusion Priors (arXiv:2409.17058)",
        supports_tiling=True,
        size_multiple=_PAD_MULTIPLE,
        pad_mode="reflect",
        color_fix="wavelet",
        per_image_seeds=True,  # one VAE posterior draw per image (OneStepSD.draw_encoder_noise)
    )

    def __init__(
        self,
        engine: OneStepSD,
        adapter_set: str,
        *,
        modulator: DegradationModulator,
        degradation_estimator: DegradationEstimator,
        modulation: tuple[LoRAModulation, LoRAModulation],
        weights: str = "",
        tiling: TilingConfig | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine  # first: Restorer.device / dtype read the engine's parameters
        self.adapter_set = adapter_set
        self.modulator = modulator
        self.degradation_estimator = degradation_estimator
        self.unet_modulation, self.vae_modulation = modulation
        self.weights = weights
        self.tiling = tiling
        self.refine_capabilities(size_multiple=math.lcm(_PAD_MULTIPLE, engine.vae_scale_factor),
                                 min_side=engine.min_image_side)

    @classmethod
    def recognizes(cls, checkpoint: dict[str, Any]) -> bool:
        """``s3diff.pkl`` (or its safetensors copy): LoRA target lists, modulation MLPs, Fourier frequencies."""
        return all(key in checkpoint for key in _REQUIRED_KEYS)

    # ------------------------------------------------------------------ loading
    @classmethod
    def tiny_random(cls, engine: OneStepSD, *, seed: int = 0) -> S3DiffRestorer:
        """S3Diff's architecture at tiny widths with random weights on ``engine``, for ``elqproj selftest``:
        rank-4 modulated LoRA on the official targets (OSEDiff's module names; S3Diff's lists are the
        same kinds of layers), its own ``conv_in``, a small modulator and degradation estimator."""
        from elqproj.projector import OSEDIFF_UNET_TARGETS, OSEDIFF_VAE_TARGETS

        rank, set_name = 4, f"s3diff_random_{seed}"
        sets = _MODULATIONS.setdefault(engine, {})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            modulator = DegradationModulator(rank, rank, num_frequencies=8, de_dim=16, block_dim=8)
            modulator.w.normal_()
            estimator = DegradationEstimator(stage_channels=(8, 8, 8, 16), blocks_per_stage=(1, 1, 1, 1))
        if set_name not in sets:
            engine.add_random_adapter_set(
                set_name, unet={_UNET_ADAPTER: official_lora_config(rank, OSEDIFF_UNET_TARGETS)},
                vae={_VAE_ADAPTER: official_lora_config(rank, OSEDIFF_VAE_TARGETS)},
                overrides=[("unet", "conv_in.weight")], seed=seed, mergeable=False)
            unet_name, vae_name = (engine.adapter_name(set_name, a) for a in (_UNET_ADAPTER, _VAE_ADAPTER))
            sets[set_name] = (LoRAModulation(engine.unet, unet_name, lambda name: unet_block_index(name, UNET_BLOCKS)),
                              LoRAModulation(engine.vae, vae_name, lambda name: vae_block_index(name, VAE_BLOCKS)))
        return cls(engine, set_name, modulator=modulator.eval().to(engine.device),
                   degradation_estimator=estimator.eval().to(engine.device, engine.dtype), modulation=sets[set_name],
                   weights="random (selftest)")

    @classmethod
    def from_pretrained(
        cls,
        weights: Any = None,
        *,
        de_net: Any = None,
        base_model: Any = None,
        revision: str | None = None,
        weights_revision: str | None = None,
        sha256: str | None = None,
        de_net_sha256: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        engine: OneStepSD | None = None,
        tiling: TilingConfig | None = None,
        **kwargs: Any,
    ) -> S3DiffRestorer:
        """Load S3Diff.

        Args:
            weights: ``s3diff.pkl``: local path, Hub spec ``"org/name/file"``, or URL. Default: Hub
                ``zhangap/S3Diff``, file ``s3diff.pkl`` (``weights_revision`` applies; ``sha256`` checks it).
            de_net: the degradation estimator ``de_net.pth`` (path or URL). Default: the file in the
                official GitHub repository (downloaded once and cached; ``de_net_sha256`` checks it).
            base_model: SD-Turbo diffusers tree (Hub id or directory; default ``stabilityai/sd-turbo``,
                whose weights are under a non-commercial licence); ``revision`` applies to it.
            engine: an already loaded :class:`OneStepSD` to attach to. Without it the shared engine for
                ``base_model``/device/dtype is used.
            tiling: latent/VAE tiling for this restorer (default: the engine's, i.e. the official
                96/32 latent tiles and 1024/224 VAE tiles).

        The LoRA cannot be merged into the base (the modulation differs per image).

        Raises:
            CheckpointMismatchError: a file is not an S3Diff checkpoint / degradation estimator, or
                does not fit the base model.
            UnsafeCheckpointError: a pickle references code.
            WeightsNotFoundError: a file cannot be found or downloaded.
        """
        if kwargs:
            hint = " S3Diff's LoRA cannot be merged (it is modulated per image)." if "merge_lora" in kwargs else ""
            raise InvalidInputError(f"Unknown arguments for S3Diff: {sorted(kwargs)}.{hint}")
        path = resolve_weights(weights, "s3diff", revision=weights_revision, sha256=sha256)
        ckpt = load_checkpoint(path)
        _check_s3diff_checkpoint(ckpt, path)
        modulator = DegradationModulator.from_official_checkpoint(ckpt)
        estimator = DegradationEstimator.from_checkpoint(resolve_weights(de_net, "de-net", sha256=de_net_sha256),
                                                         num_degradations=modulator.num_degradations)
        if engine is None:
            engine = OneStepSD.from_pretrained(base_model or S3DIFF_BASE, revision=revision, device=device,
                                               dtype=dtype)
        set_name = "s3diff_" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
        sets = _MODULATIONS.setdefault(engine, {})
        if set_name not in sets:
            sets[set_name] = _attach(engine, set_name, ckpt)
        return cls(
            engine,
            set_name,
            modulator=modulator.to(engine.device),  # float32 whatever the engine dtype: tiny, and precise
            degradation_estimator=estimator.to(engine.device, engine.dtype),
            modulation=sets[set_name],
            weights=str(path),
            tiling=tiling,
        )

    def configure_tiling(self, config: TilingConfig | None) -> None:
        """Use ``config`` for this restorer's latent and VAE tiling (``None``: the engine's). Kept on the
        restorer, not the engine, so that other users of a shared engine are unaffected."""
        self.tiling = config

    # ------------------------------------------------------------ conditioning
    def estimate_degradation(self, lq: torch.Tensor) -> torch.Tensor:
        """Degradation scores (B, 2) in (0, 1), float32, of ``lq`` (B, 3, h, w) in [0, 1] at its own
        (not upscaled) resolution. Differentiable."""
        param = next(self.degradation_estimator.parameters())
        return self.degradation_estimator(lq.to(param.device, param.dtype)).float()

    def modulation(self, deg_score: torch.Tensor) -> DegradationModulation:
        """The LoRA modulation matrices (and intermediates) for scores (B, 2)."""
        return self.modulator(deg_score)

    @contextmanager
    def conditioned(self, deg_score: torch.Tensor) -> Iterator[DegradationModulation]:
        """Activate this restorer's adapter set, modulated by ``deg_score`` (B, 2), for the block.

        Inside, the shared engine's stages (``engine.encode_image``, ``engine.predict_noise``, …) run
        S3Diff's modulated LoRA; the engine lock is held, so other users of the engine wait.
        """
        with self.engine.using(self.adapter_set):
            mods = self.modulation(deg_score)
            # Cast once here rather than in each of the hundreds of hooked layers.
            self.unet_modulation.matrices = mods.unet.to(self.engine.unet.dtype)
            self.vae_modulation.matrices = mods.vae.to(self.engine.vae.dtype)
            try:
                yield mods
            finally:
                self.unet_modulation.matrices = self.vae_modulation.matrices = None

    # ---------------------------------------------------------------- inference
    def encode_prompt(self, prompts: Sequence[str], *, long_prompt: str = "truncate") -> torch.Tensor:
        """(B, 77, D) text embeddings of the base text encoder (cached per string)."""
        return self.engine.encode_prompt(prompts, long_prompt=long_prompt)

    def forward(
        self,
        lq: torch.Tensor,
        deg_score: torch.Tensor,
        prompt_embeds: torch.Tensor,
        *,
        negative_embeds: torch.Tensor | None = None,
        guidance_scale: float = GUIDANCE_SCALE,
        tiling: TilingConfig | None = None,
        **kwargs: Any,
    ) -> OneStepOutput:
        """Differentiable S3Diff pass (the official ``S3Diff.forward``).

        Args:
            lq: (B, 3, H, W) in [-1, 1], already upscaled; H, W multiples of 8 (official: of 64).
            deg_score: (B, 2) degradation scores (:meth:`estimate_degradation` of the un-upscaled LQ).
            prompt_embeds / negative_embeds: (B, 77, D) from :meth:`encode_prompt`; without
                ``negative_embeds`` there is no guidance (S3Diff's training forward).
            guidance_scale: CFG scale (official 1.07).
            tiling: overrides the restorer's tiling for this pass.
            **kwargs: ``encoder_noise``, ``seed``, ``generator``, ``sample_posterior``, ``latent`` of
                :meth:`OneStepSD.forward`.

        Returns:
            Every intermediate; ``.image`` is (B, 3, H, W) in [-1, 1].
        """
        with self.conditioned(deg_score):
            return self.engine(lq, prompt_embeds, timestep=_TIMESTEP, negative_embeds=negative_embeds,
                               guidance_scale=guidance_scale, tiling=tiling or self.tiling, **kwargs)

    def training_forward(self, lq: torch.Tensor, prompt_embeds: torch.Tensor, *,
                         generator: torch.Generator | None = None) -> OneStepOutput:
        """See :meth:`Restorer.training_forward`: :meth:`forward` without guidance (S3Diff's training
        forward), its degradation scores estimated from ``lq`` itself — in IRIB the LQ proxy already
        sits at the output resolution, so there is no separate un-upscaled input to score."""
        return self(lq, self.estimate_degradation(signed_to_unit(lq)), prompt_embeds, generator=generator)

    def _restore_batch(self, lq: torch.Tensor, *, prompts: list[str] | None, image_features: torch.Tensor | None,
                       seed: int | list[int] | None, tiling: TilingConfig | None, progress: bool,
                       negative_prompt: str | Sequence[str] | None = NEGATIVE_PROMPT,
                       guidance_scale: float = GUIDANCE_SCALE, generator: torch.Generator | None = None,
                       encoder_noise: torch.Tensor | None = None, sample_posterior: bool = True,
                       deg_score: torch.Tensor | None = None, long_prompt: str = "truncate") -> torch.Tensor:
        """One guided S3Diff pass on ``lq`` (B,3,H,W) in [-1, 1] (H, W multiples of 64); returns the same
        shape in [-1, 1]. ``prompts=None`` is the official positive prompt; without ``deg_score`` the
        scores are estimated from ``lq`` itself. Options as in :meth:`restore`."""
        batch = lq.shape[0]
        if deg_score is None:
            deg_score = self.estimate_degradation(signed_to_unit(lq))
        elif tuple(deg_score.shape) != (batch, self.modulator.num_degradations):
            raise InvalidInputError(
                f"deg_score must have shape ({batch}, {self.modulator.num_degradations}), got {tuple(deg_score.shape)}."
            )
        embeds = self.encode_prompt(prompts_for_batch(POSITIVE_PROMPT if prompts is None else prompts, batch),
                                    long_prompt=long_prompt)
        negative = None
        if negative_prompt is not None and guidance_scale != 1:
            negative = self.encode_prompt(prompts_for_batch(negative_prompt, batch), long_prompt=long_prompt)
        with torch.no_grad():
            return self(lq, deg_score, embeds, negative_embeds=negative, guidance_scale=guidance_scale,
                        encoder_noise=encoder_noise, seed=seed, generator=generator,
                        sample_posterior=sample_posterior, tiling=tiling).image

    @torch.no_grad()
    def restore(
        self,
        image: Any,
        *,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = NEGATIVE_PROMPT,
        guidance_scale: float = GUIDANCE_SCALE,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        encoder_noise: torch.Tensor | None = None,
        sample_posterior: bool = True,
        upscale: float = 4,
        color_fix: ColorFix | str = "wavelet",
        deg_score: torch.Tensor | None = None,
        tiling: TilingConfig | None = None,
        long_prompt: str = "truncate",
    ) -> Any:
        """Restore ``image`` (PIL in -> PIL out; (B,3,H,W) [0,1] tensors in -> tensors out; numpy, paths).

        Args:
            prompt: positive prompt, used verbatim (one string, or one per image). ``None``: the
                official positive prompt.
            negative_prompt: the official negative prompt by default; ``None`` (or
                ``guidance_scale=1``) runs a single UNet pass without guidance.
            guidance_scale: CFG scale (official 1.07).
            seed: makes the VAE posterior sample reproducible (drawn on the CPU: seed N equals the
                official script run after ``torch.manual_seed(N)``). ``encoder_noise`` (B, 4, H'/8, W'/8)
                for the padded size H', W' injects the draw; ``sample_posterior=False`` uses the mean.
            upscale: scale factor (official 4; any positive number, the size is ``int(h * upscale)``
                as in the official Gradio demo).
            color_fix: "wavelet" (official default), "adain" or "none"; the reference is the upscaled LQ.
            deg_score: (B, 2) scores to use instead of the estimator's (which scores the input at its
                own, not upscaled, resolution).
            tiling: overrides the restorer's tiling for this call.

        PIL input follows the official script bit for bit (uint8 truncation before and after the colour
        fix). Other inputs stay float. An input too small to reflect-pad to a multiple of 64 is padded
        by edge replication on that axis (the official code fails there).
        """
        if isinstance(upscale, bool) or not isinstance(upscale, (int, float)) or upscale <= 0:
            raise InvalidInputError(f"upscale must be a positive number, got {upscale!r}.")
        official_pil = imageio.is_pil_input(image)
        x, meta = imageio.to_tensor(image)
        x = x.to(self.engine.device)
        if deg_score is None:
            deg_score = self.estimate_degradation(x)
        h, w = x.shape[-2:]
        size = (int(h * upscale), int(w * upscale))
        upscaled = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        sr_input, pad = imageio.pad_to_multiple(unit_to_signed(upscaled).clamp(-1, 1), self.capabilities.size_multiple,
                                                mode=self.capabilities.pad_mode)
        prompts = None if prompt is None else prompts_for_batch(prompt, x.shape[0])
        out = self.restore_batch(sr_input.to(self.dtype), prompts=prompts, seed=seed, tiling=tiling, negative_prompt=negative_prompt,
                                 guidance_scale=guidance_scale, generator=generator, encoder_noise=encoder_noise,
                                 sample_posterior=sample_posterior, deg_score=deg_score, long_prompt=long_prompt)
        restored = signed_to_unit(imageio.crop_padding(out.float(), pad))
        restored = official_edge.color_fix_like_official(restored, upscaled, color_fix, official_pil=official_pil)
        return imageio.from_tensor(restored, meta)


def _check_s3diff_checkpoint(ckpt: dict, path: Path) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        hint = ""
        if "unet_lora_encoder_modules" in ckpt or "vae_lora_encoder_modules" in ckpt:
            hint = " It looks like an OSEDiff checkpoint: use load_restorer('osediff', ...)."
        raise CheckpointMismatchError(
            f"{path} is not an S3Diff checkpoint (s3diff.pkl): missing {missing} (found {sorted(ckpt)[:6]}…).{hint}"
        )
    for key in ("rank_unet", "rank_vae"):
        if isinstance(ckpt[key], bool) or not isinstance(ckpt[key], int) or ckpt[key] < 1:
            raise CheckpointMismatchError(f"{path}: {key} must be a positive integer, got {ckpt[key]!r}.")


def _attach(engine: OneStepSD, set_name: str, ckpt: dict) -> tuple[LoRAModulation, LoRAModulation]:
    """Create the S3Diff adapter set on ``engine``, load the checkpoint's tensors, install the hooks."""
    unet_name = engine.adapter_name(set_name, _UNET_ADAPTER)
    vae_name = engine.adapter_name(set_name, _VAE_ADAPTER)
    try:
        engine.add_adapter_set(
            set_name,
            unet={_UNET_ADAPTER: official_lora_config(ckpt["rank_unet"], ckpt["unet_lora_target_modules"])},
            vae={_VAE_ADAPTER: official_lora_config(ckpt["rank_vae"], ckpt["vae_lora_target_modules"])},
            mergeable=False,
        )
    except ValueError as exc:  # peft: target modules not found in the base model
        raise CheckpointMismatchError(
            f"The S3Diff LoRA targets do not exist in the base model {engine.base_model}: {exc}"
        ) from exc
    for component, state_key, official, full in (
        ("unet", "state_dict_unet", _UNET_ADAPTER, unet_name),
        ("vae", "state_dict_vae", _VAE_ADAPTER, vae_name),
    ):
        lora: dict[str, torch.Tensor] = {}
        for key, value in ckpt[state_key].items():
            if ".lora_" in key:
                lora[key.replace(f".{official}.", f".{full}.")] = value
            else:  # fully trained base weights (the UNet conv_in)
                engine.set_override(set_name, component, key.replace(".base_layer.", "."), value)
        engine.load_adapter_state(set_name, component, lora)
    blocks_unet = ckpt["state_embeddings"]["state_dict_unet_block"]["weight"].shape[0]
    blocks_vae = ckpt["state_embeddings"]["state_dict_vae_block"]["weight"].shape[0]
    return (
        LoRAModulation(engine.unet, unet_name, lambda name: unet_block_index(name, blocks_unet)),
        LoRAModulation(engine.vae, vae_name, lambda name: vae_block_index(name, blocks_vae)),
    )
