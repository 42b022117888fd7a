"""Tiled processing for large images: latent tiles with Gaussian blending, and a tiled VAE.

Two independent mechanisms, both used above a size threshold (:class:`TilingConfig`):

* **Latent tiling** (:func:`tiled_latent_apply`): the UNet (or any per-pixel-ish function of the
  latent) runs on overlapping square tiles whose outputs are blended with a Gaussian weight map,
  ``sum(w * out) / sum(w)``. Geometry, weights and summation order follow the official
  OSEDiff/S3Diff inference code, so tiled outputs reproduce theirs.
* **Tiled VAE** (:func:`vae_encode` / :func:`vae_decode`): the encoder/decoder runs on padded tiles
  in lock step. Every GroupNorm uses statistics pooled over all tiles, and the mid-block attention
  sees the whole (small) bottleneck feature map, so the result stays close to the untiled VAE
  while the large full-resolution convolutions only ever see one tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError, InvalidInputError
from .validation import ConfigModel

if TYPE_CHECKING:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D

    LatentPosterior = DiagonalGaussianDistribution  # at run time a subclass of it, built on first use

__all__ = [
    "TilingConfig",
    "LatentPosterior",
    "tile_origins",
    "gaussian_tile_weights",
    "tiled_latent_apply",
    "vae_scale_factor",
    "vae_encode",
    "vae_decode",
]


class TilingConfig(ConfigModel):
    """When and how large inputs are tiled. Round-trips to JSON; invalid values raise ConfigError.

    ``mode``:
        * ``"auto"`` (default): the official thresholds. Latent tiling when ``h * w > latent_tile**2``;
          VAE tiling when the longer side exceeds ``tile + 2 * pad`` (encoder above 1088 px, decoder
          above 246 latent px with the defaults), as the official tiled-VAE hook does.
        * ``"always"``: tile whenever the input does not fit in one tile (longer side above the tile
          size, ignoring the official area rule and pad margin). Useful to bound memory with small
          tiles, and to exercise the tiled path.
        * ``"never"``: process everything in one piece.

    ``vae_offload``: while the tiled VAE waits for every tile to reach a GroupNorm, park the paused
    tiles in CPU memory (as the official tiled VAE does), so the accelerator holds one tile's
    activations at a time. Off: faster, but all tiles stay on the accelerator.

    Sizes: ``latent_tile``/``latent_overlap``/``vae_decoder_tile``/``vae_decoder_pad`` in latent
    pixels, ``vae_encoder_tile``/``vae_encoder_pad`` in image pixels. Defaults are the official
    OSEDiff/S3Diff command-line defaults.
    """

    mode: Literal["auto", "always", "never"] = "auto"
    #: At least 4 latent pixels (32 image pixels): a smaller tile shrinks to a single pixel inside the UNet,
    #: where GroupNorm has one value per group and fails.
    latent_tile: int = pydantic.Field(96, ge=4)
    latent_overlap: int = pydantic.Field(32, ge=0)
    vae_encoder_tile: int = pydantic.Field(1024, ge=1)
    vae_encoder_pad: int = pydantic.Field(32, ge=0)
    vae_decoder_tile: int = pydantic.Field(224, ge=1)
    vae_decoder_pad: int = pydantic.Field(11, ge=0)
    vae_offload: bool = True

    @pydantic.model_validator(mode="after")
    def _overlap_below_tile(self) -> TilingConfig:
        if self.latent_overlap >= self.latent_tile:
            raise ValueError(
                f"latent_overlap ({self.latent_overlap}) must be smaller than latent_tile ({self.latent_tile})"
            )
        return self

    def latent_needs_tiling(self, h: int, w: int) -> bool:
        """Whether an ``h x w`` latent goes through :func:`tiled_latent_apply`."""
        if self.mode == "auto":
            return h * w > self.latent_tile**2  # the official rule: by area, not by side
        return self.mode == "always" and max(h, w) > self.latent_tile

    def encoder_needs_tiling(self, height: int, width: int) -> bool:
        """Whether :func:`vae_encode` tiles a ``height x width`` image (image pixels)."""
        return self._vae_needs_tiling(max(height, width), self.vae_encoder_tile, self.vae_encoder_pad)

    def decoder_needs_tiling(self, h: int, w: int) -> bool:
        """Whether :func:`vae_decode` tiles an ``h x w`` latent (latent pixels)."""
        return self._vae_needs_tiling(max(h, w), self.vae_decoder_tile, self.vae_decoder_pad)

    def _vae_needs_tiling(self, longer_side: int, tile: int, pad: int) -> bool:
        if self.mode == "auto":
            return longer_side > tile + 2 * pad
        return self.mode == "always" and longer_side > tile


# ----------------------------------------------------------------------------------------------
# Latent tiling


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with ``overlap``.

    The official OSEDiff/S3Diff rule: offsets ``k * (tile - overlap)`` for as long as a tile ends
    before ``length``, then one last tile snapped to ``length - tile``.
    """
    if not 0 <= overlap < tile:
        raise InvalidInputError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    if length < tile:
        raise InvalidInputError(f"axis length {length} is smaller than the tile size {tile}")
    stride = tile - overlap
    count = 1
    while (count - 1) * stride + tile < length:
        count += 1
    return [k * stride for k in range(count - 1)] + [length - tile]


