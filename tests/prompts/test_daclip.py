"""The DA-CLIP prompt extractor: loading official checkpoints, degradation probabilities, zero-shot tags,
bad checkpoints, and the extractor in a pipeline and on the command line.

The model is the golden set's tiny DA-CLIP (tests/golden/data/daclip): an official training-style checkpoint
with its official JSON config beside it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elqproj import Projector, load_restorer
from elqproj.errors import CheckpointMismatchError, ConfigError, UnsafeCheckpointError, WeightsNotFoundError
from elqproj.hub import load_checkpoint
from elqproj.pipeline import RestorationPipeline
from elqproj.prompts import describe_prompt_extractor, list_prompt_extractors, load_prompt_extractor
from elqproj.prompts.daclip import DEGRADATIONS, DaCLIPPromptResult, DaCLIPTagger
from elqproj.prompts.daclip_model import DaCLIPConfig, infer_daclip_config, official_daclip_state
from elqproj.weights import COMPONENTS
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21, populate_hf_cache

GOLDEN = Path(__file__).parents[1] / "golden" / "data" / "daclip"
CHECKPOINT = GOLDEN / "daclip_tiny.pt"
CONFIG_FILE = GOLDEN / "daclip_tiny.json"
TAGS = ["dog", "cat", "3D glasses", "zebra crossing", "tree", "sky", "t-shirt", "mountain"]


def _images(batch: int = 2, size: tuple[int, int] = (40, 56), seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _load(**options) -> DaCLIPTagger:
    return load_prompt_extractor("daclip", **{"weights": CHECKPOINT, "tag_list": TAGS, "device": "cpu",
                                              "progress": False, **options})


@pytest.fixture(scope="module")
def daclip() -> DaCLIPTagger:
    return _load(top_k=3)


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    return official_daclip_state(load_checkpoint(CHECKPOINT))


def _same_weights(a: DaCLIPTagger, b: DaCLIPTagger) -> bool:
    theirs = b.model.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in a.model.state_dict().items())


def _copy_with_config(state_or_checkpoint: dict, path: Path) -> Path:
    """``state_or_checkpoint`` saved at ``path`` with the official config beside it."""
    torch.save(state_or_checkpoint, path)
    shutil.copy(CONFIG_FILE, path.with_suffix(".json"))
    return path


# ------------------------------------------------------------------ registry and loading


def test_daclip_is_a_registered_extractor_with_its_default_weights():
    assert "daclip" in list_prompt_extractors()
    assert describe_prompt_extractor("daclip")["default_weights"] == COMPONENTS["daclip"].source


def test_the_weights_table_entry_names_the_official_release():
    entry = COMPONENTS["daclip"]
    assert entry.source == "weblzw/daclip-uir-ViT-B-32-irsde/daclip_ViT-B-32.pt"
    assert entry.files == ["daclip_ViT-B-32.pt"] and entry.licence == "MIT" and entry.used_by == ["daclip"]


def test_load_prompt_extractor_gives_a_daclip_tagger_on_the_requested_device(daclip):
    assert isinstance(daclip, DaCLIPTagger) and daclip.device == torch.device("cpu")
    assert daclip.dtype == torch.float32 and daclip.tags == TAGS
    assert daclip.load_spec[0] == "daclip"


def test_the_official_config_beside_the_checkpoint_gives_the_architecture(daclip):
    assert daclip.config == DaCLIPConfig.from_official(CONFIG_FILE)
    assert daclip.config.vision_head_width == 12 and daclip.config.text_heads == 2


def test_the_default_config_is_the_released_vit_b_32():
    from elqproj.prompts.daclip_model import OFFICIAL_CONFIGS

    assert DaCLIPConfig() == DaCLIPConfig.from_official(OFFICIAL_CONFIGS["daclip_ViT-B-32"])


def test_without_a_config_the_shapes_give_the_architecture_with_64_wide_heads(official_state):
    config = infer_daclip_config(official_state, vision_head_width=12, text_heads=2)
    assert config == DaCLIPConfig.from_official(CONFIG_FILE)
    with pytest.raises(CheckpointMismatchError, match="vision_head_width"):
        infer_daclip_config(official_state)  # width 32 has no 64-wide heads: the error says what to pass


def test_config_overrides_and_official_json_load_a_checkpoint_without_its_config(tmp_path, official_state, daclip):
    bare = tmp_path / "daclip_ViT-B-32.pt"
    torch.save(official_state, bare)  # no JSON beside it
    by_overrides = _load(weights=bare, config={"vision_head_width": 12, "text_heads": 2})
    by_file = _load(weights=bare, config=CONFIG_FILE)
    by_dict = _load(weights=bare, config=json.loads(CONFIG_FILE.read_text()))
    assert by_overrides.config == by_file.config == by_dict.config == daclip.config
    assert _same_weights(by_overrides, daclip)


@pytest.mark.parametrize("layout", ["bare state dict", "module. prefix", "training save of a distributed run"])
def test_every_official_checkpoint_layout_loads_the_same_weights(tmp_path, official_state, daclip, layout):
    state = dict(official_state)
    if layout != "bare state dict":
        state = {f"module.{key}": value for key, value in state.items()}
    if layout.startswith("training save"):
        state = {"epoch": 3, "name": "run", "state_dict": state}
    copy = _load(weights=_copy_with_config(state, tmp_path / "daclip_ViT-B-32.pt"))
    assert _same_weights(copy, daclip)


def test_a_folder_is_searched_for_the_official_file_name(tmp_path, official_state, daclip):
    _copy_with_config(official_state, tmp_path / "daclip_ViT-B-32.pt")
    assert _same_weights(_load(weights=tmp_path), daclip)


def test_a_safetensors_copy_loads_like_the_pt(tmp_path, official_state, daclip):
    from elqproj.hub import save_checkpoint

    copy = save_checkpoint(dict(official_state), tmp_path / "daclip_tiny.safetensors")
    shutil.copy(CONFIG_FILE, tmp_path / "daclip_tiny.json")
    assert _same_weights(_load(weights=copy), daclip)


def test_default_weights_come_from_the_weights_table(offline_hub):
    repo, file = COMPONENTS["daclip"].source.rsplit("/", 1)
    populate_hf_cache(offline_hub, repo, {file: CHECKPOINT})
    tagger = load_prompt_extractor("daclip", tag_list=TAGS, config=CONFIG_FILE, device="cpu", progress=False)
    assert len(tagger.degradation_probabilities(_images(1))) == 1


def test_missing_default_weights_offline_name_the_weights_option():
    with pytest.raises(WeightsNotFoundError, match="weights="):
        load_prompt_extractor("daclip", tag_list=TAGS, device="cpu")


def test_device_and_dtype_are_applied_and_to_moves_the_model():
    tagger = _load(dtype="bf16")
    assert tagger.dtype == torch.bfloat16
    result = tagger.extract(_images(1))
    assert result.content_features.dtype == torch.bfloat16 and result.scores.dtype == torch.float32
    assert tagger.to(dtype="fp32").dtype == torch.float32


# ------------------------------------------------------------------ bad checkpoints


def test_a_ram_checkpoint_is_refused_with_the_keys_it_lacks(tiny_ram):
    with pytest.raises(CheckpointMismatchError, match="not a DA-CLIP checkpoint"):
        _load(weights=tiny_ram.checkpoint)


def test_a_plain_clip_checkpoint_is_named_as_such(tmp_path, official_state):
    clip_only = {key[len("clip."):]: value for key, value in official_state.items() if key.startswith("clip.")}
    torch.save(clip_only, tmp_path / "clip.pt")
    with pytest.raises(CheckpointMismatchError, match="plain CLIP checkpoint"):
        _load(weights=tmp_path / "clip.pt")


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "daclip.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a PyTorch checkpoint"):
        _load(weights=tmp_path / "daclip.pt")


def test_a_pickle_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError):
        _load(weights=tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_controller_blocks_are_named(tmp_path, official_state):
    broken = {k: v for k, v in official_state.items() if "zero_modules.1." not in k}
    with pytest.raises(CheckpointMismatchError, match=r"missing 2: \['controller.projections.1.bias'"):
        _load(weights=_copy_with_config(broken, tmp_path / "broken.pt"))


def test_a_config_that_does_not_fit_names_the_shape_mismatches(tmp_path, official_state):
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        _load(config=DaCLIPConfig.from_official(CONFIG_FILE, embed_dim=32))


def test_a_missing_file_is_weights_not_found(tmp_path):
    with pytest.raises(WeightsNotFoundError):
        _load(weights=tmp_path / "nowhere.pt")


def test_without_open_clip_the_error_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ConfigError, match=r"elqproj\[daclip\]"):
        _load()


# ------------------------------------------------------------------ degradation probabilities


@pytest.mark.parametrize("images", [
    _images(2),
    [_images(1, (30, 70), seed=1)[0], _images(1, (64, 48), seed=2)[0]],
    [Image.fromarray((np.random.default_rng(0).random((33, 41, 3)) * 255).astype(np.uint8))] * 2,
], ids=["batch tensor", "tensors of different sizes", "PIL images"])
def test_degradation_probabilities_are_one_distribution_over_the_vocabulary_per_image(daclip, images):
    rows = daclip.degradation_probabilities(images)
    assert len(rows) == 2
    for row in rows:
        assert list(row) == list(DEGRADATIONS)
        assert all(0.0 <= p <= 1.0 for p in row.values()) and sum(row.values()) == pytest.approx(1.0, abs=1e-5)


def test_degradation_probabilities_do_not_compute_the_tag_embeddings():
    tagger = _load()
    tagger.degradation_probabilities(_images(1))
    assert tagger._tag_embeddings is None


def test_a_custom_degradation_vocabulary_is_used_in_its_order():
    tagger = _load(degradations=["blurry", "noisy", "clean"])
    assert [list(row) for row in tagger.degradation_probabilities(_images(1))] == [["blurry", "noisy", "clean"]]


# ------------------------------------------------------------------ zero-shot tags


def test_extract_returns_prompts_scores_and_degradations(daclip):
    result = daclip.extract(_images(3))
    assert isinstance(result, DaCLIPPromptResult)
    assert result.scores.shape == (3, len(TAGS)) and result.scores.dtype == torch.float32
    assert result.scores.abs().max() <= 1 + 1e-6  # cosine similarities
    assert [len(tags) for tags in result.tags] == [3, 3, 3]
    assert result.texts == [", ".join(tags) for tags in result.tags]
    assert result.degradations == daclip.degradation_probabilities(_images(3))
    assert result.content_features.shape == result.degradation_features.shape == (3, daclip.config.embed_dim)
    assert result.image_features is None  # not SeeSR's RAM features


def test_calling_the_tagger_gives_the_prompts(daclip):
    assert daclip(_images()) == daclip.extract(_images()).texts


def test_tags_are_the_top_k_most_similar_first_above_the_threshold(daclip):
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.3, 0.9, 0.2, 0.0, -0.4]])
    assert daclip.prompts_from_scores(scores).tags == [["tree", "cat", "3D glasses"]]  # tie: tag-list order
    strict = _load(top_k=5, threshold=0.3)
    assert strict.prompts_from_scores(scores).tags == [["tree", "cat"]]  # strictly above
    assert _load(top_k=2, threshold=0.95).prompts_from_scores(scores).texts == [""]


def test_excluded_tags_are_never_chosen_and_separator_joins(daclip):
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.3, 0.9, 0.2, 0.0, -0.4]])
    tagger = _load(top_k=2, exclude_tags=["tree", 1], separator=" | ")
    assert tagger.prompts_from_scores(scores).texts == ["3D glasses | zebra crossing"]


def test_tag_embeddings_are_computed_once_in_batches(monkeypatch):
    tagger = _load(batch_size=3)
    calls = []
    encode = tagger.model.encode_text
    monkeypatch.setattr(tagger.model, "encode_text", lambda tokens: calls.append(len(tokens)) or encode(tokens))
    tagger.extract(_images(1))
    tagger.extract(_images(2))
    assert calls[:3] == [3, 3, 2] and sum(calls) == len(TAGS) + len(DEGRADATIONS)
    tagger.to(dtype="fp32")  # a move recomputes them in the new dtype
    tagger.extract(_images(1))
    assert sum(calls) == 2 * (len(TAGS) + len(DEGRADATIONS))


def test_the_tag_embeddings_show_a_progress_bar(capsys):
    tagger = _load(progress=True)
    tagger.tag_embeddings()
    assert "DA-CLIP tag embeddings" in capsys.readouterr().err


def test_the_template_decides_the_tag_texts():
    plain, templated = _load(template="{}"), _load()
    assert not torch.allclose(plain.tag_embeddings(), templated.tag_embeddings())
    with pytest.raises(ConfigError, match="template"):
        _load(template="a photo")


@pytest.mark.parametrize("options,match", [
    ({"top_k": 0}, "top_k"), ({"exclude_tags": ["dgo"]}, "did you mean"), ({"tag_list": []}, "at least one tag"),
    ({"degradations": ["noisy"]}, "at least two"),
])
def test_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        _load(**options)


# ------------------------------------------------------------------ in a pipeline and on the command line


def test_a_pipeline_conditions_f_and_g_with_daclip_prompts(daclip):
    projector = Projector.from_base(TINY_SD21, device="cpu")
    restorer = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    pipe = RestorationPipeline(restorer, projector=projector, prompt_extractor=daclip)
    elq = _images(1, (64, 64))
    res = pipe(elq, lfo=1, seed=0, process_size=0)
    assert res.prompts[0] == daclip(elq)  # the prompts of f's first pass: DA-CLIP's on the ELQ input
    assert all(len(texts[0].split(", ")) == 3 for texts in res.prompts) and res.image.shape == (1, 3, 64, 64)


def test_the_tag_command_prints_daclip_prompts(tmp_path, capsys):
    from elqproj.cli import main

    image = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)).save(image)
    (tmp_path / "tags.txt").write_text("\n".join(TAGS), encoding="utf-8")
    assert main(["tag", str(image), "--extractor", "daclip", "--weights", str(CHECKPOINT), "--tag-list",
                 str(tmp_path / "tags.txt"), "--device", "cpu", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    expected = _load(tag_list=tmp_path / "tags.txt")([Image.open(image)])[0]
    assert line == {"file": str(image), "prompt": expected} and len(expected.split(", ")) == 8


def test_auto_mode_reports_daclips_degradation_probabilities_in_each_decision(daclip):
    projector = Projector.from_base(TINY_SD21, device="cpu")
    from tests.identity_restorer import IdentityRestorer

    pipe = RestorationPipeline(IdentityRestorer(), projector=projector, prompt_extractor=daclip)

    class Scores:  # stands in for MUSIQ (tests/test_auto.py checks the real one)
        config = pipe.auto_config

        def __call__(self, images):
            return [20.0] * images.shape[0]

    pipe.severity_scorer = Scores()
    elq = _images(2, (64, 64))
    res = pipe(elq, mode="auto", seed=[0, 1], process_size=0, progress=False)
    expected = daclip.degradation_probabilities(elq)
    for decision, probabilities in zip(res.decision, expected):
        assert list(decision["degradations"]) == list(DEGRADATIONS)
        assert decision["degradations"] == pytest.approx(probabilities, abs=1e-4)
