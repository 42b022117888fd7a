"""SeeSR's denoising loop, as the official ``pipelines/pipeline_seesr.py`` runs it.

Pure orchestration of the networks (no weights of its own):

* start point ``"lr"`` (official default, the "LR embedding" strategy): the VAE latent of the upscaled
  LR image noised to ``start_steps`` = 999 with the generator's first draw; ``"noise"``: that draw alone;
* DDPM steps on the SD-2-base schedule (``DDPMScheduler``, "leading" spacing, steps_offset 1: 50 steps
  run at t = 981, 961, …, 1; the first step is *not* at the noising t = 999). Every step draws its
  variance noise from the generator, t = 1 included;
* per step one ControlNet and one UNet forward on the classifier-free-guidance batch
  ``[negative; positive]`` (both rows see the same RAM/DAPE features; CFG only when
  ``guidance_scale > 1``), ``ε = ε_u + s·(ε_c − ε_u)``;
* latent tiling when h·w exceeds ``latent_tile``² (official: 96² latents, overlap 4): square tiles,
  each with its pixel crop of the ControlNet condition, blended with Gaussian weights in float32.

Latents are kept in float32 between steps whatever the network dtype (the official fp16 run keeps them
in fp16); in float32 the arithmetic is the official one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from elqproj import tiling as tiling_mod
from elqproj.errors import InvalidInputError

if TYPE_CHECKING:  # annotations only: the models and diffusers are imported where SeeSR is loaded
    from diffusers import DDPMScheduler

    from .models import SeeSRControlNetModel, SeeSRUNet2DConditionModel

__all__ = ["SEESR_TILING", "StartPoint", "SeeSRStep", "SeeSRConditioning", "predict_noise", "guided_noise", "denoise"]

StartPoint = Literal["lr", "noise"]

#: SeeSR's official tiling: 96² latent tiles with overlap 4 (``test_seesr.py`` since its last commit;
#: OSEDiff uses 32), VAE encoder tiles of 1024 px and decoder tiles of 224 latents.
SEESR_TILING = tiling_mod.TilingConfig(latent_tile=96, latent_overlap=4, vae_encoder_tile=1024,
                                       vae_decoder_tile=224)


@dataclass(frozen=True)
class SeeSRStep:
    """What the step callback sees after each denoising step.

    Attributes:
        index: 0-based index of the step among the steps that ran.
        timestep: the DDPM timestep t of that step.
        latents_in: the latents the step started from, float32 ``(1, 4, h, w)``.
        model_output: the networks' ε before guidance (tiles stitched), float32 ``(B, 4, h, w)``; rows
            ``[negative; positive]`` under guidance (B = 2), else the positive row alone.
        noise_pred: ε after guidance, float32 ``(1, 4, h, w)``: what the scheduler step consumes.
        latents: the latents after the step, float32 ``(1, 4, h, w)``.
    """

    index: int
    timestep: int
    latents_in: torch.Tensor
    model_output: torch.Tensor
    noise_pred: torch.Tensor
    latents: torch.Tensor


@dataclass(frozen=True)
class SeeSRConditioning:
    """The per-image inputs every network evaluation shares.

    Attributes:
        condition: ControlNet input, the upscaled LR image ``(1, 3, 8h, 8w)`` in **[0, 1]**.
        prompt_embeds: CLIP embeddings ``(1, 77, D)`` of the positive prompt.
        negative_embeds: those of the negative prompt (used only under guidance).
        image_embeds: RAM/DAPE image embeddings ``(1, N, 512)``, shared by both CFG rows.
    """

    condition: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor
    image_embeds: torch.Tensor


def predict_noise(
    unet: SeeSRUNet2DConditionModel,
    controlnet: SeeSRControlNetModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    condition: torch.Tensor,
    prompt_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    *,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """One ControlNet + UNet evaluation: ε ``(B, 4, h, w)`` in the UNet dtype.

    Args:
        latents: noisy latents ``(B, 4, h, w)``; condition: ``(B, 3, 8h, 8w)`` in [0, 1];
        prompt_embeds: ``(B, 77, D)``; image_embeds: ``(B, N, 512)``; timestep: scalar tensor.
    """
    dtype = unet.dtype
    latents, condition = latents.to(dtype), condition.to(controlnet.dtype)
    prompt_embeds, image_embeds = prompt_embeds.to(dtype), image_embeds.to(dtype)
    down, mid = controlnet(latents, timestep, encoder_hidden_states=prompt_embeds, controlnet_cond=condition,
                           conditioning_scale=conditioning_scale, return_dict=False,
                           image_encoder_hidden_states=image_embeds)
    return unet(latents, timestep, encoder_hidden_states=prompt_embeds, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False,
                image_encoder_hidden_states=image_embeds)[0]


def _predict_noise_tiled(
    evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    condition: torch.Tensor,
    tiling: tiling_mod.TilingConfig,
) -> torch.Tensor:
    """Gaussian-blended tiles of ``evaluate(latent_tile, condition_crop)`` over ``latents`` ``(B, 4, h, w)``.

    Each tile's ControlNet condition must be the pixel crop ×8 of that tile. The condition is folded
    into latent resolution (pixel-unshuffle: ``(B, 3, 8h, 8w)`` → ``(B, 192, h, w)``, a lossless
    rearrangement) and carried as extra channels, so that :func:`elqproj.tiling.tiled_latent_apply`
    (the official grid, Gaussian weights and summation order) crops both at once.
    """
    channels = latents.shape[1]
    factor = condition.shape[-1] // latents.shape[-1]
    packed = torch.cat([latents, F.pixel_unshuffle(condition.to(latents.dtype), factor)], dim=1)

    def evaluate_packed(tile: torch.Tensor) -> torch.Tensor:
        # float32 out: the official stitching buffer is float32 whatever the network dtype.
        return evaluate(tile[:, :channels], F.pixel_shuffle(tile[:, channels:], factor)).float()

    return tiling_mod.tiled_latent_apply(evaluate_packed, packed, tile=tiling.latent_tile,
                                         overlap=tiling.latent_overlap)


def guided_noise(
    unet: SeeSRUNet2DConditionModel,
    controlnet: SeeSRControlNetModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: SeeSRConditioning,
    *,
    guidance_scale: float = 5.5,
    conditioning_scale: float = 1.0,
    tiling: tiling_mod.TilingConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ε one denoising step consumes, for latents ``(1, 4, h, w)`` at ``timestep``.

    One ControlNet + UNet evaluation of the classifier-free-guidance batch ``[negative; positive]``
    (both rows see the same RAM/DAPE features; guidance only when ``guidance_scale > 1``), tiled when
    h·w exceeds ``tiling.latent_tile``², then ``ε = ε_u + s·(ε_c − ε_u)``.

    Returns:
        ``(model_output, eps)``, float32: the networks' output before guidance ``(B, 4, h, w)`` (rows
        ``[negative; positive]`` under guidance) and the guided ε ``(1, 4, h, w)``.
    """
    tiling = tiling or SEESR_TILING
    c = conditioning
    use_cfg = guidance_scale > 1.0
    if use_cfg:
        prompt_embeds = torch.cat([c.negative_embeds, c.prompt_embeds])
        image_embeds = torch.cat([c.image_embeds, c.image_embeds])
        condition = torch.cat([c.condition, c.condition])
        model_input = torch.cat([latents, latents])
    else:
        prompt_embeds, image_embeds, condition, model_input = c.prompt_embeds, c.image_embeds, c.condition, latents

    def evaluate(x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return predict_noise(unet, controlnet, x, timestep, cond, prompt_embeds, image_embeds,
                             conditioning_scale=conditioning_scale)

    if tiling.latent_needs_tiling(*latents.shape[-2:]):
        model_output = _predict_noise_tiled(evaluate, model_input, condition, tiling)
    else:
        model_output = evaluate(model_input, condition).float()
    if not use_cfg:
        return model_output, model_output
    uncond, cond = model_output.chunk(2)
    return model_output, uncond + guidance_scale * (cond - uncond)


def denoise(
    unet: SeeSRUNet2DConditionModel,
    controlnet: SeeSRControlNetModel,
    scheduler: DDPMScheduler,
    conditioning: SeeSRConditioning,
    noise: torch.Tensor,
    *,
    lr_latents: torch.Tensor | None,
    steps: int = 50,
    guidance_scale: float = 5.5,
    conditioning_scale: float = 1.0,
    start_point: StartPoint = "lr",
    start_steps: int = 999,
    generator: torch.Generator | None = None,
    tiling: tiling_mod.TilingConfig | None = None,
    progress: bool = True,
    callback: Callable[[SeeSRStep], None] | None = None,
) -> torch.Tensor:
    """Run the official sampler for one image and return the final latents, float32 ``(1, 4, h, w)``.

    Args:
        scheduler: a DDPM scheduler with the base model's config; its timesteps are (re)set here, so
            give each concurrent call its own instance.
        conditioning: condition image, prompt embeddings and image embeddings (see :class:`SeeSRConditioning`).
        noise: the initial draw ε ``(1, 4, h, w)`` (``prepare_latents``; ``init_noise_sigma`` is 1 for DDPM).
        lr_latents: the scaled VAE latent of the condition image ``(1, 4, h, w)`` (needed for ``"lr"``).
        steps: number of inference steps (official 50); guidance_scale: CFG weight (official 5.5,
            off at ≤ 1); conditioning_scale: ControlNet residual scale (official 1.0).
        start_point: ``"lr"`` (official) or ``"noise"``; start_steps: the noising t of ``"lr"`` (official
            999); timesteps above it are skipped.
        generator: source of every DDPM variance draw.
        tiling: latent tile size / overlap / mode (``None``: :data:`SEESR_TILING`).
        progress: show a tqdm bar over the steps; callback: called with a :class:`SeeSRStep` after each.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= scheduler.config.num_train_timesteps:
        raise InvalidInputError(
            f"steps must be an integer in [1, {scheduler.config.num_train_timesteps}], got {steps!r} (official: 50)."
        )
    if start_point not in ("lr", "noise"):
        raise InvalidInputError(f"start_point must be 'lr' (official) or 'noise', got {start_point!r}.")
    if not 0 <= start_steps < scheduler.config.num_train_timesteps:
        raise InvalidInputError(f"start_steps must be in [0, {scheduler.config.num_train_timesteps - 1}], "
                                f"got {start_steps!r} (official: 999).")
    tiling = tiling or SEESR_TILING
    device = noise.device
    scheduler.set_timesteps(steps, device=device)
    latents = noise.float() * scheduler.init_noise_sigma
    if start_point == "lr":
        if lr_latents is None:
            raise InvalidInputError("start_point='lr' needs the LR latents.")
        start = torch.tensor([start_steps], dtype=torch.long, device=device)
        latents = scheduler.add_noise(lr_latents.float(), latents, start)

    timesteps = [t for t in scheduler.timesteps if int(t) <= start_steps]
    with tqdm(total=len(timesteps), desc="SeeSR", unit="step", disable=not progress, leave=False) as bar:
        for index, t in enumerate(timesteps):
            model_output, eps = guided_noise(unet, controlnet, latents, t, conditioning,
                                             guidance_scale=guidance_scale, conditioning_scale=conditioning_scale,
                                             tiling=tiling)
            latents_in = latents
            latents = scheduler.step(eps, t, latents, generator=generator, return_dict=False)[0]
            bar.update()
            if callback is not None:
                callback(SeeSRStep(index=index, timestep=int(t), latents_in=latents_in, model_output=model_output,
                                   noise_pred=eps, latents=latents))
    return latents

