"""Degradation-guided LoRA: S3Diff's per-sample modulation of every LoRA update.

S3Diff (arXiv 2409.17058) turns the degradation scores ``s`` (B, 2) of an LQ image into one ``r x r``
matrix ``M`` per sample and per network block, and inserts it between each LoRA layer's down and
up projection::

    y = base(x) + (alpha / r) · B( A(x) ·_rank M[b, block(layer)] )      (alpha = 8, peft's default)

where ``·_rank`` contracts the rank axis: ``t'[b, ..., j] = Σ_k t[b, ..., k] · M[b, k, j]`` (the rank
is the channel axis of a conv LoRA, the last axis of a linear one).

:class:`DegradationModulator` computes the matrices (Fourier features of the scores → MLPs, fused with
learnt per-block embeddings); :class:`LoRAModulation` installs forward hooks on the ``lora_A``
modules of one peft adapter, so the stock peft LoRA layers compute the modulated update (no fork of
peft). The hooks only fire while that adapter is active.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from elqproj.errors import CheckpointMismatchError, ConfigError, InvalidInputError

__all__ = [
    "DegradationModulation",
    "DegradationModulator",
    "LoRAModulation",
    "unet_block_index",
    "vae_block_index",
    "UNET_BLOCKS",
    "VAE_BLOCKS",
]

#: Block groups with their own modulation: UNet down 0-3, mid 4, up 5-8, everything else (conv_out) 9.
UNET_BLOCKS = 10
#: VAE encoder down 0-3, mid 4, everything else (conv_in, conv_out) 5.
VAE_BLOCKS = 6


def unet_block_index(module_name: str, num_blocks: int = UNET_BLOCKS) -> int:
    """Official block id of a UNet LoRA layer: ``down_blocks.i`` → i, ``mid_block`` → 4,
    ``up_blocks.i`` → 5 + i, anything else → the last block."""
    parts = module_name.split(".")
    if parts[0] == "down_blocks":
        index = int(parts[1])
    elif parts[0] == "mid_block":
        index = 4
    elif parts[0] == "up_blocks":
        index = 5 + int(parts[1])
    else:
        index = num_blocks - 1
    if not 0 <= index < num_blocks:
        raise CheckpointMismatchError(
            f"UNet layer {module_name!r} maps to block {index}, but the checkpoint has {num_blocks} block "
            "embeddings: the base UNet has more blocks than the S3Diff checkpoint was trained on."
        )
    return index


def vae_block_index(module_name: str, num_blocks: int = VAE_BLOCKS) -> int:
    """Official block id of a VAE-encoder LoRA layer: ``encoder.down_blocks.i`` → i,
    ``encoder.mid_block`` → second to last, anything else (``conv_in``, ``conv_out``) → last."""
    parts = module_name.split(".")
    if len(parts) > 2 and parts[1] == "down_blocks":
        index = int(parts[2])
    elif len(parts) > 1 and parts[1] == "mid_block":
        index = num_blocks - 2
    else:
        index = num_blocks - 1
    if not 0 <= index < num_blocks:
        raise CheckpointMismatchError(
            f"VAE layer {module_name!r} maps to block {index}, but the checkpoint has {num_blocks} block "
            "embeddings: the base VAE has more blocks than the S3Diff checkpoint was trained on."
        )
    return index


@dataclass
class DegradationModulation:
    """Everything :class:`DegradationModulator` derives from a batch of degradation scores.

    fourier: (B, 2·F·D) Fourier features ``[sin(2π s_0 w), cos(2π s_0 w), sin(2π s_1 w), …]``;
    unet_de_embed / vae_de_embed: (B, 256) score embeddings (after ReLU);
    unet_block_embed / vae_block_embed: (n_blocks, 64) block embeddings (after ReLU, batch-independent);
    unet / vae: (B, n_blocks, r, r) modulation matrices, float32.
    """

    fourier: torch.Tensor
    unet_de_embed: torch.Tensor
    vae_de_embed: torch.Tensor
    unet_block_embed: torch.Tensor
    vae_block_embed: torch.Tensor
    unet: torch.Tensor
    vae: torch.Tensor


class _Branch(nn.Module):
    """Score embedding, block embedding and fusion for one network (UNet or VAE)."""

    def __init__(self, fourier_dim: int, de_dim: int, num_blocks: int, block_dim: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.de_mlp = nn.Sequential(nn.Linear(fourier_dim, de_dim), nn.ReLU())
        self.block_embeddings = nn.Embedding(num_blocks, block_dim)
        self.block_mlp = nn.Sequential(nn.Linear(block_dim, block_dim), nn.ReLU())
        self.fuse_mlp = nn.Linear(de_dim + block_dim, rank * rank)

    def forward(self, fourier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        de = self.de_mlp(fourier)  # (B, de_dim)
        blocks = self.block_mlp(self.block_embeddings.weight)  # (n_blocks, block_dim)
        fused = torch.cat([de[:, None].expand(-1, blocks.shape[0], -1),
                           blocks[None].expand(de.shape[0], -1, -1)], dim=-1)
        matrices = self.fuse_mlp(fused).reshape(de.shape[0], blocks.shape[0], self.rank, self.rank)
        return de, blocks, matrices


class DegradationModulator(nn.Module):
    """Degradation scores (B, num_degradations) in (0, 1) → per-block LoRA modulation matrices.

    Args:
        rank_unet / rank_vae: LoRA ranks (official 32 / 16); the matrices are rank x rank.
        num_degradations: scores per image (2: blur, noise).
        num_frequencies: random Fourier frequencies ``w`` (64).
        de_dim: width of the score embedding (256); block_dim: block-embedding width (64).
        unet_blocks / vae_blocks: block groups (10 / 6).
    """

    def __init__(
        self,
        rank_unet: int = 32,
        rank_vae: int = 16,
        *,
        num_degradations: int = 2,
        num_frequencies: int = 64,
        de_dim: int = 256,
        block_dim: int = 64,
        unet_blocks: int = UNET_BLOCKS,
        vae_blocks: int = VAE_BLOCKS,
    ) -> None:
        super().__init__()
        self.num_degradations = num_degradations
        self.register_buffer("w", torch.zeros(num_frequencies))  # fixed random frequencies (not trained)
        fourier_dim = 2 * num_degradations * num_frequencies
        self.unet = _Branch(fourier_dim, de_dim, unet_blocks, block_dim, rank_unet)
        self.vae = _Branch(fourier_dim, de_dim, vae_blocks, block_dim, rank_vae)

    @classmethod
    def from_official_checkpoint(cls, ckpt: Mapping[str, Any]) -> DegradationModulator:
        """Build and load from an official ``s3diff.pkl`` dict (sizes read from the tensors).

        Raises:
            CheckpointMismatchError: a tensor is missing or the sizes are inconsistent.
        """
        state = official_modulator_state(ckpt)
        try:
            rank_unet, rank_vae = int(ckpt["rank_unet"]), int(ckpt["rank_vae"])
            num_frequencies = state["w"].shape[0]
            de_dim, fourier_dim = state["unet.de_mlp.0.weight"].shape
            unet_blocks, block_dim = state["unet.block_embeddings.weight"].shape
            vae_blocks = state["vae.block_embeddings.weight"].shape[0]
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CheckpointMismatchError(f"The S3Diff checkpoint's modulation tensors are malformed: {exc}") from exc
        if fourier_dim % (2 * num_frequencies):
            raise CheckpointMismatchError(
                f"S3Diff de-MLP input width {fourier_dim} is not a multiple of 2 x {num_frequencies} frequencies."
            )
        model = cls(rank_unet, rank_vae, num_degradations=fourier_dim // (2 * num_frequencies),
                    num_frequencies=num_frequencies, de_dim=de_dim, block_dim=block_dim,
                    unet_blocks=unet_blocks, vae_blocks=vae_blocks)
        own = model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
                 for k, v in state.items() if k in own and v.shape != own[k].shape]
        missing = sorted(set(own) - set(state))
        if wrong or missing:
            raise CheckpointMismatchError(
                "The S3Diff checkpoint's modulation MLPs do not fit its LoRA ranks "
                f"(rank_unet={rank_unet}, rank_vae={rank_vae}): "
                + "; ".join(wrong + [f"missing {k}" for k in missing])
            )
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)

    def forward(self, scores: torch.Tensor) -> DegradationModulation:
        """Modulation for ``scores`` (B, num_degradations), computed in this module's dtype."""
        if scores.ndim != 2 or scores.shape[1] != self.num_degradations:
            raise InvalidInputError(
                f"degradation scores must have shape (B, {self.num_degradations}), got {tuple(scores.shape)}."
            )
        scores = scores.to(self.w.device, self.w.dtype)
        phase = scores[..., None] * self.w * 2 * math.pi  # (B, n, F), the official operation order
        per_score = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)  # (B, n, 2F)
        fourier = per_score.flatten(1)  # [sin s0, cos s0, sin s1, cos s1]
        unet_de, unet_blocks, unet = self.unet(fourier)
        vae_de, vae_blocks, vae = self.vae(fourier)
        return DegradationModulation(fourier=fourier, unet_de_embed=unet_de, vae_de_embed=vae_de,
                                     unet_block_embed=unet_blocks, vae_block_embed=vae_blocks, unet=unet, vae=vae)


