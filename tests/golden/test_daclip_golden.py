"""Golden parity: the official DA-CLIP code on tiny random weights (tests/golden/data/daclip).

The official training-style checkpoint ``daclip_tiny.pt`` is loaded through ``load_prompt_extractor("daclip")``
exactly as a user loads ``daclip_ViT-B-32.pt`` (its official JSON config lies beside it). Every tensor the
official code recorded in ``cases.safetensors`` is reproduced within the set's tolerance (README.md: float
tensors atol = rtol = 1e-5, preprocessed images atol 1e-6, token ids and prompt rankings exact), from the
recorded model input and from the source images through our preprocessing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elqproj.prompts import load_prompt_extractor
from elqproj.prompts.daclip import DaCLIPTagger, daclip_pixel_values

GOLDEN = Path(__file__).parent / "data" / "daclip"
CASE_INFO = json.loads((GOLDEN / "case.json").read_text(encoding="utf-8"))
TENSORS = load_file(str(GOLDEN / "cases.safetensors"))
FLOAT_TOL = CASE_INFO["tolerance"]["float_tensors"]
PREPROCESS_ATOL = CASE_INFO["tolerance"]["images (preprocessing)"]["atol"]
CHECKPOINT = GOLDEN / "daclip_tiny.pt"
TAGS, TEMPLATE, DEGRADATIONS = CASE_INFO["tags"], CASE_INFO["template"], CASE_INFO["degradations"]
TOKEN_CASES = ["degradation_tokens", "tag_tokens"]
FLOAT_CASES = sorted(key for key, value in TENSORS.items()
                     if value.is_floating_point() and key != "images" and not key.endswith("_uint8"))


@functools.cache
def _tagger() -> DaCLIPTagger:
    return load_prompt_extractor("daclip", weights=CHECKPOINT, tag_list=TAGS, template=TEMPLATE,
                                 degradations=DEGRADATIONS, top_k=len(TAGS), device="cpu", progress=False)


def _sources() -> list[torch.Tensor]:
    """The recorded uint8 source images as (3, H, W) float tensors in [0, 1] (their sizes differ)."""
    return [TENSORS[f"{name}_uint8"].permute(2, 0, 1).float() / 255 for name in CASE_INFO["sources"]]


@functools.cache
def _recorded_quantities() -> dict[str, torch.Tensor]:
    """Every recorded quantity, from the recorded model input ``images``."""
    tagger = _tagger()
    model = tagger.model
    result = tagger.extract_pixel_values(TENSORS["images"])
    with torch.no_grad():
        tokens = {"degradation_tokens": model.tokenize(DEGRADATIONS),
                  "tag_tokens": model.tokenize([TEMPLATE.format(tag) for tag in TAGS])}
        return {
            **tokens,
            "image_features": result.content_features,
            "degradation_features": result.degradation_features,
            "plain_image_features": model.encode_image(TENSORS["images"], control=False),
            "degradation_text_features": model.encode_text(tokens["degradation_tokens"]),
            "degradation_probs": torch.tensor([[row[name] for name in DEGRADATIONS] for row in result.degradations]),
            "tag_text_features": model.encode_text(tokens["tag_tokens"]),
            "tag_scores": result.scores,
        }


@pytest.mark.golden
def test_golden_daclip_discovery_finds_every_recorded_tensor():
    assert FLOAT_CASES and set(FLOAT_CASES) | set(TOKEN_CASES) <= set(_recorded_quantities())


@pytest.mark.golden
@pytest.mark.parametrize("key", FLOAT_CASES, ids=lambda k: f"golden-daclip-{k}")
def test_golden_daclip_tensors(key):
    torch.testing.assert_close(_recorded_quantities()[key], TENSORS[key], **FLOAT_TOL)


@pytest.mark.golden
@pytest.mark.parametrize("key", TOKEN_CASES, ids=lambda k: f"golden-daclip-{k}")
def test_golden_daclip_token_ids_are_exact(key):
    assert torch.equal(_recorded_quantities()[key], TENSORS[key])


@pytest.mark.golden
def test_golden_daclip_preprocessing():
    produced = daclip_pixel_values(_sources(), CASE_INFO["config"]["vision_cfg"]["image_size"])
    torch.testing.assert_close(produced, TENSORS["images"], atol=PREPROCESS_ATOL, rtol=0)


@pytest.mark.golden
def test_golden_daclip_extract_on_the_source_images():
    """The user's path: source images in, prompts / similarities / degradation probabilities out."""
    result = _tagger().extract(_sources())
    torch.testing.assert_close(result.content_features, TENSORS["image_features"], **FLOAT_TOL)
    torch.testing.assert_close(result.degradation_features, TENSORS["degradation_features"], **FLOAT_TOL)
    torch.testing.assert_close(result.scores, TENSORS["tag_scores"], **FLOAT_TOL)
    probabilities = torch.tensor([[row[name] for name in DEGRADATIONS] for row in result.degradations])
    torch.testing.assert_close(probabilities, TENSORS["degradation_probs"], **FLOAT_TOL)


@pytest.mark.golden
def test_golden_daclip_prompts_rank_the_tags_as_the_official_scores_do():
    recorded = TENSORS["tag_scores"]
    ordered = recorded.sort(dim=1, descending=True).values
    assert (ordered[:, :-1] - ordered[:, 1:]).min() > FLOAT_TOL["atol"] + FLOAT_TOL["rtol"]  # a well-posed ranking
    expected = [[TAGS[i] for i in row] for row in recorded.argsort(dim=1, descending=True).tolist()]
    assert _tagger().extract(_sources()).tags == expected


@pytest.mark.golden
def test_golden_daclip_degradation_probabilities_on_the_source_images():
    rows = _tagger().degradation_probabilities(_sources())
    assert [list(row) for row in rows] == [DEGRADATIONS] * len(rows)
    torch.testing.assert_close(torch.tensor([list(row.values()) for row in rows]), TENSORS["degradation_probs"],
                               **FLOAT_TOL)


@pytest.mark.golden
def test_golden_daclip_config_beside_the_checkpoint_is_the_official_one():
    from elqproj.prompts.daclip_model import DaCLIPConfig

    assert _tagger().config == DaCLIPConfig.from_official(CASE_INFO["config"])
