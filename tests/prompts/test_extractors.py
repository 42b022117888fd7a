"""The prompt-extractor protocol: registry, the `prompt=` rule, empty/fixed/callable prompts, bad output."""

from __future__ import annotations

import logging
import numpy as np
import pytest
import torch
from PIL import Image

from elqproj.errors import ConfigError, InvalidInputError, UnknownNameError, WeightsNotFoundError
from elqproj.prompts import (
    CallablePrompt,
    EmptyPrompt,
    FixedPrompt,
    PromptExtractor,
    PromptResult,
    as_prompt_extractor,
    describe_prompt_extractor,
    list_prompt_extractors,
    load_prompt_extractor,
    register_prompt_extractor,
)
from elqproj.prompts import base
from elqproj.prompts.base import count_images, image_list

IMAGES = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class CountingTagger(PromptExtractor):
    """A registered third-party extractor: remembers how it was built."""

    name = "counting"

    def __init__(self, weights=None, *, device=None, dtype=None, revision=None, word="tag"):
        self.weights, self.revision, self.word = weights, revision, word

    def extract(self, images):
        return PromptResult(texts=[f"{self.word} {i}" for i in range(count_images(images))])


class BrokenTagger(PromptExtractor):
    name = "broken"

    def __init__(self, texts):
        self.texts = texts

    def extract(self, images):
        return PromptResult(texts=self.texts)


@pytest.fixture
def registry():
    """The built-in extractors only, entry points not yet discovered; registrations end with the test."""
    with base.PROMPT_EXTRACTORS.isolated() as registry:
        yield registry


def test_builtin_extractors_are_listed():
    assert {"none", "ram", "dape", "vlm"} <= set(list_prompt_extractors())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="Unknown prompt extractor 'blip'.*dape, none, ram, vlm"):
        load_prompt_extractor("blip")


def test_describe_tells_where_dape_comes_from():
    assert "Google Drive" in describe_prompt_extractor("DAPE")["default_weights"]


def test_none_gives_the_empty_prompt_for_every_image():
    for spec in (None, "none", "None"):
        extractor = as_prompt_extractor(spec)
        assert isinstance(extractor, EmptyPrompt)
        assert extractor(IMAGES) == ["", ""]
    assert load_prompt_extractor("none").extract(IMAGES).tags == [[], []]


def test_the_empty_prompt_has_no_weights():
    with pytest.raises(InvalidInputError, match="no weights"):
        load_prompt_extractor("none", weights="x.pth")


def test_an_extractor_is_used_as_is():
    tagger = CountingTagger()
    assert as_prompt_extractor(tagger) is tagger


def test_other_text_is_the_prompt_for_every_image():
    extractor = as_prompt_extractor("a photo of a dog")
    assert isinstance(extractor, FixedPrompt)
    assert extractor(IMAGES) == ["a photo of a dog"] * 2


def test_fixed_prompt_forces_literal_text_that_is_a_registered_name():
    assert FixedPrompt("dape")(IMAGES) == ["dape", "dape"]


def test_a_registered_name_loads_that_extractor(registry):
    register_prompt_extractor("counting", CountingTagger, description="test tagger")
    extractor = as_prompt_extractor("Counting")
    assert isinstance(extractor, CountingTagger) and extractor(IMAGES) == ["tag 0", "tag 1"]


def test_load_forwards_weights_revision_and_options(registry):
    register_prompt_extractor("counting", CountingTagger)
    extractor = load_prompt_extractor("counting", weights="org/tagger", revision="v1", word="label")
    assert (extractor.weights, extractor.revision, extractor(IMAGES[:1])) == ("org/tagger", "v1", ["label 0"])


def test_a_factory_path_is_imported_on_first_use(registry):
    register_prompt_extractor("lazy", "elqproj.prompts.fixed:load_empty_prompt")
    assert isinstance(load_prompt_extractor("lazy"), EmptyPrompt)


def test_registering_a_taken_name_needs_overwrite(registry):
    register_prompt_extractor("counting", CountingTagger)
    with pytest.raises(ConfigError, match="already registered"):
        register_prompt_extractor("counting", BrokenTagger)
    register_prompt_extractor("counting", BrokenTagger, overwrite=True)


def test_registering_something_not_callable_is_rejected(registry):
    with pytest.raises(InvalidInputError, match="callable factory"):
        register_prompt_extractor("bad", 42)


def test_a_factory_that_returns_no_extractor_is_a_config_error(registry):
    register_prompt_extractor("bad", lambda **kwargs: "not an extractor")
    with pytest.raises(ConfigError, match="not a PromptExtractor"):
        load_prompt_extractor("bad")


