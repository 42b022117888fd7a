"""Presets and config validation: every bad value is a ConfigError naming the field."""

from __future__ import annotations

import pytest

from elqproj.degradations import DegradationConfig, DegradationPipeline, presets
from elqproj.errors import ConfigError, UnknownNameError


def _stage1_blur(**update) -> dict:
    data = presets.REALESRGAN.model_dump()
    data["stage1"]["blur"].update(update)
    return data


def test_presets_are_valid_and_named():
    assert {name: DegradationPipeline(name).config.name for name in ("realesrgan", "osediff", "elq")} == {
        "realesrgan": "realesrgan",
        "osediff": "osediff",
        "elq": "elq",
    }


def test_preset_names_are_case_insensitive():
    assert presets.get_preset("ELQ") is presets.ELQ


def test_unknown_preset_lists_the_choices():
    with pytest.raises(UnknownNameError, match="elq"):
        presets.get_preset("extreme")


def test_osediff_is_realesrgan_without_usm_and_with_resize_back():
    expected = presets.REALESRGAN.model_dump() | {"name": "osediff", "usm": None, "resize_back": True}
    assert presets.OSEDIFF.model_dump() == expected


def test_elq_draws_a_final_scale_between_4_and_8_and_resizes_back():
    assert presets.ELQ.final_scale == (4, 8) and presets.ELQ.resize_back


def test_config_round_trips_through_json():
    assert DegradationConfig.model_validate_json(presets.ELQ.model_dump_json()) == presets.ELQ


def test_unordered_range_is_rejected():
    with pytest.raises(ConfigError, match=r"stage1.blur.sigma_range.*not ordered"):
        DegradationConfig.model_validate(_stage1_blur(sigma_range=(3.0, 0.2)))


def test_probabilities_must_sum_to_one():
    probs = dict(presets.REALESRGAN.stage1.blur.kernel_probs, iso=0.5)
    with pytest.raises(ConfigError, match="sum to 1"):
        DegradationConfig.model_validate(_stage1_blur(kernel_probs=probs))


@pytest.mark.parametrize("sizes", [(7, 8), (1, 3)])
def test_kernel_sizes_must_be_odd_and_at_least_3(sizes):
    with pytest.raises(ConfigError, match="odd and >= 3"):
        DegradationConfig.model_validate(_stage1_blur(kernel_sizes=sizes))


def test_jpeg_quality_range_must_lie_in_1_100():
    data = presets.REALESRGAN.model_dump()
    data["stage2"]["jpeg_range"] = (0.0, 95.0)
    with pytest.raises(ConfigError, match=r"stage2.jpeg_range.*\[1, 100\]"):
        DegradationConfig.model_validate(data)


def test_a_probability_above_one_is_rejected():
    with pytest.raises(ConfigError, match="second_blur_prob"):
        DegradationConfig(**(presets.REALESRGAN.model_dump() | {"second_blur_prob": 1.5}))


def test_beta_range_must_contain_one():
    with pytest.raises(ConfigError, match="contain 1"):
        DegradationConfig.model_validate(_stage1_blur(betap_range=(1.5, 2.0)))


def test_unknown_fields_are_rejected():
    with pytest.raises(ConfigError, match="sinc_probability"):
        DegradationConfig.model_validate(_stage1_blur(sinc_probability=0.2))


def test_the_pipeline_revalidates_configs_edited_with_model_copy():
    edited = presets.ELQ.model_copy(update={"final_scale": (8, 4)})  # pydantic does not validate this
    with pytest.raises(ConfigError, match="final_scale"):
        DegradationPipeline(edited)
