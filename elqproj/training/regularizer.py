"""The two UNets of the VSD prior term, held as one UNet with a LoRA adapter that can be switched off.

VSD (as OSEDiff trains it) needs the frozen pretrained UNet ε_pre and a "regulariser" ε_reg = the same
UNet plus LoRA (B = 0 at the start), trained in parallel with the diffusion loss on the restored
latents. With peft the pair costs one UNet: ε_pre is ε_reg with its adapter disabled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import CheckpointMismatchError
from ..hub import WeightsSpec, resolve_dir
from ..projector import ProjectorConfig
from ..schedule import add_noise, x0_from_epsilon

__all__ = ["VSDRegularizer"]

ADAPTER = "vsd_regularizer"


class VSDRegularizer(nn.Module):
    """ε_reg (UNet + LoRA, trainable) and ε_pre (the same UNet, adapter off, frozen).

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (the restorer's latent space, SD2.1-base by default).
        alphas_cumprod: ``(1000,)`` ᾱ_t of the base's DDPM schedule.
        lora_rank / lora_alpha: the regulariser LoRA (OSEDiff's targets; rank 4 in the official recipe).
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, *, lora_rank: int = 4,
                 lora_alpha: float = 8.0) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)
        unet.requires_grad_(False)
        unet.eval()
        lora = ProjectorConfig(lora_rank=lora_rank, lora_alpha=lora_alpha).lora_config("unet")
        unet.add_adapter(lora, adapter_name=ADAPTER)  # LoRA B = 0: ε_reg starts as ε_pre
        for param in self.lora_parameters():
            param.requires_grad_(True)

    @classmethod
    def from_pretrained(cls, base_model: WeightsSpec, *, revision: str | None = None, lora_rank: int = 4,
                        lora_alpha: float = 8.0, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> VSDRegularizer:
        """Load the UNet and noise schedule of a diffusers SD tree (Hub id or directory)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        local = resolve_dir(base_model, revision=revision, allow_patterns=["unet/*", "scheduler/*"],
                            required=("unet/config.json", "scheduler"))
        try:
            unet = UNet2DConditionModel.from_pretrained(local, subfolder="unet", torch_dtype=dtype)
            scheduler = DDPMScheduler.from_pretrained(local, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise CheckpointMismatchError(f"{base_model} ({local}) has no diffusers UNet/scheduler: {exc}") from exc
        regularizer = cls(unet, scheduler.alphas_cumprod, lora_rank=lora_rank, lora_alpha=lora_alpha)
        return regularizer.to(device)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.unet.named_parameters() if f".{ADAPTER}." in name]

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors (CPU, contiguous), keys as in the UNet's state dict."""
        return {k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items() if f".{ADAPTER}." in k}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.lora_state_dict()
        if set(state) != set(own):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise CheckpointMismatchError(
                f"Regulariser LoRA does not fit: {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); was it saved with another rank or base?"
            )
        wrong = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in state.items()
                 if tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise CheckpointMismatchError(
                f"Regulariser LoRA does not fit: {len(wrong)} tensors of another shape (e.g. {wrong[:2]}); "
                "was it saved with another rank or base?"
            )
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε per sample (``timesteps`` (B,) integers), float32."""
        return add_noise(latents, noise, timesteps, self.alphas_cumprod)

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """ε_reg(z_t, t, c): the regulariser's noise prediction (LoRA on), differentiable in the LoRA."""
        dtype = self.unet.dtype
        return self.unet(noisy_latents.to(dtype), timesteps, encoder_hidden_states=prompt_embeds.to(dtype)).sample

    @contextmanager
    def _pretrained(self) -> Iterator[None]:
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    @torch.no_grad()
    def regularizer_x0(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                       prompt_embeds: torch.Tensor) -> torch.Tensor:
        """x̂0 from ε_reg (no gradient), float32."""
        return x0_from_epsilon(noisy_latents, self(noisy_latents, timesteps, prompt_embeds), timesteps,
                               self.alphas_cumprod)

    @torch.no_grad()
    def pretrained_x0(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor,
                      negative_embeds: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """x̂0 from the frozen UNet with classifier-free guidance ε_neg + s·(ε_c − ε_neg) (no gradient),
        float32; negative and positive rows go through the UNet as one batch, as in OSEDiff."""
        with self._pretrained():
            both = self(torch.cat([noisy_latents] * 2), torch.cat([timesteps] * 2),
                        torch.cat([negative_embeds, prompt_embeds]))
        uncond, cond = both.float().chunk(2)
        epsilon = uncond + guidance_scale * (cond - uncond)
        return x0_from_epsilon(noisy_latents, epsilon, timesteps, self.alphas_cumprod)
