"""The VLM prompt extractor on a tiny random Idefics3 (SmolVLM architecture) and the answer normaliser."""

from __future__ import annotations

import pytest
import torch

from elqproj.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from elqproj.prompts import load_prompt_extractor
from elqproj.prompts.vlm import DEFAULT_INSTRUCTION, VLMPromptExtractor, prompt_phrases
from tests.conftest import TINY_SD21


@pytest.mark.parametrize(
    "answer,phrases",
    [
        ("The image shows a dog sitting on the grass. The dog is brown.",
         ["dog sitting on the grass", "dog is brown"]),
        ("- Red ball\n- tree\n* Sky", ["red ball", "tree", "sky"]),
        ("1. cat; 2. sofa\n3) 3D glasses", ["cat", "sofa", "3d glasses"]),
        ("Keywords: Dog, dog, gray sky, ", ["dog", "gray sky"]),
        ('"A cat on a 2.5 m wall."', ["cat on a 2.5 m wall"]),
        ("", []),
    ],
    ids=["sentences", "bullets", "numbered", "duplicates", "quotes-and-decimals", "empty"],
)
def test_answers_become_keyword_phrases(answer, phrases):
    assert prompt_phrases(answer) == phrases


@pytest.fixture(scope="module")
def vlm(tiny_vlm) -> VLMPromptExtractor:
    return load_prompt_extractor("vlm", weights=tiny_vlm, max_new_tokens=6)


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 40, 48, generator=torch.Generator().manual_seed(0))


def test_one_normalised_prompt_per_image(vlm):
    result = vlm.extract(_images())
    assert len(result.texts) == 2
    assert result.texts == [", ".join(tags) for tags in result.tags]
    assert all(tags == prompt_phrases(text) for tags, text in zip(result.tags, result.texts))
    assert result.scores is None and result.image_features is None


def test_prompts_are_reproducible_and_independent_of_the_batch(vlm):
    images = _images()
    batched = vlm(images)
    assert vlm(images) == batched
    assert [vlm(image)[0] for image in images] == batched


def test_images_of_different_sizes_in_one_call(vlm):
    assert len(vlm([_images(1)[0], torch.rand(3, 20, 30)])) == 2


def _spy_on_generate(extractor, monkeypatch) -> dict:
    """The keyword arguments of the extractor's next ``model.generate`` call (filled in when it runs)."""
    seen = {}
    generate = extractor.model.generate

    def spy(**inputs):
        seen.update(inputs)
        return generate(**inputs)

    monkeypatch.setattr(extractor.model, "generate", spy)
    return seen


def test_the_instruction_and_the_image_reach_the_model(tiny_vlm, monkeypatch):
    extractor = load_prompt_extractor("vlm", weights=tiny_vlm, instruction="describe the image", max_new_tokens=2)
    seen = _spy_on_generate(extractor, monkeypatch)
    extractor(_images(1))
    assert "describe the image" in extractor.processor.decode(seen["input_ids"][0])
    assert seen["pixel_values"].shape[0] == 1


def test_without_an_instruction_the_model_is_asked_the_default_question(vlm, monkeypatch):
    """The default instruction (describe the content as if the degradations were removed) is what the
    model reads when the caller gives none."""
    seen = _spy_on_generate(vlm, monkeypatch)
    vlm(_images(1))
    asked = seen["input_ids"][0].tolist()
    expected = vlm.processor.tokenizer(DEFAULT_INSTRUCTION, add_special_tokens=False).input_ids
    assert any(asked[i:i + len(expected)] == expected for i in range(len(asked))), "the default instruction's tokens"


def test_bfloat16_runs(tiny_vlm):
    extractor = load_prompt_extractor("vlm", weights=tiny_vlm, dtype=torch.bfloat16, max_new_tokens=2)
    assert extractor.dtype == torch.bfloat16 and len(extractor(_images())) == 2


def test_a_model_that_is_not_image_text_to_text_is_a_mismatch():
    with pytest.raises(CheckpointMismatchError, match="not an image-text-to-text model"):
        load_prompt_extractor("vlm", weights=TINY_SD21 / "text_encoder")


def test_a_processor_without_chat_template_is_rejected(vlm):
    processor = vlm.processor
    template, processor.chat_template = processor.chat_template, None
    try:
        with pytest.raises(ConfigError, match="no chat template"):
            VLMPromptExtractor(vlm.model, processor)
    finally:
        processor.chat_template = template


def test_a_missing_model_offline_is_weights_not_found():
    with pytest.raises(WeightsNotFoundError, match="no-such-org/no-such-vlm"):
        load_prompt_extractor("vlm", weights="no-such-org/no-such-vlm")