def gaussian_tile_weights(
    tile_h: int,
    tile_w: int,
    *,
    var: float = 0.01,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian blending weights ``(tile_h, tile_w)``, highest at the tile centre.

    ``w[y, x] = g(x; (tile_w - 1) / 2, tile_w) * g(y; tile_h / 2, tile_h)`` with
    ``g(u; m, n) = exp(-(u - m)^2 / n^2 / (2 var)) / sqrt(2 pi var)``. The y midpoint ``tile_h / 2``
    (not ``(tile_h - 1) / 2``) is the official code's asymmetry, kept for parity with its tiled
    outputs. Computed in float64 like the official numpy code; ``dtype`` (default float64) is the
    returned dtype.
    """

    def profile(n: int, midpoint: float) -> torch.Tensor:
        u = torch.arange(n, dtype=torch.float64)
        return torch.exp(-(u - midpoint) * (u - midpoint) / (n * n) / (2 * var)) / math.sqrt(2 * math.pi * var)

    weights = torch.outer(profile(tile_h, tile_h / 2), profile(tile_w, (tile_w - 1) / 2))
    return weights.to(device=device, dtype=dtype or torch.float64)


def tiled_latent_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    latent: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    progress: bool = False,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``latent`` and blend the outputs with Gaussian weights.

    Args:
        fn: maps ``(B, C, t, t)`` to ``(B, C', t, t)`` (e.g. the UNet's noise prediction, CFG included).
        latent: ``(B, C, h, w)``, any float dtype and device.
        tile: tile side in latent pixels. As in the official code the tiles are square with side
            ``min(tile, h, w)``.
        overlap: overlap between neighbouring tiles in latent pixels. When the tile side shrinks to
            ``overlap`` or less (a latent thinner than the overlap, where the official loop would never
            end), half the tile side is used instead.
        progress: show a progress bar over the tiles.

    Returns:
        ``(B, C', h, w)`` in ``fn``'s output dtype: ``fn(latent)`` itself when the latent fits in one
        tile (``h <= tile`` and ``w <= tile``), else ``sum(w * out) / sum(w)`` over tiles, summed in
        the official order (outer loop over x, inner over y) with float64 weights and a float32 (or
        wider) accumulator, which reproduces the official stitched result.
    """
    if latent.ndim != 4:
        raise InvalidInputError(f"latent must be (B, C, h, w), got shape {tuple(latent.shape)}")
    _, _, height, width = latent.shape
    if height <= tile and width <= tile:
        return fn(latent)
    side = min(tile, height, width)
    if overlap >= side:
        overlap = side // 2
    ys, xs = tile_origins(height, side, overlap), tile_origins(width, side, overlap)
    # float64 weights as the official code; MPS has no float64.
    weight_dtype = torch.float32 if latent.device.type == "mps" else torch.float64
    weights = gaussian_tile_weights(side, side, device=latent.device, dtype=weight_dtype)
    total = torch.zeros((height, width), device=latent.device, dtype=torch.float32)
    blended = None
    with tqdm(total=len(xs) * len(ys), desc="latent tiles", disable=not progress) as bar:
        for x0 in xs:
            for y0 in ys:
                out = fn(latent[:, :, y0 : y0 + side, x0 : x0 + side])
                if out.ndim != 4 or out.shape[0] != latent.shape[0] or tuple(out.shape[-2:]) != (side, side):
                    raise InvalidInputError(
                        f"the tiled function must map (B, C, {side}, {side}) to (B, C', {side}, {side}), "
                        f"got {tuple(out.shape)}"
                    )
                if blended is None:
                    accumulate = torch.promote_types(out.dtype, torch.float32)
                    blended = torch.zeros((*out.shape[:2], height, width), device=out.device, dtype=accumulate)
                    total = total.to(accumulate)
                # In-place add of a float64 product into the float32 buffer, as the official code does.
                blended[:, :, y0 : y0 + side, x0 : x0 + side] += out * weights
                total[y0 : y0 + side, x0 : x0 + side] += weights
                bar.update()
    return (blended / total).to(out.dtype)


# ----------------------------------------------------------------------------------------------
# VAE posterior


@cache
def _latent_posterior_class() -> type:
    # Built on first use, not at import: diffusers takes seconds to import, and listing or configuring
    # models (elqproj info, TilingConfig) must not pay for it. ``elqproj.tiling.LatentPosterior`` is this class.
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    class LatentPosterior(DiagonalGaussianDistribution):
        """diffusers' diagonal Gaussian posterior (``.mean``, ``.std``, ``.var``, ``.logvar``, ``.mode()``,
        ``.kl()``) whose ``sample`` also takes an explicit standard-normal ``noise`` tensor.

        ``sample(noise=n)`` is ``mean + std * n``, exactly what ``sample(generator)`` computes with the
        draw ``n``; injecting the noise makes encodes reproducible across devices and lets parity tests
        feed the official run's draw.
        """

        def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
            if noise is None:
                return super().sample(generator)
            if generator is not None:
                raise InvalidInputError("pass either generator= or noise= to LatentPosterior.sample, not both")
            if tuple(noise.shape) != tuple(self.mean.shape):
                raise InvalidInputError(
                    f"posterior noise must have the latent's shape {tuple(self.mean.shape)}, got {tuple(noise.shape)}"
                )
            return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)

    LatentPosterior.__module__, LatentPosterior.__qualname__ = __name__, "LatentPosterior"
    return LatentPosterior


