"""Tiled latent processing and the tiled VAE (elqproj.tiling)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from elqproj.errors import ConfigError, InvalidInputError
from elqproj.tiling import (
    LatentPosterior,
    TilingConfig,
    gaussian_tile_weights,
    tile_origins,
    tiled_latent_apply,
    vae_decode,
    vae_encode,
)
from tests.conftest import TINY_SD21


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(TINY_SD21 / "vae").eval()


def _smooth(shape: tuple[int, ...], seed: int = 0, detail: int = 16) -> torch.Tensor:
    """A smooth random field in [-1, 1]: bicubic upsampling of a coarse random grid."""
    *lead, height, width = shape
    coarse = torch.rand(*lead, height // detail, width // detail, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1


# ---------------------------------------------------------------------------------------------
# Config


def test_defaults_are_the_official_ones_and_round_trip_to_json():
    config = TilingConfig()
    assert (config.mode, config.latent_tile, config.latent_overlap) == ("auto", 96, 32)
    assert (config.vae_encoder_tile, config.vae_encoder_pad, config.vae_decoder_tile, config.vae_decoder_pad) == (
        1024, 32, 224, 11)
    custom = TilingConfig(mode="always", latent_tile=64, vae_offload=False)
    assert TilingConfig.model_validate_json(custom.model_dump_json()) == custom
    assert TilingConfig.model_validate(custom.model_dump()) == custom


@pytest.mark.parametrize(
    "values",
    [{"latent_tile": 32, "latent_overlap": 32}, {"latent_tile": 0}, {"latent_tile": 2, "latent_overlap": 0},
     {"vae_decoder_pad": -1}, {"mode": "sometimes"}, {"tile": 64}],
    ids=["overlap-not-below-tile", "zero-tile", "tile-too-small-for-a-unet", "negative-pad", "unknown-mode",
         "unknown-field"],
)
def test_invalid_config_is_a_config_error(values):
    with pytest.raises(ConfigError, match="TilingConfig"):
        TilingConfig(**values)
    with pytest.raises(ConfigError):
        TilingConfig.model_validate(values)


def test_auto_mode_uses_the_official_thresholds():
    config = TilingConfig()
    assert not config.latent_needs_tiling(96, 96) and config.latent_needs_tiling(96, 97)
    assert not config.latent_needs_tiling(40, 200)  # by area, as the official code: 8000 <= 96**2
    assert not config.encoder_needs_tiling(1088, 512) and config.encoder_needs_tiling(1096, 512)
    assert not config.decoder_needs_tiling(246, 100) and config.decoder_needs_tiling(247, 100)


def test_always_and_never_modes():
    always, never = TilingConfig(mode="always"), TilingConfig(mode="never")
    assert always.latent_needs_tiling(40, 200) and not always.latent_needs_tiling(96, 96)
    assert always.encoder_needs_tiling(1032, 8) and always.decoder_needs_tiling(225, 8)
    assert not never.latent_needs_tiling(1000, 1000)
    assert not never.encoder_needs_tiling(9000, 9000) and not never.decoder_needs_tiling(900, 900)


# ---------------------------------------------------------------------------------------------
# Latent tiles


def test_tile_origins_match_the_official_example():
    # S3Diff golden README, latent_tiled case: width 16, tile 8, overlap 3 -> x offsets 0, 5, 8.
    assert tile_origins(16, 8, 3) == [0, 5, 8]
    assert tile_origins(8, 8, 3) == [0]


@pytest.mark.parametrize(
    "length, tile, overlap",
    [(n, t, o) for n, t, o in itertools.product([8, 13, 96, 97, 200, 385], [8, 32, 96], [0, 3, 7]) if n >= t],
)
def test_tile_origins_cover_the_axis_and_snap_the_last_tile(length, tile, overlap):
    origins = tile_origins(length, tile, overlap)
    assert origins[0] == 0 and origins[-1] == length - tile
    assert all(b - a <= tile - overlap for a, b in zip(origins, origins[1:]))  # no gaps, at least `overlap`
    assert origins[:-1] == [k * (tile - overlap) for k in range(len(origins) - 1)]
    assert len(origins) == 1 or origins[-2] + tile < length  # no tile is redundant


def test_tile_origins_reject_an_overlap_as_large_as_the_tile():
    with pytest.raises(InvalidInputError, match="overlap"):
        tile_origins(100, 8, 8)


def test_gaussian_weights_follow_the_official_formula_with_its_asymmetry():
    weights = gaussian_tile_weights(6, 8)
    assert weights.shape == (6, 8) and weights.dtype == torch.float64

    def g(u: float, midpoint: float, n: int) -> float:
        return math.exp(-((u - midpoint) ** 2) / n**2 / (2 * 0.01)) / math.sqrt(2 * math.pi * 0.01)

    assert weights[2, 5].item() == pytest.approx(g(2, 6 / 2, 6) * g(5, (8 - 1) / 2, 8), rel=1e-12)
    assert torch.equal(weights, weights.flip(1))  # x: symmetric around (w - 1) / 2
    assert torch.equal(weights[1:4], weights[3:6].flip(0)) and not torch.equal(weights, weights.flip(0))  # y: around h / 2


def test_latent_that_fits_one_tile_is_passed_through_unchanged():
    latent = torch.randn(2, 4, 8, 6)
    calls = []

    def fn(x):
        calls.append(x)
        return x * 3

    out = tiled_latent_apply(fn, latent, tile=8, overlap=3)
    assert len(calls) == 1 and calls[0] is latent and torch.equal(out, latent * 3)


def test_tiles_are_visited_x_outer_y_inner_like_the_official_loop():
    visited = []

    def fn(x):
        visited.append(x[0, 0, 0, 0].item())
        return x

    index = torch.arange(20 * 14, dtype=torch.float32).reshape(1, 1, 20, 14)  # value = y * 14 + x
    tiled_latent_apply(fn, index, tile=8, overlap=3)
    ys, xs = tile_origins(20, 8, 3), tile_origins(14, 8, 3)
    assert visited == [y * 14 + x for x in xs for y in ys]


def test_blending_is_the_gaussian_weighted_mean_of_the_tiles():
    """Each tile returns its own index as a constant: the output is sum(w_k * k) / sum(w_k)."""
    latent = torch.zeros(1, 4, 12, 16)
    origins = [(y, x) for x in tile_origins(16, 8, 3) for y in tile_origins(12, 8, 3)]
    count = iter(range(len(origins)))
    out = tiled_latent_apply(lambda x: torch.full_like(x[:, :2], float(next(count))), latent, tile=8, overlap=3)

    weights = gaussian_tile_weights(8, 8)
    numerator, denominator = torch.zeros(12, 16, dtype=torch.float64), torch.zeros(12, 16, dtype=torch.float64)
    for k, (y, x) in enumerate(origins):
        numerator[y : y + 8, x : x + 8] += k * weights
        denominator[y : y + 8, x : x + 8] += weights
    assert out.shape == (1, 2, 12, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 1], (numerator / denominator).float(), atol=1e-5, rtol=0)


def test_pointwise_function_gives_the_untiled_result():
    latent = torch.randn(2, 4, 20, 27, generator=torch.Generator().manual_seed(0))
    mix = torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(1))

    def fn(x):
        return torch.tanh(F.conv2d(x, mix))

    torch.testing.assert_close(tiled_latent_apply(fn, latent, tile=8, overlap=3), fn(latent), atol=1e-6, rtol=0)


def test_local_smooth_function_agrees_closely_with_the_untiled_result():
    """A 5x5 blur of a smooth latent, tiles of 16 with overlap 6: measured max |diff| 0.0044
    (values up to 1; the blur's zero padding at tile borders is the only difference, and the
    Gaussian weights all but ignore tile borders). Uniform instead of Gaussian weights gives 0.36,
    no blending (the last tile wins) 0.63."""
    latent = _smooth((1, 4, 48, 64), seed=2, detail=8)
    kernel = torch.ones(4, 1, 5, 5) / 25

    def fn(x):
        return F.conv2d(x, kernel, padding=2, groups=4)

    diff = (tiled_latent_apply(fn, latent, tile=16, overlap=6) - fn(latent)).abs()
    assert diff.max() < 0.02


def test_latent_thinner_than_the_overlap_is_tiled_without_hanging():
    latent = torch.randn(1, 4, 6, 200)
    visited = []

    def fn(x):
        visited.append(x.shape)
        return x

    out = tiled_latent_apply(fn, latent, tile=96, overlap=32)  # tile side 6 <= overlap 32
    torch.testing.assert_close(out, latent)
    assert all(shape[-2:] == (6, 6) for shape in visited)


def test_function_that_changes_the_tile_size_is_refused():
    with pytest.raises(InvalidInputError, match="must map"):
        tiled_latent_apply(lambda x: x[..., :-1], torch.randn(1, 4, 8, 20), tile=8, overlap=3)


# ---------------------------------------------------------------------------------------------
# VAE


def test_untiled_encode_and_decode_are_the_plain_vae(vae):
    x = _smooth((1, 3, 64, 48))
    with torch.no_grad():
        posterior = vae_encode(vae, x, TilingConfig())
        reference = vae.encode(x).latent_dist
        assert torch.equal(posterior.mean, reference.mean) and torch.equal(posterior.std, reference.std)
        assert torch.equal(posterior.logvar, reference.logvar)
        z = reference.mean
        assert torch.equal(vae_decode(vae, z, TilingConfig(mode="never")), vae.decode(z).sample)


def test_posterior_sample_takes_explicit_noise(vae):
    with torch.no_grad():
        posterior = vae_encode(vae, _smooth((1, 3, 32, 32)), TilingConfig())
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(posterior.sample(noise=noise), posterior.mean + posterior.std * noise)
    drawn = posterior.sample(generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn, posterior.sample(noise=noise))
    with pytest.raises(InvalidInputError, match="shape"):
        posterior.sample(noise=torch.randn(1, 4, 3, 3))


def test_tiled_encode_with_full_context_equals_the_untiled_encoder(vae):
    """2x2 tiles whose padded reads span the whole image, so every tile sees all the context: the
    statistics pooled from the tiles' cores must equal the whole-map ones and the cores must be
    stitched in place. Measured max |diff| 2.2e-6 (mean and logvar, values up to 1.1); pooling by
    averaging the tiles' variances (ignoring the spread of their means) gives 0.13."""
    x = _smooth((2, 3, 64, 64))
    with torch.no_grad():
        tiled = vae_encode(vae, x, TilingConfig(mode="always", vae_encoder_tile=32, vae_encoder_pad=32))
        reference = vae.encode(x).latent_dist
    assert isinstance(tiled, LatentPosterior) and tiled.mean.shape == (2, 4, 8, 8)
    torch.testing.assert_close(tiled.mean, reference.mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(tiled.logvar, reference.logvar, atol=1e-4, rtol=0)


def test_tiled_decode_with_full_context_equals_the_untiled_decoder(vae):
    """As above for the decoder (2x2 tiles of 4 latents, pad 4 on an 8x8 latent): measured
    max |diff| 8.9e-6 on outputs up to 2.1; averaging the tiles' variances gives 0.98."""
    z = _smooth((1, 4, 8, 8), seed=3, detail=2) * 2
    with torch.no_grad():
        tiled = vae_decode(vae, z, TilingConfig(mode="always", vae_decoder_tile=4, vae_decoder_pad=4))
        reference = vae.decode(z).sample
    assert tiled.shape == (1, 3, 64, 64)
    torch.testing.assert_close(tiled, reference, atol=1e-4, rtol=0)


def test_tiled_encode_agrees_closely_with_the_untiled_encoder(vae):
    """3x3 tiles of 32 px with 32 px pads on a 96 px image (the corner tiles miss a third of the
    image). Measured on the posterior mean (values up to 1.3): max |diff| 0.042, mean 0.007. With
    per-tile GroupNorm statistics: max 0.35, mean 0.072; diffusers' own tiling reading 64 px tiles
    deviates by max 0.67."""
    x = _smooth((1, 3, 96, 96), seed=1)
    with torch.no_grad():
        tiled = vae_encode(vae, x, TilingConfig(mode="always", vae_encoder_tile=32, vae_encoder_pad=32)).mean
        reference = vae.encode(x).latent_dist.mean
    diff = (tiled - reference).abs()
    assert diff.max() < 0.1 and diff.mean() < 0.015


def test_tiled_decode_agrees_closely_with_the_untiled_decoder(vae):
    """3x3 tiles of 4 latents with 4-latent pads on a 12x12 latent. The random-weight tiny decoder
    reaches ~10 latents beyond the attention (where tiles are refreshed from the whole map), more
    than the pad, so the seams are visible in the maximum: measured max |diff| 0.48, mean 0.017 on
    outputs up to 3.2. With per-tile GroupNorm statistics: max 2.2, mean 0.165."""
    with torch.no_grad():
        z = vae.encode(_smooth((1, 3, 96, 96), seed=1)).latent_dist.mean
        tiled = vae_decode(vae, z, TilingConfig(mode="always", vae_decoder_tile=4, vae_decoder_pad=4))
        reference = vae.decode(z).sample
    diff = (tiled - reference).abs()
    assert diff.max() < 0.75 and diff.mean() < 0.03


def test_offloading_tiles_to_the_cpu_changes_nothing(vae):
    x = _smooth((1, 3, 64, 64))
    with torch.no_grad():
        kept, parked = (
            vae_encode(vae, x, TilingConfig(mode="always", vae_encoder_tile=32, vae_encoder_pad=16, vae_offload=o)).mean
            for o in (False, True)
        )
    assert torch.equal(kept, parked)


def test_encode_input_must_be_a_multiple_of_the_vae_factor(vae):
    with pytest.raises(InvalidInputError, match="multiples of 8.*pad_to_multiple"):
        vae_encode(vae, torch.zeros(1, 3, 30, 32), TilingConfig())


def test_tiling_an_unsupported_vae_is_a_config_error(vae):
    odd = copy.deepcopy(vae)
    odd.decoder.conv_norm_out = nn.Identity()
    with pytest.raises(ConfigError, match="mode='never'"):
        vae_decode(odd, torch.zeros(1, 4, 8, 8), TilingConfig(mode="always", vae_decoder_tile=4))
