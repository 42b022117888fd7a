"""Golden parity: the official SeeSR code on tiny random weights (shared/golden/seesr).

The official ``seesr/`` folder (UNet file with only the image attentions, as the official turbo loader
reads it, plus the ControlNet) is loaded through ``load_restorer("seesr", ...)`` on top of the tiny
SD2.1 fixture, exactly as a user loads the release. Every case in case.json / cases.safetensors is
reproduced within the README's tolerance (``recommended_tolerance``): the step-0 network outputs, the VAE
start point, every denoising step, the decoded image, the colour fixes and the uint8 images of the full
PIL path. The recorded tags and RAM-feature stand-in replace DAPE, as in the recorded run; the recorded
random draws are injected (the VAE posterior noise, the generator's seed, the initial noise).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from elqproj import load_restorer
from elqproj.adapters.seesr import SeeSRConditioning, guided_noise, official_prompt, predict_noise, upscale_like_official
from elqproj.colorfix import apply_color_fix
from elqproj.tiling import TilingConfig, gaussian_tile_weights, tile_origins, vae_decode, vae_encode
from tests.conftest import TINY_SD21, golden_set
from tests.golden.parity import assert_adain_uint8_close, assert_uint8_close
from tests.golden.sources import SOURCES, weights_from

GOLDEN = golden_set("seesr")
INFO = json.loads((GOLDEN / "case.json").read_text())
TENSORS = load_file(str(GOLDEN / "cases.safetensors"))
ARGS = INFO["cli_args_used"]
CASES = list(INFO["cases"])
TOLERANCE = INFO["recommended_tolerance"]
IDS = {case: f"golden-seesr-{case}" for case in CASES}
UINT8_MAX_FRACTION = 0.005


def _tensor(case: str, name: str) -> torch.Tensor:
    return TENSORS[f"{case}/{name}"]


def _keys(case: str, pattern: str) -> list[re.Match]:
    """Matches of ``pattern`` among the names recorded for ``case``, in key order."""
    matches = (re.fullmatch(pattern, key[len(case) + 1:]) for key in TENSORS if key.startswith(case + "/"))
    return sorted((m for m in matches if m), key=lambda m: m.group(0))


def _color_fixes(case: str) -> list[str]:
    return [m.group(1) for m in _keys(case, r"final_(\w+)_uint8_hwc")]


def _close(actual: torch.Tensor, expected: torch.Tensor, case: str, what: str) -> None:
    tol = TOLERANCE[case]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol["rtol"], atol=tol["atol"],
                               msg=lambda m: f"{case}/{what}: {m}")


def _assert_uint8_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """README: exact given bit-matching floats; ±1 where the float path differs by ~1e-5."""
    assert_uint8_close(actual, expected, what, max_fraction=UINT8_MAX_FRACTION)


def _hwc(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float on the k/255 grid -> (H, W, 3) uint8."""
    return (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


LQ = Image.fromarray(TENSORS["inputs/lq_uint8_hwc"].numpy())
FEATURES = TENSORS["inputs/ram_encoder_hidden_states"]
CONDITION = TENSORS["inputs/upscaled_lq_uint8_hwc"].permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module", params=SOURCES)
def restorer(request, tmp_path_factory):
    """The official seesr folder, and the folder `elqproj convert seesr` makes of it."""
    weights = weights_from(request.param, "seesr", GOLDEN / "seesr", tmp_path_factory)
    return load_restorer("seesr", weights=weights, base_model=TINY_SD21, device="cpu")


def _restore(restorer, case: str, color_fix: str, *, inject_initial_noise: bool):
    """The official script's run of ``case`` through ``restore``, with the recorded draws injected.

    The generator is seeded as in the recorded run. With ``inject_initial_noise`` the recorded initial
    noise is passed as ``latents=`` and the generator is advanced past that draw, as the official
    pipeline's generator would be.
    """
    settings = INFO["cases"][case]
    generator = torch.Generator("cpu").manual_seed(INFO["seed"])
    latents = None
    if inject_initial_noise:
        latents = _tensor(case, "init_noise")
        torch.randn(latents.shape, generator=generator)
    steps = []
    image = restorer.restore(
        LQ,
        prompt=INFO["ram_tags_stand_in"],
        image_features=FEATURES,
        generator=generator,
        latents=latents,
        encoder_noise=_tensor(case, "vae_posterior_noise")[0:1],  # README: only row 0 is used
        steps=settings["num_inference_steps"],
        guidance_scale=settings["guidance_scale"],
        conditioning_scale=ARGS["conditioning_scale"],
        extra_prompt=ARGS["prompt"],
        added_prompt=ARGS["added_prompt"],
        negative_prompt=ARGS["negative_prompt"],
        process_size=ARGS["process_size"],
        upscale=ARGS["upscale"],
        start_point=ARGS["start_point"],
        start_steps=ARGS["start_steps"],
        color_fix=color_fix,
        tiling=_tiling(case),
        callback=steps.append,
        progress=False,
    )
    return image, steps


def _tiling(case: str) -> TilingConfig:
    settings = INFO["cases"][case]
    return TilingConfig(latent_tile=settings["latent_tiled_size"], latent_overlap=settings["latent_tiled_overlap"])


def noise_pred_from_recorded_input(restorer, case: str, index: int) -> torch.Tensor:
    """The guided ε of step ``index`` of ``case`` computed from that step's *recorded* input latents,
    with the recorded prompts, RAM-feature stand-in and condition image: ``(1, 4, h, w)``."""
    settings = INFO["cases"][case]
    embeds = restorer.encode_prompt([INFO["validation_prompt"], ARGS["negative_prompt"]])
    conditioning = SeeSRConditioning(condition=CONDITION, prompt_embeds=embeds[0:1], negative_embeds=embeds[1:2],
                                     image_embeds=FEATURES)
    with torch.no_grad():
        _, eps = guided_noise(restorer.unet, restorer.controlnet, _tensor(case, f"step{index}_latents_in"),
                              torch.tensor(settings["timesteps"][index]), conditioning,
                              guidance_scale=settings["guidance_scale"],
                              conditioning_scale=ARGS["conditioning_scale"], tiling=_tiling(case))
    return eps


@pytest.mark.golden
def test_golden_seesr_prompt_and_tokens(restorer):
    prompt = official_prompt(INFO["ram_tags_stand_in"], ARGS["prompt"], ARGS["added_prompt"])
    assert prompt == INFO["validation_prompt"]
    ids = restorer.tokenizer([prompt, ARGS["negative_prompt"]], padding="max_length",
                             max_length=restorer.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
    assert torch.equal(ids[0], TENSORS["inputs/prompt_input_ids"])
    assert torch.equal(ids[1], TENSORS["inputs/negative_input_ids"])


@pytest.mark.golden
def test_golden_seesr_upscaled_condition():
    upscaled = upscale_like_official(LQ, process_size=ARGS["process_size"], upscale=ARGS["upscale"])
    np.testing.assert_array_equal(np.asarray(upscaled), TENSORS["inputs/upscaled_lq_uint8_hwc"].numpy())


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=IDS.get)
def test_golden_seesr_networks_at_step0(restorer, case):
    """ControlNet residuals and UNet outputs (with and without them) on the recorded step-0 inputs."""
    x, t, embeds = (_tensor(case, k) for k in ("fwd0_latent_model_input", "fwd0_timestep", "fwd0_prompt_embeds"))
    batch, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    condition = CONDITION[:, :, : 8 * h, : 8 * w].repeat(batch, 1, 1, 1)  # README: the first tile's crop at (0, 0)
    features = FEATURES.repeat(batch, 1, 1)
    with torch.no_grad():
        down, mid = restorer.controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=condition,
                                        conditioning_scale=ARGS["conditioning_scale"], return_dict=False,
                                        image_encoder_hidden_states=features)
        with_residuals = restorer.unet(x, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                                       mid_block_additional_residual=mid, image_encoder_hidden_states=features).sample
        alone = restorer.unet(x, t, encoder_hidden_states=embeds, image_encoder_hidden_states=features).sample
    recorded_down = [_tensor(case, m.group(0)) for m in
                     sorted(_keys(case, r"fwd0_controlnet_down_(\d+)"), key=lambda m: int(m.group(1)))]
    assert len(down) == len(recorded_down)
    for i, (ours, theirs) in enumerate(zip(down, recorded_down)):
        _close(ours, theirs, case, f"fwd0_controlnet_down_{i}")
    _close(mid, _tensor(case, "fwd0_controlnet_mid"), case, "fwd0_controlnet_mid")
    _close(with_residuals, _tensor(case, "fwd0_unet_out"), case, "fwd0_unet_out")
    _close(alone, _tensor(case, "fwd0_unet_out_no_controlnet"), case, "fwd0_unet_out_no_controlnet")
    positive = restorer.encode_prompt([INFO["validation_prompt"]])
    _close(positive, embeds[-1:], case, "fwd0_prompt_embeds (positive row)")


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=IDS.get)
def test_golden_seesr_vae_start_point(restorer, case):
    noise = _tensor(case, "vae_posterior_noise")[0:1]
    with torch.no_grad():
        posterior = vae_encode(restorer.vae, CONDITION * 2 - 1, restorer.tiling)
        lr_latents = restorer.encode_image(CONDITION, noise)
    for name, value in (("vae_posterior_mean", posterior.mean), ("vae_posterior_std", posterior.std)):
        recorded = _tensor(case, name)
        _close(value.expand_as(recorded), recorded, case, name)  # the recorded batch repeats one image
    _close(lr_latents, _tensor(case, "lr_latent_scaled"), case, "lr_latent_scaled")


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=IDS.get)
def test_golden_seesr_each_step_from_recorded_input(restorer, case):
    """Each step's guided ε (ControlNet, UNet, tiles, CFG), computed from the step's recorded input
    latents, within the README tolerance: the step function itself is the official one."""
    for index in range(len(INFO["cases"][case]["timesteps"])):
        eps = noise_pred_from_recorded_input(restorer, case, index)
        _close(eps, _tensor(case, f"step{index}_noise_pred_cfg"), case, f"step{index}_noise_pred_cfg (recorded input)")