def __getattr__(name: str) -> Any:  # PEP 562: the posterior class is created on first access
    if name == "LatentPosterior":
        return _latent_posterior_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vae_scale_factor(vae: nn.Module) -> int:
    """Image pixels per latent pixel of a diffusers AutoencoderKL (8 for Stable Diffusion)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_encode(vae: nn.Module, x: torch.Tensor, config: TilingConfig) -> DiagonalGaussianDistribution:
    """Encode images to the VAE posterior, tiled when ``config`` says so.

    Args:
        vae: a diffusers ``AutoencoderKL`` (LoRA adapters on it are honoured).
        x: ``(B, 3, H, W)`` in [-1, 1], in the VAE's dtype and device; H and W multiples of the VAE's
            scale factor (8), e.g. via :func:`elqproj.imageio.pad_to_multiple`.
        config: tiling settings.

    Returns:
        The posterior (a ``LatentPosterior``) over the unscaled latent ``(B, 4, H/8, W/8)`` (multiply a sample by
        ``vae.config.scaling_factor`` for the UNet). Untiled, it is exactly
        ``vae.encode(x).latent_dist``.
    """
    factor = vae_scale_factor(vae)
    if x.ndim != 4 or x.shape[-2] % factor or x.shape[-1] % factor:
        raise InvalidInputError(
            f"VAE input must be (B, C, H, W) with H and W multiples of {factor}, got {tuple(x.shape)}; "
            f"pad it with elqproj.imageio.pad_to_multiple(x, {factor})"
        )
    height, width = x.shape[-2:]
    if config.encoder_needs_tiling(height, width):
        grid = _TileGrid.split(height, width, config.vae_encoder_tile, config.vae_encoder_pad, align=factor)
        if len(grid.tiles) > 1:
            _check_tileable(vae.encoder, "encoder")
            moments = _run_tiled(_encoder_steps(vae.encoder), grid, x, offload=config.vae_offload)
            if vae.quant_conv is not None:
                moments = vae.quant_conv(moments)
            return _latent_posterior_class()(moments)
    return _latent_posterior_class()(vae.encode(x).latent_dist.parameters)


def vae_decode(vae: nn.Module, z: torch.Tensor, config: TilingConfig) -> torch.Tensor:
    """Decode unscaled latents to images, tiled when ``config`` says so.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        z: ``(B, 4, h, w)`` unscaled latent (the caller divides by ``vae.config.scaling_factor``).
        config: tiling settings.

    Returns:
        ``(B, 3, 8h, 8w)`` roughly in [-1, 1], not clamped. Untiled, exactly ``vae.decode(z).sample``.
    """
    if z.ndim != 4:
        raise InvalidInputError(f"latent must be (B, C, h, w), got shape {tuple(z.shape)}")
    h, w = z.shape[-2:]
    if config.decoder_needs_tiling(h, w):
        grid = _TileGrid.split(h, w, config.vae_decoder_tile, config.vae_decoder_pad, align=1)
        if len(grid.tiles) > 1:
            _check_tileable(vae.decoder, "decoder")
            if vae.post_quant_conv is not None:
                z = vae.post_quant_conv(z)  # 1x1 convolution: no need to tile it
            return _run_tiled(_decoder_steps(vae.decoder), grid, z, offload=config.vae_offload)
    return vae.decode(z).sample


# ----------------------------------------------------------------------------------------------
# Tiled VAE internals
#
# Written by hand because no library has it: diffusers' own AutoencoderKL tiling (enable_tiling)
# normalises every tile with its own GroupNorm statistics and cross-fades the tiles, which shifts
# each tile's colour and brightness: on the tiny test VAE, reading tiles of the same size, its mean
# absolute deviation from the untiled VAE is 1.5-4x this implementation's. The official code (StableSR's
# "tiled VAE" hook) pools GroupNorm statistics over tiles too; this is an independent formulation:
# the encoder/decoder is flattened into a list of steps, every tile runs the steps up to the next
# GroupNorm, the tiles' moments over their non-overlapping cores are pooled into the exact
# whole-map statistics, and all tiles continue. Paused tiles can wait in CPU memory, so the
# accelerator holds one tile's activations at a time.


@dataclass(frozen=True)
class _Apply:
    """hidden = module(hidden), on one tile."""

    module: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _SaveResidual:
    """Keep a copy of hidden for the residual connection of the current resnet block."""


@dataclass(frozen=True)
class _AddResidual:
    """hidden = (shortcut(residual) + hidden) / output_scale_factor, as ResnetBlock2D ends."""

    shortcut: nn.Module | None
    output_scale_factor: float


@dataclass(frozen=True)
class _Norm:
    """A GroupNorm: every tile must reach it before its statistics are known (a barrier)."""

    norm: nn.GroupNorm


@dataclass(frozen=True)
class _WholeMap:
    """A block that sees the whole feature map at once (a barrier): the mid-block attention."""

    block: nn.Module


_Step = _Apply | _SaveResidual | _AddResidual | _Norm | _WholeMap


def _resnet_steps(resnet: ResnetBlock2D) -> list[_Step]:
    """diffusers ResnetBlock2D.forward without a time embedding."""
    return [
        _SaveResidual(),
        _Norm(resnet.norm1),
        _Apply(resnet.nonlinearity),
        _Apply(resnet.conv1),
        _Norm(resnet.norm2),
        _Apply(resnet.nonlinearity),
        _Apply(resnet.dropout),
        _Apply(resnet.conv2),
        _AddResidual(resnet.conv_shortcut, resnet.output_scale_factor),
    ]


def _mid_block_steps(mid_block: UNetMidBlock2D) -> list[_Step]:
    steps = _resnet_steps(mid_block.resnets[0])
    for attention, resnet in zip(mid_block.attentions, mid_block.resnets[1:]):
        if attention is not None:
            # The bottleneck is small (1/8 of the image side): attend over the whole map as the
            # untiled VAE does; handing the tiles their padded regions back also refreshes their margins.
            steps.append(_WholeMap(attention))
        steps += _resnet_steps(resnet)
    return steps


def _encoder_steps(encoder: nn.Module) -> list[_Step]:
    """diffusers Encoder.forward."""
    steps: list[_Step] = [_Apply(encoder.conv_in)]
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            steps += _resnet_steps(resnet)
        steps += [_Apply(downsampler) for downsampler in block.downsamplers or ()]
    steps += _mid_block_steps(encoder.mid_block)
    return steps + [_Norm(encoder.conv_norm_out), _Apply(encoder.conv_act), _Apply(encoder.conv_out)]


def _decoder_steps(decoder: nn.Module) -> list[_Step]:
    """diffusers Decoder.forward without latent embeddings."""
    steps: list[_Step] = [_Apply(decoder.conv_in)] + _mid_block_steps(decoder.mid_block)
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            steps += _resnet_steps(resnet)
        steps += [_Apply(upsampler) for upsampler in block.upsamplers or ()]
    return steps + [_Norm(decoder.conv_norm_out), _Apply(decoder.conv_act), _Apply(decoder.conv_out)]


def _check_tileable(coder: nn.Module, name: str) -> None:
    """The step lists re-trace the forward of diffusers' standard VAE blocks; refuse anything else."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D

    blocks = list(getattr(coder, "down_blocks", ())) + list(getattr(coder, "up_blocks", ()))
    resnets = [r for block in blocks for r in getattr(block, "resnets", ())] + list(coder.mid_block.resnets)
    supported = (
        all(isinstance(block, (DownEncoderBlock2D, UpDecoderBlock2D)) for block in blocks)
        and isinstance(coder.mid_block, UNetMidBlock2D)
        and all(
            isinstance(r, ResnetBlock2D) and isinstance(r.norm1, nn.GroupNorm) and isinstance(r.norm2, nn.GroupNorm)
            and r.time_emb_proj is None and r.upsample is None and r.downsample is None
            for r in resnets
        )
        and isinstance(coder.conv_norm_out, nn.GroupNorm)
    )
    if not supported:
        raise ConfigError(
            f"the tiled VAE supports diffusers' standard AutoencoderKL {name} (GroupNorm resnet blocks); this "
            f"{type(coder).__name__} differs. Use TilingConfig(mode='never') or larger VAE tiles."
        )