def official_modulator_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The modulation tensors of an ``s3diff.pkl`` dict under :class:`DegradationModulator`'s names."""
    sources = {
        "unet.de_mlp": "state_dict_unet_de_mlp",
        "vae.de_mlp": "state_dict_vae_de_mlp",
        "unet.block_mlp": "state_dict_unet_block_mlp",
        "vae.block_mlp": "state_dict_vae_block_mlp",
        "unet.fuse_mlp": "state_dict_unet_fuse_mlp",
        "vae.fuse_mlp": "state_dict_vae_fuse_mlp",
    }
    state: dict[str, torch.Tensor] = {}
    try:
        for prefix, key in sources.items():
            state.update({f"{prefix}.{name}": value for name, value in ckpt[key].items()})
        embeddings = ckpt["state_embeddings"]
        state["unet.block_embeddings.weight"] = embeddings["state_dict_unet_block"]["weight"]
        state["vae.block_embeddings.weight"] = embeddings["state_dict_vae_block"]["weight"]
        state["w"] = torch.as_tensor(ckpt["w"]).detach()
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointMismatchError(f"The S3Diff checkpoint lacks modulation tensor {exc}.") from exc
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError("The S3Diff checkpoint's modulation entries are not all tensors.")
    return state


class LoRAModulation:
    """Forward hooks that put ``M[b, block]`` between ``lora_A`` and ``lora_B`` of one peft adapter.

    Args:
        model: the peft-wrapped diffusers model (UNet or VAE).
        adapter_name: the full peft adapter name whose LoRA layers are modulated.
        block_index: module name → block id (:func:`unet_block_index` / :func:`vae_block_index`).

    Set :attr:`matrices` ((B or 1, n_blocks, r, r)) before a forward pass and clear it afterwards; a
    modulated layer that runs without matrices raises :class:`~elqproj.errors.ConfigError` (it
    would otherwise silently compute an unmodulated, meaningless update).
    """

    def __init__(self, model: nn.Module, adapter_name: str, block_index: Callable[[str], int]) -> None:
        from peft.tuners.lora import LoraLayer

        self.adapter_name = adapter_name
        self.matrices: torch.Tensor | None = None
        self.blocks: dict[str, int] = {}
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
                lora_a = module.lora_A[adapter_name]
                if not isinstance(lora_a, (nn.Conv2d, nn.Linear)):
                    raise CheckpointMismatchError(
                        f"S3Diff modulates conv and linear LoRA layers only; {name} is {type(lora_a).__name__}."
                    )
                self.blocks[name] = block = block_index(name)
                lora_a.register_forward_hook(partial(self._modulate, block))
        if not self.blocks:
            raise CheckpointMismatchError(f"No LoRA layer of adapter {adapter_name!r} found to modulate.")

    def _modulate(self, block: int, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self.matrices is None:
            raise ConfigError(
                f"The S3Diff LoRA adapter {self.adapter_name!r} ran without a degradation modulation; call the "
                "S3DiffRestorer (or use `with restorer.conditioned(deg_score):`) instead of the bare engine."
            )
        matrix = self.matrices[:, block].to(output.dtype)  # (B, r, r)
        batch = output.shape[0]
        if matrix.shape[0] not in (1, batch):
            raise InvalidInputError(
                f"The degradation modulation has batch {matrix.shape[0]} but the activations have batch "
                f"{batch}; pass one degradation score row per image."
            )
        matrix = matrix.expand(batch, -1, -1)
        if isinstance(module, nn.Conv2d):  # rank = channel axis: (B, r, H, W)
            # As a (B, r, r)ᵀ @ (B, r, H·W) product: einsum would return channels-last strides, which
            # send the following lora_B convolution down a slow path.
            return torch.bmm(matrix.transpose(1, 2), output.flatten(2)).view_as(output)
        return torch.einsum("b...k,bkj->b...j", output, matrix)  # rank = last axis: (B, ..., r)