# The guided ε of a step computed from *our* previous step's latents. Those differ from the recorded
# ones by float32 reduction order (≤ 3.3e-5, varying with the thread count), and on these tiny random
# weights a step can amplify its input difference ~170x (CFG 5.5 included): the tiled case's step 1
# moves by 2.67e-3 between thread counts, and its official-vs-ours difference (≤ 2.66e-3 at 1, 2, 3,
# 4 and 8 threads) lies within that spread. Measured with
#   python -m tests.golden.spread seesr --threads 1 2 3 4 8 --repeats 2
# (torch 2.14.1, 2-core x86-64; repeated runs are bit-identical). The tolerance is 2x that spread, for
# every case. Each step's ε from the *recorded* input is held to the README tolerance
# (test_golden_seesr_each_step_from_recorded_input); the chained latents are too.
CHAINED_NOISE_PRED_ATOL = 5.3e-3


def _close_chained_noise_pred(actual: torch.Tensor, expected: torch.Tensor, case: str, index: int) -> None:
    tol = TOLERANCE[case]
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=max(tol["atol"], CHAINED_NOISE_PRED_ATOL),
                               msg=lambda m: f"{case}/step{index}_noise_pred_cfg (chained): {m}")


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=IDS.get)
def test_golden_seesr_denoising_and_decoding(restorer, case):
    """Every step's tensors, the final latents, the decoded image and the colour fixes, with the recorded
    initial noise injected through ``latents=``."""
    _, steps = _restore(restorer, case, "none", inject_initial_noise=True)
    step_names = _keys(case, r"step(\d+)_latents_out")
    assert [s.timestep for s in steps] == INFO["cases"][case]["timesteps"]
    assert len(steps) == len(step_names)
    _close(steps[0].latents_in, _tensor(case, "start_latents"), case, "start_latents")
    for step in steps:
        i = step.index
        _close(step.latents_in, _tensor(case, f"step{i}_latents_in"), case, f"step{i}_latents_in")
        if f"{case}/step{i}_unet_out" in TENSORS:
            _close(step.model_output, _tensor(case, f"step{i}_unet_out"), case, f"step{i}_unet_out")
        _close_chained_noise_pred(step.noise_pred, _tensor(case, f"step{i}_noise_pred_cfg"), case, i)
        _close(step.latents, _tensor(case, f"step{i}_latents_out"), case, f"step{i}_latents_out")
    final = steps[-1].latents
    _close(final, _tensor(case, "final_latents"), case, "final_latents")
    with torch.no_grad():
        decoded = vae_decode(restorer.vae, final / restorer.vae.config.scaling_factor, restorer.tiling)
        output = restorer.decode_latents(final)
    _close(decoded, _tensor(case, "vae_decoded"), case, "vae_decoded")
    _close(output, _tensor(case, "pipeline_output_float"), case, "pipeline_output_float")
    _assert_uint8_close(_hwc((output * 255).round() / 255), _tensor(case, "pipeline_output_uint8_hwc").numpy(),
                        f"{case}/pipeline_output_uint8_hwc")
    for fix in _color_fixes(case):
        _close(apply_color_fix(output, CONDITION, fix), _tensor(case, f"{fix}_float"), case, f"{fix}_float")
        if f"{case}/{fix}_from_uint8_float" in TENSORS:
            # The script's chain from its uint8 output; fed the recorded uint8 image, because ours may
            # differ by the ±1 the README allows.
            recorded_uint8 = _tensor(case, "pipeline_output_uint8_hwc").permute(2, 0, 1)[None].float() / 255
            from_uint8 = apply_color_fix(recorded_uint8, CONDITION, fix)
            _close(from_uint8, _tensor(case, f"{fix}_from_uint8_float"), case, f"{fix}_from_uint8_float")


