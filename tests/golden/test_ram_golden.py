"""Golden parity: the official RAM code and SeeSR's DAPE on tiny random weights (shared/golden/ram).

The official checkpoints (``ram_tiny.pth``, ``dape_tiny.pth`` and their ``.safetensors`` copies) are loaded
through ``load_prompt_extractor`` exactly as a user loads the released files: the architecture is read from
the checkpoint, the tag list and thresholds come from the set's ``tags/`` files. Every recorded tensor of
every model in ``cases.safetensors`` and every tag string in ``case.json`` is reproduced within the README's
tolerance (float tensors atol = rtol = 1e-4, preprocessed images atol 1e-5, tag strings and targets exact).
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file

from elqproj.conversion import convert_component
from elqproj.prompts import PromptResult, load_prompt_extractor
from elqproj.prompts.ram import RAMTagger, ram_pixel_values
from tests.conftest import golden_set

GOLDEN = golden_set("ram")
CASE_INFO = json.loads((GOLDEN / "case.json").read_text(encoding="utf-8"))
TENSORS = load_file(str(GOLDEN / "cases.safetensors"))
TOL = CASE_INFO["tolerance"]
FLOAT_TOL = TOL["float_tensors"]
PREPROCESS_ATOL = TOL["images/seesr_images (preprocessing)"]["atol"]
TAGS = GOLDEN / "tags" / "ram_tag_list.txt"
TAGS_CHINESE = GOLDEN / "tags" / "ram_tag_list_chinese.txt"
THRESHOLDS = GOLDEN / "tags" / "ram_tag_list_threshold.txt"

# Every model recorded in the set (the prefixes of its logits: "ram", "dape") and every source image.
MODELS = sorted(key.removesuffix("_logits") for key in TENSORS if key.endswith("_logits"))
SOURCES = sorted(key for key in TENSORS if key.startswith("src") and key.endswith("_uint8"))
FLOAT_CASES = [(model, key[len(model) + 1:]) for model in MODELS for key in sorted(TENSORS)
               if key.startswith(model + "_")]
STRING_CASES = [(model, key) for model in MODELS for key, value in CASE_INFO[model].items()
                if key.startswith(("tags", "seesr_ram_without_dape_tags")) and isinstance(value, list)]


def _load(model: str, fmt: str = "pth", **options) -> RAMTagger:
    """The public loader on the official files, as for the released ram_swin_large_14m.pth / DAPE.pth."""
    files = {"tag_list": TAGS, "tag_thresholds": THRESHOLDS, **options}
    if model == "ram":
        return load_prompt_extractor("ram", weights=GOLDEN / f"ram_tiny.{fmt}", **files)
    return load_prompt_extractor("dape", weights=GOLDEN / f"dape_tiny.{fmt}",
                                 ram_weights=GOLDEN / f"ram_tiny.{fmt}", **files)


def _sources() -> list[torch.Tensor]:
    """The recorded uint8 source images as (3, H, W) float tensors in [0, 1] (their sizes differ)."""
    return [TENSORS[name].permute(2, 0, 1).float() / 255 for name in SOURCES]


def _targets(tagger: RAMTagger, tags: list[list[str]]) -> torch.Tensor:
    """Per-image tag lists -> the official (B, num_classes) 0/1 target matrix."""
    targets = torch.zeros(len(tags), len(tagger.tags))
    for row, names in enumerate(tags):
        targets[row, [tagger.tags.index(name) for name in names]] = 1.0
    return targets


@functools.cache
def _recorded_quantities(model: str) -> dict[str, torch.Tensor]:
    """Every recorded quantity, computed once per model on the recorded model input ``images``."""
    tagger = _load(model)
    images = TENSORS["images"]
    with torch.no_grad():
        swin_out = tagger.model.encode_image(images)
        queries = tagger.model.label_queries()
        tagging_embed = tagger.model.tagging_head(queries.expand(images.shape[0], -1, -1),
                                                  tagger.model.image_proj(swin_out))
        result = tagger.tag_pixel_values(images)
        return {
            "swin_out": swin_out,
            "image_embeds": result.image_features,
            "wordvec_proj_out": tagger.model.wordvec_proj(tagger.model.label_embed),
            "label_embed_relu": queries,
            "tagging_embed": tagging_embed,
            "logits": tagger.model.fc(tagging_embed).squeeze(-1),
            "probs": result.scores,
            "targets": _targets(tagger, result.tags),
            "class_threshold": tagger.thresholds,
        }


@functools.cache
def _extracted_from_sources(model: str) -> PromptResult:
    """The user's path: source images in, ``extract`` out (RAM's own preprocessing, as recorded)."""
    return _load(model, preprocessing="ram").extract(_sources())


@pytest.mark.golden
def test_golden_ram_discovery_finds_every_recorded_tensor():
    assert MODELS and SOURCES and STRING_CASES
    assert {quantity for _, quantity in FLOAT_CASES} <= set(_recorded_quantities(MODELS[0]))


@pytest.mark.golden
@pytest.mark.parametrize("case", FLOAT_CASES, ids=lambda c: f"golden-ram-{c[0]}-{c[1]}")
def test_golden_ram_tensors(case):
    model, quantity = case
    produced, expected = _recorded_quantities(model)[quantity], TENSORS[f"{model}_{quantity}"]
    if quantity == "targets":
        assert torch.equal(produced, expected)
    else:
        torch.testing.assert_close(produced, expected, **FLOAT_TOL)


@pytest.mark.golden
@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"golden-ram-{m}-safetensors-copy")
def test_golden_ram_safetensors_copies_load_the_same_weights(model):
    from_pth, from_safetensors = _load(model, "pth"), _load(model, "safetensors")
    assert from_safetensors.config == from_pth.config
    for key, value in from_pth.model.state_dict().items():
        assert torch.equal(from_safetensors.model.state_dict()[key], value), key


@pytest.mark.golden
@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"golden-ram-{m}-converted-folder")
def test_golden_ram_converted_folders_load_the_same_weights(model, tmp_path):
    """`elqproj convert ram` / `elqproj convert dape` folders give the official weights back."""
    files = {"tag_list": TAGS, "tag_thresholds": THRESHOLDS}
    ram = convert_component("ram", GOLDEN / "ram_tiny.pth", tmp_path / "ram")
    if model == "ram":
        converted = load_prompt_extractor("ram", weights=ram, **files)
    else:
        dape = convert_component("dape", GOLDEN / "dape_tiny.pth", tmp_path / "dape")
        converted = load_prompt_extractor("dape", weights=dape, ram_weights=ram, **files)
    official = _load(model)
    assert converted.config == official.config
    for key, value in official.model.state_dict().items():
        assert torch.equal(converted.model.state_dict()[key], value), key


@pytest.mark.golden
@pytest.mark.parametrize("key,preprocessing", [("images", "ram"), ("seesr_images", "seesr")],
                         ids=["golden-ram-preprocess-images", "golden-ram-preprocess-seesr_images"])
def test_golden_ram_preprocessing(key, preprocessing):
    produced = ram_pixel_values(_sources(), TENSORS[key].shape[-1], preprocessing)
    torch.testing.assert_close(produced, TENSORS[key], atol=PREPROCESS_ATOL, rtol=0)


@pytest.mark.golden
@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"golden-ram-{m}-extract")
def test_golden_ram_extract_on_the_source_images(model):
    """``extract`` gives the recorded prompts (SeeSR's ", " format), probabilities and SeeSR features."""
    result = _extracted_from_sources(model)
    assert [", ".join(tags) for tags in result.tags] == result.texts
    torch.testing.assert_close(result.image_features, TENSORS[f"{model}_image_embeds"], **FLOAT_TOL)
    torch.testing.assert_close(result.scores, TENSORS[f"{model}_probs"], **FLOAT_TOL)
    if CASE_INFO[model]["separator"] == ", ":
        assert result.texts == CASE_INFO[model]["tags"]


def _options_for(model: str, key: str) -> tuple[str, dict]:
    """Which model and loader options reproduce the official call behind ``case.json[model][key]``."""
    info = CASE_INFO[model]
    options: dict = {"separator": info["separator"]}
    if "chinese" in key:
        options["tag_list"] = TAGS_CHINESE
    if "with_delete" in key:
        options["exclude_tags"] = info["delete_tag_index"]
    # SeeSR's RAMLora without a DAPE file is plain RAM, formatted with SeeSR's ", ".
    return ("ram" if key.startswith("seesr_ram_without_dape") else model), options


@pytest.mark.golden
@pytest.mark.parametrize("case", STRING_CASES, ids=lambda c: f"golden-ram-{c[0]}-{c[1]}")
def test_golden_ram_tag_strings(case):
    """Each recorded string from the loader's separator / tag list / exclusion options (exact match)."""
    model, key = case
    scored_by, options = _options_for(model, key)
    tagger = _load(scored_by, **options)
    assert tagger.prompts_from_scores(_extracted_from_sources(scored_by).scores).texts == CASE_INFO[model][key]


@pytest.mark.golden
def test_golden_ram_official_config_files_give_the_inferred_architecture():
    assert _load("ram", config=GOLDEN / "config").config == _load("ram").config