def _install_entry_point(line, tmp_path, monkeypatch):
    """Put a distribution declaring ``line`` in the prompt-extractor entry-point group on sys.path."""
    dist = tmp_path / "thirdparty_tagger-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-tagger\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{base.ENTRY_POINT_GROUP}]\n{line}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_third_party_extractors_come_from_entry_points(registry, tmp_path, monkeypatch):
    _install_entry_point(f"thirdparty = {__name__}:CountingTagger", tmp_path, monkeypatch)
    assert "thirdparty" in list_prompt_extractors()
    assert describe_prompt_extractor("thirdparty")["description"].startswith("third-party prompt extractor")
    assert load_prompt_extractor("thirdparty")(IMAGES) == ["tag 0", "tag 1"]


def test_an_entry_point_does_not_replace_a_builtin(registry, tmp_path, monkeypatch, caplog):
    _install_entry_point(f"RAM = {__name__}:CountingTagger", tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="elqproj.registry"):
        assert "ram" in list_prompt_extractors()
    assert "RAM=tests.prompts.test_extractors:CountingTagger" in caplog.text and "name is taken" in caplog.text
    assert registry.entry("ram").target == "elqproj.prompts.ram:load_ram"


def test_a_callable_returning_a_list_is_wrapped():
    extractor = as_prompt_extractor(lambda images: [f"image of {images.shape[-1]} px"] * len(images))
    assert isinstance(extractor, CallablePrompt)
    assert extractor(IMAGES) == ["image of 8 px"] * 2


def test_a_callable_returning_a_string_for_one_image():
    assert as_prompt_extractor(lambda image: "cat")(IMAGES[0]) == ["cat"]


@pytest.mark.parametrize("returned", [None, ["only one"], ["ok", 3], 7], ids=["none", "short", "non-str", "int"])
def test_unusable_callable_output_gives_empty_prompts_and_a_warning(returned, caplog):
    with caplog.at_level(logging.WARNING, logger="elqproj.prompts.base"):
        prompts = as_prompt_extractor(lambda images: returned)(IMAGES)
    expected = ["ok", ""] if returned == ["ok", 3] else ["", ""]
    assert prompts == expected
    assert "empty prompt" in caplog.text


def test_unusable_output_of_an_extractor_subclass_is_caught_by_call(caplog):
    with caplog.at_level(logging.WARNING, logger="elqproj.prompts.base"):
        assert BrokenTagger(None)(IMAGES) == ["", ""]
    assert "'broken'" in caplog.text


def test_errors_raised_by_a_callable_propagate():
    def failing(images):
        raise RuntimeError("tagger crashed")

    with pytest.raises(RuntimeError, match="tagger crashed"):
        as_prompt_extractor(failing)(IMAGES)


def test_anything_else_is_not_a_prompt():
    with pytest.raises(InvalidInputError, match="prompt=42"):
        as_prompt_extractor(42)


def test_dape_by_name_without_weights_points_to_the_download():
    with pytest.raises(WeightsNotFoundError, match="Google Drive"):
        as_prompt_extractor("dape")


def test_image_list_splits_batches_and_keeps_sizes():
    pil = Image.fromarray(np.zeros((5, 7, 3), dtype=np.uint8))
    images = image_list([IMAGES, pil, torch.rand(3, 4, 6)])
    assert [tuple(image.shape) for image in images] == [(3, 8, 8), (3, 8, 8), (3, 5, 7), (3, 4, 6)]
    assert count_images([IMAGES, pil, torch.rand(3, 4, 6)]) == 4


@pytest.mark.parametrize("bad", [[], torch.full((1, 3, 4, 4), float("nan")), torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
                                 "not/an/image.png", 3.5],
                         ids=["empty-list", "nan", "uint8-tensor", "missing-file", "float"])
def test_image_list_rejects_what_is_not_an_image(bad):
    with pytest.raises(InvalidInputError):
        image_list(bad)


def test_the_registry_shows_the_default_weights_the_loaders_use():
    from elqproj.prompts.ram import RAM_WEIGHTS
    from elqproj.prompts.vlm import DEFAULT_VLM

    assert describe_prompt_extractor("ram")["default_weights"] == RAM_WEIGHTS
    assert describe_prompt_extractor("vlm")["default_weights"] == DEFAULT_VLM
    assert "elqproj download dape" in describe_prompt_extractor("dape")["default_weights"]  # from the weights table
