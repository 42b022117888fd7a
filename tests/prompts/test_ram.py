"""RAM and DAPE taggers: loading official checkpoints, tag selection, features, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from elqproj.errors import (
    CheckpointMismatchError,
    ConfigError,
    DeviceError,
    InvalidInputError,
    WeightsNotFoundError,
)
from elqproj.hub import load_checkpoint
from elqproj.prompts import load_prompt_extractor
from elqproj.prompts.ram import RAMTagger, ram_pixel_values
from elqproj.prompts.ram_model import RAMConfig, merge_dape_lora
from tests.prompts.conftest import TINY_RAM_CONFIG, TINY_TAGS, dape_lora


def _images(batch: int = 2, size: tuple[int, int] = (40, 56), seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ram(tiny_ram) -> RAMTagger:
    return load_prompt_extractor("ram", **tiny_ram.load_options())


def test_loading_the_official_checkpoint_reproduces_the_saved_model(tiny_ram, ram):
    pixels = ram.pixel_values(_images())
    with torch.no_grad():
        expected = tiny_ram.model(pixels)
        produced = ram.model(pixels)
    torch.testing.assert_close(produced.logits, expected.logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(produced.image_embeds, expected.image_embeds, atol=1e-6, rtol=1e-6)


def test_architecture_is_read_from_the_checkpoint(ram):
    assert ram.config == TINY_RAM_CONFIG


def test_a_bare_safetensors_state_dict_loads_like_the_pth(tiny_ram, ram, tmp_path):
    state = load_checkpoint(tiny_ram.checkpoint)["model"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ram.safetensors")
    copy = load_prompt_extractor("ram", **{**tiny_ram.load_options(), "weights": tmp_path / "ram.safetensors"})
    assert torch.equal(copy.extract(_images()).scores, ram.extract(_images()).scores)


def test_a_folder_is_searched_for_the_official_file_name(tiny_ram):
    tagger = load_prompt_extractor("ram", **{**tiny_ram.load_options(), "weights": tiny_ram.checkpoint.parent})
    assert tagger.config == TINY_RAM_CONFIG


def test_tags_are_those_strictly_above_their_threshold_in_tag_list_order(ram):
    scores = torch.tensor([[0.9, 0.5, 0.51, 0.2, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.6]])
    result = ram.prompts_from_scores(scores)
    assert result.tags == [["dog", "tree", "3D glasses"], ["zebra crossing "]]
    assert result.texts == ["dog, tree, 3D glasses", "zebra crossing "]


def test_extract_returns_scores_tags_and_the_image_features(ram):
    result = ram.extract(_images(batch=3))
    assert result.scores.shape == (3, len(TINY_TAGS)) and result.scores.dtype == torch.float32
    assert result.image_features.shape == (3, TINY_RAM_CONFIG.num_image_tokens, 512)
    assert result.tags == ram.prompts_from_scores(result.scores).tags
    assert result.texts == [", ".join(tags) for tags in result.tags]


def test_calling_the_tagger_gives_the_prompts(ram):
    images = _images()
    assert ram(images) == ram.extract(images).texts


def test_separator_and_excluded_tags(tiny_ram):
    tagger = load_prompt_extractor("ram", **tiny_ram.load_options(), separator=" | ", exclude_tags=["dog", 4])
    result = tagger.prompts_from_scores(torch.full((1, len(TINY_TAGS)), 0.9))
    assert result.texts == ["cat | tree | sky | zebra crossing "]


def test_one_threshold_for_every_class_replaces_the_file(tiny_ram):
    tagger = load_prompt_extractor("ram", **tiny_ram.load_options(), threshold=0.0)
    assert tagger.extract(_images(batch=1)).tags == [TINY_TAGS]


def test_unknown_excluded_tag_names_the_closest_tags(tiny_ram):
    with pytest.raises(ConfigError, match="'dgo' is not a tag; did you mean"):
        load_prompt_extractor("ram", **tiny_ram.load_options(), exclude_tags=["dgo"])


def test_images_of_different_sizes_and_kinds_in_one_call(ram):
    pil = Image.fromarray((np.random.default_rng(0).random((30, 20, 3)) * 255).astype(np.uint8))
    result = ram.extract([_images(batch=1, size=(64, 64))[0], pil, _images(batch=2, size=(90, 70))])
    assert len(result.texts) == 4 and result.image_features.shape[0] == 4


def test_ram_preprocessing_quantises_to_8_bit_and_seesr_does_not_antialias():
    image = _images(batch=1, size=(128, 128))[0]
    ram_input = ram_pixel_values([image], 64, "ram")
    seesr_input = ram_pixel_values([image], 64, "seesr")
    quantised = ram_pixel_values([(image * 255).round() / 255], 64, "ram")
    assert torch.equal(ram_input, quantised)
    assert ram_input.shape == seesr_input.shape == (1, 3, 64, 64)
    assert not torch.allclose(ram_input, seesr_input, atol=1e-2)


def test_unknown_preprocessing_is_a_config_error(tiny_ram):
    with pytest.raises(ConfigError, match="preprocessing='pil'"):
        load_prompt_extractor("ram", **tiny_ram.load_options(), preprocessing="pil")


def test_images_outside_0_1_are_rejected(ram):
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        ram(_images() * 2 - 1)


def test_half_precision_keeps_float32_scores(tiny_ram):
    tagger = load_prompt_extractor("ram", **tiny_ram.load_options(), dtype=torch.bfloat16)
    result = tagger.extract(_images())
    assert result.image_features.dtype == torch.bfloat16 and result.scores.dtype == torch.float32


def test_an_unavailable_device_is_a_device_error(ram):
    with pytest.raises(DeviceError, match="cuda:99"):
        ram.to("cuda:99")


def test_a_tag_list_of_another_length_is_a_mismatch(tiny_ram):
    with pytest.raises(CheckpointMismatchError, match="6 classes, but the tag list has 2 tags"):
        load_prompt_extractor("ram", **{**tiny_ram.load_options(), "tag_list": ["dog", "cat"]})


def test_weights_of_another_model_are_a_mismatch(tmp_path, tiny_ram):
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(4, 4, 3, 3)}}, tmp_path / "unet.pth")
    with pytest.raises(CheckpointMismatchError, match="not a RAM checkpoint"):
        load_prompt_extractor("ram", **{**tiny_ram.load_options(), "weights": tmp_path / "unet.pth"})


def test_unknown_keys_are_named(tmp_path, tiny_ram):
    checkpoint = load_checkpoint(tiny_ram.checkpoint)
    checkpoint["model"]["reweight_scale"] = torch.zeros(1)  # RAM++, not RAM
    torch.save(checkpoint, tmp_path / "ram_plus.pth")
    with pytest.raises(CheckpointMismatchError, match="unexpected 1: \\['reweight_scale'\\]"):
        load_prompt_extractor("ram", **{**tiny_ram.load_options(), "weights": tmp_path / "ram_plus.pth"})


def test_a_config_that_does_not_fit_names_the_shape_mismatches(tiny_ram):
    wider = TINY_RAM_CONFIG.model_copy(update={"embed_dim": 16})
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_prompt_extractor("ram", **{**tiny_ram.load_options(), "config": wider})


def test_unknown_config_fields_are_a_config_error(tiny_ram):
    with pytest.raises(ConfigError, match="image_res"):
        load_prompt_extractor("ram", **{**tiny_ram.load_options(), "config": {"image_res": 64}})


def test_official_config_files_with_inconsistent_widths_are_rejected(tmp_path):
    (tmp_path / "q2l_config.json").write_text('{"hidden_size": 16, "num_hidden_layers": 2, '
                                              '"num_attention_heads": 2, "intermediate_size": 32}')
    (tmp_path / "swin_config.json").write_text('{"image_res": 64, "window_size": 4, "embed_dim": 8, '
                                               '"depths": [1, 1], "num_heads": [1, 1], "vision_width": 1536}')
    with pytest.raises(ConfigError, match="vision_width 1536"):
        RAMConfig.from_official_dir(tmp_path)


def test_default_weights_offline_and_not_cached_is_weights_not_found():
    with pytest.raises(WeightsNotFoundError, match="recognize_anything_model"):
        load_prompt_extractor("ram")


# ------------------------------------------------------------------------------------------ DAPE


def _dape(tiny_ram, tmp_path, lora) -> RAMTagger:
    torch.save(lora, tmp_path / "DAPE.pth")
    return load_prompt_extractor("dape", weights=tmp_path / "DAPE.pth", ram_weights=tiny_ram.checkpoint,
                                 **{k: v for k, v in tiny_ram.load_options().items() if k != "weights"})


def test_dape_with_zero_lora_is_ram(tiny_ram, ram, tmp_path):
    state = load_checkpoint(tiny_ram.checkpoint)["model"]
    dape = _dape(tiny_ram, tmp_path, dape_lora(state, zero=True))
    assert dape.name == "dape" and dape.preprocessing == "seesr"
    pixels = ram.pixel_values(_images())
    with torch.no_grad():
        torch.testing.assert_close(dape.model(pixels).logits, ram.model(pixels).logits, atol=0, rtol=0)


def test_dape_lora_updates_q_and_v_of_every_swin_qkv_and_leaves_k(tiny_ram):
    state = load_checkpoint(tiny_ram.checkpoint)["model"]
    lora = dape_lora(state)
    merged = merge_dape_lora(state, lora)
    key = "visual_encoder.layers.0.blocks.0.attn.qkv"
    a, b, dim = lora[f"{key}.lora_A"], lora[f"{key}.lora_B"], state[f"{key}.weight"].shape[1]
    delta = merged[f"{key}.weight"] - state[f"{key}.weight"]
    torch.testing.assert_close(delta[:dim], b[:dim] @ a[:8] / 8)
    assert torch.equal(delta[dim:2 * dim], torch.zeros(dim, dim))
    torch.testing.assert_close(delta[2 * dim:], b[dim:] @ a[8:] / 8)


def test_dape_lora_on_the_tagging_head_query_and_key(tiny_ram):
    state = load_checkpoint(tiny_ram.checkpoint)["model"]
    lora = dape_lora(state)
    merged = merge_dape_lora(state, lora)
    for name in ("query", "key", "value"):
        key = f"tagging_head.encoder.layer.1.crossattention.self.{name}"
        expected = (state[f"{key}.weight"] + lora[f"{key}.lora_B"] @ lora[f"{key}.lora_A"] / 8
                    if f"{key}.lora_A" in lora else state[f"{key}.weight"])
        torch.testing.assert_close(merged[f"{key}.weight"], expected)


def test_dape_changes_the_tagger_outputs(tiny_ram, ram, tmp_path):
    state = load_checkpoint(tiny_ram.checkpoint)["model"]
    dape = _dape(tiny_ram, tmp_path, dape_lora(state))
    pixels = ram.pixel_values(_images())
    with torch.no_grad():
        assert not torch.allclose(dape.model(pixels).logits, ram.model(pixels).logits)


def test_dape_offline_without_weights_says_where_they_come_from_and_how_to_get_them():
    with pytest.raises(WeightsNotFoundError, match=r"Google Drive.*elqproj download dape"):
        load_prompt_extractor("dape")


def test_a_full_ram_checkpoint_given_as_dape_weights_is_a_mismatch(tiny_ram, tmp_path):
    with pytest.raises(CheckpointMismatchError, match="pass it as ram_weights="):
        _dape(tiny_ram, tmp_path, load_checkpoint(tiny_ram.checkpoint)["model"])


def test_dape_lora_for_another_ram_is_a_mismatch(tiny_ram, tmp_path):
    lora = dape_lora(load_checkpoint(tiny_ram.checkpoint)["model"])
    del lora["visual_encoder.layers.3.blocks.0.attn.qkv.lora_A"]
    with pytest.raises(CheckpointMismatchError, match="missing 1 LoRA tensors"):
        _dape(tiny_ram, tmp_path, lora)


def test_missing_default_weights_offline_name_the_option_that_gives_them():
    from elqproj.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="--prompt-weights"):
        load_prompt_extractor("ram", device="cpu")  # default weights: not cached, offline