@dataclass(frozen=True)
class _Tile:
    """One tile in input coordinates: ``core`` (the rows/cols it owns in the output) inside
    ``padded`` (the rows/cols it reads). Boxes are ``(y0, y1, x0, x1)``, end-exclusive."""

    core: tuple[int, int, int, int]
    padded: tuple[int, int, int, int]

    def scale_of(self, hidden: torch.Tensor) -> Fraction:
        """Resolution of this tile's activation relative to the input (1/8 in the encoder bottleneck)."""
        return Fraction(hidden.shape[-2], self.padded[1] - self.padded[0])

    def core_within(self, scale: Fraction) -> tuple[slice, slice]:
        """Where the core sits inside the tile's own activation at ``scale``."""
        (cy0, cy1, cx0, cx1), (py0, _, px0, _) = self.core, self.padded
        return (
            slice(_scaled(cy0 - py0, scale), _scaled(cy1 - py0, scale)),
            slice(_scaled(cx0 - px0, scale), _scaled(cx1 - px0, scale)),
        )


@dataclass(frozen=True)
class _TileGrid:
    height: int
    width: int
    tiles: tuple[_Tile, ...]

    @staticmethod
    def split(height: int, width: int, tile: int, pad: int, *, align: int) -> _TileGrid:
        """Near-equal cores of at most ``tile`` (rounded up to a multiple of ``align``), each padded by
        ``pad`` (rounded up to a multiple of ``align``) and clipped at the border. With ``align`` the
        network's downsampling factor, every tile border is a whole pixel at every resolution."""
        pad = _round_up(pad, align)

        def spans(length: int) -> list[tuple[int, int, int, int]]:
            core = _round_up(math.ceil(length / math.ceil(length / tile)), align)
            return [
                (start, min(start + core, length), max(start - pad, 0), min(start + core + pad, length))
                for start in range(0, length, core)
            ]

        tiles = tuple(
            _Tile(core=(cy0, cy1, cx0, cx1), padded=(py0, py1, px0, px1))
            for cy0, cy1, py0, py1 in spans(height)
            for cx0, cx1, px0, px1 in spans(width)
        )
        return _TileGrid(height, width, tiles)

    def crop(self, full: torch.Tensor, tile: _Tile, scale: Fraction) -> torch.Tensor:
        """The tile's padded region of a whole feature map at ``scale``."""
        py0, py1, px0, px1 = (_scaled(v, scale) for v in tile.padded)
        return full[:, :, py0:py1, px0:px1]

    def stitch(self, parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """The whole feature map assembled from every tile's core."""
        scale = self.tiles[0].scale_of(parts[0])
        first = parts[0]
        shape = (*first.shape[:2], _scaled(self.height, scale), _scaled(self.width, scale))
        out = torch.empty(shape, dtype=first.dtype, device=device)
        for tile, part in zip(self.tiles, parts):
            cy0, cy1, cx0, cx1 = (_scaled(v, scale) for v in tile.core)
            out[:, :, cy0:cy1, cx0:cx1] = part[(..., *tile.core_within(scale))]
        return out


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _scaled(value: int, scale: Fraction) -> int:
    scaled = value * scale
    if scaled.denominator != 1:
        raise InvalidInputError(f"tile border {value} does not map to a whole pixel at scale {scale}")
    return int(scaled)


def _core_moments(norm: nn.GroupNorm, hidden: torch.Tensor, tile: _Tile) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean, variance) per (sample, group) over the tile's core."""
    core = hidden[(..., *tile.core_within(tile.scale_of(hidden)))]
    grouped = core.reshape(core.shape[0], norm.num_groups, -1)
    if grouped.dtype in (torch.float16, torch.bfloat16):
        grouped = grouped.float()
    var, mean = torch.var_mean(grouped, dim=-1, correction=0)
    return grouped.shape[-1], mean.double(), var.double()


