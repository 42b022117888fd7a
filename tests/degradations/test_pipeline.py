"""DegradationPipeline: sample/apply separation, shapes, reproducibility, batching, gradients, bad input."""

from __future__ import annotations

import pytest
import torch

from elqproj.degradations import DegradationParams, DegradationPipeline, ResizeParams, SincKernel, presets
from elqproj.errors import InvalidInputError

from .conftest import assert_grid_close


def _params(preset, batch_size: int, seed: int) -> DegradationParams:
    return DegradationPipeline(preset).sample(batch_size, torch.Generator().manual_seed(seed))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1 / ((a - b) ** 2).mean())).item()


@pytest.mark.parametrize(
    ("preset", "size"),
    [(presets.REALESRGAN, 32), (presets.OSEDIFF, 128), (presets.ELQ, 128)],
    ids=["realesrgan", "osediff", "elq"],
)
def test_output_size_and_8_bit_grid(photos, preset, size):
    lq, _ = DegradationPipeline(preset)(photos, seed=0)
    assert lq.shape == (2, 3, size, size) and lq.dtype == photos.dtype
    assert lq.min() >= 0 and lq.max() <= 1
    torch.testing.assert_close(lq * 255, (lq * 255).round(), rtol=0, atol=1e-4)


def test_the_same_seed_gives_the_same_params_and_output(photos):
    pipe = DegradationPipeline(presets.ELQ)
    (lq_a, params_a), (lq_b, params_b) = pipe(photos, seed=3), pipe(photos, seed=3)
    assert params_a == params_b
    torch.testing.assert_close(lq_a, lq_b, rtol=0, atol=0)


def test_different_seeds_give_different_params():
    assert _params(presets.ELQ, 2, 0) != _params(presets.ELQ, 2, 1)


def test_call_with_a_seed_is_sample_then_apply(photos):
    pipe = DegradationPipeline(presets.OSEDIFF)
    lq, params = pipe(photos, seed=5)
    assert params == pipe.sample(2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(pipe.apply(photos, params), lq, rtol=0, atol=0)


def test_params_round_trip_through_json_and_reproduce_the_output(photos):
    pipe = DegradationPipeline(presets.ELQ)
    params = pipe.sample(2, torch.Generator().manual_seed(7))
    restored = DegradationParams.model_validate_json(params.model_dump_json())
    assert restored == params
    torch.testing.assert_close(pipe.apply(photos, restored), pipe.apply(photos, params), rtol=0, atol=0)


def test_a_batch_equals_its_images_degraded_one_by_one(photos):
    pipe = DegradationPipeline(presets.ELQ)
    params = pipe.sample(2, torch.Generator().manual_seed(11))
    batched = pipe.apply(photos, params)
    for index, single in enumerate(params.split()):
        # Grouped vs single convolutions may round differently: rare 1/255 flips.
        assert_grid_close(batched[index : index + 1], pipe.apply(photos[index : index + 1], single))


def test_sampled_choices_stay_inside_the_elq_ranges():
    config, params = presets.ELQ, _params(presets.ELQ, 64, 2)
    assert 4 <= params.final_scale <= 8 and params.resize_back_mode in config.final_resize_modes
    assert all(config.stage1.jpeg_range[0] <= q <= config.stage1.jpeg_range[1] for q in params.jpeg1)
    assert all(config.stage2.jpeg_range[0] <= q <= config.stage2.jpeg_range[1] for q in params.jpeg2)
    noise = config.stage1.noise
    strength_range = noise.sigma_range if params.noise1.kind == "gaussian" else noise.poisson_scale_range
    assert all(strength_range[0] <= s <= strength_range[1] for s in params.noise1.strength)
    assert config.stage1.resize.range[0] <= params.resize1.scale <= config.stage1.resize.range[1]


def test_elq_degrades_more_than_ordinary_lq(photos):
    hq = photos.repeat(4, 1, 1, 1)
    lq, _ = DegradationPipeline(presets.OSEDIFF)(hq, seed=0)
    elq, _ = DegradationPipeline(presets.ELQ)(hq, seed=0)
    assert _psnr(elq, hq) < _psnr(lq, hq)


def test_differentiable_apply_passes_gradients_to_the_input(photos):
    pipe = DegradationPipeline(presets.OSEDIFF)
    params = pipe.sample(2, torch.Generator().manual_seed(4))
    hq = photos.clone().requires_grad_(True)
    pipe.apply(hq, params, differentiable=True).mean().backward()
    assert torch.isfinite(hq.grad).all() and hq.grad.abs().sum().item() > 0


def test_differentiable_apply_stays_close_to_the_hard_one(photos):
    pipe = DegradationPipeline(presets.OSEDIFF)
    params = pipe.sample(2, torch.Generator().manual_seed(4))
    soft, hard = pipe.apply(photos, params, differentiable=True), pipe.apply(photos, params)
    assert (soft - hard).abs().mean().item() < 2 / 255


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_float_dtypes_give_the_float32_result_in_their_dtype(photos, dtype):
    pipe, params = DegradationPipeline(presets.OSEDIFF), _params(presets.OSEDIFF, 2, 6)
    images = photos.to(dtype)
    lq = pipe.apply(images, params)
    assert lq.dtype == dtype
    reference = pipe.apply(images.float(), params).to(dtype)
    # float64 may round differently in the JPEG and the final quantisation: rare 1/255 flips.
    assert (lq.double() - reference.double()).abs().gt(1e-6).float().mean().item() < 0.005


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ((torch.rand(2, 3, 64, 64) * 255).to(torch.uint8), "float"),
        (torch.rand(3, 64, 64), r"\(B, 3, H, W\)"),
        (torch.rand(2, 1, 64, 64), r"\(B, 3, H, W\)"),
        (torch.rand(2, 3, 64, 64) * 2, r"\[0, 1\]"),
        (torch.full((2, 3, 64, 64), float("nan")), "NaN"),
        ("image.png", "torch.Tensor"),
    ],
    ids=["uint8", "unbatched", "gray", "out-of-range", "nan", "path"],
)
def test_bad_images_are_rejected(images, message):
    with pytest.raises(InvalidInputError, match=message):
        DegradationPipeline(presets.OSEDIFF)(images, seed=0)


def test_the_batch_must_match_the_params(photos):
    with pytest.raises(InvalidInputError, match="sampled for 3 images but the batch has 2"):
        DegradationPipeline(presets.OSEDIFF).apply(photos, _params(presets.OSEDIFF, 3, 0))


def test_images_too_small_for_the_degradation_name_the_step():
    params = _params(presets.ELQ, 1, 0).model_copy(
        update={"final_scale": 8, "final_sinc": [SincKernel(size=21, cutoff=2.0)], "blur2": None,
                "resize1": ResizeParams(direction="keep", scale=1.0, mode="area")}
    )
    with pytest.raises(InvalidInputError, match="final resize and sinc filter: a 21x21 kernel.*5x5"):
        DegradationPipeline(presets.ELQ).apply(torch.rand(1, 3, 40, 40), params)


def test_params_with_mismatched_per_sample_lists_are_rejected():
    data = _params(presets.OSEDIFF, 2, 0).model_dump()
    data["jpeg2"] = data["jpeg2"][:1]
    with pytest.raises(InvalidInputError, match="same non-zero length"):
        DegradationParams.model_validate(data)


def test_params_with_a_jpeg_quality_outside_1_100_are_rejected():
    data = _params(presets.OSEDIFF, 1, 0).model_dump()
    data["jpeg1"] = [150.0]
    with pytest.raises(InvalidInputError, match="jpeg1"):
        DegradationParams.model_validate(data)