@pytest.mark.golden
@pytest.mark.parametrize(
    ("case", "fix"),
    [(case, fix) for case in CASES for fix in _color_fixes(case)],
    ids=[f"golden-seesr-{case}-{fix}" for case in CASES for fix in _color_fixes(case)],
)
def test_golden_seesr_pil_output(restorer, case, fix):
    """PIL in -> PIL out: the script's saved image (uint8 pipeline output, colour fix, truncation, resize)."""
    image, _ = _restore(restorer, case, fix, inject_initial_noise=False)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    ours, expected, what = np.asarray(image), _tensor(case, f"final_{fix}_uint8_hwc").numpy(), f"{case}/final_{fix}"
    if fix == "adain":  # AdaIN reads the rounded uint8 output: its one-level differences may grow by the gain
        unfixed, _ = _restore(restorer, case, "none", inject_initial_noise=False)
        assert_adain_uint8_close(ours, expected, what, before_actual=np.asarray(unfixed),
                                 before_expected=_tensor(case, "pipeline_output_uint8_hwc").numpy(),
                                 source=TENSORS["inputs/upscaled_lq_uint8_hwc"].numpy(), max_fraction=UINT8_MAX_FRACTION)
    else:
        _assert_uint8_close(ours, expected, what)


TILED = [case for case in CASES if _keys(case, r"step0_tile(\d+)_unet_in")]