def _pooled_moments(moments: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the union of the cores (= the whole map), combined from per-tile moments
    (Chan et al.) in float64 to avoid cancellation."""
    total = sum(count for count, _, _ in moments)
    mean = sum(count * m for count, m, _ in moments) / total
    var = sum(count * (v + (m - mean) ** 2) for count, m, v in moments) / total
    return mean, var


def _group_norm_with_stats(norm: nn.GroupNorm, hidden: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``norm(hidden)`` with given per (sample, group) statistics instead of the tile's own."""
    compute = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    grouped = hidden.to(compute).reshape(hidden.shape[0], norm.num_groups, -1)
    mean = mean.to(device=hidden.device, dtype=compute)[..., None]
    inv_std = torch.rsqrt(var.to(device=hidden.device, dtype=compute) + norm.eps)[..., None]
    out = ((grouped - mean) * inv_std).reshape(hidden.shape)
    if norm.affine:
        out = out * norm.weight.to(compute)[:, None, None] + norm.bias.to(compute)[:, None, None]
    return out.to(hidden.dtype)


@dataclass
class _TileState:
    """A paused tile: its current activation and the residuals of the resnet blocks it is inside."""

    hidden: torch.Tensor
    residuals: list[torch.Tensor]


def _run_tiled(steps: list[_Step], grid: _TileGrid, x: torch.Tensor, *, offload: bool) -> torch.Tensor:
    """Run ``steps`` over every tile of ``x`` segment by segment (a segment ends at a barrier) and
    return the whole output map stitched from the tiles' cores, on ``x``'s device.

    With ``offload`` paused tiles wait in CPU memory, so the device holds one tile at a time (plus
    the small bottleneck map at a whole-map step); without it, all tiles stay on the device.
    """
    device = x.device

    def park(t: torch.Tensor) -> torch.Tensor:
        return t.to("cpu") if offload else t

    states = [_TileState(park(grid.crop(x, tile, Fraction(1))), []) for tile in grid.tiles]
    segment: list[_Step] = []
    pending: tuple[nn.GroupNorm, torch.Tensor, torch.Tensor] | None = None  # normalisation to apply first
    for step in [*steps, None]:
        if isinstance(step, (_Apply, _SaveResidual, _AddResidual)):
            segment.append(step)
            continue
        moments = []
        for tile, state in zip(grid.tiles, states):
            hidden = state.hidden.to(device)
            if pending is not None:
                norm, mean, var = pending
                hidden = _group_norm_with_stats(norm, hidden, mean, var)
            for op in segment:
                if isinstance(op, _Apply):
                    hidden = op.module(hidden)
                elif isinstance(op, _SaveResidual):
                    state.residuals.append(park(hidden))
                else:
                    residual = state.residuals.pop().to(device)
                    if op.shortcut is not None:
                        residual = op.shortcut(residual)
                    hidden = (residual + hidden) / op.output_scale_factor
            if isinstance(step, _Norm):
                moments.append(_core_moments(step.norm, hidden, tile))
            state.hidden = park(hidden)
            del hidden
        segment, pending = [], None
        if isinstance(step, _Norm):
            pending = (step.norm, *_pooled_moments(moments))
        elif isinstance(step, _WholeMap):
            full = step.block(grid.stitch([state.hidden for state in states], device))
            scale = grid.tiles[0].scale_of(states[0].hidden)
            for tile, state in zip(grid.tiles, states):
                state.hidden = park(grid.crop(full, tile, scale))
            del full
    return grid.stitch([state.hidden for state in states], device)