@pytest.mark.golden
@pytest.mark.parametrize("case", TILED, ids=IDS.get)
def test_golden_seesr_latent_tiles(restorer, case):
    """Tile weights, the tile grid and order, and each tile's step-0 UNet output."""
    settings = INFO["cases"][case]
    x, t, embeds = (_tensor(case, k) for k in ("step0_latents_in", "fwd0_timestep", "fwd0_prompt_embeds"))
    size = settings["tile_size_latent"]
    recorded_weights = _tensor(case, "tile_weights")
    _close(gaussian_tile_weights(size, size).expand_as(recorded_weights), recorded_weights, case, "tile_weights")
    overlap = settings["latent_tiled_overlap"]
    origins = [(x0, y0) for x0 in tile_origins(x.shape[-1], size, overlap) for y0 in tile_origins(x.shape[-2], size, overlap)]
    assert origins == [tuple(o) for o in settings["tile_order_latent_offsets_xy"]]
    batch = embeds.shape[0]
    for match in sorted(_keys(case, r"step0_tile(\d+)_unet_in"), key=lambda m: int(m.group(1))):
        j = int(match.group(1))
        x0, y0 = origins[j]
        tile_in = x.repeat(batch, 1, 1, 1)[:, :, y0:y0 + size, x0:x0 + size]
        _close(tile_in, _tensor(case, f"step0_tile{j}_unet_in"), case, f"step0_tile{j}_unet_in")
        condition = CONDITION[:, :, 8 * y0:8 * (y0 + size), 8 * x0:8 * (x0 + size)].repeat(batch, 1, 1, 1)
        with torch.no_grad():
            tile_out = predict_noise(restorer.unet, restorer.controlnet, tile_in, t, condition, embeds,
                                     FEATURES.repeat(batch, 1, 1), conditioning_scale=ARGS["conditioning_scale"])
        _close(tile_out, _tensor(case, f"step0_tile{j}_unet_out"), case, f"step0_tile{j}_unet_out")
